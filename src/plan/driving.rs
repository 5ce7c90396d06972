//! The planner's questions to the drivers, in one place.
//!
//! Every piece of service-type knowledge the planner needs (names, blue/green slots and host
//! ports, Valkey indexes, the scheduler holder, migrations, variables, the queue-driver guard,
//! rendered files) is asked here. Each function delegates to the drivers module where the
//! drivers provide the answer; the few rules still answered here are marked `interim` and are
//! replaced by the drivers' functions as they land (docs/plan.md lists them).

use std::collections::{BTreeMap, BTreeSet};

use super::applied::{Applied, AppliedReplica, VariableSource};
use super::ops::Placeholder;
use crate::model::{
    AppService, AttachmentRole, Environment, MigrationMode, MigrationTiming, Model, SchedulerMode,
    Value,
};

/// The stable name of a replica in a slot: container name, compose project and directory.
pub fn replica_name(app: &str, env: &str, service: &str, index: u32, slot: &str) -> String {
    format!("{app}-{env}-{service}-{index}-{slot}")
}

/// The blue/green slot a new replica starts in: the one the running replica does not use.
/// (interim: drivers' blue/green allocation)
pub fn next_slot(running: Option<&AppliedReplica>) -> String {
    match running.map(|r| r.slot.as_str()) {
        Some("a") => "b".to_string(),
        _ => "a".to_string(),
    }
}

/// The host port of a replica slot. Stable per (environment, service, index, slot) and in the
/// range 20000–59999. (interim: drivers' host port allocation)
pub fn host_port(app: &str, env: &str, service: &str, index: u32, slot: &str) -> u16 {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(format!("{app}/{env}/{service}#{index}").as_bytes());
    let n = u16::from_be_bytes([h[0], h[1]]) % 20000;
    20000 + n * 2 + u16::from(slot == "b")
}

/// When migrations of a service run in a deploy (`None`: never during a deploy).
pub fn deploy_migration(service: &AppService) -> Option<MigrationTiming> {
    match service.migrations.mode {
        MigrationMode::Auto => Some(service.migrations.timing),
        MigrationMode::Manual | MigrationMode::Disabled => None,
    }
}

/// Whether an explicit `keystone migrate` request may run this service's migrations.
pub fn requested_migration_allowed(service: &AppService) -> bool {
    service.migrations.mode != MigrationMode::Disabled
}

/// The command line of a migration, as argv.
pub fn migration_argv(service: &AppService) -> Vec<String> {
    vec![
        "sh".to_string(),
        "-c".to_string(),
        service.migrations.command.clone(),
    ]
}

/// The replica that holds the scheduler in `single` mode: the recorded holder while it still
/// exists, else replica 1. `None` when the environment has no scheduler.
pub fn scheduler_holder(
    env: &Environment,
    previous: Option<&super::applied::ReplicaRef>,
) -> Option<super::applied::ReplicaRef> {
    let s = env.scheduler.as_ref()?;
    if s.mode != SchedulerMode::Single {
        return None;
    }
    let svc = env.services.get(&s.service)?;
    if let Some(p) = previous
        && p.service == s.service
        && p.index >= 1
        && p.index <= svc.replicas
    {
        return Some(p.clone());
    }
    Some(super::applied::ReplicaRef {
        service: s.service.clone(),
        index: 1,
    })
}

/// Whether replica `index` of `service` runs the scheduler.
pub fn runs_scheduler(
    env: &Environment,
    holder: Option<&super::applied::ReplicaRef>,
    service: &str,
    index: u32,
) -> bool {
    match &env.scheduler {
        Some(s) if s.service == service => match s.mode {
            SchedulerMode::EveryReplica => true,
            SchedulerMode::Single => holder.is_some_and(|h| h.service == service && h.index == index),
        },
        _ => false,
    }
}

/// One variable of an environment's `.env`, with its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    pub name: String,
    pub source: VariableSource,
    /// Plain value, or the placeholder of a secret / generated value.
    pub value: String,
    /// Whether the value is a secret (shown only as changed/unchanged).
    pub secret: bool,
}

/// The variables of an environment, in file order. (interim: drivers' variables function adds
/// the managed exports of every attachment)
pub fn variables(env: &Environment) -> Vec<Variable> {
    env.variables
        .iter()
        .map(|(name, v)| match v {
            Value::Plain(p) => Variable {
                name: name.clone(),
                source: VariableSource::User,
                value: p.clone(),
                secret: false,
            },
            Value::Secret(r) => Variable {
                name: name.clone(),
                source: VariableSource::Secret {
                    path: r.display_path(),
                },
                value: Placeholder::secret(r),
                secret: true,
            },
        })
        .collect()
}

/// The queue driver the environment will run with. (interim: drivers' queue-driver guard)
pub fn queue_driver(env: &Environment, vars: &[Variable]) -> Option<String> {
    if let Some(v) = vars.iter().find(|v| v.name == "QUEUE_CONNECTION") {
        return Some(v.value.clone());
    }
    env.attachments
        .iter()
        .any(|a| a.role == AttachmentRole::Queue)
        .then(|| "redis".to_string())
}

/// Whether the environment confirmed a queue-driver change.
pub fn queue_change_confirmed(env: &Environment) -> bool {
    env.attachments
        .iter()
        .any(|a| a.role == AttachmentRole::Queue && a.confirm_queue_driver)
}

/// Valkey logical database per (valkey service, environment key): recorded indexes stay, new
/// slices take the lowest free index in environment order. An exhausted service leaves the
/// environment out and names it in the error list. (interim: drivers' `valkey8` allocation)
pub fn valkey_indexes(
    model: &Model,
    applied: &Applied,
) -> (BTreeMap<(String, String), u32>, BTreeSet<(String, String)>) {
    let mut out = BTreeMap::new();
    let mut used: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
    for (key, e) in &applied.environments {
        for (svc, slice) in &e.slices {
            if let super::applied::AppliedSlice::ValkeyDatabase { index, .. } = slice {
                out.insert((svc.clone(), key.clone()), *index);
                used.entry(svc.clone()).or_default().insert(*index);
            }
        }
    }
    let mut exhausted = BTreeSet::new();
    for app in model.applications.values() {
        for env in app.environments.values() {
            for a in &env.attachments {
                let Some(svc) = model.services.get(&a.service) else {
                    continue;
                };
                if svc.driver != "valkey8" {
                    continue;
                }
                let k = (svc.name.clone(), env.key());
                if out.contains_key(&k) {
                    continue;
                }
                let limit = svc.databases.unwrap_or(16);
                let taken = used.entry(svc.name.clone()).or_default();
                match (0..limit).find(|i| !taken.contains(i)) {
                    Some(i) => {
                        taken.insert(i);
                        out.insert(k, i);
                    }
                    None => {
                        exhausted.insert(k);
                    }
                }
            }
        }
    }
    (out, exhausted)
}

/// The files of one replica. (interim: drivers' `render::replica_files`)
pub struct ReplicaFiles {
    pub compose: Vec<u8>,
    pub env: Vec<u8>,
}

/// What a replica is rendered from.
pub struct ReplicaInput<'a> {
    pub service: &'a AppService,
    pub name: &'a str,
    /// `repo@sha256:…`, `repo@{{digest:app}}` or, for a local build, `{{digest:app}}`.
    pub image: &'a str,
    pub host_port: u16,
    pub variables: &'a [Variable],
    pub scheduler: bool,
}

/// Render compose.yml and .env of a replica. (interim: drivers' `render::replica_files`)
pub fn replica_files(r: &ReplicaInput<'_>) -> ReplicaFiles {
    let svc = r.service;
    let mut compose = String::new();
    compose.push_str("services:\n");
    compose.push_str(&format!("  {}:\n", svc.name));
    compose.push_str(&format!("    image: {}\n", yaml_str(r.image)));
    compose.push_str(&format!("    container_name: {}\n", yaml_str(r.name)));
    compose.push_str("    restart: unless-stopped\n");
    compose.push_str("    env_file: [.env]\n");
    compose.push_str(&format!(
        "    ports: [{}]\n",
        yaml_str(&format!("{}:{}", r.host_port, svc.port))
    ));
    if let Some(c) = &svc.command {
        compose.push_str(&format!("    command: {}\n", yaml_str(c)));
    }
    let mut env = String::new();
    for v in r.variables {
        env.push_str(&format!("{}={}\n", v.name, dotenv_str(&v.value)));
    }
    if r.scheduler {
        env.push_str("AUTORUN_LARAVEL_SCHEDULER=true\n");
    }
    ReplicaFiles {
        compose: compose.into_bytes(),
        env: env.into_bytes(),
    }
}

fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

fn dotenv_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

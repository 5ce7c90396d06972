//! The planner's questions to the drivers, in one place.
//!
//! Every piece of service-type knowledge the planner needs (names, blue/green slots and host
//! ports, Valkey indexes, the scheduler holder, migrations, variables, the queue-driver guard,
//! slice scripts) is asked here, and each answer comes from `crate::drivers`; rendered files come
//! from `crate::render`.

use std::collections::BTreeMap;

use super::Finding;
use super::applied::{Applied, AppliedReplica, AppliedSlice, ReplicaRef, VariableSource};
use super::ops::Placeholder;
use crate::drivers::laravel::{self, PortAssignment, ReplicaKey, SchedulerHolder, Slot};
use crate::drivers::variables::{self as vars, VariableValue};
use crate::drivers::{self, Facts, Sensitive, SliceKey, valkey8};
use crate::model::{AppService, Environment, Model, Origin};

pub use laravel::{MigrationContext, MigrationRun, MigrationWhen};

/// Parse a recorded slot name.
pub fn slot_of(name: &str) -> Option<Slot> {
    match name {
        "blue" => Some(Slot::Blue),
        "green" => Some(Slot::Green),
        _ => None,
    }
}

/// The slot a (re)deployed replica goes to.
pub fn next_slot(running: Option<&AppliedReplica>) -> Slot {
    Slot::next(running.and_then(|r| slot_of(&r.slot)))
}

pub fn replica_key(app: &str, env: &str, service: &str, index: u32) -> ReplicaKey {
    ReplicaKey::new(app, env, service, index)
}

/// Container and compose project name of a replica slot.
pub fn container_name(key: &ReplicaKey, slot: Slot) -> String {
    laravel::container_name(key, slot)
}

/// The directory of a replica slot on its server.
pub fn remote_dir(root: &str, key: &ReplicaKey, slot: Slot) -> String {
    laravel::remote_dir(root, key, slot)
}

/// Host ports of every replica (drivers' allocation, stable across deploys), with the
/// allocation errors as blockers by environment key.
pub fn host_ports(
    model: &Model,
    applied: &Applied,
) -> (
    BTreeMap<ReplicaKey, PortAssignment>,
    BTreeMap<String, Vec<Finding>>,
) {
    let mut previous = BTreeMap::new();
    for (key, e) in &applied.environments {
        let Some((app, env)) = key.split_once('/') else {
            continue;
        };
        for (svc, s) in &e.services {
            for r in &s.replicas {
                let (Some(port), Some(slot)) = (r.host_port, slot_of(&r.slot)) else {
                    continue;
                };
                previous.insert(
                    ReplicaKey::new(app, env, svc, r.index),
                    PortAssignment {
                        server: r.server.clone(),
                        base: port - slot.port_offset(),
                    },
                );
            }
        }
    }
    match laravel::allocate_host_ports(model, &previous) {
        Ok(a) => (a, BTreeMap::new()),
        Err(errors) => {
            let mut blockers: BTreeMap<String, Vec<Finding>> = BTreeMap::new();
            for e in errors {
                let laravel::AllocError::HostPortsExhausted {
                    replica, origin, ..
                } = &e;
                blockers
                    .entry(format!("{}/{}", replica.app, replica.env))
                    .or_default()
                    .push(finding("host-ports-exhausted", origin, e.to_string()));
            }
            // Environments without errors still plan; their replicas get what could be served.
            let ok = laravel::allocate_host_ports(&without_envs(model, &blockers), &previous)
                .unwrap_or_default();
            (ok, blockers)
        }
    }
}

/// The model without the named environments (to allocate for everyone else).
fn without_envs(model: &Model, envs: &BTreeMap<String, Vec<Finding>>) -> Model {
    let mut m = model.clone();
    for app in m.applications.values_mut() {
        let name = app.name.clone();
        app.environments
            .retain(|env, _| !envs.contains_key(&format!("{name}/{env}")));
    }
    m
}

/// A finding located at a config origin, with the driver's message (which starts with the
/// location; it is kept once, in `location`).
fn finding(code: &str, origin: &Origin, message: String) -> Finding {
    let loc = origin.to_string();
    let message = message
        .strip_prefix(&format!("{loc}: "))
        .map(str::to_string)
        .unwrap_or(message);
    Finding {
        code: code.into(),
        location: Some(loc),
        message,
        hint: None,
    }
}

/// Valkey logical database per slice (drivers' allocation), with errors as blockers by
/// environment key.
pub fn valkey_indexes(
    model: &Model,
    applied: &Applied,
) -> (BTreeMap<SliceKey, u32>, BTreeMap<String, Vec<Finding>>) {
    let mut previous = BTreeMap::new();
    for (key, e) in &applied.environments {
        let Some((app, env)) = key.split_once('/') else {
            continue;
        };
        for (svc, slice) in &e.slices {
            if let AppliedSlice::ValkeyDatabase { index, .. } = slice {
                previous.insert(SliceKey::new(svc, app, env), *index);
            }
        }
    }
    match valkey8::allocate_indexes(model, &previous) {
        Ok(a) => (a, BTreeMap::new()),
        Err(errors) => {
            let mut blockers: BTreeMap<String, Vec<Finding>> = BTreeMap::new();
            for e in &errors {
                let (origin, slice) = match e {
                    valkey8::IndexError::Exhausted { origin, slice, .. }
                    | valkey8::IndexError::BeyondDatabases { origin, slice, .. } => (origin, slice),
                };
                blockers
                    .entry(format!("{}/{}", slice.app, slice.env))
                    .or_default()
                    .push(finding("valkey-indexes-exhausted", origin, e.to_string()));
            }
            let ok = valkey8::allocate_indexes(&without_envs(model, &blockers), &previous)
                .unwrap_or_default();
            (ok, blockers)
        }
    }
}

/// The generated password of a Postgres slice's role, as a placeholder the executor fills.
pub fn postgres_password(slice: &SliceKey) -> Sensitive {
    Sensitive::new(Placeholder::generated(
        &drivers::postgres18::slice_password_key(slice),
    ))
}

/// The admin credentials of a Postgres service, as placeholders.
pub fn postgres_admin(service: &str) -> drivers::Credentials {
    drivers::postgres18::admin_credentials(Sensitive::new(Placeholder::generated(
        &drivers::postgres18::admin_password_key(service),
    )))
}

/// The facts drivers need: Valkey indexes and Postgres passwords (placeholders).
pub fn facts(model: &Model, env: &Environment, valkey: &BTreeMap<SliceKey, u32>) -> Facts {
    let mut f = Facts::default();
    for a in &env.attachments {
        let k = SliceKey::new(&a.service, &env.app, &env.name);
        if let Some(i) = valkey.get(&k) {
            f.valkey_indexes.insert(k, *i);
        }
    }
    for a in &env.attachments {
        if model
            .services
            .get(&a.service)
            .is_some_and(|s| s.driver == "postgres18")
        {
            let k = SliceKey::new(&a.service, &env.app, &env.name);
            f.postgres_passwords
                .insert(k.clone(), postgres_password(&k));
        }
    }
    f
}

/// One variable of an environment's `.env`, with its source, as the planner shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    pub name: String,
    pub source: VariableSource,
    /// Plain value, or the placeholder of a secret / generated value.
    pub value: String,
    /// Whether the value is a secret (shown only as changed/unchanged).
    pub secret: bool,
    pub overridable: bool,
}

/// The environment's variables (drivers' variables function), converted; errors are blockers.
pub fn variables(
    model: &Model,
    env: &Environment,
    facts: &Facts,
) -> (Vec<vars::Variable>, Vec<Variable>, Vec<Finding>) {
    match vars::environment_variables(model, env, facts) {
        Ok(list) => {
            let shown = list
                .iter()
                .map(|v| Variable {
                    name: v.name.clone(),
                    source: match &v.source {
                        vars::VariableSource::User => VariableSource::User,
                        vars::VariableSource::Secret => VariableSource::Secret {
                            path: match &v.value {
                                VariableValue::Secret(r) => r.display_path(),
                                _ => String::new(),
                            },
                        },
                        vars::VariableSource::Managed { slice } => VariableSource::Managed {
                            slice: slice.to_string(),
                        },
                    },
                    value: match &v.value {
                        VariableValue::Plain(p) => p.clone(),
                        VariableValue::Secret(r) => Placeholder::secret(r),
                        VariableValue::Sensitive(s) => s.expose().to_string(),
                    },
                    secret: v.is_secret(),
                    overridable: v.overridable,
                })
                .collect();
            (list, shown, Vec::new())
        }
        Err(errors) => (
            Vec::new(),
            Vec::new(),
            errors
                .iter()
                .map(|e| finding("variables", e.origin(), e.to_string()))
                .collect(),
        ),
    }
}

/// The queue-driver guard (drivers' `valkey8::check_queue_driver`).
pub fn queue_guard(
    env: &Environment,
    variables: &[vars::Variable],
    previous: Option<Option<String>>,
) -> Option<Finding> {
    let previous = match previous {
        None => valkey8::PreviousQueue::NeverDeployed,
        Some(q) => valkey8::PreviousQueue::Deployed(q),
    };
    valkey8::check_queue_driver(env, variables, &previous)
        .err()
        .map(|e| finding("queue-driver-change", &e.origin, e.to_string()))
}

/// The `QUEUE_CONNECTION` the environment runs with.
pub fn queue_driver(variables: &[Variable]) -> Option<String> {
    variables
        .iter()
        .find(|v| v.name == "QUEUE_CONNECTION" && !v.secret)
        .map(|v| v.value.clone())
}

/// The scheduler holder (drivers' stable choice).
pub fn scheduler_holder(env: &Environment, previous: Option<&ReplicaRef>) -> Option<ReplicaRef> {
    let prev = previous.map(|p| SchedulerHolder {
        service: p.service.clone(),
        replica: p.index,
    });
    laravel::scheduler_holder(env, prev.as_ref()).map(|h| ReplicaRef {
        service: h.service,
        index: h.replica,
    })
}

pub fn runs_scheduler(
    env: &Environment,
    holder: Option<&ReplicaRef>,
    service: &str,
    index: u32,
) -> bool {
    let h = holder.map(|p| SchedulerHolder {
        service: p.service.clone(),
        replica: p.index,
    });
    laravel::runs_scheduler(env, service, index, h.as_ref())
}

/// The migration decision (drivers' one function).
pub fn migration(service: &AppService, context: MigrationContext) -> Option<MigrationRun> {
    laravel::migration(service, context)
}

/// The migration in a one-off container of a rendered replica.
pub fn migration_script(run: &MigrationRun, dir: &str, project: &str, service: &str) -> String {
    laravel::migration_script(run, dir, project, service)
}

/// The image repository of an application.
pub fn image_repository(model: &Model, app: &str) -> String {
    laravel::image_repository(model, app).unwrap_or_else(|| format!("keystone/{app}"))
}

/// The driver's commands before traffic switches to a new container.
pub fn pre_switch_steps(service: &AppService) -> Vec<drivers::ContainerCommand> {
    drivers::get(&service.driver)
        .map(|d| d.pre_switch_steps())
        .unwrap_or_default()
}

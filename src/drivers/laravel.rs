//! The `laravel` driver: the application image, its process roles, migrations, the scheduler,
//! and the blue/green slots and host ports its replicas run in.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{
    ContainerCommand, Driver, DriverError, DriverKind, EnvVar, Export, ExportContext, FirewallRule,
    HealthCheck, HealthTarget, ImagePolicy, Peers, PortRef, Resources, SliceContext, SliceScript,
    SliceType, UpdateBehavior, Volume,
};
use crate::model::{
    AppService, AttachmentRole, Environment, MigrationMode, MigrationTiming, Model, Origin,
    ProcessRole, SchedulerMode,
};
use crate::shell;

pub struct Laravel;

/// The queue worker a `worker` replica runs when the service has no `command:`.
pub const QUEUE_WORKER_COMMAND: &str = "php artisan queue:work --sleep=3 --tries=3 --max-time=3600";
/// The scheduler a replica whose only role is `scheduler` runs when the service has no `command:`.
pub const SCHEDULER_COMMAND: &str = "php artisan schedule:work";
/// Set to `true` on the replicas that run the scheduler, `false` on all others.
pub const SCHEDULER_VARIABLE: &str = "AUTORUN_LARAVEL_SCHEDULER";

static ENV_SCHEMA: [EnvVar; 4] = [
    EnvVar {
        name: "APP_KEY",
        required: true,
        description: "encryption key (`php artisan key:generate --show`); keep it in a secret",
    },
    EnvVar {
        name: "APP_ENV",
        required: false,
        description: "production, staging, …",
    },
    EnvVar {
        name: "APP_DEBUG",
        required: false,
        description: "`false` in production",
    },
    EnvVar {
        name: "APP_URL",
        required: false,
        description: "the public URL",
    },
];

static FIREWALL: [FirewallRule; 1] = [FirewallRule {
    port: PortRef::ReplicaHostPorts,
    from: Peers::GatewayServers,
}];

impl Driver for Laravel {
    fn name(&self) -> &'static str {
        "laravel"
    }
    fn kind(&self) -> DriverKind {
        DriverKind::Application
    }
    fn version_track(&self) -> &'static str {
        // The driver follows Laravel's conventions of 11 and later (`/up`, `CACHE_STORE`).
        "11"
    }
    fn image_policy(&self) -> ImagePolicy {
        ImagePolicy::Built
    }
    fn attachment_roles(&self) -> &'static [AttachmentRole] {
        &[]
    }
    fn default_ports(&self) -> &'static [u16] {
        &[]
    }
    fn volumes(&self, _service: &str) -> Vec<Volume> {
        // Stateless: everything it keeps lives in a database, cache or object store.
        Vec::new()
    }
    fn env_schema(&self) -> &'static [EnvVar] {
        &ENV_SCHEMA
    }
    fn health_check(&self, target: HealthTarget<'_>) -> HealthCheck {
        if !target.http {
            // A worker or scheduler serves nothing: healthy while its main process runs.
            return HealthCheck {
                test: vec!["CMD-SHELL".into(), "kill -0 1".into()],
                interval: Duration::from_secs(5),
                timeout: Duration::from_secs(3),
                retries: 3,
                start_period: Duration::from_secs(5),
            };
        }
        let path = if target.path.starts_with('/') {
            target.path.to_string()
        } else {
            format!("/{}", target.path)
        };
        let url = format!("http://127.0.0.1:{}{}", target.port, path);
        // Official PHP images have curl, minimal ones busybox wget: accept either.
        let probe = format!(
            "curl -fsS -o /dev/null {u} || wget -q -O /dev/null {u}",
            u = shell::quote(&url)
        );
        HealthCheck {
            test: vec!["CMD-SHELL".into(), probe],
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(3),
            retries: 3,
            start_period: Duration::from_secs(10),
        }
    }
    fn resource_defaults(&self) -> Resources {
        Resources {
            // Lets a queue worker finish the job in hand.
            stop_grace_period: Duration::from_secs(30),
            memory_limit: None,
        }
    }
    fn slice_types(&self) -> &'static [SliceType] {
        &[]
    }
    fn environment_exports(&self, _ctx: &ExportContext<'_>) -> Result<Vec<Export>, DriverError> {
        Ok(Vec::new())
    }
    fn firewall_rules(&self) -> &'static [FirewallRule] {
        &FIREWALL
    }
    fn update_behavior(&self) -> UpdateBehavior {
        UpdateBehavior::StatelessBlueGreen
    }
    fn pre_switch_steps(&self) -> Vec<ContainerCommand> {
        // Laravel needs nothing between "healthy" and "switched" beyond its migration, which has
        // its own operation (see `migration`).
        Vec::new()
    }
    fn provision_slice(&self, _ctx: &SliceContext<'_>) -> Result<Option<SliceScript>, DriverError> {
        Ok(None)
    }
    fn configure_slice(&self, _ctx: &SliceContext<'_>) -> Result<Option<SliceScript>, DriverError> {
        Ok(None)
    }
}

/// The image repository of a built application: `<registry url>/<namespace>/<repository>`, or
/// just `<repository>` for a `local` build without registry.
pub fn image_repository(model: &Model, app: &str) -> Option<String> {
    let application = model.applications.get(app)?;
    let build = &application.build;
    let Some(registry) = build
        .registry
        .as_ref()
        .and_then(|r| model.registries.get(r))
    else {
        return Some(format!("keystone/{}", build.repository));
    };
    let mut repo = registry.url.trim_end_matches('/').to_string();
    if let Some(ns) = &registry.namespace {
        repo.push('/');
        repo.push_str(ns);
    }
    repo.push('/');
    repo.push_str(&build.repository);
    Some(repo)
}

// ---------------------------------------------------------------------------------------------
// Replicas, slots and host ports

/// One replica of an app service: `shop/production/web#2`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ReplicaKey {
    pub app: String,
    pub env: String,
    pub service: String,
    /// 1-based.
    pub index: u32,
}

impl ReplicaKey {
    pub fn new(app: &str, env: &str, service: &str, index: u32) -> ReplicaKey {
        ReplicaKey {
            app: app.to_string(),
            env: env.to_string(),
            service: service.to_string(),
            index,
        }
    }

    /// Every replica of every app service of the model, in order.
    pub fn all(model: &Model) -> Vec<ReplicaKey> {
        let mut out = Vec::new();
        for (app, application) in &model.applications {
            for (env, environment) in &application.environments {
                for (name, service) in &environment.services {
                    for i in 1..=service.replicas {
                        out.push(ReplicaKey::new(app, env, name, i));
                    }
                }
            }
        }
        out
    }

    /// `shop_production_web-2`: unambiguous, since names never hold `_`.
    fn stem(&self) -> String {
        format!("{}_{}_{}-{}", self.app, self.env, self.service, self.index)
    }
}

impl fmt::Display for ReplicaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}#{}",
            self.app, self.env, self.service, self.index
        )
    }
}

/// Replica `index` (1-based) runs on `servers[(index - 1) % servers.len()]`.
pub fn replica_server(service: &AppService, index: u32) -> Option<&str> {
    if service.servers.is_empty() || index == 0 {
        return None;
    }
    let i = (index as usize - 1) % service.servers.len();
    Some(service.servers[i].as_str())
}

/// One of the two places a replica can run in. A deploy starts the new container in the slot the
/// replica is *not* in, beside the old one, so the gateway can switch without a gap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Slot {
    Blue,
    Green,
}

impl Slot {
    /// The slot a (re)deployed replica goes to, given the slot it runs in now (`None`: new).
    pub fn next(applied: Option<Slot>) -> Slot {
        match applied {
            None | Some(Slot::Green) => Slot::Blue,
            Some(Slot::Blue) => Slot::Green,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Slot::Blue => "blue",
            Slot::Green => "green",
        }
    }

    /// The slot named by `as_str` (as recorded in `plan::applied::AppliedReplica::slot`).
    pub fn parse(s: &str) -> Option<Slot> {
        match s {
            "blue" => Some(Slot::Blue),
            "green" => Some(Slot::Green),
            _ => None,
        }
    }

    /// Offset from the replica's base host port.
    pub fn port_offset(self) -> u16 {
        match self {
            Slot::Blue => 0,
            Slot::Green => 1,
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Container and compose project name of a replica in a slot:
/// `keystone-shop_production_web-2-blue`.
pub fn container_name(key: &ReplicaKey, slot: Slot) -> String {
    format!("keystone-{}-{}", key.stem(), slot)
}

/// Directory holding a replica slot's compose.yml and .env on its server:
/// `<remote_root>/services/shop_production_web-2-blue`.
pub fn remote_dir(remote_root: &str, key: &ReplicaKey, slot: Slot) -> String {
    format!(
        "{}/services/{}-{}",
        remote_root.trim_end_matches('/'),
        key.stem(),
        slot
    )
}

/// Whether replicas of `service` serve HTTP (and so get host ports and a gateway route).
pub fn serves_http(service: &AppService) -> bool {
    service.roles.contains(&ProcessRole::Web)
}

/// Host ports replicas are given: each replica holds the pair `(base, base + 1)`, one per slot.
pub const HOST_PORT_RANGE: std::ops::RangeInclusive<u16> = 20000..=29999;

/// A replica's place on a server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortAssignment {
    pub server: String,
    /// Even; the blue slot publishes `base`, the green one `base + 1`.
    pub base: u16,
}

impl PortAssignment {
    pub fn host_port(&self, slot: Slot) -> u16 {
        self.base + slot.port_offset()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    #[error(
        "{origin}: server `{server}` has no free host port pair left in {lo}-{hi} for replica {replica}; \
         lower replicas on that server or spread the placement"
    )]
    HostPortsExhausted {
        origin: Origin,
        server: String,
        replica: ReplicaKey,
        lo: u16,
        hi: u16,
    },
}

/// The host ports of every replica of the model (a replica that serves no HTTP publishes none,
/// but holds its pair so adding the web role later moves nothing). An existing assignment never moves while its
/// replica stays on the same server; new replicas (or replicas moved to another server) take the
/// lowest free pair on their server, avoiding the ports shared services publish there. Replicas
/// that no longer exist free their pair.
pub fn allocate_host_ports(
    model: &Model,
    previous: &BTreeMap<ReplicaKey, PortAssignment>,
) -> Result<BTreeMap<ReplicaKey, PortAssignment>, Vec<AllocError>> {
    let mut taken: BTreeMap<&str, BTreeSet<u16>> = BTreeMap::new();
    for service in model.services.values() {
        let mut ports: Vec<u16> = super::shared_port(service).into_iter().collect();
        if let Some(admin) = super::caddy2::admin_port_of(service) {
            ports.push(admin);
        }
        for server in &service.servers {
            taken
                .entry(server)
                .or_default()
                .extend(ports.iter().copied());
        }
    }
    let keys = ReplicaKey::all(model);
    let mut out = BTreeMap::new();
    let mut pending = Vec::new();
    for key in &keys {
        let service = &model.applications[&key.app].environments[&key.env].services[&key.service];
        let Some(server) = replica_server(service, key.index) else {
            continue;
        };
        match previous.get(key) {
            Some(p) if p.server == server => {
                let t = taken.entry(server).or_default();
                t.insert(p.base);
                t.insert(p.base + 1);
                out.insert(key.clone(), p.clone());
            }
            _ => pending.push((key, server, &service.origin)),
        }
    }
    let mut errors = Vec::new();
    // Per server, the lowest pair that may still be free: every pair below it is taken (pending
    // replicas take the lowest free pair, and nothing is freed while they do), so the search
    // resumes there instead of rescanning the range for each replica.
    let mut cursor: BTreeMap<&str, u16> = BTreeMap::new();
    for (key, server, origin) in pending {
        let t = taken.entry(server).or_default();
        let lo = *HOST_PORT_RANGE.start();
        let hi = *HOST_PORT_RANGE.end();
        let from = cursor.entry(server).or_insert(lo);
        let free = (*from..hi)
            .step_by(2)
            .find(|b| !t.contains(b) && !t.contains(&(b + 1)));
        *from = free.unwrap_or(hi);
        match free {
            Some(base) => {
                t.insert(base);
                t.insert(base + 1);
                out.insert(
                    key.clone(),
                    PortAssignment {
                        server: server.to_string(),
                        base,
                    },
                );
            }
            None => errors.push(AllocError::HostPortsExhausted {
                origin: origin.clone(),
                server: server.to_string(),
                replica: key.clone(),
                lo,
                hi,
            }),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// `<server host>:<host port>`: where a gateway reaches a replica slot.
pub fn dial_address(model: &Model, assignment: &PortAssignment, slot: Slot) -> Option<String> {
    let host = &model.servers.get(&assignment.server)?.host;
    Some(format!("{host}:{}", assignment.host_port(slot)))
}

// ---------------------------------------------------------------------------------------------
// Processes and the scheduler

/// The command a replica of `service` runs: `command:` if set; otherwise the image's own for a web
/// service, the queue worker for a worker, `schedule:work` for a scheduler-only service.
pub fn process_command(service: &AppService) -> Option<String> {
    if let Some(c) = &service.command {
        return Some(c.clone());
    }
    let has = |r| service.roles.contains(&r);
    if has(ProcessRole::Web) {
        None
    } else if has(ProcessRole::Worker) {
        Some(QUEUE_WORKER_COMMAND.to_string())
    } else if has(ProcessRole::Scheduler) {
        Some(SCHEDULER_COMMAND.to_string())
    } else {
        None
    }
}

/// The replica running the scheduler in `single` mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedulerHolder {
    pub service: String,
    /// 1-based replica index.
    pub replica: u32,
}

/// The `single` scheduler's holder for `env`: the previous holder while that replica still exists
/// (same service, index ≤ replicas), otherwise replica 1. `None` when the environment has no
/// scheduler, uses `every_replica`, or its scheduler service has no replicas.
pub fn scheduler_holder(
    env: &Environment,
    previous: Option<&SchedulerHolder>,
) -> Option<SchedulerHolder> {
    let scheduler = env.scheduler.as_ref()?;
    if scheduler.mode != SchedulerMode::Single {
        return None;
    }
    let replicas = env.services.get(&scheduler.service)?.replicas;
    if replicas == 0 {
        return None;
    }
    let replica = match previous {
        Some(p) if p.service == scheduler.service && (1..=replicas).contains(&p.replica) => {
            p.replica
        }
        _ => 1,
    };
    Some(SchedulerHolder {
        service: scheduler.service.clone(),
        replica,
    })
}

/// Whether replica `index` of `service` runs the scheduler, given the holder from
/// `scheduler_holder`. A service with the `scheduler` role always runs it.
pub fn runs_scheduler(
    env: &Environment,
    service: &str,
    index: u32,
    holder: Option<&SchedulerHolder>,
) -> bool {
    if env
        .services
        .get(service)
        .is_some_and(|s| s.roles.contains(&ProcessRole::Scheduler) && env.scheduler.is_none())
    {
        return true;
    }
    match &env.scheduler {
        None => false,
        Some(s) if s.service != service => false,
        Some(s) => match s.mode {
            SchedulerMode::EveryReplica => true,
            SchedulerMode::Single => {
                holder.is_some_and(|h| h.service == service && h.replica == index)
            }
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Migrations

/// Why a migration is asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrationContext {
    /// An environment deploy.
    Deploy,
    /// An explicit request: `keystone migrate APP/ENV` or the daemon API.
    Request,
}

/// When a migration runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationWhen {
    /// In a deploy, after the new replicas are healthy and before the gateway switches.
    PreSwitch,
    /// In a deploy, after the gateway cutover.
    PostSwitch,
    /// On an explicit request, against the running image.
    Now,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationRun {
    pub service: String,
    pub when: MigrationWhen,
    /// Shell command run in a one-off container of the service's image.
    pub command: String,
}

/// The one decision every caller uses: does `service` migrate in this context, when, with what.
/// `auto` runs in deploys at its timing and on request; `manual` only on request; `disabled`
/// never.
pub fn migration(service: &AppService, context: MigrationContext) -> Option<MigrationRun> {
    let when = match (service.migrations.mode, context) {
        (MigrationMode::Disabled, _) => return None,
        (MigrationMode::Manual, MigrationContext::Deploy) => return None,
        (MigrationMode::Auto, MigrationContext::Deploy) => match service.migrations.timing {
            MigrationTiming::PreSwitch => MigrationWhen::PreSwitch,
            MigrationTiming::PostSwitch => MigrationWhen::PostSwitch,
        },
        (MigrationMode::Auto | MigrationMode::Manual, MigrationContext::Request) => {
            MigrationWhen::Now
        }
    };
    Some(MigrationRun {
        service: service.name.clone(),
        when,
        command: service.migrations.command.clone(),
    })
}

/// The script running a migration in a one-off container of a rendered replica (same image, same
/// .env, no published ports, removed afterwards), from that replica's directory. Compose runs with
/// `--env-file /dev/null` so the replica's .env configures the container only, never Compose.
pub fn migration_script(
    run: &MigrationRun,
    remote_dir: &str,
    project: &str,
    compose_service: &str,
) -> String {
    format!(
        "set -eu\ncd {} && {}\n",
        shell::quote(remote_dir),
        shell::join([
            "docker",
            "compose",
            "--project-directory",
            remote_dir,
            "-p",
            project,
            "-f",
            "compose.yml",
            "--env-file",
            "/dev/null",
            "run",
            "--rm",
            "--no-deps",
            "-T",
            compose_service,
            "sh",
            "-c",
            run.command.as_str(),
        ])
    )
}

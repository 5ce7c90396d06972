//! Drivers: what each kind of service *is* (SPEC.md §3). One module per service type; a driver
//! answers questions ("what image, which ports, which variables, which SQL"), it never runs
//! anything.
//!
//! Architecture invariant: no capability of a service type lives outside its driver. The pure
//! allocation rules the planner needs (Valkey indexes, scheduler holder, blue/green slots and host
//! ports, migrations) live in the driver module they belong to; `variables` combines the drivers'
//! exports with the environment's own variables.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::{AttachmentRole, Model, Origin, SharedService};

pub mod caddy2;
pub mod laravel;
pub mod postgres18;
pub mod valkey8;
pub mod variables;

/// Whether a driver is used by application services (in environment files) or by shared services
/// (`services/<name>.yaml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverKind {
    Application,
    Shared,
}

/// Where a service's image comes from and how it is pinned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImagePolicy {
    /// Built from the application's source by Keystone (`build:`), pushed to its registry and
    /// always deployed as `<repository>@sha256:…`.
    Built,
    /// An upstream image (overridable with `image:`), resolved to a digest before deploying and
    /// deployed as `<image>@sha256:…`.
    Upstream { default_image: &'static str },
}

/// A named volume a service keeps its state in: `keystone_service_<service>_<purpose>`, always
/// written with an explicit `name:` so it survives compose project changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Volume {
    pub name: String,
    pub purpose: &'static str,
    /// Mount point inside the container.
    pub target: &'static str,
}

impl Volume {
    pub fn for_service(service: &str, purpose: &'static str, target: &'static str) -> Volume {
        Volume {
            name: format!("keystone_service_{service}_{purpose}"),
            purpose,
            target,
        }
    }
}

/// A variable the container reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvVar {
    pub name: &'static str,
    pub required: bool,
    pub description: &'static str,
}

/// What the health check of a container is asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthTarget<'a> {
    /// The port the container listens on (app port, or the shared service's own port).
    pub port: u16,
    /// HTTP path probed, for HTTP services.
    pub path: &'a str,
    /// Whether the container serves HTTP on `port` (a Laravel queue worker does not).
    pub http: bool,
}

/// A Docker health check, written into compose.yml; `docker inspect` polls it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthCheck {
    /// The `test:` list, e.g. `["CMD-SHELL", "pg_isready …"]`. Written as is: `$` is escaped for
    /// Compose by the renderer, so a driver writes plain shell.
    pub test: Vec<String>,
    #[serde(with = "crate::model::duration_secs")]
    pub interval: Duration,
    #[serde(with = "crate::model::duration_secs")]
    pub timeout: Duration,
    pub retries: u32,
    #[serde(with = "crate::model::duration_secs")]
    pub start_period: Duration,
}

/// Resource defaults of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resources {
    /// Time between SIGTERM and SIGKILL on stop (workers finish jobs, Postgres checkpoints).
    pub stop_grace_period: Duration,
    /// Compose `mem_limit`, e.g. `512m`; `None` leaves the container unlimited.
    pub memory_limit: Option<&'static str>,
}

/// What a slice of a shared service is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SliceType {
    /// Postgres: a database and a login role owning it.
    Database,
    /// Valkey: a logical database index.
    LogicalDatabase,
    /// Caddy: the route of an environment's domains to its target service.
    Route,
}

/// Which port a firewall rule opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortRef {
    /// The shared service's published port (`port:` or the driver default).
    Service,
    /// The host ports of an app service's replicas (both blue/green slots).
    ReplicaHostPorts,
    /// Caddy's admin API port.
    Admin,
}

/// Who may reach a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peers {
    /// Everyone (public HTTP).
    Anywhere,
    /// The servers running replicas of environments attached to this service.
    AttachedServers,
    /// The servers running a gateway that routes to this service.
    GatewayServers,
    /// Only the host itself (127.0.0.1).
    Localhost,
}

/// A declarative firewall rule: "port P is reachable from peers X".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirewallRule {
    pub port: PortRef,
    pub from: Peers,
}

/// How a new image or config reaches a running service (SPEC.md §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateBehavior {
    /// Start the new replica beside the old one (the other blue/green slot), wait healthy, cut the
    /// gateway over, stop the old one.
    StatelessBlueGreen,
    /// Stop → verify the named volume → render with the new digest → start → wait healthy →
    /// verify the same volume.
    StatefulStopStart,
}

/// A command run inside a service's new container before traffic switches to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerCommand {
    pub name: &'static str,
    pub argv: Vec<String>,
}

/// A string that may hold a secret: never displayed, debug-printed as `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Sensitive(String);

impl Sensitive {
    pub fn new(value: impl Into<String>) -> Sensitive {
        Sensitive(value.into())
    }
    /// The plaintext; only renderers writing files that go to servers call this.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Sensitive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sensitive(***)")
    }
}

/// A user name and its password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: Sensitive,
}

/// A slice: what one environment has of one shared service (Postgres database, Valkey index,
/// Caddy route). All attachments of an environment to the same service share one slice.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SliceKey {
    pub service: String,
    pub app: String,
    pub env: String,
}

impl SliceKey {
    pub fn new(service: &str, app: &str, env: &str) -> SliceKey {
        SliceKey {
            service: service.to_string(),
            app: app.to_string(),
            env: env.to_string(),
        }
    }
}

impl fmt::Display for SliceKey {
    /// `main-postgres[shop/production]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}/{}]", self.service, self.app, self.env)
    }
}

/// Applied facts the drivers need from state (the planner passes what the engine recorded).
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// Valkey logical database per slice, from `valkey8::allocate_indexes`.
    pub valkey_indexes: BTreeMap<SliceKey, u32>,
    /// The password of each Postgres slice's login role, when the caller has it. A slice without
    /// one exports the placeholder `{{generated:<service>/<app>/<env>}}` (see
    /// `postgres18::slice_password`), which the executor fills.
    pub postgres_passwords: BTreeMap<SliceKey, Sensitive>,
}

/// A variable a slice exports to the attaching environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    pub name: &'static str,
    pub value: ExportValue,
    /// May the environment's own variables override it?
    pub overridable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportValue {
    Plain(String),
    Sensitive(Sensitive),
}

/// What `environment_exports` is asked about: one attachment of one environment.
#[derive(Debug, Clone, Copy)]
pub struct ExportContext<'a> {
    pub model: &'a Model,
    pub service: &'a SharedService,
    pub slice: &'a SliceKey,
    pub role: AttachmentRole,
    pub attachment_origin: &'a Origin,
    pub facts: &'a Facts,
}

/// What a slice script is asked about.
#[derive(Debug, Clone, Copy)]
pub struct SliceContext<'a> {
    pub model: &'a Model,
    pub service: &'a SharedService,
    pub slice: &'a SliceKey,
    pub facts: &'a Facts,
    /// Postgres: the service's admin credentials; only the user name is used (`None`:
    /// `postgres18::ADMIN_USER`).
    pub admin: Option<&'a Credentials>,
}

/// A script run on (each) server of a shared service to provision or configure a slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceScript {
    /// Short step name, e.g. `create database and role`.
    pub name: String,
    /// A complete `sh` program; every interpolated value is quoted.
    pub script: String,
    /// Bytes fed to the script's stdin. May hold secrets (passwords in SQL).
    pub stdin: Option<Sensitive>,
    /// What is safe to show about the stdin, e.g. `SQL (1.1 KiB)`.
    pub stdin_summary: Option<String>,
}

/// A driver could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriverError {
    #[error("{origin}: {message}")]
    Invalid { origin: Origin, message: String },
}

/// The driver contract. Every capability of SPEC.md §3 is an explicit method; the contract tests
/// (tests/drivers_contract.rs) assert every driver's answer to each.
pub trait Driver: Send + Sync {
    /// The `driver:` name in the config (SPEC's `type`), e.g. `postgres18`.
    fn name(&self) -> &'static str;
    fn kind(&self) -> DriverKind;
    /// The upstream major version this driver follows (`18` for postgres18).
    fn version_track(&self) -> &'static str;
    fn image_policy(&self) -> ImagePolicy;
    /// Attachment roles an environment may attach to a service of this driver with.
    fn attachment_roles(&self) -> &'static [AttachmentRole];
    /// Host ports a shared service publishes by default (used for collision checks).
    fn default_ports(&self) -> &'static [u16];
    /// Named volumes of a service called `service`.
    fn volumes(&self, service: &str) -> Vec<Volume>;
    /// Variables the container reads.
    fn env_schema(&self) -> &'static [EnvVar];
    fn health_check(&self, target: HealthTarget<'_>) -> HealthCheck;
    fn resource_defaults(&self) -> Resources;
    fn slice_types(&self) -> &'static [SliceType];
    /// What one attachment exports to the attaching environment.
    fn environment_exports(&self, ctx: &ExportContext<'_>) -> Result<Vec<Export>, DriverError>;
    fn firewall_rules(&self) -> &'static [FirewallRule];
    fn update_behavior(&self) -> UpdateBehavior;
    /// Commands run in the new container before traffic switches to it.
    fn pre_switch_steps(&self) -> Vec<ContainerCommand>;
    /// Creates the slice on the running service (never by redeploying it). `None`: the driver's
    /// slices need no creation.
    fn provision_slice(&self, ctx: &SliceContext<'_>) -> Result<Option<SliceScript>, DriverError>;
    /// Brings the running service's view of its slices up to date (Caddy: load the routes).
    fn configure_slice(&self, ctx: &SliceContext<'_>) -> Result<Option<SliceScript>, DriverError>;
    /// How many slices (one per attaching environment) one service of this driver can hold, when
    /// that is bounded: Valkey's logical databases. `None`: unbounded. `config` uses it to report
    /// exhausted services at validation time.
    fn slice_limit(&self, service: &SharedService) -> Option<u32> {
        let _ = service;
        None
    }
}

static DRIVERS: [&dyn Driver; 4] = [
    &laravel::Laravel,
    &postgres18::Postgres18,
    &valkey8::Valkey8,
    &caddy2::Caddy2,
];

/// The driver registered under `name`.
pub fn get(name: &str) -> Option<&'static dyn Driver> {
    DRIVERS.iter().copied().find(|d| d.name() == name)
}

/// Every registered driver name, for "expected one of" messages.
pub fn names() -> Vec<&'static str> {
    DRIVERS.iter().map(|d| d.name()).collect()
}

/// Every registered driver.
pub fn all() -> &'static [&'static dyn Driver] {
    &DRIVERS
}

/// The container name of a shared service's replica: stable across deploys (`keystone-edge`).
pub fn shared_container_name(service: &str) -> String {
    format!("keystone-{service}")
}

/// The host port a shared service publishes.
pub fn shared_port(service: &SharedService) -> Option<u16> {
    service
        .port
        .or_else(|| get(&service.driver).and_then(|d| d.default_ports().first().copied()))
}

/// The host of a shared service's first server (where environments connect to it).
pub fn shared_host<'m>(model: &'m Model, service: &SharedService) -> Option<&'m str> {
    service
        .servers
        .first()
        .and_then(|s| model.servers.get(s))
        .map(|s| s.host.as_str())
}

/// `<image>@<digest>`: the digest is `sha256:…` or a placeholder token such as `{{digest:shop}}`.
/// An image already pinned (`…@sha256:…`) keeps its own digest.
pub fn pin_image(image: &str, digest: &str) -> String {
    if image.contains('@') {
        image.to_string()
    } else {
        format!("{image}@{digest}")
    }
}

/// The image of a shared service before pinning: `image:` or the driver's default.
pub fn shared_image(service: &SharedService) -> Option<String> {
    if let Some(image) = &service.image {
        return Some(image.clone());
    }
    match get(&service.driver)?.image_policy() {
        ImagePolicy::Upstream { default_image } => Some(default_image.to_string()),
        ImagePolicy::Built => None,
    }
}

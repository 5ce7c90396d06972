//! The validated, fully resolved config model.
//!
//! `config` turns raw files (with spans) into this; everything downstream (drivers, render, plan,
//! execute, daemon) reads only this. Every reference in a `Model` resolves: a `server` names a key of
//! `Model::servers`, a `service` a key of `Model::services`, and so on.
//!
//! Architecture invariant: the model holds no plaintext secret values, only `SecretRef`s. Values are
//! resolved by `secrets` at render time.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where a resource or value was written: a path relative to the config repository root and a
/// 1-based line and column. Used by plan blockers and warnings to point back at the config.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct Origin {
    pub file: String,
    pub line: u32,
    pub column: u32,
}

impl std::fmt::Display for Origin {
    /// `file:line:col`, as editors and compilers print positions.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// The whole desired state described by one commit (or working tree) of a config repository.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    pub project: Project,
    pub servers: BTreeMap<String, Server>,
    pub registries: BTreeMap<String, Registry>,
    pub services: BTreeMap<String, SharedService>,
    pub applications: BTreeMap<String, Application>,
    /// Secret files present under `secrets/`, by file stem.
    pub secret_files: BTreeMap<String, SecretFile>,
}

/// `keystone.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Project {
    pub version: u32,
    pub reconcile: Reconcile,
    pub status: StatusSettings,
    /// Root of everything Keystone writes on a server. Default `/home/keystone`.
    pub remote_root: String,
    pub health: HealthSettings,
    /// Default age recipients for `keystone secrets encrypt|set|edit`.
    pub secrets: SecretsSettings,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reconcile {
    /// The tracked branch of the config repository. Default `main`.
    pub branch: String,
    /// Poll interval. Default 60 s.
    #[serde(with = "duration_secs")]
    pub interval: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusSettings {
    /// Default `keystone/status`.
    pub branch: String,
    /// Operation logs older than this many days are dropped from the status branch tree. Default 30.
    pub keep_operations_days: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthSettings {
    /// Health probe interval. Default 30 s.
    #[serde(with = "duration_secs")]
    pub interval: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct SecretsSettings {
    pub age_recipients: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransportKind {
    /// The system `ssh`, multiplexed.
    Ssh,
    /// This machine's Docker engine, no SSH.
    Local,
}

/// `servers/<name>.yaml`: one Docker host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Server {
    pub name: String,
    pub origin: Origin,
    pub host: String,
    /// Default 22.
    pub port: u16,
    /// Default `keystone`.
    pub user: String,
    /// Pinned host key (`ssh-ed25519 AAAA…`); required for `transport: ssh`.
    pub host_key: Option<String>,
    pub roles: Vec<String>,
    pub transport: TransportKind,
}

impl Server {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// `registries/<name>.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registry {
    pub name: String,
    pub origin: Origin,
    /// Host and optional port, e.g. `registry.example.com` or `10.77.0.1:5000`.
    pub url: String,
    pub namespace: Option<String>,
    pub username: Option<Value>,
    pub password: Option<Value>,
    /// Plain HTTP instead of HTTPS. Default false.
    pub insecure: bool,
}

/// A string that is either written in the config or a reference into a secrets file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Value {
    Plain(String),
    Secret(SecretRef),
}

/// `{secret: <file-stem>.<dotted.key>}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SecretRef {
    /// The file stem under `secrets/` (`registry` for `secrets/registry.sops.yaml`).
    pub file: String,
    /// The key path inside the file, e.g. `["db", "password"]`.
    pub key_path: Vec<String>,
    pub origin: Origin,
}

impl SecretRef {
    /// `file.key.path`, as written in the config.
    pub fn display_path(&self) -> String {
        let mut s = self.file.clone();
        for k in &self.key_path {
            s.push('.');
            s.push_str(k);
        }
        s
    }
}

/// A file under `secrets/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretFile {
    pub stem: String,
    /// Path relative to the repository root.
    pub path: String,
    /// Key paths present in the file (SOPS keeps keys in plaintext), so references can be checked
    /// without decrypting.
    pub key_paths: Vec<Vec<String>>,
}

/// `services/<name>.yaml`: a shared managed service (postgres, valkey, caddy gateway).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SharedService {
    pub name: String,
    pub origin: Origin,
    /// `postgres18`, `valkey8`, `caddy2`.
    pub driver: String,
    /// The servers its replicas run on (one replica per server). `server: x` is `servers: [x]`.
    pub servers: Vec<String>,
    /// Image override (e.g. a locally built stand-in); default from the driver's image policy.
    pub image: Option<String>,
    /// Host port the service publishes; default from the driver.
    pub port: Option<u16>,
    /// Valkey: number of logical databases. Default 16.
    pub databases: Option<u32>,
    /// Caddy: host port of the admin API (bound to 127.0.0.1 on the host). Default 2019.
    pub admin_port: Option<u16>,
}

/// `applications/<app>/application.yaml` plus its environments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Application {
    pub name: String,
    pub origin: Origin,
    pub source: Source,
    pub build: Build,
    pub environments: BTreeMap<String, Environment>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Source {
    /// Git URL of the application source.
    pub repo: String,
    pub deploy_key: Option<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildStrategy {
    Local,
    DedicatedBuilder,
    ExternalRegistry,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Build {
    pub strategy: BuildStrategy,
    /// Default `Dockerfile`.
    pub dockerfile: String,
    /// Default `.`.
    pub context: String,
    pub registry: Option<String>,
    /// Repository name inside the registry namespace. Default: the application name.
    pub repository: String,
    /// `external_registry`: the tag to resolve to a digest. Default `latest`.
    pub tag: Option<String>,
}

/// `applications/<app>/environments/<env>.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Environment {
    pub app: String,
    pub name: String,
    pub origin: Origin,
    /// Branch, tag or commit of the application source. Default `main`.
    pub git_ref: String,
    pub services: BTreeMap<String, AppService>,
    pub scheduler: Option<Scheduler>,
    pub attachments: Vec<Attachment>,
    /// User and secret variables, in file order.
    pub variables: Vec<(String, Value)>,
    /// Where each variable's key was written (by name), for collision errors. A variable missing
    /// here is reported at the environment's own origin.
    #[serde(default)]
    pub variable_origins: BTreeMap<String, Origin>,
    /// Re-apply drifted replicas automatically. Default false.
    pub self_heal: bool,
}

impl Environment {
    /// `app/env`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.app, self.name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessRole {
    Web,
    Worker,
    Scheduler,
}

/// An application service of an environment (`services.web`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppService {
    pub name: String,
    pub origin: Origin,
    /// `laravel`.
    pub driver: String,
    pub roles: Vec<ProcessRole>,
    pub replicas: u32,
    /// The servers replicas go to, resolved from `placement` (role or explicit list), sorted by
    /// name. Replica `i` (1-based) runs on `servers[(i - 1) % servers.len()]`.
    pub servers: Vec<String>,
    pub placement: Placement,
    pub migrations: Migrations,
    pub health: Health,
    /// Port the container listens on. Default 8080.
    pub port: u16,
    /// Command override for the container.
    pub command: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    Role(String),
    Servers(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationMode {
    Auto,
    Manual,
    Disabled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationTiming {
    PreSwitch,
    PostSwitch,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Migrations {
    /// Default `disabled` for services without the web role, `auto` for web.
    pub mode: MigrationMode,
    /// Default `pre_switch`.
    pub timing: MigrationTiming,
    /// Default `php artisan migrate --force`.
    pub command: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// HTTP path probed on the container port. Default `/up`.
    pub path: String,
    /// How long a new replica may take to become healthy. Default 120 s.
    #[serde(with = "duration_secs")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerMode {
    Single,
    EveryReplica,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scheduler {
    /// An app service of the same environment.
    pub service: String,
    pub mode: SchedulerMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachmentRole {
    Database,
    Cache,
    Session,
    Queue,
    Gateway,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub origin: Origin,
    /// A shared service.
    pub service: String,
    pub role: AttachmentRole,
    /// Queue role: acknowledges that the environment's queue driver changes. Default false.
    pub confirm_queue_driver: bool,
    /// Gateway role: the domains routed to `target`.
    pub domains: Vec<String>,
    /// Gateway role: the app service receiving the traffic.
    pub target: Option<String>,
}

/// Serialize a `Duration` as whole seconds.
pub mod duration_secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_secs(u64::deserialize(d)?))
    }
}

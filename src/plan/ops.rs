//! The operation tree: what a plan is made of, as plain data.
//!
//! This is the contract between `plan` (which builds it, purely), `execute` (which walks it) and
//! `status`/`daemon` (which render it). Order is explicit: children run in the order of
//! `Operation::children`; `Children::ParallelByServer` lets children on different servers run at
//! the same time (bounded by the orchestrator's width), while children on the same server still run
//! in declared order.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What an operation does, in the vocabulary of SPEC.md §5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationKind {
    EnvironmentDeploy,
    Build,
    SliceProvision,
    SliceConfigure,
    ServiceDeploy,
    ReplicaDeploy,
    Migration,
    GatewayCutover,
    StatefulUpdate,
    ServiceRemoval,
    ReplicaRemoval,
}

impl OperationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EnvironmentDeploy => "environment_deploy",
            Self::Build => "build",
            Self::SliceProvision => "slice_provision",
            Self::SliceConfigure => "slice_configure",
            Self::ServiceDeploy => "service_deploy",
            Self::ReplicaDeploy => "replica_deploy",
            Self::Migration => "migration",
            Self::GatewayCutover => "gateway_cutover",
            Self::StatefulUpdate => "stateful_update",
            Self::ServiceRemoval => "service_removal",
            Self::ReplicaRemoval => "replica_removal",
        }
    }
}

/// How an operation's children are scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Children {
    /// One after another, in declared order.
    #[default]
    Sequential,
    /// Children whose `server` differs may run concurrently; same-server children keep their order.
    ParallelByServer,
}

/// One node of the tree. Its own steps run first, then its children.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Operation {
    /// Stable, human-readable id unique within the plan, e.g.
    /// `shop/production/service_deploy/web/replica_deploy/web#2`. Not used for ordering.
    pub id: String,
    pub kind: OperationKind,
    /// One line for people: `replica_deploy web#2 @web-2`.
    pub title: String,
    /// The server this operation is about, when it is about one (replicas, slices on a service).
    pub server: Option<String>,
    pub steps: Vec<Step>,
    pub children_mode: Children,
    pub children: Vec<Operation>,
}

impl Operation {
    /// Depth-first iterator over this operation and all descendants, in declared order.
    pub fn walk(&self) -> Vec<&Operation> {
        let mut out = vec![self];
        for c in &self.children {
            out.extend(c.walk());
        }
        out
    }
}

/// Where a step runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// The machine running Keystone.
    Local,
    /// A server of the config, by name.
    Server(String),
}

/// One unit of work. Steps of an operation run sequentially.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// Short name: `upload compose.yml`, `pull image`, `start`, `wait healthy`.
    pub name: String,
    pub target: Target,
    pub action: StepAction,
    #[serde(with = "crate::model::duration_secs")]
    pub timeout: Duration,
    /// Safe to retry (and to re-run after an interrupted operation).
    pub idempotent: bool,
    /// When set, the step's trimmed stdout's last line is stored under this name and substituted
    /// for `{{name}}` placeholders (see `Placeholder`) in later steps' scripts and files.
    pub capture: Option<String>,
    /// Clean-up run on the same target, once, when this step has failed for good (after its
    /// last attempt; not after an interruption): e.g. stop and remove the new replica whose
    /// health check failed, so it does not linger beside the old one. A complete `sh` program,
    /// quoted like `action`'s scripts; its outcome is appended to the step's output and error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<String>,
}

/// What a step does. Scripts are complete `sh` programs in which every interpolated value is
/// already quoted (see `crate::shell`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum StepAction {
    /// Run a POSIX shell script (`sh -c` on the target), optionally feeding it stdin.
    Run {
        script: String,
        /// Bytes fed to the script's stdin (e.g. SQL, a registry password). May contain secrets:
        /// it is never logged or stored; only `stdin_summary` is shown.
        #[serde(skip_serializing_if = "Option::is_none")]
        stdin: Option<Payload>,
    },
    /// Write a file atomically (temp + rename) with this mode, creating parent directories.
    Upload {
        path: String,
        mode: u32,
        contents: Payload,
    },
    /// Resolve an image tag to a digest through the registry's HTTP API, on the machine running
    /// Keystone: `HEAD /v2/<repository>/manifests/<tag>` accepting the four manifest media types
    /// (Docker v2 manifest and list, OCI manifest and index), answer from `Docker-Content-Digest`.
    /// The digest (`sha256:…`) is the step's output, so `capture` stores it like a script's last
    /// stdout line.
    ResolveDigest {
        /// `host[:port]/repository:tag`, e.g. `10.77.0.1:5000/acme/shop:latest`.
        image: String,
        /// The config registry (`registries/<name>.yaml`) whose credentials and `insecure` flag
        /// apply; `None`: anonymous HTTPS to the image's host.
        registry: Option<String>,
    },
}

/// Bytes for a step, with a description that is safe to show and store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    /// The bytes. May hold secret values and `{{placeholder}}`s; never written to logs or the
    /// state database (the `summary` and `sha256` are).
    #[serde(skip)]
    pub bytes: Vec<u8>,
    /// e.g. `compose.yml (1.2 KiB)` or `.env (14 variables, 3 secret)`.
    pub summary: String,
    /// Hex SHA-256 of the bytes as planned (before placeholder substitution).
    pub sha256: String,
}

/// A value known only while executing, written `{{name}}` in scripts and payloads, e.g.
/// `{{digest:shop}}` filled from the build step that captured it.
///
/// Namespaces the planner emits (the executor resolves each before a step runs):
/// - `digest:<app>`: captured by a build or `ResolveDigest` step (`capture: Some("digest:<app>")`);
///   always `sha256:<64 hex>` (the executor refuses anything else, so it is safe inside quotes).
/// - `secret:<file>.<dotted.key>`: the decrypted value of that secret reference. Appears only in
///   `Payload` bytes (uploads, stdin), never in scripts, and is redacted from every output.
/// - `generated:<key>`: a credential Keystone generates once (e.g. a Postgres role's password):
///   the executor looks `<key>` up in its encrypted state and, when absent, generates 32 random
///   bytes (URL-safe base64, no padding) and stores them. Payloads only, like secrets.
///
/// Only these three namespaces are placeholders; any other `{{…}}` text (e.g. a
/// `docker inspect --format '{{.State.Status}}'` template) is left as written.
pub struct Placeholder;

impl Placeholder {
    pub fn token(name: &str) -> String {
        format!("{{{{{name}}}}}")
    }

    /// `{{digest:<app>}}`.
    pub fn digest(app: &str) -> String {
        Self::token(&Self::digest_name(app))
    }

    /// The capture name of an application's image digest, `digest:<app>`.
    pub fn digest_name(app: &str) -> String {
        format!("digest:{app}")
    }

    /// `{{secret:<file>.<dotted.key>}}`.
    pub fn secret(secret: &crate::model::SecretRef) -> String {
        Self::token(&format!("secret:{}", secret.display_path()))
    }

    /// `{{generated:<key>}}`.
    pub fn generated(key: &str) -> String {
        Self::token(&format!("generated:{key}"))
    }
}

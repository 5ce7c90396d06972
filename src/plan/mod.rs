//! The planner: `(desired model, applied state) -> operation tree`, and plan diffs.
//!
//! `plan` is the only entry point: it takes the validated model (plus the config diagnostics that
//! removed invalid environments from it), the applied state recorded by the engine, and a
//! `PlanContext` of everything that would otherwise need I/O (commit ids, secret fingerprints,
//! the operation id prefix). It returns a `Plan`: per environment the operation tree of SPEC.md
//! §5, the changes a reviewer reads, blockers and warnings, and the applied state the engine
//! records once the deploy succeeded.
//!
//! Architecture invariant: nothing in `plan` does I/O, reads a clock or draws randomness; those
//! are passed in. Secret values never enter the plan: payloads carry `{{secret:…}}` placeholders
//! the executor fills in (see `ops::Placeholder`).

pub mod applied;
pub mod changes;
mod driving;
mod environment;
pub mod ops;
pub mod output;
pub mod script;
mod shared;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::model::{self, Model};

pub use applied::{
    Applied, AppliedAppService, AppliedEnvironment, AppliedImage, AppliedReplica,
    AppliedSharedReplica, AppliedSharedService, AppliedSlice, AppliedVariable, ReplicaRef,
    VariableSource, plain_fingerprint,
};
pub use changes::{Change, ChangeKind};
pub use environment::applied_dir as applied_replica_dir;
pub use ops::{Children, Operation, OperationKind, Payload, Placeholder, Step, StepAction, Target};
pub use output::{Format, MARKDOWN_LIMIT, pr_marker, split_comment};

/// What the planner is asked for.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Request {
    /// Bring every environment to the desired state (the daemon's reconcile, a merged PR).
    #[default]
    Deploy,
    /// `keystone migrate APP/ENV`: run the migrations of that environment now, in its running
    /// replicas, whatever their mode (`manual` runs only this way; `disabled` never).
    Migrate { app: String, env: String },
    /// Self-heal: re-deploy these replicas of that environment (`service#index` → why they
    /// drifted) as the applied state has them, and nothing else — no build, no migration, no
    /// shared service (their data is never touched), no other environment.
    Heal {
        app: String,
        env: String,
        replicas: BTreeMap<String, String>,
    },
}

impl Request {
    /// The one environment this request is about, when it is about one.
    fn only(&self) -> Option<(&str, &str)> {
        match self {
            Request::Deploy => None,
            Request::Migrate { app, env } | Request::Heal { app, env, .. } => Some((app, env)),
        }
    }
}

/// What the planner knows about one secret reference, resolved by the caller (`secrets`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum SecretState {
    /// Decrypted; the keyed hash of its value (the same function the engine records).
    Fingerprint { fingerprint: String },
    /// Could not be decrypted or failed its MAC check. Blocks every environment using it.
    Undecryptable { reason: String },
}

/// Everything `plan` needs that would otherwise take I/O, a clock or randomness.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PlanContext {
    /// The config repository commit being planned (full or abbreviated id).
    pub config_commit: String,
    /// The application source commit each environment's `ref` resolves to, by `app/env`, when
    /// the caller knows it. Unknown commits show as "resolved at build".
    #[serde(default)]
    pub source_commits: BTreeMap<String, String>,
    /// Prefix of the operation ids that name remote directories
    /// (`<remote_root>/operations/<prefix>-<app>-<env>/`), e.g. `20261203T174200-e4f5a6b`.
    /// Must match `[A-Za-z0-9._-]+`; the caller makes it unique per run.
    pub operation_prefix: String,
    #[serde(default)]
    pub request: Request,
    /// By secret reference as written (`shop-production.app_key`). A reference missing here was
    /// not checked (no age identity): the plan says so and treats its value as unchanged.
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretState>,
}

/// Which part of the config a finding concerns (mirrors the config loader's scopes).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Scope {
    /// Blocks every environment.
    Project,
    /// Blocks every environment of `app`.
    Application { app: String },
    /// Blocks `app/env` only.
    Environment { app: String, env: String },
}

impl Scope {
    pub fn blocks(&self, app: &str, env: &str) -> bool {
        match self {
            Scope::Project => true,
            Scope::Application { app: a } => a == app,
            Scope::Environment { app: a, env: e } => a == app && e == env,
        }
    }
}

/// A blocker or a warning, pointing at the config when it can.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Finding {
    /// Stable kebab-case code, e.g. `queue-driver-change`, `undecryptable-secret`.
    pub code: String,
    /// `file:line:col` in the config repository, when the finding has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    pub message: String,
    /// What to do about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// A config diagnostic handed to the planner: what `config::load_*` reported, with its scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopedFinding {
    pub scope: Scope,
    pub finding: Finding,
}

/// The desired state: the model of a config commit and the diagnostics the loader reported for
/// it. Environments with an error are absent from the model; their diagnostics block them.
#[derive(Debug, Clone, Copy)]
pub struct Desired<'a> {
    pub model: &'a Model,
    pub diagnostics: &'a [ScopedFinding],
}

impl<'a> Desired<'a> {
    /// A model without diagnostics.
    pub fn valid(model: &'a Model) -> Desired<'a> {
        Desired {
            model,
            diagnostics: &[],
        }
    }
}

/// Whether an environment will be deployed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnvironmentStatus {
    /// Nothing differs from the applied state.
    Unchanged,
    /// The operation tree brings it to the desired state.
    Changed,
    /// A blocker stops this environment; nothing of it is deployed.
    Blocked,
    /// Deployed before, no longer in the config; its replicas are removed.
    Removed,
}

/// The plan of one environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvironmentPlan {
    pub app: String,
    pub env: String,
    pub status: EnvironmentStatus,
    /// One line: `1 build, 2 replicas replaced, migrations pre_switch` or `no changes`.
    pub summary: String,
    /// What a reviewer reads: `+ ~ -` lines (unchanged secrets appear with kind `unchanged`).
    pub changes: Vec<Change>,
    /// The operation id naming remote directories, `<prefix>-<app>-<env>`.
    pub operation_id: String,
    /// The tree to run; `None` when unchanged or blocked.
    pub operation: Option<Operation>,
    pub blockers: Vec<Finding>,
    pub warnings: Vec<Finding>,
    /// What the engine records after the operation succeeded (placeholders such as
    /// `{{digest:shop}}` replaced by their captured values). `None` for a removal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied_after: Option<AppliedEnvironment>,
}

impl EnvironmentPlan {
    /// `app/env`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.app, self.env)
    }
}

/// The plan of one shared service (create, stateful update, removal).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServicePlan {
    pub service: String,
    pub status: EnvironmentStatus,
    pub summary: String,
    pub changes: Vec<Change>,
    pub operation: Option<Operation>,
    pub blockers: Vec<Finding>,
    pub warnings: Vec<Finding>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied_after: Option<AppliedSharedService>,
}

/// A whole plan: shared services first (environments depend on them), then environments sorted
/// by `app/env`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub config_commit: String,
    /// The commit the changes are relative to, for a PR diff (`--base`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_commit: Option<String>,
    /// How servers are reached changed between base and head (PR diffs only). Nothing is run for
    /// these, but a reviewer must see them: a new host key changes which machine Keystone trusts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<ServerChange>,
    pub services: Vec<ServicePlan>,
    pub environments: Vec<EnvironmentPlan>,
}

/// One change to a server's connection settings between two commits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerChange {
    pub server: String,
    /// `added`, `removed`, or the changed field: `host`, `port`, `user`, `host_key`, `transport`.
    pub subject: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

/// `ssh-ed25519 SHA256:…` (what `ssh-keygen -l` prints) for a pinned `TYPE BASE64` host key; the
/// key as written when it is not of that form.
pub fn host_key_fingerprint(key: &str) -> String {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
    use sha2::{Digest, Sha256};
    let mut parts = key.split_whitespace();
    match (parts.next(), parts.next().map(|b| STANDARD.decode(b))) {
        (Some(kind), Some(Ok(blob))) => {
            format!(
                "{kind} SHA256:{}",
                STANDARD_NO_PAD.encode(Sha256::digest(&blob))
            )
        }
        _ => key.to_string(),
    }
}

/// What changed in `servers/` between two models, by server name.
pub fn server_changes(base: &Model, head: &Model) -> Vec<ServerChange> {
    let change =
        |server: &str, subject: &str, from: Option<String>, to: Option<String>| ServerChange {
            server: server.to_string(),
            subject: subject.to_string(),
            from,
            to,
        };
    let address = |s: &model::Server| format!("{}@{}:{}", s.user, s.host, s.port);
    let key = |k: &Option<String>| k.as_deref().map(host_key_fingerprint);
    let mut out = Vec::new();
    let names: BTreeSet<&String> = base.servers.keys().chain(head.servers.keys()).collect();
    for name in names {
        match (base.servers.get(name), head.servers.get(name)) {
            (None, Some(h)) => out.push(change(name, "added", None, Some(address(h)))),
            (Some(b), None) => out.push(change(name, "removed", Some(address(b)), None)),
            (Some(b), Some(h)) => {
                for (subject, from, to) in [
                    ("host", Some(b.host.clone()), Some(h.host.clone())),
                    ("port", Some(b.port.to_string()), Some(h.port.to_string())),
                    ("user", Some(b.user.clone()), Some(h.user.clone())),
                    ("host_key", key(&b.host_key), key(&h.host_key)),
                    (
                        "transport",
                        Some(format!("{:?}", b.transport).to_lowercase()),
                        Some(format!("{:?}", h.transport).to_lowercase()),
                    ),
                ] {
                    if from != to {
                        out.push(change(name, subject, from, to));
                    }
                }
            }
            (None, None) => {}
        }
    }
    out
}

impl Plan {
    pub fn environment(&self, app: &str, env: &str) -> Option<&EnvironmentPlan> {
        self.environments
            .iter()
            .find(|e| e.app == app && e.env == env)
    }

    /// True when any environment or service is blocked.
    pub fn is_blocked(&self) -> bool {
        self.environments
            .iter()
            .any(|e| e.status == EnvironmentStatus::Blocked)
            || self
                .services
                .iter()
                .any(|s| s.status == EnvironmentStatus::Blocked)
    }

    /// The applied state after every unblocked operation of this plan succeeded, with digests
    /// still unknown left as placeholders. The PR view plans the head commit against this
    /// projection of the base commit's plan.
    pub fn projected(&self, before: &Applied) -> Applied {
        let mut out = before.clone();
        for s in &self.services {
            match (&s.status, &s.applied_after) {
                (EnvironmentStatus::Removed, _) => {
                    out.services.remove(&s.service);
                }
                (EnvironmentStatus::Changed, Some(a)) => {
                    out.services.insert(s.service.clone(), a.clone());
                }
                _ => {}
            }
        }
        for e in &self.environments {
            match (&e.status, &e.applied_after) {
                (EnvironmentStatus::Removed, _) => {
                    out.environments.remove(&e.key());
                }
                (EnvironmentStatus::Changed, Some(a)) => {
                    out.environments.insert(e.key(), a.clone());
                }
                _ => {}
            }
        }
        out
    }
}

/// Plan the desired state against the applied one. Pure: the same inputs give the same plan.
pub fn plan(desired: Desired<'_>, applied: &Applied, ctx: &PlanContext) -> Plan {
    let model = desired.model;
    let services = shared::plan_services(model, applied, ctx);
    let (valkey, mut alloc_blockers) = driving::valkey_indexes(model, applied);
    let (ports, port_blockers) = driving::host_ports(model, applied);
    for (k, v) in port_blockers {
        alloc_blockers.entry(k).or_default().extend(v);
    }
    let alloc = environment::Allocations {
        valkey,
        ports,
        blockers: alloc_blockers,
        known_servers: applied
            .environments
            .values()
            .flat_map(|a| a.services.values().flat_map(|s| s.replicas.iter()))
            .map(|r| r.server.clone())
            .chain(
                applied
                    .services
                    .values()
                    .flat_map(|s| s.replicas.iter().map(|r| r.server.clone())),
            )
            .collect(),
    };
    // Every environment the config names (valid or not), every one that was deployed.
    let mut keys: BTreeMap<(String, String), ()> = BTreeMap::new();
    for app in model.applications.values() {
        for env in app.environments.values() {
            keys.insert((app.name.clone(), env.name.clone()), ());
        }
    }
    for d in desired.diagnostics {
        if let Scope::Environment { app, env } = &d.scope {
            keys.insert((app.clone(), env.clone()), ());
        }
    }
    for key in applied.environments.keys() {
        if let Some((app, env)) = key.split_once('/') {
            keys.insert((app.to_string(), env.to_string()), ());
        }
    }

    let mut todo = Vec::new();
    for (app, env) in keys.into_keys() {
        if let Some((a, e)) = ctx.request.only()
            && (a != app || e != env)
        {
            continue;
        }
        let blockers: Vec<Finding> = desired
            .diagnostics
            .iter()
            .filter(|d| d.scope.blocks(&app, &env))
            .map(|d| d.finding.clone())
            .collect();
        todo.push((app, env, blockers));
    }
    // Environments plan independently (the allocations above are shared, read-only): on the
    // available cores, each result at its environment's place, so the plan does not depend on
    // threads.
    let environments = crate::parallel::map(todo, |(app, env, blockers)| {
        environment::plan_environment(model, applied, ctx, &alloc, &app, &env, blockers)
    });

    Plan {
        config_commit: ctx.config_commit.clone(),
        base_commit: None,
        servers: Vec::new(),
        services: if ctx.request.only().is_some() {
            Vec::new()
        } else {
            services
        },
        environments,
    }
}

/// The PR view: what merging `head` changes relative to `base`, when the applied state is what
/// `base` deploys. Plans `base` against `applied`, projects it, and plans `head` against that.
pub fn diff(
    base: Desired<'_>,
    base_ctx: &PlanContext,
    head: Desired<'_>,
    head_ctx: &PlanContext,
    applied: &Applied,
) -> Plan {
    let servers = server_changes(base.model, head.model);
    let base_plan = plan(base, applied, base_ctx);
    let projected = base_plan.projected(applied);
    // Only the projection of the base plan is needed: its operation trees are freed on another
    // thread while the head is planned.
    // (When no thread can be started, the closure and the plan with it are dropped here.)
    let freed = std::thread::Builder::new().spawn(move || drop(base_plan));
    let mut head_plan = plan(head, &projected, head_ctx);
    head_plan.base_commit = Some(base_ctx.config_commit.clone());
    head_plan.servers = servers;
    if let Ok(t) = freed {
        let _ = t.join();
    }
    head_plan
}

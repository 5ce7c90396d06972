//! The plan of one environment: blockers, changes and the `environment_deploy` tree.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::applied::{
    Applied, AppliedAppService, AppliedEnvironment, AppliedImage, AppliedReplica, AppliedSlice,
    AppliedVariable, VariableSource, plain_fingerprint,
};
use super::changes::{Change, short_commit, short_digest, show_value};
use super::driving::{self, MigrationContext, MigrationWhen, Variable};
use super::ops::{Children, Operation, OperationKind, Placeholder, Step, StepAction, Target};
use super::script::{self, BuildSpec, RegistryLogin, payload};
use super::{EnvironmentPlan, EnvironmentStatus, Finding, PlanContext, Request, SecretState};
use crate::drivers::laravel::{PortAssignment, ReplicaKey, Slot};
use crate::drivers::{self, SliceContext, SliceKey};
use crate::model::{
    Application, AttachmentRole, BuildStrategy, Environment, Model, SecretRef, Value,
};

/// The Caddy server (in the gateway's JSON config) that holds the environments' routes.
/// (interim: until the caddy2 driver's rendered caddy.json names it)
pub const CADDY_SERVER: &str = "keystone";
/// How long the cutover waits for the old upstreams to finish their requests.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Allocations made once for the whole model (they must not collide across environments).
pub(super) struct Allocations {
    pub valkey: BTreeMap<SliceKey, u32>,
    pub ports: BTreeMap<ReplicaKey, PortAssignment>,
    /// Allocation errors by environment key.
    pub blockers: BTreeMap<String, Vec<Finding>>,
    /// Servers something was ever deployed to.
    pub known_servers: BTreeSet<String>,
}

const SHORT: Duration = Duration::from_secs(60);
const PULL: Duration = Duration::from_secs(600);
const BUILD: Duration = Duration::from_secs(1800);
const MIGRATE: Duration = Duration::from_secs(900);

/// Why a replica is (re)deployed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    New,
    Replace(String),
    Keep,
}

/// One replica as the config wants it.
struct Want {
    key: ReplicaKey,
    service: String,
    index: u32,
    server: String,
    slot: Slot,
    name: String,
    host_port: u16,
    fingerprint: String,
    action: Action,
    /// The running replica it replaces (same index), if any.
    previous: Option<AppliedReplica>,
    /// compose.yml, .env and names, from `render::replica_files` (for replicas that deploy).
    files: Option<crate::render::ReplicaFiles>,
}

impl Want {
    fn label(&self) -> String {
        format!("{}#{}", self.service, self.index)
    }
}

/// Everything the tree builders share.
struct Env<'a> {
    model: &'a Model,
    app: &'a Application,
    env: &'a Environment,
    ctx: &'a PlanContext,
    applied: Option<&'a AppliedEnvironment>,
    op_id: String,
    root: String,
    /// `repo@sha256:…`, `repo@{{digest:app}}` or `{{digest:app}}` (local build).
    image_ref: String,
    /// The digest recorded after the deploy (`{{digest:app}}` when built by this plan).
    digest: String,
    repository: String,
    login: Option<RegistryLogin>,
    variables: Vec<Variable>,
    /// `variable_fingerprint` of each of `variables` (same order), computed once.
    variable_fps: Vec<String>,
    facts: drivers::Facts,
}

/// Render a replica slot's files with the drivers' renderer.
#[allow(clippy::too_many_arguments)]
fn render_replica(
    model: &Model,
    key: &ReplicaKey,
    slot: Slot,
    ports: Option<&PortAssignment>,
    image: &str,
    commit: &str,
    entries: &[crate::render::EnvEntry],
    holder: Option<&crate::drivers::laravel::SchedulerHolder>,
) -> Result<crate::render::ReplicaFiles, crate::render::RenderError> {
    crate::render::replica_files(&crate::render::ReplicaInput::App(
        crate::render::AppReplica {
            model,
            replica: key,
            slot,
            ports,
            image,
            commit,
            variables: entries,
            scheduler: holder,
        },
    ))
}

pub(super) fn plan_environment(
    model: &Model,
    applied: &Applied,
    ctx: &PlanContext,
    alloc: &Allocations,
    app_name: &str,
    env_name: &str,
    mut blockers: Vec<Finding>,
) -> EnvironmentPlan {
    let key = format!("{app_name}/{env_name}");
    let op_id = format!("{}-{app_name}-{env_name}", ctx.operation_prefix);
    let applied_env = applied.environments.get(&key);
    let mut out = EnvironmentPlan {
        app: app_name.to_string(),
        env: env_name.to_string(),
        status: EnvironmentStatus::Unchanged,
        summary: String::new(),
        changes: Vec::new(),
        operation_id: op_id.clone(),
        operation: None,
        blockers: Vec::new(),
        warnings: Vec::new(),
        applied_after: None,
    };
    let desired = model
        .applications
        .get(app_name)
        .and_then(|a| a.environments.get(env_name).map(|e| (a, e)));

    let Some((app, env)) = desired else {
        if blockers.is_empty() {
            if let Some(a) = applied_env {
                return plan_removal(model, ctx, out, a);
            }
            blockers.push(Finding {
                code: "environment-missing".into(),
                location: None,
                message: format!("{key} is not in the config"),
                hint: None,
            });
        }
        out.status = EnvironmentStatus::Blocked;
        out.summary = blocked_summary(blockers.len());
        out.blockers = blockers;
        return out;
    };

    // Secrets this environment uses: variables, the deploy key, the registry's credentials.
    let mut used: Vec<&SecretRef> = Vec::new();
    for (_, v) in &env.variables {
        if let Value::Secret(r) = v {
            used.push(r);
        }
    }
    if let Some(Value::Secret(r)) = &app.source.deploy_key {
        used.push(r);
    }
    if let Some(reg) = app
        .build
        .registry
        .as_ref()
        .and_then(|r| model.registries.get(r))
    {
        for v in [&reg.username, &reg.password].into_iter().flatten() {
            if let Value::Secret(r) = v {
                used.push(r);
            }
        }
    }
    let mut unchecked = BTreeSet::new();
    for r in &used {
        match ctx.secrets.get(&r.display_path()) {
            Some(SecretState::Undecryptable { reason }) => blockers.push(Finding {
                code: "undecryptable-secret".into(),
                location: Some(r.origin.to_string()),
                message: format!("secret {} cannot be decrypted: {reason}", r.display_path()),
                hint: Some(
                    "re-encrypt the file to the daemon's age recipient (keystone secrets set)"
                        .into(),
                ),
            }),
            Some(SecretState::Fingerprint { .. }) => {}
            None => {
                unchecked.insert(r.display_path());
            }
        }
    }
    if !unchecked.is_empty() {
        out.warnings.push(Finding {
            code: "secrets-not-checked".into(),
            location: None,
            message: format!(
                "secret values not checked (no age identity): {}",
                unchecked.into_iter().collect::<Vec<_>>().join(", ")
            ),
            hint: Some("set SOPS_AGE_KEY_FILE to see whether they changed".into()),
        });
    }

    blockers.extend(alloc.blockers.get(&key).cloned().unwrap_or_default());
    let facts = driving::facts(model, env, &alloc.valkey);
    let (raw_vars, variables, var_blockers) = driving::variables(model, env, &facts);
    blockers.extend(var_blockers);

    // Queue driver guard.
    let queue = driving::queue_driver(&variables);
    if var_blockers_empty(&raw_vars, env)
        && let Some(b) =
            driving::queue_guard(env, &raw_vars, applied_env.map(|a| a.queue_driver.clone()))
    {
        blockers.push(b);
    }

    // Build and registry checks (SPEC §5).
    let all_servers: BTreeSet<&str> = env
        .services
        .values()
        .flat_map(|s| {
            s.servers
                .iter()
                .take(s.replicas as usize)
                .map(String::as_str)
        })
        .collect();
    let registry = app
        .build
        .registry
        .as_ref()
        .and_then(|r| model.registries.get(r));
    match app.build.strategy {
        BuildStrategy::Local if all_servers.len() > 1 => blockers.push(Finding {
            code: "local-build-multi-server".into(),
            location: Some(app.origin.to_string()),
            message: format!(
                "build strategy local needs every replica on one server; {key} places replicas on {}",
                all_servers.iter().copied().collect::<Vec<_>>().join(", ")
            ),
            hint: Some("use strategy dedicated_builder with a registry".into()),
        }),
        BuildStrategy::DedicatedBuilder
            if !model.servers.values().any(|s| s.has_role("builder")) =>
        {
            blockers.push(Finding {
                code: "no-builder".into(),
                location: Some(app.origin.to_string()),
                message: "build strategy dedicated_builder needs a server with role builder; there is none".into(),
                hint: Some("add `builder` to the roles of a server".into()),
            })
        }
        _ => {}
    }
    if app.build.strategy != BuildStrategy::Local && registry.is_none() {
        blockers.push(Finding {
            code: "registry-required".into(),
            location: Some(app.origin.to_string()),
            message: format!(
                "build strategy {} needs a registry",
                strategy_name(app.build.strategy)
            ),
            hint: Some("set build.registry to a registry of registries/".into()),
        });
    }
    let repository = driving::image_repository(model, &app.name);
    let login = registry.and_then(|r| {
        let password = r.password.as_ref()?;
        Some(RegistryLogin {
            host: r.url.clone(),
            username: r.username.as_ref().map(value_text).unwrap_or_default(),
            password: value_text(password),
        })
    });

    // Build decision.
    let source_commit = ctx.source_commits.get(&key).cloned();
    let build_fp = build_fingerprint(app, env, registry.map(|r| r.name.as_str()));
    let need_build = match applied_env.and_then(|a| a.image.as_ref()) {
        None => true,
        Some(_) => {
            let a = applied_env.expect("image implies applied");
            a.build.as_deref() != Some(build_fp.as_str())
                || matches!((&source_commit, &a.source_commit), (Some(n), Some(o)) if n != o)
                || (source_commit.is_some() && a.source_commit.is_none())
        }
    };
    let digest = if need_build {
        Placeholder::digest(&app.name)
    } else {
        applied_env
            .and_then(|a| a.image.as_ref())
            .map(|i| i.digest.clone())
            .unwrap_or_default()
    };
    let image_ref = if app.build.strategy == BuildStrategy::Local {
        digest.clone()
    } else {
        format!("{repository}@{digest}")
    };

    let mut e = Env {
        model,
        app,
        env,
        ctx,
        applied: applied_env,
        op_id: op_id.clone(),
        root: model.project.remote_root.trim_end_matches('/').to_string(),
        image_ref,
        digest: digest.clone(),
        repository: repository.clone(),
        login,
        variables,
        variable_fps: Vec::new(),
        facts,
    };
    e.variable_fps = e
        .variables
        .iter()
        .map(|v| variable_fingerprint(&e, v))
        .collect();

    // Desired replicas.
    let holder =
        driving::scheduler_holder(env, applied_env.and_then(|a| a.scheduler_holder.as_ref()));
    let mut wants: BTreeMap<String, Vec<Want>> = BTreeMap::new();
    let entries = crate::render::env_entries(&raw_vars, |r| {
        Ok::<_, std::convert::Infallible>(drivers::Sensitive::new(Placeholder::secret(r)))
    })
    .unwrap_or_else(|never| match never {});
    let holder_d = holder
        .as_ref()
        .map(|h| crate::drivers::laravel::SchedulerHolder {
            service: h.service.clone(),
            replica: h.index,
        });
    let mut render_errors = Vec::new();
    for (svc_name, svc) in &env.services {
        let mut list = Vec::new();
        for index in 1..=svc.replicas {
            let rkey = driving::replica_key(app_name, env_name, svc_name, index);
            let server = drivers::laravel::replica_server(svc, index)
                .unwrap_or_default()
                .to_string();
            let previous = applied_env
                .and_then(|a| a.services.get(svc_name))
                .and_then(|s| s.replicas.iter().find(|r| r.index == index))
                .cloned();
            let scheduler = driving::runs_scheduler(env, holder.as_ref(), svc_name, index);
            let fingerprint = replica_fingerprint(&e, svc_name, scheduler);
            let drifted = match &ctx.request {
                Request::Heal { replicas, .. } => replicas.get(&format!("{svc_name}#{index}")),
                _ => None,
            };
            let action = match &previous {
                None => Action::New,
                Some(p) if p.server != server => {
                    Action::Replace(format!("moved from {}", p.server))
                }
                Some(p) if p.digest != digest => Action::Replace("image changed".into()),
                Some(p) if p.env_fingerprint.as_deref() != Some(fingerprint.as_str()) => {
                    Action::Replace("env changed".into())
                }
                Some(_) => match drifted {
                    Some(why) => Action::Replace(format!("drifted: {why}")),
                    None => Action::Keep,
                },
            };
            let slot = match (&action, &previous) {
                (Action::Keep, Some(p)) => driving::slot_of(&p.slot).unwrap_or(Slot::Blue),
                _ => driving::next_slot(previous.as_ref()),
            };
            let name = match (&action, &previous) {
                (Action::Keep, Some(p)) => p.container.clone(),
                _ => driving::container_name(&rkey, slot),
            };
            let host_port = alloc
                .ports
                .get(&rkey)
                .map(|p| p.host_port(slot))
                .unwrap_or_default();
            let files = if action == Action::Keep {
                None
            } else {
                match render_replica(
                    model,
                    &rkey,
                    slot,
                    alloc.ports.get(&rkey),
                    &e.image_ref,
                    source_commit.as_deref().unwrap_or(&env.git_ref),
                    &entries,
                    holder_d.as_ref(),
                ) {
                    Ok(f) => Some(f),
                    Err(err) => {
                        render_errors.push(Finding {
                            code: "render".into(),
                            location: Some(svc.origin.to_string()),
                            message: format!("replica {rkey}: {err}"),
                            hint: None,
                        });
                        None
                    }
                }
            };
            let name = files.as_ref().map(|f| f.container.clone()).unwrap_or(name);
            list.push(Want {
                files,
                key: rkey,
                service: svc_name.clone(),
                index,
                server,
                slot,
                name,
                host_port,
                fingerprint,
                action,
                previous,
            });
        }
        wants.insert(svc_name.clone(), list);
    }

    blockers.extend(render_errors);

    // Replicas that leave: by index beyond the new count, and whole services.
    let mut leaving: BTreeMap<String, Vec<AppliedReplica>> = BTreeMap::new();
    if let Some(a) = applied_env {
        for (svc_name, svc) in &a.services {
            let keep = env.services.get(svc_name).map(|s| s.replicas).unwrap_or(0);
            let gone: Vec<_> = svc
                .replicas
                .iter()
                .filter(|r| r.index > keep)
                .cloned()
                .collect();
            if !gone.is_empty() {
                leaving.insert(svc_name.clone(), gone);
            }
        }
    }

    // Slices.
    let mut slices: BTreeMap<String, AppliedSlice> = BTreeMap::new();
    for a in &env.attachments {
        let Some(svc) = model.services.get(&a.service) else {
            continue;
        };
        let slice = match svc.driver.as_str() {
            "postgres18" => {
                let names = drivers::postgres18::slice_names(&SliceKey::new(
                    &a.service, app_name, env_name,
                ));
                AppliedSlice::PostgresDatabase {
                    database: names.database,
                    role: names.role,
                }
            }
            "valkey8" => {
                let slice_key = SliceKey::new(&a.service, app_name, env_name);
                let mut roles = match slices.get(&a.service) {
                    Some(AppliedSlice::ValkeyDatabase { roles, .. }) => roles.clone(),
                    _ => Vec::new(),
                };
                roles.push(a.role);
                roles.sort();
                roles.dedup();
                AppliedSlice::ValkeyDatabase {
                    index: alloc.valkey.get(&slice_key).copied().unwrap_or_default(),
                    roles,
                }
            }
            _ => AppliedSlice::GatewayRoute {
                domains: a.domains.clone(),
                target: a.target.clone().unwrap_or_default(),
            },
        };
        slices.insert(a.service.clone(), slice);
    }

    let changes = compute_changes(
        &e,
        &wants,
        &leaving,
        &slices,
        need_build,
        source_commit.as_deref(),
    );

    // Warnings: servers nothing was ever deployed to.
    let known = &alloc.known_servers;
    let new_servers: BTreeSet<&str> = wants
        .values()
        .flatten()
        .filter(|w| w.action != Action::Keep)
        .map(|w| w.server.as_str())
        .filter(|s| !known.contains(*s))
        .collect();
    if !applied.environments.is_empty() || !applied.services.is_empty() {
        for s in new_servers {
            out.warnings.push(Finding {
                code: "new-server".into(),
                location: model.servers.get(s).map(|s| s.origin.to_string()),
                message: format!(
                    "{s} has never been deployed to — its host key is pinned but unverified"
                ),
                hint: None,
            });
        }
    }
    if need_build
        && source_commit.is_none()
        && app.build.strategy != BuildStrategy::ExternalRegistry
    {
        out.warnings.push(Finding {
            code: "source-commit-unresolved".into(),
            location: Some(env.origin.to_string()),
            message: format!(
                "the commit of {}@{} is resolved at build",
                app.name, env.git_ref
            ),
            hint: None,
        });
    }
    for (svc, _) in applied_env.map(|a| a.slices.iter()).into_iter().flatten() {
        if !slices.contains_key(svc) {
            out.warnings.push(Finding {
                code: "slice-kept".into(),
                location: None,
                message: format!(
                    "{key} no longer attaches {svc}; its data there is kept (a plan never deletes stateful data)"
                ),
                hint: None,
            });
        }
    }

    // Slice scripts of new slices: a driver that cannot answer blocks the environment.
    let old_slices = applied_env.map(|a| &a.slices);
    for svc_name in slices.keys() {
        if old_slices.is_some_and(|o| o.contains_key(svc_name)) {
            continue;
        }
        if let Err(err) = slice_script(&e, svc_name) {
            blockers.push(Finding {
                code: "slice".into(),
                location: Some(model.services[svc_name].origin.to_string()),
                message: err.to_string(),
                hint: None,
            });
        }
    }

    let migrate_request = matches!(ctx.request, Request::Migrate { .. });
    out.changes = if migrate_request { Vec::new() } else { changes };
    if !blockers.is_empty() {
        out.status = EnvironmentStatus::Blocked;
        out.summary = blocked_summary(blockers.len());
        out.blockers = blockers;
        return out;
    }

    if migrate_request {
        return plan_migrate_request(&e, out);
    }

    let (root, summary) = build_tree(
        &e,
        &wants,
        &leaving,
        &slices,
        need_build,
        source_commit.as_deref(),
    );
    let any_change = !root.children.is_empty()
        || out
            .changes
            .iter()
            .any(|c| c.kind != super::ChangeKind::Unchanged);
    if !any_change {
        out.summary = "no changes".into();
        out.changes.clear();
        return out;
    }
    out.status = EnvironmentStatus::Changed;
    out.summary = summary;
    out.operation = Some(root);
    out.applied_after = Some(AppliedEnvironment {
        config_commit: ctx.config_commit.clone(),
        source_commit: if need_build {
            source_commit.clone()
        } else {
            applied_env.and_then(|a| a.source_commit.clone())
        },
        image: Some(AppliedImage {
            repository: repository.clone(),
            digest: digest.clone(),
        }),
        build: Some(build_fp),
        services: wants
            .iter()
            .map(|(name, list)| {
                (
                    name.clone(),
                    AppliedAppService {
                        driver: env.services[name].driver.clone(),
                        replicas: list
                            .iter()
                            .map(|w| AppliedReplica {
                                index: w.index,
                                server: w.server.clone(),
                                slot: w.slot.as_str().to_string(),
                                container: w.name.clone(),
                                project: w.name.clone(),
                                host_port: Some(w.host_port),
                                digest: match &w.action {
                                    Action::Keep => w
                                        .previous
                                        .as_ref()
                                        .map(|p| p.digest.clone())
                                        .unwrap_or_default(),
                                    _ => digest.clone(),
                                },
                                env_fingerprint: Some(w.fingerprint.clone()),
                            })
                            .collect(),
                    },
                )
            })
            .collect(),
        slices,
        scheduler_holder: holder,
        variables: e
            .variables
            .iter()
            .zip(&e.variable_fps)
            .map(|(v, fp)| (v.name.clone(), applied_variable(v, fp)))
            .collect(),
        queue_driver: queue,
    });
    out
}

fn blocked_summary(n: usize) -> String {
    if n == 1 {
        "blocked (1 blocker)".into()
    } else {
        format!("blocked ({n} blockers)")
    }
}

fn strategy_name(s: BuildStrategy) -> &'static str {
    match s {
        BuildStrategy::Local => "local",
        BuildStrategy::DedicatedBuilder => "dedicated_builder",
        BuildStrategy::ExternalRegistry => "external_registry",
    }
}

/// A plain value as written, or the placeholder of a secret.
fn value_text(v: &Value) -> String {
    match v {
        Value::Plain(p) => p.clone(),
        Value::Secret(r) => Placeholder::secret(r),
    }
}

/// Whether the variables resolved (the queue guard needs them).
fn var_blockers_empty(raw: &[crate::drivers::variables::Variable], env: &Environment) -> bool {
    !raw.is_empty() || env.variables.is_empty() && env.attachments.is_empty()
}

fn build_fingerprint(app: &Application, env: &Environment, registry: Option<&str>) -> String {
    plain_fingerprint(&format!(
        "{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}",
        app.source.repo,
        env.git_ref,
        strategy_name(app.build.strategy),
        app.build.dockerfile,
        app.build.context,
        registry.unwrap_or(""),
        app.build.repository,
        app.build.tag.as_deref().unwrap_or(""),
    ))
}

/// The fingerprint of a variable's value as recorded: plain values hashed, secrets by the keyed
/// hash the caller resolved (the recorded one when not checked).
fn variable_fingerprint(e: &Env<'_>, v: &Variable) -> String {
    match &v.source {
        VariableSource::Secret { path } => match e.ctx.secrets.get(path) {
            Some(SecretState::Fingerprint { fingerprint }) => fingerprint.clone(),
            _ => e
                .applied
                .and_then(|a| a.variables.get(&v.name))
                .filter(|a| a.source == v.source)
                .map(|a| a.fingerprint.clone())
                .unwrap_or_else(|| format!("unchecked:{path}")),
        },
        _ => plain_fingerprint(&v.value),
    }
}

fn applied_variable(v: &Variable, fingerprint: &str) -> AppliedVariable {
    AppliedVariable {
        source: v.source.clone(),
        value: (!v.secret).then(|| v.value.clone()),
        fingerprint: fingerprint.to_string(),
    }
}

/// Everything a replica's files are rendered from, secrets by fingerprint.
fn replica_fingerprint(e: &Env<'_>, service: &str, scheduler: bool) -> String {
    let svc = &e.env.services[service];
    let mut s = format!(
        "{}\n{:?}\n{}\n{:?}\n{}\n{}\nscheduler={scheduler}\n",
        svc.driver,
        svc.roles,
        svc.port,
        svc.command,
        svc.health.path,
        svc.health.timeout.as_secs(),
    );
    for (v, fp) in e.variables.iter().zip(&e.variable_fps) {
        s.push_str(&v.name);
        s.push('=');
        s.push_str(fp);
        s.push('\n');
    }
    plain_fingerprint(&s)
}

fn compute_changes(
    e: &Env<'_>,
    wants: &BTreeMap<String, Vec<Want>>,
    leaving: &BTreeMap<String, Vec<AppliedReplica>>,
    slices: &BTreeMap<String, AppliedSlice>,
    need_build: bool,
    source_commit: Option<&str>,
) -> Vec<Change> {
    let mut out = Vec::new();
    let a = e.applied;
    let app = &e.app.name;
    let built = match source_commit {
        Some(c) => format!("{app}@{}", short_commit(c)),
        None => format!("{app}@{}", e.env.git_ref),
    };
    // Image.
    if need_build {
        let what = match e.app.build.strategy {
            BuildStrategy::ExternalRegistry => format!(
                "{}:{} (digest resolved from the registry)",
                e.repository,
                e.app.build.tag.as_deref().unwrap_or("latest")
            ),
            _ => format!(
                "{built} ({} build, digest resolved at build)",
                strategy_name(e.app.build.strategy)
            ),
        };
        match a.and_then(|a| a.image.as_ref()) {
            Some(old) => out.push(Change::changed(
                "image",
                format!(
                    "{}{}",
                    a.and_then(|a| a.source_commit.as_deref())
                        .map(|c| format!("{app}@{} ", short_commit(c)))
                        .unwrap_or_default(),
                    short_digest(&old.digest)
                ),
                what,
            )),
            None => out.push(Change::added("image", what)),
        }
    }
    // Services and replicas.
    let empty = BTreeMap::new();
    let applied_services = a.map(|a| &a.services).unwrap_or(&empty);
    for (name, list) in wants {
        let svc = &e.env.services[name];
        match applied_services.get(name) {
            None => out.push(Change::added(
                format!("service {name}"),
                format!(
                    "({} replica{})",
                    svc.replicas,
                    plural(svc.replicas as usize)
                ),
            )),
            Some(old) if old.replicas.len() as u32 != svc.replicas => out.push(Change::changed(
                format!("services.{name}.replicas"),
                old.replicas.len().to_string(),
                svc.replicas.to_string(),
            )),
            _ => {}
        }
        for w in list {
            let image = if need_build {
                format!("{built}, digest resolved at build")
            } else {
                format!("{built}, {}", short_digest(&e.digest))
            };
            match &w.action {
                Action::New => out.push(Change::added(
                    format!("replica {}", w.label()),
                    format!("on {} ({image})", w.server),
                )),
                Action::Replace(why) if why.starts_with("moved") => out.push(Change::changed(
                    format!("services.{name}.placement {}", w.label()),
                    w.previous
                        .as_ref()
                        .map(|p| p.server.clone())
                        .unwrap_or_default(),
                    w.server.clone(),
                )),
                _ => {}
            }
        }
    }
    for (name, gone) in leaving {
        if !wants.contains_key(name) {
            out.push(Change::removed(
                format!("service {name}"),
                format!("({} replica{} stopped)", gone.len(), plural(gone.len())),
            ));
        }
        for r in gone {
            out.push(Change::removed(
                format!("replica {name}#{}", r.index),
                format!("on {} ({})", r.server, r.container),
            ));
        }
    }
    // Variables.
    let empty_vars = BTreeMap::new();
    let old_vars = a.map(|a| &a.variables).unwrap_or(&empty_vars);
    for (v, fp) in e.variables.iter().zip(&e.variable_fps) {
        let label = format!("variables.{} ({})", v.name, source_label(&v.source));
        let old = old_vars.get(&v.name);
        let fp = fp.clone();
        if v.secret {
            let unchecked = fp.starts_with("unchecked:");
            match old {
                None => out.push(Change::added(label, "")),
                Some(o) if o.source != v.source => out.push(Change::changed(
                    label,
                    source_label(&o.source),
                    "secret".to_string(),
                )),
                Some(_) if unchecked => out.push(Change::unchanged(label, "not checked")),
                Some(o) if o.fingerprint != fp => out.push(
                    Change::changed(label.clone(), "(secret)", "(secret, changed)")
                        .with_note("value not shown"),
                ),
                Some(_) => out.push(Change::unchanged(label, "unchanged")),
            }
        } else {
            match old {
                None => out.push(Change::added(label, show_value(&v.value))),
                Some(o) if o.fingerprint != fp || o.source != v.source => {
                    let before = match (&o.value, &o.source) {
                        (Some(val), _) => show_value(val),
                        (None, s) => format!("({})", source_label(s)),
                    };
                    out.push(Change::changed(label, before, show_value(&v.value)));
                }
                Some(_) => {}
            }
        }
    }
    for (name, o) in old_vars {
        if !e.variables.iter().any(|v| &v.name == name) {
            out.push(Change::removed(
                format!("variables.{name} ({})", source_label(&o.source)),
                "",
            ));
        }
    }
    // Slices.
    let empty_slices = BTreeMap::new();
    let old_slices = a.map(|a| &a.slices).unwrap_or(&empty_slices);
    for (svc, s) in slices {
        let now = slice_text(s);
        match old_slices.get(svc) {
            None => out.push(Change::added(format!("slice {svc}"), now)),
            Some(o) if o != s => {
                out.push(Change::changed(format!("slice {svc}"), slice_text(o), now))
            }
            _ => {}
        }
    }
    for (svc, o) in old_slices {
        if !slices.contains_key(svc) {
            out.push(Change::removed(
                format!("slice {svc}"),
                format!("{} (detached; data kept)", slice_text(o)),
            ));
        }
    }
    out
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn source_label(s: &VariableSource) -> String {
    match s {
        VariableSource::User => "user".into(),
        VariableSource::Secret { .. } => "secret".into(),
        VariableSource::Managed { slice } => format!("managed by {slice}"),
    }
}

fn slice_text(s: &AppliedSlice) -> String {
    match s {
        AppliedSlice::PostgresDatabase { database, role } => {
            format!("database {database}, role {role}")
        }
        AppliedSlice::ValkeyDatabase { index, roles } => format!(
            "logical database {index} ({})",
            roles
                .iter()
                .map(|r| format!("{r:?}").to_lowercase())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        AppliedSlice::GatewayRoute { domains, target } => {
            format!("route {} → {target}", domains.join(", "))
        }
    }
}

fn op(id: String, kind: OperationKind, title: String, server: Option<String>) -> Operation {
    Operation {
        id,
        kind,
        title,
        server,
        steps: Vec::new(),
        children_mode: Children::Sequential,
        children: Vec::new(),
    }
}

fn server_target(s: &str) -> Target {
    Target::Server(s.to_string())
}

/// The tree and its one-line summary.
fn build_tree(
    e: &Env<'_>,
    wants: &BTreeMap<String, Vec<Want>>,
    leaving: &BTreeMap<String, Vec<AppliedReplica>>,
    slices: &BTreeMap<String, AppliedSlice>,
    need_build: bool,
    source_commit: Option<&str>,
) -> (Operation, String) {
    let key = e.env.key();
    let mut root = op(
        key.clone(),
        OperationKind::EnvironmentDeploy,
        format!("environment_deploy {key}"),
        None,
    );
    let mut counts = Counts::default();

    if need_build {
        root.children.push(build_op(e, source_commit));
        counts.builds += 1;
    }

    // Slices that do not exist yet.
    let old_slices = e.applied.map(|a| a.slices.clone()).unwrap_or_default();
    for (svc_name, slice) in slices {
        if old_slices.get(svc_name) == Some(slice) {
            continue;
        }
        let svc = &e.model.services[svc_name];
        if old_slices.contains_key(svc_name) || matches!(slice, AppliedSlice::GatewayRoute { .. }) {
            continue;
        }
        let what = match slice {
            AppliedSlice::PostgresDatabase { database, role } => {
                counts.databases += 1;
                format!("database {database}, role {role}")
            }
            AppliedSlice::ValkeyDatabase { index, .. } => format!("logical database {index}"),
            AppliedSlice::GatewayRoute { .. } => unreachable!("skipped above"),
        };
        let mut sp = op(
            format!("{key}/slice_provision/{svc_name}"),
            OperationKind::SliceProvision,
            format!("slice_provision {svc_name}/{} ({what})", slice_name(e)),
            svc.servers.first().cloned(),
        );
        if let Ok(Some(sc)) = slice_script(e, svc_name) {
            for server in &svc.servers {
                sp.steps.push(script::run(
                    sc.name.clone(),
                    &server_target(server),
                    sc.script.clone(),
                    sc.stdin.as_ref().map(|b| {
                        payload(
                            b.expose().as_bytes().to_vec(),
                            sc.stdin_summary.clone().unwrap_or_else(|| "stdin".into()),
                        )
                    }),
                    SHORT,
                    true,
                ));
            }
        }
        root.children.push(sp);
    }

    // Which service the gateway routes to (its old replicas stop in the cutover).
    let gateways: Vec<_> = e
        .env
        .attachments
        .iter()
        .filter(|a| a.role == AttachmentRole::Gateway)
        .collect();
    let gateway_targets: BTreeSet<&str> = gateways
        .iter()
        .filter_map(|a| a.target.as_deref())
        .collect();

    let mut post_switch: Vec<Operation> = Vec::new();
    for (svc_name, list) in wants {
        let svc = &e.env.services[svc_name];
        let changed: Vec<&Want> = list.iter().filter(|w| w.action != Action::Keep).collect();
        let gone = leaving.get(svc_name);
        if changed.is_empty() && gone.is_none() {
            continue;
        }
        let sid = format!("{key}/service_deploy/{svc_name}");
        let mut sop = op(
            sid.clone(),
            OperationKind::ServiceDeploy,
            format!("service_deploy {svc_name}"),
            None,
        );
        // Migrations run when the service gets a new image, not when it only scales or restarts.
        let image_changes = list.iter().all(|w| w.previous.is_none())
            || list
                .iter()
                .any(|w| w.previous.as_ref().is_some_and(|p| p.digest != e.digest));
        let first = changed.first().copied();
        if let Some(first) = first {
            let pre = driving::pre_switch_steps(svc);
            if !pre.is_empty() {
                sop.steps.extend(replica_upload_steps(first));
                sop.steps.extend(pull_step(e, &first.server));
                for c in pre {
                    sop.steps.push(script::run(
                        format!("pre_switch: {}", c.name),
                        &server_target(&first.server),
                        script::compose_run_script(
                            &replica_dir(e, first),
                            &first.name,
                            svc_name,
                            &c.argv,
                        ),
                        None,
                        MIGRATE,
                        false,
                    ));
                }
            }
        }
        if let (Some(run), Some(first)) = (driving::migration(svc, MigrationContext::Deploy), first)
            && image_changes
        {
            match run.when {
                MigrationWhen::PreSwitch => {
                    sop.children.push(pre_switch_migration(e, &run, first));
                    counts.migrations.insert("pre_switch");
                }
                MigrationWhen::PostSwitch | MigrationWhen::Now => {
                    post_switch.push(post_switch_migration(e, &run, first));
                    counts.migrations.insert("post_switch");
                }
            }
        }
        let behind_gateway = gateway_targets.contains(svc_name.as_str());
        for w in &changed {
            sop.children.push(replica_op(e, &sid, w, !behind_gateway));
            match w.action {
                Action::New => counts.new += 1,
                Action::Replace(ref why) if why == "env changed" => counts.restarted += 1,
                Action::Replace(ref why) if why.starts_with("moved") => counts.moved += 1,
                _ => counts.replaced += 1,
            }
        }
        sop.children_mode = Children::ParallelByServer;
        if let Some(gone) = gone
            && !behind_gateway
        {
            for r in gone {
                sop.children.push(removal_op(
                    e,
                    &format!("{sid}/replica_removal"),
                    svc_name,
                    r,
                ));
                counts.removed += 1;
            }
        }
        root.children.push(sop);
    }

    // Gateway cutovers: after every service deploy (they are earlier children of the root).
    for g in &gateways {
        let Some(target) = g.target.as_deref() else {
            continue;
        };
        let list = wants.get(target).map(Vec::as_slice).unwrap_or(&[]);
        let gone = leaving.get(target).cloned().unwrap_or_default();
        let route_changed = old_slices.get(&g.service)
            != Some(&AppliedSlice::GatewayRoute {
                domains: g.domains.clone(),
                target: target.to_string(),
            });
        if list.iter().all(|w| w.action == Action::Keep) && gone.is_empty() && !route_changed {
            continue;
        }
        counts.removed += gone.len();
        root.children
            .push(cutover_op(e, &g.service, target, &g.domains, list, &gone));
    }
    root.children.extend(post_switch);

    // Services that left the config.
    for (svc_name, gone) in leaving {
        if wants.contains_key(svc_name) {
            continue;
        }
        let mut sop = op(
            format!("{key}/service_removal/{svc_name}"),
            OperationKind::ServiceRemoval,
            format!(
                "service_removal {svc_name} (stateless: containers removed, no volume deleted)"
            ),
            None,
        );
        for r in gone {
            sop.children
                .push(removal_op(e, &sop.id.clone(), svc_name, r));
        }
        counts.services_removed += 1;
        root.children.push(sop);
    }

    (root, counts.summary())
}

#[derive(Default)]
struct Counts {
    builds: usize,
    new: usize,
    replaced: usize,
    restarted: usize,
    moved: usize,
    removed: usize,
    services_removed: usize,
    databases: usize,
    migrations: BTreeSet<&'static str>,
}

impl Counts {
    fn summary(&self) -> String {
        let mut parts = Vec::new();
        let n = |n: usize, one: &str, many: &str| {
            if n == 1 {
                format!("1 {one}")
            } else {
                format!("{n} {many}")
            }
        };
        if self.builds > 0 {
            parts.push(n(self.builds, "build", "builds"));
        }
        if self.new > 0 {
            parts.push(n(self.new, "replica added", "replicas added"));
        }
        if self.replaced > 0 {
            parts.push(n(self.replaced, "replica replaced", "replicas replaced"));
        }
        if self.restarted > 0 {
            parts.push(n(
                self.restarted,
                "replica restarted (variable change)",
                "replicas restarted (variable change)",
            ));
        }
        if self.moved > 0 {
            parts.push(n(self.moved, "replica moved", "replicas moved"));
        }
        if self.removed > 0 {
            parts.push(n(self.removed, "replica removed", "replicas removed"));
        }
        if self.services_removed > 0 {
            parts.push(n(
                self.services_removed,
                "service removed",
                "services removed",
            ));
        }
        if self.databases > 0 {
            parts.push(n(self.databases, "database created", "databases created"));
        }
        if !self.migrations.is_empty() {
            parts.push(format!(
                "migrations {}",
                self.migrations
                    .iter()
                    .copied()
                    .collect::<Vec<_>>()
                    .join(" and ")
            ));
        }
        if self.builds == 0 {
            parts.push("no build".into());
        }
        parts.join(", ")
    }
}

/// The driver's script creating this environment's slice of `service`.
fn slice_script(
    e: &Env<'_>,
    service: &str,
) -> Result<Option<drivers::SliceScript>, drivers::DriverError> {
    let svc = &e.model.services[service];
    let Some(d) = drivers::get(&svc.driver) else {
        return Ok(None);
    };
    let slice_key = SliceKey::new(service, &e.app.name, &e.env.name);
    let admin = driving::postgres_admin(service);
    d.provision_slice(&SliceContext {
        model: e.model,
        service: svc,
        slice: &slice_key,
        facts: &e.facts,
        admin: (svc.driver == "postgres18").then_some(&admin),
    })
}

fn slice_name(e: &Env<'_>) -> String {
    format!("{}-{}", e.app.name, e.env.name)
}

fn build_op(e: &Env<'_>, source_commit: Option<&str>) -> Operation {
    let key = e.env.key();
    let app = &e.app.name;
    let rev = source_commit.unwrap_or(&e.env.git_ref).to_string();
    let strategy = e.app.build.strategy;
    let title = match strategy {
        BuildStrategy::ExternalRegistry => format!(
            "build {app}: resolve {}:{} (external_registry)",
            e.repository,
            e.app.build.tag.as_deref().unwrap_or("latest")
        ),
        _ => format!(
            "build {app}@{} ({})",
            short_commit(&rev),
            strategy_name(strategy)
        ),
    };
    let op_dir = format!("{}/operations/{}", e.root, e.op_id);
    let server = match strategy {
        BuildStrategy::DedicatedBuilder => e
            .model
            .servers
            .values()
            .find(|s| s.has_role("builder"))
            .map(|s| s.name.clone()),
        BuildStrategy::Local => e
            .env
            .services
            .values()
            .find_map(|s| s.servers.first().cloned()),
        BuildStrategy::ExternalRegistry => None,
    };
    let mut b = op(
        format!("{key}/build"),
        OperationKind::Build,
        title,
        server.clone(),
    );
    match strategy {
        BuildStrategy::ExternalRegistry => {
            b.steps.push(Step {
                name: "resolve tag to digest".into(),
                target: Target::Local,
                action: StepAction::ResolveDigest {
                    image: format!(
                        "{}:{}",
                        e.repository,
                        e.app.build.tag.as_deref().unwrap_or("latest")
                    ),
                    registry: e.app.build.registry.clone(),
                },
                timeout: SHORT,
                idempotent: true,
                capture: Some(Placeholder::digest_name(app)),
                on_failure: None,
            });
        }
        _ => {
            let target = server_target(server.as_deref().unwrap_or_default());
            let deploy_key = e.app.source.deploy_key.as_ref();
            if let Some(k) = deploy_key {
                b.steps.push(script::upload(
                    "upload deploy key",
                    &target,
                    format!("{op_dir}/deploy_key"),
                    0o600,
                    payload(
                        format!("{}\n", value_text(k)).into_bytes(),
                        format!("deploy key of {app} (secret)"),
                    ),
                ));
            }
            let push = (strategy == BuildStrategy::DedicatedBuilder).then(|| {
                e.login.clone().unwrap_or(RegistryLogin {
                    host: String::new(),
                    username: String::new(),
                    password: String::new(),
                })
            });
            let spec = BuildSpec {
                op_dir: op_dir.clone(),
                repo: e.app.source.repo.clone(),
                revision: rev,
                dockerfile: e.app.build.dockerfile.clone(),
                context: e.app.build.context.clone(),
                image: e.repository.clone(),
                deploy_key: deploy_key.is_some(),
                push: push.clone().filter(|l| !l.host.is_empty()),
            };
            let mut s = script::build_script(&spec);
            let mut stdin = spec.push.as_ref().map(RegistryLogin::stdin);
            if push.is_some() && spec.push.is_none() {
                // A registry without credentials: push without logging in.
                s = script::build_script(&BuildSpec {
                    push: None,
                    ..spec.clone()
                })
                .replace(
                    "docker image inspect --format '{{.Id}}' \"$image:$commit\"\n",
                    "docker push \"$image:$commit\" > \"$op_dir/push.log\"\ncat \"$op_dir/push.log\" >&2\ndigest=$(sed -n 's/.*digest: \\(sha256:[0-9a-f]\\{64\\}\\).*/\\1/p' \"$op_dir/push.log\" | tail -n 1)\n[ -n \"$digest\" ] || { echo \"docker push printed no digest\" >&2; exit 1; }\nprintf '%s\\n' \"$digest\"\n",
                );
                stdin = None;
            }
            b.steps.push(Step {
                name: match strategy {
                    BuildStrategy::Local => "clone and build (no push)".into(),
                    _ => "clone, build and push".into(),
                },
                target,
                action: StepAction::Run { script: s, stdin },
                timeout: BUILD,
                idempotent: true,
                capture: Some(Placeholder::digest_name(app)),
                on_failure: None,
            });
        }
    }
    b
}

/// The directory of a replica slot on its server.
fn replica_dir(e: &Env<'_>, w: &Want) -> String {
    match &w.files {
        Some(f) => f.remote_dir.clone(),
        None => driving::remote_dir(&e.root, &w.key, w.slot),
    }
}

/// The directory of a running replica, by its recorded slot.
pub fn applied_dir(root: &str, app: &str, env: &str, service: &str, r: &AppliedReplica) -> String {
    match driving::slot_of(&r.slot) {
        Some(slot) => driving::remote_dir(
            root,
            &driving::replica_key(app, env, service, r.index),
            slot,
        ),
        None => format!("{root}/services/{}", r.container),
    }
}

/// Upload the rendered files of a replica (compose.yml, .env 0600, extras); shared by replica
/// deploys, pre-switch steps and pre-switch migrations.
fn replica_upload_steps(w: &Want) -> Vec<Step> {
    let target = server_target(&w.server);
    let Some(files) = &w.files else {
        return Vec::new();
    };
    files
        .files()
        .into_iter()
        .map(|f| {
            let name = format!(
                "upload {}",
                f.path.rsplit('/').next().unwrap_or(f.path.as_str())
            );
            script::upload(name, &target, f.path, f.mode, payload(f.bytes, f.summary))
        })
        .collect()
}

fn pull_step(e: &Env<'_>, server: &str) -> Option<Step> {
    if e.app.build.strategy == BuildStrategy::Local {
        return None;
    }
    let tmp = format!("{}/operations/{}/docker-{server}", e.root, e.op_id);
    Some(script::run(
        "pull image by digest",
        &server_target(server),
        script::pull_script(&e.image_ref, e.login.as_ref(), &tmp),
        e.login.as_ref().map(RegistryLogin::stdin),
        PULL,
        true,
    ))
}

fn replica_op(e: &Env<'_>, parent: &str, w: &Want, stop_previous: bool) -> Operation {
    let why = match &w.action {
        Action::New => "new".to_string(),
        Action::Replace(r) if r == "env changed" => "restart (env changed)".into(),
        Action::Replace(r) => format!("replace ({r})"),
        Action::Keep => "unchanged".into(),
    };
    let mut r = op(
        format!("{parent}/replica_deploy/{}", w.label()),
        OperationKind::ReplicaDeploy,
        format!("replica_deploy {} @{}   {why}", w.label(), w.server),
        Some(w.server.clone()),
    );
    let target = server_target(&w.server);
    let dir = replica_dir(e, w);
    r.steps.extend(replica_upload_steps(w));
    r.steps.extend(pull_step(e, &w.server));
    // A new replica that does not start or become healthy is stopped and removed again, so it
    // does not linger beside the old one (never the running one: its container name differs).
    let clean_up = w
        .previous
        .as_ref()
        .is_none_or(|p| p.container != w.name && project_of(p) != w.name)
        .then(|| script::replica_clean_up_script(&dir, &w.name));
    let started = r.steps.len();
    r.steps.push(script::run(
        "start",
        &target,
        script::compose_up_script(&dir, &w.name),
        None,
        Duration::from_secs(120),
        true,
    ));
    r.steps.push(script::run(
        "wait healthy",
        &target,
        script::wait_healthy_script(&w.name, e.env.services[&w.service].health.timeout),
        None,
        e.env.services[&w.service].health.timeout + Duration::from_secs(30),
        true,
    ));
    // The driver's probe: a web replica is healthy once its health path answers on its host
    // port, whether or not the image defines a container health check.
    let svc = &e.env.services[&w.service];
    if drivers::laravel::serves_http(svc) {
        r.steps.push(script::run(
            format!("probe {}", svc.health.path),
            &target,
            script::replica_probe_script(
                &w.name,
                &format!("http://127.0.0.1:{}{}", w.host_port, svc.health.path),
                svc.health.timeout,
            ),
            None,
            svc.health.timeout + Duration::from_secs(30),
            true,
        ));
    }
    for step in &mut r.steps[started..] {
        step.on_failure = clean_up.clone();
    }
    if stop_previous && let Some(p) = &w.previous {
        r.steps.push(script::run(
            format!("stop previous {}", p.container),
            &server_target(&p.server),
            script::compose_down_script(
                &applied_dir(&e.root, &e.app.name, &e.env.name, &w.service, p),
                &project_of(p),
            ),
            None,
            Duration::from_secs(120),
            true,
        ));
    }
    r
}

fn project_of(r: &AppliedReplica) -> String {
    if r.project.is_empty() {
        r.container.clone()
    } else {
        r.project.clone()
    }
}

fn removal_op(e: &Env<'_>, parent: &str, service: &str, r: &AppliedReplica) -> Operation {
    let mut o = op(
        format!("{parent}/{service}#{}", r.index),
        OperationKind::ReplicaRemoval,
        format!("replica_removal {service}#{} @{}", r.index, r.server),
        Some(r.server.clone()),
    );
    o.steps.push(script::run(
        "stop and remove",
        &server_target(&r.server),
        script::compose_down_script(
            &applied_dir(&e.root, &e.app.name, &e.env.name, service, r),
            &project_of(r),
        ),
        None,
        Duration::from_secs(120),
        true,
    ));
    o
}

fn pre_switch_migration(e: &Env<'_>, run: &driving::MigrationRun, first: &Want) -> Operation {
    let key = e.env.key();
    let service = &run.service;
    let mut m = op(
        format!("{key}/service_deploy/{service}/migration"),
        OperationKind::Migration,
        format!(
            "migration {service} (pre_switch, one-off container of the new image @{})",
            first.server
        ),
        Some(first.server.clone()),
    );
    m.steps.extend(replica_upload_steps(first));
    m.steps.extend(pull_step(e, &first.server));
    m.steps.push(script::run(
        "migrate",
        &server_target(&first.server),
        match &first.files {
            Some(f) => format!("{}\n", crate::render::migration_script(run, f).trim_end()),
            None => driving::migration_script(run, &replica_dir(e, first), &first.name, service),
        },
        None,
        MIGRATE,
        false,
    ));
    m
}

fn migrate_in(container: &str, run: &driving::MigrationRun) -> String {
    script::exec_script(
        container,
        &["sh".to_string(), "-c".to_string(), run.command.clone()],
    )
}

fn post_switch_migration(e: &Env<'_>, run: &driving::MigrationRun, first: &Want) -> Operation {
    let key = e.env.key();
    let service = &run.service;
    let mut m = op(
        format!("{key}/migration/{service}"),
        OperationKind::Migration,
        format!(
            "migration {service} (post_switch, in {} @{})",
            first.name, first.server
        ),
        Some(first.server.clone()),
    );
    m.steps.push(script::run(
        "migrate",
        &server_target(&first.server),
        migrate_in(&first.name, run),
        None,
        MIGRATE,
        false,
    ));
    m
}

fn plan_migrate_request(e: &Env<'_>, mut out: EnvironmentPlan) -> EnvironmentPlan {
    let key = e.env.key();
    let mut root = op(
        format!("{key}/migration"),
        OperationKind::Migration,
        format!("migration {key} (requested)"),
        None,
    );
    for (name, svc) in &e.env.services {
        let Some(run) = driving::migration(svc, MigrationContext::Request) else {
            continue;
        };
        let running = e
            .applied
            .and_then(|a| a.services.get(name))
            .and_then(|s| s.replicas.first());
        match running {
            Some(r) => {
                let mut m = op(
                    format!("{key}/migration/{name}"),
                    OperationKind::Migration,
                    format!("migration {name} (in {} @{})", r.container, r.server),
                    Some(r.server.clone()),
                );
                m.steps.push(script::run(
                    "migrate",
                    &server_target(&r.server),
                    migrate_in(&r.container, &run),
                    None,
                    MIGRATE,
                    false,
                ));
                root.children.push(m);
            }
            None => out.blockers.push(Finding {
                code: "not-deployed".into(),
                location: Some(svc.origin.to_string()),
                message: format!("{key} service {name} has no running replica to migrate in"),
                hint: Some("deploy the environment first".into()),
            }),
        }
    }
    if !out.blockers.is_empty() {
        out.status = EnvironmentStatus::Blocked;
        out.summary = blocked_summary(out.blockers.len());
        return out;
    }
    if root.children.is_empty() {
        out.blockers.push(Finding {
            code: "migrations-disabled".into(),
            location: Some(e.env.origin.to_string()),
            message: format!("no service of {key} has migrations enabled"),
            hint: Some("set migrations.mode to manual or auto".into()),
        });
        out.status = EnvironmentStatus::Blocked;
        out.summary = blocked_summary(1);
        return out;
    }
    out.summary = format!(
        "{} migration{} (requested)",
        root.children.len(),
        plural(root.children.len())
    );
    out.status = EnvironmentStatus::Changed;
    out.operation = Some(root);
    out.applied_after = e.applied.cloned();
    out
}

fn upstream(e: &Env<'_>, server: &str, port: u16) -> String {
    let host = e
        .model
        .servers
        .get(server)
        .map(|s| s.host.clone())
        .unwrap_or_else(|| server.to_string());
    format!("{host}:{port}")
}

/// The route JSON: these domains to these upstreams, the reverse proxy named `id` so the
/// drivers' `PATCH /id/<id>/upstreams` reaches it; `first` selection (new upstreams first).
fn route_json(id: &str, domains: &[String], upstreams: &[String]) -> Vec<u8> {
    let v = serde_json::json!({
        "match": [{"host": domains}],
        "handle": [{
            "handler": "reverse_proxy",
            "@id": id,
            "load_balancing": {"selection_policy": {"policy": "first"}},
            "upstreams": upstreams.iter().map(|u| serde_json::json!({"dial": u})).collect::<Vec<_>>(),
        }],
        "terminal": true,
    });
    let mut s = serde_json::to_vec(&v).expect("json");
    s.push(b'\n');
    s
}

fn cutover_op(
    e: &Env<'_>,
    gateway: &str,
    target: &str,
    domains: &[String],
    list: &[Want],
    gone: &[AppliedReplica],
) -> Operation {
    let key = e.env.key();
    let svc = e.model.services.get(gateway);
    let admin = format!(
        "http://127.0.0.1:{}",
        svc.and_then(drivers::caddy2::admin_port_of)
            .unwrap_or(drivers::caddy2::DEFAULT_ADMIN_PORT)
    );
    let id = drivers::caddy2::route_id(&e.app.name, &e.env.name, target);
    let routes_path = format!("/config/apps/http/servers/{CADDY_SERVER}/routes");
    let new: Vec<&Want> = list.iter().filter(|w| w.action != Action::Keep).collect();
    let kept: Vec<&Want> = list.iter().filter(|w| w.action == Action::Keep).collect();
    let replaced: Vec<&AppliedReplica> = new.iter().filter_map(|w| w.previous.as_ref()).collect();
    let old: Vec<&AppliedReplica> = replaced.iter().copied().chain(gone.iter()).collect();
    let addr_new: Vec<String> = new
        .iter()
        .map(|w| upstream(e, &w.server, w.host_port))
        .collect();
    let addr_kept: Vec<String> = kept
        .iter()
        .map(|w| upstream(e, &w.server, w.host_port))
        .collect();
    let addr_old: Vec<String> = old
        .iter()
        .map(|r| upstream(e, &r.server, r.host_port.unwrap_or_default()))
        .collect();

    let mut parts = Vec::new();
    if !new.is_empty() {
        parts.push(format!(
            "add {}",
            new.iter().map(|w| w.label()).collect::<Vec<_>>().join(", ")
        ));
    }
    if !old.is_empty() {
        parts.push(format!(
            "drain and replace {}",
            old.iter()
                .map(|r| format!("{target}#{}", r.index))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if parts.is_empty() {
        parts.push(format!("route {}", domains.join(", ")));
    }
    let mut c = op(
        format!("{key}/gateway_cutover/{gateway}"),
        OperationKind::GatewayCutover,
        format!("gateway_cutover {gateway}   {}", parts.join(", ")),
        None,
    );
    let health = &e.env.services.get(target).map(|s| s.health.clone());
    let health_path = health
        .as_ref()
        .map(|h| h.path.clone())
        .unwrap_or_else(|| "/".into());
    let health_timeout = health.as_ref().map(|h| h.timeout).unwrap_or(SHORT);
    let gateway_servers = svc.map(|s| s.servers.clone()).unwrap_or_default();
    let final_upstreams: Vec<String> = addr_new.iter().chain(addr_kept.iter()).cloned().collect();
    for g in &gateway_servers {
        let t = server_target(g);
        for (w, a) in new.iter().zip(&addr_new) {
            c.steps.push(script::run(
                format!("health of {} through {g}", w.label()),
                &t,
                script::http_probe_script(&format!("http://{a}{health_path}"), health_timeout),
                None,
                health_timeout + Duration::from_secs(10),
                true,
            ));
        }
        let all: Vec<String> = final_upstreams
            .iter()
            .chain(addr_old.iter())
            .cloned()
            .collect();
        c.steps.push(script::run(
            format!("ensure route {id} on {g}"),
            &t,
            script::caddy_create_route_script(&admin, &id, &routes_path),
            Some(payload(
                route_json(&id, domains, &all),
                format!("route {id} ({})", domains.join(", ")),
            )),
            SHORT,
            true,
        ));
        let Some(gw) = svc else { continue };
        if !addr_old.is_empty() {
            c.steps.push(script::run(
                format!("add upstreams on {g}"),
                &t,
                drivers::caddy2::set_upstreams_script(gw, &id, &all),
                None,
                SHORT,
                true,
            ));
            c.steps.push(script::run(
                format!("drain old upstreams on {g}"),
                &t,
                script::caddy_drain_script(&admin, &addr_old, DRAIN_TIMEOUT),
                None,
                DRAIN_TIMEOUT + SHORT,
                true,
            ));
        }
        c.steps.push(script::run(
            if addr_old.is_empty() {
                format!("set upstreams on {g}")
            } else {
                format!("remove old upstreams on {g}")
            },
            &t,
            drivers::caddy2::set_upstreams_script(gw, &id, &final_upstreams),
            None,
            SHORT,
            true,
        ));
    }
    for p in replaced {
        c.steps.push(script::run(
            format!("stop old {}", p.container),
            &server_target(&p.server),
            script::compose_down_script(
                &applied_dir(&e.root, &e.app.name, &e.env.name, target, p),
                &project_of(p),
            ),
            None,
            Duration::from_secs(120),
            true,
        ));
    }
    for r in gone {
        c.children.push(removal_op(
            e,
            &format!("{}/replica_removal", c.id),
            target,
            r,
        ));
    }
    c
}

fn plan_removal(
    model: &Model,
    ctx: &PlanContext,
    mut out: EnvironmentPlan,
    a: &AppliedEnvironment,
) -> EnvironmentPlan {
    let key = out.key();
    let root_dir = model.project.remote_root.trim_end_matches('/').to_string();
    let mut root = op(
        key.clone(),
        OperationKind::EnvironmentDeploy,
        format!("environment_deploy {key} (removal: left the config)"),
        None,
    );
    let _ = ctx;
    for (svc, s) in &a.services {
        out.changes.push(Change::removed(
            format!("service {svc}"),
            format!(
                "({} replica{} stopped)",
                s.replicas.len(),
                plural(s.replicas.len())
            ),
        ));
        let mut sop = op(
            format!("{key}/service_removal/{svc}"),
            OperationKind::ServiceRemoval,
            format!("service_removal {svc} (stateless: containers removed, no volume deleted)"),
            None,
        );
        for r in &s.replicas {
            let mut o = op(
                format!("{}/{svc}#{}", sop.id, r.index),
                OperationKind::ReplicaRemoval,
                format!("replica_removal {svc}#{} @{}", r.index, r.server),
                Some(r.server.clone()),
            );
            o.steps.push(script::run(
                "stop and remove",
                &server_target(&r.server),
                script::compose_down_script(
                    &applied_dir(&root_dir, &out.app, &out.env, svc, r),
                    &project_of(r),
                ),
                None,
                Duration::from_secs(120),
                true,
            ));
            sop.children.push(o);
        }
        root.children.push(sop);
    }
    for (svc, s) in &a.slices {
        out.changes.push(Change::removed(
            format!("slice {svc}"),
            format!("{} (data kept)", slice_text(s)),
        ));
        out.warnings.push(Finding {
            code: "slice-kept".into(),
            location: None,
            message: format!(
                "{key} left the config; its data in {svc} is kept (a plan never deletes stateful data)"
            ),
            hint: None,
        });
    }
    out.status = EnvironmentStatus::Removed;
    out.summary = "removed from the config: replicas stopped, data kept".into();
    out.operation = Some(root);
    out
}

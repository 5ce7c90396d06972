//! The `Deployer` over config + plan + execute: what `keystone apply` does, for one environment of
//! one commit of the daemon's mirror.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::forge::CommitState;
use super::queue::Job;
use super::record::OperationLog;
use super::runtime::{BoxFuture, Deployer, Deployment, Loaded, PlanComment, Settings};
use crate::execute::{ExecuteOptions, PlanRun, Shutdown, SshSettings, Transports};
use crate::model::{Model, SecretRef, Value};
use crate::plan::{self, Desired, Finding, PlanContext, ScopedFinding};
use crate::secrets::{Identities, Redactor, Resolver};
use crate::state::{State, StateValues};
use crate::status::{
    Health, OperationNode, OperationRecord, Outcome, ReplicaStatus, ServiceStatus, SyncState,
    Timestamp,
};

/// The planner's per-comment size limit.
const COMMENT_LIMIT: usize = plan::MARKDOWN_LIMIT;

#[derive(Clone)]
pub struct EngineDeployer {
    state_dir: PathBuf,
    age_key_file: Option<PathBuf>,
    ssh_key: Option<PathBuf>,
    redactor: Redactor,
    /// One plan runs at a time: shared services are part of every environment's plan.
    serial: Arc<tokio::sync::Mutex<()>>,
    /// Opened on first use and kept: the daemon owns its state directory (its lock) while it
    /// runs, and a pull request's plan can be computed while a deploy holds the state.
    state: Arc<std::sync::Mutex<Option<Arc<State>>>>,
    /// The health prober of the last commit probed, and what it last read and found.
    probing: Arc<std::sync::Mutex<Probing>>,
}

/// What the probe keeps between rounds: the connections (one ssh master per server, reused),
/// the applied state read when no deploy held the state, and the drift found per environment
/// (what a heal job re-applies).
#[derive(Default)]
struct Probing {
    commit: Option<String>,
    setup: Option<Arc<ProbeSetup>>,
    expected: Option<Arc<(plan::Applied, crate::health::WrittenFiles)>>,
    drift: BTreeMap<String, BTreeMap<String, String>>,
}

struct ProbeSetup {
    prober: crate::health::Prober,
    servers: Vec<String>,
    remote_root: String,
    interval: std::time::Duration,
    self_heal: std::collections::BTreeSet<String>,
}

/// What a job runs: the plan of its environment, with what executing it needs.
struct Planned {
    state: Arc<State>,
    model: Model,
    plan: plan::Plan,
    values: BTreeMap<String, String>,
}

/// A commit loaded with its secrets resolved.
struct Prepared {
    loaded: crate::config::Loaded,
    diagnostics: Vec<ScopedFinding>,
    secret_states: BTreeMap<String, plan::SecretState>,
    values: BTreeMap<String, String>,
}

impl EngineDeployer {
    pub fn new(
        state_dir: PathBuf,
        age_key_file: Option<PathBuf>,
        ssh_key: Option<PathBuf>,
    ) -> EngineDeployer {
        EngineDeployer {
            state_dir,
            age_key_file,
            ssh_key,
            redactor: Redactor::new(),
            serial: Arc::new(tokio::sync::Mutex::new(())),
            state: Arc::default(),
            probing: Arc::default(),
        }
    }

    /// `text` with every secret value removed.
    fn hide(&self, text: &str) -> String {
        self.redactor.redact(text).into_owned()
    }

    fn probing(&self) -> std::sync::MutexGuard<'_, Probing> {
        self.probing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The prober for `commit`'s servers (built once per commit; connections kept).
    async fn probe_setup(&self, repo: &Path, commit: &str) -> Result<Arc<ProbeSetup>, String> {
        {
            let p = self.probing();
            if p.commit.as_deref() == Some(commit)
                && let Some(s) = &p.setup
            {
                return Ok(s.clone());
            }
        }
        let (repo, rev) = (repo.to_path_buf(), commit.to_string());
        let model = tokio::task::spawn_blocking(move || {
            let git = git2::Repository::open(&repo).map_err(|e| e.to_string())?;
            crate::config::load_rev(&git, &rev)
                .map(|l| l.model)
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())??;
        let identity = self
            .ssh_key
            .clone()
            .unwrap_or_else(SshSettings::default_identity_file);
        // Its own ssh files directory: deploys write theirs under ssh/ at the same time.
        let transport = Arc::new(Transports::for_model(
            &model,
            SshSettings::new(self.state_dir.join("ssh-probe"), identity),
        ));
        let setup = Arc::new(ProbeSetup {
            prober: crate::health::Prober::new(transport, self.redactor.clone()),
            servers: model.servers.keys().cloned().collect(),
            remote_root: model.project.remote_root.clone(),
            interval: model.project.health.interval,
            self_heal: model
                .applications
                .values()
                .flat_map(|a| a.environments.values())
                .filter(|e| e.self_heal)
                .map(|e| e.key())
                .collect(),
        });
        let mut p = self.probing();
        p.commit = Some(commit.to_string());
        p.setup = Some(setup.clone());
        Ok(setup)
    }

    /// The applied state and written files; read afresh unless a deploy holds the state (then
    /// what was read last: the deploying environment's results are not used anyway).
    async fn probe_expected(&self) -> Arc<(plan::Applied, crate::health::WrittenFiles)> {
        if let Ok(_idle) = self.serial.try_lock() {
            // The daemon's own state (it holds the directory's lock while it runs).
            let state = self.open_state();
            let read = tokio::task::spawn_blocking(move || {
                let state = state?;
                let applied = state.applied().map_err(|e| e.to_string())?;
                let written = state.written_files().map_err(|e| e.to_string())?;
                Ok::<_, String>((applied, written))
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
            match read {
                Ok(x) => {
                    let x = Arc::new(x);
                    self.probing().expected = Some(x.clone());
                    return x;
                }
                Err(e) => tracing::warn!(error = %e, "probe: cannot read the applied state"),
            }
        }
        self.probing().expected.clone().unwrap_or_default()
    }

    /// The state, opened the first time (which marks what a killed daemon left running as
    /// interrupted).
    fn open_state(&self) -> Result<Arc<State>, String> {
        let mut slot = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(state) = slot.as_ref() {
            return Ok(state.clone());
        }
        let mut state = State::open(&self.state_dir).map_err(|e| e.to_string())?;
        if let Some(path) = &self.age_key_file {
            state =
                state.with_identity(crate::state::load_identity(path).map_err(|e| e.to_string())?);
        }
        let state = Arc::new(state);
        *slot = Some(state.clone());
        Ok(state)
    }

    fn prepare(&self, repo: &Path, commit: &str, state: &State) -> Result<Prepared, String> {
        let git = git2::Repository::open(repo).map_err(|e| e.to_string())?;
        let loaded = crate::config::load_rev(&git, commit).map_err(|e| e.to_string())?;
        self.prepare_loaded(&git, loaded, commit, state)
    }

    /// `loaded` (the config at `commit`) with its secrets resolved.
    fn prepare_loaded(
        &self,
        git: &git2::Repository,
        loaded: crate::config::Loaded,
        commit: &str,
        state: &State,
    ) -> Result<Prepared, String> {
        let identities =
            Identities::discover(self.age_key_file.as_deref()).map_err(|e| e.to_string())?;
        let mut resolver = Resolver::new(identities, self.redactor.clone());
        let tree = git
            .revparse_single(commit)
            .and_then(|o| o.peel_to_tree())
            .map_err(|e| e.to_string())?;
        for (stem, file) in &loaded.model.secret_files {
            let entry = tree
                .get_path(Path::new(&file.path))
                .map_err(|e| format!("{}: {e}", file.path))?;
            let blob = git.find_blob(entry.id()).map_err(|e| e.to_string())?;
            resolver.add_file(stem, &file.path, blob.content().to_vec());
        }
        let fp_key = state
            .credential("keystone", "fingerprint-key", random_key)
            .map_err(|e| e.to_string())?;
        let (secret_states, values) = resolve_secrets(&resolver, &loaded.model, &fp_key);
        let diagnostics = scoped_findings(&loaded.diagnostics);
        Ok(Prepared {
            loaded,
            diagnostics,
            secret_states,
            values,
        })
    }

    fn context(&self, p: &Prepared, commit: &str, operation_prefix: String) -> PlanContext {
        let control = self.state_dir.join("ssh").join("sources");
        let control = std::fs::create_dir_all(&control)
            .and_then(|()| {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&control, std::fs::Permissions::from_mode(0o700))
            })
            .is_ok()
            .then_some(control);
        PlanContext {
            config_commit: commit.to_string(),
            source_commits: source_commits_via(&p.loaded.model, &p.values, control.as_deref()),
            operation_prefix,
            request: plan::Request::Deploy,
            secrets: p.secret_states.clone(),
        }
    }

    /// The commit of `job`, loaded. Blocking (git).
    fn load_job(&self, repo: &Path, job: &Job) -> Result<(String, crate::config::Loaded), String> {
        let commit = resolve_commit(repo, &job.commit)?;
        let git = git2::Repository::open(repo).map_err(|e| e.to_string())?;
        let loaded = crate::config::load_rev(&git, &commit).map_err(|e| e.to_string())?;
        Ok((commit, loaded))
    }

    /// Open the state, resolve the loaded commit's secrets and plan `job`'s environment.
    /// Blocking: SQLite, decryption and `git ls-remote` of the application sources.
    fn plan_job(
        &self,
        repo: &Path,
        job: &Job,
        operation_id: &str,
        commit: String,
        loaded: crate::config::Loaded,
    ) -> Result<Planned, (Outcome, String)> {
        let failed = |e: String| (Outcome::Failed, e);
        let state = self.open_state().map_err(failed)?;
        let git = git2::Repository::open(repo).map_err(|e| failed(e.to_string()))?;
        let p = self
            .prepare_loaded(&git, loaded, &commit, &state)
            .map_err(failed)?;
        let mut ctx = self.context(&p, &commit, operation_id.to_string());
        if job.kind == crate::daemon::queue::JobKind::Heal
            && let Some((app, env)) = job.environment.split_once('/')
        {
            ctx.request = plan::Request::Heal {
                app: app.to_string(),
                env: env.to_string(),
                replicas: self
                    .probing()
                    .drift
                    .get(&job.environment)
                    .cloned()
                    .unwrap_or_default(),
            };
        }
        let applied = state.applied().map_err(|e| failed(e.to_string()))?;
        let mut plan = plan::plan(
            Desired {
                model: &p.loaded.model,
                diagnostics: &p.diagnostics,
            },
            &applied,
            &ctx,
        );
        plan.environments.retain(|e| e.key() == job.environment);
        let Some(env) = plan.environments.first() else {
            return Err(failed(format!(
                "{} is not in commit {commit}",
                job.environment
            )));
        };
        if env.status == plan::EnvironmentStatus::Blocked {
            let why: Vec<String> = env
                .blockers
                .iter()
                .map(|f| match &f.location {
                    Some(l) => format!("{l}: {}", f.message),
                    None => f.message.clone(),
                })
                .collect();
            return Err((
                Outcome::Blocked,
                self.hide(&format!("blocked: {}", why.join("; "))),
            ));
        }
        Ok(Planned {
            state,
            model: p.loaded.model,
            plan,
            values: p.values,
        })
    }

    async fn run_job(
        &self,
        repo: &Path,
        job: &Job,
        operation_id: &str,
        cancel: CancellationToken,
        log: Arc<OperationLog>,
    ) -> Result<(BTreeMap<String, ServiceStatus>, Option<String>), (Outcome, String)> {
        let failed = |e: String| (Outcome::Failed, e);
        let _one = self.serial.lock().await;
        // Loading and planning block (git, SQLite, decryption, ls-remote): off the runtime's
        // worker threads. Between the two, the ssh connections this job needs are opened, so
        // the handshakes overlap with planning instead of delaying the first step.
        let t = std::time::Instant::now();
        let me = self.clone();
        let (r, j) = (repo.to_path_buf(), job.clone());
        let (commit, loaded) = tokio::task::spawn_blocking(move || me.load_job(&r, &j))
            .await
            .map_err(|e| failed(format!("loading stopped: {e}")))?
            .map_err(failed)?;
        let identity = self
            .ssh_key
            .clone()
            .unwrap_or_else(SshSettings::default_identity_file);
        let transport = Arc::new(Transports::for_model(
            &loaded.model,
            SshSettings::new(self.state_dir.join("ssh"), identity),
        ));
        for server in job_servers(&loaded.model, &job.environment) {
            let t = transport.clone();
            tokio::spawn(async move {
                let _ = t.connect(&server).await;
            });
        }
        let me = self.clone();
        let (r, j, id) = (repo.to_path_buf(), job.clone(), operation_id.to_string());
        let Planned {
            state,
            model,
            plan,
            values,
        } = tokio::task::spawn_blocking(move || me.plan_job(&r, &j, &id, commit, loaded))
            .await
            .map_err(|e| failed(format!("planning stopped: {e}")))??;
        tracing::info!(
            operation = operation_id,
            ms = t.elapsed().as_millis() as u64,
            "planned"
        );
        let model = &model;
        let secret_values = values.clone();
        let run = PlanRun {
            transport,
            state: state.clone(),
            observer: log,
            redactor: self.redactor.clone(),
            options: ExecuteOptions::default(),
            values: Some(Arc::new(StateValues::new(state.clone(), move |path| {
                secret_values
                    .get(path)
                    .cloned()
                    .ok_or_else(|| format!("no secret {path} among the decrypted secrets"))
            }))),
            digests: Some(Arc::new(registries(model, &values))),
        };
        let shutdown = Shutdown::new();
        let trigger = shutdown.clone();
        let stop = cancel.clone();
        let watcher = tokio::spawn(async move {
            stop.cancelled().await;
            trigger.trigger();
        });
        let outcome = crate::execute::run_plan(&plan, Some(model), &run, &shutdown).await;
        watcher.abort();
        let outcome = outcome.map_err(|e| failed(self.hide(&e.to_string())))?;
        if !outcome.converged() {
            let failed: Vec<String> = outcome
                .parts
                .iter()
                .filter(|(_, o)| !o.converged())
                .map(|(k, o)| format!("{k}: {}", crate::execute::describe(o)))
                .collect();
            let kind = if cancel.is_cancelled() {
                Outcome::Cancelled
            } else {
                Outcome::Failed
            };
            return Err((kind, self.hide(&failed.join("; "))));
        }
        let applied = state.applied().map_err(|e| failed(e.to_string()))?;
        let source = applied
            .environments
            .get(&job.environment)
            .and_then(|e| e.source_commit.as_ref())
            .map(|c| {
                let app = job.environment.split('/').next().unwrap_or_default();
                format!("{app}@{}", &c[..c.len().min(7)])
            });
        Ok((services_status(&applied, &job.environment), source))
    }
}

impl Deployer for EngineDeployer {
    fn load(&self, repo: &Path, commit: &str) -> Loaded {
        let loaded = git2::Repository::open(repo)
            .map_err(|e| e.to_string())
            .and_then(|git| crate::config::load_rev(&git, commit).map_err(|e| e.to_string()));
        let loaded = match loaded {
            Ok(l) => l,
            Err(e) => {
                return Loaded {
                    project_problems: vec![self.hide(&e)],
                    ..Default::default()
                };
            }
        };
        let model = &loaded.model;
        let project = &model.project;
        let mut out = Loaded {
            settings: Some(Settings {
                tracked_branch: project.reconcile.branch.clone(),
                interval: project.reconcile.interval,
                status_branch: project.status.branch.clone(),
                keep_operations_days: project.status.keep_operations_days,
            }),
            servers: model.servers.keys().cloned().collect(),
            ..Default::default()
        };
        for a in model.applications.values() {
            for e in a.environments.values() {
                out.environments
                    .insert(format!("{}/{}", a.name, e.name), Vec::new());
            }
        }
        for d in &loaded.diagnostics {
            let line = self.hide(&format!("{}: {}", d.location(), d.message));
            match &d.scope {
                crate::config::Scope::Project => out.project_problems.push(line),
                crate::config::Scope::Application { app } => {
                    for (key, problems) in out.environments.iter_mut() {
                        if key.split('/').next() == Some(app.as_str()) {
                            problems.push(line.clone());
                        }
                    }
                }
                crate::config::Scope::Environment { app, env } => out
                    .environments
                    .entry(format!("{app}/{env}"))
                    .or_default()
                    .push(line),
            }
        }
        out
    }

    fn deploy<'a>(
        &'a self,
        repo: &'a Path,
        job: &'a Job,
        operation_id: &'a str,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Deployment> {
        Box::pin(async move {
            let started = Timestamp::now();
            let log = Arc::new(OperationLog::new(
                operation_id,
                format!(
                    "{} {} @{}",
                    job.kind.as_str(),
                    job.environment,
                    crate::status::render::short(&job.commit)
                ),
            ));
            let result = self
                .run_job(repo, job, operation_id, cancel, log.clone())
                .await;
            let (outcome, error, services, deployed_source) = match result {
                Ok((services, source)) => (Outcome::Succeeded, None, Some(services), source),
                Err((outcome, error)) => (outcome, Some(error), None, None),
            };
            Deployment {
                outcome,
                error: error.clone(),
                operation: OperationRecord {
                    id: operation_id.to_string(),
                    environment: job.environment.clone(),
                    kind: job.kind.as_str().to_string(),
                    commit: job.commit.clone(),
                    started,
                    finished: Some(Timestamp::now()),
                    outcome,
                    error,
                    tree: log.tree(),
                },
                services,
                deployed_source,
            }
        })
    }

    fn plan_comment(
        &self,
        repo: &Path,
        base: &str,
        head: &str,
        pr: u64,
    ) -> Result<PlanComment, String> {
        let state = self.open_state()?;
        let base_p = self.prepare(repo, base, &state)?;
        let head_p = self.prepare(repo, head, &state)?;
        let prefix = format!("pr{pr}");
        let base_ctx = self.context(&base_p, base, prefix.clone());
        let head_ctx = self.context(&head_p, head, prefix);
        let applied = state.applied().map_err(|e| e.to_string())?;
        let diff = plan::diff(
            Desired {
                model: &base_p.loaded.model,
                diagnostics: &base_p.diagnostics,
            },
            &base_ctx,
            Desired {
                model: &head_p.loaded.model,
                diagnostics: &head_p.diagnostics,
            },
            &head_ctx,
            &applied,
        );
        let blocked = diff
            .environments
            .iter()
            .filter(|e| e.status == plan::EnvironmentStatus::Blocked)
            .count();
        let text = self.hide(&plan::output::markdown(&diff, pr));
        Ok(PlanComment {
            bodies: plan::output::split_comment(&text, pr, COMMENT_LIMIT),
            state: if blocked == 0 {
                CommitState::Success
            } else {
                CommitState::Failure
            },
            description: if blocked == 0 {
                "plan ok".to_string()
            } else {
                format!("{blocked} environment(s) blocked")
            },
        })
    }

    fn redact(&self, text: &str) -> String {
        self.hide(text)
    }

    fn interrupted_tree(&self, operation: &OperationRecord) -> Option<OperationNode> {
        let state = match self.open_state() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(operation = %operation.id, error = %e, "cannot read what the interrupted operation recorded");
                return None;
            }
        };
        let tree = recorded_tree(&state, operation);
        if tree.is_none() {
            tracing::info!(operation = %operation.id, "the interrupted operation recorded no execution");
        }
        tree
    }

    fn probe<'a>(
        &'a self,
        repo: &'a Path,
        commit: &'a str,
    ) -> BoxFuture<'a, Option<crate::health::ProbeReport>> {
        Box::pin(async move {
            let setup = match self.probe_setup(repo, commit).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %self.hide(&e), "probe: cannot load the config");
                    // Try again next round (with the default interval).
                    return Some(crate::health::ProbeReport {
                        interval: std::time::Duration::from_secs(30),
                        self_heal: Default::default(),
                        assessment: Default::default(),
                        took: Default::default(),
                    });
                }
            };
            let expected = self.probe_expected().await;
            let expected =
                crate::health::Expected::from_applied(&expected.0, &expected.1, &setup.remote_root);
            let round = setup
                .prober
                .round(
                    &setup.servers,
                    &expected.files_by_server(),
                    crate::health::server_timeout(setup.interval),
                )
                .await;
            let assessment = crate::health::assess(&expected, &round.servers);
            let mut drift = BTreeMap::new();
            for r in &assessment.replicas {
                if let Some(env) = &r.expected.environment
                    && !r.drift.is_empty()
                {
                    drift
                        .entry(env.clone())
                        .or_insert_with(BTreeMap::new)
                        .insert(
                            format!("{}#{}", r.expected.service, r.expected.index),
                            r.message.clone().unwrap_or_else(|| r.drift[0].to_string()),
                        );
                }
            }
            self.probing().drift = drift;
            Some(crate::health::ProbeReport {
                interval: setup.interval,
                self_heal: setup.self_heal.clone(),
                assessment,
                took: round.took,
            })
        })
    }
}

/// What the state database recorded of `operation` (its executions, from the shared services it
/// ran to its environment), as the status branch's tree. `None` when nothing was recorded.
///
/// Plan operation ids do not carry the daemon's operation id; with one plan running at a time,
/// the environment's execution is the newest one of that environment and commit started after
/// the operation, and its shared-service executions are those started between the two.
pub fn recorded_tree(state: &State, operation: &OperationRecord) -> Option<OperationNode> {
    let parse = |t: &str| {
        time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
            .ok()
            .map(|d| d.unix_timestamp())
    };
    let mut env_part = None;
    let mut shared = Vec::new();
    for id in state.executions().ok()?.into_iter().rev() {
        let Ok(Some(exec)) = state.execution(id) else {
            continue;
        };
        let started = parse(&exec.started_at).unwrap_or(i64::MIN);
        if started < operation.started.0 {
            break;
        }
        if env_part.is_none() {
            if exec.environment.as_deref() == Some(operation.environment.as_str())
                && exec.commit.as_deref() == Some(operation.commit.as_str())
            {
                env_part = Some(exec);
            }
        } else if exec.environment.is_none() {
            shared.push(exec);
        }
    }
    let env_part = env_part?;
    let mut parts: Vec<OperationNode> = shared.iter().rev().filter_map(execution_tree).collect();
    parts.extend(execution_tree(&env_part));
    super::record::join_parts(
        &format!(
            "{} {} @{}",
            operation.kind,
            operation.environment,
            crate::status::render::short(&operation.commit)
        ),
        parts,
    )
}

/// One recorded execution as a tree of nodes (operations are stored depth first).
fn execution_tree(exec: &crate::state::ExecutionRecord) -> Option<OperationNode> {
    use crate::status::{NodeStatus, StepRecord};
    let parse = |t: &Option<String>| {
        t.as_deref().and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        })
    };
    fn build(
        ops: &[crate::state::OperationRecord],
        i: usize,
        node_of: &dyn Fn(&crate::state::OperationRecord) -> OperationNode,
    ) -> OperationNode {
        let mut node = node_of(&ops[i]);
        for (j, o) in ops.iter().enumerate().skip(i + 1) {
            if o.parent_op_id.as_deref() == Some(ops[i].op_id.as_str()) {
                node.children.push(build(ops, j, node_of));
            }
        }
        node
    }
    let node_of = |o: &crate::state::OperationRecord| OperationNode {
        title: o.title.clone(),
        status: super::record::node_status(o.status),
        duration_ms: match (parse(&o.started_at), parse(&o.finished_at)) {
            (Some(a), Some(b)) => Some((b - a).whole_milliseconds().max(0) as u64),
            _ => None,
        },
        steps: o
            .steps
            .iter()
            .map(|s| StepRecord {
                name: s.name.clone(),
                target: s.target.clone(),
                status: match s.status {
                    crate::execute::Status::Cancelled => NodeStatus::Skipped,
                    other => super::record::node_status(other),
                },
                duration_ms: None,
                output: s.output.as_ref().map(|o| o.text()).unwrap_or_default(),
                error: s.error.clone(),
            })
            .collect(),
        children: Vec::new(),
    };
    (!exec.operations.is_empty()).then(|| build(&exec.operations, 0, &node_of))
}

/// The servers a deploy of `environment` may run steps on: its services' servers, the servers
/// of the shared services it attaches to, and the builders.
fn job_servers(model: &Model, environment: &str) -> Vec<String> {
    let mut out = std::collections::BTreeSet::new();
    let (app, env) = environment.split_once('/').unwrap_or((environment, ""));
    if let Some(e) = model
        .applications
        .get(app)
        .and_then(|a| a.environments.get(env))
    {
        for s in e.services.values() {
            out.extend(s.servers.iter().cloned());
        }
        for a in &e.attachments {
            if let Some(s) = model.services.get(&a.service) {
                out.extend(s.servers.iter().cloned());
            }
        }
    }
    for s in model.servers.values() {
        if s.has_role("builder") {
            out.insert(s.name.clone());
        }
    }
    out.retain(|s| model.servers.contains_key(s));
    out.into_iter().collect()
}

fn resolve_commit(repo: &Path, rev: &str) -> Result<String, String> {
    let git = git2::Repository::open(repo).map_err(|e| e.to_string())?;
    let c = git
        .revparse_single(rev)
        .and_then(|o| o.peel_to_commit())
        .map_err(|e| format!("{rev}: {e}"))?;
    Ok(c.id().to_string())
}

/// The config's diagnostics as the planner's scoped findings.
pub fn scoped_findings(diagnostics: &[crate::config::Diagnostic]) -> Vec<ScopedFinding> {
    diagnostics
        .iter()
        .map(|d| ScopedFinding {
            scope: match &d.scope {
                crate::config::Scope::Project => plan::Scope::Project,
                crate::config::Scope::Application { app } => {
                    plan::Scope::Application { app: app.clone() }
                }
                crate::config::Scope::Environment { app, env } => plan::Scope::Environment {
                    app: app.clone(),
                    env: env.clone(),
                },
            },
            finding: Finding {
                code: d.code.to_string(),
                location: Some(d.location()),
                message: d.message.clone(),
                hint: d.hint.clone(),
            },
        })
        .collect()
}

/// What runs for `app/env` after a converged deploy, from the applied state.
fn services_status(applied: &plan::Applied, environment: &str) -> BTreeMap<String, ServiceStatus> {
    let Some(env) = applied.environments.get(environment) else {
        return BTreeMap::new();
    };
    let image = env.image.as_ref().map(|i| i.repository.clone());
    env.services
        .iter()
        .map(|(name, s)| {
            let replicas = s
                .replicas
                .iter()
                .map(|r| ReplicaStatus {
                    index: r.index,
                    server: r.server.clone(),
                    container: Some(r.container.clone()),
                    image: image.clone(),
                    digest: Some(r.digest.clone()),
                    running_digest: None,
                    health: Health::Healthy,
                    sync: SyncState::Synced,
                    started: Some(Timestamp::now()),
                    restart_count: None,
                    exit_code: None,
                    message: None,
                    transitions: vec![],
                })
                .collect();
            (
                name.clone(),
                ServiceStatus {
                    health: Health::Healthy,
                    sync: SyncState::Synced,
                    replicas,
                },
            )
        })
        .collect()
}

/// The config registries as the digest resolver reaches them, with their credentials.
pub fn registries(
    model: &Model,
    secrets: &BTreeMap<String, String>,
) -> crate::execute::HttpDigestResolver {
    let value = |v: &Option<Value>| match v {
        Some(Value::Plain(s)) => Some(s.clone()),
        Some(Value::Secret(r)) => secrets.get(&r.display_path()).cloned(),
        None => None,
    };
    let access = model
        .registries
        .values()
        .map(|r| {
            let host = r
                .url
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_string();
            (
                r.name.clone(),
                crate::execute::RegistryAccess {
                    host,
                    insecure: r.insecure,
                    username: value(&r.username),
                    password: value(&r.password),
                },
            )
        })
        .collect();
    crate::execute::HttpDigestResolver::new(access)
}

pub fn random_key() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// Every `{secret: …}` reference of the model.
/// Every secret the config references, resolved: its value for the executor's placeholders and its
/// state for the planner (a keyed fingerprint, or why it cannot be decrypted).
pub fn resolve_secrets(
    resolver: &crate::secrets::Resolver,
    model: &Model,
    fingerprint_key: &str,
) -> (
    BTreeMap<String, plan::SecretState>,
    BTreeMap<String, String>,
) {
    let mut secret_states = BTreeMap::new();
    let mut values = BTreeMap::new();
    for r in secret_refs(model) {
        let path = r.display_path();
        match resolver.resolve(&r) {
            Ok(v) => {
                secret_states.insert(
                    path.clone(),
                    plan::SecretState::Fingerprint {
                        fingerprint: v.fingerprint(fingerprint_key.as_bytes()),
                    },
                );
                values.insert(path, v.expose().to_string());
            }
            Err(e) => {
                secret_states.insert(
                    path,
                    plan::SecretState::Undecryptable {
                        reason: e.to_string(),
                    },
                );
            }
        }
    }
    (secret_states, values)
}

pub fn secret_refs(model: &Model) -> Vec<SecretRef> {
    let mut out = Vec::new();
    let mut add = |v: &Option<Value>| {
        if let Some(Value::Secret(r)) = v {
            out.push(r.clone());
        }
    };
    for r in model.registries.values() {
        add(&r.username);
        add(&r.password);
    }
    for a in model.applications.values() {
        add(&a.source.deploy_key);
        for e in a.environments.values() {
            for (_, v) in &e.variables {
                add(&Some(v.clone()));
            }
        }
    }
    out
}

/// The commit each environment's `ref` names in the application source, asked of the source
/// repository with `git ls-remote` (and the deploy key). Unknown when that fails: the build
/// then resolves it.
pub fn source_commits(
    model: &Model,
    secrets: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    source_commits_via(model, secrets, None)
}

/// `source_commits`, with ssh connections to the source repositories kept open for 5 minutes
/// (an OpenSSH ControlMaster per host in `control_dir`, a 0700 directory): the next plan's
/// `ls-remote` then costs a round trip instead of a handshake. The daemon uses this.
pub fn source_commits_via(
    model: &Model,
    secrets: &BTreeMap<String, String>,
    control_dir: Option<&Path>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for a in model.applications.values() {
        let Ok(dir) = tempfile::tempdir() else {
            continue;
        };
        let mut cmd = std::process::Command::new("git");
        cmd.arg("ls-remote").arg("--").arg(&a.source.repo);
        if let Some(Value::Secret(r)) = &a.source.deploy_key {
            let Some(key) = secrets.get(&r.display_path()) else {
                continue;
            };
            let key_path = dir.path().join("deploy_key");
            if write_private(&key_path, key).is_err() {
                continue;
            }
            let mut args = vec![
                "ssh".to_string(),
                "-i".into(),
                key_path.display().to_string(),
                "-o".into(),
                "IdentitiesOnly=yes".into(),
                "-o".into(),
                "BatchMode=yes".into(),
                "-o".into(),
                "StrictHostKeyChecking=accept-new".into(),
                "-o".into(),
                format!(
                    "UserKnownHostsFile={}",
                    dir.path().join("known_hosts").display()
                ),
            ];
            if let Some(c) = control_dir {
                for o in [
                    "ControlMaster=auto".to_string(),
                    format!("ControlPath={}/%C", c.display()),
                    "ControlPersist=300".to_string(),
                ] {
                    args.push("-o".into());
                    args.push(o);
                }
            }
            let ssh = crate::shell::join(args.iter().map(String::as_str));
            cmd.env("GIT_SSH_COMMAND", ssh);
        }
        let Ok(out_put) = cmd.stderr(std::process::Stdio::null()).output() else {
            continue;
        };
        if !out_put.status.success() {
            tracing::warn!(app = %a.name, "git ls-remote failed; the build resolves the ref");
            continue;
        }
        let text = String::from_utf8_lossy(&out_put.stdout);
        for e in a.environments.values() {
            let wanted = [
                e.git_ref.clone(),
                format!("refs/heads/{}", e.git_ref),
                format!("refs/tags/{}", e.git_ref),
            ];
            let found = text.lines().find_map(|l| {
                let (id, name) = l.split_once('\t')?;
                wanted.iter().any(|w| w == name).then(|| id.to_string())
            });
            let commit = found.or_else(|| {
                (e.git_ref.len() == 40 && e.git_ref.chars().all(|c| c.is_ascii_hexdigit()))
                    .then(|| e.git_ref.clone())
            });
            if let Some(c) = commit {
                out.insert(format!("{}/{}", a.name, e.name), c);
            }
        }
    }
    out
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    if !text.ends_with('\n') {
        f.write_all(b"\n")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::plan::{Children, Operation, OperationKind, Step, StepAction, Target};
    use crate::status::NodeStatus;

    fn op(id: &str, kind: OperationKind, title: &str, children: Vec<Operation>) -> Operation {
        Operation {
            id: id.into(),
            kind,
            title: title.into(),
            server: None,
            steps: vec![Step {
                name: format!("{title} step"),
                target: Target::Local,
                action: StepAction::Run {
                    script: "true".into(),
                    stdin: None,
                },
                timeout: Duration::from_secs(5),
                idempotent: true,
                capture: None,
                on_failure: None,
            }],
            children_mode: Children::Sequential,
            children,
        }
    }

    const COMMIT: &str = "ae84924895d36e059ed2318e39a310c040501933";

    fn record(id: &str, started: Timestamp) -> OperationRecord {
        OperationRecord {
            id: id.into(),
            environment: "shop/production".into(),
            kind: "deploy".into(),
            commit: COMMIT.into(),
            started,
            finished: None,
            outcome: Outcome::Interrupted,
            error: None,
            tree: None,
        }
    }

    #[test]
    fn the_recorded_tree_of_an_operation_a_killed_daemon_left_running() {
        let dir = tempfile::tempdir().unwrap();
        let started = Timestamp::now();
        let tree = op(
            "shop/production",
            OperationKind::EnvironmentDeploy,
            "environment_deploy shop/production",
            vec![op(
                "shop/production/build",
                OperationKind::Build,
                "build shop@0123456",
                vec![],
            )],
        );
        {
            let state = State::open(dir.path()).unwrap();
            // An older deploy of the same environment, then this operation's.
            state
                .begin_execution(Some("shop/production"), Some("0000000"), &tree)
                .unwrap();
            state
                .begin_execution(Some("shop/production"), Some(COMMIT), &tree)
                .unwrap();
        }
        let state = State::open(dir.path()).unwrap();
        let got = recorded_tree(&state, &record("op1", started)).expect("a recorded tree");
        assert_eq!(got.title, "environment_deploy shop/production");
        assert_eq!(got.children.len(), 1);
        assert_eq!(got.children[0].title, "build shop@0123456");
        assert_eq!(got.children[0].steps[0].name, "build shop@0123456 step");
        // Never started when the daemon died: cancelled by the next open, shown as skipped.
        assert_eq!(got.children[0].steps[0].status, NodeStatus::Skipped);
        // An operation of another environment, or one started later, ran nothing.
        let mut staging = record("op2", started);
        staging.environment = "shop/staging".into();
        assert_eq!(recorded_tree(&state, &staging), None);
        assert_eq!(
            recorded_tree(&state, &record("op3", Timestamp(started.0 + 5))),
            None
        );
    }
}

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
use crate::model::{Model, Value};
use crate::plan::{self, Desired, Finding, PlanContext, ScopedFinding};
use crate::secrets::{Identities, Redactor};
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
    /// The newest commit `load` prepared, for its jobs.
    prepared: Arc<std::sync::Mutex<Option<Arc<CommitPrep>>>>,
    /// The registries' HTTP client (digest resolution), built once: building one loads the
    /// system's root certificates, which took ~0.5 s of every deploy's start when each job
    /// built its own on the runtime's thread.
    http: Arc<std::sync::OnceLock<reqwest::Client>>,
}

/// A config commit made ready to deploy: loaded, its secrets resolved, the application sources
/// asked for their commits (`git ls-remote`), and a transport whose connections to the servers
/// of the changing environments open in the background. `load` makes one for every new commit
/// while it finds which environments change; that commit's jobs soon after run on it instead of
/// doing it all again (a job then only plans, which is pure), and their first step finds its
/// ssh connection open.
struct CommitPrep {
    commit: String,
    made: std::time::Instant,
    prepared: Prepared,
    source_commits: BTreeMap<String, String>,
    transport: Arc<Transports>,
    digests: Arc<crate::execute::HttpDigestResolver>,
}

/// How long a prepared commit serves its jobs. A job started later (queued behind a long deploy,
/// a retry) prepares the commit again: the sources' branches may have moved, and an ssh master
/// left idle exits after 60 s (`ControlPersist`), so its connections are opened anew.
const PREP_FRESH: std::time::Duration = std::time::Duration::from_secs(45);

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
    prep: Arc<CommitPrep>,
    plan: plan::Plan,
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
            prepared: Arc::default(),
            http: Arc::default(),
        }
    }

    /// The registries' HTTP client, built on first use (by `load`, on a blocking thread).
    fn http(&self) -> reqwest::Client {
        self.http
            .get_or_init(|| {
                let t = std::time::Instant::now();
                let c = crate::execute::HttpDigestResolver::client();
                tracing::debug!(
                    ms = t.elapsed().as_millis() as u64,
                    "HTTP client for the registries built"
                );
                c
            })
            .clone()
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
        let resolver = crate::prepare::resolver_for_commit(
            git,
            commit,
            &loaded.model,
            identities,
            self.redactor.clone(),
        )?;
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
        let sources = self.source_commits(p);
        context_with(p, commit, operation_prefix, sources)
    }

    /// `git ls-remote` of the application sources, through ControlMasters kept in the state.
    fn source_commits(&self, p: &Prepared) -> BTreeMap<String, String> {
        let control = self.state_dir.join("ssh").join("sources");
        let control = std::fs::create_dir_all(&control)
            .and_then(|()| {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&control, std::fs::Permissions::from_mode(0o700))
            })
            .is_ok()
            .then_some(control);
        source_commits_via(&p.loaded.model, &p.values, control.as_deref())
    }

    /// The transport of a deploy of `model` (ssh files under the state's ssh/).
    fn transport(&self, model: &Model) -> Arc<Transports> {
        let identity = self
            .ssh_key
            .clone()
            .unwrap_or_else(SshSettings::default_identity_file);
        Arc::new(Transports::for_model(
            model,
            SshSettings::new(self.state_dir.join("ssh"), identity),
        ))
    }

    /// `loaded` (the config at `commit`) prepared for its jobs. Blocking: SQLite, decryption,
    /// `git ls-remote`.
    fn prepare_commit(
        &self,
        git: &git2::Repository,
        loaded: crate::config::Loaded,
        commit: &str,
    ) -> Result<CommitPrep, String> {
        let t = std::time::Instant::now();
        let state = self.open_state()?;
        let prepared = self.prepare_loaded(git, loaded, commit, &state)?;
        let secrets_ms = t.elapsed().as_millis() as u64;
        let source_commits = self.source_commits(&prepared);
        tracing::debug!(
            commit = %crate::status::render::short(commit),
            secrets_ms,
            sources_ms = t.elapsed().as_millis() as u64 - secrets_ms,
            "commit prepared (state, secrets, ls-remote of the sources)"
        );
        let transport = self.transport(&prepared.loaded.model);
        let digests = Arc::new(registries_with(
            &prepared.loaded.model,
            &prepared.values,
            self.http(),
        ));
        Ok(CommitPrep {
            commit: commit.to_string(),
            made: std::time::Instant::now(),
            prepared,
            source_commits,
            transport,
            digests,
        })
    }

    /// The prepared commit a job of `commit` may run on: the one `load` made, while fresh.
    fn fresh_prep(&self, commit: &str) -> Option<Arc<CommitPrep>> {
        let slot = self.prepared.lock().unwrap_or_else(|p| p.into_inner());
        slot.as_ref()
            .filter(|p| p.commit == commit && p.made.elapsed() < PREP_FRESH)
            .cloned()
    }

    /// Which environments of `out` change at `commit` (the rest are `out.unchanged`), and the
    /// blockers the plan finds, as problems of their environments; the commit prepared is kept
    /// for its jobs and the connections they need are opened. Blocking.
    fn triage(
        &self,
        git: &git2::Repository,
        loaded: crate::config::Loaded,
        commit: &str,
        out: &mut Loaded,
    ) -> Result<(), String> {
        let prep = self.prepare_commit(git, loaded, commit)?;
        let state = self.open_state()?;
        let applied = state.applied().map_err(|e| e.to_string())?;
        let ctx = context_with(
            &prep.prepared,
            commit,
            "triage".into(),
            prep.source_commits.clone(),
        );
        let plan = plan::plan(
            Desired {
                model: &prep.prepared.loaded.model,
                diagnostics: &prep.prepared.diagnostics,
            },
            &applied,
            &ctx,
        );
        // A shared service to change runs with an environment's job: every environment then
        // gets its job, as before.
        let shared = plan.services.iter().any(|s| s.operation.is_some());
        let mut servers = std::collections::BTreeSet::new();
        for e in &plan.environments {
            let key = e.key();
            let Some(problems) = out.environments.get_mut(&key) else {
                continue;
            };
            if e.status == plan::EnvironmentStatus::Blocked {
                // The config's own problems are there already; the plan's (secrets, placement)
                // are added.
                if problems.is_empty() {
                    problems.extend(e.blockers.iter().map(|f| self.hide(&blocker_line(f))));
                }
            } else if e.operation.is_none() && !shared {
                out.unchanged.insert(key);
            } else {
                servers.extend(job_servers(&prep.prepared.loaded.model, &key));
            }
        }
        preconnect(&prep.transport, servers);
        *self.prepared.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(prep));
        Ok(())
    }

    /// The commit of `job`, prepared (loaded, secrets resolved, sources asked). Blocking.
    fn prepare_job(&self, repo: &Path, job: &Job) -> Result<CommitPrep, String> {
        let commit = resolve_commit(repo, &job.commit)?;
        let git = git2::Repository::open(repo).map_err(|e| e.to_string())?;
        let loaded = crate::config::load_rev(&git, &commit).map_err(|e| e.to_string())?;
        let prep = self.prepare_commit(&git, loaded, &commit)?;
        preconnect(
            &prep.transport,
            job_servers(&prep.prepared.loaded.model, &job.environment),
        );
        Ok(prep)
    }

    /// Plan `job`'s environment of the prepared commit against what is applied now. Blocking
    /// (SQLite).
    fn plan_job(
        &self,
        prep: Arc<CommitPrep>,
        job: &Job,
        operation_id: &str,
    ) -> Result<Planned, (Outcome, String)> {
        let failed = |e: String| (Outcome::Failed, e);
        let state = self.open_state().map_err(failed)?;
        let commit = prep.commit.clone();
        let p = &prep.prepared;
        let mut ctx = context_with(
            p,
            &commit,
            operation_id.to_string(),
            prep.source_commits.clone(),
        );
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
            let why: Vec<String> = env.blockers.iter().map(blocker_line).collect();
            return Err((Outcome::Blocked, self.hide(&why.join("\n"))));
        }
        Ok(Planned { state, prep, plan })
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
        // The commit `load` prepared (secrets, sources, connections opening) when still fresh;
        // else prepared now, off the runtime's worker threads (git, SQLite, decryption,
        // ls-remote), the ssh connections opening meanwhile.
        let t = std::time::Instant::now();
        let (prep, reused) = match self.fresh_prep(&job.commit) {
            Some(p) => (p, true),
            None => {
                let me = self.clone();
                let (r, j) = (repo.to_path_buf(), job.clone());
                let p = tokio::task::spawn_blocking(move || me.prepare_job(&r, &j))
                    .await
                    .map_err(|e| failed(format!("loading stopped: {e}")))?
                    .map_err(|e| failed(self.hide(&e)))?;
                (Arc::new(p), false)
            }
        };
        let me = self.clone();
        let (j, id) = (job.clone(), operation_id.to_string());
        let Planned { state, prep, plan } =
            tokio::task::spawn_blocking(move || me.plan_job(prep, &j, &id))
                .await
                .map_err(|e| failed(format!("planning stopped: {e}")))??;
        tracing::info!(
            operation = operation_id,
            ms = t.elapsed().as_millis() as u64,
            reused_prepared_commit = reused,
            "planned"
        );
        let model = &prep.prepared.loaded.model;
        let values = &prep.prepared.values;
        let secret_values = values.clone();
        let run = PlanRun {
            transport: prep.transport.clone(),
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
            digests: Some(prep.digests.clone()),
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
            .and_then(|git| {
                let loaded = crate::config::load_rev(&git, commit).map_err(|e| e.to_string())?;
                Ok((git, loaded))
            });
        let (git, loaded) = match loaded {
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
        if out.project_problems.is_empty()
            && let Err(e) = self.triage(&git, loaded, commit, &mut out)
        {
            // Each job then prepares its commit itself and finds out.
            tracing::warn!(error = %self.hide(&e), "cannot plan the commit ahead of its jobs");
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

fn context_with(
    p: &Prepared,
    commit: &str,
    operation_prefix: String,
    source_commits: BTreeMap<String, String>,
) -> PlanContext {
    PlanContext {
        config_commit: commit.to_string(),
        source_commits,
        operation_prefix,
        request: plan::Request::Deploy,
        secrets: p.secret_states.clone(),
    }
}

/// Open the ssh connections to `servers` in the background (on the runtime, also from a
/// blocking thread), so that the first step does not wait for a handshake. A failure is left
/// for the first step to report: it connects again.
fn preconnect(transport: &Arc<Transports>, servers: impl IntoIterator<Item = String>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    for server in servers {
        let t = transport.clone();
        runtime.spawn(async move {
            let started = std::time::Instant::now();
            let r = t.connect(&server).await;
            tracing::debug!(
                server,
                ok = r.is_ok(),
                ms = started.elapsed().as_millis() as u64,
                "ssh connection opened ahead of the first step"
            );
        });
    }
}

/// A plan blocker as one line: `file:line:col: message` (the hint is in the plan's output).
pub fn blocker_line(f: &Finding) -> String {
    match &f.location {
        Some(l) if !f.message.starts_with(l.as_str()) => format!("{l}: {}", f.message),
        _ => f.message.clone(),
    }
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

/// Shared with `keystone plan` and `keystone apply`: src/prepare.rs.
pub use crate::prepare::{resolve_secrets, scoped_findings, secret_refs};

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
    registries_with(model, secrets, crate::execute::HttpDigestResolver::client())
}

/// `registries` on an existing HTTP client.
pub fn registries_with(
    model: &Model,
    secrets: &BTreeMap<String, String>,
    client: reqwest::Client,
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
    crate::execute::HttpDigestResolver::with_client(access, client)
}

pub fn random_key() -> String {
    hex::encode(rand::random::<[u8; 32]>())
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
    use crate::secrets::Resolver;
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

    /// The example config with `mail_password` of secrets/shop-production.sops.yaml altered,
    /// planned: production's two secrets are blocked, one line each, naming their own key.
    #[test]
    fn two_undecryptable_secrets_of_one_environment_are_one_line_each_naming_their_own_key() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/config-repo");
        let loaded = crate::config::load_dir(&root).unwrap();
        let ids =
            Identities::from_file(&root.join("TEST-ONLY-age-key.txt")).expect("test-only key");
        let mut resolver = Resolver::new(ids, Redactor::new());
        for (stem, file) in &loaded.model.secret_files {
            let mut bytes = std::fs::read(root.join(&file.path)).unwrap();
            if file.path == "secrets/shop-production.sops.yaml" {
                let text = String::from_utf8(bytes).unwrap();
                assert!(text.contains("mail_password: ENC[AES256_GCM,data:/DVU"));
                bytes = text
                    .replace(
                        "mail_password: ENC[AES256_GCM,data:/DVU",
                        "mail_password: ENC[AES256_GCM,data:/DVV",
                    )
                    .into_bytes();
            }
            resolver.add_file(stem, &file.path, bytes);
        }
        let (secrets, _) = resolve_secrets(&resolver, &loaded.model, "k");
        let ctx = PlanContext {
            config_commit: COMMIT.into(),
            source_commits: BTreeMap::new(),
            operation_prefix: "op".into(),
            request: plan::Request::Deploy,
            secrets,
        };
        let diagnostics = scoped_findings(&loaded.diagnostics);
        let plan = plan::plan(
            Desired {
                model: &loaded.model,
                diagnostics: &diagnostics,
            },
            &plan::Applied::default(),
            &ctx,
        );
        let prod = plan.environment("shop", "production").unwrap();
        let lines: Vec<String> = prod.blockers.iter().map(blocker_line).collect();
        assert_eq!(
            lines,
            [
                "applications/shop/environments/production.yaml:49:21: secret shop-production.app_key cannot be decrypted: secrets/shop-production.sops.yaml does not decrypt: the value of another key, `mail_password`, does not authenticate (it was changed, or moved from another key)",
                "applications/shop/environments/production.yaml:50:27: secret shop-production.mail_password cannot be decrypted: secrets/shop-production.sops.yaml: `mail_password`: the encrypted value does not authenticate: it was changed, or moved from another key",
            ]
        );
        assert_eq!(
            plan.environment("shop", "staging").unwrap().status,
            plan::EnvironmentStatus::Changed
        );
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

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
    Health, OperationRecord, Outcome, ReplicaStatus, ServiceStatus, SyncState, Timestamp,
};

/// The planner's per-comment size limit.
const COMMENT_LIMIT: usize = plan::MARKDOWN_LIMIT;

pub struct EngineDeployer {
    state_dir: PathBuf,
    age_key_file: Option<PathBuf>,
    ssh_key: Option<PathBuf>,
    redactor: Redactor,
    /// One plan runs at a time: shared services are part of every environment's plan.
    serial: tokio::sync::Mutex<()>,
    /// The health prober of the last commit probed, and what it last read and found.
    probing: std::sync::Mutex<Probing>,
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
            serial: tokio::sync::Mutex::new(()),
            probing: std::sync::Mutex::new(Probing::default()),
        }
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
            let dir = self.state_dir.clone();
            let read = tokio::task::spawn_blocking(move || {
                let state = State::open(&dir).map_err(|e| e.to_string())?;
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

    /// `text` with every secret value removed.
    fn hide(&self, text: &str) -> String {
        self.redactor.redact(text).into_owned()
    }

    fn open_state(&self) -> Result<State, String> {
        let mut state = State::open(&self.state_dir).map_err(|e| e.to_string())?;
        if let Some(path) = &self.age_key_file {
            state =
                state.with_identity(crate::state::load_identity(path).map_err(|e| e.to_string())?);
        }
        Ok(state)
    }

    fn prepare(&self, repo: &Path, commit: &str, state: &State) -> Result<Prepared, String> {
        let git = git2::Repository::open(repo).map_err(|e| e.to_string())?;
        let loaded = crate::config::load_rev(&git, commit).map_err(|e| e.to_string())?;
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

    fn context(p: &Prepared, commit: &str, operation_prefix: String) -> PlanContext {
        PlanContext {
            config_commit: commit.to_string(),
            source_commits: source_commits(&p.loaded.model, &p.values),
            operation_prefix,
            request: plan::Request::Deploy,
            secrets: p.secret_states.clone(),
        }
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
        let state = Arc::new(self.open_state().map_err(failed)?);
        let commit = resolve_commit(repo, &job.commit).map_err(failed)?;
        let p = self.prepare(repo, &commit, &state).map_err(failed)?;
        let model = &p.loaded.model;
        let mut ctx = Self::context(&p, &commit, operation_id.to_string());
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
                model,
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
        let identity = self
            .ssh_key
            .clone()
            .unwrap_or_else(SshSettings::default_identity_file);
        let transport = Arc::new(Transports::for_model(
            model,
            SshSettings::new(self.state_dir.join("ssh"), identity),
        ));
        let secret_values = p.values.clone();
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
            digests: Some(Arc::new(registries(model, &p.values))),
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
            let log = Arc::new(OperationLog::default());
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
        let base_ctx = Self::context(&base_p, base, prefix.clone());
        let head_ctx = Self::context(&head_p, head, prefix);
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
            let ssh = crate::shell::join([
                "ssh",
                "-i",
                &key_path.display().to_string(),
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=accept-new",
                "-o",
                &format!(
                    "UserKnownHostsFile={}",
                    dir.path().join("known_hosts").display()
                ),
            ]);
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

//! The daemon loop: triggers → fetch → load → queue → deploy → status branch.
//!
//! One task owns the state (snapshot, queue); deploys run in their own tasks, one per environment
//! at a time, and report back. What a commit means (load, plan, execute) is behind `Deployer`, so
//! this loop knows nothing about config files, plans or SSH.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::forge::{CommitState, ForgeClient};
use super::health::{HealthLoop, ProbeDone};
use super::http::{self, ApiState, Trigger};
use super::metrics::Metrics;
use super::mirror::{Mirror, MirrorError};
use super::queue::{Job, JobKind, Offer, Queue};
use super::webhook::WebhookSecret;
use crate::status::{
    self, Attempt, CommitMark, EnvironmentStatus, OperationRecord, OperationSummary, Outcome,
    ServerStatus, ServiceStatus, StatusSnapshot, StatusWriter, SyncState, Timestamp,
};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Project settings the loop needs from a commit's keystone.yaml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub tracked_branch: String,
    pub interval: Duration,
    pub status_branch: String,
    pub keep_operations_days: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            tracked_branch: "main".into(),
            interval: Duration::from_secs(60),
            status_branch: "keystone/status".into(),
            keep_operations_days: 30,
        }
    }
}

/// What one config commit holds, as far as the loop is concerned.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// `None` when keystone.yaml itself could not be read (the previous settings stay).
    pub settings: Option<Settings>,
    /// Every environment (`app/env`) with the problems that block it (empty: deployable), each
    /// `file:line:col: message`.
    pub environments: BTreeMap<String, Vec<String>>,
    /// Problems that block every environment (keystone.yaml, servers, shared services).
    pub project_problems: Vec<String>,
    pub servers: Vec<String>,
    /// Environments whose plan at this commit is empty against what is applied now: nothing
    /// to run. An idle one of them is recorded as synced to the commit without an operation.
    pub unchanged: std::collections::BTreeSet<String>,
}

/// The result of one job.
#[derive(Debug, Clone)]
pub struct Deployment {
    pub outcome: Outcome,
    pub error: Option<String>,
    pub operation: OperationRecord,
    /// What runs after a successful deploy (`None`: unchanged).
    pub services: Option<BTreeMap<String, ServiceStatus>>,
    pub deployed_source: Option<String>,
}

/// A pull request's plan comment (bodies split by the planner, first one carrying the marker).
#[derive(Debug, Clone)]
pub struct PlanComment {
    pub bodies: Vec<String>,
    pub state: CommitState,
    pub description: String,
}

/// What a commit means: load it, deploy an environment of it, plan a pull request. Implemented
/// over config + plan + execute (`daemon::engine`); the loop never looks inside.
pub trait Deployer: Send + Sync + 'static {
    /// Load the config at `commit` of the mirror. Blocking (run on a blocking thread).
    fn load(&self, repo: &Path, commit: &str) -> Loaded;
    /// Run `job` (deploy, retry or migrate) as operation `operation_id`.
    fn deploy<'a>(
        &'a self,
        repo: &'a Path,
        job: &'a Job,
        operation_id: &'a str,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Deployment>;
    /// The plan diff of `base..head` as PR comment bodies. Blocking.
    fn plan_comment(
        &self,
        repo: &Path,
        base: &str,
        head: &str,
        pr: u64,
    ) -> Result<PlanComment, String>;
    /// Remove every secret value from `text`.
    fn redact(&self, text: &str) -> String;
    /// What was recorded of `operation`, which a previous daemon left running (killed). Blocking.
    fn interrupted_tree(&self, _operation: &OperationRecord) -> Option<status::OperationNode> {
        None
    }
    /// One health probe round of the servers of `commit` against the applied state (see
    /// `crate::health`). `None`: this deployer does not probe, and is not asked again.
    fn probe<'a>(
        &'a self,
        repo: &'a Path,
        commit: &'a str,
    ) -> BoxFuture<'a, Option<crate::health::ProbeReport>> {
        let _ = (repo, commit);
        Box::pin(async { None })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Mirror(#[from] MirrorError),
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

pub struct DaemonOptions {
    /// URL or local directory of the config repository.
    pub repo: String,
    pub state_dir: PathBuf,
    /// Already bound (so the caller and tests know the port).
    pub listener: Option<tokio::net::TcpListener>,
    pub webhook_secret: Option<WebhookSecret>,
    pub ssh_key: Option<PathBuf>,
    pub forge: Option<ForgeClient>,
    /// Overrides keystone.yaml's `reconcile.branch` / `reconcile.interval`.
    pub branch: Option<String>,
    pub poll_interval: Option<Duration>,
    /// Watch a local repository directory with `notify`.
    pub watch: bool,
}

/// Run until `cancel` is triggered. Running deploys get the cancellation too and are awaited.
pub async fn run(
    opts: DaemonOptions,
    deployer: Arc<dyn Deployer>,
    cancel: CancellationToken,
) -> Result<(), DaemonError> {
    let mirror = Mirror::open(&opts.state_dir, &opts.repo, opts.ssh_key.clone())?;
    let metrics = Arc::new(Metrics::default());
    let (tx, rx) = mpsc::unbounded_channel();
    if let Some(listener) = opts.listener {
        let state = ApiState::new(opts.webhook_secret.clone(), tx.clone(), metrics.clone());
        let c = cancel.clone();
        tokio::spawn(async move {
            if let Err(e) = http::serve(listener, state, async move { c.cancelled().await }).await {
                tracing::error!(error = %e, "HTTP server stopped");
            }
        });
    }
    let _watcher = if opts.watch {
        mirror.local_path().and_then(|p| watch(&p, tx.clone()))
    } else {
        None
    };
    let mut settings = Settings::default();
    if let Some(b) = &opts.branch {
        settings.tracked_branch = b.clone();
    }
    let mut d = Daemon {
        mirror,
        deployer,
        metrics,
        snapshot: StatusSnapshot::default(),
        queue: Queue::default(),
        settings,
        branch_override: opts.branch,
        interval_override: opts.poll_interval,
        last_tip: None,
        forge: opts.forge.map(Arc::new),
        ssh_key: opts.ssh_key,
        cancel: cancel.clone(),
        running: BTreeMap::new(),
        health: HealthLoop::default(),
    };
    d.resume().await;
    let _ = tx.send(Trigger::Fetch {
        reason: "startup".into(),
    });
    d.run(rx).await;
    Ok(())
}

/// Wake the loop when the local repository's refs change.
fn watch(path: &Path, tx: mpsc::UnboundedSender<Trigger>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let git_dir = if path.join(".git").is_dir() {
        path.join(".git")
    } else {
        path.to_path_buf()
    };
    let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        // Only changes: a fetch reading the refs would otherwise wake the next fetch, forever.
        if let Ok(ev) = res
            && matches!(
                ev.kind,
                notify::EventKind::Create(_)
                    | notify::EventKind::Remove(_)
                    | notify::EventKind::Modify(
                        notify::event::ModifyKind::Data(_)
                            | notify::event::ModifyKind::Name(_)
                            | notify::event::ModifyKind::Any
                    )
            )
            && ev
                .paths
                .iter()
                .any(|p| p.to_string_lossy().contains("refs") || p.ends_with("packed-refs"))
        {
            let _ = tx.send(Trigger::Fetch {
                reason: "local repository changed".into(),
            });
        }
    })
    .ok()?;
    w.watch(&git_dir, notify::RecursiveMode::Recursive).ok()?;
    Some(w)
}

struct Daemon {
    mirror: Mirror,
    deployer: Arc<dyn Deployer>,
    metrics: Arc<Metrics>,
    snapshot: StatusSnapshot,
    queue: Queue,
    settings: Settings,
    branch_override: Option<String>,
    interval_override: Option<Duration>,
    last_tip: Option<String>,
    forge: Option<Arc<ForgeClient>>,
    ssh_key: Option<PathBuf>,
    cancel: CancellationToken,
    /// Environment → when its running job started.
    running: BTreeMap<String, Instant>,
    health: HealthLoop,
}

type Done = (Job, Deployment);

impl Daemon {
    fn writer(&self) -> StatusWriter {
        // A local working repository cannot be pushed to (its branches may be checked out):
        // the status branch is committed into it directly, still without touching its checkout.
        if let Some(dir) = self.mirror.local_path()
            && dir.join(".git").exists()
        {
            let mut w = StatusWriter::new(dir, &self.settings.status_branch);
            w.keep_operations_days = self.settings.keep_operations_days;
            return w;
        }
        let mut w = StatusWriter::new(&self.mirror.path, &self.settings.status_branch);
        w.remote = Some(self.mirror.url.clone());
        w.keep_operations_days = self.settings.keep_operations_days;
        w.ssh_key = self.ssh_key.clone();
        w
    }

    fn interval(&self) -> Duration {
        self.interval_override.unwrap_or(self.settings.interval)
    }

    async fn run(&mut self, mut rx: mpsc::UnboundedReceiver<Trigger>) {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
        let mut next_poll = tokio::time::Instant::now() + self.interval();
        let (probe_tx, mut probe_rx) = mpsc::unbounded_channel::<ProbeDone>();
        let mut next_probe = tokio::time::Instant::now() + super::health::FIRST_ROUND;
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                Some(t) = rx.recv() => {
                    // A burst of fetch triggers (notify reports every ref file) is one fetch.
                    let mut batch = vec![t];
                    while let Ok(more) = rx.try_recv() {
                        batch.push(more);
                    }
                    let mut fetched = false;
                    for t in batch {
                        if matches!(t, Trigger::Fetch { .. }) {
                            if fetched {
                                continue;
                            }
                            fetched = true;
                        }
                        self.on_trigger(t, &done_tx).await;
                    }
                }
                Some((job, dep)) = done_rx.recv() => self.on_done(job, dep, &done_tx).await,
                _ = tokio::time::sleep_until(next_poll) => {
                    next_poll = tokio::time::Instant::now() + self.interval();
                    self.on_fetch("poll", &done_tx).await;
                }
                _ = tokio::time::sleep_until(next_probe) => {
                    let wait = self.health.start(
                        self.deployer.clone(),
                        self.mirror.path.clone(),
                        self.last_tip.clone(),
                        &self.snapshot,
                        &probe_tx,
                    );
                    next_probe = tokio::time::Instant::now() + wait;
                }
                Some(round) = probe_rx.recv() => self.on_probe(round, &done_tx).await,
            }
        }
        // Let running deploys see the cancellation and report.
        while !self.running.is_empty() {
            match tokio::time::timeout(Duration::from_secs(60), done_rx.recv()).await {
                Ok(Some((job, dep))) => self.on_done(job, dep, &done_tx).await,
                _ => break,
            }
        }
    }

    /// Rebuild the snapshot from the status branch after a restart.
    async fn resume(&mut self) {
        let mirror = self.mirror.clone();
        let branch = self.settings.status_branch.clone();
        let read = tokio::task::spawn_blocking(move || read_status_branch(&mirror, &branch))
            .await
            .unwrap_or_default();
        let now = Timestamp::now();
        let mut interrupted: Vec<OperationRecord> = Vec::new();
        for (key, mut env) in read.environments {
            let failed = env.last_attempted.as_ref().and_then(|a| {
                matches!(a.outcome, Outcome::Failed | Outcome::Blocked).then(|| a.commit.clone())
            });
            self.queue.seed(
                &key,
                env.last_applied.as_ref().map(|a| a.commit.clone()),
                failed,
            );
            if let Some(op) = &mut env.last_operation
                && op.outcome == Outcome::Running
            {
                // Killed mid-deploy: say so; the commit is deployed again (steps are idempotent).
                op.outcome = Outcome::Interrupted;
                interrupted.push(OperationRecord {
                    id: op.id.clone(),
                    environment: key.clone(),
                    kind: op.kind.clone(),
                    commit: op.commit.clone(),
                    started: op.started,
                    finished: Some(now),
                    outcome: Outcome::Interrupted,
                    error: Some(
                        "interrupted: the daemon stopped during this operation; it is run again"
                            .into(),
                    ),
                    tree: None,
                });
            }
            self.snapshot.environments.insert(key, env);
        }
        // What the state recorded of them: which steps had finished when the daemon stopped.
        let deployer = self.deployer.clone();
        let interrupted = tokio::task::spawn_blocking(move || {
            let mut ops = interrupted;
            for op in &mut ops {
                op.tree = deployer.interrupted_tree(op);
            }
            ops
        })
        .await
        .unwrap_or_default();
        self.snapshot.operations.extend(interrupted);
        self.snapshot.servers = read.servers;
        self.snapshot.config_commit = read.config_commit;
        self.snapshot.updated_at = read.updated_at;
    }

    async fn on_trigger(&mut self, t: Trigger, done: &mpsc::UnboundedSender<Done>) {
        match t {
            Trigger::Fetch { reason } => self.on_fetch(&reason, done).await,
            Trigger::PullRequest {
                number, head_sha, ..
            } => self.on_pull_request(number, head_sha),
            Trigger::Retry { environment, reply } => {
                let r = self.request(&environment, JobKind::Retry);
                let _ = reply.send(r);
                self.start_ready(done).await;
            }
            Trigger::Migrate { environment, reply } => {
                let r = self.request(&environment, JobKind::Migrate);
                let _ = reply.send(r);
                self.start_ready(done).await;
            }
        }
    }

    /// A health round came back: apply it, commit what changed, queue self-heals.
    async fn on_probe(&mut self, round: ProbeDone, done: &mpsc::UnboundedSender<Done>) {
        let now = Timestamp::now();
        let running = self.running.keys().cloned().collect();
        let out = self
            .health
            .finish(round, &mut self.snapshot, &running, &self.metrics, now);
        if let Some((subject, details)) = out.write {
            self.write_status(&subject, &details, now).await;
        }
        for env in &out.heal {
            match self.request(env, JobKind::Heal) {
                Ok(r) => tracing::info!(environment = %env, "{r}"),
                Err(e) => tracing::info!(environment = %env, "no heal: {e}"),
            }
        }
        if !out.heal.is_empty() {
            self.start_ready(done).await;
        }
    }

    fn request(&mut self, environment: &str, kind: JobKind) -> Result<String, String> {
        let Some(env) = self.snapshot.environments.get(environment) else {
            let known: Vec<&str> = self
                .snapshot
                .environments
                .keys()
                .map(String::as_str)
                .collect();
            return Err(format!(
                "no environment {environment:?} (known: {})",
                known.join(", ")
            ));
        };
        if !env.problems.is_empty() {
            return Err(format!(
                "{environment} is blocked at commit {}: {}",
                env.desired_commit
                    .as_deref()
                    .map(status::render::short)
                    .unwrap_or("?"),
                env.problems[0]
            ));
        }
        let commit = if kind == JobKind::Heal {
            env.last_applied.as_ref().map(|a| a.commit.clone())
        } else {
            env.desired_commit.clone()
        };
        let Some(commit) = commit else {
            return Err(format!("{environment} has no commit yet"));
        };
        let job = Job {
            environment: environment.to_string(),
            commit: commit.clone(),
            kind,
        };
        let r = match self.queue.offer(job) {
            Offer::Skipped(why) => Err(why),
            _ => Ok(format!(
                "{} of {environment} at {} queued",
                kind.as_str(),
                status::render::short(&commit)
            )),
        };
        self.metrics.set_queue_depth(self.queue.depth() as u64);
        r
    }

    async fn on_fetch(&mut self, reason: &str, done: &mpsc::UnboundedSender<Done>) {
        tracing::info!(reason, "fetching the config repository");
        let mirror = self.mirror.clone();
        let branch = self.settings.tracked_branch.clone();
        let started = Instant::now();
        let fetched = tokio::task::spawn_blocking(move || {
            mirror.fetch(None)?;
            mirror.tip(&branch)
        })
        .await;
        let tip = match fetched {
            Ok(Ok(Some(tip))) => {
                self.metrics.fetch("ok");
                tracing::info!(
                    tip = %status::render::short(&tip),
                    ms = started.elapsed().as_millis() as u64,
                    "fetched"
                );
                tip
            }
            Ok(Ok(None)) => {
                self.metrics.fetch("no_branch");
                let branches = self.mirror.branches();
                tracing::warn!(
                    "{}",
                    missing_branch(&self.mirror.url, &self.settings.tracked_branch, &branches)
                );
                return;
            }
            Ok(Err(e)) => {
                self.metrics.fetch("error");
                tracing::warn!("fetch failed: {e}");
                return;
            }
            Err(_) => return,
        };
        if self.last_tip.as_deref() == Some(tip.as_str()) {
            return;
        }
        self.on_commit(tip, done).await;
    }

    /// A new tip of the tracked branch.
    async fn on_commit(&mut self, tip: String, done: &mpsc::UnboundedSender<Done>) {
        let deployer = self.deployer.clone();
        let repo = self.mirror.path.clone();
        let commit = tip.clone();
        let started = Instant::now();
        let loaded = tokio::task::spawn_blocking(move || deployer.load(&repo, &commit))
            .await
            .unwrap_or_default();
        tracing::info!(
            commit = %status::render::short(&tip),
            ms = started.elapsed().as_millis() as u64,
            unchanged = loaded.unchanged.len(),
            "commit loaded and planned"
        );
        if let Some(s) = &loaded.settings {
            let mut s = s.clone();
            if let Some(b) = &self.branch_override {
                s.tracked_branch = b.clone();
            }
            if s.tracked_branch != self.settings.tracked_branch {
                // keystone.yaml tracks another branch: follow it from the next fetch on.
                self.settings = s;
                self.last_tip = None;
                let _ = Box::pin(self.on_fetch("tracked branch changed", done)).await;
                return;
            }
            self.settings = s;
        }
        self.last_tip = Some(tip.clone());
        let now = Timestamp::now();
        self.snapshot.config_commit = Some(tip.clone());

        // Environments that left the config leave the status branch.
        let keep: Vec<String> = loaded.environments.keys().cloned().collect();
        if !loaded.environments.is_empty() || loaded.project_problems.is_empty() {
            self.snapshot
                .environments
                .retain(|k, _| keep.contains(k) || self.running.contains_key(k));
        }
        for s in &loaded.servers {
            self.snapshot.servers.entry(s.clone()).or_default();
        }
        if loaded.project_problems.is_empty() || !loaded.servers.is_empty() {
            self.snapshot
                .servers
                .retain(|k, _| loaded.servers.contains(k));
        }

        let mut blocked = Vec::new();
        let mut unchanged = Vec::new();
        let mut blocked_envs = 0;
        let mut envs: BTreeMap<String, Vec<String>> = loaded.environments.clone();
        if !loaded.project_problems.is_empty() {
            // A broken keystone.yaml or shared resource blocks every environment we know of.
            for k in self.snapshot.environments.keys() {
                envs.entry(k.clone()).or_default();
            }
            for problems in envs.values_mut() {
                problems.splice(0..0, loaded.project_problems.iter().cloned());
            }
        }
        for (key, problems) in envs {
            let (app, name) = key.split_once('/').unwrap_or((key.as_str(), ""));
            let env = self
                .snapshot
                .environments
                .entry(key.clone())
                .or_insert_with(|| EnvironmentStatus::new(app, name));
            env.desired_commit = Some(tip.clone());
            if problems.is_empty()
                && loaded.unchanged.contains(&key)
                && self.queue.unchanged(&key, &tip)
            {
                // Nothing of this environment changes: no operation, no status commit of its
                // own; it is at the new commit now.
                tracing::info!(environment = %key, "new commit: nothing to change");
                env.problems.clear();
                env.last_applied = Some(CommitMark {
                    commit: tip.clone(),
                    at: now,
                });
                env.sync = SyncState::Synced;
                env.sync_reason = None;
                env.roll_up_health();
                self.metrics.environment_state(&key, env.health, env.sync);
                unchanged.push(format!(
                    "{key}: nothing to change, synced without an operation"
                ));
            } else if problems.is_empty() {
                env.problems.clear();
                let offer = self.queue.offer(Job {
                    environment: key.clone(),
                    commit: tip.clone(),
                    kind: JobKind::Deploy,
                });
                tracing::info!(environment = %key, ?offer, "new commit");
                if let Offer::Skipped(_) = offer
                    && env.last_applied.as_ref().map(|a| a.commit.as_str()) == Some(tip.as_str())
                {
                    env.sync = SyncState::Synced;
                    env.sync_reason = None;
                } else if let Offer::Skipped(why) = offer {
                    env.sync = SyncState::OutOfSync;
                    env.sync_reason = Some(why);
                } else {
                    env.sync = SyncState::OutOfSync;
                    env.sync_reason =
                        Some(format!("deploy of {} queued", status::render::short(&tip)));
                }
            } else {
                self.queue.blocked(&key, &tip);
                env.sync = SyncState::OutOfSync;
                env.sync_reason = Some(format!(
                    "commit {} is invalid: {} problem{}",
                    status::render::short(&tip),
                    problems.len(),
                    if problems.len() == 1 { "" } else { "s" }
                ));
                env.last_attempted = Some(Attempt {
                    commit: tip.clone(),
                    at: now,
                    outcome: Outcome::Blocked,
                    operation: None,
                    error: problems.first().cloned(),
                });
                env.problems = problems.clone();
                self.metrics.reconcile(&key, "blocked", 0.0, now.0);
                blocked_envs += 1;
                blocked.extend(problems.iter().map(|p| format!("{key}: {p}")));
            }
            env.roll_up_health();
        }
        self.metrics.set_queue_depth(self.queue.depth() as u64);
        let subject = if blocked.is_empty() {
            format!("config {}", status::render::short(&tip))
        } else {
            format!(
                "commit {} blocked for {} environment{}",
                status::render::short(&tip),
                blocked_envs,
                if blocked_envs == 1 { "" } else { "s" }
            )
        };
        blocked.extend(unchanged);
        self.write_status(&subject, &blocked, now).await;
        self.start_ready(done).await;
    }

    async fn start_ready(&mut self, done: &mpsc::UnboundedSender<Done>) {
        let jobs = self.queue.start_ready();
        self.metrics.set_queue_depth(self.queue.depth() as u64);
        if jobs.is_empty() {
            return;
        }
        let now = Timestamp::now();
        let mut started = Vec::new();
        for job in jobs {
            let op_id = operation_id(now, &job);
            let summary = OperationSummary {
                id: op_id.clone(),
                kind: job.kind.as_str().into(),
                commit: job.commit.clone(),
                outcome: Outcome::Running,
                started: now,
                duration_ms: None,
            };
            if let Some(env) = self.snapshot.environments.get_mut(&job.environment) {
                env.last_operation = Some(summary);
                env.sync_reason = Some(format!(
                    "{} of {} running",
                    job.kind.as_str(),
                    status::render::short(&job.commit)
                ));
                if job.kind != JobKind::Migrate {
                    env.health = crate::status::Health::Progressing;
                }
            }
            self.snapshot.operations.push(OperationRecord {
                id: op_id.clone(),
                environment: job.environment.clone(),
                kind: job.kind.as_str().into(),
                commit: job.commit.clone(),
                started: now,
                finished: None,
                outcome: Outcome::Running,
                error: None,
                tree: None,
            });
            started.push(format!(
                "{} {} {}",
                job.environment,
                job.kind.as_str(),
                status::render::short(&job.commit)
            ));
            self.running.insert(job.environment.clone(), Instant::now());
            let deployer = self.deployer.clone();
            let repo = self.mirror.path.clone();
            let done = done.clone();
            let cancel = self.cancel.child_token();
            tokio::spawn(async move {
                let dep = deployer.deploy(&repo, &job, &op_id, cancel).await;
                let _ = done.send((job, dep));
            });
        }
        let subject = format!("{} started", started.join(", "));
        self.write_status(&subject, &[], now).await;
    }

    async fn on_done(&mut self, job: Job, dep: Deployment, done: &mpsc::UnboundedSender<Done>) {
        let now = Timestamp::now();
        let took = self
            .running
            .remove(&job.environment)
            .map(|t| t.elapsed().as_secs_f64())
            .unwrap_or(0.0);
        let ok = dep.outcome == Outcome::Succeeded;
        if dep.outcome == Outcome::Cancelled && self.cancel.is_cancelled() {
            // Shutting down: leave it to be re-run after the restart, not marked failed.
            self.queue.finished(&job, true);
        } else {
            self.queue.finished(&job, ok);
        }
        self.metrics
            .reconcile(&job.environment, dep.outcome.as_str(), took, now.0);
        if let Some(env) = self.snapshot.environments.get_mut(&job.environment) {
            env.last_operation = Some(dep.operation.summary());
            if job.kind != JobKind::Migrate {
                env.last_attempted = Some(Attempt {
                    commit: job.commit.clone(),
                    at: now,
                    outcome: dep.outcome,
                    operation: Some(dep.operation.id.clone()),
                    error: dep.error.clone(),
                });
            }
            if ok && job.kind != JobKind::Migrate {
                env.last_applied = Some(CommitMark {
                    commit: job.commit.clone(),
                    at: now,
                });
                if let Some(services) = &dep.services {
                    env.services = crate::health::carry_over(&env.services, services.clone(), now);
                }
                if dep.deployed_source.is_some() {
                    env.deployed_source = dep.deployed_source.clone();
                }
            }
            let behind = env.desired_commit.as_deref() != Some(job.commit.as_str());
            (env.sync, env.sync_reason) = match (ok, behind) {
                _ if !env.problems.is_empty() => (SyncState::OutOfSync, env.sync_reason.clone()),
                (true, false) => (SyncState::Synced, None),
                (true, true) => (
                    SyncState::OutOfSync,
                    Some(format!(
                        "deploy of {} queued",
                        env.desired_commit
                            .as_deref()
                            .map(status::render::short)
                            .unwrap_or("?")
                    )),
                ),
                (false, _) => (
                    SyncState::OutOfSync,
                    Some(format!(
                        "{} of {} {}: {}",
                        job.kind.as_str(),
                        status::render::short(&job.commit),
                        dep.outcome,
                        first_of_lines(dep.error.as_deref())
                    )),
                ),
            };
            env.roll_up_health();
            self.metrics
                .environment_state(&job.environment, env.health, env.sync);
        }
        self.snapshot
            .operations
            .retain(|o| o.id != dep.operation.id);
        self.snapshot.operations.push(dep.operation.clone());
        let subject = status::deploy_subject(
            &job.environment,
            job.kind.as_str(),
            &job.commit,
            dep.outcome,
        );
        // One line per problem (a blocked plan has one per blocker).
        let details: Vec<String> = dep
            .error
            .iter()
            .flat_map(|e| e.lines().map(str::to_string))
            .collect();
        self.write_status(&subject, &details, now).await;
        if !self.cancel.is_cancelled() {
            self.start_ready(done).await;
        }
    }

    async fn write_status(&mut self, subject: &str, details: &[String], now: Timestamp) {
        self.snapshot.updated_at = Some(now);
        let files = status::render(&self.snapshot);
        let message = status::commit_message(subject, details);
        let writer = self.writer();
        let deployer = self.deployer.clone();
        let started = Instant::now();
        let result = tokio::task::spawn_blocking(move || {
            writer.write(&files, &message, now, &|t: &str| deployer.redact(t))
        })
        .await;
        match result {
            Ok(Ok(out)) => {
                if let Some(commit) = &out.commit {
                    let took = started.elapsed();
                    self.metrics.status_commit(took.as_secs_f64());
                    tracing::info!(
                        commit = %status::render::short(commit),
                        pushed = out.pushed,
                        ms = took.as_millis() as u64,
                        subject,
                        "status branch written"
                    );
                }
                self.metrics.status_write(if out.commit.is_some() {
                    "committed"
                } else {
                    "unchanged"
                });
                // Written: the branch keeps these logs; later snapshots need not carry them.
                self.snapshot.operations.clear();
            }
            Ok(Err(e)) => {
                self.metrics.status_write("error");
                tracing::warn!(error = %e, "status branch write failed");
            }
            Err(_) => self.metrics.status_write("error"),
        }
    }

    fn on_pull_request(&self, number: u64, head_sha: Option<String>) {
        let Some(forge) = self.forge.clone() else {
            tracing::info!(
                pr = number,
                "pull request event, but no forge API is configured"
            );
            return;
        };
        let mirror = self.mirror.clone();
        let deployer = self.deployer.clone();
        let branch = self.settings.tracked_branch.clone();
        tokio::spawn(async move {
            let m = mirror.clone();
            let heads = tokio::task::spawn_blocking(move || -> Result<(String, String), String> {
                m.fetch(Some(number)).map_err(|e| e.to_string())?;
                let head = m
                    .pull_request_head(number)
                    .map_err(|e| e.to_string())?
                    .or(head_sha)
                    .ok_or_else(|| format!("pull request {number} has no head ref"))?;
                let tip = m
                    .tip(&branch)
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("no branch {branch}"))?;
                let base = m.merge_base(&tip, &head).map_err(|e| e.to_string())?;
                Ok((base, head))
            })
            .await;
            let (base, head) = match heads {
                Ok(Ok(x)) => x,
                Ok(Err(e)) => {
                    tracing::warn!(pr = number, error = %e, "cannot plan the pull request");
                    return;
                }
                Err(_) => return,
            };
            let context = "keystone/plan";
            let _ = forge
                .set_commit_status(
                    &head,
                    CommitState::Pending,
                    context,
                    "computing the plan",
                    None,
                )
                .await;
            let repo = mirror.path.clone();
            let (b, h) = (base.clone(), head.clone());
            let comment =
                tokio::task::spawn_blocking(move || deployer.plan_comment(&repo, &b, &h, number))
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()));
            match comment {
                Ok(c) => {
                    if let Err(e) = forge.upsert_plan_comments(number, &c.bodies).await {
                        tracing::warn!(pr = number, error = %e, "cannot post the plan comment");
                    }
                    let _ = forge
                        .set_commit_status(&head, c.state, context, &c.description, None)
                        .await;
                }
                Err(e) => {
                    let _ = forge
                        .set_commit_status(&head, CommitState::Failure, context, &e, None)
                        .await;
                }
            }
        });
    }
}

/// The tracked branch is not in the config repository: what to do.
pub fn missing_branch(url: &str, branch: &str, branches: &[String]) -> String {
    let there = if branches.is_empty() {
        "it has no branches yet".to_string()
    } else {
        format!("its branches: {}", branches.join(", "))
    };
    format!(
        "config repository {url} has no branch {branch:?} ({there}): push the config to {branch:?} (keystone.yaml's reconcile.branch is read from there); the daemon deploys nothing until then and fetches again at the next poll or webhook"
    )
}

/// The first line of an error, with how many more follow (in the status commit's message).
fn first_of_lines(error: Option<&str>) -> String {
    let Some(e) = error else {
        return "see the operation log".into();
    };
    let mut lines = e.lines();
    let first = lines.next().unwrap_or_default().to_string();
    match lines.count() {
        0 => first,
        n => format!("{first} (and {n} more)"),
    }
}

/// `20261203T174205-e4f5a6b-shop-production-deploy-3f2a`: unique per start and path-safe.
pub fn operation_id(now: Timestamp, job: &Job) -> String {
    let stamp = now
        .rfc3339()
        .replace(['-', ':'], "")
        .trim_end_matches('Z')
        .to_string();
    // A random tail: two starts in the same second (a restart, a retry) stay apart.
    let tail: u16 = rand::random();
    status::render::path_safe(&format!(
        "{stamp}-{}-{}-{}-{tail:04x}",
        status::render::short(&job.commit),
        job.environment.replace('/', "-"),
        job.kind.as_str()
    ))
}

/// What the status branch says now (fetched from the remote first).
fn read_status_branch(mirror: &Mirror, branch: &str) -> StatusSnapshot {
    let mut snap = StatusSnapshot::default();
    let Ok(repo) = mirror.repo() else {
        return snap;
    };
    if let Ok(mut remote) = repo.remote_anonymous(&mirror.url) {
        let spec = format!("+refs/heads/{branch}:refs/heads/{branch}");
        let _ = remote.fetch(&[spec.as_str()], None, None);
    }
    let Ok(commit) = repo
        .find_reference(&format!("refs/heads/{branch}"))
        .and_then(|r| r.peel_to_commit())
    else {
        return snap;
    };
    snap.updated_at = Some(Timestamp(commit.time().seconds()));
    let Ok(tree) = commit.tree() else {
        return snap;
    };
    let _ = tree.walk(git2::TreeWalkMode::PreOrder, |root, entry| {
        let Ok(name) = entry.name() else {
            return git2::TreeWalkResult::Ok;
        };
        let path = format!("{root}{name}");
        let text = || {
            entry
                .to_object(&repo)
                .ok()
                .and_then(|o| o.peel_to_blob().ok())
                .map(|b| String::from_utf8_lossy(b.content()).into_owned())
        };
        if path.starts_with("environments/") && path.ends_with(".yaml") {
            if let Some(env) =
                text().and_then(|t| serde_saphyr::from_str::<EnvironmentStatus>(&t).ok())
            {
                snap.environments.insert(env.key(), env);
            }
        } else if path.starts_with("servers/")
            && path.ends_with(".yaml")
            && let Some(t) = text()
            && let Ok(s) = serde_saphyr::from_str::<ServerFile>(&t)
        {
            snap.servers.insert(s.name, s.status);
        }
        git2::TreeWalkResult::Ok
    });
    snap
}

#[derive(serde::Deserialize)]
struct ServerFile {
    name: String,
    #[serde(flatten)]
    status: ServerStatus,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_tracked_branch_says_which_branches_there_are_and_what_to_do() {
        assert_eq!(
            missing_branch("/srv/config.git", "main", &["master".into()]),
            "config repository /srv/config.git has no branch \"main\" (its branches: master): push the config to \"main\" (keystone.yaml's reconcile.branch is read from there); the daemon deploys nothing until then and fetches again at the next poll or webhook"
        );
        assert!(
            missing_branch("/srv/config.git", "main", &[]).contains("(it has no branches yet)")
        );
    }

    #[test]
    fn an_error_of_several_lines_shows_its_first_and_how_many_more() {
        assert_eq!(
            first_of_lines(Some("a: x\nb: y\nc: z")),
            "a: x (and 2 more)"
        );
        assert_eq!(first_of_lines(Some("a: x")), "a: x");
        assert_eq!(first_of_lines(None), "see the operation log");
    }
}

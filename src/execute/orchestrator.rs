//! The one orchestrator: walks an operation tree over a `Transport`.
//!
//! Rules (SPEC.md §6):
//! - an operation runs its own steps, one after another, then its children;
//! - `Sequential` children run in declared order; `ParallelByServer` children form one lane per
//!   server (declared order inside a lane) and up to `width` lanes run at once;
//! - a failed step fails its operation and every ancestor, and from then on nothing new starts
//!   anywhere in the plan: pending operations (descendants, later siblings, other lanes) are
//!   cancelled. An operation that had already started on another lane finishes its own steps;
//! - an operation with no steps and no children succeeds;
//! - every attempt of a step is bounded by the step's timeout; only idempotent steps are retried;
//! - a step that failed for good runs its `on_failure` clean-up (if any) on its target before it
//!   is reported failed; the clean-up's outcome ends the step's error;
//! - on shutdown nothing new starts, running steps get a grace period, and whatever was still
//!   running is reported `interrupted`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::watch;

use crate::plan::{Children, Operation, Step, StepAction, Target};

use super::events::{Event, Observer, Status};
use super::output::{Output, Redactor, Stream};
use super::placeholders::{NoValues, Values, fill_payload, fill_script, is_digest};
use super::registry::DigestResolver;
use super::transport::{BoxFuture, Transport};

/// Knobs of one execution.
#[derive(Debug, Clone)]
pub struct ExecuteOptions {
    /// Lanes (servers) of a `ParallelByServer` operation that may run at once.
    pub width: usize,
    /// Extra attempts for a failed idempotent step.
    pub retries: u32,
    /// Wait before the first retry; doubled for each further one.
    pub backoff: Duration,
    /// How long running steps may continue after a shutdown request.
    pub grace: Duration,
}

impl Default for ExecuteOptions {
    fn default() -> Self {
        Self {
            width: 4,
            retries: 2,
            backoff: Duration::from_secs(2),
            grace: Duration::from_secs(30),
        }
    }
}

/// A shutdown request shared by everyone who may stop an execution (SIGTERM handler, daemon).
/// Cloning shares the same signal.
#[derive(Clone, Debug)]
pub struct Shutdown(Arc<watch::Sender<bool>>);

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        Self(Arc::new(watch::channel(false).0))
    }

    pub fn trigger(&self) {
        self.0.send_replace(true);
    }

    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once `trigger` was called (at once if it already was).
    pub async fn triggered(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|v| *v).await;
    }
}

/// What happened to one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepReport {
    pub name: String,
    pub status: Status,
    pub attempts: u32,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
}

/// What happened to one operation and its subtree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationReport {
    pub id: String,
    pub title: String,
    pub status: Status,
    pub error: Option<String>,
    pub steps: Vec<StepReport>,
    pub children: Vec<OperationReport>,
}

impl OperationReport {
    /// Depth-first, in declared order.
    pub fn walk(&self) -> Vec<&OperationReport> {
        let mut out = vec![self];
        for c in &self.children {
            out.extend(c.walk());
        }
        out
    }
}

/// The outcome of `Executor::execute`.
#[derive(Debug, Clone)]
pub struct Report {
    pub root: OperationReport,
    /// Every value captured by a step, by name.
    pub captures: BTreeMap<String, String>,
    /// Every file an upload step wrote, in the order they finished.
    pub uploads: Vec<Uploaded>,
}

/// A file an upload step wrote: where, and the SHA-256 of the bytes after placeholders were
/// filled (what is on the server now).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    pub server: String,
    pub path: String,
    pub mode: u32,
    pub sha256: String,
}

impl Report {
    pub fn status(&self) -> Status {
        self.root.status
    }

    /// Everything ran and succeeded.
    pub fn converged(&self) -> bool {
        self.root.status == Status::Succeeded
    }

    pub fn operation(&self, id: &str) -> Option<&OperationReport> {
        self.root.walk().into_iter().find(|o| o.id == id)
    }

    /// Operations whose own step failed, with the cause: the first thing to tell a user.
    pub fn failures(&self) -> Vec<(&str, &str)> {
        self.root
            .walk()
            .into_iter()
            .filter(|o| {
                o.status == Status::Failed && o.steps.iter().any(|s| s.status == Status::Failed)
            })
            .map(|o| (o.id.as_str(), o.error.as_deref().unwrap_or("failed")))
            .collect()
    }
}

/// Runs operation trees. Cheap to share; one `execute` call per plan.
pub struct Executor {
    transport: Arc<dyn Transport>,
    observer: Arc<dyn Observer>,
    redactor: Redactor,
    options: ExecuteOptions,
    values: Arc<dyn Values>,
    digests: Option<Arc<dyn DigestResolver>>,
}

impl Executor {
    pub fn new(
        transport: Arc<dyn Transport>,
        observer: Arc<dyn Observer>,
        redactor: Redactor,
        options: ExecuteOptions,
    ) -> Self {
        Self {
            transport,
            observer,
            redactor,
            options,
            values: Arc::new(NoValues),
            digests: None,
        }
    }

    /// Where `{{secret:…}}` and `{{generated:…}}` values come from.
    pub fn with_values(mut self, values: Arc<dyn Values>) -> Self {
        self.values = values;
        self
    }

    /// What answers `ResolveDigest` steps.
    pub fn with_digest_resolver(mut self, resolver: Arc<dyn DigestResolver>) -> Self {
        self.digests = Some(resolver);
        self
    }

    /// Run the tree rooted at `root` until it converged, failed, or `shutdown` stopped it.
    pub async fn execute(&self, root: &Operation, shutdown: &Shutdown) -> Report {
        self.execute_with_captures(root, shutdown, BTreeMap::new())
            .await
    }

    /// Like `execute`, with captures known beforehand (e.g. a digest recorded by an earlier run).
    pub async fn execute_with_captures(
        &self,
        root: &Operation,
        shutdown: &Shutdown,
        captures: BTreeMap<String, String>,
    ) -> Report {
        self.observer.on_event(&Event::ExecutionStarted { root });
        let run = Run {
            exec: self,
            shutdown: shutdown.clone(),
            halted: AtomicBool::new(false),
            captures: Mutex::new(captures),
            uploads: Mutex::new(Vec::new()),
        };
        let report = run.operation(root).await;
        self.observer.on_event(&Event::ExecutionFinished {
            status: report.status,
        });
        Report {
            root: report,
            captures: run.captures.into_inner().unwrap(),
            uploads: run.uploads.into_inner().unwrap(),
        }
    }
}

struct Run<'e> {
    exec: &'e Executor,
    shutdown: Shutdown,
    /// Set by the first failure: nothing new starts afterwards.
    halted: AtomicBool,
    captures: Mutex<BTreeMap<String, String>>,
    uploads: Mutex<Vec<Uploaded>>,
}

enum Attempt {
    Exited(Option<i32>),
    Error { message: String, permanent: bool },
    Interrupted,
}

impl<'e> Run<'e> {
    fn emit(&self, event: Event<'_>) {
        self.exec.observer.on_event(&event);
    }

    fn operation<'a>(&'a self, op: &'a Operation) -> BoxFuture<'a, OperationReport> {
        Box::pin(async move {
            if self.halted.load(Ordering::SeqCst) || self.shutdown.is_triggered() {
                return self.skip(op, Status::Cancelled);
            }
            self.emit(Event::OperationStarted { op });
            let started = Instant::now();
            let mut status = Status::Succeeded;
            let mut error = None;
            let mut steps = Vec::with_capacity(op.steps.len());
            for (index, step) in op.steps.iter().enumerate() {
                if status == Status::Succeeded && self.shutdown.is_triggered() {
                    status = Status::Interrupted;
                    error = Some("stopped by shutdown before this step".to_string());
                }
                if status != Status::Succeeded {
                    steps.push(self.skip_step(op, index, step, Status::Cancelled));
                    continue;
                }
                let report = self.step(op, index, step).await;
                match report.status {
                    Status::Succeeded => {}
                    Status::Interrupted => {
                        status = Status::Interrupted;
                        error = Some(format!("step `{}` interrupted by shutdown", step.name));
                    }
                    _ => {
                        status = Status::Failed;
                        error = Some(format!(
                            "step `{}`: {}",
                            step.name,
                            report.error.as_deref().unwrap_or("failed")
                        ));
                        self.halted.store(true, Ordering::SeqCst);
                    }
                }
                steps.push(report);
            }

            let children = if status == Status::Succeeded {
                match op.children_mode {
                    Children::Sequential => {
                        let mut out = Vec::with_capacity(op.children.len());
                        for child in &op.children {
                            out.push(self.operation(child).await);
                        }
                        out
                    }
                    Children::ParallelByServer => self.parallel(&op.children).await,
                }
            } else {
                op.children
                    .iter()
                    .map(|c| self.skip(c, Status::Cancelled))
                    .collect()
            };

            if status == Status::Succeeded {
                let worst = [Status::Failed, Status::Interrupted, Status::Cancelled]
                    .into_iter()
                    .find(|s| children.iter().any(|c| c.status == *s));
                if let Some(worst) = worst {
                    status = worst;
                    let child = children.iter().find(|c| c.status == worst).unwrap();
                    error = Some(format!("{} {}", child.id, worst));
                }
            }
            self.emit(Event::OperationFinished {
                op,
                status,
                error: error.as_deref(),
                duration: started.elapsed(),
            });
            OperationReport {
                id: op.id.clone(),
                title: op.title.clone(),
                status,
                error,
                steps,
                children,
            }
        })
    }

    /// One lane per server (in order of first appearance), up to `width` lanes at once.
    async fn parallel(&self, children: &[Operation]) -> Vec<OperationReport> {
        let mut lanes: Vec<(Option<&str>, Vec<usize>)> = Vec::new();
        for (i, c) in children.iter().enumerate() {
            match lanes.iter_mut().find(|(s, _)| *s == c.server.as_deref()) {
                Some((_, lane)) => lane.push(i),
                None => lanes.push((c.server.as_deref(), vec![i])),
            }
        }
        let lanes: Vec<BoxFuture<'_, Vec<(usize, OperationReport)>>> = lanes
            .into_iter()
            .map(
                |(_, lane)| -> BoxFuture<'_, Vec<(usize, OperationReport)>> {
                    Box::pin(async move {
                        let mut out = Vec::with_capacity(lane.len());
                        for i in lane {
                            out.push((i, self.operation(&children[i]).await));
                        }
                        out
                    })
                },
            )
            .collect();
        let mut running =
            futures::stream::iter(lanes).buffer_unordered(self.exec.options.width.max(1));
        let mut done = Vec::with_capacity(children.len());
        while let Some(lane) = running.next().await {
            done.extend(lane);
        }
        done.sort_by_key(|(i, _)| *i);
        done.into_iter().map(|(_, r)| r).collect()
    }

    /// Report an operation and its subtree as not run.
    fn skip(&self, op: &Operation, status: Status) -> OperationReport {
        let steps = op
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| self.skip_step(op, i, s, status))
            .collect();
        let children = op.children.iter().map(|c| self.skip(c, status)).collect();
        self.emit(Event::OperationFinished {
            op,
            status,
            error: None,
            duration: Duration::ZERO,
        });
        OperationReport {
            id: op.id.clone(),
            title: op.title.clone(),
            status,
            error: None,
            steps,
            children,
        }
    }

    fn skip_step(&self, op: &Operation, index: usize, step: &Step, status: Status) -> StepReport {
        self.emit(Event::StepSkipped {
            op,
            index,
            step,
            status,
        });
        StepReport {
            name: step.name.clone(),
            status,
            attempts: 0,
            exit_code: None,
            error: None,
        }
    }

    async fn step(&self, op: &Operation, index: usize, step: &Step) -> StepReport {
        let options = &self.exec.options;
        let attempts = if step.idempotent {
            1 + options.retries
        } else {
            1
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.emit(Event::StepStarted {
                op,
                index,
                step,
                attempt,
            });
            let started = Instant::now();
            let observer = &self.exec.observer;
            let mut out = Output::new(self.exec.redactor.clone(), |stream, text| {
                observer.on_event(&Event::StepOutput {
                    op,
                    index,
                    stream,
                    text,
                })
            });
            let result = self.attempt(step, &mut out).await;
            out.finish();
            let (status, exit_code, error, permanent) = match result {
                Attempt::Exited(Some(0)) => match self.capture(step, &out) {
                    Ok(()) => (Status::Succeeded, Some(0), None, false),
                    Err(e) => (Status::Failed, Some(0), Some(e), true),
                },
                Attempt::Exited(code) => {
                    let mut message = match code {
                        Some(c) => format!("exit status {c}"),
                        None => "killed by a signal".to_string(),
                    };
                    if let Some(line) = &out.last_stderr_line {
                        message.push_str(": ");
                        message.push_str(line);
                    }
                    (Status::Failed, code, Some(message), false)
                }
                Attempt::Error { message, permanent } => {
                    (Status::Failed, None, Some(message), permanent)
                }
                Attempt::Interrupted => (
                    Status::Interrupted,
                    None,
                    Some(format!(
                        "still running {:?} after the shutdown request",
                        options.grace
                    )),
                    true,
                ),
            };
            let retry = status == Status::Failed
                && !permanent
                && attempt < attempts
                && !self.shutdown.is_triggered();
            let retry_in = retry.then(|| options.backoff * 2u32.saturating_pow(attempt - 1));
            let mut error = error;
            if status == Status::Failed
                && retry_in.is_none()
                && let Some(script) = &step.on_failure
            {
                // Nothing new starts elsewhere while the clean-up runs.
                self.halted.store(true, Ordering::SeqCst);
                let outcome = self.clean_up(step, script, &mut out).await;
                error = Some(format!(
                    "{}; {outcome}",
                    error.as_deref().unwrap_or("failed")
                ));
            }
            self.emit(Event::StepFinished {
                op,
                index,
                step,
                attempt,
                status,
                exit_code,
                error: error.as_deref(),
                retry_in,
                duration: started.elapsed(),
                output: &out.combined,
            });
            let Some(wait) = retry_in else {
                return StepReport {
                    name: step.name.clone(),
                    status,
                    attempts: attempt,
                    exit_code,
                    error,
                };
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.shutdown.triggered() => {
                    return StepReport {
                        name: step.name.clone(),
                        status: Status::Interrupted,
                        attempts: attempt,
                        exit_code,
                        error: Some(format!("shutdown while waiting to retry after: {}", error.unwrap_or_default())),
                    };
                }
            }
        }
    }

    /// Run a failed step's `on_failure` script on its target (output appended to the step's,
    /// after an `on failure:` line); what happened, for the step's error.
    async fn clean_up(&self, step: &Step, script: &str, out: &mut Output<'_>) -> String {
        out.push(Stream::Stderr, b"on failure:\n");
        out.finish();
        out.last_stderr_line = None;
        let printed = out.stdout.total_bytes;
        let run = self
            .exec
            .transport
            .run(&step.target, script, None, CLEAN_UP_TIMEOUT, out);
        let result = tokio::time::timeout(CLEAN_UP_TIMEOUT, run).await;
        out.finish();
        let said = |out: &Output<'_>| {
            out.last_stderr_line
                .as_ref()
                .map(|l| format!(": {l}"))
                .unwrap_or_default()
        };
        match result {
            Ok(Ok(Some(0))) => match out
                .capture_value()
                .filter(|_| out.stdout.total_bytes > printed)
            {
                Some(line) => format!("on failure: {line}"),
                None => "on failure: clean-up done".to_string(),
            },
            Ok(Ok(Some(code))) => {
                format!(
                    "on failure: the clean-up failed (exit status {code}{})",
                    said(out)
                )
            }
            Ok(Ok(None)) => "on failure: the clean-up was killed by a signal".to_string(),
            Ok(Err(e)) => format!("on failure: the clean-up failed ({e})"),
            Err(_) => format!(
                "on failure: the clean-up timed out after {}",
                human(CLEAN_UP_TIMEOUT)
            ),
        }
    }

    fn capture(&self, step: &Step, out: &Output<'_>) -> Result<(), String> {
        let Some(name) = &step.capture else {
            return Ok(());
        };
        let value = out.capture_value().ok_or_else(|| {
            format!("printed nothing on stdout, but its output was to be captured as `{name}`")
        })?;
        if name.starts_with("digest:") && !is_digest(&value) {
            return Err(format!(
                "captured `{name}` is not a sha256:<64 hex> digest: {value:?}"
            ));
        }
        self.captures.lock().unwrap().insert(name.clone(), value);
        Ok(())
    }

    async fn attempt(&self, step: &Step, out: &mut Output<'_>) -> Attempt {
        let captures = self.captures.lock().unwrap().clone();
        let transport = &self.exec.transport;
        let values = &*self.exec.values;
        let permanent = |e: super::placeholders::FillError| (e.to_string(), true);
        // Secret and generated values filled into a payload join the redaction set (shared with
        // the caller, so they are hidden from status files and logs too).
        let remember = |secrets: Vec<String>| {
            for s in secrets {
                self.exec.redactor.add(&s);
            }
        };
        let work = async {
            match &step.action {
                StepAction::Run { script, stdin } => {
                    let script = fill_script(script, &captures).map_err(permanent)?;
                    let stdin = match stdin {
                        Some(p) => {
                            let filled =
                                fill_payload(&p.bytes, &captures, values).map_err(permanent)?;
                            remember(filled.secrets);
                            Some(filled.value)
                        }
                        None => None,
                    };
                    transport
                        .run(&step.target, &script, stdin.as_deref(), step.timeout, out)
                        .await
                        .map_err(|e| (e.to_string(), e.is_permanent()))
                }
                StepAction::Upload {
                    path,
                    mode,
                    contents,
                } => {
                    let filled =
                        fill_payload(&contents.bytes, &captures, values).map_err(permanent)?;
                    remember(filled.secrets);
                    let code = transport
                        .upload(&step.target, path, &filled.value, *mode, step.timeout, out)
                        .await
                        .map_err(|e| (e.to_string(), e.is_permanent()))?;
                    if let (Some(0), Target::Server(server)) = (code, &step.target) {
                        use sha2::Digest;
                        self.uploads.lock().unwrap().push(Uploaded {
                            server: server.clone(),
                            path: path.clone(),
                            mode: *mode,
                            sha256: hex::encode(sha2::Sha256::digest(&filled.value)),
                        });
                    }
                    Ok(code)
                }
                StepAction::ResolveDigest { image, registry } => {
                    let Some(resolver) = &self.exec.digests else {
                        return Err((
                            format!(
                                "no registry client was given to this execution to resolve {image}"
                            ),
                            true,
                        ));
                    };
                    let digest = resolver
                        .resolve(image, registry.as_deref())
                        .await
                        .map_err(|e| (e, false))?;
                    out.push(Stream::Stdout, format!("{digest}\n").as_bytes());
                    out.finish();
                    Ok(Some(0))
                }
            }
        };
        let bounded = tokio::time::timeout(step.timeout, work);
        tokio::pin!(bounded);
        let finished = tokio::select! {
            r = &mut bounded => Some(r),
            _ = self.shutdown.triggered() => {
                tokio::time::timeout(self.exec.options.grace, &mut bounded).await.ok()
            }
        };
        match finished {
            None => Attempt::Interrupted,
            Some(Err(_elapsed)) => Attempt::Error {
                message: format!("timed out after {}", human(step.timeout)),
                permanent: false,
            },
            Some(Ok(Err((message, permanent)))) => Attempt::Error { message, permanent },
            Some(Ok(Ok(code))) => Attempt::Exited(code),
        }
    }
}

/// Bound of a failed step's `on_failure` clean-up.
const CLEAN_UP_TIMEOUT: Duration = Duration::from_secs(120);

/// `90s`, `1.5s`, `250ms`.
pub fn human(d: Duration) -> String {
    if d.as_millis() < 1000 {
        format!("{}ms", d.as_millis())
    } else if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

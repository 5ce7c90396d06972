//! Running a whole `plan::Plan`: shared services first, then each environment, each operation
//! tree recorded as its own execution in the state, and what succeeded recorded as applied.
//! `keystone apply` and the daemon are thin layers over `run_plan`.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::model::Model;
use crate::plan::{EnvironmentStatus, Operation, Plan};
use crate::state::{ExecutionId, State, StateError};

use super::events::{Observer, Observers, Status};
use super::orchestrator::{ExecuteOptions, Executor, Report, Shutdown};
use super::output::Redactor;
use super::placeholders::Values;
use super::registry::DigestResolver;
use super::transport::Transport;

/// What `run_plan` needs besides the plan.
pub struct PlanRun {
    pub transport: Arc<dyn Transport>,
    pub state: Arc<State>,
    /// Prints or forwards events; the state's recorder is added for each execution.
    pub observer: Arc<dyn Observer>,
    pub redactor: Redactor,
    pub options: ExecuteOptions,
    pub values: Option<Arc<dyn Values>>,
    pub digests: Option<Arc<dyn DigestResolver>>,
}

/// What happened to one environment or shared service of the plan.
#[derive(Debug)]
pub enum Outcome {
    /// Nothing to do (unchanged).
    Unchanged,
    /// Blocked by the plan; nothing ran.
    Blocked,
    /// Not run because something it depends on failed, or a shutdown came first.
    Skipped { reason: String },
    /// Ran; the report says how it ended.
    Ran {
        execution: ExecutionId,
        report: Report,
    },
}

impl Outcome {
    /// True when this part is where the config wants it.
    pub fn converged(&self) -> bool {
        match self {
            Outcome::Unchanged => true,
            Outcome::Ran { report, .. } => report.converged(),
            Outcome::Blocked | Outcome::Skipped { .. } => false,
        }
    }
}

/// The outcome of every part of a plan, in the order they ran.
#[derive(Debug, Default)]
pub struct PlanOutcome {
    /// `service:<name>` or `app/env`, with what happened.
    pub parts: Vec<(String, Outcome)>,
}

impl PlanOutcome {
    /// Everything converged: the exit status 0 of `keystone apply`.
    pub fn converged(&self) -> bool {
        self.parts.iter().all(|(_, o)| o.converged())
    }

    pub fn get(&self, key: &str) -> Option<&Outcome> {
        self.parts.iter().find(|(k, _)| k == key).map(|(_, o)| o)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunPlanError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(
        "{key}: the recorded applied state does not parse after filling placeholders: {detail}"
    )]
    Applied { key: String, detail: String },
}

/// Run every unblocked, changed part of `plan`. Shared services run first; an environment
/// attached to a shared service whose operation failed is skipped. Environments run one after
/// another, each recorded as an execution; a successful one records its `applied_after` (with
/// the digests its steps captured filled in). Stops starting new parts once `shutdown` fired.
pub async fn run_plan(
    plan: &Plan,
    model: Option<&Model>,
    run: &PlanRun,
    shutdown: &Shutdown,
) -> Result<PlanOutcome, RunPlanError> {
    let mut outcome = PlanOutcome::default();
    let mut failed_services: Vec<String> = Vec::new();
    for s in &plan.services {
        let key = format!("service:{}", s.service);
        let result = match (&s.status, &s.operation) {
            (EnvironmentStatus::Blocked, _) => Outcome::Blocked,
            (_, None) => Outcome::Unchanged,
            (status, Some(op)) => {
                let ran = execute_part(run, shutdown, None, &plan.config_commit, op).await?;
                if let Outcome::Ran { report, .. } = &ran {
                    if report.converged() {
                        match (status, &s.applied_after) {
                            (EnvironmentStatus::Removed, _) => {}
                            (_, Some(after)) => {
                                let after = fill_applied(&key, after, &report.captures)?;
                                run.state.record_shared_service(&s.service, &after)?;
                            }
                            _ => {}
                        }
                    } else {
                        failed_services.push(s.service.clone());
                    }
                } else {
                    failed_services.push(s.service.clone());
                }
                ran
            }
        };
        outcome.parts.push((key, result));
    }
    for e in &plan.environments {
        let key = e.key();
        let depends_on_failed = model
            .and_then(|m| m.applications.get(&e.app))
            .and_then(|a| a.environments.get(&e.env))
            .and_then(|env| {
                env.attachments
                    .iter()
                    .find(|a| failed_services.contains(&a.service))
                    .map(|a| a.service.clone())
            });
        let result = match (&e.status, &e.operation) {
            (EnvironmentStatus::Blocked, _) => Outcome::Blocked,
            (_, None) => Outcome::Unchanged,
            (_, Some(_)) if depends_on_failed.is_some() => Outcome::Skipped {
                reason: format!(
                    "shared service {} failed to deploy",
                    depends_on_failed.unwrap()
                ),
            },
            (status, Some(op)) => {
                let ran = execute_part(run, shutdown, Some(&key), &plan.config_commit, op).await?;
                if let Outcome::Ran { report, .. } = &ran
                    && report.converged()
                {
                    match (status, &e.applied_after) {
                        (EnvironmentStatus::Removed, _) => run.state.forget_environment(&key)?,
                        (_, Some(after)) => {
                            let after = fill_applied(&key, after, &report.captures)?;
                            run.state.record_environment(&key, &after)?;
                        }
                        _ => {}
                    }
                }
                ran
            }
        };
        outcome.parts.push((key, result));
    }
    Ok(outcome)
}

async fn execute_part(
    run: &PlanRun,
    shutdown: &Shutdown,
    environment: Option<&str>,
    commit: &str,
    op: &Operation,
) -> Result<Outcome, RunPlanError> {
    if shutdown.is_triggered() {
        return Ok(Outcome::Skipped {
            reason: "shutdown requested".into(),
        });
    }
    let started = std::time::Instant::now();
    let execution = run.state.begin_execution(environment, Some(commit), op)?;
    let recorder = Arc::new(run.state.recorder(execution));
    tracing::debug!(
        operation = %op.id,
        ms = started.elapsed().as_millis() as u64,
        "execution recorded in the state"
    );
    let observers = Observers(vec![recorder.clone(), run.observer.clone()]);
    let mut exec = Executor::new(
        run.transport.clone(),
        Arc::new(observers),
        run.redactor.clone(),
        run.options.clone(),
    );
    if let Some(v) = &run.values {
        exec = exec.with_values(v.clone());
    }
    if let Some(d) = &run.digests {
        exec = exec.with_digest_resolver(d.clone());
    }
    let report = exec.execute(op, shutdown).await;
    recorder.finish()?;
    // What is on the servers now, whether or not the rest of the execution succeeded.
    for u in &report.uploads {
        run.state
            .record_written(&u.server, &u.path, &u.sha256, u.mode)?;
    }
    Ok(Outcome::Ran { execution, report })
}

/// Replace `{{digest:…}}` placeholders of an applied record by the captured values.
fn fill_applied<T: serde::Serialize + serde::de::DeserializeOwned>(
    key: &str,
    applied: &T,
    captures: &BTreeMap<String, String>,
) -> Result<T, RunPlanError> {
    let mut json = serde_json::to_string(applied).expect("applied state serializes");
    for (name, value) in captures {
        if name.starts_with("digest:") {
            json = json.replace(&format!("{{{{{name}}}}}"), value);
        }
    }
    serde_json::from_str(&json).map_err(|e| RunPlanError::Applied {
        key: key.to_string(),
        detail: e.to_string(),
    })
}

/// The status line of a part, for printing: `succeeded`, `failed: <cause>`, …
pub fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Unchanged => "unchanged".into(),
        Outcome::Blocked => "blocked (see the plan's blockers)".into(),
        Outcome::Skipped { reason } => format!("skipped: {reason}"),
        Outcome::Ran { report, .. } => match report.status() {
            Status::Failed => {
                let causes: Vec<String> = report
                    .failures()
                    .into_iter()
                    .map(|(id, e)| format!("{id}: {e}"))
                    .collect();
                format!("failed: {}", causes.join("; "))
            }
            s => s.to_string(),
        },
    }
}

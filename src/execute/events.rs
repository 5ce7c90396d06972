//! What the orchestrator reports while it runs: the CLI prints these, the state records them, the
//! daemon forwards them.

use std::time::Duration;

use crate::plan::{Operation, Step};

use super::output::Stream;

/// How an operation or a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Running,
    Succeeded,
    Failed,
    /// Never started (or stopped before its next step) because something else failed.
    Cancelled,
    /// Was running when a shutdown came (or when the process died).
    Interrupted,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Interrupted => "interrupted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "running" => Self::Running,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            "interrupted" => Self::Interrupted,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `pad`, so `{:>9}` aligns the step lines of `keystone apply`.
        f.pad(self.as_str())
    }
}

/// One thing that happened. Step events name the operation by its plan id and the step by its
/// index within that operation.
#[derive(Debug, Clone)]
pub enum Event<'a> {
    /// The whole tree, before anything runs.
    ExecutionStarted {
        root: &'a Operation,
    },
    OperationStarted {
        op: &'a Operation,
    },
    /// Also sent, without a start, for operations cancelled before they started.
    OperationFinished {
        op: &'a Operation,
        status: Status,
        error: Option<&'a str>,
        duration: Duration,
    },
    StepStarted {
        op: &'a Operation,
        index: usize,
        step: &'a Step,
        attempt: u32,
    },
    /// Redacted text, whole lines where the command printed whole lines.
    StepOutput {
        op: &'a Operation,
        index: usize,
        stream: Stream,
        text: &'a str,
    },
    StepFinished {
        op: &'a Operation,
        index: usize,
        step: &'a Step,
        attempt: u32,
        status: Status,
        exit_code: Option<i32>,
        error: Option<&'a str>,
        /// Set when this attempt failed and another will follow.
        retry_in: Option<Duration>,
        duration: Duration,
        /// The redacted output of this attempt (head and tail).
        output: &'a super::output::CappedText,
    },
    /// Steps that never ran, reported once with their final status (cancelled or interrupted).
    StepSkipped {
        op: &'a Operation,
        index: usize,
        step: &'a Step,
        status: Status,
    },
    ExecutionFinished {
        status: Status,
    },
}

/// Receives events. Called from the executor's tasks: keep it quick and never block for long.
pub trait Observer: Send + Sync {
    fn on_event(&self, event: &Event<'_>);
}

/// Ignores everything.
pub struct NoObserver;

impl Observer for NoObserver {
    fn on_event(&self, _: &Event<'_>) {}
}

/// Sends each event to several observers in order.
pub struct Observers(pub Vec<std::sync::Arc<dyn Observer>>);

impl Observer for Observers {
    fn on_event(&self, event: &Event<'_>) {
        for o in &self.0 {
            o.on_event(event);
        }
    }
}

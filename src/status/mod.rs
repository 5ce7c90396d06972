//! The status branch: what Keystone tells operators, as files in git (SPEC.md §7, docs/status-branch.md).
//!
//! `model` is the data (`StatusSnapshot`), `render` turns it into files with no I/O, `writer`
//! commits those files to the branch without a checkout and pushes them.
//!
//! Architecture invariant: nothing reaches a blob without passing through the redactor given to
//! `StatusWriter::write`.

pub mod model;
pub mod render;
pub mod writer;

pub use model::{
    Attempt, CommitMark, EnvironmentStatus, Health, NodeStatus, OperationNode, OperationRecord,
    OperationSummary, Outcome, ReplicaStatus, ServerStatus, ServiceStatus, SharedReplicaStatus,
    StatusSnapshot, StepRecord, SyncState, Timestamp, Transition,
};
pub use render::{StatusFiles, commit_message, deploy_subject, render};
pub use writer::{Redact, StatusError, StatusWriter, WriteOutcome};

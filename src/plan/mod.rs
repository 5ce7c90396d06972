//! The planner: `(desired model, applied state) -> operation tree`, and plan diffs.
//!
//! Architecture invariant: nothing in `plan` does I/O, reads a clock or draws randomness; those
//! are passed in.

pub mod applied;
pub mod ops;

pub use applied::{
    Applied, AppliedAppService, AppliedEnvironment, AppliedImage, AppliedReplica,
    AppliedSharedReplica, AppliedSharedService, AppliedSlice, AppliedVariable, ReplicaRef,
    VariableSource, plain_fingerprint,
};
pub use ops::{Children, Operation, OperationKind, Payload, Placeholder, Step, StepAction, Target};

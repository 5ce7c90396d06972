//! The planner: `(desired model, applied state) -> operation tree`, and plan diffs.
//!
//! Architecture invariant: nothing in `plan` does I/O, reads a clock or draws randomness; those
//! are passed in.

pub mod ops;

pub use ops::{Children, Operation, OperationKind, Payload, Placeholder, Step, StepAction, Target};

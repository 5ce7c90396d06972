//! Execution: the orchestrator that walks an operation tree (`plan::ops`) and the transports that
//! reach the machines (ssh, local).
//!
//! Architecture invariant: only this module talks to hosts. It knows nothing about how a plan
//! was made; it runs exactly the steps it is given, in the order the tree says.

pub mod apply;
pub mod events;
pub mod local;
pub mod orchestrator;
pub mod output;
pub mod placeholders;
pub mod progress;
pub mod registry;
pub mod ssh;
mod ssh_shell;
mod stdio;
pub mod transport;

pub use apply::{Outcome, PlanOutcome, PlanRun, RunPlanError, describe, run_plan};
pub use events::{Event, NoObserver, Observer, Observers, Status};
pub use local::LocalTransport;
pub use orchestrator::{
    ExecuteOptions, Executor, OperationReport, Report, Shutdown, StepReport, Uploaded, human,
};
pub use output::{CappedText, Output, Redactor, Stream};
pub use placeholders::{NoValues, Values};
pub use progress::Progress;
pub use registry::{DigestResolver, HttpDigestResolver, RegistryAccess, split_image};
pub use ssh::{SshSettings, SshTransport, Transports};
pub use transport::{BoxFuture, Transport, TransportError};

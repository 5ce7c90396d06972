//! Health and drift between deploys: what runs on the servers compared with the last applied
//! state, rolled up replica → service → environment, for the status branch (issue 10,
//! docs/status-branch.md).
//!
//! - `probe`: the one shell command a probe runs per server and the parser of its output (pure);
//! - `assess`: probe facts against the applied state (`Expected`) → per replica health, sync
//!   and `Drift` (missing, stopped, another digest, a changed file, an orphan container) (pure);
//! - `status`: an `Assessment` applied to the `StatusSnapshot`, returning what changed (pure);
//! - `prober`: the I/O — one bounded command per server over an `execute::Transport`, all
//!   servers at once.
//!
//! Architecture invariant: only `prober` does I/O, and only through `execute`'s transports; the
//! rest is plain functions of their inputs, unit-tested without hosts.

pub mod assess;
pub mod probe;
pub mod prober;
pub mod status;

use std::collections::BTreeSet;
use std::time::Duration;

pub use assess::{
    Assessment, Drift, Expected, ExpectedReplica, Owner, ReplicaAssessment, ServerAssessment,
    ServerProbe, WrittenFile, WrittenFiles, assess,
};
pub use prober::{Prober, Round};
pub use status::{Changes, apply, carry_over};

/// One probe round as a `Deployer` reports it to the daemon loop.
#[derive(Debug, Clone)]
pub struct ProbeReport {
    /// `health.interval` of the config commit probed.
    pub interval: Duration,
    /// Environments with `self_heal: true`.
    pub self_heal: BTreeSet<String>,
    pub assessment: Assessment,
    /// Wall time of the round (all servers in parallel).
    pub took: Duration,
}

/// How long one server may take to answer a probe: most of an interval (so a dead host is
/// reported within two intervals), at least one second, at most ten.
pub fn server_timeout(interval: Duration) -> Duration {
    (interval.mul_f64(0.8)).clamp(Duration::from_secs(1), Duration::from_secs(10))
}

/// The delay before the next round: `interval` ± 10 %, so many daemons do not probe in step.
pub fn jittered(interval: Duration) -> Duration {
    let f = 0.9 + rand::random::<f64>() * 0.2;
    interval.mul_f64(f)
}

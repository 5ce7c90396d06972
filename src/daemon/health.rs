//! The daemon's probe loop: when to probe, applying a round to the snapshot the loop owns, and
//! when to self-heal. The loop (`runtime`) calls `start` on its probe timer and `finish` with
//! each round; the probing itself is `Deployer::probe` on its own task.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::metrics::Metrics;
use super::runtime::Deployer;
use crate::health::{self, ProbeReport};
use crate::status::{StatusSnapshot, Timestamp};

/// First round soon after startup (the loop has fetched and resumed by then).
pub const FIRST_ROUND: Duration = Duration::from_secs(2);
/// When the deployer cannot probe yet (no commit loaded), ask again after this.
const RETRY: Duration = Duration::from_secs(5);
/// While a round is still running, look again this soon.
const BUSY_RETRY: Duration = Duration::from_millis(200);
/// When the deployer does not probe at all.
const NEVER: Duration = Duration::from_secs(24 * 3600);

/// A round that came back, with what each environment's last operation was when it started (a
/// deploy in between makes its results stale for that environment).
pub struct ProbeDone {
    report: Option<ProbeReport>,
    operations_at_start: BTreeMap<String, Option<String>>,
}

/// Self-heal attempts of one environment.
#[derive(Debug, Clone, Copy)]
struct Heals {
    last: tokio::time::Instant,
    /// Consecutive heals without the environment becoming healthy and synced in between.
    streak: u32,
}

#[derive(Default)]
pub struct HealthLoop {
    in_flight: bool,
    disabled: bool,
    interval: Option<Duration>,
    heals: BTreeMap<String, Heals>,
}

/// What the loop should do after a round.
#[derive(Debug, Default)]
pub struct Finished {
    /// Commit the status branch with this subject and these lines.
    pub write: Option<(String, Vec<String>)>,
    /// Queue a heal of these environments.
    pub heal: Vec<String>,
}

impl HealthLoop {
    /// Start a round unless one is running; the delay until the timer should fire again.
    pub fn start(
        &mut self,
        deployer: Arc<dyn Deployer>,
        repo: PathBuf,
        commit: Option<String>,
        snapshot: &StatusSnapshot,
        tx: &mpsc::UnboundedSender<ProbeDone>,
    ) -> Duration {
        if self.disabled {
            return NEVER;
        }
        let Some(commit) = commit else {
            return RETRY;
        };
        if self.in_flight {
            // Rounds slower than the interval: the next starts soon after this one ends.
            return BUSY_RETRY;
        }
        let next = health::jittered(self.interval.unwrap_or(FIRST_ROUND));
        self.in_flight = true;
        let operations_at_start = operations(snapshot);
        let tx = tx.clone();
        tokio::spawn(async move {
            let report = deployer.probe(&repo, &commit).await;
            let _ = tx.send(ProbeDone {
                report,
                operations_at_start,
            });
        });
        next
    }

    /// Apply a round: the snapshot is updated; what changed (if anything) is to be written, and
    /// environments with `self_heal` whose replicas drifted are to be healed (rate-limited).
    pub fn finish(
        &mut self,
        done: ProbeDone,
        snapshot: &mut StatusSnapshot,
        running: &BTreeSet<String>,
        metrics: &Metrics,
        now: Timestamp,
    ) -> Finished {
        self.in_flight = false;
        let Some(report) = done.report else {
            self.disabled = true;
            tracing::info!("the deployer does not probe: no health rounds");
            return Finished::default();
        };
        self.interval = Some(report.interval);
        let current = operations(snapshot);
        let mut busy: BTreeSet<String> = running.clone();
        for (env, op) in &current {
            if done.operations_at_start.get(env) != Some(op) {
                busy.insert(env.clone());
            }
        }
        let changes = health::apply(snapshot, &report.assessment, now, &busy);
        metrics.probe_round(report.took.as_secs_f64(), changes.lines.len() as u64);
        for (name, s) in &snapshot.servers {
            if let Some(r) = s.reachable {
                metrics.server_reachable(name, r);
            }
        }
        for (key, env) in &snapshot.environments {
            if !busy.contains(key) {
                metrics.environment_state(key, env.health, env.sync);
            }
        }
        let mut out = Finished::default();
        if !changes.is_empty() {
            tracing::info!(changes = ?changes.lines, "health changed");
            out.write = Some((changes.subject(), changes.lines.clone()));
        }
        let tokio_now = tokio::time::Instant::now();
        for (key, env) in &snapshot.environments {
            if busy.contains(key) {
                continue;
            }
            let drifted = report.assessment.drifted(key);
            if drifted.is_empty() {
                if env.sync == crate::status::SyncState::Synced {
                    self.heals.remove(key);
                }
                continue;
            }
            if !report.self_heal.contains(key) {
                continue;
            }
            let applied_is_desired = env.last_applied.as_ref().map(|a| &a.commit)
                == env.desired_commit.as_ref()
                && env.problems.is_empty();
            if !applied_is_desired {
                continue;
            }
            let wait = heal_backoff(report.interval, self.heals.get(key).map_or(0, |h| h.streak));
            if self
                .heals
                .get(key)
                .is_some_and(|h| tokio_now.duration_since(h.last) < wait)
            {
                continue;
            }
            let streak = self.heals.get(key).map_or(0, |h| h.streak) + 1;
            self.heals.insert(
                key.clone(),
                Heals {
                    last: tokio_now,
                    streak,
                },
            );
            tracing::info!(environment = %key, ?drifted, streak, "self-heal");
            out.heal.push(key.clone());
        }
        out
    }
}

/// How long after a heal of an environment the next may start: none before the first, then
/// 10 intervals (at least a minute), doubling with each heal that did not make it healthy and
/// synced, at most an hour.
fn heal_backoff(interval: Duration, streak: u32) -> Duration {
    if streak == 0 {
        return Duration::ZERO;
    }
    let base = (interval * 10).max(Duration::from_secs(60));
    base.saturating_mul(1 << (streak - 1).min(6))
        .min(Duration::from_secs(3600))
}

fn operations(snapshot: &StatusSnapshot) -> BTreeMap<String, Option<String>> {
    snapshot
        .environments
        .iter()
        .map(|(k, e)| (k.clone(), e.last_operation.as_ref().map(|o| o.id.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heals_back_off() {
        let i = Duration::from_secs(2);
        assert_eq!(heal_backoff(i, 0), Duration::ZERO);
        assert_eq!(heal_backoff(i, 1), Duration::from_secs(60));
        assert_eq!(heal_backoff(i, 2), Duration::from_secs(120));
        assert_eq!(
            heal_backoff(Duration::from_secs(30), 1),
            Duration::from_secs(300)
        );
        assert_eq!(heal_backoff(i, 30), Duration::from_secs(3600));
    }
}

//! Which environment deploys which commit next: one operation per environment at a time, newer
//! commits coalesce with queued ones, and a commit whose deploy failed is not retried in a loop
//! (a new commit or an explicit retry is needed). Pure bookkeeping, no I/O.

use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    /// Bring the environment to the commit.
    Deploy,
    /// Deploy again although this commit failed before.
    Retry,
    /// Run the environment's migrations now.
    Migrate,
    /// Re-apply the drifted replicas of the applied commit (self-heal).
    Heal,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deploy => "deploy",
            Self::Retry => "retry",
            Self::Migrate => "migrate",
            Self::Heal => "heal",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// `app/env`.
    pub environment: String,
    pub commit: String,
    pub kind: JobKind,
}

/// What `offer` did with a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offer {
    Queued,
    /// Replaced a queued deploy of an older commit.
    Coalesced {
        replaced: String,
    },
    /// Not queued, and why.
    Skipped(String),
}

#[derive(Debug, Default, Clone)]
struct Slot {
    running: Option<Job>,
    /// At most one deploy (or retry) and one migration.
    queued: Vec<Job>,
    applied: Option<String>,
    /// The last commit whose deploy failed; not deployed again without a retry.
    failed: Option<String>,
}

#[derive(Debug, Default, Clone)]
pub struct Queue {
    slots: BTreeMap<String, Slot>,
}

impl Queue {
    /// What the status branch says at startup: the applied commit and a failed one.
    pub fn seed(&mut self, environment: &str, applied: Option<String>, failed: Option<String>) {
        let slot = self.slots.entry(environment.to_string()).or_default();
        slot.applied = applied;
        slot.failed = failed;
    }

    pub fn offer(&mut self, job: Job) -> Offer {
        let slot = self.slots.entry(job.environment.clone()).or_default();
        match job.kind {
            JobKind::Heal => {
                // Lowest priority: a deploy (of any commit) re-applies everything anyway.
                if slot.running.is_some() || !slot.queued.is_empty() {
                    return Offer::Skipped(format!("{} is busy; heal later", job.environment));
                }
                if slot.applied.as_deref() != Some(job.commit.as_str()) {
                    return Offer::Skipped(format!(
                        "{} is not the applied commit",
                        short(&job.commit)
                    ));
                }
                slot.queued.push(job);
                Offer::Queued
            }
            JobKind::Migrate => {
                if slot.queued.iter().any(|j| j.kind == JobKind::Migrate) {
                    return Offer::Skipped("a migration is already queued".into());
                }
                slot.queued.push(job);
                Offer::Queued
            }
            JobKind::Deploy | JobKind::Retry => {
                // A queued heal is superseded by any deploy.
                slot.queued.retain(|j| j.kind != JobKind::Heal);
                if job.kind == JobKind::Deploy {
                    if slot.failed.as_deref() == Some(job.commit.as_str()) {
                        return Offer::Skipped(format!(
                            "the deploy of {} failed; push a new commit or retry",
                            short(&job.commit)
                        ));
                    }
                    if slot.applied.as_deref() == Some(job.commit.as_str())
                        && slot.running.is_none()
                        && !slot.queued.iter().any(|j| j.kind != JobKind::Migrate)
                    {
                        return Offer::Skipped(format!("{} is applied", short(&job.commit)));
                    }
                    if slot
                        .running
                        .as_ref()
                        .is_some_and(|r| r.kind != JobKind::Migrate && r.commit == job.commit)
                    {
                        // Drop any queued older deploy: the running one is the newest.
                        slot.queued.retain(|j| j.kind == JobKind::Migrate);
                        return Offer::Skipped(format!("{} is being deployed", short(&job.commit)));
                    }
                }
                let pos = slot.queued.iter().position(|j| j.kind != JobKind::Migrate);
                match pos {
                    Some(i) => {
                        let old = std::mem::replace(&mut slot.queued[i], job);
                        if old.commit == slot.queued[i].commit {
                            Offer::Skipped(format!("{} is already queued", short(&old.commit)))
                        } else {
                            Offer::Coalesced {
                                replaced: old.commit,
                            }
                        }
                    }
                    None => {
                        // Deploys run before a queued migration so it runs on the new code.
                        slot.queued.insert(0, job);
                        Offer::Queued
                    }
                }
            }
        }
    }

    /// Jobs that may start now (one per idle environment), marked running.
    pub fn start_ready(&mut self) -> Vec<Job> {
        let mut out = Vec::new();
        for slot in self.slots.values_mut() {
            if slot.running.is_none() && !slot.queued.is_empty() {
                let job = slot.queued.remove(0);
                slot.running = Some(job.clone());
                out.push(job);
            }
        }
        out
    }

    /// A started job ended.
    pub fn finished(&mut self, job: &Job, succeeded: bool) {
        let slot = self.slots.entry(job.environment.clone()).or_default();
        slot.running = None;
        if job.kind == JobKind::Migrate || (job.kind == JobKind::Heal && !succeeded) {
            // A failed heal leaves the applied commit applied (its drift stays reported).
            return;
        }
        if succeeded {
            slot.applied = Some(job.commit.clone());
            slot.failed = None;
        } else {
            slot.failed = Some(job.commit.clone());
        }
    }

    /// A commit that is blocked (invalid) counts as failed for this environment: no loop.
    pub fn blocked(&mut self, environment: &str, commit: &str) {
        let slot = self.slots.entry(environment.to_string()).or_default();
        slot.queued.retain(|j| j.kind == JobKind::Migrate);
        slot.failed = Some(commit.to_string());
    }

    /// `commit` changes nothing in `environment`: when the environment is idle (nothing running,
    /// no deploy queued) it counts as applied without a job, and `true` is returned. A busy
    /// environment is left to its jobs (`false`): what is applied is about to change.
    pub fn unchanged(&mut self, environment: &str, commit: &str) -> bool {
        let slot = self.slots.entry(environment.to_string()).or_default();
        if slot.running.is_some() || slot.queued.iter().any(|j| j.kind != JobKind::Migrate) {
            return false;
        }
        slot.applied = Some(commit.to_string());
        slot.failed = None;
        true
    }

    pub fn depth(&self) -> usize {
        self.slots.values().map(|s| s.queued.len()).sum()
    }

    pub fn running(&self) -> usize {
        self.slots.values().filter(|s| s.running.is_some()).count()
    }

    pub fn is_running(&self, environment: &str) -> bool {
        self.slots
            .get(environment)
            .is_some_and(|s| s.running.is_some())
    }
}

fn short(c: &str) -> &str {
    c.get(..7).unwrap_or(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deploy(c: &str) -> Job {
        Job {
            environment: "shop/production".into(),
            commit: c.into(),
            kind: JobKind::Deploy,
        }
    }

    #[test]
    fn one_at_a_time_and_newer_commits_coalesce() {
        let mut q = Queue::default();
        assert_eq!(q.offer(deploy("aaaaaaa1")), Offer::Queued);
        let started = q.start_ready();
        assert_eq!(started, [deploy("aaaaaaa1")]);
        // Pushes during the running deploy wait, and coalesce.
        assert_eq!(q.offer(deploy("bbbbbbb2")), Offer::Queued);
        assert_eq!(
            q.offer(deploy("ccccccc3")),
            Offer::Coalesced {
                replaced: "bbbbbbb2".into()
            }
        );
        assert_eq!(q.start_ready(), [], "the environment is busy");
        assert_eq!(q.depth(), 1);
        q.finished(&started[0], true);
        assert_eq!(q.start_ready(), [deploy("ccccccc3")]);
        assert_eq!(q.depth(), 0);
    }

    #[test]
    fn an_unchanged_commit_counts_as_applied_only_in_an_idle_environment() {
        let mut q = Queue::default();
        q.seed(
            "shop/production",
            Some("aaaaaaa1".into()),
            Some("bbbbbbb2".into()),
        );
        assert!(q.unchanged("shop/production", "ccccccc3"));
        assert_eq!(
            q.offer(deploy("ccccccc3")),
            Offer::Skipped("ccccccc is applied".into())
        );
        assert_eq!(q.depth(), 0);
        // Busy: a running deploy changes what is applied; the new commit's job decides.
        assert_eq!(q.offer(deploy("ddddddd4")), Offer::Queued);
        let started = q.start_ready();
        assert!(!q.unchanged("shop/production", "eeeeeee5"));
        q.finished(&started[0], true);
        assert_eq!(q.offer(deploy("eeeeeee5")), Offer::Queued);
    }

    #[test]
    fn a_failed_commit_is_not_retried_until_a_new_commit_or_retry() {
        let mut q = Queue::default();
        q.offer(deploy("aaaaaaa1"));
        let j = q.start_ready().remove(0);
        q.finished(&j, false);
        assert_eq!(
            q.offer(deploy("aaaaaaa1")),
            Offer::Skipped("the deploy of aaaaaaa failed; push a new commit or retry".into())
        );
        assert_eq!(q.start_ready(), []);
        let retry = Job {
            kind: JobKind::Retry,
            ..deploy("aaaaaaa1")
        };
        assert_eq!(q.offer(retry.clone()), Offer::Queued);
        assert_eq!(q.start_ready(), std::slice::from_ref(&retry));
        q.finished(&retry, true);
        assert_eq!(
            q.offer(deploy("aaaaaaa1")),
            Offer::Skipped("aaaaaaa is applied".into())
        );
        assert_eq!(q.offer(deploy("bbbbbbb2")), Offer::Queued);
    }

    #[test]
    fn migrations_queue_after_deploys_and_are_not_coalesced_away() {
        let mut q = Queue::default();
        let m = Job {
            kind: JobKind::Migrate,
            ..deploy("aaaaaaa1")
        };
        assert_eq!(q.offer(m.clone()), Offer::Queued);
        assert_eq!(
            q.offer(m.clone()),
            Offer::Skipped("a migration is already queued".into())
        );
        assert_eq!(q.offer(deploy("bbbbbbb2")), Offer::Queued);
        assert_eq!(q.start_ready(), [deploy("bbbbbbb2")]);
        q.finished(&deploy("bbbbbbb2"), true);
        assert_eq!(q.start_ready(), [m]);
    }

    #[test]
    fn heals_wait_for_an_idle_environment_and_yield_to_deploys() {
        let mut q = Queue::default();
        q.seed("shop/production", Some("aaaaaaa1".into()), None);
        let heal = Job {
            kind: JobKind::Heal,
            ..deploy("aaaaaaa1")
        };
        assert_eq!(
            q.offer(Job {
                kind: JobKind::Heal,
                ..deploy("bbbbbbb2")
            }),
            Offer::Skipped("bbbbbbb is not the applied commit".into())
        );
        assert_eq!(q.offer(heal.clone()), Offer::Queued);
        assert_eq!(
            q.offer(heal.clone()),
            Offer::Skipped("shop/production is busy; heal later".into())
        );
        assert_eq!(q.offer(deploy("bbbbbbb2")), Offer::Queued);
        assert_eq!(
            q.start_ready(),
            [deploy("bbbbbbb2")],
            "the deploy replaced the heal"
        );
        q.finished(&deploy("bbbbbbb2"), true);
        let heal2 = Job {
            kind: JobKind::Heal,
            ..deploy("bbbbbbb2")
        };
        assert_eq!(q.offer(heal2.clone()), Offer::Queued);
        assert_eq!(q.start_ready(), std::slice::from_ref(&heal2));
        q.finished(&heal2, false);
        assert_eq!(
            q.offer(deploy("bbbbbbb2")),
            Offer::Skipped("bbbbbbb is applied".into()),
            "a failed heal does not mark the applied commit failed"
        );
    }

    #[test]
    fn a_blocked_commit_counts_as_failed_and_drops_queued_deploys() {
        let mut q = Queue::default();
        q.seed("shop/production", Some("aaaaaaa1".into()), None);
        assert_eq!(
            q.offer(deploy("aaaaaaa1")),
            Offer::Skipped("aaaaaaa is applied".into())
        );
        q.offer(deploy("bbbbbbb2"));
        q.blocked("shop/production", "ccccccc3");
        assert_eq!(q.depth(), 0);
        assert!(matches!(q.offer(deploy("ccccccc3")), Offer::Skipped(_)));
    }
}

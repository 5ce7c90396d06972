//! The status model: what the status branch says, as plain data.
//!
//! The daemon (and later the health prober) fills a `StatusSnapshot`; `render` turns it into
//! files; `writer` commits them. Sync state and health are separate axes (like Argo CD): an
//! environment can be synced and degraded, or out of sync and healthy.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A point in time, whole seconds since the Unix epoch, written as RFC 3339 UTC in files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn now() -> Self {
        Timestamp(OffsetDateTime::now_utc().unix_timestamp())
    }

    fn datetime(self) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(self.0).unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    /// `2026-12-03T17:42:05Z`.
    pub fn rfc3339(self) -> String {
        self.datetime()
            .format(&Rfc3339)
            .unwrap_or_else(|_| self.0.to_string())
    }

    /// `2026-12-03`, the directory of an operation log.
    pub fn date(self) -> String {
        let d = self.datetime().date();
        format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
    }

    /// `2026-12-03 17:42 UTC`, for people.
    pub fn human(self) -> String {
        let t = self.datetime();
        format!("{} {:02}:{:02} UTC", self.date(), t.hour(), t.minute())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        OffsetDateTime::parse(&text, &Rfc3339)
            .map(|t| Timestamp(t.unix_timestamp()))
            .map_err(serde::de::Error::custom)
    }
}

/// Whether what runs matches what the tracked commit asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SyncState {
    Synced,
    OutOfSync,
    #[default]
    Unknown,
}

impl SyncState {
    fn rank(self) -> u8 {
        match self {
            Self::Synced => 0,
            Self::Unknown => 1,
            Self::OutOfSync => 2,
        }
    }

    /// The worst of several children's states (`Synced` for none): out_of_sync beats unknown
    /// beats synced.
    pub fn worst(states: impl IntoIterator<Item = SyncState>) -> SyncState {
        states
            .into_iter()
            .max_by_key(|s| s.rank())
            .unwrap_or(SyncState::Synced)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Synced => "synced",
            Self::OutOfSync => "out_of_sync",
            Self::Unknown => "unknown",
        }
    }
}

/// Whether what runs works.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Healthy,
    /// Starting, or waiting for its health check.
    Progressing,
    /// Running but failing (exited, unhealthy, restarting).
    Degraded,
    /// Should exist and does not.
    Missing,
    /// Not known (host unreachable, never probed).
    #[default]
    Unknown,
}

impl Health {
    fn rank(self) -> u8 {
        match self {
            Self::Healthy => 0,
            Self::Progressing => 1,
            Self::Unknown => 2,
            Self::Degraded => 3,
            Self::Missing => 4,
        }
    }

    /// The worst of several children's health (`Missing` for none: a service with no replica
    /// serves nothing). Order: missing > degraded > unknown > progressing > healthy.
    pub fn worst(states: impl IntoIterator<Item = Health>) -> Health {
        states
            .into_iter()
            .max_by_key(|h| h.rank())
            .unwrap_or(Health::Missing)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Progressing => "progressing",
            Self::Degraded => "degraded",
            Self::Missing => "missing",
            Self::Unknown => "unknown",
        }
    }

    fn icon(self) -> &'static str {
        match self {
            Self::Healthy => "🟢",
            Self::Progressing => "🟡",
            Self::Degraded => "🔴",
            Self::Missing => "⚫",
            Self::Unknown => "⚪",
        }
    }

    pub(crate) fn label(self) -> String {
        format!("{} {}", self.icon(), self.as_str())
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for SyncState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything the status branch shows at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct StatusSnapshot {
    /// The tracked branch commit this snapshot describes (what the daemon last loaded).
    pub config_commit: Option<String>,
    /// When something in the snapshot last changed. Not "now": a snapshot that did not change
    /// renders byte-identical files, so the writer makes no commit.
    pub updated_at: Option<Timestamp>,
    /// By `app/env`.
    pub environments: BTreeMap<String, EnvironmentStatus>,
    /// By server name.
    pub servers: BTreeMap<String, ServerStatus>,
    /// Operations to write under `operations/<date>/<id>.md`. Older logs already on the branch
    /// stay there until they age out (`status.keep_operations_days`).
    pub operations: Vec<OperationRecord>,
}

/// One environment of one application.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvironmentStatus {
    pub app: String,
    pub env: String,
    pub sync: SyncState,
    /// Why it is not synced, in one line (`commit e4f5a6b is invalid: …`, `deploy failed: …`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_reason: Option<String>,
    pub health: Health,
    /// The config commit the tracked branch asks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_commit: Option<String>,
    /// The last config commit whose deploy succeeded: what is running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied: Option<CommitMark>,
    /// The last config commit a deploy was tried for (may equal `last_applied`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempted: Option<Attempt>,
    /// Application source deployed, `shop@9f8e7d6`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployed_source: Option<String>,
    /// Validation errors or plan blockers of `desired_commit` (file:line:col: message).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_operation: Option<OperationSummary>,
    /// By app service name.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceStatus>,
}

impl EnvironmentStatus {
    pub fn new(app: &str, env: &str) -> Self {
        EnvironmentStatus {
            app: app.to_string(),
            env: env.to_string(),
            sync: SyncState::Unknown,
            sync_reason: None,
            health: Health::Unknown,
            desired_commit: None,
            last_applied: None,
            last_attempted: None,
            deployed_source: None,
            problems: Vec::new(),
            last_operation: None,
            services: BTreeMap::new(),
        }
    }

    pub fn key(&self) -> String {
        format!("{}/{}", self.app, self.env)
    }

    /// Recompute `health` from the services (worst child) and each service's from its replicas.
    /// An environment with no services is healthy when it has been applied, unknown otherwise.
    pub fn roll_up_health(&mut self) {
        for service in self.services.values_mut() {
            service.health = Health::worst(service.replicas.iter().map(|r| r.health));
            service.sync = SyncState::worst(service.replicas.iter().map(|r| r.sync));
        }
        self.health = if self.services.is_empty() {
            if self.last_applied.is_some() {
                Health::Healthy
            } else {
                Health::Unknown
            }
        } else {
            Health::worst(self.services.values().map(|s| s.health))
        };
    }

    /// (healthy replicas, all replicas).
    pub fn replica_counts(&self) -> (usize, usize) {
        let all = self.services.values().flat_map(|s| &s.replicas);
        let (mut healthy, mut total) = (0, 0);
        for r in all {
            total += 1;
            if r.health == Health::Healthy {
                healthy += 1;
            }
        }
        (healthy, total)
    }
}

/// A config commit and when it happened to this environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitMark {
    pub commit: String,
    pub at: Timestamp,
}

/// A deploy attempt of one config commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub commit: String,
    pub at: Timestamp,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// The cause of a failure, one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How an operation (or a deploy attempt) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// The daemon stopped (killed, crashed) while the operation ran; found at the next start.
    Interrupted,
    /// The commit did not validate or plan; nothing was deployed.
    Blocked,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Interrupted => "interrupted",
            Self::Blocked => "blocked",
        }
    }

    pub(crate) fn mark(self) -> &'static str {
        match self {
            Self::Running => "…",
            Self::Succeeded => "✓",
            Self::Failed => "✗",
            Self::Cancelled => "⊘",
            Self::Interrupted => "↯",
            Self::Blocked => "⛔",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An app service of an environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub health: Health,
    pub sync: SyncState,
    pub replicas: Vec<ReplicaStatus>,
}

/// One replica (`web#2`) of an app service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// 1-based, as in `web#2`.
    pub index: u32,
    pub server: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Image repository, `10.77.0.1:5000/acme/shop`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The digest the last applied plan deployed, `sha256:…`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The digest the container actually runs, when a probe saw one that differs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_digest: Option<String>,
    pub health: Health,
    pub sync: SyncState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_count: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// What a person should know, one line (`container exited (137)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Most recent last; bounded by `MAX_TRANSITIONS`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transitions: Vec<Transition>,
}

/// How many health transitions a replica keeps.
pub const MAX_TRANSITIONS: usize = 5;

impl ReplicaStatus {
    /// Set the health, recording a transition when it changes.
    pub fn set_health(&mut self, health: Health, at: Timestamp, reason: Option<String>) {
        if self.health == health {
            return;
        }
        self.transitions.push(Transition {
            at,
            from: self.health,
            to: health,
            reason,
        });
        if self.transitions.len() > MAX_TRANSITIONS {
            let extra = self.transitions.len() - MAX_TRANSITIONS;
            self.transitions.drain(..extra);
        }
        self.health = health;
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub at: Timestamp,
    pub from: Health,
    pub to: Health,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One Docker host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ServerStatus {
    /// `None`: never probed.
    pub reachable: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_version: Option<String>,
    /// When the server last answered. Refreshed on the branch only together with another
    /// change, so a quiet server adds no commits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Timestamp>,
    /// Free bytes on the Docker data root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_free_bytes: Option<u64>,
    /// Why it is unreachable, one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Shared services' replicas on this server, by service name (from the health probe).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub services: BTreeMap<String, SharedReplicaStatus>,
    /// Drift found on this server outside app replicas: Keystone-labelled containers that no
    /// applied plan knows, one line each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<String>,
}

/// The replica of a shared service (postgres, valkey, gateway) on one server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedReplicaStatus {
    pub container: String,
    pub health: Health,
    pub sync: SyncState,
    /// The digest the last applied plan deployed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The digest the container actually runs, when a probe saw one that differs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_digest: Option<String>,
    /// Why it is not healthy and synced, one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The one-line view of an operation, for tables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationSummary {
    pub id: String,
    /// `deploy`, `migrate`, `retry`.
    pub kind: String,
    pub commit: String,
    pub outcome: Outcome,
    pub started: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

/// A whole operation: the tree, each step's status, duration and (redacted) output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperationRecord {
    /// Unique and path-safe (`[A-Za-z0-9._-]`): the file name of its log.
    pub id: String,
    /// `app/env`.
    pub environment: String,
    /// `deploy`, `migrate`, `retry`.
    pub kind: String,
    pub commit: String,
    pub started: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<Timestamp>,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `None` when nothing was planned (a blocked commit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree: Option<OperationNode>,
}

impl OperationRecord {
    pub fn duration_ms(&self) -> Option<u64> {
        self.finished
            .map(|f| ((f.0 - self.started.0).max(0) as u64) * 1000)
    }

    pub fn summary(&self) -> OperationSummary {
        OperationSummary {
            id: self.id.clone(),
            kind: self.kind.clone(),
            commit: self.commit.clone(),
            outcome: self.outcome,
            started: self.started,
            duration_ms: self.duration_ms(),
        }
    }
}

/// Status of one node of an executed operation tree, or of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// Was running when the process running it stopped.
    Interrupted,
    Skipped,
}

impl NodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Interrupted => "interrupted",
            Self::Skipped => "skipped",
        }
    }

    pub(crate) fn mark(self) -> &'static str {
        match self {
            Self::Pending => "·",
            Self::Running => "…",
            Self::Succeeded => "✓",
            Self::Failed => "✗",
            Self::Cancelled => "⊘",
            Self::Interrupted => "↯",
            Self::Skipped => "-",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperationNode {
    /// `replica_deploy web#2 @web-2`.
    pub title: String,
    pub status: NodeStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default)]
    pub steps: Vec<StepRecord>,
    #[serde(default)]
    pub children: Vec<OperationNode>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub name: String,
    /// `local` or the server name.
    pub target: String,
    pub status: NodeStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Combined output (tail); redacted again by the writer.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub output: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_worst_order() {
        use Health::*;
        assert_eq!(Health::worst([Healthy, Progressing]), Progressing);
        assert_eq!(Health::worst([Healthy, Unknown, Progressing]), Unknown);
        assert_eq!(Health::worst([Unknown, Degraded]), Degraded);
        assert_eq!(Health::worst([Degraded, Missing, Healthy]), Missing);
        assert_eq!(Health::worst([]), Missing);
        assert_eq!(
            SyncState::worst([SyncState::Synced, SyncState::Unknown]),
            SyncState::Unknown
        );
        assert_eq!(
            SyncState::worst([SyncState::OutOfSync, SyncState::Unknown]),
            SyncState::OutOfSync
        );
    }

    #[test]
    fn transitions_are_recorded_and_bounded() {
        let mut r = ReplicaStatus {
            index: 1,
            server: "web-1".into(),
            container: None,
            image: None,
            digest: None,
            running_digest: None,
            health: Health::Unknown,
            sync: SyncState::Synced,
            started: None,
            restart_count: None,
            exit_code: None,
            message: None,
            transitions: vec![],
        };
        r.set_health(Health::Healthy, Timestamp(10), None);
        r.set_health(Health::Healthy, Timestamp(11), None);
        assert_eq!(r.transitions.len(), 1);
        for i in 0..10 {
            let h = if i % 2 == 0 {
                Health::Degraded
            } else {
                Health::Healthy
            };
            r.set_health(h, Timestamp(20 + i), Some(format!("t{i}")));
        }
        assert_eq!(r.transitions.len(), MAX_TRANSITIONS);
        assert_eq!(r.transitions.last().unwrap().reason.as_deref(), Some("t9"));
        assert_eq!(r.transitions.last().unwrap().to, Health::Healthy);
    }

    #[test]
    fn timestamps_format_and_parse() {
        let t = Timestamp(1_796_319_725); // 2026-12-03T17:42:05Z
        assert_eq!(t.rfc3339(), "2026-12-03T17:42:05Z");
        assert_eq!(t.date(), "2026-12-03");
        assert_eq!(t.human(), "2026-12-03 17:42 UTC");
        let yaml = serde_saphyr::to_string(&t).unwrap();
        let back: Timestamp = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(back, t);
    }
}

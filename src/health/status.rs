//! An assessed probe round applied to the status snapshot: replica health and sync (with their
//! transitions), the roll-up to services and environments, servers. Returns what *changed* — the
//! status branch gets a commit only when this is not empty. Pure: the caller passes the time.
//!
//! What counts as a change: a replica's or shared service's health, sync or running digest; an
//! environment's health or sync; a server's reachability, Docker version, crossing of the low-disk
//! line, or its set of drift lines. What is refreshed silently (and reaches the branch with the
//! next change): last seen, free disk, restart counts, start times, error texts of a server that
//! stays unreachable.

use std::collections::{BTreeMap, BTreeSet};

use crate::status::{
    EnvironmentStatus, Health, ReplicaStatus, ServerStatus, ServiceStatus, SharedReplicaStatus,
    StatusSnapshot, SyncState, Timestamp,
};

use super::assess::{Assessment, Owner, ReplicaAssessment};

/// Below this much free space on the Docker data root a server is reported low on disk.
pub const DISK_LOW_BYTES: u64 = 2 << 30;

/// Sync reasons the probe sets start with one of these, so it knows which it may clear.
pub const DRIFT_REASON: &str = "drift: ";
pub const UNKNOWN_REASON: &str = "unknown: ";

/// What applying a round changed, one line each
/// (`shop/production web#2 degraded: container exited (137)`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Changes {
    pub lines: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The commit subject: the one change, or the first and how many more.
    pub fn subject(&self) -> String {
        match self.lines.len() {
            0 => "no change".into(),
            1 => self.lines[0].clone(),
            n => format!("{} (+{} more)", self.lines[0], n - 1),
        }
    }
}

/// Apply `a` to `snapshot`. Environments in `busy` (a deploy runs or ran since the probe began)
/// are left alone, and while any is busy the servers' orphan lists stay as they were (a deploy's
/// new containers are not in the applied state yet).
pub fn apply(
    snapshot: &mut StatusSnapshot,
    a: &Assessment,
    now: Timestamp,
    busy: &BTreeSet<String>,
) -> Changes {
    let mut changes = Changes::default();
    apply_servers(snapshot, a, now, busy, &mut changes);

    let mut by_env: BTreeMap<&str, Vec<&ReplicaAssessment>> = BTreeMap::new();
    for r in &a.replicas {
        if let (Owner::App, Some(e)) = (r.expected.owner, r.expected.environment.as_deref()) {
            by_env.entry(e).or_default().push(r);
        }
    }
    for (key, env) in snapshot.environments.iter_mut() {
        if busy.contains(key) {
            continue;
        }
        let Some(replicas) = by_env.get(key.as_str()) else {
            continue;
        };
        apply_environment(env, replicas, now, &mut changes);
    }
    changes
}

fn apply_servers(
    snapshot: &mut StatusSnapshot,
    a: &Assessment,
    now: Timestamp,
    busy: &BTreeSet<String>,
    changes: &mut Changes,
) {
    let mut shared: BTreeMap<&str, Vec<&ReplicaAssessment>> = BTreeMap::new();
    for r in &a.replicas {
        if r.expected.owner == Owner::Shared {
            shared
                .entry(r.expected.server.as_str())
                .or_default()
                .push(r);
        }
    }
    for (name, st) in snapshot.servers.iter_mut() {
        let Some(s) = a.servers.get(name) else {
            continue;
        };
        let before = st.clone();
        st.reachable = Some(s.reachable);
        if s.reachable {
            st.last_seen = Some(now);
            st.docker_version = s.docker_version.clone().or(before.docker_version.clone());
            st.disk_free_bytes = s.disk_free_bytes;
            st.error = s.error.clone();
        } else if before.reachable != Some(false) || st.error.is_none() {
            st.error = s.error.clone();
        }
        match (before.reachable, s.reachable) {
            (Some(true), false) | (None, false) => changes.lines.push(format!(
                "{name} unreachable: {}",
                s.error.as_deref().unwrap_or("no answer")
            )),
            (Some(false), true) => changes.lines.push(format!("{name} reachable again")),
            (None, true) => changes.lines.push(format!(
                "{name} reachable (Docker {})",
                s.docker_version.as_deref().unwrap_or("?")
            )),
            _ => {}
        }
        if s.reachable && before.reachable == Some(true) {
            if before.docker_version.is_some() && before.docker_version != st.docker_version {
                changes.lines.push(format!(
                    "{name} Docker {} → {}",
                    before.docker_version.as_deref().unwrap_or("?"),
                    st.docker_version.as_deref().unwrap_or("?")
                ));
            }
            if before.error.is_none() && st.error.is_some() {
                changes.lines.push(format!(
                    "{name} {}",
                    st.error.as_deref().unwrap_or_default()
                ));
            } else if before.error.is_some() && st.error.is_none() {
                changes.lines.push(format!("{name} Docker answers again"));
            }
        }
        let low = |b: Option<u64>| b.is_some_and(|b| b < DISK_LOW_BYTES);
        if s.reachable && low(st.disk_free_bytes) != low(before.disk_free_bytes) {
            changes.lines.push(match st.disk_free_bytes {
                Some(b) if low(Some(b)) => format!("{name} low on disk: {} free", gib(b)),
                Some(b) => format!("{name} disk space back: {} free", gib(b)),
                None => format!("{name} free disk unknown"),
            });
        }
        if s.reachable && busy.is_empty() {
            st.drift = s.orphans.iter().map(|d| d.to_string()).collect();
            let old: BTreeSet<&String> = before.drift.iter().collect();
            for d in &st.drift {
                if !old.contains(d) {
                    changes.lines.push(format!("{name}: {d}"));
                }
            }
            let new: BTreeSet<&String> = st.drift.iter().collect();
            for d in &before.drift {
                if !new.contains(d) {
                    changes.lines.push(format!("{name}: gone: {d}"));
                }
            }
        }
        if busy.is_empty() {
            let mut services = BTreeMap::new();
            for r in shared.get(name.as_str()).into_iter().flatten() {
                let status = SharedReplicaStatus {
                    container: r.expected.container.clone(),
                    health: r.health,
                    sync: r.sync,
                    digest: Some(r.expected.digest.clone()).filter(|d| !d.is_empty()),
                    running_digest: r.running_digest.clone(),
                    message: r.message.clone(),
                };
                let old = before.services.get(&r.expected.service);
                let moved = old.is_none_or(|o| {
                    o.health != status.health
                        || o.sync != status.sync
                        || o.running_digest != status.running_digest
                });
                if moved {
                    changes.lines.push(line(
                        &format!("{} @{name}", r.expected.service),
                        old.map(|o| (o.health, o.sync)),
                        status.health,
                        status.sync,
                        status.message.as_deref(),
                    ));
                }
                services.insert(r.expected.service.clone(), status);
            }
            for gone in before.services.keys() {
                if !services.contains_key(gone) {
                    changes
                        .lines
                        .push(format!("{gone} @{name} no longer applied here"));
                }
            }
            st.services = services;
        }
    }
}

fn gib(b: u64) -> String {
    format!("{:.1} GiB", b as f64 / f64::from(1u32 << 30))
}

/// `web#2 degraded: container exited (137)`, `web#2 healthy`, `web#1 out_of_sync: runs …`.
fn line(
    what: &str,
    before: Option<(Health, SyncState)>,
    health: Health,
    sync: SyncState,
    message: Option<&str>,
) -> String {
    let why = message.map(|m| format!(": {m}")).unwrap_or_default();
    match before {
        Some((h, _)) if h == health => format!("{what} {sync}{why}"),
        _ if health == Health::Healthy && sync == SyncState::Synced => format!("{what} healthy"),
        _ if health == Health::Healthy => format!("{what} healthy, {sync}{why}"),
        _ => format!("{what} {health}{why}"),
    }
}

fn apply_environment(
    env: &mut EnvironmentStatus,
    replicas: &[&ReplicaAssessment],
    now: Timestamp,
    changes: &mut Changes,
) {
    let key = env.key();
    let before = (env.health, env.sync);
    let mut services: BTreeMap<String, ServiceStatus> = BTreeMap::new();
    for r in replicas {
        let e = &r.expected;
        let old = env
            .services
            .get(&e.service)
            .and_then(|s| s.replicas.iter().find(|x| x.index == e.index));
        let mut next = match old {
            Some(o) => o.clone(),
            None => ReplicaStatus {
                index: e.index,
                server: e.server.clone(),
                container: None,
                image: None,
                digest: None,
                running_digest: None,
                health: Health::Unknown,
                sync: SyncState::Unknown,
                started: None,
                restart_count: None,
                exit_code: None,
                message: None,
                transitions: vec![],
            },
        };
        next.server = e.server.clone();
        next.container = Some(e.container.clone());
        next.image = e.image.clone().or(next.image);
        next.digest = Some(e.digest.clone()).filter(|d| !d.is_empty());
        next.running_digest = r.running_digest.clone();
        next.started = r.started.or(next.started);
        next.restart_count = r.restart_count.or(next.restart_count);
        next.exit_code = r.exit_code;
        next.message = r.message.clone();
        next.sync = r.sync;
        next.set_health(r.health, now, r.message.clone());
        let moved = old.is_none_or(|o| {
            o.health != next.health
                || o.sync != next.sync
                || o.running_digest != next.running_digest
        });
        if moved {
            changes.lines.push(line(
                &format!("{key} {}#{}", e.service, e.index),
                old.map(|o| (o.health, o.sync)),
                next.health,
                next.sync,
                next.message.as_deref(),
            ));
        }
        services
            .entry(e.service.clone())
            .or_insert_with(|| ServiceStatus {
                health: Health::Unknown,
                sync: SyncState::Unknown,
                replicas: Vec::new(),
            })
            .replicas
            .push(next);
    }
    for s in services.values_mut() {
        s.replicas.sort_by_key(|r| r.index);
    }
    env.services = services;
    env.roll_up_health();

    // The environment's sync: the deploy loop owns it (desired vs applied commit); the probe
    // only turns a synced environment out_of_sync (or unknown) while what runs differs, and back.
    let probe_owned = env.sync == SyncState::Synced
        || env
            .sync_reason
            .as_deref()
            .is_some_and(|r| r.starts_with(DRIFT_REASON) || r.starts_with(UNKNOWN_REASON));
    if probe_owned {
        let worst = SyncState::worst(env.services.values().map(|s| s.sync));
        let first = |want: SyncState| {
            env.services.iter().find_map(|(name, s)| {
                s.replicas.iter().find(|r| r.sync == want).map(|r| {
                    format!(
                        "{name}#{} {}",
                        r.index,
                        r.message.as_deref().unwrap_or(want.as_str())
                    )
                })
            })
        };
        (env.sync, env.sync_reason) = match worst {
            SyncState::Synced => (SyncState::Synced, None),
            SyncState::OutOfSync => (
                SyncState::OutOfSync,
                first(SyncState::OutOfSync).map(|r| format!("{DRIFT_REASON}{r}")),
            ),
            SyncState::Unknown => (
                SyncState::Unknown,
                first(SyncState::Unknown).map(|r| format!("{UNKNOWN_REASON}{r}")),
            ),
        };
    }
    if (env.health, env.sync) != before {
        let mut what = Vec::new();
        if env.health != before.0 {
            what.push(env.health.as_str());
        }
        if env.sync != before.1 && !what.contains(&env.sync.as_str()) {
            what.push(env.sync.as_str());
        }
        changes.lines.push(format!("{key} {}", what.join(", ")));
    }
}

/// After a deploy replaced `old` by `new` (what the applied state says runs now, all healthy):
/// keep each replica's transitions and record the change to its new health.
pub fn carry_over(
    old: &BTreeMap<String, ServiceStatus>,
    mut new: BTreeMap<String, ServiceStatus>,
    now: Timestamp,
) -> BTreeMap<String, ServiceStatus> {
    for (name, svc) in new.iter_mut() {
        for r in svc.replicas.iter_mut() {
            let Some(o) = old
                .get(name)
                .and_then(|s| s.replicas.iter().find(|x| x.index == r.index))
            else {
                continue;
            };
            let health = r.health;
            r.transitions = o.transitions.clone();
            r.health = o.health;
            r.set_health(health, now, Some("deployed".into()));
        }
    }
    new
}

/// The servers' status as the probe left them, for `/metrics`.
pub fn reachable(servers: &BTreeMap<String, ServerStatus>) -> Vec<(String, bool)> {
    servers
        .iter()
        .filter_map(|(n, s)| s.reachable.map(|r| (n.clone(), r)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::assess::{Drift, ExpectedReplica, ServerAssessment};
    use crate::status::CommitMark;

    const D1: &str = "sha256:1111";

    fn expected(service: &str, index: u32, server: &str) -> ExpectedReplica {
        ExpectedReplica {
            environment: Some("shop/production".into()),
            service: service.into(),
            index,
            server: server.into(),
            container: format!("keystone-shop_production_{service}-{index}-blue"),
            image: Some("10.77.0.1:5000/acme/shop".into()),
            digest: D1.into(),
            files: vec![],
            owner: Owner::App,
        }
    }

    fn ok(e: ExpectedReplica) -> ReplicaAssessment {
        ReplicaAssessment {
            expected: e,
            health: Health::Healthy,
            sync: SyncState::Synced,
            running_digest: None,
            started: Some(Timestamp(100)),
            restart_count: Some(0),
            exit_code: None,
            message: None,
            drift: vec![],
        }
    }

    fn round(replicas: Vec<ReplicaAssessment>, web2: bool) -> Assessment {
        let up = |disk: u64| ServerAssessment {
            reachable: true,
            docker_version: Some("20.10.24".into()),
            disk_free_bytes: Some(disk),
            ..Default::default()
        };
        Assessment {
            servers: [
                ("web-1".to_string(), up(50 << 30)),
                (
                    "web-2".to_string(),
                    if web2 {
                        up(40 << 30)
                    } else {
                        ServerAssessment {
                            reachable: false,
                            error: Some("timed out after 1.6s".into()),
                            ..Default::default()
                        }
                    },
                ),
            ]
            .into(),
            replicas,
        }
    }

    fn healthy() -> Vec<ReplicaAssessment> {
        vec![
            ok(expected("web", 1, "web-1")),
            ok(expected("web", 2, "web-2")),
            ok(expected("worker", 1, "web-2")),
        ]
    }

    fn snapshot() -> StatusSnapshot {
        let mut env = EnvironmentStatus::new("shop", "production");
        env.sync = SyncState::Synced;
        env.last_applied = Some(CommitMark {
            commit: "c1".into(),
            at: Timestamp(1),
        });
        StatusSnapshot {
            environments: [(env.key(), env)].into(),
            servers: [
                ("web-1".to_string(), ServerStatus::default()),
                ("web-2".to_string(), ServerStatus::default()),
            ]
            .into(),
            ..Default::default()
        }
    }

    fn settled() -> StatusSnapshot {
        let mut s = snapshot();
        apply(
            &mut s,
            &round(healthy(), true),
            Timestamp(10),
            &BTreeSet::new(),
        );
        s
    }

    #[test]
    fn a_first_round_reports_and_a_quiet_one_changes_nothing() {
        let mut s = snapshot();
        let c = apply(
            &mut s,
            &round(healthy(), true),
            Timestamp(10),
            &BTreeSet::new(),
        );
        assert_eq!(
            c.lines,
            [
                "web-1 reachable (Docker 20.10.24)",
                "web-2 reachable (Docker 20.10.24)",
                "shop/production web#1 healthy",
                "shop/production web#2 healthy",
                "shop/production worker#1 healthy",
                "shop/production healthy",
            ]
        );
        let env = &s.environments["shop/production"];
        assert_eq!((env.health, env.sync), (Health::Healthy, SyncState::Synced));
        // Twenty more rounds, with the disk and clock moving: nothing changes.
        for i in 0..20 {
            let mut r = round(healthy(), true);
            r.servers.get_mut("web-1").unwrap().disk_free_bytes = Some((50 << 30) - i * 4096);
            let c = apply(&mut s, &r, Timestamp(20 + i as i64), &BTreeSet::new());
            assert!(c.is_empty(), "round {i}: {c:?}");
        }
        assert_eq!(s.servers["web-1"].last_seen, Some(Timestamp(39)));
    }

    #[test]
    fn a_killed_replica_degrades_service_and_environment_then_recovers() {
        let mut s = settled();
        let mut r = healthy();
        r[1].health = Health::Degraded;
        r[1].sync = SyncState::OutOfSync;
        r[1].exit_code = Some(137);
        r[1].message = Some("container exited (137)".into());
        r[1].drift = vec![Drift::Stopped {
            container: "x".into(),
            state: "exited".into(),
            exit_code: 137,
        }];
        let c = apply(&mut s, &round(r, true), Timestamp(50), &BTreeSet::new());
        assert_eq!(
            c.lines,
            [
                "shop/production web#2 degraded: container exited (137)",
                "shop/production degraded, out_of_sync",
            ]
        );
        assert_eq!(
            c.subject(),
            "shop/production web#2 degraded: container exited (137) (+1 more)"
        );
        let env = &s.environments["shop/production"];
        assert_eq!(env.services["web"].health, Health::Degraded);
        assert_eq!(env.services["web"].sync, SyncState::OutOfSync);
        assert_eq!(env.services["worker"].health, Health::Healthy);
        assert_eq!(
            env.sync_reason.as_deref(),
            Some("drift: web#2 container exited (137)")
        );
        let w2 = &env.services["web"].replicas[1];
        assert_eq!(w2.exit_code, Some(137));
        let t = w2.transitions.last().unwrap();
        assert_eq!(
            (t.at, t.from, t.to),
            (Timestamp(50), Health::Healthy, Health::Degraded)
        );
        assert_eq!(t.reason.as_deref(), Some("container exited (137)"));
        // Back to healthy.
        let mut again = healthy();
        again[1] = ReplicaAssessment {
            ..ok(expected("web", 2, "web-2"))
        };
        let c = apply(&mut s, &round(again, true), Timestamp(60), &BTreeSet::new());
        assert_eq!(
            c.lines,
            [
                "shop/production web#2 healthy",
                "shop/production healthy, synced"
            ]
        );
        assert_eq!(s.environments["shop/production"].sync_reason, None);
    }

    #[test]
    fn an_unreachable_server_makes_only_its_replicas_unknown() {
        let mut s = settled();
        let mut r = healthy();
        for x in r.iter_mut().skip(1) {
            x.health = Health::Unknown;
            x.sync = SyncState::Unknown;
            x.message = Some("web-2 unreachable: timed out after 1.6s".into());
        }
        let c = apply(&mut s, &round(r, false), Timestamp(70), &BTreeSet::new());
        assert_eq!(
            c.lines,
            [
                "web-2 unreachable: timed out after 1.6s",
                "shop/production web#2 unknown: web-2 unreachable: timed out after 1.6s",
                "shop/production worker#1 unknown: web-2 unreachable: timed out after 1.6s",
                "shop/production unknown",
            ]
        );
        assert_eq!(s.servers["web-2"].reachable, Some(false));
        assert_eq!(s.servers["web-2"].last_seen, Some(Timestamp(10)));
        assert_eq!(s.servers["web-1"].last_seen, Some(Timestamp(70)));
        let env = &s.environments["shop/production"];
        assert_eq!(env.services["web"].replicas[0].health, Health::Healthy);
        assert_eq!(env.sync, SyncState::Unknown);
        let c = apply(
            &mut s,
            &round(healthy(), true),
            Timestamp(80),
            &BTreeSet::new(),
        );
        assert_eq!(c.lines[0], "web-2 reachable again");
        assert_eq!(s.environments["shop/production"].sync, SyncState::Synced);
    }

    #[test]
    fn busy_environments_and_a_deploy_loop_reason_are_left_alone() {
        let mut s = settled();
        let env = s.environments.get_mut("shop/production").unwrap();
        env.sync = SyncState::OutOfSync;
        env.sync_reason = Some("deploy of e4f5a6b queued".into());
        let mut r = healthy();
        r[0].health = Health::Degraded;
        let busy: BTreeSet<String> = ["shop/production".to_string()].into();
        assert!(apply(&mut s, &round(r.clone(), true), Timestamp(90), &busy).is_empty());
        let c = apply(&mut s, &round(r, true), Timestamp(91), &BTreeSet::new());
        assert_eq!(
            c.lines,
            ["shop/production web#1 degraded", "shop/production degraded"]
        );
        let env = &s.environments["shop/production"];
        assert_eq!(env.sync_reason.as_deref(), Some("deploy of e4f5a6b queued"));
    }

    #[test]
    fn orphans_and_low_disk_are_changes_once() {
        let mut s = settled();
        let mut r = round(healthy(), true);
        let orphan = Drift::Orphan {
            container: "keystone-x".into(),
            replica_label: "x".into(),
            environment: None,
            state: "running".into(),
        };
        r.servers.get_mut("web-1").unwrap().orphans = vec![orphan.clone()];
        r.servers.get_mut("web-2").unwrap().disk_free_bytes = Some(1 << 30);
        let c = apply(&mut s, &r, Timestamp(95), &BTreeSet::new());
        assert_eq!(
            c.lines,
            [
                format!("web-1: {orphan}"),
                "web-2 low on disk: 1.0 GiB free".to_string()
            ]
        );
        assert!(apply(&mut s, &r, Timestamp(96), &BTreeSet::new()).is_empty());
        let c = apply(
            &mut s,
            &round(healthy(), true),
            Timestamp(97),
            &BTreeSet::new(),
        );
        assert_eq!(
            c.lines,
            [
                format!("web-1: gone: {orphan}"),
                "web-2 disk space back: 40.0 GiB free".to_string()
            ]
        );
    }

    #[test]
    fn a_deploy_keeps_the_transitions() {
        let s = settled();
        let old = s.environments["shop/production"].services.clone();
        let mut new = old.clone();
        for svc in new.values_mut() {
            for r in svc.replicas.iter_mut() {
                r.transitions.clear();
            }
        }
        let merged = carry_over(&old, new, Timestamp(99));
        assert_eq!(
            merged["web"].replicas[0].transitions,
            old["web"].replicas[0].transitions
        );
        assert_eq!(merged["web"].replicas[0].transitions.len(), 1);
    }
}

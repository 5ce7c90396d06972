//! Probe facts compared with the last applied state: per replica health, sync and drift; per
//! server reachability and orphan containers. Pure: no I/O, no clock.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::plan::{Applied, AppliedReplica};
use crate::status::{Health, SyncState, Timestamp};

use super::probe::{ContainerFacts, ENVIRONMENT_LABEL, REPLICA_LABEL, ServerFacts};

/// A file Keystone wrote on a server, as the state recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenFile {
    pub sha256: String,
    pub mode: u32,
}

/// Files written, by (server, path).
pub type WrittenFiles = BTreeMap<(String, String), WrittenFile>;

/// Which service type a shared service is, for what self-heal may touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// A replica of an application service (stateless; may be re-deployed).
    App,
    /// A shared service (postgres, valkey, gateway): reported only, never re-deployed here.
    Shared,
}

/// One container Keystone expects to run, with the files it wrote for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedReplica {
    /// `app/env` for app replicas; `None` for shared services.
    pub environment: Option<String>,
    /// App service or shared service name.
    pub service: String,
    /// 1-based for app replicas, 0 for shared services.
    pub index: u32,
    pub server: String,
    pub container: String,
    pub image: Option<String>,
    /// `sha256:…`; empty when unknown.
    pub digest: String,
    /// Paths (with what was written) to compare.
    pub files: Vec<(String, WrittenFile)>,
    pub owner: Owner,
}

impl ExpectedReplica {
    /// `web#2`, or the shared service's name.
    pub fn label(&self) -> String {
        match self.owner {
            Owner::App => format!("{}#{}", self.service, self.index),
            Owner::Shared => self.service.clone(),
        }
    }
}

/// What the last applied state says runs, per server.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Expected {
    pub replicas: Vec<ExpectedReplica>,
}

impl Expected {
    /// From the applied state and the files the state says Keystone wrote: every app replica of
    /// every environment and every shared service replica, with the files in its directory.
    pub fn from_applied(applied: &Applied, written: &WrittenFiles, remote_root: &str) -> Self {
        let root = remote_root.trim_end_matches('/');
        let files_in = |server: &str, dirs: &[String]| -> Vec<(String, WrittenFile)> {
            written
                .range((server.to_string(), String::new())..)
                .take_while(|((s, _), _)| s == server)
                .filter(|((_, p), _)| {
                    p.rsplit_once('/')
                        .is_some_and(|(dir, _)| dirs.iter().any(|d| d == dir))
                })
                .map(|((_, p), w)| (p.clone(), w.clone()))
                .collect()
        };
        let mut replicas = Vec::new();
        for (key, env) in &applied.environments {
            let Some((app, env_name)) = key.split_once('/') else {
                continue;
            };
            let image = env.image.as_ref().map(|i| i.repository.clone());
            for (service, s) in &env.services {
                for r in &s.replicas {
                    let dir = crate::plan::applied_replica_dir(root, app, env_name, service, r);
                    replicas.push(ExpectedReplica {
                        environment: Some(key.clone()),
                        service: service.clone(),
                        index: r.index,
                        server: r.server.clone(),
                        container: r.container.clone(),
                        image: image.clone(),
                        digest: r.digest.clone(),
                        files: files_in(&r.server, &[dir]),
                        owner: Owner::App,
                    });
                }
            }
        }
        for (name, s) in &applied.services {
            let mut dirs = vec![format!("{root}/services/{name}")];
            if s.driver == "caddy2" {
                dirs.push(crate::drivers::caddy2::gateway_dir(root, name));
            }
            for r in &s.replicas {
                replicas.push(ExpectedReplica {
                    environment: None,
                    service: name.clone(),
                    index: 0,
                    server: r.server.clone(),
                    container: r.container.clone(),
                    image: Some(s.image.clone()),
                    digest: if r.digest.is_empty() {
                        s.digest.clone().unwrap_or_default()
                    } else {
                        r.digest.clone()
                    },
                    files: files_in(&r.server, &dirs),
                    owner: Owner::Shared,
                });
            }
        }
        Expected { replicas }
    }

    /// The paths to hash on each server.
    pub fn files_by_server(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for r in &self.replicas {
            let set = out.entry(r.server.clone()).or_default();
            for (p, _) in &r.files {
                set.insert(p.clone());
            }
        }
        out.into_iter()
            .map(|(s, set)| (s, set.into_iter().collect()))
            .collect()
    }

    /// Every server with something expected on it.
    pub fn servers(&self) -> BTreeSet<String> {
        self.replicas.iter().map(|r| r.server.clone()).collect()
    }
}

/// One way what runs differs from what Keystone applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drift {
    /// No container of that name.
    Missing { container: String },
    /// The container exists but does not run.
    Stopped {
        container: String,
        state: String,
        exit_code: i64,
    },
    /// It runs another image.
    Digest {
        container: String,
        applied: String,
        running: String,
    },
    /// A file Keystone wrote is gone or has other bytes. Hashes of files with secrets (mode
    /// 0600) are not shown.
    File {
        path: String,
        written: Option<String>,
        found: Option<String>,
    },
    /// A Keystone-labelled container no applied plan knows.
    Orphan {
        container: String,
        replica_label: String,
        environment: Option<String>,
        state: String,
    },
}

fn short_hash(h: &str) -> &str {
    let h = h.strip_prefix("sha256:").unwrap_or(h);
    h.get(..12).unwrap_or(h)
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Drift::Missing { container } => write!(f, "container {container} is missing"),
            Drift::Stopped {
                container,
                state,
                exit_code,
            } => write!(f, "container {container} {state} ({exit_code})"),
            Drift::Digest {
                container,
                applied,
                running,
            } => write!(f, "container {container} runs {running}, applied {applied}"),
            Drift::File {
                path, found: None, ..
            } => write!(f, "file {path} is missing"),
            Drift::File {
                path,
                written: Some(w),
                found: Some(x),
            } if !x.is_empty() => write!(
                f,
                "file {path} changed (sha256 {}…, written {}…)",
                short_hash(x),
                short_hash(w)
            ),
            Drift::File { path, .. } => write!(f, "file {path} changed since Keystone wrote it"),
            Drift::Orphan {
                container,
                replica_label,
                environment,
                state,
            } => {
                write!(
                    f,
                    "orphan container {container} ({state}, {REPLICA_LABEL}={replica_label}"
                )?;
                if let Some(e) = environment {
                    write!(f, ", {ENVIRONMENT_LABEL}={e}")?;
                }
                write!(f, ") that no applied plan knows")
            }
        }
    }
}

/// What one probe says about one expected replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaAssessment {
    pub expected: ExpectedReplica,
    pub health: Health,
    pub sync: SyncState,
    /// The digest it runs, when it differs from the applied one.
    pub running_digest: Option<String>,
    pub started: Option<Timestamp>,
    pub restart_count: Option<u32>,
    pub exit_code: Option<i64>,
    /// Why it is not healthy and synced, one line (`container exited (137)`).
    pub message: Option<String>,
    pub drift: Vec<Drift>,
}

/// What one probe says about one server.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerAssessment {
    pub reachable: bool,
    pub docker_version: Option<String>,
    pub disk_free_bytes: Option<u64>,
    /// Why it is unreachable, or what Docker answered.
    pub error: Option<String>,
    /// Containers labelled by Keystone that nothing applied names.
    pub orphans: Vec<Drift>,
}

/// One probe round, assessed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Assessment {
    pub servers: BTreeMap<String, ServerAssessment>,
    pub replicas: Vec<ReplicaAssessment>,
}

impl Assessment {
    /// App replicas of `environment` with drift, by (service, index), with why.
    pub fn drifted(&self, environment: &str) -> BTreeMap<(String, u32), String> {
        self.replicas
            .iter()
            .filter(|r| {
                r.expected.owner == Owner::App
                    && r.expected.environment.as_deref() == Some(environment)
                    && !r.drift.is_empty()
            })
            .map(|r| {
                (
                    (r.expected.service.clone(), r.expected.index),
                    r.message.clone().unwrap_or_else(|| r.drift[0].to_string()),
                )
            })
            .collect()
    }
}

/// The outcome of probing one server: what it printed, or why it could not be asked.
pub type ServerProbe = Result<ServerFacts, String>;

/// `2026-12-03T17:42:05.123456789Z` → seconds.
fn docker_time(t: &str) -> Option<Timestamp> {
    let t = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()?;
    Some(Timestamp(t.unix_timestamp()))
}

/// Compare every server's facts with what is expected there.
pub fn assess(expected: &Expected, probes: &BTreeMap<String, ServerProbe>) -> Assessment {
    let mut out = Assessment::default();
    for (server, probe) in probes {
        let s = match probe {
            Err(e) => ServerAssessment {
                reachable: false,
                error: Some(e.clone()),
                ..Default::default()
            },
            Ok(f) => {
                let known: BTreeSet<&str> = expected
                    .replicas
                    .iter()
                    .filter(|r| &r.server == server)
                    .map(|r| r.container.as_str())
                    .collect();
                let orphans = if f.docker_error.is_some() {
                    Vec::new()
                } else {
                    f.containers
                        .values()
                        .filter(|c| !known.contains(c.name.as_str()))
                        .map(|c| Drift::Orphan {
                            container: c.name.clone(),
                            replica_label: c.labels.get(REPLICA_LABEL).cloned().unwrap_or_default(),
                            environment: c.labels.get(ENVIRONMENT_LABEL).cloned(),
                            state: c.state.clone(),
                        })
                        .collect()
                };
                ServerAssessment {
                    reachable: true,
                    docker_version: f.docker_version.clone(),
                    disk_free_bytes: f.disk_free_bytes,
                    error: f.docker_error.as_ref().map(|e| format!("docker: {e}")),
                    orphans,
                }
            }
        };
        out.servers.insert(server.clone(), s);
    }
    for r in &expected.replicas {
        out.replicas.push(assess_replica(r, probes.get(&r.server)));
    }
    out
}

fn assess_replica(r: &ExpectedReplica, probe: Option<&ServerProbe>) -> ReplicaAssessment {
    let mut a = ReplicaAssessment {
        expected: r.clone(),
        health: Health::Unknown,
        sync: SyncState::Unknown,
        running_digest: None,
        started: None,
        restart_count: None,
        exit_code: None,
        message: None,
        drift: Vec::new(),
    };
    let facts = match probe {
        None => {
            a.message = Some(format!("{} was not probed", r.server));
            return a;
        }
        Some(Err(e)) => {
            a.message = Some(format!("{} unreachable: {e}", r.server));
            return a;
        }
        Some(Ok(f)) => f,
    };
    if let Some(e) = &facts.docker_error {
        a.message = Some(format!("docker on {}: {e}", r.server));
        return a;
    }
    let mut health_reason = None;
    match facts.containers.get(&r.container) {
        None => {
            a.health = Health::Missing;
            a.drift.push(Drift::Missing {
                container: r.container.clone(),
            });
        }
        Some(c) => {
            a.started = c.started_at.as_deref().and_then(docker_time);
            a.restart_count = Some(c.restart_count);
            let (h, why) = container_health(c);
            a.health = h;
            health_reason = why;
            if !matches!(c.state.as_str(), "running" | "restarting") {
                a.exit_code = Some(c.exit_code);
                a.drift.push(Drift::Stopped {
                    container: c.name.clone(),
                    state: c.state.clone(),
                    exit_code: c.exit_code,
                });
            }
            let digests = c.digests(&facts.images);
            if !r.digest.is_empty() && !digests.iter().any(|d| d == &r.digest) {
                let running = digests
                    .first()
                    .cloned()
                    .unwrap_or_else(|| c.image_id.clone());
                a.running_digest = Some(running.clone());
                a.drift.push(Drift::Digest {
                    container: c.name.clone(),
                    applied: r.digest.clone(),
                    running,
                });
            }
        }
    }
    for (path, w) in &r.files {
        let found = facts.files.get(path);
        if found != Some(&w.sha256) {
            // Files readable only by their owner hold secrets: their hashes are not shown.
            let secret = w.mode & 0o077 == 0;
            a.drift.push(Drift::File {
                path: path.clone(),
                written: (!secret).then(|| w.sha256.clone()),
                found: found.map(|h| if secret { String::new() } else { h.clone() }),
            });
        }
    }
    a.sync = if a.drift.is_empty() {
        SyncState::Synced
    } else {
        SyncState::OutOfSync
    };
    a.message = health_reason.or_else(|| a.drift.first().map(drift_message));
    a
}

/// The one-line reason of a drift, as a replica's message.
fn drift_message(d: &Drift) -> String {
    match d {
        Drift::Missing { .. } => "container missing".to_string(),
        Drift::Digest {
            applied, running, ..
        } => format!("runs {running}, applied {applied}"),
        other => other.to_string(),
    }
}

/// A container's health and, when not healthy, why.
fn container_health(c: &ContainerFacts) -> (Health, Option<String>) {
    match c.state.as_str() {
        "running" => match c.health.as_deref() {
            Some("unhealthy") => (Health::Degraded, Some("health check failing".into())),
            Some("starting") => (Health::Progressing, Some("health check starting".into())),
            _ => (Health::Healthy, None),
        },
        "restarting" => (
            Health::Degraded,
            Some(format!(
                "container restarting (exit code {}, {} restarts)",
                c.exit_code, c.restart_count
            )),
        ),
        "exited" | "dead" => (
            Health::Degraded,
            Some(if c.oom_killed {
                format!("container {} ({}, out of memory)", c.state, c.exit_code)
            } else {
                format!("container {} ({})", c.state, c.exit_code)
            }),
        ),
        "created" => (
            Health::Degraded,
            Some("container created, never started".into()),
        ),
        other => (Health::Degraded, Some(format!("container {other}"))),
    }
}

/// Replica dir helper re-exported for callers that build `Expected` by hand (benches).
pub fn app_replica_dir(
    root: &str,
    app: &str,
    env: &str,
    service: &str,
    r: &AppliedReplica,
) -> String {
    crate::plan::applied_replica_dir(root, app, env, service, r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{
        AppliedAppService, AppliedEnvironment, AppliedImage, AppliedSharedReplica,
        AppliedSharedService,
    };

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn applied() -> Applied {
        let mut a = Applied::default();
        let replica = |index: u32, server: &str| AppliedReplica {
            index,
            server: server.into(),
            slot: "blue".into(),
            container: format!("keystone-shop_production_web-{index}-blue"),
            project: format!("keystone-shop_production_web-{index}-blue"),
            host_port: Some(8000 + index as u16),
            digest: D1.into(),
            env_fingerprint: None,
        };
        a.environments.insert(
            "shop/production".into(),
            AppliedEnvironment {
                config_commit: "c1".into(),
                image: Some(AppliedImage {
                    repository: "10.77.0.1:5000/acme/shop".into(),
                    digest: D1.into(),
                }),
                services: [(
                    "web".to_string(),
                    AppliedAppService {
                        driver: "laravel".into(),
                        replicas: vec![replica(1, "web-1"), replica(2, "web-2")],
                    },
                )]
                .into(),
                ..Default::default()
            },
        );
        a.services.insert(
            "main-postgres".into(),
            AppliedSharedService {
                driver: "postgres18".into(),
                image: "10.77.0.1:5000/standin/postgres:18".into(),
                digest: Some(D2.into()),
                replicas: vec![AppliedSharedReplica {
                    server: "db-1".into(),
                    container: "keystone-main-postgres".into(),
                    digest: D2.into(),
                }],
                volumes: vec![],
            },
        );
        a
    }

    fn running(name: &str, digest: &str) -> ContainerFacts {
        ContainerFacts {
            name: name.into(),
            state: "running".into(),
            health: Some("healthy".into()),
            exit_code: 0,
            restart_count: 0,
            image_id: "sha256:feed".into(),
            config_image: format!("10.77.0.1:5000/acme/shop@{digest}"),
            started_at: Some("2026-12-03T17:42:05.5Z".into()),
            labels: [(REPLICA_LABEL.to_string(), name.to_string())].into(),
            oom_killed: false,
        }
    }

    fn facts(containers: Vec<ContainerFacts>) -> ServerFacts {
        ServerFacts {
            docker_version: Some("20.10.24".into()),
            docker_root: Some("/var/lib/docker".into()),
            disk_free_bytes: Some(10 << 30),
            containers: containers
                .into_iter()
                .map(|c| (c.name.clone(), c))
                .collect(),
            ..Default::default()
        }
    }

    fn written() -> WrittenFiles {
        let dir = "/home/keystone/services/shop_production_web-1-blue";
        [
            (
                ("web-1".to_string(), format!("{dir}/compose.yml")),
                WrittenFile {
                    sha256: "aa".repeat(32),
                    mode: 0o644,
                },
            ),
            (
                ("web-1".to_string(), format!("{dir}/.env")),
                WrittenFile {
                    sha256: "bb".repeat(32),
                    mode: 0o600,
                },
            ),
            // A deploy key of an operation: not a replica file, never checked.
            (
                (
                    "web-1".to_string(),
                    "/home/keystone/operations/x/deploy_key".to_string(),
                ),
                WrittenFile {
                    sha256: "cc".repeat(32),
                    mode: 0o600,
                },
            ),
        ]
        .into()
    }

    fn by_label<'a>(a: &'a Assessment, label: &str) -> &'a ReplicaAssessment {
        a.replicas
            .iter()
            .find(|r| r.expected.label() == label)
            .unwrap()
    }

    #[test]
    fn expected_files_are_those_in_replica_directories() {
        let e = Expected::from_applied(&applied(), &written(), "/home/keystone/");
        let files = e.files_by_server();
        assert_eq!(
            files["web-1"],
            [
                "/home/keystone/services/shop_production_web-1-blue/.env",
                "/home/keystone/services/shop_production_web-1-blue/compose.yml"
            ]
        );
        assert_eq!(files["web-2"], Vec::<String>::new());
        assert_eq!(
            e.servers().into_iter().collect::<Vec<_>>(),
            ["db-1", "web-1", "web-2"]
        );
    }

    fn healthy_probes() -> BTreeMap<String, ServerProbe> {
        let mut web1 = facts(vec![running("keystone-shop_production_web-1-blue", D1)]);
        let dir = "/home/keystone/services/shop_production_web-1-blue";
        web1.files
            .insert(format!("{dir}/compose.yml"), "aa".repeat(32));
        web1.files.insert(format!("{dir}/.env"), "bb".repeat(32));
        let mut pg = running("keystone-main-postgres", D2);
        pg.health = None;
        [
            ("web-1".to_string(), Ok(web1)),
            (
                "web-2".to_string(),
                Ok(facts(vec![running(
                    "keystone-shop_production_web-2-blue",
                    D1,
                )])),
            ),
            ("db-1".to_string(), Ok(facts(vec![pg]))),
        ]
        .into()
    }

    #[test]
    fn everything_as_applied_is_healthy_and_synced() {
        let e = Expected::from_applied(&applied(), &written(), "/home/keystone");
        let a = assess(&e, &healthy_probes());
        for r in &a.replicas {
            assert_eq!(
                (r.health, r.sync, &r.drift),
                (Health::Healthy, SyncState::Synced, &vec![]),
                "{r:?}"
            );
            assert_eq!(r.started, Some(Timestamp(1_796_319_725)));
        }
        assert!(
            a.servers
                .values()
                .all(|s| s.reachable && s.orphans.is_empty())
        );
        assert_eq!(
            a.servers["web-1"].docker_version.as_deref(),
            Some("20.10.24")
        );
    }

    #[test]
    fn a_killed_container_is_degraded_with_its_exit_code() {
        let e = Expected::from_applied(&applied(), &written(), "/home/keystone");
        let mut p = healthy_probes();
        if let Ok(f) = p.get_mut("web-2").unwrap() {
            let c = f.containers.values_mut().next().unwrap();
            c.state = "exited".into();
            c.exit_code = 137;
            c.health = Some("unhealthy".into());
        }
        let a = assess(&e, &p);
        let r = by_label(&a, "web#2");
        assert_eq!(r.health, Health::Degraded);
        assert_eq!(r.sync, SyncState::OutOfSync);
        assert_eq!(r.exit_code, Some(137));
        assert_eq!(r.message.as_deref(), Some("container exited (137)"));
        assert_eq!(
            r.drift,
            [Drift::Stopped {
                container: "keystone-shop_production_web-2-blue".into(),
                state: "exited".into(),
                exit_code: 137
            }]
        );
        assert_eq!(
            a.drifted("shop/production"),
            [(("web".to_string(), 2), "container exited (137)".to_string())].into()
        );
        assert_eq!(by_label(&a, "web#1").health, Health::Healthy);
    }

    #[test]
    fn another_image_names_both_digests() {
        let e = Expected::from_applied(&applied(), &written(), "/home/keystone");
        let mut p = healthy_probes();
        if let Ok(f) = p.get_mut("web-1").unwrap() {
            let c = f.containers.values_mut().next().unwrap();
            c.config_image = "10.77.0.1:5000/standin/base:1".into();
            c.image_id = "sha256:beef".into();
            f.images.insert(
                "sha256:beef".into(),
                vec![format!("10.77.0.1:5000/standin/base@{D2}")],
            );
        }
        let a = assess(&e, &p);
        let r = by_label(&a, "web#1");
        assert_eq!((r.health, r.sync), (Health::Healthy, SyncState::OutOfSync));
        assert_eq!(r.running_digest.as_deref(), Some(D2));
        assert_eq!(
            r.message.as_deref(),
            Some(format!("runs {D2}, applied {D1}").as_str())
        );
    }

    #[test]
    fn changed_and_missing_files_say_which_without_secret_hashes() {
        let e = Expected::from_applied(&applied(), &written(), "/home/keystone");
        let mut p = healthy_probes();
        let dir = "/home/keystone/services/shop_production_web-1-blue";
        if let Ok(f) = p.get_mut("web-1").unwrap() {
            f.files
                .insert(format!("{dir}/compose.yml"), "dd".repeat(32));
            f.files.insert(format!("{dir}/.env"), "ee".repeat(32));
        }
        let a = assess(&e, &p);
        let r = by_label(&a, "web#1");
        let texts: Vec<String> = r.drift.iter().map(|d| d.to_string()).collect();
        assert_eq!(
            texts,
            [
                format!("file {dir}/.env changed since Keystone wrote it"),
                format!(
                    "file {dir}/compose.yml changed (sha256 dddddddddddd…, written aaaaaaaaaaaa…)"
                ),
            ]
        );
        assert!(
            !texts
                .iter()
                .any(|t| t.contains("eeee") || t.contains("bbbb"))
        );
        if let Ok(f) = p.get_mut("web-1").unwrap() {
            f.files.clear();
        }
        let a = assess(&e, &p);
        let texts: Vec<String> = by_label(&a, "web#1")
            .drift
            .iter()
            .map(|d| d.to_string())
            .collect();
        assert_eq!(
            texts,
            [
                format!("file {dir}/.env is missing"),
                format!("file {dir}/compose.yml is missing")
            ]
        );
    }

    #[test]
    fn unreachable_servers_make_their_replicas_unknown_and_orphans_are_found() {
        let e = Expected::from_applied(&applied(), &written(), "/home/keystone");
        let mut p = healthy_probes();
        p.insert("web-2".into(), Err("connect timed out".into()));
        if let Ok(f) = p.get_mut("db-1").unwrap() {
            let mut o = running("keystone-old-web-9", D1);
            o.labels
                .insert(ENVIRONMENT_LABEL.into(), "shop/gone".into());
            o.state = "exited".into();
            f.containers.insert(o.name.clone(), o);
        }
        let a = assess(&e, &p);
        let r = by_label(&a, "web#2");
        assert_eq!((r.health, r.sync), (Health::Unknown, SyncState::Unknown));
        assert_eq!(
            r.message.as_deref(),
            Some("web-2 unreachable: connect timed out")
        );
        assert!(!a.servers["web-2"].reachable);
        assert_eq!(by_label(&a, "web#1").health, Health::Healthy);
        assert_eq!(
            a.servers["db-1"]
                .orphans
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>(),
            [
                "orphan container keystone-old-web-9 (exited, keystone.replica=keystone-old-web-9, keystone.environment=shop/gone) that no applied plan knows"
            ]
        );
        let missing = {
            let mut p = healthy_probes();
            if let Ok(f) = p.get_mut("db-1").unwrap() {
                f.containers.clear();
            }
            assess(&e, &p)
        };
        let pg = by_label(&missing, "main-postgres");
        assert_eq!(
            (pg.health, pg.sync),
            (Health::Missing, SyncState::OutOfSync)
        );
        assert_eq!(pg.message.as_deref(), Some("container missing"));
        assert!(
            missing.drifted("shop/production").is_empty(),
            "shared services are never healed"
        );
    }
}

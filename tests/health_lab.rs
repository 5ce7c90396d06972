//! Health and drift on the real lab (issue 10): the probe over real ssh and Docker, and the daemon
//! keeping the status branch true between deploys — a killed replica, self-heal, a replica
//! replaced by hand, an orphan container, a host cut off and restored, quiet rounds that add no
//! commit. Every test here changes lab hosts, so each holds the lab's deploy lock throughout.

mod deploy_lab;
mod engine_lab;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deploy_lab::{Deployment, ROOT, lab_env, lab_script, lock, reset_hosts, ssh_ok};
use keystone::execute::{Redactor, SshSettings, Transports};
use keystone::health::{self, Expected, Prober, WrittenFile};
use keystone::plan::{
    Applied, AppliedAppService, AppliedEnvironment, AppliedImage, AppliedReplica,
};
use keystone::status::{EnvironmentStatus, Health, ServerStatus, SyncState};

fn docker_run(host: &str, args: &str) -> String {
    ssh_ok(host, &format!("docker run {args}"))
        .trim()
        .to_string()
}

fn base_image() -> (String, String) {
    let env = lab_env();
    (
        env["images"]["base"]["pinned"]
            .as_str()
            .unwrap()
            .to_string(),
        env["images"]["base"]["digest"]
            .as_str()
            .unwrap()
            .to_string(),
    )
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// One round of the real probe over the four lab hosts and a server that does not answer:
/// every fact it reports is checked against what Docker says on the host.
#[tokio::test(flavor = "multi_thread")]
async fn one_probe_round_over_the_lab_hosts() {
    let _lab = lock();
    let lab = engine_lab::lab();
    reset_hosts();
    let (image, digest) = base_image();
    // probe/test web#1 on web-1 exits with 3; web#2 on web-2 runs; an orphan on web-1.
    let labels =
        |r: &str| format!("--label keystone.replica={r} --label keystone.environment=probe/test");
    docker_run(
        "web-1",
        &format!(
            "-d --name keystone-probe_test_web-1-blue {} {image} sh -c 'exit 3' && docker wait keystone-probe_test_web-1-blue",
            labels("probe/test/web#1")
        ),
    );
    docker_run(
        "web-2",
        &format!(
            "-d --name keystone-probe_test_web-2-blue {} {image} sleep 600",
            labels("probe/test/web#2")
        ),
    );
    docker_run(
        "web-1",
        &format!(
            "-d --name keystone-probe-orphan {} {image} sleep 600",
            labels("probe/test/web#9")
        ),
    );
    let dir1 = "/home/keystone/services/probe_test_web-1-blue";
    let dir2 = "/home/keystone/services/probe_test_web-2-blue";
    ssh_ok(
        "web-1",
        &format!("mkdir -p {dir1} && printf 'name: x\\n' > {dir1}/compose.yml"),
    );
    ssh_ok(
        "web-2",
        &format!("mkdir -p {dir2} && printf 'A=1\\n' > {dir2}/.env"),
    );

    let replica = |index: u32, server: &str| AppliedReplica {
        index,
        server: server.into(),
        slot: "blue".into(),
        container: format!("keystone-probe_test_web-{index}-blue"),
        project: format!("keystone-probe_test_web-{index}-blue"),
        host_port: None,
        digest: digest.clone(),
        env_fingerprint: None,
    };
    let mut applied = Applied::default();
    applied.environments.insert(
        "probe/test".into(),
        AppliedEnvironment {
            config_commit: "c".into(),
            image: Some(AppliedImage {
                repository: "10.77.0.1:5000/standin/base".into(),
                digest: digest.clone(),
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
    let written: health::WrittenFiles = [
        (
            ("web-1".to_string(), format!("{dir1}/compose.yml")),
            WrittenFile {
                sha256: sha256_hex(b"name: x\n"),
                mode: 0o644,
            },
        ),
        (
            ("web-2".to_string(), format!("{dir2}/.env")),
            WrittenFile {
                sha256: sha256_hex(b"A=2\n"),
                mode: 0o600,
            },
        ),
    ]
    .into();
    let expected = Expected::from_applied(&applied, &written, "/home/keystone");

    let mut servers: Vec<_> = ["build-1", "web-1", "web-2", "db-1"]
        .iter()
        .map(|h| lab.server(h))
        .collect();
    servers.push(engine_lab::unreachable_server("gone-1"));
    let names: Vec<String> = servers.iter().map(|s| s.name.clone()).collect();
    let work = tempfile::tempdir().unwrap();
    let transport = Arc::new(Transports::new(
        servers,
        SshSettings::new(work.path(), &lab.client_key),
    ));
    let prober = Prober::new(transport, Redactor::new());
    let timeout = Duration::from_secs(3);
    let round = prober
        .round(&names, &expected.files_by_server(), timeout)
        .await;
    eprintln!("[health] first round (connecting) took {:.0?}", round.took);
    assert!(
        round.took < timeout + Duration::from_secs(1),
        "{:?}",
        round.took
    );
    let a = health::assess(&expected, &round.servers);

    for h in ["build-1", "web-1", "web-2", "db-1"] {
        let s = &a.servers[h];
        let version = ssh_ok(h, "docker version --format '{{.Server.Version}}'");
        assert!(s.reachable, "{h}: {s:?}");
        assert_eq!(s.docker_version.as_deref(), Some(version.trim()), "{h}");
        let free: u64 = ssh_ok(
            h,
            "df -Pk \"$(docker info --format '{{.DockerRootDir}}')\" | awk 'NR==2 {print $4}'",
        )
        .trim()
        .parse()
        .unwrap();
        let probed = s.disk_free_bytes.unwrap() / 1024;
        assert!(
            probed.abs_diff(free) < 64 * 1024,
            "{h}: free {free} KiB, probed {probed} KiB"
        );
    }
    let gone = &a.servers["gone-1"];
    assert!(!gone.reachable);
    assert!(
        gone.error
            .as_deref()
            .unwrap()
            .contains("cannot connect to gone-1"),
        "{gone:?}"
    );

    let web1 = a.replicas.iter().find(|r| r.expected.index == 1).unwrap();
    assert_eq!(
        (web1.health, web1.sync),
        (Health::Degraded, SyncState::OutOfSync)
    );
    assert_eq!(web1.exit_code, Some(3));
    assert_eq!(web1.message.as_deref(), Some("container exited (3)"));
    assert_eq!(web1.running_digest, None, "it runs the applied digest");
    let web2 = a.replicas.iter().find(|r| r.expected.index == 2).unwrap();
    assert_eq!(
        (web2.health, web2.sync),
        (Health::Healthy, SyncState::OutOfSync)
    );
    assert_eq!(
        web2.drift.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
        [format!("file {dir2}/.env changed since Keystone wrote it")]
    );
    assert_eq!(web2.restart_count, Some(0));
    assert!(web2.started.is_some());
    assert_eq!(
        a.servers["web-1"]
            .orphans
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>(),
        [
            "orphan container keystone-probe-orphan (running, keystone.replica=probe/test/web#9, keystone.environment=probe/test) that no applied plan knows"
        ]
    );
    assert!(a.servers["web-2"].orphans.is_empty());

    // Warm rounds over the kept connections.
    let mut took = Vec::new();
    for _ in 0..5 {
        let r = prober
            .round(&names[..4], &expected.files_by_server(), timeout)
            .await;
        assert!(r.servers.values().all(|s| s.is_ok()), "{:?}", r.servers);
        took.push(r.took);
    }
    eprintln!("[health] warm rounds over 4 hosts: {took:?}");
    reset_hosts();
}

// ---- the daemon on the lab ----------------------------------------------------------------------

/// The probe interval of the test config (keystone.yaml `health.interval`). Each server gets
/// 0.8 of it to answer; at 2 s (1.6 s) a lab host on this shared 2-core machine sometimes misses
/// that under load and is reported unreachable for a round, so the test probes every 4 s.
const INTERVAL: Duration = Duration::from_secs(4);
/// Time for the status commit to land and this test to see it, on top of the issue's "within two
/// probe intervals" (the test polls the branch every 200 ms).
const SLACK: Duration = Duration::from_secs(2);

/// Kills the daemon when the test ends, however it ends.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A host cut off from the lab; restored when dropped, however the test ends.
struct Cut(&'static str);

impl Cut {
    fn new(host: &'static str) -> Cut {
        let out = Command::new(lab_script())
            .args(["cut", host])
            .output()
            .expect("scripts/lab cut");
        assert!(
            out.status.success(),
            "scripts/lab cut {host}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Cut(host)
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        let out = Command::new(lab_script())
            .args(["restore", self.0])
            .output();
        if !out.is_ok_and(|o| o.status.success()) {
            eprintln!("[health] scripts/lab restore {} failed", self.0);
        }
    }
}

fn git_out(repo: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(repo)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn branch_file(repo: &Path, path: &str) -> Option<String> {
    git_out(repo, &["show", &format!("keystone/status:{path}")])
}

fn env_status(repo: &Path, env: &str) -> Option<EnvironmentStatus> {
    serde_saphyr::from_str(&branch_file(repo, &format!("environments/{env}.yaml"))?).ok()
}

#[derive(serde::Deserialize)]
struct ServerFile {
    #[allow(dead_code)]
    name: String,
    #[serde(flatten)]
    status: ServerStatus,
}

fn server_status(repo: &Path, name: &str) -> Option<ServerStatus> {
    serde_saphyr::from_str::<ServerFile>(&branch_file(repo, &format!("servers/{name}.yaml"))?)
        .ok()
        .map(|f| f.status)
}

fn commits(repo: &Path) -> usize {
    git_out(repo, &["rev-list", "--count", "keystone/status"])
        .and_then(|c| c.trim().parse().ok())
        .unwrap_or(0)
}

/// Commit messages of the status branch, newest first.
fn messages(repo: &Path, n: usize) -> Vec<String> {
    git_out(
        repo,
        &[
            "log",
            &format!("-{n}"),
            "--format=%B%x00",
            "keystone/status",
        ],
    )
    .unwrap_or_default()
    .split('\0')
    .map(|m| m.trim().to_string())
    .filter(|m| !m.is_empty())
    .collect()
}

fn metrics(port: u16) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    );
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text
}

fn probe_rounds(port: u16) -> u64 {
    metrics(port)
        .lines()
        .find_map(|l| l.strip_prefix("keystone_probe_rounds_total "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Poll `f` every 200 ms until it answers `Some`, for at most `limit`; the answer and how long it
/// took.
fn within<T>(
    limit: Duration,
    what: &str,
    log: &Path,
    mut f: impl FnMut() -> Option<T>,
) -> (T, Duration) {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return (v, t.elapsed());
        }
        assert!(
            t.elapsed() < limit,
            "{what}: not within {limit:?}\n--- daemon log (tail) ---\n{}",
            tail(log)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

fn replica<'a>(
    env: &'a EnvironmentStatus,
    service: &str,
    index: u32,
) -> &'a keystone::status::ReplicaStatus {
    env.services[service]
        .replicas
        .iter()
        .find(|r| r.index == index)
        .unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The daemon on the example config (health every 4 s, self_heal on staging only) keeps the
/// status branch true: a killed replica, self-heal, a replica replaced by hand, an orphan, a host
/// cut off and restored, and quiet rounds that add no commit.
#[test]
fn the_daemon_keeps_the_status_branch_true_between_deploys() {
    let _lab = lock();
    let env = lab_env();
    reset_hosts();
    let d = Deployment::new();
    d.edit("keystone.yaml", |t| {
        t.replace("health:\n  interval: 30s", "health:\n  interval: 4s")
    });
    d.edit("applications/shop/environments/staging.yaml", |t| {
        format!("{t}\nself_heal: true\n")
    });
    let port = free_port();
    let log = d.dir.path().join("daemon.log");
    let child = Command::new(env!("CARGO_BIN_EXE_keystone"))
        .args(["--log", "keystone=info", "daemon", "--repo"])
        .arg(&d.repo)
        .arg("--state")
        .arg(&d.state)
        .args(["--ssh-key", env["client_key"].as_str().unwrap()])
        .arg("--age-key-file")
        .arg(format!("{ROOT}/examples/config-repo/TEST-ONLY-age-key.txt"))
        .args([
            "--poll-interval",
            "2",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("daemon log"))
        .spawn()
        .expect("start keystone daemon");
    let _daemon = Daemon(child);
    let repo = d.repo.as_path();

    // Deployed by the daemon, then probed: every replica healthy and synced, servers reachable.
    let t = Instant::now();
    let (prod, _) = within(
        Duration::from_secs(15 * 60),
        "both environments deployed and probed healthy",
        &log,
        || {
            let p = env_status(repo, "shop/production")?;
            let s = env_status(repo, "shop/staging")?;
            let all = |e: &EnvironmentStatus| {
                e.last_applied.is_some()
                    && e.health == Health::Healthy
                    && e.sync == SyncState::Synced
                    && e.services
                        .values()
                        .flat_map(|s| &s.replicas)
                        .all(|r| r.started.is_some() && r.restart_count.is_some())
            };
            let probed = ["build-1", "web-1", "web-2", "db-1"]
                .iter()
                .all(|h| server_status(repo, h).is_some_and(|s| s.reachable == Some(true)));
            (all(&p) && all(&s) && probed).then_some(p)
        },
    );
    eprintln!(
        "[health] deployed and probed healthy after {:.0?}",
        t.elapsed()
    );
    let web1 = server_status(repo, "web-1").unwrap();
    assert_eq!(
        web1.docker_version.as_deref(),
        Some(ssh_ok("web-1", "docker version --format '{{.Server.Version}}'").trim())
    );
    assert!(
        web1.last_seen.is_some() && web1.disk_free_bytes.is_some_and(|b| b > 0),
        "{web1:?}"
    );
    let db1 = server_status(repo, "db-1").unwrap();
    assert_eq!(
        db1.services["main-postgres"].health,
        Health::Healthy,
        "{db1:?}"
    );
    assert!(db1.drift.is_empty(), "{db1:?}");

    // Twenty probe rounds with nothing changing: no commit.
    let (c0, r0) = (commits(repo), probe_rounds(port));
    assert!(r0 > 0, "no probe round counted in /metrics");
    within(
        Duration::from_secs(200),
        "twenty more probe rounds",
        &log,
        || (probe_rounds(port) >= r0 + 20).then_some(()),
    );
    assert_eq!(
        commits(repo),
        c0,
        "quiet probe rounds added status commits: {:?}",
        messages(repo, 5)
    );
    let m = metrics(port);
    assert!(
        m.lines().any(|l| l
            == "keystone_environment_health{environment=\"shop/production\",health=\"healthy\"} 1"),
        "{m}"
    );

    // Kill production web#2 (self_heal off): degraded with the exit code, within two intervals,
    // for the replica, the service and the environment; and it stays so.
    let w2 = replica(&prod, "web", 2).container.clone().unwrap();
    assert_eq!(replica(&prod, "web", 2).server, "web-2");
    ssh_ok("web-2", &format!("docker kill {w2}"));
    let (p, took) = within(
        2 * INTERVAL + SLACK,
        "production web#2 degraded",
        &log,
        || {
            env_status(repo, "shop/production")
                .filter(|e| replica(e, "web", 2).health == Health::Degraded)
        },
    );
    eprintln!("[health] killed web#2 reported degraded after {took:.1?}");
    let r = replica(&p, "web", 2);
    assert_eq!(r.exit_code, Some(137));
    assert_eq!(r.message.as_deref(), Some("container exited (137)"));
    assert_eq!(r.sync, SyncState::OutOfSync);
    let last = r.transitions.last().unwrap();
    assert_eq!((last.from, last.to), (Health::Healthy, Health::Degraded));
    assert_eq!(last.reason.as_deref(), Some("container exited (137)"));
    assert_eq!(p.services["web"].health, Health::Degraded);
    assert_eq!(p.health, Health::Degraded);
    assert_eq!(p.sync, SyncState::OutOfSync);
    assert_eq!(
        p.sync_reason.as_deref(),
        Some("drift: web#2 container exited (137)")
    );
    assert_eq!(replica(&p, "web", 1).health, Health::Healthy);
    assert_eq!(p.services["worker"].health, Health::Healthy);
    let msgs = messages(repo, 3);
    assert!(
        msgs.iter().any(
            |m| m.starts_with("status: shop/production web#2 degraded: container exited (137)")
        ),
        "{msgs:#?}"
    );
    let readme = branch_file(repo, "README.md").unwrap();
    assert!(readme.contains("| 🔴 degraded 2/3 |"), "{readme}");
    within(Duration::from_secs(10), "degraded gauge", &log, || {
        metrics(port)
            .lines()
            .any(|l| l == "keystone_environment_health{environment=\"shop/production\",health=\"degraded\"} 1")
            .then_some(())
    });
    std::thread::sleep(4 * INTERVAL);
    assert_eq!(
        ssh_ok(
            "web-2",
            &format!("docker inspect --format '{{{{.State.Status}}}}' {w2}")
        )
        .trim(),
        "exited",
        "without self_heal nothing is re-deployed"
    );
    assert_eq!(
        env_status(repo, "shop/production").unwrap().health,
        Health::Degraded
    );

    // Kill staging web#1 (self_heal on): reported degraded, then re-deployed and healthy again.
    let staging = env_status(repo, "shop/staging").unwrap();
    let s1 = replica(&staging, "web", 1).container.clone().unwrap();
    ssh_ok("web-1", &format!("docker kill {s1}"));
    within(2 * INTERVAL + SLACK, "staging web#1 degraded", &log, || {
        env_status(repo, "shop/staging").filter(|e| replica(e, "web", 1).health == Health::Degraded)
    });
    let (healed, took) = within(Duration::from_secs(300), "staging healed", &log, || {
        env_status(repo, "shop/staging").filter(|e| {
            e.health == Health::Healthy
                && e.sync == SyncState::Synced
                && replica(e, "web", 1).container.as_deref() != Some(s1.as_str())
        })
    });
    eprintln!("[health] staging web#1 healed after {took:.1?}");
    let h = replica(&healed, "web", 1);
    let new = h.container.clone().unwrap();
    assert_eq!(
        ssh_ok(
            "web-1",
            &format!("docker inspect --format '{{{{.State.Status}}}}' {new}")
        )
        .trim(),
        "running"
    );
    let kinds: Vec<(Health, Health)> = h.transitions.iter().map(|t| (t.from, t.to)).collect();
    assert!(
        kinds.ends_with(&[
            (Health::Healthy, Health::Degraded),
            (Health::Degraded, Health::Healthy)
        ]),
        "{kinds:?}"
    );
    assert_eq!(
        healed.last_operation.as_ref().map(|o| o.kind.as_str()),
        Some("heal"),
        "{:?}",
        healed.last_operation
    );
    assert!(
        ssh_ok(
            "web-1",
            &format!("docker ps -a --format '{{{{.Names}}}}' --filter name=^{s1}$")
        )
        .trim()
        .is_empty(),
        "the dead container was removed"
    );

    // Production web#2 replaced by hand with another image: out_of_sync with both digests.
    let (base, base_digest) = base_image();
    let applied_digest = replica(&p, "web", 2).digest.clone().unwrap();
    ssh_ok(
        "web-2",
        &format!(
            "docker rm -f {w2} >/dev/null && docker run -d --name {w2} --label keystone.replica=shop/production/web#2 {base} sleep 600"
        ),
    );
    let (p, _) = within(
        2 * INTERVAL + SLACK,
        "production web#2 running another image",
        &log,
        || {
            env_status(repo, "shop/production")
                .filter(|e| replica(e, "web", 2).running_digest.is_some())
        },
    );
    let r = replica(&p, "web", 2);
    assert_eq!(r.running_digest.as_deref(), Some(base_digest.as_str()));
    assert_eq!(r.digest.as_deref(), Some(applied_digest.as_str()));
    assert_eq!((r.health, r.sync), (Health::Healthy, SyncState::OutOfSync));
    assert_eq!(
        r.message.as_deref(),
        Some(format!("runs {base_digest}, applied {applied_digest}").as_str())
    );

    // An orphan keystone-labelled container on web-1, reported, then gone.
    ssh_ok(
        "web-1",
        &format!(
            "docker run -d --name keystone-health-orphan --label keystone.replica=shop/production/web#7 --label keystone.environment=shop/production {base} sleep 600"
        ),
    );
    let orphan = "orphan container keystone-health-orphan (running, keystone.replica=shop/production/web#7, keystone.environment=shop/production) that no applied plan knows";
    within(2 * INTERVAL + SLACK, "the orphan reported", &log, || {
        server_status(repo, "web-1").filter(|s| s.drift == [orphan])
    });
    assert!(
        branch_file(repo, "README.md")
            .unwrap()
            .contains(&format!("- web-1: {orphan}"))
    );
    ssh_ok("web-1", "docker rm -f keystone-health-orphan >/dev/null");
    within(2 * INTERVAL + SLACK, "the orphan gone", &log, || {
        server_status(repo, "web-1").filter(|s| s.drift.is_empty())
    });

    // web-2 cut off: unreachable and its replicas unknown within two intervals; web-1's replicas
    // untouched; back up: reachable and as before.
    let before = env_status(repo, "shop/production").unwrap();
    let cut = Cut::new("web-2");
    let (s, took) = within(2 * INTERVAL + SLACK, "web-2 unreachable", &log, || {
        server_status(repo, "web-2").filter(|s| s.reachable == Some(false))
    });
    eprintln!(
        "[health] web-2 cut: reported unreachable after {took:.1?} ({:?})",
        s.error
    );
    let p = env_status(repo, "shop/production").unwrap();
    assert_eq!(replica(&p, "web", 2).health, Health::Unknown);
    assert_eq!(replica(&p, "worker", 1).health, Health::Unknown);
    assert_eq!(
        replica(&p, "web", 1),
        replica(&before, "web", 1),
        "web-1's replica unaffected"
    );
    assert_eq!(server_status(repo, "web-1").unwrap().reachable, Some(true));
    let st = env_status(repo, "shop/staging").unwrap();
    assert_eq!((st.health, st.sync), (Health::Healthy, SyncState::Synced));
    // Rounds stay on time while web-2 hangs: web-1 keeps being probed every interval.
    let r0 = probe_rounds(port);
    std::thread::sleep(5 * INTERVAL);
    let r1 = probe_rounds(port);
    assert!(
        r1 >= r0 + 4,
        "{} rounds in {:?} with a host cut off",
        r1 - r0,
        5 * INTERVAL
    );
    drop(cut);
    let (p, took) = within(Duration::from_secs(60), "web-2 recovered", &log, || {
        let reachable = server_status(repo, "web-2")?.reachable == Some(true);
        env_status(repo, "shop/production")
            .filter(|e| reachable && replica(e, "worker", 1).health == Health::Healthy)
    });
    eprintln!("[health] web-2 restored: recovered after {took:.1?}");
    assert_eq!(
        replica(&p, "web", 2).running_digest.as_deref(),
        Some(base_digest.as_str())
    );
    assert!(
        messages(repo, 10)
            .iter()
            .any(|m| m.contains("web-2 reachable again")),
        "{:#?}",
        messages(repo, 10)
    );
    reset_hosts();
}

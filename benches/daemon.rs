//! Daemon figures, printed (no assertions), measured on the real `keystone daemon` binary with
//! the real engine wherever the figure is about the daemon:
//!
//! 1. webhook → first step: a signed GitHub push webhook for a new config commit, until the
//!    daemon's log shows the first step of the deploy starting, with the timeline of its phases
//!    (webhook received → fetch done → commit loaded and planned → operation started → first
//!    step started), each read from the daemon's log;
//! 2. idle daemon RSS: `VmRSS` of the daemon process once it has nothing to do;
//! 3. status commit + push: every status branch write of the daemon that made a commit, as the
//!    daemon logs it (render, redact, commit in the mirror, push to the bare remote); beside it
//!    the `StatusWriter` alone on a synthetic snapshot.
//!
//! `cargo bench --bench daemon` deploys examples/config-repo to the lab (scripts/lab; takes the
//! lab lock; several minutes): the first figure is then the real rollout's first step over ssh.
//! Under `cargo test` (no `--bench` argument) a short run that changes nothing on the lab: the
//! example's host keys are left unpinned, so every deploy stops at its first step (the host key
//! check) — the figure then leaves out the ssh connection.
//!
//! Targets (issue 8): webhook → first step < 500 ms, idle RSS < 40 MB, status commit + push
//! < 200 ms.

#[path = "../tests/deploy_lab/mod.rs"]
mod deploy_lab;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keystone::daemon::webhook::WebhookSecret;
use keystone::status::{
    self, CommitMark, EnvironmentStatus, Health, NodeStatus, OperationNode, OperationRecord,
    Outcome, ReplicaStatus, ServiceStatus, StatusSnapshot, StatusWriter, StepRecord, SyncState,
    Timestamp,
};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const HOOK: &str = "bench-hook-secret";

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=b", "-c", "user.email=b@keystone.invalid"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn figures(v: &mut [Duration]) -> String {
    if v.is_empty() {
        return "no samples".into();
    }
    format!(
        "median {}, p90 {}, max {} (n={})",
        ms(percentile(v, 0.5)),
        ms(percentile(v, 0.9)),
        ms(percentile(v, 1.0)),
        v.len()
    )
}

fn profile() -> &'static str {
    if cfg!(debug_assertions) {
        "debug build"
    } else {
        "optimized build"
    }
}

// ---------------------------------------------------------------------------------------------
// The StatusWriter alone.

fn snapshot(round: u32) -> StatusSnapshot {
    let mut snap = StatusSnapshot {
        config_commit: Some(format!("{round:040x}")),
        updated_at: Some(Timestamp(1_796_319_725 + i64::from(round))),
        ..Default::default()
    };
    for env in ["production", "staging"] {
        let mut e = EnvironmentStatus::new("shop", env);
        e.sync = SyncState::Synced;
        e.last_applied = Some(CommitMark {
            commit: format!("{round:040x}"),
            at: Timestamp(1_796_319_725),
        });
        e.services.insert(
            "web".into(),
            ServiceStatus {
                health: Health::Healthy,
                sync: SyncState::Synced,
                replicas: (1..=3)
                    .map(|i| ReplicaStatus {
                        index: i,
                        server: format!("web-{i}"),
                        container: Some(format!("shop-{env}-web-{i}")),
                        image: Some("10.77.0.1:5000/acme/shop".into()),
                        digest: Some(format!("sha256:{round:064x}")),
                        running_digest: None,
                        health: Health::Healthy,
                        sync: SyncState::Synced,
                        started: Some(Timestamp(1_796_319_725)),
                        restart_count: Some(0),
                        exit_code: None,
                        message: None,
                        transitions: vec![],
                    })
                    .collect(),
            },
        );
        e.roll_up_health();
        snap.environments.insert(e.key(), e);
    }
    snap.operations.push(OperationRecord {
        id: format!("op-{round}"),
        environment: "shop/production".into(),
        kind: "deploy".into(),
        commit: format!("{round:040x}"),
        started: Timestamp(1_796_319_725),
        finished: Some(Timestamp(1_796_319_800)),
        outcome: Outcome::Succeeded,
        error: None,
        tree: Some(OperationNode {
            title: "environment_deploy shop/production".into(),
            status: NodeStatus::Succeeded,
            duration_ms: Some(75_000),
            steps: (0..20)
                .map(|i| StepRecord {
                    name: format!("step {i}"),
                    target: "web-1".into(),
                    status: NodeStatus::Succeeded,
                    duration_ms: Some(100),
                    output: "line of output\n".repeat(50),
                    error: None,
                })
                .collect(),
            children: vec![],
        }),
    });
    snap
}

fn bench_status_writer(rounds: u32) {
    let tmp = tempfile::tempdir().unwrap();
    git(
        tmp.path(),
        &["init", "-q", "--bare", "-b", "main", "remote.git"],
    );
    git(tmp.path(), &["init", "-q", "--bare", "mirror.git"]);
    let mut w = StatusWriter::new(tmp.path().join("mirror.git"), "keystone/status");
    w.remote = Some(tmp.path().join("remote.git").display().to_string());
    let mut times = Vec::new();
    for round in 0..rounds {
        let files = status::render(&snapshot(round));
        let t = Instant::now();
        let out = w
            .write(&files, "status: bench\n", Timestamp(1_796_319_725), &|s| {
                s.to_string()
            })
            .unwrap();
        times.push(t.elapsed());
        assert!(out.pushed);
    }
    println!(
        "status commit + push, StatusWriter alone (synthetic snapshot, local bare remote): {}",
        figures(&mut times)
    );
}

// ---------------------------------------------------------------------------------------------
// The real daemon.

struct Daemon {
    child: Child,
    log: PathBuf,
    api: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(keep) = std::env::var_os("KEYSTONE_BENCH_KEEP_LOG") {
            let _ = std::fs::copy(&self.log, keep);
        }
    }
}

impl Daemon {
    fn start(dir: &Path, remote: &Path, state: &Path, ssh_key: Option<&str>) -> Daemon {
        std::fs::write(dir.join("hook"), HOOK).unwrap();
        let log = dir.join("daemon.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keystone"));
        // A file:// URL: the daemon does not watch it with notify, so only the webhook (not the
        // push itself) tells it about a commit.
        // KEYSTONE_BENCH_DAEMON_LOG=keystone=debug adds the debug lines (secrets and ls-remote
        // times, each ssh connection opened ahead); KEYSTONE_BENCH_KEEP_LOG=FILE keeps the log.
        let filter =
            std::env::var("KEYSTONE_BENCH_DAEMON_LOG").unwrap_or_else(|_| "keystone=info".into());
        cmd.args(["--log", &filter, "daemon", "--repo"])
            .arg(format!("file://{}", remote.display()))
            .arg("--state")
            .arg(state)
            .arg("--age-key-file")
            .arg(format!("{ROOT}/examples/config-repo/TEST-ONLY-age-key.txt"))
            .args(["--listen", "127.0.0.1:0", "--poll-interval", "3600"])
            .arg("--webhook-secret-file")
            .arg(dir.join("hook"));
        if let Some(k) = ssh_key {
            cmd.args(["--ssh-key", k]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start keystone daemon");
        let mut d = Daemon {
            child,
            log,
            api: String::new(),
        };
        d.api = d.wait("the API to listen", Duration::from_secs(30), |log| {
            log.lines()
                .find_map(|l| l.strip_prefix("keystone: listening on "))
                .map(|a| format!("http://{}", a.trim()))
        });
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait<T>(&mut self, what: &str, limit: Duration, mut f: impl FnMut(&str) -> Option<T>) -> T {
        let t = Instant::now();
        loop {
            if let Some(v) = f(&self.log()) {
                return v;
            }
            if let Ok(Some(s)) = self.child.try_wait() {
                panic!(
                    "keystone daemon exited ({s}) waiting for {what}:\n{}",
                    self.log()
                );
            }
            assert!(
                t.elapsed() < limit,
                "no {what} after {limit:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn rss_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// POST a signed GitHub push webhook (plain HTTP/1.1 on loopback); when it was sent.
    fn push_webhook(&self, delivery: &str) -> OffsetDateTime {
        use std::io::{Read, Write};
        let body = r#"{"ref":"refs/heads/main"}"#;
        let sig = format!("sha256={}", WebhookSecret::new(HOOK).sign(body.as_bytes()));
        let addr = self.api.trim_start_matches("http://");
        let mut s = std::net::TcpStream::connect(addr).expect("connect to the daemon");
        let request = format!(
            "POST /webhook HTTP/1.1\r\nHost: {addr}\r\nX-GitHub-Event: push\r\nX-GitHub-Delivery: {delivery}\r\nX-Hub-Signature-256: {sig}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let sent = OffsetDateTime::now_utc();
        s.write_all(request.as_bytes()).expect("send the webhook");
        let mut answer = String::new();
        s.read_to_string(&mut answer).expect("webhook answer");
        assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
        sent
    }
}

/// A log line's timestamp and message (`2026-12-03T21:20:18.084593Z  INFO target: message …`).
fn stamped(line: &str) -> Option<(OffsetDateTime, &str)> {
    let (t, rest) = line.split_once(' ')?;
    Some((OffsetDateTime::parse(t, &Rfc3339).ok()?, rest))
}

/// Every `status branch written … ms=N` of the log.
fn status_writes(log: &str) -> Vec<Duration> {
    log.lines()
        .filter(|l| l.contains("status branch written"))
        .filter_map(|l| {
            let v = l.split(" ms=").nth(1)?.split(' ').next()?;
            Some(Duration::from_millis(v.parse().ok()?))
        })
        .collect()
}

/// The config repository: a work tree pushing to a bare remote the daemon tracks.
struct Config {
    work: PathBuf,
    remote: PathBuf,
}

impl Config {
    fn new(work: PathBuf) -> Config {
        let dir = work.parent().unwrap().to_path_buf();
        if !work.join(".git").exists() {
            git(&work, &["init", "-q", "-b", "main"]);
            git(&work, &["add", "-A"]);
            git(&work, &["commit", "-qm", "example config"]);
        }
        let remote = dir.join("config.git");
        git(
            &dir,
            &[
                "clone",
                "-q",
                "--bare",
                work.to_str().unwrap(),
                "config.git",
            ],
        );
        Config { work, remote }
    }

    /// A new MAIL_FROM for production (replicas restart, no build), pushed.
    fn change(&self, n: u32) -> String {
        let file = self
            .work
            .join("applications/shop/environments/production.yaml");
        let text = std::fs::read_to_string(&file).unwrap();
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with("MAIL_FROM:"))
            .unwrap()
            .to_string();
        std::fs::write(
            &file,
            text.replace(&line, &format!("  MAIL_FROM: noreply+{n}@shop.lab.test")),
        )
        .unwrap();
        git(
            &self.work,
            &["commit", "-qam", &format!("bench change {n}")],
        );
        git(
            &self.work,
            &["push", "-q", self.remote.to_str().unwrap(), "main"],
        );
        git(&self.work, &["rev-parse", "HEAD"])
    }

    fn env(&self, name: &str) -> Option<EnvironmentStatus> {
        let out = Command::new("git")
            .args([
                "show",
                &format!("keystone/status:environments/shop/{name}.yaml"),
            ])
            .current_dir(&self.remote)
            .output()
            .ok()?;
        serde_saphyr::from_str(&String::from_utf8_lossy(&out.stdout)).ok()
    }

    /// Both environments' last deploy attempt is of `commit` and has ended.
    fn attempted(&self, commit: &str) -> bool {
        ["production", "staging"].iter().all(|e| {
            self.env(e)
                .and_then(|e| e.last_attempted)
                .is_some_and(|a| a.commit == commit)
        })
    }

    fn synced(&self, commit: &str) -> bool {
        ["production", "staging"].iter().all(|e| {
            self.env(e).is_some_and(|e| {
                e.sync == SyncState::Synced
                    && e.health == Health::Healthy
                    && e.last_applied.is_some_and(|a| a.commit == commit)
            })
        })
    }
}

fn wait_until(what: &str, limit: Duration, daemon: &mut Daemon, mut f: impl FnMut() -> bool) {
    daemon.wait(what, limit, |_| f().then_some(()));
}

/// The phases of a webhook round, in the order the daemon goes through them, as it logs them:
/// the first line of each at or after the webhook was sent that holds all of its markers. The
/// jobs start right after the `config …` status commit; the `… started` status commit is
/// written beside them (shown after the timeline).
const PHASES: [(&str, &[&str]); 5] = [
    ("webhook received", &["webhook received"]),
    ("fetch done", &[" fetched "]),
    (
        "commit loaded and planned (secrets, ls-remote, plan of every environment)",
        &["commit loaded and planned"],
    ),
    (
        "status commit `config …` written, jobs started",
        &["status branch written", "subject=\"config "],
    ),
    ("first step started", &["step started"]),
];

/// The figures of the webhook rounds, from the daemon's log.
#[derive(Default)]
struct Rounds {
    /// Per phase of `PHASES`: time from the webhook sent.
    phases: [Vec<Duration>; 5],
    /// The `… started` status commit written (beside the job).
    started_commit: Vec<Duration>,
    /// The first step's own duration (`step finished … ms=`): its command over ssh, after the
    /// connection opened ahead of it is up.
    first_step_ms: Vec<Duration>,
    /// The job's own planning (`planned ms=`), on the commit prepared by the load.
    job_planned: Vec<Duration>,
}

impl Rounds {
    /// Wait for this round's log lines, the webhook having been sent at `sent`.
    fn measure(&mut self, daemon: &mut Daemon, sent: OffsetDateTime, limit: Duration) {
        let first = |daemon: &mut Daemon, what: &str, markers: &[&str]| {
            daemon.wait(what, limit, |log| {
                log.lines().find_map(|l| {
                    let (t, rest) = stamped(l)?;
                    let hit = t >= sent && markers.iter().all(|m| rest.contains(m));
                    hit.then(|| (t - sent).unsigned_abs())
                })
            })
        };
        for (i, (what, markers)) in PHASES.iter().enumerate() {
            self.phases[i].push(first(daemon, what, markers));
        }
        self.started_commit.push(first(
            daemon,
            "the `… started` status commit",
            &["status branch written", " started\""],
        ));
        self.first_step_ms
            .push(daemon.wait("the first step to finish", limit, |log| {
                // The `step finished` of the step whose `step started` came first.
                let started = log.lines().find_map(|l| {
                    let (t, rest) = stamped(l)?;
                    (t >= sent && rest.contains("step started")).then_some(rest)
                })?;
                let key = |rest: &str| {
                    let node = rest.split(" node=").nth(1)?.split(" step=").next()?;
                    let step = rest.split(" step=").nth(1)?.split(" attempt=").next()?;
                    Some(format!("{node}|{step}"))
                };
                let want = key(started)?;
                log.lines().find_map(|l| {
                    let (t, rest) = stamped(l)?;
                    if t < sent || !rest.contains("step finished") {
                        return None;
                    }
                    let node = rest.split(" node=").nth(1)?.split(" step=").next()?;
                    let step = rest.split(" step=").nth(1)?.split(" status=").next()?;
                    if format!("{node}|{step}") != want {
                        return None;
                    }
                    let v = rest.split(" ms=").nth(1)?.split(' ').next()?;
                    Some(Duration::from_millis(v.trim().parse().ok()?))
                })
            }));
        self.job_planned
            .push(daemon.wait("a job plan", limit, |log| {
                log.lines().find_map(|l| {
                    let (t, rest) = stamped(l)?;
                    // The job's `planned`, not the load's `commit loaded and planned`.
                    if t < sent || !rest.contains("daemon::engine: planned ") {
                        return None;
                    }
                    let v = rest.split(" ms=").nth(1)?.split(' ').next()?;
                    Some(Duration::from_millis(v.trim().parse().ok()?))
                })
            }));
    }

    fn print(&mut self, daemon: &mut Daemon, what: &str) {
        println!(
            "webhook → first step ({what}, {}): {}  (target < 500 ms)",
            profile(),
            figures(&mut self.phases[4])
        );
        println!("  timeline, from the webhook sent (each: median, p90, max over the rounds):");
        let mut previous = Duration::ZERO;
        for (i, (what, _)) in PHASES.iter().enumerate() {
            let median = percentile(&mut self.phases[i], 0.5);
            println!(
                "    {} (+{}) {what}: {}",
                ms(median),
                ms(median.saturating_sub(previous)),
                figures(&mut self.phases[i])
            );
            previous = median;
        }
        println!(
            "  beside the job: status commit `… started` written: {}",
            figures(&mut self.started_commit)
        );
        println!(
            "  the first step's own duration (its command, after waiting for the ssh connection opened at the plan): {}",
            figures(&mut self.first_step_ms)
        );
        println!(
            "  the job's own planning (its environment's plan on the prepared commit, between the last two): {}",
            figures(&mut self.job_planned)
        );
        std::thread::sleep(Duration::from_secs(5));
        let (rss, peak) = daemon.rss_kib();
        println!(
            "idle daemon RSS ({}, 5 s after its last deploy): {:.1} MiB, peak {:.1} MiB  (target < 40 MB)",
            profile(),
            rss as f64 / 1024.0,
            peak as f64 / 1024.0
        );
        let mut writes = status_writes(&daemon.log());
        println!(
            "status commit + push by the daemon (real snapshots, local bare remote, {}): {}  (target < 200 ms)",
            profile(),
            figures(&mut writes)
        );
        println!("load average while measuring: {}", load_average());
    }
}

/// `/proc/loadavg`'s three averages (the machine is shared with other builds).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Short run: the unpinned example; deploys stop at the host key check of their first step.
fn bench_daemon_unpinned(rounds: u32) {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    let out = Command::new("cp")
        .args(["-r", &format!("{ROOT}/examples/config-repo")])
        .arg(&work)
        .output()
        .unwrap();
    assert!(out.status.success());
    let c = Config::new(work);
    let mut daemon = Daemon::start(tmp.path(), &c.remote, &tmp.path().join("state"), None);
    let c0 = git(&c.work, &["rev-parse", "HEAD"]);
    wait_until(
        "the startup deploys to end",
        Duration::from_secs(120),
        &mut daemon,
        || c.attempted(&c0),
    );
    let mut figures = Rounds::default();
    for n in 1..=rounds {
        let commit = c.change(n);
        let sent = daemon.push_webhook(&format!("bench-{n}"));
        figures.measure(&mut daemon, sent, Duration::from_secs(120));
        wait_until(
            "the deploys to end",
            Duration::from_secs(120),
            &mut daemon,
            || c.attempted(&commit),
        );
    }
    figures.print(
        &mut daemon,
        "unpinned host keys: up to the step that checks them, no ssh session",
    );
}

/// Full run on the lab: real deploys; the first step is a real command over ssh.
fn bench_daemon_lab(rounds: u32) {
    let _lab = deploy_lab::lock();
    let env = deploy_lab::lab_env();
    deploy_lab::reset_hosts();
    let d = deploy_lab::Deployment::new();
    let c = Config::new(d.repo.clone());
    let t = Instant::now();
    let mut daemon = Daemon::start(
        d.dir.path(),
        &c.remote,
        &d.state,
        Some(env["client_key"].as_str().unwrap()),
    );
    let c0 = git(&c.work, &["rev-parse", "HEAD"]);
    wait_until(
        "both environments synced and healthy",
        Duration::from_secs(15 * 60),
        &mut daemon,
        || c.synced(&c0),
    );
    println!(
        "first deploy of examples/config-repo by the daemon (both environments synced and healthy): {:.1?}",
        t.elapsed()
    );
    let mut figures = Rounds::default();
    for n in 1..=rounds {
        let commit = c.change(n);
        let sent = daemon.push_webhook(&format!("bench-{n}"));
        figures.measure(&mut daemon, sent, Duration::from_secs(120));
        wait_until(
            "the change synced and healthy",
            Duration::from_secs(10 * 60),
            &mut daemon,
            || c.synced(&commit),
        );
    }
    figures.print(
        &mut daemon,
        "lab: a MAIL_FROM change restarting 3 replicas, first step over ssh",
    );
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    if full {
        bench_status_writer(30);
        bench_daemon_lab(5);
    } else {
        bench_status_writer(5);
        bench_daemon_unpinned(3);
        println!("(short run; `cargo bench --bench daemon` measures real deploys on the lab)");
    }
}

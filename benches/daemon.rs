//! Daemon figures, printed (no assertions): status commit + push time, webhook → deploy start
//! latency through the daemon loop, and the resident memory of an idle daemon.
//!
//! `cargo bench --bench daemon`. Targets (issue 8): webhook-to-first-step < 500 ms, idle RSS
//! < 40 MB, status commit + push < 200 ms.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keystone::daemon::queue::Job;
use keystone::daemon::runtime::{
    self, BoxFuture, DaemonOptions, Deployer, Deployment, Loaded, PlanComment, Settings,
};
use keystone::daemon::webhook::WebhookSecret;
use keystone::status::{
    self, CommitMark, EnvironmentStatus, Health, NodeStatus, OperationNode, OperationRecord,
    Outcome, ReplicaStatus, ServiceStatus, StatusSnapshot, StatusWriter, StepRecord, SyncState,
    Timestamp,
};
use tokio_util::sync::CancellationToken;

fn git(dir: &Path, args: &[&str]) {
    let ok = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "b")
        .env("GIT_AUTHOR_EMAIL", "b@localhost")
        .env("GIT_COMMITTER_NAME", "b")
        .env("GIT_COMMITTER_EMAIL", "b@localhost")
        .status()
        .expect("git")
        .success();
    assert!(ok, "git {args:?}");
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

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

fn bench_status_writes() {
    let tmp = tempfile::tempdir().unwrap();
    git(
        tmp.path(),
        &["init", "-q", "--bare", "-b", "main", "remote.git"],
    );
    git(tmp.path(), &["init", "-q", "--bare", "mirror.git"]);
    let mut w = StatusWriter::new(tmp.path().join("mirror.git"), "keystone/status");
    w.remote = Some(tmp.path().join("remote.git").display().to_string());
    let mut times = Vec::new();
    for round in 0..30 {
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
        "status commit + push (local bare remote, 30 writes): median {}, p90 {}, max {}  (target < 200 ms)",
        ms(percentile(&mut times, 0.5)),
        ms(percentile(&mut times, 0.9)),
        ms(percentile(&mut times, 1.0))
    );
}

struct Stamp(Mutex<Vec<Instant>>);

struct BenchDeployer(Arc<Stamp>);

impl Deployer for BenchDeployer {
    fn load(&self, _: &Path, _: &str) -> Loaded {
        Loaded {
            settings: Some(Settings::default()),
            environments: BTreeMap::from([("shop/production".to_string(), vec![])]),
            servers: vec!["web-1".into()],
            ..Default::default()
        }
    }
    fn deploy<'a>(
        &'a self,
        _: &'a Path,
        job: &'a Job,
        id: &'a str,
        _: CancellationToken,
    ) -> BoxFuture<'a, Deployment> {
        self.0.0.lock().unwrap().push(Instant::now());
        Box::pin(async move {
            Deployment {
                outcome: Outcome::Succeeded,
                error: None,
                operation: OperationRecord {
                    id: id.into(),
                    environment: job.environment.clone(),
                    kind: "deploy".into(),
                    commit: job.commit.clone(),
                    started: Timestamp::now(),
                    finished: Some(Timestamp::now()),
                    outcome: Outcome::Succeeded,
                    error: None,
                    tree: None,
                },
                services: None,
                deployed_source: None,
            }
        })
    }
    fn plan_comment(&self, _: &Path, _: &str, _: &str, _: u64) -> Result<PlanComment, String> {
        Err("unused".into())
    }
    fn redact(&self, t: &str) -> String {
        t.to_string()
    }
}

fn bench_webhook_latency_and_idle_rss() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        git(tmp.path(), &["init", "-q", "--bare", "-b", "main", "remote.git"]);
        let remote = tmp.path().join("remote.git");
        git(&work, &["init", "-q", "-b", "main"]);
        let commit = |n: u32| {
            std::fs::write(work.join("n"), n.to_string()).unwrap();
            git(&work, &["add", "."]);
            git(&work, &["commit", "-q", "-m", "c"]);
            git(&work, &["push", "-q", remote.to_str().unwrap(), "main"]);
        };
        commit(0);
        let stamps = Arc::new(Stamp(Mutex::new(Vec::new())));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let cancel = CancellationToken::new();
        let before = rss_kib();
        let opts = DaemonOptions {
            repo: remote.display().to_string(),
            state_dir: tmp.path().join("state"),
            listener: Some(listener),
            webhook_secret: Some(WebhookSecret::new("s")),
            ssh_key: None,
            forge: None,
            branch: None,
            poll_interval: Some(Duration::from_secs(3600)),
            watch: false,
        };
        let c = cancel.clone();
        let st = stamps.clone();
        let h = tokio::spawn(async move {
            runtime::run(opts, Arc::new(BenchDeployer(st)), c).await.unwrap()
        });
        while stamps.0.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let client = reqwest::Client::new();
        let body = br#"{"ref":"refs/heads/main"}"#;
        let sig = format!("sha256={}", WebhookSecret::new("s").sign(body));
        let mut times = Vec::new();
        for n in 1..=15u32 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            commit(n);
            let seen = stamps.0.lock().unwrap().len();
            let t = Instant::now();
            client
                .post(format!("{base}/webhook"))
                .header("X-GitHub-Event", "push")
                .header("X-GitHub-Delivery", format!("bench-{n}"))
                .header("X-Hub-Signature-256", &sig)
                .body(body.to_vec())
                .send()
                .await
                .unwrap();
            loop {
                if let Some(at) = stamps.0.lock().unwrap().get(seen) {
                    times.push(at.duration_since(t));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        println!(
            "webhook → deploy start through the loop (fetch, load, queue, status commit): median {}, p90 {}, max {}  (target < 500 ms to the first step; load/plan of a real config add to this)",
            ms(percentile(&mut times, 0.5)),
            ms(percentile(&mut times, 0.9)),
            ms(percentile(&mut times, 1.0))
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        let idle = rss_kib();
        println!(
            "idle daemon RSS (in-process: whole bench process {:.1} MiB, of which {:.1} MiB before the daemon started)  (target < 40 MB)",
            idle as f64 / 1024.0,
            before as f64 / 1024.0
        );
        cancel.cancel();
        h.await.unwrap();
    });
}

fn main() {
    bench_status_writes();
    bench_webhook_latency_and_idle_rss();
}

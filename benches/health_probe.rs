//! Health probe figures, printed (no assertions): one probe round over the four lab hosts with
//! 10 Keystone replicas each (target: under 1 s), and the resident memory of a real
//! `keystone daemon` while it probes them every second (target: under 40 MB).
//!
//! `cargo bench --bench health_probe`; under `cargo test` (no `--bench`) a short run with 2
//! replicas per host. It changes the lab hosts (containers, files), so it holds the lab's deploy
//! lock, and removes what it made.

#[path = "../tests/deploy_lab/mod.rs"]
mod deploy_lab;
#[path = "../tests/engine_lab/mod.rs"]
mod engine_lab;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keystone::execute::{Redactor, SshSettings, Transports};
use keystone::health::{self, Expected, Prober, WrittenFile, WrittenFiles};
use keystone::plan::{
    Applied, AppliedAppService, AppliedEnvironment, AppliedImage, AppliedReplica,
};

const HOSTS: [&str; 4] = ["build-1", "web-1", "web-2", "db-1"];

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

fn git(dir: &std::path::Path, args: &[&str]) {
    let ok = Command::new("git")
        .args(["-c", "user.name=b", "-c", "user.email=b@localhost"])
        .args(args)
        .current_dir(dir)
        .status()
        .expect("git")
        .success();
    assert!(ok, "git {args:?}");
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn metric(port: u16, name: &str) -> Option<f64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (per_host, rounds, rss_secs) = if full { (10, 20, 30) } else { (2, 3, 5) };
    let _lab = deploy_lab::lock();
    let env = deploy_lab::lab_env();
    let lab = engine_lab::lab();
    deploy_lab::reset_hosts();
    let image = env["images"]["base"]["pinned"]
        .as_str()
        .unwrap()
        .to_string();
    let digest = env["images"]["base"]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "health_probe ({} run: {per_host} replicas on each of {} hosts; load average {})",
        if full { "full" } else { "short" },
        HOSTS.len(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );

    // The replicas: running containers with a health check, and their compose.yml and .env.
    let mut replicas = Vec::new();
    let mut written = WrittenFiles::new();
    let compose = b"name: bench\n".to_vec();
    let dotenv = b"A=1\n".to_vec();
    for (h, host) in HOSTS.iter().enumerate() {
        let mut script = String::from("set -e\n");
        for i in 0..per_host {
            let index = (h * per_host + i + 1) as u32;
            let container = format!("keystone-bench_probe_web-{index}-blue");
            let dir = format!("/home/keystone/services/bench_probe_web-{index}-blue");
            script.push_str(&format!(
                "docker run -d --name {container} --label keystone.replica=bench/probe/web#{index} \
                 --label keystone.environment=bench/probe --health-cmd true --health-interval 2s \
                 {image} sleep 3600 >/dev/null\n\
                 mkdir -p {dir} && printf 'name: bench\\n' > {dir}/compose.yml && printf 'A=1\\n' > {dir}/.env && chmod 600 {dir}/.env\n"
            ));
            written.insert(
                (host.to_string(), format!("{dir}/compose.yml")),
                WrittenFile {
                    sha256: sha256_hex(&compose),
                    mode: 0o644,
                },
            );
            written.insert(
                (host.to_string(), format!("{dir}/.env")),
                WrittenFile {
                    sha256: sha256_hex(&dotenv),
                    mode: 0o600,
                },
            );
            replicas.push(AppliedReplica {
                index,
                server: host.to_string(),
                slot: "blue".into(),
                container: container.clone(),
                project: container,
                host_port: None,
                digest: digest.clone(),
                env_fingerprint: None,
            });
        }
        deploy_lab::ssh_ok(host, &script);
    }
    let mut applied = Applied::default();
    applied.environments.insert(
        "bench/probe".into(),
        AppliedEnvironment {
            config_commit: "bench".into(),
            image: Some(AppliedImage {
                repository: "10.77.0.1:5000/standin/base".into(),
                digest: digest.clone(),
            }),
            services: [(
                "web".to_string(),
                AppliedAppService {
                    driver: "laravel".into(),
                    replicas,
                },
            )]
            .into(),
            ..Default::default()
        },
    );
    let expected = Expected::from_applied(&applied, &written, "/home/keystone");
    let files = expected.files_by_server();
    let names: Vec<String> = HOSTS.iter().map(|h| h.to_string()).collect();

    // One round, in process: the prober over the lab's ssh with kept connections.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let servers: Vec<_> = HOSTS.iter().map(|h| lab.server(h)).collect();
    let prober = Prober::new(
        Arc::new(Transports::new(
            servers,
            SshSettings::new(work.path(), &lab.client_key),
        )),
        Redactor::new(),
    );
    let timeout = Duration::from_secs(10);
    let (cold, mut warm, healthy) = rt.block_on(async {
        // Health checks need a moment to report healthy.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let cold = prober.round(&names, &files, timeout).await;
        let mut warm = Vec::new();
        let mut last = None;
        for _ in 0..rounds {
            let r = prober.round(&names, &files, timeout).await;
            warm.push(r.took);
            last = Some(r);
        }
        let a = health::assess(&expected, &last.unwrap().servers);
        let healthy = a
            .replicas
            .iter()
            .filter(|r| r.health == keystone::status::Health::Healthy && r.drift.is_empty())
            .count();
        (cold.took, warm, healthy)
    });
    println!(
        "  probe round, {} replicas on {} hosts: first (connecting) {}; warm over {rounds}: min {} · median {} · p95 {} · max {} (target < 1 s); {healthy}/{} healthy and synced",
        per_host * HOSTS.len(),
        HOSTS.len(),
        ms(cold),
        ms(*warm.iter().min().unwrap()),
        ms(percentile(&mut warm, 0.5)),
        ms(percentile(&mut warm, 0.95)),
        ms(*warm.iter().max().unwrap()),
        per_host * HOSTS.len()
    );

    // The real daemon probing the same hosts every second: its resident memory.
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("config");
    std::fs::create_dir_all(repo.join("servers")).unwrap();
    std::fs::write(
        repo.join("keystone.yaml"),
        "version: 1\nreconcile: {branch: main, interval: 60s}\nhealth: {interval: 1s}\nremote_root: /home/keystone\n",
    )
    .unwrap();
    for h in HOSTS {
        std::fs::copy(
            format!("{}/examples/config-repo/servers/{h}.yaml", deploy_lab::ROOT),
            repo.join(format!("servers/{h}.yaml")),
        )
        .unwrap();
    }
    let pin = Command::new(deploy_lab::lab_script())
        .arg("pin")
        .arg(&repo)
        .output()
        .unwrap();
    assert!(
        pin.status.success(),
        "{}",
        String::from_utf8_lossy(&pin.stderr)
    );
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-qm", "bench config"]);
    let state_dir = dir.path().join("state");
    {
        let state = keystone::state::State::open(&state_dir).unwrap();
        state
            .record_environment("bench/probe", &applied.environments["bench/probe"])
            .unwrap();
        for ((server, path), w) in &written {
            state
                .record_written(server, path, &w.sha256, w.mode)
                .unwrap();
        }
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_keystone"))
        .args(["daemon", "--repo"])
        .arg(&repo)
        .arg("--state")
        .arg(&state_dir)
        .args(["--ssh-key", env["client_key"].as_str().unwrap()])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start keystone daemon");
    let t = Instant::now();
    while metric(port, "keystone_probe_rounds_total").unwrap_or(0.0) < 1.0
        && t.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    let r0 = metric(port, "keystone_probe_rounds_total").unwrap_or(0.0);
    let mut peak = 0;
    let mut samples = Vec::new();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(rss_secs) {
        let kib = rss_kib(child.id());
        peak = peak.max(kib);
        samples.push(kib);
        std::thread::sleep(Duration::from_millis(250));
    }
    let r1 = metric(port, "keystone_probe_rounds_total").unwrap_or(0.0);
    let last = metric(port, "keystone_probe_duration_seconds").unwrap_or(f64::NAN);
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "  keystone daemon probing every 1 s ({} rounds in {rss_secs} s, last round {:.0} ms): RSS peak {:.1} MiB, last {:.1} MiB (target < 40 MB)",
        r1 - r0,
        last * 1000.0,
        peak as f64 / 1024.0,
        *samples.last().unwrap_or(&0) as f64 / 1024.0
    );
    deploy_lab::reset_hosts();
}

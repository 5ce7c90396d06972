//! The deploy end-to-end tests' lab: brings the lab up when it is down, serialises every test
//! that deploys to it (a file lock shared by all test binaries, and a mutex within one), copies
//! examples/config-repo into a git repository with the lab's host keys pinned, runs the real
//! `keystone apply` binary, and looks at the hosts over ssh.
#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");
pub const HOSTS: [&str; 4] = ["build-1", "web-1", "web-2", "db-1"];
pub const LOCK_FILE: &str = "/tmp/keystone-lab-deploy.lock";

pub fn lab_script() -> String {
    format!("{ROOT}/scripts/lab")
}

/// `scripts/lab up` unless `scripts/lab status` says everything is up; then `scripts/lab env`.
pub fn lab_env() -> Value {
    static ENV: OnceLock<Value> = OnceLock::new();
    ENV.get_or_init(|| {
        let status = Command::new(lab_script()).arg("status").output();
        if !status.is_ok_and(|s| s.status.success()) {
            let t = Instant::now();
            let up = Command::new(lab_script())
                .arg("up")
                .output()
                .unwrap_or_else(|e| panic!("cannot run scripts/lab up: {e}"));
            assert!(
                up.status.success(),
                "scripts/lab up failed (run bash scripts/setup.d/30-lab.sh as root; it needs scripts/setup.d/05-peers.sh):\n{}{}",
                String::from_utf8_lossy(&up.stdout),
                String::from_utf8_lossy(&up.stderr)
            );
            eprintln!("[deploy] scripts/lab up took {:.1?}", t.elapsed());
        }
        let out = Command::new(lab_script()).arg("env").output().expect("scripts/lab env");
        assert!(out.status.success(), "scripts/lab env: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("scripts/lab env prints JSON")
    })
    .clone()
}

/// Held by a test for as long as it uses the lab.
pub struct LabLock {
    _file: File,
    _guard: MutexGuard<'static, ()>,
}

pub fn lock() -> LabLock {
    static IN_PROCESS: Mutex<()> = Mutex::new(());
    let guard = IN_PROCESS.lock().unwrap_or_else(|p| p.into_inner());
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK_FILE)
        .expect("open the lab lock file");
    let t = Instant::now();
    file.lock().expect("lock the lab");
    if t.elapsed() > Duration::from_secs(1) {
        eprintln!("[deploy] waited {:.1?} for the lab lock", t.elapsed());
    }
    if let Some(pid) = quickstart_daemon() {
        panic!(
            "the quick start's keystone daemon (pid {pid}) is running against the lab; it would \
             redeploy the hosts under this test. Stop it with `./scripts/quickstart --stop` (or \
             `kill {pid}`) and run the tests again."
        );
    }
    LabLock {
        _file: file,
        _guard: guard,
    }
}

/// The pid of `scripts/quickstart`'s daemon when it is running (its pid file names a live
/// `keystone daemon` process).
pub fn quickstart_daemon() -> Option<u32> {
    let dir = std::env::var("KEYSTONE_QUICKSTART_DIR")
        .unwrap_or_else(|_| "/var/lib/keystone-quickstart".into());
    let pid: u32 = std::fs::read_to_string(Path::new(&dir).join("daemon.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let is_daemon = args.first().is_some_and(|a| a.ends_with(b"keystone"))
        && args.get(1).is_some_and(|a| *a == b"daemon");
    is_daemon.then_some(pid)
}

/// Run a command on a lab host (`scripts/lab ssh`, strict host key checking).
pub fn ssh(host: &str, script: &str) -> std::process::Output {
    Command::new(lab_script())
        .args(["ssh", host, script])
        .output()
        .expect("scripts/lab ssh")
}

/// `ssh`, asserting success; stdout.
pub fn ssh_ok(host: &str, script: &str) -> String {
    let out = ssh(host, script);
    assert!(
        out.status.success(),
        "on {host}: `{script}` failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Remove every Keystone container (`keystone-*`), volume (`keystone_*`) and directory from the
/// lab hosts (a clean start), leaving other tests' containers alone.
pub fn reset_hosts() {
    for h in HOSTS {
        ssh_ok(
            h,
            "ids=$(docker ps -aq --filter name=^keystone-); [ -z \"$ids\" ] || docker rm -f $ids >/dev/null; vols=$(docker volume ls -q --filter name=^keystone_); [ -z \"$vols\" ] || docker volume rm $vols >/dev/null; rm -rf /home/keystone/services /home/keystone/apps /home/keystone/gateway /home/keystone/operations /home/keystone/environments",
        );
    }
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=Keystone Test",
            "-c",
            "user.email=test@keystone.invalid",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A config repository (copy of examples/config-repo, host keys pinned) and a state directory.
pub struct Deployment {
    pub dir: tempfile::TempDir,
    pub repo: PathBuf,
    pub state: PathBuf,
}

impl Deployment {
    pub fn new() -> Deployment {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = dir.path().join("config");
        let out = Command::new("cp")
            .args(["-r", &format!("{ROOT}/examples/config-repo")])
            .arg(&repo)
            .output()
            .expect("cp");
        assert!(out.status.success());
        let pin = Command::new(lab_script())
            .arg("pin")
            .arg(&repo)
            .output()
            .expect("pin");
        assert!(
            pin.status.success(),
            "scripts/lab pin: {}",
            String::from_utf8_lossy(&pin.stderr)
        );
        git(&repo, &["init", "-q", "-b", "main"]);
        git(&repo, &["add", "-A"]);
        git(&repo, &["commit", "-qm", "example config"]);
        let state = dir.path().join("state");
        Deployment { dir, repo, state }
    }

    /// Rewrite a file of the config repository and commit it.
    pub fn edit(&self, file: &str, f: impl FnOnce(String) -> String) {
        let path = self.repo.join(file);
        let text = std::fs::read_to_string(&path).expect("read config file");
        let new = f(text.clone());
        assert_ne!(text, new, "the edit of {file} changed nothing");
        std::fs::write(&path, new).expect("write config file");
        git(&self.repo, &["commit", "-qam", &format!("edit {file}")]);
    }

    /// `keystone <command> --repo … --state …` with the lab's client key and the example's
    /// test-only age key.
    pub fn keystone(&self, command: &str) -> Command {
        let env = lab_env();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keystone"));
        cmd.arg(command)
            .arg("--repo")
            .arg(&self.repo)
            .arg("--state")
            .arg(&self.state)
            .args(["--ssh-key", env["client_key"].as_str().unwrap()])
            .arg("--age-key-file")
            .arg(format!("{ROOT}/examples/config-repo/TEST-ONLY-age-key.txt"));
        cmd
    }

    /// `keystone apply` of the repository's HEAD; (exit code, stdout + stderr).
    pub fn apply(&self) -> (i32, String) {
        let t = Instant::now();
        let out = self.keystone("apply").output().expect("run keystone apply");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "[deploy] keystone apply took {:.1?} (exit {:?})",
            t.elapsed(),
            out.status.code()
        );
        (out.status.code().unwrap_or(-1), text)
    }

    /// The state, opened after `keystone apply` exited (it holds the lock while running).
    pub fn state(&self) -> keystone::state::State {
        keystone::state::State::open(&self.state)
            .expect("open state")
            .with_identity(
                keystone::state::load_identity(Path::new(&format!(
                    "{ROOT}/examples/config-repo/TEST-ONLY-age-key.txt"
                )))
                .expect("age identity"),
            )
    }
}

/// One HTTP/1.1 GET through the gateway on web-1 with the given Host header: (status, body).
pub fn http_get(host_header: &str) -> Result<(u16, String), String> {
    http_get_path(host_header, "/")
}

/// `http_get` of a path (`/?sleep=3` holds the answer 3 s in the example app).
pub fn http_get_path(host_header: &str, path: &str) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(
        &"10.77.0.12:80".parse().unwrap(),
        Duration::from_secs(5),
    )
    .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host_header}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            format!(
                "no HTTP status in {:?}",
                text.chars().take(200).collect::<String>()
            )
        })?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// One request of a `Load`: when it started, its path, and its (status, body) or error.
pub type Sample = (Instant, String, Result<(u16, String), String>);

/// Requests through the gateway from several threads until stopped: every result kept.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Vec<Sample>>>,
    pub started: Instant,
}

impl Load {
    /// `fast` threads sending `GET /`, `slow` threads sending `GET /?sleep=3` (in flight during
    /// a cutover's drain).
    pub fn start(host_header: &str, fast: usize, slow: usize) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut threads = Vec::new();
        for i in 0..fast + slow {
            let stop = stop.clone();
            let host = host_header.to_string();
            let path = if i < fast { "/" } else { "/?sleep=3" };
            threads.push(std::thread::spawn(move || {
                let mut out = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let t = Instant::now();
                    out.push((t, path.to_string(), http_get_path(&host, path)));
                    std::thread::sleep(Duration::from_millis(20));
                }
                out
            }));
        }
        Load {
            stop,
            threads,
            started: Instant::now(),
        }
    }

    /// Stop and return every (start, path, result).
    pub fn finish(self) -> Vec<Sample> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut all: Vec<_> = self
            .threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        all.sort_by_key(|r| r.0);
        all
    }
}

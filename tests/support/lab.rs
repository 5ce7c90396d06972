//! The multi-host test lab (`scripts/lab`, docs/lab.md) as seen by tests.
//!
//! Use it from any test target with
//! ```ignore
//! #[path = "support/lab.rs"]
//! mod lab;
//! let lab = lab::Lab::get(); // brings the lab up once per test binary (`scripts/lab up`)
//! let out = lab.ssh("web-1", "docker ps -q");
//! ```
//! `scripts/lab up` is idempotent and serialised by a flock, so several test binaries may call it
//! at the same time. A lab that cannot come up fails the test with the script's output.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

/// One lab host (`hosts.<name>` of env.json).
#[derive(Debug, Clone)]
pub struct LabHost {
    pub name: String,
    pub address: String,
    pub port: u16,
    pub user: String,
    /// `ssh-ed25519 AAAA…`, the per-run host key to pin.
    pub host_key: String,
    /// `unix:///…/docker.sock`: the host's own engine, reachable from this machine.
    pub docker_host: String,
    pub roles: Vec<String>,
}

/// The app-source git server (`git` of env.json).
#[derive(Debug, Clone)]
pub struct LabGit {
    pub url: String,
    pub branch: String,
    pub commit: String,
    pub host_key: String,
    /// `[10.77.0.1]:2222 ssh-ed25519 AAAA…`
    pub known_hosts_line: String,
    /// The TEST-ONLY deploy key, mode 0600.
    pub deploy_key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Lab {
    pub repo: PathBuf,
    pub state_dir: PathBuf,
    pub client_key: PathBuf,
    /// known_hosts with every lab host and the git server.
    pub known_hosts: PathBuf,
    /// `10.77.0.1:5000`
    pub registry: String,
    pub hosts: Vec<LabHost>,
    pub git: LabGit,
    /// The whole env.json.
    pub env: Value,
}

static LAB: OnceLock<Lab> = OnceLock::new();

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_str()
        .unwrap_or_else(|| panic!("lab env.json: {} is not a string: {cur}", path.join(".")))
}

impl Lab {
    /// The lab, brought up by `scripts/lab up` on first use in this process.
    pub fn get() -> &'static Lab {
        LAB.get_or_init(|| {
            let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
            let out = Command::new(repo.join("scripts/lab"))
                .arg("up")
                .stdin(Stdio::null())
                .output()
                .expect("run scripts/lab up (bash, root)");
            assert!(
                out.status.success(),
                "scripts/lab up failed ({}); run `sudo scripts/setup.d/30-lab.sh` and see docs/lab.md\n\
                 stdout:\n{}\nstderr:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let out = Command::new(repo.join("scripts/lab"))
                .args(["env", "--path"])
                .output()
                .expect("run scripts/lab env");
            assert!(out.status.success(), "scripts/lab env: {}", String::from_utf8_lossy(&out.stderr));
            let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            Lab::from_env_file(&path, repo)
        })
    }

    fn from_env_file(path: &Path, repo: PathBuf) -> Lab {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let env: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()));
        let hosts = env["hosts"]
            .as_object()
            .expect("env.json: hosts")
            .iter()
            .map(|(name, h)| LabHost {
                name: name.clone(),
                address: str_at(h, &["address"]).to_owned(),
                port: h["port"].as_u64().expect("port") as u16,
                user: str_at(h, &["user"]).to_owned(),
                host_key: str_at(h, &["host_key"]).to_owned(),
                docker_host: str_at(h, &["docker_host"]).to_owned(),
                roles: h["roles"]
                    .as_array()
                    .expect("roles")
                    .iter()
                    .map(|r| r.as_str().expect("role").to_owned())
                    .collect(),
            })
            .collect();
        let git = LabGit {
            url: str_at(&env, &["git", "url"]).to_owned(),
            branch: str_at(&env, &["git", "branch"]).to_owned(),
            commit: str_at(&env, &["git", "commit"]).to_owned(),
            host_key: str_at(&env, &["git", "host_key"]).to_owned(),
            known_hosts_line: str_at(&env, &["git", "known_hosts_line"]).to_owned(),
            deploy_key: PathBuf::from(str_at(&env, &["git", "deploy_key"])),
        };
        Lab {
            repo,
            state_dir: PathBuf::from(str_at(&env, &["state_dir"])),
            client_key: PathBuf::from(str_at(&env, &["client_key"])),
            known_hosts: PathBuf::from(str_at(&env, &["known_hosts"])),
            registry: str_at(&env, &["registry"]).to_owned(),
            hosts,
            git,
            env,
        }
    }

    pub fn host(&self, name: &str) -> &LabHost {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no lab host {name:?}"))
    }

    /// `10.77.0.1:5000/standin/<name>:<tag>` of a stand-in image (base, caddy, postgres, valkey).
    pub fn image(&self, name: &str) -> String {
        str_at(&self.env, &["images", name, "ref"]).to_owned()
    }

    /// `repo@sha256:…` of a stand-in image as pushed to the lab registry.
    pub fn image_pinned(&self, name: &str) -> String {
        str_at(&self.env, &["images", name, "pinned"]).to_owned()
    }

    /// The system ssh to `host` as `keystone`, the host key pinned from `known_hosts` (a file)
    /// and checked strictly. Arguments after it are the remote command.
    pub fn ssh_command_with(&self, host: &str, known_hosts: &Path) -> Command {
        let h = self.host(host);
        let mut cmd = Command::new("ssh");
        cmd.arg("-i")
            .arg(&self.client_key)
            .args(["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"])
            .args([
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "GlobalKnownHostsFile=/dev/null",
            ])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
            .args(["-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR"])
            .arg("-p")
            .arg(h.port.to_string())
            .arg(format!("{}@{}", h.user, h.address));
        cmd
    }

    pub fn ssh_command(&self, host: &str) -> Command {
        self.ssh_command_with(host, &self.known_hosts)
    }

    /// Run `script` on `host` over ssh (strict host key); panics unless it exits 0; stdout.
    pub fn ssh(&self, host: &str, script: &str) -> String {
        let out = self.ssh_output(host, script, None);
        assert!(
            out.status.success(),
            "ssh {host} {script:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    /// Run `script` on `host` over ssh with optional stdin; the raw output, whatever the status.
    pub fn ssh_output(&self, host: &str, script: &str, stdin: Option<&[u8]>) -> Output {
        let mut cmd = self.ssh_command(host);
        cmd.arg(script);
        run_with_stdin(cmd, stdin)
    }

    /// The docker CLI of this machine against `host`'s own engine (no ssh): for assertions.
    pub fn docker(&self, host: &str, args: &[&str]) -> Output {
        Command::new("docker")
            .env("DOCKER_HOST", &self.host(host).docker_host)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run docker")
    }
}

fn run_with_stdin(mut cmd: Command, stdin: Option<&[u8]>) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().expect("spawn ssh");
    if let Some(data) = stdin {
        let mut w = child.stdin.take().expect("stdin");
        w.write_all(data).expect("write stdin");
    }
    child.wait_with_output().expect("wait ssh")
}

/// A short random hex string for names that must not collide between runs and test binaries.
pub fn nonce() -> String {
    let mut b = [0u8; 6];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("read /dev/urandom");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A plain HTTP/1.0 request from this machine; (status code, headers, body). Panics on failure.
pub fn http(
    method: &str,
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    try_http(method, addr, path, headers)
        .unwrap_or_else(|e| panic!("{method} http://{addr}{path}: {e}"))
}

/// A plain HTTP/1.0 request; an error when nothing answered with an HTTP response (note that a
/// published Docker port accepts connections before the container listens).
pub fn try_http(
    method: &str,
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, String, String), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(70)))
        .map_err(|e| e.to_string())?;
    let mut req = format!("{method} {path} HTTP/1.0\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("read: {e}"))?;
    let resp = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let code = head
        .strip_prefix("HTTP/")
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {resp:?}"))?;
    Ok((code, head.to_owned(), body.to_owned()))
}

/// Poll until `GET path` on `addr` answers with `code`, for at most `secs` seconds.
pub fn wait_http(secs: u64, addr: &str, path: &str, headers: &[(&str, &str)], code: u16) -> bool {
    wait_until(secs, || {
        try_http("GET", addr, path, headers).is_ok_and(|r| r.0 == code)
    })
}

/// Poll `f` every 200 ms until it returns true or `secs` pass.
pub fn wait_until(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if f() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

//! Facts about the multi-host test lab (scripts/lab), for the engine's real-ssh tests and bench.
//! The lab must be up (scripts/setup.d/30-lab.sh brings it up); without it these tests fail
//! loudly with what to run.
#![allow(dead_code)]

use std::path::PathBuf;

use keystone::model::{Origin, Server, TransportKind};
use serde_json::Value;

pub struct Lab {
    pub env: Value,
    pub client_key: PathBuf,
}

pub fn lab() -> Lab {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/lab");
    let status = std::process::Command::new(script)
        .arg("status")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
    let text = String::from_utf8_lossy(&status.stdout);
    for host in ["build-1", "web-1", "web-2", "db-1"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(host) && l.contains(" up ")),
            "the test lab is not up ({host}):\n{text}\nrun: bash scripts/setup.d/30-lab.sh (as root)"
        );
    }
    let out = std::process::Command::new(script)
        .args(["env"])
        .output()
        .expect("scripts/lab env");
    assert!(
        out.status.success(),
        "scripts/lab env failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let env: Value = serde_json::from_slice(&out.stdout).expect("scripts/lab env prints JSON");
    let client_key = PathBuf::from(env["client_key"].as_str().expect("client_key"));
    Lab { env, client_key }
}

impl Lab {
    /// A lab host as the config would describe it (`servers/<name>.yaml`).
    pub fn server(&self, name: &str) -> Server {
        let h = &self.env["hosts"][name];
        assert!(h.is_object(), "no lab host {name}");
        Server {
            name: name.to_string(),
            origin: Origin {
                file: format!("servers/{name}.yaml"),
                line: 1,
                column: 1,
            },
            host: h["address"].as_str().unwrap().to_string(),
            port: h["port"].as_u64().unwrap() as u16,
            user: h["user"].as_str().unwrap().to_string(),
            host_key: Some(h["host_key"].as_str().unwrap().to_string()),
            roles: h["roles"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap().to_string())
                .collect(),
            transport: TransportKind::Ssh,
        }
    }

    /// The host's home directory of `keystone`, as seen from this machine.
    pub fn home(&self, name: &str) -> PathBuf {
        PathBuf::from(self.env["hosts"][name]["home_dir"].as_str().unwrap())
    }

    pub fn host_key(&self, name: &str) -> String {
        self.env["hosts"][name]["host_key"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

/// A server at 127.0.0.1 on a port nothing listens on.
pub fn unreachable_server(name: &str) -> Server {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    Server {
        name: name.to_string(),
        origin: Origin {
            file: format!("servers/{name}.yaml"),
            line: 1,
            column: 1,
        },
        host: "127.0.0.1".into(),
        port,
        user: "keystone".into(),
        host_key: Some(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExouHFywSSuAAoLZKgMNpR0xKbVPSjpYes9f3h7/rZf"
                .into(),
        ),
        roles: vec![],
        transport: TransportKind::Ssh,
    }
}

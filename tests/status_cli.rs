//! `keystone status` reads the status branch of a real repository and prints it.

use assert_cmd::Command;
use keystone::status::{
    self, EnvironmentStatus, StatusSnapshot, StatusWriter, SyncState, Timestamp,
};

#[test]
fn prints_the_readme_table_and_one_environment() {
    let tmp = tempfile::tempdir().unwrap();
    git2::Repository::init(tmp.path()).unwrap();
    let mut env = EnvironmentStatus::new("shop", "staging");
    env.sync = SyncState::OutOfSync;
    env.sync_reason = Some("deploy failed".into());
    let snap = StatusSnapshot {
        config_commit: Some("e4f5a6b0c1d2".into()),
        updated_at: Some(Timestamp(1_796_319_725)),
        environments: [(env.key(), env)].into(),
        ..Default::default()
    };
    StatusWriter::new(tmp.path(), "keystone/status")
        .write(
            &status::render(&snap),
            "status: x\n",
            Timestamp(1_796_319_725),
            &|s| s.to_string(),
        )
        .unwrap();

    let out = Command::cargo_bin("keystone")
        .unwrap()
        .args(["status", "--repo"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "# Keystone status — updated 2026-12-03 17:42 UTC by commit e4f5a6b

| environment | synced | health | deployed | last operation |
|---|---|---|---|---|
| shop/staging | ⚠️ out_of_sync (deploy failed) | ⚪ unknown | — | — |

Servers: none.

Failed recently: none. Full history: operations/.
"
    );

    let out = Command::cargo_bin("keystone")
        .unwrap()
        .args(["status", "shop/staging", "--repo"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .starts_with("app: shop\nenv: staging\nsync: out_of_sync\n")
    );

    let out = Command::cargo_bin("keystone")
        .unwrap()
        .args(["status", "--branch", "nope", "--repo"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .starts_with("no status branch nope in ")
    );
}

#[test]
fn migrate_without_a_daemon_says_how_to_reach_one() {
    // A closed port on loopback.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::cargo_bin("keystone")
        .unwrap()
        .args(["migrate", "shop/production", "--daemon"])
        .arg(format!("http://127.0.0.1:{port}"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.starts_with(&format!(
            "error: cannot reach the daemon at http://127.0.0.1:{port}/api/migrate: "
        )),
        "{err}"
    );
    assert!(err.ends_with("hint: is `keystone daemon` running? pass its address with --daemon\n"));
    let out = Command::cargo_bin("keystone")
        .unwrap()
        .args(["migrate", "production"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// `keystone retry APP/ENV` posts the environment to the daemon's `/api/retry` and prints what
/// the daemon queued (a one-request HTTP server on loopback stands in for the daemon's API).
#[test]
fn retry_asks_the_daemon_and_prints_what_it_queued() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        // Read the head, then as many body bytes as Content-Length says.
        loop {
            let n = conn.read(&mut buf).unwrap();
            request.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&request);
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if request.len() >= end + 4 + length {
                    break;
                }
            }
        }
        let body = r#"{"queued":"retry of shop/production queued"}"#;
        write!(
            conn,
            "HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        String::from_utf8(request).unwrap()
    });
    let out = Command::cargo_bin("keystone")
        .unwrap()
        .args(["retry", "shop/production", "--daemon"])
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .unwrap();
    let request = server.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "retry of shop/production queued; its log goes to the status branch\n"
    );
    assert!(
        request.starts_with("POST /api/retry HTTP/1.1\r\n"),
        "{request}"
    );
    assert!(
        request.ends_with("\r\n\r\n{\"environment\":\"shop/production\"}"),
        "{request}"
    );
}

#[test]
fn a_directory_that_is_not_a_repository_is_said_so_without_libgit2_codes() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::cargo_bin("keystone")
        .unwrap()
        .args(["status", "--repo"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        format!(
            "error: {0} is not in a git repository (could not find repository at '{0}'): give --repo a clone of the config repository, or the daemon's mirror <state>/config.git\n",
            dir.path().display()
        )
    );
}

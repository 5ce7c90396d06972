//! The status branch writer against real git repositories: a bare remote, the daemon's mirror
//! clone, and a second clone pushing concurrently.

use std::path::Path;
use std::process::Command;

use keystone::status::{
    self, CommitMark, EnvironmentStatus, Health, NodeStatus, OperationNode, OperationRecord,
    Outcome, ReplicaStatus, ServerStatus, ServiceStatus, StatusSnapshot, StatusWriter, StepRecord,
    SyncState, Timestamp,
};

const DAY: i64 = 86_400;
/// 2026-12-03T17:42:05Z
const NOW: Timestamp = Timestamp(1_796_319_725);
const COMMIT: &str = "e4f5a6b0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6";

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@localhost")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@localhost")
        .output()
        .expect("git is installed");
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A bare remote with one commit on `main`, and a mirror clone of it (what the daemon keeps).
fn setup() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let remote = tmp.path().join("remote.git");
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    git(
        tmp.path(),
        &["init", "--bare", "-q", "-b", "main", "remote.git"],
    );
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("keystone.yaml"), "version: 1\n").unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "-q", "-m", "config"]);
    git(&work, &["push", "-q", remote.to_str().unwrap(), "main"]);
    let mirror = tmp.path().join("mirror.git");
    git(
        tmp.path(),
        &[
            "clone",
            "-q",
            "--mirror",
            remote.to_str().unwrap(),
            "mirror.git",
        ],
    );
    (tmp, remote, mirror)
}

fn writer(mirror: &Path, remote: &Path) -> StatusWriter {
    let mut w = StatusWriter::new(mirror, "keystone/status");
    w.remote = Some(remote.to_str().unwrap().to_string());
    w
}

fn no_redaction(s: &str) -> String {
    s.to_string()
}

fn snapshot(health: Health, ops: Vec<OperationRecord>) -> StatusSnapshot {
    let mut env = EnvironmentStatus::new("shop", "production");
    env.sync = SyncState::Synced;
    env.last_applied = Some(CommitMark {
        commit: COMMIT.into(),
        at: NOW,
    });
    env.services.insert(
        "web".into(),
        ServiceStatus {
            health,
            sync: SyncState::Synced,
            replicas: vec![ReplicaStatus {
                index: 1,
                server: "web-1".into(),
                container: Some("shop-production-web-1".into()),
                image: Some("10.77.0.1:5000/acme/shop".into()),
                digest: Some("sha256:aaaa".into()),
                running_digest: None,
                health,
                sync: SyncState::Synced,
                started: Some(NOW),
                restart_count: Some(0),
                exit_code: None,
                message: None,
                transitions: vec![],
            }],
        },
    );
    env.roll_up_health();
    StatusSnapshot {
        config_commit: Some(COMMIT.into()),
        updated_at: Some(NOW),
        environments: [(env.key(), env)].into(),
        servers: [(
            "web-1".to_string(),
            ServerStatus {
                reachable: Some(true),
                docker_version: Some("27.3.1".into()),
                ..Default::default()
            },
        )]
        .into(),
        operations: ops,
    }
}

fn operation(id: &str, started: Timestamp, output: &str) -> OperationRecord {
    OperationRecord {
        id: id.into(),
        environment: "shop/production".into(),
        kind: "deploy".into(),
        commit: COMMIT.into(),
        started,
        finished: Some(Timestamp(started.0 + 30)),
        outcome: Outcome::Succeeded,
        error: None,
        tree: Some(OperationNode {
            title: "environment_deploy shop/production".into(),
            status: NodeStatus::Succeeded,
            duration_ms: Some(30_000),
            steps: vec![StepRecord {
                name: "start".into(),
                target: "web-1".into(),
                status: NodeStatus::Succeeded,
                duration_ms: Some(1_000),
                output: output.into(),
                error: None,
            }],
            children: vec![],
        }),
    }
}

fn tree_files(repo: &Path, rev: &str) -> Vec<String> {
    git(repo, &["ls-tree", "-r", "--name-only", rev])
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn first_write_creates_the_branch_on_the_remote_and_an_unchanged_snapshot_adds_no_commit() {
    let (_tmp, remote, mirror) = setup();
    let w = writer(&mirror, &remote);
    let snap = snapshot(Health::Healthy, vec![operation("op-1", NOW, "started")]);
    let files = status::render(&snap);
    let msg = status::commit_message(
        &status::deploy_subject("shop/production", "deploy", COMMIT, Outcome::Succeeded),
        &[],
    );
    let out = w.write(&files, &msg, NOW, &no_redaction).unwrap();
    assert!(out.pushed);
    assert_eq!(out.attempts, 1);
    let tip = out.commit.clone().expect("a commit");
    assert_eq!(git(&remote, &["rev-parse", "keystone/status"]).trim(), tip);
    assert_eq!(
        tree_files(&remote, "keystone/status"),
        [
            "README.md",
            "environments/shop/production.yaml",
            "operations/2026-12-03/op-1.md",
            "servers/web-1.yaml",
        ]
    );
    assert_eq!(
        git(&remote, &["show", "keystone/status:README.md"]),
        files.files["README.md"]
    );
    assert_eq!(
        git(&remote, &["log", "-1", "--format=%s", "keystone/status"]).trim(),
        "status: shop/production deploy e4f5a6b succeeded"
    );
    // The tracked branch is untouched.
    assert_eq!(
        git(&remote, &["log", "--format=%s", "main"]).trim(),
        "config"
    );

    let again = w
        .write(&files, &msg, Timestamp(NOW.0 + 60), &no_redaction)
        .unwrap();
    assert_eq!(again.commit, None);
    assert!(!again.pushed);
    assert_eq!(again.attempts, 0);
    assert_eq!(again.tip.as_deref(), Some(tip.as_str()));
    assert_eq!(
        git(&remote, &["rev-list", "--count", "keystone/status"]).trim(),
        "1"
    );
}

#[test]
fn a_concurrent_push_is_fetched_and_the_write_is_rebuilt_on_top_of_it() {
    let (tmp, remote, mirror) = setup();
    let w = writer(&mirror, &remote);
    let first = status::render(&snapshot(Health::Healthy, vec![]));
    w.write(&first, "status: first\n", NOW, &no_redaction)
        .unwrap();

    // Someone else pushes to the status branch meanwhile.
    let other = tmp.path().join("other");
    git(
        tmp.path(),
        &[
            "clone",
            "-q",
            "-b",
            "keystone/status",
            remote.to_str().unwrap(),
            "other",
        ],
    );
    std::fs::write(other.join("NOTES.md"), "hand-written\n").unwrap();
    git(&other, &["add", "NOTES.md"]);
    git(&other, &["commit", "-q", "-m", "notes"]);
    git(&other, &["push", "-q", "origin", "keystone/status"]);
    let theirs = git(&other, &["rev-parse", "HEAD"]).trim().to_string();

    let second = status::render(&snapshot(Health::Degraded, vec![]));
    let out = w
        .write(
            &second,
            "status: degraded\n",
            Timestamp(NOW.0 + 5),
            &no_redaction,
        )
        .unwrap();
    assert!(out.pushed);
    assert_eq!(out.attempts, 2, "first push rejected, second after fetch");
    let tip = out.commit.unwrap();
    assert_eq!(git(&remote, &["rev-parse", "keystone/status"]).trim(), tip);
    assert_eq!(
        git(&remote, &["rev-parse", "keystone/status^"]).trim(),
        theirs,
        "rebuilt on the concurrent commit"
    );
    assert_eq!(
        git(&remote, &["show", "keystone/status:NOTES.md"]),
        "hand-written\n"
    );
    assert!(
        git(
            &remote,
            &["show", "keystone/status:environments/shop/production.yaml"]
        )
        .contains("health: degraded")
    );
}

#[test]
fn old_operation_days_are_dropped_and_removed_environments_disappear() {
    let (_tmp, remote, mirror) = setup();
    let mut w = writer(&mirror, &remote);
    w.keep_operations_days = 30;
    let old_day = Timestamp(NOW.0 - 40 * DAY);
    let recent = Timestamp(NOW.0 - 2 * DAY);
    // Both writes happen "40 days ago", when both logs were young.
    w.write(
        &status::render(&snapshot(
            Health::Healthy,
            vec![operation("op-old", old_day, "")],
        )),
        "status: old\n",
        old_day,
        &no_redaction,
    )
    .unwrap();
    w.write(
        &status::render(&snapshot(
            Health::Healthy,
            vec![operation("op-recent", recent, "")],
        )),
        "status: recent\n",
        Timestamp(old_day.0 + DAY),
        &no_redaction,
    )
    .unwrap();
    assert!(
        tree_files(&remote, "keystone/status")
            .contains(&"operations/2026-10-24/op-old.md".to_string())
    );

    // Now: the old day is past the cutoff and goes; an old log handed in again is not re-added;
    // the environment that left the config goes too.
    let mut snap = snapshot(Health::Healthy, vec![operation("op-old", old_day, "")]);
    snap.environments.clear();
    let out = w
        .write(
            &status::render(&snap),
            "status: prune\n",
            NOW,
            &no_redaction,
        )
        .unwrap();
    assert!(out.commit.is_some());
    assert_eq!(
        tree_files(&remote, "keystone/status"),
        [
            "README.md",
            "operations/2026-12-01/op-recent.md",
            "servers/web-1.yaml",
        ]
    );
}

#[test]
fn every_file_passes_through_the_redactor() {
    let (_tmp, remote, mirror) = setup();
    let w = writer(&mirror, &remote);
    let secret = "hunter2-s3cr3t";
    let mut snap = snapshot(
        Health::Healthy,
        vec![operation("op-1", NOW, &format!("password={secret}\n"))],
    );
    snap.environments
        .get_mut("shop/production")
        .unwrap()
        .sync_reason = Some(format!("error mentioning {secret}"));
    let redact = |s: &str| s.replace(secret, "[redacted]");
    w.write(&status::render(&snap), "status: x\n", NOW, &redact)
        .unwrap();
    let mut seen = 0;
    for path in tree_files(&remote, "keystone/status") {
        let text = git(&remote, &["show", &format!("keystone/status:{path}")]);
        assert!(!text.contains(secret), "{path} holds the secret");
        seen += text.matches("[redacted]").count();
    }
    assert!(
        seen >= 2,
        "the redactor ran on the operation log and the env file"
    );
}

#[test]
fn without_a_remote_the_commit_stays_local() {
    let (_tmp, _remote, mirror) = setup();
    let w = StatusWriter::new(&mirror, "keystone/status");
    let out = w
        .write(
            &status::render(&snapshot(Health::Healthy, vec![])),
            "status: local\n",
            NOW,
            &no_redaction,
        )
        .unwrap();
    assert!(!out.pushed);
    let repo = git2::Repository::open(&mirror).unwrap();
    let readme = status::writer::read_file(&repo, "keystone/status", "README.md")
        .unwrap()
        .unwrap();
    assert!(
        readme.starts_with("# Keystone status — updated 2026-12-03 17:42 UTC by commit e4f5a6b")
    );
}

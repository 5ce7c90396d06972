//! `keystone plan` end to end on real config repositories: examples/config-repo (working tree and
//! git commits) and the scenario fixtures under tests/fixtures/plan/ (each a set of files laid
//! over the example and committed on top of it). Outputs are compared with golden files.

mod plan_common;

use plan_common::{copy_dir, git, root};

use std::path::Path;
use std::process::Command;

use assert_cmd::cargo::CommandCargoExt;

/// A git repository: the example at HEAD~1, the scenario's files laid over it at HEAD.
fn scenario_repo(scenario: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&root().join("examples/config-repo"), dir.path());
    git(dir.path(), &["init", "-q", "-b", "main"]);
    git(dir.path(), &["add", "-A"]);
    git(dir.path(), &["commit", "-q", "-m", "base"]);
    let overlay = root().join("tests/fixtures/plan").join(scenario);
    copy_dir(&overlay, dir.path());
    git(dir.path(), &["commit", "-q", "-a", "-m", scenario]);
    dir
}

fn keystone(args: &[&str]) -> (i32, String, String) {
    let out = Command::cargo_bin("keystone")
        .unwrap()
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// Commit ids differ per run only through their content; the golden files name them.
fn normalise(s: &str, repo: &Path) -> String {
    let base = git(repo, &["rev-parse", "HEAD~1"]);
    let head = git(repo, &["rev-parse", "HEAD"]);
    s.replace(&base, "BASE")
        .replace(&head, "HEAD")
        .replace(&base[..7], "BASE")
        .replace(&head[..7], "HEAD")
        .replace(&base[..12], "BASE")
        .replace(&head[..12], "HEAD")
}

#[test]
fn example_repo_working_tree_in_every_format() {
    let repo = root().join("examples/config-repo");
    let repo = repo.to_str().unwrap();
    for (format, file) in [
        ("text", "example-repo.txt"),
        ("json", "example-repo.json"),
        ("markdown", "example-repo.md"),
    ] {
        let (code, out, err) =
            keystone(&["plan", "--repo", repo, "--format", format, "--pr", "42"]);
        assert_eq!(code, 0, "{err}");
        plan_common::golden(file, &out);
    }
}

#[test]
fn pr_view_of_scale_2_to_3() {
    let repo = scenario_repo("scale-2-to-3");
    let p = repo.path().to_str().unwrap();
    let (code, out, err) = keystone(&[
        "plan", "--repo", p, "--base", "HEAD~1", "--head", "HEAD", "--format", "markdown", "--pr",
        "42",
    ]);
    assert_eq!(code, 0, "{err}");
    let out = normalise(&out, repo.path());
    assert!(out.contains("**shop/production**: 1 replica added, 3 replicas restarted (variable change), no build · **shop/staging**: no changes"), "{out}");
    assert!(out.len() < 2048, "{} bytes", out.len());
    plan_common::golden("cli-scale-2-to-3.md", &out);
}

#[test]
fn pr_view_of_removing_a_service() {
    let repo = scenario_repo("remove-service");
    let p = repo.path().to_str().unwrap();
    let (code, out, err) = keystone(&["plan", "--repo", p, "--base", "HEAD~1", "--head", "HEAD"]);
    assert_eq!(code, 0, "{err}");
    plan_common::golden("cli-remove-service.txt", &normalise(&out, repo.path()));
}

#[test]
fn an_invalid_environment_blocks_only_itself_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&root().join("examples/config-repo"), dir.path());
    let staging = dir
        .path()
        .join("applications/shop/environments/staging.yaml");
    let text = std::fs::read_to_string(&staging)
        .unwrap()
        .replacen("replicas:", "replica:", 1);
    std::fs::write(&staging, text).unwrap();
    let (code, out, err) = keystone(&[
        "plan",
        "--repo",
        dir.path().to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_eq!(code, 1, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let envs = v["environments"].as_array().unwrap();
    let by = |name: &str| envs.iter().find(|e| e["env"] == name).unwrap();
    assert_eq!(by("production")["status"], "changed");
    assert_eq!(by("staging")["status"], "blocked");
    let b = &by("staging")["blockers"][0];
    assert_eq!(b["code"], "unknown-key");
    assert!(
        b["location"]
            .as_str()
            .unwrap()
            .starts_with("applications/shop/environments/staging.yaml:"),
        "{b}"
    );
}

#[test]
fn usage_errors_exit_2() {
    let (code, _, err) = keystone(&["plan", "--base", "HEAD"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = keystone(&["plan", "--repo", "/nonexistent/keystone-config"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("/nonexistent/keystone-config"), "{err}");
}

#[test]
fn a_reader_that_goes_away_ends_the_plan_quietly() {
    // `keystone plan | head`: the reader has gone before the plan is written (its end of the
    // pipe is closed), so the write fails with EPIPE; that ends the command quietly.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::cargo_bin("keystone")
        .unwrap()
        .args(["plan", "--repo"])
        .arg(root().join("examples/config-repo"))
        // With the example's test key, so the only stderr there could be is the pipe's error.
        .env(
            "SOPS_AGE_KEY_FILE",
            root().join("examples/config-repo/TEST-ONLY-age-key.txt"),
        )
        .stdout(writer)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    assert_eq!(out.status.code(), Some(0));
}

/// `ssh-keygen -lf` of a one-line public key: `SHA256:…` (the real tool, so the plan's
/// fingerprints are the ones an operator compares on the server).
fn fingerprint(key: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("key.pub");
    std::fs::write(&file, format!("{key}\n")).unwrap();
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string()
}

#[test]
fn pr_view_calls_out_a_changed_host_key() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&root().join("examples/config-repo"), dir.path());
    git(dir.path(), &["init", "-q", "-b", "main"]);
    git(dir.path(), &["add", "-A"]);
    git(dir.path(), &["commit", "-q", "-m", "base"]);
    let old_key =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let new_key =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";
    let file = dir.path().join("servers/web-1.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains(old_key));
    std::fs::write(&file, text.replace(old_key, new_key)).unwrap();
    git(
        dir.path(),
        &["commit", "-q", "-a", "-m", "new host key for web-1"],
    );
    let (old_fp, new_fp) = (fingerprint(old_key), fingerprint(new_key));
    let p = dir.path().to_str().unwrap();

    let (code, out, err) = keystone(&["plan", "--repo", p, "--base", "HEAD~1", "--head", "HEAD"]);
    assert_eq!(code, 0, "{err}");
    let expected = format!(
        "\nservers (how Keystone reaches them; nothing runs for this):\n  \
         ~ server web-1 host_key: ssh-ed25519 {old_fp} → ssh-ed25519 {new_fp}\n  \
         ! web-1: Keystone will only connect if the server presents the new key; check it on the \
         server (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`) before merging\n\n"
    );
    let after_header = out.split_once('\n').unwrap().1;
    assert!(after_header.starts_with(&expected), "{out}");

    let (code, md, err) = keystone(&[
        "plan", "--repo", p, "--base", "HEAD~1", "--head", "HEAD", "--format", "markdown",
    ]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = md.lines().collect();
    assert!(
        lines[2].starts_with("**servers**: web-1 changed · "),
        "{md}"
    );
    assert_eq!(
        lines[3..9].join("\n"),
        format!(
            "\n<details open><summary>servers — connection settings</summary>\n\n```diff\n\
             ~ server web-1 host_key: ssh-ed25519 {old_fp} → ssh-ed25519 {new_fp}\n\
             ! web-1: Keystone will only connect if the server presents the new key; check it on \
             the server (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`) before merging"
        ),
        "{md}"
    );

    // The JSON form carries the change as data.
    let (_, json, _) = keystone(&[
        "plan", "--repo", p, "--base", "HEAD~1", "--head", "HEAD", "--format", "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        v["servers"],
        serde_json::json!([{
            "server": "web-1", "subject": "host_key",
            "from": format!("ssh-ed25519 {old_fp}"), "to": format!("ssh-ed25519 {new_fp}")
        }])
    );
}

#[test]
fn plan_against_a_state_reads_it_beside_its_owner_and_never_creates_one() {
    let repo = root().join("examples/config-repo");
    let repo = repo.to_str().unwrap();
    let (code, without, err) = keystone(&["plan", "--repo", repo]);
    assert_eq!(code, 0, "{err}");

    // A directory with no state: a usage error, and nothing is created there.
    let empty = tempfile::tempdir().unwrap();
    let e = empty.path().to_str().unwrap();
    let (code, out, err) = keystone(&["plan", "--repo", repo, "--state", e]);
    assert_eq!((code, out.as_str()), (2, ""));
    assert_eq!(
        err,
        format!(
            "error: cannot open the state in {e}: {e} holds no Keystone state (no \
             state.sqlite3); give --state the daemon's state directory\n"
        )
    );
    assert_eq!(std::fs::read_dir(empty.path()).unwrap().count(), 0);

    // A state another process holds (as a running daemon does): read without its lock.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let held = keystone::state::State::open(dir.path()).unwrap();
    let (code, with_state, err) = keystone(&["plan", "--repo", repo, "--state", d]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(with_state, without);
    drop(held);
    // And once its owner has closed it.
    let (code, closed, err) = keystone(&["plan", "--repo", repo, "--state", d]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(closed, without);
}

#[test]
fn a_subdirectory_of_a_repository_is_refused_for_commits() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&root().join("examples/config-repo"), dir.path());
    git(dir.path(), &["init", "-q", "-b", "main"]);
    git(dir.path(), &["add", "-A"]);
    git(dir.path(), &["commit", "-q", "-m", "base"]);
    let sub = dir.path().join("servers");
    let (code, out, err) = keystone(&["plan", "--repo", sub.to_str().unwrap(), "--rev", "HEAD"]);
    assert_eq!((code, out.as_str()), (2, ""));
    let top = format!("{}/", dir.path().display());
    assert!(
        err.ends_with(&format!(
            "error: {} is inside the git repository {top} but is not its top directory; a config \
             repository is read from the top of a commit's tree: give --repo {top}\n",
            sub.display()
        )),
        "{err}"
    );
}

//! A pull-request event through the real `keystone daemon` binary and its real engine: the
//! daemon fetches the PR head from a bare remote, computes the plan diff of examples/config-repo
//! (secrets decrypted with the test-only key) and posts it to a stand-in forge API on 127.0.0.1
//! that records every request: one comment, created once, updated in place on the next push,
//! never duplicated; its body is the plan diff and holds no secret value.
//!
//! The example's host keys are not pinned, so the deploys the daemon starts for `main` are refused
//! at the host key check on every server: nothing changes on the lab, no lab lock is needed.

mod forge_standin;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keystone::daemon::webhook::WebhookSecret;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const HOOK_SECRET: &str = "pr-hook-secret";

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@keystone.invalid"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn age_key() -> String {
    format!("{ROOT}/examples/config-repo/TEST-ONLY-age-key.txt")
}

/// `keystone secrets set FILE KEY VALUE` in the work tree.
fn set_secret(work: &Path, file: &str, key: &str, value: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_keystone"))
        .args([
            "secrets",
            "--age-key-file",
            &age_key(),
            "set",
            file,
            key,
            value,
        ])
        .current_dir(work)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "keystone secrets set: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every value of every secret file of `work`, decrypted.
fn secret_values(work: &Path) -> Vec<String> {
    let ids = keystone::secrets::Identities::from_file(Path::new(&age_key())).unwrap();
    let mut values = Vec::new();
    for entry in std::fs::read_dir(work.join("secrets")).unwrap() {
        let path = entry.unwrap().path();
        let doc = keystone::secrets::decrypt_file(
            &path.display().to_string(),
            &std::fs::read(&path).unwrap(),
            keystone::secrets::Format::from_path(&path),
            &ids,
        )
        .unwrap();
        values.extend(doc.encrypted_values().iter().cloned());
    }
    values.retain(|v| v.len() >= keystone::secrets::MIN_REDACTED_LEN);
    values
}

struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

async fn pr_hook(base: &str, delivery: &str, action: &str, head: &str) -> u16 {
    let body = format!(
        r#"{{"action":"{action}","number":7,"pull_request":{{"number":7,"head":{{"sha":"{head}"}},"base":{{"ref":"main"}}}}}}"#
    );
    reqwest::Client::new()
        .post(format!("{base}/webhook/github"))
        .header("X-GitHub-Event", "pull_request")
        .header("X-GitHub-Delivery", delivery)
        .header(
            "X-Hub-Signature-256",
            format!(
                "sha256={}",
                WebhookSecret::new(HOOK_SECRET).sign(body.as_bytes())
            ),
        )
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn wait_for(what: &str, daemon: &Daemon, limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < limit,
            "timed out waiting for {what}; daemon log:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_request_plan_comment_through_the_real_engine() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    let out = Command::new("cp")
        .args(["-r", &format!("{ROOT}/examples/config-repo")])
        .arg(&work)
        .output()
        .unwrap();
    assert!(out.status.success());
    git(&work, &["init", "-q", "-b", "main"]);
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-qm", "example config"]);
    let base = git(&work, &["rev-parse", "HEAD"]);
    git(tmp.path(), &["clone", "-q", "--bare", "work", "config.git"]);
    let remote = tmp.path().join("config.git");
    let old_secrets = secret_values(&work);

    // The pull request: scale web to 3 and change a secret.
    let prod = work.join("applications/shop/environments/production.yaml");
    let text = std::fs::read_to_string(&prod).unwrap();
    std::fs::write(
        &prod,
        text.replace("    replicas: 2\n", "    replicas: 3\n"),
    )
    .unwrap();
    let new_password = "pr-new-mail-password-5f1c9a";
    set_secret(
        &work,
        "secrets/shop-production.sops.yaml",
        "mail_password",
        new_password,
    );
    git(
        &work,
        &["commit", "-qam", "scale web to 3, rotate the mail password"],
    );
    let head1 = git(&work, &["rev-parse", "HEAD"]);
    // What GitHub does for a pull request: the head under refs/pull/N/head.
    git(
        &work,
        &[
            "push",
            "-q",
            remote.to_str().unwrap(),
            "HEAD:refs/pull/7/head",
        ],
    );

    let (forge_base, forge) = forge_standin::start().await;
    std::fs::write(tmp.path().join("token"), "forge-token\n").unwrap();
    std::fs::write(tmp.path().join("hook"), HOOK_SECRET).unwrap();
    let log = tmp.path().join("daemon.log");
    let child = Command::new(env!("CARGO_BIN_EXE_keystone"))
        .args(["--log", "keystone=info", "daemon", "--repo"])
        .arg(&remote)
        .arg("--state")
        .arg(tmp.path().join("state"))
        .args(["--age-key-file", &age_key()])
        .args(["--listen", "127.0.0.1:0", "--poll-interval", "3600"])
        .arg("--webhook-secret-file")
        .arg(tmp.path().join("hook"))
        .args(["--forge", "github", "--forge-api", &forge_base])
        .args(["--forge-repo", "acme/config", "--forge-token-file"])
        .arg(tmp.path().join("token"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let daemon = Daemon { child, log };
    let mut listen = None;
    wait_for(
        "the daemon to listen",
        &daemon,
        Duration::from_secs(30),
        || {
            listen = daemon
                .log()
                .lines()
                .find_map(|l| l.strip_prefix("keystone: listening on "))
                .map(|a| format!("http://{}", a.trim()));
            listen.is_some()
        },
    )
    .await;
    let api = listen.unwrap();

    assert_eq!(pr_hook(&api, "pr-1", "opened", &head1).await, 202);
    let statuses = |n: usize| {
        let forge = forge.clone();
        move || forge.lock().unwrap().statuses.len() >= n
    };
    wait_for(
        "two commit statuses",
        &daemon,
        Duration::from_secs(120),
        statuses(2),
    )
    .await;
    let first = {
        let g = forge.lock().unwrap();
        assert_eq!(g.comments.len(), 1, "{:?}", g.comments);
        let (id, issue, author, body) = g.comments[0].clone();
        assert_eq!((id, issue, author.as_str()), (1001, 7, "keystone-bot"));
        let states: Vec<(&str, &str)> = g
            .statuses
            .iter()
            .map(|(sha, v)| (sha.as_str(), v["state"].as_str().unwrap()))
            .collect();
        assert_eq!(
            states,
            [(head1.as_str(), "pending"), (head1.as_str(), "success")]
        );
        body
    };
    assert!(
        first.starts_with(&format!(
            "<!-- keystone-plan: pr=7 -->\n### Keystone plan for `{}` → `{}`\n",
            &base[..7],
            &head1[..7]
        )),
        "{first}"
    );
    for line in [
        "~ services.web.replicas: 2 → 3",
        "~ variables.MAIL_PASSWORD (secret): (secret) → (secret, changed) (value not shown)",
        "  variables.APP_KEY (secret): unchanged",
        "│  └─ replica_deploy web#3 @web-1   new",
    ] {
        assert!(
            first.lines().any(|l| l == line),
            "no line {line:?} in the comment:\n{first}"
        );
    }
    assert!(first.contains("**shop/staging**: no changes"), "{first}");
    let mut secrets = old_secrets.clone();
    secrets.extend(secret_values(&work));
    assert!(secrets.iter().any(|s| s == new_password));
    for s in &secrets {
        assert!(
            !first.contains(s.as_str()),
            "the comment holds a secret value"
        );
    }

    // The next push to the pull request: the same comment is edited in place.
    let text = std::fs::read_to_string(&prod).unwrap();
    std::fs::write(
        &prod,
        text.replace("    replicas: 3\n", "    replicas: 4\n"),
    )
    .unwrap();
    git(&work, &["commit", "-qam", "scale web to 4"]);
    let head2 = git(&work, &["rev-parse", "HEAD"]);
    git(
        &work,
        &[
            "push",
            "-q",
            "-f",
            remote.to_str().unwrap(),
            "HEAD:refs/pull/7/head",
        ],
    );
    assert_eq!(pr_hook(&api, "pr-2", "synchronize", &head2).await, 202);
    // A replayed delivery is accepted once only.
    assert_eq!(pr_hook(&api, "pr-2", "synchronize", &head2).await, 200);
    wait_for(
        "four commit statuses",
        &daemon,
        Duration::from_secs(120),
        statuses(4),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let g = forge.lock().unwrap();
    assert_eq!(g.comments.len(), 1, "never duplicated: {:?}", g.comments);
    let (id, _, _, second) = &g.comments[0];
    assert_eq!(*id, 1001, "the same comment");
    assert!(
        second.starts_with(&format!(
            "<!-- keystone-plan: pr=7 -->\n### Keystone plan for `{}` → `{}`\n",
            &base[..7],
            &head2[..7]
        )),
        "{second}"
    );
    assert!(
        second
            .lines()
            .any(|l| l == "~ services.web.replicas: 2 → 4"),
        "{second}"
    );
    for s in &secrets {
        assert!(
            !second.contains(s.as_str()),
            "the comment holds a secret value"
        );
    }
    let writes: Vec<&String> = g
        .requests
        .iter()
        .filter(|r| r.contains("/comments") && !r.starts_with("GET"))
        .collect();
    assert_eq!(writes.len(), 2, "one POST, one PATCH: {writes:#?}");
    assert!(
        writes[0].starts_with("POST /repos/acme/config/issues/7/comments [Bearer forge-token] ")
    );
    assert!(
        writes[1]
            .starts_with("PATCH /repos/acme/config/issues/comments/1001 [Bearer forge-token] ")
    );
    let states: Vec<(&str, &str)> = g
        .statuses
        .iter()
        .map(|(sha, v)| (sha.as_str(), v["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        &states[2..],
        [(head2.as_str(), "pending"), (head2.as_str(), "success")]
    );
    for r in &g.requests {
        for s in &secrets {
            assert!(
                !r.contains(s.as_str()),
                "a forge request holds a secret value"
            );
        }
    }
    let log = daemon.log();
    for s in &secrets {
        assert!(
            !log.contains(s.as_str()),
            "the daemon's log holds a secret value"
        );
    }
}

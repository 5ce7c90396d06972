//! The daemon loop against real git: a bare remote as the config repository, webhooks over real
//! HTTP, notify on a local directory, the status branch read back from the remote.
//!
//! What a commit *means* is behind the `Deployer` trait; these tests use a recording deployer
//! (reads `environments` from the commit, holds a deploy open on request) so the loop's own rules
//! can be checked exactly: coalescing, one operation per environment, no retry loop, broken
//! commits, restarts. The end-to-end tests with config + planner + engine on the lab live in
//! tests/daemon_lab.rs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keystone::daemon::queue::Job;
use keystone::daemon::runtime::{
    self, BoxFuture, DaemonOptions, Deployer, Deployment, Loaded, PlanComment, Settings,
};
use keystone::daemon::webhook::WebhookSecret;
use keystone::status::{
    Health, NodeStatus, OperationNode, OperationRecord, Outcome, ReplicaStatus, ServiceStatus,
    StepRecord, SyncState, Timestamp,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const SECRET_VALUE: &str = "s3cret-app-key-value";
const HOOK_SECRET: &str = "hook-secret";

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
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A commit's `environments` file: one `app/env` per line, `app/env (unchanged)` (its plan is
/// empty), or `app/env: problem` (a line per problem); `digest`,
/// `mode` (`ok`, `slow`, `fail`).
#[derive(Default)]
struct Recording {
    deploys: Mutex<Vec<(String, String, String)>>,
    gate: Notify,
}

struct TestDeployer(Arc<Recording>);

fn read_blob(repo: &Path, commit: &str, path: &str) -> Option<String> {
    let repo = git2::Repository::open(repo).ok()?;
    let c = repo.find_commit(git2::Oid::from_str(commit).ok()?).ok()?;
    let e = c.tree().ok()?.get_path(Path::new(path)).ok()?;
    let b = e.to_object(&repo).ok()?.peel_to_blob().ok()?;
    Some(String::from_utf8_lossy(b.content()).into_owned())
}

impl Deployer for TestDeployer {
    fn load(&self, repo: &Path, commit: &str) -> Loaded {
        let mut l = Loaded {
            settings: Some(Settings::default()),
            servers: vec!["web-1".into()],
            ..Default::default()
        };
        for line in read_blob(repo, commit, "environments")
            .unwrap_or_default()
            .lines()
        {
            match line.split_once(": ") {
                Some((env, problem)) => l
                    .environments
                    .entry(env.into())
                    .or_default()
                    .push(problem.into()),
                None => match line.strip_suffix(" (unchanged)") {
                    Some(env) => {
                        l.environments.insert(env.into(), vec![]);
                        l.unchanged.insert(env.into());
                    }
                    None => {
                        l.environments.insert(line.into(), vec![]);
                    }
                },
            };
        }
        l
    }

    fn deploy<'a>(
        &'a self,
        repo: &'a Path,
        job: &'a Job,
        operation_id: &'a str,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Deployment> {
        Box::pin(async move {
            let mode = read_blob(repo, &job.commit, "mode").unwrap_or_default();
            let digest = read_blob(repo, &job.commit, "digest").unwrap_or_default();
            self.0.deploys.lock().unwrap().push((
                job.environment.clone(),
                job.commit[..7].to_string(),
                job.kind.as_str().to_string(),
            ));
            let started = Timestamp::now();
            let mut outcome = Outcome::Succeeded;
            if mode.trim() == "slow" {
                tokio::select! {
                    _ = self.0.gate.notified() => {}
                    _ = cancel.cancelled() => outcome = Outcome::Cancelled,
                }
            }
            if mode.trim() == "fail" {
                outcome = Outcome::Failed;
            }
            let error = (outcome == Outcome::Failed)
                .then(|| format!("replica web#1: health check failed (APP_KEY={SECRET_VALUE})"));
            let status = match outcome {
                Outcome::Succeeded => NodeStatus::Succeeded,
                Outcome::Cancelled => NodeStatus::Cancelled,
                _ => NodeStatus::Failed,
            };
            Deployment {
                outcome,
                error: error.clone(),
                operation: OperationRecord {
                    id: operation_id.into(),
                    environment: job.environment.clone(),
                    kind: job.kind.as_str().into(),
                    commit: job.commit.clone(),
                    started,
                    finished: Some(Timestamp::now()),
                    outcome,
                    error,
                    tree: Some(OperationNode {
                        title: format!("environment_deploy {}", job.environment),
                        status,
                        duration_ms: Some(10),
                        steps: vec![StepRecord {
                            name: "start".into(),
                            target: "web-1".into(),
                            status,
                            duration_ms: Some(10),
                            output: format!("APP_KEY={SECRET_VALUE}\nstarted\n"),
                            error: None,
                        }],
                        children: vec![],
                    }),
                },
                services: (outcome == Outcome::Succeeded).then(|| {
                    BTreeMap::from([(
                        "web".to_string(),
                        ServiceStatus {
                            health: Health::Healthy,
                            sync: SyncState::Synced,
                            replicas: vec![ReplicaStatus {
                                index: 1,
                                server: "web-1".into(),
                                container: Some("shop-production-web-1".into()),
                                image: Some("10.77.0.1:5000/acme/shop".into()),
                                digest: Some(digest.trim().to_string()),
                                running_digest: None,
                                health: Health::Healthy,
                                sync: SyncState::Synced,
                                started: Some(Timestamp::now()),
                                restart_count: Some(0),
                                exit_code: None,
                                message: None,
                                transitions: vec![],
                            }],
                        },
                    )])
                }),
                deployed_source: Some("shop@9f8e7d6".into()),
            }
        })
    }

    fn plan_comment(&self, _: &Path, _: &str, _: &str, _: u64) -> Result<PlanComment, String> {
        Err("not used".into())
    }

    fn redact(&self, text: &str) -> String {
        text.replace(SECRET_VALUE, "[secret]")
    }
}

struct Repo {
    _tmp: tempfile::TempDir,
    remote: PathBuf,
    work: PathBuf,
    state: PathBuf,
}

impl Repo {
    fn new(bare: bool) -> Repo {
        let tmp = tempfile::tempdir().unwrap();
        let remote = tmp.path().join("config.git");
        let work = tmp.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        git(&work, &["init", "-q", "-b", "main"]);
        if bare {
            git(
                tmp.path(),
                &["init", "-q", "--bare", "-b", "main", "config.git"],
            );
        }
        Repo {
            state: tmp.path().join("state"),
            _tmp: tmp,
            remote,
            work,
        }
    }

    /// The URL the daemon uses: the bare remote, or the working directory itself.
    fn url(&self, bare: bool) -> String {
        if bare {
            self.remote.display().to_string()
        } else {
            self.work.display().to_string()
        }
    }

    /// Commit (and push when there is a bare remote); returns the commit id.
    fn commit(&self, envs: &str, digest: &str, mode: &str, push: bool) -> String {
        std::fs::write(self.work.join("environments"), envs).unwrap();
        std::fs::write(self.work.join("digest"), digest).unwrap();
        std::fs::write(self.work.join("mode"), mode).unwrap();
        git(&self.work, &["add", "."]);
        git(
            &self.work,
            &["commit", "-q", "-m", &format!("{digest} {mode}")],
        );
        if push {
            git(
                &self.work,
                &["push", "-q", self.remote.to_str().unwrap(), "main"],
            );
        }
        git(&self.work, &["rev-parse", "HEAD"]).trim().to_string()
    }
}

/// The status branch file at the remote (or the local dir repo).
fn status_file(repo: &Path, path: &str) -> Option<String> {
    let out = Command::new("git")
        .args(["show", &format!("keystone/status:{path}")])
        .current_dir(repo)
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8(out.stdout).unwrap())
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..400 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

struct Running {
    base: String,
    cancel: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

async fn start_daemon(url: String, state: &Path, rec: Arc<Recording>, watch: bool) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let cancel = CancellationToken::new();
    let opts = DaemonOptions {
        repo: url,
        state_dir: state.to_path_buf(),
        listener: Some(listener),
        webhook_secret: Some(WebhookSecret::new(HOOK_SECRET)),
        ssh_key: None,
        forge: None,
        branch: None,
        // Only webhooks and notify wake it in these tests.
        poll_interval: Some(Duration::from_secs(3600)),
        watch,
    };
    let c = cancel.clone();
    let handle = tokio::spawn(async move {
        runtime::run(opts, Arc::new(TestDeployer(rec)), c)
            .await
            .unwrap();
    });
    Running {
        base,
        cancel,
        handle,
    }
}

async fn push_hook(base: &str, id: &str) -> u16 {
    let body = br#"{"ref":"refs/heads/main"}"#;
    reqwest::Client::new()
        .post(format!("{base}/webhook"))
        .header("X-GitHub-Event", "push")
        .header("X-GitHub-Delivery", id)
        .header(
            "X-Hub-Signature-256",
            format!("sha256={}", WebhookSecret::new(HOOK_SECRET).sign(body)),
        )
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn env_yaml(repo: &Path) -> String {
    status_file(repo, "environments/shop/production.yaml").unwrap_or_default()
}

fn deploys(rec: &Recording) -> Vec<(String, String, String)> {
    rec.deploys.lock().unwrap().clone()
}

fn d(env: &str, commit: &str, kind: &str) -> (String, String, String) {
    (env.into(), commit[..7].into(), kind.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_deploy_coalesce_wait_fail_once_and_broken_commits_block() {
    let repo = Repo::new(true);
    let c1 = repo.commit("shop/production\n", "sha256:1111", "ok", true);
    let rec = Arc::new(Recording::default());
    let daemon = start_daemon(repo.url(true), &repo.state, rec.clone(), false).await;

    // Startup: the tip is deployed and the status branch says so.
    wait_for("c1 synced", || {
        env_yaml(&repo.remote).contains(&format!("last_applied:\n  commit: {c1}"))
    })
    .await;
    let yaml = env_yaml(&repo.remote);
    assert!(yaml.contains("sync: synced\n"), "{yaml}");
    assert!(yaml.contains("health: healthy\n"), "{yaml}");
    assert!(yaml.contains("digest: sha256:1111\n"), "{yaml}");

    // A slow deploy; two more pushes meanwhile wait and coalesce.
    let c2 = repo.commit("shop/production\n", "sha256:2222", "slow", true);
    assert_eq!(push_hook(&daemon.base, "h2").await, 202);
    wait_for("c2 running", || deploys(&rec).len() == 2).await;
    wait_for("c2 running on the branch", || {
        env_yaml(&repo.remote).contains("outcome: running")
    })
    .await;
    let c3 = repo.commit("shop/production\n", "sha256:3333", "ok", true);
    assert_eq!(push_hook(&daemon.base, "h3").await, 202);
    let c4 = repo.commit("shop/production\n", "sha256:4444", "ok", true);
    assert_eq!(push_hook(&daemon.base, "h4").await, 202);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        deploys(&rec).len(),
        2,
        "the pushes wait for the running deploy"
    );
    let metrics = reqwest::get(format!("{}/metrics", daemon.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("\nkeystone_queue_depth 1\n"), "{metrics}");
    rec.gate.notify_one();
    wait_for("c4 synced", || {
        env_yaml(&repo.remote).contains(&format!("last_applied:\n  commit: {c4}"))
    })
    .await;
    assert_eq!(
        deploys(&rec),
        [
            d("shop/production", &c1, "deploy"),
            d("shop/production", &c2, "deploy"),
            d("shop/production", &c4, "deploy"),
        ],
        "c3 was coalesced into c4"
    );
    let _ = c3;
    assert!(env_yaml(&repo.remote).contains("digest: sha256:4444\n"));

    // A failing deploy is tried once; the same tip is not retried until asked.
    let c5 = repo.commit("shop/production\n", "sha256:5555", "fail", true);
    assert_eq!(push_hook(&daemon.base, "h5").await, 202);
    wait_for("c5 failed", || {
        env_yaml(&repo.remote).contains("outcome: failed")
    })
    .await;
    assert_eq!(push_hook(&daemon.base, "h5-again").await, 202);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(deploys(&rec).len(), 4, "no retry loop");
    let yaml = env_yaml(&repo.remote);
    assert!(
        yaml.contains(&format!("last_applied:\n  commit: {c4}")),
        "{yaml}"
    );
    assert!(
        yaml.contains(&format!("last_attempted:\n  commit: {c5}")),
        "{yaml}"
    );
    assert!(yaml.contains("sync: out_of_sync\n"), "{yaml}");
    let retry = reqwest::Client::new()
        .post(format!("{}/api/retry", daemon.base))
        .body(r#"{"environment":"shop/production"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status().as_u16(), 202);
    assert_eq!(
        retry.text().await.unwrap(),
        format!(
            "{{\"queued\":\"retry of shop/production at {} queued\"}}",
            &c5[..7]
        )
    );
    wait_for("the retry ran", || deploys(&rec).len() == 5).await;
    assert_eq!(deploys(&rec)[4], d("shop/production", &c5, "retry"));

    // A manual migration through `keystone migrate`, recorded as its own operation.
    let base = daemon.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        assert_cmd::Command::cargo_bin("keystone")
            .unwrap()
            .args(["migrate", "shop/production", "--daemon", &base])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!(
            "migrate of shop/production at {} queued; its log goes to the status branch\n",
            &c5[..7]
        )
    );
    assert_eq!(out.status.code(), Some(0));
    wait_for("the migration ran", || deploys(&rec).len() == 6).await;
    assert_eq!(deploys(&rec)[5], d("shop/production", &c5, "migrate"));

    // A broken commit: a status commit says why, nothing is deployed, the old version stays.
    let problem = "applications/shop/environments/production.yaml:3:5: unknown key `replica` (did you mean `replicas`?)";
    let c6 = repo.commit(&format!("shop/production: {problem}\n"), "x", "ok", true);
    assert_eq!(push_hook(&daemon.base, "h6").await, 202);
    wait_for("c6 blocked", || {
        env_yaml(&repo.remote).contains("outcome: blocked")
    })
    .await;
    let yaml = env_yaml(&repo.remote);
    assert!(
        yaml.contains(&format!("last_applied:\n  commit: {c4}")),
        "{yaml}"
    );
    assert!(yaml.contains("digest: sha256:4444\n"), "{yaml}");
    let readme = status_file(&repo.remote, "README.md").unwrap();
    assert!(
        readme.contains(&format!(
            "**shop/production** at commit {}:\n\n- {problem}\n",
            &c6[..7]
        )),
        "{readme}"
    );
    assert!(
        readme.contains(&format!(
            "⚠️ out_of_sync @{} (commit {} is invalid: 1 problem)",
            &c4[..7],
            &c6[..7]
        )),
        "{readme}"
    );
    let log = git(&repo.remote, &["log", "--format=%s", "keystone/status"]);
    assert!(
        log.lines().next().unwrap()
            == format!("status: commit {} blocked for 1 environment", &c6[..7]),
        "{log}"
    );
    assert!(log.contains(&format!(
        "status: shop/production deploy {} succeeded",
        &c4[..7]
    )));
    assert!(log.contains(&format!(
        "status: shop/production deploy {} failed",
        &c5[..7]
    )));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        deploys(&rec).len(),
        6,
        "nothing deployed for the broken commit"
    );

    // No file of the status branch holds the secret value.
    for path in git(
        &repo.remote,
        &["ls-tree", "-r", "--name-only", "keystone/status"],
    )
    .lines()
    {
        let text = status_file(&repo.remote, path).unwrap();
        assert!(!text.contains(SECRET_VALUE), "{path} holds the secret");
    }
    assert!(!git(&repo.remote, &["log", "--format=%B", "keystone/status"]).contains(SECRET_VALUE));

    // `keystone migrate` asks this daemon; a blocked environment is refused with the reason.
    let base = daemon.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        assert_cmd::Command::cargo_bin("keystone")
            .unwrap()
            .args(["migrate", "shop/production", "--daemon", &base])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        format!(
            "the daemon refused: shop/production is blocked at commit {}: {problem}\n",
            &c6[..7]
        )
    );

    daemon.cancel.cancel();
    daemon.handle.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_environment_a_commit_does_not_change_is_synced_without_an_operation() {
    let repo = Repo::new(true);
    let rec = Arc::new(Recording::default());
    let c0 = repo.commit("shop/production\nshop/staging\n", "sha256:1111", "ok", true);
    let daemon = start_daemon(repo.url(true), &repo.state, rec.clone(), false).await;
    let staging =
        || status_file(&repo.remote, "environments/shop/staging.yaml").unwrap_or_default();
    wait_for("c0 deployed to both", || {
        deploys(&rec).len() == 2 && staging().contains("outcome: succeeded")
    })
    .await;
    let before = staging();

    // c1 changes production only: staging gets no job, no operation, no status commit of its
    // own, and is synced at c1.
    let c1 = repo.commit(
        "shop/production\nshop/staging (unchanged)\n",
        "sha256:2222",
        "ok",
        true,
    );
    assert_eq!(push_hook(&daemon.base, "u1").await, 202);
    wait_for("c1 deployed to production", || {
        env_yaml(&repo.remote).contains(&format!("last_applied:\n  commit: {c1}"))
            && env_yaml(&repo.remote).contains("sync: synced")
    })
    .await;
    // (The two jobs of c0 start at once, in either order.)
    let mut first = deploys(&rec);
    first[..2].sort();
    assert_eq!(
        first,
        [
            d("shop/production", &c0, "deploy"),
            d("shop/staging", &c0, "deploy"),
            d("shop/production", &c1, "deploy"),
        ]
    );
    let after = staging();
    assert!(
        after.contains(&format!("last_applied:\n  commit: {c1}")),
        "{after}"
    );
    assert!(after.contains("sync: synced\n"), "{after}");
    assert!(!after.contains("sync_reason"), "{after}");
    // Its last operation and attempt are still c0's.
    let section = |text: &str, key: &str| -> String {
        let start = text.find(&format!("{key}:\n")).expect(key);
        text[start..]
            .lines()
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        section(&after, "last_operation"),
        section(&before, "last_operation")
    );
    assert_eq!(
        section(&after, "last_attempted"),
        section(&before, "last_attempted")
    );
    let message = git(
        &repo.remote,
        &[
            "log",
            "--format=%B",
            "--grep",
            &format!("status: config {}", &c1[..7]),
            "keystone/status",
        ],
    );
    assert_eq!(
        message.trim_end(),
        format!(
            "status: config {}\n\n- shop/staging: nothing to change, synced without an operation",
            &c1[..7]
        )
    );
    let subjects = git(&repo.remote, &["log", "--format=%s", "keystone/status"]);
    assert!(
        !subjects.contains(&format!("shop/staging deploy {}", &c1[..7])),
        "{subjects}"
    );

    // Two problems of one environment: one line each in the status commit and the README.
    let p1 = "applications/shop/environments/production.yaml:49:21: secret shop-production.app_key cannot be decrypted: secrets/shop-production.sops.yaml does not decrypt: the value of another key, `mail_password`, does not authenticate (it was changed, or moved from another key)";
    let p2 = "applications/shop/environments/production.yaml:50:27: secret shop-production.mail_password cannot be decrypted: secrets/shop-production.sops.yaml: `mail_password`: the encrypted value does not authenticate: it was changed, or moved from another key";
    let c2 = repo.commit(
        &format!("shop/production: {p1}\nshop/production: {p2}\nshop/staging (unchanged)\n"),
        "x",
        "ok",
        true,
    );
    assert_eq!(push_hook(&daemon.base, "u2").await, 202);
    wait_for("c2 blocked", || {
        env_yaml(&repo.remote).contains("outcome: blocked")
    })
    .await;
    let message = git(
        &repo.remote,
        &[
            "log",
            "--format=%B",
            "--grep",
            &format!("status: commit {} blocked", &c2[..7]),
            "keystone/status",
        ],
    );
    assert_eq!(
        message.trim_end(),
        format!(
            "status: commit {} blocked for 1 environment\n\n- shop/production: {p1}\n- shop/production: {p2}\n- shop/staging: nothing to change, synced without an operation",
            &c2[..7]
        )
    );
    let readme = status_file(&repo.remote, "README.md").unwrap();
    assert!(
        readme.contains(&format!(
            "**shop/production** at commit {}:\n\n- {p1}\n- {p2}\n",
            &c2[..7]
        )),
        "{readme}"
    );
    assert_eq!(deploys(&rec).len(), 3, "nothing deployed for c2");

    daemon.cancel.cancel();
    daemon.handle.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_a_deploy_the_restarted_daemon_converges_and_says_what_happened() {
    let repo = Repo::new(true);
    let c1 = repo.commit("shop/production\n", "sha256:1111", "slow", true);
    let rec = Arc::new(Recording::default());
    // The first daemon gets a runtime of its own, so "kill" can drop every task it has at once.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (url, state, r) = (repo.url(true), repo.state.clone(), rec.clone());
    let first = rt
        .spawn(async move { start_daemon(url, &state, r, false).await })
        .await
        .unwrap();
    wait_for("c1 running on the branch", || {
        env_yaml(&repo.remote).contains("outcome: running")
    })
    .await;
    // Killed mid-deploy: every task of the daemon is dropped, nothing graceful happens.
    drop(first);
    rt.shutdown_background();
    let readme = status_file(&repo.remote, "README.md").unwrap();
    assert!(
        readme.contains(&format!("deploy {} …", &c1[..7])),
        "{readme}"
    );

    // The commit is no longer slow for the second daemon (the deployer reads `mode` from it,
    // so hand the gate a permit instead).
    rec.gate.notify_one();
    let second = start_daemon(repo.url(true), &repo.state, rec.clone(), false).await;
    wait_for("c1 synced after restart", || {
        env_yaml(&repo.remote).contains(&format!("last_applied:\n  commit: {c1}"))
    })
    .await;
    let yaml = env_yaml(&repo.remote);
    assert!(yaml.contains("sync: synced\n"), "{yaml}");
    assert_eq!(
        deploys(&rec),
        [
            d("shop/production", &c1, "deploy"),
            d("shop/production", &c1, "deploy")
        ]
    );
    // The interrupted operation's log says it was interrupted.
    let files = git(
        &repo.remote,
        &["ls-tree", "-r", "--name-only", "keystone/status"],
    );
    let logs: Vec<&str> = files
        .lines()
        .filter(|l| l.starts_with("operations/"))
        .collect();
    assert_eq!(logs.len(), 2, "{files}");
    let texts: Vec<String> = logs
        .iter()
        .map(|p| status_file(&repo.remote, p).unwrap())
        .collect();
    assert!(
        texts
            .iter()
            .any(|t| t.contains("- outcome: ↯ interrupted\n")
                && t.contains(
                    "interrupted: the daemon stopped during this operation; it is run again"
                )),
        "{texts:?}"
    );
    assert!(texts.iter().any(|t| t.contains("- outcome: ✓ succeeded\n")));
    second.cancel.cancel();
    second.handle.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_directory_repository_is_watched_with_notify() {
    let repo = Repo::new(false);
    let c1 = repo.commit("shop/production\n", "sha256:1111", "ok", false);
    let rec = Arc::new(Recording::default());
    let daemon = start_daemon(repo.url(false), &repo.state, rec.clone(), true).await;
    wait_for("c1 synced", || {
        env_yaml(&repo.work).contains(&format!("last_applied:\n  commit: {c1}"))
    })
    .await;
    // A commit in the directory, no webhook, no poll: notify wakes the daemon.
    let c2 = repo.commit("shop/production\n", "sha256:2222", "ok", false);
    wait_for("c2 synced", || {
        env_yaml(&repo.work).contains(&format!("last_applied:\n  commit: {c2}"))
    })
    .await;
    assert!(env_yaml(&repo.work).contains("digest: sha256:2222\n"));
    // The working tree's checked-out branch is untouched.
    assert_eq!(git(&repo.work, &["rev-parse", "HEAD"]).trim(), c2);
    assert_eq!(git(&repo.work, &["status", "--porcelain"]).trim(), "");
    daemon.cancel.cancel();
    daemon.handle.await.unwrap();
}

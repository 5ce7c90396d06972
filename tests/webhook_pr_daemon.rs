//! A pull-request webhook through the running daemon: the daemon fetches the PR head from the
//! real remote, asks the deployer for the plan comment of base..head, and posts it to a stand-in
//! forge API that records every request: one comment created, updated in place on the next push,
//! never duplicated; a pending then final commit status on each head.

mod forge_standin;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use keystone::daemon::forge::{CommitState, ForgeClient, ForgeKind};
use keystone::daemon::queue::Job;
use keystone::daemon::runtime::{
    self, BoxFuture, DaemonOptions, Deployer, Deployment, Loaded, PlanComment, Settings,
};
use keystone::daemon::webhook::WebhookSecret;
use keystone::status::{OperationRecord, Outcome, Timestamp};
use tokio_util::sync::CancellationToken;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@localhost")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@localhost")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Deploys nothing; the plan comment names the commits it was asked about.
struct PlanOnly;

impl Deployer for PlanOnly {
    fn load(&self, _: &Path, _: &str) -> Loaded {
        Loaded {
            settings: Some(Settings::default()),
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
                    finished: None,
                    outcome: Outcome::Succeeded,
                    error: None,
                    tree: None,
                },
                services: None,
                deployed_source: None,
            }
        })
    }
    fn plan_comment(
        &self,
        repo: &Path,
        base: &str,
        head: &str,
        pr: u64,
    ) -> Result<PlanComment, String> {
        // The head commit really is in the mirror.
        let r = git2::Repository::open(repo).map_err(|e| e.to_string())?;
        let msg = r
            .find_commit(git2::Oid::from_str(head).unwrap())
            .map_err(|e| e.to_string())?
            .message_bytes()
            .to_vec();
        let msg = String::from_utf8_lossy(&msg)
            .lines()
            .next()
            .unwrap_or("")
            .to_string();
        Ok(PlanComment {
            bodies: vec![format!(
                "<!-- keystone-plan: pr={pr} -->\n### Keystone plan for `{}` → `{}` ({msg})",
                &base[..7],
                &head[..7]
            )],
            state: CommitState::Success,
            description: "1 environment changes".into(),
        })
    }
    fn redact(&self, t: &str) -> String {
        t.to_string()
    }
}

async fn pr_hook(base: &str, id: &str, action: &str, head: &str) -> u16 {
    let body = format!(
        r#"{{"action":"{action}","number":42,"pull_request":{{"number":42,"head":{{"sha":"{head}"}},"base":{{"ref":"main"}}}}}}"#
    );
    reqwest::Client::new()
        .post(format!("{base}/webhook/github"))
        .header("X-GitHub-Event", "pull_request")
        .header("X-GitHub-Delivery", id)
        .header(
            "X-Hub-Signature-256",
            format!(
                "sha256={}",
                WebhookSecret::new("hook").sign(body.as_bytes())
            ),
        )
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_comment_per_pull_request_updated_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    git(
        tmp.path(),
        &["init", "-q", "--bare", "-b", "main", "config.git"],
    );
    let remote = tmp.path().join("config.git");
    let remote_s = remote.to_str().unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("keystone.yaml"), "version: 1\n").unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "-q", "-m", "base"]);
    git(&work, &["push", "-q", remote_s, "main"]);
    let c1 = git(&work, &["rev-parse", "HEAD"]).trim().to_string();
    git(&work, &["checkout", "-q", "-b", "scale-web"]);
    std::fs::write(work.join("web"), "3\n").unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "-q", "-m", "scale web to 3"]);
    // What GitHub and Gitea do for a pull request: the head under refs/pull/N/head.
    git(&work, &["push", "-q", remote_s, "HEAD:refs/pull/42/head"]);
    let c2 = git(&work, &["rev-parse", "HEAD"]).trim().to_string();

    let (forge_base, forge) = forge_standin::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let cancel = CancellationToken::new();
    let opts = DaemonOptions {
        repo: remote.display().to_string(),
        state_dir: tmp.path().join("state"),
        listener: Some(listener),
        webhook_secret: Some(WebhookSecret::new("hook")),
        ssh_key: None,
        forge: Some(
            ForgeClient::new(ForgeKind::GitHub, &forge_base, "acme/config", "tok").unwrap(),
        ),
        branch: None,
        poll_interval: Some(Duration::from_secs(3600)),
        watch: false,
    };
    let c = cancel.clone();
    let h = tokio::spawn(async move { runtime::run(opts, Arc::new(PlanOnly), c).await.unwrap() });

    assert_eq!(pr_hook(&base, "d1", "opened", &c2).await, 202);
    let wait_statuses = |n: usize| {
        let forge = forge.clone();
        async move {
            for _ in 0..200 {
                if forge.lock().unwrap().statuses.len() >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("timed out waiting for {n} statuses");
        }
    };
    wait_statuses(2).await;
    {
        let g = forge.lock().unwrap();
        let ours: Vec<(u64, &str)> = g.comments.iter().map(|c| (c.0, c.3.as_str())).collect();
        let want = format!(
            "<!-- keystone-plan: pr=42 -->\n### Keystone plan for `{}` → `{}` (scale web to 3)",
            &c1[..7],
            &c2[..7]
        );
        assert_eq!(ours, [(1001, want.as_str())]);
        let states: Vec<(&str, &str)> = g
            .statuses
            .iter()
            .map(|(sha, v)| (sha.as_str(), v["state"].as_str().unwrap()))
            .collect();
        assert_eq!(states, [(c2.as_str(), "pending"), (c2.as_str(), "success")]);
    }

    // The next push to the PR: the same comment is edited.
    std::fs::write(work.join("web"), "4\n").unwrap();
    git(&work, &["commit", "-q", "-am", "scale web to 4"]);
    git(
        &work,
        &["push", "-q", "-f", remote_s, "HEAD:refs/pull/42/head"],
    );
    let c3 = git(&work, &["rev-parse", "HEAD"]).trim().to_string();
    assert_eq!(pr_hook(&base, "d2", "synchronize", &c3).await, 202);
    // A replayed delivery does nothing.
    assert_eq!(pr_hook(&base, "d2", "synchronize", &c3).await, 200);
    wait_statuses(4).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    {
        let g = forge.lock().unwrap();
        let ours: Vec<(u64, &str)> = g.comments.iter().map(|c| (c.0, c.3.as_str())).collect();
        let want = format!(
            "<!-- keystone-plan: pr=42 -->\n### Keystone plan for `{}` → `{}` (scale web to 4)",
            &c1[..7],
            &c3[..7]
        );
        assert_eq!(
            ours,
            [(1001, want.as_str())],
            "updated in place, never duplicated"
        );
        let writes: Vec<&String> = g
            .requests
            .iter()
            .filter(|r| r.contains("/comments") && !r.starts_with("GET"))
            .collect();
        assert_eq!(writes.len(), 2, "one POST, one PATCH: {writes:?}");
        assert!(writes[0].starts_with("POST /repos/acme/config/issues/42/comments "));
        assert!(writes[1].starts_with("PATCH /repos/acme/config/issues/comments/1001 "));
        assert_eq!(g.statuses.len(), 4);
        assert_eq!(g.statuses[3].0, c3);
    }
    cancel.cancel();
    h.await.unwrap();
}

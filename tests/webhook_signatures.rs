//! Webhooks over real HTTP: the daemon's axum server on 127.0.0.1, requests from reqwest.
//! For each forge: valid, invalid, missing and replayed signatures; oversized bodies; and that only
//! accepted deliveries ever reach the daemon loop.

use std::sync::Arc;
use std::time::Duration;

use keystone::daemon::http::{self, ApiState, Trigger};
use keystone::daemon::metrics::Metrics;
use keystone::daemon::webhook::WebhookSecret;
use tokio::sync::mpsc;

const SECRET: &str = "whsec-test-7f3a";

struct Server {
    base: String,
    triggers: mpsc::UnboundedReceiver<Trigger>,
    client: reqwest::Client,
}

async fn start() -> Server {
    let (tx, rx) = mpsc::unbounded_channel();
    let state = ApiState::new(
        Some(WebhookSecret::new(SECRET)),
        tx,
        Arc::new(Metrics::default()),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(http::serve(listener, state, std::future::pending()));
    Server {
        base,
        triggers: rx,
        client: reqwest::Client::new(),
    }
}

impl Server {
    async fn post(&self, path: &str, headers: &[(&str, String)], body: &[u8]) -> (u16, String) {
        let mut req = self
            .client
            .post(format!("{}{path}", self.base))
            .body(body.to_vec());
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    async fn get(&self, path: &str) -> String {
        self.client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Every trigger that reached the daemon loop so far.
    async fn drain(&mut self) -> Vec<String> {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut out = Vec::new();
        while let Ok(t) = self.triggers.try_recv() {
            out.push(match t {
                Trigger::Fetch { reason } => format!("fetch: {reason}"),
                Trigger::PullRequest {
                    forge,
                    number,
                    head_sha,
                } => format!(
                    "pr: {} #{number} {}",
                    forge.as_str(),
                    head_sha.unwrap_or_default()
                ),
                Trigger::Retry { environment, .. } => format!("retry: {environment}"),
                Trigger::Migrate { environment, .. } => format!("migrate: {environment}"),
            });
        }
        out
    }
}

fn hmac_hex(key: &str, body: &[u8]) -> String {
    WebhookSecret::new(key).sign(body)
}

const PUSH: &[u8] =
    br#"{"ref":"refs/heads/main","after":"0123456789abcdef0123456789abcdef01234567"}"#;

#[tokio::test]
async fn github_valid_invalid_missing_replayed() {
    let mut s = start().await;
    let good = |id: &str| {
        vec![
            ("X-GitHub-Event", "push".to_string()),
            ("X-GitHub-Delivery", id.to_string()),
            (
                "X-Hub-Signature-256",
                format!("sha256={}", hmac_hex(SECRET, PUSH)),
            ),
        ]
    };
    assert_eq!(
        s.post("/webhook", &good("gh-1"), PUSH).await,
        (202, "fetch queued\n".into())
    );
    assert_eq!(s.drain().await, ["fetch: github push refs/heads/main"]);

    // Replayed: same delivery id, acknowledged but nothing happens.
    assert_eq!(
        s.post("/webhook", &good("gh-1"), PUSH).await,
        (200, "duplicate delivery, ignored\n".into())
    );
    // Signed with another key.
    let wrong = vec![
        ("X-GitHub-Event", "push".to_string()),
        ("X-GitHub-Delivery", "gh-2".to_string()),
        (
            "X-Hub-Signature-256",
            format!("sha256={}", hmac_hex("not-the-secret", PUSH)),
        ),
    ];
    let (code, body) = s.post("/webhook", &wrong, PUSH).await;
    assert_eq!(
        (code, body.as_str()),
        (401, "the github webhook signature does not match\n")
    );
    // Right key, body changed after signing.
    let (code, _) = s
        .post("/webhook", &good("gh-3"), br#"{"ref":"refs/heads/evil"}"#)
        .await;
    assert_eq!(code, 401);
    // Missing signature.
    let unsigned = vec![
        ("X-GitHub-Event", "push".to_string()),
        ("X-GitHub-Delivery", "gh-4".to_string()),
    ];
    assert_eq!(
        s.post("/webhook", &unsigned, PUSH).await,
        (401, "the github webhook is not signed\n".into())
    );
    // Garbage in the signature header.
    let garbage = vec![
        ("X-GitHub-Event", "push".to_string()),
        ("X-Hub-Signature-256", "sha256=zz".to_string()),
    ];
    assert_eq!(s.post("/webhook/github", &garbage, PUSH).await.0, 401);
    assert_eq!(
        s.drain().await,
        Vec::<String>::new(),
        "refused deliveries change nothing"
    );

    // A refused delivery id is not burnt: the genuine delivery with that id still works.
    assert_eq!(s.post("/webhook", &good("gh-2"), PUSH).await.0, 202);
    assert_eq!(s.drain().await, ["fetch: github push refs/heads/main"]);

    let metrics = s.get("/metrics").await;
    for line in [
        "keystone_webhook_deliveries_total{forge=\"github\",result=\"accepted\"} 2",
        "keystone_webhook_deliveries_total{forge=\"github\",result=\"duplicate\"} 1",
        "keystone_webhook_deliveries_total{forge=\"github\",result=\"unauthorized\"} 4",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line} in\n{metrics}"
        );
    }
}

#[tokio::test]
async fn gitea_and_forgejo_valid_invalid_missing_replayed() {
    let mut s = start().await;
    let sig = hmac_hex(SECRET, PUSH);
    // Gitea also sends GitHub-style event headers; its own signature header is what counts.
    let good = vec![
        ("X-Gitea-Event", "push".to_string()),
        ("X-GitHub-Event", "push".to_string()),
        ("X-Gitea-Delivery", "gt-1".to_string()),
        ("X-Gitea-Signature", sig.clone()),
    ];
    assert_eq!(s.post("/webhook", &good, PUSH).await.0, 202);
    assert_eq!(s.post("/webhook", &good, PUSH).await.0, 200);
    let forgejo = vec![
        ("X-Forgejo-Event", "push".to_string()),
        ("X-Forgejo-Delivery", "fj-1".to_string()),
        ("X-Forgejo-Signature", sig.clone()),
    ];
    assert_eq!(s.post("/webhook/forgejo", &forgejo, PUSH).await.0, 202);
    assert_eq!(
        s.drain().await,
        [
            "fetch: gitea push refs/heads/main",
            "fetch: gitea push refs/heads/main"
        ]
    );

    let bad = vec![
        ("X-Gitea-Event", "push".to_string()),
        ("X-Gitea-Delivery", "gt-2".to_string()),
        ("X-Gitea-Signature", hmac_hex("other", PUSH)),
    ];
    assert_eq!(
        s.post("/webhook", &bad, PUSH).await,
        (401, "the gitea webhook signature does not match\n".into())
    );
    let missing = vec![
        ("X-Gitea-Event", "push".to_string()),
        ("X-Gitea-Delivery", "gt-3".to_string()),
    ];
    assert_eq!(
        s.post("/webhook", &missing, PUSH).await,
        (401, "the gitea webhook is not signed\n".into())
    );
    // The GitHub-style signature alone does not satisfy the Gitea endpoint.
    let github_style = vec![
        ("X-Gitea-Event", "push".to_string()),
        ("X-Hub-Signature-256", format!("sha256={sig}")),
    ];
    assert_eq!(s.post("/webhook/gitea", &github_style, PUSH).await.0, 401);
    assert_eq!(s.drain().await, Vec::<String>::new());
}

#[tokio::test]
async fn gitlab_valid_invalid_missing_replayed() {
    let mut s = start().await;
    let good = vec![
        ("X-Gitlab-Event", "Push Hook".to_string()),
        ("X-Gitlab-Event-UUID", "gl-1".to_string()),
        ("X-Gitlab-Token", SECRET.to_string()),
    ];
    assert_eq!(s.post("/webhook", &good, PUSH).await.0, 202);
    assert_eq!(
        s.post("/webhook/gitlab", &good, PUSH).await.0,
        200,
        "replay"
    );
    let bad = vec![
        ("X-Gitlab-Event", "Push Hook".to_string()),
        ("X-Gitlab-Event-UUID", "gl-2".to_string()),
        ("X-Gitlab-Token", format!("{SECRET}x")),
    ];
    assert_eq!(
        s.post("/webhook", &bad, PUSH).await,
        (401, "the gitlab webhook signature does not match\n".into())
    );
    let missing = vec![
        ("X-Gitlab-Event", "Push Hook".to_string()),
        ("X-Gitlab-Event-UUID", "gl-3".to_string()),
    ];
    assert_eq!(
        s.post("/webhook", &missing, PUSH).await,
        (401, "the gitlab webhook is not signed\n".into())
    );
    assert_eq!(s.drain().await, ["fetch: gitlab push refs/heads/main"]);
}

#[tokio::test]
async fn pull_request_events_queue_a_plan_and_oversized_bodies_are_refused() {
    let mut s = start().await;
    let body = br#"{"action":"synchronize","number":42,"pull_request":{"number":42,"head":{"sha":"cafe"},"base":{"ref":"main"}}}"#;
    let h = vec![
        ("X-GitHub-Event", "pull_request".to_string()),
        ("X-GitHub-Delivery", "pr-1".to_string()),
        (
            "X-Hub-Signature-256",
            format!("sha256={}", hmac_hex(SECRET, body)),
        ),
    ];
    assert_eq!(
        s.post("/webhook", &h, body).await,
        (202, "plan queued\n".into())
    );
    let closed = br#"{"action":"closed","number":42,"pull_request":{"number":42}}"#;
    let h = vec![
        ("X-GitHub-Event", "pull_request".to_string()),
        (
            "X-Hub-Signature-256",
            format!("sha256={}", hmac_hex(SECRET, closed)),
        ),
    ];
    assert_eq!(
        s.post("/webhook", &h, closed).await,
        (202, "pull request action ignored\n".into())
    );
    assert_eq!(s.drain().await, ["pr: github #42 cafe"]);

    let big = vec![b' '; http::MAX_BODY_BYTES + 1];
    let h = vec![
        ("X-GitHub-Event", "push".to_string()),
        (
            "X-Hub-Signature-256",
            format!("sha256={}", hmac_hex(SECRET, &big)),
        ),
    ];
    assert_eq!(s.post("/webhook", &h, &big).await.0, 413);
    assert_eq!(s.drain().await, Vec::<String>::new());
    assert_eq!(s.get("/healthz").await, "ok\n");
}

#[tokio::test]
async fn without_a_configured_secret_every_webhook_is_refused() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let state = ApiState::new(None, tx, Arc::new(Metrics::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(http::serve(listener, state, std::future::pending()));
    let resp = reqwest::Client::new()
        .post(format!("{base}/webhook"))
        .header("X-Gitlab-Event", "Push Hook")
        .header("X-Gitlab-Token", "")
        .body(PUSH.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert!(rx.try_recv().is_err());
}

#[tokio::test]
async fn api_retry_reaches_the_daemon_loop_and_returns_its_answer() {
    let mut s = start().await;
    let client = s.client.clone();
    let url = format!("{}/api/retry", s.base);
    let call = tokio::spawn(async move {
        let r = client
            .post(url)
            .body(r#"{"environment":"shop/production"}"#)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    });
    match s.triggers.recv().await.unwrap() {
        Trigger::Retry { environment, reply } => {
            assert_eq!(environment, "shop/production");
            reply
                .send(Ok("retry of shop/production queued".into()))
                .unwrap();
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        call.await.unwrap(),
        (
            202,
            r#"{"queued":"retry of shop/production queued"}"#.into()
        )
    );
}

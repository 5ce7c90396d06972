//! The daemon's HTTP surface (axum): `/healthz`, `/metrics`, webhooks and the local API.
//!
//! Routes:
//! - `GET /healthz` → `ok`
//! - `GET /metrics` → Prometheus text
//! - `POST /webhook` (forge detected from headers), `POST /webhook/{github|gitea|forgejo|gitlab}`
//! - `POST /api/retry`, `POST /api/migrate` with `{"environment": "app/env"}`: loopback peers only.
//!
//! A webhook only ever becomes a `Trigger` (fetch, or compute a PR comment); it never carries
//! config data into the daemon.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::metrics::Metrics;
use super::webhook::{self, DeliveryLog, Forge, WebhookError, WebhookEvent, WebhookSecret};

/// Where `keystone daemon` listens unless told otherwise, and where `keystone migrate` asks.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9474";

/// Largest webhook body accepted (GitHub caps payloads at 25 MB, but config repo pushes are small).
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// What the HTTP layer asks the daemon loop to do.
#[derive(Debug)]
pub enum Trigger {
    /// Fetch the config repository (something may have been pushed).
    Fetch { reason: String },
    /// Compute the plan diff of a pull request and post it.
    PullRequest {
        forge: Forge,
        number: u64,
        head_sha: Option<String>,
    },
    /// Deploy the tracked commit of an environment again, even though it failed before.
    Retry {
        environment: String,
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// Run the environment's migrations now (manual migration).
    Migrate {
        environment: String,
        reply: oneshot::Sender<Result<String, String>>,
    },
}

pub struct ApiState {
    pub secret: Option<WebhookSecret>,
    pub deliveries: Mutex<DeliveryLog>,
    pub triggers: mpsc::UnboundedSender<Trigger>,
    pub metrics: Arc<Metrics>,
}

impl ApiState {
    pub fn new(
        secret: Option<WebhookSecret>,
        triggers: mpsc::UnboundedSender<Trigger>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(ApiState {
            secret,
            deliveries: Mutex::new(DeliveryLog::new(4096)),
            triggers,
            metrics,
        })
    }
}

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/webhook", post(webhook_any))
        .route("/webhook/{forge}", post(webhook_forge))
        .route("/api/retry", post(api_retry))
        .route("/api/migrate", post(api_migrate))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Serve `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<ApiState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

async fn metrics(State(s): State<Arc<ApiState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

async fn webhook_any(State(s): State<Arc<ApiState>>, headers: HeaderMap, body: Bytes) -> Response {
    handle_webhook(&s, None, &headers, &body)
}

async fn webhook_forge(
    State(s): State<Arc<ApiState>>,
    Path(forge): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match Forge::parse(&forge) {
        Some(f) => handle_webhook(&s, Some(f), &headers, &body),
        None => (StatusCode::NOT_FOUND, format!("unknown forge {forge:?}\n")).into_response(),
    }
}

fn handle_webhook(
    s: &ApiState,
    forge: Option<Forge>,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let delivery = match webhook::verify(forge, headers, body, s.secret.as_ref()) {
        Ok(d) => d,
        Err(e) => {
            let forge_name = forge
                .or_else(|| webhook::detect(headers))
                .map(Forge::as_str)
                .unwrap_or("unknown");
            let code = match e {
                WebhookError::BadPayload { .. } => StatusCode::BAD_REQUEST,
                WebhookError::UnknownForge => StatusCode::BAD_REQUEST,
                _ => StatusCode::UNAUTHORIZED,
            };
            s.metrics.webhook(
                forge_name,
                if code == StatusCode::UNAUTHORIZED {
                    "unauthorized"
                } else {
                    "bad_request"
                },
            );
            tracing::warn!(forge = forge_name, error = %e, "webhook refused");
            return (code, format!("{e}\n")).into_response();
        }
    };
    let forge_name = delivery.forge.as_str();
    if let Some(id) = &delivery.id {
        let first = s
            .deliveries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .first_time(delivery.forge, id);
        if !first {
            s.metrics.webhook(forge_name, "duplicate");
            return (StatusCode::OK, "duplicate delivery, ignored\n").into_response();
        }
    }
    let reply = match delivery.event {
        WebhookEvent::Ping => "pong\n",
        WebhookEvent::Push { git_ref } => {
            let reason = format!(
                "{forge_name} push{}",
                git_ref.map(|r| format!(" {r}")).unwrap_or_default()
            );
            tracing::info!(forge = forge_name, delivery = ?delivery.id, "webhook received: {reason}");
            let _ = s.triggers.send(Trigger::Fetch { reason });
            "fetch queued\n"
        }
        WebhookEvent::PullRequest {
            number,
            action,
            head_sha,
            ..
        } => {
            if is_pr_update(&action) {
                let _ = s.triggers.send(Trigger::PullRequest {
                    forge: delivery.forge,
                    number,
                    head_sha,
                });
                "plan queued\n"
            } else {
                "pull request action ignored\n"
            }
        }
        WebhookEvent::Ignored(_) => "event ignored\n",
    };
    s.metrics.webhook(forge_name, "accepted");
    (StatusCode::ACCEPTED, reply).into_response()
}

/// Pull request actions that change what the plan diff shows.
fn is_pr_update(action: &str) -> bool {
    matches!(
        action,
        "opened"
            | "reopened"
            | "synchronize"
            | "synchronized"
            | "edited"
            | "open"
            | "reopen"
            | "update"
    )
}

#[derive(Debug, Deserialize, Serialize)]
pub struct EnvironmentRequest {
    pub environment: String,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct ApiReply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

async fn api_retry(
    State(s): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Response {
    api_call(&s, peer, &body, |environment, reply| Trigger::Retry {
        environment,
        reply,
    })
    .await
}

async fn api_migrate(
    State(s): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Response {
    api_call(&s, peer, &body, |environment, reply| Trigger::Migrate {
        environment,
        reply,
    })
    .await
}

async fn api_call(
    s: &ApiState,
    peer: SocketAddr,
    body: &[u8],
    make: impl FnOnce(String, oneshot::Sender<Result<String, String>>) -> Trigger,
) -> Response {
    let reply_with = |code: StatusCode, r: ApiReply| (code, axum::Json(r)).into_response();
    if !peer.ip().is_loopback() {
        return reply_with(
            StatusCode::FORBIDDEN,
            ApiReply {
                queued: None,
                error: Some("the API only answers on loopback".into()),
            },
        );
    }
    let req: EnvironmentRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return reply_with(
                StatusCode::BAD_REQUEST,
                ApiReply {
                    queued: None,
                    error: Some(format!("expected {{\"environment\": \"app/env\"}}: {e}")),
                },
            );
        }
    };
    let (tx, rx) = oneshot::channel();
    if s.triggers.send(make(req.environment, tx)).is_err() {
        return reply_with(
            StatusCode::SERVICE_UNAVAILABLE,
            ApiReply {
                queued: None,
                error: Some("the daemon is shutting down".into()),
            },
        );
    }
    match tokio::time::timeout(Duration::from_secs(30), rx).await {
        Ok(Ok(Ok(queued))) => reply_with(
            StatusCode::ACCEPTED,
            ApiReply {
                queued: Some(queued),
                error: None,
            },
        ),
        Ok(Ok(Err(error))) => reply_with(
            StatusCode::UNPROCESSABLE_ENTITY,
            ApiReply {
                queued: None,
                error: Some(error),
            },
        ),
        _ => reply_with(
            StatusCode::SERVICE_UNAVAILABLE,
            ApiReply {
                queued: None,
                error: Some("the daemon did not answer".into()),
            },
        ),
    }
}

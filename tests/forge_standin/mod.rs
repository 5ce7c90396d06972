#![allow(dead_code)]
//! A stand-in forge API (GitHub and Gitea dialects) on 127.0.0.1 that keeps comments and
//! statuses in memory and records every request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{OriginalUri, Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::routing::{get, patch, post};
use serde_json::{Value, json};

#[derive(Default)]
pub struct Forge {
    pub next_id: u64,
    /// (id, issue, author, body)
    pub comments: Vec<(u64, u64, String, String)>,
    /// "METHOD path?query auth-header body"
    pub requests: Vec<String>,
    pub statuses: Vec<(String, Value)>,
}

pub type Shared = Arc<Mutex<Forge>>;

fn record(f: &Shared, method: &Method, uri: &Uri, headers: &HeaderMap, body: &str) {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    f.lock().unwrap().requests.push(
        format!("{method} {uri} [{auth}] {body}")
            .trim_end()
            .to_string(),
    );
}

async fn user(
    State(f): State<Shared>,
    m: Method,
    OriginalUri(u): OriginalUri,
    h: HeaderMap,
) -> axum::Json<Value> {
    record(&f, &m, &u, &h, "");
    axum::Json(json!({"login": "keystone-bot", "id": 1}))
}

async fn list(
    State(f): State<Shared>,
    Path((_o, _r, issue)): Path<(String, String, u64)>,
    Query(q): Query<HashMap<String, String>>,
    m: Method,
    OriginalUri(u): OriginalUri,
    h: HeaderMap,
) -> axum::Json<Value> {
    record(&f, &m, &u, &h, "");
    let per = q
        .get("per_page")
        .or(q.get("limit"))
        .and_then(|v| v.parse().ok())
        .unwrap_or(30usize);
    let page: usize = q.get("page").and_then(|v| v.parse().ok()).unwrap_or(1);
    let g = f.lock().unwrap();
    let all: Vec<Value> = g
        .comments
        .iter()
        .filter(|c| c.1 == issue)
        .map(|c| json!({"id": c.0, "body": c.3, "user": {"login": c.2}}))
        .collect();
    axum::Json(Value::Array(
        all.into_iter().skip((page - 1) * per).take(per).collect(),
    ))
}

async fn create(
    State(f): State<Shared>,
    Path((_o, _r, issue)): Path<(String, String, u64)>,
    m: Method,
    OriginalUri(u): OriginalUri,
    h: HeaderMap,
    body: String,
) -> (StatusCode, axum::Json<Value>) {
    record(&f, &m, &u, &h, &body);
    let v: Value = serde_json::from_str(&body).unwrap();
    let mut g = f.lock().unwrap();
    g.next_id += 1;
    let id = 1000 + g.next_id;
    g.comments.push((
        id,
        issue,
        "keystone-bot".into(),
        v["body"].as_str().unwrap().into(),
    ));
    (StatusCode::CREATED, axum::Json(json!({"id": id})))
}

async fn edit(
    State(f): State<Shared>,
    Path((_o, _r, id)): Path<(String, String, u64)>,
    m: Method,
    OriginalUri(u): OriginalUri,
    h: HeaderMap,
    body: String,
) -> StatusCode {
    record(&f, &m, &u, &h, &body);
    let mut g = f.lock().unwrap();
    if m == Method::DELETE {
        g.comments.retain(|c| c.0 != id);
        return StatusCode::NO_CONTENT;
    }
    let v: Value = serde_json::from_str(&body).unwrap();
    match g.comments.iter_mut().find(|c| c.0 == id) {
        Some(c) => {
            c.3 = v["body"].as_str().unwrap().into();
            StatusCode::OK
        }
        None => StatusCode::NOT_FOUND,
    }
}

async fn status(
    State(f): State<Shared>,
    Path((_o, _r, sha)): Path<(String, String, String)>,
    m: Method,
    OriginalUri(u): OriginalUri,
    h: HeaderMap,
    body: String,
) -> StatusCode {
    record(&f, &m, &u, &h, &body);
    f.lock()
        .unwrap()
        .statuses
        .push((sha, serde_json::from_str(&body).unwrap()));
    StatusCode::CREATED
}

fn api() -> Router<Shared> {
    Router::new()
        .route("/user", get(user))
        .route("/repos/{o}/{r}/issues/{n}/comments", get(list).post(create))
        .route(
            "/repos/{o}/{r}/issues/comments/{id}",
            patch(edit).delete(edit),
        )
        .route("/repos/{o}/{r}/statuses/{sha}", post(status))
}

pub async fn start() -> (String, Shared) {
    let shared: Shared = Default::default();
    let app = Router::new()
        .merge(api())
        .nest("/api/v1", api())
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, shared)
}

pub fn take_requests(f: &Shared) -> Vec<String> {
    std::mem::take(&mut f.lock().unwrap().requests)
}

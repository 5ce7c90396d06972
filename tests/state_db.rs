//! The state database: executions recorded through the recorder while real `sh` steps run on the
//! local transport, recovery after a dead process, applied state, slices, credentials, locking.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use keystone::execute::{
    Event, ExecuteOptions, Executor, LocalTransport, Observer, Redactor, Shutdown, Status,
};
use keystone::model::AttachmentRole;
use keystone::plan::{
    Applied, AppliedAppService, AppliedEnvironment, AppliedImage, AppliedReplica,
    AppliedSharedService, AppliedSlice,
};
use keystone::plan::{Children, Operation, OperationKind, Payload, Step, StepAction, Target};
use keystone::state::{State, StateError, load_identity};

fn run(name: &str, script: &str) -> Step {
    Step {
        name: name.into(),
        target: Target::Local,
        action: StepAction::Run {
            script: script.into(),
            stdin: None,
        },
        timeout: Duration::from_secs(20),
        idempotent: false,
        capture: None,
        on_failure: None,
    }
}

fn op(id: &str, steps: Vec<Step>, children: Vec<Operation>) -> Operation {
    Operation {
        id: id.into(),
        kind: OperationKind::EnvironmentDeploy,
        title: format!("title of {id}"),
        server: None,
        steps,
        children_mode: Children::Sequential,
        children,
    }
}

async fn execute(
    state: &Arc<State>,
    tree: &Operation,
    redactor: Redactor,
) -> keystone::state::ExecutionRecord {
    let id = state
        .begin_execution(Some("shop/production"), Some("abc123"), tree)
        .unwrap();
    let recorder = Arc::new(state.recorder(id));
    let exec = Executor::new(
        Arc::new(LocalTransport),
        recorder.clone(),
        redactor,
        ExecuteOptions::default(),
    );
    exec.execute(tree, &Shutdown::new()).await;
    recorder.finish().unwrap();
    state.execution(id).unwrap().unwrap()
}

#[tokio::test]
async fn an_execution_is_recorded_with_order_status_errors_and_redacted_output() {
    let dir = tempfile::tempdir().unwrap();
    let state = Arc::new(State::open(dir.path()).unwrap());
    let upload_path = dir.path().join("out/.env");
    let tree = op(
        "shop/production",
        vec![run("hello", "echo hello; echo token=tok-SECRET-1 >&2")],
        vec![
            op(
                "shop/production/web",
                vec![Step {
                    name: "upload .env".into(),
                    target: Target::Local,
                    action: StepAction::Upload {
                        path: upload_path.display().to_string(),
                        mode: 0o600,
                        contents: Payload {
                            bytes: b"A=1\n".to_vec(),
                            summary: ".env (1 variable)".into(),
                            sha256: String::new(),
                        },
                    },
                    timeout: Duration::from_secs(5),
                    idempotent: true,
                    capture: None,
                    on_failure: None,
                }],
                vec![op(
                    "shop/production/web/web#1",
                    vec![run("boom", "echo about to fail; exit 7")],
                    vec![],
                )],
            ),
            op(
                "shop/production/cutover",
                vec![run("never", "echo never")],
                vec![],
            ),
        ],
    );
    let redactor = Redactor::new();
    redactor.add("tok-SECRET-1");
    let rec = execute(&state, &tree, redactor).await;
    assert_eq!(rec.status, Status::Failed);
    assert_eq!(rec.environment.as_deref(), Some("shop/production"));
    assert_eq!(rec.commit.as_deref(), Some("abc123"));
    assert!(rec.finished_at.is_some());
    let ops: Vec<(&str, Option<&str>, u32, Status)> = rec
        .operations
        .iter()
        .map(|o| {
            (
                o.op_id.as_str(),
                o.parent_op_id.as_deref(),
                o.depth,
                o.status,
            )
        })
        .collect();
    assert_eq!(
        ops,
        [
            ("shop/production", None, 0, Status::Failed),
            (
                "shop/production/web",
                Some("shop/production"),
                1,
                Status::Failed
            ),
            (
                "shop/production/web/web#1",
                Some("shop/production/web"),
                2,
                Status::Failed
            ),
            (
                "shop/production/cutover",
                Some("shop/production"),
                1,
                Status::Cancelled
            ),
        ]
    );
    let root = rec.operation("shop/production").unwrap();
    assert_eq!(root.error.as_deref(), Some("shop/production/web failed"));
    let hello = &root.steps[0];
    assert_eq!(
        (hello.status, hello.exit_code, hello.attempts),
        (Status::Succeeded, Some(0), 1)
    );
    let text = hello.output.as_ref().unwrap().text();
    assert!(
        text.contains("hello\n") && text.contains("token=[redacted]\n"),
        "{text:?}"
    );
    let upload = &rec.operation("shop/production/web").unwrap().steps[0];
    assert_eq!(upload.action, "upload");
    assert_eq!(
        upload.detail,
        format!("{} (mode 600): .env (1 variable)", upload_path.display())
    );
    assert_eq!(upload.status, Status::Succeeded);
    let boom = &rec.operation("shop/production/web/web#1").unwrap().steps[0];
    assert_eq!((boom.status, boom.exit_code), (Status::Failed, Some(7)));
    assert_eq!(boom.error.as_deref(), Some("exit status 7"));
    assert_eq!(boom.output.as_ref().unwrap().text(), "about to fail\n");
    let never = &rec.operation("shop/production/cutover").unwrap().steps[0];
    assert_eq!(
        (never.status, never.attempts, &never.output),
        (Status::Cancelled, 0, &None)
    );

    // Nothing of the secret reached the database file.
    drop(state);
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            continue;
        }
        let bytes = std::fs::read(path).unwrap();
        assert!(!bytes.windows(12).any(|w| w == b"tok-SECRET-1"));
    }
}

#[tokio::test]
async fn output_is_capped_keeping_head_and_tail() {
    let state = Arc::new(State::open_in_memory().unwrap());
    // 300,000 bytes: lines "line 000001" .. (11 bytes + newline each = 12 bytes, 25,000 lines).
    let tree = op(
        "big",
        vec![run(
            "print",
            "i=1; while [ $i -le 25000 ]; do printf 'line %06d\\n' $i; i=$((i+1)); done",
        )],
        vec![],
    );
    let rec = execute(&state, &tree, Redactor::new()).await;
    let out = rec.operations[0].steps[0].output.clone().unwrap();
    assert_eq!(out.total_bytes, 300_000);
    assert_eq!(out.head.len(), 64 * 1024);
    assert_eq!(out.tail.len(), 64 * 1024);
    assert!(out.head.starts_with("line 000001\nline 000002\n"));
    assert!(out.tail.ends_with("line 024999\nline 025000\n"));
    assert!(
        out.text()
            .contains(&format!("[… {} bytes omitted …]", 300_000 - 2 * 64 * 1024))
    );
}

/// Stops after the first step started: like a process killed mid-step.
struct KillAfterStart(Arc<dyn Observer>, AtomicUsize);
impl Observer for KillAfterStart {
    fn on_event(&self, e: &Event<'_>) {
        self.0.on_event(e);
        if matches!(e, Event::StepStarted { .. }) {
            self.1.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[tokio::test]
async fn what_a_dead_process_left_running_is_interrupted_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let tree = op(
        "env",
        vec![],
        vec![
            op("first", vec![run("ok", "true")], vec![]),
            op(
                "slow",
                vec![run("sleep", "sleep 30"), run("after", "true")],
                vec![],
            ),
            op("later", vec![run("x", "true")], vec![]),
        ],
    );
    let id = {
        let state = Arc::new(State::open(dir.path()).unwrap());
        let id = state.begin_execution(None, None, &tree).unwrap();
        let recorder: Arc<dyn Observer> = Arc::new(state.recorder(id));
        let watcher = Arc::new(KillAfterStart(recorder, AtomicUsize::new(0)));
        let exec = Executor::new(
            Arc::new(LocalTransport),
            watcher.clone(),
            Redactor::new(),
            ExecuteOptions::default(),
        );
        // Abandon the execution while `sleep 30` runs, the way a killed process would: its
        // future is dropped and nothing more is recorded.
        let shutdown = Shutdown::new();
        let run = exec.execute(&tree, &shutdown);
        tokio::select! {
            _ = run => panic!("should not finish"),
            _ = async { while watcher.1.load(Ordering::SeqCst) < 2 { tokio::time::sleep(Duration::from_millis(10)).await } } => {}
        }
        id
    };
    let state = State::open(dir.path()).unwrap();
    assert_eq!(
        state.interrupted_at_open(),
        [(id, "env".to_string()), (id, "slow".to_string())]
    );
    let rec = state.execution(id).unwrap().unwrap();
    assert_eq!(rec.status, Status::Interrupted);
    let statuses: Vec<(&str, Status, Vec<Status>)> = rec
        .operations
        .iter()
        .map(|o| {
            (
                o.op_id.as_str(),
                o.status,
                o.steps.iter().map(|s| s.status).collect(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [
            ("env", Status::Interrupted, vec![]),
            ("first", Status::Succeeded, vec![Status::Succeeded]),
            (
                "slow",
                Status::Interrupted,
                vec![Status::Interrupted, Status::Cancelled]
            ),
            ("later", Status::Cancelled, vec![Status::Cancelled]),
        ]
    );
    assert_eq!(
        rec.operation("slow").unwrap().error.as_deref(),
        Some("the keystone process running it stopped")
    );
    // Opening again finds nothing left to recover.
    drop(state);
    assert!(
        State::open(dir.path())
            .unwrap()
            .interrupted_at_open()
            .is_empty()
    );
}

#[test]
fn one_process_owns_a_state_directory() {
    let dir = tempfile::tempdir().unwrap();
    let first = State::open(dir.path()).unwrap();
    let err = State::open(dir.path()).unwrap_err();
    assert!(matches!(err, StateError::Locked { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "state directory {0} is in use by another keystone process (it holds {0}/keystone.lock); stop it or use another --state",
            dir.path().display()
        )
    );
    drop(first);
    State::open(dir.path()).unwrap();
}

#[test]
fn applied_state_round_trips_per_environment_and_service() {
    let dir = tempfile::tempdir().unwrap();
    let digest = format!("sha256:{}", "ab".repeat(32));
    let production = AppliedEnvironment {
        config_commit: "e4f5a6b".into(),
        image: Some(AppliedImage {
            repository: "10.77.0.1:5000/acme/shop".into(),
            digest: digest.clone(),
        }),
        services: [(
            "web".to_string(),
            AppliedAppService {
                driver: "laravel".into(),
                replicas: vec![AppliedReplica {
                    index: 1,
                    server: "web-1".into(),
                    slot: "a".into(),
                    container: "shop-production-web-1-a".into(),
                    project: "shop-production-web-1".into(),
                    host_port: Some(20001),
                    digest: digest.clone(),
                    env_fingerprint: Some("sha256:00".into()),
                }],
            },
        )]
        .into(),
        slices: [(
            "main-valkey".to_string(),
            AppliedSlice::ValkeyDatabase {
                index: 3,
                roles: vec![AttachmentRole::Cache],
            },
        )]
        .into(),
        ..Default::default()
    };
    {
        let state = State::open(dir.path()).unwrap();
        assert_eq!(state.applied().unwrap(), Applied::default());
        state
            .record_environment("shop/production", &production)
            .unwrap();
        let staging = AppliedEnvironment {
            config_commit: "e4f5a6b".into(),
            ..Default::default()
        };
        state.record_environment("shop/staging", &staging).unwrap();
        let newer = AppliedEnvironment {
            config_commit: "0000001".into(),
            ..production.clone()
        };
        state.record_environment("shop/production", &newer).unwrap();
        state
            .record_shared_service(
                "main-postgres",
                &AppliedSharedService {
                    driver: "postgres18".into(),
                    image: "10.77.0.1:5000/standin/postgres:18".into(),
                    digest: Some(digest.clone()),
                    replicas: vec![],
                    volumes: vec!["keystone_service_main-postgres_data".into()],
                },
            )
            .unwrap();
    }
    let state = State::open(dir.path()).unwrap();
    let applied = state.applied().unwrap();
    assert_eq!(
        applied.environments.keys().collect::<Vec<_>>(),
        ["shop/production", "shop/staging"]
    );
    let got = applied.environment("shop", "production").unwrap();
    assert_eq!(got.config_commit, "0000001");
    assert_eq!(got.services, production.services);
    assert_eq!(got.slices, production.slices);
    assert_eq!(
        applied.services["main-postgres"].volumes,
        ["keystone_service_main-postgres_data"]
    );
    state.forget_environment("shop/staging").unwrap();
    assert_eq!(state.applied().unwrap().environments.len(), 1);
}

#[test]
fn credentials_are_generated_once_and_stored_encrypted_to_the_identity() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/config-repo/TEST-ONLY-age-key.txt"
    );
    let identity = load_identity(std::path::Path::new(key_file)).unwrap();
    let calls = AtomicUsize::new(0);
    let generate = || {
        calls.fetch_add(1, Ordering::SeqCst);
        "pg-admin-Zx81-secret".to_string()
    };
    {
        let state = State::open(dir.path())
            .unwrap()
            .with_identity(identity.clone());
        assert_eq!(
            state
                .credential("main-postgres", "admin_password", generate)
                .unwrap(),
            "pg-admin-Zx81-secret"
        );
        assert_eq!(
            state
                .credential("main-postgres", "admin_password", || unreachable!(
                    "already generated"
                ))
                .unwrap(),
            "pg-admin-Zx81-secret"
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let state = State::open(dir.path())
        .unwrap()
        .with_identity(identity.clone());
    assert_eq!(
        state
            .credential("main-postgres", "admin_password", || unreachable!())
            .unwrap(),
        "pg-admin-Zx81-secret"
    );
    drop(state);
    // At rest it is an age file, not the value.
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(!bytes.windows(20).any(|w| w == b"pg-admin-Zx81-secret"));
    }
    let conn = rusqlite_free_read(dir.path());
    assert!(
        conn.starts_with(b"age-encryption.org/v1\n"),
        "{:?}",
        String::from_utf8_lossy(&conn[..30])
    );

    // Another identity cannot read it; no identity cannot create one.
    let other = State::open(dir.path())
        .unwrap()
        .with_identity(age::x25519::Identity::generate());
    let err = other
        .credential("main-postgres", "admin_password", || unreachable!())
        .unwrap_err();
    assert!(
        err.to_string().starts_with(
            "credential main-postgres/admin_password cannot be decrypted with this age identity"
        ),
        "{err}"
    );
    drop(other);
    let none = State::open(dir.path()).unwrap();
    assert_eq!(
        none.credential("main-valkey", "password", || "x".into())
            .unwrap_err()
            .to_string(),
        "credential main-valkey/password: no age identity to encrypt it to (give the daemon its identity with --age-key-file)"
    );
    drop(none);

    // {{generated:…}} values: 32 random bytes as URL-safe base64, stable once made.
    let state = State::open(dir.path()).unwrap().with_identity(identity);
    let a = state.generated("main-postgres/shop-production").unwrap();
    assert_eq!(a.len(), 43);
    assert!(
        a.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "{a}"
    );
    assert_eq!(state.generated("main-postgres/shop-production").unwrap(), a);
    assert_ne!(state.generated("main-postgres/shop-staging").unwrap(), a);
}

/// The stored ciphertext, read with the sqlite3 library directly.
fn rusqlite_free_read(dir: &std::path::Path) -> Vec<u8> {
    let conn = rusqlite::Connection::open(dir.join("state.sqlite3")).unwrap();
    conn.query_row("SELECT ciphertext FROM credentials", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test]
async fn secret_and_generated_placeholders_are_filled_from_secrets_and_state_and_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/config-repo/TEST-ONLY-age-key.txt"
    );
    let state = Arc::new(
        State::open(&dir.path().join("state"))
            .unwrap()
            .with_identity(load_identity(std::path::Path::new(key_file)).unwrap()),
    );
    let values = Arc::new(keystone::state::StateValues::new(
        state.clone(),
        |path| match path {
            "registry.password" => Ok("reg-Secret-991".to_string()),
            other => Err(format!("no secret {other}")),
        },
    ));
    let env_file = dir.path().join("srv/.env");
    let payload = |bytes: &[u8]| Payload {
        bytes: bytes.to_vec(),
        summary: "payload".into(),
        sha256: String::new(),
    };
    let tree = op(
        "env",
        vec![
            Step {
                name: "upload .env".into(),
                target: Target::Local,
                action: StepAction::Upload {
                    path: env_file.display().to_string(),
                    mode: 0o600,
                    contents: payload(b"DB_PASSWORD={{generated:main-postgres/shop}}\n"),
                },
                timeout: Duration::from_secs(5),
                idempotent: true,
                capture: None,
                on_failure: None,
            },
            Step {
                name: "login".into(),
                target: Target::Local,
                action: StepAction::Run {
                    script: format!(
                        "read pw; echo \"got $pw\"; cat {}",
                        keystone::shell::quote(env_file.to_str().unwrap())
                    ),
                    stdin: Some(payload(b"{{secret:registry.password}}\n")),
                },
                timeout: Duration::from_secs(5),
                idempotent: false,
                capture: None,
                on_failure: None,
            },
        ],
        vec![],
    );
    let id = state.begin_execution(None, None, &tree).unwrap();
    let recorder = Arc::new(state.recorder(id));
    let redactor = Redactor::new();
    let exec = Executor::new(
        Arc::new(LocalTransport),
        recorder.clone(),
        redactor.clone(),
        ExecuteOptions::default(),
    )
    .with_values(values);
    let report = exec.execute(&tree, &Shutdown::new()).await;
    assert!(report.converged(), "{report:?}");
    let generated = state.generated("main-postgres/shop").unwrap();
    assert_eq!(
        std::fs::read_to_string(&env_file).unwrap(),
        format!("DB_PASSWORD={generated}\n")
    );
    let stored = state.execution(id).unwrap().unwrap().operations[0].steps[1]
        .output
        .clone()
        .unwrap()
        .text();
    assert_eq!(stored, "got [redacted]\nDB_PASSWORD=[redacted]\n");
    // The caller's redactor now hides them too (status files, logs).
    assert_eq!(
        redactor.redact(&format!("x {generated} reg-Secret-991")),
        "x [redacted] [redacted]"
    );
}

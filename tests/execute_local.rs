//! The local transport: real `sh` on this machine.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use keystone::execute::{
    ExecuteOptions, Executor, LocalTransport, NoObserver, Output, Redactor, Shutdown, Status,
    Stream, Transport,
};
use keystone::plan::{Children, Operation, OperationKind, Step, StepAction, Target};

#[tokio::test]
async fn runs_sh_streams_both_outputs_and_feeds_binary_stdin() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let mut out = Output::new(Redactor::new(), move |stream, text| {
        sink.lock().unwrap().push((stream, text.to_string()))
    });
    let input: Vec<u8> = (0..=255u8).collect();
    let code = LocalTransport
        .run(
            &Target::Local,
            "echo out; echo err >&2; od -An -tx1 | tr -d ' \\n' | cut -c1-16; exit 4",
            Some(&input),
            Duration::from_secs(5),
            &mut out,
        )
        .await
        .unwrap();
    assert_eq!(code, Some(4));
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.contains(&(Stream::Stderr, "err\n".to_string())),
        "{seen:?}"
    );
    assert_eq!(out.stdout.text(), "out\n0001020304050607\n");
    assert_eq!(out.last_stderr_line.as_deref(), Some("err"));
}

#[tokio::test]
async fn a_timed_out_step_leaves_no_process_behind() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("still-running");
    let script = format!(
        "(sleep 1; touch {m}) & sleep 30",
        m = keystone::shell::quote(marker.to_str().unwrap())
    );
    let op = Operation {
        id: "t".into(),
        kind: OperationKind::Build,
        title: "t".into(),
        server: None,
        steps: vec![Step {
            name: "slow".into(),
            target: Target::Local,
            action: StepAction::Run {
                script,
                stdin: None,
            },
            timeout: Duration::from_millis(200),
            idempotent: false,
            capture: None,
            on_failure: None,
        }],
        children_mode: Children::Sequential,
        children: vec![],
    };
    let exec = Executor::new(
        Arc::new(LocalTransport),
        Arc::new(NoObserver),
        Redactor::new(),
        ExecuteOptions::default(),
    );
    let report = exec.execute(&op, &Shutdown::new()).await;
    assert_eq!(report.status(), Status::Failed);
    assert_eq!(
        report.root.steps[0].error.as_deref(),
        Some("timed out after 200ms")
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !marker.exists(),
        "the background child of the timed-out step kept running"
    );
}

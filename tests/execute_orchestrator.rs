//! The orchestrator against a recording transport (pure: no hosts). Scripts are tiny commands the
//! transport interprets: `ok`, `fail`, `sleep <ms>`, `flaky <n>` (fails the first n attempts),
//! `print <text>`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keystone::execute::{
    BoxFuture, Event, ExecuteOptions, Executor, Observer, Output, Redactor, Shutdown, Status,
    Stream, Transport, TransportError,
};
use keystone::plan::{Children, Operation, OperationKind, Payload, Step, StepAction, Target};

/// server, path, bytes, mode
type Upload = (String, String, Vec<u8>, u32);

#[derive(Default)]
struct Recording {
    /// `server: script` for every attempt, in start order.
    started: Mutex<Vec<String>>,
    uploads: Mutex<Vec<Upload>>,
    attempts: Mutex<HashMap<String, u32>>,
    in_flight: Mutex<HashMap<String, usize>>,
    max_in_flight_total: AtomicUsize,
    total: AtomicUsize,
    max_per_server: Mutex<HashMap<String, usize>>,
}

impl Recording {
    fn started(&self) -> Vec<String> {
        self.started.lock().unwrap().clone()
    }
}

struct RecordingTransport(Arc<Recording>);

fn server_of(target: &Target) -> String {
    match target {
        Target::Local => "local".into(),
        Target::Server(s) => s.clone(),
    }
}

impl Transport for RecordingTransport {
    fn run<'a>(
        &'a self,
        target: &'a Target,
        script: &'a str,
        _stdin: Option<&'a [u8]>,
        _timeout: Duration,
        out: &'a mut Output<'_>,
    ) -> BoxFuture<'a, Result<Option<i32>, TransportError>> {
        Box::pin(async move {
            let rec = &self.0;
            let server = server_of(target);
            if server == "pinned-wrong" {
                return Err(TransportError::HostKeyMismatch {
                    server: server.clone(),
                    address: "127.0.0.1:1".into(),
                    pinned_in: "servers/pinned-wrong.yaml".into(),
                    detail: "the host presented SHA256:x".into(),
                });
            }
            let key = format!("{server}: {script}");
            rec.started.lock().unwrap().push(key.clone());
            let attempt = {
                let mut a = rec.attempts.lock().unwrap();
                let n = a.entry(key.clone()).or_default();
                *n += 1;
                *n
            };
            {
                let mut f = rec.in_flight.lock().unwrap();
                let n = f.entry(server.clone()).or_default();
                *n += 1;
                let n = *n;
                let mut m = rec.max_per_server.lock().unwrap();
                let e = m.entry(server.clone()).or_default();
                *e = (*e).max(n);
                let t = rec.total.fetch_add(1, Ordering::SeqCst) + 1;
                rec.max_in_flight_total.fetch_max(t, Ordering::SeqCst);
            }
            let word = script.split_whitespace().next().unwrap_or("");
            let arg = script.split_once(' ').map(|(_, a)| a).unwrap_or("");
            let result = match word {
                "ok" => Ok(Some(0)),
                "fail" => {
                    out.push(Stream::Stderr, b"it broke\n");
                    Ok(Some(3))
                }
                "sleep" => {
                    tokio::time::sleep(Duration::from_millis(arg.parse().unwrap())).await;
                    Ok(Some(0))
                }
                "flaky" => {
                    if attempt <= arg.parse().unwrap() {
                        Ok(Some(1))
                    } else {
                        Ok(Some(0))
                    }
                }
                "print" => {
                    out.push(Stream::Stdout, arg.replace("\\n", "\n").as_bytes());
                    Ok(Some(0))
                }
                other => panic!("unknown test script {other:?}"),
            };
            *rec.in_flight.lock().unwrap().get_mut(&server).unwrap() -= 1;
            rec.total.fetch_sub(1, Ordering::SeqCst);
            out.finish();
            result
        })
    }

    fn upload<'a>(
        &'a self,
        target: &'a Target,
        path: &'a str,
        bytes: &'a [u8],
        mode: u32,
        _timeout: Duration,
        _out: &'a mut Output<'_>,
    ) -> BoxFuture<'a, Result<Option<i32>, TransportError>> {
        Box::pin(async move {
            let server = server_of(target);
            self.0
                .started
                .lock()
                .unwrap()
                .push(format!("{server}: upload {path}"));
            self.0
                .uploads
                .lock()
                .unwrap()
                .push((server, path.to_string(), bytes.to_vec(), mode));
            Ok(Some(0))
        })
    }
}

#[derive(Default)]
struct Log(Mutex<Vec<String>>);

impl Observer for Log {
    fn on_event(&self, e: &Event<'_>) {
        let line = match e {
            Event::ExecutionStarted { root } => format!("execution {}", root.id),
            Event::OperationStarted { op } => format!("start {}", op.id),
            Event::OperationFinished { op, status, .. } => format!("end {} {status}", op.id),
            Event::StepStarted {
                op, step, attempt, ..
            } => format!("step {}/{} #{attempt}", op.id, step.name),
            Event::StepOutput { op, text, .. } => format!("output {} {text:?}", op.id),
            Event::StepFinished {
                op, step, status, ..
            } => format!("step-end {}/{} {status}", op.id, step.name),
            Event::StepSkipped {
                op, step, status, ..
            } => format!("step-skip {}/{} {status}", op.id, step.name),
            Event::ExecutionFinished { status } => format!("finished {status}"),
        };
        self.0.lock().unwrap().push(line);
    }
}

fn step_on(server: &str, script: &str) -> Step {
    Step {
        name: script.to_string(),
        target: if server == "local" {
            Target::Local
        } else {
            Target::Server(server.to_string())
        },
        action: StepAction::Run {
            script: script.to_string(),
            stdin: None,
        },
        timeout: Duration::from_secs(10),
        idempotent: false,
        capture: None,
        on_failure: None,
    }
}

fn op(id: &str, server: Option<&str>, steps: Vec<Step>, children: Vec<Operation>) -> Operation {
    Operation {
        id: id.to_string(),
        kind: OperationKind::ServiceDeploy,
        title: id.to_string(),
        server: server.map(str::to_string),
        steps,
        children_mode: Children::Sequential,
        children,
    }
}

fn parallel(mut o: Operation) -> Operation {
    o.children_mode = Children::ParallelByServer;
    o
}

struct Harness {
    rec: Arc<Recording>,
    log: Arc<Log>,
    exec: Executor,
}

fn harness(options: ExecuteOptions) -> Harness {
    harness_with(options, Redactor::new())
}

fn harness_with(options: ExecuteOptions, redactor: Redactor) -> Harness {
    let rec = Arc::new(Recording::default());
    let log = Arc::new(Log::default());
    let exec = Executor::new(
        Arc::new(RecordingTransport(rec.clone())),
        log.clone(),
        redactor,
        options,
    );
    Harness { rec, log, exec }
}

fn redacting(secret: &str) -> Redactor {
    let r = Redactor::new();
    r.add(secret);
    r
}

fn fast() -> ExecuteOptions {
    ExecuteOptions {
        width: 4,
        retries: 2,
        backoff: Duration::from_millis(5),
        grace: Duration::from_millis(200),
    }
}

fn statuses(report: &keystone::execute::Report) -> Vec<(String, Status)> {
    report
        .root
        .walk()
        .into_iter()
        .map(|o| (o.id.clone(), o.status))
        .collect()
}

#[tokio::test]
async fn own_steps_first_then_children_in_declared_order_at_every_depth() {
    let h = harness(fast());
    let tree = op(
        "root",
        None,
        vec![
            step_on("local", "print root-1"),
            step_on("local", "print root-2"),
        ],
        vec![
            op(
                "a",
                None,
                vec![step_on("s1", "print a")],
                vec![
                    op("a1", None, vec![step_on("s1", "print a1")], vec![]),
                    op("a2", None, vec![step_on("s2", "print a2")], vec![]),
                ],
            ),
            op("b", None, vec![step_on("s1", "print b")], vec![]),
        ],
    );
    let report = h.exec.execute(&tree, &Shutdown::new()).await;
    assert!(report.converged());
    assert_eq!(
        h.rec.started(),
        [
            "local: print root-1",
            "local: print root-2",
            "s1: print a",
            "s1: print a1",
            "s2: print a2",
            "s1: print b"
        ]
    );
    let log = h.log.0.lock().unwrap().clone();
    let ops: Vec<&String> = log
        .iter()
        .filter(|l| {
            l.starts_with("start ")
                || l.starts_with("end ")
                || l.starts_with("execution")
                || l.starts_with("finished")
        })
        .collect();
    assert_eq!(
        ops,
        [
            "execution root",
            "start root",
            "start a",
            "start a1",
            "end a1 succeeded",
            "start a2",
            "end a2 succeeded",
            "end a succeeded",
            "start b",
            "end b succeeded",
            "end root succeeded",
            "finished succeeded"
        ]
    );
    assert!(
        log.contains(&"output root \"root-1\"".to_string()),
        "{log:?}"
    );
}

#[tokio::test]
async fn operations_without_steps_complete() {
    let h = harness(fast());
    let tree = op(
        "root",
        None,
        vec![],
        vec![
            op("empty", None, vec![], vec![]),
            op(
                "only-children",
                None,
                vec![],
                vec![op("leaf", None, vec![step_on("s1", "ok")], vec![])],
            ),
            parallel(op("empty-parallel", None, vec![], vec![])),
            op("after", None, vec![step_on("s1", "print after")], vec![]),
        ],
    );
    let report = h.exec.execute(&tree, &Shutdown::new()).await;
    assert_eq!(
        statuses(&report),
        [
            ("root".to_string(), Status::Succeeded),
            ("empty".to_string(), Status::Succeeded),
            ("only-children".to_string(), Status::Succeeded),
            ("leaf".to_string(), Status::Succeeded),
            ("empty-parallel".to_string(), Status::Succeeded),
            ("after".to_string(), Status::Succeeded),
        ]
    );
    assert_eq!(h.rec.started(), ["s1: ok", "s1: print after"]);

    let alone = op("alone", None, vec![], vec![]);
    let report = h.exec.execute(&alone, &Shutdown::new()).await;
    assert!(report.converged());
}

fn replicas(servers: &[&str], per_server: usize, ms: u64) -> Operation {
    let mut children = Vec::new();
    for n in 0..per_server {
        for s in servers {
            children.push(op(
                &format!("{s}#{n}"),
                Some(s),
                vec![step_on(s, &format!("sleep {}", ms + n as u64))],
                vec![],
            ));
        }
    }
    parallel(op("service", None, vec![], children))
}

#[tokio::test]
async fn parallel_children_on_different_servers_run_up_to_the_width() {
    let servers = ["h1", "h2", "h3", "h4", "h5", "h6"];
    for width in [1, 2, 3] {
        let h = harness(ExecuteOptions { width, ..fast() });
        let report = h
            .exec
            .execute(&replicas(&servers, 1, 60), &Shutdown::new())
            .await;
        assert!(report.converged());
        assert_eq!(
            h.rec.max_in_flight_total.load(Ordering::SeqCst),
            width,
            "width {width}"
        );
        // Lanes start in declared order.
        let mut first = h.rec.started()[..width].to_vec();
        first.sort();
        assert_eq!(
            first,
            servers[..width]
                .iter()
                .map(|s| format!("{s}: sleep 60"))
                .collect::<Vec<_>>()
        );
    }
}

#[tokio::test]
async fn same_server_children_keep_their_order_and_never_overlap() {
    let h = harness(ExecuteOptions { width: 8, ..fast() });
    let report = h
        .exec
        .execute(&replicas(&["h1", "h2"], 3, 20), &Shutdown::new())
        .await;
    assert!(report.converged());
    let max = h.rec.max_per_server.lock().unwrap().clone();
    assert_eq!(max.get("h1"), Some(&1));
    assert_eq!(max.get("h2"), Some(&1));
    assert_eq!(h.rec.max_in_flight_total.load(Ordering::SeqCst), 2);
    let started = h.rec.started();
    let h1: Vec<&String> = started.iter().filter(|s| s.starts_with("h1")).collect();
    assert_eq!(h1, ["h1: sleep 20", "h1: sleep 21", "h1: sleep 22"]);
    // The report keeps declared order whatever finished first.
    let ids: Vec<&str> = report.root.children.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["h1#0", "h2#0", "h1#1", "h2#1", "h1#2", "h2#2"]);
}

/// A tree four levels deep: at each level a sibling before the path, the path node, and a
/// sibling after it (with a child of its own). Returns the tree and its ids in DFS order.
fn deep_tree(fail_at: usize) -> Operation {
    fn level(depth: usize, fail_at: usize) -> Operation {
        let id = format!("L{depth}");
        let mut steps = vec![step_on("s1", &format!("print {id}.1"))];
        steps.push(step_on("s1", if depth == fail_at { "fail" } else { "ok" }));
        steps.push(step_on("s1", &format!("print {id}.3")));
        let children = if depth == 3 {
            vec![]
        } else {
            vec![
                op(
                    &format!("L{}-before", depth + 1),
                    None,
                    vec![step_on("s1", &format!("print L{}-before", depth + 1))],
                    vec![],
                ),
                level(depth + 1, fail_at),
                op(
                    &format!("L{}-after", depth + 1),
                    None,
                    vec![step_on("s1", &format!("print L{}-after", depth + 1))],
                    vec![op(
                        &format!("L{}-after-child", depth + 1),
                        None,
                        vec![step_on("s1", "ok")],
                        vec![],
                    )],
                ),
            ]
        };
        op(&id, None, steps, children)
    }
    level(0, fail_at)
}

#[tokio::test]
async fn a_failure_fails_ancestors_and_cancels_pending_descendants_and_later_siblings_at_every_depth()
 {
    for fail_at in 0..=3 {
        let h = harness(fast());
        let tree = deep_tree(fail_at);
        let report = h.exec.execute(&tree, &Shutdown::new()).await;
        assert_eq!(report.status(), Status::Failed);
        // What ran: for each level down to the failing one, its before-sibling, its first step
        // and its failing or ok second step, its third step only above the failure.
        let mut expected = Vec::new();
        for d in 0..=fail_at {
            if d > 0 {
                expected.push(format!("s1: print L{d}-before"));
            }
            expected.push(format!("s1: print L{d}.1"));
            if d == fail_at {
                expected.push("s1: fail".to_string());
            } else {
                expected.push("s1: ok".to_string());
                expected.push(format!("s1: print L{d}.3"));
            }
        }
        assert_eq!(h.rec.started(), expected, "fail at depth {fail_at}");
        for o in report.root.walk() {
            let depth: usize = o.id[1..2].parse().unwrap();
            let want = if o.id.ends_with("-before") && depth <= fail_at {
                Status::Succeeded
            } else if !o.id.contains('-') && depth <= fail_at {
                Status::Failed
            } else {
                Status::Cancelled
            };
            assert_eq!(o.status, want, "fail at {fail_at}: {}", o.id);
        }
        let failing = report.operation(&format!("L{fail_at}")).unwrap();
        assert_eq!(
            failing.steps.iter().map(|s| s.status).collect::<Vec<_>>(),
            [Status::Succeeded, Status::Failed, Status::Cancelled]
        );
        assert_eq!(
            failing.error.as_deref(),
            Some("step `fail`: exit status 3: it broke")
        );
        assert_eq!(
            report.failures(),
            [(
                format!("L{fail_at}").as_str(),
                "step `fail`: exit status 3: it broke"
            )]
        );
        if fail_at > 0 {
            let parent = report.operation(&format!("L{}", fail_at - 1)).unwrap();
            assert_eq!(
                parent.error.as_deref(),
                Some(format!("L{fail_at} failed").as_str())
            );
        }
        // Every cancelled operation is reported to the observer, never started.
        let log = h.log.0.lock().unwrap().clone();
        assert!(log.contains(&format!("end L{}-after cancelled", fail_at.max(1))) || fail_at == 0);
        assert!(
            !log.iter()
                .any(|l| l.starts_with("start ") && l.contains("-after"))
        );
    }
}

#[tokio::test]
async fn a_failing_lane_cancels_pending_work_in_other_lanes_and_lets_started_operations_finish() {
    let h = harness(ExecuteOptions { width: 2, ..fast() });
    let tree = op(
        "env",
        None,
        vec![],
        vec![
            parallel(op(
                "service",
                None,
                vec![],
                vec![
                    op(
                        "web#1",
                        Some("h1"),
                        vec![step_on("h1", "sleep 20"), step_on("h1", "fail")],
                        vec![],
                    ),
                    op(
                        "web#2",
                        Some("h2"),
                        vec![
                            step_on("h2", "sleep 80"),
                            step_on("h2", "print web2-second"),
                        ],
                        vec![],
                    ),
                    op("web#3", Some("h1"), vec![step_on("h1", "ok")], vec![]),
                    op("web#4", Some("h3"), vec![step_on("h3", "ok")], vec![]),
                ],
            )),
            op(
                "cutover",
                None,
                vec![step_on("h1", "print cutover")],
                vec![],
            ),
        ],
    );
    let report = h.exec.execute(&tree, &Shutdown::new()).await;
    assert_eq!(
        statuses(&report),
        [
            ("env".to_string(), Status::Failed),
            ("service".to_string(), Status::Failed),
            ("web#1".to_string(), Status::Failed),
            ("web#2".to_string(), Status::Succeeded),
            ("web#3".to_string(), Status::Cancelled),
            ("web#4".to_string(), Status::Cancelled),
            ("cutover".to_string(), Status::Cancelled),
        ]
    );
    let mut started = h.rec.started();
    started.sort();
    assert_eq!(
        started,
        [
            "h1: fail",
            "h1: sleep 20",
            "h2: print web2-second",
            "h2: sleep 80"
        ]
    );
}

#[tokio::test]
async fn every_attempt_is_bounded_by_the_step_timeout() {
    let h = harness(fast());
    let mut slow = step_on("s1", "sleep 5000");
    slow.timeout = Duration::from_millis(50);
    let tree = op("root", None, vec![slow, step_on("s1", "ok")], vec![]);
    let report = h.exec.execute(&tree, &Shutdown::new()).await;
    assert_eq!(report.status(), Status::Failed);
    let s = &report.root.steps[0];
    assert_eq!((s.status, s.attempts), (Status::Failed, 1));
    assert_eq!(s.error.as_deref(), Some("timed out after 50ms"));
    assert_eq!(report.root.steps[1].status, Status::Cancelled);

    // An idempotent step that times out is retried, each attempt with its own timeout.
    let h = harness(fast());
    let mut slow = step_on("s1", "sleep 5000");
    slow.timeout = Duration::from_millis(30);
    slow.idempotent = true;
    let report = h
        .exec
        .execute(&op("root", None, vec![slow], vec![]), &Shutdown::new())
        .await;
    assert_eq!(report.root.steps[0].attempts, 3);
    assert_eq!(h.rec.started().len(), 3);
}

#[tokio::test]
async fn only_idempotent_steps_are_retried() {
    let h = harness(fast());
    let mut flaky = step_on("s1", "flaky 2");
    flaky.idempotent = true;
    let report = h
        .exec
        .execute(&op("root", None, vec![flaky], vec![]), &Shutdown::new())
        .await;
    assert!(report.converged());
    assert_eq!(report.root.steps[0].attempts, 3);
    let log = h.log.0.lock().unwrap().clone();
    assert_eq!(
        log.iter()
            .filter(|l| l.starts_with("step"))
            .cloned()
            .collect::<Vec<_>>(),
        [
            "step root/flaky 2 #1",
            "step-end root/flaky 2 failed",
            "step root/flaky 2 #2",
            "step-end root/flaky 2 failed",
            "step root/flaky 2 #3",
            "step-end root/flaky 2 succeeded"
        ]
    );

    let h = harness(fast());
    let report = h
        .exec
        .execute(
            &op("root", None, vec![step_on("s1", "flaky 1")], vec![]),
            &Shutdown::new(),
        )
        .await;
    assert_eq!(report.status(), Status::Failed);
    assert_eq!(report.root.steps[0].attempts, 1);
    assert_eq!(report.root.steps[0].error.as_deref(), Some("exit status 1"));

    let h = harness(ExecuteOptions {
        retries: 1,
        ..fast()
    });
    let mut always = step_on("s1", "flaky 99");
    always.idempotent = true;
    let report = h
        .exec
        .execute(&op("root", None, vec![always], vec![]), &Shutdown::new())
        .await;
    assert_eq!(report.root.steps[0].attempts, 2);
    assert_eq!(report.status(), Status::Failed);

    // Errors a retry cannot fix are not retried.
    let h = harness(fast());
    let mut pinned = step_on("pinned-wrong", "ok");
    pinned.idempotent = true;
    let report = h
        .exec
        .execute(&op("root", None, vec![pinned], vec![]), &Shutdown::new())
        .await;
    assert_eq!(report.root.steps[0].attempts, 1);
    assert_eq!(
        report.root.steps[0].error.as_deref(),
        Some(
            "host key for pinned-wrong (127.0.0.1:1) does not match the key pinned in servers/pinned-wrong.yaml: the host presented SHA256:x"
        )
    );
}

#[tokio::test]
async fn on_failure_runs_once_after_the_last_attempt_on_the_same_target() {
    let h = harness(fast());
    let mut failing = step_on("s1", "fail");
    failing.idempotent = true;
    failing.on_failure = Some("print stopped and removed new-replica\\n".into());
    let mut fine = step_on("s2", "ok");
    fine.on_failure = Some("fail".into());
    let tree = parallel(op(
        "root",
        None,
        vec![],
        vec![
            op("a", Some("s2"), vec![fine], vec![]),
            op("b", Some("s1"), vec![failing], vec![]),
            op("c", Some("s1"), vec![step_on("s1", "ok")], vec![]),
        ],
    ));
    let report = h.exec.execute(&tree, &Shutdown::new()).await;
    // Three attempts of the step, then its clean-up once, on its server; the succeeded step's
    // clean-up never runs, and nothing after the failure starts.
    assert_eq!(
        h.rec
            .started()
            .into_iter()
            .filter(|s| s.starts_with("s1"))
            .collect::<Vec<_>>(),
        [
            "s1: fail",
            "s1: fail",
            "s1: fail",
            "s1: print stopped and removed new-replica\\n"
        ]
    );
    assert_eq!(
        h.rec.started().iter().filter(|s| *s == "s2: fail").count(),
        0
    );
    let b = report.operation("b").unwrap();
    assert_eq!(b.status, Status::Failed);
    assert_eq!(b.steps[0].attempts, 3);
    assert_eq!(
        b.steps[0].error.as_deref(),
        Some("exit status 3: it broke; on failure: stopped and removed new-replica")
    );
    assert_eq!(report.operation("c").unwrap().status, Status::Cancelled);

    // A clean-up that fails says so; the step's own cause stays first.
    let h = harness(fast());
    let mut failing = step_on("s1", "fail");
    failing.on_failure = Some("fail".into());
    let report = h
        .exec
        .execute(&op("root", None, vec![failing], vec![]), &Shutdown::new())
        .await;
    assert_eq!(
        report.root.steps[0].error.as_deref(),
        Some("exit status 3: it broke; on failure: the clean-up failed (exit status 3: it broke)")
    );
}

#[tokio::test]
async fn shutdown_gives_running_steps_a_grace_period_and_starts_nothing_new() {
    // A step longer than the grace period is interrupted.
    let h = harness(ExecuteOptions {
        grace: Duration::from_millis(50),
        ..fast()
    });
    let tree = op(
        "root",
        None,
        vec![],
        vec![
            op(
                "long",
                None,
                vec![step_on("s1", "sleep 10000"), step_on("s1", "ok")],
                vec![],
            ),
            op("later", None, vec![step_on("s1", "ok")], vec![]),
        ],
    );
    let shutdown = Shutdown::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        trigger.trigger();
    });
    let report = h.exec.execute(&tree, &shutdown).await;
    assert_eq!(
        statuses(&report),
        [
            ("root".to_string(), Status::Interrupted),
            ("long".to_string(), Status::Interrupted),
            ("later".to_string(), Status::Cancelled),
        ]
    );
    let long = report.operation("long").unwrap();
    assert_eq!(long.steps[0].status, Status::Interrupted);
    assert_eq!(long.steps[1].status, Status::Cancelled);
    assert_eq!(h.rec.started(), ["s1: sleep 10000"]);

    // A step that ends within the grace period keeps its result; the next one does not start.
    let h = harness(ExecuteOptions {
        grace: Duration::from_secs(5),
        ..fast()
    });
    let tree = op(
        "root",
        None,
        vec![step_on("s1", "sleep 150"), step_on("s1", "ok")],
        vec![],
    );
    let shutdown = Shutdown::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        trigger.trigger();
    });
    let report = h.exec.execute(&tree, &shutdown).await;
    assert_eq!(report.status(), Status::Interrupted);
    assert_eq!(
        report
            .root
            .steps
            .iter()
            .map(|s| s.status)
            .collect::<Vec<_>>(),
        [Status::Succeeded, Status::Cancelled]
    );
    assert_eq!(h.rec.started(), ["s1: sleep 150"]);
}

const DIGEST: &str = "sha256:4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c";

struct TestValues;
impl keystone::execute::Values for TestValues {
    fn secret(&self, path: &str) -> Result<String, String> {
        match path {
            "registry.password" => Ok("reg-PW-77".into()),
            _ => Err(format!("no secret {path}")),
        }
    }
    fn generated(&self, key: &str) -> Result<String, String> {
        Ok(format!("GEN-{key}-XYZ"))
    }
}

fn upload_step(server: &str, path: &str, contents: &[u8]) -> Step {
    Step {
        name: format!("upload {path}"),
        target: Target::Server(server.into()),
        action: StepAction::Upload {
            path: path.into(),
            mode: 0o640,
            contents: Payload {
                bytes: contents.to_vec(),
                summary: path.into(),
                sha256: String::new(),
            },
        },
        timeout: Duration::from_secs(5),
        idempotent: true,
        capture: None,
        on_failure: None,
    }
}

#[tokio::test]
async fn captures_fill_later_scripts_and_payloads_and_filled_secrets_are_redacted() {
    let rec = Arc::new(Recording::default());
    let log = Arc::new(Log::default());
    let exec = Executor::new(
        Arc::new(RecordingTransport(rec.clone())),
        log.clone(),
        Redactor::new(),
        fast(),
    )
    .with_values(Arc::new(TestValues));
    let mut build = step_on("builder", &format!("print building\\n{DIGEST}\\n"));
    build.capture = Some("digest:shop".into());
    let tree = op(
        "root",
        None,
        vec![build],
        vec![op(
            "replica",
            Some("web-1"),
            vec![
                upload_step(
                    "web-1",
                    "/srv/compose.yml",
                    b"image: r/shop@{{digest:shop}}\n",
                ),
                upload_step(
                    "web-1",
                    "/srv/.env",
                    b"PW={{secret:registry.password}}\nDB={{generated:pg/shop}}\n",
                ),
                step_on(
                    "web-1",
                    "print pulling r@{{digest:shop}} {{.State}} and leaking reg-PW-77 GEN-pg/shop-XYZ",
                ),
            ],
            vec![],
        )],
    );
    let report = exec.execute(&tree, &Shutdown::new()).await;
    assert!(report.converged(), "{report:?}");
    assert_eq!(
        report.captures.get("digest:shop").map(String::as_str),
        Some(DIGEST)
    );
    let uploads = rec.uploads.lock().unwrap().clone();
    assert_eq!(
        uploads,
        [
            (
                "web-1".to_string(),
                "/srv/compose.yml".to_string(),
                format!("image: r/shop@{DIGEST}\n").into_bytes(),
                0o640
            ),
            (
                "web-1".to_string(),
                "/srv/.env".to_string(),
                b"PW=reg-PW-77\nDB=GEN-pg/shop-XYZ\n".to_vec(),
                0o640
            ),
        ]
    );
    assert_eq!(
        rec.started().last().unwrap(),
        &format!(
            "web-1: print pulling r@{DIGEST} {{{{.State}}}} and leaking reg-PW-77 GEN-pg/shop-XYZ"
        )
    );
    let log = log.0.lock().unwrap().clone();
    let printed = log
        .iter()
        .find(|l| l.starts_with("output replica"))
        .unwrap();
    assert!(
        printed.ends_with("and leaking [redacted] [redacted]\""),
        "{printed}"
    );

    // A digest nobody captured fails its step without running it; so does a secret in a script.
    for script in ["print {{digest:web}}", "print {{secret:registry.password}}"] {
        let h = harness(fast());
        let tree = op("root", None, vec![step_on("s1", script)], vec![]);
        let report = h.exec.execute(&tree, &Shutdown::new()).await;
        assert_eq!(report.status(), Status::Failed);
        assert!(h.rec.started().is_empty());
        assert_eq!(report.root.steps[0].attempts, 1);
    }

    // A digest capture must be a digest; a capture step that prints nothing fails.
    for (script, error) in [
        (
            "print latest",
            "captured `digest:shop` is not a sha256:<64 hex> digest: \"latest\"",
        ),
        (
            "ok",
            "printed nothing on stdout, but its output was to be captured as `digest:shop`",
        ),
    ] {
        let h = harness(fast());
        let mut step = step_on("s1", script);
        step.capture = Some("digest:shop".into());
        let report = h
            .exec
            .execute(&op("root", None, vec![step], vec![]), &Shutdown::new())
            .await;
        assert_eq!(report.root.steps[0].error.as_deref(), Some(error));
    }
}

struct FixedDigest;
impl keystone::execute::DigestResolver for FixedDigest {
    fn resolve<'a>(
        &'a self,
        image: &'a str,
        registry: Option<&'a str>,
    ) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(async move {
            match (image, registry) {
                ("10.77.0.1:5000/acme/shop:latest", Some("main")) => Ok(DIGEST.to_string()),
                _ => Err(format!("manifest unknown: {image}")),
            }
        })
    }
}

#[tokio::test]
async fn resolve_digest_steps_capture_what_the_resolver_answers() {
    let resolve = |image: &str| Step {
        name: "resolve".into(),
        target: Target::Local,
        action: StepAction::ResolveDigest {
            image: image.into(),
            registry: Some("main".into()),
        },
        timeout: Duration::from_secs(5),
        idempotent: true,
        capture: Some("digest:shop".into()),
        on_failure: None,
    };
    let rec = Arc::new(Recording::default());
    let exec = Executor::new(
        Arc::new(RecordingTransport(rec.clone())),
        Arc::new(Log::default()),
        Redactor::new(),
        fast(),
    )
    .with_digest_resolver(Arc::new(FixedDigest));
    let tree = op(
        "root",
        None,
        vec![
            resolve("10.77.0.1:5000/acme/shop:latest"),
            step_on("web-1", "print {{digest:shop}}"),
        ],
        vec![],
    );
    let report = exec.execute(&tree, &Shutdown::new()).await;
    assert!(report.converged(), "{report:?}");
    assert_eq!(rec.started(), [format!("web-1: print {DIGEST}")]);

    let report = exec
        .execute(
            &op(
                "root",
                None,
                vec![resolve("10.77.0.1:5000/acme/shop:nope")],
                vec![],
            ),
            &Shutdown::new(),
        )
        .await;
    assert_eq!(
        report.root.steps[0].error.as_deref(),
        Some("manifest unknown: 10.77.0.1:5000/acme/shop:nope")
    );
    assert_eq!(report.root.steps[0].attempts, 3, "idempotent: retried");

    let h = harness(fast());
    let report = h
        .exec
        .execute(
            &op(
                "root",
                None,
                vec![resolve("10.77.0.1:5000/acme/shop:latest")],
                vec![],
            ),
            &Shutdown::new(),
        )
        .await;
    assert_eq!(
        report.root.steps[0].error.as_deref(),
        Some(
            "no registry client was given to this execution to resolve 10.77.0.1:5000/acme/shop:latest"
        )
    );
}

#[tokio::test]
async fn output_reaches_observers_only_redacted() {
    let h = harness_with(fast(), redacting("s3cret"));
    let mut leaky = step_on("s1", "print password=s3cret\\n");
    leaky.name = "print the password".into();
    let tree = op("root", None, vec![leaky], vec![]);
    let report = h.exec.execute(&tree, &Shutdown::new()).await;
    assert!(report.converged());
    let log = h.log.0.lock().unwrap().clone();
    assert!(
        log.contains(&"output root \"password=[redacted]\\n\"".to_string()),
        "{log:?}"
    );
    assert!(!log.iter().any(|l| l.contains("s3cret")));
}

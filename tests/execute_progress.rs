//! `keystone apply`'s live progress, driven by the real executor running real `sh` steps: one line
//! per finished step (with a failed step's error and output under it), and on a terminal a bar
//! per running operation drawn below those lines.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{ProgressDrawTarget, TermLike};
use keystone::execute::{
    ExecuteOptions, Executor, LocalTransport, Observer, Progress, Redactor, Shutdown,
};
use keystone::plan::{Children, Operation, OperationKind, Step, StepAction, Target};

fn step(name: &str, script: &str) -> Step {
    Step {
        name: name.into(),
        target: Target::Local,
        action: StepAction::Run {
            script: script.into(),
            stdin: None,
        },
        timeout: Duration::from_secs(10),
        idempotent: false,
        capture: None,
        on_failure: None,
    }
}

fn op(id: &str, steps: Vec<Step>, children: Vec<Operation>) -> Operation {
    Operation {
        id: id.into(),
        kind: OperationKind::ServiceDeploy,
        title: id.into(),
        server: None,
        steps,
        children,
        children_mode: Children::Sequential,
    }
}

fn tree() -> Operation {
    op(
        "env",
        vec![],
        vec![
            op("env/first", vec![step("ok", "true")], vec![]),
            op(
                "env/slow",
                vec![step("sleep", "sleep 0.5"), step("after", "true")],
                vec![],
            ),
            op(
                "env/bad",
                vec![
                    // Both on stderr: one pipe keeps their order (stdout and stderr are read apart).
                    step("fail", "echo starting >&2; echo oops >&2; exit 3"),
                    step("never", "true"),
                ],
                vec![],
            ),
        ],
    )
}

async fn run(observer: Arc<dyn Observer>) {
    let exec = Executor::new(
        Arc::new(LocalTransport),
        observer,
        Redactor::new(),
        ExecuteOptions::default(),
    );
    exec.execute(&tree(), &Shutdown::new()).await;
}

/// Durations vary: `(12ms)` → `(…)`.
fn normalized(line: &str) -> String {
    match (line.rfind(" ("), line.ends_with(')')) {
        (Some(i), true) => format!("{} (…)", &line[..i]),
        _ => line.to_string(),
    }
}

const EXPECTED: [&str; 9] = [
    "succeeded env/first · ok (…)",
    "succeeded env/slow · sleep (…)",
    "succeeded env/slow · after (…)",
    "   failed env/bad · fail (…)",
    "          exit status 3: oops",
    "          | starting",
    "          | oops",
    "cancelled env/bad · never",
    "",
];

#[tokio::test]
async fn without_a_terminal_each_finished_step_is_one_line() {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    run(Arc::new(Progress::lines(move |l| {
        sink.lock().unwrap().push(l.to_string())
    })))
    .await;
    let text = lines.lock().unwrap().join("\n") + "\n";
    let got: Vec<String> = text.split('\n').map(normalized).collect();
    assert_eq!(got, EXPECTED);
}

/// A terminal that records what is drawn on it.
#[derive(Debug, Default, Clone)]
struct Recording(Arc<Mutex<Vec<String>>>);

impl TermLike for Recording {
    fn width(&self) -> u16 {
        100
    }
    fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.0.lock().unwrap().push(s.to_string());
        Ok(())
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        self.0.lock().unwrap().push(s.to_string());
        Ok(())
    }
    fn clear_line(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn on_a_terminal_a_bar_per_running_operation_is_drawn_below_the_lines() {
    let term = Recording::default();
    run(Arc::new(Progress::with_bars(
        ProgressDrawTarget::term_like_with_hz(Box::new(term.clone()), 50),
    )))
    .await;
    let drawn = term.0.lock().unwrap().clone();
    // The bar of the operation that is running, at its current step: `sleep` runs 0.5 s.
    let frame = drawn
        .iter()
        .position(|d| d.contains("env/slow [                    ] 0/2 sleep"))
        .unwrap_or_else(|| panic!("no bar for env/slow while `sleep` runs in {drawn:#?}"));
    assert!(
        drawn[frame..]
            .iter()
            .any(|d| normalized(d.trim_end()) == "succeeded env/slow · sleep (…)"),
        "the step's line comes after its bar: {drawn:#?}"
    );
    // The same lines as without a terminal, in the same order, among the frames.
    let lines: Vec<String> = drawn
        .iter()
        .flat_map(|d| d.split('\n'))
        .map(|l| normalized(l.trim_end()))
        .filter(|l| EXPECTED.contains(&l.as_str()) && !l.is_empty())
        .collect();
    let expected: Vec<&str> = EXPECTED.iter().copied().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines, expected);
}

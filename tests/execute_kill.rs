//! SIGKILL mid-plan, then a second run converges — at the engine's level: a hand-written plan
//! run through `execute::run_plan` with a real `State` directory and the ssh transport on the
//! lab, so the kill lands while a step runs on two hosts at once. (tests/apply_signals.rs does the
//! same to the `keystone apply` binary deploying the example.) It re-executes its own binary as
//! the process to kill: with KS_ENGINE_KILL_CHILD set it runs the plan and prints each step as it
//! starts; the parent kills it with SIGKILL.
//! (`harness = false`: this file has its own `main`.)

mod engine_lab;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use keystone::execute::{
    Event, ExecuteOptions, Observer, Outcome, PlanRun, Redactor, Shutdown, SshSettings, Status,
    Transports, run_plan,
};
use keystone::plan::{
    AppliedEnvironment, AppliedImage, Children, EnvironmentPlan, EnvironmentStatus, Operation,
    OperationKind, Payload, Plan, Step, StepAction, Target,
};
use keystone::state::State;

const DIGEST: &str = "sha256:5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e";
const HOSTS: [&str; 3] = ["build-1", "web-1", "web-2"];

fn step(server: &str, name: &str, script: String) -> Step {
    Step {
        name: name.into(),
        target: Target::Server(server.into()),
        action: StepAction::Run {
            script,
            stdin: None,
        },
        timeout: Duration::from_secs(60),
        idempotent: true,
        capture: None,
        on_failure: None,
    }
}

fn op(
    id: &str,
    kind: OperationKind,
    server: Option<&str>,
    steps: Vec<Step>,
    children: Vec<Operation>,
) -> Operation {
    Operation {
        id: id.into(),
        kind,
        title: id.into(),
        server: server.map(str::to_string),
        steps,
        children_mode: Children::Sequential,
        children,
    }
}

/// A deploy-shaped plan: a build capturing a digest, two replicas (upload compose.yml with the
/// digest, a slow start, mark started), then a cutover reading both replicas' results.
fn the_plan(dir: &str) -> Plan {
    let q = keystone::shell::quote;
    let mut build = step("build-1", "build", format!("echo building; echo {DIGEST}"));
    build.capture = Some("digest:shop".into());
    let replica = |n: u32, server: &str| {
        op(
            &format!("shop/production/web/web#{n}"),
            OperationKind::ReplicaDeploy,
            Some(server),
            vec![
                Step {
                    name: "upload compose.yml".into(),
                    target: Target::Server(server.into()),
                    action: StepAction::Upload {
                        path: format!("{dir}/compose.yml"),
                        mode: 0o640,
                        contents: Payload {
                            bytes: b"services:\n  web:\n    image: 10.77.0.1:5000/acme/shop@{{digest:shop}}\n".to_vec(),
                            summary: "compose.yml".into(),
                            sha256: String::new(),
                        },
                    },
                    timeout: Duration::from_secs(30),
                    idempotent: true,
                    capture: None,
                    on_failure: None,
                },
                step(server, "start", format!("sleep 4; cp {d}/compose.yml {d}/started.yml", d = q(dir))),
            ],
            vec![],
        )
    };
    let mut web = op(
        "shop/production/web",
        OperationKind::ServiceDeploy,
        None,
        vec![],
        vec![replica(1, "web-1"), replica(2, "web-2")],
    );
    web.children_mode = Children::ParallelByServer;
    let cutover = op(
        "shop/production/cutover",
        OperationKind::GatewayCutover,
        Some("web-1"),
        vec![step(
            "web-1",
            "switch",
            format!("cat {d}/started.yml > {d}/cutover.yml", d = q(dir)),
        )],
        vec![],
    );
    let root = op(
        "shop/production",
        OperationKind::EnvironmentDeploy,
        None,
        vec![],
        vec![
            op(
                "shop/production/build",
                OperationKind::Build,
                Some("build-1"),
                vec![build],
                vec![],
            ),
            web,
            cutover,
        ],
    );
    Plan {
        config_commit: "c0ffee1".into(),
        base_commit: None,
        servers: vec![],
        services: vec![],
        environments: vec![EnvironmentPlan {
            app: "shop".into(),
            env: "production".into(),
            status: EnvironmentStatus::Changed,
            summary: "1 build, 2 replicas".into(),
            changes: vec![],
            operation_id: "kill-test".into(),
            operation: Some(root),
            blockers: vec![],
            warnings: vec![],
            applied_after: Some(AppliedEnvironment {
                config_commit: "c0ffee1".into(),
                image: Some(AppliedImage {
                    repository: "10.77.0.1:5000/acme/shop".into(),
                    digest: "{{digest:shop}}".into(),
                }),
                ..Default::default()
            }),
        }],
    }
}

struct PrintStarts;
impl Observer for PrintStarts {
    fn on_event(&self, e: &Event<'_>) {
        if let Event::StepStarted { op, step, .. } = e {
            println!("started {} {}", op.id, step.name);
        }
    }
}

async fn apply(
    state_dir: &Path,
    remote_dir: &str,
    observer: Arc<dyn Observer>,
) -> keystone::execute::PlanOutcome {
    let lab = engine_lab::lab();
    let state = Arc::new(State::open(state_dir).expect("open state"));
    let transport = Arc::new(Transports::new(
        HOSTS.iter().map(|h| lab.server(h)),
        SshSettings::new(state_dir.join("ssh"), &lab.client_key),
    ));
    let run = PlanRun {
        transport,
        state,
        observer,
        redactor: Redactor::new(),
        options: ExecuteOptions::default(),
        values: None,
        digests: None,
    };
    run_plan(&the_plan(remote_dir), None, &run, &Shutdown::new())
        .await
        .expect("run_plan")
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    if let Ok(state_dir) = std::env::var("KS_ENGINE_KILL_CHILD") {
        let remote_dir = std::env::var("KS_ENGINE_KILL_REMOTE").unwrap();
        let outcome = rt.block_on(apply(
            Path::new(&state_dir),
            &remote_dir,
            Arc::new(PrintStarts),
        ));
        std::process::exit(if outcome.converged() { 0 } else { 1 });
    }
    println!("running 1 test\ntest sigkill_mid_plan_then_a_second_run_converges ...");
    sigkill_mid_plan_then_a_second_run_converges(&rt);
    println!(
        "test sigkill_mid_plan_then_a_second_run_converges ... ok\n\ntest result: ok. 1 passed"
    );
}

fn sigkill_mid_plan_then_a_second_run_converges(rt: &tokio::runtime::Runtime) {
    let lab = engine_lab::lab();
    let state_dir = tempfile::tempdir().unwrap();
    let name = format!("engine-kill-{}", std::process::id());
    let remote_dir = format!("/home/keystone/{name}");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env("KS_ENGINE_KILL_CHILD", state_dir.path())
        .env("KS_ENGINE_KILL_REMOTE", &remote_dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    // Kill it once both replicas are in their slow `start` step.
    while seen
        .iter()
        .filter(|l: &&String| l.ends_with(" start"))
        .count()
        < 2
    {
        match lines.next() {
            Some(line) => seen.push(line.unwrap()),
            None => panic!(
                "the child ended before both starts: {seen:?} {:?}",
                child.wait()
            ),
        }
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    assert!(
        !lab.home("web-1").join(&name).join("cutover.yml").exists(),
        "killed before the cutover"
    );

    // The second run: the state says what the dead process left; the plan converges.
    let outcome = rt.block_on(async {
        let state = State::open(state_dir.path()).unwrap();
        let first = state.executions().unwrap()[0];
        let interrupted: Vec<String> = state
            .interrupted_at_open()
            .iter()
            .map(|(_, op)| op.clone())
            .collect();
        assert_eq!(
            interrupted,
            [
                "shop/production",
                "shop/production/web",
                "shop/production/web/web#1",
                "shop/production/web/web#2"
            ]
        );
        let rec = state.execution(first).unwrap().unwrap();
        assert_eq!(rec.status, Status::Interrupted);
        assert_eq!(
            rec.operation("shop/production/build").unwrap().status,
            Status::Succeeded
        );
        assert_eq!(
            rec.operation("shop/production/cutover").unwrap().status,
            Status::Cancelled
        );
        let start = &rec.operation("shop/production/web/web#1").unwrap().steps[1];
        assert_eq!(
            (start.name.as_str(), start.status),
            ("start", Status::Interrupted)
        );
        drop(state);
        apply(
            state_dir.path(),
            &remote_dir,
            Arc::new(keystone::execute::NoObserver),
        )
        .await
    });
    let Some(Outcome::Ran { report, execution }) = outcome.get("shop/production") else {
        panic!("{outcome:?}")
    };
    assert!(report.converged(), "{:?}", report.failures());
    assert!(outcome.converged());
    let compose = format!("services:\n  web:\n    image: 10.77.0.1:5000/acme/shop@{DIGEST}\n");
    for host in ["web-1", "web-2"] {
        let dir = lab.home(host).join(&name);
        assert_eq!(
            std::fs::read_to_string(dir.join("started.yml")).unwrap(),
            compose
        );
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        files.sort();
        let want: &[&str] = if host == "web-1" {
            &["compose.yml", "cutover.yml", "started.yml"]
        } else {
            &["compose.yml", "started.yml"]
        };
        assert_eq!(
            files, want,
            "{host}: no temp files left by the killed upload"
        );
    }
    let state = State::open(state_dir.path()).unwrap();
    assert_eq!(state.executions().unwrap().len(), 2);
    assert_eq!(
        state.execution(*execution).unwrap().unwrap().status,
        Status::Succeeded
    );
    let applied = state.applied().unwrap();
    assert_eq!(
        applied.environments["shop/production"]
            .image
            .as_ref()
            .unwrap()
            .digest,
        DIGEST
    );
    for host in ["web-1", "web-2"] {
        std::fs::remove_dir_all(lab.home(host).join(&name)).unwrap();
    }
}

//! The ssh transport on the lab's four hosts (scripts/lab): parallel plans over one master
//! connection per host, binary-safe uploads, pinned host keys, unreachable hosts, timeouts.

mod engine_lab;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use engine_lab::{lab, unreachable_server};
use keystone::execute::{
    Event, ExecuteOptions, Executor, Observer, Redactor, Report, Shutdown, SshSettings,
    SshTransport, Status, Transports,
};
use keystone::model::Server;
use keystone::plan::{Children, Operation, OperationKind, Payload, Step, StepAction, Target};
use sha2::{Digest, Sha256};

fn run_on(server: &str, name: &str, script: &str) -> Step {
    Step {
        name: name.into(),
        target: Target::Server(server.into()),
        action: StepAction::Run {
            script: script.into(),
            stdin: None,
        },
        timeout: Duration::from_secs(30),
        idempotent: true,
        capture: None,
        on_failure: None,
    }
}

fn upload_on(server: &str, path: &str, mode: u32, bytes: Vec<u8>) -> Step {
    Step {
        name: format!("upload {path}"),
        target: Target::Server(server.into()),
        action: StepAction::Upload {
            path: path.into(),
            mode,
            contents: Payload {
                summary: format!("{} bytes", bytes.len()),
                sha256: hex::encode(Sha256::digest(&bytes)),
                bytes,
            },
        },
        timeout: Duration::from_secs(60),
        idempotent: true,
        capture: None,
        on_failure: None,
    }
}

fn op(id: &str, server: Option<&str>, steps: Vec<Step>) -> Operation {
    Operation {
        id: id.into(),
        kind: OperationKind::ReplicaDeploy,
        title: id.into(),
        server: server.map(str::to_string),
        steps,
        children_mode: Children::Sequential,
        children: vec![],
    }
}

fn parallel(id: &str, children: Vec<Operation>) -> Operation {
    Operation {
        id: id.into(),
        kind: OperationKind::ServiceDeploy,
        title: id.into(),
        server: None,
        steps: vec![],
        children_mode: Children::ParallelByServer,
        children,
    }
}

/// Each step's output by `op#index`, and how many operations ran at once at most.
#[derive(Default)]
struct Collect {
    outputs: Mutex<BTreeMap<String, String>>,
    running: Mutex<(usize, usize)>,
}

impl Observer for Collect {
    fn on_event(&self, e: &Event<'_>) {
        match e {
            Event::StepFinished {
                op, index, output, ..
            } => {
                self.outputs
                    .lock()
                    .unwrap()
                    .insert(format!("{}#{index}", op.id), output.text());
            }
            Event::OperationStarted { op } if op.server.is_some() => {
                let mut r = self.running.lock().unwrap();
                r.0 += 1;
                r.1 = r.1.max(r.0);
            }
            Event::OperationFinished { op, .. } if op.server.is_some() => {
                let mut r = self.running.lock().unwrap();
                r.0 = r.0.saturating_sub(1);
            }
            _ => {}
        }
    }
}

async fn execute(
    servers: Vec<Server>,
    key: &std::path::Path,
    tree: &Operation,
) -> (Report, Arc<Collect>) {
    let work = tempfile::tempdir().unwrap();
    let transport = Arc::new(Transports::new(servers, SshSettings::new(work.path(), key)));
    let collect = Arc::new(Collect::default());
    let exec = Executor::new(
        transport,
        collect.clone(),
        Redactor::new(),
        ExecuteOptions {
            width: 8,
            backoff: Duration::from_millis(100),
            ..ExecuteOptions::default()
        },
    );
    let report = exec.execute(tree, &Shutdown::new()).await;
    (report, collect)
}

const HOSTS: [&str; 4] = ["build-1", "web-1", "web-2", "db-1"];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_no_op_plan_runs_on_all_hosts_in_parallel_each_over_one_connection() {
    let lab = lab();
    let children = HOSTS
        .iter()
        .map(|h| {
            let mut steps = vec![run_on(h, "hostname", "hostname")];
            for i in 0..4 {
                steps.push(run_on(
                    h,
                    &format!("connection {i}"),
                    "echo \"$SSH_CONNECTION\" | cut -d' ' -f2",
                ));
            }
            op(h, Some(h), steps)
        })
        .collect();
    let tree = parallel("noop", children);
    let (report, collect) = execute(
        HOSTS.iter().map(|h| lab.server(h)).collect(),
        &lab.client_key,
        &tree,
    )
    .await;
    assert!(report.converged(), "{:?}", report.failures());
    let outputs = collect.outputs.lock().unwrap().clone();
    for h in HOSTS {
        assert_eq!(outputs[&format!("{h}#0")], format!("{h}\n"));
        // The same client port for every step: one TCP connection, reused.
        let ports: Vec<&String> = (1..=4).map(|i| &outputs[&format!("{h}#{i}")]).collect();
        assert!(ports[0].trim().parse::<u16>().is_ok(), "{ports:?}");
        assert!(ports.iter().all(|p| *p == ports[0]), "{h}: {ports:?}");
    }
    assert_eq!(
        collect.running.lock().unwrap().1,
        4,
        "all four hosts ran at once"
    );
}

fn pseudo_random(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_arrive_byte_exact_with_their_mode_and_leave_no_temp_file() {
    use std::os::unix::fs::PermissionsExt;
    let lab = lab();
    let dir_name = format!("engine-upload-{}", std::process::id());
    let remote_dir = format!("/home/keystone/{dir_name}/nested dir");
    let every_byte: Vec<u8> = (0..=255u8).collect();
    let big = pseudo_random(5 * 1024 * 1024);
    let hostile = "it's a $(touch pwned) `file`;.env";
    let tree = op(
        "uploads",
        Some("web-1"),
        vec![
            upload_on(
                "web-1",
                &format!("{remote_dir}/every-byte.bin"),
                0o600,
                every_byte.clone(),
            ),
            upload_on(
                "web-1",
                &format!("{remote_dir}/big.bin"),
                0o644,
                big.clone(),
            ),
            upload_on(
                "web-1",
                &format!("{remote_dir}/{hostile}"),
                0o640,
                b"A=1\n".to_vec(),
            ),
            run_on(
                "web-1",
                "sha256",
                &format!(
                    "cd {} && sha256sum every-byte.bin big.bin",
                    keystone::shell::quote(&remote_dir)
                ),
            ),
            // Uploading again replaces the file in place.
            upload_on(
                "web-1",
                &format!("{remote_dir}/{hostile}"),
                0o600,
                b"A=2\n".to_vec(),
            ),
        ],
    );
    let (report, collect) = execute(vec![lab.server("web-1")], &lab.client_key, &tree).await;
    assert!(report.converged(), "{:?}", report.failures());
    let local = lab.home("web-1").join(&dir_name).join("nested dir");
    let read = |name: &str| std::fs::read(local.join(name)).unwrap();
    let mode = |name: &str| {
        std::fs::metadata(local.join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(read("every-byte.bin"), every_byte);
    assert_eq!(read("big.bin"), big);
    assert_eq!(read(hostile), b"A=2\n");
    assert_eq!(
        (mode("every-byte.bin"), mode("big.bin"), mode(hostile)),
        (0o600, 0o644, 0o600)
    );
    let mut names: Vec<String> = std::fs::read_dir(&local)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["big.bin", "every-byte.bin", hostile],
        "no temp files left"
    );
    assert!(!lab.home("web-1").join(&dir_name).join("pwned").exists());
    assert!(!local.join("pwned").exists());
    let sums = collect.outputs.lock().unwrap()["uploads#3"].clone();
    assert_eq!(
        sums,
        format!(
            "{}  every-byte.bin\n{}  big.bin\n",
            hex::encode(Sha256::digest(&every_byte)),
            hex::encode(Sha256::digest(&big))
        )
    );
    std::fs::remove_dir_all(lab.home("web-1").join(&dir_name)).unwrap();
}

fn fingerprint(public_key: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("key.pub");
    std::fs::write(&f, format!("{public_key}\n")).unwrap();
    let out = std::process::Command::new("ssh-keygen")
        .arg("-lf")
        .arg(&f)
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_host_key_is_refused_and_nothing_runs_there() {
    let lab = lab();
    let marker = format!("engine-marker-{}", std::process::id());
    let mut web1 = lab.server("web-1");
    // web-1 "changed its key": the config pins another host's key.
    web1.host_key = Some(lab.host_key("web-2"));
    let tree = parallel(
        "deploy",
        vec![
            op(
                "web#1",
                Some("web-1"),
                vec![run_on(
                    "web-1",
                    "touch marker",
                    &format!("touch ~/{marker}"),
                )],
            ),
            op(
                "web#2",
                Some("web-2"),
                vec![run_on(
                    "web-2",
                    "touch marker",
                    &format!("touch ~/{marker}"),
                )],
            ),
        ],
    );
    let (report, _) = execute(vec![web1, lab.server("web-2")], &lab.client_key, &tree).await;
    let web_1 = report.operation("web#1").unwrap();
    assert_eq!(web_1.status, Status::Failed);
    assert_eq!(web_1.steps[0].attempts, 1, "not retried");
    assert_eq!(
        web_1.error.as_deref().unwrap(),
        format!(
            "step `touch marker`: host key for web-1 (10.77.0.12:22) does not match the key pinned in servers/web-1.yaml: the server presented {}; nothing was run there. If the server was reinstalled, pin its new key (ssh-keyscan -t ed25519 -p 22 10.77.0.12, without the host name)",
            fingerprint(&lab.host_key("web-1"))
        )
    );
    assert!(
        !lab.home("web-1").join(&marker).exists(),
        "something ran on web-1"
    );
    // web-2 had started alongside and completed.
    assert_eq!(report.operation("web#2").unwrap().status, Status::Succeeded);
    assert!(lab.home("web-2").join(&marker).exists());
    std::fs::remove_file(lab.home("web-2").join(&marker)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_host_fails_its_operations_with_the_cause_and_the_others_complete() {
    let lab = lab();
    let gone = unreachable_server("gone");
    let port = gone.port;
    let tree = parallel(
        "deploy",
        vec![
            op(
                "gone#1",
                Some("gone"),
                vec![run_on("gone", "echo", "echo ok")],
            ),
            op(
                "web#1",
                Some("web-1"),
                vec![run_on("web-1", "echo", "sleep 1; echo ok")],
            ),
            op(
                "web#2",
                Some("web-2"),
                vec![run_on("web-2", "echo", "sleep 1; echo ok")],
            ),
        ],
    );
    let (report, collect) = execute(
        vec![gone, lab.server("web-1"), lab.server("web-2")],
        &lab.client_key,
        &tree,
    )
    .await;
    assert_eq!(report.status(), Status::Failed);
    let gone = report.operation("gone#1").unwrap();
    assert_eq!(gone.status, Status::Failed);
    assert_eq!(gone.steps[0].attempts, 3, "connect failures are retried");
    let error = gone.error.as_deref().unwrap();
    assert!(
        error.starts_with(&format!(
            "step `echo`: cannot connect to gone (127.0.0.1:{port}): "
        )) && error.contains("Connection refused"),
        "{error}"
    );
    for ok in ["web#1", "web#2"] {
        assert_eq!(report.operation(ok).unwrap().status, Status::Succeeded);
        assert_eq!(collect.outputs.lock().unwrap()[&format!("{ok}#0")], "ok\n");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_a_pinned_key_is_a_config_error() {
    let lab = lab();
    let mut web1 = lab.server("web-1");
    web1.host_key = None;
    let tree = op("x", Some("web-1"), vec![run_on("web-1", "echo", "echo ok")]);
    let (report, _) = execute(vec![web1], &lab.client_key, &tree).await;
    assert_eq!(
        report.root.error.as_deref(),
        Some(
            "step `echo`: web-1: no host_key is pinned (fix servers/web-1.yaml: add `host_key: ssh-ed25519 AAAA…` (the server's /etc/ssh/ssh_host_ed25519_key.pub))"
        )
    );
    assert_eq!(report.root.steps[0].attempts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_remote_command_is_ended_on_the_server_too() {
    let lab = lab();
    // A sleep whose command line is unique to this run, so `pgrep` finds exactly it.
    let tag = format!("sleep 30.{}", std::process::id());
    let mut slow = run_on("web-1", "slow", &format!("{tag}; echo done"));
    slow.timeout = Duration::from_secs(1);
    slow.idempotent = false;
    let (report, _) = execute(
        vec![lab.server("web-1")],
        &lab.client_key,
        &op("t", Some("web-1"), vec![slow]),
    )
    .await;
    assert_eq!(
        report.root.steps[0].error.as_deref(),
        Some("timed out after 1s")
    );
    let alive = || {
        let out = std::process::Command::new("pgrep")
            .args(["-f", &tag])
            .output()
            .unwrap();
        !out.stdout.is_empty()
    };
    // Abandoning the step closes its shell's channel, and the shell ends its process group.
    let mut waited = 0;
    while alive() && waited < 100 {
        std::thread::sleep(Duration::from_millis(100));
        waited += 1;
    }
    assert!(!alive(), "the remote command outlived its timeout by 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_steps_on_one_host_are_bounded_below_max_sessions() {
    let lab = lab();
    let work = tempfile::tempdir().unwrap();
    let mut settings = SshSettings::new(work.path(), &lab.client_key);
    settings.max_channels = 3;
    let transport = Arc::new(SshTransport::new(vec![lab.server("db-1")], settings));
    // 12 commands at once through the trait: each records how many run beside it.
    let dir = format!("/home/keystone/engine-channels-{}", std::process::id());
    let script = format!(
        "mkdir -p {d}; touch {d}/$$; sleep 0.3; ls {d} | wc -l; rm {d}/$$",
        d = keystone::shell::quote(&dir)
    );
    let target = Target::Server("db-1".into());
    let runs = (0..12).map(|_| {
        let transport = transport.clone();
        let script = script.clone();
        let target = target.clone();
        tokio::spawn(async move {
            use keystone::execute::{Output, Transport};
            let mut out = Output::discard(Redactor::new());
            let code = transport
                .run(&target, &script, None, Duration::from_secs(30), &mut out)
                .await
                .unwrap();
            assert_eq!(code, Some(0));
            out.stdout.text().trim().parse::<usize>().unwrap()
        })
    });
    let mut max = 0;
    for r in futures::future::join_all(runs).await {
        max = max.max(r.unwrap());
    }
    assert!(max <= 3, "{max} commands ran at once on one host");
    assert!(max >= 2, "commands on one host never overlapped");
    std::fs::remove_dir_all(
        lab.home("db-1")
            .join(dir.trim_start_matches("/home/keystone/")),
    )
    .ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_on_a_kept_shell_start_clean_and_an_abandoned_one_is_killed_alone() {
    use keystone::execute::{Output, Transport};
    let lab = lab();
    let work = tempfile::tempdir().unwrap();
    let mut settings = SshSettings::new(work.path(), &lab.client_key);
    settings.max_channels = 1; // one shell: every step below runs on the same one
    let transport = SshTransport::new(vec![lab.server("web-2")], settings);
    let target = Target::Server("web-2".into());
    let run = |script: String| {
        let (transport, target) = (&transport, &target);
        async move {
            let mut out = Output::discard(Redactor::new());
            let code = transport
                .run(target, &script, None, Duration::from_secs(30), &mut out)
                .await
                .unwrap();
            (code, out.stdout.text())
        }
    };
    let shell_pid = run("echo $$".into()).await.1;
    let umask = run("umask".into()).await.1;
    assert_eq!(
        run(
            "cd /tmp; X=1; export Y=2; umask 077; set -e; trap 'echo bye' EXIT; alias ll=ls".into()
        )
        .await
        .0,
        Some(0)
    );
    assert_eq!(
        run("pwd; echo \"[$X][$Y]\"; umask; false; echo no-set-e; alias ll 2>/dev/null || echo no-alias".into())
            .await,
        (
            Some(0),
            format!("/home/keystone\n[][]\n{umask}no-set-e\nno-alias\n")
        )
    );
    assert_eq!(run("echo $$".into()).await.1, shell_pid, "the same shell");
    // A step abandoned mid-way (as the orchestrator does on a timeout) is killed on the server,
    // and the next step gets a new shell on the same connection.
    let tag = format!("sleep 40.{}", std::process::id());
    let abandoned = tokio::time::timeout(
        Duration::from_millis(1500),
        run(format!("{tag}; echo done")),
    )
    .await;
    assert!(abandoned.is_err(), "{abandoned:?}");
    let alive = || {
        !std::process::Command::new("pgrep")
            .args(["-f", &tag])
            .output()
            .unwrap()
            .stdout
            .is_empty()
    };
    let mut waited = 0;
    while alive() && waited < 50 {
        std::thread::sleep(Duration::from_millis(100));
        waited += 1;
    }
    assert!(!alive(), "the abandoned step still runs 5 s later");
    assert_eq!(
        run("echo again".into()).await,
        (Some(0), "again\n".to_string())
    );
    assert_ne!(run("echo $$".into()).await.1, shell_pid, "a new shell");
    // A step that kills its own shell reports a signal, and the next one gets a new shell.
    assert_eq!(run("kill -9 0".into()).await.0, None);
    assert_eq!(run("echo fine".into()).await.1, "fine\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_ahead_starts_the_shell_the_first_step_runs_on() {
    use keystone::execute::{Output, Transport};
    let lab = lab();
    let work = tempfile::tempdir().unwrap();
    let mut settings = SshSettings::new(work.path(), &lab.client_key);
    settings.max_channels = 1;
    let transports = Transports::new(vec![lab.server("db-1")], settings);
    transports.connect("db-1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut out = Output::discard(Redactor::new());
    let code = transports
        .run(
            &Target::Server("db-1".into()),
            "ps -o etimes= -p $$",
            None,
            Duration::from_secs(30),
            &mut out,
        )
        .await
        .unwrap();
    assert_eq!(code, Some(0));
    let age: u64 = out.stdout.text().trim().parse().unwrap();
    assert!(
        age >= 2,
        "the step's shell was started {age} s ago, not by connect"
    );
}

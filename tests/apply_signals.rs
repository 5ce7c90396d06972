//! `keystone apply` stopped on the lab while a replica starts, then run again:
//!
//! - SIGTERM: nothing new starts, the running steps finish within the grace period, the process
//!   exits 1 with what it did recorded (nothing left `running` in the state), and the next run
//!   converges;
//! - SIGKILL: the next process finds the operation interrupted, and its run converges and serves
//!   the new commit through the gateway.

mod deploy_lab;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use deploy_lab::{Deployment, http_get, lock, reset_hosts};
use keystone::execute::Status;

/// The step line after which the replica's `start` step runs (on web-1).
const BEFORE_START: &str =
    "succeeded shop/production/service_deploy/web/replica_deploy/web#1 · pull image by digest";

/// `keystone apply` with its stdout lines delivered to a channel as they come.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_apply(d: &Deployment) -> Running {
    let mut child = d
        .keystone("apply")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run keystone apply");
    let (tx, lines) = mpsc::channel();
    for stream in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    Running {
        child,
        lines,
        seen: Vec::new(),
    }
}

impl Running {
    /// Read lines until one equals `wanted` (its duration cut off).
    fn wait_for(&mut self, wanted: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let done = line.split(" (").next() == Some(wanted);
                    self.seen.push(line);
                    if done {
                        return;
                    }
                }
                Err(_) => panic!(
                    "no line {wanted:?} within {limit:?}; seen:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, signal) }, 0);
    }

    /// Wait for the exit (bounded) and collect the remaining lines.
    fn finish(mut self, limit: Duration) -> (Option<i32>, Duration, Vec<String>) {
        let t = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                t.elapsed() < limit,
                "keystone apply did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let took = t.elapsed();
        let mut lines = std::mem::take(&mut self.seen);
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(2)) {
            lines.push(l);
        }
        (status.code(), took, lines)
    }
}

fn assert_converged(code: i32, out: &str) {
    assert_eq!(code, 0, "keystone apply did not converge:\n{out}");
}

fn app_env_marker() -> String {
    format!("production-sig{}", std::process::id())
}

#[test]
fn stopped_by_sigterm_or_sigkill_mid_deploy_then_the_next_run_converges() {
    let _lab = lock();
    reset_hosts();
    let d = Deployment::new();

    // SIGTERM while web#1 starts: that step finishes, nothing after it starts.
    let mut run = start_apply(&d);
    run.wait_for(BEFORE_START, Duration::from_secs(600));
    run.signal(libc::SIGTERM);
    let (code, took, lines) = run.finish(Duration::from_secs(60));
    let text = lines.join("\n");
    eprintln!("[signals] SIGTERM: exited {code:?} {took:?} after the signal");
    assert_eq!(code, Some(1), "{text}");
    assert!(
        lines.contains(
            &"keystone: stopping: nothing new starts; running steps get 30 s to finish".to_string()
        ),
        "{text}"
    );
    let after: Vec<&String> = lines
        .iter()
        .skip_while(|l| l.split(" (").next() != Some(BEFORE_START))
        .collect();
    // The step that was running was allowed to finish; the next one never started.
    assert!(
        after.iter().any(|l| l.starts_with(
            "succeeded shop/production/service_deploy/web/replica_deploy/web#1 · start ("
        )),
        "{text}"
    );
    assert!(
        after.iter().any(|l| *l
            == "cancelled shop/production/service_deploy/web/replica_deploy/web#1 · wait healthy"),
        "{text}"
    );
    assert!(
        after
            .iter()
            .any(|l| l.starts_with("cancelled shop/production/gateway_cutover/edge · ")),
        "{text}"
    );
    {
        let state = d.state();
        for id in state.executions().unwrap() {
            let rec = state.execution(id).unwrap().unwrap();
            assert_ne!(rec.status, Status::Running, "{rec:?}");
            for op in &rec.operations {
                assert_ne!(op.status, Status::Running, "{op:?}");
            }
        }
        assert!(
            state.interrupted_at_open().is_empty(),
            "a SIGTERM leaves nothing to recover: {:?}",
            state.interrupted_at_open()
        );
    }
    let (code, out) = d.apply();
    assert_converged(code, &out);

    // SIGKILL of the redeploy of a changed variable, at the same point.
    let marker = app_env_marker();
    d.edit("applications/shop/environments/production.yaml", |t| {
        let line = t
            .lines()
            .find(|l| l.trim_start().starts_with("APP_ENV:"))
            .expect("APP_ENV line")
            .to_string();
        t.replacen(&line, &format!("  APP_ENV: {marker}"), 1)
    });
    let mut run = start_apply(&d);
    run.wait_for(BEFORE_START, Duration::from_secs(600));
    run.signal(libc::SIGKILL);
    let (code, _, _) = run.finish(Duration::from_secs(10));
    assert_eq!(code, None, "killed by a signal");
    {
        let state = d.state();
        let interrupted: Vec<&str> = state
            .interrupted_at_open()
            .iter()
            .map(|(_, op)| op.as_str())
            .collect();
        assert!(
            interrupted.contains(&"shop/production/service_deploy/web/replica_deploy/web#1"),
            "{interrupted:?}"
        );
    }
    let (code, out) = d.apply();
    assert_converged(code, &out);
    let (status, body) = http_get("shop.lab.test").expect("the gateway answers");
    assert_eq!(status, 200);
    assert!(
        body.contains(&format!("APP_ENV={marker}")),
        "the new commit serves: {body}"
    );
}

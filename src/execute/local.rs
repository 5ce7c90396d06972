//! The `local` transport: `sh -c` on the machine running Keystone.

use std::process::Stdio;
use std::time::Duration;

use crate::plan::Target;

use super::output::Output;
use super::stdio::pump;
use super::transport::{BoxFuture, Transport, TransportError, target_name};

/// Runs every target's steps on this machine. Each command gets its own process group, killed
/// as a whole when the step is abandoned (timeout, shutdown).
#[derive(Debug, Default, Clone)]
pub struct LocalTransport;

/// Kills a process group unless disarmed: a step dropped mid-way leaves nothing running.
struct GroupKill(Option<i32>);

impl Drop for GroupKill {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            // SAFETY: killpg has no memory-safety preconditions; the group is one we created.
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
        }
    }
}

impl Transport for LocalTransport {
    fn run<'a>(
        &'a self,
        target: &'a Target,
        script: &'a str,
        stdin: Option<&'a [u8]>,
        _timeout: Duration,
        out: &'a mut Output<'_>,
    ) -> BoxFuture<'a, Result<Option<i32>, TransportError>> {
        Box::pin(async move {
            let io = |what: &str, e: std::io::Error| TransportError::Io {
                target: target_name(target).to_string(),
                detail: format!("{what}: {e}"),
            };
            let mut child = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(script)
                .stdin(if stdin.is_some() {
                    Stdio::piped()
                } else {
                    Stdio::null()
                })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0)
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| io("cannot start sh", e))?;
            let mut group = GroupKill(child.id().map(|p| p as i32));
            let result = pump(
                child.stdin.take(),
                stdin,
                child.stdout.take().expect("piped"),
                child.stderr.take().expect("piped"),
                out,
            )
            .await;
            let status = child.wait().await.map_err(|e| io("waiting for sh", e))?;
            // The group leader exited: whatever it left behind in its group is ended too.
            drop(std::mem::replace(&mut group, GroupKill(None)));
            result.map_err(|e| io("reading the command's output", e))?;
            Ok(status.code())
        })
    }
}

//! Long-lived remote shells for the ssh transport: one `sh` per session channel on the host's
//! master connection, kept between steps, so that a step costs a write, a fork and a read instead
//! of a new channel (an sshd fork, a login shell, `timeout` and `sh -c`: 20–40 ms on a loaded
//! machine, against a target of 5 ms).
//!
//! The protocol, over the shell's stdin (never a heredoc, never a command line):
//! ```text
//! <marker> <lines> <stdin bytes or ->\n     the header; marker = `ks-` + 32 random hex digits
//! <the script, as <lines> lines>            read with the `read` builtin (no process)
//! <the stdin bytes>\n<marker>\n             only with stdin: exact bytes, then a resync line
//! ```
//! The shell runs each step in a subshell of its own (`( eval … )`), so no `cd`, variable, option
//! or trap of a step reaches the next; the step's stdout and stderr are the channel's, so output
//! streams as it comes. When the step ends the shell prints `<marker> <exit status>` on stdout and
//! `<marker>` on stderr: the step's output is everything before the marker on each stream (the
//! marker is per step and unguessable, so no output can fake it).
//!
//! While a step runs, something reads the shell's stdin: end of file there — Keystone dropped the
//! shell (step timeout, shutdown) or died, or the connection ended — is answered with `kill -9 0`,
//! which ends the shell's process group: the shell and the one step it runs, nothing else on the
//! host. A step without stdin runs in the foreground with a watcher subshell reading the shell's
//! input (killed before the end marker, so it never eats the next request). A step with stdin runs
//! in the background (so, as for any background job of a non-interactive `sh`, with SIGINT and
//! SIGQUIT ignored) while the shell copies its bytes into a FIFO in a private `mktemp -d`
//! directory (made at the shell's first step with stdin) with GNU `head -c N` (exact on a pipe)
//! or `dd bs=1` elsewhere — the bytes never touch the disk — skips what the step left unread up
//! to the resync line, and then reads its input itself.

use std::sync::Arc;

use futures::FutureExt;
use openssh::{ChildStderr, ChildStdin, ChildStdout, Session, Stdio};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::shell::quote;

use super::output::{Output, Stream};

/// The shell. Every name it uses starts with `_ks_` and is unset in the step's subshell before
/// the step's script is evaluated.
pub(super) const DRIVER: &str = r#"exec 3<&0
_ks_g= _ks_d=
printf 'keystone-shell %s\n' "$$"
while IFS=' ' read -r _ks_m _ks_n _ks_i; do
wait
_ks_s=
while [ "$_ks_n" -gt 0 ]; do
IFS= read -r _ks_l || break 2
_ks_s="$_ks_s$_ks_l
"
_ks_n=$((_ks_n - 1))
done
if [ "$_ks_i" = - ]; then
( IFS= read -r _ks_l; kill -9 0 ) <&3 >/dev/null 2>&1 & _ks_w=$!
( eval "unset _ks_g _ks_d _ks_m _ks_n _ks_i _ks_l _ks_s _ks_w; $_ks_s" ) </dev/null 3<&-
_ks_l=$?
kill -9 "$_ks_w"; wait "$_ks_w" 2>/dev/null
printf '%s %s\n' "$_ks_m" "$_ks_l"; printf '%s\n' "$_ks_m" >&2
else
if [ -z "$_ks_d" ]; then
case $(head --version 2>/dev/null) in *GNU*) _ks_g=1 ;; esac
_ks_d=$(mktemp -d) && mkfifo "$_ks_d/in" || { printf 'keystone: cannot make a FIFO for the step input under /tmp\n' >&2; break; }
fi
( ( eval "unset _ks_g _ks_d _ks_m _ks_n _ks_i _ks_l _ks_s _ks_w; $_ks_s" ) <"$_ks_d/in" 3<&-
printf '%s %s\n' "$_ks_m" "$?"; printf '%s\n' "$_ks_m" >&2 ) &
if [ -n "$_ks_g" ]; then head -c "$_ks_i" >"$_ks_d/in"; else dd bs=1 count="$_ks_i" 2>/dev/null >"$_ks_d/in"; fi
while IFS= read -r _ks_l && [ "$_ks_l" != "$_ks_m" ]; do :; done
fi
done
[ -z "$_ks_d" ] || rm -rf "$_ks_d"
kill -9 0
"#;

/// What the shell prints first, once it is ready.
const HELLO: &[u8] = b"keystone-shell ";

/// One long-lived remote shell, owned by at most one step at a time. Dropping it closes its
/// channel, which ends it on the server together with any step it was running.
pub(super) struct Shell {
    stdin: ChildStdin,
    stdout: ChildStdout,
    stderr: ChildStderr,
    child: Option<openssh::Child<Arc<Session>>>,
}

/// How a step on a shell went wrong (a step that ran and exited non-zero is not an error).
#[derive(Debug)]
pub(super) enum ShellError {
    /// The channel or the connection failed.
    Ssh(openssh::Error),
    /// The shell ended before the step finished, without a signal (it could not run it).
    Ended(String),
    /// The shell was killed by a signal while the step ran, and the step with it.
    Killed,
    Io(std::io::Error),
}

impl std::fmt::Display for ShellError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ssh(e) => write!(f, "ssh: {e}"),
            Self::Ended(why) => write!(f, "the remote shell ended before the step finished{why}"),
            Self::Killed => write!(f, "the remote shell was killed while the step ran"),
            Self::Io(e) => write!(f, "talking to the remote shell: {e}"),
        }
    }
}

impl Shell {
    /// Open a session channel on the master and start the shell in it.
    pub(super) async fn start(session: &Arc<Session>) -> Result<Self, ShellError> {
        let mut child =
            Session::arc_raw_command(session.clone(), format!("exec sh -c {}", quote(DRIVER)))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .await
                .map_err(ShellError::Ssh)?;
        let mut shell = Self {
            stdin: child.stdin().take().expect("piped"),
            stdout: child.stdout().take().expect("piped"),
            stderr: child.stderr().take().expect("piped"),
            child: Some(child),
        };
        // A login rc file may print something first: skip lines up to the shell's hello.
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        let mut seen = 0usize;
        loop {
            let n = shell.stdout.read(&mut byte).await.map_err(ShellError::Io)?;
            if n == 0 {
                let mut err = Vec::new();
                let _ = shell.stderr.read_to_end(&mut err).await;
                let err = String::from_utf8_lossy(&err);
                let last = err.lines().rev().find(|l| !l.trim().is_empty());
                return Err(ShellError::Ended(match last {
                    Some(l) => format!(" (while starting: {})", l.trim()),
                    None => " (while starting)".into(),
                }));
            }
            seen += 1;
            if byte[0] == b'\n' {
                if line.starts_with(HELLO) {
                    return Ok(shell);
                }
                line.clear();
            } else if line.len() < 256 {
                line.push(byte[0]);
            }
            if seen > 64 * 1024 {
                return Err(ShellError::Ended(
                    " (it printed 64 KiB without starting: check the login files of the ssh user)"
                        .into(),
                ));
            }
        }
    }

    /// Whether the shell can take a step: its channel is open. Output that arrived while the shell
    /// was idle (from something a finished step left running) is dropped.
    pub(super) fn is_usable(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        fn drained(r: &mut (impl AsyncRead + Unpin), buf: &mut [u8]) -> bool {
            loop {
                match r.read(buf).now_or_never() {
                    None => return true,
                    Some(Ok(0)) | Some(Err(_)) => return false,
                    Some(Ok(_)) => continue,
                }
            }
        }
        drained(&mut self.stdout, &mut buf) && drained(&mut self.stderr, &mut buf)
    }

    /// Run one step. Returns its exit status (`None`: killed by a signal together with its shell).
    pub(super) async fn run(
        &mut self,
        script: &str,
        stdin: Option<&[u8]>,
        out: &mut Output<'_>,
    ) -> Result<Option<i32>, ShellError> {
        let finished = exchange(
            &mut self.stdin,
            &mut self.stdout,
            &mut self.stderr,
            script,
            stdin,
            out,
        )
        .await;
        match finished {
            Ok(status) => Ok(status),
            // The shell's channel closed before the step's end marker came.
            Err(_) => Err(self.ended().await),
        }
    }

    /// Why the shell's channel closed in the middle of a step: the shell was killed (with its
    /// step: `Killed`), or the connection broke (`Ssh`).
    async fn ended(&mut self) -> ShellError {
        let Some(child) = self.child.take() else {
            return ShellError::Ended(String::new());
        };
        let session = child.session();
        match tokio::time::timeout(std::time::Duration::from_secs(5), child.wait()).await {
            Ok(Ok(status)) => ShellError::Ended(match status.code() {
                Some(c) => format!(" (it exited {c})"),
                None => String::new(),
            }),
            Ok(Err(openssh::Error::RemoteProcessTerminated)) => match session.check().await {
                Ok(()) => ShellError::Killed,
                Err(e) => ShellError::Ssh(e),
            },
            Ok(Err(e)) => ShellError::Ssh(e),
            Err(_) => ShellError::Ended(" (its channel did not close)".into()),
        }
    }
}

/// One step over a shell's three streams: write the request (and the stdin bytes) while
/// streaming the output up to the markers into `out`. An error: the shell's channel closed or
/// failed before the step's end (`UnexpectedEof`: a stream ended).
async fn exchange<W, O, E>(
    input: &mut W,
    stdout: &mut O,
    stderr: &mut E,
    script: &str,
    stdin: Option<&[u8]>,
    out: &mut Output<'_>,
) -> std::io::Result<Option<i32>>
where
    W: tokio::io::AsyncWrite + Unpin,
    O: AsyncRead + Unpin,
    E: AsyncRead + Unpin,
{
    let marker = new_marker();
    let request = request(&marker, script, stdin.map(<[u8]>::len));
    let trailer = format!("\n{marker}\n");
    let write = async {
        input.write_all(&request).await?;
        if let Some(bytes) = stdin {
            input.write_all(bytes).await?;
            input.write_all(trailer.as_bytes()).await?;
        }
        input.flush().await
    };
    let read = async {
        let mut o = Frame::new(&marker);
        let mut e = Frame::new(&marker);
        let mut a = vec![0u8; 16 * 1024];
        let mut b = vec![0u8; 16 * 1024];
        while !(o.done() && e.done()) {
            tokio::select! {
                n = stdout.read(&mut a), if !o.done() => match n? {
                    0 => return Err(closed()),
                    n => {
                        let data = o.feed(&a[..n]);
                        if !data.is_empty() {
                            out.push(Stream::Stdout, &data);
                        }
                    }
                },
                n = stderr.read(&mut b), if !e.done() => match n? {
                    0 => return Err(closed()),
                    n => {
                        let data = e.feed(&b[..n]);
                        if !data.is_empty() {
                            out.push(Stream::Stderr, &data);
                        }
                    }
                },
            }
        }
        Ok::<_, std::io::Error>(o.status())
    };
    // A failed write (the shell is gone) ends the step at once; so does a closed stream.
    let finished = tokio::try_join!(write, read).map(|((), status)| status);
    out.finish();
    finished
}

fn closed() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "the shell's output ended",
    )
}

fn new_marker() -> String {
    format!("ks-{:032x}", rand::random::<u128>())
}

/// The header and the script's lines (each ends with a newline; a script's last line without
/// one gets one, which `sh` reads the same).
fn request(marker: &str, script: &str, stdin_len: Option<usize>) -> Vec<u8> {
    let body = script.strip_suffix('\n').unwrap_or(script);
    let lines = if script.is_empty() {
        0
    } else {
        body.split('\n').count()
    };
    let mut r = format!(
        "{marker} {lines} {}\n",
        stdin_len.map_or("-".to_string(), |n| n.to_string())
    )
    .into_bytes();
    if lines > 0 {
        r.extend_from_slice(body.as_bytes());
        r.push(b'\n');
    }
    r
}

/// One output stream of a step: passes everything up to the step's marker through, holding back
/// only a tail that could be the start of the marker.
struct Frame {
    marker: Vec<u8>,
    held: Vec<u8>,
    /// What came after the marker, once it came.
    after: Option<Vec<u8>>,
}

impl Frame {
    fn new(marker: &str) -> Self {
        Self {
            marker: marker.as_bytes().to_vec(),
            held: Vec::new(),
            after: None,
        }
    }

    /// The step's part of `chunk` (and of what was held back before it).
    fn feed(&mut self, chunk: &[u8]) -> Vec<u8> {
        if let Some(after) = &mut self.after {
            after.extend_from_slice(chunk);
            return Vec::new();
        }
        let mut data = std::mem::take(&mut self.held);
        data.extend_from_slice(chunk);
        if let Some(i) = find(&data, &self.marker) {
            self.after = Some(data[i + self.marker.len()..].to_vec());
            data.truncate(i);
            return data;
        }
        let keep = (1..self.marker.len().min(data.len() + 1))
            .rev()
            .find(|&k| data.ends_with(&self.marker[..k]))
            .unwrap_or(0);
        self.held = data.split_off(data.len() - keep);
        data
    }

    /// The marker and the rest of its line came.
    fn done(&self) -> bool {
        self.after.as_ref().is_some_and(|a| a.contains(&b'\n'))
    }

    /// The exit status on the marker's line (` <status>\n`): 128 + n for a step killed by signal n,
    /// as the shell reports it.
    fn status(&self) -> Option<i32> {
        let after = self.after.as_deref().unwrap_or_default();
        let line = &after[..after
            .iter()
            .position(|&b| b == b'\n')
            .unwrap_or(after.len())];
        std::str::from_utf8(line).ok()?.trim().parse().ok()
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::execute::output::Redactor;

    #[test]
    fn requests_frame_the_script_by_lines() {
        assert_eq!(
            request("ks-1", "echo 'a b'\ncd /\n", None),
            b"ks-1 2 -\necho 'a b'\ncd /\n"
        );
        assert_eq!(request("ks-1", "true", Some(5)), b"ks-1 1 5\ntrue\n");
        assert_eq!(request("ks-1", "", None), b"ks-1 0 -\n");
        assert_eq!(request("ks-1", "\n\nx", None), b"ks-1 3 -\n\n\nx\n");
    }

    #[test]
    fn a_frame_passes_output_up_to_the_marker_even_split_across_reads() {
        let mut f = Frame::new("ks-abc");
        assert_eq!(f.feed(b"hello k"), b"hello ");
        assert_eq!(f.feed(b"s-ab"), b"");
        // Not the marker after all: released.
        assert_eq!(f.feed(b"X\nno newline"), b"ks-abX\nno newline");
        assert!(!f.done());
        assert_eq!(f.feed(b"ks-a"), b"");
        assert_eq!(f.feed(b"bc 4"), b"");
        assert!(!f.done());
        assert_eq!(f.feed(b"2\n"), b"");
        assert!(f.done());
        assert_eq!(f.status(), Some(42));
    }

    /// The driver under a local `sh`, spoken to exactly as over ssh.
    struct Local {
        child: tokio::process::Child,
        stdin: tokio::process::ChildStdin,
        stdout: tokio::process::ChildStdout,
        stderr: tokio::process::ChildStderr,
    }

    impl Local {
        async fn start() -> Self {
            let mut child = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(DRIVER)
                .current_dir(std::env::temp_dir())
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .process_group(0)
                .spawn()
                .unwrap();
            let mut stdout = child.stdout.take().unwrap();
            let mut hello = vec![0u8; 64];
            let n = stdout.read(&mut hello).await.unwrap();
            assert!(hello[..n].starts_with(HELLO), "{:?}", &hello[..n]);
            Self {
                stdin: child.stdin.take().unwrap(),
                stderr: child.stderr.take().unwrap(),
                stdout,
                child,
            }
        }

        /// (status, stdout, everything)
        async fn run(
            &mut self,
            script: &str,
            stdin: Option<&[u8]>,
        ) -> (Option<i32>, String, String) {
            let mut out = Output::discard(Redactor::new());
            let status = exchange(
                &mut self.stdin,
                &mut self.stdout,
                &mut self.stderr,
                script,
                stdin,
                &mut out,
            )
            .await
            .unwrap();
            (status, out.stdout.text(), out.combined.text())
        }
    }

    #[tokio::test]
    async fn steps_on_one_shell_do_not_see_each_other() {
        let mut sh = Local::start().await;
        // stdout and stderr are separate pipes: their lines interleave in either order.
        let (status, stdout, combined) = sh.run("echo out; echo err >&2; exit 3", None).await;
        assert_eq!((status, stdout.as_str()), (Some(3), "out\n"));
        let mut lines: Vec<&str> = combined.lines().collect();
        lines.sort_unstable();
        assert_eq!(lines, ["err", "out"]);
        let (status, stdout, _) = sh
            .run(
                "cd /; x=1; export Y=2; set -e; trap 'echo bye' EXIT; umask 077; pwd",
                None,
            )
            .await;
        assert_eq!((status, stdout.as_str()), (Some(0), "/\nbye\n"));
        let (status, stdout, _) = sh
            .run(
                "pwd; echo \"x=$x Y=$Y $0 $#\"; umask; false; echo still; set | grep -c _ks_",
                None,
            )
            .await;
        let here = std::env::temp_dir().canonicalize().unwrap();
        assert_eq!(status, Some(1), "no `set -e`, grep counted nothing");
        assert_eq!(
            stdout,
            format!("{}\nx= Y= sh 0\n0022\nstill\n0\n", here.display())
        );
        // Output without a final newline, and an empty script.
        assert_eq!(sh.run("printf 'no newline'", None).await.1, "no newline");
        assert_eq!(sh.run("", None).await.0, Some(0));
        // A syntax error is the step's, not the shell's.
        let (status, _, all) = sh.run("echo a; if", None).await;
        assert_eq!(status, Some(2));
        assert!(all.contains("Syntax error"), "{all}");
        assert_eq!(sh.run("echo alive", None).await.1, "alive\n");
    }

    #[tokio::test]
    async fn stdin_is_byte_exact_and_what_a_step_leaves_unread_is_skipped() {
        let mut sh = Local::start().await;
        let every: Vec<u8> = (0..=255u8).collect();
        let (status, stdout, _) = sh.run("od -An -v -tx1 | tr -d ' \\n'", Some(&every)).await;
        assert_eq!(status, Some(0));
        assert_eq!(stdout, hex::encode(&every));
        assert_eq!(sh.run("head -c 3", Some(b"abcdef\nghi")).await.1, "abc");
        assert_eq!(sh.run("true", Some(&vec![7u8; 300_000])).await.0, Some(0));
        assert_eq!(sh.run("wc -c", Some(b"")).await.1.trim(), "0");
        let big: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        assert_eq!(sh.run("cksum", Some(&big)).await.1, {
            let out = std::process::Command::new("sh")
                .args(["-c", "cksum"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .and_then(|mut c| {
                    use std::io::Write;
                    c.stdin.take().unwrap().write_all(&big)?;
                    c.wait_with_output()
                })
                .unwrap();
            String::from_utf8(out.stdout).unwrap()
        });
        assert_eq!(sh.run("cat", None).await.1, "", "no stdin: /dev/null");
        assert_eq!(sh.run("echo next", None).await.1, "next\n");
    }

    #[tokio::test]
    async fn the_end_of_its_input_ends_the_shell_and_its_running_step() {
        let mut sh = Local::start().await;
        let tag = format!("30.{}", std::process::id());
        let request = request("ks-x", &format!("sleep {tag}"), None);
        sh.stdin.write_all(&request).await.unwrap();
        let alive = || {
            let out = std::process::Command::new("pgrep")
                .args(["-f", &format!("sleep {tag}")])
                .output()
                .unwrap();
            !out.stdout.is_empty()
        };
        let mut waited = 0;
        while !alive() && waited < 100 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            waited += 1;
        }
        assert!(alive(), "the step started");
        drop(sh.stdin);
        let status = sh.child.wait().await.unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9));
        assert!(!alive(), "the step was killed with its shell");
    }
}

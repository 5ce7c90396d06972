//! The `Transport` trait: how a step reaches the machine it runs on.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::plan::Target;
use crate::shell::quote;

use super::output::Output;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Runs scripts and writes files on a target. Implementations: `ssh::SshTransport`,
/// `local::LocalTransport`, and `Transports` which routes each target to one of them.
pub trait Transport: Send + Sync {
    /// Run `script` in a fresh shell on `target` (nothing it sets reaches the next script),
    /// feeding `stdin` when given, streaming what it prints into `out` as it comes. Returns the
    /// exit code (`None` when killed by a signal). On `timeout` the command is stopped: locally
    /// its process group is killed; over ssh the kept remote shell running it is dropped, and the
    /// shell kills the step when its input closes (a partition that keeps the close from reaching
    /// the server leaves it running until sshd notices the dead connection).
    fn run<'a>(
        &'a self,
        target: &'a Target,
        script: &'a str,
        stdin: Option<&'a [u8]>,
        timeout: Duration,
        out: &'a mut Output<'_>,
    ) -> BoxFuture<'a, Result<Option<i32>, TransportError>>;

    /// Write `bytes` to `path` atomically with `mode`: stream them into a temporary file beside
    /// the target through the stdin of `cat` (binary-safe, never a heredoc), chmod it, rename it.
    fn upload<'a>(
        &'a self,
        target: &'a Target,
        path: &'a str,
        bytes: &'a [u8],
        mode: u32,
        timeout: Duration,
        out: &'a mut Output<'_>,
    ) -> BoxFuture<'a, Result<Option<i32>, TransportError>> {
        Box::pin(async move {
            let script = upload_script(path, mode);
            self.run(target, &script, Some(bytes), timeout, out).await
        })
    }

    /// Forget any connection kept to `target`, so the next command connects afresh (after a
    /// command that did not answer in time: the connection may be hung).
    fn reset(&self, _target: &Target) {}
}

/// The script behind `Transport::upload`. Every path is quoted; the temporary file is private
/// until renamed and removed on every exit path.
pub fn upload_script(path: &str, mode: u32) -> String {
    let (dir, file) = match path.rfind('/') {
        Some(0) => ("/", &path[1..]),
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (".", path),
    };
    let tmp = format!(
        "{}/.{}.keystone-{:016x}",
        dir.trim_end_matches('/'),
        file,
        rand::random::<u64>()
    );
    format!(
        "set -e\n\
         t={tmp}\n\
         trap 'rm -f -- \"$t\"' EXIT\n\
         mkdir -p -- {dir}\n\
         (umask 077 && cat > \"$t\")\n\
         chmod {mode:o} -- \"$t\"\n\
         mv -f -- \"$t\" {path}\n",
        tmp = quote(&tmp),
        dir = quote(dir),
        path = quote(path),
    )
}

/// Why a transport could not run a command (a command that ran and exited non-zero is not an
/// error here: that is its exit code).
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    #[error(
        "host key for {server} ({address}) does not match the key pinned in {pinned_in}: {detail}"
    )]
    HostKeyMismatch {
        server: String,
        address: String,
        pinned_in: String,
        detail: String,
    },
    #[error("cannot connect to {server} ({address}): {cause}")]
    Connect {
        server: String,
        address: String,
        cause: String,
    },
    #[error("{server}: {detail} (fix {file}: {what})")]
    Config {
        server: String,
        file: String,
        detail: String,
        what: String,
    },
    #[error("{target}: {detail}")]
    Io { target: String, detail: String },
    #[error("no server named {0} in the config")]
    UnknownServer(String),
}

impl TransportError {
    /// Errors that a retry cannot fix: a wrong host key or config stays wrong.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Self::HostKeyMismatch { .. } | Self::Config { .. } | Self::UnknownServer(_)
        )
    }
}

/// A human name for a target in messages: `local` or the server name.
pub fn target_name(target: &Target) -> &str {
    match target {
        Target::Local => "local",
        Target::Server(name) => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_script_quotes_every_path() {
        let s = upload_script("/srv/it's here/.env", 0o600);
        assert!(s.contains("mkdir -p -- '/srv/it'\\''s here'\n"), "{s}");
        assert!(s.contains("t='/srv/it'\\''s here/..env.keystone-"), "{s}");
        assert!(s.contains("chmod 600 -- \"$t\"\n"), "{s}");
        assert!(s.ends_with(" '/srv/it'\\''s here/.env'\n"), "{s}");
        assert!(!s.contains("<<"), "never a heredoc: {s}");
    }

    #[test]
    fn upload_script_round_trips_hostile_paths_through_sh() {
        let dir = std::env::temp_dir().join(format!("ks-upload-{}", std::process::id()));
        let hostile = dir.join("a b/$(touch pwned)/`id`;'x'\\\"y");
        let path = hostile.join("f $HOME.txt");
        let script = upload_script(path.to_str().unwrap(), 0o640);
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .current_dir(std::env::temp_dir())
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"\x00\xffhi")
            .unwrap();
        assert!(child.wait().unwrap().success());
        assert_eq!(std::fs::read(&path).unwrap(), b"\x00\xffhi");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        assert_eq!(
            std::fs::read_dir(&hostile).unwrap().count(),
            1,
            "no temp file left"
        );
        assert!(!std::env::temp_dir().join("pwned").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

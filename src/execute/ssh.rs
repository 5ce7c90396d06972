//! The `ssh` transport: the system `ssh` through the `openssh` crate (native mux), one master
//! connection per server reused by every step, the host key pinned from the config and checked
//! strictly, and at most `max_channels` commands at once per server (below sshd's MaxSessions).
//! Steps run on long-lived remote shells kept per server (`ssh_shell`), one channel each, at most
//! `max_channels` of them: a step is a write and a read on an open channel, not a new channel.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openssh::{ControlPersist, KnownHosts, Session, SessionBuilder};
use tokio::sync::{OnceCell, Semaphore};

use crate::model::{Server, TransportKind};
use crate::plan::Target;

use super::local::LocalTransport;
use super::output::Output;
use super::ssh_shell::{Shell, ShellError};
use super::transport::{BoxFuture, Transport, TransportError};

/// How Keystone logs in to servers.
#[derive(Debug, Clone)]
pub struct SshSettings {
    /// Private key offered to every server (`--ssh-key`; default `~/.ssh/id_ed25519`).
    pub identity_file: PathBuf,
    /// Commands at once per server. sshd allows MaxSessions (default 10) per connection.
    pub max_channels: usize,
    pub connect_timeout: Duration,
    /// Private directory for the per-server known_hosts and ssh_config files.
    pub work_dir: PathBuf,
    /// Directory for the master connections' control sockets (short path: sockets have a
    /// ~100-byte limit).
    pub control_dir: PathBuf,
}

impl SshSettings {
    pub fn new(work_dir: impl Into<PathBuf>, identity_file: impl Into<PathBuf>) -> Self {
        Self {
            identity_file: identity_file.into(),
            max_channels: 8,
            connect_timeout: Duration::from_secs(10),
            work_dir: work_dir.into(),
            control_dir: std::env::temp_dir(),
        }
    }

    /// `~/.ssh/id_ed25519`.
    pub fn default_identity_file() -> PathBuf {
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default();
        home.join(".ssh/id_ed25519")
    }
}

struct Host {
    session: Arc<Session>,
    /// One per channel in use: a step holds one while it runs on a shell.
    channels: Semaphore,
    /// Shells with no step. A shell is started only when this is empty and a permit is held, so
    /// there are never more shells (channels) than permits.
    idle: Mutex<Vec<Shell>>,
}

impl Host {
    /// A shell for one step: an idle one still open, or a new one.
    async fn shell(&self) -> Result<Shell, ShellError> {
        loop {
            let next = self.idle.lock().unwrap().pop();
            match next {
                Some(mut shell) => {
                    if shell.is_usable() {
                        return Ok(shell);
                    }
                }
                None => return Shell::start(&self.session).await,
            }
        }
    }
}

/// Runs steps on `transport: ssh` servers.
pub struct SshTransport {
    servers: BTreeMap<String, Server>,
    settings: SshSettings,
    hosts: Mutex<HashMap<String, Arc<OnceCell<Arc<Host>>>>>,
}

impl SshTransport {
    pub fn new(servers: impl IntoIterator<Item = Server>, settings: SshSettings) -> Self {
        Self {
            servers: servers.into_iter().map(|s| (s.name.clone(), s)).collect(),
            settings,
            hosts: Mutex::new(HashMap::new()),
        }
    }

    /// `host:port` of a server, as shown in messages.
    fn address(server: &Server) -> String {
        format!("{}:{}", server.host, server.port)
    }

    async fn host(&self, name: &str) -> Result<Arc<Host>, TransportError> {
        let server = self
            .servers
            .get(name)
            .ok_or_else(|| TransportError::UnknownServer(name.to_string()))?;
        let cell = self
            .hosts
            .lock()
            .unwrap()
            .entry(name.to_string())
            .or_default()
            .clone();
        cell.get_or_try_init(|| self.connect(server)).await.cloned()
    }

    /// Connect to `name` and start one shell there, so that the first step finds both ready.
    async fn warm(&self, name: &str) -> Result<(), TransportError> {
        let host = self.host(name).await?;
        let _permit = host.channels.acquire().await.expect("never closed");
        if host.idle.lock().unwrap().is_empty() {
            let shell = Shell::start(&host.session)
                .await
                .map_err(|e| TransportError::Io {
                    target: name.to_string(),
                    detail: e.to_string(),
                })?;
            host.idle.lock().unwrap().push(shell);
        }
        Ok(())
    }

    /// Forget a connection that broke, so the next step connects again.
    fn drop_host(&self, name: &str) {
        self.hosts.lock().unwrap().remove(name);
    }

    async fn connect(&self, server: &Server) -> Result<Arc<Host>, TransportError> {
        let config = self.write_config(server)?;
        let mut builder = SessionBuilder::default();
        builder
            .user(server.user.clone())
            .port(server.port)
            .keyfile(&self.settings.identity_file)
            .known_hosts_check(KnownHosts::Strict)
            .config_file(&config)
            .connect_timeout(self.settings.connect_timeout)
            .server_alive_interval(Duration::from_secs(15))
            .control_directory(&self.settings.control_dir)
            // A master orphaned by a killed keystone exits by itself once idle.
            .control_persist(ControlPersist::IdleFor(
                std::num::NonZeroUsize::new(60).expect("non-zero"),
            ));
        let session = builder
            .connect_mux(&server.host)
            .await
            .map_err(|e| self.connect_error(server, e))?;
        Ok(Arc::new(Host {
            session: Arc::new(session),
            channels: Semaphore::new(self.settings.max_channels.max(1)),
            idle: Mutex::new(Vec::new()),
        }))
    }

    /// Per server: a known_hosts file holding only the pinned key, and an ssh_config that uses
    /// nothing else (no global known_hosts, no host key learning, no passwords).
    fn write_config(&self, server: &Server) -> Result<PathBuf, TransportError> {
        let config_error = |detail: String, what: &str| TransportError::Config {
            server: server.name.clone(),
            file: server.origin.file.clone(),
            detail,
            what: what.to_string(),
        };
        let pinned = server.host_key.as_deref().ok_or_else(|| {
            config_error(
                "no host_key is pinned".into(),
                "add `host_key: ssh-ed25519 AAAA…` (the server's /etc/ssh/ssh_host_ed25519_key.pub)",
            )
        })?;
        let mut words = pinned.split_whitespace();
        let (Some(kind), Some(key)) = (words.next(), words.next()) else {
            return Err(config_error(
                format!("host_key {pinned:?} is not `<type> <base64>`"),
                "write it as `ssh-ed25519 AAAA…`",
            ));
        };
        if !kind.starts_with("ssh-") && !kind.starts_with("ecdsa-") && !kind.starts_with("sk-") {
            return Err(config_error(
                format!("host_key type {kind:?} is not an ssh key type"),
                "write it as `ssh-ed25519 AAAA…`",
            ));
        }
        let dir = self.settings.work_dir.join(safe_file_name(&server.name));
        let io = |e: std::io::Error| TransportError::Io {
            target: server.name.clone(),
            detail: format!("writing ssh files under {}: {e}", dir.display()),
        };
        create_private_dir(&dir).map_err(io)?;
        let pattern = if server.port == 22 {
            server.host.clone()
        } else {
            format!("[{}]:{}", server.host, server.port)
        };
        let known_hosts = dir.join("known_hosts");
        write_private(&known_hosts, format!("{pattern} {kind} {key}\n").as_bytes()).map_err(io)?;
        let config = dir.join("ssh_config");
        write_private(
            &config,
            format!(
                "Host *\n\
                 \x20 UserKnownHostsFile \"{}\"\n\
                 \x20 GlobalKnownHostsFile /dev/null\n\
                 \x20 StrictHostKeyChecking yes\n\
                 \x20 CheckHostIP no\n\
                 \x20 UpdateHostKeys no\n\
                 \x20 IdentitiesOnly yes\n\
                 \x20 PasswordAuthentication no\n\
                 \x20 KbdInteractiveAuthentication no\n\
                 \x20 ServerAliveCountMax 3\n",
                known_hosts.display()
            )
            .as_bytes(),
        )
        .map_err(io)?;
        Ok(config)
    }

    fn connect_error(&self, server: &Server, e: openssh::Error) -> TransportError {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        if text.contains("Host key verification failed")
            || text.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
        {
            let presented = lines
                .iter()
                .position(|l| l.contains("key sent by the remote host is"))
                .and_then(|i| lines.get(i + 1))
                .map(|fp| fp.trim_end_matches('.').to_string());
            let detail = match presented {
                Some(fp) => format!(
                    "the server presented {fp}; nothing was run there. If the server was reinstalled, pin its new key (ssh-keyscan -t ed25519 -p {} {}, without the host name)",
                    server.port, server.host
                ),
                None => format!(
                    "the server presented a key of another type; nothing was run there ({})",
                    lines.last().copied().unwrap_or_default()
                ),
            };
            return TransportError::HostKeyMismatch {
                server: server.name.clone(),
                address: Self::address(server),
                pinned_in: server.origin.file.clone(),
                detail,
            };
        }
        let cause = lines
            .iter()
            .rev()
            .find(|l| !l.is_empty())
            .map(|l| l.to_string())
            .unwrap_or(text.clone());
        TransportError::Connect {
            server: server.name.clone(),
            address: Self::address(server),
            cause: cause
                .rsplit_once("failed to connect to the remote host: ")
                .map(|(_, c)| c.to_string())
                .unwrap_or(cause),
        }
    }
}

fn safe_file_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

impl Transport for SshTransport {
    fn run<'a>(
        &'a self,
        target: &'a Target,
        script: &'a str,
        stdin: Option<&'a [u8]>,
        timeout: Duration,
        out: &'a mut Output<'_>,
    ) -> BoxFuture<'a, Result<Option<i32>, TransportError>> {
        Box::pin(async move {
            let Target::Server(name) = target else {
                return LocalTransport
                    .run(target, script, stdin, timeout, out)
                    .await;
            };
            let host = self.host(name).await?;
            let _permit = host.channels.acquire().await.expect("never closed");
            let failed = |e: ShellError| {
                if matches!(e, ShellError::Ssh(_)) {
                    // The connection broke: connect again for the next step.
                    self.drop_host(name);
                }
                TransportError::Io {
                    target: name.clone(),
                    detail: e.to_string(),
                }
            };
            // Dropped with this future (step timeout, shutdown), the shell takes its channel and
            // the step running on it down with it: the shell kills its process group when its
            // input ends.
            let mut shell = host.shell().await.map_err(failed)?;
            match shell.run(script, stdin, out).await {
                Ok(code) => {
                    host.idle.lock().unwrap().push(shell);
                    Ok(code)
                }
                Err(ShellError::Killed) => Ok(None),
                Err(e) => Err(failed(e)),
            }
        })
    }

    fn reset(&self, target: &Target) {
        if let Target::Server(name) = target {
            self.drop_host(name);
        }
    }
}

/// Routes each target to its transport: `Target::Local` and `transport: local` servers run
/// here, `transport: ssh` servers over ssh.
pub struct Transports {
    local: LocalTransport,
    ssh: SshTransport,
    kinds: BTreeMap<String, TransportKind>,
}

impl Transports {
    pub fn new(servers: impl IntoIterator<Item = Server>, settings: SshSettings) -> Self {
        let servers: Vec<Server> = servers.into_iter().collect();
        Self {
            local: LocalTransport,
            kinds: servers
                .iter()
                .map(|s| (s.name.clone(), s.transport))
                .collect(),
            ssh: SshTransport::new(
                servers
                    .into_iter()
                    .filter(|s| s.transport == TransportKind::Ssh),
                settings,
            ),
        }
    }

    pub fn for_model(model: &crate::model::Model, settings: SshSettings) -> Self {
        Self::new(model.servers.values().cloned(), settings)
    }

    /// Open the connection to `server` now (ssh servers) and start a shell on it, so that its
    /// first step does not wait for the handshake. Both are kept for the steps; an error is left
    /// for the first step to report (it connects again).
    pub async fn connect(&self, server: &str) -> Result<(), TransportError> {
        match self.kinds.get(server) {
            Some(TransportKind::Ssh) => self.ssh.warm(server).await,
            Some(TransportKind::Local) => Ok(()),
            None => Err(TransportError::UnknownServer(server.to_string())),
        }
    }

    fn pick(&self, target: &Target) -> Result<&dyn Transport, TransportError> {
        match target {
            Target::Local => Ok(&self.local),
            Target::Server(name) => match self.kinds.get(name) {
                Some(TransportKind::Ssh) => Ok(&self.ssh),
                Some(TransportKind::Local) => Ok(&self.local),
                None => Err(TransportError::UnknownServer(name.clone())),
            },
        }
    }
}

impl Transport for Transports {
    fn run<'a>(
        &'a self,
        target: &'a Target,
        script: &'a str,
        stdin: Option<&'a [u8]>,
        timeout: Duration,
        out: &'a mut Output<'_>,
    ) -> BoxFuture<'a, Result<Option<i32>, TransportError>> {
        Box::pin(async move {
            self.pick(target)?
                .run(target, script, stdin, timeout, out)
                .await
        })
    }

    fn reset(&self, target: &Target) {
        if let Ok(t) = self.pick(target) {
            t.reset(target);
        }
    }
}

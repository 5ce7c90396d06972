//! The state database (SQLite, schema in migrations/): executions with their operations, steps
//! and redacted output; what is applied per environment; slice assignments; generated credentials
//! encrypted to the daemon's age identity.
//!
//! One process owns a state directory at a time (an exclusive lock on `keystone.lock`), so when a
//! state is opened, anything still `running` belongs to a process that died: it is marked
//! `interrupted`.

mod recorder;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex};

use include_dir::{Dir, include_dir};
use rusqlite::{Connection, OptionalExtension, params};
use rusqlite_migration::Migrations;

use crate::execute::Status;
use crate::plan::{
    Applied, AppliedEnvironment, AppliedSharedService, Operation, StepAction, Target,
};

pub use recorder::Recorder;

static MIGRATIONS_DIR: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/migrations");
static MIGRATIONS: LazyLock<Migrations<'static>> = LazyLock::new(|| {
    Migrations::from_directory(&MIGRATIONS_DIR).expect("migrations/ holds NN-name/up.sql")
});

/// The database file inside a state directory.
pub const DB_FILE: &str = "state.sqlite3";
/// The lock file that makes one process the owner of a state directory.
pub const LOCK_FILE: &str = "keystone.lock";

/// How often, and how long apart, `open` tries a held lock before reporting it as owned.
const LOCK_ATTEMPTS: u32 = 20;
const LOCK_RETRY: std::time::Duration = std::time::Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state database {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("state database {path}: cannot bring the schema up to date: {detail}")]
    Migration { path: String, detail: String },
    #[error(
        "state directory {path} is in use by another keystone process (it holds {path}/{LOCK_FILE}); stop it or use another --state"
    )]
    Locked { path: String },
    #[error(
        "{path} holds no Keystone state (no {DB_FILE}); give --state the daemon's state directory"
    )]
    NotAState { path: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "credential {service}/{name}: no age identity to encrypt it to (give the daemon its identity with --age-key-file)"
    )]
    NoIdentity { service: String, name: String },
    #[error("credential {service}/{name} cannot be decrypted with this age identity: {detail}")]
    Decrypt {
        service: String,
        name: String,
        detail: String,
    },
    #[error("{path}: not an age identity file (expected a line starting with AGE-SECRET-KEY-1)")]
    BadIdentity { path: String },
    #[error("applied state of {key} in the database is unreadable: {detail}")]
    Corrupt { key: String, detail: String },
}

pub type Result<T, E = StateError> = std::result::Result<T, E>;

/// A key and the JSON stored under it.
type KeyedJson = (String, String);

/// Looks a secret up by `file.dotted.key`.
type SecretLookup = Box<dyn Fn(&str) -> Result<String, String> + Send + Sync>;

/// The id of one execution (one run of a plan) in the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExecutionId(pub i64);

/// An execution as recorded, for status pages and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionRecord {
    pub id: ExecutionId,
    pub environment: Option<String>,
    pub commit: Option<String>,
    pub status: Status,
    pub started_at: String,
    pub finished_at: Option<String>,
    /// Depth-first declared order.
    pub operations: Vec<OperationRecord>,
}

impl ExecutionRecord {
    pub fn operation(&self, op_id: &str) -> Option<&OperationRecord> {
        self.operations.iter().find(|o| o.op_id == op_id)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationRecord {
    pub op_id: String,
    pub parent_op_id: Option<String>,
    pub depth: u32,
    pub kind: String,
    pub title: String,
    pub server: Option<String>,
    pub status: Status,
    pub error: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub steps: Vec<StepRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRecord {
    pub name: String,
    pub target: String,
    pub action: String,
    pub detail: String,
    pub status: Status,
    pub attempts: u32,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    pub output: Option<StoredOutput>,
}

/// The kept part of a step's redacted output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredOutput {
    pub head: String,
    pub tail: String,
    pub total_bytes: u64,
}

impl StoredOutput {
    pub fn text(&self) -> String {
        let omitted = self.total_bytes - (self.head.len() + self.tail.len()) as u64;
        match omitted {
            0 => format!("{}{}", self.head, self.tail),
            n => format!("{}\n[… {n} bytes omitted …]\n{}", self.head, self.tail),
        }
    }
}

/// The state of one Keystone installation.
pub struct State {
    conn: Mutex<Connection>,
    path: String,
    dir: Option<PathBuf>,
    identity: Option<age::x25519::Identity>,
    /// Operations found `running` at open and marked `interrupted`.
    interrupted_at_open: Vec<(ExecutionId, String)>,
    _lock: Option<File>,
    /// Opened with `open_read_only`: reads only, no lock, nothing generated is stored.
    read_only: bool,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").field("path", &self.path).finish()
    }
}

pub(crate) fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("RFC 3339 formats any UTC time")
}

impl State {
    /// Open (creating it when missing) the state in directory `dir`: lock it, bring the schema up
    /// to date, and mark what a dead process left `running` as `interrupted`.
    pub fn open(dir: &Path) -> Result<Self> {
        let io = |source| StateError::Io {
            path: dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        }
        let lock_path = dir.join(LOCK_FILE);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| StateError::Io {
                path: lock_path.display().to_string(),
                source,
            })?;
        // A lock can outlive its owner for a moment: a child forked by another thread holds a copy
        // of the descriptor until it execs, and a process that just exited may not be reaped yet.
        // A short wait tells that apart from a second keystone that really owns the directory.
        let mut attempts = 0;
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if attempts < LOCK_ATTEMPTS => {
                    attempts += 1;
                    std::thread::sleep(LOCK_RETRY);
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(StateError::Locked {
                        path: dir.display().to_string(),
                    });
                }
                Err(std::fs::TryLockError::Error(source)) => {
                    return Err(StateError::Io {
                        path: lock_path.display().to_string(),
                        source,
                    });
                }
            }
        }
        let db = dir.join(DB_FILE);
        let path = db.display().to_string();
        let conn = Connection::open(&db).map_err(|source| StateError::Sqlite {
            path: path.clone(),
            source,
        })?;
        let mut state = Self::from_connection(conn, path)?;
        state.dir = Some(dir.to_path_buf());
        state._lock = Some(lock);
        Ok(state)
    }

    /// Read an existing state without its lock, beside a running daemon (`keystone plan
    /// --state`): the database opened read-only, nothing created, migrated or recovered.
    pub fn open_read_only(dir: &Path) -> Result<Self> {
        let db = dir.join(DB_FILE);
        if !db.is_file() {
            return Err(StateError::NotAState {
                path: dir.display().to_string(),
            });
        }
        let path = db.display().to_string();
        let sql = |source| StateError::Sqlite {
            path: path.clone(),
            source,
        };
        let conn = Connection::open_with_flags(
            &db,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sql)?;
        Ok(Self {
            conn: Mutex::new(conn),
            path,
            dir: Some(dir.to_path_buf()),
            identity: None,
            interrupted_at_open: Vec::new(),
            _lock: None,
            read_only: true,
        })
    }

    /// A private in-memory state (tests, `keystone plan` without --state).
    pub fn open_in_memory() -> Result<Self> {
        let conn = Connection::open_in_memory().map_err(|source| StateError::Sqlite {
            path: ":memory:".into(),
            source,
        })?;
        Self::from_connection(conn, ":memory:".into())
    }

    fn from_connection(mut conn: Connection, path: String) -> Result<Self> {
        let sql = |source| StateError::Sqlite {
            path: path.clone(),
            source,
        };
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sql)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(sql)?;
        if path != ":memory:" {
            conn.pragma_update(None, "journal_mode", "WAL")
                .map_err(sql)?;
            conn.pragma_update(None, "synchronous", "NORMAL")
                .map_err(sql)?;
        }
        MIGRATIONS
            .to_latest(&mut conn)
            .map_err(|e| StateError::Migration {
                path: path.clone(),
                detail: e.to_string(),
            })?;
        let interrupted = recover(&mut conn).map_err(sql)?;
        Ok(Self {
            conn: Mutex::new(conn),
            path,
            dir: None,
            identity: None,
            interrupted_at_open: interrupted,
            _lock: None,
            read_only: false,
        })
    }

    /// Encrypt generated credentials to (and decrypt them with) this identity.
    pub fn with_identity(mut self, identity: age::x25519::Identity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// The state directory, when the state lives on disk.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Operations that were `running` when this state was opened (a previous process died while
    /// running them); they are now `interrupted`.
    pub fn interrupted_at_open(&self) -> &[(ExecutionId, String)] {
        &self.interrupted_at_open
    }

    pub(crate) fn with_conn<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut conn).map_err(|source| StateError::Sqlite {
            path: self.path.clone(),
            source,
        })
    }

    /// Record a new execution of `root` with every operation and step `pending`.
    pub fn begin_execution(
        &self,
        environment: Option<&str>,
        commit: Option<&str>,
        root: &Operation,
    ) -> Result<ExecutionId> {
        self.with_conn(|conn| {
            let tx = conn.transaction()?;
            tx.execute(
                "INSERT INTO executions (environment, commit_id, root_op, status, started_at)
                 VALUES (?1, ?2, ?3, 'running', ?4)",
                params![environment, commit, root.id, now()],
            )?;
            let id = tx.last_insert_rowid();
            let mut position = 0i64;
            insert_tree(&tx, id, root, None, 0, &mut position)?;
            tx.commit()?;
            Ok(ExecutionId(id))
        })
    }

    /// An observer that records an execution's events in this state.
    pub fn recorder(self: &std::sync::Arc<Self>, id: ExecutionId) -> Recorder {
        Recorder::new(self.clone(), id)
    }

    /// Ids of all executions, oldest first.
    pub fn executions(&self) -> Result<Vec<ExecutionId>> {
        self.with_conn(|conn| {
            let mut q = conn.prepare("SELECT id FROM executions ORDER BY id")?;
            let ids = q
                .query_map([], |r| Ok(ExecutionId(r.get(0)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(ids)
        })
    }

    pub fn execution(&self, id: ExecutionId) -> Result<Option<ExecutionRecord>> {
        self.with_conn(|conn| read_execution(conn, id))
    }

    /// Everything deployed, as the planner reads it.
    pub fn applied(&self) -> Result<Applied> {
        let (envs, services): (Vec<KeyedJson>, Vec<KeyedJson>) = self.with_conn(|conn| {
            let rows = |sql: &str| -> rusqlite::Result<Vec<KeyedJson>> {
                let mut q = conn.prepare(sql)?;
                q.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect()
            };
            Ok((
                rows("SELECT environment, data FROM applied_environments ORDER BY 1")?,
                rows("SELECT service, data FROM applied_services ORDER BY 1")?,
            ))
        })?;
        let mut applied = Applied::default();
        for (key, data) in envs {
            let env = serde_json::from_str(&data).map_err(|e| StateError::Corrupt {
                key: key.clone(),
                detail: e.to_string(),
            })?;
            applied.environments.insert(key, env);
        }
        for (key, data) in services {
            let svc = serde_json::from_str(&data).map_err(|e| StateError::Corrupt {
                key: key.clone(),
                detail: e.to_string(),
            })?;
            applied.services.insert(key, svc);
        }
        Ok(applied)
    }

    /// Record what a successful deploy of `environment` (`app/env`) left running.
    pub fn record_environment(
        &self,
        environment: &str,
        applied: &AppliedEnvironment,
    ) -> Result<()> {
        let data = serde_json::to_string(applied).expect("applied state serializes");
        self.with_conn(|conn| {
            conn.execute(
                "INSERT INTO applied_environments (environment, config_commit, recorded_at, data)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (environment) DO UPDATE SET
                   config_commit = excluded.config_commit, recorded_at = excluded.recorded_at,
                   data = excluded.data",
                params![environment, applied.config_commit, now(), data],
            )
            .map(|_| ())
        })
    }

    /// Forget an environment that left the config (after its removal ran).
    pub fn forget_environment(&self, environment: &str) -> Result<()> {
        self.with_conn(|conn| {
            conn.execute(
                "DELETE FROM applied_environments WHERE environment = ?1",
                [environment],
            )
            .map(|_| ())
        })
    }

    /// Record what runs of shared service `service` after it was created or updated.
    pub fn record_shared_service(
        &self,
        service: &str,
        applied: &AppliedSharedService,
    ) -> Result<()> {
        let data = serde_json::to_string(applied).expect("applied state serializes");
        self.with_conn(|conn| {
            conn.execute(
                "INSERT INTO applied_services (service, recorded_at, data) VALUES (?1, ?2, ?3)
                 ON CONFLICT (service) DO UPDATE SET
                   recorded_at = excluded.recorded_at, data = excluded.data",
                params![service, now(), data],
            )
            .map(|_| ())
        })
    }

    /// Record that Keystone wrote bytes with this SHA-256 (hex) to `path` on `server`.
    pub fn record_written(&self, server: &str, path: &str, sha256: &str, mode: u32) -> Result<()> {
        self.with_conn(|conn| {
            conn.execute(
                "INSERT INTO written_files (server, path, sha256, mode, written_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (server, path) DO UPDATE SET
                   sha256 = excluded.sha256, mode = excluded.mode, written_at = excluded.written_at",
                params![server, path, sha256, mode, now()],
            )
            .map(|_| ())
        })
    }

    /// Every file Keystone wrote, by (server, path): the last write's hash and mode.
    pub fn written_files(&self) -> Result<crate::health::WrittenFiles> {
        self.with_conn(|conn| {
            let mut q = conn.prepare("SELECT server, path, sha256, mode FROM written_files")?;
            q.query_map([], |r| {
                Ok((
                    (r.get::<_, String>(0)?, r.get::<_, String>(1)?),
                    crate::health::WrittenFile {
                        sha256: r.get(2)?,
                        mode: r.get(3)?,
                    },
                ))
            })?
            .collect()
        })
    }

    /// The value of `{{generated:<key>}}`: 32 random bytes, URL-safe base64 without padding,
    /// generated the first time and stored encrypted.
    pub fn generated(&self, key: &str) -> Result<String> {
        self.credential("generated", key, || {
            use base64::Engine;
            let bytes: [u8; 32] = rand::random();
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        })
    }

    /// The credential `name` of `service` (e.g. `main-postgres`, `admin_password`): generated by
    /// `generate` the first time, stored encrypted to the age identity, and the same value on
    /// every later call.
    pub fn credential(
        &self,
        service: &str,
        name: &str,
        generate: impl FnOnce() -> String,
    ) -> Result<String> {
        let identity = self
            .identity
            .as_ref()
            .ok_or_else(|| StateError::NoIdentity {
                service: service.into(),
                name: name.into(),
            })?;
        let decrypt_err = |detail: String| StateError::Decrypt {
            service: service.into(),
            name: name.into(),
            detail,
        };
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let sql = |source| StateError::Sqlite {
            path: self.path.clone(),
            source,
        };
        let stored: Option<Vec<u8>> = conn
            .query_row(
                "SELECT ciphertext FROM credentials WHERE service = ?1 AND name = ?2",
                params![service, name],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql)?;
        if let Some(ciphertext) = stored {
            let plain =
                age::decrypt(identity, &ciphertext).map_err(|e| decrypt_err(e.to_string()))?;
            return String::from_utf8(plain).map_err(|_| decrypt_err("not UTF-8".into()));
        }
        let value = generate();
        if self.read_only {
            // Nothing was ever made with a credential that is not there: a value for this run.
            return Ok(value);
        }
        let ciphertext = age::encrypt(&identity.to_public(), value.as_bytes())
            .map_err(|e| decrypt_err(e.to_string()))?;
        let tx = conn.transaction().map_err(sql)?;
        tx.execute(
            "INSERT INTO credentials (service, name, ciphertext, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![service, name, ciphertext, now()],
        )
        .map_err(sql)?;
        tx.commit().map_err(sql)?;
        Ok(value)
    }
}

/// Placeholder values for an execution: `{{secret:…}}` from the caller's decrypted secrets,
/// `{{generated:…}}` from this state's encrypted credentials.
pub struct StateValues {
    state: std::sync::Arc<State>,
    secrets: SecretLookup,
}

impl StateValues {
    pub fn new(
        state: std::sync::Arc<State>,
        secrets: impl Fn(&str) -> Result<String, String> + Send + Sync + 'static,
    ) -> Self {
        Self {
            state,
            secrets: Box::new(secrets),
        }
    }
}

impl StateValues {
    /// Secrets from a `secrets::Resolver` (the config commit's secret files), by
    /// `file.dotted.key`.
    pub fn from_resolver(
        state: std::sync::Arc<State>,
        resolver: std::sync::Arc<crate::secrets::Resolver>,
    ) -> Self {
        Self::new(state, move |path| {
            let (file, key) = path
                .split_once('.')
                .ok_or_else(|| format!("{path:?} is not `file.key`"))?;
            let reference = crate::model::SecretRef {
                file: file.to_string(),
                key_path: key.split('.').map(str::to_string).collect(),
                origin: crate::model::Origin::default(),
            };
            resolver
                .resolve(&reference)
                .map(|v| v.expose().to_string())
                .map_err(|e| e.to_string())
        })
    }
}

impl crate::execute::Values for StateValues {
    fn secret(&self, path: &str) -> Result<String, String> {
        (self.secrets)(path)
    }

    fn generated(&self, key: &str) -> Result<String, String> {
        self.state.generated(key).map_err(|e| e.to_string())
    }
}

/// Read an age identity file (`AGE-SECRET-KEY-1…` lines; the first one is used).
pub fn load_identity(path: &Path) -> Result<age::x25519::Identity> {
    let text = std::fs::read_to_string(path).map_err(|source| StateError::Io {
        path: path.display().to_string(),
        source,
    })?;
    text.lines()
        .map(str::trim)
        .find(|l| l.starts_with("AGE-SECRET-KEY-1"))
        .and_then(|l| l.parse().ok())
        .ok_or_else(|| StateError::BadIdentity {
            path: path.display().to_string(),
        })
}

fn target_name(target: &Target) -> &str {
    match target {
        Target::Local => "local",
        Target::Server(s) => s,
    }
}

fn insert_tree(
    tx: &rusqlite::Transaction<'_>,
    execution: i64,
    op: &Operation,
    parent: Option<&str>,
    depth: u32,
    position: &mut i64,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO operations (execution_id, op_id, parent_op_id, position, depth, kind, title,
                                 server, status)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'pending')",
        params![
            execution,
            op.id,
            parent,
            *position,
            depth,
            op.kind.as_str(),
            op.title,
            op.server
        ],
    )?;
    *position += 1;
    for (i, step) in op.steps.iter().enumerate() {
        let (action, detail) = match &step.action {
            StepAction::Run { stdin, .. } => (
                "run",
                stdin
                    .as_ref()
                    .map(|p| format!("stdin: {}", p.summary))
                    .unwrap_or_default(),
            ),
            StepAction::Upload {
                path,
                mode,
                contents,
            } => (
                "upload",
                format!("{path} (mode {mode:o}): {}", contents.summary),
            ),
            StepAction::ResolveDigest { image, registry } => (
                "resolve_digest",
                match registry {
                    Some(r) => format!("{image} (registry {r})"),
                    None => image.clone(),
                },
            ),
        };
        tx.execute(
            "INSERT INTO steps (execution_id, op_id, position, name, target, action, detail,
                                idempotent, status)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'pending')",
            params![
                execution,
                op.id,
                i as i64,
                step.name,
                target_name(&step.target),
                action,
                detail,
                step.idempotent
            ],
        )?;
    }
    for child in &op.children {
        insert_tree(tx, execution, child, Some(&op.id), depth + 1, position)?;
    }
    Ok(())
}

/// Whatever a dead process left running is interrupted; what it never started is cancelled.
fn recover(conn: &mut Connection) -> rusqlite::Result<Vec<(ExecutionId, String)>> {
    let tx = conn.transaction()?;
    let interrupted = {
        let mut q = tx.prepare(
            "SELECT execution_id, op_id FROM operations WHERE status = 'running' ORDER BY execution_id, position",
        )?;
        q.query_map([], |r| Ok((ExecutionId(r.get(0)?), r.get(1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?
    };
    let now = now();
    tx.execute(
        "UPDATE steps SET status = 'interrupted', finished_at = ?1, error = 'the keystone process running it stopped'
         WHERE status = 'running'",
        [&now],
    )?;
    tx.execute(
        "UPDATE operations SET status = 'interrupted', finished_at = ?1, error = 'the keystone process running it stopped'
         WHERE status = 'running'",
        [&now],
    )?;
    tx.execute(
        "UPDATE steps SET status = 'cancelled' WHERE status = 'pending'
         AND execution_id IN (SELECT id FROM executions WHERE status = 'running')",
        [],
    )?;
    tx.execute(
        "UPDATE operations SET status = 'cancelled' WHERE status = 'pending'
         AND execution_id IN (SELECT id FROM executions WHERE status = 'running')",
        [],
    )?;
    tx.execute(
        "UPDATE executions SET status = 'interrupted', finished_at = ?1 WHERE status = 'running'",
        [&now],
    )?;
    tx.commit()?;
    Ok(interrupted)
}

fn status_of(s: String) -> rusqlite::Result<Status> {
    Status::parse(&s).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            format!("unknown status {s:?}").into(),
        )
    })
}

fn read_execution(conn: &Connection, id: ExecutionId) -> rusqlite::Result<Option<ExecutionRecord>> {
    let head = conn
        .query_row(
            "SELECT environment, commit_id, status, started_at, finished_at FROM executions WHERE id = ?1",
            [id.0],
            |r| {
                Ok((
                    r.get::<_, Option<String>>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Option<String>>(4)?,
                ))
            },
        )
        .optional()?;
    let Some((environment, commit, status, started_at, finished_at)) = head else {
        return Ok(None);
    };
    let mut steps: BTreeMap<String, Vec<StepRecord>> = BTreeMap::new();
    {
        let mut q = conn.prepare(
            "SELECT s.op_id, s.name, s.target, s.action, s.detail, s.status, s.attempts, s.exit_code,
                    s.error, o.head, o.tail, o.total_bytes
             FROM steps s LEFT JOIN step_output o
               ON o.execution_id = s.execution_id AND o.op_id = s.op_id AND o.position = s.position
             WHERE s.execution_id = ?1 ORDER BY s.op_id, s.position",
        )?;
        let rows = q.query_map([id.0], |r| {
            let head: Option<String> = r.get(9)?;
            let output = match head {
                Some(head) => Some(StoredOutput {
                    head,
                    tail: r.get(10)?,
                    total_bytes: r.get::<_, i64>(11)? as u64,
                }),
                None => None,
            };
            Ok((
                r.get::<_, String>(0)?,
                StepRecord {
                    name: r.get(1)?,
                    target: r.get(2)?,
                    action: r.get(3)?,
                    detail: r.get(4)?,
                    status: status_of(r.get(5)?)?,
                    attempts: r.get(6)?,
                    exit_code: r.get(7)?,
                    error: r.get(8)?,
                    output,
                },
            ))
        })?;
        for row in rows {
            let (op, step) = row?;
            steps.entry(op).or_default().push(step);
        }
    }
    let mut q = conn.prepare(
        "SELECT op_id, parent_op_id, depth, kind, title, server, status, error, started_at, finished_at
         FROM operations WHERE execution_id = ?1 ORDER BY position",
    )?;
    let operations = q
        .query_map([id.0], |r| {
            let op_id: String = r.get(0)?;
            Ok(OperationRecord {
                steps: Vec::new(),
                parent_op_id: r.get(1)?,
                depth: r.get(2)?,
                kind: r.get(3)?,
                title: r.get(4)?,
                server: r.get(5)?,
                status: status_of(r.get(6)?)?,
                error: r.get(7)?,
                started_at: r.get(8)?,
                finished_at: r.get(9)?,
                op_id,
            })
        })?
        .map(|o| {
            o.map(|mut o| {
                o.steps = steps.remove(&o.op_id).unwrap_or_default();
                o
            })
        })
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Some(ExecutionRecord {
        id,
        environment,
        commit,
        status: status_of(status)?,
        started_at,
        finished_at,
        operations,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_valid() {
        MIGRATIONS.validate().unwrap();
        assert!(MIGRATIONS_DIR.get_file("01-initial/up.sql").is_some());
        assert!(MIGRATIONS_DIR.get_file("02-written-files/up.sql").is_some());
    }

    #[test]
    fn written_files_keep_the_last_write() {
        let s = State::open_in_memory().unwrap();
        s.record_written("web-1", "/a/compose.yml", "aa", 0o644)
            .unwrap();
        s.record_written("web-1", "/a/compose.yml", "bb", 0o644)
            .unwrap();
        s.record_written("web-2", "/a/.env", "cc", 0o600).unwrap();
        let w = s.written_files().unwrap();
        assert_eq!(w.len(), 2);
        assert_eq!(
            w[&("web-1".to_string(), "/a/compose.yml".to_string())].sha256,
            "bb"
        );
        assert_eq!(w[&("web-2".to_string(), "/a/.env".to_string())].mode, 0o600);
    }
}

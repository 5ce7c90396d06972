//! `keystone apply`: plan the config repository against the recorded applied state, run the plan
//! on the servers, record what converged. One line per step; exit 0 only when every part of the
//! plan converged, 1 when a part failed or is blocked, 2 on usage or I/O errors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;

use keystone::execute::{
    Event, ExecuteOptions, Observer, PlanRun, Shutdown, SshSettings, Transports,
};
use keystone::model::{Model, SecretRef, Value};
use keystone::plan::{self, Desired, EnvironmentStatus, Finding, PlanContext, ScopedFinding};
use keystone::secrets::{Identities, Resolver};
use keystone::state::{State, StateValues};

#[derive(clap::Args)]
pub struct Args {
    /// The config repository (a git working tree; its HEAD commit is what is applied).
    #[arg(long, default_value = ".")]
    repo: PathBuf,
    /// Keystone's state directory (SQLite database, ssh files).
    #[arg(long)]
    state: PathBuf,
    /// Private key offered to every server.
    #[arg(long)]
    ssh_key: Option<PathBuf>,
    /// age identity for the config's secrets and the state's generated credentials.
    #[arg(long)]
    age_key_file: Option<PathBuf>,
    /// Print the plan and stop.
    #[arg(long)]
    dry_run: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let loaded = keystone::config::load_dir(&args.repo)
        .with_context(|| format!("cannot read the config repository {}", args.repo.display()))?;
    if !loaded.diagnostics.is_empty() {
        eprintln!("{}", loaded.render_diagnostics());
    }
    let model = &loaded.model;
    let commit = head_commit(&args.repo)?;

    let key_file = args
        .age_key_file
        .clone()
        .or_else(|| std::env::var_os("SOPS_AGE_KEY_FILE").map(PathBuf::from));
    let identities = Identities::discover(key_file.as_deref())?;
    let redactor = keystone::secrets::Redactor::new();
    let resolver = Resolver::from_dir(&args.repo, model, identities, redactor.clone())?;

    let mut state = State::open(&args.state)?;
    if let Some(path) = &key_file {
        state = state.with_identity(keystone::state::load_identity(path)?);
    }
    let state = Arc::new(state);
    let fp_key = state.credential("keystone", "fingerprint-key", random_key)?;

    // Every secret the config references: value for the executor, fingerprint for the planner.
    let mut secret_states = BTreeMap::new();
    let mut values: BTreeMap<String, String> = BTreeMap::new();
    for r in secret_refs(model) {
        let path = r.display_path();
        match resolver.resolve(&r) {
            Ok(v) => {
                secret_states.insert(
                    path.clone(),
                    plan::SecretState::Fingerprint {
                        fingerprint: v.fingerprint(fp_key.as_bytes()),
                    },
                );
                values.insert(path, v.expose().to_string());
            }
            Err(e) => {
                secret_states.insert(
                    path,
                    plan::SecretState::Undecryptable {
                        reason: e.to_string(),
                    },
                );
            }
        }
    }

    let diagnostics: Vec<ScopedFinding> = loaded
        .diagnostics
        .iter()
        .map(|d| ScopedFinding {
            scope: match &d.scope {
                keystone::config::Scope::Project => plan::Scope::Project,
                keystone::config::Scope::Application { app } => {
                    plan::Scope::Application { app: app.clone() }
                }
                keystone::config::Scope::Environment { app, env } => plan::Scope::Environment {
                    app: app.clone(),
                    env: env.clone(),
                },
            },
            finding: Finding {
                code: d.code.to_string(),
                location: Some(d.location()),
                message: d.message.clone(),
                hint: d.hint.clone(),
            },
        })
        .collect();
    let ctx = PlanContext {
        config_commit: commit.clone(),
        source_commits: source_commits(model, &values),
        operation_prefix: format!(
            "{}-{}",
            time::OffsetDateTime::now_utc().unix_timestamp(),
            &commit[..commit.len().min(7)]
        ),
        request: plan::Request::Deploy,
        secrets: secret_states,
    };
    let applied = state.applied()?;
    let plan = plan::plan(
        Desired {
            model,
            diagnostics: &diagnostics,
        },
        &applied,
        &ctx,
    );
    println!("{}", redactor.redact(&plan::output::text(&plan, false)));
    if args.dry_run {
        return Ok(ExitCode::SUCCESS);
    }

    let identity = args
        .ssh_key
        .clone()
        .unwrap_or_else(SshSettings::default_identity_file);
    let transport = Arc::new(Transports::for_model(
        model,
        SshSettings::new(args.state.join("ssh"), identity),
    ));
    let secret_values = values.clone();
    let run = PlanRun {
        transport,
        state: state.clone(),
        observer: Arc::new(PrintSteps),
        redactor: redactor.clone(),
        options: ExecuteOptions::default(),
        values: Some(Arc::new(StateValues::new(state.clone(), move |p| {
            secret_values
                .get(p)
                .cloned()
                .ok_or_else(|| format!("no secret {p} among the decrypted secrets"))
        }))),
        digests: Some(Arc::new(registries(model, &values))),
    };
    let shutdown = Shutdown::new();
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    // Ctrl-C or SIGTERM: nothing new starts, running steps get the grace period, and what is
    // still running then is recorded as interrupted.
    let trigger = shutdown.clone();
    rt.spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!("keystone: stopping: nothing new starts; running steps get 30 s to finish");
        trigger.trigger();
    });
    let outcome = rt.block_on(keystone::execute::run_plan(
        &plan,
        Some(model),
        &run,
        &shutdown,
    ))?;
    let blocked = plan
        .environments
        .iter()
        .any(|e| e.status == EnvironmentStatus::Blocked);
    for (key, o) in &outcome.parts {
        println!(
            "{key}: {}",
            redactor.redact(&keystone::execute::describe(o))
        );
    }
    Ok(if outcome.converged() && !blocked {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The config registries as the digest resolver reaches them, with their credentials.
fn registries(
    model: &Model,
    secrets: &BTreeMap<String, String>,
) -> keystone::execute::HttpDigestResolver {
    let value = |v: &Option<Value>| match v {
        Some(Value::Plain(s)) => Some(s.clone()),
        Some(Value::Secret(r)) => secrets.get(&r.display_path()).cloned(),
        None => None,
    };
    let access = model
        .registries
        .values()
        .map(|r| {
            let host = r
                .url
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_string();
            (
                r.name.clone(),
                keystone::execute::RegistryAccess {
                    host,
                    insecure: r.insecure,
                    username: value(&r.username),
                    password: value(&r.password),
                },
            )
        })
        .collect();
    keystone::execute::HttpDigestResolver::new(access)
}

fn random_key() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

fn head_commit(repo: &Path) -> anyhow::Result<String> {
    let r = git2::Repository::open(repo)
        .with_context(|| format!("{} is not a git repository", repo.display()))?;
    let head = r
        .head()
        .and_then(|h| h.peel_to_commit())
        .context("the config repository has no commit")?;
    Ok(head.id().to_string())
}

/// Every `{secret: …}` reference of the model.
fn secret_refs(model: &Model) -> Vec<SecretRef> {
    let mut out = Vec::new();
    let mut add = |v: &Option<Value>| {
        if let Some(Value::Secret(r)) = v {
            out.push(r.clone());
        }
    };
    for r in model.registries.values() {
        add(&r.username);
        add(&r.password);
    }
    for a in model.applications.values() {
        add(&a.source.deploy_key);
        for e in a.environments.values() {
            for (_, v) in &e.variables {
                add(&Some(v.clone()));
            }
        }
    }
    out
}

/// The commit each environment's `ref` names in the application source, asked of the source
/// repository with `git ls-remote` (and the deploy key). Unknown when that fails: the build
/// then resolves it.
fn source_commits(model: &Model, secrets: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for a in model.applications.values() {
        let Ok(dir) = tempfile::tempdir() else {
            continue;
        };
        let mut cmd = std::process::Command::new("git");
        cmd.arg("ls-remote").arg("--").arg(&a.source.repo);
        if let Some(Value::Secret(r)) = &a.source.deploy_key {
            let Some(key) = secrets.get(&r.display_path()) else {
                continue;
            };
            let key_path = dir.path().join("deploy_key");
            if write_private(&key_path, key).is_err() {
                continue;
            }
            let ssh = keystone::shell::join([
                "ssh",
                "-i",
                &key_path.display().to_string(),
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=accept-new",
                "-o",
                &format!(
                    "UserKnownHostsFile={}",
                    dir.path().join("known_hosts").display()
                ),
            ]);
            cmd.env("GIT_SSH_COMMAND", ssh);
        }
        let Ok(out_put) = cmd.stderr(std::process::Stdio::null()).output() else {
            continue;
        };
        if !out_put.status.success() {
            tracing::warn!(app = %a.name, "git ls-remote failed; the build resolves the ref");
            continue;
        }
        let text = String::from_utf8_lossy(&out_put.stdout);
        for e in a.environments.values() {
            let wanted = [
                e.git_ref.clone(),
                format!("refs/heads/{}", e.git_ref),
                format!("refs/tags/{}", e.git_ref),
            ];
            let found = text.lines().find_map(|l| {
                let (id, name) = l.split_once('\t')?;
                wanted.iter().any(|w| w == name).then(|| id.to_string())
            });
            let commit = found.or_else(|| {
                (e.git_ref.len() == 40 && e.git_ref.chars().all(|c| c.is_ascii_hexdigit()))
                    .then(|| e.git_ref.clone())
            });
            if let Some(c) = commit {
                out.insert(format!("{}/{}", a.name, e.name), c);
            }
        }
    }
    out
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    if !text.ends_with('\n') {
        f.write_all(b"\n")?;
    }
    Ok(())
}

/// One line per finished step: `ok|FAILED <op id> <step> (<duration>)`, failures with the tail of
/// their (already redacted) output.
struct PrintSteps;

impl Observer for PrintSteps {
    fn on_event(&self, event: &Event<'_>) {
        match event {
            Event::StepFinished {
                op,
                step,
                status,
                error,
                duration,
                output,
                retry_in,
                ..
            } => {
                let d = keystone::execute::human(*duration);
                println!("{status:>9} {} · {} ({d})", op.id, step.name);
                if error.is_some() || retry_in.is_some() {
                    if let Some(e) = error {
                        println!("          {e}");
                    }
                    for line in output
                        .text()
                        .lines()
                        .rev()
                        .take(20)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                    {
                        println!("          | {line}");
                    }
                }
            }
            Event::StepSkipped {
                op, step, status, ..
            } => println!("{status:>9} {} · {}", op.id, step.name),
            _ => {}
        }
    }
}

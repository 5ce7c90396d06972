//! `keystone apply`: plan the config repository against the recorded applied state, run the plan
//! on the servers, record what converged. One line per step (and on a terminal a progress bar per
//! running operation); exit 0 only when every part of the
//! plan converged, 1 when a part failed or is blocked, 2 on usage or I/O errors.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;

use keystone::daemon::engine::{
    random_key, registries, resolve_secrets, scoped_findings, source_commits,
};
use keystone::execute::{ExecuteOptions, PlanRun, Progress, Shutdown, SshSettings, Transports};
use keystone::plan::{self, Desired, EnvironmentStatus, PlanContext};
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
    let (secret_states, values) = resolve_secrets(&resolver, model, &fp_key);

    let diagnostics = scoped_findings(&loaded.diagnostics);
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
        observer: Arc::new(Progress::stdout()),
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

fn head_commit(repo: &Path) -> anyhow::Result<String> {
    let r = git2::Repository::open(repo)
        .with_context(|| format!("{} is not a git repository", repo.display()))?;
    let head = r
        .head()
        .and_then(|h| h.peel_to_commit())
        .context("the config repository has no commit")?;
    Ok(head.id().to_string())
}

//! `keystone daemon`: watch the config repository, deploy every new commit of the tracked branch,
//! write status to the status branch, serve the webhook and API. Runs until SIGTERM or Ctrl-C.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use keystone::daemon::engine::EngineDeployer;
use keystone::daemon::forge::{ForgeClient, ForgeKind};
use keystone::daemon::runtime::{self, DaemonOptions};
use keystone::daemon::webhook::WebhookSecret;

#[derive(clap::Args)]
pub struct Args {
    /// The config repository: a URL (https://, ssh://, git@…) or a local directory.
    #[arg(long)]
    repo: String,
    /// Keystone's state directory (mirror, SQLite database, ssh files).
    #[arg(long)]
    state: PathBuf,
    /// Address of the webhook and API server, e.g. `127.0.0.1:8080`. None: no server.
    #[arg(long)]
    listen: Option<String>,
    /// age identity for the config's secrets and the state's generated credentials.
    #[arg(long)]
    age_key_file: Option<PathBuf>,
    /// Private key offered to every server and to the config repository.
    #[arg(long)]
    ssh_key: Option<PathBuf>,
    /// File holding the webhook's shared secret.
    #[arg(long)]
    webhook_secret_file: Option<PathBuf>,
    /// Poll interval in seconds (overrides keystone.yaml's `reconcile.interval`).
    #[arg(long)]
    poll_interval: Option<u64>,
    /// The forge whose API gets the pull requests' plan comments and commit statuses:
    /// `github`, `gitea` or `forgejo`. Without it pull-request events are only logged.
    #[arg(long, requires_all = ["forge_api", "forge_repo", "forge_token_file"])]
    forge: Option<String>,
    /// Base URL of the forge's REST API: `https://api.github.com`, `https://HOST/api/v1` (Gitea).
    #[arg(long, requires = "forge")]
    forge_api: Option<String>,
    /// The config repository on the forge, `OWNER/REPO`.
    #[arg(long, requires = "forge")]
    forge_repo: Option<String>,
    /// File holding the forge API token (a bot account's; its comments are the ones updated).
    #[arg(long, requires = "forge")]
    forge_token_file: Option<PathBuf>,
}

fn forge_client(args: &Args) -> anyhow::Result<Option<ForgeClient>> {
    let (Some(kind), Some(api), Some(repo), Some(token_file)) = (
        &args.forge,
        &args.forge_api,
        &args.forge_repo,
        &args.forge_token_file,
    ) else {
        return Ok(None);
    };
    let kind = ForgeKind::parse(kind)
        .with_context(|| format!("--forge {kind:?}: expected github, gitea or forgejo"))?;
    let token = std::fs::read_to_string(token_file)
        .with_context(|| format!("cannot read the forge token {}", token_file.display()))?;
    ForgeClient::new(kind, api, repo, token.trim())
        .map(Some)
        .map_err(|e| anyhow::anyhow!("--forge-repo: {e}"))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let webhook_secret = match &args.webhook_secret_file {
        Some(f) => {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read the webhook secret {}", f.display()))?;
            Some(WebhookSecret::new(text.trim_end().as_bytes().to_vec()))
        }
        None => None,
    };
    let key_file = args
        .age_key_file
        .clone()
        .or_else(|| std::env::var_os("SOPS_AGE_KEY_FILE").map(PathBuf::from));
    let forge = forge_client(&args)?;
    let watch = std::path::Path::new(&args.repo).is_dir();
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    rt.block_on(async move {
        let listener = match &args.listen {
            Some(addr) => {
                let l = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr}"))?;
                eprintln!("keystone: listening on {}", l.local_addr()?);
                Some(l)
            }
            None => None,
        };
        std::fs::create_dir_all(&args.state)
            .with_context(|| format!("cannot create {}", args.state.display()))?;
        let deployer = Arc::new(EngineDeployer::new(
            args.state.clone(),
            key_file,
            args.ssh_key.clone(),
        ));
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut term) = signal(SignalKind::terminate()) else {
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            eprintln!("keystone: stopping: running deploys are cancelled and awaited");
            trigger.cancel();
        });
        let opts = DaemonOptions {
            repo: args.repo.clone(),
            state_dir: args.state.clone(),
            listener,
            webhook_secret,
            ssh_key: args.ssh_key.clone(),
            forge,
            branch: None,
            poll_interval: args.poll_interval.map(Duration::from_secs),
            watch,
        };
        runtime::run(opts, deployer, cancel).await?;
        Ok(ExitCode::SUCCESS)
    })
}

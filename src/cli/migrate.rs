//! `keystone migrate APP/ENV [--daemon URL]`: ask the running daemon to run the environment's
//! migrations now (also for `mode: manual`). `keystone retry APP/ENV`: ask it to deploy the
//! environment's current commit again (a failed commit is never retried by itself). The daemon
//! queues either behind any deploy of that environment and records it as an operation on the
//! status branch.

use std::process::ExitCode;

use anyhow::Context;
use clap::Args as ClapArgs;

use keystone::daemon::http::{ApiReply, DEFAULT_LISTEN, EnvironmentRequest};

#[derive(ClapArgs)]
pub struct Args {
    /// The environment, `app/env`.
    pub environment: String,
    /// The daemon's HTTP address (its --listen).
    #[arg(long, default_value_t = format!("http://{DEFAULT_LISTEN}"))]
    pub daemon: String,
}

/// `keystone migrate`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    request(args, "migrate")
}

/// `keystone retry`.
pub fn retry(args: Args) -> anyhow::Result<ExitCode> {
    request(args, "retry")
}

/// POST `{"environment": …}` to the daemon's `/api/<call>` and print what it answered.
fn request(args: Args, call: &str) -> anyhow::Result<ExitCode> {
    if args.environment.split_once('/').is_none() {
        eprintln!(
            "error: expected APP/ENV (e.g. shop/production), got {:?}",
            args.environment
        );
        return Ok(ExitCode::from(2));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let url = format!("{}/api/{call}", args.daemon.trim_end_matches('/'));
    let result = rt.block_on(async {
        let resp = reqwest::Client::new()
            .post(&url)
            .json(&EnvironmentRequest {
                environment: args.environment.clone(),
            })
            .send()
            .await?;
        let status = resp.status();
        let reply: ApiReply = resp.json().await?;
        Ok::<_, reqwest::Error>((status, reply))
    });
    match result {
        Ok((status, reply)) if status.is_success() => {
            println!(
                "{}; its log goes to the status branch",
                reply.queued.unwrap_or_else(|| "queued".into())
            );
            Ok(ExitCode::SUCCESS)
        }
        Ok((_, reply)) => {
            eprintln!(
                "the daemon refused: {}",
                reply.error.unwrap_or_else(|| "no reason given".into())
            );
            Ok(ExitCode::from(1))
        }
        Err(e) => {
            eprintln!(
                "error: cannot reach the daemon at {url}: {e}\nhint: is `keystone daemon` running? pass its address with --daemon"
            );
            Ok(ExitCode::from(2))
        }
    }
}

//! Command-line interface: one file per subcommand, each with its `Args` and a `run` that calls the
//! library and prints. Exit codes: 0 success; 1 the command ran and the answer is "no" (invalid
//! config, failed deploy, undecryptable secret); 2 usage, I/O or internal errors.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod apply;
mod daemon;
mod migrate;
mod plan;
mod render;
mod secrets;
mod status;
mod validate;

#[derive(Parser)]
#[command(
    name = "keystone",
    version,
    about = "Pull-based GitOps deployer for Docker servers"
)]
struct Cli {
    /// Log filter (tracing syntax), e.g. `info` or `keystone=debug`. Also read from KEYSTONE_LOG.
    #[arg(long, global = true, env = "KEYSTONE_LOG", default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Plan the config repository against the applied state and deploy it to the servers.
    Apply(apply::Args),
    /// Watch the config repository and deploy each new commit; write the status branch.
    Daemon(daemon::Args),
    /// Print the status branch: every environment's sync, health and last operation.
    Status(status::Args),
    /// Ask the running daemon to run an environment's migrations now.
    Migrate(migrate::Args),
    /// Ask the running daemon to deploy an environment's current commit again (after a failure).
    Retry(migrate::Args),
    /// Print the plan of a config commit, or with --base/--head what a pull request changes.
    Plan(plan::Args),
    /// Print (or write under --out) the exact files each server would receive for APP/ENV.
    Render(render::Args),
    /// SOPS/age secret files: decrypt, encrypt, set, edit (compatible with `sops`).
    Secrets(secrets::Args),
    /// Check a config repository (a directory or a commit) and report every problem.
    Validate(validate::Args),
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_tracing(&cli.log);
    let result: anyhow::Result<ExitCode> = match cli.command {
        Command::Apply(args) => apply::run(args),
        Command::Daemon(args) => daemon::run(args),
        Command::Status(args) => status::run(args),
        Command::Render(args) => render::run(args),
        Command::Migrate(args) => migrate::run(args),
        Command::Retry(args) => migrate::retry(args),
        Command::Plan(args) => plan::run(args),
        Command::Secrets(args) => secrets::run(args),
        Command::Validate(args) => validate::run(args),
    };
    match result {
        Ok(code) => code,
        // The reader went away (`keystone plan | head`): stop quietly, as `git log | head` does.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            ExitCode::from(2)
        }
    }
}

/// An error and its causes, `: `-joined, libgit2's errors by their message (without the
/// `; class=…; code=…` its `Display` adds), and without a cause its context already quotes.
fn describe(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = match cause.downcast_ref::<git2::Error>() {
            Some(g) => g.message().to_string(),
            None => cause.to_string(),
        };
        if parts.last().is_some_and(|p| p.contains(&text)) {
            continue;
        }
        parts.push(text);
    }
    parts.join(": ")
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a daemon's log file or journal gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

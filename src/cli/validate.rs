//! `keystone validate`: read a config repository (a directory or a commit) and report every
//! problem. Exit 0 valid, 1 invalid, 2 the repository could not be read.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args as ClapArgs, ValueEnum};

use keystone::config;

#[derive(ClapArgs)]
pub struct Args {
    /// The config repository: a directory, or (with --rev) a git repository.
    #[arg(long, default_value = ".")]
    repo: PathBuf,
    /// Validate this commit (branch, tag, sha…) of the git repository at --repo instead of the
    /// files in the directory; read from git objects, nothing is checked out.
    #[arg(long)]
    rev: Option<String>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let loaded = match &args.rev {
        None => config::load_dir(&args.repo)?,
        Some(rev) => {
            let repo = git2::Repository::open(&args.repo)
                .with_context(|| format!(
                "{} is not the top directory of a git repository (--rev, --base and --head read commits from it)",
                args.repo.display()
            ))?;
            config::load_rev(&repo, rev)?
        }
    };
    let mut out = std::io::stdout().lock();
    match args.format {
        Format::Json => {
            let json = serde_json::to_string_pretty(&config::to_json(&loaded.diagnostics))?;
            writeln!(out, "{json}")?;
        }
        Format::Text if loaded.is_valid() => {
            writeln!(out, "valid: {}", loaded.summary())?;
        }
        Format::Text => {
            write!(out, "{}", loaded.render_diagnostics())?;
            let n = loaded.diagnostics.len();
            writeln!(out, "\ninvalid: {n} error{}", if n == 1 { "" } else { "s" })?;
        }
    }
    Ok(if loaded.is_valid() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

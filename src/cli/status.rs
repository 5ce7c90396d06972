//! `keystone status [APP/ENV] [--repo DIR] [--branch B]`: what the status branch says, in the
//! terminal. Reads the branch from the repository (local branch, else `origin/<branch>`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::Args as ClapArgs;

#[derive(ClapArgs)]
pub struct Args {
    /// Show one environment's file (`app/env`) instead of the overview table.
    pub environment: Option<String>,
    /// A clone of the config repository (or the daemon's mirror).
    #[arg(long, default_value = ".")]
    pub repo: PathBuf,
    /// The status branch.
    #[arg(long, default_value = "keystone/status")]
    pub branch: String,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let repo = git2::Repository::discover(&args.repo).map_err(|e| {
        anyhow::anyhow!(
            "{} is not in a git repository ({}): give --repo a clone of the config repository, or the daemon's mirror <state>/config.git",
            args.repo.display(),
            keystone::daemon::mirror::git_message(&e)
        )
    })?;
    let path = match &args.environment {
        Some(env) => {
            let Some((app, name)) = env.split_once('/') else {
                bail!("expected APP/ENV (e.g. shop/production), got {env:?}");
            };
            format!("environments/{app}/{name}.yaml")
        }
        None => "README.md".to_string(),
    };
    let mut found = None;
    for branch in [args.branch.clone(), format!("origin/{}", args.branch)] {
        let reference = if branch.starts_with("origin/") {
            format!("refs/remotes/{branch}")
        } else {
            format!("refs/heads/{branch}")
        };
        let Ok(commit) = repo
            .find_reference(&reference)
            .and_then(|r| r.peel_to_commit())
        else {
            continue;
        };
        let tree = commit.tree()?;
        if let Ok(entry) = tree.get_path(std::path::Path::new(&path)) {
            let blob = entry.to_object(&repo)?.peel_to_blob()?;
            found = Some(String::from_utf8_lossy(blob.content()).into_owned());
        } else {
            eprintln!("{path} is not on branch {branch}");
            return Ok(ExitCode::from(1));
        }
        break;
    }
    let Some(text) = found else {
        eprintln!(
            "no status branch {0} in {1} (fetch it: git fetch origin {0}); the daemon writes it after its first reconcile",
            args.branch,
            args.repo.display()
        );
        return Ok(ExitCode::from(2));
    };
    std::io::Write::write_all(&mut std::io::stdout().lock(), strip_links(&text).as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

/// `[text](target)` → `text`: links help on a forge, not in a terminal.
fn strip_links(text: &str) -> String {
    let re = regex::Regex::new(r"\[([^\]]*)\]\([^)]*\)").expect("valid regex");
    re.replace_all(text, "$1").into_owned()
}

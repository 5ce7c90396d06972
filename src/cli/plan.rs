//! `keystone plan [--repo DIR] [--rev REV | --base REF --head REF] [--state DIR]
//! [--format text|markdown|json] [--pr N]`: the plan of a config commit (or of the working tree),
//! or with `--base/--head` what merging head changes (the pull-request view). Exit code 1 when
//! any environment is blocked.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args as ClapArgs, ValueEnum};

use keystone::config::{self, Loaded};
use keystone::plan::{self, Applied, Desired, PlanContext, Scope, ScopedFinding};

#[derive(Clone, Copy, ValueEnum)]
pub enum FormatArg {
    Text,
    Markdown,
    Json,
}

#[derive(ClapArgs)]
pub struct Args {
    /// The config repository (a directory; a git repository for --rev/--base/--head).
    #[arg(long, default_value = ".")]
    pub repo: PathBuf,
    /// Plan this commit instead of the working tree.
    #[arg(long, conflicts_with_all = ["base", "head"])]
    pub rev: Option<String>,
    /// Diff against this commit (with --head): the pull-request view.
    #[arg(long, requires = "head")]
    pub base: Option<String>,
    /// The pull request's commit (with --base): its plan against base's.
    #[arg(long, requires = "base")]
    pub head: Option<String>,
    /// The daemon's state directory: plan against what is deployed (default: nothing deployed).
    #[arg(long)]
    pub state: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "text")]
    pub format: FormatArg,
    /// Pull request number for the markdown marker.
    #[arg(long, default_value_t = 0)]
    pub pr: u64,
}

/// The loader's diagnostics as the planner's scoped findings.
pub fn scoped(loaded: &Loaded) -> Vec<ScopedFinding> {
    loaded
        .diagnostics
        .iter()
        .map(|d| ScopedFinding {
            scope: match &d.scope {
                config::Scope::Project => Scope::Project,
                config::Scope::Application { app } => Scope::Application { app: app.clone() },
                config::Scope::Environment { app, env } => Scope::Environment {
                    app: app.clone(),
                    env: env.clone(),
                },
            },
            finding: plan::Finding {
                code: d.code.to_string(),
                location: Some(format!("{}:{}:{}", d.file, d.line, d.column)),
                message: d.message.clone(),
                hint: d.hint.clone(),
            },
        })
        .collect()
}

fn context(commit: &str) -> PlanContext {
    let short: String = commit
        .chars()
        .take(12)
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    PlanContext {
        config_commit: commit.to_string(),
        operation_prefix: format!("plan-{short}"),
        ..PlanContext::default()
    }
}

fn load_rev(repo: &git2::Repository, rev: &str) -> anyhow::Result<(Loaded, String)> {
    let id = repo
        .revparse_single(rev)
        .and_then(|o| o.peel_to_commit())
        .with_context(|| format!("cannot resolve {rev:?} to a commit"))?
        .id()
        .to_string();
    let loaded = config::load_rev(repo, &id).with_context(|| format!("cannot read {rev}"))?;
    Ok((loaded, id))
}

fn open_repo(path: &Path) -> anyhow::Result<git2::Repository> {
    git2::Repository::discover(path).with_context(|| {
        format!(
            "{} is not in a git repository (--rev, --base and --head read commits from it)",
            path.display()
        )
    })
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let applied = match &args.state {
        Some(dir) => keystone::state::State::open(dir)
            .with_context(|| format!("cannot open the state in {}", dir.display()))?
            .applied()
            .context("cannot read the applied state")?,
        None => Applied::default(),
    };
    let result = match (&args.rev, &args.base, &args.head) {
        (_, Some(base), Some(head)) => {
            let repo = open_repo(&args.repo)?;
            let (b, b_id) = load_rev(&repo, base)?;
            let (h, h_id) = load_rev(&repo, head)?;
            let (bd, hd) = (scoped(&b), scoped(&h));
            plan::diff(
                Desired {
                    model: &b.model,
                    diagnostics: &bd,
                },
                &context(&b_id),
                Desired {
                    model: &h.model,
                    diagnostics: &hd,
                },
                &context(&h_id),
                &applied,
            )
        }
        (Some(rev), _, _) => {
            let repo = open_repo(&args.repo)?;
            let (l, id) = load_rev(&repo, rev)?;
            let d = scoped(&l);
            plan::plan(
                Desired {
                    model: &l.model,
                    diagnostics: &d,
                },
                &applied,
                &context(&id),
            )
        }
        (None, None, None) => {
            if !args.repo.is_dir() {
                bail!("{} is not a directory", args.repo.display());
            }
            let l = config::load_dir(&args.repo)
                .with_context(|| format!("cannot read {}", args.repo.display()))?;
            let d = scoped(&l);
            plan::plan(
                Desired {
                    model: &l.model,
                    diagnostics: &d,
                },
                &applied,
                &context("working tree"),
            )
        }
        _ => bail!("--base and --head go together"),
    };
    let out = match args.format {
        FormatArg::Text => plan::output::text(&result, std::io::stdout().is_terminal()),
        FormatArg::Json => plan::output::json(&result),
        FormatArg::Markdown => plan::split_comment(
            &plan::output::markdown(&result, args.pr),
            args.pr,
            plan::MARKDOWN_LIMIT,
        )
        .join("\n"),
    };
    std::io::stdout()
        .write_all(out.as_bytes())
        .context("cannot write the plan")?;
    Ok(if result.is_blocked() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

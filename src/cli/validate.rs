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
    let mut loaded = loaded;
    let found = planner_findings(&loaded);
    if args.rev.is_none() {
        // The loader keeps the text of files with a problem only; these were fine to it.
        for d in &found {
            if !loaded.sources.contains_key(&d.file)
                && let Ok(text) = std::fs::read_to_string(args.repo.join(&d.file))
            {
                loaded.sources.insert(d.file.clone(), text);
            }
        }
    }
    loaded.diagnostics.extend(found);
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

/// Blocker codes only the planner finds in a config the loader accepts.
const PLANNER_ONLY: [&str; 2] = ["variables", "host-ports-exhausted"];

/// What would block a first deploy of a config the loader accepts (a variable that collides with
/// an attached service's export, no free host port): the planner's findings of those kinds, as
/// diagnostics, so `validate` fails where `plan` would.
fn planner_findings(loaded: &config::Loaded) -> Vec<config::Diagnostic> {
    use keystone::plan;
    let findings = keystone::prepare::scoped_findings(&loaded.diagnostics);
    let ctx = plan::PlanContext {
        config_commit: "validate".into(),
        operation_prefix: "validate".into(),
        ..plan::PlanContext::default()
    };
    let planned = plan::plan(
        plan::Desired {
            model: &loaded.model,
            diagnostics: &findings,
        },
        &plan::Applied::default(),
        &ctx,
    );
    let environments = planned.environments.iter().flat_map(|e| {
        let scope = config::Scope::Environment {
            app: e.app.clone(),
            env: e.env.clone(),
        };
        e.blockers.iter().map(move |b| (scope.clone(), b))
    });
    let services = planned
        .services
        .iter()
        .flat_map(|s| s.blockers.iter().map(|b| (config::Scope::Project, b)));
    environments
        .chain(services)
        .filter_map(|(scope, b)| {
            let code = PLANNER_ONLY.iter().find(|c| **c == b.code)?;
            let location = b.location.as_deref()?;
            let mut parts = location.rsplitn(3, ':');
            let column = parts.next()?.parse().ok()?;
            let line = parts.next()?.parse().ok()?;
            let file = parts.next()?.to_string();
            Some(config::Diagnostic {
                file,
                line,
                column,
                code,
                message: b.message.clone(),
                hint: b.hint.clone(),
                scope,
            })
        })
        .collect()
}

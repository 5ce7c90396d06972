//! `keystone plan [--repo DIR] [--rev REV | --base REF --head REF] [--state DIR]
//! [--format text|markdown|json] [--pr N]`: the plan of a config commit (or of the working tree),
//! or with `--base/--head` what merging head changes (the pull-request view). Exit code 1 when
//! any environment is blocked.
//!
//! Secrets are decrypted with the available age identity (`--age-key-file`, else where sops
//! looks: `SOPS_AGE_KEY`, `SOPS_AGE_KEY_FILE`, `~/.config/sops/age/keys.txt`): a changed secret
//! shows as `(secret, changed)` (never its value), one that cannot be decrypted blocks the
//! environments using it. Without an identity the plan says the secrets were not checked.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args as ClapArgs, ValueEnum};

use keystone::config::{self, Loaded};
use keystone::plan::{self, Applied, Desired, PlanContext};
use keystone::prepare::{self, Prepared, SecretSource};
use keystone::secrets::{Identities, Redactor, SecretsError};

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
    /// age identity to decrypt the config's secrets with (default: SOPS_AGE_KEY_FILE,
    /// SOPS_AGE_KEY, ~/.config/sops/age/keys.txt). With --state it also reads the state's
    /// fingerprint key, so secrets compare with what is deployed.
    #[arg(long)]
    pub age_key_file: Option<PathBuf>,
    /// Ask each application source which commit its environments' refs point at
    /// (`git ls-remote`, with the deploy key), as the daemon does; default: "resolved at build".
    #[arg(long)]
    pub resolve_sources: bool,
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
    let repo = git2::Repository::discover(path).with_context(|| {
        format!(
            "{} is not in a git repository (--rev, --base and --head read commits from it)",
            path.display()
        )
    })?;
    // Commits are read from the top of their tree: a config in a subdirectory of a larger
    // repository would silently plan as empty.
    if let Some(top) = repo.workdir() {
        let same = |a: &Path, b: &Path| matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b);
        if !same(top, path) {
            bail!(
                "{} is inside the git repository {} but is not its top directory; a config \
                 repository is read from the top of a commit's tree: give --repo {}",
                path.display(),
                top.display(),
                top.display()
            );
        }
    }
    Ok(repo)
}

/// How this run checks secrets: the identities and the key fingerprints are made with, or why
/// they are not checked.
struct Secrets {
    identities: Option<Identities>,
    fingerprint_key: String,
    redactor: Redactor,
}

fn secrets(args: &Args, state: Option<&keystone::state::State>) -> anyhow::Result<Secrets> {
    let redactor = Redactor::new();
    let unchecked = |why: &str| -> anyhow::Result<Secrets> {
        eprintln!("keystone: secrets not checked: {why}");
        Ok(Secrets {
            identities: None,
            fingerprint_key: String::new(),
            redactor: redactor.clone(),
        })
    };
    let identities = match Identities::discover(args.age_key_file.as_deref()) {
        Ok(ids) => ids,
        Err(SecretsError::NoIdentity) => {
            return unchecked(
                "no age identity; pass --age-key-file (or set SOPS_AGE_KEY_FILE) to see which secrets changed or cannot be decrypted",
            );
        }
        Err(e) => return Err(e).context("cannot read the age identity"),
    };
    let fingerprint_key = match state {
        // Without a state nothing is deployed: base and head compare with each other, under a
        // key of this run.
        None => keystone::daemon::engine::random_key(),
        // What the daemon fingerprints recorded secrets with (created on first use, as the
        // daemon would), readable with the state's identity.
        Some(state) => match state.credential(
            "keystone",
            "fingerprint-key",
            keystone::daemon::engine::random_key,
        ) {
            Ok(key) => key,
            Err(keystone::state::StateError::NoIdentity { .. }) => {
                return unchecked(
                    "comparing them with the state needs the state's age identity as a file; pass --age-key-file",
                );
            }
            Err(e) => return Err(e).context("cannot read the state's fingerprint key"),
        },
    };
    Ok(Secrets {
        identities: Some(identities),
        fingerprint_key,
        redactor,
    })
}

fn prepared(
    loaded: Loaded,
    source: SecretSource<'_>,
    secrets: &Secrets,
) -> anyhow::Result<Prepared> {
    prepare::prepare(
        loaded,
        source,
        secrets.identities.clone(),
        &secrets.redactor,
        &secrets.fingerprint_key,
    )
    .map_err(anyhow::Error::msg)
    .context("cannot read the secret files")
}

fn context_for(commit: &str, p: &Prepared, args: &Args) -> PlanContext {
    let mut ctx = context(commit);
    ctx.secrets = p.secret_states.clone();
    if args.resolve_sources {
        ctx.source_commits = keystone::daemon::engine::source_commits(&p.loaded.model, &p.values);
    }
    ctx
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let state = match &args.state {
        Some(dir) => {
            // Read-only and without the lock: the daemon may be running on it.
            let mut state = keystone::state::State::open_read_only(dir)
                .with_context(|| format!("cannot open the state in {}", dir.display()))?;
            let key_file = args
                .age_key_file
                .clone()
                .or_else(|| std::env::var_os("SOPS_AGE_KEY_FILE").map(PathBuf::from))
                .filter(|p| !p.as_os_str().is_empty());
            if let Some(file) = key_file {
                state = state.with_identity(keystone::state::load_identity(&file)?);
            }
            Some(state)
        }
        None => None,
    };
    let applied = match &state {
        Some(s) => s.applied().context("cannot read the applied state")?,
        None => Applied::default(),
    };
    let secrets = secrets(&args, state.as_ref())?;
    let result = match (&args.rev, &args.base, &args.head) {
        (_, Some(base), Some(head)) => {
            let repo = open_repo(&args.repo)?;
            let (b, b_id) = load_rev(&repo, base)?;
            let (h, h_id) = load_rev(&repo, head)?;
            let b = prepared(b, SecretSource::Commit(&repo, &b_id), &secrets)?;
            let h = prepared(h, SecretSource::Commit(&repo, &h_id), &secrets)?;
            plan::diff(
                Desired {
                    model: &b.loaded.model,
                    diagnostics: &b.diagnostics,
                },
                &context_for(&b_id, &b, &args),
                Desired {
                    model: &h.loaded.model,
                    diagnostics: &h.diagnostics,
                },
                &context_for(&h_id, &h, &args),
                &applied,
            )
        }
        (Some(rev), _, _) => {
            let repo = open_repo(&args.repo)?;
            let (l, id) = load_rev(&repo, rev)?;
            let p = prepared(l, SecretSource::Commit(&repo, &id), &secrets)?;
            plan::plan(
                Desired {
                    model: &p.loaded.model,
                    diagnostics: &p.diagnostics,
                },
                &applied,
                &context_for(&id, &p, &args),
            )
        }
        (None, None, None) => {
            if !args.repo.is_dir() {
                bail!("{} is not a directory", args.repo.display());
            }
            let l = config::load_dir(&args.repo)
                .with_context(|| format!("cannot read {}", args.repo.display()))?;
            let p = prepared(l, SecretSource::Dir(&args.repo), &secrets)?;
            plan::plan(
                Desired {
                    model: &p.loaded.model,
                    diagnostics: &p.diagnostics,
                },
                &applied,
                &context_for("working tree", &p, &args),
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
    // Plans carry placeholders, never values; redacting is the last line of defence.
    let out = secrets.redactor.redact(&out);
    std::io::stdout()
        .write_all(out.as_bytes())
        .context("cannot write the plan")?;
    Ok(if result.is_blocked() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

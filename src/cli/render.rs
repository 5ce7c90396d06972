//! `keystone render [--repo DIR] APP/ENV [--out DIR] [--reveal]`: the exact files Keystone would
//! write for an environment's first deploy, per server and remote path.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use keystone::config;
use keystone::drivers::Sensitive;
use keystone::model::SecretRef;
use keystone::render::{self, EnvironmentRenderError};
use keystone::secrets::{self, Identities, Redactor, Resolver};

#[derive(clap::Args)]
pub struct Args {
    /// The config repository (a working tree).
    #[arg(long, default_value = ".")]
    repo: PathBuf,
    /// The environment, `APP/ENV`.
    target: String,
    /// Write the files under DIR/<server>/<remote path> instead of printing them.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Show secret values (decrypts with SOPS_AGE_KEY / SOPS_AGE_KEY_FILE or --age-key-file).
    #[arg(long)]
    reveal: bool,
    /// age identity file for --reveal.
    #[arg(long, value_name = "FILE")]
    age_key_file: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let Some((app, env)) = args.target.split_once('/') else {
        eprintln!("error: expected APP/ENV, got `{}`", args.target);
        return Ok(ExitCode::from(2));
    };
    let loaded = config::load_dir(&args.repo)?;
    if !loaded.is_valid() {
        eprint!("{}", loaded.render_diagnostics());
        return Ok(ExitCode::from(1));
    }
    let model = &loaded.model;
    let source_ref = model
        .applications
        .get(app)
        .and_then(|a| a.environments.get(env))
        .map(|e| e.git_ref.clone())
        .unwrap_or_default();
    let commit = format!("(commit of {source_ref}, resolved at build)");
    let files = if args.reveal {
        let resolver = match Identities::discover(args.age_key_file.as_deref())
            .and_then(|ids| Resolver::from_dir(&args.repo, model, ids, Redactor::new()))
        {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(ExitCode::from(1));
            }
        };
        render::environment_files(model, app, env, &commit, |r: &SecretRef| {
            resolver
                .resolve(r)
                .map(|v| Sensitive::new(v.expose().to_string()))
        })
    } else {
        render::environment_files(model, app, env, &commit, |r: &SecretRef| {
            Ok::<_, secrets::SecretsError>(Sensitive::new(format!(
                "(secret {}, use --reveal)",
                r.display_path()
            )))
        })
    };
    let files = match files {
        Ok(f) => f,
        Err(EnvironmentRenderError::Secret(e)) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(1));
        }
        Err(e @ (EnvironmentRenderError::Variables(_) | EnvironmentRenderError::Allocation(_))) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(1));
        }
        Err(e @ EnvironmentRenderError::UnknownEnvironment(_)) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(e.into()),
    };
    let mut stdout = std::io::stdout().lock();
    for replica in &files {
        for f in replica.files() {
            match &args.out {
                Some(out) => {
                    let path = out
                        .join(&replica.server)
                        .join(f.path.trim_start_matches('/'));
                    std::fs::create_dir_all(path.parent().expect("a file path has a parent"))
                        .with_context(|| format!("creating {}", path.display()))?;
                    // The server's mode (.env 0600): a revealed .env holds secret values.
                    write_with_mode(&path, &f.bytes, f.mode)
                        .with_context(|| format!("writing {}", path.display()))?;
                    writeln!(stdout, "{}  ({})", path.display(), f.summary)?;
                }
                None => {
                    writeln!(stdout, "==> {}:{}  ({})", replica.server, f.path, f.summary)?;
                    stdout.write_all(&f.bytes)?;
                }
            }
        }
    }
    let all: Vec<_> = files.iter().flat_map(|r| r.files()).collect();
    let placeholders = placeholder_note(all.iter().map(|f| &f.bytes[..]));
    if !placeholders.is_empty() {
        eprint!("{placeholders}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Write `bytes` to `path` with exactly `mode` (also when the file was there before).
fn write_with_mode(path: &std::path::Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    f.write_all(bytes)
}

/// What the `{{digest:…}}` and `{{generated:…}}` placeholders in rendered files stand for, one
/// line each (on stderr, so the files on stdout stay as they are); empty when there are none.
fn placeholder_note<'b>(files: impl Iterator<Item = &'b [u8]>) -> String {
    let (mut digest, mut generated) = (false, false);
    for bytes in files {
        let text = String::from_utf8_lossy(bytes);
        digest |= text.contains("{{digest:");
        generated |= text.contains("{{generated:");
    }
    let mut note = String::new();
    if digest {
        note.push_str(
            "note: {{digest:APP}} is the image digest, filled in at deploy time from the build or \
             the registry\n",
        );
    }
    if generated {
        note.push_str(
            "note: {{generated:…}} is a password Keystone generates on the first deploy and keeps \
             encrypted in its state\n",
        );
    }
    if digest || generated {
        note.push_str(
            "note: the deployed copies, with these filled in, are on each server at the paths \
             shown\n",
        );
    }
    note
}

//! `keystone secrets decrypt|encrypt|set|edit`: SOPS files with age, compatible with `sops`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args as ClapArgs, Subcommand};

use keystone::secrets::{
    self, Document, EncryptOptions, Format, Identities, Scalar, SecretsError, SelectorChoice,
};

#[derive(ClapArgs)]
pub struct Args {
    /// An age identity file to try first (then SOPS_AGE_KEY, SOPS_AGE_KEY_FILE,
    /// SOPS_AGE_KEY_CMD and ~/.config/sops/age/keys.txt, as sops does).
    #[arg(long, global = true, value_name = "PATH")]
    age_key_file: Option<PathBuf>,
    /// The file's store: yaml, json or dotenv. Default: from the extension (.json, .env, else
    /// yaml).
    #[arg(long, global = true, value_name = "TYPE")]
    input_type: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the decrypted file (in its own format) on stdout.
    Decrypt {
        file: PathBuf,
        /// Print only the value at this dotted key path.
        #[arg(long, value_name = "KEY.PATH")]
        extract: Option<String>,
    },
    /// Encrypt a plaintext file and print it on stdout (like `sops encrypt`).
    Encrypt {
        file: PathBuf,
        /// age recipients, comma-separated. Default: `secrets.age_recipients` of the
        /// keystone.yaml in the file's directory or above.
        #[arg(long, value_delimiter = ',', value_name = "RECIPIENT")]
        age: Vec<String>,
        /// Keys ending with this suffix stay plaintext (default `_unencrypted`).
        #[arg(long, group = "selector")]
        unencrypted_suffix: Option<String>,
        /// Encrypt only values under keys ending with this suffix.
        #[arg(long, group = "selector")]
        encrypted_suffix: Option<String>,
        /// Values under keys matching this regex stay plaintext.
        #[arg(long, group = "selector")]
        unencrypted_regex: Option<String>,
        /// Encrypt only values under keys matching this regex.
        #[arg(long, group = "selector")]
        encrypted_regex: Option<String>,
        /// Compute the MAC over encrypted values only.
        #[arg(long)]
        mac_only_encrypted: bool,
        /// Write the result over FILE instead of stdout.
        #[arg(long, short = 'i')]
        in_place: bool,
    },
    /// Set one value (a string) in an encrypted file, in place.
    Set {
        file: PathBuf,
        /// Dotted key path, e.g. `db.password`; missing maps are created.
        key_path: String,
        value: String,
    },
    /// Open the decrypted file in $EDITOR and encrypt it again; unchanged values keep their
    /// exact ciphertext.
    Edit { file: PathBuf },
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match execute(&args) {
        Ok(code) => Ok(code),
        Err(Failure::Secret(e)) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(if e.is_bad_secret() { 1 } else { 2 }))
        }
        Err(Failure::Other(e)) => Err(e),
    }
}

enum Failure {
    Secret(SecretsError),
    Other(anyhow::Error),
}

impl From<SecretsError> for Failure {
    fn from(e: SecretsError) -> Self {
        Failure::Secret(e)
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

fn format_of(args: &Args, file: &Path) -> anyhow::Result<Format> {
    match &args.input_type {
        None => Ok(Format::from_path(file)),
        Some(t) => Format::parse(t)
            .with_context(|| format!("--input-type `{t}`: expected yaml, json or dotenv")),
    }
}

fn read(file: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))
}

fn open(args: &Args, file: &Path) -> Result<Document, Failure> {
    let format = format_of(args, file)?;
    let bytes = read(file)?;
    let ids = Identities::discover(args.age_key_file.as_deref())?;
    Ok(secrets::decrypt_file(
        &file.display().to_string(),
        &bytes,
        format,
        &ids,
    )?)
}

fn execute(args: &Args) -> Result<ExitCode, Failure> {
    match &args.command {
        Command::Decrypt { file, extract } => {
            let doc = open(args, file)?;
            let out = match extract {
                None => doc.to_plaintext()?,
                Some(path) => {
                    let path = split_path(path)?;
                    doc.lookup(&path)?.as_text().into_bytes()
                }
            };
            std::io::stdout()
                .write_all(&out)
                .context("cannot write to stdout")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Encrypt {
            file,
            age,
            unencrypted_suffix,
            encrypted_suffix,
            unencrypted_regex,
            encrypted_regex,
            mac_only_encrypted,
            in_place,
        } => {
            let format = format_of(args, file)?;
            let bytes = read(file)?;
            let recipients = if age.is_empty() {
                project_recipients(file)?
            } else {
                age.clone()
            };
            let selector = if let Some(s) = unencrypted_suffix {
                SelectorChoice::UnencryptedSuffix(s.clone())
            } else if let Some(s) = encrypted_suffix {
                SelectorChoice::EncryptedSuffix(s.clone())
            } else if let Some(s) = unencrypted_regex {
                SelectorChoice::UnencryptedRegex(s.clone())
            } else if let Some(s) = encrypted_regex {
                SelectorChoice::EncryptedRegex(s.clone())
            } else {
                SelectorChoice::default()
            };
            let options = EncryptOptions {
                recipients,
                selector,
                mac_only_encrypted: *mac_only_encrypted,
            };
            let out = secrets::encrypt(&file.display().to_string(), &bytes, format, &options)?;
            if *in_place {
                write_atomic(file, &out)?;
            } else {
                std::io::stdout()
                    .write_all(&out)
                    .context("cannot write to stdout")?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Set {
            file,
            key_path,
            value,
        } => {
            let path = settable_path(key_path)?;
            let mut doc = open(args, file)?;
            doc.set(&path, Scalar::Str(value.clone()))?;
            let out = doc.encrypt()?;
            write_atomic(file, &out)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Edit { file } => edit(args, file),
    }
}

/// `db.password` → `["db", "password"]`; an empty segment (`a..b`, `.a`, ``) is a usage error.
fn split_path(path: &str) -> anyhow::Result<Vec<String>> {
    let parts: Vec<String> = path.split('.').map(str::to_string).collect();
    if parts.iter().any(String::is_empty) {
        anyhow::bail!(
            "`{path}` is not a key path: keys are separated by single dots and none may be empty \
             (e.g. `db.password`)"
        );
    }
    Ok(parts)
}

/// A key path `secrets set` may write: not under `sops`, where SOPS keeps the file's metadata.
fn settable_path(path: &str) -> anyhow::Result<Vec<String>> {
    let parts = split_path(path)?;
    if parts[0] == "sops" {
        anyhow::bail!(
            "`{path}`: the top-level key `sops` holds the file's SOPS metadata and cannot hold a \
             secret; choose another key"
        );
    }
    Ok(parts)
}

fn edit(args: &Args, file: &Path) -> Result<ExitCode, Failure> {
    let mut doc = open(args, file)?;
    let plain = doc.to_plaintext()?;
    // The plaintext lives only in a private directory (0700, the file 0600) that is removed
    // afterwards, whatever the umask.
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = tempfile::Builder::new()
        .prefix("keystone-secrets-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
        .context("cannot create a private temporary directory")?;
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "secrets.yaml".into());
    let tmp = dir.path().join(name);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&plain))
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    let editor = std::env::var("EDITOR")
        .ok()
        .filter(|e| !e.trim().is_empty())
        .unwrap_or_else(|| "vi".into());
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("keystone-edit")
        .arg(&tmp)
        .status()
        .with_context(|| format!("cannot run the editor `{editor}`"))?;
    if !status.success() {
        return Err(anyhow::anyhow!(
            "the editor `{editor}` failed ({status}); {} is unchanged",
            file.display()
        )
        .into());
    }
    let edited = std::fs::read(&tmp).with_context(|| format!("cannot read {}", tmp.display()))?;
    if edited == plain {
        eprintln!("{}: no changes", file.display());
        return Ok(ExitCode::SUCCESS);
    }
    if let Err(e) = doc.replace_plaintext(&edited) {
        // The position is in the edited plaintext, not in the encrypted file.
        eprintln!(
            "error: your edit of {} is not valid: {e}\n{} is unchanged; run `keystone secrets \
             edit` again to fix it",
            file.display(),
            file.display()
        );
        return Ok(ExitCode::from(1));
    }
    let out = doc.encrypt()?;
    write_atomic(file, &out)?;
    Ok(ExitCode::SUCCESS)
}

fn write_atomic(file: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    // Through a symlink to the file it names: replacing the link itself would leave the real
    // file unchanged.
    let resolved = std::fs::canonicalize(file).ok();
    let file = resolved.as_deref().unwrap_or(file);
    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    tmp.write_all(bytes)
        .with_context(|| format!("cannot write {}", tmp.path().display()))?;
    if let Ok(meta) = std::fs::metadata(file) {
        let _ = std::fs::set_permissions(tmp.path(), meta.permissions());
    }
    tmp.persist(file)
        .with_context(|| format!("cannot replace {}", file.display()))?;
    Ok(())
}

/// `secrets.age_recipients` from the nearest keystone.yaml at or above the file's directory.
fn project_recipients(file: &Path) -> anyhow::Result<Vec<String>> {
    #[derive(serde::Deserialize, Default)]
    struct Project {
        #[serde(default)]
        secrets: Option<SecretsSettings>,
    }
    #[derive(serde::Deserialize, Default)]
    struct SecretsSettings {
        #[serde(default)]
        age_recipients: Vec<String>,
    }
    let start = std::fs::canonicalize(file)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    for dir in start.ancestors() {
        let candidate = dir.join("keystone.yaml");
        if !candidate.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&candidate)
            .with_context(|| format!("cannot read {}", candidate.display()))?;
        let project: Project = serde_saphyr::from_str(&text).with_context(|| {
            format!(
                "{}: cannot read secrets.age_recipients",
                candidate.display()
            )
        })?;
        let recipients = project.secrets.unwrap_or_default().age_recipients;
        if recipients.is_empty() {
            anyhow::bail!(
                "no recipients: pass --age RECIPIENT[,RECIPIENT…] or set secrets.age_recipients in {}",
                candidate.display()
            );
        }
        return Ok(recipients);
    }
    anyhow::bail!(
        "no recipients: pass --age RECIPIENT[,RECIPIENT…] (or run inside a config repository whose keystone.yaml sets secrets.age_recipients)"
    )
}

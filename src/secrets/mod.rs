//! SOPS-compatible secrets with age (SPEC.md §2; the format: docs/sops-format.md, checked against
//! the real `sops` 3.11 in tests/secrets_interop.rs).
//!
//! - [`decrypt_file`] / [`encrypt`] read and write the YAML, JSON and dotenv stores exactly as
//!   sops does: the data key wrapped per age recipient, AES-256-GCM values with the key path as
//!   additional data, the selectors, `mac_only_encrypted`, the SHA-512 MAC.
//! - [`Identities::discover`] finds age identities where sops looks for them.
//! - [`Resolver`] turns the config's `{secret: file.key.path}` references into [`SecretValue`]s
//!   and registers every decrypted value in a [`Redactor`], which every output sink applies.
//!
//! Architecture invariant: plaintext leaves this module only inside [`SecretValue`] (whose
//! Debug and Display never show it) or as the decrypted document the CLI prints on request.
//! No error message contains a value.

mod cipher;
mod document;
mod dotenv;
mod identity;
mod json;
mod metadata;
mod redact;
mod resolve;
mod tree;
mod yaml;

pub use document::{
    Document, EncryptOptions, Format, SelectorChoice, decrypt_file, encrypt, key_paths,
};
pub use identity::{Identities, default_keys_file};
pub use metadata::{DEFAULT_UNENCRYPTED_SUFFIX, SOPS_VERSION};
pub use redact::{MIN_REDACTED_LEN, REDACTED, Redactor, SecretValue};
pub use resolve::{ResolvedValue, Resolver};
pub use tree::{Entry, Node, Scalar};

/// Everything that can go wrong with a secret. Messages name the file and key path, never a
/// value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretsError {
    #[error("{file}: {message}")]
    Io { file: String, message: String },
    #[error("{file}:{line}:{column}: {message}")]
    Syntax {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error(
        "{file}: not a sops file: it has no `sops` metadata; encrypt it with `keystone secrets encrypt`"
    )]
    NotEncrypted { file: String },
    #[error("{file}: invalid sops metadata: {message}")]
    BadMetadata { file: String, message: String },
    #[error(
        "{file}: uses {feature}, which Keystone does not support yet; re-encrypt it with plain age recipients (`keystone secrets encrypt --age …`)"
    )]
    Unsupported { file: String, feature: String },
    #[error("no age identity found: set SOPS_AGE_KEY_FILE or SOPS_AGE_KEY, put one in {}, or pass --age-key-file", default_keys_file().map(|p| p.display().to_string()).unwrap_or_else(|| "~/.config/sops/age/keys.txt".into()))]
    NoIdentity,
    #[error("{source_name}: {message}")]
    Identity {
        source_name: String,
        message: String,
    },
    #[error("{recipient}: not a valid age recipient: {message}")]
    BadRecipient { recipient: String, message: String },
    #[error("{file}: none of the available age identities ({}) can decrypt this file; it is encrypted to {}", list(.identities), list(.recipients))]
    WrongKey {
        file: String,
        recipients: Vec<String>,
        identities: Vec<String>,
    },
    #[error("{file}: MAC mismatch: the file was changed without sops, or is corrupt")]
    MacMismatch { file: String },
    #[error(
        "{file}: `{path}`: the encrypted value does not authenticate: it was changed, or moved from another key"
    )]
    Tampered { file: String, path: String },
    #[error("{file}: `{path}`: {message}")]
    BadValue {
        file: String,
        path: String,
        message: String,
    },
    #[error("{file}: key `{path}` not found{}", hint(.available))]
    MissingKey {
        file: String,
        path: String,
        available: Vec<String>,
    },
    #[error("{file}: `{path}` is a {kind}, not a single value")]
    NotAValue {
        file: String,
        path: String,
        kind: String,
    },
    #[error("secret file `{stem}` not found: expected secrets/{stem}.sops.yaml")]
    MissingFile { stem: String },
    #[error("{at}: secret `{reference}`: {source}")]
    Reference {
        at: String,
        reference: String,
        source: Box<SecretsError>,
    },
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

fn hint(available: &[String]) -> String {
    if available.is_empty() {
        return String::new();
    }
    let mut shown: Vec<&str> = available.iter().map(String::as_str).take(10).collect();
    if available.len() > 10 {
        shown.push("…");
    }
    format!("; the file has: {}", shown.join(", "))
}

impl SecretsError {
    /// True when the secret itself is bad (wrong key, tampering, MAC mismatch, missing or
    /// unsupported content): "the answer is no" (exit 1), as opposed to usage or I/O (exit 2).
    pub fn is_bad_secret(&self) -> bool {
        match self {
            SecretsError::Io { .. } | SecretsError::BadRecipient { .. } => false,
            SecretsError::Reference { source, .. } => source.is_bad_secret(),
            _ => true,
        }
    }

    /// The innermost error (through [`SecretsError::Reference`]).
    pub fn root(&self) -> &SecretsError {
        match self {
            SecretsError::Reference { source, .. } => source.root(),
            other => other,
        }
    }
}

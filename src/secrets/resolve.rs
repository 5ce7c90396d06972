//! Resolving the config's secret references (`{secret: file.key.path}`) to values.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::SecretsError;
use super::document::{Document, Format, decrypt_file};
use super::identity::Identities;
use super::redact::{Redactor, SecretValue};
use crate::model::{Model, SecretRef, Value};

/// Resolves references against the secret files of one config commit. Each file is decrypted
/// once (on first use); every value it holds is registered in the redactor before any of
/// them is handed out.
pub struct Resolver {
    identities: Identities,
    redactor: Redactor,
    /// stem → (path relative to the repository, bytes).
    files: HashMap<String, (String, Vec<u8>)>,
    cache: Mutex<HashMap<String, Result<Arc<Document>, SecretsError>>>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut stems: Vec<&String> = self.files.keys().collect();
        stems.sort();
        f.debug_struct("Resolver")
            .field("files", &stems)
            .finish_non_exhaustive()
    }
}

impl Resolver {
    pub fn new(identities: Identities, redactor: Redactor) -> Resolver {
        Resolver {
            identities,
            redactor,
            files: HashMap::new(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Add the bytes of a secret file (`stem` as in `secrets/<stem>.sops.yaml`; `path` relative
    /// to the repository root, used in messages).
    pub fn add_file(&mut self, stem: &str, path: &str, bytes: Vec<u8>) {
        self.files
            .insert(stem.to_string(), (path.to_string(), bytes));
        self.cache
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .remove(stem);
    }

    /// A resolver over every file in `model.secret_files`, read from the working tree at
    /// `repo_root`.
    pub fn from_dir(
        repo_root: &Path,
        model: &Model,
        identities: Identities,
        redactor: Redactor,
    ) -> Result<Resolver, SecretsError> {
        let mut r = Resolver::new(identities, redactor);
        for (stem, file) in &model.secret_files {
            let bytes =
                std::fs::read(repo_root.join(&file.path)).map_err(|e| SecretsError::Io {
                    file: file.path.clone(),
                    message: format!("cannot read: {e}"),
                })?;
            r.add_file(stem, &file.path, bytes);
        }
        Ok(r)
    }

    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// The decrypted file `stem` (decrypted once, its values registered for redaction).
    pub fn document(&self, stem: &str) -> Result<Arc<Document>, SecretsError> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(hit) = cache.get(stem) {
            return hit.clone();
        }
        let result = match self.files.get(stem) {
            None => Err(SecretsError::MissingFile {
                stem: stem.to_string(),
            }),
            Some((path, bytes)) => decrypt_file(
                path,
                bytes,
                Format::from_path(Path::new(path)),
                &self.identities,
            )
            .map(|doc| {
                for v in doc.encrypted_values() {
                    self.redactor.add(v);
                }
                Arc::new(doc)
            }),
        };
        cache.insert(stem.to_string(), result.clone());
        result
    }

    /// The value a reference points at. Errors name the referencing file:line:col, the
    /// reference and the secret file; never the value.
    pub fn resolve(&self, reference: &SecretRef) -> Result<SecretValue, SecretsError> {
        let o = &reference.origin;
        let at = if o.line == 0 {
            o.file.clone()
        } else {
            format!("{}:{}:{}", o.file, o.line, o.column)
        };
        let wrap = |e: SecretsError| SecretsError::Reference {
            at: at.clone(),
            reference: reference.display_path(),
            source: Box::new(e),
        };
        let doc = self.document(&reference.file).map_err(wrap)?;
        let scalar = doc.lookup(&reference.key_path).map_err(wrap)?;
        let text = scalar.as_text();
        self.redactor.add(&text);
        Ok(SecretValue::new(text))
    }

    /// A reference written as `file.key.path` (the `{{secret:…}}` placeholder form), for
    /// callers without a [`SecretRef`] at hand. Errors name the reference.
    pub fn resolve_str(&self, reference: &str) -> Result<SecretValue, SecretsError> {
        let mut parts = reference.split('.');
        let file = parts.next().unwrap_or_default().to_string();
        let key_path: Vec<String> = parts.map(str::to_string).collect();
        self.resolve(&SecretRef {
            file,
            key_path,
            origin: crate::model::Origin {
                file: format!("{{{{secret:{reference}}}}}"),
                line: 0,
                column: 0,
            },
        })
    }

    /// A config value: plain text as is, a reference resolved.
    pub fn resolve_value(&self, value: &Value) -> Result<ResolvedValue, SecretsError> {
        match value {
            Value::Plain(s) => Ok(ResolvedValue::Plain(s.clone())),
            Value::Secret(r) => self.resolve(r).map(ResolvedValue::Secret),
        }
    }
}

/// A config [`Value`] after resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolvedValue {
    Plain(String),
    Secret(SecretValue),
}

impl ResolvedValue {
    /// The text to render into a file for a host.
    pub fn expose(&self) -> &str {
        match self {
            ResolvedValue::Plain(s) => s,
            ResolvedValue::Secret(v) => v.expose(),
        }
    }

    pub fn is_secret(&self) -> bool {
        matches!(self, ResolvedValue::Secret(_))
    }
}

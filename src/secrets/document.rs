//! Decrypting and encrypting whole files: the tree walk, the selectors and the MAC.

use std::collections::HashMap;
use std::path::Path;

use regex::Regex;
use sha2::{Digest, Sha256, Sha512};

use super::SecretsError;
use super::cipher::{self, CipherError, DATA_KEY_LEN, Plain};
use super::identity::{self, Identities};
use super::metadata::{AgeStanza, Metadata, MetadataError, SOPS_VERSION, Selector};
use super::tree::{Entry, Node, Scalar};
use super::{dotenv, json, yaml};

/// The sops store a file uses, chosen by extension as sops does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
    Dotenv,
}

impl Format {
    /// `.json` → JSON, `.env` → dotenv, anything else YAML.
    pub fn from_path(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => Format::Json,
            Some("env") => Format::Dotenv,
            _ => Format::Yaml,
        }
    }

    /// `yaml`, `json` or `dotenv` (sops' `--input-type` names).
    pub fn parse(name: &str) -> Option<Format> {
        match name {
            "yaml" | "yml" => Some(Format::Yaml),
            "json" => Some(Format::Json),
            "dotenv" | "env" => Some(Format::Dotenv),
            _ => None,
        }
    }
}

/// Which values `encrypt` encrypts (one selector, as sops allows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SelectorChoice {
    /// Keys ending with the suffix (and everything under them) stay plaintext. The default,
    /// with `_unencrypted`.
    UnencryptedSuffix(String),
    /// Only values under a key ending with the suffix are encrypted.
    EncryptedSuffix(String),
    /// Values under a key matching the regex stay plaintext.
    UnencryptedRegex(String),
    /// Only values under a key matching the regex are encrypted.
    EncryptedRegex(String),
}

impl Default for SelectorChoice {
    fn default() -> Self {
        SelectorChoice::UnencryptedSuffix(super::DEFAULT_UNENCRYPTED_SUFFIX.into())
    }
}

/// How to encrypt a plaintext file.
#[derive(Debug, Clone, Default)]
pub struct EncryptOptions {
    /// age recipients (`age1…`); at least one.
    pub recipients: Vec<String>,
    pub selector: SelectorChoice,
    /// Only encrypted values enter the MAC, so plaintext values may change without sops.
    pub mac_only_encrypted: bool,
}

/// A decrypted file: its plaintext tree plus what re-encrypting it needs (data key, recipients,
/// the IVs of the current values so unchanged values keep their exact ciphertext).
/// Debug shows only the file name and its key paths.
#[derive(Clone)]
pub struct Document {
    name: String,
    format: Format,
    docs: Vec<Node>,
    meta: Metadata,
    data_key: [u8; DATA_KEY_LEN],
    /// The IV of every value decrypted, in file order (indexed only when re-encrypting: most
    /// documents are only read).
    stash: Vec<StashEntry>,
    /// Plaintexts of the values that were encrypted in the file (what the redactor must hide).
    encrypted_values: Vec<String>,
}

impl std::fmt::Debug for Document {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Document")
            .field("name", &self.name)
            .field("format", &self.format)
            .field("key_paths", &self.key_paths())
            .finish_non_exhaustive()
    }
}

/// (additional data, type, plaintext) → IV.
type Stash = HashMap<(String, &'static str, Vec<u8>), Vec<u8>>;
type StashEntry = ((String, &'static str, Vec<u8>), Vec<u8>);

fn aad(path: &[String]) -> String {
    let mut s = path.join(":");
    s.push(':');
    s
}

fn dotted(path: &[String]) -> String {
    if path.is_empty() {
        "(top level)".into()
    } else {
        path.join(".")
    }
}

/// Parse a file of `format` into documents (YAML may hold several; the others one).
fn parse_tree(name: &str, bytes: &[u8], format: Format) -> Result<Vec<Node>, SecretsError> {
    let text = std::str::from_utf8(bytes).map_err(|e| SecretsError::Syntax {
        file: name.into(),
        line: 1,
        column: 1,
        message: format!("not UTF-8 text: {e}"),
    })?;
    let syntax = |line, column, message| SecretsError::Syntax {
        file: name.into(),
        line,
        column,
        message,
    };
    match format {
        Format::Yaml => yaml::parse(text).map_err(|e| syntax(e.line, e.column, e.message)),
        Format::Json => json::parse(text)
            .map(|n| vec![n])
            .map_err(|(l, c, m)| syntax(l, c, m)),
        Format::Dotenv => dotenv::parse(text)
            .map(|n| vec![n])
            .map_err(|(l, m)| syntax(l, 1, m)),
    }
}

/// Remove the `sops` entries from the documents; return the first one found.
fn take_metadata(docs: &mut [Node], format: Format) -> Option<Node> {
    if format == Format::Dotenv {
        return docs.first_mut().and_then(dotenv::take_metadata);
    }
    let mut found = None;
    for doc in docs.iter_mut() {
        if let Node::Map(entries) = doc
            && let Some(i) = entries
                .iter()
                .position(|e| matches!(e, Entry::Pair(k, _) if k == "sops"))
            && let Entry::Pair(_, meta) = entries.remove(i)
            && found.is_none()
        {
            found = Some(meta);
        }
    }
    found
}

fn metadata_of(name: &str, node: &Node) -> Result<Metadata, SecretsError> {
    Metadata::from_node(node).map_err(|e| match e {
        MetadataError::Invalid(message) => SecretsError::BadMetadata {
            file: name.into(),
            message,
        },
        MetadataError::Unsupported(feature) => SecretsError::Unsupported {
            file: name.into(),
            feature,
        },
    })
}

/// The key paths of a sops file, read without decrypting (keys are plaintext in sops files).
/// List indexes appear as numbers; the `sops` block is excluded.
pub fn key_paths(
    name: &str,
    bytes: &[u8],
    format: Format,
) -> Result<Vec<Vec<String>>, SecretsError> {
    let mut docs = parse_tree(name, bytes, format)?;
    take_metadata(&mut docs, format);
    Ok(docs.first().map(Node::leaf_paths).unwrap_or_default())
}

/// Decrypt a sops file: unwrap the data key with one of `identities`, decrypt every value,
/// recompute the MAC and compare it with the stored one. `name` labels errors.
pub fn decrypt_file(
    name: &str,
    bytes: &[u8],
    format: Format,
    identities: &Identities,
) -> Result<Document, SecretsError> {
    let mut docs = parse_tree(name, bytes, format)?;
    let meta_node = take_metadata(&mut docs, format)
        .ok_or_else(|| SecretsError::NotEncrypted { file: name.into() })?;
    let meta = metadata_of(name, &meta_node)?;
    if meta.age.is_empty() {
        return Err(SecretsError::Unsupported {
            file: name.into(),
            feature: "key sources other than age (no `sops.age` recipients)".into(),
        });
    }
    let data_key = identities.unwrap_data_key(name, &meta.age)?;
    let mut walk = Walk {
        file: name,
        cipher: cipher::Cipher::new(&data_key),
        selector: &meta.selector,
        mac_only: meta.mac_only_encrypted,
        hash: mac_hasher(meta.mac_only_encrypted),
        stash: Vec::new(),
        encrypted_values: Vec::new(),
    };
    let mut plain_docs = Vec::with_capacity(docs.len());
    for doc in &docs {
        let mut path = Vec::new();
        plain_docs.push(walk.decrypt(doc, &mut path)?);
    }
    let Walk {
        hash,
        stash,
        encrypted_values,
        ..
    } = walk;
    let computed = hex::encode_upper(hash.finalize());
    let stored = match cipher::decrypt(&meta.mac, &data_key, &meta.lastmodified) {
        Ok(Plain::Scalar(Scalar::Str(mac))) => mac,
        _ => return Err(SecretsError::MacMismatch { file: name.into() }),
    };
    if !bool::from(subtle::ConstantTimeEq::ct_eq(
        stored.as_bytes(),
        computed.as_bytes(),
    )) {
        return Err(SecretsError::MacMismatch { file: name.into() });
    }
    Ok(Document {
        name: name.into(),
        format,
        docs: plain_docs,
        meta,
        data_key,
        stash,
        encrypted_values,
    })
}

fn mac_hasher(mac_only: bool) -> Sha512 {
    let mut h = Sha512::new();
    if mac_only {
        // sops marks MACs over encrypted values only with this prefix, so the two kinds of
        // MAC never collide.
        h.update(Sha256::digest(b"sops"));
    }
    h
}

struct Walk<'a> {
    file: &'a str,
    cipher: cipher::Cipher,
    selector: &'a Selector,
    mac_only: bool,
    hash: Sha512,
    stash: Vec<StashEntry>,
    encrypted_values: Vec<String>,
}

impl Walk<'_> {
    fn cipher_error(&self, path: &[String], e: CipherError) -> SecretsError {
        match e {
            CipherError::Authentication => SecretsError::Tampered {
                file: self.file.into(),
                path: dotted(path),
            },
            CipherError::Malformed(m) | CipherError::BadType(m) => SecretsError::BadValue {
                file: self.file.into(),
                path: dotted(path),
                message: format!("not a valid encrypted value: {m}"),
            },
        }
    }

    fn remember(&mut self, ad: &str, kind: &'static str, plain: Vec<u8>, iv: Vec<u8>) {
        self.stash.push(((ad.to_string(), kind, plain), iv));
    }

    /// A comment `text` in the collection at `path`: decrypted when it is an encrypted value;
    /// otherwise kept (sops does the same for comments older versions left in plaintext).
    fn decrypt_comment(&mut self, text: &str, path: &[String]) -> String {
        if !self.selector.encrypts(path, Some(text)) || !cipher::looks_encrypted(text) {
            return text.to_string();
        }
        let ad = aad(path);
        match self.cipher.decrypt_with_iv(text, &ad) {
            Ok((Plain::Comment(c), iv)) => {
                self.remember(&ad, "comment", c.clone().into_bytes(), iv);
                c
            }
            _ => text.to_string(),
        }
    }

    fn decrypt(&mut self, node: &Node, path: &mut Vec<String>) -> Result<Node, SecretsError> {
        Ok(match node {
            Node::Map(entries) => {
                let mut out = Vec::with_capacity(entries.len());
                for e in entries {
                    out.push(match e {
                        Entry::Comment(c) => Entry::Comment(self.decrypt_comment(c, path)),
                        Entry::Pair(k, v) => {
                            path.push(k.clone());
                            let v = self.decrypt(v, path)?;
                            path.pop();
                            Entry::Pair(k.clone(), v)
                        }
                    });
                }
                Node::Map(out)
            }
            Node::List(items) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    out.push(self.decrypt(item, path)?);
                }
                Node::List(out)
            }
            Node::Comment(c) => Node::Comment(self.decrypt_comment(c, path)),
            Node::Scalar(s) => self.decrypt_leaf(s, path)?,
        })
    }

    fn decrypt_leaf(&mut self, s: &Scalar, path: &[String]) -> Result<Node, SecretsError> {
        let encrypted = self.selector.encrypts(path, None);
        if !encrypted {
            if !self.mac_only {
                self.hash.update(s.to_bytes());
            }
            return Ok(Node::Scalar(s.clone()));
        }
        let text = match s {
            Scalar::Null => return Ok(Node::Scalar(Scalar::Null)),
            Scalar::Str(t) if t.is_empty() => return Ok(Node::Scalar(s.clone())),
            Scalar::Str(t) => t,
            _ => {
                return Err(SecretsError::BadValue {
                    file: self.file.into(),
                    path: dotted(path),
                    message: "is plaintext where an encrypted value belongs: the file was changed without sops".into(),
                });
            }
        };
        if !cipher::looks_encrypted(text) {
            return Err(SecretsError::BadValue {
                file: self.file.into(),
                path: dotted(path),
                message: "is plaintext where an encrypted value belongs: the file was changed without sops".into(),
            });
        }
        let ad = aad(path);
        let (plain, iv) = self
            .cipher
            .decrypt_with_iv(text, &ad)
            .map_err(|e| self.cipher_error(path, e))?;
        match plain {
            Plain::Comment(c) => {
                self.remember(&ad, "comment", c.clone().into_bytes(), iv);
                Ok(Node::Comment(c))
            }
            Plain::Scalar(v) => {
                let bytes = v.to_bytes();
                self.hash.update(&bytes);
                self.remember(&ad, v.type_name(), bytes, iv);
                self.encrypted_values.push(v.as_text());
                Ok(Node::Scalar(v))
            }
        }
    }
}

struct EncryptWalk<'a> {
    cipher: cipher::Cipher,
    selector: &'a Selector,
    mac_only: bool,
    hash: Sha512,
    stash: &'a Stash,
}

impl EncryptWalk<'_> {
    fn seal(&self, plain: Vec<u8>, kind: &'static str, path: &[String]) -> String {
        let ad = aad(path);
        let iv = self.stash.get(&(ad.clone(), kind, plain.clone()));
        self.cipher
            .encrypt(&plain, kind, &ad, iv.map(Vec::as_slice))
    }

    fn encrypt(&mut self, node: &Node, path: &mut Vec<String>) -> Node {
        match node {
            Node::Map(entries) => Node::Map(
                entries
                    .iter()
                    .map(|e| match e {
                        Entry::Comment(c) if self.selector.encrypts(path, Some(c)) => {
                            Entry::Comment(self.seal(c.clone().into_bytes(), "comment", path))
                        }
                        Entry::Comment(c) => Entry::Comment(c.clone()),
                        Entry::Pair(k, v) => {
                            path.push(k.clone());
                            let v = self.encrypt(v, path);
                            path.pop();
                            Entry::Pair(k.clone(), v)
                        }
                    })
                    .collect(),
            ),
            Node::List(items) => Node::List(items.iter().map(|i| self.encrypt(i, path)).collect()),
            Node::Comment(c) if self.selector.encrypts(path, Some(c)) => Node::Scalar(Scalar::Str(
                self.seal(c.clone().into_bytes(), "comment", path),
            )),
            Node::Comment(c) => Node::Comment(c.clone()),
            Node::Scalar(s) => {
                let encrypted = self.selector.encrypts(path, None);
                if matches!(s, Scalar::Null) || matches!(s, Scalar::Str(t) if t.is_empty()) {
                    return Node::Scalar(s.clone());
                }
                let bytes = s.to_bytes();
                if !self.mac_only || encrypted {
                    self.hash.update(&bytes);
                }
                if encrypted {
                    Node::Scalar(Scalar::Str(self.seal(bytes, s.type_name(), path)))
                } else {
                    Node::Scalar(s.clone())
                }
            }
        }
    }
}

fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.format(&time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
    ))
    .expect("formatting a UTC timestamp cannot fail")
}

fn selector_of(choice: &SelectorChoice) -> Result<Selector, SecretsError> {
    let re = |r: &str| {
        Regex::new(r).map_err(|e| SecretsError::BadMetadata {
            file: "(encrypt options)".into(),
            message: format!("invalid regex `{r}`: {e}"),
        })
    };
    let mut s = Selector::default();
    match choice {
        SelectorChoice::UnencryptedSuffix(v) => s.unencrypted_suffix = Some(v.clone()),
        SelectorChoice::EncryptedSuffix(v) => s.encrypted_suffix = Some(v.clone()),
        SelectorChoice::UnencryptedRegex(v) => s.unencrypted_regex = Some(re(v)?),
        SelectorChoice::EncryptedRegex(v) => s.encrypted_regex = Some(re(v)?),
    }
    Ok(s)
}

/// Encrypt a plaintext file to `options.recipients`, producing what `sops encrypt` would.
pub fn encrypt(
    name: &str,
    plaintext: &[u8],
    format: Format,
    options: &EncryptOptions,
) -> Result<Vec<u8>, SecretsError> {
    let mut docs = parse_tree(name, plaintext, format)?;
    if take_metadata(&mut docs, format).is_some() {
        return Err(SecretsError::BadMetadata {
            file: name.into(),
            message: "the file is already encrypted (it has `sops` metadata); use `keystone secrets edit` or `set`".into(),
        });
    }
    if options.recipients.is_empty() {
        return Err(SecretsError::BadRecipient {
            recipient: "(none)".into(),
            message: "at least one age recipient is needed: pass --age or set secrets.age_recipients in keystone.yaml".into(),
        });
    }
    let recipients = identity::parse_recipients(&options.recipients)?;
    let data_key = identity::new_data_key();
    let mut age = Vec::new();
    for (text, r) in options.recipients.iter().zip(&recipients) {
        age.push(AgeStanza {
            recipient: text.trim().to_string(),
            enc: identity::wrap_data_key(&data_key, r)?,
        });
    }
    let meta = Metadata {
        age,
        lastmodified: String::new(),
        mac: String::new(),
        selector: selector_of(&options.selector)?,
        mac_only_encrypted: options.mac_only_encrypted,
        version: SOPS_VERSION.into(),
    };
    let doc = Document {
        name: name.into(),
        format,
        docs,
        meta,
        data_key,
        stash: Vec::new(),
        encrypted_values: Vec::new(),
    };
    doc.encrypt()
}

impl Document {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// The recipients the data key is wrapped to.
    pub fn recipients(&self) -> Vec<String> {
        self.meta.age.iter().map(|a| a.recipient.clone()).collect()
    }

    /// The node at `path` in the first document.
    pub fn get(&self, path: &[String]) -> Option<&Node> {
        self.docs.first()?.get(path)
    }

    /// The single value at `path`, or an error naming the file and path.
    pub fn lookup(&self, path: &[String]) -> Result<&Scalar, SecretsError> {
        match self.get(path) {
            Some(Node::Scalar(s)) => Ok(s),
            Some(other) => Err(SecretsError::NotAValue {
                file: self.name.clone(),
                path: dotted(path),
                kind: match other {
                    Node::Map(_) => "map",
                    Node::List(_) => "list",
                    _ => "comment",
                }
                .into(),
            }),
            None => Err(SecretsError::MissingKey {
                file: self.name.clone(),
                path: dotted(path),
                available: self.key_paths().iter().map(|p| p.join(".")).collect(),
            }),
        }
    }

    /// Key paths of every value in the first document.
    pub fn key_paths(&self) -> Vec<Vec<String>> {
        self.docs.first().map(Node::leaf_paths).unwrap_or_default()
    }

    /// The plaintext of every value that was encrypted in the file.
    pub fn encrypted_values(&self) -> &[String] {
        &self.encrypted_values
    }

    /// The plaintext file, exactly as `sops decrypt` prints it.
    pub fn to_plaintext(&self) -> Result<Vec<u8>, SecretsError> {
        self.emit(&self.docs, None)
    }

    /// The documents (plaintext).
    pub fn documents(&self) -> &[Node] {
        &self.docs
    }

    fn emit(&self, docs: &[Node], meta: Option<Node>) -> Result<Vec<u8>, SecretsError> {
        let with_meta = |doc: &Node| -> Node {
            let mut doc = doc.clone();
            if let (Some(meta), Node::Map(entries)) = (&meta, &mut doc) {
                entries.push(Entry::Pair("sops".into(), meta.clone()));
            }
            doc
        };
        let text = match self.format {
            Format::Yaml => {
                let docs: Vec<Node> = docs.iter().map(with_meta).collect();
                yaml::emit(&docs)
            }
            Format::Json => json::emit(&with_meta(docs.first().unwrap_or(&Node::Map(vec![])))),
            Format::Dotenv => {
                let mut doc = docs.first().cloned().unwrap_or(Node::Map(vec![]));
                if let (Some(meta), Node::Map(entries)) = (&meta, &mut doc) {
                    entries.extend(dotenv::flatten_metadata(meta));
                }
                dotenv::emit(&doc).map_err(|message| SecretsError::Syntax {
                    file: self.name.clone(),
                    line: 1,
                    column: 1,
                    message,
                })?
            }
        };
        Ok(text.into_bytes())
    }

    /// Set the value at `path` (creating maps on the way) to a string.
    pub fn set(&mut self, path: &[String], value: Scalar) -> Result<(), SecretsError> {
        if path.is_empty() {
            return Err(SecretsError::MissingKey {
                file: self.name.clone(),
                path: dotted(path),
                available: Vec::new(),
            });
        }
        if self.docs.is_empty() {
            self.docs.push(Node::Map(Vec::new()));
        }
        if self.format == Format::Dotenv && path.len() > 1 {
            return Err(SecretsError::NotAValue {
                file: self.name.clone(),
                path: dotted(path),
                kind: "nested path in a dotenv file".into(),
            });
        }
        let name = self.name.clone();
        let mut node = &mut self.docs[0];
        for (i, key) in path.iter().enumerate() {
            let Node::Map(entries) = node else {
                return Err(SecretsError::NotAValue {
                    file: name,
                    path: dotted(&path[..i]),
                    kind: "value or list (not a map)".into(),
                });
            };
            let pos = entries
                .iter()
                .position(|e| matches!(e, Entry::Pair(k, _) if k == key));
            let pos = match pos {
                Some(p) => p,
                None => {
                    entries.push(Entry::Pair(key.clone(), Node::Map(Vec::new())));
                    entries.len() - 1
                }
            };
            let Entry::Pair(_, child) = &mut entries[pos] else {
                unreachable!("position() matched a pair")
            };
            if i + 1 == path.len() {
                *child = Node::Scalar(value);
                return Ok(());
            }
            node = child;
        }
        Ok(())
    }

    /// Replace the whole plaintext (after `edit`), keeping key, recipients and the IVs of
    /// unchanged values.
    pub fn replace_plaintext(&mut self, bytes: &[u8]) -> Result<(), SecretsError> {
        let mut docs = parse_tree(&self.name, bytes, self.format)?;
        if take_metadata(&mut docs, self.format).is_some() {
            return Err(SecretsError::BadMetadata {
                file: self.name.clone(),
                message: "the edited text must not contain a `sops` section".into(),
            });
        }
        self.docs = docs;
        Ok(())
    }

    /// Encrypt the current plaintext again with the same data key and recipients; values that
    /// did not change keep their exact ciphertext.
    pub fn encrypt(&self) -> Result<Vec<u8>, SecretsError> {
        let mut walk = EncryptWalk {
            cipher: cipher::Cipher::new(&self.data_key),
            selector: &self.meta.selector,
            mac_only: self.meta.mac_only_encrypted,
            hash: mac_hasher(self.meta.mac_only_encrypted),
            // A later value with the same key wins, as inserting them one by one would.
            stash: &self.stash.iter().cloned().collect(),
        };
        let mut out = Vec::with_capacity(self.docs.len());
        for doc in &self.docs {
            let mut path = Vec::new();
            out.push(walk.encrypt(doc, &mut path));
        }
        let mac = hex::encode_upper(walk.hash.finalize());
        let mut meta = self.meta.clone();
        meta.lastmodified = now_rfc3339();
        meta.mac = cipher::encrypt(
            mac.as_bytes(),
            "str",
            &self.data_key,
            &meta.lastmodified,
            None,
        );
        meta.version = SOPS_VERSION.into();
        self.emit(&out, Some(meta.to_node()))
    }
}

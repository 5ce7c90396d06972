//! The `sops:` block: age recipients with the wrapped data key, `lastmodified`, the encrypted
//! MAC, the selector and the version.

use regex::Regex;

use super::tree::{Entry, Node, Scalar};

/// The sops version whose output Keystone matches; written into `version`.
pub const SOPS_VERSION: &str = "3.11.0";
/// sops' default selector when a file names none.
pub const DEFAULT_UNENCRYPTED_SUFFIX: &str = "_unencrypted";

/// One age recipient: its public key and the data key encrypted to it (an armored age file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgeStanza {
    pub recipient: String,
    pub enc: String,
}

/// Which values are encrypted. At most one of the key selectors and one of the comment
/// selectors is set; with none, `unencrypted_suffix: _unencrypted` applies.
#[derive(Debug, Clone, Default)]
pub struct Selector {
    pub unencrypted_suffix: Option<String>,
    pub encrypted_suffix: Option<String>,
    pub unencrypted_regex: Option<Regex>,
    pub encrypted_regex: Option<Regex>,
    pub unencrypted_comment_regex: Option<Regex>,
    pub encrypted_comment_regex: Option<Regex>,
}

impl Selector {
    /// The sops default: keys ending in `_unencrypted` stay plaintext.
    pub fn default_suffix() -> Selector {
        Selector {
            unencrypted_suffix: Some(DEFAULT_UNENCRYPTED_SUFFIX.into()),
            ..Selector::default()
        }
    }

    fn is_empty(&self) -> bool {
        self.unencrypted_suffix.is_none()
            && self.encrypted_suffix.is_none()
            && self.unencrypted_regex.is_none()
            && self.encrypted_regex.is_none()
            && self.unencrypted_comment_regex.is_none()
            && self.encrypted_comment_regex.is_none()
    }

    /// Whether a value at `path` (a comment: `comment` is its text) is encrypted; sops' rule.
    pub fn encrypts(&self, path: &[String], comment: Option<&str>) -> bool {
        let mut encrypted = true;
        if let Some(suffix) = &self.unencrypted_suffix
            && path.iter().any(|k| k.ends_with(suffix.as_str()))
        {
            encrypted = false;
        }
        if let Some(suffix) = &self.encrypted_suffix {
            encrypted = path.iter().any(|k| k.ends_with(suffix.as_str()));
        }
        if let Some(re) = &self.unencrypted_regex
            && path.iter().any(|k| re.is_match(k))
        {
            encrypted = false;
        }
        if let Some(re) = &self.encrypted_regex {
            encrypted = path.iter().any(|k| re.is_match(k));
        }
        if let Some(text) = comment {
            if let Some(re) = &self.unencrypted_comment_regex
                && re.is_match(text)
            {
                encrypted = false;
            }
            if let Some(re) = &self.encrypted_comment_regex {
                encrypted = re.is_match(text);
            }
        }
        encrypted
    }
}

/// The parsed `sops:` block.
#[derive(Debug, Clone)]
pub struct Metadata {
    pub age: Vec<AgeStanza>,
    pub lastmodified: String,
    pub mac: String,
    pub selector: Selector,
    pub mac_only_encrypted: bool,
    pub version: String,
}

/// Why a `sops:` block cannot be used; the caller adds the file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataError {
    Invalid(String),
    Unsupported(String),
}

fn text(node: &Node) -> Option<String> {
    match node {
        Node::Scalar(Scalar::Str(s)) | Node::Scalar(Scalar::Time(s)) => Some(s.clone()),
        Node::Scalar(Scalar::Int(i)) => Some(i.to_string()),
        Node::Scalar(Scalar::Bool(b)) => Some(b.to_string()),
        Node::Scalar(Scalar::Float(f)) => Some(super::tree::format_float_g(*f)),
        _ => None,
    }
}

fn is_empty_value(node: &Node) -> bool {
    match node {
        Node::Scalar(Scalar::Null) => true,
        Node::Scalar(Scalar::Str(s)) => s.is_empty(),
        Node::Scalar(Scalar::Int(0)) => true,
        Node::List(l) => l.iter().all(|n| matches!(n, Node::Comment(_))),
        Node::Map(m) => m.iter().all(|e| matches!(e, Entry::Comment(_))),
        _ => false,
    }
}

fn regex(field: &str, node: &Node) -> Result<Option<Regex>, MetadataError> {
    match text(node).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => Regex::new(&s).map(Some).map_err(|e| {
            MetadataError::Invalid(format!("`sops.{field}` is not a valid regex: {e}"))
        }),
    }
}

impl Metadata {
    /// Read the `sops` map. Extra, empty and reordered keys are accepted.
    pub fn from_node(node: &Node) -> Result<Metadata, MetadataError> {
        let Node::Map(entries) = node else {
            return Err(MetadataError::Invalid("`sops` is not a map".into()));
        };
        let mut age = Vec::new();
        let mut lastmodified = None;
        let mut mac = None;
        let mut version = None;
        let mut selector = Selector::default();
        let mut mac_only_encrypted = false;
        let (mut key_groups, mut shamir) = (false, false);
        for entry in entries {
            let Entry::Pair(key, value) = entry else {
                continue;
            };
            match key.as_str() {
                "age" => {
                    let Node::List(items) = value else {
                        if is_empty_value(value) {
                            continue;
                        }
                        return Err(MetadataError::Invalid("`sops.age` is not a list".into()));
                    };
                    for item in items {
                        if matches!(item, Node::Comment(_)) {
                            continue;
                        }
                        let get = |k: &str| item.get(&[k.to_string()]).and_then(text);
                        match (get("recipient"), get("enc")) {
                            (Some(recipient), Some(enc)) => age.push(AgeStanza { recipient, enc }),
                            _ => {
                                return Err(MetadataError::Invalid(
                                    "an entry of `sops.age` lacks `recipient` or `enc`".into(),
                                ));
                            }
                        }
                    }
                }
                "lastmodified" => lastmodified = text(value),
                "mac" => mac = text(value),
                "version" => version = text(value),
                "unencrypted_suffix" => {
                    selector.unencrypted_suffix = text(value).filter(|s| !s.is_empty())
                }
                "encrypted_suffix" => {
                    selector.encrypted_suffix = text(value).filter(|s| !s.is_empty())
                }
                "unencrypted_regex" => selector.unencrypted_regex = regex(key, value)?,
                "encrypted_regex" => selector.encrypted_regex = regex(key, value)?,
                "unencrypted_comment_regex" => {
                    selector.unencrypted_comment_regex = regex(key, value)?
                }
                "encrypted_comment_regex" => selector.encrypted_comment_regex = regex(key, value)?,
                "mac_only_encrypted" => {
                    mac_only_encrypted = matches!(value, Node::Scalar(Scalar::Bool(true)))
                        || text(value).as_deref() == Some("true")
                }
                "key_groups" if !is_empty_value(value) => key_groups = true,
                "shamir_threshold" if !is_empty_value(value) => shamir = true,
                // Other key sources (pgp, kms, gcp_kms, azure_kv, hc_vault, ...) are ignored.
                _ => {}
            }
        }
        if key_groups {
            return Err(MetadataError::Unsupported(
                "several key groups (`sops.key_groups`)".into(),
            ));
        }
        if shamir {
            return Err(MetadataError::Unsupported(
                "Shamir secret sharing (`sops.shamir_threshold`)".into(),
            ));
        }
        let missing = |f: &str| MetadataError::Invalid(format!("`sops.{f}` is missing"));
        if selector.is_empty() {
            selector = Selector::default_suffix();
        }
        Ok(Metadata {
            age,
            lastmodified: lastmodified.ok_or_else(|| missing("lastmodified"))?,
            mac: mac.ok_or_else(|| missing("mac"))?,
            selector,
            mac_only_encrypted,
            version: version.ok_or_else(|| missing("version"))?,
        })
    }

    /// The `sops` map in the field order sops writes.
    pub fn to_node(&self) -> Node {
        let s = |v: &str| Node::Scalar(Scalar::Str(v.to_string()));
        let pair = |k: &str, v: Node| Entry::Pair(k.to_string(), v);
        let mut entries = Vec::new();
        let age = self
            .age
            .iter()
            .map(|a| {
                Node::Map(vec![
                    pair("recipient", s(&a.recipient)),
                    pair("enc", s(&a.enc)),
                ])
            })
            .collect();
        entries.push(pair("age", Node::List(age)));
        entries.push(pair("lastmodified", s(&self.lastmodified)));
        entries.push(pair("mac", s(&self.mac)));
        let sel = &self.selector;
        if let Some(v) = &sel.unencrypted_suffix {
            entries.push(pair("unencrypted_suffix", s(v)));
        }
        if let Some(v) = &sel.encrypted_suffix {
            entries.push(pair("encrypted_suffix", s(v)));
        }
        for (name, re) in [
            ("unencrypted_regex", &sel.unencrypted_regex),
            ("encrypted_regex", &sel.encrypted_regex),
            ("unencrypted_comment_regex", &sel.unencrypted_comment_regex),
            ("encrypted_comment_regex", &sel.encrypted_comment_regex),
        ] {
            if let Some(re) = re {
                entries.push(pair(name, s(re.as_str())));
            }
        }
        if self.mac_only_encrypted {
            entries.push(pair("mac_only_encrypted", Node::Scalar(Scalar::Bool(true))));
        }
        entries.push(pair("version", s(&self.version)));
        Node::Map(entries)
    }
}

//! The redaction set: every decrypted value is registered, and every output sink (logs, step
//! output, errors, status files, PR comments, the database) passes its text through
//! [`Redactor::redact`].
//!
//! Rule for short values: a value shorter than [`MIN_REDACTED_LEN`] characters is not
//! registered for substring replacement — replacing "a" or "on" everywhere would destroy every
//! log without protecting anything (such a value is guessable anyway). Keystone itself never
//! prints it: values travel as [`SecretValue`], whose Debug and Display never show them.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use aho_corasick::{AhoCorasick, MatchKind};

/// Values with fewer characters than this are not replaced in output (see the module docs).
pub const MIN_REDACTED_LEN: usize = 4;
/// What a registered value is replaced with.
pub const REDACTED: &str = "[redacted]";
/// Lines of a multi-line value are registered on their own from this many characters on (a
/// PEM key's lines show up one at a time in logs).
const MIN_LINE_LEN: usize = 8;

/// A cloneable, thread-safe set of secret values to hide. Clones share the set.
#[derive(Clone, Default)]
pub struct Redactor {
    inner: Arc<RwLock<Inner>>,
}

#[derive(Default)]
struct Inner {
    values: BTreeSet<String>,
    matcher: Option<AhoCorasick>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.inner.read().map(|i| i.values.len()).unwrap_or(0);
        write!(f, "Redactor({n} values)")
    }
}

impl Redactor {
    pub fn new() -> Redactor {
        Redactor::default()
    }

    /// Register a value (and the forms it takes in output: its lines, JSON-escaped and
    /// percent-encoded). Values shorter than [`MIN_REDACTED_LEN`] are ignored.
    pub fn add(&self, value: &str) {
        let mut forms = Vec::new();
        if value.chars().count() >= MIN_REDACTED_LEN {
            forms.push(value.to_string());
            let mut escaped = String::new();
            super::json::write_string(&mut escaped, value);
            forms.push(escaped[1..escaped.len() - 1].to_string());
            forms.push(percent_encode(value));
        }
        if value.contains('\n') {
            for line in value.lines() {
                let line = line.trim();
                if line.chars().count() >= MIN_LINE_LEN {
                    forms.push(line.to_string());
                }
            }
        }
        if forms.is_empty() {
            return;
        }
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let before = inner.values.len();
        inner.values.extend(forms);
        if inner.values.len() != before {
            inner.matcher = None;
        }
    }

    /// Number of registered forms.
    pub fn len(&self) -> usize {
        self.inner.read().map(|i| i.values.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `text` with every registered value replaced by [`REDACTED`]; borrowed when nothing
    /// matched.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        {
            let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
            if inner.values.is_empty() {
                return Cow::Borrowed(text);
            }
            if let Some(m) = &inner.matcher {
                return replace(m, text);
            }
        }
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if inner.matcher.is_none() {
            let m = AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(inner.values.iter())
                .expect("a set of literal strings always builds");
            inner.matcher = Some(m);
        }
        replace(inner.matcher.as_ref().expect("just built"), text)
    }
}

fn replace<'a>(m: &AhoCorasick, text: &'a str) -> Cow<'a, str> {
    if !m.is_match(text) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    m.replace_all_with(text, &mut out, |_, _, dst| {
        dst.push_str(REDACTED);
        true
    });
    Cow::Owned(out)
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A decrypted secret value. Debug and Display print a placeholder; [`SecretValue::expose`]
/// gives the plaintext to the one place that needs it (rendering a file for a host).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue {
    value: String,
}

impl SecretValue {
    /// Wrap a plaintext. Register it with a [`Redactor`] if it may reach any output.
    pub fn new(value: impl Into<String>) -> SecretValue {
        SecretValue {
            value: value.into(),
        }
    }

    /// The plaintext.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// A keyed fingerprint (HMAC-SHA256, hex) to tell "changed" from "unchanged" without
    /// storing the value; `key` should be a secret of the Keystone state.
    pub fn fingerprint(&self, key: &[u8]) -> String {
        use hmac::{Hmac, Mac};
        let mut mac =
            <Hmac<sha2::Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(self.value.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretValue(<redacted>)")
    }
}

impl std::fmt::Display for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_registered_values_and_their_forms() {
        let r = Redactor::new();
        r.add("hunter22");
        r.add("p@ss word");
        r.add("abc");
        let clone = r.clone();
        clone.add("-----BEGIN KEY-----\nAAAABBBBCCCCDDDD\n-----END KEY-----\n");
        assert_eq!(
            r.redact("login hunter22 then p%40ss%20word and abc"),
            "login [redacted] then [redacted] and abc"
        );
        assert_eq!(r.redact("line: AAAABBBBCCCCDDDD"), "line: [redacted]");
        assert!(matches!(r.redact("nothing here"), Cow::Borrowed(_)));
        assert_eq!(r.redact("{\"k\":\"p@ss word\"}"), "{\"k\":\"[redacted]\"}");
    }

    #[test]
    fn secret_value_never_prints() {
        let v = SecretValue::new("hunter22");
        assert_eq!(format!("{v} {v:?}"), "<secret> SecretValue(<redacted>)");
        assert_eq!(v.expose(), "hunter22");
        assert_ne!(v.fingerprint(b"k1"), v.fingerprint(b"k2"));
    }
}

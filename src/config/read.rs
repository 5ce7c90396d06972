//! Typed reads from a `yaml::Node` that record a diagnostic instead of stopping at the first
//! problem. Every check of a single file goes through these helpers, so messages read alike.

use std::sync::LazyLock;

use regex::Regex;

use super::diagnostic::{Diagnostic, Scope};
use super::yaml::{Key, Kind, Node, Pos};
use crate::model::{Origin, SecretRef, Value};

/// `[a-z][a-z0-9-]{0,62}`: names of servers, registries, services, applications, environments,
/// app services and secret files (SPEC.md §1).
pub static NAME: LazyLock<Regex> = LazyLock::new(|| Regex::new("^[a-z][a-z0-9-]{0,62}$").unwrap());

pub const NAME_RULE: &str =
    "names are 1 to 63 characters: a lowercase letter, then lowercase letters, digits or `-`";

/// Collects the diagnostics of one file.
pub struct FileCx<'a> {
    pub file: &'a str,
    pub scope: Scope,
    pub diags: &'a mut Vec<Diagnostic>,
    /// Whether any error was recorded through this context.
    pub failed: bool,
    /// The file's text, to see how a scalar was written (`yes` vs `true`).
    pub source: &'a str,
}

/// A mapping whose keys were checked against the allowed set.
#[derive(Clone, Copy)]
pub struct Fields<'n> {
    pub pos: Pos,
    entries: &'n [(Key, Node)],
}

impl<'n> Fields<'n> {
    pub fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, _)| k.name == key)
            .map(|(_, v)| v)
    }
    /// Position of `key` itself (the start of `key:`).
    pub fn key_pos(&self, key: &str) -> Option<Pos> {
        self.entries
            .iter()
            .find(|(k, _)| k.name == key)
            .map(|(k, _)| k.pos)
    }
}

/// The closest candidate to `word`, if it is close enough to be a likely typo.
pub fn did_you_mean<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (strsim::osa_distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// "expected one of `a`, `b`" with a did-you-mean when one is close.
pub fn one_of_hint(word: &str, candidates: &[&str]) -> String {
    let list = candidates
        .iter()
        .map(|c| format!("`{c}`"))
        .collect::<Vec<_>>()
        .join(", ");
    match did_you_mean(word, candidates.iter().copied()) {
        Some(m) => format!("did you mean `{m}`? expected one of {list}"),
        None => format!("expected one of {list}"),
    }
}

impl<'a> FileCx<'a> {
    pub fn new(file: &'a str, scope: Scope, diags: &'a mut Vec<Diagnostic>) -> Self {
        FileCx {
            file,
            scope,
            diags,
            failed: false,
            source: "",
        }
    }

    /// The same, knowing the file's text.
    pub fn with_source(mut self, source: &'a str) -> Self {
        self.source = source;
        self
    }

    /// The boolean or number scalar at `pos` as written (such a plain scalar holds no space, `,`,
    /// `}`, `]` or `#`, which end it in block and flow style alike).
    fn written_at(&self, pos: Pos) -> Option<&'a str> {
        let line = self.source.lines().nth(pos.line.checked_sub(1)? as usize)?;
        let start = line
            .char_indices()
            .nth(pos.column.checked_sub(1)? as usize)
            .map(|(i, _)| i)?;
        let rest = &line[start..];
        let end = rest
            .find([' ', '\t', ',', '}', ']', '#'])
            .unwrap_or(rest.len());
        Some(&rest[..end])
    }

    pub fn error(
        &mut self,
        pos: Pos,
        code: &'static str,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        self.failed = true;
        self.diags.push(Diagnostic {
            file: self.file.to_string(),
            line: pos.line,
            column: pos.column,
            code,
            message: message.into(),
            hint,
            scope: self.scope.clone(),
        });
    }

    pub fn origin(&self, pos: Pos) -> Origin {
        Origin {
            file: self.file.to_string(),
            line: pos.line,
            column: pos.column,
        }
    }

    fn wrong_type(&mut self, n: &Node, what: &str, expected: &str, hint: Option<String>) {
        self.error(
            n.pos,
            "wrong-type",
            format!("`{what}` must be {expected}, found {}", n.kind.describe()),
            hint,
        );
    }

    /// Read `node` as a mapping that may hold only `allowed` keys; every other key is an
    /// `unknown-key` error (with a did-you-mean). `null` reads as an empty mapping.
    pub fn fields<'n>(&mut self, n: &'n Node, what: &str, allowed: &[&str]) -> Option<Fields<'n>> {
        let entries: &'n [(Key, Node)] = match &n.kind {
            Kind::Map(e) => e,
            Kind::Null => &[],
            _ => {
                self.wrong_type(n, what, "a mapping", None);
                return None;
            }
        };
        for (k, _) in entries {
            if !allowed.contains(&k.name.as_str()) {
                let hint = match did_you_mean(&k.name, allowed.iter().copied()) {
                    Some(m) => format!("did you mean `{m}`?"),
                    None => format!(
                        "allowed keys here: {}",
                        allowed
                            .iter()
                            .map(|a| format!("`{a}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                };
                self.error(
                    k.pos,
                    "unknown-key",
                    format!("unknown key `{}` in {what}", k.name),
                    Some(hint),
                );
            }
        }
        Some(Fields {
            pos: n.pos,
            entries,
        })
    }

    /// A key that must be present.
    pub fn required<'n>(&mut self, f: &Fields<'n>, key: &str, what: &str) -> Option<&'n Node> {
        let v = f.get(key);
        if v.is_none() {
            self.error(
                f.pos,
                "missing-key",
                format!("{what} has no `{key}`"),
                Some(format!("add `{key}:`")),
            );
        }
        v
    }

    pub fn string(&mut self, n: &Node, what: &str) -> Option<String> {
        match &n.kind {
            Kind::Str(s) => Some(s.clone()),
            Kind::Map(_) if is_secret_ref(n) => {
                self.error(
                    n.pos,
                    "wrong-type",
                    format!("`{what}` cannot be a secret reference"),
                    Some("secret references are allowed in registry credentials, `source.deploy_key` and environment `variables`".into()),
                );
                None
            }
            Kind::Int(_) | Kind::Float(_) | Kind::Bool(_) => {
                self.wrong_type(n, what, "a string", Some("quote the value".into()));
                None
            }
            _ => {
                self.wrong_type(n, what, "a string", None);
                None
            }
        }
    }

    /// A non-empty string.
    pub fn nonempty_string(&mut self, n: &Node, what: &str) -> Option<String> {
        let s = self.string(n, what)?;
        if s.trim().is_empty() {
            self.error(n.pos, "invalid-value", format!("`{what}` is empty"), None);
            return None;
        }
        Some(s)
    }

    pub fn int(&mut self, n: &Node, what: &str, min: i128, max: i128) -> Option<i128> {
        match &n.kind {
            Kind::Int(i) if (min..=max).contains(i) => Some(*i),
            Kind::Int(i) => {
                self.error(
                    n.pos,
                    "invalid-value",
                    format!("`{what}` is {i}, expected an integer from {min} to {max}"),
                    None,
                );
                None
            }
            _ => {
                self.wrong_type(n, what, &format!("an integer from {min} to {max}"), None);
                None
            }
        }
    }

    pub fn u16(&mut self, n: &Node, what: &str) -> Option<u16> {
        self.int(n, what, 1, 65535).map(|i| i as u16)
    }

    pub fn u32(&mut self, n: &Node, what: &str, min: u32, max: u32) -> Option<u32> {
        self.int(n, what, min.into(), max.into()).map(|i| i as u32)
    }

    pub fn bool(&mut self, n: &Node, what: &str) -> Option<bool> {
        match &n.kind {
            Kind::Bool(b) => Some(*b),
            _ => {
                self.wrong_type(n, what, "`true` or `false`", None);
                None
            }
        }
    }

    pub fn list<'n>(&mut self, n: &'n Node, what: &str) -> Option<&'n [Node]> {
        match &n.kind {
            Kind::Seq(items) => Some(items),
            _ => {
                self.wrong_type(n, what, "a list", None);
                None
            }
        }
    }

    /// A list of strings, each with its position.
    pub fn string_list(&mut self, n: &Node, what: &str) -> Option<Vec<(String, Pos)>> {
        let items = self.list(n, what)?;
        let mut out = Vec::new();
        let mut ok = true;
        for item in items {
            match self.string(item, &format!("{what}[]")) {
                Some(s) => out.push((s, item.pos)),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// One of a fixed set of words.
    pub fn choice<T: Copy>(&mut self, n: &Node, what: &str, options: &[(&str, T)]) -> Option<T> {
        let s = self.string(n, what)?;
        if let Some((_, v)) = options.iter().find(|(k, _)| *k == s) {
            return Some(*v);
        }
        let names: Vec<&str> = options.iter().map(|(k, _)| *k).collect();
        self.error(
            n.pos,
            "invalid-value",
            format!("`{what}` is `{s}`"),
            Some(one_of_hint(&s, &names)),
        );
        None
    }

    /// A resource name (`[a-z][a-z0-9-]{0,62}`) written as a value.
    pub fn name(&mut self, n: &Node, what: &str) -> Option<String> {
        let s = self.string(n, what)?;
        if !NAME.is_match(&s) {
            self.error(
                n.pos,
                "bad-name",
                format!("`{s}` is not a valid name for `{what}`"),
                Some(NAME_RULE.into()),
            );
            return None;
        }
        Some(s)
    }

    /// A string or `{secret: file.key.path}`.
    pub fn value(&mut self, n: &Node, what: &str) -> Option<Value> {
        if let Kind::Map(_) = &n.kind {
            let f = self.fields(n, &format!("the secret reference `{what}`"), &["secret"])?;
            let r = self.required(&f, "secret", &format!("the secret reference `{what}`"))?;
            let text = self.string(r, "secret")?;
            return self.secret_ref(r.pos, &text).map(Value::Secret);
        }
        self.string(n, what).map(Value::Plain)
    }

    /// A variable value: a string, a boolean or an integer (written as text), or a secret.
    pub fn variable_value(&mut self, n: &Node, what: &str) -> Option<Value> {
        // An unquoted `yes`, `0x1F` or `0o17` is read by YAML as `true`, 31 or 15: the container
        // would get another text than the file shows. Only the canonical forms pass unquoted.
        let canonical = match &n.kind {
            Kind::Bool(b) => Some(b.to_string()),
            Kind::Int(i) => Some(i.to_string()),
            _ => None,
        };
        if let Some(canonical) = canonical {
            if let Some(written) = self.written_at(n.pos)
                && !self.source.is_empty()
                && written != canonical
            {
                self.error(
                    n.pos,
                    "wrong-type",
                    format!(
                        "`{what}` is written `{written}`, which YAML reads as {} `{canonical}`",
                        n.kind.describe()
                    ),
                    Some(format!("quote it to keep it as written: `\"{written}\"`")),
                );
                return None;
            }
            return Some(Value::Plain(canonical));
        }
        match &n.kind {
            Kind::Float(_) => {
                self.wrong_type(
                    n,
                    what,
                    "a string",
                    Some(
                        "quote numbers that are not plain integers, so they keep every digit"
                            .into(),
                    ),
                );
                None
            }
            Kind::Null => Some(Value::Plain(String::new())),
            _ => self.value(n, what),
        }
    }

    fn secret_ref(&mut self, pos: Pos, text: &str) -> Option<SecretRef> {
        let mut parts = text.split('.');
        let file = parts.next().unwrap_or_default().to_string();
        let key_path: Vec<String> = parts.map(str::to_string).collect();
        if !NAME.is_match(&file) || key_path.is_empty() || key_path.iter().any(|k| k.is_empty()) {
            self.error(
                pos,
                "invalid-value",
                format!("`{text}` is not a secret reference"),
                Some("write `{secret: <file>.<key>}`, e.g. `{secret: registry.password}` for the key `password` of secrets/registry.sops.yaml".into()),
            );
            return None;
        }
        Some(SecretRef {
            file,
            key_path,
            origin: self.origin(pos),
        })
    }

    /// `60`, `60s`, `5m`, `1h`.
    pub fn duration(&mut self, n: &Node, what: &str) -> Option<std::time::Duration> {
        let secs = match &n.kind {
            Kind::Int(i) if *i >= 0 => Some(*i as u64),
            Kind::Str(s) => parse_duration(s),
            _ => None,
        };
        if secs.is_none() {
            self.error(
                n.pos,
                "invalid-value",
                format!("`{what}` must be a duration, found {}", n.kind.describe()),
                Some("write seconds (`60`) or a number with a unit: `90s`, `5m`, `1h`".into()),
            );
        }
        secs.map(std::time::Duration::from_secs)
    }
}

fn parse_duration(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, 's') => (&s[..i], 1),
        (i, 'm') => (&s[..i], 60),
        (i, 'h') => (&s[..i], 3600),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

/// Whether `n` is written as `{secret: ...}`.
pub fn is_secret_ref(n: &Node) -> bool {
    matches!(&n.kind, Kind::Map(e) if e.len() == 1 && e[0].0.name == "secret")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60s"), Some(60));
        assert_eq!(parse_duration("5m"), Some(300));
        assert_eq!(parse_duration("2h"), Some(7200));
        assert_eq!(parse_duration("17"), Some(17));
        assert_eq!(parse_duration("m"), None);
        assert_eq!(parse_duration("1d"), None);
    }

    #[test]
    fn suggestions() {
        assert_eq!(did_you_mean("hots", ["host", "port", "user"]), Some("host"));
        assert_eq!(did_you_mean("zzzzzz", ["host", "port"]), None);
    }
}

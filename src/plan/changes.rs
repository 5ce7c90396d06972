//! The changes a reviewer reads: one `+ ~ -` line per difference between the applied and the
//! desired state (images, replicas, placement, variables with their source, slices). Secret
//! values never appear: a secret is `changed` or `unchanged`, nothing more.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Added,
    Changed,
    Removed,
    /// Shown for context only (an unchanged secret, a kept volume).
    Unchanged,
}

impl ChangeKind {
    /// The diff marker: `+`, `~`, `-` or a space.
    pub fn marker(self) -> char {
        match self {
            ChangeKind::Added => '+',
            ChangeKind::Changed => '~',
            ChangeKind::Removed => '-',
            ChangeKind::Unchanged => ' ',
        }
    }
}

/// One line of the diff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub kind: ChangeKind,
    /// What changed, e.g. `services.web.replicas`, `replica web#3`, `variables.APP_KEY (secret)`.
    pub subject: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Free text after the values, e.g. `on web-3 (shop@9f8e7d6, sha256:4c1f…)`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Change {
    pub fn added(subject: impl Into<String>, note: impl Into<String>) -> Change {
        Change {
            kind: ChangeKind::Added,
            subject: subject.into(),
            from: None,
            to: None,
            note: Some(note.into()).filter(|n: &String| !n.is_empty()),
        }
    }

    pub fn removed(subject: impl Into<String>, note: impl Into<String>) -> Change {
        Change {
            kind: ChangeKind::Removed,
            note: Some(note.into()).filter(|n: &String| !n.is_empty()),
            ..Change::added(subject, "")
        }
    }

    pub fn changed(
        subject: impl Into<String>,
        from: impl Into<String>,
        to: impl Into<String>,
    ) -> Change {
        Change {
            kind: ChangeKind::Changed,
            from: Some(from.into()),
            to: Some(to.into()),
            ..Change::added(subject, "")
        }
    }

    pub fn unchanged(subject: impl Into<String>, note: impl Into<String>) -> Change {
        Change {
            kind: ChangeKind::Unchanged,
            note: Some(note.into()).filter(|n: &String| !n.is_empty()),
            ..Change::added(subject, "")
        }
    }

    pub fn with_note(mut self, note: impl Into<String>) -> Change {
        self.note = Some(note.into());
        self
    }

    /// The line as it appears in a ```diff block: `~ services.web.replicas: 2 → 3`.
    pub fn line(&self) -> String {
        let mut s = format!("{} {}", self.kind.marker(), self.subject);
        match (&self.from, &self.to) {
            (Some(f), Some(t)) => s.push_str(&format!(": {f} → {t}")),
            (None, Some(t)) => s.push_str(&format!(": {t}")),
            (Some(f), None) => s.push_str(&format!(": {f}")),
            (None, None) => {}
        }
        if let Some(n) = &self.note {
            if self.from.is_some() || self.to.is_some() {
                s.push_str(&format!(" ({n})"));
            } else if self.kind == ChangeKind::Unchanged {
                s.push_str(&format!(": {n}"));
            } else {
                s.push(' ');
                s.push_str(n);
            }
        }
        s
    }
}

/// Shorten a value for a diff line: at most 40 characters, quoted.
pub fn show_value(v: &str) -> String {
    let mut out: String = v.chars().take(40).collect();
    if v.chars().count() > 40 {
        out.push('…');
    }
    format!("{out:?}")
}

/// `sha256:4c1f2a3b…` (12 hex digits) for a digest, or the text as is for a placeholder.
pub fn short_digest(d: &str) -> String {
    match d.strip_prefix("sha256:") {
        Some(hex) if hex.len() > 12 => format!("sha256:{}…", &hex[..12]),
        _ if d.starts_with("{{digest:") => "digest resolved at build".to_string(),
        _ => d.to_string(),
    }
}

/// The first 7 characters of a commit id (other names as they are).
pub fn short_commit(c: &str) -> &str {
    if c.len() > 7 && c.bytes().all(|b| b.is_ascii_hexdigit()) {
        &c[..7]
    } else {
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_read_like_the_mock_up() {
        assert_eq!(
            Change::changed("services.web.replicas", "2", "3").line(),
            "~ services.web.replicas: 2 → 3"
        );
        assert_eq!(
            Change::added("replica web#3", "on web-3 (shop@9f8e7d6, sha256:4c1f…)").line(),
            "+ replica web#3 on web-3 (shop@9f8e7d6, sha256:4c1f…)"
        );
        assert_eq!(
            Change::unchanged("variables.APP_KEY (secret)", "unchanged").line(),
            "  variables.APP_KEY (secret): unchanged"
        );
        assert_eq!(
            Change::changed("variables.MAIL_FROM (user)", "\"a\"", "\"b\"").line(),
            "~ variables.MAIL_FROM (user): \"a\" → \"b\""
        );
    }

    #[test]
    fn values_and_digests_are_shortened() {
        assert_eq!(
            show_value(&"x".repeat(50)),
            format!("\"{}…\"", "x".repeat(40))
        );
        assert_eq!(
            short_digest(&format!("sha256:{}", "ab".repeat(32))),
            "sha256:abababababab…"
        );
        assert_eq!(short_digest("{{digest:shop}}"), "digest resolved at build");
    }
}

//! A validation error: where it is, a stable code, what is wrong and what to do.

use serde::Serialize;

/// What a diagnostic blocks. The planner blocks exactly what a diagnostic's scope covers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Scope {
    /// `keystone.yaml`, servers, registries, shared services, secret files, repository layout:
    /// every environment is blocked.
    Project,
    /// `applications/<app>/application.yaml`: every environment of that application is blocked.
    Application { app: String },
    /// One environment's file, or a reference only that environment makes.
    Environment { app: String, env: String },
}

impl Scope {
    /// Whether this diagnostic blocks deploying environment `app/env`.
    pub fn blocks(&self, app: &str, env: &str) -> bool {
        match self {
            Scope::Project => true,
            Scope::Application { app: a } => a == app,
            Scope::Environment { app: a, env: e } => a == app && e == env,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// Path relative to the repository root, `/`-separated.
    pub file: String,
    /// 1-based.
    pub line: u32,
    /// 1-based, in characters.
    pub column: u32,
    /// Stable kebab-case code, e.g. `unknown-key` (the list is in docs/config.md).
    pub code: &'static str,
    pub message: String,
    pub hint: Option<String>,
    #[serde(skip)]
    pub scope: Scope,
}

/// The JSON form of one diagnostic: exactly `{file, line, column, code, message, hint}`.
#[derive(Debug, Serialize)]
struct JsonDiagnostic<'a> {
    file: &'a str,
    line: u32,
    column: u32,
    code: &'a str,
    message: &'a str,
    hint: Option<&'a str>,
}

impl Diagnostic {
    /// The text form:
    ///
    /// ```text
    /// servers/web-1.yaml:3:1: error[unknown-key]: unknown key `hots` in a server
    ///   |
    /// 3 | hots: 10.0.0.1
    ///   | ^
    ///   = hint: did you mean `host`?
    /// ```
    ///
    /// `source_text` is the file's text; when the line is not in it only the first line is printed.
    pub fn render(&self, source_text: &str) -> String {
        // Control characters (a file name or value with ESC sequences or newlines) are shown
        // escaped: printed raw they would rewrite the terminal or break the lines.
        let mut out = format!(
            "{}:{}:{}: error[{}]: {}\n",
            printable(&self.file),
            self.line,
            self.column,
            self.code,
            printable(&self.message)
        );
        let gutter = self.line.to_string().len();
        let pad = " ".repeat(gutter);
        if let Some(text) = source_text
            .lines()
            .nth(self.line.saturating_sub(1) as usize)
        {
            // Keep tabs so the caret lines up with what a terminal shows.
            let lead: String = text
                .chars()
                .take(self.column.saturating_sub(1) as usize)
                .map(|c| match c {
                    '\t' => "\t".to_string(),
                    c => " ".repeat(printable(&c.to_string()).chars().count()),
                })
                .collect();
            out.push_str(&format!("{pad} |\n"));
            out.push_str(&format!("{} | {}\n", self.line, printable(text)));
            out.push_str(&format!("{pad} | {lead}^\n"));
        }
        if let Some(hint) = &self.hint {
            out.push_str(&format!("{pad} = hint: {}\n", printable(hint)));
        }
        out
    }

    /// `file:line:col`
    pub fn location(&self) -> String {
        format!("{}:{}:{}", self.file, self.line, self.column)
    }
}

/// `s` with every control character but tab escaped (`\u{1b}`, `\n`).
fn printable(s: &str) -> String {
    if !s.chars().any(|c| c.is_control() && c != '\t') {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if c.is_control() && c != '\t' {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The JSON form of a list of diagnostics, as `keystone validate --format json` prints it.
pub fn to_json(diagnostics: &[Diagnostic]) -> serde_json::Value {
    serde_json::Value::Array(
        diagnostics
            .iter()
            .map(|d| {
                serde_json::to_value(JsonDiagnostic {
                    file: &d.file,
                    line: d.line,
                    column: d.column,
                    code: d.code,
                    message: &d.message,
                    hint: d.hint.as_deref(),
                })
                .expect("a diagnostic serializes")
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_line_caret_and_hint() {
        let d = Diagnostic {
            file: "servers/web-1.yaml".into(),
            line: 2,
            column: 3,
            code: "unknown-key",
            message: "unknown key `hots` in a server".into(),
            hint: Some("did you mean `host`?".into()),
            scope: Scope::Project,
        };
        assert_eq!(
            d.render("a: 1\n  hots: x\n"),
            "servers/web-1.yaml:2:3: error[unknown-key]: unknown key `hots` in a server\n  |\n2 |   hots: x\n  |   ^\n  = hint: did you mean `host`?\n"
        );
        assert_eq!(
            to_json(std::slice::from_ref(&d)).to_string(),
            r#"[{"file":"servers/web-1.yaml","line":2,"column":3,"code":"unknown-key","message":"unknown key `hots` in a server","hint":"did you mean `host`?"}]"#
        );
    }

    #[test]
    fn control_characters_are_shown_escaped_and_the_caret_still_lines_up() {
        let d = Diagnostic {
            file: "servers/x\u{1b}]0;pwn\u{7}.yaml".into(),
            line: 1,
            column: 9,
            code: "invalid-value",
            message: "`host` is \"\u{1b}[2J\"".into(),
            hint: None,
            scope: Scope::Project,
        };
        assert_eq!(
            d.render("host: \"\u{1b}[2Jx\"\n"),
            "servers/x\\u{1b}]0;pwn\\u{7}.yaml:1:9: error[invalid-value]: `host` is \"\\u{1b}[2J\"\n  |\n1 | host: \"\\u{1b}[2Jx\"\n  |              ^\n"
        );
    }
}

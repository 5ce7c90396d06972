//! Plans as people and programs read them: text for terminals, markdown for pull-request
//! comments, json for tools (its format is documented in docs/plan.md and stable).

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::changes::{ChangeKind, short_commit};
use super::ops::Operation;
use super::{EnvironmentStatus, Finding, Plan, ServerChange};

/// The forge's comment limit Keystone stays under (GitHub allows 65,536 characters).
pub const MARKDOWN_LIMIT: usize = 65_000;

/// Output formats of `keystone plan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text { colour: bool },
    Markdown,
    Json,
}

/// The hidden marker that starts every plan comment of pull request `pr`; the daemon finds its
/// own comments by it. Continuation comments carry `part=N`.
pub fn pr_marker(pr: u64) -> String {
    format!("<!-- keystone-plan: pr={pr} -->")
}

fn part_marker(pr: u64, part: usize) -> String {
    format!("<!-- keystone-plan: pr={pr} part={part} -->")
}

/// Parse a marker line back into `(pr, part)`; part 1 is the main comment.
pub fn parse_marker(line: &str) -> Option<(u64, usize)> {
    let rest = line
        .trim()
        .strip_prefix("<!-- keystone-plan: pr=")?
        .strip_suffix(" -->")?;
    match rest.split_once(" part=") {
        Some((pr, part)) => Some((pr.parse().ok()?, part.parse().ok()?)),
        None => Some((rest.parse().ok()?, 1)),
    }
}

/// The operation tree drawn with box characters, one title per line.
pub fn tree(op: &Operation) -> String {
    let mut out = String::new();
    out.push_str(&op.title);
    out.push('\n');
    draw_children(op, "", &mut out);
    out
}

fn draw_children(op: &Operation, prefix: &str, out: &mut String) {
    let n = op.children.len();
    for (i, c) in op.children.iter().enumerate() {
        let last = i + 1 == n;
        let _ = writeln!(
            out,
            "{prefix}{}{}",
            if last { "└─ " } else { "├─ " },
            c.title
        );
        let next = format!("{prefix}{}", if last { "   " } else { "│  " });
        draw_children(c, &next, out);
    }
}

fn count_ops(op: &Operation) -> usize {
    op.walk().len() - 1
}

fn findings_text(label: &str, fs: &[Finding], out: &mut String) {
    for f in fs {
        let _ = write!(out, "{label} [{}]", f.code);
        if let Some(l) = &f.location {
            let _ = write!(out, " {l}");
        }
        let _ = writeln!(out, ": {}", f.message);
        if let Some(h) = &f.hint {
            let _ = writeln!(out, "  hint: {h}");
        }
    }
}

fn paint(colour: bool, code: &str, s: &str) -> String {
    if colour {
        format!("\x1b[{code}m{s}\x1b[0m")
    } else {
        s.to_string()
    }
}

fn header(plan: &Plan) -> String {
    match &plan.base_commit {
        Some(b) => format!(
            "Keystone plan for {} → {}",
            short_commit(b),
            short_commit(&plan.config_commit)
        ),
        None => format!("Keystone plan for {}", short_commit(&plan.config_commit)),
    }
}

/// `~ server web-1 host_key: ssh-ed25519 SHA256:… → ssh-ed25519 SHA256:…`, `+ server web-3 (…)`.
fn server_line(c: &ServerChange) -> String {
    let v = |o: &Option<String>| o.clone().unwrap_or_else(|| "(none)".into());
    match c.subject.as_str() {
        "added" => format!("+ server {} ({})", c.server, v(&c.to)),
        "removed" => format!("- server {} ({})", c.server, v(&c.from)),
        field => format!(
            "~ server {} {field}: {} → {}",
            c.server,
            v(&c.from),
            v(&c.to)
        ),
    }
}

/// The lines that go with a plan's server changes: each change, and for a new host key what the
/// reviewer has to check.
fn server_lines(plan: &Plan) -> Vec<String> {
    let mut lines: Vec<String> = plan.servers.iter().map(server_line).collect();
    for c in plan.servers.iter().filter(|c| c.subject == "host_key") {
        lines.push(format!(
            "! {}: Keystone will only connect if the server presents the new key; check it on \
             the server (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`) before merging",
            c.server
        ));
    }
    lines
}

/// The terminal form: every service and environment, its changes, its tree and its findings.
pub fn text(plan: &Plan, colour: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", paint(colour, "1", &header(plan)));
    if !plan.servers.is_empty() {
        let _ = writeln!(
            out,
            "\nservers (how Keystone reaches them; nothing runs for this):"
        );
        for line in server_lines(plan) {
            let _ = writeln!(out, "  {line}");
        }
    }
    let sections = plan
        .services
        .iter()
        .map(|s| {
            (
                format!("service {}", s.service),
                s.status,
                &s.summary,
                &s.changes,
                &s.operation,
                &s.blockers,
                &s.warnings,
            )
        })
        .chain(plan.environments.iter().map(|e| {
            (
                e.key(),
                e.status,
                &e.summary,
                &e.changes,
                &e.operation,
                &e.blockers,
                &e.warnings,
            )
        }));
    for (name, status, summary, changes, op, blockers, warnings) in sections {
        let _ = writeln!(out);
        let code = match status {
            EnvironmentStatus::Blocked => "31",
            EnvironmentStatus::Unchanged => "2",
            _ => "1",
        };
        let _ = writeln!(out, "{}: {summary}", paint(colour, code, &name));
        for c in changes {
            let line = c.line();
            let code = match c.kind {
                ChangeKind::Added => "32",
                ChangeKind::Removed => "31",
                ChangeKind::Changed => "33",
                ChangeKind::Unchanged => "2",
            };
            let _ = writeln!(out, "  {}", paint(colour, code, &line));
        }
        if let Some(op) = op {
            for l in tree(op).lines() {
                let _ = writeln!(out, "  {l}");
            }
        }
        findings_text(&paint(colour, "31", "blocker"), blockers, &mut out);
        findings_text(&paint(colour, "33", "warning"), warnings, &mut out);
    }
    out
}

/// The json form (docs/plan.md): the `Plan` serialized, payload bytes left out.
pub fn json(plan: &Plan) -> String {
    let mut s = serde_json::to_string_pretty(plan).expect("a plan serializes");
    s.push('\n');
    s
}

fn findings_md(fs: &[Finding], out: &mut String) {
    for f in fs {
        let _ = write!(out, "- `{}`", f.code);
        if let Some(l) = &f.location {
            let _ = write!(out, " `{l}`");
        }
        let _ = write!(out, ": {}", escape_md(&f.message));
        if let Some(h) = &f.hint {
            let _ = write!(out, " — {}", escape_md(h));
        }
        out.push('\n');
    }
}

fn escape_md(s: &str) -> String {
    s.replace('<', "&lt;").replace('>', "&gt;")
}

/// Keep fenced text from closing its fence.
fn fence_safe(s: &str) -> String {
    s.replace("```", "`\u{200b}``")
}

/// The PR comment (before splitting): marker, header, one summary line for all environments,
/// a `<details>` section per changed or blocked one, then the blockers and warnings.
pub fn markdown(plan: &Plan, pr: u64) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", pr_marker(pr));
    let head = match &plan.base_commit {
        Some(b) => format!(
            "### Keystone plan for `{}` → `{}`",
            short_commit(b),
            short_commit(&plan.config_commit)
        ),
        None => format!(
            "### Keystone plan for `{}`",
            short_commit(&plan.config_commit)
        ),
    };
    let _ = writeln!(out, "{head}");

    let changed_services: Vec<_> = plan
        .services
        .iter()
        .filter(|s| s.status != EnvironmentStatus::Unchanged)
        .collect();
    let changed: Vec<_> = plan
        .environments
        .iter()
        .filter(|e| e.status != EnvironmentStatus::Unchanged)
        .collect();
    let unchanged = plan.environments.len() - changed.len();
    let mut summary: Vec<String> = changed_services
        .iter()
        .map(|s| format!("**service {}**: {}", s.service, s.summary))
        .chain(
            changed
                .iter()
                .map(|e| format!("**{}**: {}", e.key(), e.summary)),
        )
        .collect();
    if unchanged > 0 {
        if plan.environments.len() <= 3 {
            for e in plan
                .environments
                .iter()
                .filter(|e| e.status == EnvironmentStatus::Unchanged)
            {
                summary.push(format!("**{}**: no changes", e.key()));
            }
        } else {
            summary.push(format!(
                "{unchanged} other environment{} unchanged",
                if unchanged == 1 { "" } else { "s" }
            ));
        }
    }
    if !plan.servers.is_empty() {
        let names: BTreeSet<&str> = plan.servers.iter().map(|c| c.server.as_str()).collect();
        let names: Vec<&str> = names.into_iter().collect();
        summary.insert(0, format!("**servers**: {} changed", names.join(", ")));
    }
    if summary.is_empty() {
        summary.push("no changes".into());
    }
    let _ = writeln!(out, "{}", summary.join(" · "));
    if !plan.servers.is_empty() {
        out.push_str(
            "\n<details open><summary>servers — connection settings</summary>\n\n```diff\n",
        );
        for line in server_lines(plan) {
            let _ = writeln!(out, "{}", fence_safe(&line));
        }
        out.push_str("```\n</details>\n");
    }

    let sections = changed_services
        .iter()
        .map(|s| {
            (
                format!("service {}", s.service),
                &s.changes,
                &s.operation,
                &s.blockers,
            )
        })
        .chain(
            changed
                .iter()
                .map(|e| (e.key(), &e.changes, &e.operation, &e.blockers)),
        );
    for (name, changes, op, blockers) in sections {
        let ops = op.as_ref().map(count_ops).unwrap_or(0);
        let what = if !blockers.is_empty() {
            format!(
                "blocked, {} blocker{}",
                blockers.len(),
                if blockers.len() == 1 { "" } else { "s" }
            )
        } else {
            format!("{ops} operation{}", if ops == 1 { "" } else { "s" })
        };
        let _ = writeln!(out, "\n<details><summary>{name} — {what}</summary>\n");
        if !changes.is_empty() {
            out.push_str("```diff\n");
            for c in changes.iter() {
                let _ = writeln!(out, "{}", fence_safe(&c.line()));
            }
            out.push_str("```\n");
        }
        if let Some(op) = op {
            out.push('\n');
            out.push_str("```\n");
            out.push_str(&fence_safe(&tree(op)));
            out.push_str("```\n");
        }
        if !blockers.is_empty() {
            out.push_str("\nBlockers:\n");
            findings_md(blockers, &mut out);
        }
        out.push_str("</details>\n");
    }

    let blockers: Vec<(String, &Finding)> = plan
        .environments
        .iter()
        .flat_map(|e| e.blockers.iter().map(move |f| (e.key(), f)))
        .chain(
            plan.services
                .iter()
                .flat_map(|s| s.blockers.iter().map(move |f| (s.service.clone(), f))),
        )
        .collect();
    // Warnings of unchanged environments are left out: a one-line change stays one section.
    let warnings: Vec<(String, &Finding)> = plan
        .environments
        .iter()
        .filter(|e| e.status != EnvironmentStatus::Unchanged)
        .flat_map(|e| e.warnings.iter().map(move |f| (e.key(), f)))
        .chain(
            plan.services
                .iter()
                .flat_map(|s| s.warnings.iter().map(move |f| (s.service.clone(), f))),
        )
        .collect();
    out.push('\n');
    let b = match blockers.len() {
        0 => "No blockers.".to_string(),
        1 => "1 blocker:".to_string(),
        n => format!("{n} blockers:"),
    };
    let w = match warnings.len() {
        0 => "No warnings.".to_string(),
        1 => "1 warning:".to_string(),
        n => format!("{n} warnings:"),
    };
    if blockers.is_empty() && warnings.is_empty() {
        let _ = writeln!(out, "{b} {w}");
    } else {
        let _ = writeln!(out, "{b}");
        for (k, f) in &blockers {
            let _ = write!(out, "- **{k}** ");
            findings_md(std::slice::from_ref(f), &mut out);
        }
        let _ = writeln!(out, "\n{w}");
        for (k, f) in &warnings {
            let _ = write!(out, "- **{k}** ");
            findings_md(std::slice::from_ref(f), &mut out);
        }
    }
    out
}

/// Split a comment into parts of at most `limit` characters, each valid markdown on its own:
/// cuts fall between top-level blocks (a `<details>` section is never cut unless it alone is
/// over the limit, in which case its fenced blocks are closed and reopened). Every part after the
/// first starts with its own marker.
pub fn split_comment(comment: &str, pr: u64, limit: usize) -> Vec<String> {
    if comment.chars().count() <= limit {
        return vec![comment.to_string()];
    }
    // Top-level blocks: the head (up to the first <details>), each <details>…</details>, the tail.
    let mut blocks: Vec<String> = Vec::new();
    let mut cur = String::new();
    for line in comment.split_inclusive('\n') {
        if line.starts_with("<details>") && !cur.is_empty() {
            blocks.push(std::mem::take(&mut cur));
        }
        cur.push_str(line);
        if line.starts_with("</details>") {
            blocks.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        blocks.push(cur);
    }
    let budget = limit.saturating_sub(120).max(1000);
    let mut parts: Vec<String> = vec![String::new()];
    for block in blocks {
        for piece in cut_block(&block, budget) {
            let last = parts.last_mut().expect("one part");
            if last.chars().count() + piece.chars().count() > budget && !last.is_empty() {
                parts.push(String::new());
            }
            parts.last_mut().expect("one part").push_str(&piece);
        }
    }
    let n = parts.len();
    parts
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            if i == 0 {
                format!(
                    "{p}\n_(continued in {} more comment{})_\n",
                    n - 1,
                    if n == 2 { "" } else { "s" }
                )
            } else {
                format!(
                    "{}\n_(part {} of {n})_\n\n{p}",
                    part_marker(pr, i + 1),
                    i + 1
                )
            }
        })
        .collect()
}

/// A block over the budget cut at line boundaries, closing and reopening an open fence and an
/// open `<details>`.
fn cut_block(block: &str, budget: usize) -> Vec<String> {
    if block.chars().count() <= budget {
        return vec![block.to_string()];
    }
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut fence: Option<String> = None;
    let mut details = false;
    for line in block.split_inclusive('\n') {
        if cur.chars().count() + line.chars().count() + 40 > budget && !cur.is_empty() {
            if fence.is_some() {
                cur.push_str("```\n");
            }
            if details {
                cur.push_str("</details>\n");
            }
            out.push(std::mem::take(&mut cur));
            if details {
                cur.push_str("<details><summary>(continued)</summary>\n\n");
            }
            if let Some(f) = &fence {
                cur.push_str(f);
            }
        }
        let t = line.trim_end();
        if t.starts_with("```") {
            fence = if fence.is_some() {
                None
            } else {
                Some(line.to_string())
            };
        } else if t.starts_with("<details>") {
            details = true;
        } else if t.starts_with("</details>") {
            details = false;
        }
        cur.push_str(line);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_round_trips() {
        assert_eq!(pr_marker(42), "<!-- keystone-plan: pr=42 -->");
        assert_eq!(parse_marker(&pr_marker(42)), Some((42, 1)));
        assert_eq!(parse_marker(&part_marker(42, 3)), Some((42, 3)));
        assert_eq!(parse_marker("<!-- other -->"), None);
    }

    #[test]
    fn split_keeps_fences_balanced_and_parts_under_the_limit() {
        let mut c = format!("{}\n### Keystone plan\nsummary\n", pr_marker(7));
        for i in 0..40 {
            c.push_str(&format!(
                "\n<details><summary>app/env{i}</summary>\n\n```diff\n"
            ));
            for j in 0..200 {
                c.push_str(&format!("+ replica web#{j} on web-{j}\n"));
            }
            c.push_str("```\n</details>\n");
        }
        c.push_str("\nNo blockers. No warnings.\n");
        let parts = split_comment(&c, 7, MARKDOWN_LIMIT);
        assert!(parts.len() >= 4, "{}", parts.len());
        for (i, p) in parts.iter().enumerate() {
            assert!(p.chars().count() <= MARKDOWN_LIMIT, "part {i}: {}", p.len());
            assert_eq!(
                p.matches("```").count() % 2,
                0,
                "part {i} has an open fence"
            );
            assert_eq!(
                p.matches("<details>").count(),
                p.matches("</details>").count(),
                "part {i}"
            );
            let first = p.lines().next().unwrap();
            assert_eq!(parse_marker(first), Some((7, i + 1)), "part {i}");
        }
        // Nothing lost: every replica line appears once across the parts.
        let all: String = parts.concat();
        assert_eq!(all.matches("+ replica web#199 on web-199\n").count(), 40);
    }

    #[test]
    fn one_giant_section_is_cut_inside_with_fences_reopened() {
        let mut c = format!(
            "{}\nhead\n\n<details><summary>x</summary>\n\n```diff\n",
            pr_marker(1)
        );
        for j in 0..5000 {
            c.push_str(&format!("+ line {j} {}\n", "x".repeat(20)));
        }
        c.push_str("```\n</details>\n");
        let parts = split_comment(&c, 1, 65_000);
        assert!(parts.len() >= 2);
        for p in &parts {
            assert!(p.chars().count() <= 65_000);
            assert_eq!(p.matches("```").count() % 2, 0);
            assert_eq!(
                p.matches("<details>").count(),
                p.matches("</details>").count()
            );
        }
    }
}

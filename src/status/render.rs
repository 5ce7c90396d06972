//! Pure rendering: `StatusSnapshot` → the files of the status branch. No I/O, no clock.
//!
//! Layout (SPEC.md §7):
//! ```text
//! README.md                          table: every environment, sync, health, last operation
//! environments/<app>/<env>.yaml      per service and replica: server, container, digest, health
//! servers/<name>.yaml                reachable, docker version, last seen
//! operations/<yyyy-mm-dd>/<op-id>.md the operation tree, step status, durations, output
//! ```
//! The README, `environments/` and `servers/` always describe the whole snapshot (the writer drops
//! files there that the snapshot no longer has); `operations/` accumulates until logs age out.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::model::{
    EnvironmentStatus, Health, NodeStatus, OperationNode, OperationRecord, Outcome, ServerStatus,
    StatusSnapshot, SyncState,
};

/// The files of one status branch commit, by path, as text (not yet redacted).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StatusFiles {
    pub files: BTreeMap<String, String>,
}

/// Directories whose content is replaced as a whole by each snapshot.
pub const SNAPSHOT_DIRS: [&str; 2] = ["environments", "servers"];
/// Directory of operation logs, one subdirectory per UTC day.
pub const OPERATIONS_DIR: &str = "operations";

pub fn render(snapshot: &StatusSnapshot) -> StatusFiles {
    let mut files = BTreeMap::new();
    files.insert("README.md".to_string(), readme(snapshot));
    for env in snapshot.environments.values() {
        files.insert(
            format!(
                "environments/{}/{}.yaml",
                path_safe(&env.app),
                path_safe(&env.env)
            ),
            yaml(env),
        );
    }
    for (name, server) in &snapshot.servers {
        files.insert(
            format!("servers/{}.yaml", path_safe(name)),
            yaml(&ServerFile {
                name,
                status: server,
            }),
        );
    }
    for op in &snapshot.operations {
        files.insert(operation_path(op), operation_log(op));
    }
    StatusFiles { files }
}

/// `operations/<yyyy-mm-dd>/<op-id>.md` (the day the operation started, UTC).
pub fn operation_path(op: &OperationRecord) -> String {
    format!(
        "{OPERATIONS_DIR}/{}/{}.md",
        op.started.date(),
        path_safe(&op.id)
    )
}

/// Replace everything but `[A-Za-z0-9._-]` (and a leading dot) so a name is one path component.
pub fn path_safe(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with('.') {
        out.insert(0, '_');
    }
    out
}

#[derive(Serialize)]
struct ServerFile<'a> {
    name: &'a str,
    #[serde(flatten)]
    status: &'a ServerStatus,
}

fn yaml<T: Serialize>(value: &T) -> String {
    // The status types contain only strings, numbers, enums and maps: serialization cannot fail.
    serde_saphyr::to_string(value).unwrap_or_else(|e| format!("# not serializable: {e}\n"))
}

/// `e4f5a6b` from a full commit id.
pub fn short(commit: &str) -> &str {
    commit.get(..7).unwrap_or(commit)
}

/// `850ms`, `3.2s`, `1m52s`, `2h05m`.
pub fn duration(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    } else {
        format!("{}h{:02}m", ms / 3_600_000, (ms / 60_000) % 60)
    }
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

fn readme(s: &StatusSnapshot) -> String {
    let mut out = String::new();
    let updated = s
        .updated_at
        .map(|t| t.human())
        .unwrap_or_else(|| "never".into());
    let by = s
        .config_commit
        .as_deref()
        .map(|c| format!(" by commit {}", short(c)))
        .unwrap_or_default();
    let _ = writeln!(out, "# Keystone status — updated {updated}{by}\n");

    if s.environments.is_empty() {
        out.push_str("No environments.\n");
    } else {
        out.push_str("| environment | synced | health | deployed | last operation |\n");
        out.push_str("|---|---|---|---|---|\n");
        for env in s.environments.values() {
            let _ = writeln!(
                out,
                "| [{key}](environments/{app}/{name}.yaml) | {sync} | {health} | {deployed} | {last} |",
                key = env.key(),
                app = path_safe(&env.app),
                name = path_safe(&env.env),
                sync = cell(&sync_cell(env)),
                health = health_cell(env),
                deployed = cell(env.deployed_source.as_deref().unwrap_or("—")),
                last = cell(&last_operation_cell(env)),
            );
        }
    }

    out.push('\n');
    if s.servers.is_empty() {
        out.push_str("Servers: none.\n");
    } else {
        let servers: Vec<String> = s
            .servers
            .iter()
            .map(|(name, st)| {
                let icon = match st.reachable {
                    Some(true) => "🟢",
                    Some(false) => "🔴 unreachable",
                    None => "⚪ not probed",
                };
                let mut line = format!("{name} {icon}");
                for (svc, r) in &st.services {
                    if r.health != Health::Healthy || r.sync != SyncState::Synced {
                        let _ = write!(line, " ({svc} {}, {})", r.health.label(), r.sync);
                    }
                }
                if !st.drift.is_empty() {
                    let n = st.drift.len();
                    let _ = write!(line, " ({n} drift{})", if n == 1 { "" } else { "s" });
                }
                line
            })
            .collect();
        let _ = writeln!(out, "Servers: {}", servers.join(" · "));
    }

    let failing: Vec<String> = s
        .environments
        .values()
        .filter_map(|env| {
            let a = env.last_attempted.as_ref()?;
            if !matches!(a.outcome, Outcome::Failed | Outcome::Blocked) {
                return None;
            }
            let why = a
                .error
                .as_deref()
                .map(|e| format!(": {}", one_line(e)))
                .unwrap_or_default();
            Some(format!(
                "{} {} @{}{why}",
                env.key(),
                a.outcome,
                short(&a.commit)
            ))
        })
        .collect();
    if failing.is_empty() {
        out.push_str("\nFailed recently: none. Full history: operations/.\n");
    } else {
        out.push_str("\nFailed recently:\n");
        for f in failing {
            let _ = writeln!(out, "- {f}");
        }
        out.push_str("\nFull history: operations/.\n");
    }

    let drift = drift_lines(s);
    if !drift.is_empty() {
        out.push_str("\n## Drift\n\n");
        for d in drift {
            let _ = writeln!(out, "- {}", one_line(&d));
        }
    }

    let with_problems: Vec<&EnvironmentStatus> = s
        .environments
        .values()
        .filter(|e| !e.problems.is_empty())
        .collect();
    if !with_problems.is_empty() {
        out.push_str("\n## Problems\n");
        for env in with_problems {
            let commit = env.desired_commit.as_deref().map(short).unwrap_or("?");
            let _ = writeln!(out, "\n**{}** at commit {commit}:\n", env.key());
            for p in &env.problems {
                let _ = writeln!(out, "- {}", one_line(p));
            }
        }
    }
    out
}

/// What differs from the applied state, one line each: replicas that are not healthy and
/// synced, shared services' replicas likewise, and each server's drift.
fn drift_lines(s: &StatusSnapshot) -> Vec<String> {
    let mut out = Vec::new();
    for env in s.environments.values() {
        for (name, svc) in &env.services {
            for r in &svc.replicas {
                if r.health == Health::Healthy && r.sync == SyncState::Synced {
                    continue;
                }
                let why = r
                    .message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default();
                out.push(format!(
                    "{} {name}#{} @{} {}, {}{why}",
                    env.key(),
                    r.index,
                    r.server,
                    r.health,
                    r.sync
                ));
            }
        }
    }
    for (server, st) in &s.servers {
        for (svc, r) in &st.services {
            if r.health == Health::Healthy && r.sync == SyncState::Synced {
                continue;
            }
            let why = r
                .message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            out.push(format!("{svc} @{server} {}, {}{why}", r.health, r.sync));
        }
        for d in &st.drift {
            out.push(format!("{server}: {d}"));
        }
    }
    out
}

fn one_line(text: &str) -> String {
    text.lines().next().unwrap_or("").trim().to_string()
}

fn sync_cell(env: &EnvironmentStatus) -> String {
    let at = env
        .last_applied
        .as_ref()
        .map(|a| format!(" @{}", short(&a.commit)))
        .unwrap_or_default();
    let reason = env
        .sync_reason
        .as_deref()
        .map(|r| format!(" ({})", one_line(r)))
        .unwrap_or_default();
    match env.sync {
        SyncState::Synced => format!("✅ synced{at}"),
        SyncState::OutOfSync => format!("⚠️ out_of_sync{at}{reason}"),
        SyncState::Unknown => format!("❔ unknown{at}{reason}"),
    }
}

fn health_cell(env: &EnvironmentStatus) -> String {
    let (healthy, total) = env.replica_counts();
    if total == 0 {
        env.health.label()
    } else {
        format!("{} {healthy}/{total}", env.health.label())
    }
}

fn last_operation_cell(env: &EnvironmentStatus) -> String {
    let Some(op) = &env.last_operation else {
        return "—".into();
    };
    let took = op
        .duration_ms
        .filter(|_| op.outcome != Outcome::Running)
        .map(|d| format!(" {}", duration(d)))
        .unwrap_or_default();
    format!(
        "[{} {} {}{took}]({OPERATIONS_DIR}/{}/{}.md)",
        op.kind,
        short(&op.commit),
        op.outcome.mark(),
        op.started.date(),
        path_safe(&op.id)
    )
}

fn operation_log(op: &OperationRecord) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# {} {} — {} — {}\n",
        op.kind,
        short(&op.commit),
        op.environment,
        op.outcome
    );
    let _ = writeln!(out, "- operation: `{}`", op.id);
    let _ = writeln!(out, "- environment: {}", op.environment);
    let _ = writeln!(out, "- commit: `{}`", op.commit);
    let _ = writeln!(out, "- started: {}", op.started.rfc3339());
    if let Some(f) = op.finished {
        let took = op.duration_ms().map(duration).unwrap_or_default();
        let _ = writeln!(out, "- finished: {} ({took})", f.rfc3339());
    }
    let _ = writeln!(out, "- outcome: {} {}", op.outcome.mark(), op.outcome);
    if let Some(e) = &op.error {
        let _ = writeln!(out, "- error: {}", one_line(e));
    }

    let Some(tree) = &op.tree else {
        if let Some(e) = &op.error {
            out.push_str("\nNothing was planned or deployed.\n");
            push_fenced(&mut out, e);
        }
        return out;
    };

    out.push_str("\n## Tree\n\n");
    let mut lines = String::new();
    tree_lines(tree, "", "", &mut lines);
    push_fenced(&mut out, &lines);

    out.push_str("\n## Steps\n");
    step_sections(tree, &mut Vec::new(), &mut out);
    out
}

fn node_line(node: &OperationNode) -> String {
    let took = node
        .duration_ms
        .map(|d| format!("  {}", duration(d)))
        .unwrap_or_default();
    format!("{} {}{took}", node.status.mark(), node.title)
}

fn tree_lines(node: &OperationNode, first: &str, rest: &str, out: &mut String) {
    let _ = writeln!(out, "{first}{}", node_line(node));
    let n = node.children.len();
    for (i, child) in node.children.iter().enumerate() {
        let last = i + 1 == n;
        let (f, r) = if last {
            ("└─ ", "   ")
        } else {
            ("├─ ", "│  ")
        };
        tree_lines(child, &format!("{rest}{f}"), &format!("{rest}{r}"), out);
    }
}

fn step_sections<'a>(node: &'a OperationNode, path: &mut Vec<&'a str>, out: &mut String) {
    path.push(&node.title);
    if !node.steps.is_empty() {
        let _ = writeln!(out, "\n### {}\n", path.join(" › "));
        for step in &node.steps {
            let took = step
                .duration_ms
                .map(|d| format!(" ({})", duration(d)))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "- {} {} @{} — {}{took}",
                step.status.mark(),
                step.name,
                step.target,
                step.status.as_str()
            );
            if let Some(e) = &step.error {
                let _ = writeln!(out, "  - error: {}", one_line(e));
            }
            if !step.output.is_empty() && step.status != NodeStatus::Pending {
                out.push('\n');
                push_fenced(out, &step.output);
            }
        }
    }
    for child in &node.children {
        step_sections(child, path, out);
    }
    path.pop();
}

/// A fenced block whose fence is longer than any backtick run inside `text`.
fn push_fenced(out: &mut String, text: &str) {
    let mut longest = 0;
    let mut run = 0;
    for c in text.chars() {
        if c == '`' {
            run += 1;
            longest = longest.max(run);
        } else {
            run = 0;
        }
    }
    let fence = "`".repeat(longest.max(2) + 1);
    let _ = writeln!(out, "{fence}text");
    out.push_str(text);
    if !text.ends_with('\n') {
        out.push('\n');
    }
    let _ = writeln!(out, "{fence}");
}

/// A one-line commit message: `status: shop/production deploy e4f5a6b succeeded`.
pub fn commit_message(subject: &str, details: &[String]) -> String {
    let mut msg = format!("status: {subject}\n");
    if !details.is_empty() {
        msg.push('\n');
        for d in details {
            let _ = writeln!(msg, "- {}", one_line(d));
        }
    }
    msg
}

/// Subject for a deploy outcome: `shop/production deploy e4f5a6b succeeded`.
pub fn deploy_subject(environment: &str, kind: &str, commit: &str, outcome: Outcome) -> String {
    format!("{environment} {kind} {} {outcome}", short(commit))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::model::*;

    const C1: &str = "e4f5a6b0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6";

    fn replica(i: u32, server: &str, health: Health) -> ReplicaStatus {
        ReplicaStatus {
            index: i,
            server: server.into(),
            container: Some(format!("shop-production-web-{i}")),
            image: Some("10.77.0.1:5000/acme/shop".into()),
            digest: Some("sha256:4c1f00aa".into()),
            running_digest: None,
            health,
            sync: SyncState::Synced,
            started: Some(Timestamp(1_796_319_600)),
            restart_count: Some(0),
            exit_code: None,
            message: None,
            transitions: vec![],
        }
    }

    pub(crate) fn sample() -> StatusSnapshot {
        let mut prod = EnvironmentStatus::new("shop", "production");
        prod.sync = SyncState::Synced;
        prod.desired_commit = Some(C1.into());
        prod.last_applied = Some(CommitMark {
            commit: C1.into(),
            at: Timestamp(1_796_319_725),
        });
        prod.deployed_source = Some("shop@9f8e7d6".into());
        prod.last_operation = Some(OperationSummary {
            id: "op-20261203-174013-shop-production".into(),
            kind: "deploy".into(),
            commit: C1.into(),
            outcome: Outcome::Succeeded,
            started: Timestamp(1_796_319_613),
            duration_ms: Some(112_000),
        });
        prod.services.insert(
            "web".into(),
            ServiceStatus {
                health: Health::Unknown,
                sync: SyncState::Unknown,
                replicas: vec![
                    replica(1, "web-1", Health::Healthy),
                    replica(2, "web-2", Health::Healthy),
                ],
            },
        );
        prod.roll_up_health();
        let mut staging = EnvironmentStatus::new("shop", "staging");
        staging.sync = SyncState::OutOfSync;
        staging.sync_reason = Some("commit e4f5a6b is invalid".into());
        staging.desired_commit = Some(C1.into());
        staging.problems = vec![
            "applications/shop/environments/staging.yaml:4:3: unknown key `replica` | did you mean `replicas`?".into(),
        ];
        staging.last_attempted = Some(Attempt {
            commit: C1.into(),
            at: Timestamp(1_796_319_725),
            outcome: Outcome::Blocked,
            operation: None,
            error: Some("1 validation error".into()),
        });
        let mut servers = BTreeMap::new();
        servers.insert(
            "web-1".to_string(),
            ServerStatus {
                reachable: Some(true),
                docker_version: Some("27.3.1".into()),
                last_seen: Some(Timestamp(1_796_319_725)),
                disk_free_bytes: None,
                error: None,
                ..Default::default()
            },
        );
        servers.insert(
            "web-2".to_string(),
            ServerStatus {
                reachable: Some(false),
                error: Some("connect: connection refused".into()),
                ..Default::default()
            },
        );
        StatusSnapshot {
            config_commit: Some(C1.into()),
            updated_at: Some(Timestamp(1_796_319_725)),
            environments: [
                ("shop/production".to_string(), prod),
                ("shop/staging".to_string(), staging),
            ]
            .into(),
            servers,
            operations: vec![OperationRecord {
                id: "op-20261203-174013-shop-production".into(),
                environment: "shop/production".into(),
                kind: "deploy".into(),
                commit: C1.into(),
                started: Timestamp(1_796_319_613),
                finished: Some(Timestamp(1_796_319_725)),
                outcome: Outcome::Succeeded,
                error: None,
                tree: Some(OperationNode {
                    title: "environment_deploy shop/production".into(),
                    status: NodeStatus::Succeeded,
                    duration_ms: Some(112_000),
                    steps: vec![],
                    children: vec![
                        OperationNode {
                            title: "build shop@9f8e7d6".into(),
                            status: NodeStatus::Succeeded,
                            duration_ms: Some(40_000),
                            steps: vec![StepRecord {
                                name: "docker build".into(),
                                target: "build-1".into(),
                                status: NodeStatus::Succeeded,
                                duration_ms: Some(39_500),
                                output: "Step 1/3 ```\ndone".into(),
                                error: None,
                            }],
                            children: vec![],
                        },
                        OperationNode {
                            title: "service_deploy web".into(),
                            status: NodeStatus::Succeeded,
                            duration_ms: Some(70_000),
                            steps: vec![],
                            children: vec![OperationNode {
                                title: "replica_deploy web#1 @web-1".into(),
                                status: NodeStatus::Succeeded,
                                duration_ms: Some(850),
                                steps: vec![],
                                children: vec![],
                            }],
                        },
                    ],
                }),
            }],
        }
    }

    #[test]
    fn readme_matches_the_mockup() {
        let files = render(&sample());
        assert_eq!(
            files.files["README.md"],
            "# Keystone status — updated 2026-12-03 17:42 UTC by commit e4f5a6b

| environment | synced | health | deployed | last operation |
|---|---|---|---|---|
| [shop/production](environments/shop/production.yaml) | ✅ synced @e4f5a6b | 🟢 healthy 2/2 | shop@9f8e7d6 | [deploy e4f5a6b ✓ 1m52s](operations/2026-12-03/op-20261203-174013-shop-production.md) |
| [shop/staging](environments/shop/staging.yaml) | ⚠️ out_of_sync (commit e4f5a6b is invalid) | ⚪ unknown | — | — |

Servers: web-1 🟢 · web-2 🔴 unreachable

Failed recently:
- shop/staging blocked @e4f5a6b: 1 validation error

Full history: operations/.

## Problems

**shop/staging** at commit e4f5a6b:

- applications/shop/environments/staging.yaml:4:3: unknown key `replica` | did you mean `replicas`?
"
        );
    }

    #[test]
    fn files_and_paths() {
        let files = render(&sample());
        let paths: Vec<&str> = files.files.keys().map(|s| s.as_str()).collect();
        assert_eq!(
            paths,
            [
                "README.md",
                "environments/shop/production.yaml",
                "environments/shop/staging.yaml",
                "operations/2026-12-03/op-20261203-174013-shop-production.md",
                "servers/web-1.yaml",
                "servers/web-2.yaml",
            ]
        );
        assert_eq!(
            files.files["servers/web-2.yaml"],
            "name: web-2\nreachable: false\nerror: \"connect: connection refused\"\n"
        );
        let env: EnvironmentStatus =
            serde_saphyr::from_str(&files.files["environments/shop/production.yaml"]).unwrap();
        assert_eq!(env, sample().environments["shop/production"]);
    }

    #[test]
    fn operation_log_has_tree_steps_and_safe_fences() {
        let files = render(&sample());
        let log = &files.files["operations/2026-12-03/op-20261203-174013-shop-production.md"];
        assert_eq!(
            log,
            "# deploy e4f5a6b — shop/production — succeeded

- operation: `op-20261203-174013-shop-production`
- environment: shop/production
- commit: `e4f5a6b0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6`
- started: 2026-12-03T17:40:13Z
- finished: 2026-12-03T17:42:05Z (1m52s)
- outcome: ✓ succeeded

## Tree

```text
✓ environment_deploy shop/production  1m52s
├─ ✓ build shop@9f8e7d6  40.0s
└─ ✓ service_deploy web  1m10s
   └─ ✓ replica_deploy web#1 @web-1  850ms
```

## Steps

### environment_deploy shop/production › build shop@9f8e7d6

- ✓ docker build @build-1 — succeeded (39.5s)

````text
Step 1/3 ```
done
````
"
        );
    }

    #[test]
    fn hostile_names_stay_one_path_component() {
        assert_eq!(path_safe("../../etc/passwd"), "_..-..-etc-passwd");
        assert_eq!(path_safe(".git"), "_.git");
        assert_eq!(path_safe(""), "_");
        assert_eq!(path_safe("op 1/2"), "op-1-2");
    }

    #[test]
    fn durations() {
        assert_eq!(duration(850), "850ms");
        assert_eq!(duration(3_200), "3.2s");
        assert_eq!(duration(112_000), "1m52s");
        assert_eq!(duration(7_500_000), "2h05m");
    }
}

//! An execution observer that builds the status branch's view of an operation: the tree with each
//! node's and step's status, duration, error and (already redacted) output. It also logs each
//! step's start and end (tracing, `info`), so the daemon's log shows where a deploy is.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::execute::{Event, Observer, Status};
use crate::plan::Operation;
use crate::status::{NodeStatus, OperationNode, StepRecord};

/// Feed it the executor's events; `tree()` is the operation as it stands.
///
/// One daemon operation can be several executions (each changed shared service, then the
/// environment): each is a part, and `tree()` puts them under one node.
#[derive(Debug, Default)]
pub struct OperationLog {
    /// The daemon's operation id, in every log line.
    id: String,
    /// Title of the node holding several parts.
    title: String,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    parts: Vec<OperationNode>,
    /// Operation id → (part, child indexes from the part's root).
    paths: HashMap<String, (usize, Vec<usize>)>,
}

pub fn node_status(s: Status) -> NodeStatus {
    match s {
        Status::Pending => NodeStatus::Pending,
        Status::Running => NodeStatus::Running,
        Status::Succeeded => NodeStatus::Succeeded,
        Status::Failed => NodeStatus::Failed,
        Status::Cancelled => NodeStatus::Cancelled,
        Status::Interrupted => NodeStatus::Interrupted,
    }
}

fn skeleton(
    op: &Operation,
    part: usize,
    path: Vec<usize>,
    paths: &mut HashMap<String, (usize, Vec<usize>)>,
) -> OperationNode {
    let children = op
        .children
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut p = path.clone();
            p.push(i);
            skeleton(c, part, p, paths)
        })
        .collect();
    paths.insert(op.id.clone(), (part, path));
    OperationNode {
        title: op.title.clone(),
        status: NodeStatus::Pending,
        duration_ms: None,
        steps: op
            .steps
            .iter()
            .map(|s| StepRecord {
                name: s.name.clone(),
                target: crate::execute::transport::target_name(&s.target).to_string(),
                status: NodeStatus::Pending,
                duration_ms: None,
                output: String::new(),
                error: None,
            })
            .collect(),
        children,
    }
}

impl Inner {
    fn node(&mut self, id: &str) -> Option<&mut OperationNode> {
        let (part, path) = self.paths.get(id)?.clone();
        let mut n = self.parts.get_mut(part)?;
        for i in path {
            n = n.children.get_mut(i)?;
        }
        Some(n)
    }
}

/// One node for an operation made of `parts`: the part itself when there is one, else a node
/// titled `title` holding them, with the worst status and the summed duration.
pub fn join_parts(title: &str, mut parts: Vec<OperationNode>) -> Option<OperationNode> {
    if parts.len() <= 1 {
        return parts.pop();
    }
    let rank = |s: NodeStatus| match s {
        NodeStatus::Failed => 6,
        NodeStatus::Interrupted => 5,
        NodeStatus::Running => 4,
        NodeStatus::Cancelled => 3,
        NodeStatus::Pending => 2,
        NodeStatus::Skipped => 1,
        NodeStatus::Succeeded => 0,
    };
    let status = parts
        .iter()
        .map(|p| p.status)
        .max_by_key(|s| rank(*s))
        .unwrap_or(NodeStatus::Pending);
    let duration_ms = parts.iter().map(|p| p.duration_ms).sum::<Option<u64>>();
    Some(OperationNode {
        title: title.to_string(),
        status,
        duration_ms,
        steps: Vec::new(),
        children: parts,
    })
}

impl OperationLog {
    /// The log of operation `id`; its parts, when there are several, go under a node titled
    /// `title`.
    pub fn new(id: impl Into<String>, title: impl Into<String>) -> OperationLog {
        OperationLog {
            id: id.into(),
            title: title.into(),
            inner: Mutex::default(),
        }
    }

    /// The tree so far (`None` before the execution started).
    pub fn tree(&self) -> Option<OperationNode> {
        let parts = self
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .parts
            .clone();
        join_parts(&self.title, parts)
    }
}

impl Observer for OperationLog {
    fn on_event(&self, event: &Event<'_>) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            Event::ExecutionStarted { root } => {
                let part = g.parts.len();
                let mut paths = HashMap::new();
                let node = skeleton(root, part, Vec::new(), &mut paths);
                g.parts.push(node);
                g.paths.extend(paths);
            }
            Event::OperationStarted { op } => {
                if let Some(n) = g.node(&op.id) {
                    n.status = NodeStatus::Running;
                }
            }
            Event::OperationFinished {
                op,
                status,
                duration,
                ..
            } => {
                if let Some(n) = g.node(&op.id) {
                    n.status = node_status(*status);
                    n.duration_ms = Some(duration.as_millis() as u64);
                }
            }
            Event::StepStarted {
                op,
                index,
                step,
                attempt,
            } => {
                tracing::info!(
                    operation = %self.id,
                    node = %op.title,
                    step = %step.name,
                    attempt,
                    "step started"
                );
                if let Some(s) = g.node(&op.id).and_then(|n| n.steps.get_mut(*index)) {
                    s.status = NodeStatus::Running;
                }
            }
            Event::StepFinished {
                op,
                index,
                status,
                error,
                duration,
                output,
                retry_in,
                step,
                ..
            } => {
                tracing::info!(
                    operation = %self.id,
                    node = %op.title,
                    step = %step.name,
                    status = status.as_str(),
                    ms = duration.as_millis() as u64,
                    "step finished"
                );
                if let Some(s) = g.node(&op.id).and_then(|n| n.steps.get_mut(*index)) {
                    s.status = if retry_in.is_some() {
                        NodeStatus::Running
                    } else {
                        node_status(*status)
                    };
                    s.duration_ms = Some(duration.as_millis() as u64);
                    s.error = error.map(str::to_string);
                    s.output = output.text();
                }
            }
            Event::StepSkipped {
                op, index, status, ..
            } => {
                if let Some(s) = g.node(&op.id).and_then(|n| n.steps.get_mut(*index)) {
                    s.status = if *status == Status::Cancelled {
                        NodeStatus::Skipped
                    } else {
                        node_status(*status)
                    };
                }
            }
            Event::StepOutput { .. } | Event::ExecutionFinished { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::execute::{ExecuteOptions, Executor, LocalTransport, Redactor, Shutdown};
    use crate::plan::{Children, OperationKind, Step, StepAction, Target};

    fn step(name: &str, script: &str) -> Step {
        Step {
            name: name.into(),
            target: Target::Local,
            action: StepAction::Run {
                script: script.into(),
                stdin: None,
            },
            timeout: Duration::from_secs(10),
            idempotent: false,
            capture: None,
            on_failure: None,
        }
    }

    fn op(id: &str, steps: Vec<Step>, children: Vec<Operation>) -> Operation {
        Operation {
            id: id.into(),
            kind: OperationKind::ServiceDeploy,
            title: format!("service_deploy {id}"),
            server: None,
            steps,
            children_mode: Children::Sequential,
            children,
        }
    }

    fn node(title: &str, status: NodeStatus, ms: Option<u64>) -> OperationNode {
        OperationNode {
            title: title.into(),
            status,
            duration_ms: ms,
            steps: vec![],
            children: vec![],
        }
    }

    #[test]
    fn several_parts_go_under_one_node_with_the_worst_status() {
        assert_eq!(join_parts("deploy x", vec![]), None);
        let one = node(
            "environment_deploy shop/production",
            NodeStatus::Succeeded,
            Some(5),
        );
        assert_eq!(join_parts("deploy x", vec![one.clone()]), Some(one.clone()));
        let shared = node("service_deploy edge", NodeStatus::Succeeded, Some(7));
        let cut = node(
            "environment_deploy shop/production",
            NodeStatus::Interrupted,
            None,
        );
        assert_eq!(
            join_parts("deploy x", vec![shared.clone(), one.clone()]),
            Some(OperationNode {
                title: "deploy x".into(),
                status: NodeStatus::Succeeded,
                duration_ms: Some(12),
                steps: vec![],
                children: vec![shared.clone(), one],
            })
        );
        let joined = join_parts("deploy x", vec![shared, cut]).unwrap();
        assert_eq!(joined.status, NodeStatus::Interrupted);
        assert_eq!(joined.duration_ms, None, "unknown while a part has none");
    }

    #[tokio::test]
    async fn a_real_execution_becomes_the_status_tree_with_redacted_output() {
        let tree = op(
            "root",
            vec![],
            vec![
                op(
                    "a",
                    vec![step("greet", "echo hello; echo password=hunter22 >&2")],
                    vec![],
                ),
                op(
                    "b",
                    vec![step("break", "echo failing; exit 3"), step("never", "true")],
                    vec![],
                ),
                op("c", vec![step("later", "true")], vec![]),
            ],
        );
        let log = Arc::new(OperationLog::default());
        let redactor = Redactor::new();
        redactor.add("hunter22");
        let exec = Executor::new(
            Arc::new(LocalTransport),
            log.clone(),
            redactor,
            ExecuteOptions {
                retries: 0,
                ..Default::default()
            },
        );
        exec.execute(&tree, &Shutdown::new()).await;
        let t = log.tree().unwrap();
        assert_eq!(t.status, NodeStatus::Failed);
        let a = &t.children[0];
        assert_eq!(a.status, NodeStatus::Succeeded);
        assert_eq!(a.steps[0].status, NodeStatus::Succeeded);
        assert_eq!(a.steps[0].target, "local");
        assert!(
            a.steps[0].output.contains("hello\n"),
            "{:?}",
            a.steps[0].output
        );
        assert!(
            a.steps[0]
                .output
                .contains(&format!("password={}", crate::secrets::REDACTED)),
            "{:?}",
            a.steps[0].output
        );
        assert!(!a.steps[0].output.contains("hunter22"));
        let b = &t.children[1];
        assert_eq!(b.status, NodeStatus::Failed);
        assert_eq!(b.steps[0].status, NodeStatus::Failed);
        assert!(b.steps[0].error.is_some());
        assert_eq!(b.steps[1].status, NodeStatus::Skipped);
        let c = &t.children[2];
        assert_eq!(c.status, NodeStatus::Cancelled);
        assert!(t.duration_ms.is_some());
    }
}

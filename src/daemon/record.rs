//! An execution observer that builds the status branch's view of an operation: the tree with each
//! node's and step's status, duration, error and (already redacted) output.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::execute::{Event, Observer, Status};
use crate::plan::Operation;
use crate::status::{NodeStatus, OperationNode, StepRecord};

/// Feed it the executor's events; `tree()` is the operation as it stands.
#[derive(Debug, Default)]
pub struct OperationLog {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    root: Option<OperationNode>,
    /// Operation id → child indexes from the root.
    paths: HashMap<String, Vec<usize>>,
}

fn node_status(s: Status) -> NodeStatus {
    match s {
        Status::Pending => NodeStatus::Pending,
        Status::Running => NodeStatus::Running,
        Status::Succeeded => NodeStatus::Succeeded,
        Status::Failed => NodeStatus::Failed,
        Status::Cancelled | Status::Interrupted => NodeStatus::Cancelled,
    }
}

fn skeleton(
    op: &Operation,
    path: Vec<usize>,
    paths: &mut HashMap<String, Vec<usize>>,
) -> OperationNode {
    let children = op
        .children
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut p = path.clone();
            p.push(i);
            skeleton(c, p, paths)
        })
        .collect();
    paths.insert(op.id.clone(), path);
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
        let path = self.paths.get(id)?.clone();
        let mut n = self.root.as_mut()?;
        for i in path {
            n = n.children.get_mut(i)?;
        }
        Some(n)
    }
}

impl OperationLog {
    /// The tree so far (`None` before the execution started).
    pub fn tree(&self) -> Option<OperationNode> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .root
            .clone()
    }
}

impl Observer for OperationLog {
    fn on_event(&self, event: &Event<'_>) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            Event::ExecutionStarted { root } => {
                let mut paths = HashMap::new();
                g.root = Some(skeleton(root, Vec::new(), &mut paths));
                g.paths = paths;
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
            Event::StepStarted { op, index, .. } => {
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
                ..
            } => {
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

//! Records an execution's events in the state database as they happen, so a process killed at
//! any moment leaves a true record (and the next open marks what was running as interrupted).

use std::sync::{Arc, Mutex};

use rusqlite::params;

use crate::execute::{Event, Observer, Status};

use super::{ExecutionId, State, StateError, now};

pub struct Recorder {
    state: Arc<State>,
    id: ExecutionId,
    /// The first write that failed; the execution goes on, the caller learns of it in `finish`.
    error: Mutex<Option<StateError>>,
}

impl Recorder {
    pub(super) fn new(state: Arc<State>, id: ExecutionId) -> Self {
        Self {
            state,
            id,
            error: Mutex::new(None),
        }
    }

    pub fn execution(&self) -> ExecutionId {
        self.id
    }

    /// The first error met while recording, if any.
    pub fn finish(&self) -> Result<(), StateError> {
        match self.error.lock().unwrap().take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn record(&self, event: &Event<'_>) -> Result<(), StateError> {
        let id = self.id.0;
        self.state.with_conn(|conn| {
            match event {
                Event::ExecutionStarted { .. } | Event::StepOutput { .. } => {}
                Event::OperationStarted { op } => {
                    conn.execute(
                        "UPDATE operations SET status = 'running', started_at = ?3
                         WHERE execution_id = ?1 AND op_id = ?2",
                        params![id, op.id, now()],
                    )?;
                }
                Event::OperationFinished {
                    op,
                    status,
                    error,
                    duration,
                } => {
                    conn.execute(
                        "UPDATE operations SET status = ?3, error = ?4, finished_at = ?5, duration_ms = ?6
                         WHERE execution_id = ?1 AND op_id = ?2",
                        params![
                            id,
                            op.id,
                            status.as_str(),
                            error,
                            now(),
                            duration.as_millis() as i64
                        ],
                    )?;
                }
                Event::StepStarted {
                    op, index, attempt, ..
                } => {
                    conn.execute(
                        "UPDATE steps SET status = 'running', attempts = ?4, started_at = ?5,
                                          exit_code = NULL, error = NULL, finished_at = NULL
                         WHERE execution_id = ?1 AND op_id = ?2 AND position = ?3",
                        params![id, op.id, *index as i64, attempt, now()],
                    )?;
                }
                Event::StepFinished {
                    op,
                    index,
                    status,
                    exit_code,
                    error,
                    retry_in,
                    duration,
                    output,
                    ..
                } => {
                    let tx = conn.transaction()?;
                    // A failed attempt that will be retried keeps the step running.
                    let status = if retry_in.is_some() {
                        Status::Running
                    } else {
                        *status
                    };
                    tx.execute(
                        "UPDATE steps SET status = ?4, exit_code = ?5, error = ?6, finished_at = ?7,
                                          duration_ms = ?8
                         WHERE execution_id = ?1 AND op_id = ?2 AND position = ?3",
                        params![
                            id,
                            op.id,
                            *index as i64,
                            status.as_str(),
                            exit_code,
                            error,
                            now(),
                            duration.as_millis() as i64
                        ],
                    )?;
                    tx.execute(
                        "INSERT INTO step_output (execution_id, op_id, position, head, tail, total_bytes)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                         ON CONFLICT (execution_id, op_id, position) DO UPDATE SET
                           head = excluded.head, tail = excluded.tail, total_bytes = excluded.total_bytes",
                        params![
                            id,
                            op.id,
                            *index as i64,
                            output.head,
                            output.tail,
                            output.total_bytes as i64
                        ],
                    )?;
                    tx.commit()?;
                }
                Event::StepSkipped {
                    op, index, status, ..
                } => {
                    conn.execute(
                        "UPDATE steps SET status = ?4
                         WHERE execution_id = ?1 AND op_id = ?2 AND position = ?3",
                        params![id, op.id, *index as i64, status.as_str()],
                    )?;
                }
                Event::ExecutionFinished { status } => {
                    conn.execute(
                        "UPDATE executions SET status = ?2, finished_at = ?3 WHERE id = ?1",
                        params![id, status.as_str(), now()],
                    )?;
                }
            }
            Ok(())
        })
    }
}

impl Observer for Recorder {
    fn on_event(&self, event: &Event<'_>) {
        if let Err(e) = self.record(event) {
            tracing::error!(execution = self.id.0, "recording in the state failed: {e}");
            let mut first = self.error.lock().unwrap();
            if first.is_none() {
                *first = Some(e);
            }
        }
    }
}

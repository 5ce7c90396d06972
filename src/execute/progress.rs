//! Live progress of a run for a person watching it (`keystone apply`): one line per finished
//! step always, and on a terminal a progress bar per running operation below those lines.
//!
//! The lines are the log (they survive a pipe or a CI log); the bars only show what is running
//! now and vanish when their operation ends. Step output shown here is the executor's, already
//! redacted.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::events::{Event, Observer};

/// How many lines of a failed step's output are shown under it.
const FAILED_OUTPUT_LINES: usize = 20;

/// The [`Observer`] that prints a run's progress.
pub struct Progress {
    /// `None`: plain lines only (not a terminal).
    bars: Option<Bars>,
    /// Where plain lines go when there are no bars (tests capture them; stdout otherwise).
    plain: Box<dyn Fn(&str) + Send + Sync>,
}

struct Bars {
    multi: MultiProgress,
    /// By operation id.
    running: Mutex<HashMap<String, ProgressBar>>,
}

impl Progress {
    /// Lines on stdout; bars too when stdout is a terminal.
    pub fn stdout() -> Self {
        if std::io::stdout().is_terminal() {
            Self::with_bars(ProgressDrawTarget::stdout())
        } else {
            Self::lines(|line| println!("{line}"))
        }
    }

    /// Plain lines only, each given to `sink`.
    pub fn lines(sink: impl Fn(&str) + Send + Sync + 'static) -> Self {
        Progress {
            bars: None,
            plain: Box::new(sink),
        }
    }

    /// Bars drawn to `target`, with the lines printed above them.
    pub fn with_bars(target: ProgressDrawTarget) -> Self {
        Progress {
            bars: Some(Bars {
                multi: MultiProgress::with_draw_target(target),
                running: Mutex::new(HashMap::new()),
            }),
            plain: Box::new(|_| {}),
        }
    }

    fn print(&self, line: &str) {
        match &self.bars {
            // Above the bars, which are redrawn below it.
            Some(bars) => {
                let _ = bars.multi.println(line);
            }
            None => (self.plain)(line),
        }
    }

    fn bar(&self, op_id: &str, f: impl FnOnce(&ProgressBar)) {
        if let Some(bars) = &self.bars {
            let running = bars.running.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(bar) = running.get(op_id) {
                f(bar);
            }
        }
    }
}

/// `<op id> [#####     ] 2/5 <current step>` with a spinner while it runs.
fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {prefix} [{bar:20}] {pos}/{len} {wide_msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("#> ")
}

impl Observer for Progress {
    fn on_event(&self, event: &Event<'_>) {
        match event {
            Event::OperationStarted { op } if !op.steps.is_empty() => {
                if let Some(bars) = &self.bars {
                    let bar = bars
                        .multi
                        .add(ProgressBar::new(op.steps.len() as u64))
                        .with_style(bar_style())
                        .with_prefix(op.id.clone());
                    bar.enable_steady_tick(Duration::from_millis(120));
                    bars.running
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(op.id.clone(), bar);
                }
            }
            Event::StepStarted { op, step, .. } => {
                self.bar(&op.id, |bar| bar.set_message(step.name.clone()));
            }
            Event::StepFinished {
                op,
                step,
                status,
                error,
                duration,
                output,
                retry_in,
                ..
            } => {
                let d = super::human(*duration);
                let mut lines = vec![format!("{status:>9} {} · {} ({d})", op.id, step.name)];
                if error.is_some() || retry_in.is_some() {
                    if let Some(e) = error {
                        lines.push(format!("          {e}"));
                    }
                    let text = output.text();
                    let tail: Vec<&str> = text.lines().rev().take(FAILED_OUTPUT_LINES).collect();
                    lines.extend(tail.into_iter().rev().map(|l| format!("          | {l}")));
                }
                self.print(&lines.join("\n"));
                if retry_in.is_none() {
                    self.bar(&op.id, |bar| bar.inc(1));
                }
            }
            Event::StepSkipped {
                op, step, status, ..
            } => {
                self.print(&format!("{status:>9} {} · {}", op.id, step.name));
                self.bar(&op.id, |bar| bar.inc(1));
            }
            Event::OperationFinished { op, .. } => {
                if let Some(bars) = &self.bars {
                    let bar = bars
                        .running
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&op.id);
                    if let Some(bar) = bar {
                        bar.finish_and_clear();
                        bars.multi.remove(&bar);
                    }
                }
            }
            _ => {}
        }
    }
}

//! The I/O of a probe round: one bounded command per server over its transport (the multiplexed
//! ssh connection), all servers at once, each with its own deadline so a dead host never delays
//! the others.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::execute::{Output, Redactor, Transport, human};
use crate::plan::Target;

use super::assess::ServerProbe;
use super::probe::{parse, probe_script};

/// What the probe output may hold at most (40 containers take ~25 KiB).
const KEEP: usize = 4 << 20;

/// Runs probe rounds over a transport.
pub struct Prober {
    transport: Arc<dyn Transport>,
    redactor: Redactor,
}

/// One round's results and how long it took.
#[derive(Debug)]
pub struct Round {
    pub servers: BTreeMap<String, ServerProbe>,
    pub took: Duration,
}

impl Prober {
    pub fn new(transport: Arc<dyn Transport>, redactor: Redactor) -> Self {
        Prober {
            transport,
            redactor,
        }
    }

    /// Probe every server in `servers` at once, hashing `files[server]` there. A server that does
    /// not answer within `timeout` is reported unreachable and its cached connection dropped, so
    /// the next round connects afresh.
    pub async fn round(
        &self,
        servers: &[String],
        files: &BTreeMap<String, Vec<String>>,
        timeout: Duration,
    ) -> Round {
        let started = Instant::now();
        let probes = servers.iter().map(|name| async move {
            let none = Vec::new();
            let script = probe_script(files.get(name).unwrap_or(&none));
            (name.clone(), self.one(name, &script, timeout).await)
        });
        let servers = futures::future::join_all(probes)
            .await
            .into_iter()
            .collect();
        Round {
            servers,
            took: started.elapsed(),
        }
    }

    async fn one(&self, name: &str, script: &str, timeout: Duration) -> ServerProbe {
        let target = Target::Server(name.to_string());
        let mut out = Output::with_keep(self.redactor.clone(), KEEP, |_, _| {});
        let ran = tokio::time::timeout(
            timeout,
            self.transport.run(&target, script, None, timeout, &mut out),
        )
        .await;
        match ran {
            Err(_) => {
                self.transport.reset(&target);
                Err(format!("no answer within {}", human(timeout)))
            }
            Ok(Err(e)) => {
                self.transport.reset(&target);
                Err(e.to_string())
            }
            Ok(Ok(code)) => {
                out.finish();
                if code != Some(0) {
                    let why = out
                        .last_stderr_line
                        .clone()
                        .unwrap_or_else(|| "no output".into());
                    return Err(match code {
                        Some(c) => format!("the probe exited {c}: {why}"),
                        None => format!("the probe was killed: {why}"),
                    });
                }
                parse(&out.stdout.text()).map_err(|e| e.to_string())
            }
        }
    }
}

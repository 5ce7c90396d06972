//! Prometheus text exposition (format 0.0.4), written by hand: a few counters, gauges and one
//! histogram do not need a metrics crate.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use crate::status::{Health, SyncState};

/// Upper bounds (seconds) of the reconcile duration histogram.
const BUCKETS: [f64; 9] = [1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0];

#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// (environment, outcome) → count.
    reconciles: BTreeMap<(String, String), u64>,
    /// environment → histogram.
    durations: BTreeMap<String, Histogram>,
    /// environment → unix seconds of the last successful reconcile.
    last_success: BTreeMap<String, i64>,
    queue_depth: u64,
    /// (forge, result) → count.
    webhooks: BTreeMap<(String, String), u64>,
    /// result → count.
    status_writes: BTreeMap<String, u64>,
    /// Commit + push time of the status writes that made a commit: (count, sum, max) seconds.
    status_commit_seconds: (u64, f64, f64),
    fetches: BTreeMap<String, u64>,
    health: BTreeMap<String, (Health, SyncState)>,
    probe_rounds: u64,
    /// Changes (status lines) found by probe rounds.
    probe_changes: u64,
    last_probe_seconds: Option<f64>,
    servers_reachable: BTreeMap<String, bool>,
}

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    /// One reconcile of `environment` ended with `outcome` (`succeeded`, `failed`, `blocked`).
    pub fn reconcile(&self, environment: &str, outcome: &str, seconds: f64, now_unix: i64) {
        self.with(|m| {
            *m.reconciles
                .entry((environment.to_string(), outcome.to_string()))
                .or_default() += 1;
            let h = m.durations.entry(environment.to_string()).or_default();
            h.count += 1;
            h.sum += seconds;
            for (i, b) in BUCKETS.iter().enumerate() {
                if seconds <= *b {
                    h.counts[i] += 1;
                }
            }
            if outcome == "succeeded" {
                m.last_success.insert(environment.to_string(), now_unix);
            }
        })
    }

    pub fn set_queue_depth(&self, depth: u64) {
        self.with(|m| m.queue_depth = depth)
    }

    pub fn webhook(&self, forge: &str, result: &str) {
        self.with(|m| {
            *m.webhooks
                .entry((forge.to_string(), result.to_string()))
                .or_default() += 1
        })
    }

    pub fn status_write(&self, result: &str) {
        self.with(|m| *m.status_writes.entry(result.to_string()).or_default() += 1)
    }

    /// A status write that made a commit took `seconds` (commit and push).
    pub fn status_commit(&self, seconds: f64) {
        self.with(|m| {
            let (n, sum, max) = &mut m.status_commit_seconds;
            *n += 1;
            *sum += seconds;
            *max = max.max(seconds);
        })
    }

    pub fn fetch(&self, result: &str) {
        self.with(|m| *m.fetches.entry(result.to_string()).or_default() += 1)
    }

    pub fn environment_state(&self, environment: &str, health: Health, sync: SyncState) {
        self.with(|m| {
            m.health.insert(environment.to_string(), (health, sync));
        })
    }

    /// A health probe round ended: how long it took and how many state changes it found.
    pub fn probe_round(&self, seconds: f64, changes: u64) {
        self.with(|m| {
            m.probe_rounds += 1;
            m.probe_changes += changes;
            m.last_probe_seconds = Some(seconds);
        })
    }

    pub fn server_reachable(&self, server: &str, reachable: bool) {
        self.with(|m| {
            m.servers_reachable.insert(server.to_string(), reachable);
        })
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        self.with(|m| {
            let mut o = String::new();
            header(&mut o, "keystone_reconcile_total", "counter", "Reconciles by environment and outcome.");
            for ((env, outcome), n) in &m.reconciles {
                let _ = writeln!(
                    o,
                    "keystone_reconcile_total{{environment=\"{}\",outcome=\"{}\"}} {n}",
                    label(env),
                    label(outcome)
                );
            }
            header(
                &mut o,
                "keystone_reconcile_duration_seconds",
                "histogram",
                "Duration of reconciles by environment.",
            );
            for (env, h) in &m.durations {
                let env = label(env);
                for (i, b) in BUCKETS.iter().enumerate() {
                    let _ = writeln!(
                        o,
                        "keystone_reconcile_duration_seconds_bucket{{environment=\"{env}\",le=\"{b}\"}} {}",
                        h.counts[i]
                    );
                }
                let _ = writeln!(
                    o,
                    "keystone_reconcile_duration_seconds_bucket{{environment=\"{env}\",le=\"+Inf\"}} {}",
                    h.count
                );
                let _ = writeln!(
                    o,
                    "keystone_reconcile_duration_seconds_sum{{environment=\"{env}\"}} {}",
                    h.sum
                );
                let _ = writeln!(
                    o,
                    "keystone_reconcile_duration_seconds_count{{environment=\"{env}\"}} {}",
                    h.count
                );
            }
            header(
                &mut o,
                "keystone_last_success_timestamp_seconds",
                "gauge",
                "Unix time of the last successful reconcile by environment.",
            );
            for (env, t) in &m.last_success {
                let _ = writeln!(
                    o,
                    "keystone_last_success_timestamp_seconds{{environment=\"{}\"}} {t}",
                    label(env)
                );
            }
            header(&mut o, "keystone_queue_depth", "gauge", "Environments waiting for a reconcile.");
            let _ = writeln!(o, "keystone_queue_depth {}", m.queue_depth);
            header(&mut o, "keystone_webhook_deliveries_total", "counter", "Webhook deliveries by forge and result.");
            for ((forge, result), n) in &m.webhooks {
                let _ = writeln!(
                    o,
                    "keystone_webhook_deliveries_total{{forge=\"{}\",result=\"{}\"}} {n}",
                    label(forge),
                    label(result)
                );
            }
            header(&mut o, "keystone_fetches_total", "counter", "Fetches of the config repository by result.");
            for (result, n) in &m.fetches {
                let _ = writeln!(o, "keystone_fetches_total{{result=\"{}\"}} {n}", label(result));
            }
            header(&mut o, "keystone_status_writes_total", "counter", "Status branch writes by result.");
            for (result, n) in &m.status_writes {
                let _ = writeln!(o, "keystone_status_writes_total{{result=\"{}\"}} {n}", label(result));
            }
            header(
                &mut o,
                "keystone_status_commit_seconds",
                "summary",
                "Commit + push time of status branch writes that made a commit.",
            );
            let (n, sum, max) = m.status_commit_seconds;
            let _ = writeln!(o, "keystone_status_commit_seconds_sum {sum}");
            let _ = writeln!(o, "keystone_status_commit_seconds_count {n}");
            header(&mut o, "keystone_status_commit_seconds_max", "gauge", "Longest status commit + push.");
            let _ = writeln!(o, "keystone_status_commit_seconds_max {max}");
            header(
                &mut o,
                "keystone_environment_health",
                "gauge",
                "1 for the current health of each environment, 0 for the others.",
            );
            for (env, (health, _)) in &m.health {
                for h in [Health::Healthy, Health::Progressing, Health::Degraded, Health::Missing, Health::Unknown] {
                    let _ = writeln!(
                        o,
                        "keystone_environment_health{{environment=\"{}\",health=\"{h}\"}} {}",
                        label(env),
                        u8::from(*health == h)
                    );
                }
            }
            header(
                &mut o,
                "keystone_environment_sync",
                "gauge",
                "1 for the current sync state of each environment, 0 for the others.",
            );
            for (env, (_, sync)) in &m.health {
                for s in [SyncState::Synced, SyncState::OutOfSync, SyncState::Unknown] {
                    let _ = writeln!(
                        o,
                        "keystone_environment_sync{{environment=\"{}\",sync=\"{s}\"}} {}",
                        label(env),
                        u8::from(*sync == s)
                    );
                }
            }
            header(&mut o, "keystone_probe_rounds_total", "counter", "Health probe rounds.");
            let _ = writeln!(o, "keystone_probe_rounds_total {}", m.probe_rounds);
            header(
                &mut o,
                "keystone_probe_changes_total",
                "counter",
                "State changes found by health probe rounds.",
            );
            let _ = writeln!(o, "keystone_probe_changes_total {}", m.probe_changes);
            if let Some(s) = m.last_probe_seconds {
                header(
                    &mut o,
                    "keystone_probe_duration_seconds",
                    "gauge",
                    "Wall time of the last health probe round (all servers in parallel).",
                );
                let _ = writeln!(o, "keystone_probe_duration_seconds {s}");
            }
            header(
                &mut o,
                "keystone_server_reachable",
                "gauge",
                "1 when the server answered the last health probe.",
            );
            for (server, r) in &m.servers_reachable {
                let _ = writeln!(
                    o,
                    "keystone_server_reachable{{server=\"{}\"}} {}",
                    label(server),
                    u8::from(*r)
                );
            }
            o
        })
    }
}

fn header(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} {kind}");
}

/// Escape a label value (backslash, quote, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_text() {
        let m = Metrics::default();
        m.reconcile("shop/production", "succeeded", 12.5, 1_796_319_725);
        m.reconcile("shop/production", "failed", 0.5, 1_796_319_800);
        m.set_queue_depth(3);
        m.environment_state("shop/production", Health::Degraded, SyncState::Synced);
        m.probe_round(0.25, 2);
        m.server_reachable("web-2", false);
        let text = m.render();
        for line in [
            "keystone_reconcile_total{environment=\"shop/production\",outcome=\"failed\"} 1",
            "keystone_reconcile_total{environment=\"shop/production\",outcome=\"succeeded\"} 1",
            "keystone_reconcile_duration_seconds_bucket{environment=\"shop/production\",le=\"1\"} 1",
            "keystone_reconcile_duration_seconds_bucket{environment=\"shop/production\",le=\"15\"} 2",
            "keystone_reconcile_duration_seconds_bucket{environment=\"shop/production\",le=\"+Inf\"} 2",
            "keystone_reconcile_duration_seconds_sum{environment=\"shop/production\"} 13",
            "keystone_reconcile_duration_seconds_count{environment=\"shop/production\"} 2",
            "keystone_last_success_timestamp_seconds{environment=\"shop/production\"} 1796319725",
            "keystone_queue_depth 3",
            "keystone_environment_health{environment=\"shop/production\",health=\"degraded\"} 1",
            "keystone_environment_health{environment=\"shop/production\",health=\"healthy\"} 0",
            "keystone_environment_sync{environment=\"shop/production\",sync=\"synced\"} 1",
            "keystone_probe_rounds_total 1",
            "keystone_probe_changes_total 2",
            "keystone_probe_duration_seconds 0.25",
            "keystone_server_reachable{server=\"web-2\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}

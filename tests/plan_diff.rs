//! `plan::diff` on a small synthetic repository (config::synthetic, the plan_diff bench's
//! generator at 24 environments): a one-line change (one more replica) gives exactly the
//! golden markdown, and planning is deterministic although environments plan on several
//! threads (same plan every run, environments in `app/env` order).

mod plan_common;

use keystone::config;
use keystone::plan::{self, Desired, EnvironmentStatus, PlanContext};

fn ctx(commit: &str) -> PlanContext {
    PlanContext {
        config_commit: commit.into(),
        operation_prefix: format!("test-{commit}"),
        ..Default::default()
    }
}

#[test]
fn a_one_line_change_of_a_synthetic_repository() {
    let dir = tempfile::tempdir().unwrap();
    config::synthetic::write_repo(dir.path(), 24, 3).unwrap();
    let base = config::load_dir(dir.path()).unwrap();
    assert!(base.diagnostics.is_empty(), "{}", base.render_diagnostics());

    let file = dir
        .path()
        .join("applications/app-0001/environments/env-03.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    let changed = text.replacen("replicas: 2", "replicas: 3", 1);
    assert_ne!(text, changed);
    std::fs::write(&file, changed).unwrap();
    let head = config::load_dir(dir.path()).unwrap();
    assert!(head.diagnostics.is_empty(), "{}", head.render_diagnostics());

    let run = || {
        plan::diff(
            Desired::valid(&base.model),
            &ctx("a1b2c3d"),
            Desired::valid(&head.model),
            &ctx("e4f5a6b"),
            &Default::default(),
        )
    };
    let p = run();
    let keys: Vec<String> = p.environments.iter().map(|e| e.key()).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    assert_eq!(keys.len(), 24);
    let changed: Vec<&str> = p
        .environments
        .iter()
        .filter(|e| e.status != EnvironmentStatus::Unchanged)
        .map(|e| e.env.as_str())
        .collect();
    assert_eq!(changed, ["env-03"]);
    assert_eq!(
        p.environment("app-0001", "env-03").unwrap().summary,
        "1 replica added, no build"
    );
    for _ in 0..3 {
        assert_eq!(run(), p);
    }
    let md = plan::output::markdown(&p, 7);
    assert!(md.len() < 2048, "{} bytes", md.len());
    plan_common::golden("synthetic-one-line.md", &md);
}

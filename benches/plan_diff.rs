//! Plan and diff two commits of a 1,000-environment repository (5 services each): prints the
//! time of `plan::diff` (plan base, project it, plan head) and the markdown size of a one-line
//! change. Targets: under 500 ms together; the comment under 2 KB.
//!
//! The repository is the example model with 1,000 environments (until the config helper's
//! synthetic generator is on main, it is built here in code).

#[path = "../tests/plan_common/mod.rs"]
mod plan_common;

use std::time::Instant;

use keystone::model::{MigrationMode, Placement, ProcessRole};
use keystone::plan::{self, Desired};

fn big_model(envs: usize) -> keystone::model::Model {
    let mut m = plan_common::example();
    for s in m.services.values_mut() {
        s.databases = Some(2048);
    }
    let app = m.applications.get_mut("shop").unwrap();
    let template = app.environments["production"].clone();
    app.environments.clear();
    for i in 0..envs {
        let name = format!("env-{i:04}");
        let mut e = template.clone();
        e.name = name.clone();
        e.origin.file = format!("applications/shop/environments/{name}.yaml");
        for a in &mut e.attachments {
            a.domains = vec![format!("{name}.shop.lab.test")];
        }
        for k in 0..3 {
            let n = format!("svc{k}");
            let mut s = plan_common::app_service(
                &e.origin.file,
                &n,
                vec![ProcessRole::Worker],
                1,
                &["web-2"],
                Placement::Servers(vec!["web-2".into()]),
                MigrationMode::Disabled,
            );
            s.name = n.clone();
            e.services.insert(n, s);
        }
        app.environments.insert(name, e);
    }
    m
}

fn main() {
    let base = big_model(1000);
    let mut head = base.clone();
    let e = head
        .applications
        .get_mut("shop")
        .unwrap()
        .environments
        .get_mut("env-0500")
        .unwrap();
    e.services.get_mut("web").unwrap().replicas = 3;
    let mut base_ctx = plan_common::ctx("a1b2c3d");
    let mut head_ctx = plan_common::ctx("e4f5a6b");
    let commit = base_ctx.source_commits["shop/production"].clone();
    for i in 0..1000 {
        base_ctx
            .source_commits
            .insert(format!("shop/env-{i:04}"), commit.clone());
        head_ctx
            .source_commits
            .insert(format!("shop/env-{i:04}"), commit.clone());
    }
    let services: usize = base
        .applications
        .values()
        .flat_map(|a| a.environments.values())
        .map(|e| e.services.len())
        .sum();
    println!("repository: 1000 environments, {services} app services");

    let t = Instant::now();
    let _ = keystone::drivers::laravel::allocate_host_ports(&base, &Default::default());
    println!(
        "of which drivers' host-port allocation of a first deploy: {:.1} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    let mut best = f64::MAX;
    let mut comment = String::new();
    for _ in 0..5 {
        let t = Instant::now();
        let p = plan::diff(
            Desired::valid(&base),
            &base_ctx,
            Desired::valid(&head),
            &head_ctx,
            &Default::default(),
        );
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        best = best.min(ms);
        comment = plan::output::markdown(&p, 1);
    }
    println!("plan + diff of two commits: {best:.1} ms (best of 5; target < 500 ms)");
    println!(
        "markdown of a one-line change: {} bytes (target < 2048)",
        comment.len()
    );
}

//! Structural properties of plans: nesting, order of cutover and migrations, pulls by digest,
//! local builds, blockers scoped to one environment, purity.

mod plan_common;

use keystone::model::{BuildStrategy, MigrationMode, MigrationTiming, Placement};
use keystone::plan::{self, Desired, Operation, OperationKind, Request, StepAction, Target};
use plan_common::*;

fn env_op<'a>(p: &'a plan::Plan, env: &str) -> &'a Operation {
    p.environment("shop", env)
        .unwrap()
        .operation
        .as_ref()
        .unwrap()
}

fn scripts(op: &Operation) -> Vec<(String, Target, String)> {
    op.walk()
        .into_iter()
        .flat_map(|o| o.steps.iter())
        .filter_map(|s| match &s.action {
            StepAction::Run { script, .. } => {
                Some((s.name.clone(), s.target.clone(), script.clone()))
            }
            _ => None,
        })
        .collect()
}

fn first_deploy(m: &keystone::model::Model) -> plan::Plan {
    plan::plan(Desired::valid(m), &Default::default(), &ctx("a1b2c3d"))
}

#[test]
fn replica_deploys_nest_under_their_service_deploy() {
    let p = first_deploy(&example());
    let root = env_op(&p, "production");
    assert_eq!(root.kind, OperationKind::EnvironmentDeploy);
    for child in &root.children {
        assert_ne!(
            child.kind,
            OperationKind::ReplicaDeploy,
            "replica at top level: {}",
            child.title
        );
    }
    let web = root
        .children
        .iter()
        .find(|c| c.title == "service_deploy web")
        .unwrap();
    let replicas: Vec<_> = web
        .children
        .iter()
        .filter(|c| c.kind == OperationKind::ReplicaDeploy)
        .map(|c| (c.title.as_str(), c.server.as_deref()))
        .collect();
    assert_eq!(
        replicas,
        [
            ("replica_deploy web#1 @web-1   new", Some("web-1")),
            ("replica_deploy web#2 @web-2   new", Some("web-2")),
        ]
    );
    assert_eq!(web.children_mode, plan::Children::ParallelByServer);
}

#[test]
fn cutover_comes_after_every_service_deploy_and_pre_switch_migration_before_replicas() {
    let p = first_deploy(&example());
    let root = env_op(&p, "production");
    let kinds: Vec<_> = root.children.iter().map(|c| c.kind).collect();
    let cut = kinds
        .iter()
        .position(|k| *k == OperationKind::GatewayCutover)
        .unwrap();
    let last_service = kinds
        .iter()
        .rposition(|k| *k == OperationKind::ServiceDeploy)
        .unwrap();
    let build = kinds
        .iter()
        .position(|k| *k == OperationKind::Build)
        .unwrap();
    assert_eq!(build, 0, "{kinds:?}");
    assert!(cut > last_service, "{kinds:?}");
    let web = &root.children[kinds
        .iter()
        .position(|k| *k == OperationKind::ServiceDeploy)
        .unwrap()];
    assert_eq!(web.children[0].kind, OperationKind::Migration);
    assert!(
        web.children[1..]
            .iter()
            .all(|c| c.kind == OperationKind::ReplicaDeploy)
    );
    // The migration is a one-off container of the rendered first replica (drivers' script).
    let (_, target, script) = &scripts(&web.children[0])
        .into_iter()
        .find(|(n, _, _)| n == "migrate")
        .unwrap();
    assert_eq!(target, &Target::Server("web-1".into()));
    assert_eq!(
        script,
        "set -eu\ncd /home/keystone/services/shop_production_web-1-blue && docker compose --project-directory /home/keystone/services/shop_production_web-1-blue -p keystone-shop_production_web-1-blue -f compose.yml --env-file /dev/null run --rm --no-deps -T web sh -c 'php artisan migrate --force'\n"
    );
}

#[test]
fn post_switch_migration_follows_the_cutover() {
    let mut m = example();
    env_mut(&mut m, "production")
        .services
        .get_mut("web")
        .unwrap()
        .migrations
        .timing = MigrationTiming::PostSwitch;
    let p = first_deploy(&m);
    let root = env_op(&p, "production");
    let kinds: Vec<_> = root.children.iter().map(|c| c.kind).collect();
    assert_eq!(kinds.last(), Some(&OperationKind::Migration), "{kinds:?}");
    assert_eq!(kinds[kinds.len() - 2], OperationKind::GatewayCutover);
    assert!(
        root.walk()
            .iter()
            .filter(|o| o.kind == OperationKind::Migration)
            .count()
            == 1
    );
    let (_, _, s) = &scripts(root.children.last().unwrap())[0];
    assert_eq!(
        s,
        "set -eu\ndocker exec keystone-shop_production_web-1-blue sh -c 'php artisan migrate --force'\n"
    );
}

#[test]
fn manual_migrations_run_only_on_request() {
    let mut m = example();
    env_mut(&mut m, "production")
        .services
        .get_mut("web")
        .unwrap()
        .migrations
        .mode = MigrationMode::Manual;
    let p = first_deploy(&m);
    assert!(
        !env_op(&p, "production")
            .walk()
            .iter()
            .any(|o| o.kind == OperationKind::Migration)
    );

    let applied = deployed(&m);
    let mut c = ctx("e4f5a6b");
    c.request = Request::Migrate {
        app: "shop".into(),
        env: "production".into(),
    };
    let p = plan::plan(Desired::valid(&m), &applied, &c);
    assert_eq!(p.environments.len(), 1);
    assert!(p.services.is_empty());
    let root = env_op(&p, "production");
    assert_eq!(root.kind, OperationKind::Migration);
    assert_eq!(
        root.children.len(),
        1,
        "only web migrates (worker is disabled)"
    );
    let (_, t, s) = &scripts(root)[0];
    assert_eq!(t, &Target::Server("web-1".into()));
    assert_eq!(
        s,
        "set -eu\ndocker exec keystone-shop_production_web-1-blue sh -c 'php artisan migrate --force'\n"
    );

    env_mut(&mut m, "production")
        .services
        .get_mut("web")
        .unwrap()
        .migrations
        .mode = MigrationMode::Disabled;
    let p = plan::plan(Desired::valid(&m), &applied, &c);
    assert_eq!(p.environments[0].blockers[0].code, "migrations-disabled");
}

#[test]
fn a_heal_replaces_only_the_drifted_replicas_and_touches_no_shared_service() {
    let m = example();
    let applied = deployed(&m);
    // Nothing changed: a deploy plans nothing for production.
    let p = plan::plan(Desired::valid(&m), &applied, &ctx("a1b2c3d"));
    assert!(
        p.environment("shop", "production")
            .unwrap()
            .operation
            .is_none()
    );

    let mut c = ctx("a1b2c3d");
    c.request = Request::Heal {
        app: "shop".into(),
        env: "production".into(),
        replicas: [("web#2".to_string(), "container exited (137)".to_string())].into(),
    };
    let p = plan::plan(Desired::valid(&m), &applied, &c);
    assert_eq!(p.environments.len(), 1, "only the healed environment");
    assert!(p.services.is_empty(), "no shared service is touched");
    let root = env_op(&p, "production");
    let titles: Vec<&str> = root.walk().iter().map(|o| o.title.as_str()).collect();
    assert!(
        titles.contains(&"replica_deploy web#2 @web-2   replace (drifted: container exited (137))"),
        "{titles:#?}"
    );
    for o in root.walk() {
        assert!(
            !matches!(
                o.kind,
                OperationKind::Build | OperationKind::Migration | OperationKind::SliceProvision
            ),
            "{:?} in a heal: {}",
            o.kind,
            o.title
        );
        assert!(
            !o.title.contains("web#1") && !o.title.contains("worker#1"),
            "{}",
            o.title
        );
    }
    // The new slot starts from the applied digest, and the gateway switches to it.
    let after = &p.environment("shop", "production").unwrap().applied_after;
    let web = &after.as_ref().unwrap().services["web"];
    let old = &applied.environments["shop/production"].services["web"];
    assert_eq!(web.replicas[0], old.replicas[0], "web#1 stays as it was");
    assert_eq!(web.replicas[1].digest, DIGEST);
    assert_ne!(web.replicas[1].slot, old.replicas[1].slot);
    assert!(
        root.children
            .iter()
            .any(|c| c.kind == OperationKind::GatewayCutover)
    );
}

#[test]
fn multi_server_replicas_pull_by_digest_before_start() {
    let p = first_deploy(&example());
    let root = env_op(&p, "production");
    for r in root
        .walk()
        .into_iter()
        .filter(|o| o.kind == OperationKind::ReplicaDeploy)
    {
        let names: Vec<&str> = r.steps.iter().map(|s| s.name.as_str()).collect();
        let mut expected = vec![
            "upload compose.yml",
            "upload .env",
            "pull image by digest",
            "start",
            "wait healthy",
        ];
        // Web replicas are also probed on their health path through their host port.
        if r.title.starts_with("replica_deploy web#") {
            expected.push("probe /up");
        }
        assert_eq!(names, expected, "{}", r.title);
        let StepAction::Run { script, stdin } = &r.steps[2].action else {
            panic!()
        };
        assert!(
            script.contains("\nexec 3>&1\nif ! docker_said=$(docker pull --quiet '10.77.0.1:5000/acme/shop@{{digest:shop}}' 2>&1 >&3); then\n"),
            "{script}"
        );
        // A new replica that does not start or become healthy is removed again (its own
        // project, never the one it replaces); uploads and the pull leave nothing running.
        let container = r.steps[3..]
            .iter()
            .find_map(|s| match &s.action {
                StepAction::Run { script, .. } if s.name == "wait healthy" => script
                    .lines()
                    .find_map(|l| l.strip_prefix("container="))
                    .map(str::to_string),
                _ => None,
            })
            .expect("wait healthy names the container");
        for s in &r.steps {
            match s.name.as_str() {
                "start" | "wait healthy" | "probe /up" => {
                    let clean_up = s
                        .on_failure
                        .as_deref()
                        .unwrap_or_else(|| panic!("{}: no on_failure", s.name));
                    assert!(clean_up.contains(" down --remove-orphans"), "{clean_up}");
                    assert!(
                        clean_up.ends_with(&format!("echo 'stopped and removed '{container}\n"))
                            || clean_up
                                .ends_with(&format!("echo 'stopped and removed {container}'\n")),
                        "{clean_up}"
                    );
                }
                _ => assert_eq!(s.on_failure, None, "{}", s.name),
            }
        }
        assert_eq!(r.steps[2].target, Target::Server(r.server.clone().unwrap()));
        assert_eq!(
            stdin.as_ref().unwrap().bytes,
            b"deploy\n{{secret:registry.password}}\n"
        );
        let StepAction::Upload { path, mode, .. } = &r.steps[1].action else {
            panic!()
        };
        assert_eq!(*mode, 0o600);
        assert!(path.ends_with("/.env"));
    }
    // The build pushes and captures the digest on the builder; the key is an upload, removed by the trap.
    let build = &root.children[0];
    assert_eq!(build.server.as_deref(), Some("build-1"));
    let StepAction::Upload {
        path,
        mode,
        contents,
    } = &build.steps[0].action
    else {
        panic!()
    };
    assert_eq!(
        (path.as_str(), *mode),
        (
            "/home/keystone/operations/op-a1b2c3d-shop-production/deploy_key",
            0o600
        )
    );
    assert_eq!(contents.bytes, b"{{secret:shop.deploy_key}}\n");
    assert_eq!(build.steps[1].capture.as_deref(), Some("digest:shop"));
    let StepAction::Run { script, .. } = &build.steps[1].action else {
        panic!()
    };
    assert!(script.starts_with("set -eu\nop_dir=/home/keystone/operations/op-a1b2c3d-shop-production\ntrap 'rm -rf -- \"$op_dir\"' EXIT\n"), "{script}");
    assert!(script.contains("docker push \"$image:$commit\""));
    assert!(script.contains("revision=9f8e7d6c5b4a39281706f5e4d3c2b1a098765432\n"));
}

#[test]
fn single_server_local_build_does_not_push_or_pull() {
    let mut m = example();
    let app = m.applications.get_mut("shop").unwrap();
    app.build.strategy = BuildStrategy::Local;
    app.build.registry = None;
    app.environments.remove("production");
    let p = first_deploy(&m);
    let root = env_op(&p, "staging");
    let build = &root.children[0];
    assert_eq!(build.server.as_deref(), Some("web-1"));
    for (name, _, s) in scripts(root) {
        assert!(!s.contains("docker push"), "{name}: {s}");
        assert!(!s.contains("docker pull"), "{name}: {s}");
        assert!(!s.contains("docker login"), "{name}: {s}");
    }
}

#[test]
fn local_build_across_servers_is_blocked() {
    let mut m = example();
    m.applications.get_mut("shop").unwrap().build.strategy = BuildStrategy::Local;
    let p = first_deploy(&m);
    let prod = p.environment("shop", "production").unwrap();
    assert_eq!(prod.status, plan::EnvironmentStatus::Blocked);
    assert_eq!(prod.blockers[0].code, "local-build-multi-server");
    assert!(prod.operation.is_none());
    // Staging's replicas are all on web-1: it still plans.
    assert_eq!(
        p.environment("shop", "staging").unwrap().status,
        plan::EnvironmentStatus::Changed
    );
}

#[test]
fn external_registry_resolves_the_tag_locally_and_builds_nothing() {
    let mut m = example();
    let app = m.applications.get_mut("shop").unwrap();
    app.build.strategy = BuildStrategy::ExternalRegistry;
    app.build.tag = Some("v1.2".into());
    let p = first_deploy(&m);
    let build = &env_op(&p, "production").children[0];
    assert_eq!(build.steps.len(), 1);
    assert_eq!(build.steps[0].target, Target::Local);
    assert_eq!(
        build.steps[0].action,
        StepAction::ResolveDigest {
            image: "10.77.0.1:5000/acme/shop:v1.2".into(),
            registry: Some("main".into())
        }
    );
    assert_eq!(build.steps[0].capture.as_deref(), Some("digest:shop"));
}

#[test]
fn cutover_adds_new_drains_then_removes_and_stops_old() {
    let m = example();
    let applied = deployed(&m);
    let mut c = ctx("e4f5a6b");
    for v in c.source_commits.values_mut() {
        *v = "0123456789abcdef0123456789abcdef01234567".into();
    }
    let p = plan::plan(Desired::valid(&m), &applied, &c);
    let root = env_op(&p, "production");
    let cut = root
        .children
        .iter()
        .find(|c| c.kind == OperationKind::GatewayCutover)
        .unwrap();
    let names: Vec<&str> = cut.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "health of web#1 through web-1",
            "health of web#2 through web-1",
            "ensure route keystone_shop_production_web on web-1",
            "add upstreams on web-1",
            "drain old upstreams on web-1",
            "remove old upstreams on web-1",
            "stop old keystone-shop_production_web-1-blue",
            "stop old keystone-shop_production_web-2-blue",
        ]
    );
    let s = scripts(cut);
    assert!(s[3].2.contains(r#"'[{"dial":"10.77.0.12:20001"},{"dial":"10.77.0.13:20001"},{"dial":"10.77.0.12:20000"},{"dial":"10.77.0.13:20000"}]'"#), "{}", s[3].2);
    assert!(
        s[5].2
            .contains(r#"'[{"dial":"10.77.0.12:20001"},{"dial":"10.77.0.13:20001"}]'"#),
        "{}",
        s[5].2
    );
    assert_eq!(s[6].1, Target::Server("web-1".into()));
    assert_eq!(s[7].1, Target::Server("web-2".into()));
    // New replicas go to the other slot, beside the old ones.
    let web = root
        .children
        .iter()
        .find(|c| c.title == "service_deploy web")
        .unwrap();
    assert!(
        web.children
            .iter()
            .any(|c| c.title == "replica_deploy web#1 @web-1   replace (image changed)")
    );
}

#[test]
fn removed_replicas_leave_the_gateway_before_they_stop() {
    let m = example();
    let applied = deployed(&m);
    let mut head = m.clone();
    env_mut(&mut head, "production")
        .services
        .get_mut("web")
        .unwrap()
        .replicas = 1;
    let p = plan::plan(Desired::valid(&head), &applied, &ctx("e4f5a6b"));
    let cut = env_op(&p, "production")
        .children
        .iter()
        .find(|c| c.kind == OperationKind::GatewayCutover)
        .unwrap();
    assert_eq!(cut.children.len(), 1);
    assert_eq!(cut.children[0].kind, OperationKind::ReplicaRemoval);
    assert_eq!(cut.children[0].title, "replica_removal web#2 @web-2");
    let steps: Vec<_> = cut.steps.iter().map(|s| s.name.as_str()).collect();
    assert!(steps.contains(&"drain old upstreams on web-1"), "{steps:?}");
}

#[test]
fn planning_is_deterministic() {
    let m = example();
    let a = plan::output::json(&first_deploy(&m));
    let b = plan::output::json(&first_deploy(&m));
    assert_eq!(a, b);
    let applied = deployed(&m);
    let p = plan::plan(Desired::valid(&m), &applied, &ctx("a1b2c3d"));
    assert!(
        p.environments
            .iter()
            .all(|e| e.status == plan::EnvironmentStatus::Unchanged),
        "{}",
        plan::output::text(&p, false)
    );
}

#[test]
fn config_diagnostics_block_only_their_environment() {
    let mut m = example();
    env_mut(&mut m, "staging");
    m.applications
        .get_mut("shop")
        .unwrap()
        .environments
        .remove("staging");
    let diags = vec![plan::ScopedFinding {
        scope: plan::Scope::Environment {
            app: "shop".into(),
            env: "staging".into(),
        },
        finding: plan::Finding {
            code: "unknown-key".into(),
            location: Some("applications/shop/environments/staging.yaml:4:3".into()),
            message: "unknown key `replica`".into(),
            hint: Some("did you mean `replicas`?".into()),
        },
    }];
    let p = plan::plan(
        Desired {
            model: &m,
            diagnostics: &diags,
        },
        &Default::default(),
        &ctx("a1b2c3d"),
    );
    let staging = p.environment("shop", "staging").unwrap();
    assert_eq!(staging.status, plan::EnvironmentStatus::Blocked);
    assert_eq!(staging.blockers, vec![diags[0].finding.clone()]);
    assert_eq!(
        p.environment("shop", "production").unwrap().status,
        plan::EnvironmentStatus::Changed
    );
}

#[test]
fn hostile_values_stay_quoted_in_every_script() {
    let mut m = example();
    let app = m.applications.get_mut("shop").unwrap();
    app.source.repo = "ssh://x/$(touch /tmp/pwned)'.git".into();
    app.build.dockerfile = "Docker file; rm -rf /".into();
    env_mut(&mut m, "production").git_ref = "main`id`".into();
    let mut c = ctx("a1b2c3d");
    c.source_commits.clear();
    let p = plan::plan(Desired::valid(&m), &Default::default(), &c);
    for (name, _, s) in scripts(env_op(&p, "production")) {
        let out = std::process::Command::new("sh")
            .arg("-n")
            .arg("-c")
            .arg(&s)
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {s}");
        assert!(!s.contains("$(touch /tmp/pwned)'.git "), "{name}");
    }
    let build = scripts(env_op(&p, "production"))
        .into_iter()
        .find(|(n, _, _)| n.starts_with("clone"))
        .unwrap()
        .2;
    assert!(
        build.contains("git clone --quiet -- 'ssh://x/$(touch /tmp/pwned)'\\''.git'"),
        "{build}"
    );
    assert!(build.contains("revision='main`id`'"), "{build}");
}

#[test]
fn diff_of_two_commits_shows_only_what_changed() {
    let base = example();
    let mut head = example();
    env_mut(&mut head, "production")
        .services
        .get_mut("web")
        .unwrap()
        .replicas = 3;
    let p = plan::diff(
        Desired::valid(&base),
        &ctx("a1b2c3d"),
        Desired::valid(&head),
        &ctx("e4f5a6b"),
        &Default::default(),
    );
    assert_eq!(p.base_commit.as_deref(), Some("a1b2c3d"));
    let md = plan::output::markdown(&p, 42);
    assert!(
        md.starts_with(
            "<!-- keystone-plan: pr=42 -->\n### Keystone plan for `a1b2c3d` → `e4f5a6b`\n"
        ),
        "{md}"
    );
    assert!(
        md.contains(
            "**shop/production**: 1 replica added, no build · **shop/staging**: no changes"
        ),
        "{md}"
    );
    assert!(!md.contains("service main-postgres"), "{md}");
    let _ = Placement::Role(String::new());
}

#[test]
fn postgres_slice_runs_the_drivers_sql_on_stdin_with_a_generated_password() {
    let p = first_deploy(&example());
    let root = env_op(&p, "production");
    let sp = root
        .children
        .iter()
        .find(|c| {
            c.kind == OperationKind::SliceProvision
                && c.title.starts_with("slice_provision main-postgres")
        })
        .unwrap();
    assert_eq!(sp.steps.len(), 1);
    assert_eq!(sp.steps[0].target, Target::Server("db-1".into()));
    let StepAction::Run { script, stdin } = &sp.steps[0].action else {
        panic!()
    };
    assert!(
        script.contains("docker exec -i keystone-main-postgres psql"),
        "{script}"
    );
    let sql = String::from_utf8(stdin.as_ref().unwrap().bytes.clone()).unwrap();
    assert!(sql.contains("shop_production"), "{sql}");
    assert!(
        sql.contains("{{generated:main-postgres/shop/production}}"),
        "{sql}"
    );
    // The same placeholder reaches the replicas' .env as DB_PASSWORD, marked for .env escaping.
    let web1 = root
        .walk()
        .into_iter()
        .find(|o| o.title.starts_with("replica_deploy web#1"))
        .unwrap();
    let env = web1
        .steps
        .iter()
        .find_map(|s| match &s.action {
            StepAction::Upload { path, contents, .. } if path.ends_with("/.env") => {
                Some(String::from_utf8(contents.bytes.clone()).unwrap())
            }
            _ => None,
        })
        .unwrap();
    assert!(
        env.contains("DB_PASSWORD=\"{{generated:main-postgres/shop/production|dotenv}}\""),
        "{env}"
    );
    assert!(
        env.contains("APP_KEY=\"{{secret:shop-production.app_key|dotenv}}\""),
        "{env}"
    );
}

#[test]
fn shared_image_change_is_a_stateful_update_in_spec_order() {
    let m = example();
    let applied = deployed(&m);
    let mut head = m.clone();
    head.services.get_mut("main-postgres").unwrap().image =
        Some("10.77.0.1:5000/standin/postgres:18.1".into());
    let p = plan::plan(Desired::valid(&head), &applied, &ctx("e4f5a6b"));
    let s = p
        .services
        .iter()
        .find(|s| s.service == "main-postgres")
        .unwrap();
    let op = s.operation.as_ref().unwrap();
    assert_eq!(op.kind, OperationKind::StatefulUpdate);
    assert_eq!(
        op.steps[0].action,
        StepAction::ResolveDigest {
            image: "10.77.0.1:5000/standin/postgres:18.1".into(),
            registry: Some("main".into())
        }
    );
    let names: Vec<&str> = op.children[0]
        .steps
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "pull image by digest",
            "stop",
            "verify named volume",
            "render compose.yml with the new digest",
            "upload .env",
            "start",
            "wait healthy",
            "verify same volume",
        ]
    );
    let compose = op.children[0]
        .steps
        .iter()
        .find_map(|s| match &s.action {
            StepAction::Upload { contents, .. } if s.name.starts_with("render compose") => {
                Some(String::from_utf8(contents.bytes.clone()).unwrap())
            }
            _ => None,
        })
        .unwrap();
    assert!(
        compose.contains("10.77.0.1:5000/standin/postgres@{{digest:main-postgres}}"),
        "{compose}"
    );
    assert!(
        compose.contains("keystone_service_main-postgres_postgres_data"),
        "{compose}"
    );
    assert!(s.changes.iter().any(|c| c.line() == "  volume keystone_service_main-postgres_postgres_data: kept (a plan never deletes a volume)"));
    // Nothing else changes.
    assert!(
        p.environments
            .iter()
            .all(|e| e.status == plan::EnvironmentStatus::Unchanged)
    );
}

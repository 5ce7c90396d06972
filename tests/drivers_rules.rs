//! The pure rules the planner calls: scheduler holder, migrations, Valkey indexes, the queue-driver
//! guard, variables (sources, exports per role, collisions), blue/green slots and host ports.

mod support;

use std::collections::BTreeMap;

use keystone::drivers::laravel::{
    self, MigrationContext, MigrationWhen, PortAssignment, ReplicaKey, SchedulerHolder, Slot,
};
use keystone::drivers::valkey8::{self, PreviousQueue};
use keystone::drivers::variables::{
    Variable, VariableSource, VariableValue, environment_variables,
};
use keystone::drivers::{Facts, Sensitive, SliceKey};
use keystone::model::*;

fn facts(model: &Model) -> Facts {
    Facts {
        valkey_indexes: valkey8::allocate_indexes(model, &BTreeMap::new()).unwrap(),
        postgres_passwords: BTreeMap::new(),
    }
}

fn env_mut<'m>(model: &'m mut Model, env: &str) -> &'m mut Environment {
    model
        .applications
        .get_mut("shop")
        .unwrap()
        .environments
        .get_mut(env)
        .unwrap()
}

// ------------------------------------------------------------------ scheduler

#[test]
fn single_scheduler_runs_on_exactly_one_replica_and_stays_there() {
    let mut model = support::example_model();
    let env = &model.applications["shop"].environments["production"];
    let holder = laravel::scheduler_holder(env, None).unwrap();
    assert_eq!(
        holder,
        SchedulerHolder {
            service: "web".into(),
            replica: 1
        }
    );
    let on: Vec<u32> = (1..=2)
        .filter(|&i| laravel::runs_scheduler(env, "web", i, Some(&holder)))
        .collect();
    assert_eq!(on, vec![1]);
    assert!(!laravel::runs_scheduler(env, "worker", 1, Some(&holder)));

    // The applied holder is replica 2: it keeps it, also when replicas are added.
    let previous = SchedulerHolder {
        service: "web".into(),
        replica: 2,
    };
    env_mut(&mut model, "production")
        .services
        .get_mut("web")
        .unwrap()
        .replicas = 5;
    let env = &model.applications["shop"].environments["production"];
    let holder = laravel::scheduler_holder(env, Some(&previous)).unwrap();
    assert_eq!(holder.replica, 2);
    let on: Vec<u32> = (1..=5)
        .filter(|&i| laravel::runs_scheduler(env, "web", i, Some(&holder)))
        .collect();
    assert_eq!(on, vec![2]);

    // Scaled down below the holder: it moves to replica 1, once.
    env_mut(&mut model, "production")
        .services
        .get_mut("web")
        .unwrap()
        .replicas = 1;
    let env = &model.applications["shop"].environments["production"];
    assert_eq!(
        laravel::scheduler_holder(env, Some(&previous))
            .unwrap()
            .replica,
        1
    );

    // A previous holder of another service does not count.
    let other = SchedulerHolder {
        service: "worker".into(),
        replica: 1,
    };
    env_mut(&mut model, "production")
        .services
        .get_mut("web")
        .unwrap()
        .replicas = 3;
    let env = &model.applications["shop"].environments["production"];
    assert_eq!(
        laravel::scheduler_holder(env, Some(&other))
            .unwrap()
            .replica,
        1
    );
}

#[test]
fn every_replica_scheduler_runs_everywhere_and_has_no_holder() {
    let mut model = support::example_model();
    env_mut(&mut model, "staging")
        .services
        .get_mut("web")
        .unwrap()
        .replicas = 3;
    let env = &model.applications["shop"].environments["staging"];
    assert_eq!(laravel::scheduler_holder(env, None), None);
    assert!((1..=3).all(|i| laravel::runs_scheduler(env, "web", i, None)));
}

// ------------------------------------------------------------------ migrations

#[test]
fn migrations_run_only_where_mode_and_context_allow() {
    let model = support::example_model();
    let mut web = model.applications["shop"].environments["production"].services["web"].clone();
    let cases = [
        (
            MigrationMode::Auto,
            MigrationTiming::PreSwitch,
            MigrationContext::Deploy,
            Some(MigrationWhen::PreSwitch),
        ),
        (
            MigrationMode::Auto,
            MigrationTiming::PostSwitch,
            MigrationContext::Deploy,
            Some(MigrationWhen::PostSwitch),
        ),
        (
            MigrationMode::Auto,
            MigrationTiming::PostSwitch,
            MigrationContext::Request,
            Some(MigrationWhen::Now),
        ),
        (
            MigrationMode::Manual,
            MigrationTiming::PreSwitch,
            MigrationContext::Deploy,
            None,
        ),
        (
            MigrationMode::Manual,
            MigrationTiming::PostSwitch,
            MigrationContext::Deploy,
            None,
        ),
        (
            MigrationMode::Manual,
            MigrationTiming::PreSwitch,
            MigrationContext::Request,
            Some(MigrationWhen::Now),
        ),
        (
            MigrationMode::Disabled,
            MigrationTiming::PreSwitch,
            MigrationContext::Deploy,
            None,
        ),
        (
            MigrationMode::Disabled,
            MigrationTiming::PreSwitch,
            MigrationContext::Request,
            None,
        ),
    ];
    for (mode, timing, context, expected) in cases {
        web.migrations.mode = mode;
        web.migrations.timing = timing;
        let got = laravel::migration(&web, context);
        assert_eq!(
            got.as_ref().map(|r| r.when),
            expected,
            "{mode:?} {timing:?} {context:?}"
        );
        if let Some(run) = got {
            assert_eq!(run.command, "php artisan migrate --force");
            assert_eq!(run.service, "web");
        }
    }
}

// ------------------------------------------------------------------ valkey indexes

#[test]
fn valkey_indexes_are_unique_stable_and_exhaust_with_an_error() {
    let mut model = support::example_model();
    let prod = SliceKey::new("main-valkey", "shop", "production");
    let staging = SliceKey::new("main-valkey", "shop", "staging");
    let first = valkey8::allocate_indexes(&model, &BTreeMap::new()).unwrap();
    assert_eq!(
        first,
        BTreeMap::from([(prod.clone(), 0), (staging.clone(), 1)])
    );

    // Applied state gave production 7: it keeps 7; staging keeps 1.
    let previous = BTreeMap::from([(prod.clone(), 7), (staging.clone(), 1)]);
    assert_eq!(
        valkey8::allocate_indexes(&model, &previous).unwrap(),
        previous
    );

    // A new environment takes the lowest free index without moving anyone.
    let mut qa = model.applications["shop"].environments["staging"].clone();
    qa.name = "qa".into();
    env_mut(&mut model, "staging");
    model
        .applications
        .get_mut("shop")
        .unwrap()
        .environments
        .insert("qa".into(), qa);
    let qa_slice = SliceKey::new("main-valkey", "shop", "qa");
    let next = valkey8::allocate_indexes(&model, &previous).unwrap();
    assert_eq!(next[&qa_slice], 0);
    assert_eq!(next[&prod], 7);
    assert_eq!(next[&staging], 1);

    // Two databases, three slices: the one that does not fit is an error naming its attachment.
    model.services.get_mut("main-valkey").unwrap().databases = Some(2);
    let errors = valkey8::allocate_indexes(
        &model,
        &BTreeMap::from([(prod.clone(), 0), (staging.clone(), 1)]),
    )
    .unwrap_err();
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0].to_string(),
        "applications/shop/environments/staging.yaml:10:5: valkey service `main-valkey` has no free logical \
         database for main-valkey[shop/qa]: all 2 are assigned; raise `databases:` in services/main-valkey.yaml \
         or attach another Valkey service"
    );
    // An applied index beyond a lowered `databases:` never silently moves.
    let errors = valkey8::allocate_indexes(&model, &previous).unwrap_err();
    assert!(
        errors[0]
            .to_string()
            .contains("holds logical database 7, beyond the 2 databases"),
        "{}",
        errors[0]
    );
}

// ------------------------------------------------------------------ variables

fn find<'v>(vars: &'v [Variable], name: &str) -> &'v Variable {
    vars.iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("{name} missing"))
}

#[test]
fn every_managed_export_per_role_with_source_and_overridable() {
    let model = support::example_model();
    let mut f = facts(&model);
    let pg = SliceKey::new("main-postgres", "shop", "production");
    f.postgres_passwords
        .insert(pg.clone(), Sensitive::new("generated"));
    let env = &model.applications["shop"].environments["production"];
    let vars = environment_variables(&model, env, &f).unwrap();
    let table: Vec<(String, String, String, bool)> = vars
        .iter()
        .map(|v| {
            let value = match &v.value {
                VariableValue::Plain(p) => p.clone(),
                VariableValue::Secret(r) => format!("secret:{}", r.display_path()),
                VariableValue::Sensitive(s) => format!("sensitive:{}", s.expose()),
            };
            (v.name.clone(), value, v.source.to_string(), v.overridable)
        })
        .collect();
    let row = |n: &str, v: &str, s: &str, o: bool| (n.to_string(), v.to_string(), s.to_string(), o);
    let pg_s = "managed by main-postgres[shop/production]";
    let vk_s = "managed by main-valkey[shop/production]";
    assert_eq!(
        table,
        vec![
            row("DB_CONNECTION", "pgsql", pg_s, false),
            row("DB_HOST", "10.77.0.14", pg_s, false),
            row("DB_PORT", "5432", pg_s, false),
            row("DB_DATABASE", "shop_production", pg_s, false),
            row("DB_USERNAME", "shop_production", pg_s, false),
            row("DB_PASSWORD", "sensitive:generated", pg_s, false),
            row("REDIS_HOST", "10.77.0.14", vk_s, false),
            row("REDIS_PORT", "6379", vk_s, false),
            row("REDIS_DB", "0", vk_s, false),
            row("REDIS_CACHE_DB", "0", vk_s, false),
            row("CACHE_STORE", "redis", vk_s, true),
            row("SESSION_DRIVER", "redis", vk_s, true),
            row("QUEUE_CONNECTION", "redis", vk_s, true),
            row(
                "APP_URL",
                "http://shop.lab.test",
                "managed by edge[shop/production]",
                true
            ),
            row("APP_ENV", "production", "user", true),
            row("APP_DEBUG", "false", "user", true),
            row("MAIL_FROM", "noreply@shop.lab.test", "user", true),
            row("APP_KEY", "secret:shop-production.app_key", "secret", true),
            row(
                "MAIL_PASSWORD",
                "secret:shop-production.mail_password",
                "secret",
                true
            ),
        ]
    );
    // Staging: cache only, and an unprovisioned Postgres slice shows its placeholder.
    let env = &model.applications["shop"].environments["staging"];
    let vars = environment_variables(&model, env, &f).unwrap();
    assert_eq!(find(&vars, "REDIS_DB").plain_value(), Some("1"));
    assert!(
        vars.iter()
            .all(|v| v.name != "QUEUE_CONNECTION" && v.name != "SESSION_DRIVER")
    );
    match &find(&vars, "DB_PASSWORD").value {
        VariableValue::Sensitive(s) => {
            assert_eq!(s.expose(), "{{generated:main-postgres/shop/staging}}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn user_variable_overrides_an_overridable_export_in_place() {
    let mut model = support::example_model();
    let env = env_mut(&mut model, "production");
    env.variables
        .push(("CACHE_STORE".into(), Value::Plain("file".into())));
    env.variable_origins.insert(
        "CACHE_STORE".into(),
        support::origin("applications/shop/environments/production.yaml", 30, 3),
    );
    let f = facts(&model);
    let vars = environment_variables(
        &model,
        &model.applications["shop"].environments["production"],
        &f,
    )
    .unwrap();
    let v = find(&vars, "CACHE_STORE");
    assert_eq!(v.plain_value(), Some("file"));
    assert_eq!(v.source, VariableSource::User);
    assert_eq!(
        v.overrides,
        Some(SliceKey::new("main-valkey", "shop", "production"))
    );
    assert_eq!(vars.iter().filter(|v| v.name == "CACHE_STORE").count(), 1);
}

#[test]
fn collisions_name_both_origins() {
    let mut model = support::example_model();
    let f = "applications/shop/environments/production.yaml";
    let env = env_mut(&mut model, "production");
    env.variables
        .push(("DB_HOST".into(), Value::Plain("elsewhere".into())));
    env.variable_origins
        .insert("DB_HOST".into(), support::origin(f, 31, 3));
    env.variables
        .push(("KEYSTONE_REPLICA".into(), Value::Plain("9".into())));
    env.variable_origins
        .insert("KEYSTONE_REPLICA".into(), support::origin(f, 32, 3));
    env.variables.retain(|(k, _)| k != "APP_KEY");
    // A second Valkey service attached: both export REDIS_HOST.
    let mut other = model.services["main-valkey"].clone();
    other.name = "other-valkey".into();
    other.origin = support::origin("services/other-valkey.yaml", 1, 1);
    model.services.insert("other-valkey".into(), other);
    env_mut(&mut model, "production")
        .attachments
        .push(support::attachment(
            f,
            21,
            "other-valkey",
            AttachmentRole::Cache,
        ));
    let fa = facts(&model);
    let errors = environment_variables(
        &model,
        &model.applications["shop"].environments["production"],
        &fa,
    )
    .unwrap_err();
    let messages: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        messages,
        vec![
            format!(
                "{f}:21:5: REDIS_HOST is exported both by main-valkey[shop/production] (attachment at {f}:17:5) and by other-valkey[shop/production]; attach only one service of this kind"
            ),
            format!(
                "{f}:21:5: REDIS_PORT is exported both by main-valkey[shop/production] (attachment at {f}:17:5) and by other-valkey[shop/production]; attach only one service of this kind"
            ),
            format!(
                "{f}:21:5: REDIS_DB is exported both by main-valkey[shop/production] (attachment at {f}:17:5) and by other-valkey[shop/production]; attach only one service of this kind"
            ),
            format!(
                "{f}:21:5: REDIS_CACHE_DB is exported both by main-valkey[shop/production] (attachment at {f}:17:5) and by other-valkey[shop/production]; attach only one service of this kind"
            ),
            format!(
                "{f}:21:5: CACHE_STORE is exported both by main-valkey[shop/production] (attachment at {f}:17:5) and by other-valkey[shop/production]; attach only one service of this kind"
            ),
            format!(
                "{f}:31:3: variable DB_HOST collides with DB_HOST exported by main-postgres[shop/production] (attachment at {f}:16:5), which cannot be overridden; remove it from variables"
            ),
            format!(
                "{f}:32:3: variable KEYSTONE_REPLICA is set by Keystone for each replica; remove it from variables"
            ),
            format!(
                "{f}:1:1: environment shop/production has no variable APP_KEY, which the laravel driver requires; add it under variables (as a secret if sensitive)"
            ),
        ]
    );
    assert_eq!(errors[5].origin(), &support::origin(f, 31, 3));
}

// ------------------------------------------------------------------ queue guard

#[test]
fn queue_driver_change_needs_confirmation() {
    let mut model = support::example_model();
    let f = facts(&model);
    let vars = |m: &Model| {
        environment_variables(m, &m.applications["shop"].environments["production"], &f).unwrap()
    };
    let env = |m: &Model| m.applications["shop"].environments["production"].clone();

    // Confirmed in the example: database → redis passes.
    let v = vars(&model);
    assert_eq!(
        valkey8::check_queue_driver(
            &env(&model),
            &v,
            &PreviousQueue::Deployed(Some("database".into()))
        ),
        Ok(())
    );
    // Never deployed, or unchanged: no confirmation needed.
    let prod = env_mut(&mut model, "production");
    for a in prod.attachments.iter_mut() {
        a.confirm_queue_driver = false;
    }
    let v = vars(&model);
    assert_eq!(
        valkey8::check_queue_driver(&env(&model), &v, &PreviousQueue::NeverDeployed),
        Ok(())
    );
    assert_eq!(
        valkey8::check_queue_driver(
            &env(&model),
            &v,
            &PreviousQueue::Deployed(Some("redis".into()))
        ),
        Ok(())
    );
    // Unconfirmed change: a blocker at the queue attachment.
    let err =
        valkey8::check_queue_driver(&env(&model), &v, &PreviousQueue::Deployed(None)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "applications/shop/environments/production.yaml:19:5: shop/production's queue driver changes from \
         the default (unset) to redis; jobs still queued on the default (unset) would be left behind. Drain \
         the queue, then add `confirm_queue_driver: true` to the queue attachment (or set QUEUE_CONNECTION \
         explicitly in variables)"
    );
    // Removing the queue attachment is a change back, blocked at the environment.
    env_mut(&mut model, "production")
        .attachments
        .retain(|a| a.role != AttachmentRole::Queue);
    let v = vars(&model);
    let err = valkey8::check_queue_driver(
        &env(&model),
        &v,
        &PreviousQueue::Deployed(Some("redis".into())),
    )
    .unwrap_err();
    assert_eq!(
        err.origin,
        support::origin("applications/shop/environments/production.yaml", 1, 1)
    );
    // …unless the user now sets the driver explicitly.
    env_mut(&mut model, "production")
        .variables
        .push(("QUEUE_CONNECTION".into(), Value::Plain("database".into())));
    let v = vars(&model);
    assert_eq!(
        valkey8::check_queue_driver(
            &env(&model),
            &v,
            &PreviousQueue::Deployed(Some("redis".into()))
        ),
        Ok(())
    );
}

// ------------------------------------------------------------------ slots and host ports

#[test]
fn slots_alternate_and_name_containers_deterministically() {
    assert_eq!(Slot::next(None), Slot::Blue);
    assert_eq!(Slot::next(Some(Slot::Blue)), Slot::Green);
    assert_eq!(Slot::next(Some(Slot::Green)), Slot::Blue);
    let key = ReplicaKey::new("shop", "production", "web", 2);
    assert_eq!(
        laravel::container_name(&key, Slot::Green),
        "keystone-shop_production_web-2-green"
    );
    assert_eq!(
        laravel::remote_dir("/home/keystone/", &key, Slot::Blue),
        "/home/keystone/services/shop_production_web-2-blue"
    );
    assert_eq!(key.to_string(), "shop/production/web#2");
}

#[test]
fn host_ports_are_stable_per_server() {
    let mut model = support::example_model();
    let ports = laravel::allocate_host_ports(&model, &BTreeMap::new()).unwrap();
    let k = |env: &str, svc: &str, i| ReplicaKey::new("shop", env, svc, i);
    let pa = |server: &str, base| PortAssignment {
        server: server.into(),
        base,
    };
    assert_eq!(
        ports,
        BTreeMap::from([
            (k("production", "web", 1), pa("web-1", 20000)),
            (k("production", "web", 2), pa("web-2", 20000)),
            (k("production", "worker", 1), pa("web-2", 20002)),
            (k("staging", "web", 1), pa("web-1", 20002)),
        ])
    );
    assert_eq!(
        ports[&k("production", "web", 1)].host_port(Slot::Green),
        20001
    );
    assert_eq!(
        laravel::dial_address(&model, &ports[&k("staging", "web", 1)], Slot::Green).unwrap(),
        "10.77.0.12:20003"
    );

    // Existing assignments never move; a new replica takes the lowest free pair on its server.
    let previous = BTreeMap::from([
        (k("production", "web", 1), pa("web-1", 20010)),
        (k("production", "web", 2), pa("web-2", 20000)),
        (k("staging", "web", 1), pa("web-1", 20000)),
    ]);
    env_mut(&mut model, "production")
        .services
        .get_mut("web")
        .unwrap()
        .replicas = 3;
    let next = laravel::allocate_host_ports(&model, &previous).unwrap();
    assert_eq!(next[&k("production", "web", 1)], pa("web-1", 20010));
    assert_eq!(next[&k("staging", "web", 1)], pa("web-1", 20000));
    assert_eq!(next[&k("production", "web", 3)], pa("web-1", 20002));
    // A replica whose server changed is placed afresh.
    let moved = BTreeMap::from([(k("production", "web", 2), pa("web-1", 20100))]);
    env_mut(&mut model, "production")
        .services
        .get_mut("web")
        .unwrap()
        .replicas = 2;
    let next = laravel::allocate_host_ports(&model, &moved).unwrap();
    assert_eq!(next[&k("production", "web", 2)], pa("web-2", 20000));
}

#[test]
fn host_ports_run_out_per_server_and_name_each_replica_left_over() {
    // 10,000 production web replicas alternate over web-1 and web-2: 5,000 each, exactly the
    // 5,000 pairs of 20000-29999. The staging web replica (web-1) and the production worker
    // (web-2) come after them in replica order and find no pair left.
    let mut model = support::example_model();
    env_mut(&mut model, "production")
        .services
        .get_mut("web")
        .unwrap()
        .replicas = 10_000;
    let errors = laravel::allocate_host_ports(&model, &BTreeMap::new()).unwrap_err();
    let left: Vec<(String, String)> = errors
        .iter()
        .map(|e| {
            let laravel::AllocError::HostPortsExhausted {
                replica, server, ..
            } = e;
            (replica.to_string(), server.clone())
        })
        .collect();
    assert_eq!(
        left,
        vec![
            ("shop/production/worker#1".to_string(), "web-2".to_string()),
            ("shop/staging/web#1".to_string(), "web-1".to_string()),
        ]
    );
    // Two fewer: each server keeps its highest pair for the replica after the web ones.
    env_mut(&mut model, "production")
        .services
        .get_mut("web")
        .unwrap()
        .replicas = 9_998;
    let ports = laravel::allocate_host_ports(&model, &BTreeMap::new()).unwrap();
    let pa = |server: &str| PortAssignment {
        server: server.into(),
        base: 29998,
    };
    assert_eq!(
        ports[&ReplicaKey::new("shop", "staging", "web", 1)],
        pa("web-1")
    );
    assert_eq!(
        ports[&ReplicaKey::new("shop", "production", "worker", 1)],
        pa("web-2")
    );
}

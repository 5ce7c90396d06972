//! examples/config-repo validates clean, from its directory and from a git commit of it, and
//! resolves to the shape docs/config.md describes.

mod config_support;

use std::path::Path;

use keystone::config;
use keystone::model::*;

fn example() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/config-repo"))
}

#[test]
fn example_repo_is_valid_and_resolved() {
    let loaded = config::load_dir(example()).unwrap();
    assert!(
        loaded.diagnostics.is_empty(),
        "{}",
        loaded.render_diagnostics()
    );
    assert_eq!(
        loaded.summary(),
        "4 servers, 1 registry, 3 services, 1 application, 2 environments, 4 secret files"
    );
    let m = &loaded.model;
    assert_eq!(
        m.servers
            .values()
            .map(|s| (s.name.as_str(), s.host.as_str(), s.roles.join(",")))
            .collect::<Vec<_>>(),
        vec![
            ("build-1", "10.77.0.11", "builder".to_string()),
            ("db-1", "10.77.0.14", "db".to_string()),
            ("web-1", "10.77.0.12", "web,worker,gateway".to_string()),
            ("web-2", "10.77.0.13", "web,worker".to_string()),
        ]
    );
    let reg = &m.registries["main"];
    assert_eq!(reg.url, "10.77.0.1:5000");
    assert_eq!(reg.namespace.as_deref(), Some("acme"));
    assert!(reg.insecure);
    assert_eq!(reg.username, Some(Value::Plain("deploy".into())));
    let Some(Value::Secret(pw)) = &reg.password else {
        panic!("password is a secret")
    };
    assert_eq!(pw.display_path(), "registry.password");
    assert_eq!(pw.origin.file, "registries/main.yaml");
    assert_eq!(
        m.services["main-postgres"].image.as_deref(),
        Some("10.77.0.1:5000/standin/postgres:18")
    );
    assert_eq!(m.services["main-valkey"].servers, vec!["db-1"]);
    assert_eq!(m.services["edge"].servers, vec!["web-1"]);
    assert_eq!(m.services["edge"].port, Some(80));

    let shop = &m.applications["shop"];
    assert_eq!(
        shop.source.repo,
        "ssh://git@10.77.0.1:2222/srv/git/shop.git"
    );
    assert_eq!(shop.build.strategy, BuildStrategy::DedicatedBuilder);
    assert_eq!(shop.build.registry.as_deref(), Some("main"));
    assert_eq!(shop.build.repository, "shop");

    let prod = &shop.environments["production"];
    assert_eq!(prod.services["web"].servers, vec!["web-1", "web-2"]);
    assert_eq!(prod.services["web"].replicas, 2);
    assert_eq!(
        prod.services["web"].migrations.timing,
        MigrationTiming::PreSwitch
    );
    assert_eq!(prod.services["worker"].servers, vec!["web-2"]);
    assert_eq!(
        prod.services["worker"].migrations.mode,
        MigrationMode::Disabled
    );
    assert_eq!(prod.scheduler.as_ref().unwrap().mode, SchedulerMode::Single);
    assert_eq!(
        prod.attachments
            .iter()
            .map(|a| (a.service.as_str(), a.role))
            .collect::<Vec<_>>(),
        vec![
            ("main-postgres", AttachmentRole::Database),
            ("main-valkey", AttachmentRole::Cache),
            ("main-valkey", AttachmentRole::Session),
            ("main-valkey", AttachmentRole::Queue),
            ("edge", AttachmentRole::Gateway),
        ]
    );
    assert!(prod.attachments[3].confirm_queue_driver);
    assert_eq!(prod.attachments[4].domains, vec!["shop.lab.test"]);
    assert_eq!(prod.attachments[4].target.as_deref(), Some("web"));
    assert_eq!(
        prod.variables
            .iter()
            .map(|(k, v)| format!(
                "{k}={}",
                match v {
                    Value::Plain(p) => p.clone(),
                    Value::Secret(s) => format!("secret:{}", s.display_path()),
                }
            ))
            .collect::<Vec<_>>(),
        vec![
            "APP_ENV=production",
            "APP_DEBUG=false",
            "MAIL_FROM=noreply@shop.lab.test",
            "APP_KEY=secret:shop-production.app_key",
            "MAIL_PASSWORD=secret:shop-production.mail_password",
        ]
    );
    let staging = &shop.environments["staging"];
    assert_eq!(staging.services["web"].servers, vec!["web-1"]);
    assert_eq!(
        staging.scheduler.as_ref().unwrap().mode,
        SchedulerMode::EveryReplica
    );
    assert_eq!(
        staging.attachments[2].domains,
        vec!["staging.shop.lab.test"]
    );
    assert_eq!(
        m.secret_files["shop-production"].key_paths,
        vec![
            vec!["app_key".to_string()],
            vec!["mail_password".to_string()]
        ]
    );
}

#[test]
fn validate_command_exits_zero_on_the_example() {
    let out = assert_cmd::Command::cargo_bin("keystone")
        .unwrap()
        .args(["validate", "--repo"])
        .arg(example())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "valid: 4 servers, 1 registry, 3 services, 1 application, 2 environments, 4 secret files\n"
    );
}

#[test]
fn validate_of_a_directory_that_is_no_config_repository_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("README.md"), "not a config repo\n").unwrap();
    let out = assert_cmd::Command::cargo_bin("keystone")
        .unwrap()
        .args(["validate", "--repo"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "error: {} is not a Keystone config repository: it has no keystone.yaml and no \
             servers/, registries/, services/, applications/ or secrets/ (pass the repository \
             with --repo DIR)\n",
            dir.path().display()
        )
    );
}

#[test]
fn validate_of_a_missing_commit_says_so_once_without_libgit2_codes() {
    let dir = tempfile::tempdir().unwrap();
    config_support::commit_dir(example(), dir.path());
    let out = assert_cmd::Command::cargo_bin("keystone")
        .unwrap()
        .args(["validate", "--repo"])
        .arg(dir.path())
        .args(["--rev", "deadbeef"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: cannot resolve `deadbeef` to a commit: revspec 'deadbeef' not found\n"
    );
}

/// A copy of the example in a temporary directory, and its production environment file.
fn example_with_production_file() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    assert!(
        std::process::Command::new("cp")
            .arg("-r")
            .arg(format!("{}/.", example().display()))
            .arg(dir.path())
            .status()
            .unwrap()
            .success()
    );
    let prod = dir
        .path()
        .join("applications/shop/environments/production.yaml");
    (dir, prod)
}

#[test]
fn validate_reports_what_would_block_the_plan_of_a_loadable_config() {
    // DB_HOST is exported by the attached Postgres and cannot be overridden: the loader accepts
    // the file, the planner would block production; validate says so with file:line:col.
    let (dir, prod) = example_with_production_file();
    let text = std::fs::read_to_string(&prod).unwrap();
    std::fs::write(
        &prod,
        text.replacen("variables:\n", "variables:\n  DB_HOST: evil\n", 1),
    )
    .unwrap();
    let out = assert_cmd::Command::cargo_bin("keystone")
        .unwrap()
        .args(["validate", "--repo"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "applications/shop/environments/production.yaml:46:3: error[variables]: variable DB_HOST \
         collides with DB_HOST exported by main-postgres[shop/production] (attachment at \
         applications/shop/environments/production.yaml:35:5), which cannot be overridden; remove \
         it from variables\n   |\n46 |   DB_HOST: evil\n   |   ^\n\ninvalid: 1 error\n"
    );
}

#[test]
fn unquoted_values_yaml_would_change_are_errors() {
    // `yes` would reach the container as `true`, `0x1F` as `31`: only canonical forms pass.
    let (dir, prod) = example_with_production_file();
    let text = std::fs::read_to_string(&prod).unwrap();
    let extra =
        "variables:\n  BOOL: yes\n  OCT: 0o17\n  INT: 42\n  TRUE: true  # fine\n  Q: \"yes\"\n";
    std::fs::write(&prod, text.replacen("variables:\n", extra, 1)).unwrap();
    let loaded = config::load_dir(dir.path()).unwrap();
    let got: Vec<(u32, u32, &str, &str)> = loaded
        .diagnostics
        .iter()
        .map(|d| (d.line, d.column, d.code, d.message.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (
                46,
                9,
                "wrong-type",
                "`BOOL` is written `yes`, which YAML reads as a boolean `true`"
            ),
            (
                47,
                8,
                "wrong-type",
                "`OCT` is written `0o17`, which YAML reads as an integer `15`"
            ),
        ],
        "{}",
        loaded.render_diagnostics()
    );
    assert_eq!(
        loaded.diagnostics[0].hint.as_deref(),
        Some("quote it to keep it as written: `\"yes\"`")
    );
}

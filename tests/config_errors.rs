//! One broken fixture repository per error class: each asserts the exact file, line, column and
//! code of every diagnostic, and the JSON form (messages and hints) against a reviewed snapshot.

mod config_support;

use keystone::config::{self, Scope};

/// Load fixture `name`, assert its diagnostics are exactly `expected` (file, line, column,
/// code), and its JSON form matches the snapshot `config_errors__<name>.snap`.
fn check(name: &str, expected: &[(&str, u32, u32, &str)]) -> config::Loaded {
    let dir = config_support::fixture(name);
    let loaded = config::load_dir(dir.path()).unwrap();
    let got: Vec<(&str, u32, u32, &str)> = loaded
        .diagnostics
        .iter()
        .map(|d| (d.file.as_str(), d.line, d.column, d.code))
        .collect();
    assert_eq!(got, expected, "\n{}", loaded.render_diagnostics());
    let json = serde_json::to_string_pretty(&config::to_json(&loaded.diagnostics)).unwrap();
    insta::assert_snapshot!(name, json);
    loaded
}

const PROD: &str = "applications/shop/environments/production.yaml";
const STAGING: &str = "applications/shop/environments/staging.yaml";
const APP: &str = "applications/shop/application.yaml";

#[test]
fn unknown_key() {
    check(
        "unknown-key",
        &[
            (PROD, 6, 5, "unknown-key"),
            ("servers/web-2.yaml", 4, 1, "unknown-key"),
        ],
    );
}

#[test]
fn bad_name() {
    check(
        "bad-name",
        &[
            (PROD, 8, 3, "bad-name"),
            (PROD, 17, 3, "bad-name"),
            ("servers/Web_3.yaml", 1, 1, "bad-name"),
        ],
    );
}

#[test]
fn duplicate_name() {
    check(
        "duplicate-name",
        &[
            (PROD, 16, 5, "duplicate-name"),
            ("servers/web-2.yml", 1, 1, "duplicate-name"),
        ],
    );
}

#[test]
fn duplicate_key() {
    check(
        "duplicate-key",
        &[("services/main-valkey.yaml", 3, 1, "duplicate-key")],
    );
}

#[test]
fn yaml_syntax() {
    check(
        "yaml-syntax",
        &[("registries/main.yaml", 3, 9, "yaml-syntax")],
    );
}

#[test]
fn wrong_type() {
    check(
        "wrong-type",
        &[
            ("servers/db-1.yaml", 2, 7, "wrong-type"),
            ("servers/db-1.yaml", 4, 8, "wrong-type"),
        ],
    );
}

#[test]
fn missing_key() {
    check(
        "missing-key",
        &[
            ("services/main-postgres.yaml", 1, 1, "missing-key"),
            ("services/main-postgres.yaml", 1, 1, "missing-key"),
        ],
    );
}

#[test]
fn unknown_driver() {
    check(
        "unknown-driver",
        &[
            (STAGING, 3, 13, "wrong-driver-kind"),
            ("services/main-postgres.yaml", 1, 9, "unknown-driver"),
        ],
    );
}

#[test]
fn unknown_server() {
    check(
        "unknown-server",
        &[
            (PROD, 11, 27, "unknown-server"),
            ("services/main-valkey.yaml", 2, 9, "unknown-server"),
        ],
    );
}

#[test]
fn unknown_registry() {
    check("unknown-registry", &[(APP, 5, 13, "unknown-registry")]);
}

#[test]
fn unknown_service() {
    check("unknown-service", &[(PROD, 14, 15, "unknown-service")]);
}

#[test]
fn unknown_scheduler_target() {
    check(
        "unknown-scheduler-target",
        &[(PROD, 12, 22, "unknown-app-service")],
    );
}

#[test]
fn unknown_gateway_target() {
    check(
        "unknown-gateway-target",
        &[(PROD, 16, 70, "unknown-app-service")],
    );
}

#[test]
fn unknown_secret_file() {
    check(
        "unknown-secret-file",
        &[(PROD, 19, 21, "unknown-secret-file")],
    );
}

#[test]
fn unknown_secret_key() {
    check(
        "unknown-secret-key",
        &[
            (PROD, 19, 21, "unknown-secret-key"),
            ("registries/main.yaml", 3, 20, "unknown-secret-key"),
        ],
    );
}

#[test]
fn role_not_supported() {
    check(
        "role-not-supported",
        &[
            (PROD, 14, 34, "role-not-supported"),
            (PROD, 15, 36, "role-not-supported"),
        ],
    );
}

#[test]
fn placement_no_server() {
    check(
        "placement-no-server",
        &[(PROD, 7, 23, "placement-no-server")],
    );
}

#[test]
fn no_server_for_replicas() {
    check(
        "no-server-for-replicas",
        &[
            (STAGING, 5, 16, "no-server-for-replicas"),
            (STAGING, 6, 3, "no-server-for-replicas"),
        ],
    );
}

#[test]
fn local_build_multi_server() {
    check(
        "local-build-multi-server",
        &[(PROD, 15, 16, "local-build-multi-server")],
    );
}

#[test]
fn registry_required() {
    check("registry-required", &[(PROD, 15, 16, "registry-required")]);
}

#[test]
fn no_builder() {
    check("no-builder", &[(APP, 14, 13, "no-builder")]);
}

#[test]
fn port_collision() {
    check(
        "port-collision",
        &[("services/main-valkey.yaml", 3, 7, "port-collision")],
    );
}

#[test]
fn valkey_databases_exhausted() {
    check(
        "valkey-databases-exhausted",
        &[(STAGING, 17, 5, "valkey-databases-exhausted")],
    );
}

#[test]
fn duplicate_domain() {
    check("duplicate-domain", &[(STAGING, 7, 69, "duplicate-domain")]);
}

#[test]
fn missing_file() {
    check(
        "missing-file",
        &[(
            "applications/blog/environments/live.yaml",
            1,
            1,
            "missing-file",
        )],
    );
}

#[test]
fn unexpected_file() {
    check(
        "unexpected-file",
        &[
            ("secrets/extra.yaml", 1, 1, "unexpected-file"),
            ("servers/old/web-9.yaml", 1, 1, "unexpected-file"),
        ],
    );
}

/// Every problem of every file is reported in one run, and broken files do not hide the
/// references the other files make.
#[test]
fn several_problems_are_all_reported() {
    let loaded = check(
        "several-problems",
        &[
            (APP, 3, 24, "unknown-secret-key"),
            (PROD, 12, 33, "invalid-value"),
            (PROD, 15, 34, "role-not-supported"),
            (PROD, 19, 21, "unknown-secret-file"),
            (STAGING, 7, 20, "invalid-value"),
            ("servers/web-2.yaml", 1, 1, "missing-key"),
            ("servers/web-2.yaml", 1, 1, "unknown-key"),
            ("services/edge.yaml", 4, 13, "port-collision"),
        ],
    );
    assert!(loaded.model.applications.is_empty());
    assert!(!loaded.model.servers.contains_key("web-2"));
    assert!(!loaded.model.services.contains_key("edge"));
}

/// An error only staging makes blocks only staging: production stays in the model.
#[test]
fn an_environment_error_blocks_only_that_environment() {
    let loaded = check(
        "one-environment-broken",
        &[(STAGING, 8, 78, "unknown-app-service")],
    );
    assert_eq!(
        loaded.diagnostics[0].scope,
        Scope::Environment {
            app: "shop".into(),
            env: "staging".into()
        }
    );
    let shop = &loaded.model.applications["shop"];
    assert_eq!(
        shop.environments.keys().collect::<Vec<_>>(),
        vec!["production"]
    );
    assert!(loaded.environment_ok("shop", "production"));
    assert!(!loaded.environment_ok("shop", "staging"));
    assert_eq!(loaded.model.servers.len(), 4);
}

/// Scopes: server/service/registry files are Project, application.yaml is Application.
#[test]
fn scopes_follow_the_file() {
    let l = check("no-builder", &[(APP, 14, 13, "no-builder")]);
    assert_eq!(
        l.diagnostics[0].scope,
        Scope::Application { app: "shop".into() }
    );
    assert!(l.model.applications.is_empty());
    let l = check(
        "port-collision",
        &[("services/main-valkey.yaml", 3, 7, "port-collision")],
    );
    assert_eq!(l.diagnostics[0].scope, Scope::Project);
    assert!(l.diagnostics[0].scope.blocks("shop", "staging"));
}

/// The text form of a diagnostic: location, code, message, the line, a caret, the hint.
#[test]
fn text_form() {
    let dir = config_support::fixture("unknown-key");
    let loaded = config::load_dir(dir.path()).unwrap();
    assert_eq!(
        loaded.render_diagnostics(),
        "applications/shop/environments/production.yaml:6:5: error[unknown-key]: unknown key `replica` in service `web`
  |
6 |     replica: 2
  |     ^
  = hint: did you mean `replicas`?

servers/web-2.yaml:4:1: error[unknown-key]: unknown key `role` in server `web-2`
  |
4 | role: [web, worker]
  | ^
  = hint: did you mean `roles`?
"
    );
}

#[test]
fn not_encrypted() {
    // A secret file committed as plaintext (no `sops` metadata) is an error, not a valid file.
    check(
        "not-encrypted",
        &[("secrets/shop-staging.sops.yaml", 2, 1, "not-encrypted")],
    );
}

#[test]
fn bad_settings() {
    // Zero intervals, the status branch on the deploy branch, a recipient that is no age key,
    // and a host/user that ssh would read as an option or split.
    check(
        "bad-settings",
        &[
            ("keystone.yaml", 4, 13, "invalid-value"),
            ("keystone.yaml", 6, 11, "invalid-value"),
            ("keystone.yaml", 8, 13, "invalid-value"),
            ("keystone.yaml", 11, 7, "invalid-value"),
            ("servers/web-2.yaml", 1, 7, "invalid-value"),
            ("servers/web-2.yaml", 2, 7, "invalid-value"),
        ],
    );
}

#[test]
fn symlinks_are_reported_not_followed_from_a_directory_and_from_a_commit() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let example = config_support::root().join("examples/config-repo");
    assert!(
        std::process::Command::new("cp")
            .arg("-r")
            .arg(&example)
            .arg(&repo)
            .status()
            .unwrap()
            .success()
    );
    // A linked server file, a keystone.yaml that is a link, and a linked README (not reported).
    std::os::unix::fs::symlink("web-1.yaml", repo.join("servers/web-3.yaml")).unwrap();
    std::fs::rename(repo.join("keystone.yaml"), dir.path().join("ks.yaml")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("ks.yaml"), repo.join("keystone.yaml")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", repo.join("servers/README.md")).unwrap();
    let expected = [
        ("keystone.yaml".to_string(), 1, 1, "symlink"),
        ("servers/web-3.yaml".to_string(), 1, 1, "symlink"),
    ];
    let got = |loaded: &config::Loaded| -> Vec<(String, u32, u32, &'static str)> {
        loaded
            .diagnostics
            .iter()
            .map(|d| (d.file.clone(), d.line, d.column, d.code))
            .collect()
    };
    let from_dir = config::load_dir(&repo).unwrap();
    assert_eq!(
        got(&from_dir),
        expected,
        "{}",
        from_dir.render_diagnostics()
    );
    assert_eq!(
        from_dir.diagnostics[1].message,
        "`servers/web-3.yaml` is a symbolic link; Keystone reads only regular files and directories"
    );

    // The same commit, through git (which stores the links as links).
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(&repo)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.test")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.test")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    git(&["init", "-q", "-b", "main"]);
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "links"]);
    let r = git2::Repository::open(&repo).unwrap();
    let from_commit = config::load_rev(&r, "HEAD").unwrap();
    assert_eq!(got(&from_commit), expected);
}

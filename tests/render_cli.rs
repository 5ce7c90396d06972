//! `keystone render` over examples/config-repo (real config loader, real SOPS files): snapshots of
//! every replica's files, secrets redacted unless --reveal, `--out` layout, exit codes.

use std::path::Path;

use assert_cmd::Command;

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/config-repo");
const KEY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/config-repo/TEST-ONLY-age-key.txt"
);

fn keystone() -> Command {
    let mut c = Command::cargo_bin("keystone").unwrap();
    c.env_remove("SOPS_AGE_KEY").env_remove("SOPS_AGE_KEY_FILE");
    c
}

fn render(env: &str, extra: &[&str]) -> String {
    let out = keystone()
        .args(["render", "--repo", REPO, env])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn every_replica_of_the_example_config_repo() {
    for env in ["shop/production", "shop/staging"] {
        let text = render(env, &[]);
        insta::assert_snapshot!(env.replace('/', "__"), text);
    }
}

#[test]
fn secrets_are_redacted_unless_revealed() {
    let redacted = render("shop/production", &[]);
    let revealed = render("shop/production", &["--reveal", "--age-key-file", KEY]);
    let app_key = revealed
        .lines()
        .find_map(|l| l.strip_prefix("APP_KEY=\""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("APP_KEY in the revealed .env")
        .to_string();
    assert!(app_key.starts_with("base64:"), "{app_key}");
    assert!(!redacted.contains(&app_key));
    assert!(redacted.contains("APP_KEY=\"(secret shop-production.app_key, use --reveal)\""));
    // Without an identity, --reveal is a "no" (exit 1) naming what is missing, not a crash.
    let out = keystone()
        .args(["render", "--repo", REPO, "shop/production", "--reveal"])
        .env("HOME", "/nonexistent")
        .env("XDG_CONFIG_HOME", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn out_writes_each_servers_files_at_their_remote_paths() {
    let dir = tempfile::tempdir().unwrap();
    let out = keystone()
        .args(["render", "--repo", REPO, "shop/staging", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    // The placeholders are explained once, on stderr (the files themselves stay as written).
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "note: {{digest:APP}} is the image digest, filled in at deploy time from the build or the \
         registry\n\
         note: {{generated:…}} is a password Keystone generates on the first deploy and keeps \
         encrypted in its state\n\
         note: the deployed copies, with these filled in, are on each server at the paths shown\n"
    );
    let p = |s: &str| dir.path().join(s);
    for f in [
        "web-1/home/keystone/services/shop_staging_web-1-blue/compose.yml",
        "web-1/home/keystone/services/shop_staging_web-1-blue/.env",
        "web-1/home/keystone/services/edge/compose.yml",
        "web-1/home/keystone/gateway/edge/caddy.json",
        "db-1/home/keystone/services/main-postgres/.env",
        "db-1/home/keystone/services/main-valkey/compose.yml",
    ] {
        assert!(Path::new(&p(f)).is_file(), "{f} missing");
    }
    let env = std::fs::read_to_string(p(
        "web-1/home/keystone/services/shop_staging_web-1-blue/.env",
    ))
    .unwrap();
    // Each file has the mode it gets on the server: .env (secrets, with --reveal) 0600.
    use std::os::unix::fs::PermissionsExt;
    let mode = |f: &str| std::fs::metadata(p(f)).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode("web-1/home/keystone/services/shop_staging_web-1-blue/.env"),
        0o600
    );
    assert_eq!(
        mode("web-1/home/keystone/services/shop_staging_web-1-blue/compose.yml"),
        0o644
    );
    assert!(
        env.contains("\nAUTORUN_LARAVEL_SCHEDULER=\"true\"\n"),
        "{env}"
    );
}

#[test]
fn unknown_environment_and_bad_target_are_errors() {
    let out = keystone()
        .args(["render", "--repo", REPO, "shop/nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: unknown environment `shop/nope`; environments: `shop/production`, `shop/staging`\n"
    );
    let out = keystone()
        .args(["render", "--repo", REPO, "shop/stagign"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: unknown environment `shop/stagign`; did you mean `shop/staging`? \
         environments: `shop/production`, `shop/staging`\n"
    );
    let out = keystone()
        .args(["render", "--repo", REPO, "shop"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

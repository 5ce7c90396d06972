//! `keystone plan` checks secrets with the available age identity (issue 5): a changed secret
//! shows as `(secret, changed)` without its value, a tampered one blocks only the environment
//! using it (naming file and key path), and without an identity the plan says in one line that
//! secrets were not checked. Real sops files of examples/config-repo, its committed test-only
//! age key, real git commits; outputs compared exactly (golden files under tests/golden/plan).

mod plan_common;

use plan_common::{copy_dir, git, root};

use std::path::{Path, PathBuf};
use std::process::Command;

use assert_cmd::cargo::CommandCargoExt;

fn key_file() -> PathBuf {
    root().join("examples/config-repo/TEST-ONLY-age-key.txt")
}

/// `keystone ARGS` with no age identity in its environment except what ARGS pass (HOME is an
/// empty directory, the SOPS_AGE_* variables are unset).
fn keystone(home: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::cargo_bin("keystone")
        .unwrap()
        .args(args)
        .env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("SOPS_AGE_KEY")
        .env_remove("SOPS_AGE_KEY_FILE")
        .env_remove("SOPS_AGE_KEY_CMD")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// The example at HEAD~1; HEAD changes what `edit` does to the copy.
fn repo_with(edit: impl FnOnce(&Path, &Path)) -> (tempfile::TempDir, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    copy_dir(&root().join("examples/config-repo"), dir.path());
    git(dir.path(), &["init", "-q", "-b", "main"]);
    git(dir.path(), &["add", "-A"]);
    git(dir.path(), &["commit", "-q", "-m", "base"]);
    edit(dir.path(), home.path());
    git(dir.path(), &["commit", "-q", "-a", "-m", "head"]);
    (dir, home)
}

fn normalise(s: &str, repo: &Path) -> String {
    let base = git(repo, &["rev-parse", "HEAD~1"]);
    let head = git(repo, &["rev-parse", "HEAD"]);
    s.replace(&base, "BASE")
        .replace(&head, "HEAD")
        .replace(&base[..12], "BASE")
        .replace(&head[..12], "HEAD")
        .replace(&base[..7], "BASE")
        .replace(&head[..7], "HEAD")
}

const NEW_APP_KEY: &str = "base64:bmV3LWFwcC1rZXktZm9yLXRoZS10ZXN0LW9ubHk=";

/// A new production APP_KEY, written as a user would: `keystone secrets set`.
fn change_production_app_key(repo: &Path, home: &Path) {
    let file = repo.join("secrets/shop-production.sops.yaml");
    let (code, _, err) = keystone(
        home,
        &[
            "secrets",
            "--age-key-file",
            key_file().to_str().unwrap(),
            "set",
            file.to_str().unwrap(),
            "app_key",
            NEW_APP_KEY,
        ],
    );
    assert_eq!(code, 0, "{err}");
}

#[test]
fn a_changed_secret_shows_as_changed_without_its_value() {
    let (repo, home) = repo_with(change_production_app_key);
    let p = repo.path().to_str().unwrap();
    let key = key_file();
    let (code, out, err) = keystone(
        home.path(),
        &[
            "plan",
            "--repo",
            p,
            "--base",
            "HEAD~1",
            "--head",
            "HEAD",
            "--age-key-file",
            key.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(err, "");
    assert!(!out.contains(NEW_APP_KEY));
    let out = normalise(&out, repo.path());
    assert!(
        out.contains(
            "  ~ variables.APP_KEY (secret): (secret) → (secret, changed) (value not shown)\n"
        ),
        "{out}"
    );
    plan_common::golden("cli-change-secret.txt", &out);

    // The markdown of the pull-request comment says the same, and stays small.
    let (code, md, err) = keystone(
        home.path(),
        &[
            "plan",
            "--repo",
            p,
            "--base",
            "HEAD~1",
            "--head",
            "HEAD",
            "--age-key-file",
            key.to_str().unwrap(),
            "--format",
            "markdown",
            "--pr",
            "42",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(!md.contains(NEW_APP_KEY));
    plan_common::golden("cli-change-secret.md", &normalise(&md, repo.path()));
}

#[test]
fn without_an_identity_the_plan_says_secrets_were_not_checked() {
    let (repo, home) = repo_with(change_production_app_key);
    let p = repo.path().to_str().unwrap();
    let (code, out, err) = keystone(
        home.path(),
        &["plan", "--repo", p, "--base", "HEAD~1", "--head", "HEAD"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        err,
        "keystone: secrets not checked: no age identity; pass --age-key-file (or set SOPS_AGE_KEY_FILE) to see which secrets changed or cannot be decrypted\n"
    );
    let out = normalise(&out, repo.path());
    assert!(
        out.contains("shop/production: no changes\nwarning [secrets-not-checked]: secret values not checked (no age identity): registry.password, shop-production.app_key, shop-production.mail_password, shop.deploy_key\n"),
        "{out}"
    );
    assert!(!out.contains("(secret, changed)"), "{out}");

    // SOPS_AGE_KEY_FILE is an identity too (where sops looks).
    let out2 = Command::cargo_bin("keystone")
        .unwrap()
        .args(["plan", "--repo", p, "--base", "HEAD~1", "--head", "HEAD"])
        .env("HOME", home.path())
        .env_remove("SOPS_AGE_KEY")
        .env("SOPS_AGE_KEY_FILE", key_file())
        .output()
        .unwrap();
    assert_eq!(out2.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out2.stderr), "");
    assert!(
        String::from_utf8_lossy(&out2.stdout).contains("(secret) → (secret, changed)"),
        "{}",
        String::from_utf8_lossy(&out2.stdout)
    );
}

#[test]
fn a_tampered_secret_blocks_only_its_environment() {
    // One character of the staging APP_KEY's ciphertext changed without sops.
    let (repo, home) = repo_with(|repo, _| {
        let file = repo.join("secrets/shop-staging.sops.yaml");
        let text = std::fs::read_to_string(&file).unwrap();
        let tampered = text.replacen(
            "app_key: ENC[AES256_GCM,data:dEq5",
            "app_key: ENC[AES256_GCM,data:dEq6",
            1,
        );
        assert_ne!(text, tampered);
        std::fs::write(&file, tampered).unwrap();
    });
    let p = repo.path().to_str().unwrap();
    let key = key_file();
    let (code, out, err) = keystone(
        home.path(),
        &[
            "plan",
            "--repo",
            p,
            "--rev",
            "HEAD",
            "--age-key-file",
            key.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1, "blocked: exit 1\n{out}\n{err}");
    let out = normalise(&out, repo.path());
    assert!(
        out.contains(
            "shop/staging: blocked (1 blocker)\n"
        ) && out.contains(
            "blocker [undecryptable-secret] applications/shop/environments/staging.yaml:22:21: secret shop-staging.app_key cannot be decrypted: secrets/shop-staging.sops.yaml: `app_key`: the encrypted value does not authenticate: it was changed, or moved from another key\n"
        ),
        "{out}"
    );
    // Production does not use that file: it plans as usual.
    assert!(
        out.contains("shop/production: 1 build, 3 replicas added, 1 database created, migrations pre_switch\n"),
        "{out}"
    );
    plan_common::golden("cli-tampered-secret.txt", &out);
}

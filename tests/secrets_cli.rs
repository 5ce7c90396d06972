//! `keystone secrets set|edit|encrypt` against files the real sops wrote and reads back:
//! unchanged values keep their exact ciphertext, recipients come from keystone.yaml.

mod secrets_support;

use std::path::PathBuf;

use secrets_support::*;

const PLAIN: &str = "# database settings\ndb:\n  password: hunter22\n  port: 5432\n  hosts:\n    - db-1\n    - db-2\napi_token: tok_abcdef\n";

fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (key, recipient) = keygen(dir.path(), "key");
    let plain = dir.path().join("plain.yaml");
    std::fs::write(&plain, PLAIN).unwrap();
    let file = dir.path().join("app.sops.yaml");
    std::fs::write(&file, sops_encrypt(dir.path(), &plain, &[&recipient], &[])).unwrap();
    (dir, key, file)
}

/// Lines that differ between two encrypted files.
fn changed_lines(before: &str, after: &str) -> Vec<String> {
    let b: Vec<&str> = before.lines().collect();
    let a: Vec<&str> = after.lines().collect();
    assert_eq!(a.len(), b.len(), "line count changed:\n{after}");
    a.iter()
        .zip(&b)
        .filter(|(x, y)| x != y)
        .map(|(x, _)| x.split(':').next().unwrap().trim().to_string())
        // The stamp has a resolution of one second: it may or may not have moved.
        .filter(|k| k != "lastmodified")
        .collect()
}

#[test]
fn set_changes_one_value_and_keeps_every_other_ciphertext() {
    let (dir, key, file) = setup();
    let before = std::fs::read_to_string(&file).unwrap();
    let out = keystone(dir.path())
        .args(["secrets", "set", "--age-key-file"])
        .arg(&key)
        .arg(&file)
        .args(["db.password", "n3w-pa55"])
        .output()
        .unwrap();
    ok(out, "keystone secrets set");
    let after = std::fs::read_to_string(&file).unwrap();
    assert_eq!(changed_lines(&before, &after), ["password", "mac"]);
    assert_eq!(
        ok(sops_decrypt(dir.path(), &file, &key), "sops decrypt"),
        "# database settings\ndb:\n    password: n3w-pa55\n    port: 5432\n    hosts:\n        - db-1\n        - db-2\napi_token: tok_abcdef\n"
    );

    // A new nested path creates its maps.
    ok(
        keystone(dir.path())
            .args(["secrets", "set", "--age-key-file"])
            .arg(&key)
            .arg(&file)
            .args(["mail.smtp.password", "m4il-secret"])
            .output()
            .unwrap(),
        "keystone secrets set (new path)",
    );
    let text = ok(sops_decrypt(dir.path(), &file, &key), "sops decrypt");
    assert!(
        text.ends_with("api_token: tok_abcdef\nmail:\n    smtp:\n        password: m4il-secret\n"),
        "{text}"
    );
}

#[test]
fn edit_reencrypts_and_keeps_unchanged_ciphertexts() {
    let (dir, key, file) = setup();
    let before = std::fs::read_to_string(&file).unwrap();
    let editor = dir.path().join("editor.sh");
    std::fs::write(
        &editor,
        "#!/bin/sh\nsed -i 's/port: 5432/port: 6543/' \"$1\"\n",
    )
    .unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&editor)
        .status()
        .unwrap();
    let out = keystone(dir.path())
        .env("EDITOR", &editor)
        .args(["secrets", "edit", "--age-key-file"])
        .arg(&key)
        .arg(&file)
        .output()
        .unwrap();
    ok(out, "keystone secrets edit");
    let after = std::fs::read_to_string(&file).unwrap();
    assert_eq!(changed_lines(&before, &after), ["port", "mac"]);
    assert!(ok(sops_decrypt(dir.path(), &file, &key), "sops decrypt").contains("    port: 6543\n"));

    // An editor that changes nothing leaves the file byte-identical.
    let out = keystone(dir.path())
        .env("EDITOR", "true")
        .args(["secrets", "edit", "--age-key-file"])
        .arg(&key)
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(stderr(&out), format!("{}: no changes\n", file.display()));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), after);
}

#[test]
fn encrypt_takes_recipients_from_keystone_yaml() {
    let dir = tempfile::tempdir().unwrap();
    let (k1, r1) = keygen(dir.path(), "k1");
    let (k2, r2) = keygen(dir.path(), "k2");
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(repo.join("secrets")).unwrap();
    std::fs::write(
        repo.join("keystone.yaml"),
        format!("version: 1\nsecrets:\n  age_recipients:\n    - {r1}\n    - {r2}\n"),
    )
    .unwrap();
    let plain = repo.join("secrets/new.sops.yaml");
    std::fs::write(&plain, "token: abcdef123456\n").unwrap();
    let out = keystone(dir.path())
        .args(["secrets", "encrypt", "--in-place"])
        .arg(&plain)
        .output()
        .unwrap();
    ok(out, "keystone secrets encrypt -i");
    let text = std::fs::read_to_string(&plain).unwrap();
    assert!(
        text.contains(&format!("- recipient: {r1}\n"))
            && text.contains(&format!("- recipient: {r2}\n"))
    );
    for key in [&k1, &k2] {
        assert_eq!(
            ok(sops_decrypt(dir.path(), &plain, key), "sops decrypt"),
            "token: abcdef123456\n"
        );
    }

    // Outside a config repository and without --age: a clear usage error.
    let lone = dir.path().join("lone.yaml");
    std::fs::write(&lone, "a: b\n").unwrap();
    let out = keystone(dir.path())
        .args(["secrets", "encrypt"])
        .arg(&lone)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).starts_with("error: no recipients: pass --age RECIPIENT[,RECIPIENT…]"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn extract_prints_one_value() {
    let (dir, key, file) = setup();
    let out = keystone(dir.path())
        .args([
            "secrets",
            "decrypt",
            "--extract",
            "db.password",
            "--age-key-file",
        ])
        .arg(&key)
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(ok(out, "decrypt --extract"), "hunter22");
    let out = keystone(dir.path())
        .args([
            "secrets",
            "decrypt",
            "--extract",
            "db.nope",
            "--age-key-file",
        ])
        .arg(&key)
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!(
            "error: {}: key `db.nope` not found; the file has: db.password, db.port, db.hosts.0, db.hosts.1, api_token\n",
            file.display()
        )
    );
}

#[test]
fn set_refuses_the_sops_key_and_empty_segments_and_changes_nothing() {
    let (dir, key, file) = setup();
    let before = std::fs::read(&file).unwrap();
    for (path, message) in [
        (
            "sops.mac",
            "error: `sops.mac`: the top-level key `sops` holds the file's SOPS metadata and \
             cannot hold a secret; choose another key\n",
        ),
        (
            "sops",
            "error: `sops`: the top-level key `sops` holds the file's SOPS metadata and cannot \
             hold a secret; choose another key\n",
        ),
        (
            "db..password",
            "error: `db..password` is not a key path: keys are separated by single dots and \
             none may be empty (e.g. `db.password`)\n",
        ),
        (
            ".x",
            "error: `.x` is not a key path: keys are separated by single dots and none may be \
             empty (e.g. `db.password`)\n",
        ),
        (
            "",
            "error: `` is not a key path: keys are separated by single dots and none may be \
             empty (e.g. `db.password`)\n",
        ),
    ] {
        let out = keystone(dir.path())
            .args(["secrets", "set", "--age-key-file"])
            .arg(&key)
            .arg(&file)
            .args([path, "v"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{path}");
        assert_eq!(stderr(&out), message, "{path}");
        assert_eq!(std::fs::read(&file).unwrap(), before, "{path}");
    }
}

#[test]
fn set_through_a_symlink_writes_the_file_it_names() {
    let (dir, key, file) = setup();
    let link = dir.path().join("linked.sops.yaml");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    ok(
        keystone(dir.path())
            .args(["secrets", "set", "--age-key-file"])
            .arg(&key)
            .arg(&link)
            .args(["api_token", "tok_new"])
            .output()
            .unwrap(),
        "keystone secrets set via a symlink",
    );
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(
        ok(sops_decrypt(dir.path(), &file, &key), "sops decrypt").contains("api_token: tok_new\n")
    );
}

#[test]
fn edit_keeps_the_plaintext_private_and_a_bad_edit_changes_nothing() {
    let (dir, key, file) = setup();
    let before = std::fs::read(&file).unwrap();
    // The editor records the modes of the plaintext and its directory, then breaks the YAML.
    let editor = dir.path().join("editor.sh");
    let modes = dir.path().join("modes");
    std::fs::write(
        &editor,
        format!(
            "#!/bin/sh\nstat -c '%a' \"$(dirname \"$1\")\" \"$1\" > '{}'\nprintf 'db: [\\n' > \"$1\"\n",
            modes.display()
        ),
    )
    .unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&editor)
        .status()
        .unwrap();
    let out = keystone(dir.path())
        .env("EDITOR", &editor)
        .args(["secrets", "edit", "--age-key-file"])
        .arg(&key)
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(std::fs::read_to_string(&modes).unwrap(), "700\n600\n");
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with(&format!(
            "error: your edit of {} is not valid: ",
            file.display()
        )),
        "{err}"
    );
    assert!(
        err.ends_with(&format!(
            "\n{} is unchanged; run `keystone secrets edit` again to fix it\n",
            file.display()
        )),
        "{err}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), before);
}

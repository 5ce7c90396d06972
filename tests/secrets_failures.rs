//! Bad secrets fail with a clear message naming the file and key path and exit code 1:
//! a changed ciphertext, a changed plaintext leaf (MAC), the wrong key, key groups; usage
//! and I/O problems exit 2. sops rejects the same files.

mod secrets_support;

use std::path::{Path, PathBuf};
use std::process::Output;

use secrets_support::*;

struct Case {
    dir: tempfile::TempDir,
    key: PathBuf,
    recipient: String,
}

fn case() -> Case {
    let dir = tempfile::tempdir().unwrap();
    let (key, recipient) = keygen(dir.path(), "key");
    Case {
        dir,
        key,
        recipient,
    }
}

impl Case {
    fn sops_file(&self, name: &str, plain: &str) -> PathBuf {
        let p = self.dir.path().join(format!("plain-{name}"));
        std::fs::write(&p, plain).unwrap();
        let enc = sops_encrypt(self.dir.path(), &p, &[&self.recipient], &[]);
        let out = self.dir.path().join(name);
        std::fs::write(&out, enc).unwrap();
        out
    }

    fn decrypt(&self, file: &Path, key: &Path) -> Output {
        keystone(self.dir.path())
            .args(["secrets", "decrypt", "--age-key-file"])
            .arg(key)
            .arg(file)
            .output()
            .unwrap()
    }
}

fn assert_fails(out: &Output, code: i32, message: &str) {
    assert_eq!(out.status.code(), Some(code), "stderr: {}", stderr(out));
    assert_eq!(stderr(out).trim_end(), message);
    assert!(out.stdout.is_empty(), "nothing may be printed on stdout");
}

const PLAIN: &str = "db:\n  password: hunter22\n  user_unencrypted: app\n";

#[test]
fn tampered_ciphertext_is_rejected_naming_the_key_path() {
    let c = case();
    let file = c.sops_file("t.yaml", PLAIN);
    let text = std::fs::read_to_string(&file).unwrap();
    // Flip one base64 character of the password's ciphertext.
    let start = text.find("password: ENC[AES256_GCM,data:").unwrap()
        + "password: ENC[AES256_GCM,data:".len();
    let mut bytes = text.into_bytes();
    bytes[start] = if bytes[start] == b'A' { b'B' } else { b'A' };
    std::fs::write(&file, &bytes).unwrap();

    assert!(
        !sops_decrypt(c.dir.path(), &file, &c.key).status.success(),
        "sops must reject it too"
    );
    let out = c.decrypt(&file, &c.key);
    assert_fails(
        &out,
        1,
        &format!(
            "error: {}: `db.password`: the encrypted value does not authenticate: it was changed, or moved from another key",
            file.display()
        ),
    );
    assert!(!stderr(&out).contains("hunter22"));
}

#[test]
fn value_moved_to_another_key_is_rejected() {
    let c = case();
    let file = c.sops_file("m.yaml", "a: first-secret\nb: second-secret\n");
    let text = std::fs::read_to_string(&file).unwrap();
    let line = |k: &str| text.lines().find(|l| l.starts_with(k)).unwrap().to_string();
    let (a, b) = (line("a: "), line("b: "));
    let swapped = text
        .replace(&a, "A")
        .replace(&b, &a.replacen("a: ", "b: ", 1))
        .replace("A\n", &format!("{}\n", b.replacen("b: ", "a: ", 1)));
    std::fs::write(&file, swapped).unwrap();
    assert!(!sops_decrypt(c.dir.path(), &file, &c.key).status.success());
    let out = c.decrypt(&file, &c.key);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(": `a`: the encrypted value does not authenticate"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn tampered_plaintext_leaf_is_a_mac_mismatch() {
    let c = case();
    let file = c.sops_file("p.yaml", PLAIN);
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        text.replace("user_unencrypted: app", "user_unencrypted: root"),
    )
    .unwrap();
    assert!(!sops_decrypt(c.dir.path(), &file, &c.key).status.success());
    assert_fails(
        &c.decrypt(&file, &c.key),
        1,
        &format!(
            "error: {}: MAC mismatch: the file was changed without sops, or is corrupt",
            file.display()
        ),
    );
}

#[test]
fn removed_value_is_a_mac_mismatch() {
    let c = case();
    let file = c.sops_file("r.yaml", "a: one-secret\nb: two-secret\n");
    let text = std::fs::read_to_string(&file).unwrap();
    let kept: Vec<&str> = text.lines().filter(|l| !l.starts_with("b: ")).collect();
    std::fs::write(&file, kept.join("\n") + "\n").unwrap();
    let out = c.decrypt(&file, &c.key);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).ends_with("MAC mismatch: the file was changed without sops, or is corrupt\n")
    );
}

#[test]
fn wrong_key_names_both_sides() {
    let c = case();
    let file = c.sops_file("w.json", "{\"token\": \"abcdef123456\"}");
    let (other, other_recipient) = keygen(c.dir.path(), "other");
    assert!(!sops_decrypt(c.dir.path(), &file, &other).status.success());
    assert_fails(
        &c.decrypt(&file, &other),
        1,
        &format!(
            "error: {}: none of the available age identities ({other_recipient}) can decrypt this file; it is encrypted to {}",
            file.display(),
            c.recipient
        ),
    );
}

#[test]
fn no_identity_at_all() {
    let c = case();
    let file = c.sops_file("n.env", "TOKEN=abcdef123456\n");
    let out = keystone(c.dir.path())
        .args(["secrets", "decrypt"])
        .arg(&file)
        .output()
        .unwrap();
    assert_fails(
        &out,
        1,
        &format!(
            "error: no age identity found: set SOPS_AGE_KEY_FILE or SOPS_AGE_KEY, put one in {}/xdg/sops/age/keys.txt, or pass --age-key-file",
            c.dir.path().display()
        ),
    );
}

#[test]
fn several_key_groups_are_not_supported_yet() {
    let c = case();
    let (_, r2) = keygen(c.dir.path(), "second");
    std::fs::write(
        c.dir.path().join(".sops.yaml"),
        format!(
            "creation_rules:\n  - shamir_threshold: 2\n    key_groups:\n      - age: [{}]\n      - age: [{r2}]\n",
            c.recipient
        ),
    )
    .unwrap();
    let plain = c.dir.path().join("g-plain.yaml");
    std::fs::write(&plain, "a: secret-value\n").unwrap();
    let file = c.dir.path().join("g.yaml");
    std::fs::write(&file, sops_encrypt(c.dir.path(), &plain, &[], &[])).unwrap();
    assert!(
        std::fs::read_to_string(&file)
            .unwrap()
            .contains("key_groups:")
    );
    assert_fails(
        &c.decrypt(&file, &c.key),
        1,
        &format!(
            "error: {}: uses several key groups (`sops.key_groups`), which Keystone does not support yet; re-encrypt it with plain age recipients (`keystone secrets encrypt --age …`)",
            file.display()
        ),
    );
}

#[test]
fn plaintext_file_and_missing_file_and_bad_usage() {
    let c = case();
    let plain = c.dir.path().join("plain.yaml");
    std::fs::write(&plain, "a: b\n").unwrap();
    assert_fails(
        &c.decrypt(&plain, &c.key),
        1,
        &format!(
            "error: {}: not a sops file: it has no `sops` metadata; encrypt it with `keystone secrets encrypt`",
            plain.display()
        ),
    );
    let missing = c.dir.path().join("missing.yaml");
    let out = c.decrypt(&missing, &c.key);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).starts_with(&format!("error: cannot read {}", missing.display())));

    let out = keystone(c.dir.path())
        .args(["secrets", "encrypt", "--age", "age1notarecipient"])
        .arg(&plain)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).starts_with("error: age1notarecipient: not a valid age recipient"));

    let out = keystone(c.dir.path())
        .args(["secrets", "frobnicate"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn syntax_error_names_line_and_column() {
    let c = case();
    let bad = c.dir.path().join("bad.yaml");
    std::fs::write(&bad, "a: b\n  c: [d\n").unwrap();
    let out = keystone(c.dir.path())
        .args(["secrets", "encrypt", "--age", &c.recipient])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.starts_with(&format!("error: {}:2:", bad.display())),
        "{err}"
    );
}

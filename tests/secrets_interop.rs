//! Interop with the real sops 3.11.0 in both directions, for every store and selector: files
//! sops encrypted decrypt with Keystone to exactly what `sops decrypt` prints, and files Keystone
//! encrypted decrypt with `sops decrypt` to the same document and have the same shape.

mod secrets_support;

use std::path::{Path, PathBuf};

use secrets_support::*;

struct Lab {
    dir: tempfile::TempDir,
    k1: PathBuf,
    r1: String,
    k2: PathBuf,
    r2: String,
}

fn lab() -> Lab {
    let dir = tempfile::tempdir().unwrap();
    let (k1, r1) = keygen(dir.path(), "k1");
    let (k2, r2) = keygen(dir.path(), "k2");
    Lab {
        dir,
        k1,
        r1,
        k2,
        r2,
    }
}

impl Lab {
    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn keystone_decrypt(&self, file: &Path, key: &Path) -> String {
        ok(
            keystone(self.path())
                .arg("secrets")
                .arg("decrypt")
                .arg("--age-key-file")
                .arg(key)
                .arg(file)
                .output()
                .unwrap(),
            "keystone secrets decrypt",
        )
    }

    fn keystone_encrypt(&self, file: &Path, recipients: &[&str], extra: &[&str]) -> Vec<u8> {
        let out = keystone(self.path())
            .arg("secrets")
            .arg("encrypt")
            .args(extra)
            .arg("--age")
            .arg(recipients.join(","))
            .arg(file)
            .output()
            .unwrap();
        assert!(out.status.success(), "keystone encrypt: {}", stderr(&out));
        out.stdout
    }

    /// sops → Keystone and Keystone → sops for one plaintext fixture and selector flags.
    fn round_trips(&self, fixture: &str, flags: &[&str]) {
        let plain = Path::new(FIXTURES).join(fixture);
        let ext = plain.extension().unwrap().to_str().unwrap();
        let (r1, r2) = (self.r1.as_str(), self.r2.as_str());

        let by_sops = self.write(
            &format!("by-sops.{ext}"),
            &sops_encrypt(self.path(), &plain, &[r1, r2], flags),
        );
        let reference = ok(
            sops_decrypt(self.path(), &by_sops, &self.k1),
            "sops decrypt",
        );
        assert!(!reference.is_empty());
        // Either recipient opens it, with Keystone exactly as with sops.
        for key in [&self.k1, &self.k2] {
            assert_eq!(
                self.keystone_decrypt(&by_sops, key),
                reference,
                "{fixture} {flags:?}: Keystone's decryption of a sops file differs from sops'"
            );
        }

        let by_keystone_bytes = self.keystone_encrypt(&plain, &[r1, r2], flags);
        let by_keystone = self.write(&format!("by-keystone.{ext}"), &by_keystone_bytes);
        for key in [&self.k1, &self.k2] {
            assert_eq!(
                ok(
                    sops_decrypt(self.path(), &by_keystone, key),
                    "sops decrypt of a Keystone file"
                ),
                reference,
                "{fixture} {flags:?}: sops' decryption of a Keystone file differs"
            );
        }
        // Same values encrypted, same types, same layout: only ciphertexts and stamps differ.
        assert_eq!(
            shape(&String::from_utf8(by_keystone_bytes).unwrap()),
            shape(&String::from_utf8(std::fs::read(&by_sops).unwrap()).unwrap()),
            "{fixture} {flags:?}: Keystone's encrypted file is shaped differently from sops'"
        );
    }
}

#[test]
fn yaml_with_every_value_type_comments_and_block_scalars() {
    lab().round_trips("kitchen.yaml", &[]);
}

#[test]
fn json_store() {
    lab().round_trips("plain.json", &[]);
}

#[test]
fn dotenv_store() {
    lab().round_trips("plain.env", &[]);
}

#[test]
fn every_selector_in_every_store() {
    let lab = lab();
    let selectors: [&[&str]; 4] = [
        &["--unencrypted-suffix", "_plain"],
        &["--encrypted-suffix", "_secret"],
        &[
            "--encrypted-regex",
            "^(password|token_secret|DB_PASSWORD|database)$",
        ],
        &["--unencrypted-regex", "^(public|PUBLIC)"],
    ];
    for flags in selectors {
        for fixture in ["selectors.yaml", "kitchen.yaml", "plain.json", "plain.env"] {
            lab.round_trips(fixture, flags);
        }
    }
}

#[test]
fn selector_keeps_exactly_the_selected_values_plaintext() {
    let lab = lab();
    let plain = Path::new(FIXTURES).join("selectors.yaml");
    let enc = lab.keystone_encrypt(&plain, &[&lab.r1], &["--encrypted-regex", "^password$"]);
    let text = String::from_utf8(enc).unwrap();
    let body: Vec<&str> = text.lines().take_while(|l| *l != "sops:").collect();
    let expected = [
        "# comment at the top",
        "app:",
        "    name: shop",
        "    password: ENC[str]",
        "    token_secret: abcdefgh",
        "    public_plain: visible",
        "    nested:",
        "        password: ENC[str]",
        "        note_plain: also visible",
        "    items:",
        "        - one",
        "        - two",
    ];
    assert_eq!(
        shape(&body.join("\n")).lines().collect::<Vec<_>>(),
        expected
    );
    assert!(
        text.contains("\n    encrypted_regex: ^password$\n"),
        "{text}"
    );
}

#[test]
fn mac_only_encrypted_both_ways() {
    let lab = lab();
    // sops sets mac_only_encrypted only from a creation rule.
    let dir = lab.path().join("maconly");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join(".sops.yaml"),
        format!(
            "creation_rules:\n  - age: {}\n    mac_only_encrypted: true\n",
            lab.r1
        ),
    )
    .unwrap();
    let plain = Path::new(FIXTURES).join("kitchen.yaml");
    let by_sops = dir.join("by-sops.yaml");
    std::fs::write(&by_sops, sops_encrypt(&dir, &plain, &[], &[])).unwrap();
    let reference = ok(sops_decrypt(&dir, &by_sops, &lab.k1), "sops decrypt");
    assert_eq!(lab.keystone_decrypt(&by_sops, &lab.k1), reference);

    let by_keystone = lab.write(
        "by-keystone.yaml",
        &lab.keystone_encrypt(&plain, &[&lab.r1], &["--mac-only-encrypted"]),
    );
    assert_eq!(
        ok(
            sops_decrypt(lab.path(), &by_keystone, &lab.k1),
            "sops decrypt"
        ),
        reference
    );

    // A plaintext leaf is outside the MAC now: changing it is accepted by both.
    for file in [&by_sops, &by_keystone] {
        let text = std::fs::read_to_string(file).unwrap();
        let changed = text.replace(
            "owner_unencrypted: platform-team",
            "owner_unencrypted: other-team",
        );
        assert_ne!(changed, text);
        std::fs::write(file, changed).unwrap();
        assert!(sops_decrypt(lab.path(), file, &lab.k1).status.success());
        assert!(
            lab.keystone_decrypt(file, &lab.k1)
                .contains("owner_unencrypted: other-team")
        );
    }
}

#[test]
fn multi_document_yaml() {
    let lab = lab();
    let plain = lab.write("multi.yaml", b"a: 1\nb: two\n---\nc: [x, y]\n# end\n");
    let by_sops = lab.write(
        "multi.enc.yaml",
        &sops_encrypt(lab.path(), &plain, &[&lab.r1], &[]),
    );
    let reference = ok(sops_decrypt(lab.path(), &by_sops, &lab.k1), "sops decrypt");
    assert_eq!(
        reference,
        "a: 1\nb: two\n---\nc:\n    - x\n    - \"y\"\n# end\n"
    );
    assert_eq!(lab.keystone_decrypt(&by_sops, &lab.k1), reference);
    let by_keystone = lab.write(
        "multi.ks.yaml",
        &lab.keystone_encrypt(&plain, &[&lab.r1], &[]),
    );
    assert_eq!(
        ok(
            sops_decrypt(lab.path(), &by_keystone, &lab.k1),
            "sops decrypt"
        ),
        reference
    );
}

#[test]
fn identities_from_the_environment_like_sops() {
    let lab = lab();
    let plain = Path::new(FIXTURES).join("selectors.yaml");
    let file = lab.write(
        "env.enc.yaml",
        &sops_encrypt(lab.path(), &plain, &[&lab.r2], &[]),
    );
    let reference = ok(sops_decrypt(lab.path(), &file, &lab.k2), "sops decrypt");
    let key_text = std::fs::read_to_string(&lab.k2).unwrap();
    let inline = key_text
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-1"))
        .unwrap();

    let run = |cmd: &mut std::process::Command| {
        ok(
            cmd.arg("secrets")
                .arg("decrypt")
                .arg(&file)
                .output()
                .unwrap(),
            "keystone decrypt",
        )
    };
    // SOPS_AGE_KEY (inline, beside an unrelated key), SOPS_AGE_KEY_FILE, the default keys file.
    let k1_text = std::fs::read_to_string(&lab.k1).unwrap();
    let both = format!("{}\n{inline}\n", k1_text.lines().last().unwrap());
    assert_eq!(
        run(keystone(lab.path()).env("SOPS_AGE_KEY", &both)),
        reference
    );
    assert_eq!(
        run(keystone(lab.path()).env("SOPS_AGE_KEY_FILE", &lab.k2)),
        reference
    );
    let default = lab.path().join("xdg/sops/age");
    std::fs::create_dir_all(&default).unwrap();
    std::fs::copy(&lab.k2, default.join("keys.txt")).unwrap();
    assert_eq!(run(&mut keystone(lab.path())), reference);
}

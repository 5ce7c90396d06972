//! Decrypting a 1 MB sops file: Keystone (in process and as the `keystone secrets decrypt`
//! command) beside the real `sops decrypt` of the same file, in the same run.
//!
//! `cargo bench --bench secrets_decrypt` prints the figures. Under `cargo test` (no `--bench`
//! argument) it runs once on a small file as a smoke test.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use keystone::secrets::{self, Format, Identities};

fn find(candidates: &[&str], name: &str) -> PathBuf {
    for c in candidates {
        if Path::new(c).is_file() {
            return PathBuf::from(c);
        }
    }
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .expect("sh runs");
    let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        !p.is_empty(),
        "`{name}` is not installed: run scripts/setup.d/05-peers.sh"
    );
    PathBuf::from(p)
}

/// A deterministic secrets file: `services` many blocks of typical values with comments.
fn plaintext(services: usize) -> String {
    let mut seed: u64 = 0x5eed;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut word = |n: usize| -> String {
        (0..n)
            .map(|_| alphabet[(next() % alphabet.len() as u64) as usize] as char)
            .collect()
    };
    let mut out = String::from("# generated for the secrets_decrypt bench\n");
    for i in 0..services {
        out.push_str(&format!(
            "svc_{i}:\n  # credentials of service {i}\n  password: {}\n  api_token: tok_{}\n  port: {}\n  enabled: true\n  ratio: 0.{}\n  hosts:\n    - host-{i}-a.internal\n    - host-{i}-b.internal\n  note_unencrypted: plain text {i}\n",
            word(32),
            word(40),
            1000 + i,
            i % 97 + 1
        ));
    }
    out
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let (services, runs) = if bench { (830, 15) } else { (20, 1) };
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.txt");
    let out = Command::new(find(&["/usr/bin/age-keygen"], "age-keygen"))
        .arg("-o")
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "age-keygen failed");
    let recipient = std::fs::read_to_string(&key)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("# public key: ").map(str::to_string))
        .unwrap();
    let plain = dir.path().join("plain.yaml");
    std::fs::write(&plain, plaintext(services)).unwrap();
    let sops = find(&["/usr/local/bin/sops"], "sops");
    let sops_cmd = || {
        let mut c = Command::new(&sops);
        c.current_dir(dir.path())
            .env_remove("SOPS_AGE_KEY")
            .env("HOME", dir.path())
            .env("SOPS_AGE_KEY_FILE", &key);
        c
    };
    let out = sops_cmd()
        .args(["encrypt", "--age", &recipient])
        .arg(&plain)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sops encrypt: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = dir.path().join("big.sops.yaml");
    std::fs::write(&file, &out.stdout).unwrap();
    let bytes = out.stdout;
    let ids = Identities::from_file(&key).unwrap();

    // Keystone, in process (what the daemon does).
    let mut lib = Vec::new();
    let mut printed = Vec::new();
    for _ in 0..runs + 1 {
        let t = Instant::now();
        let doc = secrets::decrypt_file("big.sops.yaml", &bytes, Format::Yaml, &ids).unwrap();
        lib.push(t.elapsed());
        printed = doc.to_plaintext().unwrap();
    }
    lib.remove(0);

    // Both as commands, printing the plaintext.
    let time_cmd = |mut make: Box<dyn FnMut() -> Command>| {
        let mut times = Vec::new();
        let mut stdout = Vec::new();
        for _ in 0..runs {
            let t = Instant::now();
            let out = make().output().unwrap();
            times.push(t.elapsed());
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            stdout = out.stdout;
        }
        (median(times), stdout)
    };
    let keystone_bin = env!("CARGO_BIN_EXE_keystone");
    let (file2, key2, dir2) = (file.clone(), key.clone(), dir.path().to_path_buf());
    let (cli, cli_out) = time_cmd(Box::new(move || {
        let mut c = Command::new(keystone_bin);
        c.current_dir(&dir2)
            .env("HOME", &dir2)
            .env_remove("SOPS_AGE_KEY")
            .args(["secrets", "decrypt", "--age-key-file"])
            .arg(&key2)
            .arg(&file2);
        c
    }));
    let file3 = file.clone();
    let (by_sops, sops_out) = time_cmd(Box::new(move || {
        let mut c = sops_cmd();
        c.arg("decrypt").arg(&file3);
        c
    }));
    assert_eq!(
        cli_out, sops_out,
        "keystone and sops print different documents"
    );
    assert_eq!(printed, sops_out);

    println!(
        "secrets_decrypt: {} KiB sops file ({} values), median of {runs} runs",
        bytes.len() / 1024,
        bytes.iter().filter(|&&b| b == b'\n').count()
    );
    println!(
        "  keystone decrypt_file (in process)  {:>10}",
        ms(median(lib))
    );
    println!("  keystone secrets decrypt (command)  {:>10}", ms(cli));
    println!("  sops decrypt (command)              {:>10}", ms(by_sops));
}

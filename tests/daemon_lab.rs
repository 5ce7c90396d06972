//! `keystone daemon` end to end on the lab: started on a pinned copy of examples/config-repo, it
//! deploys both environments of the tracked branch by itself and writes the status branch back
//! into the repository: synced and healthy, the deployed digest named, no secret value anywhere.

mod deploy_lab;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use deploy_lab::{Deployment, ROOT, lab_env, lock, reset_hosts};

/// Kills the daemon when the test ends, however it ends.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn git_out(repo: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(repo)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The README row of `env` on the status branch says synced and healthy.
fn synced_and_healthy(readme: &str, env: &str) -> bool {
    readme
        .lines()
        .find(|l| l.starts_with(&format!("| [{env}](")))
        .is_some_and(|l| l.contains("✅ synced") && l.contains("🟢 healthy"))
}

/// Every value encrypted in the example's secret files, decrypted with the test-only key.
fn secret_values(repo: &Path) -> Vec<String> {
    let ids = keystone::secrets::Identities::from_file(Path::new(&format!(
        "{ROOT}/examples/config-repo/TEST-ONLY-age-key.txt"
    )))
    .expect("test-only age key");
    let mut values = Vec::new();
    for entry in std::fs::read_dir(repo.join("secrets")).expect("secrets dir") {
        let path = entry.expect("dir entry").path();
        let bytes = std::fs::read(&path).expect("read secret file");
        let name = path.display().to_string();
        let doc = keystone::secrets::decrypt_file(
            &name,
            &bytes,
            keystone::secrets::Format::from_path(&path),
            &ids,
        )
        .unwrap_or_else(|e| panic!("decrypt {name}: {e}"));
        values.extend(doc.encrypted_values().iter().cloned());
    }
    values.retain(|v| v.len() >= keystone::secrets::MIN_REDACTED_LEN);
    values
}

fn daemon_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn daemon_deploys_the_example_and_writes_the_status_branch() {
    let _lab = lock();
    let env = lab_env();
    reset_hosts();
    let d = Deployment::new();
    let t = Instant::now();
    let log = d.dir.path().join("daemon.log");
    let child = Command::new(env!("CARGO_BIN_EXE_keystone"))
        .args(["--log", "keystone=info", "daemon", "--repo"])
        .arg(&d.repo)
        .arg("--state")
        .arg(&d.state)
        .args(["--ssh-key", env["client_key"].as_str().unwrap()])
        .arg("--age-key-file")
        .arg(format!("{ROOT}/examples/config-repo/TEST-ONLY-age-key.txt"))
        .args(["--poll-interval", "2"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("daemon log"))
        .spawn()
        .expect("start keystone daemon");
    let mut daemon = Daemon(child);

    let deadline = Duration::from_secs(15 * 60);
    let mut last_print = Instant::now();
    let readme = loop {
        if let Some(status) = daemon.0.try_wait().expect("daemon wait") {
            panic!("keystone daemon exited ({status}):\n{}", daemon_log(&log));
        }
        let readme = git_out(&d.repo, &["show", "keystone/status:README.md"]).unwrap_or_default();
        if synced_and_healthy(&readme, "shop/production")
            && synced_and_healthy(&readme, "shop/staging")
        {
            break readme;
        }
        assert!(
            t.elapsed() < deadline,
            "after {:.0?} the status branch does not show both environments synced and healthy:\n{readme}\n--- daemon log ---\n{}",
            t.elapsed(),
            daemon_log(&log)
        );
        if last_print.elapsed() > Duration::from_secs(30) {
            eprintln!(
                "[daemon] {:.0?}: waiting; status README:\n{readme}",
                t.elapsed()
            );
            last_print = Instant::now();
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    eprintln!(
        "[daemon] both environments synced and healthy after {:.1?}",
        t.elapsed()
    );
    drop(daemon);

    let prod = git_out(
        &d.repo,
        &["show", "keystone/status:environments/shop/production.yaml"],
    )
    .expect("environments/shop/production.yaml on the status branch");
    let applied = d.state().applied().expect("applied state");
    let digest = &applied
        .environment("shop", "production")
        .and_then(|e| e.image.as_ref())
        .expect("shop/production image recorded")
        .digest;
    assert!(digest.starts_with("sha256:"), "{digest}");
    assert!(
        prod.contains(&format!("digest: {digest}")),
        "production.yaml does not name {digest}:\n{prod}"
    );

    let secrets = secret_values(&d.repo);
    assert!(!secrets.is_empty(), "no secret values decrypted");
    let files = git_out(
        &d.repo,
        &["ls-tree", "-r", "--name-only", "keystone/status"],
    )
    .expect("status branch tree");
    assert!(
        files.lines().any(|f| f.starts_with("operations/")),
        "no operation log on the status branch: {files}"
    );
    for f in files.lines() {
        let text = git_out(&d.repo, &["show", &format!("keystone/status:{f}")]).unwrap_or_default();
        for s in &secrets {
            assert!(
                !text.contains(s.as_str()),
                "{f} on the status branch contains a secret value"
            );
        }
    }
    assert!(readme.contains("[shop/staging]"), "{readme}");
}

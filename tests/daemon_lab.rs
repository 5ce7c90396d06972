//! `keystone daemon` end to end on the lab, with the real engine: a bare git repository is the
//! config remote (a pinned copy of examples/config-repo), the daemon binary tracks its `main`,
//! and the test pushes to it like a team would. One test, holding the lab lock throughout:
//!
//! 1. startup: both environments deployed, status branch synced and healthy;
//! 2. a push deploys a new release (new digest on every replica, served through the gateway);
//!    pushes while that deploy runs wait for it, and the newer one coalesces the queued one;
//! 3. a commit with invalid YAML: a status commit says why (file:line:col), nothing deploys,
//!    the running release keeps serving;
//! 4. the daemon is SIGKILLed during a deploy and restarted: it converges, and the status
//!    branch records the interrupted operation as interrupted;
//! 5. no secret value in any file of any commit of the status branch, nor in the daemon's log.

mod deploy_lab;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use deploy_lab::{Deployment, ROOT, http_get, lab_env, lock, reset_hosts, ssh_ok};
use keystone::status::{EnvironmentStatus, Health, Outcome, SyncState};

const STATUS: &str = "keystone/status";
const PROD_FILE: &str = "applications/shop/environments/production.yaml";

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=Keystone Test",
            "-c",
            "user.email=test@keystone.invalid",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn git_ok(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn short(c: &str) -> &str {
    &c[..7]
}

/// The config repository: a bare remote the daemon tracks, and a work clone the test pushes from.
struct Config {
    d: Deployment,
    remote: PathBuf,
}

impl Config {
    fn new() -> Config {
        let d = Deployment::new();
        let remote = d.dir.path().join("config.git");
        git(
            d.dir.path(),
            &["clone", "-q", "--bare", "config", "config.git"],
        );
        git(
            &d.repo,
            &["remote", "add", "origin", remote.to_str().unwrap()],
        );
        Config { d, remote }
    }

    fn head(&self) -> String {
        git(&self.d.repo, &["rev-parse", "HEAD"]).trim().to_string()
    }

    /// Rewrite a file, commit and push to the tracked branch; the new commit.
    fn push(&self, file: &str, f: impl FnOnce(String) -> String) -> String {
        self.d.edit(file, f);
        git(&self.d.repo, &["push", "-q", "origin", "main"]);
        self.head()
    }

    fn status_file(&self, path: &str) -> Option<String> {
        git_ok(&self.remote, &["show", &format!("{STATUS}:{path}")])
    }

    fn env(&self, name: &str) -> Option<EnvironmentStatus> {
        let text = self.status_file(&format!("environments/shop/{name}.yaml"))?;
        Some(serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{name}.yaml: {e}\n{text}")))
    }

    /// Subjects of the status branch's commits, oldest first.
    fn subjects(&self) -> Vec<String> {
        git_ok(&self.remote, &["log", "--reverse", "--format=%s", STATUS])
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Every operation log on the status branch's tip.
    fn operations(&self) -> Vec<OpLog> {
        let files =
            git_ok(&self.remote, &["ls-tree", "-r", "--name-only", STATUS]).unwrap_or_default();
        let mut ops: Vec<OpLog> = files
            .lines()
            .filter(|f| f.starts_with("operations/"))
            .map(|f| OpLog::parse(f, &self.status_file(f).unwrap()))
            .collect();
        ops.sort_by(|a, b| (a.started, &a.id).cmp(&(b.started, &b.id)));
        ops
    }

    fn operations_of(&self, env: &str) -> Vec<OpLog> {
        self.operations()
            .into_iter()
            .filter(|o| o.environment == env)
            .collect()
    }
}

/// The header of an `operations/<day>/<id>.md` file.
#[derive(Debug)]
struct OpLog {
    path: String,
    id: String,
    environment: String,
    commit: String,
    outcome: String,
    started: i64,
    finished: Option<i64>,
    error: Option<String>,
    text: String,
}

impl OpLog {
    fn parse(path: &str, text: &str) -> OpLog {
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("- {name}: ")))
                .map(str::to_string)
        };
        let time = |t: &str| {
            time::OffsetDateTime::parse(
                t.split(' ').next().unwrap(),
                &time::format_description::well_known::Rfc3339,
            )
            .unwrap_or_else(|e| panic!("{path}: time {t:?}: {e}"))
            .unix_timestamp()
        };
        let tick = |s: String| s.trim_matches('`').to_string();
        OpLog {
            path: path.to_string(),
            id: tick(field("operation").expect("operation")),
            environment: field("environment").expect("environment"),
            commit: tick(field("commit").expect("commit")),
            // `✓ succeeded` → `succeeded`
            outcome: field("outcome")
                .expect("outcome")
                .split(' ')
                .nth(1)
                .unwrap_or_default()
                .to_string(),
            started: time(&field("started").expect("started")),
            finished: field("finished").map(|f| time(&f)),
            error: field("error"),
            text: text.to_string(),
        }
    }
}

/// A running `keystone daemon`; SIGKILLed when dropped.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(c: &Config, name: &str) -> Daemon {
        let env = lab_env();
        let log = c.d.dir.path().join(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_keystone"))
            .args(["--log", "keystone=info", "daemon", "--repo"])
            .arg(&c.remote)
            .arg("--state")
            .arg(&c.d.state)
            .args(["--ssh-key", env["client_key"].as_str().unwrap()])
            .arg("--age-key-file")
            .arg(format!("{ROOT}/examples/config-repo/TEST-ONLY-age-key.txt"))
            .args(["--poll-interval", "1"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("daemon log"))
            .spawn()
            .expect("start keystone daemon");
        Daemon { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Poll `f` every 500 ms until it gives a value; fail with the status README and the daemon's
/// log when the daemon exits or `limit` passes.
fn wait<T>(
    what: &str,
    limit: Duration,
    c: &Config,
    daemon: &mut Daemon,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let t = Instant::now();
    let mut last_print = Instant::now();
    loop {
        if let Some(v) = f() {
            eprintln!("[daemon-lab] {what}: after {:.1?}", t.elapsed());
            return v;
        }
        if let Some(status) = daemon.child.try_wait().expect("daemon wait") {
            panic!(
                "waiting for {what}: keystone daemon exited ({status}):\n{}",
                daemon.log()
            );
        }
        let readme = c.status_file("README.md").unwrap_or_default();
        assert!(
            t.elapsed() < limit,
            "after {:.0?}, still no {what}. Status README:\n{readme}\n--- daemon log ---\n{}",
            t.elapsed(),
            daemon.log()
        );
        if last_print.elapsed() > Duration::from_secs(30) {
            eprintln!(
                "[daemon-lab] {:.0?} waiting for {what}; status README:\n{readme}",
                t.elapsed()
            );
            last_print = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `env` is synced at `commit` and healthy.
fn converged(c: &Config, env: &str, commit: &str) -> Option<EnvironmentStatus> {
    let e = c.env(env)?;
    (e.sync == SyncState::Synced
        && e.health == Health::Healthy
        && e.last_applied.as_ref().map(|a| a.commit.as_str()) == Some(commit))
    .then_some(e)
}

/// The one digest every replica of every service of `e` runs, each replica healthy.
fn single_digest(e: &EnvironmentStatus) -> String {
    let mut digests = BTreeSet::new();
    let mut replicas = 0;
    for (name, s) in &e.services {
        for r in &s.replicas {
            assert_eq!(r.health, Health::Healthy, "{name}#{}: {r:?}", r.index);
            digests.insert(r.digest.clone().expect("replica digest"));
            replicas += 1;
        }
    }
    assert_eq!(replicas, 3, "web#1, web#2, worker#1: {:?}", e.services);
    assert_eq!(digests.len(), 1, "one image for every replica: {digests:?}");
    let d = digests.into_iter().next().unwrap();
    assert!(
        d.len() == 71 && d.starts_with("sha256:"),
        "not a digest: {d}"
    );
    d
}

/// On each server, the Keystone containers of shop/production that run are exactly the ones the
/// status branch names, each running the image pinned by `digest`.
fn containers_match(e: &EnvironmentStatus, digest: &str) {
    let mut by_server: std::collections::BTreeMap<&str, BTreeSet<String>> = Default::default();
    for s in e.services.values() {
        for r in &s.replicas {
            by_server
                .entry(r.server.as_str())
                .or_default()
                .insert(r.container.clone().expect("replica container"));
        }
    }
    for (server, names) in by_server {
        let running = ssh_ok(
            server,
            "docker ps --format '{{.Names}}' --filter name=^keystone-shop_production_",
        );
        let running: BTreeSet<String> = running.lines().map(str::to_string).collect();
        assert_eq!(running, names, "containers of shop/production on {server}");
        for name in &names {
            let image = ssh_ok(
                server,
                &format!("docker inspect --format '{{{{.Config.Image}}}}' {name}"),
            );
            assert!(
                image.trim().ends_with(&format!("@{digest}")),
                "{server}/{name} runs {image}, not {digest}"
            );
        }
    }
}

/// `GET /` through the gateway on web-1 as shop.lab.test, asserting 200: the app's line
/// (`shop <VERSION> APP_ENV=… host=…`; the body may come chunked).
fn served() -> String {
    let (code, body) = http_get("shop.lab.test").expect("GET / through the gateway");
    assert_eq!(code, 200, "{body}");
    body.lines()
        .find(|l| l.starts_with("shop "))
        .unwrap_or_else(|| panic!("no `shop …` line in {body:?}"))
        .to_string()
}

/// Releases of the example application on the lab's git server, one branch each (removed again
/// at the end); the lab's `main` is left alone.
struct AppSource {
    dir: tempfile::TempDir,
    ssh: String,
    branches: Vec<String>,
}

impl AppSource {
    fn clone() -> AppSource {
        let env = lab_env();
        let dir = tempfile::tempdir().expect("tempdir");
        let known = dir.path().join("known_hosts");
        std::fs::write(
            &known,
            format!("{}\n", env["git"]["known_hosts_line"].as_str().unwrap()),
        )
        .unwrap();
        let ssh = format!(
            "ssh -i {} -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile={}",
            env["git"]["deploy_key"].as_str().unwrap(),
            known.display()
        );
        let out = Command::new("git")
            .args(["clone", "-q", env["git"]["url"].as_str().unwrap(), "src"])
            .env("GIT_SSH_COMMAND", &ssh)
            .current_dir(dir.path())
            .output()
            .expect("git clone");
        assert!(
            out.status.success(),
            "clone the app source: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        AppSource {
            dir,
            ssh,
            branches: Vec::new(),
        }
    }

    fn src(&self) -> PathBuf {
        self.dir.path().join("src")
    }

    fn git(&self, args: &[&str]) -> String {
        let out = Command::new("git")
            .args([
                "-c",
                "user.name=Keystone Test",
                "-c",
                "user.email=test@keystone.invalid",
            ])
            .args(args)
            .env("GIT_SSH_COMMAND", &self.ssh)
            .current_dir(self.src())
            .output()
            .expect("git");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A branch off `main` whose VERSION is `version`, pushed; its name.
    fn release(&mut self, version: &str) -> String {
        let branch = format!("daemon-lab-{version}");
        self.git(&["checkout", "-q", "-B", &branch, "origin/main"]);
        std::fs::write(self.src().join("VERSION"), format!("{version}\n")).unwrap();
        self.git(&["commit", "-qam", &format!("release {version}")]);
        self.git(&["push", "-q", "-f", "origin", &branch]);
        self.branches.push(branch.clone());
        branch
    }
}

impl Drop for AppSource {
    fn drop(&mut self) {
        for b in std::mem::take(&mut self.branches) {
            let _ = Command::new("git")
                .args(["push", "-q", "origin", "--delete", &b])
                .env("GIT_SSH_COMMAND", &self.ssh)
                .current_dir(self.src())
                .output();
        }
    }
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

/// `ref: main` of production.yaml replaced by `ref: <branch>`.
fn with_ref(text: &str, branch: &str) -> String {
    let line = text
        .lines()
        .find(|l| l.starts_with("ref: "))
        .expect("a ref line");
    text.replacen(line, &format!("ref: {branch}"), 1)
}

#[test]
fn daemon_deploys_pushes_coalesces_blocks_bad_commits_and_survives_sigkill() {
    let _lab = lock();
    let _ = lab_env();
    reset_hosts();
    let c = Config::new();
    let mut app = AppSource::clone();
    // Unique per run: each release is a new image.
    let nonce = format!(
        "{}{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            % 100_000
    );
    let releases: Vec<(String, String)> = ["v2", "v3", "v4", "v5"]
        .iter()
        .map(|v| {
            let version = format!("{v}-{nonce}");
            let branch = app.release(&version);
            (version, branch)
        })
        .collect();
    let source_commit = |branch: &str| app.git(&["rev-parse", branch]).trim().to_string();

    // 1. Startup: the daemon deploys the tracked commit of the bare remote.
    let c0 = c.head();
    let mut daemon = Daemon::start(&c, "daemon-1");
    let prod0 = wait(
        "both environments synced and healthy at c0",
        Duration::from_secs(15 * 60),
        &c,
        &mut daemon,
        || {
            converged(&c, "staging", &c0)?;
            converged(&c, "production", &c0)
        },
    );
    let d0 = single_digest(&prod0);
    let body = served();
    assert!(body.starts_with("shop 1 APP_ENV=production "), "{body}");
    let readme = c.status_file("README.md").unwrap();
    assert!(
        readme.contains("| ✅ synced @") && readme.contains("| 🟢 healthy 3/3 |"),
        "{readme}"
    );

    // 2. A release: c1 starts deploying; c2 and c3 are pushed while it runs.
    let (v4, b4) = (&releases[2].0, &releases[2].1);
    let c1 = c.push(PROD_FILE, |t| with_ref(&t, &releases[0].1));
    wait(
        "the deploy of c1 running",
        Duration::from_secs(60),
        &c,
        &mut daemon,
        || {
            let op = c.env("production")?.last_operation?;
            (op.commit == c1 && op.outcome == Outcome::Running).then_some(())
        },
    );
    let c2 = c.push(PROD_FILE, |t| with_ref(&t, &releases[1].1));
    let c1_running_when = |c2: &str| {
        let c2 = c2.to_string();
        let c1 = c1.clone();
        move |c: &Config| {
            let e = c.env("production")?;
            let op = e.last_operation.as_ref()?;
            let queued = format!("deploy of {} queued", short(&c2));
            if e.desired_commit.as_deref() != Some(c2.as_str())
                || e.sync_reason.as_deref() != Some(queued.as_str())
            {
                return None;
            }
            assert!(
                op.commit == c1 && op.outcome == Outcome::Running,
                "the deploy of c1 ended before {} was seen; cannot show the wait: {op:?}",
                short(&c2)
            );
            Some(())
        }
    };
    let seen_c2 = c1_running_when(&c2);
    wait(
        "c2 queued behind the running c1",
        Duration::from_secs(60),
        &c,
        &mut daemon,
        || seen_c2(&c),
    );
    let c3 = c.push(PROD_FILE, |t| with_ref(&t, b4));
    let seen_c3 = c1_running_when(&c3);
    wait(
        "c3 queued (replacing c2) behind the running c1",
        Duration::from_secs(60),
        &c,
        &mut daemon,
        || seen_c3(&c),
    );
    let prod3 = wait(
        "production synced and healthy at c3",
        Duration::from_secs(10 * 60),
        &c,
        &mut daemon,
        || converged(&c, "production", &c3),
    );
    wait(
        "staging synced at c3",
        Duration::from_secs(5 * 60),
        &c,
        &mut daemon,
        || converged(&c, "staging", &c3),
    );
    let d3 = single_digest(&prod3);
    assert_ne!(d3, d0, "the release is a new image");
    assert_eq!(
        prod3.deployed_source.as_deref(),
        Some(format!("shop@{}", short(&source_commit(b4))).as_str())
    );
    containers_match(&prod3, &d3);
    let body = served();
    assert!(
        body.starts_with(&format!("shop {v4} APP_ENV=production")),
        "{body}"
    );

    // Only c1 and c3 deployed production, one after the other; c2 was seen and coalesced.
    let ops = c.operations_of("shop/production");
    let commits: Vec<(&str, &str)> = ops
        .iter()
        .map(|o| (short(&o.commit), o.outcome.as_str()))
        .collect();
    assert_eq!(
        commits,
        [
            (short(&c0), "succeeded"),
            (short(&c1), "succeeded"),
            (short(&c3), "succeeded")
        ],
        "{ops:#?}"
    );
    for pair in ops.windows(2) {
        assert!(
            pair[1].started >= pair[0].finished.expect("finished"),
            "{} started before {} finished",
            pair[1].path,
            pair[0].path
        );
    }
    let subjects = c.subjects();
    let at = |s: &str| {
        subjects
            .iter()
            .position(|x| x == s)
            .unwrap_or_else(|| panic!("no status commit {s:?} in {subjects:#?}"))
    };
    at(&format!("status: config {}", short(&c2)));
    let c1_done = at(&format!(
        "status: shop/production deploy {} succeeded",
        short(&c1)
    ));
    let c3_start = subjects
        .iter()
        .position(|s| {
            s.contains(&format!("shop/production deploy {}", short(&c3))) && s.ends_with(" started")
        })
        .expect("c3 started");
    assert!(c1_done < c3_start, "{subjects:#?}");
    assert!(
        !subjects
            .iter()
            .any(|s| s.contains(&format!("shop/production deploy {}", short(&c2)))),
        "c2 was never deployed: {subjects:#?}"
    );

    // 3. Invalid YAML: blocked with file:line:col, nothing deployed, the release keeps serving.
    let good = std::fs::read_to_string(c.d.repo.join(PROD_FILE)).unwrap();
    let c4 = c.push(PROD_FILE, |t| {
        t.replace("    replicas: 2\n", "    replicas: [2\n")
    });
    let expected: Vec<String> = {
        let repo = git2::Repository::open(&c.d.repo).unwrap();
        let loaded = keystone::config::load_rev(&repo, &c4).unwrap();
        loaded
            .diagnostics
            .iter()
            .map(|d| format!("{}: {}", d.location(), d.message))
            .collect()
    };
    // The parser notices the unclosed `[` of line 12 at the next key, line 15.
    assert_eq!(
        expected,
        [format!(
            "{PROD_FILE}:15:5: while parsing a flow sequence, expected ',' or ']'"
        )]
    );
    let blocked = wait(
        "c4 blocked",
        Duration::from_secs(60),
        &c,
        &mut daemon,
        || {
            let e = c.env("production")?;
            let a = e.last_attempted.as_ref()?;
            (a.commit == c4 && a.outcome == Outcome::Blocked).then_some(e)
        },
    );
    assert_eq!(blocked.problems, expected);
    assert_eq!(
        blocked.last_attempted.as_ref().unwrap().error.as_ref(),
        Some(&expected[0])
    );
    assert_eq!(blocked.last_applied.as_ref().unwrap().commit, c3);
    assert_eq!(blocked.sync, SyncState::OutOfSync);
    assert_eq!(
        blocked.sync_reason.as_deref(),
        Some(format!("commit {} is invalid: 1 problem", short(&c4)).as_str())
    );
    assert_eq!(single_digest(&blocked), d3);
    let message = git(
        &c.remote,
        &[
            "log",
            "--format=%B",
            "--grep",
            &format!("status: commit {} blocked", short(&c4)),
            STATUS,
        ],
    );
    assert_eq!(
        message.trim_end(),
        format!(
            "status: commit {} blocked for 1 environment\n\n- shop/production: {}\n- shop/staging: nothing to change, synced without an operation",
            short(&c4),
            expected[0]
        )
    );
    let readme = c.status_file("README.md").unwrap();
    assert!(
        readme.contains(&format!(
            "**shop/production** at commit {}:\n\n- {}\n",
            short(&c4),
            expected[0]
        )),
        "{readme}"
    );
    wait(
        "staging synced at c4",
        Duration::from_secs(5 * 60),
        &c,
        &mut daemon,
        || converged(&c, "staging", &c4),
    );
    for _ in 0..5 {
        let body = served();
        assert!(
            body.starts_with(&format!("shop {v4} APP_ENV=production")),
            "{body}"
        );
    }
    assert!(
        !c.operations_of("shop/production")
            .iter()
            .any(|o| o.commit == c4),
        "nothing deploys the broken commit"
    );

    // 4. SIGKILL during the deploy of c5, restart: it converges and says what happened.
    let (v5, b5) = (&releases[3].0, &releases[3].1);
    let c5 = c.push(PROD_FILE, |_| with_ref(&good, b5));
    let op5 = wait(
        "the deploy of c5 running",
        Duration::from_secs(60),
        &c,
        &mut daemon,
        || {
            let op = c.env("production")?.last_operation?;
            (op.commit == c5 && op.outcome == Outcome::Running).then_some(op)
        },
    );
    // Past the build, in the middle of the rollout: a replica is being replaced.
    let marker = format!("operation={} ", op5.id);
    let log_path = daemon.log.clone();
    wait(
        "a replica_deploy step of c5 started",
        Duration::from_secs(5 * 60),
        &c,
        &mut daemon,
        || {
            std::fs::read_to_string(&log_path)
                .unwrap_or_default()
                .lines()
                .any(|l| {
                    l.contains("step started")
                        && l.contains(&marker)
                        && l.contains("node=replica_deploy")
                })
                .then_some(())
        },
    );
    daemon.kill();
    let log1 = daemon.log();
    let at_kill = c.env("production").unwrap();
    assert_eq!(
        at_kill
            .last_operation
            .as_ref()
            .map(|o| (o.id.as_str(), o.outcome)),
        Some((op5.id.as_str(), Outcome::Running)),
        "at the kill the branch says the deploy is running"
    );

    let mut daemon = Daemon::start(&c, "daemon-2");
    let prod5 = wait(
        "production synced and healthy at c5 after the restart",
        Duration::from_secs(10 * 60),
        &c,
        &mut daemon,
        || converged(&c, "production", &c5),
    );
    let d5 = single_digest(&prod5);
    assert_ne!(d5, d3);
    containers_match(&prod5, &d5);
    let body = served();
    assert!(
        body.starts_with(&format!("shop {v5} APP_ENV=production")),
        "{body}"
    );
    let ops5: Vec<OpLog> = c
        .operations_of("shop/production")
        .into_iter()
        .filter(|o| o.commit == c5)
        .collect();
    let outcomes: Vec<(&str, &str)> = ops5
        .iter()
        .map(|o| (o.id.as_str(), o.outcome.as_str()))
        .collect();
    assert_eq!(outcomes.len(), 2, "{ops5:#?}");
    assert_eq!(outcomes[0], (op5.id.as_str(), "interrupted"), "{ops5:#?}");
    assert_eq!(outcomes[1].1, "succeeded", "{ops5:#?}");
    let interrupted = &ops5[0];
    assert_eq!(
        interrupted.error.as_deref(),
        Some("interrupted: the daemon stopped during this operation; it is run again")
    );
    // What the state recorded before the kill: the build finished, the rollout was cut short.
    assert!(
        interrupted.text.contains("\n## Tree\n")
            && interrupted.text.contains("✓ build shop@")
            && interrupted.text.contains("↯ "),
        "{}\n--- restarted daemon's log ---\n{}",
        interrupted.text,
        daemon.log()
    );
    assert!(ops5[1].started >= interrupted.started, "{ops5:#?}");

    // 5. No secret value anywhere on the status branch, in any commit, or in the daemon's log.
    let secrets = secret_values(&c.d.repo);
    assert!(
        secrets.len() >= 4,
        "decrypted secret values: {}",
        secrets.len()
    );
    let objects = git(&c.remote, &["rev-list", "--objects", STATUS]);
    let mut blobs = 0;
    for line in objects.lines() {
        let Some((id, path)) = line.split_once(' ') else {
            continue;
        };
        if git(&c.remote, &["cat-file", "-t", id]).trim() != "blob" {
            continue;
        }
        blobs += 1;
        let text = git(&c.remote, &["cat-file", "blob", id]);
        for s in &secrets {
            assert!(
                !text.contains(s.as_str()),
                "{path} ({id}) holds a secret value"
            );
        }
    }
    assert!(blobs > 20, "only {blobs} blobs on the status branch");
    let messages = git(&c.remote, &["log", "--format=%B", STATUS]);
    let logs = format!("{log1}{}", daemon.log());
    for s in &secrets {
        assert!(
            !messages.contains(s.as_str()),
            "a status commit message holds a secret"
        );
        assert!(
            !logs.contains(s.as_str()),
            "the daemon's log holds a secret"
        );
    }
}

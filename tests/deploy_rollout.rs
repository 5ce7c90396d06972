//! Issue 7 on the lab, the rollout cases: a new image redeployed under load with zero failed
//! requests and a drain before the old replicas stop; a new image whose health check fails (its
//! service fails, the rest is cancelled, the failed replicas are removed, the old ones serve);
//! the registry down during a deploy (it fails naming the registry, nothing running is touched).
//!
//! The tests share one applied lab state (the first one to run applies examples/config-repo from
//! scratch); every test holds the lab lock for its whole run and leaves the config repository's
//! HEAD applied. The new images are variants of the applied one (`FROM <applied digest>`, one
//! more line), built on build-1 and pushed under a new tag of 10.77.0.1:5000/acme/shop; the
//! application then deploys that tag (`strategy: external_registry`).

mod deploy_lab;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use deploy_lab::{Deployment, HOSTS, Load, http_get, lab_script, lock, reset_hosts, ssh, ssh_ok};
use keystone::shell::quote;

const APP_FILE: &str = "applications/shop/application.yaml";
const PRODUCTION: &str = "applications/shop/environments/production.yaml";
const STAGING: &str = "applications/shop/environments/staging.yaml";

/// This binary's deployment, and the Keystone containers of the lab as this binary last left
/// them.
struct Shared {
    d: Deployment,
    containers: BTreeMap<&'static str, Vec<String>>,
}

/// The lab with the example applied from scratch: once per test binary, and again when the lab's
/// containers are not the ones this binary left (another test binary used the lab in between:
/// the lab lock is released between tests). Each test ends by recording the containers it leaves.
fn deployed() -> MutexGuard<'static, Option<Shared>> {
    static SHARED: Mutex<Option<Shared>> = Mutex::new(None);
    let mut g = SHARED.lock().unwrap_or_else(|p| p.into_inner());
    if g.as_ref().is_some_and(|s| containers() != s.containers) {
        eprintln!(
            "[rollout] the lab's containers changed since the last test: applying from scratch"
        );
        *g = None;
    }
    if g.is_none() {
        let t = Instant::now();
        reset_hosts();
        let d = Deployment::new();
        let (code, out) = d.apply();
        assert_eq!(code, 0, "the apply from scratch did not converge:\n{out}");
        eprintln!("[rollout] from scratch: {:.1?}", t.elapsed());
        *g = Some(Shared {
            d,
            containers: containers(),
        });
    }
    g
}

/// Files of the config repository as they were, written back (and committed) when dropped, so a
/// failed test leaves the HEAD the next test expects.
struct Restore<'a> {
    d: &'a Deployment,
    files: Vec<(&'static str, String)>,
}

impl<'a> Restore<'a> {
    fn new(d: &'a Deployment, files: &[&'static str]) -> Restore<'a> {
        let files = files
            .iter()
            .map(|f| (*f, std::fs::read_to_string(d.repo.join(f)).unwrap()))
            .collect();
        Restore { d, files }
    }

    fn restore(&mut self) {
        for (f, text) in self.files.drain(..) {
            if std::fs::read_to_string(self.d.repo.join(f)).ok().as_deref() != Some(&text) {
                self.d.edit(f, |_| text);
            }
        }
    }
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        if !self.files.is_empty() {
            self.restore();
        }
    }
}

/// Build on build-1 `FROM <base>` plus `line`, push it as 10.77.0.1:5000/acme/shop:<tag>; the
/// pushed digest.
fn push_variant(base: &str, tag: &str, line: &str) -> String {
    let image = format!("10.77.0.1:5000/acme/shop:{tag}");
    let dockerfile = format!("FROM {base}\n{line}\n");
    let out = ssh_ok(
        "build-1",
        &format!(
            "set -e; printf '%s' {df} | DOCKER_BUILDKIT=0 docker build -q -t {t} - >/dev/null; docker push {t} | sed -n 's/.*digest: \\(sha256:[0-9a-f]*\\).*/\\1/p'",
            df = quote(&dockerfile),
            t = quote(&image)
        ),
    );
    let digest = out.trim().to_string();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "push of {image} printed no digest: {out:?}"
    );
    digest
}

/// Deploy the application's image `tag` (external_registry), whatever the strategy was.
fn use_tag(d: &Deployment, tag: &str) {
    d.edit(APP_FILE, |t| {
        let mut out = String::new();
        for line in t.lines() {
            let l = line.trim_start();
            if l.starts_with("strategy:") {
                out.push_str(&format!("  strategy: external_registry\n  tag: {tag}\n"));
            } else if !l.starts_with("tag:") {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    });
}

/// The last recorded execution of `env` (`shop/production`).
fn last_execution(d: &Deployment, env: &str) -> keystone::state::ExecutionRecord {
    let state = d.state();
    let ids = state.executions().unwrap();
    ids.iter()
        .rev()
        .filter_map(|id| state.execution(*id).unwrap())
        .find(|e| e.environment.as_deref() == Some(env))
        .expect("an execution of the environment")
}

fn op<'a>(
    exec: &'a keystone::state::ExecutionRecord,
    id: &str,
) -> &'a keystone::state::OperationRecord {
    exec.operation(id).unwrap_or_else(|| {
        panic!(
            "no operation {id} in {:?}",
            exec.operations.iter().map(|o| &o.op_id).collect::<Vec<_>>()
        )
    })
}

fn step_text(s: &keystone::state::StepRecord) -> String {
    s.output.as_ref().map(|o| o.text()).unwrap_or_default()
}

/// Every Keystone container on every lab host: host → [`name id status`].
fn containers() -> BTreeMap<&'static str, Vec<String>> {
    HOSTS
        .iter()
        .map(|h| {
            let out = ssh_ok(
                h,
                "docker ps -a --filter name=^keystone- --format '{{.Names}} {{.ID}} {{.State}}' | sort",
            );
            (*h, out.lines().map(str::to_string).collect())
        })
        .collect()
}

/// The app's answer line (`shop <version> APP_ENV=<env> host=<hostname>`) in a body (Caddy
/// answers HTTP/1.1 chunked, so the line sits between chunk sizes).
fn app_line(body: &str) -> Option<&str> {
    body.lines().map(str::trim).find(|l| l.starts_with("shop "))
}

/// The app's answer without its `host=` word (replicas answer with their own hostname).
fn without_host(body: &str) -> String {
    app_line(body)
        .unwrap_or_else(|| panic!("not an answer of the app: {body:?}"))
        .split_whitespace()
        .filter(|w| !w.starts_with("host="))
        .collect::<Vec<_>>()
        .join(" ")
}

fn assert_old_replicas_serve(served_before: &str) {
    for _ in 0..20 {
        let (status, body) = http_get("shop.lab.test").expect("HTTP through the gateway");
        assert_eq!(status, 200, "{body}");
        assert_eq!(without_host(&body), without_host(served_before));
    }
}

#[test]
fn zero_downtime_redeploy_of_a_new_image_under_load() {
    let _lab = lock();
    let mut g = deployed();
    let s = g.as_mut().unwrap();
    let d = &s.d;
    let before = d.state().applied().unwrap();
    let prod = before.environment("shop", "production").unwrap();
    let old = prod.services["web"].replicas.clone();
    let version = format!("zd-{}-{}", std::process::id(), keystone_nonce());
    let digest = push_variant(
        &prod.image.as_ref().unwrap().reference(),
        &version,
        &format!("RUN echo {version} > /app/VERSION"),
    );
    use_tag(d, &version);

    // 4 clients asking `/`, 3 holding `/?sleep=3` (in flight on the old replica when the
    // cutover starts), from before the deploy until after it.
    let load_wall = time::OffsetDateTime::now_utc();
    let load = Load::start("shop.lab.test", 4, 3);
    let load_started = load.started;
    std::thread::sleep(Duration::from_secs(2));
    let (code, out) = d.apply();
    std::thread::sleep(Duration::from_secs(4));
    let results = load.finish();
    assert_eq!(code, 0, "keystone apply did not converge:\n{out}");

    let failed: Vec<_> = results
        .iter()
        .filter(|(_, _, r)| !matches!(r, Ok((200, b)) if app_line(b).is_some()))
        .map(|(t, p, r)| {
            format!(
                "{:?} after the start, {p}: {r:?}",
                t.duration_since(results[0].0)
            )
        })
        .collect();
    let new_answers = results
        .iter()
        .filter(|(_, _, r)| {
            matches!(r, Ok((_, b)) if app_line(b).is_some_and(|l| l.starts_with(&format!("shop {version} "))))
        })
        .count();
    let slow = results.iter().filter(|(_, p, _)| p != "/").count();
    eprintln!(
        "[rollout] zero downtime: {} requests ({slow} slow), {} failed, {new_answers} answered by the new image",
        results.len(),
        failed.len()
    );
    if !failed.is_empty() {
        // What was running then (operations of both environments, by their recorded times).
        let at: Vec<time::OffsetDateTime> = results
            .iter()
            .filter(|(_, _, r)| !matches!(r, Ok((200, b)) if app_line(b).is_some()))
            .map(|(t, _, _)| load_wall + t.duration_since(load_started))
            .collect();
        let mut running = Vec::new();
        for env in ["shop/production", "shop/staging"] {
            for o in last_execution(d, env).operations {
                let parse = |t: &Option<String>| {
                    t.as_deref().and_then(|t| {
                        time::OffsetDateTime::parse(
                            t,
                            &time::format_description::well_known::Rfc3339,
                        )
                        .ok()
                    })
                };
                if let (Some(a), Some(b)) = (parse(&o.started_at), parse(&o.finished_at))
                    && at
                        .iter()
                        .any(|t| a <= *t && *t <= b + Duration::from_secs(1))
                {
                    running.push(format!("{} {a} .. {b}", o.op_id));
                }
            }
        }
        panic!(
            "failed requests during the redeploy:\n{}\noperations running then:\n{}\n{out}",
            failed.join("\n"),
            running.join("\n")
        );
    }
    assert!(new_answers > 0, "no request reached the new replicas");
    assert!(
        new_answers < results.len(),
        "no request was answered by the old replicas"
    );
    let (_, body) = http_get("shop.lab.test").unwrap();
    assert!(
        app_line(&body)
            .is_some_and(|l| l.starts_with(&format!("shop {version} APP_ENV=production host="))),
        "after the deploy: {body}"
    );
    let after = d.state().applied().unwrap();
    let image = after
        .environment("shop", "production")
        .unwrap()
        .image
        .clone()
        .unwrap();
    assert_eq!(
        image.digest, digest,
        "the pushed variant is what was deployed"
    );

    // The cutover: new upstreams first, then it waited until the old ones had no request in
    // flight, removed them, and only then stopped the old replicas.
    let exec = last_execution(d, "shop/production");
    let cutover = op(&exec, "shop/production/gateway_cutover/edge");
    let names: Vec<&str> = cutover.steps.iter().map(|s| s.name.as_str()).collect();
    let mut want: Vec<String> = [
        "health of web#1 through web-1",
        "health of web#2 through web-1",
        "ensure route keystone_shop_production_web on web-1",
        "add upstreams on web-1",
        "drain old upstreams on web-1",
        "remove old upstreams on web-1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    want.extend(old.iter().map(|r| format!("stop old {}", r.container)));
    assert_eq!(names, want, "cutover steps");
    assert!(
        cutover
            .steps
            .iter()
            .all(|s| s.status == keystone::execute::Status::Succeeded),
        "{:?}",
        cutover.steps
    );
    let drain = step_text(&cutover.steps[4]);
    let waited: u64 = drain
        .trim()
        .strip_prefix("drained after ")
        .and_then(|s| s.strip_suffix('s'))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("drain output: {drain:?}"));
    eprintln!("[rollout] the drain waited {waited}s for the old upstream's requests");
    // The slow requests were in flight on the old upstream: the drain saw them and waited.
    assert!(
        (1..=5).contains(&waited),
        "drain waited {waited}s (slow requests are 3 s long): {drain:?}"
    );
    // The old containers are gone; the new ones run the new digest.
    let new = &after.environment("shop", "production").unwrap().services["web"].replicas;
    for (o, n) in old.iter().zip(new) {
        assert_ne!(o.container, n.container);
        assert_eq!(n.digest, digest);
        let gone = ssh(
            &o.server,
            &format!("docker inspect {}", quote(&o.container)),
        );
        assert!(
            !gone.status.success(),
            "old replica {} still exists",
            o.container
        );
    }
    s.containers = containers();
}

/// A short random hex string (several runs share the registry).
fn keystone_nonce() -> String {
    let mut b = [0u8; 3];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn unhealthy_new_image_fails_its_service_cancels_the_rest_and_is_removed() {
    let _lab = lock();
    let mut g = deployed();
    let s = g.as_mut().unwrap();
    let d = &s.d;
    let before = d.state().applied().unwrap();
    let prod = before.environment("shop", "production").unwrap();
    let running = containers();
    let (_, served_before) = http_get("shop.lab.test").unwrap();
    let mut restore = Restore::new(d, &[APP_FILE, PRODUCTION, STAGING]);

    // The new image never writes /up (the example app's APP_HEALTH=fail), so its health path
    // answers 404; a 10 s health timeout keeps the three attempts short.
    let tag = format!("unhealthy-{}-{}", std::process::id(), keystone_nonce());
    push_variant(
        &prod.image.as_ref().unwrap().reference(),
        &tag,
        "ENV APP_HEALTH=fail",
    );
    use_tag(d, &tag);
    d.edit(PRODUCTION, |t| {
        t.replacen(
            "health: {path: /up}",
            "health: {path: /up, timeout: 10s}",
            1,
        )
    });
    d.edit(STAGING, |t| {
        t.replacen(
            "    placement: {servers: [web-1]}\n",
            "    placement: {servers: [web-1]}\n    health: {path: /up, timeout: 10s}\n",
            1,
        )
    });
    let (code, out) = d.apply();
    assert_eq!(code, 1, "an unhealthy deploy must exit 1:\n{out}");
    // The replicas' container health check (wget of /up) reports them unhealthy.
    assert!(
        out.contains(
            "failed shop/production/service_deploy/web/replica_deploy/web#1 · wait healthy"
        ),
        "{out}"
    );

    // The state says which step failed and why: the health state and the container's last log
    // lines; the failed replica was stopped and removed, the probe after it never ran.
    let exec = last_execution(d, "shop/production");
    assert_eq!(exec.status, keystone::execute::Status::Failed);
    assert_eq!(
        op(&exec, "shop/production/service_deploy/web").status,
        keystone::execute::Status::Failed
    );
    for i in 1..=2 {
        let r = op(
            &exec,
            &format!("shop/production/service_deploy/web/replica_deploy/web#{i}"),
        );
        assert_eq!(r.status, keystone::execute::Status::Failed, "web#{i}");
        let names: Vec<(&str, keystone::execute::Status)> = r
            .steps
            .iter()
            .map(|s| (s.name.as_str(), s.status))
            .collect();
        use keystone::execute::Status::{Cancelled, Failed, Succeeded};
        assert_eq!(
            names,
            [
                ("upload compose.yml", Succeeded),
                ("upload .env", Succeeded),
                ("pull image by digest", Succeeded),
                ("start", Succeeded),
                ("wait healthy", Failed),
                ("probe /up", Cancelled)
            ],
            "web#{i}"
        );
        let health = &r.steps[4];
        assert_eq!(health.attempts, 3);
        let error = health.error.clone().unwrap_or_default();
        let old = &prod.services["web"].replicas[i - 1];
        let new = format!(
            "keystone-shop_production_web-{i}-{}",
            other_slot(&old.container)
        );
        // `exit status 1: <the container's last log line>; on failure: …`
        assert!(
            error.starts_with("exit status 1: [::ffff:127.0.0.1]:")
                && error.ends_with(&format!(
                    " response:404; on failure: stopped and removed {new}"
                )),
            "web#{i}: {error}"
        );
        let text = step_text(health);
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{new} is not healthy (health:unhealthy) after ")))
            .unwrap_or_else(|| panic!("web#{i} output:\n{text}"));
        assert!(line.ends_with("s; last log lines:"), "{line}");
        assert!(
            text.contains(" listening on :8080 (APP_ENV=production)\n"),
            "the container's log lines are in the output:\n{text}"
        );
        assert!(
            text.ends_with(&format!("\non failure:\n Container {new}  Stopping\n Container {new}  Stopped\n Container {new}  Removing\n Container {new}  Removed\n Network {new}_default  Removing\n Network {new}_default  Removed\nstopped and removed {new}\n")),
            "web#{i} output:\n{text}"
        );
        // Its files stay where `docker compose up` reproduces the failed start.
        let dir = format!(
            "/home/keystone/services/{}",
            new.strip_prefix("keystone-").unwrap()
        );
        let kept = ssh_ok(
            &old.server,
            &format!(
                "cd {} && test -f compose.yml && test -f .env && echo kept",
                quote(&dir)
            ),
        );
        assert_eq!(kept.trim(), "kept", "{dir}");
        let gone = ssh(&old.server, &format!("docker inspect {}", quote(&new)));
        assert!(
            !gone.status.success(),
            "the failed replica {new} is still on {}",
            old.server
        );
    }
    assert_eq!(
        op(&exec, "shop/production/service_deploy/worker").status,
        keystone::execute::Status::Cancelled
    );
    assert_eq!(
        op(&exec, "shop/production/gateway_cutover/edge").status,
        keystone::execute::Status::Cancelled
    );

    // Nothing recorded as applied; the same containers as before, all running; the old
    // replicas still serve the old answer.
    assert_eq!(d.state().applied().unwrap(), before);
    assert_eq!(containers(), running);
    assert_old_replicas_serve(&served_before);

    // Back to the applied config: nothing to do.
    restore.restore();
    let (code, out) = d.apply();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("shop/production: unchanged"), "{out}");
    assert_eq!(d.state().applied().unwrap(), before);
    s.containers = containers();
}

/// `green` for a `…-blue` container and the other way round: the slot a new replica takes.
fn other_slot(container: &str) -> &'static str {
    if container.ends_with("-blue") {
        "green"
    } else {
        assert!(container.ends_with("-green"), "{container}");
        "blue"
    }
}

/// The lab registry stopped (`scripts/lab registry stop`) until dropped — also when the test
/// panics — then started again (other agents use the lab).
struct RegistryDown;

impl RegistryDown {
    fn stop() -> RegistryDown {
        let out = Command::new(lab_script())
            .args(["registry", "stop"])
            .output()
            .expect("scripts/lab registry stop");
        // From here on, whatever happens, the guard starts it again.
        let guard = RegistryDown;
        assert!(
            out.status.success(),
            "scripts/lab registry stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        guard
    }
}

impl Drop for RegistryDown {
    fn drop(&mut self) {
        let out = Command::new(lab_script())
            .args(["registry", "start"])
            .output();
        match out {
            Ok(o) if o.status.success() => eprintln!("[rollout] the lab registry is up again"),
            other => {
                eprintln!("[rollout] scripts/lab registry start FAILED: {other:?}");
                if !std::thread::panicking() {
                    panic!("scripts/lab registry start failed: {other:?}");
                }
            }
        }
    }
}

fn registry_answers() -> bool {
    Command::new("curl")
        .args([
            "-sf",
            "--max-time",
            "2",
            "-o",
            "/dev/null",
            "http://10.77.0.1:5000/v2/",
        ])
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn registry_down_fails_the_deploy_naming_the_registry_and_touches_nothing() {
    let _lab = lock();
    let mut g = deployed();
    let s = g.as_mut().unwrap();
    let d = &s.d;
    let before = d.state().applied().unwrap();
    let running = containers();
    let (_, served_before) = http_get("shop.lab.test").unwrap();
    let mut restore = Restore::new(d, &[PRODUCTION]);

    // A new variable: every replica is replaced, each pulls the (unchanged) image by digest.
    let mark = format!("registry-down-{}", std::process::id());
    d.edit(PRODUCTION, |t| {
        t.replacen(
            "variables:\n",
            &format!("variables:\n  DEPLOY_MARK: {mark}\n"),
            1,
        )
    });
    let (code, out) = {
        let _down = RegistryDown::stop();
        assert!(!registry_answers(), "the registry still answers");
        d.apply()
    };
    assert!(registry_answers(), "the registry did not come back");
    assert_eq!(code, 1, "a deploy without its registry must exit 1:\n{out}");

    // Each replica's pull failed, naming the registry; nothing started, so nothing was removed.
    let cause =
        "the registry 10.77.0.1:5000 is unreachable from this server (Docker's message is above)";
    assert!(out.contains(cause), "{out}");
    let exec = last_execution(d, "shop/production");
    for i in 1..=2 {
        let r = op(
            &exec,
            &format!("shop/production/service_deploy/web/replica_deploy/web#{i}"),
        );
        let failed: Vec<_> = r
            .steps
            .iter()
            .filter(|s| s.status == keystone::execute::Status::Failed)
            .collect();
        assert_eq!(failed.len(), 1, "web#{i}: {:?}", r.steps);
        assert_eq!(failed[0].name, "pull image by digest");
        assert_eq!(
            failed[0].error.as_deref(),
            Some(format!("exit status 1: {cause}").as_str())
        );
        let text = step_text(failed[0]);
        assert!(
            text.contains("10.77.0.1:5000") && text.contains("connection refused"),
            "Docker's own message is kept: {text}"
        );
        for s in &r.steps {
            if ["start", "wait healthy", "probe /up"].contains(&s.name.as_str()) {
                assert_eq!(s.status, keystone::execute::Status::Cancelled, "{}", s.name);
            }
        }
    }
    assert_eq!(
        op(&exec, "shop/production/service_deploy/worker").status,
        keystone::execute::Status::Cancelled
    );
    assert_eq!(
        op(&exec, "shop/production/gateway_cutover/edge").status,
        keystone::execute::Status::Cancelled
    );
    assert_eq!(d.state().applied().unwrap(), before);
    assert_eq!(containers(), running, "a container changed");
    assert_old_replicas_serve(&served_before);

    // Back to the applied config (the registry up again): nothing to do.
    restore.restore();
    let (code, out) = d.apply();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("shop/production: unchanged"), "{out}");
    s.containers = containers();
}

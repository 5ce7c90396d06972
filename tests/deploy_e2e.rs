//! Issue 7 end to end on the lab: `keystone apply` of examples/config-repo deploys both
//! environments for real (build on build-1, push, pull by digest, slices, gateway), and the
//! deploys after it keep serving. The tests share one applied lab state (the first one to run
//! applies from scratch); every test holds the lab lock for its whole run.

mod deploy_lab;

use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use deploy_lab::{Deployment, Load, http_get, lock, reset_hosts, ssh, ssh_ok};
use keystone::plan::AppliedSlice;

struct Shared {
    deployment: Deployment,
    /// Exit code and output of the first apply, from scratch.
    first: (i32, String),
}

/// The lab with the example applied from scratch (once per test binary).
fn deployed() -> MutexGuard<'static, Option<Shared>> {
    static SHARED: Mutex<Option<Shared>> = Mutex::new(None);
    let mut g = SHARED.lock().unwrap_or_else(|p| p.into_inner());
    if g.is_none() {
        let t = Instant::now();
        reset_hosts();
        let deployment = Deployment::new();
        let first = deployment.apply();
        eprintln!("[deploy] from scratch: {:.1?}", t.elapsed());
        *g = Some(Shared { deployment, first });
    }
    g
}

fn is_digest(d: &str) -> bool {
    d.len() == 71
        && d.starts_with("sha256:")
        && d[7..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

fn assert_converged(code: i32, out: &str) {
    assert_eq!(code, 0, "keystone apply did not converge:\n{out}");
}

#[test]
fn two_server_environment_applied_from_scratch() {
    let _lab = lock();
    let g = deployed();
    let s = g.as_ref().unwrap();
    let (code, out) = &s.first;
    assert_converged(*code, out);
    for line in [
        "succeeded shop/production/build · clone, build and push",
        "service:main-postgres: succeeded",
        "service:main-valkey: succeeded",
        "service:edge: succeeded",
        "shop/production: succeeded",
        "shop/staging: succeeded",
    ] {
        assert!(out.contains(line), "no `{line}` in:\n{out}");
    }

    let state = s.deployment.state();
    let applied = state.applied().expect("applied state");
    let prod = applied
        .environment("shop", "production")
        .expect("shop/production applied");
    let image = prod.image.as_ref().expect("image recorded");
    assert_eq!(image.repository, "10.77.0.1:5000/acme/shop");
    assert!(is_digest(&image.digest), "recorded digest {}", image.digest);
    let pinned = image.reference();

    // Built on the builder and pushed: the registry serves that digest.
    let manifest = std::process::Command::new("curl")
        .args([
            "-fsS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "Accept: application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json",
            &format!("http://10.77.0.1:5000/v2/acme/shop/manifests/{}", image.digest),
        ])
        .output()
        .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&manifest.stdout),
        "200",
        "registry lacks {pinned}"
    );

    // Pulled by digest on both web hosts; every replica runs exactly that image, and is healthy.
    let web = &prod.services["web"];
    assert_eq!(
        web.replicas
            .iter()
            .map(|r| r.server.as_str())
            .collect::<Vec<_>>(),
        ["web-1", "web-2"]
    );
    for r in &web.replicas {
        let digests = ssh_ok(
            &r.server,
            &format!(
                "docker image inspect --format '{{{{json .RepoDigests}}}}' {}",
                keystone::shell::quote(&pinned)
            ),
        );
        assert!(
            digests.contains(&pinned),
            "{}: RepoDigests {digests} lack {pinned}",
            r.server
        );
        let running = ssh_ok(
            &r.server,
            &format!(
                "docker inspect --format '{{{{.Config.Image}}}} {{{{.State.Status}}}}' {}",
                keystone::shell::quote(&r.container)
            ),
        );
        assert_eq!(
            running.trim(),
            format!("{pinned} running"),
            "{}",
            r.container
        );
        assert_eq!(r.digest, image.digest);
        let port = r.host_port.expect("web replicas publish a host port");
        let up = ssh_ok(&r.server, &format!("curl -fsS http://127.0.0.1:{port}/up"));
        assert!(!up.is_empty(), "{}: /up answered nothing", r.container);
    }
    // The builder keeps no deploy key and no operation directory.
    let left = ssh_ok(
        "build-1",
        "find /home/keystone -name deploy_key; ls -A /home/keystone/operations 2>/dev/null || true",
    );
    assert_eq!(left.trim(), "", "left on build-1 after a successful build");

    // A Postgres database and role that can log in, with the credentials from the state.
    let slice = keystone::drivers::SliceKey::new("main-postgres", "shop", "production");
    let password = state
        .generated(&keystone::drivers::postgres18::slice_password_key(&slice))
        .expect("generated role password");
    assert!(
        matches!(
            &prod.slices["main-postgres"],
            AppliedSlice::PostgresDatabase { database, role } if database == "shop_production" && role == "shop_production"
        ),
        "{:?}",
        prod.slices
    );
    let psql = std::process::Command::new("psql")
        .args([
            "-h", "10.77.0.14", "-p", "5432", "-U", "shop_production", "-d", "shop_production",
            "-tA", "-c", "select current_user || ' ' || current_database() || ' ' || (select pg_catalog.pg_get_userbyid(datdba) from pg_database where datname = current_database())",
        ])
        .env("PGPASSWORD", &password)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("psql (scripts/setup.d/05-peers.sh installs it)");
    assert!(
        psql.status.success(),
        "psql login: {}",
        String::from_utf8_lossy(&psql.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&psql.stdout).trim(),
        "shop_production shop_production shop_production"
    );
    // A wrong password is refused (the login above is not trust auth).
    let refused = std::process::Command::new("psql")
        .args([
            "-h",
            "10.77.0.14",
            "-U",
            "shop_production",
            "-d",
            "shop_production",
            "-c",
            "select 1",
        ])
        .env("PGPASSWORD", "not-the-password")
        .output()
        .unwrap();
    assert!(!refused.status.success(), "a wrong password logged in");

    // Valkey indexes recorded: production 0, staging 1, and the replicas were given them.
    let stag = applied
        .environment("shop", "staging")
        .expect("shop/staging applied");
    for (env, want) in [(prod, 0u32), (stag, 1u32)] {
        match &env.slices["main-valkey"] {
            AppliedSlice::ValkeyDatabase { index, .. } => assert_eq!(*index, want),
            other => panic!("main-valkey slice {other:?}"),
        }
    }
    let env_file = ssh_ok(
        "web-1",
        &format!(
            "docker exec {} sh -c 'echo \"$REDIS_DB\"'",
            keystone::shell::quote(&web.replicas[0].container)
        ),
    );
    assert_eq!(env_file.trim(), "0");

    // The gateway host answers with the app's response, per domain.
    let (status, body) = http_get("shop.lab.test").expect("HTTP through the gateway");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("APP_ENV=production"), "{body}");
    let (status, body) = http_get("staging.shop.lab.test").expect("HTTP through the gateway");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("APP_ENV=staging"), "{body}");
    // Caddy answers an unknown domain itself (an empty 200), never with the app.
    let (_, body) = http_get("unknown.lab.test").expect("HTTP through the gateway");
    assert!(
        !body.contains("APP_ENV"),
        "an unknown domain reached the app: {body}"
    );
    let _ = ssh;
}

#[test]
fn second_apply_of_the_same_commit_changes_nothing() {
    let _lab = lock();
    let g = deployed();
    let s = g.as_ref().unwrap();
    assert_converged(s.first.0, &s.first.1);
    let before = s.deployment.state().applied().unwrap();
    let (code, out) = s.deployment.apply();
    assert_converged(code, &out);
    for part in [
        "service:edge",
        "service:main-postgres",
        "service:main-valkey",
        "shop/production",
        "shop/staging",
    ] {
        assert!(
            out.contains(&format!("{part}: unchanged")),
            "{part} not unchanged:\n{out}"
        );
    }
    assert!(!out.contains("succeeded shop/"), "a step ran:\n{out}");
    assert_eq!(s.deployment.state().applied().unwrap(), before);
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

#[test]
fn zero_downtime_redeploy_under_load() {
    let _lab = lock();
    let g = deployed();
    let s = g.as_ref().unwrap();
    assert_converged(s.first.0, &s.first.1);
    let d = &s.deployment;
    let before = d.state().applied().unwrap();
    let old: Vec<_> = before.environment("shop", "production").unwrap().services["web"]
        .replicas
        .clone();
    let marker = format!("zd{}", std::process::id());
    d.edit("applications/shop/environments/production.yaml", |t| {
        let line = t
            .lines()
            .find(|l| l.trim_start().starts_with("APP_ENV:"))
            .expect("APP_ENV line")
            .to_string();
        t.replacen(&line, &format!("  APP_ENV: production-{marker}"), 1)
    });

    let load = Load::start("shop.lab.test", 4, 2);
    std::thread::sleep(std::time::Duration::from_secs(2));
    let (code, out) = d.apply();
    std::thread::sleep(std::time::Duration::from_secs(4));
    let results = load.finish();
    assert_converged(code, &out);

    let failed: Vec<_> = results
        .iter()
        .filter(|(_, _, r)| !matches!(r, Ok((200, b)) if b.contains("shop ")))
        .map(|(t, p, r)| {
            format!(
                "{:?} after start {p}: {r:?}",
                t.duration_since(results[0].0)
            )
        })
        .collect();
    let new_answers = results
        .iter()
        .filter(|(_, _, r)| matches!(r, Ok((_, b)) if b.contains(&marker)))
        .count();
    let slow = results.iter().filter(|(_, p, _)| p != "/").count();
    eprintln!(
        "[deploy] zero downtime: {} requests ({slow} slow), {} failed, {new_answers} answered by the new replicas",
        results.len(),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "failed requests during the redeploy:\n{}",
        failed.join("\n")
    );
    assert!(new_answers > 0, "no request reached the new replicas");
    let (_, body) = http_get("shop.lab.test").unwrap();
    assert!(body.contains(&marker), "after the deploy: {body}");

    // The cutover drained the old upstreams before it stopped the old replicas.
    let exec = last_execution(d, "shop/production");
    let cutover = exec
        .operations
        .iter()
        .find(|o| o.kind == "gateway_cutover")
        .expect("a cutover");
    let names: Vec<&str> = cutover.steps.iter().map(|s| s.name.as_str()).collect();
    let drain = names
        .iter()
        .position(|n| n.starts_with("drain old upstreams"))
        .expect("drain step");
    let remove = names
        .iter()
        .position(|n| n.starts_with("remove old upstreams"))
        .expect("remove step");
    let stops: Vec<usize> = names
        .iter()
        .enumerate()
        .filter(|(_, n)| n.starts_with("stop old "))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(stops.len(), old.len(), "{names:?}");
    assert!(
        drain < remove && stops.iter().all(|i| *i > remove),
        "{names:?}"
    );
    let drained = cutover.steps[drain]
        .output
        .as_ref()
        .map(|o| o.text())
        .unwrap_or_default();
    assert!(drained.contains("drained after"), "drain output: {drained}");
    // The old containers are gone; the new ones run.
    let after = d.state().applied().unwrap();
    for (o, n) in old
        .iter()
        .zip(&after.environment("shop", "production").unwrap().services["web"].replicas)
    {
        assert_ne!(o.container, n.container);
        let gone = ssh(
            &o.server,
            &format!("docker inspect {}", keystone::shell::quote(&o.container)),
        );
        assert!(
            !gone.status.success(),
            "old replica {} still exists",
            o.container
        );
    }
}

#[test]
fn unhealthy_new_replicas_fail_the_service_and_cancel_the_rest() {
    let _lab = lock();
    let g = deployed();
    let s = g.as_ref().unwrap();
    assert_converged(s.first.0, &s.first.1);
    let d = &s.deployment;
    let before = d.state().applied().unwrap();
    let (_, served_before) = http_get("shop.lab.test").unwrap();
    let file = "applications/shop/environments/production.yaml";
    let original = std::fs::read_to_string(d.repo.join(file)).unwrap();
    // APP_HEALTH=fail: the example app never writes /up, so its health path answers 404.
    d.edit(file, |t| {
        t.replacen(
            "health: {path: /up}",
            "health: {path: /up, timeout: 10s}",
            1,
        )
        .replacen("variables:\n", "variables:\n  APP_HEALTH: fail\n", 1)
    });
    let (code, out) = d.apply();
    assert_eq!(code, 1, "an unhealthy deploy must exit 1:\n{out}");
    assert!(
        out.contains(
            "shop/production: failed: shop/production/service_deploy/web/replica_deploy/web#"
        ),
        "{out}"
    );

    let exec = last_execution(d, "shop/production");
    let op = |id: &str| {
        exec.operation(id).unwrap_or_else(|| {
            panic!(
                "no operation {id} in {:?}",
                exec.operations.iter().map(|o| &o.op_id).collect::<Vec<_>>()
            )
        })
    };
    assert_eq!(
        op("shop/production/service_deploy/web").status.as_str(),
        "failed"
    );
    let probe = op("shop/production/service_deploy/web/replica_deploy/web#1")
        .steps
        .iter()
        .find(|s| s.name == "probe /up")
        .expect("probe step");
    let why = format!(
        "{:?} {}",
        probe.error,
        probe.output.as_ref().map(|o| o.text()).unwrap_or_default()
    );
    assert!(why.contains("did not answer 2xx"), "{why}");
    assert!(why.contains("last log lines"), "{why}");
    assert_eq!(
        op("shop/production/service_deploy/worker").status.as_str(),
        "cancelled"
    );
    let cutover = exec
        .operations
        .iter()
        .find(|o| o.kind == "gateway_cutover")
        .expect("a cutover");
    assert_eq!(cutover.status.as_str(), "cancelled");

    // Nothing recorded as applied; the old replicas still serve the old answer.
    assert_eq!(d.state().applied().unwrap(), before);
    for _ in 0..20 {
        let (status, body) = http_get("shop.lab.test").unwrap();
        assert_eq!(status, 200);
        assert_eq!(
            body,
            served_before.replace(&host_of(&served_before), &host_of(&body))
        );
    }
    for r in &before.environment("shop", "production").unwrap().services["web"].replicas {
        let running = ssh_ok(
            &r.server,
            &format!(
                "docker inspect --format '{{{{.State.Status}}}}' {}",
                keystone::shell::quote(&r.container)
            ),
        );
        assert_eq!(running.trim(), "running", "{}", r.container);
    }

    // Back to the healthy config: the next apply converges again.
    d.edit(file, |_| original.clone());
    let (code, out) = d.apply();
    assert_converged(code, &out);
}

/// `host=<container>` of an answer (replicas answer with their own hostname).
fn host_of(body: &str) -> String {
    body.split_whitespace()
        .find(|w| w.starts_with("host="))
        .unwrap_or("")
        .to_string()
}

fn psql(password: &str, sql: &str) -> String {
    let out = std::process::Command::new("psql")
        .args([
            "-h",
            "10.77.0.14",
            "-U",
            "shop_production",
            "-d",
            "shop_production",
            "-tA",
            "-c",
            sql,
        ])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "psql `{sql}`: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn postgres_stateful_update_to_a_new_digest_keeps_the_data() {
    let _lab = lock();
    let g = deployed();
    let s = g.as_ref().unwrap();
    assert_converged(s.first.0, &s.first.1);
    let d = &s.deployment;
    let slice = keystone::drivers::SliceKey::new("main-postgres", "shop", "production");
    let password = d
        .state()
        .generated(&keystone::drivers::postgres18::slice_password_key(&slice))
        .unwrap();
    let row = format!("written-before-{}", std::process::id());
    psql(&password, "create table if not exists keep (v text)");
    psql(&password, &format!("insert into keep values ('{row}')"));
    let before = d.state().applied().unwrap().services["main-postgres"].clone();

    // A new digest of the same Postgres: the stand-in image with one more label, pushed under a
    // new tag by build-1's engine.
    let tag = format!(
        "10.77.0.1:5000/standin/postgres:18-update-{}",
        std::process::id()
    );
    ssh_ok(
        "build-1",
        &format!(
            "set -e; printf 'FROM 10.77.0.1:5000/standin/postgres:18\\nLABEL keystone.test=stateful-update\\n' | docker build -q -t {t} - >/dev/null; docker push -q {t} >/dev/null",
            t = keystone::shell::quote(&tag)
        ),
    );
    d.edit("services/main-postgres.yaml", |t| {
        t.replacen(
            "image: 10.77.0.1:5000/standin/postgres:18\n",
            &format!("image: {tag}\n"),
            1,
        )
    });
    let (code, out) = d.apply();
    assert_converged(code, &out);
    for step in [
        "stop",
        "verify named volume",
        "verify same volume",
        "wait healthy",
    ] {
        assert!(
            out.contains(&format!("succeeded service/main-postgres/db-1 · {step} ")),
            "no `{step}` in:\n{out}"
        );
    }
    let after = d.state().applied().unwrap().services["main-postgres"].clone();
    assert_eq!(after.image, tag);
    let digest = after.digest.clone().unwrap();
    assert_ne!(
        Some(&digest),
        before.digest.as_ref(),
        "the update must be to a new digest"
    );
    // Mounts as `name:destination`: the driver's named volume holds /var/lib/postgresql.
    let running = ssh_ok(
        "db-1",
        "docker inspect --format '{{.Config.Image}}{{range .Mounts}} {{.Name}}:{{.Destination}}{{end}}' keystone-main-postgres",
    );
    let mut words = running.split_whitespace();
    assert_eq!(
        words.next(),
        Some(format!("10.77.0.1:5000/standin/postgres@{digest}").as_str())
    );
    assert!(
        words.any(|m| m == "keystone_service_main-postgres_postgres_data:/var/lib/postgresql"),
        "mounts: {running}"
    );
    assert_eq!(
        psql(&password, &format!("select v from keep where v = '{row}'")),
        row,
        "the row written before the update is gone"
    );
}

#[test]
fn no_deploy_key_remains_on_the_builder_after_a_failed_build() {
    let _lab = lock();
    let g = deployed();
    let s = g.as_ref().unwrap();
    assert_converged(s.first.0, &s.first.1);
    let d = &s.deployment;
    let file = "applications/shop/application.yaml";
    let original = std::fs::read_to_string(d.repo.join(file)).unwrap();
    d.edit(file, |t| {
        t.replacen(
            "dockerfile: Dockerfile",
            "dockerfile: Dockerfile.missing",
            1,
        )
    });
    let (code, out) = d.apply();
    assert_eq!(code, 1, "a failed build must exit 1:\n{out}");
    assert!(
        out.contains("failed shop/production/build · clone, build and push"),
        "{out}"
    );
    assert!(
        out.contains("Dockerfile.missing"),
        "the cause is shown:\n{out}"
    );
    let left = ssh_ok(
        "build-1",
        "find /home/keystone -name deploy_key; ls -A /home/keystone/operations 2>/dev/null || true",
    );
    assert_eq!(left.trim(), "", "left on build-1 after a failed build");
    d.edit(file, |_| original.clone());
    let (code, out) = d.apply();
    assert_converged(code, &out);
}

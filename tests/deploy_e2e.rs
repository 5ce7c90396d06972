//! Issue 7 end to end on the lab: `keystone apply` of examples/config-repo deploys both
//! environments for real (build on build-1, push, pull by digest, slices, gateway), and the
//! deploys after it keep serving. The tests share one applied lab state (the first one to run
//! applies from scratch); every test holds the lab lock for its whole run.

mod deploy_lab;

use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use deploy_lab::{Deployment, http_get, lock, reset_hosts, ssh, ssh_ok};
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

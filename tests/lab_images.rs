//! The lab's stand-in images (scripts/lab-images.sh) keep the contracts of the upstream images
//! Keystone's drivers rely on, and the example app (examples/app-source) builds on the builder from
//! the lab's git server and answers through Caddy. Everything runs over ssh on the lab hosts,
//! images pulled by digest from the lab registry.

#[path = "support/lab.rs"]
mod lab;

use std::process::Command;

use lab::{Lab, nonce, wait_until};

/// `docker port NAME PORT` on a host → the published host port.
fn published_port(lab: &Lab, host: &str, name: &str, port: &str) -> u16 {
    let out = lab.ssh(host, &format!("docker port {name} {port} | head -n1"));
    out.trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("docker port {name} {port}: {out:?}"))
}

/// Removes containers and volumes of a test on a host, whatever happens.
struct Cleanup<'a> {
    lab: &'a Lab,
    host: &'a str,
    script: String,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let _ = self.lab.ssh_output(self.host, &self.script, None);
    }
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn psql(port: u16, user: &str, password: &str, db: &str, sql: &str) -> std::process::Output {
    Command::new("psql")
        .args([
            "-h",
            "10.77.0.14",
            "-p",
            &port.to_string(),
            "-U",
            user,
            "-d",
            db,
        ])
        .args(["-X", "-A", "-t", "-c", sql])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "5")
        .output()
        .expect("psql (postgresql-client, scripts/setup.d/05-peers.sh)")
}

#[test]
fn postgres_standin_keeps_the_official_contract() {
    let lab = Lab::get();
    let n = nonce();
    let (name, vol) = (format!("labtest-{n}-pg"), format!("labtest-{n}-pgdata"));
    let _cleanup = Cleanup {
        lab,
        host: "db-1",
        script: format!(
            "docker rm -f {name} {name}-nopw >/dev/null 2>&1; docker volume rm -f {vol} >/dev/null 2>&1"
        ),
    };
    let image = lab.image_pinned("postgres");
    let user = format!("admin_{n}");
    let password = "it's a \"secret\" $HOME";
    lab.ssh(
        "db-1",
        &format!(
            "docker run -d --name {name} -e POSTGRES_USER={user} -e POSTGRES_PASSWORD={pw} \
             -e POSTGRES_DB=shop -v {vol}:/var/lib/postgresql/data -p 0:5432 {image} >/dev/null",
            pw = sh_quote(password)
        ),
    );
    let ready = || {
        lab.ssh_output(
            "db-1",
            &format!("docker exec {name} pg_isready -q -h 127.0.0.1 -U {user}"),
            None,
        )
        .status
        .success()
    };
    assert!(wait_until(60, ready), "postgres never became ready");
    let port = published_port(lab, "db-1", &name, "5432/tcp");

    let out = psql(
        port,
        &user,
        password,
        "shop",
        "select current_user || '/' || current_database()",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{user}/shop\n")
    );
    let bad = psql(port, &user, "wrong", "shop", "select 1");
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("password authentication failed"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    // Data survives a restart; initdb runs on the first start only.
    let out = psql(
        port,
        &user,
        password,
        "shop",
        "create table t (v text); insert into t values ('kept')",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    lab.ssh("db-1", &format!("docker restart {name} >/dev/null"));
    assert!(
        wait_until(60, ready),
        "postgres did not come back after restart"
    );
    let port = published_port(lab, "db-1", &name, "5432/tcp");
    let out = psql(port, &user, password, "shop", "select v from t");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "kept\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let logs = lab.ssh("db-1", &format!("docker logs {name} 2>&1"));
    assert_eq!(
        logs.matches("PostgreSQL init process complete").count(),
        1,
        "{logs}"
    );
    // psql and pg_isready are on PATH inside, as in the official image.
    assert_eq!(
        lab.ssh(
            "db-1",
            &format!("docker exec {name} psql -U {user} -d shop -Atc 'select v from t'")
        ),
        "kept\n"
    );

    // Without a password the container refuses to initialise, like the official image.
    let out = lab.ssh_output(
        "db-1",
        &format!("docker run --name {name}-nopw {image}"),
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("superuser password is not specified"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn valkey_standin_serves_redis_protocol_with_data_in_slash_data() {
    let lab = Lab::get();
    let n = nonce();
    let name = format!("labtest-{n}-valkey");
    let _cleanup = Cleanup {
        lab,
        host: "db-1",
        script: format!("docker rm -f -v {name} >/dev/null 2>&1"),
    };
    let image = lab.image_pinned("valkey");
    lab.ssh(
        "db-1",
        &format!("docker run -d --name {name} -p 0:6379 {image} >/dev/null"),
    );
    let ping = || {
        lab.ssh_output("db-1", &format!("docker exec {name} valkey-cli ping"), None)
            .stdout
            == b"PONG\n"
    };
    assert!(wait_until(30, ping), "valkey never answered PONG");
    assert_eq!(
        lab.ssh(
            "db-1",
            &format!("docker exec {name} valkey-cli config get dir")
        ),
        "dir\n/data\n"
    );
    let port = published_port(lab, "db-1", &name, "6379/tcp").to_string();
    // A remote client (this machine) may use a logical database without protected-mode refusals.
    let cli = |args: &[&str]| {
        let out = Command::new("redis-cli")
            .args(["-h", "10.77.0.14", "-p", &port, "-n", "7"])
            .args(args)
            .output()
            .expect("redis-cli (redis-tools)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(cli(&["set", "shop:key", "v1"]), "OK\n");
    assert_eq!(cli(&["get", "shop:key"]), "v1\n");
    assert_eq!(
        lab.ssh(
            "db-1",
            &format!("docker exec {name} valkey-cli -n 7 get shop:key")
        ),
        "v1\n"
    );
    assert_eq!(
        lab.ssh(
            "db-1",
            &format!("docker exec {name} valkey-cli -n 0 dbsize")
        ),
        "0\n"
    );
}

/// The example app built on build-1 from the lab git server, pushed, pulled by digest on web-2,
/// served through the Caddy stand-in on web-1 configured with the host's curl over the admin API.
#[test]
fn the_example_app_builds_runs_and_answers_through_caddy() {
    let lab = Lab::get();
    let n = nonce();
    let repo = format!("{}/labtest/shop-{n}", lab.registry);
    let (app, broken, edge) = (
        format!("labtest-{n}-web"),
        format!("labtest-{n}-broken"),
        format!("labtest-{n}-edge"),
    );
    let _c1 = Cleanup {
        lab,
        host: "web-2",
        script: format!("docker rm -f {app} {broken} >/dev/null 2>&1"),
    };
    let _c2 = Cleanup {
        lab,
        host: "web-1",
        script: format!("docker rm -f {edge} >/dev/null 2>&1"),
    };
    let _c3 = Cleanup {
        lab,
        host: "build-1",
        script: format!("rm -f ~/key-{n}; docker rmi -f {repo}:main >/dev/null 2>&1"),
    };

    // Build on the builder from the git server with the deploy key; push; the digest.
    let key = std::fs::read(&lab.git.deploy_key).unwrap();
    let up = lab.ssh_output(
        "build-1",
        &format!("umask 077 && cat > ~/key-{n}"),
        Some(&key),
    );
    assert!(up.status.success());
    let push = lab.ssh(
        "build-1",
        &format!(
            "set -e; d=$(mktemp -d); trap 'rm -rf $d' EXIT; echo '{kh}' > $d/kh; \
             GIT_SSH_COMMAND=\"ssh -i ~/key-{n} -o IdentitiesOnly=yes -o UserKnownHostsFile=$d/kh\" \
             git clone -q {url} $d/src; docker build -q -t {repo}:main $d/src >/dev/null 2>&1; \
             docker push {repo}:main | sed -n 's/.*digest: \\(sha256:[0-9a-f]*\\).*/\\1/p'",
            kh = lab.git.known_hosts_line,
            url = lab.git.url
        ),
    );
    let pinned = format!("{repo}@{}", push.trim());
    assert!(pinned.len() > repo.len() + 70, "push printed {push:?}");

    // The app on web-2: / names version and APP_ENV, /up is healthy, artisan stand-ins answer.
    lab.ssh(
        "web-2",
        &format!("docker run -d --name {app} -e APP_ENV=staging -p 0:8080 {pinned} >/dev/null"),
    );
    let app_port = published_port(lab, "web-2", &app, "8080/tcp");
    let app_addr = format!("10.77.0.13:{app_port}");
    assert!(
        lab::wait_http(30, &app_addr, "/up", &[], 200),
        "the app never answered /up"
    );
    let (code, _, body) = lab::http("GET", &app_addr, "/up", &[]);
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let version = std::fs::read_to_string(lab.repo.join("examples/app-source/VERSION")).unwrap();
    let (code, _, body) = lab::http("GET", &app_addr, "/", &[]);
    assert_eq!(code, 200);
    assert!(
        body.starts_with(&format!("shop {} APP_ENV=staging host=", version.trim())),
        "{body:?}"
    );
    let migrate = lab.ssh(
        "web-2",
        &format!("docker exec {app} php artisan migrate --force"),
    );
    assert!(
        migrate.contains("2026_01_01_000000_create_orders_table ") && migrate.contains("DONE"),
        "{migrate}"
    );
    let prod = lab.ssh_output(
        "web-2",
        &format!("docker exec -e APP_ENV=production {app} php artisan migrate"),
        None,
    );
    assert_eq!(
        prod.status.code(),
        Some(1),
        "migrate without --force in production must fail"
    );
    let fail = lab.ssh_output(
        "web-2",
        &format!("docker exec -e APP_MIGRATE_FAIL=1 {app} php artisan migrate --force"),
        None,
    );
    assert_eq!(fail.status.code(), Some(1));
    let worker = lab.ssh(
        "web-2",
        &format!("timeout -s TERM 2 docker exec {app} php artisan queue:work; true"),
    );
    assert!(worker.contains("Processing jobs"), "{worker}");

    // A replica started with APP_HEALTH=fail never answers /up with 200.
    lab.ssh(
        "web-2",
        &format!("docker run -d --name {broken} -e APP_HEALTH=fail -p 0:8080 {pinned} >/dev/null"),
    );
    let broken_addr = format!(
        "10.77.0.13:{}",
        published_port(lab, "web-2", &broken, "8080/tcp")
    );
    // It serves / but never /up.
    assert!(
        lab::wait_http(30, &broken_addr, "/", &[], 200),
        "the broken replica never answered /"
    );
    assert_eq!(lab::http("GET", &broken_addr, "/up", &[]).0, 404);

    // Caddy on web-1: admin API on the host's loopback only, configured with the host's curl.
    let caddy = lab.image_pinned("caddy");
    lab.ssh(
        "web-1",
        &format!("docker run -d --name {edge} -p 127.0.0.1:0:2019 -p 0:8080 {caddy} >/dev/null"),
    );
    let admin = published_port(lab, "web-1", &edge, "2019/tcp");
    let config = format!(
        r#"{{"admin":{{"listen":"0.0.0.0:2019"}},"apps":{{"http":{{"servers":{{"shop":{{"listen":[":8080"],"automatic_https":{{"disable":true}},"routes":[{{"match":[{{"host":["shop.lab.test"]}}],"handle":[{{"handler":"reverse_proxy","@id":"shop_web","upstreams":[{{"dial":"{app_addr}"}}]}}]}}]}}}}}}}}}}"#
    );
    let load = || {
        lab.ssh_output(
            "web-1",
            &format!("curl -sf -X POST -H 'Content-Type: application/json' --data-binary @- http://127.0.0.1:{admin}/load"),
            Some(config.as_bytes()),
        )
        .status
        .success()
    };
    assert!(wait_until(20, load), "caddy admin API did not accept /load");
    let gateway = format!(
        "10.77.0.12:{}",
        published_port(lab, "web-1", &edge, "8080/tcp")
    );
    let (code, _, body) = lab::http("GET", &gateway, "/", &[("Host", "shop.lab.test")]);
    assert_eq!(code, 200);
    assert!(
        body.starts_with(&format!("shop {} APP_ENV=staging", version.trim())),
        "{body:?}"
    );
    // PATCH (which busybox wget cannot do) through the host's curl: upstreams by @id.
    lab.ssh_output(
        "web-1",
        &format!("curl -sf -X PATCH -H 'Content-Type: application/json' --data-binary @- http://127.0.0.1:{admin}/id/shop_web/upstreams"),
        Some(format!(r#"[{{"dial":"{broken_addr}"}}]"#).as_bytes()),
    );
    let (code, _, _) = lab::http("GET", &gateway, "/up", &[("Host", "shop.lab.test")]);
    assert_eq!(
        code, 404,
        "after PATCH the gateway routes to the broken replica"
    );
    // The admin API is not reachable from outside web-1.
    assert!(std::net::TcpStream::connect(format!("10.77.0.12:{admin}")).is_err());
}

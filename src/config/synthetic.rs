//! A synthetic config repository of any size, valid by construction, for benchmarks (config load,
//! planner) and scale tests. Nothing in it is ever connected to: every server is 127.0.0.1.
//!
//! Shape for `envs` environments with `services_per_env` app services each: 10 environments per
//! application; 8 web servers, 2 db servers, 1 builder; one Postgres per 100 environments and
//! one Valkey per 16 (one cache attachment each, so no Valkey runs out of logical databases);
//! one Caddy gateway with a distinct domain per environment.

use std::path::Path;

/// Environments per application.
pub const ENVS_PER_APP: usize = 10;

const WEB_SERVERS: usize = 8;

/// Every file of the repository, as (path, content), sorted by path.
pub fn files(envs: usize, services_per_env: usize) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut add = |p: String, c: String| out.push((p, c));
    add(
        "keystone.yaml".into(),
        "version: 1\nreconcile: {branch: main, interval: 60s}\nstatus: {branch: keystone/status}\n"
            .into(),
    );
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBenchmarkPlaceholderKeyPlaceholderKey0";
    let mut server = |name: String, port: usize, roles: &str| {
        add(
            format!("servers/{name}.yaml"),
            format!(
                "host: 127.0.0.1\nport: {port}\nuser: keystone\nhost_key: {key}\nroles: [{roles}]\n"
            ),
        );
    };
    server("build-1".into(), 22000, "builder");
    for i in 1..=WEB_SERVERS {
        server(format!("web-{i}"), 22000 + i, "web, worker");
    }
    server("db-1".into(), 22101, "db");
    server("db-2".into(), 22102, "db");
    add(
        "registries/main.yaml".into(),
        "url: 127.0.0.1:5000\nnamespace: bench\ninsecure: true\nusername: deploy\npassword: {secret: registry.password}\n".into(),
    );
    let postgres = envs.div_ceil(100).max(1);
    let valkeys = envs.div_ceil(16).max(1);
    for i in 0..postgres {
        add(
            format!("services/pg-{i}.yaml"),
            format!(
                "driver: postgres18\nserver: db-{}\nport: {}\n",
                1 + i % 2,
                15432 + i
            ),
        );
    }
    for i in 0..valkeys {
        add(
            format!("services/valkey-{i}.yaml"),
            format!(
                "driver: valkey8\nserver: db-{}\nport: {}\n",
                1 + i % 2,
                16379 + i
            ),
        );
    }
    add(
        "services/edge.yaml".into(),
        "driver: caddy2\nservers: [web-1, web-2]\nport: 80\n".into(),
    );
    let apps = envs.div_ceil(ENVS_PER_APP);
    let mut deploy_keys = String::new();
    let mut app_keys = String::new();
    for a in 0..apps {
        let app = format!("app-{a:04}");
        add(
            format!("applications/{app}/application.yaml"),
            format!(
                "source:\n  repo: ssh://git@127.0.0.1:2222/srv/git/{app}.git\n  deploy_key: {{secret: deploy.{app}}}\nbuild:\n  strategy: dedicated_builder\n  registry: main\n"
            ),
        );
        deploy_keys.push_str(&format!("{app}: {}\n", enc("key")));
        app_keys.push_str(&format!("{app}:\n"));
        for e in 0..ENVS_PER_APP.min(envs - a * ENVS_PER_APP) {
            let n = a * ENVS_PER_APP + e;
            let env = format!("env-{e:02}");
            app_keys.push_str(&format!("  {env}: {}\n", enc("appkey")));
            add(
                format!("applications/{app}/environments/{env}.yaml"),
                environment(&app, &env, n, services_per_env),
            );
        }
    }
    add(
        "secrets/registry.sops.yaml".into(),
        sops_file(&format!("password: {}\n", enc("pw"))),
    );
    add("secrets/deploy.sops.yaml".into(), sops_file(&deploy_keys));
    add("secrets/app-keys.sops.yaml".into(), sops_file(&app_keys));
    out.sort();
    out
}

fn environment(app: &str, env: &str, n: usize, services: usize) -> String {
    let mut s = String::from("ref: main\nservices:\n");
    for i in 0..services.max(1) {
        if i == 0 {
            s.push_str("  web:\n    driver: laravel\n    roles: [web]\n    replicas: 2\n    placement: {role: web}\n    migrations: {mode: auto, timing: pre_switch}\n    health: {path: /up}\n");
        } else {
            let server = 1 + (n + i) % WEB_SERVERS;
            s.push_str(&format!(
                "  worker-{i}:\n    driver: laravel\n    roles: [worker]\n    replicas: 1\n    placement: {{servers: [web-{server}]}}\n"
            ));
        }
    }
    s.push_str("scheduler: {service: web, mode: single}\nattachments:\n");
    s.push_str(&format!(
        "  - {{service: pg-{}, role: database}}\n",
        n / 100
    ));
    s.push_str(&format!(
        "  - {{service: valkey-{}, role: cache}}\n",
        n / 16
    ));
    s.push_str(&format!(
        "  - {{service: edge, role: gateway, domains: [{env}.{app}.bench.test], target: web}}\n"
    ));
    s.push_str(&format!(
        "variables:\n  APP_ENV: {env}\n  APP_DEBUG: \"false\"\n  APP_KEY: {{secret: app-keys.{app}.{env}}}\n"
    ));
    s
}

fn enc(seed: &str) -> String {
    format!(
        "ENC[AES256_GCM,data:{seed}Zm9v,iv:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=,tag:AAAAAAAAAAAAAAAAAAAAAA==,type:str]"
    )
}

fn sops_file(body: &str) -> String {
    format!(
        "{body}sops:\n    age:\n        - recipient: age1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq\n          enc: placeholder\n    lastmodified: \"2026-01-01T00:00:00Z\"\n    mac: placeholder\n    version: 3.9.0\n"
    )
}

/// Write the repository into `dir` (created if missing).
pub fn write_repo(dir: &Path, envs: usize, services_per_env: usize) -> std::io::Result<()> {
    for (path, content) in files(envs, services_per_env) {
        let p = dir.join(&path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(p, content)?;
    }
    Ok(())
}

/// Commit the repository into `repo` (blobs and trees written straight into the object
/// database, no working tree needed) on `refs/heads/main`, and return the commit id.
pub fn commit_repo(
    repo: &git2::Repository,
    envs: usize,
    services_per_env: usize,
) -> Result<git2::Oid, git2::Error> {
    let files = files(envs, services_per_env);
    let mut index = git2::Index::new()?;
    for (path, content) in &files {
        let oid = repo.blob(content.as_bytes())?;
        let entry = git2::IndexEntry {
            ctime: git2::IndexTime::new(0, 0),
            mtime: git2::IndexTime::new(0, 0),
            dev: 0,
            ino: 0,
            mode: 0o100644,
            uid: 0,
            gid: 0,
            file_size: content.len() as u32,
            id: oid,
            flags: 0,
            flags_extended: 0,
            path: path.as_bytes().to_vec(),
        };
        index.add(&entry)?;
    }
    let tree_id = index.write_tree_to(repo)?;
    let tree = repo.find_tree(tree_id)?;
    let sig = git2::Signature::new(
        "Keystone Synthetic",
        "synthetic@keystone.invalid",
        &git2::Time::new(1_767_225_600, 0),
    )?;
    let parent = repo
        .find_reference("refs/heads/main")
        .ok()
        .and_then(|r| r.peel_to_commit().ok());
    let parents: Vec<&git2::Commit> = parent.iter().collect();
    repo.commit(
        Some("refs/heads/main"),
        &sig,
        &sig,
        &format!("synthetic config: {envs} environments x {services_per_env} services"),
        &tree,
        &parents,
    )
}

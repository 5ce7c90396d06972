//! Shared by the plan tests: the model of examples/config-repo, scenario edits of it, golden-file
//! comparison, and copying the example into git repositories.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use keystone::model::*;
use keystone::plan::{self, Applied, Desired, Plan, PlanContext, SecretState};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Copy the tree `from` into `to` (which exists).
pub fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

/// Run `git ARGS` in `dir` with a fixed author and date (commit ids depend only on content);
/// its trimmed stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.test")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.test")
        .env("GIT_AUTHOR_DATE", "2026-12-03T12:00:00Z")
        .env("GIT_COMMITTER_DATE", "2026-12-03T12:00:00Z")
        .output()
        .expect("git is installed");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn origin(file: &str, line: u32) -> Origin {
    Origin {
        file: file.into(),
        line,
        column: 1,
    }
}

fn secret(file: &str, key: &str, at: &str, line: u32) -> Value {
    Value::Secret(SecretRef {
        file: file.into(),
        key_path: key.split('.').map(String::from).collect(),
        origin: origin(at, line),
    })
}

fn server(name: &str, host: &str, roles: &[&str]) -> Server {
    Server {
        name: name.into(),
        origin: origin(&format!("servers/{name}.yaml"), 1),
        host: host.into(),
        port: 22,
        user: "keystone".into(),
        host_key: Some("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPlaceholder".into()),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        transport: TransportKind::Ssh,
    }
}

fn shared(
    name: &str,
    driver: &str,
    servers: &[&str],
    image: &str,
    port: Option<u16>,
) -> SharedService {
    SharedService {
        name: name.into(),
        origin: origin(&format!("services/{name}.yaml"), 1),
        driver: driver.into(),
        servers: servers.iter().map(|s| s.to_string()).collect(),
        image: Some(image.into()),
        port,
        databases: None,
        admin_port: None,
    }
}

pub fn app_service(
    file: &str,
    name: &str,
    roles: Vec<ProcessRole>,
    replicas: u32,
    servers: &[&str],
    placement: Placement,
    mode: MigrationMode,
) -> AppService {
    AppService {
        name: name.into(),
        origin: origin(file, 3),
        driver: "laravel".into(),
        roles,
        replicas,
        servers: servers.iter().map(|s| s.to_string()).collect(),
        placement,
        migrations: Migrations {
            mode,
            timing: MigrationTiming::PreSwitch,
            command: "php artisan migrate --force".into(),
        },
        health: Health {
            path: "/up".into(),
            timeout: Duration::from_secs(120),
        },
        port: 8080,
        command: None,
    }
}

fn attachment(file: &str, line: u32, service: &str, role: AttachmentRole) -> Attachment {
    Attachment {
        origin: origin(file, line),
        service: service.into(),
        role,
        confirm_queue_driver: false,
        domains: Vec::new(),
        target: None,
    }
}

fn vars(list: Vec<(&str, Value)>) -> (Vec<(String, Value)>, BTreeMap<String, Origin>) {
    let v: Vec<(String, Value)> = list.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    let o = v
        .iter()
        .enumerate()
        .map(|(i, (k, _))| (k.clone(), origin("env", 20 + i as u32)))
        .collect();
    (v, o)
}

/// The model of examples/config-repo.
pub fn example() -> Model {
    let prod = "applications/shop/environments/production.yaml";
    let stag = "applications/shop/environments/staging.yaml";
    let mut servers = BTreeMap::new();
    for s in [
        server("build-1", "10.77.0.11", &["builder"]),
        server("web-1", "10.77.0.12", &["web", "worker", "gateway"]),
        server("web-2", "10.77.0.13", &["web", "worker"]),
        server("db-1", "10.77.0.14", &["db"]),
    ] {
        servers.insert(s.name.clone(), s);
    }
    let mut registries = BTreeMap::new();
    registries.insert(
        "main".to_string(),
        Registry {
            name: "main".into(),
            origin: origin("registries/main.yaml", 1),
            url: "10.77.0.1:5000".into(),
            namespace: Some("acme".into()),
            username: Some(Value::Plain("deploy".into())),
            password: Some(secret("registry", "password", "registries/main.yaml", 5)),
            insecure: true,
        },
    );
    let mut services = BTreeMap::new();
    for s in [
        shared(
            "main-postgres",
            "postgres18",
            &["db-1"],
            "10.77.0.1:5000/standin/postgres:18",
            None,
        ),
        shared(
            "main-valkey",
            "valkey8",
            &["db-1"],
            "10.77.0.1:5000/standin/valkey:8",
            None,
        ),
        shared(
            "edge",
            "caddy2",
            &["web-1"],
            "10.77.0.1:5000/standin/caddy:2",
            Some(80),
        ),
    ] {
        services.insert(s.name.clone(), s);
    }

    let mut production_services = BTreeMap::new();
    production_services.insert(
        "web".to_string(),
        app_service(
            prod,
            "web",
            vec![ProcessRole::Web],
            2,
            &["web-1", "web-2"],
            Placement::Role("web".into()),
            MigrationMode::Auto,
        ),
    );
    production_services.insert(
        "worker".to_string(),
        app_service(
            prod,
            "worker",
            vec![ProcessRole::Worker],
            1,
            &["web-2"],
            Placement::Servers(vec!["web-2".into()]),
            MigrationMode::Disabled,
        ),
    );
    let mut queue = attachment(prod, 14, "main-valkey", AttachmentRole::Queue);
    queue.confirm_queue_driver = true;
    let mut gateway = attachment(prod, 15, "edge", AttachmentRole::Gateway);
    gateway.domains = vec!["shop.lab.test".into()];
    gateway.target = Some("web".into());
    let (variables, variable_origins) = vars(vec![
        ("APP_ENV", Value::Plain("production".into())),
        ("APP_DEBUG", Value::Plain("false".into())),
        ("MAIL_FROM", Value::Plain("noreply@shop.lab.test".into())),
        ("APP_KEY", secret("shop-production", "app_key", prod, 24)),
        (
            "MAIL_PASSWORD",
            secret("shop-production", "mail_password", prod, 25),
        ),
    ]);
    let production = Environment {
        app: "shop".into(),
        name: "production".into(),
        origin: origin(prod, 1),
        git_ref: "main".into(),
        services: production_services,
        scheduler: Some(Scheduler {
            service: "web".into(),
            mode: SchedulerMode::Single,
        }),
        attachments: vec![
            attachment(prod, 11, "main-postgres", AttachmentRole::Database),
            attachment(prod, 12, "main-valkey", AttachmentRole::Cache),
            attachment(prod, 13, "main-valkey", AttachmentRole::Session),
            queue,
            gateway,
        ],
        variables,
        variable_origins,
        self_heal: false,
    };

    let mut staging_services = BTreeMap::new();
    staging_services.insert(
        "web".to_string(),
        app_service(
            stag,
            "web",
            vec![ProcessRole::Web],
            1,
            &["web-1"],
            Placement::Servers(vec!["web-1".into()]),
            MigrationMode::Auto,
        ),
    );
    let mut sgw = attachment(stag, 12, "edge", AttachmentRole::Gateway);
    sgw.domains = vec!["staging.shop.lab.test".into()];
    sgw.target = Some("web".into());
    let (variables, variable_origins) = vars(vec![
        ("APP_ENV", Value::Plain("staging".into())),
        ("APP_KEY", secret("shop-staging", "app_key", stag, 20)),
    ]);
    let staging = Environment {
        app: "shop".into(),
        name: "staging".into(),
        origin: origin(stag, 1),
        git_ref: "main".into(),
        services: staging_services,
        scheduler: Some(Scheduler {
            service: "web".into(),
            mode: SchedulerMode::EveryReplica,
        }),
        attachments: vec![
            attachment(stag, 10, "main-postgres", AttachmentRole::Database),
            attachment(stag, 11, "main-valkey", AttachmentRole::Cache),
            sgw,
        ],
        variables,
        variable_origins,
        self_heal: false,
    };

    let mut environments = BTreeMap::new();
    environments.insert("production".to_string(), production);
    environments.insert("staging".to_string(), staging);
    let mut applications = BTreeMap::new();
    applications.insert(
        "shop".to_string(),
        Application {
            name: "shop".into(),
            origin: origin("applications/shop/application.yaml", 1),
            source: Source {
                repo: "ssh://git@10.77.0.1:2222/srv/git/shop.git".into(),
                deploy_key: Some(secret(
                    "shop",
                    "deploy_key",
                    "applications/shop/application.yaml",
                    2,
                )),
            },
            build: Build {
                strategy: BuildStrategy::DedicatedBuilder,
                dockerfile: "Dockerfile".into(),
                context: ".".into(),
                registry: Some("main".into()),
                repository: "shop".into(),
                tag: None,
            },
            environments,
        },
    );
    Model {
        project: Project {
            version: 1,
            reconcile: Reconcile {
                branch: "main".into(),
                interval: Duration::from_secs(60),
            },
            status: StatusSettings {
                branch: "keystone/status".into(),
                keep_operations_days: 30,
            },
            remote_root: "/home/keystone".into(),
            health: HealthSettings {
                interval: Duration::from_secs(30),
            },
            secrets: SecretsSettings::default(),
        },
        servers,
        registries,
        services,
        applications,
        secret_files: BTreeMap::new(),
    }
}

pub fn env_mut<'a>(m: &'a mut Model, env: &str) -> &'a mut Environment {
    m.applications
        .get_mut("shop")
        .unwrap()
        .environments
        .get_mut(env)
        .unwrap()
}

/// A context with every secret of the example decrypted to fixed fingerprints.
pub fn ctx(commit: &str) -> PlanContext {
    let mut secrets = BTreeMap::new();
    for s in [
        "registry.password",
        "shop.deploy_key",
        "shop-production.app_key",
        "shop-production.mail_password",
        "shop-staging.app_key",
    ] {
        secrets.insert(
            s.to_string(),
            SecretState::Fingerprint {
                fingerprint: format!("hmac:{s}:v1"),
            },
        );
    }
    let mut source_commits = BTreeMap::new();
    for e in ["shop/production", "shop/staging"] {
        source_commits.insert(
            e.to_string(),
            "9f8e7d6c5b4a39281706f5e4d3c2b1a098765432".to_string(),
        );
    }
    PlanContext {
        config_commit: commit.into(),
        source_commits,
        operation_prefix: format!("op-{commit}"),
        request: plan::Request::Deploy,
        secrets,
    }
}

pub const DIGEST: &str = "sha256:4c1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7";

/// The applied state after the example was deployed at `a1b2c3d`, with the build's digest
/// filled in as the engine would.
pub fn deployed(model: &Model) -> Applied {
    let p = plan::plan(Desired::valid(model), &Applied::default(), &ctx("a1b2c3d"));
    let projected = p.projected(&Applied::default());
    let json = serde_json::to_string(&projected)
        .unwrap()
        .replace("{{digest:shop}}", DIGEST)
        .replace(
            "{{digest:main-postgres}}",
            "sha256:1111111111111111111111111111111111111111111111111111111111111111",
        )
        .replace(
            "{{digest:main-valkey}}",
            "sha256:2222222222222222222222222222222222222222222222222222222222222222",
        )
        .replace(
            "{{digest:edge}}",
            "sha256:3333333333333333333333333333333333333333333333333333333333333333",
        );
    serde_json::from_str(&json).unwrap()
}

/// Compare `actual` with tests/golden/plan/<name>; `KEYSTONE_BLESS=1` writes it instead.
pub fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/plan")
        .join(name);
    if std::env::var_os("KEYSTONE_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "missing golden file {}: run with KEYSTONE_BLESS=1 and review it",
            path.display()
        )
    });
    if expected != actual {
        let diff = similar::TextDiff::from_lines(expected.as_str(), actual);
        panic!(
            "{} differs from the plan (KEYSTONE_BLESS=1 rewrites it):\n{}",
            path.display(),
            diff.unified_diff().context_radius(3)
        );
    }
}

/// Every output form of a plan, as golden files `<name>.{txt,md,json}`.
pub fn golden_all(name: &str, p: &Plan) {
    golden(&format!("{name}.txt"), &plan::output::text(p, false));
    golden(&format!("{name}.md"), &plan::output::markdown(p, 42));
    golden(&format!("{name}.json"), &plan::output::json(p));
}

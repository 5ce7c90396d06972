//! A hand-built `Model` with the shape of examples/config-repo (notes/example-repo.md), for tests
//! of pure driver and render logic.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use keystone::model::*;

pub fn origin(file: &str, line: u32, column: u32) -> Origin {
    Origin {
        file: file.to_string(),
        line,
        column,
    }
}

fn server(name: &str, host: &str, roles: &[&str]) -> (String, Server) {
    (
        name.to_string(),
        Server {
            name: name.to_string(),
            origin: origin(&format!("servers/{name}.yaml"), 1, 1),
            host: host.to_string(),
            port: 22,
            user: "keystone".into(),
            host_key: Some("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPLACEHOLDER".into()),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            transport: TransportKind::Ssh,
        },
    )
}

fn shared(
    name: &str,
    driver: &str,
    servers: &[&str],
    image: &str,
    port: Option<u16>,
) -> (String, SharedService) {
    (
        name.to_string(),
        SharedService {
            name: name.to_string(),
            origin: origin(&format!("services/{name}.yaml"), 1, 1),
            driver: driver.to_string(),
            servers: servers.iter().map(|s| s.to_string()).collect(),
            image: Some(image.to_string()),
            port,
            databases: None,
            admin_port: None,
        },
    )
}

pub fn secret(file: &str, key: &str, o: Origin) -> Value {
    Value::Secret(SecretRef {
        file: file.to_string(),
        key_path: key.split('.').map(str::to_string).collect(),
        origin: o,
    })
}

#[allow(clippy::too_many_arguments)]
pub fn app_service(
    name: &str,
    file: &str,
    line: u32,
    roles: Vec<ProcessRole>,
    replicas: u32,
    servers: &[&str],
    placement: Placement,
    mode: MigrationMode,
) -> (String, AppService) {
    (
        name.to_string(),
        AppService {
            name: name.to_string(),
            origin: origin(file, line, 3),
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
        },
    )
}

pub fn attachment(file: &str, line: u32, service: &str, role: AttachmentRole) -> Attachment {
    Attachment {
        origin: origin(file, line, 5),
        service: service.to_string(),
        role,
        confirm_queue_driver: false,
        domains: Vec::new(),
        target: None,
    }
}

pub fn production() -> Environment {
    let f = "applications/shop/environments/production.yaml";
    let mut queue = attachment(f, 19, "main-valkey", AttachmentRole::Queue);
    queue.confirm_queue_driver = true;
    let mut gateway = attachment(f, 20, "edge", AttachmentRole::Gateway);
    gateway.domains = vec!["shop.lab.test".into()];
    gateway.target = Some("web".into());
    let variables = vec![
        ("APP_ENV".to_string(), Value::Plain("production".into())),
        ("APP_DEBUG".to_string(), Value::Plain("false".into())),
        (
            "MAIL_FROM".to_string(),
            Value::Plain("noreply@shop.lab.test".into()),
        ),
        (
            "APP_KEY".to_string(),
            secret("shop-production", "app_key", origin(f, 25, 12)),
        ),
        (
            "MAIL_PASSWORD".to_string(),
            secret("shop-production", "mail_password", origin(f, 26, 18)),
        ),
    ];
    let variable_origins = variables
        .iter()
        .enumerate()
        .map(|(i, (k, _))| (k.clone(), origin(f, 22 + i as u32, 3)))
        .collect();
    Environment {
        app: "shop".into(),
        name: "production".into(),
        origin: origin(f, 1, 1),
        git_ref: "main".into(),
        services: BTreeMap::from([
            app_service(
                "web",
                f,
                3,
                vec![ProcessRole::Web],
                2,
                &["web-1", "web-2"],
                Placement::Role("web".into()),
                MigrationMode::Auto,
            ),
            app_service(
                "worker",
                f,
                8,
                vec![ProcessRole::Worker],
                1,
                &["web-2"],
                Placement::Servers(vec!["web-2".into()]),
                MigrationMode::Disabled,
            ),
        ]),
        scheduler: Some(Scheduler {
            service: "web".into(),
            mode: SchedulerMode::Single,
        }),
        attachments: vec![
            attachment(f, 16, "main-postgres", AttachmentRole::Database),
            attachment(f, 17, "main-valkey", AttachmentRole::Cache),
            attachment(f, 18, "main-valkey", AttachmentRole::Session),
            queue,
            gateway,
        ],
        variables,
        variable_origins,
        self_heal: false,
    }
}

pub fn staging() -> Environment {
    let f = "applications/shop/environments/staging.yaml";
    let mut gateway = attachment(f, 12, "edge", AttachmentRole::Gateway);
    gateway.domains = vec!["staging.shop.lab.test".into()];
    gateway.target = Some("web".into());
    let variables = vec![
        ("APP_ENV".to_string(), Value::Plain("staging".into())),
        (
            "APP_KEY".to_string(),
            secret("shop-staging", "app_key", origin(f, 15, 12)),
        ),
    ];
    let variable_origins = variables
        .iter()
        .enumerate()
        .map(|(i, (k, _))| (k.clone(), origin(f, 14 + i as u32, 3)))
        .collect();
    Environment {
        app: "shop".into(),
        name: "staging".into(),
        origin: origin(f, 1, 1),
        git_ref: "main".into(),
        services: BTreeMap::from([app_service(
            "web",
            f,
            3,
            vec![ProcessRole::Web],
            1,
            &["web-1"],
            Placement::Servers(vec!["web-1".into()]),
            MigrationMode::Auto,
        )]),
        scheduler: Some(Scheduler {
            service: "web".into(),
            mode: SchedulerMode::EveryReplica,
        }),
        attachments: vec![
            attachment(f, 9, "main-postgres", AttachmentRole::Database),
            attachment(f, 10, "main-valkey", AttachmentRole::Cache),
            gateway,
        ],
        variables,
        variable_origins,
        self_heal: false,
    }
}

pub fn example_model() -> Model {
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
        servers: BTreeMap::from([
            server("build-1", "10.77.0.11", &["builder"]),
            server("web-1", "10.77.0.12", &["web", "worker", "gateway"]),
            server("web-2", "10.77.0.13", &["web", "worker"]),
            server("db-1", "10.77.0.14", &["db"]),
        ]),
        registries: BTreeMap::from([(
            "main".to_string(),
            Registry {
                name: "main".into(),
                origin: origin("registries/main.yaml", 1, 1),
                url: "10.77.0.1:5000".into(),
                namespace: Some("acme".into()),
                username: Some(Value::Plain("deploy".into())),
                password: Some(secret(
                    "registry",
                    "password",
                    origin("registries/main.yaml", 5, 11),
                )),
                insecure: true,
            },
        )]),
        services: BTreeMap::from([
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
        ]),
        applications: BTreeMap::from([(
            "shop".to_string(),
            Application {
                name: "shop".into(),
                origin: origin("applications/shop/application.yaml", 1, 1),
                source: Source {
                    repo: "ssh://git@10.77.0.1:2222/srv/git/shop.git".into(),
                    deploy_key: Some(secret(
                        "shop",
                        "deploy_key",
                        origin("applications/shop/application.yaml", 2, 60),
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
                environments: BTreeMap::from([
                    ("production".to_string(), production()),
                    ("staging".to_string(), staging()),
                ]),
            },
        )]),
        secret_files: BTreeMap::new(),
    }
}

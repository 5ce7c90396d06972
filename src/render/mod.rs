//! Rendering: the exact files Keystone writes on servers (compose.yml, .env, Caddy config), from
//! the minijinja templates in `templates/` (embedded in the binary; the directory is the source of
//! truth). Drivers say *what*; templates say *how it is written*.
//!
//! Architecture invariant: each file is generated in exactly one place: compose.yml and .env by
//! `replica_files`, the Caddy config by `caddy_config`.

use std::sync::OnceLock;

use serde::Serialize;

use crate::drivers::caddy2::{self, Route};
use crate::drivers::laravel::{self, PortAssignment, ReplicaKey, SchedulerHolder, Slot};
use crate::drivers::variables::{Variable, VariableValue};
use crate::drivers::{self, Credentials, HealthTarget, Sensitive, Volume};
use crate::model::{Model, SecretRef};

const COMPOSE_TEMPLATE: &str = include_str!("../../templates/compose.yml.j2");
const ENV_TEMPLATE: &str = include_str!("../../templates/env.j2");
const CADDY_TEMPLATE: &str = include_str!("../../templates/caddy.json.j2");

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("unknown {what} `{name}`")]
    Unknown { what: &'static str, name: String },
    #[error("replica {replica} has no server: its service has no placement")]
    NoServer { replica: String },
    #[error(
        "variable name `{name}` is not a valid environment variable name ([A-Za-z_][A-Za-z0-9_]*)"
    )]
    InvalidName { name: String },
    #[error("variable {name} contains a NUL byte, which no process environment can hold")]
    NulInValue { name: String },
    #[error("template {template}: {source}")]
    Template {
        template: &'static str,
        #[source]
        source: minijinja::Error,
    },
}

/// One variable as written into a .env file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvEntry {
    pub name: String,
    pub value: Sensitive,
    /// Counted as secret in summaries.
    pub secret: bool,
}

impl EnvEntry {
    pub fn plain(name: &str, value: impl Into<String>) -> EnvEntry {
        EnvEntry {
            name: name.to_string(),
            value: Sensitive::new(value),
            secret: false,
        }
    }
}

/// The variables' values for a .env: secret references resolved by `secret` (the secrets
/// resolver, or a redacting stand-in for `keystone render`).
pub fn env_entries<E>(
    variables: &[Variable],
    mut secret: impl FnMut(&SecretRef) -> Result<Sensitive, E>,
) -> Result<Vec<EnvEntry>, E> {
    variables
        .iter()
        .map(|v| {
            let value = match &v.value {
                VariableValue::Plain(p) => Sensitive::new(p.clone()),
                VariableValue::Sensitive(s) => s.clone(),
                VariableValue::Secret(r) => secret(r)?,
            };
            Ok(EnvEntry {
                name: v.name.clone(),
                value,
                secret: v.is_secret(),
            })
        })
        .collect()
}

/// A file for a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedFile {
    /// Absolute path on the server.
    pub path: String,
    pub mode: u32,
    pub bytes: Vec<u8>,
    /// Safe to show: `compose.yml (1.2 KiB)`, `.env (14 variables, 3 secret)`.
    pub summary: String,
}

/// Everything one replica's server receives, and the names it runs under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaFiles {
    pub server: String,
    /// Holds compose.yml and .env; commands run from here.
    pub remote_dir: String,
    /// Compose project name (`docker compose -p`).
    pub project: String,
    /// The service key inside compose.yml.
    pub compose_service: String,
    pub container: String,
    pub compose_yml: Vec<u8>,
    /// Mode 0600 on the server: it holds secrets.
    pub env: Vec<u8>,
    pub env_summary: String,
    /// Files beside the compose project (the gateway's caddy.json).
    pub extra: Vec<RenderedFile>,
}

impl ReplicaFiles {
    pub fn compose_path(&self) -> String {
        format!("{}/compose.yml", self.remote_dir)
    }
    pub fn env_path(&self) -> String {
        format!("{}/.env", self.remote_dir)
    }
    /// A shell line running `docker compose <args>` for this replica, from its directory. The
    /// one way to drive Compose here: `--env-file /dev/null` keeps the replica's .env (which
    /// holds user variables) from configuring Compose itself (`COMPOSE_PROJECT_NAME`, …); the
    /// container still gets it through `env_file:`.
    pub fn compose_command(&self, args: &[&str]) -> String {
        let mut words = vec![
            "docker",
            "compose",
            "--project-directory",
            self.remote_dir.as_str(),
            "-p",
            self.project.as_str(),
            "-f",
            "compose.yml",
            "--env-file",
            "/dev/null",
        ];
        words.extend_from_slice(args);
        format!(
            "cd {} && {}",
            crate::shell::quote(&self.remote_dir),
            crate::shell::join(words)
        )
    }

    /// All files in upload order (compose.yml, .env, extras).
    pub fn files(&self) -> Vec<RenderedFile> {
        let mut out = vec![
            RenderedFile {
                path: self.compose_path(),
                mode: 0o644,
                bytes: self.compose_yml.clone(),
                summary: format!("compose.yml ({})", size(self.compose_yml.len())),
            },
            RenderedFile {
                path: self.env_path(),
                mode: 0o600,
                bytes: self.env.clone(),
                summary: self.env_summary.clone(),
            },
        ];
        out.extend(self.extra.iter().cloned());
        out
    }
}

/// What to render.
#[derive(Debug, Clone, Copy)]
pub enum ReplicaInput<'a> {
    App(AppReplica<'a>),
    Shared(SharedReplica<'a>),
}

/// One slot of one app replica.
#[derive(Debug, Clone, Copy)]
pub struct AppReplica<'a> {
    pub model: &'a Model,
    pub replica: &'a ReplicaKey,
    pub slot: Slot,
    /// The replica's host ports (`laravel::allocate_host_ports`). Only replicas that serve HTTP
    /// publish them; `None` is fine for the others (the server then comes from the placement).
    pub ports: Option<&'a PortAssignment>,
    /// Pinned: `repo@sha256:…` or `repo@{{digest:<app>}}`.
    pub image: &'a str,
    /// The application source commit deployed.
    pub commit: &'a str,
    /// The environment's resolved variables (`env_entries`).
    pub variables: &'a [EnvEntry],
    /// From `laravel::scheduler_holder`.
    pub scheduler: Option<&'a SchedulerHolder>,
}

/// One replica (one server) of a shared service.
#[derive(Debug, Clone, Copy)]
pub struct SharedReplica<'a> {
    pub model: &'a Model,
    pub service: &'a str,
    pub server: &'a str,
    /// Pinned: `image@sha256:…` or a placeholder digest.
    pub image: &'a str,
    /// postgres18: the admin credentials (POSTGRES_USER / POSTGRES_PASSWORD); `None` writes
    /// `postgres18::admin_placeholder_credentials` (the executor fills the password).
    pub admin: Option<&'a Credentials>,
    /// caddy2: the routes (`caddy2::routes`).
    pub routes: &'a [Route],
}

/// The files of one replica.
pub fn replica_files(input: &ReplicaInput<'_>) -> Result<ReplicaFiles, RenderError> {
    match input {
        ReplicaInput::App(a) => app_replica_files(a),
        ReplicaInput::Shared(s) => shared_replica_files(s),
    }
}

#[derive(Serialize)]
struct Mount {
    kind: &'static str,
    source: String,
    target: String,
    read_only: bool,
}

#[derive(Serialize)]
struct HealthView {
    test: Vec<String>,
    interval: u64,
    timeout: u64,
    retries: u32,
    start_period: u64,
}

#[derive(Serialize)]
struct ComposeView {
    title: String,
    project: String,
    service_key: String,
    image: String,
    container: String,
    network_mode: Option<&'static str>,
    command: Option<Vec<String>>,
    labels: Vec<(&'static str, String)>,
    ports: Vec<String>,
    health: HealthView,
    stop_grace_period: u64,
    mem_limit: Option<&'static str>,
    mounts: Vec<Mount>,
    volumes: Vec<String>,
}

fn health_view(h: drivers::HealthCheck) -> HealthView {
    HealthView {
        test: h.test,
        interval: h.interval.as_secs(),
        timeout: h.timeout.as_secs(),
        retries: h.retries,
        start_period: h.start_period.as_secs(),
    }
}

fn volume_mounts(volumes: &[Volume]) -> Vec<Mount> {
    volumes
        .iter()
        .map(|v| Mount {
            kind: "volume",
            source: v.name.clone(),
            target: v.target.to_string(),
            read_only: false,
        })
        .collect()
}

fn app_replica_files(a: &AppReplica<'_>) -> Result<ReplicaFiles, RenderError> {
    let key = a.replica;
    let application = a
        .model
        .applications
        .get(&key.app)
        .ok_or(RenderError::Unknown {
            what: "application",
            name: key.app.clone(),
        })?;
    let env = application
        .environments
        .get(&key.env)
        .ok_or(RenderError::Unknown {
            what: "environment",
            name: format!("{}/{}", key.app, key.env),
        })?;
    let service = env.services.get(&key.service).ok_or(RenderError::Unknown {
        what: "service",
        name: key.to_string(),
    })?;
    let driver = drivers::get(&service.driver).ok_or(RenderError::Unknown {
        what: "driver",
        name: service.driver.clone(),
    })?;
    let server = match a.ports {
        Some(p) => p.server.clone(),
        None => laravel::replica_server(service, key.index)
            .ok_or_else(|| RenderError::NoServer {
                replica: key.to_string(),
            })?
            .to_string(),
    };
    let container = laravel::container_name(key, a.slot);
    let remote_dir = laravel::remote_dir(&a.model.project.remote_root, key, a.slot);
    let roles: Vec<&str> = service
        .roles
        .iter()
        .map(|r| match r {
            crate::model::ProcessRole::Web => "web",
            crate::model::ProcessRole::Worker => "worker",
            crate::model::ProcessRole::Scheduler => "scheduler",
        })
        .collect();
    let resources = driver.resource_defaults();
    let view = ComposeView {
        title: format!("{key} ({} slot) on {server}", a.slot),
        project: container.clone(),
        service_key: key.service.clone(),
        image: a.image.to_string(),
        container: container.clone(),
        network_mode: None,
        command: laravel::process_command(service).map(|c| vec!["sh".into(), "-c".into(), c]),
        labels: vec![
            ("keystone.service", key.service.clone()),
            ("keystone.environment", env.key()),
            ("keystone.replica", key.to_string()),
            ("keystone.slot", a.slot.to_string()),
            ("keystone.commit", a.commit.to_string()),
        ],
        ports: a
            .ports
            .filter(|_| laravel::serves_http(service))
            .map(|p| format!("{}:{}", p.host_port(a.slot), service.port))
            .into_iter()
            .collect(),
        health: health_view(driver.health_check(HealthTarget {
            port: service.port,
            path: &service.health.path,
            http: laravel::serves_http(service),
        })),
        stop_grace_period: resources.stop_grace_period.as_secs(),
        mem_limit: resources.memory_limit,
        mounts: Vec::new(),
        volumes: Vec::new(),
    };
    let runs_scheduler = laravel::runs_scheduler(env, &key.service, key.index, a.scheduler);
    let mut entries = a.variables.to_vec();
    entries.extend([
        EnvEntry::plain("KEYSTONE_ENVIRONMENT", env.key()),
        EnvEntry::plain("KEYSTONE_SERVICE", key.service.clone()),
        EnvEntry::plain("KEYSTONE_REPLICA", key.index.to_string()),
        EnvEntry::plain("KEYSTONE_ROLES", roles.join(",")),
        EnvEntry::plain(laravel::SCHEDULER_VARIABLE, runs_scheduler.to_string()),
    ]);
    finish(view, server, remote_dir, &entries, Vec::new())
}

fn shared_replica_files(s: &SharedReplica<'_>) -> Result<ReplicaFiles, RenderError> {
    let service = s
        .model
        .services
        .get(s.service)
        .ok_or(RenderError::Unknown {
            what: "service",
            name: s.service.to_string(),
        })?;
    let driver = drivers::get(&service.driver).ok_or(RenderError::Unknown {
        what: "driver",
        name: service.driver.clone(),
    })?;
    let remote_root = &s.model.project.remote_root;
    let container = drivers::shared_container_name(&service.name);
    let remote_dir = format!(
        "{}/services/{}",
        remote_root.trim_end_matches('/'),
        service.name
    );
    let port = drivers::shared_port(service).unwrap_or(0);
    let volumes = driver.volumes(&service.name);
    let mut mounts = volume_mounts(&volumes);
    let resources = driver.resource_defaults();
    let mut entries = Vec::new();
    let mut extra = Vec::new();
    let mut network_mode = None;
    let mut ports = vec![format!("{port}:{port}")];
    let mut command = None;
    let mut health_port = port;
    match service.driver.as_str() {
        "postgres18" => {
            let admin = s.admin.cloned().unwrap_or_else(|| {
                crate::drivers::postgres18::admin_placeholder_credentials(&service.name)
            });
            entries.push(EnvEntry::plain("POSTGRES_USER", admin.username.clone()));
            entries.push(EnvEntry {
                name: "POSTGRES_PASSWORD".into(),
                value: admin.password,
                secret: true,
            });
            // The image listens on 5432 inside; the host port is the service's.
            ports = vec![format!("{port}:5432")];
            health_port = 5432;
        }
        "valkey8" => {
            command = Some(crate::drivers::valkey8::server_command(service));
            ports = vec![format!("{port}:{port}")];
        }
        "caddy2" => {
            // Host networking: the admin API listens on the host's 127.0.0.1 only, and upstreams
            // are the replicas' `<server host>:<host port>` from any server.
            network_mode = Some("host");
            ports = Vec::new();
            let admin = caddy2::admin_port_of(service).unwrap_or(caddy2::DEFAULT_ADMIN_PORT);
            health_port = admin;
            let dir = caddy2::gateway_dir(remote_root, &service.name);
            mounts.push(Mount {
                kind: "bind",
                source: dir.clone(),
                target: caddy2::CONFIG_DIR_IN_CONTAINER.to_string(),
                read_only: true,
            });
            command = Some(vec![
                "caddy".into(),
                "run".into(),
                "--config".into(),
                format!(
                    "{}/{}",
                    caddy2::CONFIG_DIR_IN_CONTAINER,
                    caddy2::CONFIG_FILE
                ),
            ]);
            let bytes = caddy_config(service, s.routes)?;
            extra.push(RenderedFile {
                path: format!("{dir}/{}", caddy2::CONFIG_FILE),
                mode: 0o644,
                summary: format!(
                    "{} ({} routes, {})",
                    caddy2::CONFIG_FILE,
                    s.routes.len(),
                    size(bytes.len())
                ),
                bytes,
            });
        }
        _ => {}
    }
    let view = ComposeView {
        title: format!("service {} on {}", service.name, s.server),
        project: container.clone(),
        service_key: service.name.clone(),
        image: s.image.to_string(),
        container: container.clone(),
        network_mode,
        command,
        labels: vec![
            ("keystone.service", service.name.clone()),
            ("keystone.replica", format!("{}@{}", service.name, s.server)),
        ],
        ports,
        health: health_view(driver.health_check(HealthTarget {
            port: health_port,
            path: "/",
            http: service.driver == "caddy2",
        })),
        stop_grace_period: resources.stop_grace_period.as_secs(),
        mem_limit: resources.memory_limit,
        mounts,
        volumes: volumes.iter().map(|v| v.name.clone()).collect(),
    };
    finish(view, s.server.to_string(), remote_dir, &entries, extra)
}

fn finish(
    view: ComposeView,
    server: String,
    remote_dir: String,
    entries: &[EnvEntry],
    extra: Vec<RenderedFile>,
) -> Result<ReplicaFiles, RenderError> {
    let compose_yml = render("compose.yml.j2", &view)?;
    let env = env_file(&view.title, entries)?;
    let secret = entries.iter().filter(|e| e.secret).count();
    Ok(ReplicaFiles {
        server,
        remote_dir,
        project: view.project.clone(),
        compose_service: view.service_key.clone(),
        container: view.container.clone(),
        compose_yml: compose_yml.into_bytes(),
        env: env.into_bytes(),
        env_summary: format!(".env ({} variables, {secret} secret)", entries.len()),
        extra,
    })
}

/// A .env file Compose v2 reads back byte for byte.
pub fn env_file(title: &str, entries: &[EnvEntry]) -> Result<String, RenderError> {
    #[derive(Serialize)]
    struct Entry<'a> {
        name: &'a str,
        value: &'a str,
    }
    let mut view = Vec::with_capacity(entries.len());
    for e in entries {
        let valid_name = e
            .name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && e.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            return Err(RenderError::InvalidName {
                name: e.name.clone(),
            });
        }
        if e.value.expose().contains('\0') {
            return Err(RenderError::NulInValue {
                name: e.name.clone(),
            });
        }
        view.push(Entry {
            name: &e.name,
            value: e.value.expose(),
        });
    }
    render(
        "env.j2",
        &minijinja::context! { title => title, entries => val(&view) },
    )
}

/// The whole config of a Caddy service, its routes included.
pub fn caddy_config(
    service: &crate::model::SharedService,
    routes: &[Route],
) -> Result<Vec<u8>, RenderError> {
    let admin = caddy2::admin_port_of(service).unwrap_or(caddy2::DEFAULT_ADMIN_PORT);
    let port = drivers::shared_port(service).unwrap_or(80);
    let text = render(
        "caddy.json.j2",
        &minijinja::context! {
            admin_listen => format!("127.0.0.1:{admin}"),
            listen => format!(":{port}"),
            routes => val(routes),
        },
    )?;
    Ok(text.into_bytes())
}

/// `"…"` for Compose's env-file parser: `\`, `"`, `$`, newline and CR escaped, all else literal.
pub fn dotenv_quote(value: &str) -> String {
    format!("\"{}\"", dotenv_escape(value))
}

/// The inside of `dotenv_quote`. A secret or generated placeholder (`{{secret:…}}`) is marked
/// `{{secret:…|dotenv}}` so the executor escapes the value it fills in the same way; a value known
/// only while executing must round-trip through the env-file parser like any other.
pub fn dotenv_escape(value: &str) -> String {
    let escaped = dotenv_escape_raw(value);
    if !escaped.contains("{{") {
        // No placeholder to mark (most values): skip the regex.
        return escaped;
    }
    SECRET_TOKEN
        .replace_all(&escaped, "{{$1:$2|dotenv}}")
        .into_owned()
}

static SECRET_TOKEN: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
    regex::Regex::new(r"\{\{(secret|generated):([^{}\s|]+)\}\}").expect("valid regex")
});

/// `dotenv_escape` of a plain value, placeholders not marked: what the executor substitutes for a
/// `{{…|dotenv}}` placeholder.
pub fn dotenv_escape_raw(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '$' => out.push_str("\\$"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

/// A YAML scalar for compose.yml: JSON (a subset of YAML) with `$` doubled against interpolation.
fn yaml_filter(value: minijinja::Value) -> Result<String, minijinja::Error> {
    let json = serde_json::to_string(&value).map_err(|e| {
        minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string())
    })?;
    Ok(json.replace('$', "$$"))
}

fn dotenv_filter(value: &str) -> String {
    dotenv_quote(value)
}

fn environment() -> &'static minijinja::Environment<'static> {
    static ENV: OnceLock<minijinja::Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = minijinja::Environment::new();
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.add_filter("y", yaml_filter);
        env.add_filter("dotenv", dotenv_filter);
        for (name, source) in [
            ("compose.yml.j2", COMPOSE_TEMPLATE),
            ("env.j2", ENV_TEMPLATE),
            ("caddy.json.j2", CADDY_TEMPLATE),
        ] {
            env.add_template(name, source)
                .unwrap_or_else(|e| panic!("templates/{name} does not parse: {e}"));
        }
        env
    })
}

fn render(template: &'static str, ctx: &impl Serialize) -> Result<String, RenderError> {
    let env = environment();
    let t = env
        .get_template(template)
        .map_err(|source| RenderError::Template { template, source })?;
    let mut out = t
        .render(val(ctx))
        .map_err(|source| RenderError::Template { template, source })?;
    if !out.ends_with('\n') {
        out.push('\n');
    }
    Ok(out)
}

fn val<T: Serialize>(t: T) -> minijinja::Value {
    minijinja::Value::from(minijinja::value::Serde(t))
}

fn size(n: usize) -> String {
    if n < 1024 {
        format!("{n} B")
    } else {
        format!("{:.1} KiB", n as f64 / 1024.0)
    }
}

/// The script running a migration in a one-off container of a rendered replica: same image, same
/// .env, no published ports, removed afterwards.
pub fn migration_script(run: &laravel::MigrationRun, files: &ReplicaFiles) -> String {
    laravel::migration_script(
        run,
        &files.remote_dir,
        &files.project,
        &files.compose_service,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotenv_quote_escapes_only_what_the_parser_reads() {
        assert_eq!(dotenv_quote(""), "\"\"");
        assert_eq!(dotenv_quote("a b#c"), "\"a b#c\"");
        assert_eq!(dotenv_quote("q\"\\$x\n\r'é"), "\"q\\\"\\\\\\$x\\n\\r'é\"");
        assert_eq!(
            dotenv_quote("{{secret:shop.app_key}} and {{generated:pg/admin}} {{digest:shop}}"),
            "\"{{secret:shop.app_key|dotenv}} and {{generated:pg/admin|dotenv}} {{digest:shop}}\""
        );
    }

    #[test]
    fn templates_parse() {
        let env = environment();
        for t in ["compose.yml.j2", "env.j2", "caddy.json.j2"] {
            env.get_template(t).unwrap();
        }
    }
}

/// Why an environment's files could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum EnvironmentRenderError<E: std::error::Error + 'static> {
    /// The whole message: the name asked for, a did-you-mean and the environments there are.
    #[error("{0}")]
    UnknownEnvironment(String),
    #[error("{0}")]
    Variables(String),
    #[error("{0}")]
    Allocation(String),
    #[error(transparent)]
    Secret(E),
    #[error(transparent)]
    Render(#[from] RenderError),
}

/// "unknown environment `a/b`; did you mean `a/c`? environments: …" for a name the model lacks.
pub fn unknown_environment(model: &Model, app: &str, env_name: &str) -> String {
    let known: Vec<String> = model
        .applications
        .iter()
        .flat_map(|(a, application)| {
            application
                .environments
                .keys()
                .map(move |e| format!("{a}/{e}"))
        })
        .collect();
    let asked = format!("{app}/{env_name}");
    let mut message = format!("unknown environment `{asked}`");
    let mut separator = "; ";
    if let Some(m) = crate::config::did_you_mean(&asked, known.iter().map(String::as_str)) {
        message.push_str(&format!("; did you mean `{m}`?"));
        separator = " ";
    }
    if known.is_empty() {
        message.push_str(&format!("{separator}the config defines no environments"));
    } else {
        let list = known
            .iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ");
        message.push_str(&format!("{separator}environments: {list}"));
    }
    message
}

/// Every file a first deploy of `app/env` writes, per replica: its app replicas (blue slot, host
/// ports and Valkey indexes as a fresh allocation would give them) and one replica per server of
/// each shared service it attaches to (the gateway's config with every environment's routes).
/// Images show the `{{digest:…}}` placeholders; secret references are turned into values by
/// `secret` (the resolver, or a redacting stand-in). What `keystone render` writes.
pub fn environment_files<E: std::error::Error + 'static>(
    model: &Model,
    app: &str,
    env_name: &str,
    commit: &str,
    mut secret: impl FnMut(&SecretRef) -> Result<Sensitive, E>,
) -> Result<Vec<ReplicaFiles>, EnvironmentRenderError<E>> {
    use crate::plan::Placeholder;
    let env = model
        .applications
        .get(app)
        .and_then(|a| a.environments.get(env_name))
        .ok_or_else(|| {
            EnvironmentRenderError::UnknownEnvironment(unknown_environment(model, app, env_name))
        })?;
    let join = |errors: Vec<String>| errors.join("\n");
    let valkey = drivers::valkey8::allocate_indexes(model, &Default::default()).map_err(|e| {
        EnvironmentRenderError::Allocation(join(e.iter().map(|e| e.to_string()).collect()))
    })?;
    let ports = laravel::allocate_host_ports(model, &Default::default()).map_err(|e| {
        EnvironmentRenderError::Allocation(join(e.iter().map(|e| e.to_string()).collect()))
    })?;
    let facts = drivers::Facts {
        valkey_indexes: valkey,
        postgres_passwords: Default::default(),
    };
    let variables = drivers::variables::environment_variables(model, env, &facts).map_err(|e| {
        EnvironmentRenderError::Variables(join(e.iter().map(|e| e.to_string()).collect()))
    })?;
    let entries = env_entries(&variables, &mut secret).map_err(EnvironmentRenderError::Secret)?;
    let image = drivers::pin_image(
        &laravel::image_repository(model, app).unwrap_or_else(|| format!("keystone/{app}")),
        &Placeholder::digest(app),
    );
    let holder = laravel::scheduler_holder(env, None);
    let mut out = Vec::new();
    for (name, service) in &env.services {
        for index in 1..=service.replicas {
            let key = ReplicaKey::new(app, env_name, name, index);
            out.push(replica_files(&ReplicaInput::App(AppReplica {
                model,
                replica: &key,
                slot: Slot::Blue,
                ports: ports.get(&key),
                image: &image,
                commit,
                variables: &entries,
                scheduler: holder.as_ref(),
            }))?);
        }
    }
    // Routes of every environment on a gateway (one config serves them all), live slot blue.
    let upstreams = ports
        .iter()
        .filter_map(|(k, a)| {
            Some((
                k.clone(),
                vec![laravel::dial_address(model, a, Slot::Blue)?],
            ))
        })
        .collect();
    let mut attached: Vec<&str> = env.attachments.iter().map(|a| a.service.as_str()).collect();
    attached.dedup();
    attached.sort();
    attached.dedup();
    for name in attached {
        let Some(service) = model.services.get(name) else {
            continue;
        };
        let image = drivers::pin_image(
            &drivers::shared_image(service).unwrap_or_default(),
            &Placeholder::digest(name),
        );
        let routes = caddy2::routes(model, name, &upstreams);
        for server in &service.servers {
            out.push(replica_files(&ReplicaInput::Shared(SharedReplica {
                model,
                service: name,
                server,
                image: &image,
                admin: None,
                routes: &routes,
            }))?);
        }
    }
    Ok(out)
}

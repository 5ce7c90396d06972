//! Single-file parsing: one `yaml::Node` → one model value, plus the positions of the references
//! it makes (checked later, in `checks`, once every file is read).

use std::collections::BTreeMap;
use std::time::Duration;

use super::read::{FileCx, NAME, NAME_RULE, did_you_mean};
use super::yaml::{Kind, Node, Pos};
use crate::drivers::{self, DriverKind};
use crate::model::*;

pub const DEFAULT_REMOTE_ROOT: &str = "/home/keystone";
pub const DEFAULT_APP_PORT: u16 = 8080;
pub const DEFAULT_MIGRATION_COMMAND: &str = "php artisan migrate --force";

/// A value with the position it was written at.
#[derive(Debug, Clone)]
pub struct At<T> {
    pub value: T,
    pub pos: Pos,
}

/// An optional key read with a check: absent is `Some(None)`, present but invalid is `None`.
trait Lift<T> {
    fn lift(self) -> Option<Option<T>>;
}

impl<T> Lift<T> for Option<Option<T>> {
    fn lift(self) -> Option<Option<T>> {
        match self {
            None => Some(None),
            Some(None) => None,
            Some(Some(v)) => Some(Some(v)),
        }
    }
}

fn at<T>(value: T, pos: Pos) -> At<T> {
    At { value, pos }
}

// ---------------------------------------------------------------------------------------------
// keystone.yaml

pub fn default_project() -> Project {
    Project {
        version: 1,
        reconcile: Reconcile {
            branch: "main".into(),
            interval: Duration::from_secs(60),
        },
        status: StatusSettings {
            branch: "keystone/status".into(),
            keep_operations_days: 30,
        },
        remote_root: DEFAULT_REMOTE_ROOT.into(),
        health: HealthSettings {
            interval: Duration::from_secs(30),
        },
        secrets: SecretsSettings::default(),
    }
}

pub fn project(cx: &mut FileCx, n: &Node) -> Project {
    let mut p = default_project();
    let what = "keystone.yaml";
    let Some(f) = cx.fields(
        n,
        what,
        &[
            "version",
            "reconcile",
            "status",
            "remote_root",
            "health",
            "secrets",
        ],
    ) else {
        return p;
    };
    if let Some(v) = f.get("version") {
        match cx.u32(v, "version", 0, u32::MAX) {
            Some(1) => {}
            Some(other) => cx.error(
                v.pos,
                "invalid-value",
                format!("config version {other} is not supported"),
                Some("this Keystone reads `version: 1`".into()),
            ),
            None => {}
        }
    }
    if let Some(r) = f.get("reconcile")
        && let Some(rf) = cx.fields(r, "`reconcile`", &["branch", "interval"])
    {
        if let Some(b) = rf
            .get("branch")
            .and_then(|b| cx.nonempty_string(b, "reconcile.branch"))
        {
            p.reconcile.branch = b;
        }
        if let Some(n) = rf.get("interval")
            && let Some(i) = cx.duration(n, "reconcile.interval")
            && at_least_a_second(cx, n, "reconcile.interval", i)
        {
            p.reconcile.interval = i;
        }
    }
    let mut status_branch_pos = None;
    if let Some(s) = f.get("status")
        && let Some(sf) = cx.fields(s, "`status`", &["branch", "keep_operations_days"])
    {
        if let Some(n) = sf.get("branch")
            && let Some(b) = cx.nonempty_string(n, "status.branch")
        {
            p.status.branch = b;
            status_branch_pos = Some(n.pos);
        }
        if let Some(d) = sf
            .get("keep_operations_days")
            .and_then(|d| cx.u32(d, "status.keep_operations_days", 1, 36500))
        {
            p.status.keep_operations_days = d;
        }
    }
    if let Some(r) = f.get("remote_root")
        && let Some(root) = cx.nonempty_string(r, "remote_root")
    {
        if root.starts_with('/') {
            p.remote_root = root.trim_end_matches('/').to_string();
            if p.remote_root.is_empty() {
                p.remote_root = "/".into();
            }
        } else {
            cx.error(
                r.pos,
                "invalid-value",
                format!("`remote_root` is `{root}`, expected an absolute path"),
                Some("e.g. `/home/keystone`".into()),
            );
        }
    }
    if p.status.branch == p.reconcile.branch {
        cx.error(
            status_branch_pos.unwrap_or(f.pos),
            "invalid-value",
            format!(
                "`status.branch` is `{}`, the branch Keystone deploys from (`reconcile.branch`)",
                p.status.branch
            ),
            Some(
                "the daemon commits its status there; use a branch of its own, e.g. \
                 `keystone/status`"
                    .into(),
            ),
        );
    }
    if let Some(h) = f.get("health")
        && let Some(hf) = cx.fields(h, "`health`", &["interval"])
        && let Some(n) = hf.get("interval")
        && let Some(i) = cx.duration(n, "health.interval")
        && at_least_a_second(cx, n, "health.interval", i)
    {
        p.health.interval = i;
    }
    if let Some(s) = f.get("secrets")
        && let Some(sf) = cx.fields(s, "`secrets`", &["age_recipients"])
        && let Some(r) = sf.get("age_recipients")
        && let Some(list) = cx.string_list(r, "secrets.age_recipients")
    {
        for (rcpt, pos) in &list {
            if let Err(e) = <age::x25519::Recipient as std::str::FromStr>::from_str(rcpt) {
                cx.error(
                    *pos,
                    "invalid-value",
                    format!("`{rcpt}` is not an age recipient: {e}"),
                    Some(
                        "an age recipient is the `age1…` public key `age-keygen -y KEYFILE` prints"
                            .into(),
                    ),
                );
            }
        }
        p.secrets.age_recipients = list.into_iter().map(|(r, _)| r).collect();
    }
    p
}

/// A loop interval of 0 would poll or probe without a pause.
fn at_least_a_second(cx: &mut FileCx, n: &Node, what: &str, d: Duration) -> bool {
    if d.is_zero() {
        cx.error(
            n.pos,
            "invalid-value",
            format!("`{what}` is 0; it must be at least 1 second"),
            Some(if what.starts_with("health") {
                "e.g. `30s`; keep it at 5 s or more (each round probes every server)".into()
            } else {
                "e.g. `60s` (webhooks wake the daemon between polls)".into()
            }),
        );
    }
    !d.is_zero()
}

// ---------------------------------------------------------------------------------------------
// servers/<name>.yaml

const HOST_KEY_TYPES: [&str; 6] = [
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
];

/// A host name, address or user as ssh takes it: no whitespace or control characters (they would
/// split or hide it), not starting with `-` (ssh would read it as an option), no `@`.
fn ssh_word(cx: &mut FileCx, pos: Pos, what: &str, v: String) -> Option<String> {
    let bad = v.starts_with('-')
        || v.chars().any(|c| c.is_whitespace() || c.is_control())
        || v.contains('@');
    if bad {
        cx.error(
            pos,
            "invalid-value",
            format!("`{what}` is {v:?}, which is not a valid ssh {what}"),
            Some(match what {
                "host" => {
                    "a host name or IP address: no spaces, no `@`, not starting with `-`".into()
                }
                _ => "a login name: no spaces, no `@`, not starting with `-`".into(),
            }),
        );
        return None;
    }
    Some(v)
}

pub fn server(cx: &mut FileCx, name: &str, n: &Node) -> Option<Server> {
    let what = format!("server `{name}`");
    let f = cx.fields(
        n,
        &what,
        &["host", "port", "user", "host_key", "roles", "transport"],
    )?;
    let host = cx
        .required(&f, "host", &what)
        .and_then(|h| cx.nonempty_string(h, "host").map(|v| (v, h.pos)))
        .and_then(|(v, pos)| ssh_word(cx, pos, "host", v));
    let port = match f.get("port") {
        Some(p) => cx.u16(p, "port"),
        None => Some(22),
    };
    let user = match f.get("user") {
        Some(u) => cx
            .nonempty_string(u, "user")
            .and_then(|v| ssh_word(cx, u.pos, "user", v)),
        None => Some("keystone".into()),
    };
    let transport = match f.get("transport") {
        Some(t) => cx.choice(
            t,
            "transport",
            &[("ssh", TransportKind::Ssh), ("local", TransportKind::Local)],
        ),
        None => Some(TransportKind::Ssh),
    };
    let host_key = match f.get("host_key") {
        Some(k) => {
            let key = cx.nonempty_string(k, "host_key");
            if let Some(key) = &key {
                check_host_key(cx, k.pos, key);
            }
            key
        }
        None => {
            if transport == Some(TransportKind::Ssh) {
                cx.error(
                    f.pos,
                    "missing-key",
                    format!("{what} has no `host_key`"),
                    Some("pin the server's SSH host key, e.g. the output of `ssh-keyscan -t ed25519 HOST` without the host name".into()),
                );
            }
            None
        }
    };
    let mut roles = Vec::new();
    if let Some(r) = f.get("roles")
        && let Some(list) = cx.string_list(r, "roles")
    {
        for (role, pos) in list {
            if !NAME.is_match(&role) {
                cx.error(
                    pos,
                    "bad-name",
                    format!("`{role}` is not a valid role name"),
                    Some(NAME_RULE.into()),
                );
            } else if roles.contains(&role) {
                cx.error(
                    pos,
                    "duplicate-name",
                    format!("role `{role}` is listed twice"),
                    None,
                );
            } else {
                roles.push(role);
            }
        }
    }
    Some(Server {
        name: name.to_string(),
        origin: cx.origin(Pos::START),
        host: host?,
        port: port?,
        user: user?,
        host_key,
        roles,
        transport: transport?,
    })
}

fn check_host_key(cx: &mut FileCx, pos: Pos, key: &str) {
    let mut parts = key.split_whitespace();
    let ty = parts.next().unwrap_or_default();
    let body = parts.next().unwrap_or_default();
    let base64_ok = !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=');
    if !HOST_KEY_TYPES.contains(&ty) || !base64_ok {
        cx.error(
            pos,
            "invalid-value",
            "`host_key` is not an SSH public host key".to_string(),
            Some("write `<type> <base64>`, e.g. `ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA…`".into()),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// registries/<name>.yaml

pub fn registry(cx: &mut FileCx, name: &str, n: &Node) -> Option<Registry> {
    let what = format!("registry `{name}`");
    let f = cx.fields(
        n,
        &what,
        &["url", "namespace", "username", "password", "insecure"],
    )?;
    let url = cx
        .required(&f, "url", &what)
        .and_then(|u| cx.nonempty_string(u, "url").map(|s| (s, u.pos)));
    if let Some((u, pos)) = &url
        && (u.contains("://") || u.contains('/') || u.contains(char::is_whitespace))
    {
        cx.error(
            *pos,
            "invalid-value",
            format!("`url` is `{u}`, expected a host and optional port"),
            Some("write e.g. `registry.example.com` or `10.77.0.1:5000`; put the path in `namespace` and plain HTTP in `insecure: true`".into()),
        );
    }
    let namespace = f
        .get("namespace")
        .map(|s| cx.nonempty_string(s, "namespace"));
    let username = f.get("username").map(|v| cx.value(v, "username"));
    let password = f.get("password").map(|v| cx.value(v, "password"));
    let insecure = match f.get("insecure") {
        Some(b) => cx.bool(b, "insecure"),
        None => Some(false),
    };
    Some(Registry {
        name: name.to_string(),
        origin: cx.origin(Pos::START),
        url: url?.0,
        namespace: namespace.lift()?,
        username: username.lift()?,
        password: password.lift()?,
        insecure: insecure?,
    })
}

// ---------------------------------------------------------------------------------------------
// services/<name>.yaml

pub struct ServiceRefs {
    pub servers: Vec<At<String>>,
    /// Position to blame for a port collision: the `port` value, else the `server(s)` key.
    pub port_pos: Pos,
    pub admin_port_pos: Option<Pos>,
}

pub fn shared_service(
    cx: &mut FileCx,
    name: &str,
    n: &Node,
) -> Option<(SharedService, ServiceRefs)> {
    let what = format!("service `{name}`");
    let f = cx.fields(
        n,
        &what,
        &[
            "driver",
            "server",
            "servers",
            "image",
            "port",
            "databases",
            "admin_port",
        ],
    )?;
    let driver = cx
        .required(&f, "driver", &what)
        .and_then(|d| driver(cx, d, DriverKind::Shared));
    let servers = match (f.get("server"), f.get("servers")) {
        (Some(_), Some(_)) => {
            cx.error(
                f.key_pos("servers").unwrap_or(f.pos),
                "conflicting-keys",
                format!("{what} has both `server` and `servers`"),
                Some("keep one: `server: x` is short for `servers: [x]`".into()),
            );
            None
        }
        (Some(s), None) => cx.name(s, "server").map(|v| vec![at(v, s.pos)]),
        (None, Some(list)) => server_list(cx, list, "servers"),
        (None, None) => {
            cx.error(
                f.pos,
                "missing-key",
                format!("{what} has no `server`"),
                Some("add `server: <name>` (a file under servers/) or `servers: [a, b]`".into()),
            );
            None
        }
    };
    let image = f.get("image").map(|i| cx.nonempty_string(i, "image"));
    let port = f.get("port").map(|p| cx.u16(p, "port"));
    let databases = f
        .get("databases")
        .map(|d| cx.u32(d, "databases", 1, 1_000_000));
    let admin_port = f.get("admin_port").map(|p| cx.u16(p, "admin_port"));
    let servers = servers?;
    let port_pos = f
        .get("port")
        .map(|p| p.pos)
        .or(f.key_pos("server"))
        .or(f.key_pos("servers"))
        .unwrap_or(f.pos);
    let refs = ServiceRefs {
        servers: servers.clone(),
        port_pos,
        admin_port_pos: f.get("admin_port").map(|p| p.pos),
    };
    Some((
        SharedService {
            name: name.to_string(),
            origin: cx.origin(Pos::START),
            driver: driver?,
            servers: servers.into_iter().map(|s| s.value).collect(),
            image: image.lift()?,
            port: port.lift()?,
            databases: databases.lift()?,
            admin_port: admin_port.lift()?,
        },
        refs,
    ))
}

fn server_list(cx: &mut FileCx, n: &Node, what: &str) -> Option<Vec<At<String>>> {
    let items = cx.list(n, what)?;
    let mut out: Vec<At<String>> = Vec::new();
    let mut ok = true;
    for item in items {
        match cx.name(item, &format!("{what}[]")) {
            Some(s) if out.iter().any(|o| o.value == s) => {
                cx.error(
                    item.pos,
                    "duplicate-name",
                    format!("server `{s}` is listed twice"),
                    None,
                );
                ok = false;
            }
            Some(s) => out.push(at(s, item.pos)),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// A `driver:` value: a registered driver of the expected kind.
fn driver(cx: &mut FileCx, n: &Node, kind: DriverKind) -> Option<String> {
    let name = cx.string(n, "driver")?;
    let fitting: Vec<&str> = drivers::names()
        .into_iter()
        .filter(|d| drivers::get(d).is_some_and(|d| d.kind() == kind))
        .collect();
    let here = match kind {
        DriverKind::Shared => "a shared service (services/)",
        DriverKind::Application => "an application service (environment `services`)",
    };
    match drivers::get(&name) {
        Some(d) if d.kind() == kind => Some(name),
        Some(_) => {
            cx.error(
                n.pos,
                "wrong-driver-kind",
                format!("driver `{name}` cannot be used for {here}"),
                Some(super::read::one_of_hint(&name, &fitting)),
            );
            None
        }
        None => {
            cx.error(
                n.pos,
                "unknown-driver",
                format!("unknown driver `{name}`"),
                Some(super::read::one_of_hint(&name, &fitting)),
            );
            None
        }
    }
}

// ---------------------------------------------------------------------------------------------
// applications/<app>/application.yaml

pub struct AppRefs {
    pub registry: Option<At<String>>,
    pub strategy_pos: Pos,
}

pub fn application(cx: &mut FileCx, name: &str, n: &Node) -> Option<(Application, AppRefs)> {
    let what = format!("application `{name}`");
    let f = cx.fields(n, &what, &["source", "build"])?;
    let source = cx.required(&f, "source", &what).and_then(|s| {
        let sf = cx.fields(s, "`source`", &["repo", "deploy_key"])?;
        let repo = cx
            .required(&sf, "repo", "`source`")
            .and_then(|r| cx.nonempty_string(r, "source.repo"));
        let deploy_key = sf
            .get("deploy_key")
            .map(|k| cx.value(k, "source.deploy_key"));
        Some(Source {
            repo: repo?,
            deploy_key: deploy_key.lift()?,
        })
    });
    let mut refs = AppRefs {
        registry: None,
        strategy_pos: f.key_pos("build").unwrap_or(f.pos),
    };
    let build = match f.get("build") {
        None => Some(Build {
            strategy: BuildStrategy::Local,
            dockerfile: "Dockerfile".into(),
            context: ".".into(),
            registry: None,
            repository: name.to_string(),
            tag: None,
        }),
        Some(b) => (|| {
            let bf = cx.fields(
                b,
                "`build`",
                &[
                    "strategy",
                    "dockerfile",
                    "context",
                    "registry",
                    "repository",
                    "tag",
                ],
            )?;
            let strategy = match bf.get("strategy") {
                Some(s) => {
                    refs.strategy_pos = s.pos;
                    cx.choice(
                        s,
                        "build.strategy",
                        &[
                            ("local", BuildStrategy::Local),
                            ("dedicated_builder", BuildStrategy::DedicatedBuilder),
                            ("external_registry", BuildStrategy::ExternalRegistry),
                        ],
                    )
                }
                None => Some(BuildStrategy::Local),
            };
            let dockerfile = match bf.get("dockerfile") {
                Some(d) => cx.nonempty_string(d, "build.dockerfile"),
                None => Some("Dockerfile".into()),
            };
            let context = match bf.get("context") {
                Some(c) => cx.nonempty_string(c, "build.context"),
                None => Some(".".into()),
            };
            let registry = bf.get("registry").map(|r| {
                let v = cx.name(r, "build.registry");
                if let Some(v) = &v {
                    refs.registry = Some(at(v.clone(), r.pos));
                }
                v
            });
            let repository = match bf.get("repository") {
                Some(r) => cx.nonempty_string(r, "build.repository"),
                None => Some(name.to_string()),
            };
            let tag = bf.get("tag").map(|t| cx.nonempty_string(t, "build.tag"));
            Some(Build {
                strategy: strategy?,
                dockerfile: dockerfile?,
                context: context?,
                registry: registry.lift()?,
                repository: repository?,
                tag: tag.lift()?,
            })
        })(),
    };
    Some((
        Application {
            name: name.to_string(),
            origin: cx.origin(Pos::START),
            source: source?,
            build: build?,
            environments: BTreeMap::new(),
        },
        refs,
    ))
}

// ---------------------------------------------------------------------------------------------
// applications/<app>/environments/<env>.yaml

pub struct ServicePlacementRefs {
    pub name: String,
    pub key_pos: Pos,
    /// The `placement` value, or the service key when there is none.
    pub placement_pos: Pos,
    /// `placement: {role: x}` → the role's position.
    pub role_pos: Option<Pos>,
    /// `placement: {servers: [...]}` → each server with its position.
    pub servers: Vec<At<String>>,
}

pub struct AttachmentRefs {
    pub service_pos: Pos,
    pub role_pos: Pos,
    pub target_pos: Option<Pos>,
    pub domains: Vec<At<String>>,
}

pub struct EnvRefs {
    pub services: Vec<ServicePlacementRefs>,
    pub scheduler_service_pos: Option<Pos>,
    pub attachments: Vec<AttachmentRefs>,
    /// App services whose definition has an error: references to them are not reported again.
    pub broken_services: Vec<String>,
}

/// An environment file. Returns what could be read even when parts have errors (`cx.failed`),
/// so the cross-file checks still report every dangling reference of the file.
pub fn environment(
    cx: &mut FileCx,
    app: &str,
    name: &str,
    n: &Node,
) -> Option<(Environment, EnvRefs)> {
    let what = format!("environment `{app}/{name}`");
    let f = cx.fields(
        n,
        &what,
        &[
            "ref",
            "services",
            "scheduler",
            "attachments",
            "variables",
            "self_heal",
        ],
    )?;
    let mut refs = EnvRefs {
        services: Vec::new(),
        scheduler_service_pos: None,
        attachments: Vec::new(),
        broken_services: Vec::new(),
    };
    let git_ref = match f.get("ref") {
        Some(r) => cx.nonempty_string(r, "ref"),
        None => Some("main".into()),
    };
    let mut services = BTreeMap::new();
    if let Some(s) = f.get("services") {
        match &s.kind {
            Kind::Map(entries) => {
                for (k, v) in entries {
                    if !NAME.is_match(&k.name) {
                        cx.error(
                            k.pos,
                            "bad-name",
                            format!("`{}` is not a valid service name", k.name),
                            Some(NAME_RULE.into()),
                        );
                        refs.broken_services.push(k.name.clone());
                        continue;
                    }
                    match app_service(cx, &k.name, k.pos, v) {
                        Some((svc, r)) => {
                            services.insert(k.name.clone(), svc);
                            refs.services.push(r);
                        }
                        None => refs.broken_services.push(k.name.clone()),
                    }
                }
            }
            Kind::Null => {}
            _ => {
                cx.error(
                    s.pos,
                    "wrong-type",
                    format!(
                        "`services` must be a mapping of service names, found {}",
                        s.kind.describe()
                    ),
                    Some("e.g. `services: {web: {driver: laravel, roles: [web]}}`".into()),
                );
            }
        }
    }
    let scheduler = f.get("scheduler").map(|s| {
        let sf = cx.fields(s, "`scheduler`", &["service", "mode"])?;
        let service = cx.required(&sf, "service", "`scheduler`").and_then(|v| {
            refs.scheduler_service_pos = Some(v.pos);
            cx.name(v, "scheduler.service")
        });
        let mode = match sf.get("mode") {
            Some(m) => cx.choice(
                m,
                "scheduler.mode",
                &[
                    ("single", SchedulerMode::Single),
                    ("every_replica", SchedulerMode::EveryReplica),
                ],
            ),
            None => Some(SchedulerMode::Single),
        };
        Some(Scheduler {
            service: service?,
            mode: mode?,
        })
    });
    let mut attachments = Vec::new();
    if let Some(a) = f.get("attachments")
        && let Some(items) = cx.list(a, "attachments")
    {
        for item in items {
            if let Some((att, r)) = attachment(cx, item) {
                let dup = attachments
                    .iter()
                    .any(|o: &Attachment| o.service == att.service && o.role == att.role);
                if dup {
                    cx.error(
                        item.pos,
                        "duplicate-name",
                        format!(
                            "`{}` is attached as {} twice",
                            att.service,
                            role_name(att.role)
                        ),
                        Some("remove one of the two attachments".into()),
                    );
                } else {
                    attachments.push(att);
                    refs.attachments.push(r);
                }
            }
        }
    }
    let mut variables: Vec<(String, Value)> = Vec::new();
    let mut variable_origins = BTreeMap::new();
    if let Some(v) = f.get("variables") {
        match &v.kind {
            Kind::Map(entries) => {
                for (k, val) in entries {
                    if !is_env_var_name(&k.name) {
                        cx.error(
                            k.pos,
                            "bad-name",
                            format!("`{}` is not a valid variable name", k.name),
                            Some("variable names are letters, digits and `_`, not starting with a digit".into()),
                        );
                        continue;
                    }
                    if let Some(value) = cx.variable_value(val, &k.name) {
                        variable_origins.insert(k.name.clone(), cx.origin(k.pos));
                        variables.push((k.name.clone(), value));
                    }
                }
            }
            Kind::Null => {}
            _ => {
                cx.error(
                    v.pos,
                    "wrong-type",
                    format!("`variables` must be a mapping, found {}", v.kind.describe()),
                    Some("e.g. `variables: {APP_ENV: production}`".into()),
                );
            }
        }
    }
    let self_heal = match f.get("self_heal") {
        Some(b) => cx.bool(b, "self_heal"),
        None => Some(false),
    };
    let scheduler = match scheduler {
        Some(Some(s)) => Some(s),
        Some(None) => {
            refs.scheduler_service_pos = None;
            None
        }
        None => None,
    };
    Some((
        Environment {
            app: app.to_string(),
            name: name.to_string(),
            origin: cx.origin(Pos::START),
            git_ref: git_ref.unwrap_or_else(|| "main".into()),
            services,
            scheduler,
            attachments,
            variables,
            variable_origins,
            self_heal: self_heal.unwrap_or(false),
        },
        refs,
    ))
}

fn is_env_var_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

const PROCESS_ROLES: [(&str, ProcessRole); 3] = [
    ("web", ProcessRole::Web),
    ("worker", ProcessRole::Worker),
    ("scheduler", ProcessRole::Scheduler),
];

fn app_service(
    cx: &mut FileCx,
    name: &str,
    key_pos: Pos,
    n: &Node,
) -> Option<(AppService, ServicePlacementRefs)> {
    let what = format!("service `{name}`");
    let f = cx.fields(
        n,
        &what,
        &[
            "driver",
            "roles",
            "replicas",
            "placement",
            "migrations",
            "health",
            "port",
            "command",
        ],
    )?;
    let driver = cx
        .required(&f, "driver", &what)
        .and_then(|d| driver(cx, d, DriverKind::Application));
    let roles = match f.get("roles") {
        Some(r) => cx.list(r, "roles").and_then(|items| {
            let mut roles = Vec::new();
            let mut ok = true;
            for item in items {
                match cx.choice(item, "roles[]", &PROCESS_ROLES) {
                    Some(role) if roles.contains(&role) => {
                        cx.error(item.pos, "duplicate-name", "role listed twice", None);
                        ok = false;
                    }
                    Some(role) => roles.push(role),
                    None => ok = false,
                }
            }
            if ok && roles.is_empty() {
                cx.error(
                    r.pos,
                    "invalid-value",
                    format!("{what} has no roles"),
                    Some("list at least one of `web`, `worker`, `scheduler`".into()),
                );
                ok = false;
            }
            ok.then_some(roles)
        }),
        None => {
            cx.error(
                f.pos,
                "missing-key",
                format!("{what} has no `roles`"),
                Some("add `roles: [web]` (or `worker`, `scheduler`)".into()),
            );
            None
        }
    };
    let replicas = match f.get("replicas") {
        Some(r) => cx.u32(r, "replicas", 0, 1000),
        None => Some(1),
    };
    let mut refs = ServicePlacementRefs {
        name: name.to_string(),
        key_pos,
        placement_pos: f.get("placement").map(|p| p.pos).unwrap_or(key_pos),
        role_pos: None,
        servers: Vec::new(),
    };
    let placement = match f.get("placement") {
        Some(p) => (|| {
            let pf = cx.fields(p, "`placement`", &["role", "servers"])?;
            match (pf.get("role"), pf.get("servers")) {
                (Some(r), None) => {
                    refs.role_pos = Some(r.pos);
                    cx.name(r, "placement.role").map(Placement::Role)
                }
                (None, Some(s)) => {
                    let list = server_list(cx, s, "placement.servers")?;
                    let names = list.iter().map(|s| s.value.clone()).collect();
                    refs.servers = list;
                    Some(Placement::Servers(names))
                }
                (Some(_), Some(_)) => {
                    cx.error(
                        p.pos,
                        "conflicting-keys",
                        "`placement` has both `role` and `servers`",
                        Some("place by a server role (`role: web`) or by an explicit list (`servers: [web-1]`), not both".into()),
                    );
                    None
                }
                (None, None) => {
                    cx.error(
                        p.pos,
                        "missing-key",
                        "`placement` names no servers",
                        Some(
                            "write `placement: {role: web}` or `placement: {servers: [web-1]}`"
                                .into(),
                        ),
                    );
                    None
                }
            }
        })(),
        // Default: the servers whose role is the service's first process role.
        None => roles.as_ref().and_then(|r| r.first()).map(|r| {
            Placement::Role(
                PROCESS_ROLES
                    .iter()
                    .find(|(_, p)| p == r)
                    .unwrap()
                    .0
                    .to_string(),
            )
        }),
    };
    let is_web = roles
        .as_ref()
        .is_some_and(|r| r.contains(&ProcessRole::Web));
    let migrations = match f.get("migrations") {
        Some(m) => (|| {
            let mf = cx.fields(m, "`migrations`", &["mode", "timing", "command"])?;
            let mode = match mf.get("mode") {
                Some(v) => cx.choice(
                    v,
                    "migrations.mode",
                    &[
                        ("auto", MigrationMode::Auto),
                        ("manual", MigrationMode::Manual),
                        ("disabled", MigrationMode::Disabled),
                    ],
                ),
                None => Some(default_migration_mode(is_web)),
            };
            let timing = match mf.get("timing") {
                Some(v) => cx.choice(
                    v,
                    "migrations.timing",
                    &[
                        ("pre_switch", MigrationTiming::PreSwitch),
                        ("post_switch", MigrationTiming::PostSwitch),
                    ],
                ),
                None => Some(MigrationTiming::PreSwitch),
            };
            let command = match mf.get("command") {
                Some(c) => cx.nonempty_string(c, "migrations.command"),
                None => Some(DEFAULT_MIGRATION_COMMAND.into()),
            };
            Some(Migrations {
                mode: mode?,
                timing: timing?,
                command: command?,
            })
        })(),
        None => Some(Migrations {
            mode: default_migration_mode(is_web),
            timing: MigrationTiming::PreSwitch,
            command: DEFAULT_MIGRATION_COMMAND.into(),
        }),
    };
    let health = match f.get("health") {
        Some(h) => (|| {
            let hf = cx.fields(h, "`health`", &["path", "timeout"])?;
            let path = match hf.get("path") {
                Some(p) => cx.nonempty_string(p, "health.path").and_then(|s| {
                    if s.starts_with('/') {
                        Some(s)
                    } else {
                        cx.error(
                            p.pos,
                            "invalid-value",
                            format!("`health.path` is `{s}`, expected a path starting with `/`"),
                            Some("e.g. `/up`".into()),
                        );
                        None
                    }
                }),
                None => Some("/up".into()),
            };
            let timeout = match hf.get("timeout") {
                Some(t) => cx.duration(t, "health.timeout"),
                None => Some(Duration::from_secs(120)),
            };
            Some(Health {
                path: path?,
                timeout: timeout?,
            })
        })(),
        None => Some(Health {
            path: "/up".into(),
            timeout: Duration::from_secs(120),
        }),
    };
    let port = match f.get("port") {
        Some(p) => cx.u16(p, "port"),
        None => Some(DEFAULT_APP_PORT),
    };
    let command = f.get("command").map(|c| cx.nonempty_string(c, "command"));
    Some((
        AppService {
            name: name.to_string(),
            origin: cx.origin(key_pos),
            driver: driver?,
            roles: roles?,
            replicas: replicas?,
            servers: Vec::new(),
            placement: placement?,
            migrations: migrations?,
            health: health?,
            port: port?,
            command: command.lift()?,
        },
        refs,
    ))
}

fn default_migration_mode(is_web: bool) -> MigrationMode {
    if is_web {
        MigrationMode::Auto
    } else {
        MigrationMode::Disabled
    }
}

pub const ATTACHMENT_ROLES: [(&str, AttachmentRole); 5] = [
    ("database", AttachmentRole::Database),
    ("cache", AttachmentRole::Cache),
    ("session", AttachmentRole::Session),
    ("queue", AttachmentRole::Queue),
    ("gateway", AttachmentRole::Gateway),
];

pub fn role_name(r: AttachmentRole) -> &'static str {
    ATTACHMENT_ROLES.iter().find(|(_, x)| *x == r).unwrap().0
}

fn attachment(cx: &mut FileCx, n: &Node) -> Option<(Attachment, AttachmentRefs)> {
    let what = "an attachment";
    let f = cx.fields(
        n,
        what,
        &[
            "service",
            "role",
            "confirm_queue_driver",
            "domains",
            "target",
        ],
    )?;
    let service = cx
        .required(&f, "service", "the attachment")
        .and_then(|s| cx.name(s, "service").map(|v| (v, s.pos)));
    let role = cx
        .required(&f, "role", "the attachment")
        .and_then(|r| cx.choice(r, "role", &ATTACHMENT_ROLES).map(|v| (v, r.pos)));
    let mut ok = true;
    let mut not_for = |cx: &mut FileCx, key: &str, only: &str| {
        if let Some(p) = f.key_pos(key) {
            cx.error(
                p,
                "not-applicable",
                format!("`{key}` applies only to {only} attachments"),
                Some(format!("remove `{key}` or change `role`")),
            );
            ok = false;
        }
    };
    let role_v = role.as_ref().map(|r| r.0);
    if role_v.is_some_and(|r| r != AttachmentRole::Queue) {
        not_for(cx, "confirm_queue_driver", "queue");
    }
    if role_v.is_some_and(|r| r != AttachmentRole::Gateway) {
        not_for(cx, "domains", "gateway");
        not_for(cx, "target", "gateway");
    }
    let confirm = match f.get("confirm_queue_driver") {
        Some(b) => cx.bool(b, "confirm_queue_driver"),
        None => Some(false),
    };
    let mut domains = Vec::new();
    if let Some(d) = f.get("domains") {
        match cx.string_list(d, "domains") {
            Some(list) => {
                for (dom, pos) in list {
                    if !is_domain(&dom) {
                        cx.error(
                            pos,
                            "invalid-value",
                            format!("`{dom}` is not a domain name"),
                            Some("write a host name such as `shop.example.com` (no scheme, port or path)".into()),
                        );
                        ok = false;
                    } else if domains.iter().any(|o: &At<String>| o.value == dom) {
                        cx.error(
                            pos,
                            "duplicate-name",
                            format!("domain `{dom}` is listed twice"),
                            None,
                        );
                        ok = false;
                    } else {
                        domains.push(at(dom, pos));
                    }
                }
            }
            None => ok = false,
        }
    }
    let target = f
        .get("target")
        .map(|t| cx.name(t, "target").map(|v| (v, t.pos)));
    if role_v == Some(AttachmentRole::Gateway) {
        if target.is_none() {
            cx.error(
                f.pos,
                "missing-key",
                "the gateway attachment has no `target`",
                Some("add `target: <service>`: the app service that receives the traffic".into()),
            );
            ok = false;
        }
        if domains.is_empty() && ok {
            cx.error(
                f.key_pos("domains").unwrap_or(f.pos),
                "missing-key",
                "the gateway attachment routes no `domains`",
                Some("add `domains: [shop.example.com]`".into()),
            );
            ok = false;
        }
    }
    let (service, service_pos) = service?;
    let (role, role_pos) = role?;
    let confirm = confirm?;
    let target = target.lift()?;
    if !ok {
        return None;
    }
    Some((
        Attachment {
            origin: cx.origin(n.pos),
            service,
            role,
            confirm_queue_driver: confirm,
            domains: domains.iter().map(|d| d.value.clone()).collect(),
            target: target.as_ref().map(|t| t.0.clone()),
        },
        AttachmentRefs {
            service_pos,
            role_pos,
            target_pos: target.map(|t| t.1),
            domains,
        },
    ))
}

fn is_domain(s: &str) -> bool {
    let s = s.strip_prefix("*.").unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

// ---------------------------------------------------------------------------------------------
// secrets/<stem>.sops.{yaml,yml,json,env}

/// The plaintext key paths of a SOPS file (its `sops` metadata left out). Lists are leaves.
pub fn secret_key_paths_yaml(n: &Node, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    if let Kind::Map(entries) = &n.kind {
        for (k, v) in entries {
            if prefix.is_empty() && k.name == "sops" {
                continue;
            }
            prefix.push(k.name.clone());
            if matches!(v.kind, Kind::Map(_)) {
                secret_key_paths_yaml(v, prefix, out);
            } else {
                out.push(prefix.clone());
            }
            prefix.pop();
        }
    }
}

pub fn secret_key_paths_json(
    v: &serde_json::Value,
    prefix: &mut Vec<String>,
    out: &mut Vec<Vec<String>>,
) {
    if let serde_json::Value::Object(map) = v {
        for (k, v) in map {
            if prefix.is_empty() && k == "sops" {
                continue;
            }
            prefix.push(k.clone());
            if v.is_object() {
                secret_key_paths_json(v, prefix, out);
            } else {
                out.push(prefix.clone());
            }
            prefix.pop();
        }
    }
}

/// dotenv: `KEY=value` lines; SOPS stores its metadata as `sops_*` keys.
pub fn secret_key_paths_env(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, _)| k.trim().to_string())
        .filter(|k| !k.starts_with("sops_"))
        .map(|k| vec![k])
        .collect()
}

/// The closest key path of a secret file to a missing one, as `a.b`.
pub fn closest_key(wanted: &[String], file: &SecretFile) -> Option<String> {
    let wanted = wanted.join(".");
    let joined: Vec<String> = file.key_paths.iter().map(|p| p.join(".")).collect();
    did_you_mean(&wanted, joined.iter().map(String::as_str)).map(str::to_string)
}

//! The `caddy2` driver: the gateway. One container per server with a stable name, host
//! networking, the admin API on 127.0.0.1 only; a slice is a route (an environment's domains → its
//! target service's replicas), reconciled through the admin API, never by redeploying Caddy.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::laravel::ReplicaKey;
use super::{
    ContainerCommand, Driver, DriverError, DriverKind, EnvVar, Export, ExportContext, ExportValue,
    FirewallRule, HealthCheck, HealthTarget, ImagePolicy, Peers, PortRef, Resources, SliceContext,
    SliceScript, SliceType, UpdateBehavior, Volume,
};
use crate::model::{AttachmentRole, Model, SharedService};
use crate::shell;

pub struct Caddy2;

/// Admin API port unless `admin_port:` says otherwise.
pub const DEFAULT_ADMIN_PORT: u16 = 2019;
/// Where the gateway directory (`<remote_root>/gateway/<service>`) is mounted in the container.
pub const CONFIG_DIR_IN_CONTAINER: &str = "/etc/keystone";
/// The config file name inside the gateway directory.
pub const CONFIG_FILE: &str = "caddy.json";

static FIREWALL: [FirewallRule; 2] = [
    FirewallRule {
        port: PortRef::Service,
        from: Peers::Anywhere,
    },
    FirewallRule {
        port: PortRef::Admin,
        from: Peers::Localhost,
    },
];

impl Driver for Caddy2 {
    fn name(&self) -> &'static str {
        "caddy2"
    }
    fn kind(&self) -> DriverKind {
        DriverKind::Shared
    }
    fn version_track(&self) -> &'static str {
        "2"
    }
    fn image_policy(&self) -> ImagePolicy {
        ImagePolicy::Upstream {
            default_image: "caddy:2",
        }
    }
    fn attachment_roles(&self) -> &'static [AttachmentRole] {
        &[AttachmentRole::Gateway]
    }
    fn default_ports(&self) -> &'static [u16] {
        &[80]
    }
    fn volumes(&self, service: &str) -> Vec<Volume> {
        vec![Volume::for_service(service, "caddy_data", "/data")]
    }
    fn env_schema(&self) -> &'static [EnvVar] {
        &[]
    }
    fn health_check(&self, target: HealthTarget<'_>) -> HealthCheck {
        // `target.port` is the admin port: Caddy answers its config when it runs.
        HealthCheck {
            test: vec![
                "CMD".into(),
                "wget".into(),
                "-q".into(),
                "-O".into(),
                "/dev/null".into(),
                format!("http://127.0.0.1:{}/config/", target.port),
            ],
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(3),
            retries: 3,
            start_period: Duration::from_secs(5),
        }
    }
    fn resource_defaults(&self) -> Resources {
        Resources {
            // In-flight requests finish while it stops.
            stop_grace_period: Duration::from_secs(30),
            memory_limit: None,
        }
    }
    fn slice_types(&self) -> &'static [SliceType] {
        &[SliceType::Route]
    }
    fn environment_exports(&self, ctx: &ExportContext<'_>) -> Result<Vec<Export>, DriverError> {
        if ctx.role != AttachmentRole::Gateway {
            return Err(DriverError::Invalid {
                origin: ctx.attachment_origin.clone(),
                message: format!(
                    "service `{}` (caddy2) cannot be attached as {:?}; expected role `gateway`",
                    ctx.service.name, ctx.role
                ),
            });
        }
        let env = &ctx.model.applications[&ctx.slice.app].environments[&ctx.slice.env];
        let domain = env
            .attachments
            .iter()
            .find(|a| a.service == ctx.service.name && a.role == AttachmentRole::Gateway)
            .and_then(|a| a.domains.first());
        let Some(domain) = domain else {
            return Ok(Vec::new());
        };
        let port = super::shared_port(ctx.service).unwrap_or(80);
        let url = if port == 80 {
            format!("http://{domain}")
        } else {
            format!("http://{domain}:{port}")
        };
        Ok(vec![Export {
            name: "APP_URL",
            value: ExportValue::Plain(url),
            overridable: true,
        }])
    }
    fn firewall_rules(&self) -> &'static [FirewallRule] {
        &FIREWALL
    }
    fn update_behavior(&self) -> UpdateBehavior {
        UpdateBehavior::StatefulStopStart
    }
    fn pre_switch_steps(&self) -> Vec<ContainerCommand> {
        Vec::new()
    }
    fn provision_slice(&self, _ctx: &SliceContext<'_>) -> Result<Option<SliceScript>, DriverError> {
        // A route exists once the config holding it is loaded (configure_slice).
        Ok(None)
    }
    fn configure_slice(&self, ctx: &SliceContext<'_>) -> Result<Option<SliceScript>, DriverError> {
        Ok(Some(SliceScript {
            name: "load routes".into(),
            script: reload_script(ctx.service),
            stdin: None,
            stdin_summary: None,
        }))
    }
}

/// The admin port of a Caddy service (`None` for other drivers).
pub fn admin_port_of(service: &SharedService) -> Option<u16> {
    (service.driver == "caddy2").then(|| service.admin_port.unwrap_or(DEFAULT_ADMIN_PORT))
}

/// `<remote_root>/gateway/<service>`: holds caddy.json, mounted read-only into the container.
pub fn gateway_dir(remote_root: &str, service: &str) -> String {
    format!("{}/gateway/{service}", remote_root.trim_end_matches('/'))
}

/// `@id` of an environment's reverse proxy: `PATCH /id/<id>/upstreams` replaces its upstreams.
pub fn route_id(app: &str, env: &str, target: &str) -> String {
    format!("keystone_{app}_{env}_{target}").replace('-', "_")
}

/// A route of the rendered config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    pub id: String,
    pub domains: Vec<String>,
    /// `host:port` dial addresses, in selection order (`first` policy: the first healthy wins).
    pub upstreams: Vec<String>,
}

/// The routes a Caddy service serves: one per gateway attachment to it, sorted by environment.
/// `upstreams` gives the dial addresses of each target replica (typically its live slot); a
/// replica without one is left out.
pub fn routes(
    model: &Model,
    service: &str,
    upstreams: &BTreeMap<ReplicaKey, Vec<String>>,
) -> Vec<Route> {
    let mut out = Vec::new();
    for (app, application) in &model.applications {
        for (env, environment) in &application.environments {
            for a in &environment.attachments {
                if a.service != service || a.role != AttachmentRole::Gateway {
                    continue;
                }
                let Some(target) = &a.target else { continue };
                let replicas = environment.services.get(target).map_or(0, |s| s.replicas);
                let dials = (1..=replicas)
                    .flat_map(|i| {
                        upstreams
                            .get(&ReplicaKey::new(app, env, target, i))
                            .cloned()
                            .unwrap_or_default()
                    })
                    .collect();
                out.push(Route {
                    id: route_id(app, env, target),
                    domains: a.domains.clone(),
                    upstreams: dials,
                });
            }
        }
    }
    out
}

/// Reload the uploaded caddy.json into the running Caddy, using Caddy's own CLI inside the
/// container (no curl needed on the host). Graceful: in-flight requests finish on the old config.
pub fn reload_script(service: &SharedService) -> String {
    let admin = admin_port_of(service).unwrap_or(DEFAULT_ADMIN_PORT);
    let container = super::shared_container_name(&service.name);
    let config = format!("{CONFIG_DIR_IN_CONTAINER}/{CONFIG_FILE}");
    format!(
        "set -eu\n{}\n",
        shell::join([
            "docker",
            "exec",
            container.as_str(),
            "caddy",
            "reload",
            "--config",
            config.as_str(),
            "--address",
            &format!("127.0.0.1:{admin}"),
            "--force",
        ])
    )
}

/// Replace a route's upstreams through the admin API (cutover: `[new, old]`, then `[new]`). Runs
/// on the gateway's server; needs curl there.
pub fn set_upstreams_script(service: &SharedService, route_id: &str, dials: &[String]) -> String {
    let admin = admin_port_of(service).unwrap_or(DEFAULT_ADMIN_PORT);
    let body: Vec<_> = dials
        .iter()
        .map(|d| serde_json::json!({ "dial": d }))
        .collect();
    let body = serde_json::to_string(&body).expect("JSON of strings");
    let url = format!("http://127.0.0.1:{admin}/id/{route_id}/upstreams");
    format!(
        "set -eu\n{}\n",
        shell::join([
            "curl",
            "-fsS",
            "-X",
            "PATCH",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body.as_str(),
            url.as_str(),
        ])
    )
}

/// Print `GET /reverse_proxy/upstreams` (`[{address, num_requests, fails}]`): drain polls it
/// until the old upstreams have no requests in flight.
pub fn upstreams_status_script(service: &SharedService) -> String {
    let admin = admin_port_of(service).unwrap_or(DEFAULT_ADMIN_PORT);
    format!(
        "set -eu\n{}\n",
        shell::join([
            "curl",
            "-fsS",
            &format!("http://127.0.0.1:{admin}/reverse_proxy/upstreams"),
        ])
    )
}

//! The `valkey8` driver: a stateful Valkey 8 whose slices are logical databases, one index per
//! (service, environment), unique per service and stable across plans.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::variables::{Variable, VariableSource};
use super::{
    ContainerCommand, Driver, DriverError, DriverKind, EnvVar, Export, ExportContext, ExportValue,
    FirewallRule, HealthCheck, HealthTarget, ImagePolicy, Peers, PortRef, Resources, SliceContext,
    SliceKey, SliceScript, SliceType, UpdateBehavior, Volume,
};
use crate::model::{AttachmentRole, Environment, Model, Origin, SharedService};
use crate::shell;

pub struct Valkey8;

/// Logical databases of a Valkey service unless `databases:` says otherwise.
pub const DEFAULT_DATABASES: u32 = 16;

static FIREWALL: [FirewallRule; 1] = [FirewallRule {
    port: PortRef::Service,
    from: Peers::AttachedServers,
}];

impl Driver for Valkey8 {
    fn name(&self) -> &'static str {
        "valkey8"
    }
    fn kind(&self) -> DriverKind {
        DriverKind::Shared
    }
    fn version_track(&self) -> &'static str {
        "8"
    }
    fn image_policy(&self) -> ImagePolicy {
        ImagePolicy::Upstream {
            default_image: "valkey/valkey:8",
        }
    }
    fn attachment_roles(&self) -> &'static [AttachmentRole] {
        &[
            AttachmentRole::Cache,
            AttachmentRole::Session,
            AttachmentRole::Queue,
        ]
    }
    fn default_ports(&self) -> &'static [u16] {
        &[6379]
    }
    fn volumes(&self, service: &str) -> Vec<Volume> {
        vec![Volume::for_service(service, "valkey_data", "/data")]
    }
    fn env_schema(&self) -> &'static [EnvVar] {
        &[]
    }
    fn health_check(&self, target: HealthTarget<'_>) -> HealthCheck {
        HealthCheck {
            test: vec![
                "CMD-SHELL".into(),
                format!("valkey-cli -p {} ping | grep -q PONG", target.port),
            ],
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(3),
            retries: 5,
            start_period: Duration::from_secs(10),
        }
    }
    fn resource_defaults(&self) -> Resources {
        Resources {
            stop_grace_period: Duration::from_secs(30),
            memory_limit: None,
        }
    }
    fn slice_types(&self) -> &'static [SliceType] {
        &[SliceType::LogicalDatabase]
    }
    fn environment_exports(&self, ctx: &ExportContext<'_>) -> Result<Vec<Export>, DriverError> {
        let index =
            ctx.facts
                .valkey_indexes
                .get(ctx.slice)
                .ok_or_else(|| DriverError::Invalid {
                    origin: ctx.attachment_origin.clone(),
                    message: format!(
                        "slice {} has no logical database index (allocate_indexes first)",
                        ctx.slice
                    ),
                })?;
        let host = super::shared_host(ctx.model, ctx.service).unwrap_or_default();
        let port = super::shared_port(ctx.service).unwrap_or(6379);
        let fixed = |name, value: String| Export {
            name,
            value: ExportValue::Plain(value),
            overridable: false,
        };
        let preference = |name| Export {
            name,
            value: ExportValue::Plain("redis".into()),
            overridable: true,
        };
        let mut out = vec![
            fixed("REDIS_HOST", host.to_string()),
            fixed("REDIS_PORT", port.to_string()),
            fixed("REDIS_DB", index.to_string()),
        ];
        match ctx.role {
            AttachmentRole::Cache => {
                // Laravel's cache connection reads its own index (default 1): keep it in the slice.
                out.push(fixed("REDIS_CACHE_DB", index.to_string()));
                out.push(preference("CACHE_STORE"));
            }
            AttachmentRole::Session => out.push(preference("SESSION_DRIVER")),
            AttachmentRole::Queue => out.push(preference("QUEUE_CONNECTION")),
            AttachmentRole::Database | AttachmentRole::Gateway => {
                return Err(DriverError::Invalid {
                    origin: ctx.attachment_origin.clone(),
                    message: format!(
                        "service `{}` (valkey8) cannot be attached as {:?}; expected one of cache, session, queue",
                        ctx.service.name, ctx.role
                    ),
                });
            }
        }
        Ok(out)
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
    fn provision_slice(&self, ctx: &SliceContext<'_>) -> Result<Option<SliceScript>, DriverError> {
        // Logical databases exist as soon as the server runs; provisioning proves the index is
        // served (an index beyond `databases` answers an error, not PONG).
        let index =
            ctx.facts
                .valkey_indexes
                .get(ctx.slice)
                .ok_or_else(|| DriverError::Invalid {
                    origin: ctx.service.origin.clone(),
                    message: format!("slice {} has no logical database index", ctx.slice),
                })?;
        let container = super::shared_container_name(&ctx.service.name);
        let port = super::shared_port(ctx.service).unwrap_or(6379);
        let check = shell::join([
            "docker",
            "exec",
            container.as_str(),
            "valkey-cli",
            "-p",
            &port.to_string(),
            "-n",
            &index.to_string(),
            "ping",
        ]);
        Ok(Some(SliceScript {
            name: format!("check logical database {index}"),
            script: format!("set -eu\n{check} | grep -q PONG\n"),
            stdin: None,
            stdin_summary: None,
        }))
    }
    fn configure_slice(&self, _ctx: &SliceContext<'_>) -> Result<Option<SliceScript>, DriverError> {
        Ok(None)
    }
    fn slice_limit(&self, service: &SharedService) -> Option<u32> {
        Some(service.databases.unwrap_or(DEFAULT_DATABASES))
    }
}

/// The server command: `databases` logical databases, append-only persistence in /data.
pub fn server_command(service: &SharedService) -> Vec<String> {
    let port = super::shared_port(service).unwrap_or(6379);
    vec![
        "valkey-server".into(),
        "--port".into(),
        port.to_string(),
        "--databases".into(),
        service.databases.unwrap_or(DEFAULT_DATABASES).to_string(),
        "--appendonly".into(),
        "yes".into(),
        "--dir".into(),
        "/data".into(),
    ]
}

/// A slice the allocation could not serve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    #[error(
        "{origin}: valkey service `{service}` has no free logical database for {slice}: all {databases} \
         are assigned; raise `databases:` in services/{service}.yaml or attach another Valkey service"
    )]
    Exhausted {
        origin: Origin,
        service: String,
        slice: SliceKey,
        databases: u32,
    },
    #[error(
        "{origin}: {slice} holds logical database {index}, beyond the {databases} databases of \
         valkey service `{service}`; assignments never move, so raise `databases:` to at least {needed}"
    )]
    BeyondDatabases {
        origin: Origin,
        service: String,
        slice: SliceKey,
        index: u32,
        databases: u32,
        needed: u32,
    },
}

/// Every Valkey slice of the model: (service, environment) pairs with at least one attachment,
/// with the origin of the environment's first attachment to that service.
pub fn slices(model: &Model) -> BTreeMap<SliceKey, Origin> {
    let mut out = BTreeMap::new();
    for (app, application) in &model.applications {
        for (env, environment) in &application.environments {
            for a in &environment.attachments {
                let Some(service) = model.services.get(&a.service) else {
                    continue;
                };
                if service.driver == "valkey8" {
                    out.entry(SliceKey::new(&a.service, app, env))
                        .or_insert_with(|| a.origin.clone());
                }
            }
        }
    }
    out
}

/// The logical database of every Valkey slice. Existing assignments never move; slices that are
/// gone free their index; new slices take the lowest free index of their service, in slice order.
pub fn allocate_indexes(
    model: &Model,
    previous: &BTreeMap<SliceKey, u32>,
) -> Result<BTreeMap<SliceKey, u32>, Vec<IndexError>> {
    let wanted = slices(model);
    let mut used: BTreeMap<&str, BTreeSet<u32>> = BTreeMap::new();
    let mut out = BTreeMap::new();
    let mut errors = Vec::new();
    for (slice, origin) in &wanted {
        if let Some(&index) = previous.get(slice) {
            let databases = databases_of(model, &slice.service);
            if index >= databases {
                errors.push(IndexError::BeyondDatabases {
                    origin: origin.clone(),
                    service: slice.service.clone(),
                    slice: slice.clone(),
                    index,
                    databases,
                    needed: index + 1,
                });
            }
            used.entry(&slice.service).or_default().insert(index);
            out.insert(slice.clone(), index);
        }
    }
    for (slice, origin) in &wanted {
        if out.contains_key(slice) {
            continue;
        }
        let databases = databases_of(model, &slice.service);
        let taken = used.entry(&slice.service).or_default();
        match (0..databases).find(|i| !taken.contains(i)) {
            Some(index) => {
                taken.insert(index);
                out.insert(slice.clone(), index);
            }
            None => errors.push(IndexError::Exhausted {
                origin: origin.clone(),
                service: slice.service.clone(),
                slice: slice.clone(),
                databases,
            }),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn databases_of(model: &Model, service: &str) -> u32 {
    model
        .services
        .get(service)
        .and_then(|s| s.databases)
        .unwrap_or(DEFAULT_DATABASES)
}

/// What the applied state says about an environment's queue driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PreviousQueue {
    /// The environment was never deployed: nothing is queued, any driver is fine.
    NeverDeployed,
    /// The `QUEUE_CONNECTION` its replicas run with (`None`: unset, Laravel's default).
    Deployed(Option<String>),
}

/// A change of queue driver nobody confirmed: jobs queued on the old driver would be stranded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{origin}: {env}'s queue driver changes from {from} to {to}; jobs still queued on {from} would \
     be left behind. Drain the queue, then add `confirm_queue_driver: true` to the queue attachment \
     (or set QUEUE_CONNECTION explicitly in variables)"
)]
pub struct QueueDriverChange {
    pub origin: Origin,
    pub env: String,
    pub from: String,
    pub to: String,
}

/// The queue-driver guard: a change of the environment's `QUEUE_CONNECTION` is a blocker unless a
/// queue attachment says `confirm_queue_driver: true` or the new value is the user's own variable.
pub fn check_queue_driver(
    env: &Environment,
    variables: &[Variable],
    previous: &PreviousQueue,
) -> Result<(), QueueDriverChange> {
    let PreviousQueue::Deployed(before) = previous else {
        return Ok(());
    };
    let now = variables.iter().find(|v| v.name == "QUEUE_CONNECTION");
    let after = now.and_then(|v| v.plain_value().map(str::to_string));
    if &after == before {
        return Ok(());
    }
    let queue_attachments: Vec<_> = env
        .attachments
        .iter()
        .filter(|a| a.role == AttachmentRole::Queue)
        .collect();
    if queue_attachments.iter().any(|a| a.confirm_queue_driver) {
        return Ok(());
    }
    if now.is_some_and(|v| v.source == VariableSource::User) {
        return Ok(());
    }
    let origin = queue_attachments
        .first()
        .map(|a| a.origin.clone())
        .unwrap_or_else(|| env.origin.clone());
    let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "the default (unset)".into());
    Err(QueueDriverChange {
        origin,
        env: env.key(),
        from: show(before),
        to: show(&after),
    })
}

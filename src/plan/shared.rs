//! Plans of shared services (`services/<name>.yaml`): create, stateful update when the image
//! changes, removal (containers only: a plan never deletes a volume).

use std::time::Duration;

use super::applied::{Applied, AppliedSharedReplica, AppliedSharedService};
use super::changes::Change;
use super::ops::{Children, Operation, OperationKind, Placeholder, Step, StepAction, Target};
use super::script::{self, payload};
use super::{EnvironmentStatus, PlanContext, ServicePlan};
use crate::model::{Model, SharedService};

const SHORT: Duration = Duration::from_secs(60);

/// The named volume a shared service keeps its state in. (interim: the driver's `volumes`)
pub fn volume_name(service: &str) -> String {
    format!("keystone_service_{service}_data")
}

/// The stable container name of a shared service. (interim: `drivers::shared_container_name`)
pub fn container_name(service: &str) -> String {
    format!("keystone-{service}")
}

fn default_image(driver: &str) -> &'static str {
    match driver {
        "postgres18" => "postgres:18",
        "valkey8" => "valkey/valkey:8",
        _ => "caddy:2",
    }
}

fn image_of(s: &SharedService) -> String {
    s.image
        .clone()
        .unwrap_or_else(|| default_image(&s.driver).to_string())
}

/// `(image without tag, tag)`; an image pinned by digest has no tag to resolve.
fn split_tag(image: &str) -> Option<(&str, &str)> {
    if image.contains('@') {
        return None;
    }
    let slash = image.rfind('/').map(|i| i + 1).unwrap_or(0);
    match image[slash..].rfind(':') {
        Some(i) => Some((&image[..slash + i], &image[slash + i + 1..])),
        None => Some((image, "latest")),
    }
}

pub(super) fn plan_services(
    model: &Model,
    applied: &Applied,
    ctx: &PlanContext,
) -> Vec<ServicePlan> {
    let mut out = Vec::new();
    let root = model.project.remote_root.trim_end_matches('/');
    for (name, s) in &model.services {
        let image = image_of(s);
        let before = applied.services.get(name);
        let volume = volume_name(name);
        let mut plan = ServicePlan {
            service: name.clone(),
            status: EnvironmentStatus::Unchanged,
            summary: "no changes".into(),
            changes: Vec::new(),
            operation: None,
            blockers: Vec::new(),
            warnings: Vec::new(),
            applied_after: None,
        };
        let servers_before: Vec<&str> = before
            .map(|b| b.replicas.iter().map(|r| r.server.as_str()).collect())
            .unwrap_or_default();
        let same_servers =
            servers_before == s.servers.iter().map(String::as_str).collect::<Vec<_>>();
        if before.is_some_and(|b| b.image == image && same_servers) {
            out.push(plan);
            continue;
        }
        let capture = format!("digest:{name}");
        let digest = Placeholder::token(&capture);
        let pinned = match split_tag(&image) {
            Some((repo, _)) => format!("{repo}@{digest}"),
            None => image.clone(),
        };
        let (kind, verb) = match before {
            None => (OperationKind::ServiceDeploy, "create"),
            Some(_) => (OperationKind::StatefulUpdate, "stateful update"),
        };
        match before {
            None => plan.changes.push(Change::added(
                format!("service {name}"),
                format!("{} on {} ({image})", s.driver, s.servers.join(", ")),
            )),
            Some(b) => {
                if b.image != image {
                    plan.changes.push(Change::changed(
                        format!("services.{name}.image"),
                        b.image.clone(),
                        image.clone(),
                    ));
                }
                if !same_servers {
                    plan.changes.push(Change::changed(
                        format!("services.{name}.servers"),
                        servers_before.join(", "),
                        s.servers.join(", "),
                    ));
                }
            }
        }
        plan.changes.push(Change::unchanged(
            format!("volume {volume}"),
            "kept (a plan never deletes a volume)",
        ));
        let mut root_op = Operation {
            id: format!("service/{name}"),
            kind,
            title: format!("{} {name} ({verb})", kind.as_str()),
            server: None,
            steps: Vec::new(),
            children_mode: Children::ParallelByServer,
            children: Vec::new(),
        };
        if let Some((_, _)) = split_tag(&image) {
            root_op.steps.push(Step {
                name: "resolve image tag to digest".into(),
                target: Target::Local,
                action: StepAction::ResolveDigest {
                    image: image.clone(),
                    registry: model
                        .registries
                        .values()
                        .find(|r| image.starts_with(&format!("{}/", r.url)))
                        .map(|r| r.name.clone()),
                },
                timeout: SHORT,
                idempotent: true,
                capture: Some(capture.clone()),
            });
        }
        for server in &s.servers {
            let t = Target::Server(server.clone());
            let dir = format!("{root}/services/{name}");
            let container = container_name(name);
            let project = format!("keystone-{name}");
            let mut r = Operation {
                id: format!("service/{name}/{server}"),
                kind,
                title: format!("{} {name} @{server}", kind.as_str()),
                server: Some(server.clone()),
                steps: Vec::new(),
                children_mode: Children::Sequential,
                children: Vec::new(),
            };
            r.steps.push(script::run(
                "pull image by digest",
                &t,
                script::pull_script(
                    &pinned,
                    None,
                    &format!("{root}/operations/{}-{name}", ctx.operation_prefix),
                ),
                None,
                Duration::from_secs(600),
                true,
            ));
            if before.is_some() {
                r.steps.push(script::run(
                    "stop",
                    &t,
                    format!(
                        "set -eu\ndocker compose --project-name {} --file {} stop\n",
                        crate::shell::quote(&project),
                        crate::shell::quote(&format!("{dir}/compose.yml"))
                    ),
                    None,
                    Duration::from_secs(120),
                    true,
                ));
                let mut check = script::run(
                    "verify named volume",
                    &t,
                    script::volume_check_script(&volume),
                    None,
                    SHORT,
                    true,
                );
                check.capture = Some(format!("volume:{name}"));
                r.steps.push(check);
            } else {
                r.steps.push(script::run(
                    "create named volume",
                    &t,
                    format!(
                        "set -eu\ndocker volume create {} >/dev/null\n",
                        crate::shell::quote(&volume)
                    ),
                    None,
                    SHORT,
                    true,
                ));
            }
            let files = match crate::render::replica_files(&crate::render::ReplicaInput::Shared(
                crate::render::SharedReplica {
                    model,
                    service: name,
                    server,
                    image: &pinned,
                    admin: None,
                    routes: &gateway_routes(model, name),
                },
            )) {
                Ok(f) => f,
                Err(e) => {
                    plan.blockers.push(super::Finding {
                        code: "render-failed".into(),
                        location: Some(s.origin.to_string()),
                        message: format!("cannot render service {name} for {server}: {e}"),
                        hint: None,
                    });
                    continue;
                }
            };
            let mut first = true;
            for f in files.files() {
                r.steps.push(script::upload(
                    if first {
                        "render compose.yml with the new digest".to_string()
                    } else {
                        format!("upload {}", f.summary)
                    },
                    &t,
                    f.path,
                    f.mode,
                    payload(f.bytes, f.summary),
                ));
                first = false;
            }
            r.steps.push(script::run(
                "start",
                &t,
                format!(
                    "set -eu\n{}\n",
                    files.compose_command(&[
                        "up",
                        "--detach",
                        "--no-build",
                        "--pull",
                        "never",
                        "--remove-orphans",
                    ])
                ),
                None,
                Duration::from_secs(120),
                true,
            ));
            r.steps.push(script::run(
                "wait healthy",
                &t,
                script::wait_healthy_script(&container, Duration::from_secs(120)),
                None,
                Duration::from_secs(150),
                true,
            ));
            if before.is_some() {
                r.steps.push(script::run(
                    "verify same volume",
                    &t,
                    script::volume_same_script(
                        &volume,
                        &Placeholder::token(&format!("volume:{name}")),
                    ),
                    None,
                    SHORT,
                    true,
                ));
            }
            root_op.children.push(r);
        }
        plan.status = EnvironmentStatus::Changed;
        plan.summary = format!("{verb} on {}", s.servers.join(", "));
        plan.operation = Some(root_op);
        plan.applied_after = Some(AppliedSharedService {
            driver: s.driver.clone(),
            image: image.clone(),
            digest: Some(digest.clone()),
            replicas: s
                .servers
                .iter()
                .map(|server| AppliedSharedReplica {
                    server: server.clone(),
                    container: container_name(name),
                    digest: digest.clone(),
                })
                .collect(),
            volumes: vec![volume],
        });
        out.push(plan);
    }
    for (name, b) in &applied.services {
        if model.services.contains_key(name) {
            continue;
        }
        let mut plan = ServicePlan {
            service: name.clone(),
            status: EnvironmentStatus::Removed,
            summary: "removed from the config: container stopped, volumes kept".into(),
            changes: vec![Change::removed(
                format!("service {name}"),
                format!("({})", b.driver),
            )],
            operation: None,
            blockers: Vec::new(),
            warnings: Vec::new(),
            applied_after: None,
        };
        for v in &b.volumes {
            plan.changes.push(Change::unchanged(
                format!("volume {v}"),
                "kept (a plan never deletes a volume)",
            ));
        }
        let mut root_op = Operation {
            id: format!("service/{name}"),
            kind: OperationKind::ServiceRemoval,
            title: format!("service_removal {name} (volumes kept)"),
            server: None,
            steps: Vec::new(),
            children_mode: Children::ParallelByServer,
            children: Vec::new(),
        };
        for r in &b.replicas {
            root_op.steps.push(script::run(
                format!("stop and remove {}", r.container),
                &Target::Server(r.server.clone()),
                script::compose_down_script(
                    &format!("{root}/services/{name}"),
                    &format!("keystone-{name}"),
                ),
                None,
                Duration::from_secs(120),
                true,
            ));
        }
        plan.operation = Some(root_op);
        out.push(plan);
    }
    out
}

/// The routes a gateway service's config file starts with: every gateway attachment to it, with
/// no upstreams yet (cutovers set them through the admin API).
fn gateway_routes(model: &Model, service: &str) -> Vec<crate::drivers::caddy2::Route> {
    crate::drivers::caddy2::routes(model, service, &std::collections::BTreeMap::new())
}

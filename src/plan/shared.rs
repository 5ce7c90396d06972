//! Plans of shared services (`services/<name>.yaml`): create, stateful update when the image
//! changes, removal (containers only: a plan never deletes a volume).

use std::time::Duration;

use super::applied::{Applied, AppliedSharedReplica, AppliedSharedService};
use super::changes::Change;
use super::ops::{Children, Operation, OperationKind, Placeholder, Step, StepAction, Target};
use super::script::{self, payload};
use super::{EnvironmentStatus, Finding, PlanContext, ServicePlan};
use crate::drivers::{self, laravel::ReplicaKey};
use crate::model::{Model, SharedService};
use std::collections::BTreeMap;

const SHORT: Duration = Duration::from_secs(60);

/// The named volume a shared service keeps its state in (the driver's first volume).
pub fn volume_name(s: &SharedService) -> String {
    drivers::get(&s.driver)
        .and_then(|d| d.volumes(&s.name).into_iter().next())
        .map(|v| v.name)
        .unwrap_or_else(|| format!("keystone_service_{}_data", s.name))
}

fn image_of(s: &SharedService) -> String {
    drivers::shared_image(s).unwrap_or_else(|| s.driver.clone())
}

/// Dial addresses of every running app replica, for the gateway's rendered routes.
fn live_upstreams(model: &Model, applied: &Applied) -> BTreeMap<ReplicaKey, Vec<String>> {
    let mut out = BTreeMap::new();
    for (key, e) in &applied.environments {
        let Some((app, env)) = key.split_once('/') else {
            continue;
        };
        for (svc, a) in &e.services {
            for r in &a.replicas {
                let Some(port) = r.host_port else { continue };
                let host = model
                    .servers
                    .get(&r.server)
                    .map(|s| s.host.clone())
                    .unwrap_or_else(|| r.server.clone());
                out.insert(
                    ReplicaKey::new(app, env, svc, r.index),
                    vec![format!("{host}:{port}")],
                );
            }
        }
    }
    out
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
    let upstreams = live_upstreams(model, applied);
    for (name, s) in &model.services {
        let image = image_of(s);
        let before = applied.services.get(name);
        let volume = volume_name(s);
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
        plan.changes.push(match before {
            None => Change::added(format!("volume {volume}"), ""),
            Some(_) => Change::unchanged(
                format!("volume {volume}"),
                "kept (a plan never deletes a volume)",
            ),
        });
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
                on_failure: None,
            });
        }
        let routes = drivers::caddy2::routes(model, name, &upstreams);
        let admin = (s.driver == "postgres18").then(|| super::driving::postgres_admin(name));
        for server in &s.servers {
            let t = Target::Server(server.clone());
            let files = match crate::render::replica_files(&crate::render::ReplicaInput::Shared(
                crate::render::SharedReplica {
                    model,
                    service: name,
                    server,
                    image: &pinned,
                    admin: admin.as_ref(),
                    routes: &routes,
                },
            )) {
                Ok(f) => f,
                Err(err) => {
                    plan.blockers.push(Finding {
                        code: "render".into(),
                        location: Some(s.origin.to_string()),
                        message: format!("service {name} @{server}: {err}"),
                        hint: None,
                    });
                    continue;
                }
            };
            let dir = files.remote_dir.clone();
            let project = files.project.clone();
            let container = files.container.clone();
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
                    script::compose_stop_script(&dir, &project),
                    None,
                    Duration::from_secs(120),
                    true,
                ));
                r.steps.push(script::run(
                    "verify named volume",
                    &t,
                    script::volume_check_script(&volume, &format!("{dir}/volume-identity")),
                    None,
                    SHORT,
                    true,
                ));
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
            for f in files.files() {
                let base = f
                    .path
                    .rsplit('/')
                    .next()
                    .unwrap_or(f.path.as_str())
                    .to_string();
                let step = if base == "compose.yml" {
                    "render compose.yml with the new digest".to_string()
                } else {
                    format!("upload {base}")
                };
                r.steps.push(script::upload(
                    step,
                    &t,
                    f.path,
                    f.mode,
                    payload(f.bytes, f.summary),
                ));
            }
            r.steps.push(script::run(
                "start",
                &t,
                script::compose_up_script(&dir, &project),
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
                    script::volume_same_script(&volume, &format!("{dir}/volume-identity")),
                    None,
                    SHORT,
                    true,
                ));
            }
            root_op.children.push(r);
        }
        if !plan.blockers.is_empty() {
            plan.status = EnvironmentStatus::Blocked;
            plan.summary = "blocked".into();
            plan.operation = None;
            out.push(plan);
            continue;
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
                    container: drivers::shared_container_name(name),
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
                    &drivers::shared_container_name(name),
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

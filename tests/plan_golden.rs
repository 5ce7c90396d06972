//! Golden plans: examples/config-repo and the scenarios of issue 5, in text, markdown and json.
//! The golden files under tests/golden/plan/ were reviewed by hand; `KEYSTONE_BLESS=1` rewrites
//! them after a deliberate change (review the diff).

mod plan_common;

use keystone::model::{Attachment, AttachmentRole, Origin};
use keystone::plan::{self, Desired, SecretState};
use plan_common::*;

#[test]
fn example_first_deploy() {
    let m = example();
    let p = plan::plan(Desired::valid(&m), &Default::default(), &ctx("a1b2c3d"));
    golden_all("first-deploy", &p);
}

#[test]
fn image_change() {
    let m = example();
    let applied = deployed(&m);
    let mut c = ctx("e4f5a6b");
    for v in c.source_commits.values_mut() {
        *v = "0123456789abcdef0123456789abcdef01234567".into();
    }
    let p = plan::plan(Desired::valid(&m), &applied, &c);
    golden_all("image-change", &p);
}

#[test]
fn scale_web_2_to_3_and_bump_a_variable() {
    let m = example();
    let applied = deployed(&m);
    let mut head = m.clone();
    let prod = env_mut(&mut head, "production");
    prod.services.get_mut("web").unwrap().replicas = 3;
    prod.variables[2].1 = keystone::model::Value::Plain("ops@shop.lab.test".into());
    let p = plan::plan(Desired::valid(&head), &applied, &ctx("e4f5a6b"));
    golden_all("scale-2-to-3", &p);
}

#[test]
fn move_a_replica_to_another_server() {
    let m = example();
    let applied = deployed(&m);
    let mut head = m.clone();
    let w = env_mut(&mut head, "production")
        .services
        .get_mut("worker")
        .unwrap();
    w.servers = vec!["web-1".into()];
    w.placement = keystone::model::Placement::Servers(vec!["web-1".into()]);
    let p = plan::plan(Desired::valid(&head), &applied, &ctx("e4f5a6b"));
    golden_all("move-replica", &p);
}

#[test]
fn add_a_postgres_attachment() {
    let mut base = example();
    env_mut(&mut base, "staging")
        .attachments
        .retain(|a| a.role != AttachmentRole::Database);
    let applied = deployed(&base);
    let head = example();
    let p = plan::plan(Desired::valid(&head), &applied, &ctx("e4f5a6b"));
    golden_all("add-postgres", &p);
}

#[test]
fn remove_a_service() {
    let m = example();
    let applied = deployed(&m);
    let mut head = m.clone();
    env_mut(&mut head, "production").services.remove("worker");
    let p = plan::plan(Desired::valid(&head), &applied, &ctx("e4f5a6b"));
    golden_all("remove-service", &p);
}

#[test]
fn change_a_secret() {
    let m = example();
    let applied = deployed(&m);
    let mut c = ctx("e4f5a6b");
    c.secrets.insert(
        "shop-production.mail_password".into(),
        SecretState::Fingerprint {
            fingerprint: "hmac:shop-production.mail_password:v2".into(),
        },
    );
    let p = plan::plan(Desired::valid(&m), &applied, &c);
    golden_all("change-secret", &p);
}

#[test]
fn queue_driver_change_without_confirmation() {
    let mut base = example();
    env_mut(&mut base, "staging").variables.push((
        "QUEUE_CONNECTION".into(),
        keystone::model::Value::Plain("database".into()),
    ));
    let applied = deployed(&base);
    let mut head = example();
    env_mut(&mut head, "staging").attachments.push(Attachment {
        origin: Origin {
            file: "applications/shop/environments/staging.yaml".into(),
            line: 13,
            column: 5,
        },
        service: "main-valkey".into(),
        role: AttachmentRole::Queue,
        confirm_queue_driver: false,
        domains: Vec::new(),
        target: None,
    });
    let p = plan::plan(Desired::valid(&head), &applied, &ctx("e4f5a6b"));
    golden_all("queue-driver-change", &p);
}

#[test]
fn undecryptable_secret_blocks_only_its_environment() {
    let m = example();
    let applied = deployed(&m);
    let mut head = m.clone();
    env_mut(&mut head, "production")
        .services
        .get_mut("web")
        .unwrap()
        .replicas = 3;
    env_mut(&mut head, "staging")
        .services
        .get_mut("web")
        .unwrap()
        .replicas = 2;
    let mut c = ctx("e4f5a6b");
    c.secrets.insert(
        "shop-staging.app_key".into(),
        SecretState::Undecryptable {
            reason: "MAC mismatch".into(),
        },
    );
    let p = plan::plan(Desired::valid(&head), &applied, &c);
    golden_all("undecryptable-secret", &p);
}

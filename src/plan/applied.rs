//! The applied state: what the last successful deploy left running, as the planner reads it.
//!
//! The engine records one `AppliedEnvironment` per environment after a successful deploy (and one
//! `AppliedSharedService` per shared service after it was created or updated) and stores the whole
//! `Applied` as JSON. The planner compares the desired model against it; an empty `Applied` means
//! "nothing deployed yet" (a first deploy). Every field is plain data: no secret value is ever
//! stored here, only fingerprints (see `AppliedVariable`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::AttachmentRole;

/// Everything Keystone has deployed, as recorded by the engine.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Applied {
    /// By environment key `app/env`.
    #[serde(default)]
    pub environments: BTreeMap<String, AppliedEnvironment>,
    /// Shared services (`services/<name>.yaml`) by name.
    #[serde(default)]
    pub services: BTreeMap<String, AppliedSharedService>,
}

impl Applied {
    /// The applied state of `app/env`, if it was ever deployed.
    pub fn environment(&self, app: &str, env: &str) -> Option<&AppliedEnvironment> {
        self.environments.get(&format!("{app}/{env}"))
    }
}

/// One environment as it was last deployed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AppliedEnvironment {
    /// The config repository commit the deploy was planned from.
    pub config_commit: String,
    /// The application source commit that was built (the environment's `ref` resolved).
    #[serde(default)]
    pub source_commit: Option<String>,
    /// The application image that runs, pinned by digest.
    #[serde(default)]
    pub image: Option<AppliedImage>,
    /// Fingerprint of the build inputs (source repo, ref, strategy, Dockerfile, context,
    /// registry, repository, tag): a change means a new build.
    #[serde(default)]
    pub build: Option<String>,
    /// Application services (`services.<name>` of the environment file) by name.
    #[serde(default)]
    pub services: BTreeMap<String, AppliedAppService>,
    /// Slices of shared services this environment owns, by shared service name. One slice per
    /// (environment, shared service): an environment attached to one Valkey as cache, session and
    /// queue has one logical database.
    #[serde(default)]
    pub slices: BTreeMap<String, AppliedSlice>,
    /// The replica that runs the scheduler when the scheduler mode is `single`.
    #[serde(default)]
    pub scheduler_holder: Option<ReplicaRef>,
    /// Every variable of the rendered `.env`, by name.
    #[serde(default)]
    pub variables: BTreeMap<String, AppliedVariable>,
    /// The queue driver the environment runs with (`QUEUE_CONNECTION`, e.g. `redis`, `sync`), when
    /// one was set. A change needs `confirm_queue_driver: true`.
    #[serde(default)]
    pub queue_driver: Option<String>,
}

/// An image reference pinned by digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedImage {
    /// Repository without tag or digest, e.g. `10.77.0.1:5000/acme/shop`.
    pub repository: String,
    /// `sha256:<64 hex>`.
    pub digest: String,
}

impl AppliedImage {
    /// `repository@sha256:…`.
    pub fn reference(&self) -> String {
        format!("{}@{}", self.repository, self.digest)
    }
}

/// An application service as deployed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AppliedAppService {
    pub driver: String,
    /// The replicas that run, ordered by index.
    pub replicas: Vec<AppliedReplica>,
}

/// One running replica of an application service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedReplica {
    /// 1-based replica index (`web#2` has index 2).
    pub index: u32,
    pub server: String,
    /// Blue/green slot the replica runs in (the drivers' allocation names it, e.g. `a` or `b`).
    pub slot: String,
    /// The Docker container name.
    pub container: String,
    /// The compose project the replica was started with (`docker compose -p`).
    #[serde(default)]
    pub project: String,
    /// The host port the container's port is published on (what the gateway routes to).
    #[serde(default)]
    pub host_port: Option<u16>,
    /// The image digest the replica runs, `sha256:…`.
    pub digest: String,
    /// Fingerprint of the replica's rendered `.env` (restart when it changes).
    #[serde(default)]
    pub env_fingerprint: Option<String>,
}

/// A slice of a shared service owned by one environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum AppliedSlice {
    /// A Postgres database and the role that owns it.
    PostgresDatabase { database: String, role: String },
    /// A Valkey logical database and the roles the environment uses it for.
    ValkeyDatabase {
        index: u32,
        roles: Vec<AttachmentRole>,
    },
    /// A gateway route: these domains go to the replicas of `target`.
    GatewayRoute {
        domains: Vec<String>,
        target: String,
    },
}

/// `service#index`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ReplicaRef {
    pub service: String,
    pub index: u32,
}

/// Where a variable's value comes from (SPEC.md §4).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum VariableSource {
    /// Written in the environment file.
    User,
    /// `{secret: file.key}`; `path` is the reference as written.
    Secret { path: String },
    /// Exported by an attachment's slice, e.g. `slice: main-postgres/shop-production`.
    Managed { slice: String },
}

/// A variable as last rendered. Never holds a secret value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedVariable {
    pub source: VariableSource,
    /// The value, only for non-secret values (user and managed values that are not credentials),
    /// so the plan diff can show `old → new`.
    #[serde(default)]
    pub value: Option<String>,
    /// A fingerprint of the value: `plain_fingerprint` for plain values, the secrets module's
    /// keyed hash for secret and generated values. Compared for equality only.
    pub fingerprint: String,
}

/// A shared service as deployed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AppliedSharedService {
    pub driver: String,
    /// The image as configured (tag or digest reference), e.g. `10.77.0.1:5000/standin/postgres:18`.
    pub image: String,
    /// The digest that runs, `sha256:…`.
    #[serde(default)]
    pub digest: Option<String>,
    /// One replica per server.
    #[serde(default)]
    pub replicas: Vec<AppliedSharedReplica>,
    /// Named volumes (`keystone_service_<service>_<purpose>`).
    #[serde(default)]
    pub volumes: Vec<String>,
}

/// One replica of a shared service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedSharedReplica {
    pub server: String,
    pub container: String,
    pub digest: String,
}

/// The fingerprint of a plain (non-secret) value: `sha256:<hex of the value's UTF-8 bytes>`.
pub fn plain_fingerprint(value: &str) -> String {
    use sha2::{Digest, Sha256};
    format!("sha256:{}", hex::encode(Sha256::digest(value.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_json_is_a_first_deploy() {
        let applied: Applied = serde_json::from_str("{}").unwrap();
        assert_eq!(applied, Applied::default());
        assert!(applied.environment("shop", "production").is_none());
    }

    #[test]
    fn round_trips_through_json() {
        let mut applied = Applied::default();
        let mut env = AppliedEnvironment {
            config_commit: "a1b2c3d".into(),
            source_commit: Some("9f8e7d6".into()),
            image: Some(AppliedImage {
                repository: "10.77.0.1:5000/acme/shop".into(),
                digest: format!("sha256:{}", "4c".repeat(32)),
            }),
            queue_driver: Some("redis".into()),
            scheduler_holder: Some(ReplicaRef {
                service: "web".into(),
                index: 1,
            }),
            ..Default::default()
        };
        env.slices.insert(
            "main-valkey".into(),
            AppliedSlice::ValkeyDatabase {
                index: 3,
                roles: vec![AttachmentRole::Cache, AttachmentRole::Queue],
            },
        );
        env.variables.insert(
            "APP_KEY".into(),
            AppliedVariable {
                source: VariableSource::Secret {
                    path: "shop-production.app_key".into(),
                },
                value: None,
                fingerprint: "hmac:00".into(),
            },
        );
        applied.environments.insert("shop/production".into(), env);
        let json = serde_json::to_string(&applied).unwrap();
        assert!(
            json.contains(r#""type":"valkey_database","index":3"#),
            "{json}"
        );
        let back: Applied = serde_json::from_str(&json).unwrap();
        assert_eq!(back, applied);
    }

    #[test]
    fn plain_fingerprint_is_sha256_hex() {
        assert_eq!(
            plain_fingerprint(""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}

//! The GitOps daemon: triggers (poll, webhook, notify), the HTTP API, forge clients and metrics.
//!
//! Architecture invariant: a trigger only ever causes a fetch of the config repository; what is
//! deployed comes from the fetched commits, never from a webhook payload.

pub mod engine;
pub mod forge;
pub mod health;
pub mod http;
pub mod metrics;
pub mod mirror;
pub mod queue;
pub mod record;
pub mod runtime;
pub mod webhook;

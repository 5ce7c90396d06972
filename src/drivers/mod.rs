//! Drivers: what each kind of service *is* (SPEC.md §3). One module per service type; a driver
//! answers questions ("what image, which ports, which variables, which SQL"), it never runs
//! anything.
//!
//! Architecture invariant: no capability of a service type lives outside its driver.

use crate::model::AttachmentRole;

/// Whether a driver is used by application services (in environment files) or by shared services
/// (`services/<name>.yaml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverKind {
    Application,
    Shared,
}

/// The driver contract. Every capability of SPEC.md §3 is an explicit method.
pub trait Driver: Send + Sync {
    /// The `driver:` name in the config, e.g. `postgres18`.
    fn name(&self) -> &'static str;
    fn kind(&self) -> DriverKind;
    /// Attachment roles an environment may attach to a service of this driver with.
    fn attachment_roles(&self) -> &'static [AttachmentRole];
    /// Host ports a shared service publishes by default (used for collision checks).
    fn default_ports(&self) -> &'static [u16];
}

pub mod caddy2;
pub mod laravel;
pub mod postgres18;
pub mod valkey8;

static DRIVERS: [&dyn Driver; 4] = [
    &laravel::Laravel,
    &postgres18::Postgres18,
    &valkey8::Valkey8,
    &caddy2::Caddy2,
];

/// The driver registered under `name`.
pub fn get(name: &str) -> Option<&'static dyn Driver> {
    DRIVERS.iter().copied().find(|d| d.name() == name)
}

/// Every registered driver name, for "expected one of" messages.
pub fn names() -> Vec<&'static str> {
    DRIVERS.iter().map(|d| d.name()).collect()
}

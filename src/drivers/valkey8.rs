//! The `valkey8` driver.

use super::{Driver, DriverKind};
use crate::model::AttachmentRole;

pub struct Valkey8;

impl Driver for Valkey8 {
    fn name(&self) -> &'static str {
        "valkey8"
    }
    fn kind(&self) -> DriverKind {
        DriverKind::Shared
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
}

//! The `postgres18` driver.

use super::{Driver, DriverKind};
use crate::model::AttachmentRole;

pub struct Postgres18;

impl Driver for Postgres18 {
    fn name(&self) -> &'static str {
        "postgres18"
    }
    fn kind(&self) -> DriverKind {
        DriverKind::Shared
    }
    fn attachment_roles(&self) -> &'static [AttachmentRole] {
        &[AttachmentRole::Database]
    }
    fn default_ports(&self) -> &'static [u16] {
        &[5432]
    }
}

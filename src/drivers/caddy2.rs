//! The `caddy2` driver.

use super::{Driver, DriverKind};
use crate::model::AttachmentRole;

pub struct Caddy2;

impl Driver for Caddy2 {
    fn name(&self) -> &'static str {
        "caddy2"
    }
    fn kind(&self) -> DriverKind {
        DriverKind::Shared
    }
    fn attachment_roles(&self) -> &'static [AttachmentRole] {
        &[AttachmentRole::Gateway]
    }
    fn default_ports(&self) -> &'static [u16] {
        &[80]
    }
}

//! The `laravel` driver.

use super::{Driver, DriverKind};
use crate::model::AttachmentRole;

pub struct Laravel;

impl Driver for Laravel {
    fn name(&self) -> &'static str {
        "laravel"
    }
    fn kind(&self) -> DriverKind {
        DriverKind::Application
    }
    fn attachment_roles(&self) -> &'static [AttachmentRole] {
        &[]
    }
    fn default_ports(&self) -> &'static [u16] {
        &[]
    }
}

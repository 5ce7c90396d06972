//! Keystone: a pull-based GitOps deployer for containerised web applications on plain Docker
//! servers. See ARCHITECTURE.md for the map of this crate.
//!
//! The library never talks to the user; the `keystone` binary (src/main.rs, src/cli/) is a thin
//! layer over it.

pub mod config;
pub mod daemon;
pub mod drivers;
pub mod execute;
pub mod health;
pub mod model;
pub mod parallel;
pub mod plan;
pub mod prepare;
pub mod render;
pub mod secrets;
pub mod shell;
pub mod state;
pub mod status;

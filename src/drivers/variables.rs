//! An environment's final variable set (SPEC.md §4): the exports of its attachments' slices plus
//! its own variables, each with its source and whether it may be overridden.

use std::fmt;

use super::{DriverError, ExportContext, ExportValue, Facts, Sensitive, SliceKey};
use crate::model::{Environment, Model, Origin, SecretRef, Value};

/// Where a variable's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VariableSource {
    /// Written as a plain value in the environment file.
    User,
    /// `{secret: …}` in the environment file.
    Secret,
    /// Exported by an attachment's slice.
    Managed { slice: SliceKey },
}

impl fmt::Display for VariableSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VariableSource::User => f.write_str("user"),
            VariableSource::Secret => f.write_str("secret"),
            VariableSource::Managed { slice } => write!(f, "managed by {slice}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VariableValue {
    Plain(String),
    /// Resolved by `secrets` when rendering.
    Secret(SecretRef),
    /// A generated credential (e.g. a slice password) or its placeholder.
    Sensitive(Sensitive),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    pub name: String,
    pub value: VariableValue,
    pub source: VariableSource,
    pub overridable: bool,
    /// The variable's key in the environment file, or the attachment that exports it.
    pub origin: Origin,
    /// A user variable that replaces an overridable managed export names that export's slice.
    pub overrides: Option<SliceKey>,
}

impl Variable {
    pub fn plain_value(&self) -> Option<&str> {
        match &self.value {
            VariableValue::Plain(v) => Some(v),
            _ => None,
        }
    }
    pub fn is_secret(&self) -> bool {
        !matches!(self.value, VariableValue::Plain(_))
    }
}

/// Names the drivers set per replica; environments cannot set them.
pub fn is_reserved(name: &str) -> bool {
    name.starts_with("KEYSTONE_") || name == super::laravel::SCHEDULER_VARIABLE
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VariableError {
    #[error(
        "{user_origin}: variable {name} collides with {name} exported by {slice} (attachment at \
         {attachment_origin}), which cannot be overridden; remove it from variables"
    )]
    Collision {
        name: String,
        user_origin: Origin,
        slice: SliceKey,
        attachment_origin: Origin,
    },
    #[error(
        "{second_origin}: {name} is exported both by {first_slice} (attachment at {first_origin}) \
         and by {second_slice}; attach only one service of this kind"
    )]
    ManagedCollision {
        name: String,
        first_slice: SliceKey,
        first_origin: Origin,
        second_slice: SliceKey,
        second_origin: Origin,
    },
    #[error(
        "{origin}: variable {name} is set by Keystone for each replica; remove it from variables"
    )]
    Reserved { name: String, origin: Origin },
    #[error(
        "{origin}: environment {env} has no variable {name}, which the {driver} driver requires; add \
         it under variables (as a secret if sensitive)"
    )]
    MissingRequired {
        name: String,
        env: String,
        driver: &'static str,
        origin: Origin,
    },
    #[error(transparent)]
    Driver(#[from] DriverError),
}

impl VariableError {
    /// The position the error is reported at.
    pub fn origin(&self) -> &Origin {
        match self {
            VariableError::Collision { user_origin, .. } => user_origin,
            VariableError::ManagedCollision { second_origin, .. } => second_origin,
            VariableError::Reserved { origin, .. }
            | VariableError::MissingRequired { origin, .. } => origin,
            VariableError::Driver(DriverError::Invalid { origin, .. }) => origin,
        }
    }
}

/// The final variables of `app/env`: managed exports in attachment order (one slice per attached
/// service), then the environment's own variables in file order. A user variable replaces an
/// overridable export in place; every other collision is an error naming both origins. All errors
/// are returned, not just the first.
pub fn environment_variables(
    model: &Model,
    env: &Environment,
    facts: &Facts,
) -> Result<Vec<Variable>, Vec<VariableError>> {
    let mut out: Vec<Variable> = Vec::new();
    let mut errors = Vec::new();
    for attachment in &env.attachments {
        let Some(service) = model.services.get(&attachment.service) else {
            continue;
        };
        let Some(driver) = super::get(&service.driver) else {
            continue;
        };
        let slice = SliceKey::new(&service.name, &env.app, &env.name);
        let ctx = ExportContext {
            model,
            service,
            slice: &slice,
            role: attachment.role,
            attachment_origin: &attachment.origin,
            facts,
        };
        let exports = match driver.environment_exports(&ctx) {
            Ok(e) => e,
            Err(e) => {
                errors.push(e.into());
                continue;
            }
        };
        for export in exports {
            if let Some(existing) = out.iter().find(|v| v.name == export.name) {
                let VariableSource::Managed { slice: first } = &existing.source else {
                    unreachable!("only managed variables are collected here");
                };
                if *first != slice {
                    errors.push(VariableError::ManagedCollision {
                        name: export.name.to_string(),
                        first_slice: first.clone(),
                        first_origin: existing.origin.clone(),
                        second_slice: slice.clone(),
                        second_origin: attachment.origin.clone(),
                    });
                }
                // Same slice (several roles on one service): the export is already there.
                continue;
            }
            out.push(Variable {
                name: export.name.to_string(),
                value: match export.value {
                    ExportValue::Plain(v) => VariableValue::Plain(v),
                    ExportValue::Sensitive(v) => VariableValue::Sensitive(v),
                },
                source: VariableSource::Managed {
                    slice: slice.clone(),
                },
                overridable: export.overridable,
                origin: attachment.origin.clone(),
                overrides: None,
            });
        }
    }
    for (name, value) in &env.variables {
        let origin = env
            .variable_origins
            .get(name)
            .cloned()
            .unwrap_or_else(|| env.origin.clone());
        if is_reserved(name) {
            errors.push(VariableError::Reserved {
                name: name.clone(),
                origin,
            });
            continue;
        }
        let (value, source) = match value {
            Value::Plain(v) => (VariableValue::Plain(v.clone()), VariableSource::User),
            Value::Secret(r) => (VariableValue::Secret(r.clone()), VariableSource::Secret),
        };
        let mut variable = Variable {
            name: name.clone(),
            value,
            source,
            overridable: true,
            origin,
            overrides: None,
        };
        match out.iter_mut().find(|v| v.name == *name) {
            Some(managed) => match &managed.source {
                VariableSource::Managed { slice } if managed.overridable => {
                    variable.overrides = Some(slice.clone());
                    *managed = variable;
                }
                VariableSource::Managed { slice } => errors.push(VariableError::Collision {
                    name: name.clone(),
                    user_origin: variable.origin,
                    slice: slice.clone(),
                    attachment_origin: managed.origin.clone(),
                }),
                // Duplicate keys in one file are the config loader's error; keep the first.
                _ => {}
            },
            None => out.push(variable),
        }
    }
    let mut required_seen = Vec::new();
    for service in env.services.values() {
        let Some(driver) = super::get(&service.driver) else {
            continue;
        };
        for var in driver.env_schema().iter().filter(|v| v.required) {
            if required_seen.contains(&var.name) || out.iter().any(|v| v.name == var.name) {
                continue;
            }
            required_seen.push(var.name);
            errors.push(VariableError::MissingRequired {
                name: var.name.to_string(),
                env: env.key(),
                driver: driver.name(),
                origin: env.origin.clone(),
            });
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

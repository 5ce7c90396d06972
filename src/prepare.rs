//! What `keystone plan`, `keystone apply` and the daemon do before planning, in one place: the
//! config's diagnostics as the planner's scoped findings, every secret the config references
//! resolved with the available age identity (its value for the executor, a keyed fingerprint or
//! the reason it cannot be decrypted for the planner), the secret files of a commit read from
//! git objects.
//!
//! Plaintext leaves here only in the `values` map the executor fills placeholders from; the
//! planner sees fingerprints and reasons (which name file and key path, never a value).

use std::collections::BTreeMap;
use std::path::Path;

use crate::config::{Diagnostic, Loaded};
use crate::model::{Model, SecretRef, Value};
use crate::plan::{self, Finding, ScopedFinding};
use crate::secrets::{Identities, Redactor, Resolver};

/// The loader's diagnostics as the planner's scoped findings.
pub fn scoped_findings(diagnostics: &[Diagnostic]) -> Vec<ScopedFinding> {
    diagnostics
        .iter()
        .map(|d| ScopedFinding {
            scope: match &d.scope {
                crate::config::Scope::Project => plan::Scope::Project,
                crate::config::Scope::Application { app } => {
                    plan::Scope::Application { app: app.clone() }
                }
                crate::config::Scope::Environment { app, env } => plan::Scope::Environment {
                    app: app.clone(),
                    env: env.clone(),
                },
            },
            finding: Finding {
                code: d.code.to_string(),
                location: Some(d.location()),
                message: d.message.clone(),
                hint: d.hint.clone(),
            },
        })
        .collect()
}

/// Every `{secret: …}` reference of the model: registries' credentials, deploy keys,
/// environment variables.
pub fn secret_refs(model: &Model) -> Vec<SecretRef> {
    let mut out = Vec::new();
    let mut add = |v: &Option<Value>| {
        if let Some(Value::Secret(r)) = v {
            out.push(r.clone());
        }
    };
    for r in model.registries.values() {
        add(&r.username);
        add(&r.password);
    }
    for a in model.applications.values() {
        add(&a.source.deploy_key);
        for e in a.environments.values() {
            for (_, v) in &e.variables {
                add(&Some(v.clone()));
            }
        }
    }
    out
}

/// Every secret the config references, resolved: its value for the executor's placeholders and
/// its state for the planner (a keyed fingerprint, or why it cannot be decrypted).
pub fn resolve_secrets(
    resolver: &Resolver,
    model: &Model,
    fingerprint_key: &str,
) -> (
    BTreeMap<String, plan::SecretState>,
    BTreeMap<String, String>,
) {
    let mut secret_states = BTreeMap::new();
    let mut values = BTreeMap::new();
    for r in secret_refs(model) {
        let path = r.display_path();
        match resolver.resolve(&r) {
            Ok(v) => {
                secret_states.insert(
                    path.clone(),
                    plan::SecretState::Fingerprint {
                        fingerprint: v.fingerprint(fingerprint_key.as_bytes()),
                    },
                );
                values.insert(path, v.expose().to_string());
            }
            Err(e) => {
                secret_states.insert(
                    path,
                    plan::SecretState::Undecryptable {
                        reason: undecryptable_reason(&r, &e),
                    },
                );
            }
        }
    }
    (secret_states, values)
}

/// Why `r` cannot be resolved, as it follows `secret <file.key> cannot be decrypted: ` in the
/// planner's blocker (whose location is the reference's): the innermost cause, without the
/// reference's location and name again. A file fails as a whole when one of its values does not
/// authenticate; for the other keys of that file, the cause says that it is another key.
fn undecryptable_reason(r: &SecretRef, e: &crate::secrets::SecretsError) -> String {
    use crate::secrets::SecretsError as E;
    let own = r.key_path.join(".");
    match e.root() {
        E::Tampered { file, path } if *path != own => format!(
            "{file} does not decrypt: the value of another key, `{path}`, does not authenticate (it was changed, or moved from another key)"
        ),
        E::BadValue {
            file,
            path,
            message,
        } if *path != own => {
            format!("{file} does not decrypt: the value of another key, `{path}`: {message}")
        }
        root => root.to_string(),
    }
}

/// A resolver over the secret files `model` names, read from the tree of `commit` (git
/// objects, nothing checked out).
pub fn resolver_for_commit(
    git: &git2::Repository,
    commit: &str,
    model: &Model,
    identities: Identities,
    redactor: Redactor,
) -> Result<Resolver, String> {
    let mut resolver = Resolver::new(identities, redactor);
    let tree = git
        .revparse_single(commit)
        .and_then(|o| o.peel_to_tree())
        .map_err(|e| e.to_string())?;
    for (stem, file) in &model.secret_files {
        let entry = tree
            .get_path(Path::new(&file.path))
            .map_err(|e| format!("{}: {e}", file.path))?;
        let blob = git.find_blob(entry.id()).map_err(|e| e.to_string())?;
        resolver.add_file(stem, &file.path, blob.content().to_vec());
    }
    Ok(resolver)
}

/// A loaded config commit (or working tree) ready for the planner.
pub struct Prepared {
    pub loaded: Loaded,
    pub diagnostics: Vec<ScopedFinding>,
    /// By reference as written; empty when secrets were not checked (no identity).
    pub secret_states: BTreeMap<String, plan::SecretState>,
    /// Decrypted values by reference, for the executor.
    pub values: BTreeMap<String, String>,
}

/// Where a config's secret files are read from.
pub enum SecretSource<'a> {
    /// The files of a directory (a checkout, the working tree).
    Dir(&'a Path),
    /// The tree of a commit.
    Commit(&'a git2::Repository, &'a str),
}

/// `loaded` with its secrets resolved by `identities` (`None`: not checked, the planner says so)
/// and fingerprinted with `fingerprint_key`.
pub fn prepare(
    loaded: Loaded,
    source: SecretSource<'_>,
    identities: Option<Identities>,
    redactor: &Redactor,
    fingerprint_key: &str,
) -> Result<Prepared, String> {
    let diagnostics = scoped_findings(&loaded.diagnostics);
    let (secret_states, values) = match identities {
        None => (BTreeMap::new(), BTreeMap::new()),
        Some(ids) => {
            let resolver = match source {
                SecretSource::Dir(root) => {
                    Resolver::from_dir(root, &loaded.model, ids, redactor.clone())
                        .map_err(|e| e.to_string())?
                }
                SecretSource::Commit(git, commit) => {
                    resolver_for_commit(git, commit, &loaded.model, ids, redactor.clone())?
                }
            };
            resolve_secrets(&resolver, &loaded.model, fingerprint_key)
        }
    };
    Ok(Prepared {
        loaded,
        diagnostics,
        secret_states,
        values,
    })
}

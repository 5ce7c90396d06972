//! The config repository (SPEC.md §1): raw YAML files, read with positions, into a validated
//! `model::Model`, with every problem reported as a `Diagnostic` (file, line, column, code).
//!
//! Two sources, one code path: `load_dir` reads a checkout, `load_rev` reads the tree of a git
//! commit without checking it out; both go through `source::RepoFiles`.
//!
//! Architecture invariant: config knows no driver details; what a driver accepts (its kind,
//! attachment roles, default ports, slice limit) is asked of `crate::drivers`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::model::Model;

pub mod diagnostic;
mod load;
mod parse;
mod read;
pub mod source;
pub mod synthetic;
pub mod yaml;

pub use diagnostic::{Diagnostic, Scope, to_json};
pub use read::did_you_mean;
pub use source::{DirFiles, RepoFiles, TreeFiles};

/// A config repository read and checked.
///
/// `model` holds exactly the valid part: every server, registry, shared service and secret file
/// whose file is valid, and every environment whose own file, application and references are
/// valid. An environment with a diagnostic is left out, so the planner can block only it; a
/// `Scope::Project` diagnostic blocks every environment (see `Scope::blocks`).
#[derive(Debug, Clone)]
pub struct Loaded {
    pub model: Model,
    /// Sorted by file, line, column.
    pub diagnostics: Vec<Diagnostic>,
    /// The text of every file that has a diagnostic, by path, for `Diagnostic::render`.
    pub sources: BTreeMap<String, String>,
}

impl Loaded {
    pub fn is_valid(&self) -> bool {
        self.diagnostics.is_empty()
    }

    /// Every diagnostic in its text form, separated by blank lines.
    pub fn render_diagnostics(&self) -> String {
        self.diagnostics
            .iter()
            .map(|d| d.render(self.sources.get(&d.file).map(String::as_str).unwrap_or("")))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Whether environment `app/env` may be planned: it is in the model and no diagnostic blocks it.
    pub fn environment_ok(&self, app: &str, env: &str) -> bool {
        self.model
            .applications
            .get(app)
            .is_some_and(|a| a.environments.contains_key(env))
            && !self.diagnostics.iter().any(|d| d.scope.blocks(app, env))
    }

    /// `4 servers, 1 registry, 3 services, 1 application, 2 environments, 4 secret files`
    pub fn summary(&self) -> String {
        let m = &self.model;
        let envs: usize = m.applications.values().map(|a| a.environments.len()).sum();
        let count =
            |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        [
            count(m.servers.len(), "server", "servers"),
            count(m.registries.len(), "registry", "registries"),
            count(m.services.len(), "service", "services"),
            count(m.applications.len(), "application", "applications"),
            count(envs, "environment", "environments"),
            count(m.secret_files.len(), "secret file", "secret files"),
        ]
        .join(", ")
    }
}

/// The repository could not be read at all (I/O or git). Invalid *content* is never a
/// `LoadError`: it is a `Diagnostic`.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    #[error(
        "{} is not a Keystone config repository: it has no keystone.yaml and no servers/, \
         registries/, services/, applications/ or secrets/ (pass the repository with --repo DIR)",
        .0.display()
    )]
    NotAConfigRepository(PathBuf),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    // libgit2's own message, without the `; class=…; code=…` its `Display` adds.
    #[error("cannot resolve `{rev}` to a commit: {}", .source.message())]
    Rev {
        rev: String,
        #[source]
        source: git2::Error,
    },
    #[error("git: {}", .0.message())]
    Git(#[source] git2::Error),
    #[error("{0} is not in the commit's tree")]
    NotInTree(String),
}

impl LoadError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LoadError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Read and validate the config repository checked out at `path`.
pub fn load_dir(path: &Path) -> Result<Loaded, LoadError> {
    let files = DirFiles::new(path)?;
    // A directory with none of Keystone's files is a wrong `--repo`, not an empty config.
    if files.files()?.is_empty() {
        return Err(LoadError::NotAConfigRepository(path.to_path_buf()));
    }
    load_files(&files)
}

/// Read and validate the config repository as of `rev` (anything `git rev-parse` accepts that
/// names a commit), reading blobs from the commit's tree without a checkout.
pub fn load_rev(repo: &git2::Repository, rev: &str) -> Result<Loaded, LoadError> {
    let commit = repo
        .revparse_single(rev)
        .and_then(|o| o.peel_to_commit())
        .map_err(|source| LoadError::Rev {
            rev: rev.to_string(),
            source,
        })?;
    let tree = commit.tree().map_err(LoadError::Git)?;
    load_files(&TreeFiles::new(repo, &tree)?)
}

/// Read and validate from any source.
pub fn load_files(files: &dyn RepoFiles) -> Result<Loaded, LoadError> {
    load::load(files)
}

//! Where config files come from: a directory (a checkout) or the tree of a git commit, read
//! through one trait so both go through exactly the same loader.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::LoadError;

/// The top-level entries Keystone reads; everything else in the repository is ignored.
pub const TOP_DIRS: [&str; 5] = [
    "servers",
    "registries",
    "services",
    "applications",
    "secrets",
];
pub const PROJECT_FILE: &str = "keystone.yaml";

/// A read-only view of the files of a config repository.
pub trait RepoFiles {
    /// Paths (relative, `/`-separated) of the regular files under `keystone.yaml` and
    /// [`TOP_DIRS`], sorted. Symbolic links are not followed in either source.
    fn files(&self) -> Result<Vec<String>, LoadError>;
    /// The bytes of one file listed by `files`.
    fn read(&self, path: &str) -> Result<Vec<u8>, LoadError>;
    /// Symbolic links where `files` looks (`keystone.yaml`, [`TOP_DIRS`] and below), sorted:
    /// never followed, reported so that a linked file is not silently left out.
    fn links(&self) -> Vec<String> {
        Vec::new()
    }
}

/// A config repository checked out (or written) in a directory.
pub struct DirFiles {
    root: PathBuf,
    links: std::sync::Mutex<Vec<String>>,
}

impl DirFiles {
    pub fn new(root: &Path) -> Result<Self, LoadError> {
        if !root.is_dir() {
            return Err(LoadError::NotADirectory(root.to_path_buf()));
        }
        Ok(DirFiles {
            root: root.to_path_buf(),
            links: Default::default(),
        })
    }

    fn walk(&self, rel: &str, out: &mut Vec<String>) -> Result<(), LoadError> {
        let dir = self.root.join(rel);
        let entries = std::fs::read_dir(&dir).map_err(|e| LoadError::io(&dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| LoadError::io(&dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let ty = entry
                .file_type()
                .map_err(|e| LoadError::io(entry.path(), e))?;
            let path = format!("{rel}/{name}");
            if ty.is_dir() {
                self.walk(&path, out)?;
            } else if ty.is_file() {
                out.push(path);
            } else if ty.is_symlink() {
                self.links
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(path);
            }
        }
        Ok(())
    }
}

impl RepoFiles for DirFiles {
    fn files(&self) -> Result<Vec<String>, LoadError> {
        self.links.lock().unwrap_or_else(|p| p.into_inner()).clear();
        let mut out = Vec::new();
        let is_link = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_symlink());
        let project = self.root.join(PROJECT_FILE);
        if std::fs::symlink_metadata(&project).is_ok_and(|m| m.is_file()) {
            out.push(PROJECT_FILE.to_string());
        } else if is_link(&project) {
            self.links
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(PROJECT_FILE.to_string());
        }
        for top in TOP_DIRS {
            let dir = self.root.join(top);
            if std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
                self.walk(top, &mut out)?;
            } else if is_link(&dir) {
                self.links
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(top.to_string());
            }
        }
        out.sort();
        Ok(out)
    }

    fn links(&self) -> Vec<String> {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner()).clone();
        links.sort();
        links
    }

    fn read(&self, path: &str) -> Result<Vec<u8>, LoadError> {
        let p = self.root.join(path);
        std::fs::read(&p).map_err(|e| LoadError::io(&p, e))
    }
}

/// The tree of one commit: blobs are read from the object database, nothing is checked out.
pub struct TreeFiles<'r> {
    repo: &'r git2::Repository,
    blobs: BTreeMap<String, git2::Oid>,
    links: Vec<String>,
}

impl<'r> TreeFiles<'r> {
    pub fn new(repo: &'r git2::Repository, tree: &git2::Tree<'_>) -> Result<Self, LoadError> {
        let mut blobs = BTreeMap::new();
        let mut links = Vec::new();
        for entry in tree.iter() {
            let Ok(name) = entry.name() else { continue };
            if name == PROJECT_FILE && is_regular_blob(&entry) {
                blobs.insert(name.to_string(), entry.id());
            } else if TOP_DIRS.contains(&name) && entry.kind() == Some(git2::ObjectType::Tree) {
                let sub = repo.find_tree(entry.id()).map_err(LoadError::Git)?;
                collect(repo, &sub, name, &mut blobs, &mut links)?;
            } else if (name == PROJECT_FILE || TOP_DIRS.contains(&name)) && is_link(&entry) {
                links.push(name.to_string());
            }
        }
        links.sort();
        Ok(TreeFiles { repo, blobs, links })
    }
}

fn is_regular_blob(e: &git2::TreeEntry<'_>) -> bool {
    // 0o100644 and 0o100755; not links (0o120000) or submodules (0o160000).
    e.kind() == Some(git2::ObjectType::Blob) && (e.filemode() & 0o170000) == 0o100000
}

fn is_link(e: &git2::TreeEntry<'_>) -> bool {
    e.filemode() == 0o120000
}

fn collect(
    repo: &git2::Repository,
    tree: &git2::Tree<'_>,
    prefix: &str,
    out: &mut BTreeMap<String, git2::Oid>,
    links: &mut Vec<String>,
) -> Result<(), LoadError> {
    for entry in tree.iter() {
        let Ok(name) = entry.name() else { continue };
        let path = format!("{prefix}/{name}");
        match entry.kind() {
            Some(git2::ObjectType::Tree) => {
                let sub = repo.find_tree(entry.id()).map_err(LoadError::Git)?;
                collect(repo, &sub, &path, out, links)?;
            }
            Some(git2::ObjectType::Blob) if is_regular_blob(&entry) => {
                out.insert(path, entry.id());
            }
            Some(git2::ObjectType::Blob) if is_link(&entry) => links.push(path),
            _ => {}
        }
    }
    Ok(())
}

impl RepoFiles for TreeFiles<'_> {
    fn files(&self) -> Result<Vec<String>, LoadError> {
        Ok(self.blobs.keys().cloned().collect())
    }

    fn links(&self) -> Vec<String> {
        self.links.clone()
    }

    fn read(&self, path: &str) -> Result<Vec<u8>, LoadError> {
        let oid = self
            .blobs
            .get(path)
            .ok_or_else(|| LoadError::NotInTree(path.to_string()))?;
        let blob = self.repo.find_blob(*oid).map_err(LoadError::Git)?;
        Ok(blob.content().to_vec())
    }
}

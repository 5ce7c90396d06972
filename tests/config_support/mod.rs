//! Shared by the config tests: broken fixture repositories are examples/config-repo with the
//! files of tests/fixtures/config/<name>/ laid over it (added or replaced).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

/// A temporary directory holding the fixture repository `name`.
pub fn fixture(name: &str) -> tempfile::TempDir {
    let overlay = root().join("tests/fixtures/config").join(name);
    assert!(overlay.is_dir(), "no fixture {}", overlay.display());
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&root().join("examples/config-repo"), dir.path());
    copy_dir(&overlay, dir.path());
    dir
}

/// Commit every file under `dir` into a new git repository at `repo_dir` with git2 (an index
/// built from the files, no `git` binary), returning the repository.
pub fn commit_dir(dir: &Path, repo_dir: &Path) -> git2::Repository {
    let repo = git2::Repository::init(repo_dir).unwrap();
    let mut index = repo.index().unwrap();
    fn add(repo: &git2::Repository, index: &mut git2::Index, base: &Path, dir: &Path) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                add(repo, index, base, &p);
            } else {
                let rel = p.strip_prefix(base).unwrap().to_str().unwrap().to_string();
                let content = std::fs::read(&p).unwrap();
                let oid = repo.blob(&content).unwrap();
                index
                    .add(&git2::IndexEntry {
                        ctime: git2::IndexTime::new(0, 0),
                        mtime: git2::IndexTime::new(0, 0),
                        dev: 0,
                        ino: 0,
                        mode: 0o100644,
                        uid: 0,
                        gid: 0,
                        file_size: content.len() as u32,
                        id: oid,
                        flags: 0,
                        flags_extended: 0,
                        path: rel.into_bytes(),
                    })
                    .unwrap();
            }
        }
    }
    add(&repo, &mut index, dir, dir);
    let tree_id = index.write_tree_to(&repo).unwrap();
    {
        let tree = repo.find_tree(tree_id).unwrap();
        let sig =
            git2::Signature::new("Test", "test@keystone.invalid", &git2::Time::new(0, 0)).unwrap();
        repo.commit(Some("refs/heads/main"), &sig, &sig, "config", &tree, &[])
            .unwrap();
    }
    repo.set_head("refs/heads/main").unwrap();
    repo
}

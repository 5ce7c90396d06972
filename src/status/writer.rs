//! The status branch writer: rendered files → one git commit on the status branch, pushed.
//!
//! No checkout and no working tree: blobs are written to the object database and the new tree is
//! built on top of the branch's previous tree (`git_tree_create_updated`), so the writer works on
//! the daemon's bare mirror and never touches anything else.
//!
//! Push is optimistic: commit on the local tip and push; when the remote rejects it (someone else
//! pushed the branch), fetch the remote tip, rebuild the same files on top of it and try again.
//! Every file passes through the redactor before it becomes a blob.

use std::path::{Path, PathBuf};

use git2::build::TreeUpdateBuilder;
use git2::{FileMode, Oid, Repository, Signature};

use super::model::Timestamp;
use super::render::{OPERATIONS_DIR, SNAPSHOT_DIRS, StatusFiles};

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("status branch {branch}: {action} in {repo}: {source}")]
    Git {
        branch: String,
        repo: String,
        action: &'static str,
        #[source]
        source: git2::Error,
    },
    #[error(
        "status branch {branch}: push to {remote} rejected {attempts} times (others keep pushing); \
         the commit is kept locally and pushed with the next write"
    )]
    PushRejected {
        branch: String,
        remote: String,
        attempts: u32,
    },
}

/// Where and how to write the status branch.
#[derive(Debug, Clone)]
pub struct StatusWriter {
    /// A git repository (bare or not) holding the branch; the daemon's mirror clone.
    pub repo: PathBuf,
    /// Branch name without `refs/heads/`, e.g. `keystone/status`.
    pub branch: String,
    /// URL or path of the remote to push to; `None`: commit locally only.
    pub remote: Option<String>,
    /// Operation logs of days older than this are dropped from the tree.
    pub keep_operations_days: u32,
    /// Private key for ssh remotes.
    pub ssh_key: Option<PathBuf>,
    /// Push attempts before giving up (each after a fetch and rebuild).
    pub max_attempts: u32,
}

/// What one `write` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOutcome {
    /// The new commit, `None` when no file changed.
    pub commit: Option<String>,
    /// The branch tip after the write (new commit or unchanged tip).
    pub tip: Option<String>,
    /// Whether a push reached the remote in this call.
    pub pushed: bool,
    /// Push attempts made (0 without a remote or when nothing needed pushing).
    pub attempts: u32,
}

/// A function that removes secret values from text (the secrets `Redactor`).
pub type Redact<'a> = &'a (dyn Fn(&str) -> String + Sync);

const PUSHED_PREFIX: &str = "refs/keystone/pushed/";

impl StatusWriter {
    pub fn new(repo: impl Into<PathBuf>, branch: impl Into<String>) -> Self {
        StatusWriter {
            repo: repo.into(),
            branch: branch.into(),
            remote: None,
            keep_operations_days: 30,
            ssh_key: None,
            max_attempts: 5,
        }
    }

    fn err(&self, action: &'static str) -> impl FnOnce(git2::Error) -> StatusError + '_ {
        move |source| StatusError::Git {
            branch: self.branch.clone(),
            repo: self.repo.display().to_string(),
            action,
            source,
        }
    }

    fn branch_ref(&self) -> String {
        format!("refs/heads/{}", self.branch)
    }

    fn pushed_ref(&self) -> String {
        format!("{PUSHED_PREFIX}{}", self.branch)
    }

    /// Commit `files` (redacted) on the status branch when anything changed, and push.
    pub fn write(
        &self,
        files: &StatusFiles,
        message: &str,
        now: Timestamp,
        redact: Redact<'_>,
    ) -> Result<WriteOutcome, StatusError> {
        let repo = Repository::open(&self.repo).map_err(self.err("open repository"))?;
        let blobs = self.blobs(&repo, files, now, redact)?;
        let message = redact(message);
        let mut attempts = 0;
        loop {
            let (commit, tip) = self.commit_on_tip(&repo, &blobs, &message, now)?;
            let Some(remote) = &self.remote else {
                return Ok(WriteOutcome {
                    commit: commit.map(|c| c.to_string()),
                    tip: tip.map(|t| t.to_string()),
                    pushed: false,
                    attempts,
                });
            };
            let pushed_tip = repo.refname_to_id(&self.pushed_ref()).ok();
            if tip.is_none() || tip == pushed_tip {
                return Ok(WriteOutcome {
                    commit: commit.map(|c| c.to_string()),
                    tip: tip.map(|t| t.to_string()),
                    pushed: false,
                    attempts,
                });
            }
            attempts += 1;
            match self.push(&repo, remote)? {
                PushResult::Accepted => {
                    let tip = tip.expect("checked above");
                    repo.reference(&self.pushed_ref(), tip, true, "pushed")
                        .map_err(self.err("record pushed tip"))?;
                    return Ok(WriteOutcome {
                        commit: commit.map(|c| c.to_string()),
                        tip: Some(tip.to_string()),
                        pushed: true,
                        attempts,
                    });
                }
                PushResult::Rejected if attempts < self.max_attempts => {
                    self.fetch(&repo, remote)?;
                }
                PushResult::Rejected => {
                    return Err(StatusError::PushRejected {
                        branch: self.branch.clone(),
                        remote: remote.clone(),
                        attempts,
                    });
                }
            }
        }
    }

    /// Path → blob id for every file, redacted; operation logs that already aged out are left out.
    fn blobs(
        &self,
        repo: &Repository,
        files: &StatusFiles,
        now: Timestamp,
        redact: Redact<'_>,
    ) -> Result<Vec<(String, Oid)>, StatusError> {
        let cutoff = self.cutoff(now);
        let mut out = Vec::with_capacity(files.files.len());
        for (path, text) in &files.files {
            if let Some(day) = operation_day(path)
                && day < cutoff.as_str()
            {
                continue;
            }
            let clean = redact(text);
            let oid = repo
                .blob(clean.as_bytes())
                .map_err(self.err("write blob"))?;
            out.push((path.clone(), oid));
        }
        Ok(out)
    }

    /// The first day whose operation logs are kept.
    fn cutoff(&self, now: Timestamp) -> String {
        Timestamp(now.0 - i64::from(self.keep_operations_days) * 86_400).date()
    }

    /// Build the new tree on the current tip; commit if it differs. Returns (new commit, tip).
    fn commit_on_tip(
        &self,
        repo: &Repository,
        blobs: &[(String, Oid)],
        message: &str,
        now: Timestamp,
    ) -> Result<(Option<Oid>, Option<Oid>), StatusError> {
        let parent = match repo.find_reference(&self.branch_ref()) {
            Ok(r) => Some(r.peel_to_commit().map_err(self.err("read branch tip"))?),
            Err(e) if e.code() == git2::ErrorCode::NotFound => None,
            Err(e) => return Err(self.err("read branch")(e)),
        };
        let base = match &parent {
            Some(c) => c.tree().map_err(self.err("read tree"))?,
            None => {
                let empty = repo
                    .treebuilder(None)
                    .and_then(|b| b.write())
                    .map_err(self.err("write empty tree"))?;
                repo.find_tree(empty).map_err(self.err("read tree"))?
            }
        };

        let mut update = TreeUpdateBuilder::new();
        let wanted: std::collections::BTreeSet<&str> =
            blobs.iter().map(|(p, _)| p.as_str()).collect();
        // Snapshot directories: drop files the snapshot no longer has.
        for dir in SNAPSHOT_DIRS {
            for path in files_under(repo, &base, dir) {
                if !wanted.contains(path.as_str()) {
                    update.remove(path.as_str());
                }
            }
        }
        // Operation logs: drop whole days older than the cutoff.
        let cutoff = self.cutoff(now);
        if let Ok(entry) = base.get_path(Path::new(OPERATIONS_DIR))
            && let Ok(days) = entry.to_object(repo).and_then(|o| o.peel_to_tree())
        {
            for day in days.iter() {
                if let Ok(name) = day.name()
                    && name < cutoff.as_str()
                {
                    update.remove(format!("{OPERATIONS_DIR}/{name}"));
                }
            }
        }
        for (path, oid) in blobs {
            update.upsert(path.as_str(), *oid, FileMode::Blob);
        }
        let tree_id = update
            .create_updated(repo, &base)
            .map_err(self.err("build tree"))?;
        if parent.is_some() && tree_id == base.id() {
            return Ok((None, parent.map(|p| p.id())));
        }
        let tree = repo.find_tree(tree_id).map_err(self.err("read tree"))?;
        let sig = Signature::new("Keystone", "keystone@localhost", &git2::Time::new(now.0, 0))
            .map_err(self.err("make signature"))?;
        let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
        let oid = repo
            .commit(
                Some(&self.branch_ref()),
                &sig,
                &sig,
                message,
                &tree,
                &parents,
            )
            .map_err(self.err("commit"))?;
        Ok((Some(oid), Some(oid)))
    }

    fn callbacks(&self) -> git2::RemoteCallbacks<'_> {
        let mut cb = git2::RemoteCallbacks::new();
        if let Some(key) = &self.ssh_key {
            cb.credentials(move |_url, user, _allowed| {
                git2::Cred::ssh_key(user.unwrap_or("git"), None, key, None)
            });
        }
        cb
    }

    fn push(&self, repo: &Repository, remote: &str) -> Result<PushResult, StatusError> {
        let mut r = repo
            .remote_anonymous(remote)
            .map_err(self.err("open remote"))?;
        let rejected = std::cell::Cell::new(false);
        let mut cb = self.callbacks();
        cb.push_update_reference(|_name, status| {
            if status.is_some() {
                rejected.set(true);
            }
            Ok(())
        });
        let mut opts = git2::PushOptions::new();
        opts.remote_callbacks(cb);
        let spec = format!("{0}:{0}", self.branch_ref());
        match r.push(&[spec.as_str()], Some(&mut opts)) {
            Ok(()) if rejected.get() => Ok(PushResult::Rejected),
            Ok(()) => Ok(PushResult::Accepted),
            Err(e) if e.code() == git2::ErrorCode::NotFastForward => Ok(PushResult::Rejected),
            Err(e) => Err(self.err("push")(e)),
        }
    }

    /// Force the local branch to the remote's tip (the remote is the truth; our unpushed commit is
    /// rebuilt on top of it).
    fn fetch(&self, repo: &Repository, remote: &str) -> Result<(), StatusError> {
        let mut r = repo
            .remote_anonymous(remote)
            .map_err(self.err("open remote"))?;
        let mut opts = git2::FetchOptions::new();
        opts.remote_callbacks(self.callbacks());
        let spec = format!("+{0}:{0}", self.branch_ref());
        r.fetch(&[spec.as_str()], Some(&mut opts), None)
            .map_err(self.err("fetch"))?;
        Ok(())
    }
}

enum PushResult {
    Accepted,
    Rejected,
}

/// `2026-12-03` for `operations/2026-12-03/x.md`.
fn operation_day(path: &str) -> Option<&str> {
    let rest = path.strip_prefix(OPERATIONS_DIR)?.strip_prefix('/')?;
    rest.split_once('/').map(|(day, _)| day)
}

/// Every blob path under `dir` of `tree` (recursively), relative to the root.
fn files_under(repo: &Repository, tree: &git2::Tree<'_>, dir: &str) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entry) = tree.get_path(Path::new(dir)) else {
        return out;
    };
    let Ok(sub) = entry.to_object(repo).and_then(|o| o.peel_to_tree()) else {
        return out;
    };
    let _ = sub.walk(git2::TreeWalkMode::PreOrder, |root, e| {
        if e.kind() == Some(git2::ObjectType::Blob)
            && let Ok(name) = e.name()
        {
            out.push(format!("{dir}/{root}{name}"));
        }
        git2::TreeWalkResult::Ok
    });
    out
}

/// Read one file of the status branch (for `keystone status` and tests).
pub fn read_file(
    repo: &Repository,
    branch: &str,
    path: &str,
) -> Result<Option<String>, git2::Error> {
    let commit = match repo.find_reference(&format!("refs/heads/{branch}")) {
        Ok(r) => r.peel_to_commit()?,
        Err(e) if e.code() == git2::ErrorCode::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let tree = commit.tree()?;
    let Ok(entry) = tree.get_path(Path::new(path)) else {
        return Ok(None);
    };
    let blob = entry.to_object(repo)?.peel_to_blob()?;
    Ok(Some(String::from_utf8_lossy(blob.content()).into_owned()))
}

//! The daemon's bare clone of the config repository, kept in the state directory.
//!
//! Branches of the remote are fetched into `refs/remotes/origin/*` (so a fetch never touches the
//! local status branch the writer commits to); pull requests into `refs/pull/<n>/head`.

use std::path::{Path, PathBuf};

use git2::Repository;

/// What went wrong with the config repository, said as what happened and what to do (libgit2's
/// own text, without its class and code, is kept as the cause).
#[derive(Debug, thiserror::Error)]
#[error("config repository {url}: cannot {action}: {}; {}", cause(.url, .source), hint(.url, .source))]
pub struct MirrorError {
    pub url: String,
    pub action: &'static str,
    #[source]
    pub source: git2::Error,
}

/// libgit2's message without the `; class=…; code=…` its `Display` adds.
pub fn git_message(e: &git2::Error) -> String {
    e.message().trim_end_matches('.').to_string()
}

/// `url` names a directory of this machine (a path or `file://`), not a remote.
fn local(url: &str) -> Option<&Path> {
    if let Some(p) = url.strip_prefix("file://") {
        return Some(Path::new(p));
    }
    (!url.contains("://") && !url.contains('@')).then(|| Path::new(url))
}

/// What happened: libgit2's message, unless the directory is missing (libgit2 then says
/// "unsupported URL protocol").
fn cause(url: &str, e: &git2::Error) -> String {
    match local(url) {
        Some(p) if !p.exists() => format!("there is no directory {}", p.display()),
        _ => git_message(e),
    }
}

/// What to do about a failed operation on the config repository `url`.
fn hint(url: &str, e: &git2::Error) -> String {
    use git2::{ErrorClass, ErrorCode};
    let remote = local(url).is_none();
    if !remote && !matches!(e.class(), ErrorClass::Odb | ErrorClass::Index) {
        return "--repo must be a git repository: a URL (https://…, ssh://…, git@host:path) or the directory of a clone or bare repository".into();
    }
    match (e.code(), e.class()) {
        (ErrorCode::Auth, _) | (_, ErrorClass::Ssh) => {
            "check that the key given with --ssh-key (the daemon's deploy key) has read access to the repository, and that the server's host key is in ~/.ssh/known_hosts".into()
        }
        (ErrorCode::Certificate, _) => "the server's TLS certificate is not trusted by this machine".into(),
        (_, ErrorClass::Net | ErrorClass::Http) => {
            "check the URL given with --repo and that this machine reaches the server".into()
        }
        (ErrorCode::NotFound, _) => {
            "check the URL given with --repo: the server has no repository there".into()
        }
        _ => format!(
            "the daemon's mirror is {url}'s clone under the state directory (config.git); if it is damaged, stop the daemon and remove it: the next start clones again"
        ),
    }
}

#[derive(Debug, Clone)]
pub struct Mirror {
    /// `<state>/config.git`.
    pub path: PathBuf,
    /// URL or local path of the config repository.
    pub url: String,
    pub ssh_key: Option<PathBuf>,
}

impl Mirror {
    /// Open the clone under `state_dir`, creating an empty bare repository the first time.
    pub fn open(
        state_dir: &Path,
        url: &str,
        ssh_key: Option<PathBuf>,
    ) -> Result<Mirror, MirrorError> {
        let path = state_dir.join("config.git");
        let m = Mirror {
            path: path.clone(),
            url: url.to_string(),
            ssh_key,
        };
        if Repository::open_bare(&path).is_err() {
            std::fs::create_dir_all(state_dir).map_err(|e| MirrorError {
                url: url.to_string(),
                action: "create the state directory",
                source: git2::Error::from_str(&e.to_string()),
            })?;
            Repository::init_bare(&path).map_err(m.err("create the mirror"))?;
        }
        Ok(m)
    }

    fn err(&self, action: &'static str) -> impl FnOnce(git2::Error) -> MirrorError + '_ {
        move |source| MirrorError {
            url: self.url.clone(),
            action,
            source,
        }
    }

    pub fn repo(&self) -> Result<Repository, MirrorError> {
        Repository::open_bare(&self.path).map_err(self.err("open the mirror"))
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

    /// Fetch every branch (and, when asked, one pull request head).
    pub fn fetch(&self, pull_request: Option<u64>) -> Result<(), MirrorError> {
        let repo = self.repo()?;
        let mut remote = repo
            .remote_anonymous(&self.url)
            .map_err(self.err("open the remote"))?;
        let mut specs = vec!["+refs/heads/*:refs/remotes/origin/*".to_string()];
        if let Some(n) = pull_request {
            specs.push(format!("+refs/pull/{n}/head:refs/pull/{n}/head"));
        }
        let mut opts = git2::FetchOptions::new();
        opts.remote_callbacks(self.callbacks());
        opts.prune(git2::FetchPrune::On);
        let specs: Vec<&str> = specs.iter().map(String::as_str).collect();
        remote
            .fetch(&specs, Some(&mut opts), None)
            .map_err(self.err("fetch"))
    }

    /// The fetched tip of a remote branch.
    pub fn tip(&self, branch: &str) -> Result<Option<String>, MirrorError> {
        let repo = self.repo()?;
        match repo.refname_to_id(&format!("refs/remotes/origin/{branch}")) {
            Ok(oid) => Ok(Some(oid.to_string())),
            Err(e) if e.code() == git2::ErrorCode::NotFound => Ok(None),
            Err(e) => Err(self.err("read branch")(e)),
        }
    }

    /// The fetched branches of the remote, sorted.
    pub fn branches(&self) -> Vec<String> {
        let Ok(repo) = self.repo() else {
            return Vec::new();
        };
        let Ok(refs) = repo.references_glob("refs/remotes/origin/*") else {
            return Vec::new();
        };
        let mut out: Vec<String> = refs
            .flatten()
            .filter_map(|r| {
                r.name()
                    .ok()
                    .and_then(|n| n.strip_prefix("refs/remotes/origin/"))
                    .map(str::to_string)
            })
            .collect();
        out.sort();
        out
    }

    /// The fetched head of pull request `n`.
    pub fn pull_request_head(&self, n: u64) -> Result<Option<String>, MirrorError> {
        let repo = self.repo()?;
        match repo.refname_to_id(&format!("refs/pull/{n}/head")) {
            Ok(oid) => Ok(Some(oid.to_string())),
            Err(e) if e.code() == git2::ErrorCode::NotFound => Ok(None),
            Err(e) => Err(self.err("read pull request")(e)),
        }
    }

    /// Where `head` branched off `base`.
    pub fn merge_base(&self, base: &str, head: &str) -> Result<String, MirrorError> {
        let repo = self.repo()?;
        let b = git2::Oid::from_str(base).map_err(self.err("parse commit"))?;
        let h = git2::Oid::from_str(head).map_err(self.err("parse commit"))?;
        repo.merge_base(b, h)
            .map(|o| o.to_string())
            .map_err(self.err("merge base"))
    }

    /// The remote as a local directory, when it is one (for `notify`).
    pub fn local_path(&self) -> Option<PathBuf> {
        let p = Path::new(self.url.strip_prefix("file://").unwrap_or(&self.url));
        p.is_dir().then(|| p.to_path_buf())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fetch_that_fails_says_what_happened_and_what_to_do_without_libgit2_codes() {
        let state = tempfile::tempdir().unwrap();
        let m = Mirror::open(state.path(), "/nonexistent/config.git", None).unwrap();
        assert_eq!(
            m.fetch(None).unwrap_err().to_string(),
            "config repository /nonexistent/config.git: cannot fetch: there is no directory /nonexistent/config.git; --repo must be a git repository: a URL (https://…, ssh://…, git@host:path) or the directory of a clone or bare repository"
        );
        // A directory that is not a repository.
        let m = Mirror::open(state.path(), state.path().to_str().unwrap(), None).unwrap();
        let e = m.fetch(None).unwrap_err().to_string();
        assert!(!e.contains("class="), "{e}");
        assert!(
            e.ends_with("; --repo must be a git repository: a URL (https://…, ssh://…, git@host:path) or the directory of a clone or bare repository"),
            "{e}"
        );
        let m = Mirror::open(state.path(), "ssh://git@127.0.0.1:1/config.git", None).unwrap();
        let e = m.fetch(None).unwrap_err().to_string();
        assert!(!e.contains("class="), "{e}");
        assert!(
            e.starts_with("config repository ssh://git@127.0.0.1:1/config.git: cannot fetch: "),
            "{e}"
        );
    }

    #[test]
    fn the_branches_of_the_remote_are_listed() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        let git = |args: &[&str]| {
            let out = std::process::Command::new("git")
                .args(["-c", "user.name=t", "-c", "user.email=t@keystone.invalid"])
                .args(args)
                .current_dir(&work)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
        };
        std::fs::create_dir_all(&work).unwrap();
        git(&["init", "-q", "-b", "master"]);
        git(&["commit", "-q", "--allow-empty", "-m", "c"]);
        git(&["branch", "config"]);
        let m = Mirror::open(&dir.path().join("state"), work.to_str().unwrap(), None).unwrap();
        m.fetch(None).unwrap();
        assert_eq!(m.branches(), ["config", "master"]);
        assert_eq!(m.tip("main").unwrap(), None);
    }
}

//! The daemon's bare clone of the config repository, kept in the state directory.
//!
//! Branches of the remote are fetched into `refs/remotes/origin/*` (so a fetch never touches the
//! local status branch the writer commits to); pull requests into `refs/pull/<n>/head`.

use std::path::{Path, PathBuf};

use git2::Repository;

#[derive(Debug, thiserror::Error)]
#[error("config repository {url} ({action}): {source}")]
pub struct MirrorError {
    pub url: String,
    pub action: &'static str,
    #[source]
    pub source: git2::Error,
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

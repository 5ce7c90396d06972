//! Forge REST clients (GitHub, Gitea/Forgejo): Keystone's one plan comment per pull request,
//! created or updated in place (continuation comments for long plans), and commit statuses.
//!
//! Keystone's comments are recognised by the plan marker on their first line
//! (`<!-- keystone-plan: pr=N -->`, continuations `… part=K -->`) AND by being written by the
//! token's own user, so a marker pasted by someone else is never touched.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

/// Which REST dialect to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForgeKind {
    GitHub,
    /// Gitea and Forgejo (`/api/v1`).
    Gitea,
}

impl ForgeKind {
    pub fn parse(name: &str) -> Option<ForgeKind> {
        match name {
            "github" => Some(Self::GitHub),
            "gitea" | "forgejo" => Some(Self::Gitea),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ForgeError {
    #[error("forge API {method} {path}: {source}")]
    Http {
        method: &'static str,
        path: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("forge API {method} {path} answered {status}: {body}")]
    Status {
        method: &'static str,
        path: String,
        status: u16,
        body: String,
    },
}

/// Commit status states Keystone sets on a pull request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitState {
    Pending,
    Success,
    Failure,
}

impl CommitState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Success => "success",
            Self::Failure => "failure",
        }
    }
}

/// What `upsert_plan_comments` did, by comment id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommentSync {
    pub created: Vec<u64>,
    pub updated: Vec<u64>,
    pub unchanged: Vec<u64>,
    pub deleted: Vec<u64>,
}

/// A client for one repository of one forge.
#[derive(Debug, Clone)]
pub struct ForgeClient {
    pub kind: ForgeKind,
    /// `https://api.github.com`, `https://gitea.example/api/v1`.
    pub api_base: String,
    pub owner: String,
    pub repo: String,
    token: String,
    http: reqwest::Client,
    login: std::sync::Arc<tokio::sync::OnceCell<String>>,
}

#[derive(Deserialize)]
struct User {
    login: String,
}

#[derive(Deserialize)]
struct Comment {
    id: u64,
    #[serde(default)]
    body: String,
    user: Option<User>,
}

const PAGE: usize = 100;

impl ForgeClient {
    pub fn new(
        kind: ForgeKind,
        api_base: &str,
        owner_repo: &str,
        token: &str,
    ) -> Result<ForgeClient, String> {
        let (owner, repo) = owner_repo
            .split_once('/')
            .filter(|(o, r)| !o.is_empty() && !r.is_empty() && !r.contains('/'))
            .ok_or_else(|| format!("expected OWNER/REPO, got {owner_repo:?}"))?;
        let http = reqwest::Client::builder()
            .user_agent(concat!("keystone/", env!("CARGO_PKG_VERSION")))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(ForgeClient {
            kind,
            api_base: api_base.trim_end_matches('/').to_string(),
            owner: owner.to_string(),
            repo: repo.to_string(),
            token: token.trim().to_string(),
            http,
            login: Default::default(),
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self
            .http
            .request(method, format!("{}{path}", self.api_base))
            .header("Accept", "application/json");
        match self.kind {
            ForgeKind::GitHub => r
                .bearer_auth(&self.token)
                .header("Accept", "application/vnd.github+json")
                .header("X-GitHub-Api-Version", "2022-11-28"),
            ForgeKind::Gitea => r.header("Authorization", format!("token {}", self.token)),
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: String,
        body: Option<serde_json::Value>,
    ) -> Result<String, ForgeError> {
        let name: &'static str = match method.as_str() {
            "GET" => "GET",
            "POST" => "POST",
            "PATCH" => "PATCH",
            "DELETE" => "DELETE",
            _ => "REQUEST",
        };
        let mut req = self.request(method, &path);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|source| ForgeError::Http {
            method: name,
            path: path.clone(),
            source,
        })?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(ForgeError::Status {
                method: name,
                path,
                status: status.as_u16(),
                body: text.chars().take(500).collect(),
            });
        }
        Ok(text)
    }

    fn parse<T: for<'de> Deserialize<'de>>(path: &str, text: &str) -> Result<T, ForgeError> {
        serde_json::from_str(text).map_err(|e| ForgeError::Status {
            method: "GET",
            path: path.to_string(),
            status: 200,
            body: format!("unexpected JSON: {e}"),
        })
    }

    /// The token's own user.
    async fn login(&self) -> Result<String, ForgeError> {
        self.login
            .get_or_try_init(|| async {
                let text = self
                    .send(reqwest::Method::GET, "/user".into(), None)
                    .await?;
                let user: User = Self::parse("/user", &text)?;
                Ok(user.login)
            })
            .await
            .cloned()
    }

    fn repo_path(&self) -> String {
        format!("/repos/{}/{}", self.owner, self.repo)
    }

    async fn comments(&self, pr: u64) -> Result<Vec<Comment>, ForgeError> {
        let mut all = Vec::new();
        for page in 1.. {
            let path = match self.kind {
                ForgeKind::GitHub => format!(
                    "{}/issues/{pr}/comments?per_page={PAGE}&page={page}",
                    self.repo_path()
                ),
                ForgeKind::Gitea => format!(
                    "{}/issues/{pr}/comments?limit={PAGE}&page={page}",
                    self.repo_path()
                ),
            };
            let text = self.send(reqwest::Method::GET, path.clone(), None).await?;
            let batch: Vec<Comment> = Self::parse(&path, &text)?;
            let n = batch.len();
            all.extend(batch);
            if n < PAGE {
                break;
            }
        }
        Ok(all)
    }

    /// Make the pull request's Keystone comments be exactly `bodies` (the plan comment, then its
    /// continuations, as split by the planner; each starts with its marker line): update in
    /// place, create what is missing, delete continuations no longer needed. Never duplicates.
    pub async fn upsert_plan_comments(
        &self,
        pr: u64,
        bodies: &[String],
    ) -> Result<CommentSync, ForgeError> {
        let me = self.login().await?;
        let mut ours: BTreeMap<usize, Vec<(u64, String)>> = BTreeMap::new();
        for c in self.comments(pr).await? {
            if c.user.as_ref().map(|u| u.login.as_str()) != Some(me.as_str()) {
                continue;
            }
            let first = c.body.lines().next().unwrap_or("");
            if let Some((n, part)) = parse_marker(first)
                && n == pr
            {
                ours.entry(part).or_default().push((c.id, c.body));
            }
        }
        let mut sync = CommentSync::default();
        for (i, body) in bodies.iter().enumerate() {
            let part = i + 1;
            let existing = ours.remove(&part).unwrap_or_default();
            let mut existing = existing.into_iter();
            match existing.next() {
                Some((id, old)) if old == *body => sync.unchanged.push(id),
                Some((id, _)) => {
                    let path = format!("{}/issues/comments/{id}", self.repo_path());
                    self.send(reqwest::Method::PATCH, path, Some(json!({ "body": body })))
                        .await?;
                    sync.updated.push(id);
                }
                None => {
                    let path = format!("{}/issues/{pr}/comments", self.repo_path());
                    let text = self
                        .send(
                            reqwest::Method::POST,
                            path.clone(),
                            Some(json!({ "body": body })),
                        )
                        .await?;
                    let c: Comment = Self::parse(&path, &text)?;
                    sync.created.push(c.id);
                }
            }
            // Duplicates of a part (left by an older run that was interrupted) go.
            for (id, _) in existing {
                self.delete_comment(id).await?;
                sync.deleted.push(id);
            }
        }
        for (_, rest) in ours {
            for (id, _) in rest {
                self.delete_comment(id).await?;
                sync.deleted.push(id);
            }
        }
        Ok(sync)
    }

    async fn delete_comment(&self, id: u64) -> Result<(), ForgeError> {
        let path = format!("{}/issues/comments/{id}", self.repo_path());
        self.send(reqwest::Method::DELETE, path, None).await?;
        Ok(())
    }

    /// Set the `context` commit status of `sha`.
    pub async fn set_commit_status(
        &self,
        sha: &str,
        state: CommitState,
        context: &str,
        description: &str,
        target_url: Option<&str>,
    ) -> Result<(), ForgeError> {
        // GitHub caps descriptions at 140 characters.
        let description: String = description.chars().take(140).collect();
        let mut body = json!({
            "state": state.as_str(),
            "context": context,
            "description": description,
        });
        if let Some(url) = target_url {
            body["target_url"] = json!(url);
        }
        let path = format!("{}/statuses/{sha}", self.repo_path());
        self.send(reqwest::Method::POST, path, Some(body)).await?;
        Ok(())
    }
}

/// `(pr, part)` of a plan marker line; part 1 is the main comment. Same format as
/// `plan::output::pr_marker`.
fn parse_marker(line: &str) -> Option<(u64, usize)> {
    let rest = line
        .trim()
        .strip_prefix("<!-- keystone-plan: pr=")?
        .strip_suffix(" -->")?;
    match rest.split_once(" part=") {
        Some((pr, part)) => Some((pr.parse().ok()?, part.parse().ok()?)),
        None => Some((rest.parse().ok()?, 1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers() {
        assert_eq!(parse_marker("<!-- keystone-plan: pr=42 -->"), Some((42, 1)));
        assert_eq!(
            parse_marker("<!-- keystone-plan: pr=42 part=3 -->"),
            Some((42, 3))
        );
        assert_eq!(parse_marker("<!-- keystone-plan: pr=x -->"), None);
        assert_eq!(parse_marker("hello"), None);
        assert!(ForgeClient::new(ForgeKind::GitHub, "http://x", "a/b/c", "t").is_err());
    }
}

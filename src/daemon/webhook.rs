//! Webhook verification and parsing, with no HTTP server in sight (pure; `http` wires it).
//!
//! GitHub signs the body with HMAC-SHA256 in `X-Hub-Signature-256: sha256=<hex>`; Gitea and
//! Forgejo in `X-Gitea-Signature: <hex>` (Forgejo also sends `X-Forgejo-Signature`); GitLab sends
//! the shared secret itself in `X-Gitlab-Token`. Every comparison is constant-time. A verified
//! event is only ever a hint to fetch: nothing in a payload is trusted as config data.

use std::collections::{HashSet, VecDeque};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Which forge sent a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Forge {
    GitHub,
    /// Gitea and Forgejo.
    Gitea,
    GitLab,
}

impl Forge {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::GitHub => "github",
            Self::Gitea => "gitea",
            Self::GitLab => "gitlab",
        }
    }

    pub fn parse(name: &str) -> Option<Forge> {
        match name {
            "github" => Some(Self::GitHub),
            "gitea" | "forgejo" => Some(Self::Gitea),
            "gitlab" => Some(Self::GitLab),
            _ => None,
        }
    }
}

/// The shared webhook secret. Never printed.
#[derive(Clone)]
pub struct WebhookSecret(Vec<u8>);

impl WebhookSecret {
    /// Trailing newlines (from `echo secret > file`) are not part of the secret.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        let mut b = bytes.into();
        while matches!(b.last(), Some(b'\n' | b'\r')) {
            b.pop();
        }
        WebhookSecret(b)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Lowercase hex HMAC-SHA256 of `body` (what GitHub and Gitea send).
    pub fn sign(&self, body: &[u8]) -> String {
        hex::encode(self.mac(body))
    }

    fn mac(&self, body: &[u8]) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(body);
        mac.finalize().into_bytes().to_vec()
    }
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(..)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("no webhook secret is configured (start the daemon with --webhook-secret-file)")]
    NoSecret,
    #[error("not a webhook of a known forge (no X-GitHub-Event, X-Gitea-Event or X-Gitlab-Event)")]
    UnknownForge,
    #[error("the {0} webhook is not signed")]
    Unsigned(&'static str),
    #[error("the {0} webhook signature does not match")]
    BadSignature(&'static str),
    #[error("the {forge} webhook body is not JSON: {message}")]
    BadPayload {
        forge: &'static str,
        message: String,
    },
}

/// What a verified delivery asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookEvent {
    /// Something was pushed: fetch. `git_ref` only narrows what is worth fetching.
    Push {
        git_ref: Option<String>,
    },
    /// A pull (merge) request was opened or updated.
    PullRequest {
        number: u64,
        action: String,
        head_sha: Option<String>,
        base_ref: Option<String>,
    },
    Ping,
    /// An event Keystone does not act on (its name).
    Ignored(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub forge: Forge,
    /// X-GitHub-Delivery, X-Gitea-Delivery, X-Gitlab-Event-UUID.
    pub id: Option<String>,
    pub event: WebhookEvent,
}

/// Case-insensitive header lookup over anything that lists headers.
pub trait Headers {
    fn get(&self, name: &str) -> Option<&str>;
}

impl Headers for axum::http::HeaderMap {
    fn get(&self, name: &str) -> Option<&str> {
        axum::http::HeaderMap::get(self, name).and_then(|v| v.to_str().ok())
    }
}

impl Headers for [(&str, &str)] {
    fn get(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }
}

/// Which forge the headers come from. GitLab and Gitea are checked first because Gitea also sends
/// GitHub-style headers for compatibility.
pub fn detect(headers: &(impl Headers + ?Sized)) -> Option<Forge> {
    if headers.get("x-gitlab-event").is_some() || headers.get("x-gitlab-token").is_some() {
        Some(Forge::GitLab)
    } else if headers.get("x-gitea-event").is_some()
        || headers.get("x-forgejo-event").is_some()
        || headers.get("x-gitea-signature").is_some()
    {
        Some(Forge::Gitea)
    } else if headers.get("x-github-event").is_some()
        || headers.get("x-hub-signature-256").is_some()
    {
        Some(Forge::GitHub)
    } else {
        None
    }
}

/// Verify the signature of a delivery and parse what it asks for. `forge`: the forge this
/// endpoint is for, or `None` to detect it from the headers.
pub fn verify(
    forge: Option<Forge>,
    headers: &(impl Headers + ?Sized),
    body: &[u8],
    secret: Option<&WebhookSecret>,
) -> Result<Delivery, WebhookError> {
    let secret = secret
        .filter(|s| !s.is_empty())
        .ok_or(WebhookError::NoSecret)?;
    let forge = match forge {
        Some(f) => f,
        None => detect(headers).ok_or(WebhookError::UnknownForge)?,
    };
    let name = forge.as_str();
    match forge {
        Forge::GitHub => {
            let sig = headers
                .get("x-hub-signature-256")
                .ok_or(WebhookError::Unsigned(name))?;
            let hex_sig = sig
                .strip_prefix("sha256=")
                .ok_or(WebhookError::BadSignature(name))?;
            check_hmac(secret, body, hex_sig).ok_or(WebhookError::BadSignature(name))?;
        }
        Forge::Gitea => {
            let sig = headers
                .get("x-gitea-signature")
                .or_else(|| headers.get("x-forgejo-signature"))
                .ok_or(WebhookError::Unsigned(name))?;
            check_hmac(secret, body, sig).ok_or(WebhookError::BadSignature(name))?;
        }
        Forge::GitLab => {
            let token = headers
                .get("x-gitlab-token")
                .ok_or(WebhookError::Unsigned(name))?;
            // Compare digests so that neither the content nor the length leaks through timing.
            let want = Sha256::digest(&secret.0);
            let got = Sha256::digest(token.as_bytes());
            if !bool::from(want.ct_eq(&got)) {
                return Err(WebhookError::BadSignature(name));
            }
        }
    }
    let id = match forge {
        Forge::GitHub => headers.get("x-github-delivery"),
        Forge::Gitea => headers
            .get("x-gitea-delivery")
            .or_else(|| headers.get("x-forgejo-delivery")),
        Forge::GitLab => headers
            .get("x-gitlab-event-uuid")
            .or_else(|| headers.get("x-gitlab-webhook-uuid")),
    }
    .map(|s| s.to_string());
    let event = parse_event(forge, headers, body)?;
    Ok(Delivery { forge, id, event })
}

/// `Some(())` when `hex_sig` is the HMAC of `body`, compared in constant time.
fn check_hmac(secret: &WebhookSecret, body: &[u8], hex_sig: &str) -> Option<()> {
    let given = hex::decode(hex_sig.trim()).ok()?;
    let want = secret.mac(body);
    bool::from(want.ct_eq(&given)).then_some(())
}

fn parse_event(
    forge: Forge,
    headers: &(impl Headers + ?Sized),
    body: &[u8],
) -> Result<WebhookEvent, WebhookError> {
    let kind = match forge {
        Forge::GitHub => headers.get("x-github-event"),
        Forge::Gitea => headers
            .get("x-gitea-event")
            .or_else(|| headers.get("x-forgejo-event")),
        Forge::GitLab => headers.get("x-gitlab-event"),
    }
    .unwrap_or("")
    .to_string();
    if kind == "ping" {
        return Ok(WebhookEvent::Ping);
    }
    let json: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| WebhookError::BadPayload {
            forge: forge.as_str(),
            message: e.to_string(),
        })?;
    let s = |v: &serde_json::Value| v.as_str().map(str::to_string);
    Ok(match (forge, kind.as_str()) {
        (Forge::GitHub | Forge::Gitea, "push") | (Forge::GitLab, "Push Hook") => {
            WebhookEvent::Push {
                git_ref: s(&json["ref"]),
            }
        }
        (Forge::GitHub | Forge::Gitea, "pull_request") => {
            let number = json["number"]
                .as_u64()
                .or_else(|| json["pull_request"]["number"].as_u64());
            match number {
                Some(number) => WebhookEvent::PullRequest {
                    number,
                    action: s(&json["action"]).unwrap_or_default(),
                    head_sha: s(&json["pull_request"]["head"]["sha"]),
                    base_ref: s(&json["pull_request"]["base"]["ref"]),
                },
                None => WebhookEvent::Ignored(kind),
            }
        }
        (Forge::GitLab, "Merge Request Hook") => {
            let attrs = &json["object_attributes"];
            match attrs["iid"].as_u64() {
                Some(number) => WebhookEvent::PullRequest {
                    number,
                    action: s(&attrs["action"]).unwrap_or_default(),
                    head_sha: s(&attrs["last_commit"]["id"]),
                    base_ref: s(&attrs["target_branch"]),
                },
                None => WebhookEvent::Ignored(kind),
            }
        }
        _ => WebhookEvent::Ignored(kind),
    })
}

/// Delivery ids seen recently, bounded. A replayed delivery is acknowledged and ignored.
#[derive(Debug)]
pub struct DeliveryLog {
    capacity: usize,
    order: VecDeque<(Forge, String)>,
    seen: HashSet<(Forge, String)>,
}

impl DeliveryLog {
    pub fn new(capacity: usize) -> Self {
        DeliveryLog {
            capacity: capacity.max(1),
            order: VecDeque::new(),
            seen: HashSet::new(),
        }
    }

    /// `true` the first time an id is seen, `false` for a replay.
    pub fn first_time(&mut self, forge: Forge, id: &str) -> bool {
        let key = (forge, id.to_string());
        if self.seen.contains(&key) {
            return false;
        }
        if self.order.len() == self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        self.order.push_back(key.clone());
        self.seen.insert(key);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> WebhookSecret {
        WebhookSecret::new("It's a Secret to Everybody\n")
    }

    #[test]
    fn github_documented_example_signature() {
        // The example from GitHub's "Validating webhook deliveries" documentation.
        assert_eq!(
            secret().sign(b"Hello, World!"),
            "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }

    #[test]
    fn each_forge_valid_and_invalid() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let sig = secret().sign(body);
        let gh = format!("sha256={sig}");
        let ok: &[(&str, &str)] = &[
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature-256", &gh),
            ("X-GitHub-Delivery", "d1"),
        ];
        let d = verify(None, ok, body, Some(&secret())).unwrap();
        assert_eq!(d.forge, Forge::GitHub);
        assert_eq!(d.id.as_deref(), Some("d1"));
        assert_eq!(
            d.event,
            WebhookEvent::Push {
                git_ref: Some("refs/heads/main".into())
            }
        );

        let tampered = br#"{"ref":"refs/heads/evil"}"#;
        assert_eq!(
            verify(None, ok, tampered, Some(&secret())),
            Err(WebhookError::BadSignature("github"))
        );

        let gitea: &[(&str, &str)] = &[
            ("X-Gitea-Event", "push"),
            ("X-GitHub-Event", "push"),
            ("X-Gitea-Signature", &sig),
        ];
        assert_eq!(
            verify(None, gitea, body, Some(&secret())).unwrap().forge,
            Forge::Gitea
        );
        let gitea_unsigned: &[(&str, &str)] = &[("X-Gitea-Event", "push")];
        assert_eq!(
            verify(None, gitea_unsigned, body, Some(&secret())),
            Err(WebhookError::Unsigned("gitea"))
        );

        let gl: &[(&str, &str)] = &[
            ("X-Gitlab-Event", "Push Hook"),
            ("X-Gitlab-Token", "It's a Secret to Everybody"),
        ];
        assert_eq!(
            verify(None, gl, body, Some(&secret())).unwrap().forge,
            Forge::GitLab
        );
        let gl_bad: &[(&str, &str)] = &[
            ("X-Gitlab-Event", "Push Hook"),
            ("X-Gitlab-Token", "It's a Secret to Everybod"),
        ];
        assert_eq!(
            verify(None, gl_bad, body, Some(&secret())),
            Err(WebhookError::BadSignature("gitlab"))
        );
        // A GitHub endpoint does not accept a GitLab token.
        assert_eq!(
            verify(Some(Forge::GitHub), gl, body, Some(&secret())),
            Err(WebhookError::Unsigned("github"))
        );
        assert_eq!(verify(None, ok, body, None), Err(WebhookError::NoSecret));
    }

    #[test]
    fn pull_request_payloads() {
        let body = br#"{"action":"synchronize","number":42,"pull_request":{"head":{"sha":"abc"},"base":{"ref":"main"}}}"#;
        let gh = format!("sha256={}", secret().sign(body));
        let h: &[(&str, &str)] = &[
            ("X-GitHub-Event", "pull_request"),
            ("X-Hub-Signature-256", &gh),
        ];
        assert_eq!(
            verify(None, h, body, Some(&secret())).unwrap().event,
            WebhookEvent::PullRequest {
                number: 42,
                action: "synchronize".into(),
                head_sha: Some("abc".into()),
                base_ref: Some("main".into())
            }
        );
        let body = br#"{"object_attributes":{"iid":7,"action":"update","last_commit":{"id":"def"},"target_branch":"main"}}"#;
        let h: &[(&str, &str)] = &[
            ("X-Gitlab-Event", "Merge Request Hook"),
            ("X-Gitlab-Token", "It's a Secret to Everybody"),
        ];
        assert_eq!(
            verify(None, h, body, Some(&secret())).unwrap().event,
            WebhookEvent::PullRequest {
                number: 7,
                action: "update".into(),
                head_sha: Some("def".into()),
                base_ref: Some("main".into())
            }
        );
    }

    #[test]
    fn delivery_log_is_bounded() {
        let mut log = DeliveryLog::new(2);
        assert!(log.first_time(Forge::GitHub, "a"));
        assert!(!log.first_time(Forge::GitHub, "a"));
        assert!(log.first_time(Forge::Gitea, "a"));
        assert!(log.first_time(Forge::GitHub, "b"));
        // "a"@github fell out of the window.
        assert!(log.first_time(Forge::GitHub, "a"));
    }
}

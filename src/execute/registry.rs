//! Resolving an image tag to its digest through a registry's HTTP API (`StepAction::ResolveDigest`).

use super::transport::BoxFuture;

/// Answers `HEAD /v2/<repository>/manifests/<tag>` for the executor. `registry` names the config
/// registry whose credentials and `insecure` flag apply.
pub trait DigestResolver: Send + Sync {
    /// The image's digest, `sha256:<64 hex>`, or why it could not be resolved.
    fn resolve<'a>(
        &'a self,
        image: &'a str,
        registry: Option<&'a str>,
    ) -> BoxFuture<'a, Result<String, String>>;
}

/// How to reach one registry: its `host[:port]`, plain HTTP or HTTPS, and credentials.
#[derive(Clone)]
pub struct RegistryAccess {
    pub host: String,
    /// Plain HTTP (`insecure: true` in the config).
    pub insecure: bool,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for RegistryAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAccess")
            .field("host", &self.host)
            .field("insecure", &self.insecure)
            .field("username", &self.username.as_ref().map(|_| "<set>"))
            .finish_non_exhaustive()
    }
}

/// The media types asked for, so the registry answers with the digest `docker pull` uses.
pub const MANIFEST_TYPES: [&str; 4] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
];

/// Resolves tags with `HEAD /v2/<repository>/manifests/<tag>` (Docker Registry HTTP API v2),
/// answering basic and bearer-token challenges with the config registry's credentials.
///
/// An image whose host is the host of a config registry uses that registry's settings even when
/// the step names none (a shared service image on the project's own registry); any other host is
/// anonymous HTTPS.
pub struct HttpDigestResolver {
    registries: std::collections::BTreeMap<String, RegistryAccess>,
    client: reqwest::Client,
}

impl HttpDigestResolver {
    /// `registries` by config name.
    pub fn new(registries: std::collections::BTreeMap<String, RegistryAccess>) -> Self {
        Self::with_client(registries, Self::client())
    }

    /// `new` on an existing client. Building one loads the system's root certificates (OpenSSL),
    /// hundreds of milliseconds on a loaded machine: a long-running caller builds it once.
    pub fn with_client(
        registries: std::collections::BTreeMap<String, RegistryAccess>,
        client: reqwest::Client,
    ) -> Self {
        Self { registries, client }
    }

    /// The HTTP client `new` uses (cheap to clone: clones share it).
    pub fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .expect("the HTTP client builds")
    }

    fn access(&self, host: &str, registry: Option<&str>) -> Result<RegistryAccess, String> {
        if let Some(name) = registry {
            return self
                .registries
                .get(name)
                .cloned()
                .ok_or_else(|| format!("no registry `{name}` in the config"));
        }
        Ok(self
            .registries
            .values()
            .find(|r| r.host == host)
            .cloned()
            .unwrap_or(RegistryAccess {
                host: host.to_string(),
                insecure: false,
                username: None,
                password: None,
            }))
    }

    async fn head(
        &self,
        url: &str,
        auth: Option<&str>,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let mut req = self
            .client
            .head(url)
            .header(reqwest::header::ACCEPT, MANIFEST_TYPES.join(", "));
        if let Some(a) = auth {
            req = req.header(reqwest::header::AUTHORIZATION, a);
        }
        req.send().await
    }

    async fn resolve_inner(&self, image: &str, registry: Option<&str>) -> Result<String, String> {
        let (host, repository, reference) = split_image(image)?;
        if is_digest_reference(&reference) {
            return Ok(reference);
        }
        let access = self.access(&host, registry)?;
        let scheme = if access.insecure { "http" } else { "https" };
        let url = format!("{scheme}://{host}/v2/{repository}/manifests/{reference}");
        let unreachable =
            |e: reqwest::Error| format!("registry {host} is unreachable ({scheme}): {}", cause(&e));
        let mut resp = self.head(&url, None).await.map_err(unreachable)?;
        if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
            let challenge = resp
                .headers()
                .get(reqwest::header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let auth = self.authorization(&access, &challenge).await?;
            resp = self.head(&url, Some(&auth)).await.map_err(unreachable)?;
        }
        let status = resp.status();
        if !status.is_success() {
            return Err(match status.as_u16() {
                401 | 403 => format!(
                    "registry {host} refused access to {repository} ({status}): check the registry's username and password"
                ),
                404 => format!("{repository}:{reference} is not in registry {host} (404)"),
                _ => format!("registry {host} answered {status} for {repository}:{reference}"),
            });
        }
        let digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if !super::placeholders::is_digest(&digest) {
            return Err(format!(
                "registry {host} sent no Docker-Content-Digest for {repository}:{reference}"
            ));
        }
        Ok(digest)
    }

    /// The `Authorization` header answering a challenge.
    async fn authorization(
        &self,
        access: &RegistryAccess,
        challenge: &str,
    ) -> Result<String, String> {
        use base64::Engine;
        let basic = match (&access.username, &access.password) {
            (Some(u), Some(p)) => {
                Some(base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}")))
            }
            _ => None,
        };
        let lower = challenge.to_ascii_lowercase();
        if lower.starts_with("basic") {
            return basic.map(|b| format!("Basic {b}")).ok_or_else(|| {
                format!("registry {} needs credentials: set username and password in its registries/ file", access.host)
            });
        }
        if !lower.starts_with("bearer") {
            return Err(format!(
                "registry {} sent an unknown challenge `{challenge}`",
                access.host
            ));
        }
        let params = challenge_params(&challenge[6..]);
        let realm = params
            .get("realm")
            .ok_or_else(|| format!("registry {}: bearer challenge without realm", access.host))?;
        let mut url = reqwest::Url::parse(realm)
            .map_err(|e| format!("registry {}: bad token realm `{realm}`: {e}", access.host))?;
        for k in ["service", "scope"] {
            if let Some(v) = params.get(k) {
                url.query_pairs_mut().append_pair(k, v);
            }
        }
        let mut req = self.client.get(url);
        if let Some(b) = &basic {
            req = req.header(reqwest::header::AUTHORIZATION, format!("Basic {b}"));
        }
        let resp = req.send().await.map_err(|e| {
            format!(
                "token service of registry {} is unreachable: {}",
                access.host,
                cause(&e)
            )
        })?;
        if !resp.status().is_success() {
            return Err(format!(
                "token service of registry {} answered {}: check the registry's username and password",
                access.host,
                resp.status()
            ));
        }
        let body: serde_json::Value = resp
            .json()
            .await
            .map_err(|e| format!("token service of registry {}: {}", access.host, cause(&e)))?;
        let token = body["token"]
            .as_str()
            .or_else(|| body["access_token"].as_str())
            .ok_or_else(|| format!("token service of registry {} sent no token", access.host))?;
        Ok(format!("Bearer {token}"))
    }
}

impl DigestResolver for HttpDigestResolver {
    fn resolve<'a>(
        &'a self,
        image: &'a str,
        registry: Option<&'a str>,
    ) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(self.resolve_inner(image, registry))
    }
}

/// The innermost cause of an HTTP error (e.g. `Connection refused (os error 111)`).
fn cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

fn is_digest_reference(r: &str) -> bool {
    super::placeholders::is_digest(r)
}

/// `host[:port]/repo/path:tag` or `…@sha256:…` → (host, repository, tag or digest). An image
/// without a registry host is on Docker Hub (`registry-1.docker.io`, `library/` for one segment).
pub fn split_image(image: &str) -> Result<(String, String, String), String> {
    let (name, reference) = match image.split_once('@') {
        Some((n, d)) => (n, d.to_string()),
        None => {
            let last_slash = image.rfind('/').map(|i| i + 1).unwrap_or(0);
            match image[last_slash..].rfind(':') {
                Some(i) => (
                    &image[..last_slash + i],
                    image[last_slash + i + 1..].to_string(),
                ),
                None => (image, "latest".to_string()),
            }
        }
    };
    let (first, rest) = name.split_once('/').unwrap_or(("", name));
    let (host, repository) = if first.contains('.') || first.contains(':') || first == "localhost" {
        (first.to_string(), rest.to_string())
    } else if first.is_empty() {
        (
            "registry-1.docker.io".to_string(),
            format!("library/{name}"),
        )
    } else {
        ("registry-1.docker.io".to_string(), name.to_string())
    };
    if repository.is_empty() || reference.is_empty() {
        return Err(format!("`{image}` is not an image reference"));
    }
    Ok((host, repository, reference))
}

/// `realm="…",service="…",scope="…"` → map.
fn challenge_params(s: &str) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let re = regex::Regex::new(r#"([A-Za-z]+)="([^"]*)""#).expect("valid regex");
    for c in re.captures_iter(s) {
        out.insert(c[1].to_ascii_lowercase(), c[2].to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_image_references() {
        let s = |i: &str| split_image(i).unwrap();
        assert_eq!(
            s("10.77.0.1:5000/standin/caddy:2"),
            ("10.77.0.1:5000".into(), "standin/caddy".into(), "2".into())
        );
        assert_eq!(
            s("10.77.0.1:5000/acme/shop"),
            ("10.77.0.1:5000".into(), "acme/shop".into(), "latest".into())
        );
        assert_eq!(
            s("postgres:18"),
            (
                "registry-1.docker.io".into(),
                "library/postgres".into(),
                "18".into()
            )
        );
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            s(&format!("ghcr.io/o/r@{d}")),
            ("ghcr.io".into(), "o/r".into(), d.clone())
        );
    }

    #[test]
    fn parses_bearer_challenges() {
        let p = challenge_params(
            r#" realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#,
        );
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["service"], "registry.example");
        assert_eq!(p["scope"], "repository:a/b:pull");
    }
}

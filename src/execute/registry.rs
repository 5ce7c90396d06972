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

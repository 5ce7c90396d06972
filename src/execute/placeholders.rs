//! Filling `{{namespace:name}}` placeholders before a step runs (see `plan::ops::Placeholder`).
//!
//! Three namespaces exist; any other `{{…}}` text is left as written:
//! - `digest:<app>`: from an earlier capture, always `sha256:<64 hex>`; allowed in scripts (as one
//!   quoted shell word) and in payloads;
//! - `secret:<file>.<key>` and `generated:<key>`: secret values, allowed only in payloads (uploads,
//!   stdin), never in scripts; the executor adds every value it fills to the redaction set.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use regex::Regex;

use crate::shell::quote;

static TOKEN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\{\{(digest|secret|generated):([^{}\s]+)\}\}").expect("valid regex")
});
static TOKEN_BYTES: LazyLock<regex::bytes::Regex> = LazyLock::new(|| {
    regex::bytes::Regex::new(r"\{\{(digest|secret|generated):([^{}\s]+)\}\}").expect("valid regex")
});
static DIGEST: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^sha256:[0-9a-f]{64}$").expect("valid regex"));

/// Whether `value` is a `sha256:<64 hex>` digest, the only shape a `digest:` capture may take.
pub fn is_digest(value: &str) -> bool {
    DIGEST.is_match(value)
}

/// Where secret and generated values come from while filling a payload.
pub trait Values: Send + Sync {
    /// The decrypted value of `file.dotted.key`, or why there is none.
    fn secret(&self, path: &str) -> Result<String, String>;
    /// The generated credential `key` (created and stored the first time), or why there is none.
    fn generated(&self, key: &str) -> Result<String, String>;
}

/// Why a placeholder could not be filled. Never contains a secret value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FillError {
    #[error(
        "placeholder {{{{digest:{0}}}}} has no value: no earlier step captured `digest:{0}` (is the build or resolve step before this one in the plan?)"
    )]
    NoDigest(String),
    #[error(
        "placeholder {{{{{0}:{1}}}}} is in a script; secret values may only travel in stdin or an upload"
    )]
    SecretInScript(&'static str, String),
    #[error("placeholder {{{{secret:{0}}}}}: {1}")]
    Secret(String, String),
    #[error("placeholder {{{{generated:{0}}}}}: {1}")]
    Generated(String, String),
}

/// What filling produced, with the secret values it used (to redact them).
pub struct Filled<T> {
    pub value: T,
    pub secrets: Vec<String>,
}

/// Fill a script: `{{digest:…}}` becomes the captured digest quoted as one shell word.
pub fn fill_script(script: &str, captures: &BTreeMap<String, String>) -> Result<String, FillError> {
    let mut out = String::with_capacity(script.len());
    let mut last = 0;
    for m in TOKEN.captures_iter(script) {
        let whole = m.get(0).expect("group 0");
        let (ns, name) = (m.get(1).unwrap().as_str(), &m[2]);
        let value = match ns {
            "digest" => digest(captures, name)?,
            "secret" => return Err(FillError::SecretInScript("secret", name.to_string())),
            _ => return Err(FillError::SecretInScript("generated", name.to_string())),
        };
        out.push_str(&script[last..whole.start()]);
        out.push_str(&quote(value));
        last = whole.end();
    }
    out.push_str(&script[last..]);
    Ok(out)
}

fn digest<'c>(captures: &'c BTreeMap<String, String>, app: &str) -> Result<&'c str, FillError> {
    captures
        .get(&format!("digest:{app}"))
        .map(String::as_str)
        .ok_or_else(|| FillError::NoDigest(app.to_string()))
}

/// Fill a payload with raw values. Binary (non-UTF-8) payloads are sent verbatim.
pub fn fill_payload(
    bytes: &[u8],
    captures: &BTreeMap<String, String>,
    values: &dyn Values,
) -> Result<Filled<Vec<u8>>, FillError> {
    let unchanged = || Filled {
        value: bytes.to_vec(),
        secrets: Vec::new(),
    };
    if !TOKEN_BYTES.is_match(bytes) {
        return Ok(unchanged());
    }
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Ok(unchanged());
    };
    let mut out = String::with_capacity(text.len());
    let mut secrets = Vec::new();
    let mut last = 0;
    for m in TOKEN.captures_iter(text) {
        let whole = m.get(0).expect("group 0");
        let (ns, token) = (m.get(1).unwrap().as_str(), &m[2]);
        // `|dotenv`: the token sits inside a quoted .env value (see `render::dotenv_escape`).
        let (name, dotenv) = match token.strip_suffix("|dotenv") {
            Some(name) => (name, true),
            None => (token, false),
        };
        let value = match ns {
            "digest" => digest(captures, name)?.to_string(),
            "secret" => {
                let v = values
                    .secret(name)
                    .map_err(|e| FillError::Secret(name.to_string(), e))?;
                secrets.push(v.clone());
                v
            }
            _ => {
                let v = values
                    .generated(name)
                    .map_err(|e| FillError::Generated(name.to_string(), e))?;
                secrets.push(v.clone());
                v
            }
        };
        out.push_str(&text[last..whole.start()]);
        if dotenv {
            out.push_str(&crate::render::dotenv_escape_raw(&value));
        } else {
            out.push_str(&value);
        }
        last = whole.end();
    }
    out.push_str(&text[last..]);
    Ok(Filled {
        value: out.into_bytes(),
        secrets,
    })
}

/// No secrets and no generated values: every such placeholder fails its step with this reason.
pub struct NoValues;

impl Values for NoValues {
    fn secret(&self, _: &str) -> Result<String, String> {
        Err("this execution was given no secrets".into())
    }
    fn generated(&self, _: &str) -> Result<String, String> {
        Err("this execution was given no credential store".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    struct Fixed;
    impl Values for Fixed {
        fn secret(&self, path: &str) -> Result<String, String> {
            match path {
                "registry.password" => Ok("pa$$ 'word'".into()),
                _ => Err(format!("no key {path}")),
            }
        }
        fn generated(&self, key: &str) -> Result<String, String> {
            Ok(format!("gen-{key}"))
        }
    }

    const D: &str = "sha256:4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c4c";

    #[test]
    fn digests_fill_scripts_and_templates_stay() {
        let c = caps(&[("digest:shop", D)]);
        assert_eq!(
            fill_script(
                "docker pull 'r/shop@{{digest:shop}}' && docker inspect --format '{{.State.Health.Status}}' x {{end}} {{note:x}}",
                &c
            )
            .unwrap(),
            format!("docker pull 'r/shop@{D}' && docker inspect --format '{{{{.State.Health.Status}}}}' x {{{{end}}}} {{{{note:x}}}}")
        );
        assert!(is_digest(D));
        assert!(!is_digest("sha256:4c"));
        assert!(!is_digest("latest"));
    }

    #[test]
    fn missing_digests_and_secrets_in_scripts_fail() {
        let err = fill_script("docker pull r@{{digest:web}}", &caps(&[])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "placeholder {{digest:web}} has no value: no earlier step captured `digest:web` (is the build or resolve step before this one in the plan?)"
        );
        let err = fill_script("echo {{secret:registry.password}}", &caps(&[])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "placeholder {{secret:registry.password}} is in a script; secret values may only travel in stdin or an upload"
        );
        assert!(matches!(
            fill_script("echo {{generated:pg}}", &caps(&[])),
            Err(FillError::SecretInScript("generated", _))
        ));
    }

    #[test]
    fn payloads_get_raw_values_and_report_the_secrets_used() {
        let c = caps(&[("digest:shop", D)]);
        let filled = fill_payload(
            b"image: r@{{digest:shop}}\nPW={{secret:registry.password}}\nDB={{generated:main-postgres/admin}}\n",
            &c,
            &Fixed,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(filled.value).unwrap(),
            format!("image: r@{D}\nPW=pa$$ 'word'\nDB=gen-main-postgres/admin\n")
        );
        assert_eq!(filled.secrets, ["pa$$ 'word'", "gen-main-postgres/admin"]);
        let env =
            fill_payload(b"PW=\"{{secret:registry.password|dotenv}}\"\n", &c, &Fixed).unwrap();
        assert_eq!(
            String::from_utf8(env.value).unwrap(),
            "PW=\"pa\\$\\$ 'word'\"\n"
        );
        assert_eq!(env.secrets, ["pa$$ 'word'"]);
        let binary = b"\xff\xfe{{digest:nope}}".to_vec();
        assert_eq!(fill_payload(&binary, &c, &Fixed).unwrap().value, binary);
        assert_eq!(
            fill_payload(b"x {{secret:shop.nope}}", &c, &Fixed)
                .err()
                .unwrap()
                .to_string(),
            "placeholder {{secret:shop.nope}}: no key shop.nope"
        );
    }
}

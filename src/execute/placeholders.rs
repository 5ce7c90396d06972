//! Filling `{{name}}` placeholders from earlier steps' captures (see `plan::ops::Placeholder`).

use std::collections::BTreeMap;
use std::sync::LazyLock;

use regex::Regex;

use crate::shell::quote;

static TOKEN: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\{\{([^{}\s]+)\}\}").unwrap());
static TOKEN_BYTES: LazyLock<regex::bytes::Regex> =
    LazyLock::new(|| regex::bytes::Regex::new(r"\{\{([^{}\s]+)\}\}").unwrap());

/// A `kind:name` placeholder that no earlier step captured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "placeholder {{{{{0}}}}} has no value: no earlier step captured `{0}` (is the step that captures it before this one in the plan?)"
)]
pub struct Unfilled(pub String);

fn is_capture_name(name: &str) -> bool {
    let Some((kind, rest)) = name.split_once(':') else {
        return false;
    };
    kind.starts_with(|c: char| c.is_ascii_lowercase())
        && kind
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        && !rest.is_empty()
}

/// Fill a script: each known placeholder becomes its value quoted as one shell word.
pub fn fill_script(script: &str, captures: &BTreeMap<String, String>) -> Result<String, Unfilled> {
    fill_text(script, captures, quote)
}

/// Fill a payload: UTF-8 text gets raw values; binary payloads are returned verbatim.
pub fn fill_payload(
    bytes: &[u8],
    captures: &BTreeMap<String, String>,
) -> Result<Vec<u8>, Unfilled> {
    if !TOKEN_BYTES.is_match(bytes) {
        return Ok(bytes.to_vec());
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => Ok(fill_text(text, captures, |v| v.to_string())?.into_bytes()),
        Err(_) => Ok(bytes.to_vec()),
    }
}

fn fill_text(
    text: &str,
    captures: &BTreeMap<String, String>,
    render: impl Fn(&str) -> String,
) -> Result<String, Unfilled> {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for m in TOKEN.captures_iter(text) {
        let whole = m.get(0).unwrap();
        let name = &m[1];
        let value = match captures.get(name) {
            Some(v) => render(v),
            None if is_capture_name(name) => return Err(Unfilled(name.to_string())),
            None => continue,
        };
        out.push_str(&text[last..whole.start()]);
        out.push_str(&value);
        last = whole.end();
    }
    out.push_str(&text[last..]);
    Ok(out)
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

    #[test]
    fn scripts_get_quoted_values_and_templates_stay() {
        let c = caps(&[("digest:shop", "sha256:ab12"), ("name:evil", "a b;$(x)")]);
        assert_eq!(
            fill_script(
                "docker pull r/shop@{{digest:shop}} && echo {{name:evil}} && docker inspect --format '{{.State.Health.Status}}' x {{end}}",
                &c
            )
            .unwrap(),
            "docker pull r/shop@sha256:ab12 && echo 'a b;$(x)' && docker inspect --format '{{.State.Health.Status}}' x {{end}}"
        );
    }

    #[test]
    fn unknown_capture_names_fail() {
        let err = fill_script("docker pull r@{{digest:web}}", &caps(&[])).unwrap_err();
        assert_eq!(err, Unfilled("digest:web".into()));
        assert_eq!(
            err.to_string(),
            "placeholder {{digest:web}} has no value: no earlier step captured `digest:web` (is the step that captures it before this one in the plan?)"
        );
    }

    #[test]
    fn payloads_get_raw_values_and_binary_is_verbatim() {
        let c = caps(&[("digest:shop", "sha256:ab 12")]);
        assert_eq!(
            fill_payload(b"image: r@{{digest:shop}}\n", &c).unwrap(),
            b"image: r@sha256:ab 12\n"
        );
        let binary = b"\xff\xfe{{digest:shop}}{{digest:nope}}".to_vec();
        assert_eq!(fill_payload(&binary, &c).unwrap(), binary);
        assert_eq!(
            fill_payload(b"x {{digest:nope}}", &c).unwrap_err(),
            Unfilled("digest:nope".into())
        );
    }
}

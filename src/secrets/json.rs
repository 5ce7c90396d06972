//! The JSON store: objects in file order, numbers as sops 3.11 reads them (float), output
//! tab-indented like Go's `json.Indent`.

use super::tree::{Entry, Node, Scalar, format_float_f};

/// Parse a JSON document whose top level is an object.
pub fn parse(text: &str) -> Result<Node, (usize, usize, String)> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| (e.line(), e.column(), e.to_string()))?;
    match value {
        serde_json::Value::Object(_) => Ok(from_json(value)),
        _ => Err((1, 1, "the top level must be a JSON object".into())),
    }
}

fn from_json(v: serde_json::Value) -> Node {
    use serde_json::Value as J;
    match v {
        J::Null => Node::Scalar(Scalar::Null),
        J::Bool(b) => Node::Scalar(Scalar::Bool(b)),
        // sops 3.11 decodes every JSON number as a float64.
        J::Number(n) => Node::Scalar(Scalar::Float(n.as_f64().unwrap_or(f64::NAN))),
        J::String(s) => Node::Scalar(Scalar::Str(s)),
        J::Array(a) => Node::List(a.into_iter().map(from_json).collect()),
        J::Object(o) => Node::Map(
            o.into_iter()
                .map(|(k, v)| Entry::Pair(k, from_json(v)))
                .collect(),
        ),
    }
}

/// Emit a tree as sops writes JSON (comments are dropped: JSON has none).
pub fn emit(node: &Node) -> String {
    let mut out = String::new();
    write(&mut out, node, 0);
    out.push('\n');
    out
}

fn indent(out: &mut String, n: usize) {
    for _ in 0..n {
        out.push('\t');
    }
}

fn write(out: &mut String, node: &Node, depth: usize) {
    match node {
        Node::Map(entries) => {
            let pairs: Vec<(&String, &Node)> = entries
                .iter()
                .filter_map(|e| match e {
                    Entry::Pair(k, v) => Some((k, v)),
                    Entry::Comment(_) => None,
                })
                .collect();
            if pairs.is_empty() {
                out.push_str("{}");
                return;
            }
            out.push_str("{\n");
            for (i, (k, v)) in pairs.iter().enumerate() {
                indent(out, depth + 1);
                write_string(out, k);
                out.push_str(": ");
                write(out, v, depth + 1);
                if i + 1 < pairs.len() {
                    out.push(',');
                }
                out.push('\n');
            }
            indent(out, depth);
            out.push('}');
        }
        Node::List(items) => {
            let items: Vec<&Node> = items
                .iter()
                .filter(|n| !matches!(n, Node::Comment(_)))
                .collect();
            if items.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push_str("[\n");
            for (i, v) in items.iter().enumerate() {
                indent(out, depth + 1);
                write(out, v, depth + 1);
                if i + 1 < items.len() {
                    out.push(',');
                }
                out.push('\n');
            }
            indent(out, depth);
            out.push(']');
        }
        Node::Comment(_) => out.push_str("null"),
        Node::Scalar(s) => match s {
            Scalar::Str(v) | Scalar::Time(v) => write_string(out, v),
            Scalar::Int(i) => out.push_str(&i.to_string()),
            Scalar::Float(f) => out.push_str(&go_json_float(*f)),
            Scalar::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Scalar::Null => out.push_str("null"),
            Scalar::Bytes(b) => {
                use base64::Engine as _;
                write_string(out, &base64::engine::general_purpose::STANDARD.encode(b))
            }
        },
    }
}

/// Go's encoding/json float: `%f` form unless |f| < 1e-6 or >= 1e21, then `%e` with the
/// exponent's leading zero dropped.
fn go_json_float(f: f64) -> String {
    let abs = f.abs();
    if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
        let g = super::tree::format_float_g(f);
        // format_float_g uses %e here (exponent < -4 or >= 21 > 6); normalise `e-07` → `e-7`.
        let (mant, exp) = g.split_once('e').expect("exponent form");
        let (sign, digits) = exp.split_at(1);
        let digits = digits.trim_start_matches('0');
        return format!(
            "{mant}e{sign}{}",
            if digits.is_empty() { "0" } else { digits }
        );
    }
    format_float_f(f)
}

/// Go's encoding/json string escaping (HTML-safe, like `json.Marshal`).
pub fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emits_like_sops() {
        let src = r#"{"a": "x", "n": 5, "big": 1e21, "small": 0.0000001, "l": [1, {"k": "v"}, []], "m": {}, "u": "é<>&"}"#;
        let expected = "{\n\t\"a\": \"x\",\n\t\"n\": 5,\n\t\"big\": 1e+21,\n\t\"small\": 1e-7,\n\t\"l\": [\n\t\t1,\n\t\t{\n\t\t\t\"k\": \"v\"\n\t\t},\n\t\t[]\n\t],\n\t\"m\": {},\n\t\"u\": \"é\\u003c\\u003e\\u0026\"\n}\n";
        assert_eq!(emit(&parse(src).unwrap()), expected);
    }
}

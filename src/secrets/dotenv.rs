//! The dotenv store: `KEY=value` lines split at the first `=`, `#` comment lines, `\n` in a
//! value meaning a newline; metadata flattened into `sops_*` keys.

use super::tree::{Entry, Node, Scalar};

/// Parse dotenv text into a flat map of strings and comments.
pub fn parse(text: &str) -> Result<Node, (usize, String)> {
    let mut entries = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            entries.push(Entry::Comment(comment.to_string()));
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err((
                n + 1,
                format!("invalid dotenv line `{line}`: expected KEY=value"),
            ));
        };
        entries.push(Entry::Pair(
            key.to_string(),
            Node::Scalar(Scalar::Str(value.replace("\\n", "\n"))),
        ));
    }
    Ok(Node::Map(entries))
}

/// Emit a flat map as dotenv lines.
pub fn emit(node: &Node) -> Result<String, String> {
    let Node::Map(entries) = node else {
        return Err("a dotenv file is a flat list of KEY=value lines".into());
    };
    let mut out = String::new();
    for e in entries {
        match e {
            Entry::Comment(c) => {
                out.push('#');
                out.push_str(c);
            }
            Entry::Pair(k, Node::Scalar(s)) => {
                out.push_str(k);
                out.push('=');
                out.push_str(&s.as_text().replace('\n', "\\n"));
            }
            Entry::Pair(k, _) => {
                return Err(format!(
                    "`{k}` is a map or list, which a dotenv file cannot hold"
                ));
            }
        }
        out.push('\n');
    }
    Ok(out)
}

/// Move `sops_*` keys out of a dotenv tree into a `sops` map (sops' unflattening).
pub fn take_metadata(node: &mut Node) -> Option<Node> {
    let Node::Map(entries) = node else {
        return None;
    };
    let mut meta: Vec<(String, String)> = Vec::new();
    entries.retain(|e| match e {
        Entry::Pair(k, Node::Scalar(s)) if k.starts_with("sops_") => {
            meta.push((k["sops_".len()..].to_string(), s.as_text()));
            false
        }
        _ => true,
    });
    if meta.is_empty() {
        return None;
    }
    let mut age: Vec<Vec<Entry>> = Vec::new();
    let mut out = Vec::new();
    for (k, v) in meta {
        if let Some(rest) = k.strip_prefix("age__list_") {
            let Some((idx, field)) = rest.split_once("__map_") else {
                continue;
            };
            let Ok(idx) = idx.parse::<usize>() else {
                continue;
            };
            if age.len() <= idx {
                age.resize_with(idx + 1, Vec::new);
            }
            age[idx].push(Entry::Pair(field.to_string(), Node::Scalar(Scalar::Str(v))));
        } else {
            out.push(Entry::Pair(k, Node::Scalar(Scalar::Str(v))));
        }
    }
    out.push(Entry::Pair(
        "age".into(),
        Node::List(age.into_iter().map(Node::Map).collect()),
    ));
    Some(Node::Map(out))
}

/// Flatten a `sops` map into sorted `sops_*` entries.
pub fn flatten_metadata(meta: &Node) -> Vec<Entry> {
    let mut flat: Vec<(String, String)> = Vec::new();
    if let Node::Map(entries) = meta {
        for e in entries {
            let Entry::Pair(k, v) = e else { continue };
            match v {
                Node::List(items) => {
                    for (i, item) in items.iter().enumerate() {
                        if let Node::Map(fields) = item {
                            for f in fields {
                                if let Entry::Pair(fk, Node::Scalar(s)) = f {
                                    flat.push((
                                        format!("sops_{k}__list_{i}__map_{fk}"),
                                        s.as_text(),
                                    ));
                                }
                            }
                        }
                    }
                }
                Node::Scalar(s) => flat.push((format!("sops_{k}"), s.as_text())),
                _ => {}
            }
        }
    }
    flat.sort();
    flat.into_iter()
        .map(|(k, v)| Entry::Pair(k, Node::Scalar(Scalar::Str(v))))
        .collect()
}

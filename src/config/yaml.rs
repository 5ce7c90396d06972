//! A YAML document as a tree of nodes, each with its 1-based line and column.
//!
//! serde-saphyr does the parsing (aliases, merge keys, duplicate-key detection, depth and size
//! budgets); `Spanned<T>` gives us the position of every node and every mapping key. Reading the
//! config through this generic tree instead of `#[derive(Deserialize)]` structs lets validation
//! keep going after the first problem, so one run reports every error of every file.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// 1-based line and column (in characters) of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
}

impl Pos {
    pub const START: Pos = Pos { line: 1, column: 1 };

    fn from_location(l: serde_saphyr::Location) -> Pos {
        if l.line() == 0 {
            Pos::START
        } else {
            Pos {
                line: l.line() as u32,
                column: l.column().max(1) as u32,
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

/// A mapping key: always read as text (`22:` is the key `"22"`).
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub pos: Pos,
    pub name: String,
}

impl Kind {
    /// What the user wrote, in words, for "expected X, found Y" messages.
    pub fn describe(&self) -> &'static str {
        match self {
            Kind::Null => "nothing (null)",
            Kind::Bool(_) => "a boolean",
            Kind::Int(_) => "an integer",
            Kind::Float(_) => "a number",
            Kind::Str(_) => "a string",
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
        }
    }
}

/// A YAML syntax error with its position and the parser's message (without its own snippet: the
/// diagnostic renders one).
#[derive(Debug, Clone, PartialEq)]
pub struct SyntaxError {
    pub pos: Pos,
    pub duplicate_key: bool,
    pub message: String,
}

/// Parse one YAML document. An empty document (only comments or whitespace) is `Kind::Null` at 1:1.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    if text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#') || l.trim() == "---")
    {
        return Ok(Node {
            pos: Pos::START,
            kind: Kind::Null,
        });
    }
    match serde_saphyr::from_str::<Node>(text) {
        Ok(node) => Ok(node),
        Err(e) => {
            let duplicate_key = matches!(
                e.without_snippet(),
                serde_saphyr::Error::DuplicateMappingKey { .. }
            );
            let mut pos = e.location().map(Pos::from_location).unwrap_or(Pos::START);
            let message = match e.without_snippet() {
                serde_saphyr::Error::DuplicateMappingKey { key: Some(k), .. } => {
                    format!("key `{k}` appears twice in the same mapping")
                }
                serde_saphyr::Error::DuplicateMappingKey { .. } => {
                    "a key appears twice in the same mapping".to_string()
                }
                other => limit_message(&clean_message(&other.to_string())),
            };
            // The scanner reports a tab where the scalar before it started; point at the tab.
            let message = match first_tab_from(text, pos) {
                Some(tab) if message.contains("found a tab") => {
                    pos = tab;
                    "a tab character: YAML indents with spaces only (replace the tab with spaces)"
                        .to_string()
                }
                _ => message,
            };
            Err(SyntaxError {
                pos,
                duplicate_key,
                message,
            })
        }
    }
}

/// The position of the first tab at or after `from`.
fn first_tab_from(text: &str, from: Pos) -> Option<Pos> {
    for (i, line) in text
        .lines()
        .enumerate()
        .skip(from.line.saturating_sub(1) as usize)
    {
        let skip = if i + 1 == from.line as usize {
            from.column.saturating_sub(1) as usize
        } else {
            0
        };
        if let Some(col) = line.chars().skip(skip).position(|c| c == '\t') {
            return Some(Pos {
                line: i as u32 + 1,
                column: (skip + col) as u32 + 1,
            });
        }
    }
    None
}

/// The parser's resource limits (its "budget": nodes, aliases, nesting) in words a user can act
/// on; other messages unchanged.
fn limit_message(m: &str) -> String {
    if m.contains("budget breached") {
        "the file is too large or too deeply aliased for a config file (more nodes or alias \
         expansions than Keystone reads); split it or remove the anchors/aliases"
            .into()
    } else if m.contains("recursion limit exceeded") {
        "the file nests too deeply for a config file; flatten it".into()
    } else {
        m.to_string()
    }
}

/// serde-saphyr's messages end with " at line L, column C"; we print the position ourselves.
fn clean_message(m: &str) -> String {
    let first = m.lines().next().unwrap_or(m).trim();
    match first.rfind(" at line ") {
        Some(i) => first[..i].to_string(),
        None => first.to_string(),
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Spanned::<Kind>::deserialize(d)?;
        Ok(Node {
            pos: Pos::from_location(s.referenced),
            kind: s.value,
        })
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Spanned::<Kind>::deserialize(d)?;
        let name = match s.value {
            Kind::Str(s) => s,
            Kind::Int(i) => i.to_string(),
            Kind::Bool(b) => b.to_string(),
            Kind::Float(f) => f.to_string(),
            Kind::Null => "null".to_string(),
            Kind::Seq(_) | Kind::Map(_) => {
                return Err(de::Error::custom("a mapping key must be a plain string"));
            }
        };
        Ok(Key {
            pos: Pos::from_location(s.referenced),
            name,
        })
    }
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(KindVisitor)
    }
}

struct KindVisitor;

impl<'de> Visitor<'de> for KindVisitor {
    type Value = Kind;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Kind, E> {
        Ok(Kind::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Kind, E> {
        Ok(Kind::Int(v.into()))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Kind, E> {
        Ok(Kind::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Kind, E> {
        Ok(Kind::Int(v.into()))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Kind, E> {
        i128::try_from(v)
            .map(Kind::Int)
            .map_err(|_| E::custom("integer too large"))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Kind, E> {
        Ok(Kind::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Kind, E> {
        Ok(Kind::Str(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Kind, E> {
        Ok(Kind::Str(v))
    }
    fn visit_char<E>(self, v: char) -> Result<Kind, E> {
        Ok(Kind::Str(v.to_string()))
    }
    fn visit_unit<E>(self) -> Result<Kind, E> {
        Ok(Kind::Null)
    }
    fn visit_none<E>(self) -> Result<Kind, E> {
        Ok(Kind::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Kind, D::Error> {
        Kind::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Kind, A::Error> {
        let mut items = Vec::new();
        while let Some(n) = seq.next_element::<Node>()? {
            items.push(n);
        }
        Ok(Kind::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Kind, A::Error> {
        let mut entries = Vec::new();
        while let Some(k) = map.next_key::<Key>()? {
            let v = map.next_value::<Node>()?;
            entries.push((k, v));
        }
        Ok(Kind::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_of_keys_and_values() {
        let n = parse("a: 1\nb:\n  - x\n  - {c: \"false\", d: false}\n").unwrap();
        let Kind::Map(m) = &n.kind else { panic!() };
        assert_eq!(m[0].0.name, "a");
        assert_eq!(m[0].0.pos, Pos { line: 1, column: 1 });
        assert_eq!(m[0].1.pos, Pos { line: 1, column: 4 });
        assert_eq!(m[0].1.kind, Kind::Int(1));
        assert_eq!(m[1].0.pos, Pos { line: 2, column: 1 });
        let Kind::Seq(s) = &m[1].1.kind else { panic!() };
        assert_eq!(s[0].pos, Pos { line: 3, column: 5 });
        assert_eq!(s[1].pos, Pos { line: 4, column: 5 });
        let Kind::Map(inner) = &s[1].kind else {
            panic!()
        };
        assert_eq!(inner[0].0.pos, Pos { line: 4, column: 6 });
        assert_eq!(inner[0].1.kind, Kind::Str("false".into()));
        assert_eq!(inner[0].1.pos, Pos { line: 4, column: 9 });
        assert_eq!(inner[1].1.kind, Kind::Bool(false));
        assert_eq!(
            inner[1].1.pos,
            Pos {
                line: 4,
                column: 21
            }
        );
    }

    #[test]
    fn syntax_and_duplicate_key_errors_have_positions() {
        let e = parse("a: 1\na: 2\n").unwrap_err();
        assert!(e.duplicate_key, "{e:?}");
        assert_eq!(e.pos, Pos { line: 2, column: 1 });
        let e = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(!e.duplicate_key);
        assert!(e.pos.line >= 1, "{e:?}");
    }

    #[test]
    fn empty_document_is_null() {
        assert_eq!(parse("# nothing\n\n").unwrap().kind, Kind::Null);
    }

    #[test]
    fn resource_limits_are_said_in_words() {
        let huge: String = std::iter::once("roles:\n".to_string())
            .chain((0..300_000).map(|i| format!("  - r{i}\n")))
            .collect();
        assert_eq!(
            parse(&huge).unwrap_err().message,
            "the file is too large or too deeply aliased for a config file (more nodes or alias \
             expansions than Keystone reads); split it or remove the anchors/aliases"
        );
        let deep = format!("host: {}{}\n", "[".repeat(2000), "]".repeat(2000));
        assert_eq!(
            parse(&deep).unwrap_err().message,
            "the file nests too deeply for a config file; flatten it"
        );
    }

    #[test]
    fn a_tab_is_reported_where_it_is() {
        let e = parse("host: 10.0.0.9\n\tport: 22\n").unwrap_err();
        assert_eq!((e.pos.line, e.pos.column), (2, 1));
        assert_eq!(
            e.message,
            "a tab character: YAML indents with spaces only (replace the tab with spaces)"
        );
    }
}

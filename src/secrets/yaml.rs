//! The YAML store: read any YAML (order, comments and types kept the way sops' yaml.v3 store
//! keeps them) and write YAML the way sops writes it (yaml.v3 emitter, 4-space indent).

use std::collections::HashMap;

use granit_parser::{Event, Parser, Placement, ScalarStyle, StructureStyle};

use super::tree::{Entry, Node, Scalar, format_float_g};

/// A YAML syntax or content error at a 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

// ---------------------------------------------------------------------------------------------
// Reading

/// A node being built, with the positions comment placement needs.
#[derive(Debug, Clone)]
enum PVal {
    Coll(PColl),
    Scalar(Scalar),
}

#[derive(Debug, Clone)]
struct PColl {
    is_map: bool,
    flow: bool,
    /// Column (0-based) of the first key or `-`; `usize::MAX` while unknown.
    indent: usize,
    items: Vec<PItem>,
    /// Comments to insert before item index `.0`, in source order.
    comments: Vec<(usize, String)>,
}

#[derive(Debug, Clone)]
struct PItem {
    /// 1-based line where the key (map) or the item (list) starts.
    line: usize,
    key: Option<String>,
    value: PVal,
}

struct Frame {
    coll: PColl,
    anchor: usize,
    /// A map's key waiting for its value: (text, line, column).
    pending_key: Option<(String, usize, usize)>,
    /// Where the collection starts (an item of a list starts there).
    start: (usize, usize),
}

struct Comment {
    line: usize,
    column: usize,
    text: String,
    right: bool,
}

/// Parse every document of a YAML stream into map trees.
pub fn parse(text: &str) -> Result<Vec<Node>, YamlError> {
    let options = granit_parser::options! { block_scalar_eof_without_line_feed: true };
    let mut docs: Vec<(usize, PColl)> = Vec::new();
    let mut comments: Vec<Comment> = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, PVal> = HashMap::new();
    let mut doc_line = 1usize;
    let mut root: Option<PVal> = None;

    for next in Parser::new_from_str_with_options(text, options) {
        let (event, span) = next.map_err(|e| YamlError {
            line: e.marker().line(),
            column: e.marker().col() + 1,
            message: e.info(),
        })?;
        let line = span.start.line();
        let col = span.start.col();
        let err = |message: String| YamlError {
            line,
            column: col + 1,
            message,
        };
        match event {
            Event::StreamStart | Event::StreamEnd | Event::Anchor(..) => {}
            Event::DocumentStart(..) => {
                doc_line = line;
                root = None;
                anchors.clear();
            }
            Event::DocumentEnd => {
                let coll = match root.take() {
                    None => PColl {
                        is_map: true,
                        flow: false,
                        indent: 0,
                        items: Vec::new(),
                        comments: Vec::new(),
                    },
                    Some(PVal::Coll(c)) if c.is_map => c,
                    Some(PVal::Scalar(Scalar::Null)) => PColl {
                        is_map: true,
                        flow: false,
                        indent: 0,
                        items: Vec::new(),
                        comments: Vec::new(),
                    },
                    Some(PVal::Coll(_)) => {
                        return Err(err(
                            "a YAML document that is a list is not supported: the top level must be a map".into(),
                        ));
                    }
                    Some(PVal::Scalar(_)) => {
                        return Err(err(
                            "a YAML document that is a single value is not supported: the top level must be a map".into(),
                        ));
                    }
                };
                docs.push((doc_line, coll));
            }
            Event::Comment(text, placement) => comments.push(Comment {
                line,
                column: col,
                text: text.into_owned(),
                right: placement == Placement::Right,
            }),
            Event::MappingStart(style, anchor, _) | Event::SequenceStart(style, anchor, _) => {
                if matches!(stack.last(), Some(f) if f.coll.is_map && f.pending_key.is_none()) {
                    return Err(err("a map or list used as a key is not supported".into()));
                }
                let is_map = matches!(event, Event::MappingStart(..));
                let flow = style == StructureStyle::Flow;
                stack.push(Frame {
                    coll: PColl {
                        is_map,
                        flow,
                        // A block list's indent is its `-`; a map's is its first key.
                        indent: if is_map { usize::MAX } else { col },
                        items: Vec::new(),
                        comments: Vec::new(),
                    },
                    anchor,
                    pending_key: None,
                    start: (line, col),
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                let frame = stack
                    .pop()
                    .ok_or_else(|| err("unbalanced collection".into()))?;
                let (start_line, start_col) = frame.start;
                let value = PVal::Coll(frame.coll);
                if frame.anchor != 0 {
                    anchors.insert(frame.anchor, value.clone());
                }
                push_value(&mut stack, &mut root, value, start_line, start_col).map_err(err)?;
            }
            Event::Scalar(value, style, anchor, tag) => {
                let is_key =
                    matches!(stack.last(), Some(f) if f.coll.is_map && f.pending_key.is_none());
                if is_key {
                    let frame = stack.last_mut().expect("checked");
                    if frame.coll.indent == usize::MAX {
                        frame.coll.indent = col;
                    }
                    if anchor != 0 {
                        anchors.insert(anchor, PVal::Scalar(Scalar::Str(value.to_string())));
                    }
                    frame.pending_key = Some((value.into_owned(), line, col));
                    continue;
                }
                let tag_suffix = tag.as_ref().map(|t| t.suffix().to_string());
                let scalar = resolve_scalar(&value, style, tag_suffix.as_deref()).map_err(err)?;
                let value = PVal::Scalar(scalar);
                if anchor != 0 {
                    anchors.insert(anchor, value.clone());
                }
                push_value(&mut stack, &mut root, value, line, col).map_err(err)?;
            }
            Event::Alias(id) => {
                let value = anchors
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| err("alias to an unknown anchor".into()))?;
                let is_key =
                    matches!(stack.last(), Some(f) if f.coll.is_map && f.pending_key.is_none());
                if is_key {
                    let PVal::Scalar(s) = value else {
                        return Err(err("a map or list used as a key is not supported".into()));
                    };
                    let frame = stack.last_mut().expect("checked");
                    frame.pending_key = Some((s.as_text(), line, col));
                    continue;
                }
                push_value(&mut stack, &mut root, value, line, col).map_err(err)?;
            }
            Event::UnresolvedAlias(_) => return Err(err("alias to an unknown anchor".into())),
            _ => {}
        }
    }
    for c in comments {
        let idx = docs
            .iter()
            .rposition(|(start, _)| *start <= c.line)
            .unwrap_or(0);
        if let Some((_, coll)) = docs.get_mut(idx) {
            place_comment(coll, &c);
        }
    }
    Ok(docs.into_iter().map(|(_, c)| to_node(c)).collect())
}

fn push_value(
    stack: &mut [Frame],
    root: &mut Option<PVal>,
    value: PVal,
    line: usize,
    _col: usize,
) -> Result<(), String> {
    let Some(frame) = stack.last_mut() else {
        *root = Some(value);
        return Ok(());
    };
    if frame.coll.is_map {
        let (key, key_line, _) = frame
            .pending_key
            .take()
            .ok_or_else(|| "a value without a key".to_string())?;
        if frame
            .coll
            .items
            .iter()
            .any(|i| i.key.as_deref() == Some(key.as_str()))
        {
            return Err(format!("key `{key}` is already defined in this map"));
        }
        frame.coll.items.push(PItem {
            line: key_line,
            key: Some(key),
            value,
        });
    } else {
        frame.coll.items.push(PItem {
            line,
            key: None,
            value,
        });
    }
    Ok(())
}

/// Put a comment where yaml.v3 (through sops' store) puts it: an own-line comment goes to the
/// deepest block collection whose indentation it reaches, after the items above it; a comment
/// at the end of a line goes just before the item that line starts.
fn place_comment(coll: &mut PColl, c: &Comment) {
    let idx = coll.items.iter().rposition(|it| {
        if c.right {
            it.line <= c.line
        } else {
            it.line < c.line
        }
    });
    let Some(i) = idx else {
        coll.comments.push((0, c.text.clone()));
        return;
    };
    let item_line = coll.items[i].line;
    if let PVal::Coll(child) = &mut coll.items[i].value {
        let child_first = child.items.first().map(|it| it.line);
        if c.right {
            if item_line < c.line || child_first == Some(c.line) {
                place_comment(child, c);
                return;
            }
            coll.comments.push((i, c.text.clone()));
            return;
        }
        if !child.flow && (child.indent == usize::MAX || c.column >= child.indent) {
            place_comment(child, c);
            return;
        }
    }
    if c.right && item_line == c.line {
        coll.comments.push((i, c.text.clone()));
    } else {
        coll.comments.push((i + 1, c.text.clone()));
    }
}

fn to_node(coll: PColl) -> Node {
    let PColl {
        is_map,
        items,
        mut comments,
        ..
    } = coll;
    // Stable: comments for the same slot keep source order.
    comments.sort_by_key(|(i, _)| *i);
    let mut comments = comments.into_iter().peekable();
    if is_map {
        let mut out = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            while let Some((_, text)) = comments.next_if(|(at, _)| *at <= i) {
                out.push(Entry::Comment(text));
            }
            out.push(Entry::Pair(
                item.key.unwrap_or_default(),
                to_value(item.value),
            ));
        }
        out.extend(comments.map(|(_, t)| Entry::Comment(t)));
        Node::Map(out)
    } else {
        let mut out = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            while let Some((_, text)) = comments.next_if(|(at, _)| *at <= i) {
                out.push(Node::Comment(text));
            }
            out.push(to_value(item.value));
        }
        out.extend(comments.map(|(_, t)| Node::Comment(t)));
        Node::List(out)
    }
}

fn to_value(v: PVal) -> Node {
    match v {
        PVal::Coll(c) => to_node(c),
        PVal::Scalar(s) => Node::Scalar(s),
    }
}

// ---------------------------------------------------------------------------------------------
// Scalar resolution (yaml.v3's resolve.go, as sops decodes into interface{})

fn resolve_scalar(value: &str, style: ScalarStyle, tag: Option<&str>) -> Result<Scalar, String> {
    match tag {
        Some("str") => return Ok(Scalar::Str(value.to_string())),
        Some("binary") => {
            use base64::Engine as _;
            let clean: String = value.split_whitespace().collect();
            return base64::engine::general_purpose::STANDARD
                .decode(clean)
                .map(Scalar::Bytes)
                .map_err(|e| format!("invalid !!binary value: {e}"));
        }
        _ => {}
    }
    if style != ScalarStyle::Plain && tag.is_none() {
        return Ok(Scalar::Str(value.to_string()));
    }
    resolve_plain(value)
}

/// What a plain scalar means to yaml.v3.
pub fn resolve_plain(s: &str) -> Result<Scalar, String> {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Ok(Scalar::Null),
        "true" | "True" | "TRUE" => return Ok(Scalar::Bool(true)),
        "false" | "False" | "FALSE" => return Ok(Scalar::Bool(false)),
        ".nan" | ".NaN" | ".NAN" => return Ok(Scalar::Float(f64::NAN)),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Ok(Scalar::Float(f64::INFINITY));
        }
        "-.inf" | "-.Inf" | "-.INF" => return Ok(Scalar::Float(f64::NEG_INFINITY)),
        _ => {}
    }
    let first = s.as_bytes()[0];
    if first == b'.' {
        if let Ok(f) = s.parse::<f64>()
            && f.is_finite()
            && is_yaml_float(s)
        {
            return Ok(Scalar::Float(f));
        }
        return Ok(Scalar::Str(s.to_string()));
    }
    if !(first.is_ascii_digit() || first == b'+' || first == b'-') {
        return Ok(Scalar::Str(s.to_string()));
    }
    if let Some(t) = parse_timestamp(s) {
        return Ok(Scalar::Time(t));
    }
    let plain = s.replace('_', "");
    match parse_go_int(&plain) {
        Some(IntParse::Int(i)) => return Ok(Scalar::Int(i)),
        Some(IntParse::TooBig) => {
            return Err(format!(
                "integer `{s}` does not fit in 64 bits (sops cannot store it either); quote it to keep it as a string"
            ));
        }
        None => {}
    }
    // Go's ParseFloat fails on overflow (yaml.v3 then keeps the text as a string).
    if is_yaml_float(&plain)
        && let Ok(f) = plain.parse::<f64>()
        && f.is_finite()
    {
        return Ok(Scalar::Float(f));
    }
    Ok(Scalar::Str(s.to_string()))
}

enum IntParse {
    Int(i64),
    TooBig,
}

/// Go's `strconv.ParseInt(s, 0, 64)` (and ParseUint for the too-big case).
fn parse_go_int(s: &str) -> Option<IntParse> {
    let (neg, body) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let (radix, digits) = if let Some(d) = body.strip_prefix("0x").or(body.strip_prefix("0X")) {
        (16, d)
    } else if let Some(d) = body.strip_prefix("0o").or(body.strip_prefix("0O")) {
        (8, d)
    } else if let Some(d) = body.strip_prefix("0b").or(body.strip_prefix("0B")) {
        (2, d)
    } else if body.len() > 1 && body.starts_with('0') {
        (8, &body[1..])
    } else {
        (10, body)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let magnitude = u128::from_str_radix(digits, radix).ok()?;
    let value = if neg {
        -(magnitude as i128)
    } else {
        magnitude as i128
    };
    if value >= i64::MIN as i128 && value <= i64::MAX as i128 {
        Some(IntParse::Int(value as i64))
    } else if !neg && magnitude <= u64::MAX as u128 {
        Some(IntParse::TooBig)
    } else {
        None
    }
}

/// yaml.v3's `yamlStyleFloat`: `^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`.
fn is_yaml_float(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
        i += 1;
    }
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - start
    };
    if i < b.len() && b[i] == b'.' {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    } else {
        if digits(&mut i) == 0 {
            return false;
        }
        if i < b.len() && b[i] == b'.' {
            i += 1;
            digits(&mut i);
        }
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

/// yaml.v3's timestamp formats (`2006-1-2T15:4:5.999999999Z07:00`, lower-case `t`,
/// `2006-1-2 15:4:5.999999999`, `2006-1-2`), returned as Go's RFC 3339 (nano) text.
pub fn parse_timestamp(s: &str) -> Option<String> {
    let b = s.as_bytes();
    if b.len() < 5 || !b[..4].iter().all(u8::is_ascii_digit) || b[4] != b'-' {
        return None;
    }
    fn num(s: &str, i: &mut usize, min: usize, max: usize) -> Option<u32> {
        let b = s.as_bytes();
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() && *i - start < max {
            *i += 1;
        }
        if *i - start < min {
            return None;
        }
        s[start..*i].parse().ok()
    }
    let mut i = 0;
    let year = num(s, &mut i, 4, 4)?;
    i += 1;
    let month = num(s, &mut i, 1, 2)?;
    if b.get(i) != Some(&b'-') {
        return None;
    }
    i += 1;
    let day = num(s, &mut i, 1, 2)?;
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let date = format!("{year:04}-{month:02}-{day:02}");
    if i == b.len() {
        return Some(format!("{date}T00:00:00Z"));
    }
    let sep = b[i];
    if sep != b'T' && sep != b't' && sep != b' ' {
        return None;
    }
    i += 1;
    let hour = num(s, &mut i, 1, 2)?;
    if b.get(i) != Some(&b':') {
        return None;
    }
    i += 1;
    let minute = num(s, &mut i, 1, 2)?;
    if b.get(i) != Some(&b':') {
        return None;
    }
    i += 1;
    let second = num(s, &mut i, 1, 2)?;
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut frac = String::new();
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start || i - start > 9 {
            return None;
        }
        frac = s[start..i].trim_end_matches('0').to_string();
    }
    let zone = if sep == b' ' {
        if i != b.len() {
            return None;
        }
        "Z".to_string()
    } else {
        let rest = &s[i..];
        if rest == "Z" {
            "Z".to_string()
        } else {
            let rb = rest.as_bytes();
            if rb.len() != 6
                || !(rb[0] == b'+' || rb[0] == b'-')
                || rb[3] != b':'
                || !rb[1..3].iter().all(u8::is_ascii_digit)
                || !rb[4..6].iter().all(u8::is_ascii_digit)
            {
                return None;
            }
            if &rest[1..] == "00:00" {
                "Z".to_string()
            } else {
                rest.to_string()
            }
        }
    };
    let frac = if frac.is_empty() {
        String::new()
    } else {
        format!(".{frac}")
    };
    Some(format!(
        "{date}T{hour:02}:{minute:02}:{second:02}{frac}{zone}"
    ))
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400) => {
            29
        }
        _ => 28,
    }
}

// ---------------------------------------------------------------------------------------------
// Writing (yaml.v3's encoder and emitter with SetIndent(4), as sops uses them)

const INDENT: usize = 4;

/// Emit documents as sops does: `---` between documents, a trailing newline.
pub fn emit(docs: &[Node]) -> String {
    let mut out = String::new();
    for (i, doc) in docs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        match doc {
            Node::Map(entries) if entries.iter().any(|e| matches!(e, Entry::Pair(..))) => {
                emit_map(&mut out, entries, 0, false);
            }
            Node::Map(entries) => {
                for e in entries {
                    if let Entry::Comment(c) = e {
                        push_comment(&mut out, 0, c);
                    }
                }
                out.push_str("{}\n");
            }
            other => {
                emit_value_after(&mut out, other, 0, ValueCtx::Document);
            }
        }
    }
    out
}

fn push_comment(out: &mut String, indent: usize, text: &str) {
    push_indent(out, indent);
    out.push('#');
    out.push_str(text);
    out.push('\n');
}

fn push_indent(out: &mut String, n: usize) {
    for _ in 0..n {
        out.push(' ');
    }
}

/// The indentation yaml.v3 gives a collection or block scalar nested under a map key at
/// column `col`: the next multiple of the indent step.
fn nested_indent(col: usize) -> usize {
    INDENT * ((col + INDENT) / INDENT)
}

/// Emit the entries of a block map whose keys sit at `indent`. With `inline_first`, the cursor
/// is already at `indent` (after `- `) for the first key.
fn emit_map(out: &mut String, entries: &[Entry], indent: usize, inline_first: bool) {
    let mut first = true;
    for entry in entries {
        let at_cursor = first && inline_first;
        match entry {
            Entry::Comment(text) => {
                if at_cursor {
                    // yaml.v3 moves a head comment of an inline map above the `- ` line; keep
                    // it on its own line at the key column.
                    out.push('#');
                    out.push_str(text);
                    out.push('\n');
                    first = false;
                    continue;
                }
                push_comment(out, indent, text);
            }
            Entry::Pair(key, value) => {
                if !at_cursor {
                    push_indent(out, indent);
                }
                out.push_str(&scalar_text(&Scalar::Str(key.clone()), true, indent));
                out.push(':');
                emit_value_after(out, value, indent, ValueCtx::MapValue);
            }
        }
        first = false;
    }
}

/// Emit the items of a block list whose dashes sit at `indent`.
fn emit_list(out: &mut String, items: &[Node], indent: usize, inline_first: bool) {
    let mut first = true;
    for item in items {
        let at_cursor = first && inline_first;
        if let Node::Comment(text) = item {
            if at_cursor {
                out.push('#');
                out.push_str(text);
                out.push('\n');
            } else {
                push_comment(out, indent, text);
            }
            first = false;
            continue;
        }
        if !at_cursor {
            push_indent(out, indent);
        }
        out.push('-');
        emit_value_after(out, item, indent, ValueCtx::ListItem);
        first = false;
    }
}

#[derive(Clone, Copy, PartialEq)]
enum ValueCtx {
    /// After `key:`; the key sits at the given column.
    MapValue,
    /// After `-`; the dash sits at the given column.
    ListItem,
    Document,
}

fn has_items<T>(items: &[T], is_comment: impl Fn(&T) -> bool) -> bool {
    items.iter().any(|i| !is_comment(i))
}

/// Emit a value after its `key:` or `-` (the cursor is right after the indicator).
fn emit_value_after(out: &mut String, value: &Node, col: usize, ctx: ValueCtx) {
    // Where nested content goes: under a key, the next indent step; in a list, past `- `.
    let nested = match ctx {
        ValueCtx::MapValue => nested_indent(col),
        ValueCtx::ListItem => col + 2,
        ValueCtx::Document => 0,
    };
    match value {
        Node::Map(entries) if has_items(entries, |e| matches!(e, Entry::Comment(_))) => {
            if ctx == ValueCtx::ListItem {
                out.push(' ');
                emit_map(out, entries, nested, true);
            } else {
                out.push('\n');
                emit_map(out, entries, nested, false);
            }
        }
        Node::List(items) if has_items(items, |n| matches!(n, Node::Comment(_))) => {
            if ctx == ValueCtx::ListItem {
                out.push(' ');
                emit_list(out, items, nested, true);
            } else {
                out.push('\n');
                emit_list(out, items, nested, false);
            }
        }
        Node::Map(entries) => {
            out.push_str(" {}\n");
            for e in entries {
                if let Entry::Comment(c) = e {
                    push_comment(out, nested, c);
                }
            }
        }
        Node::List(items) => {
            out.push_str(" []\n");
            for n in items {
                if let Node::Comment(c) = n {
                    push_comment(out, nested, c);
                }
            }
        }
        Node::Comment(c) => {
            out.push_str(" #");
            out.push_str(c);
            out.push('\n');
        }
        Node::Scalar(s) => {
            out.push(' ');
            let text = scalar_text(s, false, nested);
            out.push_str(&text);
            // A block scalar ends with its own line break; libyaml adds none after it (even
            // when that break is LS or PS).
            if !text.ends_with(is_break) {
                out.push('\n');
            }
        }
    }
}

/// The text of a scalar as yaml.v3 writes it. `key`: in a simple-key position. `block_indent`:
/// the content column of a block (literal) scalar.
fn scalar_text(s: &Scalar, key: bool, block_indent: usize) -> String {
    match s {
        Scalar::Str(v) => string_text(v, key, block_indent),
        Scalar::Int(i) => i.to_string(),
        Scalar::Float(f) => format_float_g(*f),
        Scalar::Bool(b) => b.to_string(),
        Scalar::Time(t) => t.clone(),
        Scalar::Null => "null".to_string(),
        Scalar::Bytes(b) => {
            use base64::Engine as _;
            format!(
                "!!binary {}",
                base64::engine::general_purpose::STANDARD.encode(b)
            )
        }
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Style {
    Plain,
    Single,
    Double,
    Literal,
}

/// yaml.v3: strings that would read back as something else (or as an old YAML 1.1 bool or a
/// base-60 float) are double-quoted; multi-line strings are literal; the emitter then falls
/// back (plain → single → double, literal → double) when the text does not allow a style.
fn string_text(v: &str, key: bool, block_indent: usize) -> String {
    // yaml.v3 (through sops' node encoding) writes the string `<<` with the merge tag.
    if v == "<<" && !key {
        return "!!merge <<".into();
    }
    let non_str =
        !matches!(resolve_plain(v), Ok(Scalar::Str(_))) || is_old_bool(v) || is_base60_float(v);
    let mut style = if v.contains('\n') {
        Style::Literal
    } else if non_str {
        Style::Double
    } else {
        Style::Plain
    };
    let a = analyze(v);
    if key && a.multiline {
        style = Style::Double;
    }
    if style == Style::Plain && (!a.block_plain_allowed || (v.is_empty() && key)) {
        style = Style::Single;
    }
    if style == Style::Single && !a.single_quoted_allowed {
        style = Style::Double;
    }
    if style == Style::Literal && (!a.block_allowed || key) {
        style = Style::Double;
    }
    match style {
        Style::Plain => v.to_string(),
        Style::Single => single_quoted(v, block_indent),
        Style::Double => double_quoted(v),
        Style::Literal => literal(v, block_indent),
    }
}

fn is_old_bool(s: &str) -> bool {
    matches!(
        s,
        "y" | "Y"
            | "yes"
            | "Yes"
            | "YES"
            | "on"
            | "On"
            | "ON"
            | "n"
            | "N"
            | "no"
            | "No"
            | "NO"
            | "off"
            | "Off"
            | "OFF"
    )
}

/// `^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$`
fn is_base60_float(s: &str) -> bool {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| {
        regex::Regex::new(r"^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$").expect("regex")
    })
    .is_match(s)
}

struct Analysis {
    multiline: bool,
    block_plain_allowed: bool,
    single_quoted_allowed: bool,
    block_allowed: bool,
}

fn is_printable(c: char) -> bool {
    matches!(c, '\n' | '\u{20}'..='\u{7E}' | '\u{A0}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}')
        && c != '\u{FEFF}'
}

fn is_break(c: char) -> bool {
    matches!(c, '\r' | '\n' | '\u{85}' | '\u{2028}' | '\u{2029}')
}

fn is_blank_or_break(c: Option<char>) -> bool {
    match c {
        None => true,
        Some(c) => c == ' ' || c == '\t' || is_break(c) || c == '\0',
    }
}

/// libyaml's `yaml_emitter_analyze_scalar` (block context), with yaml.v3's rule that a tab
/// rules out the plain and single-quoted styles.
fn analyze(v: &str) -> Analysis {
    if v.is_empty() {
        return Analysis {
            multiline: false,
            block_plain_allowed: true,
            single_quoted_allowed: true,
            block_allowed: false,
        };
    }
    let mut block_indicators = v.starts_with("---") || v.starts_with("...");
    let mut special = false;
    let mut tabs = false;
    let (mut line_breaks, mut leading_space, mut leading_break) = (false, false, false);
    let (mut trailing_space, mut trailing_break) = (false, false);
    let (mut break_space, mut space_break) = (false, false);
    let (mut previous_space, mut previous_break) = (false, false);
    let chars: Vec<char> = v.chars().collect();
    let last = chars.len() - 1;
    let mut preceded_by_whitespace = true;
    for (i, &c) in chars.iter().enumerate() {
        let followed_by_whitespace = is_blank_or_break(chars.get(i + 1).copied());
        if i == 0 {
            match c {
                '#' | ',' | '[' | ']' | '{' | '}' | '&' | '*' | '!' | '|' | '>' | '\'' | '"'
                | '%' | '@' | '`' => block_indicators = true,
                '?' | ':' | '-' if followed_by_whitespace => block_indicators = true,
                _ => {}
            }
        } else {
            match c {
                ':' if followed_by_whitespace => block_indicators = true,
                '#' if preceded_by_whitespace => block_indicators = true,
                _ => {}
            }
        }
        if c == '\t' {
            tabs = true;
        } else if !is_printable(c) {
            special = true;
        }
        if is_break(c) {
            line_breaks = true;
        }
        if c == ' ' {
            if i == 0 {
                leading_space = true;
            }
            if i == last {
                trailing_space = true;
            }
            if previous_break {
                break_space = true;
            }
            previous_space = true;
            previous_break = false;
        } else if is_break(c) {
            if i == 0 {
                leading_break = true;
            }
            if i == last {
                trailing_break = true;
            }
            if previous_space {
                space_break = true;
            }
            previous_break = true;
            previous_space = false;
        } else {
            previous_space = false;
            previous_break = false;
        }
        preceded_by_whitespace = is_blank_or_break(Some(c));
    }
    let mut a = Analysis {
        multiline: line_breaks,
        block_plain_allowed: true,
        single_quoted_allowed: true,
        block_allowed: true,
    };
    if leading_space || leading_break || trailing_space || trailing_break {
        a.block_plain_allowed = false;
    }
    if trailing_space {
        a.block_allowed = false;
    }
    if break_space {
        a.block_plain_allowed = false;
        a.single_quoted_allowed = false;
    }
    if space_break || special {
        a.block_plain_allowed = false;
        a.single_quoted_allowed = false;
        a.block_allowed = false;
    }
    if tabs {
        a.block_plain_allowed = false;
        a.single_quoted_allowed = false;
    }
    if line_breaks {
        a.block_plain_allowed = false;
    }
    if block_indicators {
        a.block_plain_allowed = false;
    }
    a
}

fn double_quoted(v: &str) -> String {
    let mut out = String::from("\"");
    // yaml.v3's `is_bom` looks at the start of the value, not at the current character: a value
    // starting with a BOM has every character escaped.
    let all = v.starts_with('\u{FEFF}');
    for c in v.chars() {
        let escape =
            all || !is_printable(c) || c == '\u{FEFF}' || is_break(c) || c == '"' || c == '\\';
        if !escape {
            out.push(c);
            continue;
        }
        match c {
            '\0' => out.push_str("\\0"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{B}' => out.push_str("\\v"),
            '\u{C}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            '\u{1B}' => out.push_str("\\e"),
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{85}' => out.push_str("\\N"),
            '\u{A0}' => out.push_str("\\_"),
            '\u{2028}' => out.push_str("\\L"),
            '\u{2029}' => out.push_str("\\P"),
            c if (c as u32) <= 0xFF => out.push_str(&format!("\\x{:02X}", c as u32)),
            c if (c as u32) <= 0xFFFF => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push_str(&format!("\\U{:08X}", c as u32)),
        }
    }
    out.push('"');
    out
}

/// A single-quoted scalar; a line break inside (LS, PS) is written as itself and the next line
/// starts at the scalar's indentation, as libyaml does.
fn single_quoted(v: &str, indent: usize) -> String {
    let mut out = String::from("'");
    let mut breaks = false;
    for c in v.chars() {
        if c == ' ' {
            out.push(c);
        } else if is_break(c) {
            if !breaks && c == '\n' {
                out.push('\n');
            }
            out.push(c);
            breaks = true;
        } else {
            if breaks {
                push_indent(&mut out, indent);
            }
            if c == '\'' {
                out.push('\'');
            }
            out.push(c);
            breaks = false;
        }
    }
    out.push('\'');
    out
}

/// A literal block scalar: header with chomping (and an indentation indicator when the text
/// starts with a space or a break), then the lines at `indent`. It ends with the value's last
/// break, if any; the caller ends the line otherwise.
fn literal(v: &str, indent: usize) -> String {
    let mut out = String::from("|");
    let first = v.chars().next();
    if matches!(first, Some(c) if c == ' ' || is_break(c)) {
        out.push_str(&INDENT.to_string());
    }
    let chars: Vec<char> = v.chars().collect();
    let n = chars.len();
    if n == 0 || !is_break(chars[n - 1]) {
        out.push('-');
    } else if n == 1 || is_break(chars[n - 2]) {
        out.push('+');
    }
    out.push('\n');
    let mut at_line_start = true;
    for &c in &chars {
        if is_break(c) {
            // libyaml writes a break as itself (LS and PS stay LS and PS).
            out.push(c);
            at_line_start = true;
        } else {
            if at_line_start {
                push_indent(&mut out, indent);
                at_line_start = false;
            }
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(src: &str) -> String {
        emit(&parse(src).expect("parse"))
    }

    #[test]
    fn emits_like_sops() {
        let src = "# top\ndb:\n  # inner\n  password: hunter2 # trailing\n  port: 5432\n  on: true\n  off: no\n  list:\n    - a\n    - - nested\n    - k: v\n      j: w\nblock: |\n  line1\n  line2\nempty: \"\"\n";
        let expected = "# top\ndb:\n    # inner\n    # trailing\n    password: hunter2\n    port: 5432\n    \"on\": true\n    \"off\": \"no\"\n    list:\n        - a\n        - - nested\n        - k: v\n          j: w\nblock: |\n    line1\n    line2\nempty: \"\"\n";
        assert_eq!(round(src), expected);
    }

    #[test]
    fn comments_go_to_the_collection_they_are_indented_into() {
        let src = "a:\n  x: 1\n  # foot nested\n# top after nested\nb: 2\nlist:\n  # head\n  - 1\n  - 2 # on item\n  # foot\n# final\n";
        let docs = parse(src).unwrap();
        let Node::Map(top) = &docs[0] else { panic!() };
        let a = docs[0].get(&["a".into()]).unwrap();
        assert_eq!(
            a,
            &Node::Map(vec![
                Entry::Pair("x".into(), Node::Scalar(Scalar::Int(1))),
                Entry::Comment(" foot nested".into())
            ])
        );
        assert_eq!(top[1], Entry::Comment(" top after nested".into()));
        assert_eq!(
            docs[0].get(&["list".into()]).unwrap(),
            &Node::List(vec![
                Node::Comment(" head".into()),
                Node::Scalar(Scalar::Int(1)),
                Node::Comment(" on item".into()),
                Node::Scalar(Scalar::Int(2)),
                Node::Comment(" foot".into()),
            ])
        );
        assert_eq!(top.last(), Some(&Entry::Comment(" final".into())));
    }

    #[test]
    fn scalar_styles() {
        for (v, expected) in [
            ("a: b", "'a: b'"),
            ("123", "\"123\""),
            ("yes", "\"yes\""),
            ("tab\there", "\"tab\\there\""),
            ("quote'single", "quote'single"),
            ("?q", "?q"),
            ("-", "'-'"),
            ("2024-01-02", "\"2024-01-02\""),
            ("1_000", "\"1_000\""),
            ("😀 smile", "\"\\U0001F600 smile\""),
            ("a\u{85}b", "\"a\\Nb\""),
            ("a\u{a0}b", "a\u{a0}b"),
            ("trail ", "'trail '"),
            ("a \nb", "\"a \\nb\""),
            ("", "\"\""),
        ] {
            assert_eq!(string_text(v, false, 4), expected, "{v:?}");
        }
        assert_eq!(string_text("  a\nb", false, 4), "|4-\n      a\n    b");
        assert_eq!(string_text("x\n\n", false, 4), "|+\n    x\n\n");
    }

    #[test]
    fn resolves_plain_scalars_like_yaml_v3() {
        assert_eq!(resolve_plain("0x1F"), Ok(Scalar::Int(31)));
        assert_eq!(resolve_plain("0755"), Ok(Scalar::Int(493)));
        assert_eq!(resolve_plain("08"), Ok(Scalar::Float(8.0)));
        assert_eq!(resolve_plain("1e10"), Ok(Scalar::Float(1e10)));
        assert_eq!(resolve_plain("no"), Ok(Scalar::Str("no".into())));
        assert_eq!(
            resolve_plain("2024-01-02"),
            Ok(Scalar::Time("2024-01-02T00:00:00Z".into()))
        );
        assert_eq!(
            resolve_plain("2024-1-2 3:04:05.500"),
            Ok(Scalar::Time("2024-01-02T03:04:05.5Z".into()))
        );
        assert!(resolve_plain("12345678901234567890").is_err());
    }
}

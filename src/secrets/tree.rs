//! The document tree SOPS works on: ordered maps, lists, typed scalars and comments, exactly as
//! the sops stores build it (comments are items of the map or list they sit in).

/// One value of the tree.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Map(Vec<Entry>),
    List(Vec<Node>),
    /// A comment inside a list (sops keeps list comments as items; in maps they are entries).
    Comment(String),
    Scalar(Scalar),
}

/// An item of a map: a key and its value, or a comment line.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    Pair(String, Node),
    /// The text after `#`.
    Comment(String),
}

/// A leaf value with the type sops records in `type:`.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// A timestamp, kept as Go's RFC 3339 text (what sops encrypts and prints).
    Time(String),
    Bytes(Vec<u8>),
    Null,
}

impl Scalar {
    /// The plaintext bytes sops encrypts and hashes for this value (`ToBytes` in sops).
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Scalar::Str(s) | Scalar::Time(s) => s.as_bytes().to_vec(),
            Scalar::Int(i) => i.to_string().into_bytes(),
            Scalar::Float(f) => format_float_f(*f).into_bytes(),
            Scalar::Bool(true) => b"True".to_vec(),
            Scalar::Bool(false) => b"False".to_vec(),
            Scalar::Bytes(b) => b.clone(),
            Scalar::Null => Vec::new(),
        }
    }

    /// The `type:` name sops writes for this value.
    pub fn type_name(&self) -> &'static str {
        match self {
            Scalar::Str(_) | Scalar::Null => "str",
            Scalar::Int(_) => "int",
            Scalar::Float(_) => "float",
            Scalar::Bool(_) => "bool",
            Scalar::Time(_) => "time",
            Scalar::Bytes(_) => "bytes",
        }
    }

    /// The value as text, as a deployment sees it (an env var, a file): strings raw, numbers
    /// and booleans in their YAML spelling.
    pub fn as_text(&self) -> String {
        match self {
            Scalar::Str(s) | Scalar::Time(s) => s.clone(),
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => format_float_g(*f),
            Scalar::Bool(b) => b.to_string(),
            Scalar::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
            Scalar::Null => String::new(),
        }
    }
}

/// Go's `strconv.FormatFloat(f, 'f', -1, 64)`: shortest digits, never an exponent.
pub fn format_float_f(f: f64) -> String {
    if f.is_infinite() {
        return if f > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    if f.is_nan() {
        return "NaN".into();
    }
    // Rust's Display is the shortest round-trip representation without exponent, like Go's.
    format!("{f}")
}

/// The shortest decimal digits of `f` (no sign) and the decimal point position: `f = 0.d1d2… ×
/// 10^dp`.
fn shortest_digits(f: f64) -> (String, i32) {
    // `{:e}` gives the shortest round-trip mantissa and exponent.
    let s = format!("{:e}", f.abs());
    let (mant, exp) = s.split_once('e').expect("exponent form");
    let digits: String = mant.chars().filter(|c| *c != '.').collect();
    let exp: i32 = exp.parse().expect("exponent");
    (digits, exp + 1)
}

/// Go's `strconv.FormatFloat(f, 'g', -1, 64)` as yaml.v3 prints floats (`.inf`, `.nan` aside).
pub fn format_float_g(f: f64) -> String {
    if f.is_nan() {
        return ".nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            ".inf".into()
        } else {
            "-.inf".into()
        };
    }
    if f == 0.0 {
        return if f.is_sign_negative() {
            "-0".into()
        } else {
            "0".into()
        };
    }
    let (digits, dp) = shortest_digits(f);
    let sign = if f < 0.0 { "-" } else { "" };
    format_float_g_go(sign, &digits, dp)
}

fn fmt_e(digits: &str, exp: i32) -> String {
    let mut out = String::new();
    out.push_str(&digits[..1]);
    if digits.len() > 1 {
        out.push('.');
        out.push_str(&digits[1..]);
    }
    out.push('e');
    out.push(if exp < 0 { '-' } else { '+' });
    let e = exp.unsigned_abs();
    if e < 10 {
        out.push('0');
    }
    out.push_str(&e.to_string());
    out
}

/// Go's `%g` with the shortest precision (ftoa.go): `%e` when the exponent is < -4 or >= 6,
/// else `%f` with just the digits needed.
fn format_float_g_go(sign: &str, digits: &str, dp: i32) -> String {
    let nd = digits.len() as i32;
    let exp = dp - 1;
    if !(-4..6).contains(&exp) {
        return format!("{sign}{}", fmt_e(digits, exp));
    }
    // %f with the minimal number of fraction digits.
    let mut out = String::from(sign);
    if dp <= 0 {
        out.push_str("0.");
        for _ in 0..(-dp) {
            out.push('0');
        }
        out.push_str(digits);
    } else if dp >= nd {
        out.push_str(digits);
        for _ in 0..(dp - nd) {
            out.push('0');
        }
    } else {
        out.push_str(&digits[..dp as usize]);
        out.push('.');
        out.push_str(&digits[dp as usize..]);
    }
    out
}

impl Node {
    /// Follow `path` (map keys; a numeric segment indexes a list) to a node.
    pub fn get(&self, path: &[String]) -> Option<&Node> {
        let mut node = self;
        for key in path {
            node = match node {
                Node::Map(entries) => entries.iter().find_map(|e| match e {
                    Entry::Pair(k, v) if k == key => Some(v),
                    _ => None,
                })?,
                Node::List(items) => {
                    let i: usize = key.parse().ok()?;
                    items
                        .iter()
                        .filter(|n| !matches!(n, Node::Comment(_)))
                        .nth(i)?
                }
                _ => return None,
            };
        }
        Some(node)
    }

    /// Every key path of a leaf (scalar) in document order; lists contribute their indexes.
    pub fn leaf_paths(&self) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        let mut path = Vec::new();
        collect_paths(self, &mut path, &mut out);
        out
    }
}

fn collect_paths(node: &Node, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match node {
        Node::Map(entries) => {
            for e in entries {
                if let Entry::Pair(k, v) = e {
                    path.push(k.clone());
                    collect_paths(v, path, out);
                    path.pop();
                }
            }
        }
        Node::List(items) => {
            for (i, item) in items
                .iter()
                .filter(|n| !matches!(n, Node::Comment(_)))
                .enumerate()
            {
                path.push(i.to_string());
                collect_paths(item, path, out);
                path.pop();
            }
        }
        Node::Comment(_) => {}
        Node::Scalar(_) => out.push(path.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_like_go() {
        for (f, g, fx) in [
            (1.0, "1", "1"),
            (3.25, "3.25", "3.25"),
            (1e10, "1e+10", "10000000000"),
            (123456789.0, "1.23456789e+08", "123456789"),
            (1234567.5, "1.2345675e+06", "1234567.5"),
            (0.0001, "0.0001", "0.0001"),
            (0.00001, "1e-05", "0.00001"),
            (1e21, "1e+21", "1000000000000000000000"),
            (100000.0, "100000", "100000"),
            (1000000.0, "1e+06", "1000000"),
            (-0.5, "-0.5", "-0.5"),
        ] {
            assert_eq!(format_float_g(f), g, "g of {f}");
            assert_eq!(format_float_f(f), fx, "f of {f}");
        }
    }
}

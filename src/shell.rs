//! Quoting for the POSIX shell lines Keystone generates.
//!
//! Architecture invariant: every value interpolated into a generated script goes through `quote`
//! (or `join`). Scripts never embed file contents; files travel as `StepAction::Upload`.

/// Quote one word for `sh`: the result is always a single word whatever bytes `s` holds.
pub fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:@%+=,".contains(&b))
    {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// Quote every word and join them with spaces: a command line.
pub fn join<I, S>(words: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    words
        .into_iter()
        .map(|w| quote(w.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn sh_echo(word: &str) -> String {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {}", quote(word)))
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn plain_words_stay_bare() {
        assert_eq!(quote("web-1"), "web-1");
        assert_eq!(
            quote("/home/keystone/services/web"),
            "/home/keystone/services/web"
        );
        assert_eq!(
            join(["docker", "pull", "a@sha256:00"]),
            "docker pull a@sha256:00"
        );
    }

    #[test]
    fn hostile_values_round_trip_through_sh() {
        for hostile in [
            "",
            "a b",
            "it's",
            "$(rm -rf /)",
            "`id`",
            "a\nb",
            "\\\"'$HOME;|&<>*?[]{}~#!",
            "ünï©ødé ☃",
            "'",
            "''",
        ] {
            assert_eq!(sh_echo(hostile), hostile, "{hostile:?}");
        }
    }
}

//! Hostile strings (quotes, indicators, YAML keywords, numbers, dates, tabs, line breaks,
//! unicode, emoji) as keys and values: the YAML that sops' emitter writes for them is what
//! Keystone writes, and both directions decrypt to the same document.

mod secrets_support;

use secrets_support::*;

const PIECES: &[&str] = &[
    "a",
    "Z",
    "0",
    "7",
    " ",
    "  ",
    "\t",
    "\n",
    "\n\n",
    ":",
    ": ",
    " #",
    "#",
    "-",
    "- ",
    "?",
    "'",
    "\"",
    "\\",
    "[",
    "]",
    "{",
    "}",
    ",",
    "&",
    "*",
    "!",
    "|",
    ">",
    "%",
    "@",
    "`",
    "~",
    "yes",
    "no",
    "on",
    "null",
    "true",
    "False",
    "1.5",
    "0x1F",
    "0755",
    "1_000",
    "1e3",
    "2024-01-02",
    ".inf",
    "---",
    "...",
    "é",
    "✓",
    "日本",
    "😀",
    "\u{a0}",
    "\u{85}",
    "\u{2028}",
    "\u{feff}",
    "\r",
    "x y",
    "=",
    "<<",
    "\u{7}",
    "\u{1b}",
];

/// Keys sops itself reads back (it cannot decrypt files whose keys hold line breaks or other
/// characters its emitter turns into non-string keys).
const KEY_PIECES: &[&str] = &[
    "a",
    "Z",
    "0",
    "7",
    " ",
    ":",
    ": ",
    " #",
    "#",
    "-",
    "- ",
    "?",
    "'",
    "\"",
    "[",
    "&",
    "*",
    "!",
    "|",
    ">",
    "%",
    "@",
    "yes",
    "no",
    "null",
    "true",
    "1.5",
    "0x1F",
    "0755",
    "2024-01-02",
    "é",
    "✓",
    "日本",
    "x y",
    "=",
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn string(&mut self) -> String {
        self.from(PIECES)
    }

    /// A value yaml.v3 reads back as it wrote it: no block scalar that needs an indentation
    /// indicator (yaml.v3 writes those too shallow under list items), and no LS/PS/NEL, which
    /// yaml.v3 reads as YAML 1.1 line breaks (Keystone reads YAML 1.2: they are content).
    fn readable(&mut self) -> String {
        loop {
            let v = self.string();
            let odd_break = v.contains(['\u{85}', '\u{2028}', '\u{2029}']);
            let indicator = v.contains(['\n', '\r']) && v.starts_with([' ', '\n', '\r']);
            if !odd_break && !indicator {
                return v;
            }
        }
    }

    fn key(&mut self) -> String {
        self.from(KEY_PIECES)
    }

    fn from(&mut self, pieces: &[&str]) -> String {
        let n = 1 + self.next() % 4;
        (0..n)
            .map(|_| pieces[(self.next() % pieces.len() as u64) as usize])
            .collect()
    }
}

fn same(expected: &str, actual: &str, what: &str) {
    if expected != actual {
        let diff = similar::TextDiff::from_lines(expected, actual);
        panic!(
            "{what}:\n{}",
            diff.unified_diff().header("sops", "keystone")
        );
    }
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

#[test]
fn hostile_strings_print_and_round_trip_like_sops() {
    let dir = tempfile::tempdir().unwrap();
    let (key, recipient) = keygen(dir.path(), "key");
    let mut both_read = 0;
    // Seeds 1-4: anything; 5-8: values yaml.v3 can also read back, for the encrypt direction.
    for seed in 1u64..=8 {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ seed);
        let value = |rng: &mut Rng| {
            if seed <= 4 {
                rng.string()
            } else {
                rng.readable()
            }
        };
        // JSON input lets any string be a key or a value; sops turns it into YAML.
        let mut entries = Vec::new();
        let mut list = Vec::new();
        for i in 0..150 {
            let k = format!("{}{i}", rng.key());
            entries.push(format!(
                "{}: {}",
                json_string(&k),
                json_string(&value(&mut rng))
            ));
            list.push(json_string(&value(&mut rng)));
        }
        let json = format!(
            "{{{}, \"list\": [{}], \"nested\": {{\"m\": {{{}: [{}]}}}}}}",
            entries.join(", "),
            list.join(", "),
            json_string(&rng.key()),
            json_string(&value(&mut rng))
        );
        let plain = dir.path().join(format!("s{seed}.json"));
        std::fs::write(&plain, &json).unwrap();
        let enc = sops_encrypt(
            dir.path(),
            &plain,
            &[&recipient],
            &["--output-type", "yaml"],
        );
        let file = dir.path().join(format!("s{seed}.sops.yaml"));
        std::fs::write(&file, &enc).unwrap();

        let by_sops = ok(sops_decrypt(dir.path(), &file, &key), "sops decrypt");
        let by_keystone = ok(
            keystone(dir.path())
                .args(["secrets", "decrypt", "--age-key-file"])
                .arg(&key)
                .arg(&file)
                .output()
                .unwrap(),
            "keystone decrypt",
        );
        same(
            &by_sops,
            &by_keystone,
            &format!("seed {seed}: Keystone prints differently from sops"),
        );

        // And back: both encrypt sops' YAML output. yaml.v3 writes some values it cannot read
        // back (`|4-` under a list item); then both must refuse, else both must agree.
        let yaml = dir.path().join(format!("s{seed}.yaml"));
        std::fs::write(&yaml, &by_sops).unwrap();
        let mut sops_enc = sops(dir.path());
        let sops_enc = sops_enc
            .args(["encrypt", "--age", &recipient])
            .arg(&yaml)
            .output()
            .unwrap();
        let out = keystone(dir.path())
            .args(["secrets", "encrypt", "--age", &recipient])
            .arg(&yaml)
            .output()
            .unwrap();
        if !sops_enc.status.success() {
            assert!(
                !out.status.success(),
                "seed {seed}: sops cannot read its own output but Keystone did: {}",
                stderr(&sops_enc)
            );
            eprintln!("seed {seed}: sops cannot read back its own YAML");
            continue;
        }
        let again = dir.path().join(format!("s{seed}.again.yaml"));
        std::fs::write(&again, &sops_enc.stdout).unwrap();
        let reference = ok(sops_decrypt(dir.path(), &again, &key), "sops decrypt");
        let ks_file = dir.path().join(format!("s{seed}.ks.yaml"));
        std::fs::write(&ks_file, ok(out, "keystone encrypt of sops' YAML")).unwrap();
        same(
            &reference,
            &ok(sops_decrypt(dir.path(), &ks_file, &key), "sops decrypt"),
            &format!("seed {seed}: sops reads Keystone's encryption of sops' YAML differently"),
        );
        both_read += 1;
    }
    assert!(
        both_read >= 2,
        "too few seeds exercised the encrypt direction"
    );
}

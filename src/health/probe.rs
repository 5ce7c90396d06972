//! The probe of one server: the exact shell it runs (one command over the server's multiplexed
//! connection) and the parser of what it prints. Pure: no I/O here.
//!
//! The script prints one record per line, each a tag and tab-separated fields; every field that
//! comes from Docker is JSON-encoded by Docker's own template `json` function, so no label or
//! name can break a line apart:
//! ```text
//! keystone-probe 1
//! I  <json server version>  <json docker root dir>       (or `E  <error text>`)
//! D  <free KiB on the docker root>
//! C  <json name> <json state> <json health> <json exit code> <json restart count> <json image id>
//!    <json config image> <json started at> <json labels> <json oom killed>
//! M  <json image id> <json repo digests>
//! F  <sha256>  <path>                                     (sha256sum's own line format)
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::shell::quote;

/// The first line of the probe's output; anything else means the script did not run.
pub const PROBE_HEADER: &str = "keystone-probe 1";

/// Every container Keystone starts carries this label; the probe looks only at those.
pub const REPLICA_LABEL: &str = "keystone.replica";
pub const ENVIRONMENT_LABEL: &str = "keystone.environment";

const CONTAINER_FORMAT: &str = "C\t{{json .Name}}\t{{json .State.Status}}\t{{if .State.Health}}{{json .State.Health.Status}}{{else}}null{{end}}\t{{json .State.ExitCode}}\t{{json .RestartCount}}\t{{json .Image}}\t{{json .Config.Image}}\t{{json .State.StartedAt}}\t{{json .Config.Labels}}\t{{json .State.OOMKilled}}";
const IMAGE_FORMAT: &str = "M\t{{json .Id}}\t{{json .RepoDigests}}";
const INFO_FORMAT: &str = "{{json .ServerVersion}}\t{{json .DockerRootDir}}";

/// The script that probes one server: Docker's version and data root, the free disk there, every
/// Keystone-labelled container and the images they run, and the SHA-256 of `files` (the files
/// Keystone wrote there). Every interpolated value is quoted.
pub fn probe_script(files: &[String]) -> String {
    // Three independent parts run at once (the Docker CLI calls dominate a round), each into
    // its own file of a private temp dir, printed together at the end.
    const TEMPLATE: &str = r#"set -u
echo HEADER
tab=$(printf '\t')
t=$(mktemp -d 2>/dev/null || mktemp -d -t keystone-probe.XXXXXX) || { echo 'E	mktemp failed'; exit 0; }
trap 'rm -rf -- "$t"' EXIT
(
  if info=$(docker info --format INFO 2>/dev/null); then
    printf 'I\t%s\n' "$info"
    root=${info#*"$tab"}; root=${root#\"}; root=${root%\"}
    [ -n "$root" ] && df -Pk -- "$root" 2>/dev/null | awk 'NR==2 {print "D\t" $4}'
  else
    err=$(docker info --format INFO 2>&1 >/dev/null | tail -n 1)
    printf 'E\t%s\n' "${err:-docker info failed}"
  fi
) >"$t/i" 2>/dev/null &
(
  ids=$(docker ps -aq --no-trunc --filter LABEL) && [ -n "$ids" ] || exit 0
  docker inspect --format CONTAINERS $ids >"$t/c" || exit 0
  imgs=$(cut -f7 "$t/c" | tr -d '"' | sort -u)
  [ -n "$imgs" ] && docker image inspect --format IMAGES $imgs
) >"$t/m" 2>/dev/null &
FILES
wait
cat -- "$t/i" "$t/c" "$t/m" "$t/f" 2>/dev/null
exit 0
"#;
    let files = if files.is_empty() {
        String::new()
    } else {
        let mut f = String::from("(sha256sum --");
        for p in files {
            f.push(' ');
            f.push_str(&quote(p));
        }
        f.push_str(" | sed 's/^/F\\t/') >\"$t/f\" 2>/dev/null &");
        f
    };
    TEMPLATE
        .replace("HEADER", &quote(PROBE_HEADER))
        .replace("INFO", &quote(INFO_FORMAT))
        .replace("LABEL", &quote(&format!("label={REPLICA_LABEL}")))
        .replace("CONTAINERS", &quote(CONTAINER_FORMAT))
        .replace("IMAGES", &quote(IMAGE_FORMAT))
        .replace("FILES", &files)
}

/// What one probe of one server saw.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerFacts {
    /// `None` with `docker_error` set when the Docker engine did not answer.
    pub docker_version: Option<String>,
    pub docker_root: Option<String>,
    pub docker_error: Option<String>,
    pub disk_free_bytes: Option<u64>,
    /// By container name (without Docker's leading `/`).
    pub containers: BTreeMap<String, ContainerFacts>,
    /// Image id → the `repo@sha256:…` digests it is known by.
    pub images: BTreeMap<String, Vec<String>>,
    /// Path → SHA-256 hex, for the asked files that exist.
    pub files: BTreeMap<String, String>,
}

/// One container as `docker inspect` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerFacts {
    pub name: String,
    /// `running`, `exited`, `restarting`, `created`, `paused`, `dead`, `removing`.
    pub state: String,
    /// `healthy`, `unhealthy`, `starting`; `None` without a health check.
    pub health: Option<String>,
    pub exit_code: i64,
    pub restart_count: u32,
    /// `sha256:…` image id (the config digest).
    pub image_id: String,
    /// The reference the container was created from (`repo@sha256:…`).
    pub config_image: String,
    /// RFC 3339 with nanoseconds, as Docker writes it.
    pub started_at: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub oom_killed: bool,
}

impl ContainerFacts {
    /// Every digest the container's image is known by: the config image's pinned digest, the
    /// image's repo digests and the image id itself (local builds are pinned by id).
    pub fn digests(&self, images: &BTreeMap<String, Vec<String>>) -> Vec<String> {
        let mut out = Vec::new();
        if let Some((_, d)) = self.config_image.rsplit_once('@') {
            out.push(d.to_string());
        }
        for r in images.get(&self.image_id).into_iter().flatten() {
            if let Some((_, d)) = r.rsplit_once('@')
                && !out.iter().any(|o| o == d)
            {
                out.push(d.to_string());
            }
        }
        if !self.image_id.is_empty() && !out.contains(&self.image_id) {
            out.push(self.image_id.clone());
        }
        out
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProbeParseError {
    #[error("the probe did not run (no `{PROBE_HEADER}` line; the login shell printed: {0:?})")]
    NotRun(String),
    #[error("line {line} of the probe output is malformed: {detail}")]
    Malformed { line: usize, detail: String },
}

fn json<T: for<'de> Deserialize<'de>>(
    field: &str,
    line: usize,
    what: &str,
) -> Result<T, ProbeParseError> {
    serde_json::from_str(field).map_err(|e| ProbeParseError::Malformed {
        line,
        detail: format!("{what}: {e}"),
    })
}

/// Parse what `probe_script` printed.
pub fn parse(stdout: &str) -> Result<ServerFacts, ProbeParseError> {
    let mut lines = stdout
        .lines()
        .enumerate()
        .skip_while(|(_, l)| l.trim() != PROBE_HEADER);
    if lines.next().is_none() {
        return Err(ProbeParseError::NotRun(
            stdout
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(200)
                .collect(),
        ));
    }
    let mut facts = ServerFacts::default();
    for (i, line) in lines {
        let n = i + 1;
        let Some((tag, rest)) = line.split_once('\t') else {
            continue;
        };
        match tag {
            "I" => {
                let (v, root) =
                    rest.split_once('\t')
                        .ok_or_else(|| ProbeParseError::Malformed {
                            line: n,
                            detail: "docker info: expected version and root".into(),
                        })?;
                facts.docker_version = Some(json::<String>(v, n, "docker version")?);
                facts.docker_root = Some(json::<String>(root, n, "docker root")?);
            }
            "E" => facts.docker_error = Some(rest.trim().to_string()),
            "D" => {
                let kib: u64 = rest
                    .trim()
                    .parse()
                    .map_err(|e| ProbeParseError::Malformed {
                        line: n,
                        detail: format!("free disk {rest:?}: {e}"),
                    })?;
                facts.disk_free_bytes = Some(kib * 1024);
            }
            "C" => {
                let f: Vec<&str> = rest.split('\t').collect();
                if f.len() != 10 {
                    return Err(ProbeParseError::Malformed {
                        line: n,
                        detail: format!("container: expected 10 fields, found {}", f.len()),
                    });
                }
                let name: String = json(f[0], n, "name")?;
                let labels: Option<BTreeMap<String, String>> = json(f[8], n, "labels")?;
                let c = ContainerFacts {
                    name: name.trim_start_matches('/').to_string(),
                    state: json(f[1], n, "state")?,
                    health: json(f[2], n, "health")?,
                    exit_code: json(f[3], n, "exit code")?,
                    restart_count: json(f[4], n, "restart count")?,
                    image_id: json(f[5], n, "image")?,
                    config_image: json(f[6], n, "config image")?,
                    started_at: json::<Option<String>>(f[7], n, "started at")?
                        .filter(|s| !s.starts_with("0001-")),
                    labels: labels.unwrap_or_default(),
                    oom_killed: json(f[9], n, "oom killed")?,
                };
                facts.containers.insert(c.name.clone(), c);
            }
            "M" => {
                let (id, digests) =
                    rest.split_once('\t')
                        .ok_or_else(|| ProbeParseError::Malformed {
                            line: n,
                            detail: "image: expected id and digests".into(),
                        })?;
                let id: String = json(id, n, "image id")?;
                let digests: Option<Vec<String>> = json(digests, n, "repo digests")?;
                facts.images.insert(id, digests.unwrap_or_default());
            }
            "F" => {
                // sha256sum: `<hex>  <path>`, or `\<hex>  <escaped path>` for names with a
                // backslash or newline.
                let (escaped, body) = match rest.strip_prefix('\\') {
                    Some(b) => (true, b),
                    None => (false, rest),
                };
                let Some((hash, path)) = body.split_once("  ") else {
                    return Err(ProbeParseError::Malformed {
                        line: n,
                        detail: "file hash: expected `<sha256>  <path>`".into(),
                    });
                };
                let path = if escaped {
                    unescape(path)
                } else {
                    path.to_string()
                };
                facts.files.insert(path, hash.to_string());
            }
            _ => {}
        }
    }
    Ok(facts)
}

/// Undo sha256sum's escaping of `\` and newline in file names.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('\\') => out.push('\\'),
                Some('r') => out.push('\r'),
                Some(o) => {
                    out.push('\\');
                    out.push(o);
                }
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTAINER: &str = "C\t\"/keystone-shop_production_web-1-blue\"\t\"exited\"\tnull\t137\t0\t\"sha256:aa\"\t\"10.77.0.1:5000/acme/shop@sha256:bb\"\t\"2026-12-03T17:42:05.123456789Z\"\t{\"keystone.replica\":\"shop/production/web#1\",\"keystone.environment\":\"shop/production\"}\tfalse";

    #[test]
    fn parses_every_record() {
        let out = format!(
            "welcome\n{PROBE_HEADER}\nI\t\"20.10.24\"\t\"/var/lib/docker\"\nD\t1048576\n{CONTAINER}\nM\t\"sha256:aa\"\t[\"10.77.0.1:5000/acme/shop@sha256:bb\"]\nF\t{h}  /home/keystone/services/a b/.env\nF\t\\{h}  /home/keystone/x\\nnew\\\\line\n",
            h = "ab".repeat(32)
        );
        let f = parse(&out).unwrap();
        assert_eq!(f.docker_version.as_deref(), Some("20.10.24"));
        assert_eq!(f.docker_root.as_deref(), Some("/var/lib/docker"));
        assert_eq!(f.disk_free_bytes, Some(1024 * 1024 * 1024));
        let c = &f.containers["keystone-shop_production_web-1-blue"];
        assert_eq!(c.state, "exited");
        assert_eq!(c.health, None);
        assert_eq!(c.exit_code, 137);
        assert_eq!(c.labels[ENVIRONMENT_LABEL], "shop/production");
        assert_eq!(
            c.started_at.as_deref(),
            Some("2026-12-03T17:42:05.123456789Z")
        );
        assert_eq!(c.digests(&f.images), ["sha256:bb", "sha256:aa"]);
        assert_eq!(
            f.files.keys().collect::<Vec<_>>(),
            [
                "/home/keystone/services/a b/.env",
                "/home/keystone/x\nnew\\line"
            ]
        );
    }

    #[test]
    fn a_login_banner_without_the_header_is_not_a_probe() {
        assert_eq!(
            parse("This account is currently not available.\n"),
            Err(ProbeParseError::NotRun(
                "This account is currently not available.".into()
            ))
        );
    }

    #[test]
    fn docker_errors_and_malformed_lines() {
        let f = parse(&format!(
            "{PROBE_HEADER}\nE\tCannot connect to the Docker daemon\n"
        ))
        .unwrap();
        assert_eq!(
            f.docker_error.as_deref(),
            Some("Cannot connect to the Docker daemon")
        );
        assert_eq!(f.docker_version, None);
        let e = parse(&format!("{PROBE_HEADER}\nC\t\"x\"\n")).unwrap_err();
        assert!(
            matches!(e, ProbeParseError::Malformed { line: 2, .. }),
            "{e}"
        );
    }

    #[test]
    fn the_script_is_valid_sh_and_quotes_hostile_paths() {
        let hostile = [
            "/home/keystone/services/x/compose.yml".to_string(),
            "/srv/it's $(touch /tmp/pwned) `id`/.env".to_string(),
        ];
        let s = probe_script(&hostile);
        let check = std::process::Command::new("sh")
            .arg("-n")
            .arg("-c")
            .arg(&s)
            .status()
            .unwrap();
        assert!(check.success(), "{s}");
        assert!(
            s.contains("'/srv/it'\\''s $(touch /tmp/pwned) `id`/.env'"),
            "{s}"
        );
    }

    #[test]
    fn the_script_runs_and_parses_back_without_docker() {
        // The whole script under sh with a `docker` that fails: Docker's error is reported, and
        // the files are hashed exactly, hostile names included.
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let stub = bin.join("docker");
        std::fs::write(
            &stub,
            "#!/bin/sh\necho 'Cannot connect to the Docker daemon' >&2\nexit 1\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
        let a = dir.path().join("it's a $(file)");
        let b = dir.path().join("missing");
        std::fs::write(&a, b"hello\n").unwrap();
        let files = [a.display().to_string(), b.display().to_string()];
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(probe_script(&files))
            .env(
                "PATH",
                format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
            )
            .output()
            .unwrap();
        assert!(out.status.success());
        let f = parse(&String::from_utf8_lossy(&out.stdout)).unwrap();
        assert_eq!(
            f.docker_error.as_deref(),
            Some("Cannot connect to the Docker daemon")
        );
        assert!(f.containers.is_empty());
        use sha2::Digest;
        assert_eq!(
            f.files.get(&files[0]).map(String::as_str),
            Some(hex::encode(sha2::Sha256::digest(b"hello\n")).as_str())
        );
        assert!(!f.files.contains_key(&files[1]));
    }
}

//! The shell programs and uploads of plan steps: pure builders that return the exact script text.
//!
//! Every interpolated value goes through `shell::quote`; files and secrets travel as payloads
//! (uploads or stdin), never inside a script. Scripts start with `set -eu` so a failing command
//! fails the step.

use std::time::Duration;

use sha2::{Digest, Sha256};

use super::ops::{Payload, Step, StepAction, Target};
use crate::shell::{join, quote};

/// A payload with its safe summary and the SHA-256 of the bytes as planned.
pub fn payload(bytes: Vec<u8>, summary: impl Into<String>) -> Payload {
    Payload {
        sha256: hex::encode(Sha256::digest(&bytes)),
        bytes,
        summary: summary.into(),
    }
}

/// A `Run` step.
pub fn run(
    name: impl Into<String>,
    target: &Target,
    script: String,
    stdin: Option<Payload>,
    timeout: Duration,
    idempotent: bool,
) -> Step {
    Step {
        name: name.into(),
        target: target.clone(),
        action: StepAction::Run { script, stdin },
        timeout,
        idempotent,
        capture: None,
        on_failure: None,
    }
}

/// An `Upload` step (always idempotent: temp file + rename).
pub fn upload(
    name: impl Into<String>,
    target: &Target,
    path: String,
    mode: u32,
    contents: Payload,
) -> Step {
    Step {
        name: name.into(),
        target: target.clone(),
        action: StepAction::Upload {
            path,
            mode,
            contents,
        },
        timeout: Duration::from_secs(60),
        idempotent: true,
        capture: None,
        on_failure: None,
    }
}

/// Registry credentials as they reach a script: line 1 the user name, line 2 the password, on
/// stdin (both may be `{{secret:…}}` placeholders), read with `read -r` so they never appear in
/// a command line or the process list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryLogin {
    /// `host[:port]` as `docker login` expects it.
    pub host: String,
    /// User name: plain text or a secret placeholder.
    pub username: String,
    /// Password: plain text or a secret placeholder.
    pub password: String,
}

impl RegistryLogin {
    pub fn stdin(&self) -> Payload {
        payload(
            format!("{}\n{}\n", self.username, self.password).into_bytes(),
            format!("registry credentials for {}", self.host),
        )
    }
}

/// Lines that log in to a registry with a throw-away `DOCKER_CONFIG` (under `dir`, removed with
/// it), reading the credentials from stdin. A refused login ends with a line naming the registry.
fn login_lines(login: &RegistryLogin, docker_config: &str) -> String {
    format!(
        "mkdir -p {dc}\nexport DOCKER_CONFIG={dc}\nIFS= read -r registry_user\nIFS= read -r registry_password\nif ! docker_said=$(printf '%s\\n' \"$registry_password\" | docker login --username \"$registry_user\" --password-stdin {host} 2>&1 >/dev/null); then\n{failed}fi\nunset registry_password\n",
        dc = quote(docker_config),
        host = quote(&login.host),
        failed = registry_failure(
            &login.host,
            &format!(
                "the registry {} refused the login (Docker's message is above): check its username and password",
                login.host
            )
        ),
    )
}

/// Lines (inside an `if`) that print Docker's failed answer (`$docker_said`) to stderr, then one
/// line naming the registry: unreachable when Docker could not connect, else `otherwise`; exit 1.
fn registry_failure(host: &str, otherwise: &str) -> String {
    format!(
        "  printf '%s\\n' \"$docker_said\" >&2\n  case \"$docker_said\" in\n    *'dial tcp'*|*'no such host'*|*'i/o timeout'*|*'connection refused'*) echo {unreachable} >&2 ;;\n    *) echo {otherwise} >&2 ;;\n  esac\n  exit 1\n",
        unreachable = quote(&format!(
            "the registry {host} is unreachable from this server (Docker's message is above)"
        )),
        otherwise = quote(otherwise),
    )
}

/// What a build is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSpec {
    /// `<remote_root>/operations/<op-id>`.
    pub op_dir: String,
    /// Git URL of the application source.
    pub repo: String,
    /// The commit to build, or the ref when the commit is not known yet.
    pub revision: String,
    pub dockerfile: String,
    pub context: String,
    /// Repository without tag, e.g. `10.77.0.1:5000/acme/shop`.
    pub image: String,
    /// Whether the source is cloned with an uploaded deploy key at `<op_dir>/deploy_key`.
    pub deploy_key: bool,
    /// Push to the registry (dedicated builder) or keep the image local (local strategy).
    pub push: Option<RegistryLogin>,
}

/// The build script. Its trap removes the whole operation directory (the deploy key with it)
/// on every exit path; its last stdout line is the digest (`sha256:…`): the pushed manifest
/// digest after a push, the image id for a local build.
pub fn build_script(b: &BuildSpec) -> String {
    let src = format!("{}/src", b.op_dir);
    let key = format!("{}/deploy_key", b.op_dir);
    let mut s = String::from("set -eu\n");
    s.push_str(&format!("op_dir={}\n", quote(&b.op_dir)));
    s.push_str("trap 'rm -rf -- \"$op_dir\"' EXIT\n");
    s.push_str("mkdir -p -- \"$op_dir\"\n");
    if b.deploy_key {
        s.push_str(&format!("chmod 600 {}\n", quote(&key)));
        let ssh = join([
            "ssh",
            "-i",
            &key,
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=accept-new",
        ]);
        s.push_str(&format!("export GIT_SSH_COMMAND={}\n", quote(&ssh)));
    }
    s.push_str(&format!(
        "git clone --quiet -- {} {}\n",
        quote(&b.repo),
        quote(&src)
    ));
    s.push_str(&format!("revision={}\n", quote(&b.revision)));
    s.push_str(&format!(
        "git -C {src} checkout --quiet --detach \"$revision\" 2>/dev/null || git -C {src} checkout --quiet --detach \"origin/$revision\"\n",
        src = quote(&src)
    ));
    s.push_str(&format!(
        "commit=$(git -C {} rev-parse HEAD)\n",
        quote(&src)
    ));
    s.push_str(&format!("image={}\n", quote(&b.image)));
    s.push_str(&format!(
        "docker build --quiet --file {} --label keystone.source-commit=\"$commit\" --tag \"$image:$commit\" {} >&2\n",
        quote(&format!("{src}/{}", b.dockerfile)),
        quote(&format!("{src}/{}", b.context)),
    ));
    match &b.push {
        Some(login) => {
            s.push_str(&login_lines(login, &format!("{}/docker", b.op_dir)));
            s.push_str("docker push \"$image:$commit\" > \"$op_dir/push.log\"\n");
            s.push_str("cat \"$op_dir/push.log\" >&2\n");
            s.push_str(
                "digest=$(sed -n 's/.*digest: \\(sha256:[0-9a-f]\\{64\\}\\).*/\\1/p' \"$op_dir/push.log\" | tail -n 1)\n",
            );
            s.push_str(
                "[ -n \"$digest\" ] || { echo \"docker push printed no digest\" >&2; exit 1; }\n",
            );
            s.push_str("printf '%s\\n' \"$digest\"\n");
        }
        None => {
            s.push_str("docker image inspect --format '{{.Id}}' \"$image:$commit\"\n");
        }
    }
    s
}

/// `docker pull <reference>`, logging in first when the registry needs credentials. Its stdout
/// (the reference) passes through; its stderr is shown only when it fails, followed by a line
/// naming the registry.
pub fn pull_script(reference: &str, login: Option<&RegistryLogin>, tmp: &str) -> String {
    let mut s = String::from("set -eu\n");
    if let Some(login) = login {
        s.push_str(&format!("tmp={}\n", quote(tmp)));
        s.push_str("trap 'rm -rf -- \"$tmp\"' EXIT\n");
        s.push_str(&login_lines(login, tmp));
    }
    let host = registry_host(reference);
    s.push_str(&format!(
        "exec 3>&1\nif ! docker_said=$(docker pull --quiet {} 2>&1 >&3); then\n{}fi\n",
        quote(reference),
        registry_failure(
            host,
            &format!(
                "cannot pull {reference} from the registry {host} (Docker's message is above)"
            )
        ),
    ));
    s
}

/// The registry part of an image reference (`10.77.0.1:5000` of `10.77.0.1:5000/acme/shop@…`):
/// Docker's rule, a first component with a `.` or `:` or `localhost`; otherwise Docker Hub.
fn registry_host(reference: &str) -> &str {
    match reference.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first,
        _ => "docker.io",
    }
}

/// `docker compose <args>` for the project in `dir`, the one way Compose is driven
/// (`render::ReplicaFiles::compose_command`: from the directory, `--env-file /dev/null`).
pub fn compose(dir: &str, project: &str, args: &[&str]) -> String {
    crate::render::ReplicaFiles {
        server: String::new(),
        remote_dir: dir.to_string(),
        project: project.to_string(),
        compose_service: String::new(),
        container: String::new(),
        compose_yml: Vec::new(),
        env: Vec::new(),
        env_summary: String::new(),
        extra: Vec::new(),
    }
    .compose_command(args)
}

/// Start (or converge) a compose project from the uploaded files.
pub fn compose_up_script(dir: &str, project: &str) -> String {
    format!(
        "set -eu\n{}\n",
        compose(
            dir,
            project,
            &[
                "up",
                "--detach",
                "--no-build",
                "--pull",
                "never",
                "--remove-orphans"
            ]
        )
    )
}

/// Stop and remove a compose project, then its directory. Named volumes are kept (no `-v`).
pub fn compose_down_script(dir: &str, project: &str) -> String {
    format!(
        "set -eu\nif [ -f {file} ]; then {down}; fi\nrm -rf -- {dir}\n",
        file = quote(&format!("{dir}/compose.yml")),
        down = compose(dir, project, &["down", "--remove-orphans"]),
        dir = quote(dir),
    )
}

/// The `on_failure` of a new replica's start and health steps: `docker compose down` of its
/// project (container and network removed, named volumes kept), then one line saying so (the
/// step's error ends with it). Its files stay in `dir`, where `docker compose up` reproduces the
/// failed start; the next deploy of that slot uploads them again.
pub fn replica_clean_up_script(dir: &str, project: &str) -> String {
    format!(
        "set -eu\nif [ -f {file} ]; then {down}; fi\necho {said}\n",
        file = quote(&format!("{dir}/compose.yml")),
        down = compose(dir, project, &["down", "--remove-orphans"]),
        said = quote(&format!("stopped and removed {project}")),
    )
}

/// Stop a compose project's containers (volumes and files stay).
pub fn compose_stop_script(dir: &str, project: &str) -> String {
    format!("set -eu\n{}\n", compose(dir, project, &["stop"]))
}

/// Poll `docker inspect` until the container is healthy (or, without a health check, running),
/// for at most `timeout`; on failure print its last log lines to stderr and fail.
pub fn wait_healthy_script(container: &str, timeout: Duration) -> String {
    format!(
        r#"set -eu
container={c}
limit={t}
waited=0
while :; do
  state=$(docker inspect --format '{{{{if .State.Health}}}}health:{{{{.State.Health.Status}}}}{{{{else}}}}state:{{{{.State.Status}}}}{{{{end}}}}' "$container" 2>/dev/null || echo missing)
  case "$state" in
    health:healthy|state:running) echo "$container: $state"; exit 0 ;;
    health:unhealthy|state:exited|state:dead|missing) break ;;
  esac
  [ "$waited" -lt "$limit" ] || break
  sleep 2
  waited=$((waited + 2))
done
echo "$container is not healthy ($state) after ${{waited}}s; last log lines:" >&2
docker logs --tail 50 "$container" >&2 || true
exit 1
"#,
        c = quote(container),
        t = timeout.as_secs(),
    )
}

/// Verify a named volume exists; write its identity (name and creation time) to `record` on the
/// server (for `verify same volume`) and print it.
pub fn volume_check_script(volume: &str, record: &str) -> String {
    format!(
        "set -eu\nnow=$(docker volume inspect --format '{{{{.Name}}}} {{{{.CreatedAt}}}}' {}) || {{ echo \"named volume {} is missing\" >&2; exit 1; }}\nprintf '%s\\n' \"$now\" > {}\necho \"$now\"\n",
        quote(volume),
        volume.replace(['"', '\\', '$', '`'], "_"),
        quote(record),
    )
}

/// Compare the volume's identity with the one `volume_check_script` recorded before the update.
pub fn volume_same_script(volume: &str, record: &str) -> String {
    format!(
        "set -eu\nbefore=$(cat {})\nnow=$(docker volume inspect --format '{{{{.Name}}}} {{{{.CreatedAt}}}}' {})\n[ \"$now\" = \"$before\" ] || {{ echo \"volume changed: was $before, now $now\" >&2; exit 1; }}\necho \"same volume: $now\"\n",
        quote(record),
        quote(volume),
    )
}

/// Run a command in a one-off container of a replica's compose project (new image, new env):
/// used for driver pre-switch steps before traffic moves.
pub fn compose_run_script(dir: &str, project: &str, service: &str, argv: &[String]) -> String {
    let mut args = vec!["run", "--rm", "--no-deps", "-T", service];
    args.extend(argv.iter().map(String::as_str));
    format!("set -eu\n{}\n", compose(dir, project, &args))
}

/// Run a command inside a running container.
pub fn exec_script(container: &str, argv: &[String]) -> String {
    format!("set -eu\ndocker exec {} {}\n", quote(container), join(argv))
}

/// Create the route (JSON on stdin) unless the gateway already has an object with `@id`
/// `route_id`; idempotent.
pub fn caddy_create_route_script(admin: &str, route_id: &str, routes_path: &str) -> String {
    format!(
        r#"set -eu
admin={admin}
if curl --silent --fail --output /dev/null "$admin/id/"{id}; then
  echo "route "{id}" exists"
else
  curl --silent --show-error --fail-with-body --request POST --header 'Content-Type: application/json' --data-binary @- "$admin"{routes}
fi
"#,
        admin = quote(admin),
        id = quote(route_id),
        routes = quote(routes_path),
    )
}

/// Wait until none of `addresses` has requests in flight through the gateway (they are absent
/// from `/reverse_proxy/upstreams` or show `num_requests: 0`), for at most `timeout`; past it
/// the cutover goes on and says so.
pub fn caddy_drain_script(admin: &str, addresses: &[String], timeout: Duration) -> String {
    let mut s = format!(
        "set -eu\nadmin={}\nlimit={}\nwaited=0\nbusy() {{\n  curl --silent --show-error --fail \"$admin/reverse_proxy/upstreams\" | tr '{{}}' '\\n\\n' | grep -F \"\\\"address\\\":\\\"$1\\\"\" | grep -Eqv '\"num_requests\":0(,|$)'\n}}\nwhile :; do\n  pending=\n",
        quote(admin),
        timeout.as_secs()
    );
    for a in addresses {
        s.push_str(&format!(
            "  if busy {a}; then pending=\"$pending \"{a}; fi\n",
            a = quote(a)
        ));
    }
    s.push_str(
        "  if [ -z \"$pending\" ]; then echo \"drained after ${waited}s\"; exit 0; fi\n  if [ \"$waited\" -ge \"$limit\" ]; then echo \"drain timeout after ${waited}s, still in flight:$pending\" >&2; exit 0; fi\n  sleep 1\n  waited=$((waited + 1))\ndone\n",
    );
    s
}

/// An HTTP health probe of an upstream, from the gateway host.
pub fn http_probe_script(url: &str, timeout: Duration) -> String {
    format!(
        "set -eu\nurl={}\nlimit={}\nwaited=0\nuntil curl --silent --fail --output /dev/null --max-time 5 \"$url\"; do\n  if [ \"$waited\" -ge \"$limit\" ]; then echo \"$url did not answer after ${{waited}}s\" >&2; exit 1; fi\n  sleep 2\n  waited=$((waited + 2))\ndone\necho \"$url answers\"\n",
        quote(url),
        timeout.as_secs(),
    )
}

/// Probe a replica's health URL on its own server until it answers 2xx, for at most `timeout`;
/// on failure print the container's last log lines to stderr and fail.
pub fn replica_probe_script(container: &str, url: &str, timeout: Duration) -> String {
    format!(
        "set -eu\ncontainer={}\nurl={}\nlimit={}\nwaited=0\nuntil curl --silent --fail --output /dev/null --max-time 5 \"$url\"; do\n  if [ \"$waited\" -ge \"$limit\" ]; then\n    echo \"$container: $url did not answer 2xx after ${{waited}}s; last log lines:\" >&2\n    docker logs --tail 50 \"$container\" >&2 || true\n    exit 1\n  fi\n  sleep 2\n  waited=$((waited + 2))\ndone\necho \"$container: $url answers\"\n",
        quote(container),
        quote(url),
        timeout.as_secs(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn sh_syntax_ok(script: &str) {
        let out = Command::new("sh")
            .arg("-n")
            .arg("-c")
            .arg(script)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}\n{script}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn hostile_build() -> BuildSpec {
        BuildSpec {
            op_dir: "/home/ks/operations/o p'1".into(),
            repo: "ssh://git@10.77.0.1:2222/srv/git/$(reboot).git".into(),
            revision: "main; rm -rf /".into(),
            dockerfile: "Docker file".into(),
            context: "`id`".into(),
            image: "10.77.0.1:5000/acme/shop".into(),
            deploy_key: true,
            push: Some(RegistryLogin {
                host: "10.77.0.1:5000".into(),
                username: "deploy".into(),
                password: "{{secret:registry.password}}".into(),
            }),
        }
    }

    #[test]
    fn build_script_traps_first_and_quotes_everything() {
        let s = build_script(&hostile_build());
        sh_syntax_ok(&s);
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[1], "op_dir='/home/ks/operations/o p'\\''1'");
        assert_eq!(lines[2], "trap 'rm -rf -- \"$op_dir\"' EXIT");
        assert!(
            s.contains("git clone --quiet -- 'ssh://git@10.77.0.1:2222/srv/git/$(reboot).git' ")
        );
        assert!(s.contains("revision='main; rm -rf /'\n"));
        assert!(s.contains("docker push \"$image:$commit\""));
        assert!(!s.contains("{{secret:"), "secrets travel on stdin only");
    }

    #[test]
    fn a_failed_pull_or_login_names_the_registry() {
        // Run the pull script against a fake docker that fails the way Docker does.
        let dir = tempfile::tempdir().unwrap();
        let docker = dir.path().join("docker");
        std::fs::write(&docker, "#!/bin/sh\necho \"$FAKE_DOCKER\" >&2\nexit 1\n").unwrap();
        std::fs::set_permissions(&docker, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let credentials = dir.path().join("credentials");
        std::fs::write(&credentials, "u\np\n").unwrap();
        let run = |script: &str, said: &str| {
            let out = Command::new("sh")
                .arg("-c")
                .arg(script)
                .env("PATH", format!("{}:/usr/bin:/bin", dir.path().display()))
                .env("FAKE_DOCKER", said)
                .stdin(std::fs::File::open(&credentials).unwrap())
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(1));
            String::from_utf8(out.stderr).unwrap()
        };
        let refused = "Error response from daemon: Get \"http://10.77.0.1:5000/v2/\": dial tcp 10.77.0.1:5000: connect: connection refused";
        let pull = pull_script("10.77.0.1:5000/acme/shop@sha256:ab", None, "/t");
        sh_syntax_ok(&pull);
        assert_eq!(
            run(&pull, refused),
            format!(
                "{refused}\nthe registry 10.77.0.1:5000 is unreachable from this server (Docker's message is above)\n"
            )
        );
        assert_eq!(
            run(&pull, "manifest unknown"),
            "manifest unknown\ncannot pull 10.77.0.1:5000/acme/shop@sha256:ab from the registry 10.77.0.1:5000 (Docker's message is above)\n"
        );
        let tmp = dir.path().join("login");
        let login = RegistryLogin {
            host: "10.77.0.1:5000".into(),
            username: "u".into(),
            password: "p".into(),
        };
        let with_login = pull_script(
            "10.77.0.1:5000/acme/shop@sha256:ab",
            Some(&login),
            tmp.to_str().unwrap(),
        );
        sh_syntax_ok(&with_login);
        assert_eq!(
            run(
                &with_login,
                "Error response from daemon: login attempt to http://10.77.0.1:5000/v2/ failed with status: 401 Unauthorized"
            ),
            "Error response from daemon: login attempt to http://10.77.0.1:5000/v2/ failed with status: 401 Unauthorized\nthe registry 10.77.0.1:5000 refused the login (Docker's message is above): check its username and password\n"
        );
        assert!(!tmp.exists());
        assert_eq!(registry_host("acme/shop:1"), "docker.io");
        assert_eq!(registry_host("localhost/shop:1"), "localhost");
        assert_eq!(registry_host("ghcr.io/o/r@sha256:x"), "ghcr.io");
    }

    #[test]
    fn local_build_does_not_push() {
        let mut b = hostile_build();
        b.push = None;
        b.deploy_key = false;
        let s = build_script(&b);
        sh_syntax_ok(&s);
        assert!(!s.contains("docker push"));
        assert!(!s.contains("docker login"));
        assert!(!s.contains("GIT_SSH_COMMAND"));
    }

    #[test]
    fn git_ssh_command_survives_a_hostile_key_path() {
        // The value is parsed twice: by our shell (export) and by git's `sh -c`.
        let mut b = hostile_build();
        b.op_dir = "/tmp/a b'$(id)".into();
        let s = build_script(&b);
        let line = s
            .lines()
            .find(|l| l.starts_with("export GIT_SSH_COMMAND="))
            .unwrap();
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("{line}\nprintf '%s' \"$GIT_SSH_COMMAND\""))
            .output()
            .unwrap();
        let value = String::from_utf8(out.stdout).unwrap();
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("set -- {value}; printf '%s|' \"$@\""))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            "ssh|-i|/tmp/a b'$(id)/deploy_key|-o|IdentitiesOnly=yes|-o|StrictHostKeyChecking=accept-new|"
        );
    }

    #[test]
    fn every_script_parses() {
        let t = Duration::from_secs(30);
        sh_syntax_ok(&pull_script(
            "r/a@{{digest:shop}}",
            Some(&hostile_build().push.unwrap()),
            "/tmp/x y",
        ));
        sh_syntax_ok(&compose_up_script("/a b", "p'q"));
        sh_syntax_ok(&compose_down_script("/a b", "p'q"));
        sh_syntax_ok(&replica_clean_up_script("/a b", "p'q$(id)"));
        sh_syntax_ok(&wait_healthy_script("c'$(id)", t));
        sh_syntax_ok(&replica_probe_script(
            "c'$(id)",
            "http://127.0.0.1:1/u p'",
            t,
        ));
        sh_syntax_ok(&volume_check_script("keystone_service_x_data", "/a b/v'"));
        sh_syntax_ok(&volume_same_script("v", "/a b/v'"));
        sh_syntax_ok(&compose_run_script(
            "/d",
            "p",
            "web",
            &["php".into(), "a b".into()],
        ));
        sh_syntax_ok(&caddy_create_route_script(
            "http://127.0.0.1:2019",
            "a'b",
            "/config/x",
        ));
        sh_syntax_ok(&caddy_drain_script(
            "http://127.0.0.1:2019",
            &["10.0.0.1:1".into(), "x'y".into()],
            t,
        ));
        sh_syntax_ok(&http_probe_script("http://10.0.0.1:1/up", t));
    }

    #[test]
    fn wait_healthy_reports_a_missing_container_with_its_logs() {
        let s = wait_healthy_script("keystone-no-such-container-x", Duration::from_secs(0));
        assert!(s.contains("docker logs --tail 50 \"$container\""));
        assert!(s.contains("{{if .State.Health}}health:{{.State.Health.Status}}"));
    }

    #[test]
    fn drain_treats_absent_or_idle_upstreams_as_drained() {
        // Run the drain loop's check against canned admin answers through a fake curl.
        let dir = tempfile::tempdir().unwrap();
        let curl = dir.path().join("curl");
        std::fs::write(&curl, "#!/bin/sh\ncat \"$FAKE_UPSTREAMS\"\n").unwrap();
        std::fs::set_permissions(&curl, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let answers = dir.path().join("answers.json");
        let script = caddy_drain_script(
            "http://127.0.0.1:2019",
            &["10.0.0.1:8081".into(), "10.0.0.2:8081".into()],
            Duration::from_secs(0),
        );
        let run = |json: &str| {
            std::fs::write(&answers, json).unwrap();
            let out = Command::new("sh")
                .arg("-c")
                .arg(&script)
                .env("PATH", format!("{}:/usr/bin:/bin", dir.path().display()))
                .env("FAKE_UPSTREAMS", &answers)
                .output()
                .unwrap();
            (
                String::from_utf8(out.stdout).unwrap(),
                String::from_utf8(out.stderr).unwrap(),
            )
        };
        let (out, _) = run(
            r#"[{"address":"10.0.0.3:8081","num_requests":4,"fails":0},{"address":"10.0.0.1:8081","num_requests":0,"fails":0}]"#,
        );
        assert_eq!(out, "drained after 0s\n");
        let (_, err) = run(r#"[{"address":"10.0.0.2:8081","num_requests":2,"fails":0}]"#);
        assert_eq!(
            err,
            "drain timeout after 0s, still in flight: 10.0.0.2:8081\n"
        );
    }
}

//! Registry credentials against a real registry that requires them: a `docker-registry` with
//! htpasswd (bcrypt) on loopback, the machine's own Docker engine (127.0.0.0/8 is an insecure
//! registry by default) and the scripts and digest resolver Keystone uses.
//!
//! - the pull script logs in with the credentials read from stdin, pulls by digest, and removes
//!   its throw-away DOCKER_CONFIG (which holds the login token) on exit;
//! - a wrong password fails the step with the registry's 401 (docker login's stderr is shown when
//!   it fails, and only then), and the password appears in neither the script, its output nor the
//!   error;
//! - the HTTP digest resolver (external_registry) answers the basic challenge with the
//!   credentials and resolves the tag to the digest `docker push` printed; wrong or missing
//!   credentials are an error that says to check them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keystone::execute::{
    DigestResolver, HttpDigestResolver, LocalTransport, Output, Redactor, RegistryAccess, Transport,
};
use keystone::plan::Target;
use keystone::plan::script::{RegistryLogin, pull_script};

const USER: &str = "ci-bot";
/// Quotes, a command substitution, spaces and a semicolon: survives `read -r`, stdin and
/// basic auth, and must never show up anywhere.
const PASSWORD: &str = "p'a\"ss $(touch /tmp/pwned) w;rd";

fn need(bin: &str, package: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {bin}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{bin} is missing: install {package} (scripts/setup.d/05-peers.sh does)"
    );
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    assert!(out.status.success(), "{cmd:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// The registry process and what the test put in the machine's Docker engine, removed however
/// the test ends.
struct Registry {
    child: Child,
    host: String,
    images: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        for image in &self.images {
            let _ = Command::new("docker")
                .args(["image", "rm", "--force", image])
                .output();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_registry() -> Registry {
    need("docker-registry", "docker-registry");
    need("htpasswd", "apache2-utils");
    need("docker", "Docker");
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = run(Command::new("htpasswd").args(["-Bbn", USER, PASSWORD]));
    std::fs::write(dir.path().join("htpasswd"), htpasswd).unwrap();
    let port = free_port();
    let host = format!("127.0.0.1:{port}");
    let config = format!(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {data}\nhttp:\n  addr: {host}\nauth:\n  htpasswd:\n    realm: keystone-test\n    path: {auth}\n",
        data = dir.path().join("data").display(),
        auth = dir.path().join("htpasswd").display(),
    );
    std::fs::write(dir.path().join("config.yml"), config).unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(dir.path().join("config.yml"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
        .spawn()
        .expect("start docker-registry");
    let registry = Registry {
        child,
        host,
        images: Vec::new(),
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let code = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("http://{}/v2/", registry.host))
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        if code == "401" {
            return registry;
        }
        assert!(
            Instant::now() < deadline,
            "the registry did not come up (last answer {code:?})"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A one-file image (`/busybox`) imported into the machine's engine and pushed with a login made
/// by the test itself; returns `repository@digest` as the registry serves it.
fn push_image(registry: &mut Registry, work: &Path) -> (String, String) {
    let repository = format!("{}/keystone-test/auth", registry.host);
    let tag = format!("{repository}:1");
    let root = work.join("root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::copy("/bin/busybox", root.join("busybox")).unwrap();
    let tar = work.join("root.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg("."));
    run(Command::new("docker").args(["import"]).arg(&tar).arg(&tag));
    registry.images.push(tag.clone());
    let config = work.join("setup-docker-config");
    let mut login = Command::new("docker")
        .env("DOCKER_CONFIG", &config)
        .args([
            "login",
            "--username",
            USER,
            "--password-stdin",
            &registry.host,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    login
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{PASSWORD}\n").as_bytes())
        .unwrap();
    assert!(login.wait().unwrap().success(), "test setup: docker login");
    let pushed = run(Command::new("docker")
        .env("DOCKER_CONFIG", &config)
        .args(["push", &tag]));
    let digest = pushed
        .split_whitespace()
        .skip_while(|w| *w != "digest:")
        .nth(1)
        .expect("docker push prints the digest")
        .to_string();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{digest}"
    );
    // Pulls below must come from the registry, not from the engine's store.
    run(Command::new("docker").args(["image", "rm", &tag]));
    registry.images.push(format!("{repository}@{digest}"));
    (repository, digest)
}

async fn pull(reference: &str, login: &RegistryLogin, tmp: &Path) -> (Option<i32>, String, String) {
    // (exit code, stdout, stdout and stderr interleaved)
    let script = pull_script(reference, Some(login), tmp.to_str().unwrap());
    assert!(
        !script.contains(PASSWORD),
        "the password is not in the script"
    );
    let mut out = Output::new(Redactor::new(), |_, _| {});
    let code = LocalTransport
        .run(
            &Target::Local,
            &script,
            Some(&login.stdin().bytes),
            Duration::from_secs(60),
            &mut out,
        )
        .await
        .expect("sh runs");
    (code, out.stdout.text(), out.combined.text())
}

fn login(host: &str, password: &str) -> RegistryLogin {
    RegistryLogin {
        host: host.to_string(),
        username: USER.to_string(),
        password: password.to_string(),
    }
}

fn resolver(host: &str, username: Option<&str>, password: Option<&str>) -> HttpDigestResolver {
    HttpDigestResolver::new(BTreeMap::from([(
        "private".to_string(),
        RegistryAccess {
            host: host.to_string(),
            insecure: true,
            username: username.map(str::to_string),
            password: password.map(str::to_string),
        },
    )]))
}

#[tokio::test]
async fn credentials_reach_a_registry_that_requires_them_and_nowhere_else() {
    let mut registry = start_registry();
    let work = tempfile::tempdir().unwrap();
    let (repository, digest) = push_image(&mut registry, work.path());
    let host = registry.host.clone();
    let reference = format!("{repository}@{digest}");

    // The digest resolver (external_registry): the tag resolves to what was pushed.
    let resolved = resolver(&host, Some(USER), Some(PASSWORD))
        .resolve(&format!("{repository}:1"), Some("private"))
        .await;
    assert_eq!(resolved.as_deref(), Ok(digest.as_str()));
    let resolve = |user: Option<&'static str>, password: Option<&'static str>| {
        let (host, repository) = (host.clone(), repository.clone());
        async move {
            resolver(&host, user, password)
                .resolve(&format!("{repository}:1"), Some("private"))
                .await
        }
    };
    assert_eq!(
        resolve(Some(USER), Some("wrong")).await,
        Err(format!(
            "registry {host} refused access to keystone-test/auth (401 Unauthorized): check the registry's username and password"
        ))
    );
    assert_eq!(
        resolve(None, None).await,
        Err(format!(
            "registry {host} needs credentials: set username and password in its registries/ file"
        ))
    );

    // A wrong password: the pull step fails with the registry's answer, the password nowhere.
    let tmp: PathBuf = work.path().join("op-wrong");
    let (code, stdout, stderr) = pull(&reference, &login(&host, "not-the-password"), &tmp).await;
    eprintln!("[registry] a wrong password, as the step shows it:\n{stderr}");
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("401 Unauthorized") || stderr.contains("unauthorized"),
        "{stderr}"
    );
    assert!(!stdout.contains("not-the-password") && !stderr.contains("not-the-password"));
    assert!(!tmp.exists(), "the throw-away DOCKER_CONFIG is removed");
    let inspect = Command::new("docker")
        .args(["image", "inspect", &reference])
        .output()
        .unwrap();
    assert!(!inspect.status.success(), "nothing was pulled");

    // The right password: logged in from stdin, pulled by digest, the login token removed.
    let tmp = work.path().join("op-right");
    let (code, stdout, stderr) = pull(&reference, &login(&host, PASSWORD), &tmp).await;
    assert_eq!(code, Some(0), "stdout: {stdout}\nstderr: {stderr}");
    assert!(!stdout.contains(PASSWORD) && !stderr.contains(PASSWORD));
    // Only what `docker pull --quiet` printed: not docker login's warning that the throw-away
    // config.json holds the token unencrypted.
    assert_eq!(stderr, format!("{reference}\n"));
    assert_eq!(stdout, format!("{reference}\n"));
    assert!(
        !tmp.exists(),
        "the DOCKER_CONFIG with the login token is removed"
    );
    let id = run(Command::new("docker").args([
        "image",
        "inspect",
        "--format",
        "{{index .RepoDigests 0}}",
        &reference,
    ]));
    assert_eq!(id.trim(), reference);
    assert!(
        !Path::new("/tmp/pwned").exists(),
        "the hostile password was never run as a command"
    );
}

//! Health and drift on the real lab (issue 10): the probe over real ssh and Docker, and the daemon
//! keeping the status branch true between deploys — a killed replica, self-heal, a replica
//! replaced by hand, an orphan container, a host cut off and restored, quiet rounds that add no
//! commit. Every test here changes lab hosts, so each holds the lab's deploy lock throughout.

mod deploy_lab;
mod engine_lab;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deploy_lab::{Deployment, ROOT, lab_env, lab_script, lock, reset_hosts, ssh_ok};
use keystone::execute::{Redactor, SshSettings, Transports};
use keystone::health::{self, Expected, Prober, WrittenFile};
use keystone::plan::{
    Applied, AppliedAppService, AppliedEnvironment, AppliedImage, AppliedReplica,
};
use keystone::status::{EnvironmentStatus, Health, ServerStatus, SyncState};

fn docker_run(host: &str, args: &str) -> String {
    ssh_ok(host, &format!("docker run {args}"))
        .trim()
        .to_string()
}

fn base_image() -> (String, String) {
    let env = lab_env();
    (
        env["images"]["base"]["pinned"]
            .as_str()
            .unwrap()
            .to_string(),
        env["images"]["base"]["digest"]
            .as_str()
            .unwrap()
            .to_string(),
    )
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// One round of the real probe over the four lab hosts and a server that does not answer:
/// every fact it reports is checked against what Docker says on the host.
#[tokio::test(flavor = "multi_thread")]
async fn one_probe_round_over_the_lab_hosts() {
    let _lab = lock();
    let lab = engine_lab::lab();
    reset_hosts();
    let (image, digest) = base_image();
    // probe/test web#1 on web-1 exits with 3; web#2 on web-2 runs; an orphan on web-1.
    let labels =
        |r: &str| format!("--label keystone.replica={r} --label keystone.environment=probe/test");
    docker_run(
        "web-1",
        &format!(
            "-d --name keystone-probe_test_web-1-blue {} {image} sh -c 'exit 3' && docker wait keystone-probe_test_web-1-blue",
            labels("probe/test/web#1")
        ),
    );
    docker_run(
        "web-2",
        &format!(
            "-d --name keystone-probe_test_web-2-blue {} {image} sleep 600",
            labels("probe/test/web#2")
        ),
    );
    docker_run(
        "web-1",
        &format!(
            "-d --name keystone-probe-orphan {} {image} sleep 600",
            labels("probe/test/web#9")
        ),
    );
    let dir1 = "/home/keystone/services/probe_test_web-1-blue";
    let dir2 = "/home/keystone/services/probe_test_web-2-blue";
    ssh_ok(
        "web-1",
        &format!("mkdir -p {dir1} && printf 'name: x\\n' > {dir1}/compose.yml"),
    );
    ssh_ok(
        "web-2",
        &format!("mkdir -p {dir2} && printf 'A=1\\n' > {dir2}/.env"),
    );

    let replica = |index: u32, server: &str| AppliedReplica {
        index,
        server: server.into(),
        slot: "blue".into(),
        container: format!("keystone-probe_test_web-{index}-blue"),
        project: format!("keystone-probe_test_web-{index}-blue"),
        host_port: None,
        digest: digest.clone(),
        env_fingerprint: None,
    };
    let mut applied = Applied::default();
    applied.environments.insert(
        "probe/test".into(),
        AppliedEnvironment {
            config_commit: "c".into(),
            image: Some(AppliedImage {
                repository: "10.77.0.1:5000/standin/base".into(),
                digest: digest.clone(),
            }),
            services: [(
                "web".to_string(),
                AppliedAppService {
                    driver: "laravel".into(),
                    replicas: vec![replica(1, "web-1"), replica(2, "web-2")],
                },
            )]
            .into(),
            ..Default::default()
        },
    );
    let written: health::WrittenFiles = [
        (
            ("web-1".to_string(), format!("{dir1}/compose.yml")),
            WrittenFile {
                sha256: sha256_hex(b"name: x\n"),
                mode: 0o644,
            },
        ),
        (
            ("web-2".to_string(), format!("{dir2}/.env")),
            WrittenFile {
                sha256: sha256_hex(b"A=2\n"),
                mode: 0o600,
            },
        ),
    ]
    .into();
    let expected = Expected::from_applied(&applied, &written, "/home/keystone");

    let mut servers: Vec<_> = ["build-1", "web-1", "web-2", "db-1"]
        .iter()
        .map(|h| lab.server(h))
        .collect();
    servers.push(engine_lab::unreachable_server("gone-1"));
    let names: Vec<String> = servers.iter().map(|s| s.name.clone()).collect();
    let work = tempfile::tempdir().unwrap();
    let transport = Arc::new(Transports::new(
        servers,
        SshSettings::new(work.path(), &lab.client_key),
    ));
    let prober = Prober::new(transport, Redactor::new());
    let timeout = Duration::from_secs(3);
    let round = prober
        .round(&names, &expected.files_by_server(), timeout)
        .await;
    eprintln!("[health] first round (connecting) took {:.0?}", round.took);
    assert!(
        round.took < timeout + Duration::from_secs(1),
        "{:?}",
        round.took
    );
    let a = health::assess(&expected, &round.servers);

    for h in ["build-1", "web-1", "web-2", "db-1"] {
        let s = &a.servers[h];
        let version = ssh_ok(h, "docker version --format '{{.Server.Version}}'");
        assert!(s.reachable, "{h}: {s:?}");
        assert_eq!(s.docker_version.as_deref(), Some(version.trim()), "{h}");
        let free: u64 = ssh_ok(
            h,
            "df -Pk \"$(docker info --format '{{.DockerRootDir}}')\" | awk 'NR==2 {print $4}'",
        )
        .trim()
        .parse()
        .unwrap();
        let probed = s.disk_free_bytes.unwrap() / 1024;
        assert!(
            probed.abs_diff(free) < 64 * 1024,
            "{h}: free {free} KiB, probed {probed} KiB"
        );
    }
    let gone = &a.servers["gone-1"];
    assert!(!gone.reachable);
    assert!(
        gone.error
            .as_deref()
            .unwrap()
            .contains("cannot connect to gone-1"),
        "{gone:?}"
    );

    let web1 = a.replicas.iter().find(|r| r.expected.index == 1).unwrap();
    assert_eq!(
        (web1.health, web1.sync),
        (Health::Degraded, SyncState::OutOfSync)
    );
    assert_eq!(web1.exit_code, Some(3));
    assert_eq!(web1.message.as_deref(), Some("container exited (3)"));
    assert_eq!(web1.running_digest, None, "it runs the applied digest");
    let web2 = a.replicas.iter().find(|r| r.expected.index == 2).unwrap();
    assert_eq!(
        (web2.health, web2.sync),
        (Health::Healthy, SyncState::OutOfSync)
    );
    assert_eq!(
        web2.drift.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
        [format!("file {dir2}/.env changed since Keystone wrote it")]
    );
    assert_eq!(web2.restart_count, Some(0));
    assert!(web2.started.is_some());
    assert_eq!(
        a.servers["web-1"]
            .orphans
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>(),
        [
            "orphan container keystone-probe-orphan (running, keystone.replica=probe/test/web#9, keystone.environment=probe/test) that no applied plan knows"
        ]
    );
    assert!(a.servers["web-2"].orphans.is_empty());

    // Warm rounds over the kept connections.
    let mut took = Vec::new();
    for _ in 0..5 {
        let r = prober
            .round(&names[..4], &expected.files_by_server(), timeout)
            .await;
        assert!(r.servers.values().all(|s| s.is_ok()), "{:?}", r.servers);
        took.push(r.took);
    }
    eprintln!("[health] warm rounds over 4 hosts: {took:?}");
    reset_hosts();
}

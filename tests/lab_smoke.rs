//! The lab itself (scripts/lab, docs/lab.md): four hosts reachable over ssh with pinned keys, each
//! with its own engine, image store and home; the registry reachable from every host; an image
//! pushed on the builder pulled by digest elsewhere; the app source cloned with the deploy key.

#[path = "support/lab.rs"]
mod lab;

use std::collections::BTreeSet;
use std::process::Command;

use lab::{Lab, nonce};

const HOSTS: [(&str, &str); 4] = [
    ("build-1", "10.77.0.11"),
    ("web-1", "10.77.0.12"),
    ("web-2", "10.77.0.13"),
    ("db-1", "10.77.0.14"),
];

#[test]
fn hosts_have_the_agreed_names_addresses_and_roles() {
    let lab = Lab::get();
    let got: Vec<(&str, &str)> = lab
        .hosts
        .iter()
        .map(|h| (h.name.as_str(), h.address.as_str()))
        .collect();
    assert_eq!(got, HOSTS);
    assert_eq!(lab.host("web-1").roles, ["web", "worker", "gateway"]);
    assert_eq!(lab.registry, "10.77.0.1:5000");
    assert_eq!(lab.git.url, "ssh://git@10.77.0.1:2222/srv/git/shop.git");
    for h in &lab.hosts {
        assert_eq!((h.port, h.user.as_str()), (22, "keystone"));
        assert!(
            h.host_key.starts_with("ssh-ed25519 AAAA"),
            "{}: {}",
            h.name,
            h.host_key
        );
    }
}

#[test]
fn ssh_with_the_pinned_host_key_works_on_every_host() {
    let lab = Lab::get();
    let dir = tempfile::tempdir().unwrap();
    for h in &lab.hosts {
        // A known_hosts holding only this host's pinned key.
        let kh = dir.path().join(format!("known_hosts-{}", h.name));
        std::fs::write(&kh, format!("{} {}\n", h.address, h.host_key)).unwrap();
        let out = lab
            .ssh_command_with(&h.name, &kh)
            .arg("echo \"$(hostname) $(id -un) $SHELL $HOME\"")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            h.name,
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{} keystone /bin/sh /home/keystone\n", h.name)
        );
    }
}

#[test]
fn a_changed_host_key_is_refused_and_nothing_runs() {
    let lab = Lab::get();
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .status()
        .unwrap();
    assert!(st.success());
    let other_pub = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    let other_key: Vec<&str> = other_pub.split_whitespace().take(2).collect();
    let web1 = lab.host("web-1");
    let kh = dir.path().join("known_hosts");
    std::fs::write(&kh, format!("{} {}\n", web1.address, other_key.join(" "))).unwrap();

    let marker = format!("refused-{}", nonce());
    let out = lab
        .ssh_command_with("web-1", &kh)
        .arg(format!("touch ~/{marker}"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "stderr: {stderr}");
    assert!(
        stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
            || stderr.contains("Host key verification failed"),
        "stderr: {stderr}"
    );
    // The command never ran.
    assert_eq!(
        lab.ssh(
            "web-1",
            &format!("test -e ~/{marker} && echo ran || echo absent")
        ),
        "absent\n"
    );
}

#[test]
fn every_host_has_its_own_docker_engine_with_compose() {
    let lab = Lab::get();
    let mut ids = BTreeSet::new();
    for h in &lab.hosts {
        let info = lab.ssh(
            &h.name,
            "docker info --format '{{.ID}}|{{.Name}}|{{.DockerRootDir}}' && docker compose version --short",
        );
        let mut lines = info.lines();
        let fields: Vec<&str> = lines.next().unwrap().split('|').collect();
        assert_eq!(fields[1], h.name, "{info}");
        assert_eq!(
            fields[2],
            lab.state_dir
                .join("hosts")
                .join(&h.name)
                .join("docker")
                .display()
                .to_string()
        );
        assert!(
            ids.insert(fields[0].to_owned()),
            "engine ID {} seen twice",
            fields[0]
        );
        assert_eq!(
            lines.next(),
            Some("2.40.3"),
            "docker compose v2 on {}",
            h.name
        );
    }
    assert_eq!(ids.len(), 4);
}

#[test]
fn homes_and_tmp_are_private_to_each_host() {
    let lab = Lab::get();
    let n = nonce();
    lab.ssh(
        "web-1",
        &format!("echo web-1 > ~/private-{n} && echo web-1 > /tmp/private-{n}"),
    );
    let probe = format!(
        "for f in ~/private-{n} /tmp/private-{n}; do test -e $f && cat $f || echo absent; done"
    );
    assert_eq!(lab.ssh("web-1", &probe), "web-1\nweb-1\n");
    assert_eq!(lab.ssh("web-2", &probe), "absent\nabsent\n");
    assert_eq!(lab.ssh("build-1", &probe), "absent\nabsent\n");
    lab.ssh("web-1", &format!("rm -f ~/private-{n} /tmp/private-{n}"));
}

#[test]
fn the_registry_answers_on_every_host() {
    let lab = Lab::get();
    for h in &lab.hosts {
        let out = lab.ssh(
            &h.name,
            "curl -s -o /dev/null -w '%{http_code}' http://10.77.0.1:5000/v2/",
        );
        assert_eq!(out, "200", "registry from {}", h.name);
    }
}

#[test]
fn an_image_pushed_on_build_1_is_pulled_by_digest_on_web_2() {
    let lab = Lab::get();
    let n = nonce();
    let repo = format!("{}/labtest/smoke-{n}", lab.registry);
    let base = lab.image("base");
    let push = lab.ssh(
        "build-1",
        &format!(
            "set -e; d=$(mktemp -d); echo {n} > $d/nonce; \
             printf 'FROM {base}\\nCOPY nonce /nonce\\n' > $d/Dockerfile; \
             docker build -q -t {repo}:v1 $d >/dev/null 2>&1; rm -rf $d; \
             docker push {repo}:v1 | sed -n 's/.*digest: \\(sha256:[0-9a-f]*\\).*/\\1/p'"
        ),
    );
    let digest = push.trim().to_owned();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "push printed {push:?}"
    );

    // The registry serves that digest for the tag.
    let (code, head, _) = lab::http(
        "HEAD",
        &lab.registry,
        &format!("/v2/labtest/smoke-{n}/manifests/v1"),
        &[(
            "Accept",
            "application/vnd.docker.distribution.manifest.v2+json",
        )],
    );
    assert_eq!(code, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("docker-content-digest: {digest}")),
        "{head}"
    );

    // web-2's store does not have it until it pulls by digest.
    let absent = lab.ssh_output("web-2", &format!("docker image inspect {repo}:v1"), None);
    assert!(!absent.status.success(), "web-2 already had {repo}:v1");
    let pinned = format!("{repo}@{digest}");
    lab.ssh("web-2", &format!("docker pull -q {pinned} >/dev/null"));
    let digests = lab.ssh(
        "web-2",
        &format!("docker image inspect --format '{{{{json .RepoDigests}}}}' {pinned}"),
    );
    assert_eq!(digests.trim(), format!("[\"{pinned}\"]"));
    let content = lab.ssh("web-2", &format!("docker run --rm {pinned} cat /nonce"));
    assert_eq!(content, format!("{n}\n"));
    // Other hosts' stores stay untouched.
    let web1 = lab.ssh_output("web-1", &format!("docker image inspect {pinned}"), None);
    assert!(
        !web1.status.success(),
        "web-1 has {pinned} without pulling it"
    );

    lab.ssh("web-2", &format!("docker rmi -f {pinned} >/dev/null"));
    lab.ssh("build-1", &format!("docker rmi -f {repo}:v1 >/dev/null"));
}

#[test]
fn the_app_source_clones_on_build_1_with_the_deploy_key() {
    let lab = Lab::get();
    let n = nonce();
    let key = std::fs::read(&lab.git.deploy_key).unwrap();
    let upload = lab.ssh_output(
        "build-1",
        &format!("umask 077 && cat > ~/deploy-key-{n}"),
        Some(&key),
    );
    assert!(
        upload.status.success(),
        "{}",
        String::from_utf8_lossy(&upload.stderr)
    );
    let out = lab.ssh(
        "build-1",
        &format!(
            "set -e; d=$(mktemp -d); trap 'rm -rf $d ~/deploy-key-{n}' EXIT; \
             echo '{kh}' > $d/known_hosts; \
             GIT_SSH_COMMAND=\"ssh -i ~/deploy-key-{n} -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile=$d/known_hosts\" \
             git clone -q --branch {branch} {url} $d/shop; \
             git -C $d/shop rev-parse HEAD; cat $d/shop/VERSION",
            kh = lab.git.known_hosts_line,
            branch = lab.git.branch,
            url = lab.git.url,
        ),
    );
    let version = std::fs::read_to_string(lab.repo.join("examples/app-source/VERSION")).unwrap();
    assert_eq!(out, format!("{}\n{version}", lab.git.commit));
    assert_eq!(
        lab.ssh(
            "build-1",
            &format!("test -e ~/deploy-key-{n} && echo left || echo gone")
        ),
        "gone\n"
    );
}

#[test]
fn the_git_server_refuses_a_key_it_does_not_know() {
    let lab = Lab::get();
    let dir = tempfile::tempdir().unwrap();
    let kh = dir.path().join("known_hosts");
    std::fs::write(&kh, format!("{}\n", lab.git.known_hosts_line)).unwrap();
    // The lab's client key is authorized on the hosts, not on the git server.
    let out = Command::new("git")
        .args(["ls-remote", &lab.git.url])
        .env(
            "GIT_SSH_COMMAND",
            format!(
                "ssh -i {} -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile={}",
                lab.client_key.display(),
                kh.display()
            ),
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn hosts_reach_each_other_but_have_no_route_out_of_the_lab() {
    let lab = Lab::get();
    for h in &lab.hosts {
        let others: Vec<&str> = HOSTS
            .iter()
            .map(|(_, a)| *a)
            .filter(|a| *a != h.address)
            .collect();
        let script = format!(
            "for a in {}; do timeout 3 bash -c \"exec 3<>/dev/tcp/$a/22 && head -c 4 <&3\" && echo; done; \
             ip route get 203.0.113.1 >/dev/null 2>&1 && echo routed || echo contained",
            others.join(" ")
        );
        assert_eq!(
            lab.ssh(&h.name, &script),
            "SSH-\nSSH-\nSSH-\ncontained\n",
            "from {}",
            h.name
        );
    }
}

#[test]
fn pin_rewrites_the_host_keys_of_lab_servers_only() {
    let lab = Lab::get();
    let dir = tempfile::tempdir().unwrap();
    let servers = dir.path().join("servers");
    std::fs::create_dir(&servers).unwrap();
    let placeholder =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPLACEHOLDERPLACEHOLDERPLACEHOLDERPLACEH";
    std::fs::write(
        servers.join("web-2.yaml"),
        format!("host: 10.77.0.13\nport: 22\nuser: keystone\nhost_key: \"{placeholder}\"\nroles: [web, worker]\n"),
    )
    .unwrap();
    std::fs::write(
        servers.join("build-1.yml"),
        "host: \"10.77.0.11\"\nroles: [builder]\n",
    )
    .unwrap();
    let elsewhere = format!("host: 127.0.0.1\nhost_key: \"{placeholder}\"\n");
    std::fs::write(servers.join("other.yaml"), &elsewhere).unwrap();

    let out = Command::new(lab.repo.join("scripts/lab"))
        .arg("pin")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(servers.join("web-2.yaml")).unwrap(),
        format!(
            "host: 10.77.0.13\nport: 22\nuser: keystone\nhost_key: \"{}\"\nroles: [web, worker]\n",
            lab.host("web-2").host_key
        )
    );
    assert_eq!(
        std::fs::read_to_string(servers.join("build-1.yml")).unwrap(),
        format!(
            "host: \"10.77.0.11\"\nroles: [builder]\nhost_key: \"{}\"\n",
            lab.host("build-1").host_key
        )
    );
    assert_eq!(
        std::fs::read_to_string(servers.join("other.yaml")).unwrap(),
        elsewhere
    );
}

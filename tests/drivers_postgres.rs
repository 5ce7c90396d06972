//! The Postgres slice SQL against a real PostgreSQL 15 (Debian `postgresql`, installed by
//! scripts/setup.d/05-peers.sh): run twice with a hostile database name; the role logs in with its
//! password and owns its database.

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use keystone::drivers::Sensitive;
use keystone::drivers::postgres18::slice_sql;

const BIN: &str = "/usr/lib/postgresql/15/bin";

fn as_postgres(args: &[&str]) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).args(args);
    c
}

fn run(mut c: Command, stdin: Option<&str>) -> String {
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect(
        "runuser and PostgreSQL 15 binaries must be installed (scripts/setup.d/05-peers.sh)",
    );
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{c:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

struct Cluster {
    data: String,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = as_postgres(&[
            &format!("{BIN}/pg_ctl"),
            "-D",
            &self.data,
            "-m",
            "immediate",
            "stop",
        ])
        .output();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn slice_sql_is_idempotent_survives_hostile_names_and_the_role_owns_its_database() {
    assert!(
        Path::new(BIN).join("initdb").exists(),
        "PostgreSQL 15 missing: run scripts/setup.d/05-peers.sh"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let data = dir.path().join("data").to_str().unwrap().to_string();
    let sock = dir.path().to_str().unwrap().to_string();
    run(
        as_postgres(&[
            &format!("{BIN}/initdb"),
            "-D",
            &data,
            "-U",
            "keystone_admin",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
        ]),
        None,
    );
    let port = free_port().to_string();
    let opts = format!("-p {port} -k {sock} -c listen_addresses=127.0.0.1");
    let _cluster = Cluster { data: data.clone() };
    run(
        as_postgres(&[
            &format!("{BIN}/pg_ctl"),
            "-D",
            &data,
            "-o",
            &opts,
            "-w",
            "-l",
            &format!("{sock}/log"),
            "start",
        ]),
        None,
    );

    let database = "sh'op\"; DROP DATABASE postgres; -- $x \\gexec :v ünï";
    let role = "r'o\"le \\ $1";
    let password = "pa'ss\"wo\\rd $x";
    let sql = slice_sql(database, role, &Sensitive::new(password)).unwrap();
    let psql = |db: &str| {
        as_postgres(&[
            &format!("{BIN}/psql"),
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            &sock,
            "-p",
            &port,
            "-U",
            "keystone_admin",
            "-d",
            db,
        ])
    };
    run(psql("postgres"), Some(&sql));
    run(psql("postgres"), Some(&sql));

    let check = format!(
        "SELECT d.datname || '|' || r.rolname || '|' || r.rolcanlogin FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba WHERE d.datname = {};",
        keystone::drivers::postgres18::quote_literal(database)
    );
    let mut c = psql("postgres");
    c.args(["-A", "-t"]);
    assert_eq!(
        run(c, Some(&check)).trim(),
        format!("{database}|{role}|true")
    );
    // postgres still exists (the hostile name injected nothing).
    let mut c = psql("postgres");
    c.args(["-A", "-t"]);
    assert_eq!(
        run(
            c,
            Some("SELECT count(*) FROM pg_database WHERE datname = 'postgres';")
        )
        .trim(),
        "1"
    );

    // The role logs in over TCP with its password (scram) and can create in its own database.
    let mut login = Command::new(format!("{BIN}/psql"));
    login
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .arg(format!(
            "host=127.0.0.1 port={port} user={} dbname={}",
            conninfo(role),
            conninfo(database)
        ))
        .env("PGPASSWORD", password);
    let out = run(login, Some("CREATE TABLE t (x int); SELECT current_user;"));
    assert_eq!(out.trim(), role);
    // A wrong password is refused.
    let mut bad = Command::new(format!("{BIN}/psql"));
    bad.args(["-X", "-c", "SELECT 1"])
        .arg(format!(
            "host=127.0.0.1 port={port} user={} dbname={}",
            conninfo(role),
            conninfo(database)
        ))
        .env("PGPASSWORD", "wrong");
    assert!(!bad.output().unwrap().status.success());
}

/// A conninfo value in single quotes with `\` and `'` escaped.
fn conninfo(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

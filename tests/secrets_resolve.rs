//! The example config repository's secrets (encrypted to the committed TEST-ONLY identity),
//! resolved through `secrets::Resolver`, and redaction end to end: a real step prints a secret;
//! what is printed and what the state database stores show `[redacted]`, never the value.

mod secrets_support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keystone::execute::{
    Event, ExecuteOptions, Executor, LocalTransport, Observer, Observers, Shutdown,
};
use keystone::model::{Origin, SecretRef};
use keystone::plan::{Children, Operation, OperationKind, Step, StepAction, Target};
use keystone::secrets::{self, Format, Identities, Redactor, Resolver, SecretsError};
use keystone::state::State;
use secrets_support::*;

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/config-repo")
}

fn test_identity() -> Identities {
    Identities::from_file(&example().join("TEST-ONLY-age-key.txt")).unwrap()
}

fn resolver() -> Resolver {
    let mut r = Resolver::new(test_identity(), Redactor::new());
    for stem in ["registry", "shop", "shop-production", "shop-staging"] {
        let path = format!("secrets/{stem}.sops.yaml");
        r.add_file(stem, &path, std::fs::read(example().join(&path)).unwrap());
    }
    r
}

fn reference(s: &str) -> SecretRef {
    let (file, path) = s.split_once('.').unwrap();
    SecretRef {
        file: file.into(),
        key_path: path.split('.').map(String::from).collect(),
        origin: Origin {
            file: "applications/shop/environments/production.yaml".into(),
            line: 7,
            column: 12,
        },
    }
}

#[test]
fn example_secret_files_hold_exactly_the_agreed_keys_and_sops_reads_them() {
    let ids = test_identity();
    let expected: [(&str, &[&str]); 4] = [
        ("registry", &["password"]),
        ("shop", &["deploy_key"]),
        ("shop-production", &["app_key", "mail_password"]),
        ("shop-staging", &["app_key"]),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (stem, keys) in expected {
        let path = example().join(format!("secrets/{stem}.sops.yaml"));
        let bytes = std::fs::read(&path).unwrap();
        let paths = secrets::key_paths(stem, &bytes, Format::Yaml).unwrap();
        let want: Vec<Vec<String>> = keys.iter().map(|k| vec![k.to_string()]).collect();
        assert_eq!(paths, want, "{stem}: key paths (read without decrypting)");
        let doc = secrets::decrypt_file(stem, &bytes, Format::Yaml, &ids).unwrap();
        assert_eq!(
            doc.recipients(),
            ids.recipients(),
            "{stem}: encrypted to the TEST-ONLY key"
        );
        let by_sops = ok(
            sops_decrypt(dir.path(), &path, &example().join("TEST-ONLY-age-key.txt")),
            "sops decrypt",
        );
        assert_eq!(
            String::from_utf8(doc.to_plaintext().unwrap()).unwrap(),
            by_sops
        );
    }
}

#[test]
fn references_resolve_to_values_and_register_them() {
    let r = resolver();
    let deploy_key = r.resolve(&reference("shop.deploy_key")).unwrap();
    assert_eq!(
        deploy_key.expose(),
        std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/lab-fixtures/TEST-ONLY-deploy_key")
        )
        .unwrap()
    );
    let app_key = r.resolve(&reference("shop-production.app_key")).unwrap();
    assert!(app_key.expose().starts_with("base64:"));
    assert_eq!(app_key.expose().len(), "base64:".len() + 44);
    assert_eq!(
        format!("{app_key} {app_key:?}"),
        "<secret> SecretValue(<redacted>)"
    );
    // Every value of a decrypted file is registered, referenced or not.
    let mail = secrets::decrypt_file(
        "x",
        &std::fs::read(example().join("secrets/shop-production.sops.yaml")).unwrap(),
        Format::Yaml,
        &test_identity(),
    )
    .unwrap();
    let mail = mail.lookup(&["mail_password".into()]).unwrap().as_text();
    let text = format!(
        "key={} mail={mail} deploy:\n{}",
        app_key.expose(),
        deploy_key.expose()
    );
    let redacted = r.redactor().redact(&text);
    assert!(
        redacted.starts_with("key=[redacted] mail=[redacted] deploy:\n[redacted]"),
        "{redacted}"
    );
    assert!(!redacted.contains(&mail) && !redacted.contains(app_key.expose()));
}

#[test]
fn reference_errors_name_the_config_location_file_and_key() {
    let r = resolver();
    let err = r.resolve(&reference("shop-production.nope")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "applications/shop/environments/production.yaml:7:12: secret `shop-production.nope`: secrets/shop-production.sops.yaml: key `nope` not found; the file has: app_key, mail_password"
    );
    assert!(matches!(err.root(), SecretsError::MissingKey { .. }));
    // The placeholder form used by execute's `{{secret:file.key}}`.
    assert_eq!(
        r.resolve_str("shop-production.app_key").unwrap(),
        r.resolve(&reference("shop-production.app_key")).unwrap()
    );
    assert_eq!(
        r.resolve_str("shop.nope").unwrap_err().to_string(),
        "{{secret:shop.nope}}: secret `shop.nope`: secrets/shop.sops.yaml: key `nope` not found; the file has: deploy_key"
    );
    let err = r.resolve(&reference("ghost.password")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "applications/shop/environments/production.yaml:7:12: secret `ghost.password`: secret file `ghost` not found: expected secrets/ghost.sops.yaml"
    );
    // The wrong identity: a clear error for every reference into the file, nothing resolved.
    let dir = tempfile::tempdir().unwrap();
    let (other, other_recipient) = keygen(dir.path(), "other");
    let mut wrong = Resolver::new(Identities::from_file(&other).unwrap(), Redactor::new());
    wrong.add_file(
        "registry",
        "secrets/registry.sops.yaml",
        std::fs::read(example().join("secrets/registry.sops.yaml")).unwrap(),
    );
    let err = wrong.resolve(&reference("registry.password")).unwrap_err();
    assert!(matches!(err.root(), SecretsError::WrongKey { .. }));
    assert!(err.to_string().ends_with(&format!(
        "secrets/registry.sops.yaml: none of the available age identities ({other_recipient}) can decrypt this file; it is encrypted to {}",
        test_identity().recipients()[0]
    )));
    assert!(wrong.redactor().is_empty());
}

/// Collects what an operator would see printed (step output events).
struct Printer(Mutex<String>);

impl Observer for Printer {
    fn on_event(&self, event: &Event<'_>) {
        if let Event::StepOutput { text, .. } = event {
            self.0.lock().unwrap().push_str(text);
        }
    }
}

#[tokio::test]
async fn a_step_printing_a_secret_is_stored_and_printed_redacted() {
    let r = resolver();
    let app_key = r.resolve(&reference("shop-production.app_key")).unwrap();
    let password = r.resolve(&reference("registry.password")).unwrap();

    // What an upload would have put on the host: a .env with the secret in it.
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join("app.env");
    std::fs::write(
        &env_file,
        format!(
            "APP_KEY={}\nREGISTRY_PASSWORD={}\n",
            app_key.expose(),
            password.expose()
        ),
    )
    .unwrap();
    let script = format!(
        "cat {}; echo \"login failed for deploy:$(sed -n 's/^REGISTRY_PASSWORD=//p' {})\" >&2",
        keystone::shell::quote(&env_file.display().to_string()),
        keystone::shell::quote(&env_file.display().to_string())
    );
    let tree = Operation {
        id: "shop/production".into(),
        kind: OperationKind::EnvironmentDeploy,
        title: "deploy shop/production".into(),
        server: None,
        steps: vec![Step {
            name: "show env".into(),
            target: Target::Local,
            action: StepAction::Run {
                script,
                stdin: None,
            },
            timeout: Duration::from_secs(20),
            idempotent: false,
            capture: None,
            on_failure: None,
        }],
        children_mode: Children::Sequential,
        children: vec![],
    };

    let state_dir = tempfile::tempdir().unwrap();
    let state = Arc::new(State::open(state_dir.path()).unwrap());
    let id = state
        .begin_execution(Some("shop/production"), Some("abc123"), &tree)
        .unwrap();
    let recorder = Arc::new(state.recorder(id));
    let printer = Arc::new(Printer(Mutex::new(String::new())));
    let redactor = r.redactor().clone();
    let exec = Executor::new(
        Arc::new(LocalTransport),
        Arc::new(Observers(vec![recorder.clone(), printer.clone()])),
        redactor,
        ExecuteOptions::default(),
    );
    exec.execute(&tree, &Shutdown::new()).await;
    recorder.finish().unwrap();

    let printed = printer.0.lock().unwrap().clone();
    let stored = state
        .execution(id)
        .unwrap()
        .unwrap()
        .operation("shop/production")
        .unwrap()
        .steps[0]
        .output
        .as_ref()
        .unwrap()
        .text();
    for text in [&printed, &stored] {
        assert!(text.contains("APP_KEY=[redacted]\n"), "{text:?}");
        assert!(text.contains("REGISTRY_PASSWORD=[redacted]\n"), "{text:?}");
        assert!(
            text.contains("login failed for deploy:[redacted]\n"),
            "{text:?}"
        );
        assert!(!text.contains(app_key.expose()) && !text.contains(password.expose()));
    }
    // Not even the raw database files hold the values.
    drop(exec);
    drop(recorder);
    drop(state);
    for entry in std::fs::read_dir(state_dir.path()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap_or_default();
        let hay = String::from_utf8_lossy(&bytes);
        assert!(!hay.contains(app_key.expose()) && !hay.contains(password.expose()));
    }
}

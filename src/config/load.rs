//! The loader: list files, parse each one, then check every reference across files, and keep in
//! the model exactly the resources (and environments) that are valid.

use std::collections::{BTreeMap, BTreeSet};

use super::diagnostic::{Diagnostic, Scope};
use super::parse::{self, AppRefs, At, EnvRefs, ServiceRefs, role_name};
use super::read::{FileCx, NAME, NAME_RULE, did_you_mean};
use super::source::{PROJECT_FILE, RepoFiles, TOP_DIRS};
use super::yaml::{self, Pos};
use super::{LoadError, Loaded};
use crate::drivers;
use crate::model::*;

/// What kind of resource a path holds.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FileKind {
    Project,
    Server(String),
    Registry(String),
    Service(String),
    Application(String),
    Environment(String, String),
    Secret(String, SecretFormat),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SecretFormat {
    Yaml,
    Json,
    Dotenv,
}

fn yaml_stem(name: &str) -> Option<&str> {
    name.strip_suffix(".yaml")
        .or_else(|| name.strip_suffix(".yml"))
}

/// `None` for files Keystone does not read (README.md, .gitkeep, …); `Some(Err(hint))` for YAML
/// files in a place that holds no resource.
fn classify(path: &str) -> Option<Result<FileKind, &'static str>> {
    if path == PROJECT_FILE {
        return Some(Ok(FileKind::Project));
    }
    let parts: Vec<&str> = path.split('/').collect();
    let last = *parts.last()?;
    if parts[0] == "secrets" {
        if parts.len() == 2 {
            for (ext, format) in [
                (".sops.yaml", SecretFormat::Yaml),
                (".sops.yml", SecretFormat::Yaml),
                (".sops.json", SecretFormat::Json),
                (".sops.env", SecretFormat::Dotenv),
            ] {
                if let Some(stem) = last.strip_suffix(ext) {
                    return Some(Ok(FileKind::Secret(stem.to_string(), format)));
                }
            }
        }
        return yaml_stem(last).map(|_| {
            Err("secret files are `secrets/<name>.sops.yaml` (or `.sops.json`, `.sops.env`)")
        });
    }
    let stem = yaml_stem(last)?.to_string();
    Some(match (parts[0], parts.len()) {
        ("servers", 2) => Ok(FileKind::Server(stem)),
        ("registries", 2) => Ok(FileKind::Registry(stem)),
        ("services", 2) => Ok(FileKind::Service(stem)),
        ("applications", 3) if stem == "application" => {
            Ok(FileKind::Application(parts[1].to_string()))
        }
        ("applications", 4) if parts[2] == "environments" => {
            Ok(FileKind::Environment(parts[1].to_string(), stem))
        }
        ("applications", _) => Err(
            "application files are `applications/<app>/application.yaml` and `applications/<app>/environments/<env>.yaml`",
        ),
        _ => Err("resource files sit directly in their directory, e.g. `servers/web-1.yaml`"),
    })
}

/// The scope an error in a file of this kind blocks.
fn scope_of(kind: &FileKind) -> Scope {
    match kind {
        FileKind::Application(app) => Scope::Application { app: app.clone() },
        FileKind::Environment(app, env) => Scope::Environment {
            app: app.clone(),
            env: env.clone(),
        },
        _ => Scope::Project,
    }
}

struct ParsedEnv {
    file: String,
    env: Environment,
    refs: EnvRefs,
}

#[derive(Default)]
struct State {
    diags: Vec<Diagnostic>,
    project: Option<Project>,
    servers: BTreeMap<String, Server>,
    registries: BTreeMap<String, Registry>,
    services: BTreeMap<String, (SharedService, ServiceRefs, String)>,
    applications: BTreeMap<String, (Application, AppRefs, String)>,
    environments: Vec<ParsedEnv>,
    secret_files: BTreeMap<String, SecretFile>,
    /// Names whose file exists but did not parse: references to them are not reported again,
    /// but whatever references them is left out of the model.
    broken: BTreeSet<(&'static str, String)>,
    /// Applications and environments whose own files parsed but which may not enter the model.
    invalid_apps: BTreeSet<String>,
    invalid_envs: BTreeSet<(String, String)>,
}

impl State {
    fn error(
        &mut self,
        file: &str,
        pos: Pos,
        scope: Scope,
        code: &'static str,
        message: String,
        hint: Option<String>,
    ) {
        self.diags.push(Diagnostic {
            file: file.to_string(),
            line: pos.line,
            column: pos.column,
            code,
            message,
            hint,
            scope,
        });
    }
}

pub fn load(files: &dyn RepoFiles) -> Result<Loaded, LoadError> {
    let mut st = State::default();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut texts: BTreeMap<String, String> = BTreeMap::new();
    let mut app_dirs: BTreeSet<String> = BTreeSet::new();

    // Read every file first (in path order), parse the YAML ones in parallel, then read them
    // into the model in path order again: results and diagnostics do not depend on threads.
    let mut read: Vec<(String, FileKind)> = Vec::new();
    let paths = files.files()?;
    for link in files.links() {
        // Only links where a config file could be: a linked README is nobody's business.
        if link != PROJECT_FILE && !TOP_DIRS.contains(&link.as_str()) && classify(&link).is_none() {
            continue;
        }
        st.error(
            &link,
            Pos::START,
            Scope::Project,
            "symlink",
            format!(
                "`{link}` is a symbolic link; Keystone reads only regular files and directories"
            ),
            Some(
                "replace it with a copy of what it points to (a link is not followed: in a \
                 commit it could point anywhere, and its file would be silently left out)"
                    .into(),
            ),
        );
    }
    for path in paths {
        let Some(kind) = classify(&path) else {
            continue;
        };
        let kind = match kind {
            Ok(k) => k,
            Err(hint) => {
                st.error(
                    &path,
                    Pos::START,
                    Scope::Project,
                    "unexpected-file",
                    format!("`{path}` is not a place for a config file"),
                    Some(hint.into()),
                );
                continue;
            }
        };
        let bytes = files.read(&path)?;
        let text = match String::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                // Where the first byte that is not UTF-8 is: line and column (in characters).
                let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
                let good = std::str::from_utf8(good).unwrap_or_default();
                let line = good.matches('\n').count() as u32 + 1;
                let column = good.rsplit('\n').next().unwrap_or("").chars().count() as u32 + 1;
                st.error(
                    &path,
                    Pos { line, column },
                    scope_of(&kind),
                    "invalid-encoding",
                    format!("`{path}` is not UTF-8 text: the byte here is not UTF-8"),
                    Some("save the file as UTF-8".into()),
                );
                mark_broken(&mut st, &kind);
                continue;
            }
        };
        if let FileKind::Application(app) | FileKind::Environment(app, _) = &kind {
            app_dirs.insert(app.clone());
        }
        texts.insert(path.clone(), text);
        read.push((path, kind));
    }
    let yaml_texts: Vec<Option<&str>> = read
        .iter()
        .map(|(path, kind)| is_yaml(kind).then(|| texts[path].as_str()))
        .collect();
    let mut parsed = parse_all(&yaml_texts).into_iter();
    for (path, kind) in &read {
        let node = parsed.next().flatten();
        read_file(&mut st, path, kind, &texts[path], node, &mut seen);
    }

    // An application directory with environments but no application.yaml.
    for app in &app_dirs {
        if !st.applications.contains_key(app) && !st.broken.contains(&("application", app.clone()))
        {
            let first_env = st
                .environments
                .iter()
                .find(|e| &e.env.app == app)
                .map(|e| e.file.clone())
                .or_else(|| {
                    st.diags
                        .iter()
                        .find(|d| d.file.starts_with(&format!("applications/{app}/")))
                        .map(|d| d.file.clone())
                });
            if let Some(file) = first_env {
                st.error(
                    &file,
                    Pos::START,
                    Scope::Application { app: app.clone() },
                    "missing-file",
                    format!("application `{app}` has no application.yaml"),
                    Some(format!(
                        "add `applications/{app}/application.yaml` with `source` and `build`"
                    )),
                );
            }
            st.invalid_apps.insert(app.clone());
        }
    }

    check_project(&mut st);
    check_applications(&mut st);
    check_environments(&mut st);
    check_valkey_capacity(&mut st);
    check_domains(&mut st);

    let model = assemble(&mut st);
    let mut diagnostics = st.diags;
    diagnostics.sort_by(|a, b| {
        (&a.file, a.line, a.column, a.code).cmp(&(&b.file, b.line, b.column, b.code))
    });
    diagnostics.dedup();
    let sources = texts
        .into_iter()
        .filter(|(p, _)| diagnostics.iter().any(|d| &d.file == p))
        .collect();
    Ok(Loaded {
        model,
        diagnostics,
        sources,
    })
}

fn mark_broken(st: &mut State, kind: &FileKind) {
    match kind {
        FileKind::Server(n) => {
            st.broken.insert(("server", n.clone()));
        }
        FileKind::Registry(n) => {
            st.broken.insert(("registry", n.clone()));
        }
        FileKind::Service(n) => {
            st.broken.insert(("service", n.clone()));
        }
        FileKind::Secret(n, _) => {
            st.broken.insert(("secret", n.clone()));
        }
        FileKind::Application(a) => {
            st.broken.insert(("application", a.clone()));
            st.invalid_apps.insert(a.clone());
        }
        FileKind::Environment(a, e) => {
            st.invalid_envs.insert((a.clone(), e.clone()));
        }
        FileKind::Project => {}
    }
}

fn resource_name(kind: &FileKind) -> Option<(&'static str, &str)> {
    Some(match kind {
        FileKind::Server(n) => ("server", n),
        FileKind::Registry(n) => ("registry", n),
        FileKind::Service(n) => ("service", n),
        FileKind::Application(n) => ("application", n),
        FileKind::Environment(_, n) => ("environment", n),
        FileKind::Secret(n, _) => ("secret file", n),
        FileKind::Project => return None,
    })
}

/// Whether the file is read through the YAML parser (everything but JSON and dotenv secrets).
fn is_yaml(kind: &FileKind) -> bool {
    !matches!(
        kind,
        FileKind::Secret(_, SecretFormat::Json | SecretFormat::Dotenv)
    )
}

type Parsed = Result<yaml::Node, yaml::SyntaxError>;

/// `yaml::parse` of each text (`None` entries are skipped), on the available cores, results in
/// input order.
fn parse_all(texts: &[Option<&str>]) -> Vec<Option<Parsed>> {
    crate::parallel::map(texts.to_vec(), |t| t.map(yaml::parse))
}

fn read_file(
    st: &mut State,
    path: &str,
    kind: &FileKind,
    text: &str,
    parsed: Option<Parsed>,
    seen: &mut BTreeMap<String, String>,
) {
    let scope = scope_of(kind);
    // Names: the file stem (and the application directory) must be a valid, unique name.
    if let Some((what, name)) = resource_name(kind) {
        let mut bad = Vec::new();
        if let FileKind::Environment(app, _) = kind
            && !NAME.is_match(app)
        {
            bad.push(("application", app.as_str()));
        }
        if !NAME.is_match(name) {
            bad.push((what, name));
        }
        if !bad.is_empty() {
            for (what, name) in bad {
                st.error(
                    path,
                    Pos::START,
                    scope.clone(),
                    "bad-name",
                    format!("`{name}` is not a valid {what} name"),
                    Some(format!("{NAME_RULE}; rename the file or directory")),
                );
            }
            mark_broken(st, kind);
            return;
        }
        let key = format!("{kind:?}");
        if let Some(first) = seen.get(&key) {
            st.error(
                path,
                Pos::START,
                scope,
                "duplicate-name",
                format!("{what} `{name}` is defined twice: here and in `{first}`"),
                Some("keep one of the two files".into()),
            );
            mark_broken(st, kind);
            return;
        }
        seen.insert(key, path.to_string());
    }

    if let FileKind::Secret(stem, SecretFormat::Json | SecretFormat::Dotenv) = kind {
        let json = matches!(kind, FileKind::Secret(_, SecretFormat::Json));
        let key_paths = if json {
            match serde_json::from_str::<serde_json::Value>(text) {
                Ok(v) => {
                    let mut out = Vec::new();
                    parse::secret_key_paths_json(&v, &mut Vec::new(), &mut out);
                    out
                }
                Err(e) => {
                    st.error(
                        path,
                        Pos {
                            line: e.line().max(1) as u32,
                            column: e.column().max(1) as u32,
                        },
                        Scope::Project,
                        "json-syntax",
                        format!("invalid JSON: {e}"),
                        None,
                    );
                    mark_broken(st, kind);
                    return;
                }
            }
        } else {
            parse::secret_key_paths_env(text)
        };
        let encrypted = if json {
            serde_json::from_str::<serde_json::Value>(text)
                .is_ok_and(|v| v.get("sops").is_some_and(|m| m.is_object()))
        } else {
            text.lines().any(|l| l.starts_with("sops_version="))
        };
        if !encrypted {
            st.error(
                path,
                Pos::START,
                Scope::Project,
                "not-encrypted",
                not_encrypted_message(path),
                Some(not_encrypted_hint(path)),
            );
            mark_broken(st, kind);
            return;
        }
        st.secret_files.insert(
            stem.clone(),
            SecretFile {
                stem: stem.clone(),
                path: path.to_string(),
                key_paths,
            },
        );
        return;
    }

    let node = match parsed.unwrap_or_else(|| yaml::parse(text)) {
        Ok(n) => n,
        Err(e) => {
            let (code, hint) = if e.duplicate_key {
                (
                    "duplicate-key",
                    Some("remove one of the two keys".to_string()),
                )
            } else {
                ("yaml-syntax", None)
            };
            st.error(path, e.pos, scope, code, e.message, hint);
            mark_broken(st, kind);
            return;
        }
    };

    let mut diags = std::mem::take(&mut st.diags);
    let mut cx = FileCx::new(path, scope, &mut diags).with_source(text);
    match kind {
        FileKind::Project => {
            st.project = Some(parse::project(&mut cx, &node));
        }
        FileKind::Server(name) => {
            if let Some(s) = parse::server(&mut cx, name, &node)
                && !cx.failed
            {
                st.servers.insert(name.clone(), s);
            }
        }
        FileKind::Registry(name) => {
            if let Some(r) = parse::registry(&mut cx, name, &node)
                && !cx.failed
            {
                st.registries.insert(name.clone(), r);
            }
        }
        FileKind::Service(name) => {
            if let Some((s, refs)) = parse::shared_service(&mut cx, name, &node)
                && !cx.failed
            {
                st.services
                    .insert(name.clone(), (s, refs, path.to_string()));
            }
        }
        FileKind::Application(name) => {
            if let Some((a, refs)) = parse::application(&mut cx, name, &node)
                && !cx.failed
            {
                st.applications
                    .insert(name.clone(), (a, refs, path.to_string()));
            }
        }
        FileKind::Environment(app, name) => {
            if let Some((env, refs)) = parse::environment(&mut cx, app, name, &node) {
                st.environments.push(ParsedEnv {
                    file: path.to_string(),
                    env,
                    refs,
                });
            }
        }
        FileKind::Secret(stem, _) => {
            let mut key_paths = Vec::new();
            parse::secret_key_paths_yaml(&node, &mut Vec::new(), &mut key_paths);
            match &node.kind {
                yaml::Kind::Map(entries) => {
                    let has_metadata = entries
                        .iter()
                        .any(|(k, v)| k.name == "sops" && matches!(v.kind, yaml::Kind::Map(_)));
                    if !has_metadata {
                        cx.error(
                            node.pos,
                            "not-encrypted",
                            not_encrypted_message(path),
                            Some(not_encrypted_hint(path)),
                        );
                    }
                }
                _ => cx.error(
                    node.pos,
                    "wrong-type",
                    format!("`{path}` must be a mapping of keys (a SOPS file)"),
                    Some("create it with `sops encrypt` or `keystone secrets set`".into()),
                ),
            }
            if !cx.failed {
                st.secret_files.insert(
                    stem.clone(),
                    SecretFile {
                        stem: stem.clone(),
                        path: path.to_string(),
                        key_paths,
                    },
                );
            }
        }
    }
    let failed = cx.failed;
    st.diags = diags;
    if failed {
        mark_broken(st, kind);
    }
}

// ---------------------------------------------------------------------------------------------
// Cross-file checks

/// Outcome of resolving a reference.
enum Resolved {
    Ok,
    /// The target's file exists but is broken: already reported; the referrer is not valid.
    Broken,
    Missing,
}

fn resolve<T>(st: &State, kind: &'static str, map: &BTreeMap<String, T>, name: &str) -> Resolved {
    if map.contains_key(name) {
        Resolved::Ok
    } else if st.broken.contains(&(kind, name.to_string())) {
        Resolved::Broken
    } else {
        Resolved::Missing
    }
}

fn names_hint<'a>(word: &str, names: impl IntoIterator<Item = &'a String>, dir: &str) -> String {
    let names: Vec<&str> = names.into_iter().map(String::as_str).collect();
    if names.is_empty() {
        return format!("there are none: add a file under {dir}/");
    }
    let known = names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ");
    match did_you_mean(word, names.iter().copied()) {
        Some(m) => format!("did you mean `{m}`? known: {known}"),
        None => format!("known: {known}"),
    }
}

fn not_encrypted_message(path: &str) -> String {
    format!("`{path}` has no `sops` metadata: it is not encrypted, its values are plaintext")
}

fn not_encrypted_hint(path: &str) -> String {
    format!(
        "encrypt it with `keystone secrets encrypt -i {path}` (recipients from keystone.yaml); \
         values already committed in plaintext are in the git history: rotate them"
    )
}

/// Checks one secret reference; returns whether it resolves.
fn check_secret(st: &mut State, r: &SecretRef, scope: Scope) -> bool {
    let pos = Pos {
        line: r.origin.line,
        column: r.origin.column,
    };
    match st.secret_files.get(&r.file) {
        Some(file) => {
            if file.key_paths.iter().any(|p| p == &r.key_path) {
                return true;
            }
            let hint = match parse::closest_key(&r.key_path, file) {
                Some(k) => format!("did you mean `{}.{k}`?", r.file),
                None if r.key_path.first().is_some_and(|k| k == "sops") => {
                    "`sops` holds the file's SOPS metadata, not secrets; refer to another key"
                        .into()
                }
                None => format!(
                    "add it with `keystone secrets set {} {} VALUE`",
                    file.path,
                    r.key_path.join(".")
                ),
            };
            let msg = format!(
                "secret `{}` does not exist: `{}` has no key `{}`",
                r.display_path(),
                file.path,
                r.key_path.join(".")
            );
            st.error(
                &r.origin.file,
                pos,
                scope,
                "unknown-secret-key",
                msg,
                Some(hint),
            );
            false
        }
        None if st.broken.contains(&("secret", r.file.clone())) => false,
        None => {
            let hint = match did_you_mean(&r.file, st.secret_files.keys().map(String::as_str)) {
                Some(m) => format!("did you mean `{m}`?"),
                None => format!(
                    "create it: write the plaintext to `secrets/{0}.sops.yaml`, then `keystone secrets encrypt -i secrets/{0}.sops.yaml`",
                    r.file
                ),
            };
            st.error(
                &r.origin.file,
                pos,
                scope,
                "unknown-secret-file",
                format!(
                    "secret `{}` refers to `secrets/{}.sops.yaml`, which does not exist",
                    r.display_path(),
                    r.file
                ),
                Some(hint),
            );
            false
        }
    }
}

fn check_project(st: &mut State) {
    // Registry credentials.
    let refs: Vec<(String, SecretRef)> = st
        .registries
        .values()
        .flat_map(|r| {
            [&r.username, &r.password]
                .into_iter()
                .flatten()
                .filter_map(|v| match v {
                    Value::Secret(s) => Some((r.name.clone(), s.clone())),
                    Value::Plain(_) => None,
                })
                .collect::<Vec<_>>()
        })
        .collect();
    for (name, r) in refs {
        if !check_secret(st, &r, Scope::Project) {
            st.registries.remove(&name);
            st.broken.insert(("registry", name));
        }
    }

    // Shared services: their servers exist.
    let mut bad_services = Vec::new();
    for (name, (_, refs, file)) in &st.services {
        for s in &refs.servers {
            match resolve(st, "server", &st.servers, &s.value) {
                Resolved::Ok => {}
                Resolved::Broken => bad_services.push((name.clone(), None)),
                Resolved::Missing => {
                    bad_services.push((name.clone(), Some((file.clone(), s.pos, s.value.clone()))))
                }
            }
        }
    }
    for (name, report) in bad_services {
        if let Some((file, pos, server)) = report {
            let hint = names_hint(&server, st.servers.keys(), "servers");
            st.error(
                &file,
                pos,
                Scope::Project,
                "unknown-server",
                format!("service `{name}` runs on server `{server}`, which does not exist"),
                Some(hint),
            );
        }
        st.services.remove(&name);
        st.broken.insert(("service", name));
    }

    // Host ports published on each server: a shared service's `port` (or its driver's default
    // ports) and its `admin_port`.
    let mut taken: BTreeMap<(String, u16), (String, Pos)> = BTreeMap::new();
    let mut collisions = Vec::new();
    for (name, (svc, refs, file)) in &st.services {
        let mut ports: Vec<(u16, Pos)> = match svc.port {
            Some(p) => vec![(p, refs.port_pos)],
            None => drivers::get(&svc.driver)
                .map(|d| {
                    d.default_ports()
                        .iter()
                        .map(|p| (*p, refs.port_pos))
                        .collect()
                })
                .unwrap_or_default(),
        };
        if let (Some(p), Some(pos)) = (svc.admin_port, refs.admin_port_pos) {
            ports.push((p, pos));
        }
        for server in &svc.servers {
            for (port, pos) in &ports {
                match taken.get(&(server.clone(), *port)) {
                    // The same declaration seen again (a default port listed twice).
                    Some((other, other_pos)) if other == name && other_pos == pos => {}
                    Some((other, _)) => collisions.push((
                        file.clone(),
                        *pos,
                        name.clone(),
                        other.clone(),
                        server.clone(),
                        *port,
                    )),
                    None => {
                        taken.insert((server.clone(), *port), (name.clone(), *pos));
                    }
                }
            }
        }
    }
    for (file, pos, name, other, server, port) in collisions {
        st.error(
            &file,
            pos,
            Scope::Project,
            "port-collision",
            if name == other {
                format!("service `{name}` publishes port {port} on server `{server}` twice")
            } else {
                format!(
                    "service `{name}` publishes port {port} on server `{server}`, which service `{other}` already publishes"
                )
            },
            Some(format!("give `{name}` another `port:` or move it to another server")),
        );
        st.services.remove(&name);
        st.broken.insert(("service", name));
    }
}

fn check_applications(st: &mut State) {
    let apps: Vec<String> = st.applications.keys().cloned().collect();
    for name in apps {
        let (app, refs, file) = &st.applications[&name];
        let (app, file) = (app.clone(), file.clone());
        let registry = refs.registry.clone();
        let strategy_pos = refs.strategy_pos;
        let scope = Scope::Application { app: name.clone() };
        let mut ok = true;
        if let Some(Value::Secret(r)) = &app.source.deploy_key {
            ok &= check_secret(st, r, scope.clone());
        }
        if let Some(At { value: reg, pos }) = &registry {
            match resolve(st, "registry", &st.registries, reg) {
                Resolved::Ok => {}
                Resolved::Broken => ok = false,
                Resolved::Missing => {
                    let hint = names_hint(reg, st.registries.keys(), "registries");
                    st.error(
                        &file,
                        *pos,
                        scope.clone(),
                        "unknown-registry",
                        format!(
                            "application `{name}` pushes to registry `{reg}`, which does not exist"
                        ),
                        Some(hint),
                    );
                    ok = false;
                }
            }
        }
        match app.build.strategy {
            BuildStrategy::DedicatedBuilder => {
                if !st.servers.values().any(|s| s.has_role("builder")) {
                    st.error(
                        &file,
                        strategy_pos,
                        scope.clone(),
                        "no-builder",
                        format!("application `{name}` builds on a dedicated builder, but no server has the role `builder`"),
                        Some("add `builder` to the `roles` of a server, or use `strategy: local`".into()),
                    );
                    ok = false;
                }
                if registry.is_none() {
                    st.error(
                        &file,
                        strategy_pos,
                        scope.clone(),
                        "registry-required",
                        format!("application `{name}` builds on a dedicated builder, which pushes the image to a registry, but `build.registry` is not set"),
                        Some("add `registry: <name>` (a file under registries/) to `build`".into()),
                    );
                    ok = false;
                }
            }
            BuildStrategy::ExternalRegistry if registry.is_none() => {
                st.error(
                    &file,
                    strategy_pos,
                    scope.clone(),
                    "registry-required",
                    format!("application `{name}` deploys images from an external registry, but `build.registry` is not set"),
                    Some("add `registry: <name>` (a file under registries/) to `build`".into()),
                );
                ok = false;
            }
            _ => {}
        }
        if !ok {
            st.invalid_apps.insert(name);
        }
    }
}

fn check_environments(st: &mut State) {
    let mut envs = std::mem::take(&mut st.environments);
    for pe in &mut envs {
        let ok = check_environment(st, pe);
        if !ok {
            st.invalid_envs
                .insert((pe.env.app.clone(), pe.env.name.clone()));
        }
    }
    st.environments = envs;
}

fn check_environment(st: &mut State, pe: &mut ParsedEnv) -> bool {
    let app_name = pe.env.app.clone();
    let scope = Scope::Environment {
        app: app_name.clone(),
        env: pe.env.name.clone(),
    };
    let file = pe.file.clone();
    let mut ok = true;
    let err = |st: &mut State, pos: Pos, code: &'static str, msg: String, hint: Option<String>| {
        st.error(&file, pos, scope.clone(), code, msg, hint);
    };

    // Placement: resolve every service's servers.
    for refs in &pe.refs.services {
        let svc = pe
            .env
            .services
            .get_mut(&refs.name)
            .expect("parsed together");
        let mut servers: Vec<String> = match &svc.placement {
            Placement::Servers(list) => {
                let mut out = Vec::new();
                for s in &refs.servers {
                    match resolve(st, "server", &st.servers, &s.value) {
                        Resolved::Ok => out.push(s.value.clone()),
                        Resolved::Broken => ok = false,
                        Resolved::Missing => {
                            let hint = names_hint(&s.value, st.servers.keys(), "servers");
                            err(
                                st,
                                s.pos,
                                "unknown-server",
                                format!(
                                    "service `{}` is placed on server `{}`, which does not exist",
                                    refs.name, s.value
                                ),
                                Some(hint),
                            );
                            ok = false;
                        }
                    }
                }
                if list.is_empty() && svc.replicas > 0 {
                    err(
                        st,
                        refs.placement_pos,
                        "no-server-for-replicas",
                        format!(
                            "service `{}` has {} replica(s) but its placement lists no server",
                            refs.name, svc.replicas
                        ),
                        Some(
                            "list at least one server in `placement.servers`, or set `replicas: 0`"
                                .into(),
                        ),
                    );
                    ok = false;
                }
                out
            }
            Placement::Role(role) => {
                let out: Vec<String> = st
                    .servers
                    .values()
                    .filter(|s| s.has_role(role))
                    .map(|s| s.name.clone())
                    .collect();
                let any_broken = st.broken.iter().any(|(k, _)| *k == "server");
                if out.is_empty() && any_broken {
                    ok = false;
                } else if out.is_empty() {
                    let roles: BTreeSet<&String> =
                        st.servers.values().flat_map(|s| &s.roles).collect();
                    let known = roles
                        .iter()
                        .map(|r| format!("`{r}`"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    let suggestion = did_you_mean(role, roles.iter().map(|r| r.as_str()))
                        .map(|m| format!("did you mean `{m}`? "))
                        .unwrap_or_default();
                    match refs.role_pos {
                        Some(pos) => err(
                            st,
                            pos,
                            "placement-no-server",
                            format!("service `{}` is placed on servers with role `{role}`, but no server has that role", refs.name),
                            Some(format!("{suggestion}roles in use: {known}")),
                        ),
                        None if svc.replicas > 0 => err(
                            st,
                            refs.key_pos,
                            "no-server-for-replicas",
                            format!("service `{}` has {} replica(s) but no server to run on: it has no `placement` and no server has the role `{role}`", refs.name, svc.replicas),
                            Some("add `placement: {role: <server role>}` or `placement: {servers: [<server>]}`".into()),
                        ),
                        None => {}
                    }
                    if refs.role_pos.is_some() || svc.replicas > 0 {
                        ok = false;
                    }
                }
                out
            }
        };
        servers.sort();
        svc.servers = servers;
    }

    // Scheduler.
    if let (Some(s), Some(pos)) = (&pe.env.scheduler, pe.refs.scheduler_service_pos)
        && !pe.env.services.contains_key(&s.service)
        && !pe.refs.broken_services.contains(&s.service)
    {
        let hint = app_service_hint(&s.service, &pe.env);
        err(
            st,
            pos,
            "unknown-app-service",
            format!(
                "the scheduler runs in service `{}`, which this environment does not define",
                s.service
            ),
            Some(hint),
        );
        ok = false;
    }

    // Attachments.
    for (att, refs) in pe.env.attachments.iter().zip(&pe.refs.attachments) {
        match resolve(st, "service", &st.services, &att.service) {
            Resolved::Ok => {
                let driver = &st.services[&att.service].0.driver;
                let roles = drivers::get(driver)
                    .map(|d| d.attachment_roles())
                    .unwrap_or(&[]);
                if !roles.contains(&att.role) {
                    let supported = roles
                        .iter()
                        .map(|r| format!("`{}`", role_name(*r)))
                        .collect::<Vec<_>>()
                        .join(", ");
                    err(
                        st,
                        refs.role_pos,
                        "role-not-supported",
                        format!(
                            "service `{}` (driver `{driver}`) cannot be attached as {}",
                            att.service,
                            role_name(att.role)
                        ),
                        Some(format!("`{driver}` supports: {supported}")),
                    );
                    ok = false;
                }
            }
            Resolved::Broken => ok = false,
            Resolved::Missing => {
                let hint = names_hint(&att.service, st.services.keys(), "services");
                err(
                    st,
                    refs.service_pos,
                    "unknown-service",
                    format!(
                        "attachment to service `{}`, which does not exist",
                        att.service
                    ),
                    Some(hint),
                );
                ok = false;
            }
        }
        if let (Some(target), Some(pos)) = (&att.target, refs.target_pos)
            && !pe.env.services.contains_key(target)
            && !pe.refs.broken_services.contains(target)
        {
            let hint = app_service_hint(target, &pe.env);
            err(
                st,
                pos,
                "unknown-app-service",
                format!(
                    "the gateway routes to service `{target}`, which this environment does not define"
                ),
                Some(hint),
            );
            ok = false;
        }
    }

    // Variables.
    let refs: Vec<SecretRef> = pe
        .env
        .variables
        .iter()
        .filter_map(|(_, v)| match v {
            Value::Secret(s) => Some(s.clone()),
            Value::Plain(_) => None,
        })
        .collect();
    for r in &refs {
        ok &= check_secret(st, r, scope.clone());
    }

    // Build strategy against placement.
    if let Some((app, _, _)) = st.applications.get(&app_name) {
        let build = app.build.clone();
        if build.strategy == BuildStrategy::Local {
            // The first service (in file order) whose servers bring the count above one.
            let mut used: BTreeSet<&String> = BTreeSet::new();
            let mut culprit = None;
            for refs in &pe.refs.services {
                let svc = &pe.env.services[&refs.name];
                if svc.replicas == 0 {
                    continue;
                }
                let placed: Vec<&String> = svc.servers.iter().take(svc.replicas as usize).collect();
                used.extend(placed);
                if used.len() > 1 && culprit.is_none() {
                    culprit = Some((refs.name.clone(), refs.placement_pos));
                }
            }
            if let Some((svc, pos)) = culprit {
                let servers = used
                    .iter()
                    .map(|s| format!("`{s}`"))
                    .collect::<Vec<_>>()
                    .join(", ");
                if build.registry.is_none() {
                    err(
                        st,
                        pos,
                        "registry-required",
                        format!("replicas run on several servers ({servers}; service `{svc}` adds the second), but application `{app_name}` has no registry to ship the image through"),
                        Some("set `build.strategy: dedicated_builder` and `build.registry` in the application, or place every replica on one server".into()),
                    );
                } else {
                    err(
                        st,
                        pos,
                        "local-build-multi-server",
                        format!("application `{app_name}` builds locally on the target server, but replicas run on several servers ({servers}; service `{svc}` adds the second)"),
                        Some("set `build.strategy: dedicated_builder` in the application, or place every replica on one server".into()),
                    );
                }
                ok = false;
            }
        }
    }
    ok
}

fn app_service_hint(word: &str, env: &Environment) -> String {
    let names: Vec<&str> = env.services.keys().map(String::as_str).collect();
    let known = names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ");
    match did_you_mean(word, names.iter().copied()) {
        Some(m) => format!("did you mean `{m}`? services of this environment: {known}"),
        None => format!("services of this environment: {known}"),
    }
}

/// Each environment attaching to a service whose driver has a slice limit (Valkey: one logical
/// database per (service, environment), however many roles it attaches with) takes one slot, in
/// order of application and environment, as `drivers::valkey8::allocate_indexes` assigns them to
/// a fresh service; those that do not fit are errors at the environment's first attachment.
fn check_valkey_capacity(st: &mut State) {
    let mut used: BTreeMap<String, u32> = BTreeMap::new();
    let mut order: Vec<usize> = (0..st.environments.len()).collect();
    order.sort_by(|a, b| {
        let (a, b) = (&st.environments[*a].env, &st.environments[*b].env);
        (&a.app, &a.name).cmp(&(&b.app, &b.name))
    });
    let mut errors = Vec::new();
    for i in order {
        let pe = &st.environments[i];
        let mut counted: BTreeSet<&str> = BTreeSet::new();
        for att in &pe.env.attachments {
            let Some((svc, _, _)) = st.services.get(&att.service) else {
                continue;
            };
            let Some(limit) = drivers::get(&svc.driver).and_then(|d| d.slice_limit(svc)) else {
                continue;
            };
            if !counted.insert(att.service.as_str()) {
                continue;
            }
            let n = used.entry(att.service.clone()).or_default();
            *n += 1;
            if *n > limit {
                errors.push((
                    pe.file.clone(),
                    Pos {
                        line: att.origin.line,
                        column: att.origin.column,
                    },
                    pe.env.app.clone(),
                    pe.env.name.clone(),
                    att.service.clone(),
                    limit,
                ));
            }
        }
    }
    for (file, pos, app, env, service, limit) in errors {
        st.error(
            &file,
            pos,
            Scope::Environment {
                app: app.clone(),
                env: env.clone(),
            },
            "valkey-databases-exhausted",
            format!("service `{service}` has no logical database left for environment `{app}/{env}`: all {limit} are taken by environments before it"),
            Some(format!("raise `databases:` in services/{service}.yaml, or attach another Valkey service")),
        );
        st.invalid_envs.insert((app, env));
    }
}

/// A domain is routed by one environment only (per gateway service).
fn check_domains(st: &mut State) {
    let mut owner: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut order: Vec<usize> = (0..st.environments.len()).collect();
    order.sort_by(|a, b| {
        let (a, b) = (&st.environments[*a].env, &st.environments[*b].env);
        (&a.app, &a.name).cmp(&(&b.app, &b.name))
    });
    let mut errors = Vec::new();
    for i in order {
        let pe = &st.environments[i];
        for (att, refs) in pe.env.attachments.iter().zip(&pe.refs.attachments) {
            for d in &refs.domains {
                let key = (att.service.clone(), d.value.clone());
                match owner.get(&key) {
                    Some(other) => errors.push((
                        pe.file.clone(),
                        d.pos,
                        pe.env.app.clone(),
                        pe.env.name.clone(),
                        d.value.clone(),
                        other.clone(),
                    )),
                    None => {
                        owner.insert(key, pe.env.key());
                    }
                }
            }
        }
    }
    for (file, pos, app, env, domain, other) in errors {
        st.error(
            &file,
            pos,
            Scope::Environment {
                app: app.clone(),
                env: env.clone(),
            },
            "duplicate-domain",
            format!("domain `{domain}` is already routed to environment `{other}`"),
            Some("a domain can point at one environment only; remove it here or there".into()),
        );
        st.invalid_envs.insert((app, env));
    }
}

fn assemble(st: &mut State) -> Model {
    let mut applications: BTreeMap<String, Application> = BTreeMap::new();
    for (name, (app, _, _)) in std::mem::take(&mut st.applications) {
        if !st.invalid_apps.contains(&name) {
            applications.insert(name, app);
        }
    }
    for pe in std::mem::take(&mut st.environments) {
        let key = (pe.env.app.clone(), pe.env.name.clone());
        if st.invalid_envs.contains(&key) {
            continue;
        }
        if let Some(app) = applications.get_mut(&pe.env.app) {
            app.environments.insert(pe.env.name.clone(), pe.env);
        }
    }
    Model {
        project: st.project.take().unwrap_or_else(parse::default_project),
        servers: std::mem::take(&mut st.servers),
        registries: std::mem::take(&mut st.registries),
        services: std::mem::take(&mut st.services)
            .into_iter()
            .map(|(k, (s, _, _))| (k, s))
            .collect(),
        applications,
        secret_files: std::mem::take(&mut st.secret_files),
    }
}

//! A commit of a real git repository (built with git2, read from its object database without a
//! checkout) gives exactly the diagnostics and the model of its checkout; and `keystone validate`
//! exit codes and output formats.

mod config_support;

use keystone::config;

#[test]
fn commit_and_checkout_give_the_same_result() {
    for name in [
        "several-problems",
        "one-environment-broken",
        "unexpected-file",
    ] {
        let dir = config_support::fixture(name);
        let git_dir = tempfile::tempdir().unwrap();
        let repo = config_support::commit_dir(dir.path(), git_dir.path());
        let from_dir = config::load_dir(dir.path()).unwrap();
        let from_git = config::load_rev(&repo, "main").unwrap();
        assert!(!from_dir.diagnostics.is_empty());
        assert_eq!(from_git.diagnostics, from_dir.diagnostics, "{name}");
        assert_eq!(from_git.model, from_dir.model, "{name}");
        assert_eq!(from_git.sources, from_dir.sources, "{name}");
        assert_eq!(from_git.render_diagnostics(), from_dir.render_diagnostics());
    }
}

#[test]
fn example_commit_is_valid_and_equals_the_directory() {
    let example = config_support::root().join("examples/config-repo");
    let git_dir = tempfile::tempdir().unwrap();
    let repo = config_support::commit_dir(&example, git_dir.path());
    let from_git = config::load_rev(&repo, "HEAD").unwrap();
    assert!(
        from_git.diagnostics.is_empty(),
        "{}",
        from_git.render_diagnostics()
    );
    assert_eq!(from_git.model, config::load_dir(&example).unwrap().model);
    // A bare clone has no working tree at all: the commit is still readable.
    let bare_dir = tempfile::tempdir().unwrap();
    let bare = git2::build::RepoBuilder::new()
        .bare(true)
        .clone(git_dir.path().to_str().unwrap(), bare_dir.path())
        .unwrap();
    let from_bare = config::load_rev(&bare, "refs/heads/main").unwrap();
    assert_eq!(from_bare.model, from_git.model);
}

#[test]
fn an_unknown_rev_is_a_load_error() {
    let git_dir = tempfile::tempdir().unwrap();
    let repo = config_support::commit_dir(
        &config_support::root().join("examples/config-repo"),
        git_dir.path(),
    );
    let err = config::load_rev(&repo, "no-such-branch").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("cannot resolve `no-such-branch` to a commit"),
        "{err}"
    );
}

fn keystone(args: &[&str]) -> (Option<i32>, String, String) {
    let out = assert_cmd::Command::cargo_bin("keystone")
        .unwrap()
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn validate_exit_codes_and_formats() {
    let dir = config_support::fixture("unknown-registry");
    let path = dir.path().to_str().unwrap();

    let (code, stdout, _) = keystone(&["validate", "--repo", path]);
    assert_eq!(code, Some(1));
    assert_eq!(
        stdout,
        "applications/shop/application.yaml:5:13: error[unknown-registry]: application `shop` pushes to registry `mian`, which does not exist
  |
5 |   registry: mian
  |             ^
  = hint: did you mean `main`? known: `main`

invalid: 1 error
"
    );

    let (code, stdout, _) = keystone(&["validate", "--repo", path, "--format", "json"]);
    assert_eq!(code, Some(1));
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        json,
        serde_json::json!([{
            "file": "applications/shop/application.yaml",
            "line": 5,
            "column": 13,
            "code": "unknown-registry",
            "message": "application `shop` pushes to registry `mian`, which does not exist",
            "hint": "did you mean `main`? known: `main`"
        }])
    );

    // The same through a commit.
    let git_dir = tempfile::tempdir().unwrap();
    config_support::commit_dir(dir.path(), git_dir.path());
    let (code, stdout2, _) = keystone(&[
        "validate",
        "--repo",
        git_dir.path().to_str().unwrap(),
        "--rev",
        "main",
        "--format",
        "json",
    ]);
    assert_eq!(code, Some(1));
    assert_eq!(stdout2, stdout);

    // Valid: exit 0 and `[]`.
    let example = config_support::root().join("examples/config-repo");
    let (code, stdout, _) = keystone(&[
        "validate",
        "--repo",
        example.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_eq!((code, stdout.as_str()), (Some(0), "[]\n"));

    // Usage and I/O errors: exit 2.
    let (code, _, stderr) = keystone(&["validate", "--repo", "/nonexistent/keystone-config"]);
    assert_eq!(code, Some(2));
    assert_eq!(
        stderr,
        "error: /nonexistent/keystone-config is not a directory\n"
    );
    let (code, _, stderr) = keystone(&["validate", "--repo", path, "--rev", "main"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "error: {path} is not the top directory of a git repository (--rev, --base and \
             --head read commits from it): could not find repository at '{path}'\n"
        )
    );
    let (code, _, _) = keystone(&["validate", "--format", "yaml"]);
    assert_eq!(code, Some(2));
}

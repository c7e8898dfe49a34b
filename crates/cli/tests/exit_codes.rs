//! Exit codes CI can trust: a command line that can't be understood exits 64 (EX_USAGE) for every
//! command, never 2, which means "changes pending" for `plan` and "not Ready" for `status`.

use hippo_gitops_testkit as common;

use common::run_binary;

fn code(args: &[&str]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let (code, _, stderr) = run_binary(&args, &[], dir.path());
    (code, stderr)
}

#[test]
fn usage_errors_exit_64_for_every_command() {
    let cases: &[&[&str]] = &[
        &[],
        &["no-such-command"],
        &["--no-such-flag", "validate", "-f", "x"],
        &["validate"],
        &["validate", "-f", "x", "--no-such-flag"],
        &["plan"],
        &["plan", "-f", "x", "--output", "yaml"],
        &["reconcile", "--once"],
        &["reconcile", "--once", "-f", "x", "--interval", "soon"],
        &["reconcile", "-f", "x", "--no-such-flag"],
        &["status"],
        &["status", "-f", "x", "--output", "yaml"],
        &["sandbox", "--listen-base", "not-an-address"],
        &["bench", "--apps", "many"],
        &["schema", "extra"],
        &["completions", "tcsh"],
    ];
    for args in cases {
        let (code, stderr) = code(args);
        assert_eq!(code, 64, "{args:?}: {stderr}");
        assert!(!stderr.is_empty(), "{args:?}: the error is said on stderr");
    }
}

#[test]
fn help_and_version_exit_0() {
    for args in [
        &["--help"][..],
        &["--version"],
        &["plan", "--help"],
        &["help"],
    ] {
        assert_eq!(code(args).0, 0, "{args:?}");
    }
}

#[test]
fn a_command_that_ran_and_failed_exits_1_not_64() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.yaml"), "apiVersion: nope\n").unwrap();
    let args = vec!["validate".to_string(), "-f".into(), "bad.yaml".into()];
    let (code, _, stderr) = run_binary(&args, &[], dir.path());
    assert_eq!(code, 1, "{stderr}");
}

#[test]
fn reconcile_help_is_grouped_under_headings() {
    let dir = tempfile::tempdir().unwrap();
    let args = vec!["reconcile".to_string(), "--help".into()];
    let (code, help, _) = run_binary(&args, &[], dir.path());
    assert_eq!(code, 0);
    let headings: Vec<&str> = help
        .lines()
        .filter(|l| l.ends_with(':') && !l.starts_with(' '))
        .collect();
    for h in [
        "Deploy files:",
        "Hippo:",
        "Bindle:",
        "Nomad:",
        "Sandbox:",
        "One-shot run (--once):",
        "Output and logs:",
        "Controller:",
        "Controller: Git source:",
        "Controller: HTTP and webhooks:",
        "Controller: leader election and shutdown:",
    ] {
        assert!(headings.contains(&h), "{h} missing: {headings:?}");
    }
    // Each flag sits under its own heading, not interleaved with unrelated ones.
    let section_of = |flag: &str| -> &str {
        // Where the flag is defined (an indented line starting with it), not mentioned.
        let at = help
            .find(&format!("      {flag} "))
            .unwrap_or_else(|| panic!("{flag} missing"));
        headings
            .iter()
            .filter(|h| help.find(*h).unwrap() < at)
            .max_by_key(|h| help.find(*h).unwrap())
            .copied()
            .unwrap_or("")
    };
    assert_eq!(section_of("--hippo-url"), "Hippo:");
    assert_eq!(section_of("--bindle-signing-key"), "Bindle:");
    assert_eq!(section_of("--hippo-nomad-namespace"), "Nomad:");
    assert_eq!(section_of("--log-level"), "Output and logs:");
    assert_eq!(section_of("--git-url"), "Controller: Git source:");
    assert_eq!(
        section_of("--leader-ttl"),
        "Controller: leader election and shutdown:"
    );
    assert_eq!(section_of("--timeout"), "One-shot run (--once):");
}

#[test]
fn an_unreachable_hippo_is_named_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("app.yaml"),
        "apiVersion: hippo-gitops/v1\nkind: App\nmetadata:\n  name: a\nspec:\n  revisions:\n    - version: 1.0.0\n  channels:\n    - name: c\n      range: \"*\"\n",
    )
    .unwrap();
    // Port 1 on loopback: nothing listens, the connection is refused at once.
    let env = [
        ("HIPPO_URL", "http://127.0.0.1:1".to_string()),
        ("HIPPO_USERNAME", "u".into()),
        ("HIPPO_PASSWORD", "p".into()),
        ("BINDLE_SERVER_URL", "http://127.0.0.1:1/v1".into()),
        (
            "HIPPO_GITOPS_STATE_DIR",
            dir.path().join("state").to_string_lossy().into_owned(),
        ),
    ];
    let args: Vec<String> = ["reconcile", "--once", "-f", "app.yaml"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let (code, _, stderr) = run_binary(&args, &env, dir.path());
    assert_eq!(code, 1, "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert_eq!(
        line.matches("Connection refused").count(),
        1,
        "the cause once, not once per level of the error chain: {line}"
    );
}

//! Exit codes CI can trust: a command line that can't be understood exits 64 (EX_USAGE) for every
//! command, never 2, which means "changes pending" for `plan` and "not Ready" for `status`.

mod common;

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

//! The binary's own surface: `--version` names the git revision and the build (the tests run
//! the default build, with the sandbox); shell completions.

use std::process::Command;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hippo-gitops"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn version_names_the_package_version_and_the_git_revision() {
    let (code, out) = run(&["--version"]);
    assert_eq!(code, 0);
    let expected_rev = std::env::var("HIPPO_GITOPS_GIT_REV")
        .ok()
        .filter(|r| !r.is_empty())
        .or_else(|| {
            Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    assert_eq!(
        out.trim(),
        format!(
            "hippo-gitops {} ({expected_rev}, sandbox)",
            env!("CARGO_PKG_VERSION")
        )
    );
}

#[test]
fn completions_cover_the_commands_for_each_shell() {
    for (shell, marker) in [
        ("bash", "complete -F _hippo__gitops"),
        ("zsh", "#compdef hippo-gitops"),
        ("fish", "complete -c hippo-gitops"),
    ] {
        let (code, out) = run(&["completions", shell]);
        assert_eq!(code, 0, "{shell}");
        assert!(out.contains(marker), "{shell}: {out}");
        for command in ["validate", "plan", "reconcile", "status", "sandbox"] {
            assert!(out.contains(command), "{shell} lacks {command}");
        }
        assert!(out.contains("git-url"), "{shell} lacks reconcile's flags");
    }
    let (code, _) = run(&["completions", "tcsh"]);
    assert_ne!(code, 0, "an unknown shell is an error");
}

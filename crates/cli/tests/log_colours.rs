//! The log is coloured only on a terminal, and never with `NO_COLOR` (issue 13.10): the binary
//! runs `reconcile --once --sandbox` on a pseudo-terminal (`script`, util-linux) with and
//! without `NO_COLOR`. (A log written to a pipe is checked in `daemon_process.rs`.)

use hippo_gitops_testkit as common;

use std::process::Command;

/// The reset code tracing writes after every coloured field.
const RESET: &str = "\x1b[0m";

/// Runs the example's `reconcile --once --sandbox` on a pseudo-terminal; answers what the
/// terminal showed.
fn on_a_terminal(no_color: Option<&str>) -> String {
    let tmp = tempfile::tempdir().unwrap();
    common::copy_examples(tmp.path());
    let command = format!(
        "{} reconcile --once --sandbox --sandbox-dir sb -f deploy-specs/",
        env!("CARGO_BIN_EXE_hippo-gitops")
    );
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &command, "/dev/null"])
        .current_dir(tmp.path())
        .env("HIPPO_GITOPS_LOG", "info,bindle=warn,warp=error")
        .env("HIPPO_GITOPS_STATE_DIR", tmp.path().join("state"))
        .env_remove("NO_COLOR");
    if let Some(value) = no_color {
        cmd.env("NO_COLOR", value);
    }
    let out = cmd
        .output()
        .expect("`script` (util-linux) runs the binary on a pseudo-terminal");
    let tty = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{tty}");
    assert!(
        tty.contains("INFO"),
        "the log reached the terminal: {tty:?}"
    );
    tty
}

#[test]
fn colours_on_a_terminal_unless_no_color_is_set() {
    assert!(
        on_a_terminal(None).contains(RESET),
        "a terminal gets colours"
    );
    // no-color.org: set to anything but the empty string.
    let plain = on_a_terminal(Some("1"));
    assert!(!plain.contains(RESET), "NO_COLOR=1: {plain:?}");
    assert!(
        on_a_terminal(Some("")).contains(RESET),
        "an empty NO_COLOR counts as unset"
    );
}

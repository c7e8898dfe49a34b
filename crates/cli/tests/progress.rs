//! Progress on a terminal, plain lines elsewhere: `reconcile --once` draws uploads and waits on
//! Nomad in place only when stderr is a terminal.

use hippo_gitops_testkit as common;

use std::process::Command;

fn checkout() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    common::copy_examples(tmp.path());
    let dir = tmp.path().to_path_buf();
    (tmp, dir)
}

const ARGS: [&str; 5] = ["reconcile", "--once", "--sandbox", "-f", "deploy-specs/"];

#[test]
fn no_progress_line_when_stderr_is_not_a_terminal() {
    let (_tmp, dir) = checkout();
    let out = Command::new(env!("CARGO_BIN_EXE_hippo-gitops"))
        .args(ARGS)
        .current_dir(&dir)
        .env("HIPPO_GITOPS_LOG", "info,bindle=warn,warp=warn")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The plain log lines say what happened ...
    assert!(stderr.contains("pushed bindle weather/1.0.0"), "{stderr}");
    assert!(stderr.contains("waiting for Nomad"), "{stderr}");
    // ... and nothing is drawn in place.
    assert!(!stderr.contains('\r'), "{stderr:?}");
    assert!(!stderr.contains("\x1b[2K"), "{stderr:?}");
    assert!(!stderr.contains("uploading "), "{stderr}");
}

#[test]
fn a_terminal_gets_upload_and_nomad_progress() {
    // `script` (util-linux) runs the command on a pseudo-terminal.
    assert!(
        Command::new("script").arg("--version").output().is_ok(),
        "`script` (util-linux/bsdutils) is needed for a pseudo-terminal; install it to run this test"
    );
    let (_tmp, dir) = checkout();
    let command = format!("{} {}", env!("CARGO_BIN_EXE_hippo-gitops"), ARGS.join(" "));
    let out = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .current_dir(&dir)
        .env("HIPPO_GITOPS_LOG", "info,bindle=warn,warp=warn")
        .output()
        .unwrap();
    assert!(out.status.success());
    let tty = String::from_utf8_lossy(&out.stdout);
    assert!(tty.contains("\r\x1b[2Kuploading "), "{tty:?}");
    assert!(tty.contains("\r\x1b[2Kwaiting for Nomad ("), "{tty:?}");
    // What is pending, app and channel (which app is still pending depends on timing).
    assert!(
        tty.contains("weather: channel") || tty.contains("invoices: channel"),
        "{tty:?}"
    );
    // On a terminal the progress line replaces the per-round "waiting for Nomad" log line.
    assert!(!tty.contains("INFO\x1b[0m waiting for Nomad"), "{tty:?}");
}

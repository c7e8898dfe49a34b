//! The sandbox, end to end through the binary: the README's quickstart as written, convergence
//! under injected faults with no duplicates, SIGKILL in the middle then a rerun, a failing
//! allocation, and `hippo-gitops sandbox` started, used, stopped and restarted.

use hippo_gitops_testkit as common;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{assert_examples_converged, assert_no_duplicates, hippo_state, run_binary};
use hippo_gitops_emulators::{
    hippo::EmulatorState,
    sandbox::{Sandbox, SandboxConfig},
};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_hippo-gitops")
}

/// A fresh "checkout": the example deploy files in an empty directory.
fn checkout() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    common::copy_examples(&dir);
    (tmp, dir)
}

fn run(args: &[&str], cwd: &Path) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    run_binary(&args, &[], cwd)
}

#[test]
fn the_readme_quickstart_runs_as_written_on_a_fresh_checkout() {
    let readme = std::fs::read_to_string(common::repo_root().join("README.md")).unwrap();
    let command = readme
        .lines()
        .find(|l| l.contains("--sandbox") && l.trim_start().starts_with("cargo run --"))
        .expect("the README shows a --sandbox quickstart command");
    let args: Vec<&str> = command
        .trim()
        .strip_prefix("cargo run --")
        .unwrap()
        .split_whitespace()
        .collect();
    let (_tmp, dir) = checkout();
    let (code, stdout, stderr) = run(&args, &dir);
    assert_eq!(code, 0, "{command}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("weather: ready, pushed bindle"), "{stdout}");
    assert!(
        stdout.contains("(Nomad: production 1/1 healthy, canary 1/1 healthy)"),
        "{stdout}"
    );
    // Run again: nothing to change.
    let (code, stdout, _) = run(&args, &dir);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("invoices: ready, unchanged")
            && stdout.contains("weather: ready, unchanged"),
        "{stdout}"
    );
    assert_examples_converged(&hippo_state(&dir.join(".hippo-gitops/sandbox")));
}

#[test]
fn converges_under_injected_5xx_and_latency_with_no_duplicates() {
    let (_tmp, dir) = checkout();
    let mut runs = 0;
    loop {
        runs += 1;
        let faults = format!("error=0.2,latency=50ms,seed={runs}");
        let (code, stdout, stderr) = run(
            &[
                "reconcile",
                "--once",
                "--sandbox",
                "--sandbox-faults",
                &faults,
                "-f",
                "deploy-specs/",
            ],
            &dir,
        );
        // Whatever a run did, it never leaves duplicates behind.
        if dir.join(".hippo-gitops/sandbox/hippo.json").exists() {
            assert_no_duplicates(&hippo_state(&dir.join(".hippo-gitops/sandbox")));
        }
        if code == 0 {
            break;
        }
        assert_eq!(code, 1, "{stdout}{stderr}");
        assert!(
            runs < 8,
            "not converged after {runs} runs with faults:\n{stdout}\n{stderr}"
        );
    }
    assert_examples_converged(&hippo_state(&dir.join(".hippo-gitops/sandbox")));
    let (code, stdout, _) = run(&["plan", "--sandbox", "-f", "deploy-specs/"], &dir);
    assert_eq!(code, 0, "{stdout}");
}

#[test]
fn killed_in_the_middle_then_rerun_converges_with_no_duplicates() {
    let (_tmp, dir) = checkout();
    let mut child = Command::new(bin())
        .args([
            "reconcile",
            "--once",
            "--sandbox",
            "--sandbox-faults",
            "latency=40ms",
            "-f",
            "deploy-specs/",
        ])
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once Hippo holds part of the desired state, not all of it.
    let state_file = dir.join(".hippo-gitops/sandbox/hippo.json");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut partial = false;
    while Instant::now() < deadline {
        if let Ok(text) = std::fs::read_to_string(&state_file) {
            if let Ok(state) = serde_json::from_str::<EmulatorState>(&text) {
                if !state.apps.is_empty() && state.channels.len() < 3 {
                    partial = true;
                    break;
                }
            }
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        partial,
        "the run was killed while Hippo held part of the desired state"
    );
    assert_no_duplicates(&hippo_state(&dir.join(".hippo-gitops/sandbox")));

    let (code, stdout, stderr) = run(
        &["reconcile", "--once", "--sandbox", "-f", "deploy-specs/"],
        &dir,
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_examples_converged(&hippo_state(&dir.join(".hippo-gitops/sandbox")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_allocation_fails_once_fast_with_its_reason() {
    let (_tmp, dir) = checkout();
    let sandbox = Sandbox::start(SandboxConfig::new(dir.join("sb")))
        .await
        .unwrap();
    let env = sandbox.env();
    let specs = dir.join("deploy-specs").to_string_lossy().into_owned();
    let args: Vec<String> = ["reconcile", "--once", "-f", &specs]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let (a, e, d) = (args.clone(), env.clone(), dir.clone());
    let (code, stdout, _) = tokio::task::spawn_blocking(move || run_binary(&a, &e, &d))
        .await
        .unwrap();
    assert_eq!(code, 0, "{stdout}");

    let state = sandbox.hippo.snapshot();
    let invoices = state.apps.iter().find(|a| a.name == "invoices").unwrap();
    let channel = state
        .channels
        .iter()
        .find(|c| c.app_id == invoices.id)
        .unwrap();
    // Through the emulator's control route, as a demo would do it (curl works the same).
    let resp = reqwest::Client::new()
        .post(format!(
            "{}/_emulator/jobs/{}/fail-allocations",
            sandbox.nomad_url(),
            channel.id
        ))
        .body("failed to launch command with executor: exec: \"spin\": not found")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let started = Instant::now();
    let (code, stdout, _) = tokio::task::spawn_blocking(move || run_binary(&args, &env, &dir))
        .await
        .unwrap();
    assert_eq!(code, 1, "{stdout}");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(
        stdout.contains("invoices: not converged [AllocationFailed]"),
        "{stdout}"
    );
    assert!(stdout.contains("\"spin\": not found"), "{stdout}");
    assert!(stdout.contains("weather: ready"), "{stdout}");
    sandbox.stop().await;
}

/// Starts `hippo-gitops sandbox` and reads the environment it prints.
fn start_sandbox_command(dir: &Path) -> (std::process::Child, Vec<(String, String)>) {
    let mut child = Command::new(bin())
        .args(["sandbox", "--sandbox-dir", "sb"])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut env = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        let (k, v) = line
            .strip_prefix("export ")
            .unwrap()
            .split_once('=')
            .unwrap();
        env.push((k.to_string(), v.to_string()));
        if k == "NOMAD_ADDR" {
            break;
        }
    }
    (child, env)
}

fn terminate(child: &mut std::process::Child) -> i32 {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code().unwrap_or(-1);
        }
        assert!(
            Instant::now() < deadline,
            "the sandbox did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_sandbox_command_serves_other_tools_stops_cleanly_and_keeps_its_state() {
    let (_tmp, dir) = checkout();
    let (mut child, env) = start_sandbox_command(&dir);
    let keys: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "HIPPO_URL",
            "HIPPO_USERNAME",
            "HIPPO_PASSWORD",
            "BINDLE_SERVER_URL",
            "BINDLE_SIGNING_KEY",
            "NOMAD_ADDR"
        ]
    );
    let env_ref: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let (code, stdout, stderr) = run_binary(
        &args(&["reconcile", "--once", "-f", "deploy-specs/"]),
        &env_ref,
        &dir,
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(terminate(&mut child), 0, "Ctrl-C/SIGTERM stops it cleanly");

    // Restarted: the state survived (new ports, same data).
    let (mut child, env) = start_sandbox_command(&dir);
    let env_ref: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let (code, stdout, _) = run_binary(&args(&["plan", "-f", "deploy-specs/"]), &env_ref, &dir);
    assert_eq!(code, 0, "nothing to change after a restart:\n{stdout}");
    assert_eq!(terminate(&mut child), 0);
}

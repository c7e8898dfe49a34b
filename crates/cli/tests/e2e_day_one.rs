//! What a platform engineer meets on day one, end to end through the binary on the real Bindle
//! server and the Hippo and Nomad EMULATORS: a rule that selects nothing never takes a channel
//! down, a plan shows what a change does, a suspended app is left alone, and a broken revision
//! blocks only what needs it.

use hippo_gitops_testkit as common;

use common::{spin_app, write_repo_app as write_app, NomadBed};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_that_selects_nothing_never_takes_a_running_channel_down() {
    let nb = NomadBed::start().await;
    let root = nb.bed.path();
    let channels = |range: &str| {
        format!("    - name: production\n      range: \"{range}\"\n    - name: stable\n      revision: 2.0.0\n")
    };
    let specs = write_app(root, "api", &["2.0.0", "2.1.0"], &channels("^2.0"), "");
    let (code, stdout, stderr) = nb.run(&["reconcile", "--once", "-f", &specs]).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let prod = nb.job_id("api", "production");
    assert_eq!(nb.bindle_arg(&prod).as_deref(), Some("api/2.1.0"));

    // ^3.0 matches nothing: refused, for plan and reconcile alike.
    write_app(root, "api", &["2.0.0", "2.1.0"], &channels("^3.0"), "");
    let (code, stdout, _) = nb.run(&["plan", "-f", &specs]).await;
    assert_eq!(
        code, 1,
        "a refused change is a problem, not a pending change: {stdout}"
    );
    assert!(
        stdout.contains("channel production: range ^3.0 selects no revision")
            && stdout.contains("(NoMatchingRevision)"),
        "{stdout}"
    );
    nb.bed.hippo.clear_requests();
    let (code, stdout, _) = nb.run(&["reconcile", "--once", "-f", &specs]).await;
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("stalled [NoMatchingRevision]"), "{stdout}");
    assert_eq!(
        nb.bed.hippo.writes(),
        0,
        "nothing written for the refused channel"
    );
    assert_eq!(
        nb.bindle_arg(&prod).as_deref(),
        Some("api/2.1.0"),
        "the previous revision keeps running"
    );
    let (code, stdout, _) = nb.run(&["status", "-f", &specs, "--output", "json"]).await;
    assert_eq!(code, 2, "{stdout}");
    let status: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let prod_status = &status[0]["channels"][0];
    assert_eq!(prod_status["condition"]["type"], "Stalled");
    assert_eq!(prod_status["condition"]["reason"], "NoMatchingRevision");
    assert_eq!(
        prod_status["channelId"],
        prod.as_str(),
        "status carries channel IDs"
    );
    assert_eq!(
        status[0]["channels"][1]["condition"]["type"], "Ready",
        "the other channel is unaffected"
    );

    // Opted out: the plan shows the change as destructive, and it is made.
    write_app(
        root,
        "api",
        &["2.0.0", "2.1.0"],
        "    - name: production\n      range: \"^3.0\"\n      allowEmpty: true\n    - name: stable\n      revision: 2.0.0\n",
        "",
    );
    let (code, stdout, _) = nb.run(&["plan", "-f", &specs]).await;
    assert_eq!(code, 2, "{stdout}");
    assert!(
        stdout.contains("production: 2.1.0 → none (range ^3.0) [DESTRUCTIVE"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_shows_the_revision_a_new_bindle_moves_a_channel_to() {
    let nb = NomadBed::start().await;
    let root = nb.bed.path();
    let channels = "    - name: production\n      range: \"^2.0\"\n";
    let specs = write_app(root, "api", &["2.0.0"], channels, "");
    let (code, stdout, stderr) = nb.run(&["reconcile", "--once", "-f", &specs]).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");

    write_app(root, "api", &["2.0.0", "2.1.0"], channels, "");
    let (code, text, _) = nb.run(&["plan", "-f", &specs]).await;
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("→ production: 2.0.0 → 2.1.0 (range ^2.0)"),
        "{text}"
    );

    let (_, json, _) = nb.run(&["plan", "-f", &specs, "--output", "json"]).await;
    let plan: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        plan["moves"],
        serde_json::json!([{"app": "api", "channel": "production", "from": "2.0.0",
                            "to": "2.1.0", "rule": "range ^2.0", "destructive": false}])
    );

    let (_, md, _) = nb
        .run(&["plan", "-f", &specs, "--output", "markdown"])
        .await;
    assert!(
        md.contains(":arrow_right: production: 2.0.0 → 2.1.0 (range ^2.0)"),
        "{md}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_app_is_left_alone() {
    let nb = NomadBed::start().await;
    let root = nb.bed.path();
    let specs = write_app(
        root,
        "api",
        &["2.0.0"],
        "    - name: production\n      range: \"^2.0\"\n",
        "",
    );
    let (code, stdout, stderr) = nb.run(&["reconcile", "--once", "-f", &specs]).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");

    // An incident: suspend, then a change is committed anyway.
    write_app(
        root,
        "api",
        &["2.0.0", "2.1.0"],
        "    - name: production\n      range: \"^2.0\"\n",
        "  suspend: true\n",
    );
    nb.bed.hippo.clear_requests();
    let (code, stdout, stderr) = nb.run(&["reconcile", "--once", "-f", &specs]).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("api: suspended (spec.suspend), nothing written"),
        "{stdout}"
    );
    assert_eq!(nb.bed.hippo.writes(), 0);
    let (code, stdout, _) = nb.run(&["plan", "-f", &specs]).await;
    assert_eq!(code, 0, "nothing is pending for a suspended app: {stdout}");
    assert!(stdout.contains("api: suspended"), "{stdout}");
    let (code, stdout, _) = nb.run(&["status", "-f", &specs]).await;
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("Suspended (Suspended)"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflicting_revision_leaves_the_channels_that_dont_need_it_converging() {
    let nb = NomadBed::start().await;
    let root = nb.bed.path();
    let channels = "    - name: production\n      range: \"^2.0\"\n    - name: stable\n      revision: 2.0.0\n";
    let specs = write_app(root, "api", &["2.0.0", "2.1.0"], channels, "");
    let (code, stdout, stderr) = nb.run(&["reconcile", "--once", "-f", &specs]).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");

    // 2.2.0 is pushed; then its content is rebuilt without a version bump: a conflict.
    write_app(root, "api", &["2.0.0", "2.1.0", "2.2.0"], channels, "");
    let (code, stdout, stderr) = nb.run(&["reconcile", "--once", "-f", &specs]).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    spin_app(&root.join("apps/api-2.2.0"), "api", "2.2.0", "rebuilt");
    // Meanwhile stable gets a new environment, and a new channel is added.
    let changed = format!(
        "{channels}      env:\n        MODE: safe\n    - name: canary\n      revision: 2.1.0\n"
    );
    write_app(root, "api", &["2.0.0", "2.1.0", "2.2.0"], &changed, "");
    let (code, stdout, _) = nb.run(&["reconcile", "--once", "-f", &specs]).await;
    assert_eq!(code, 1, "the conflict is reported: {stdout}");
    assert!(stdout.contains("[BindleConflict]"), "{stdout}");
    assert!(
        stdout.contains("created channel canary") && stdout.contains("MODE"),
        "what does not need 2.2.0 converged: {stdout}"
    );
    let canary = nb.job_id("api", "canary");
    assert_eq!(nb.bindle_arg(&canary).as_deref(), Some("api/2.1.0"));
}

/// The README's first command on the shipped example: it converges, and warns about nothing
/// (an example that triggers its own warning teaches users to ignore warnings).
#[test]
fn the_shipped_example_converges_without_a_warning() {
    let scratch = tempfile::tempdir().unwrap();
    let repo = &common::repo_root();
    let sandbox = scratch.path().join("sandbox");
    let args: Vec<String> = [
        "reconcile",
        "--once",
        "--sandbox",
        "--sandbox-dir",
        sandbox.to_str().unwrap(),
        "-f",
        "deploy-specs/",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let env = [(
        "HIPPO_GITOPS_STATE_DIR",
        scratch.path().join("state").to_string_lossy().into_owned(),
    )];
    // As a user runs it: the default log filter (run_binary would set its own).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hippo-gitops"))
        .args(&args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env_remove("HIPPO_GITOPS_LOG")
        .current_dir(repo)
        .output()
        .unwrap();
    let (code, stdout, stderr) = (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("weather: ready"), "{stdout}");
    assert!(
        !stdout.contains("warning") && !stderr.contains("WARN"),
        "{stdout}\n{stderr}"
    );
}

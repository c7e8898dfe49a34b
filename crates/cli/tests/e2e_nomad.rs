//! End to end with Nomad: the real Bindle server, the Hippo emulator driving the Nomad emulator
//! the way Hippo drives Nomad. Converge and wait; heal a lost and a stale job in one run; fail
//! fast on a failing allocation with the task's reason; orphans; env drift.

use hippo_gitops_testkit as common;

use std::time::Duration;

use common::{copy_examples, load, Bed, NomadBed};
use hippo_gitops_core::apply;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converge_waits_until_nomad_runs_every_channel() {
    let nb = NomadBed::start().await;
    let specs = copy_examples(nb.bed.path());
    let specs_s = specs.to_string_lossy().into_owned();

    let (code, stdout, stderr) = nb.run(&["reconcile", "--once", "-f", &specs_s]).await;
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("(Nomad: production 1/1 healthy, canary 1/1 healthy)"),
        "{stdout}"
    );
    assert_eq!(
        nb.bindle_arg(&nb.job_id("weather", "production"))
            .as_deref(),
        Some("weather/1.0.0")
    );
    assert_eq!(
        nb.bindle_arg(&nb.job_id("weather", "canary")).as_deref(),
        Some("weather/1.1.0")
    );
    // Hippo drops channel env vars: the warning says so, and does not fail the run.
    assert!(
        stdout.contains("weather: warning: channel production: environment variable(s) RUST_LOG are set in Hippo but not in the Nomad task's Env"),
        "{stdout}"
    );
    assert!(!stdout.contains("info"), "env values never shown: {stdout}");

    let (code, stdout, _) = nb.run(&["status", "-f", &specs_s]).await;
    assert_eq!(code, 0, "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("weather") && l.contains("production"))
        .unwrap();
    assert!(
        line.contains("1.0.0")
            && line.contains("v0 running")
            && line.contains("1/1")
            && line.contains("Ready (Running)"),
        "{line}"
    );

    // A second run: nothing to do anywhere; Nomad jobs are read once and then only listed.
    nb.bed.hippo.clear_requests();
    nb.nomad.clear_requests();
    let (ctx, stats) = nb.context(Some(Duration::from_secs(30)));
    let desired = load(&specs);
    let report = apply::reconcile(&desired, &ctx).await.unwrap();
    assert!(
        report
            .apps
            .iter()
            .all(|a| a.converged() && a.applied.is_empty()),
        "{}",
        hippo_gitops::render::run_text(&report)
    );
    assert_eq!(nb.bed.hippo.writes(), 0);
    assert_eq!(
        nb.nomad.writes(),
        0,
        "the controller never writes Hippo's jobs to Nomad"
    );
    let reads_first = stats.requests("nomad");
    let report = apply::reconcile(&desired, &ctx).await.unwrap();
    assert!(report.apps.iter().all(|a| a.converged()));
    assert_eq!(
        stats.requests("nomad") - reads_first,
        2,
        "steady state: one jobs list and one allocations list; jobs re-read only when JobModifyIndex moves"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_job_and_a_stale_job_are_healed_by_one_run() {
    let nb = NomadBed::start().await;
    let specs = copy_examples(nb.bed.path());
    let specs_s = specs.to_string_lossy().into_owned();
    let (code, stdout, stderr) = nb.run(&["reconcile", "--once", "-f", &specs_s]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");

    let prod = nb.job_id("weather", "production");
    let canary = nb.job_id("weather", "canary");
    nb.nomad.lose_job(&prod);
    // Someone re-registered the canary job by hand with another bindle.
    let mut job = nb
        .nomad
        .jobs()
        .into_iter()
        .find(|j| j["ID"] == canary.as_str())
        .unwrap();
    job["TaskGroups"][0]["Tasks"][0]["Config"]["args"] = serde_json::json!([
        "up",
        "--listen",
        "${NOMAD_ADDR_http}",
        "--bindle",
        "weather/0.0.1"
    ]);
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/job/{canary}", nb.nomad.url()))
        .json(&serde_json::json!({ "Job": job }))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    assert_eq!(nb.bindle_arg(&canary).as_deref(), Some("weather/0.0.1"));

    let (code, stdout, _) = nb.run(&["plan", "-f", &specs_s]).await;
    assert_eq!(code, 2, "{stdout}");
    assert!(
        stdout.contains("reschedule channel production through Hippo (its Nomad job is missing)"),
        "{stdout}"
    );
    assert!(stdout.contains("deploy weather/1.1.0 to channel canary through Hippo (its Nomad job runs weather/0.0.1, Hippo's active revision is weather/1.1.0)"), "{stdout}");

    nb.bed.hippo.clear_requests();
    nb.nomad.clear_requests();
    let (code, stdout, stderr) = nb.run(&["reconcile", "--once", "-f", &specs_s]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(nb.bindle_arg(&prod).as_deref(), Some("weather/1.0.0"));
    assert_eq!(nb.bindle_arg(&canary).as_deref(), Some("weather/1.1.0"));
    // Healed through Hippo: two desired-status PUTs, nothing written to Nomad directly.
    let hippo_writes: Vec<String> = nb
        .bed
        .hippo
        .requests()
        .into_iter()
        .filter(|r| r.method != "GET" && r.path != "/api/auth-tokens")
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(hippo_writes.len(), 2, "{hippo_writes:?}");
    assert!(hippo_writes
        .iter()
        .all(|w| w.starts_with("PUT /api/channels/") && w.ends_with("/desired-status")));
    assert_eq!(nb.nomad.writes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_allocation_fails_fast_with_the_tasks_reason() {
    let nb = NomadBed::start().await;
    let specs = copy_examples(nb.bed.path());
    let specs_s = specs.to_string_lossy().into_owned();
    let (code, _, _) = nb.run(&["reconcile", "--once", "-f", &specs_s]).await;
    assert_eq!(code, 0);
    let prod = nb.job_id("weather", "production");
    nb.nomad.fail_allocations(
        &prod,
        "failed to launch command with executor: spin: no such file",
    );

    let started = std::time::Instant::now();
    let (code, stdout, _) = nb
        .run(&["reconcile", "--once", "--timeout", "5m", "-f", &specs_s])
        .await;
    assert_eq!(code, 1, "{stdout}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "fails fast, not at the 5m timeout"
    );
    assert!(
        stdout
            .contains("weather: not converged [AllocationFailed]: channel production: allocation"),
        "{stdout}"
    );
    assert!(stdout.contains("spin: no such file"), "{stdout}");
    assert!(stdout.contains("invoices: ready"), "{stdout}");
    let (code, stdout, _) = nb.run(&["status", "-f", &specs_s]).await;
    assert_eq!(code, 2, "{stdout}");
    // Retried with backoff, so Reconciling, not Stalled; the failed allocation is not healthy.
    let line = stdout
        .lines()
        .find(|l| l.starts_with("weather") && l.contains("production"))
        .unwrap();
    assert!(line.contains("Reconciling (AllocationFailed)"), "{stdout}");
    assert!(
        line.contains("0/1"),
        "a failed allocation is not counted healthy: {line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_are_reported_and_removed_only_when_asked() {
    let nb = NomadBed::start().await;
    let specs = copy_examples(nb.bed.path());
    let specs_s = specs.to_string_lossy().into_owned();
    let orphan = "0b8f3c7e-8d51-4bde-9d64-1d2c3b4a5f60";
    nb.add_orphan_job(orphan).await;

    let (code, stdout, _) = nb.run(&["plan", "-f", &specs_s, "--output", "json"]).await;
    assert_eq!(code, 2, "{stdout}");
    let plan: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(plan["orphans"], serde_json::json!([orphan]));

    let (code, stdout, _) = nb.run(&["reconcile", "--once", "-f", &specs_s]).await;
    assert_eq!(code, 0, "an orphan does not fail the run: {stdout}");
    assert!(stdout.contains(&format!("orphaned Nomad job {orphan}: no Hippo channel has this id (a channel deleted through Hippo v0.19.0 leaves its job running; fixed in v0.19.1); delete it with --prune-orphans")), "{stdout}");
    assert!(nb.nomad.jobs().iter().any(|j| j["ID"] == orphan));

    let (code, stdout, _) = nb
        .run(&["reconcile", "--once", "--prune-orphans", "-f", &specs_s])
        .await;
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains(&format!("orphaned Nomad job {orphan}: deleted")),
        "{stdout}"
    );
    assert!(nb.nomad.jobs().iter().all(|j| j["ID"] != orphan));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_nomad_status_says_unknown_never_healthy() {
    let bed = Bed::start().await;
    let specs = copy_examples(bed.path());
    let specs_s = specs.to_string_lossy().into_owned();
    let (code, _, _) = bed.run(&["reconcile", "--once", "-f", &specs_s]).await;
    assert_eq!(code, 0);
    let (code, stdout, stderr) = bed
        .run(&["status", "-f", &specs_s, "--output", "json"])
        .await;
    assert_eq!(code, 0, "{stderr}");
    let apps: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    for app in apps.as_array().unwrap() {
        for ch in app["channels"].as_array().unwrap() {
            assert_eq!(ch["nomad"]["state"], "unknown", "{ch}");
            assert_eq!(ch["condition"]["reason"], "HippoConverged");
        }
    }
}

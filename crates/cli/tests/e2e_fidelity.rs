//! End to end on the real Bindle server and the Hippo and Nomad EMULATORS, for what the
//! upstream source says real Hippo and Nomad do (../shared/reference/AUDIT.md): Hippo's
//! prerelease rule, Nomad's undecided and unhealthy allocations, Hippo's jobs in Nomad's
//! `default` namespace, and Hippo v0.19's PUT that starts no job.

use hippo_gitops_testkit as common;

use std::{path::Path, time::Duration};

use common::{app_doc, spin_app, NomadBed, NomadBedOptions};

fn write_app(root: &Path, name: &str, versions: &[&str], channels: &str) -> String {
    common::write_repo_app(root, name, versions, channels, "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prerelease_channel_with_dashes_runs_that_users_newest_build() {
    let nb = NomadBed::start().await;
    let specs = write_app(
        nb.bed.path(),
        "feat",
        &[
            "1.0.0-my-feature-20240101",
            "1.0.0-my-feature-20240301",
            "1.0.0-my-20240401",
            "2.0.0-my-feature-20240501",
        ],
        "    - name: preview\n      range: \"P:^1.0-my-feature-*\"\n",
    );
    let (code, stdout, stderr) = nb.run(&["validate", "-f", &specs]).await;
    assert_eq!(code, 0, "a valid Hippo rule validates\n{stdout}\n{stderr}");

    let (code, stdout, stderr) = nb.run(&["reconcile", "--once", "-f", &specs]).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(
        nb.bindle_arg(&nb.job_id("feat", "preview")).as_deref(),
        Some("feat/1.0.0-my-feature-20240301"),
        "the newest build of user my-feature in ^1.0"
    );

    nb.bed.hippo.clear_requests();
    let (code, stdout, stderr) = nb.run(&["reconcile", "--once", "-f", &specs]).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(
        nb.bed.hippo.writes(),
        0,
        "plan and Hippo agree on the rule: a rerun writes nothing\n{stdout}"
    );
}

/// `reconcile --once --wait`, timed.
async fn once_waiting(nb: &NomadBed, specs: &str) -> (i32, String, String, Duration) {
    let started = std::time::Instant::now();
    let args = [
        "reconcile",
        "--once",
        "--wait",
        "--timeout",
        "60s",
        "-f",
        specs,
    ];
    let (code, stdout, stderr) = nb.run(&args).await;
    (code, stdout, stderr, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_waits_out_undecided_health_and_fails_on_unhealthy() {
    let nb = NomadBed::start_with(NomadBedOptions {
        healthy_delay: Duration::from_millis(1500),
        ..Default::default()
    })
    .await;
    let specs = write_app(
        nb.bed.path(),
        "web",
        &["1.0.0", "1.1.0"],
        "    - name: production\n      range: \"^1.0\"\n",
    );

    // Nomad runs the allocation at once but judges its health only after 1.5 s: until then it
    // is not Ready.
    let (code, stdout, stderr, took) = once_waiting(&nb, &specs).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        took >= Duration::from_millis(1500),
        "Ready only once Nomad decided ({took:?})\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("production 1/1 healthy"), "{stdout}");

    // A new revision whose allocations Nomad marks unhealthy: fails, naming the cause, well
    // within a minute.
    spin_app(
        &nb.bed.path().join("apps/web-1.2.0"),
        "web",
        "1.2.0",
        "1.2.0",
    );
    std::fs::write(
        Path::new(&specs).join("web.yaml"),
        app_doc(
            "web",
            &[
                "../apps/web-1.0.0",
                "../apps/web-1.1.0",
                "../apps/web-1.2.0",
            ],
            "    - name: production\n      range: \"^1.0\"\n",
            false,
        ),
    )
    .unwrap();
    nb.nomad.make_unhealthy(
        "web/1.2.0",
        "Task not running for min_healthy_time of 10s by healthy_deadline of 5m0s",
    );
    let (code, stdout, stderr, took) = once_waiting(&nb, &specs).await;
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    let all = format!("{stdout}{stderr}");
    assert!(
        all.contains("marked unhealthy by Nomad's deployment")
            && all.contains("Task not running for min_healthy_time"),
        "names the cause: {all}"
    );
    assert!(took < Duration::from_secs(30), "failed fast: {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hippo_jobs_are_read_in_hippos_namespace_not_the_controllers() {
    let nb = NomadBed::start().await;
    let specs = write_app(
        nb.bed.path(),
        "ns",
        &["1.0.0"],
        "    - name: production\n      range: \"*\"\n",
    );
    // What a controller run as a Nomad task in namespace `ops` sees in its environment.
    let ops = [("NOMAD_NAMESPACE", "ops")];
    let (code, stdout, stderr) = nb
        .run_env(&["reconcile", "--once", "-f", &specs], &ops)
        .await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    nb.bed.hippo.clear_requests();
    let (code, stdout, stderr) = nb
        .run_env(&["reconcile", "--once", "-f", &specs], &ops)
        .await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(
        nb.bed.hippo.writes(),
        0,
        "the jobs in `default` are seen: nothing to reschedule\n{stdout}"
    );
    let reads: Vec<String> = nb
        .nomad
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/v1/jobs") || r.path.starts_with("/v1/allocations"))
        .filter_map(|r| r.query)
        .collect();
    assert!(
        reads.iter().all(|q| !q.contains("namespace=ops")),
        "Hippo's jobs are not looked for in the controller's namespace: {reads:?}"
    );

    // Hippo configured elsewhere: named explicitly.
    let (code, stdout, _) = nb
        .run_env(
            &["reconcile", "--once", "-f", &specs],
            &[
                ("NOMAD_NAMESPACE", "ops"),
                ("HIPPO_GITOPS_HIPPO_NAMESPACE", "hippo"),
            ],
        )
        .await;
    assert_ne!(code, 0, "no jobs in namespace `hippo`: {stdout}");
    assert!(
        nb.nomad.requests().iter().any(|r| r
            .query
            .as_deref()
            .is_some_and(|q| q.contains("namespace=hippo"))),
        "the flag picks the namespace"
    );
}

/// Without Nomad given to the CLI, a change of what a channel runs reaches Nomad whether or not
/// Hippo's PUT starts the job: by our PUT (range change) and by Hippo's own (registration).
async fn range_change_reaches_nomad_without_nomad_configured(put_starts_no_job: bool) {
    let nb = NomadBed::start_with(NomadBedOptions {
        put_starts_no_job,
        ..Default::default()
    })
    .await;
    let specs = write_app(
        nb.bed.path(),
        "blind",
        &["1.0.0", "2.0.0"],
        "    - name: production\n      range: \"^1.0\"\n",
    );
    // `bed.run`: no NOMAD_ADDR, so nothing is verified on Nomad.
    let (code, stdout, stderr) = nb.bed.run(&["reconcile", "--once", "-f", &specs]).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let job = nb.job_id("blind", "production");
    wait_for_bindle(&nb, &job, "blind/1.0.0").await;

    // Our PUT moves the channel to 2.0.0.
    let file = Path::new(&specs).join("blind.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("^1.0", "^2.0")).unwrap();
    let (code, stdout, stderr) = nb.bed.run(&["reconcile", "--once", "-f", &specs]).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    wait_for_bindle(&nb, &job, "blind/2.0.0").await;

    // A registration moves it to 2.1.0 (Hippo's own PUT).
    spin_app(
        &nb.bed.path().join("apps/blind-2.1.0"),
        "blind",
        "2.1.0",
        "2.1.0",
    );
    std::fs::write(
        &file,
        app_doc(
            "blind",
            &[
                "../apps/blind-1.0.0",
                "../apps/blind-2.0.0",
                "../apps/blind-2.1.0",
            ],
            "    - name: production\n      range: \"^2.0\"\n",
            false,
        ),
    )
    .unwrap();
    let (code, stdout, stderr) = nb.bed.run(&["reconcile", "--once", "-f", &specs]).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    wait_for_bindle(&nb, &job, "blind/2.1.0").await;
}

async fn wait_for_bindle(nb: &NomadBed, job: &str, bindle: &str) {
    // The emulated Hippo hands jobs to the emulated Nomad synchronously; the job is there by
    // the time the CLI exits. A short bounded poll covers the scheduler's own evaluation.
    for _ in 0..50 {
        if nb.bindle_arg(job).as_deref() == Some(bindle) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "Nomad runs {:?} for job {job}, expected {bindle}",
        nb.bindle_arg(job)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_change_reaches_nomad_with_hippos_put_quirk() {
    range_change_reaches_nomad_without_nomad_configured(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_change_reaches_nomad_without_the_put_quirk() {
    range_change_reaches_nomad_without_nomad_configured(false).await;
}

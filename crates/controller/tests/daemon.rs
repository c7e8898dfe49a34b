//! The controller in-process, on the real Bindle server and the Hippo and Nomad emulators:
//! two replicas against one Nomad never both write and fail over on release; a failing app
//! backs off while the others converge, and a bad file is left out; the leader lock's
//! requests and what losing it does, against a mock Nomad.

use hippo_gitops_testkit as common;
use hippo_gitops_testkit::alert_rules;

use std::{
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use common::{copy_examples, eventually, fast_retry, Bed, NomadBed};
use hippo_gitops_controller::{
    leader::{Elector, LeaderConfig},
    schedule::BackoffPolicy,
    source::SourceConfig,
    ControllerConfig, Daemon, Role, StatusView, Trigger,
};
use hippo_gitops_core::{
    apply::Context,
    gate::{WriteGate, WriteRefused},
    nomad::{NomadClient, NomadConfig},
    observe::NomadObserver,
    stats::RequestStats,
    status::ConditionType,
};
use wiremock::{
    matchers::{body_partial_json, method, path, query_param},
    Mock, MockServer, ResponseTemplate,
};

/// One replica's clients, with its own request counter.
fn replica(nb: &NomadBed) -> (Context, RequestStats) {
    nb.context(None)
}

fn config(files: &Path, holder: &str) -> ControllerConfig {
    let mut c = ControllerConfig::new(SourceConfig::Files {
        paths: vec![files.to_path_buf()],
        options: Default::default(),
    });
    c.interval = Duration::from_millis(300);
    c.progress_interval = Duration::from_millis(100);
    c.backoff = BackoffPolicy {
        min: Duration::from_millis(100),
        max: Duration::from_secs(1),
    };
    c.leader = Some(LeaderConfig {
        path: "hippo-gitops/leader".into(),
        ttl: Duration::from_millis(400),
        lock_delay: Duration::from_millis(50),
        holder: holder.into(),
    });
    c.shutdown_grace = Duration::from_secs(5);
    c
}

fn condition_of(view: &StatusView, app: &str) -> Option<ConditionType> {
    view.apps
        .iter()
        .find(|a| a.status.app == app)
        .map(|a| a.status.condition.kind)
}

fn all_ready(view: &StatusView, apps: &[&str]) -> bool {
    apps.iter()
        .all(|a| condition_of(view, a) == Some(ConditionType::Ready))
}

/// Writes to Hippo and Bindle (Nomad's are lock requests, which followers make too).
fn app_writes(stats: &RequestStats) -> u64 {
    stats.writes("hippo") + stats.writes("bindle")
}

fn env_value(bed: &Bed, app: &str, channel: &str, key: &str) -> Option<String> {
    let st = bed.hippo.snapshot();
    let app = st.apps.iter().find(|a| a.name == app)?;
    let ch = st
        .channels
        .iter()
        .find(|c| c.app_id == app.id && c.name == channel)?;
    st.environment_variables
        .iter()
        .find(|e| e.channel_id == ch.id && e.key == key)
        .map(|e| e.value.clone())
}

fn set_rust_log(files: &Path, value: &str) {
    let file = files.join("weather.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("RUST_LOG:") {
            let indent = &line[..line.len() - line.trim_start().len()];
            out.push_str(&format!("{indent}RUST_LOG: {value}\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    std::fs::write(file, out).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_controllers_against_one_nomad_never_both_write_and_fail_over() {
    let nb = NomadBed::start().await;
    let files = copy_examples(nb.bed.path());
    let (ctx_a, stats_a) = replica(&nb);
    let (ctx_b, stats_b) = replica(&nb);
    let a = Daemon::start(config(&files, "a"), ctx_a, stats_a.clone())
        .await
        .unwrap();
    let b = Daemon::start(config(&files, "b"), ctx_b, stats_b.clone())
        .await
        .unwrap();

    // Watch both gates for the whole test: never open at the same time.
    let both = Arc::new(AtomicBool::new(false));
    let stop_sampling = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (sa, sb) = (a.shared.clone(), b.shared.clone());
        let (both, stop) = (both.clone(), stop_sampling.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if sa.gate.check().is_ok() && sb.gate.check().is_ok() {
                    both.store(true, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };

    let apps = ["weather", "invoices"];
    eventually(20, "both replicas to report every app Ready", || {
        all_ready(&a.shared.view(), &apps) && all_ready(&b.shared.view(), &apps)
    })
    .await;
    let (leader, follower, leader_stats, follower_stats) = match a.shared.role() {
        Role::Leader => (a, b, stats_a, stats_b),
        _ => (b, a, stats_b, stats_a),
    };
    assert_eq!(leader.shared.role(), Role::Leader);
    assert_eq!(follower.shared.role(), Role::Follower);
    assert!(
        app_writes(&leader_stats) > 0,
        "the leader converged the apps"
    );
    assert_eq!(
        app_writes(&follower_stats),
        0,
        "a follower observes but never writes"
    );
    assert!(
        follower.shared.view().ready,
        "the follower serves status from its own observation"
    );

    // The leader stops (releasing the lock); the follower takes over and applies a change.
    let before = app_writes(&leader_stats);
    leader.shutdown().await.unwrap();
    set_rust_log(&files, "trace");
    eventually(20, "the new leader to apply the change", || {
        env_value(&nb.bed, "weather", "production", "RUST_LOG").as_deref() == Some("trace")
    })
    .await;
    // Its lease is 400 ms; on a loaded machine a renew can land late and close it for a moment
    // (it writes nothing meanwhile), so the role is awaited rather than sampled once.
    eventually(5, "the follower to hold the lease", || {
        follower.shared.role() == Role::Leader
    })
    .await;
    // Hippo holds the change as soon as it handled the PATCH; the client counts the write when
    // the answer arrives, a moment later.
    eventually(5, "the new leader's write to be counted", || {
        app_writes(&follower_stats) > 0
    })
    .await;
    assert_eq!(
        app_writes(&leader_stats),
        before,
        "nothing written after shutdown"
    );
    stop_sampling.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    assert!(
        !both.load(Ordering::Relaxed),
        "both replicas could write at the same time"
    );
    follower.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_app_backs_off_while_the_others_converge_and_a_bad_file_is_left_out() {
    let bed = Bed::start().await;
    let files = copy_examples(bed.path());
    // `ghost` wants a bindle nobody pushed: a transient problem (another pipeline may push
    // it), retried with backoff. `broken.yaml` doesn't parse: left out, the rest go on.
    std::fs::write(
        files.join("ghost.yaml"),
        "apiVersion: hippo-gitops/v1\nkind: App\nmetadata:\n  name: ghost\nspec:\n  storageId: ghost\n  revisions:\n    - version: 9.9.9\n  channels:\n    - name: production\n      revision: 9.9.9\n",
    )
    .unwrap();
    std::fs::write(
        files.join("broken.yaml"),
        "apiVersion: hippo-gitops/v1\nkind: App\nmetadata:\n  name: broken\nspec:\n  channels:\n    - name: production\n      rnage: \"*\"\n",
    )
    .unwrap();
    let (ctx, stats) = bed.context();
    let mut cfg = config(&files, "single");
    // Only backoff and file changes wake it: count the retries without interval noise.
    cfg.interval = Duration::from_secs(600);
    let d = Daemon::start(cfg, ctx, stats.clone()).await.unwrap();
    assert_eq!(d.shared.role(), Role::Single, "no Nomad: a single instance");

    eventually(20, "weather and invoices Ready", || {
        all_ready(&d.shared.view(), &["weather", "invoices"])
    })
    .await;
    eventually(10, "ghost to fail three times", || {
        d.shared
            .view()
            .apps
            .iter()
            .any(|a| a.status.app == "ghost" && a.failures >= 3)
    })
    .await;
    let started = tokio::time::Instant::now();
    let view = d.shared.view();
    let ghost = view.apps.iter().find(|a| a.status.app == "ghost").unwrap();
    assert_eq!(ghost.status.condition.kind, ConditionType::Reconciling);
    assert_eq!(ghost.status.condition.reason, "BindleMissing");
    assert!(ghost.next_attempt_at.is_some());
    for app in ["weather", "invoices"] {
        let a = view.apps.iter().find(|a| a.status.app == app).unwrap();
        assert_eq!(a.failures, 0, "{app} is not held up by ghost");
    }
    // The bad file is reported with its line, and nothing from it was created.
    assert_eq!(view.rejected_files.len(), 1);
    let rejected = &view.rejected_files[0];
    assert!(rejected.file.ends_with("broken.yaml"));
    assert!(
        rejected
            .problems
            .iter()
            .any(|p| p.contains(":7:") && p.contains("rnage")),
        "{:?}",
        rejected.problems
    );
    assert!(bed.hippo.snapshot().apps.iter().all(|a| a.name != "broken"));

    // Backoff, not a busy loop: 100 ms doubling to 1 s means few retries in 1.5 s more.
    let failures_then = ghost.failures;
    tokio::time::sleep_until(started + Duration::from_millis(1500)).await;
    let failures_now = d
        .shared
        .view()
        .apps
        .iter()
        .find(|a| a.status.app == "ghost")
        .unwrap()
        .failures;
    assert!(
        failures_now > failures_then && failures_now <= failures_then + 4,
        "retries in 1.5 s: {failures_then} → {failures_now}"
    );

    // Fixing ghost's deploy file resets its backoff and it converges.
    common::spin_app(&files.join("apps/ghost"), "ghost", "1.0.0", "boo");
    std::fs::write(
        files.join("ghost.yaml"),
        common::app_doc(
            "ghost",
            &["apps/ghost"],
            "    - name: production\n      range: \"*\"\n",
            false,
        ),
    )
    .unwrap();
    eventually(20, "ghost Ready after its file was fixed", || {
        let v = d.shared.view();
        all_ready(&v, &["ghost"])
            && v.apps
                .iter()
                .any(|a| a.status.app == "ghost" && a.failures == 0)
    })
    .await;
    let metrics = d.shared.metrics_text();
    assert!(
        metrics.contains("hippo_gitops_rejected_files 1"),
        "{metrics}"
    );
    assert!(metrics.contains("hippo_gitops_leader 1"), "{metrics}");
    d.shutdown().await.unwrap();
    // Writes only ever went to the apps that could converge.
    assert!(app_writes(&stats) > 0);
}

fn observer(url: &str) -> Arc<NomadObserver> {
    let mut nc = NomadConfig::new(url.to_string());
    nc.retry = fast_retry();
    Arc::new(NomadObserver::new(
        NomadClient::new(nc, RequestStats::default()).unwrap(),
    ))
}

fn lock_config() -> LeaderConfig {
    LeaderConfig {
        path: "hippo-gitops/leader".into(),
        ttl: Duration::from_millis(300),
        lock_delay: Duration::from_millis(300),
        holder: "test/1".into(),
    }
}

const VAR: &str = "/v1/var/hippo-gitops/leader";

/// An elector against `server`, running: its gate, the release switch, its triggers, its task.
fn start_elector(
    server: &MockServer,
) -> (
    WriteGate,
    tokio::sync::watch::Sender<bool>,
    tokio::sync::mpsc::Receiver<Trigger>,
    tokio::task::JoinHandle<()>,
) {
    let gate = WriteGate::leased();
    let elector = Arc::new(Elector::new(
        observer(&server.uri()),
        lock_config(),
        gate.clone(),
    ));
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let task = tokio::spawn(elector.run(release_rx, tx));
    (gate, release_tx, rx, task)
}

fn acquired() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(serde_json::json!({
        "Namespace": "default", "Path": "hippo-gitops/leader",
        "Lock": {"TTL": "300ms", "LockDelay": "300ms", "ID": "lock-1"},
    }))
}

#[tokio::test]
async fn the_leader_lock_is_taken_renewed_and_released_with_nomads_requests() {
    let server = MockServer::start().await;
    Mock::given(method("PUT"))
        .and(path(VAR))
        .and(query_param("lock-acquire", ""))
        .and(body_partial_json(serde_json::json!({
            "Path": "hippo-gitops/leader",
            "Namespace": "default",
            "Items": {"holder": "test/1"},
            "Lock": {"TTL": "300ms", "LockDelay": "300ms"},
        })))
        .respond_with(acquired())
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .and(path(VAR))
        .and(query_param("lock-renew", ""))
        .and(body_partial_json(
            serde_json::json!({"Lock": {"ID": "lock-1"}}),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({})))
        .expect(2..)
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .and(path(VAR))
        .and(query_param("lock-release", ""))
        .and(body_partial_json(
            serde_json::json!({"Lock": {"ID": "lock-1"}}),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({})))
        .expect(1)
        .mount(&server)
        .await;

    let (gate, release_tx, mut rx, task) = start_elector(&server);
    assert_eq!(rx.recv().await, Some(Trigger::BecameLeader));
    assert_eq!(gate.check(), Ok(()));
    // Renewed at 0.7 × TTL: still the leader well past one TTL.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(gate.check(), Ok(()));
    release_tx.send(true).unwrap();
    task.await.unwrap();
    assert_eq!(gate.check(), Err(WriteRefused::NotLeader));
    // `expect`s are verified when the server drops.
}

#[tokio::test]
async fn a_leader_whose_renew_is_refused_stops_writing_at_once() {
    let server = MockServer::start().await;
    Mock::given(method("PUT"))
        .and(path(VAR))
        .and(query_param("lock-acquire", ""))
        .respond_with(acquired())
        .up_to_n_times(1)
        .mount(&server)
        .await;
    // Then someone else holds it.
    Mock::given(method("PUT"))
        .and(path(VAR))
        .and(query_param("lock-acquire", ""))
        .respond_with(ResponseTemplate::new(409).set_body_json(serde_json::json!({
            "Namespace": "default", "Path": "hippo-gitops/leader", "Lock": null, "Items": null,
        })))
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .and(path(VAR))
        .and(query_param("lock-renew", ""))
        .respond_with(
            ResponseTemplate::new(409).set_body_string("attempting to modify locked variable"),
        )
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .and(path(VAR))
        .and(query_param("lock-release", ""))
        .respond_with(ResponseTemplate::new(200))
        .expect(0)
        .mount(&server)
        .await;

    let (gate, release_tx, mut rx, task) = start_elector(&server);
    assert_eq!(rx.recv().await, Some(Trigger::BecameLeader));
    assert_eq!(gate.check(), Ok(()));
    // The first renew (at 0.7 × TTL) is refused: the gate closes with it, before the lease
    // would have run out by the clock.
    assert_eq!(rx.recv().await, Some(Trigger::LostLeadership));
    assert_eq!(gate.check(), Err(WriteRefused::NotLeader));
    // It keeps trying to acquire, as a follower, and doesn't release a lock it lost.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(gate.check(), Err(WriteRefused::NotLeader));
    release_tx.send(true).unwrap();
    task.await.unwrap();
}

#[tokio::test]
async fn a_leader_cut_off_from_nomad_stops_writing_when_its_lease_runs_out() {
    let server = MockServer::start().await;
    Mock::given(method("PUT"))
        .and(path(VAR))
        .and(query_param("lock-acquire", ""))
        .respond_with(acquired())
        .up_to_n_times(1)
        .mount(&server)
        .await;
    // Renewals hang past the request limit (TTL / 3): no answer at all.
    Mock::given(method("PUT"))
        .and(path(VAR))
        .and(query_param("lock-renew", ""))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(5)))
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .and(path(VAR))
        .and(query_param("lock-acquire", ""))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(5)))
        .mount(&server)
        .await;

    let started = tokio::time::Instant::now();
    let (gate, release_tx, mut rx, task) = start_elector(&server);
    assert_eq!(rx.recv().await, Some(Trigger::BecameLeader));
    assert_eq!(gate.check(), Ok(()));
    assert_eq!(rx.recv().await, Some(Trigger::LostLeadership));
    let lost_after = started.elapsed();
    assert!(gate.check().is_err());
    // Not before the lease (one TTL from the acquire) ran out, and not much after: well
    // before Nomad could give the lock to another replica (2 × TTL + LockDelay).
    assert!(
        lost_after >= Duration::from_millis(300) && lost_after < Duration::from_millis(900),
        "lost after {lost_after:?}"
    );
    release_tx.send(true).unwrap();
    task.await.unwrap();
}

fn cycles(d: &Daemon) -> u64 {
    d.shared
        .metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix("hippo_gitops_reconcile_duration_seconds_count "))
        .and_then(|n| n.parse().ok())
        .unwrap()
}

fn requests(stats: &RequestStats, service: &str, method: &str) -> u64 {
    stats
        .snapshot()
        .iter()
        .filter(|(k, _)| k.service == service && k.method == method)
        .map(|(_, n)| n)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_controller_reads_three_hippo_lists_and_two_nomad_lists_per_cycle() {
    let nb = NomadBed::start().await;
    let files = copy_examples(nb.bed.path());
    let (ctx, stats) = replica(&nb);
    let mut cfg = config(&files, "idle");
    cfg.interval = Duration::from_millis(100);
    let d = Daemon::start(cfg, ctx, stats.clone()).await.unwrap();
    eventually(20, "every app Ready", || {
        all_ready(&d.shared.view(), &["weather", "invoices"])
    })
    .await;
    let c0 = cycles(&d);
    eventually(10, "a cycle after converging", || cycles(&d) > c0).await;

    let c1 = cycles(&d);
    let hippo_gets = requests(&stats, "hippo", "GET");
    let nomad_gets = requests(&stats, "nomad", "GET");
    let bindle = stats.requests("bindle");
    let writes = app_writes(&stats);
    eventually(10, "five idle cycles", || cycles(&d) >= c1 + 5).await;
    let c2 = cycles(&d);
    let n = c2 - c1;
    // A cycle may be half done at either sample: allow one cycle of slack.
    let hippo = requests(&stats, "hippo", "GET") - hippo_gets;
    let nomad = requests(&stats, "nomad", "GET") - nomad_gets;
    assert!(
        hippo >= 3 * (n - 1) && hippo <= 3 * (n + 1),
        "{hippo} Hippo GETs in {n} cycles"
    );
    assert!(
        nomad >= 2 * (n - 1) && nomad <= 2 * (n + 1),
        "{nomad} Nomad GETs in {n} cycles (jobs re-read only when they changed)"
    );
    assert_eq!(
        stats.requests("bindle"),
        bindle,
        "settled bindles are not asked for again"
    );
    assert_eq!(app_writes(&stats), writes, "idle means no writes");
    d.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// The empty-set guard (issue 14.1): deploy files that vanish or come back empty prune nothing.

fn has_job(nb: &NomadBed, id: &str) -> bool {
    nb.nomad.jobs().iter().any(|j| j["ID"] == id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_vanishes_or_comes_back_empty_keeps_the_apps_and_prunes_nothing() {
    let nb = NomadBed::start().await;
    let files = copy_examples(nb.bed.path());
    let (mut ctx, stats) = replica(&nb);
    ctx.options.prune_orphans = true;
    let mut cfg = config(&files, "single");
    cfg.leader = None;
    let d = Daemon::start(cfg, ctx, stats).await.unwrap();
    let apps = ["weather", "invoices"];
    eventually(20, "every app Ready", || all_ready(&d.shared.view(), &apps)).await;

    /// How the source goes empty.
    type Emptying = fn(&Path);
    let cases: [(&str, Emptying); 2] = [
        ("the directory deleted", |files| {
            std::fs::rename(files, files.with_extension("gone")).unwrap()
        }),
        ("every file emptied", |files| {
            for entry in std::fs::read_dir(files).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|e| e == "yaml") {
                    std::fs::write(path, "").unwrap();
                }
            }
        }),
    ];
    for (i, (what, empty)) in cases.into_iter().enumerate() {
        empty(&files);
        eventually(10, &format!("{what}: the source reported in error"), || {
            d.shared.view().source.error.is_some()
        })
        .await;
        // An orphan appears while the source is empty: pruning stays off.
        let orphan = format!("0b8f3c7e-8d51-4bde-9d64-1d2c3b4a5f6{i}");
        nb.add_orphan_job(&orphan).await;
        let cycles_then = cycles(&d);
        eventually(10, &format!("{what}: three more cycles"), || {
            cycles(&d) >= cycles_then + 3
        })
        .await;
        let view = d.shared.view();
        assert!(
            all_ready(&view, &apps),
            "{what}: every app is kept: {:?}",
            view.apps
        );
        let error = view.source.error.clone().unwrap();
        assert!(
            error.contains("define no") && error.contains("keeping the 2 app(s)"),
            "{what}: {error}"
        );
        assert!(has_job(&nb, &orphan), "{what}: the orphan was pruned");
        assert!(
            d.shared
                .metrics_text()
                .contains("hippo_gitops_source_error 1"),
            "{what}"
        );
        assert_eq!(nb.bed.hippo.snapshot().apps.len(), 2, "{what}");

        // The files come back: the error clears and pruning resumes.
        let _ = std::fs::remove_dir_all(files.with_extension("gone"));
        let _ = std::fs::remove_dir_all(&files);
        copy_examples(nb.bed.path());
        eventually(10, &format!("{what}: the source read again"), || {
            d.shared.view().source.error.is_none()
        })
        .await;
        eventually(
            10,
            &format!("{what}: the orphan pruned once the source is back"),
            || !has_job(&nb, &orphan),
        )
        .await;
        assert!(d
            .shared
            .metrics_text()
            .contains("hippo_gitops_source_error 0"));
    }
    d.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_once_on_a_source_with_no_app_prunes_nothing() {
    let nb = NomadBed::start().await;
    let specs = copy_examples(nb.bed.path());
    let specs_s = specs.to_string_lossy().into_owned();
    let (code, stdout, stderr) = nb.run(&["reconcile", "--once", "-f", &specs_s]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    let orphan = "0b8f3c7e-8d51-4bde-9d64-1d2c3b4a5f69";
    nb.add_orphan_job(orphan).await;
    // Every deploy file emptied (comments only), and one that was never a deploy file at all.
    for entry in std::fs::read_dir(&specs).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            std::fs::write(path, "# emptied by a bad merge\n").unwrap();
        }
    }
    let (_, stdout, stderr) = nb
        .run(&["reconcile", "--once", "--prune-orphans", "-f", &specs_s])
        .await;
    assert!(
        has_job(&nb, orphan),
        "an empty source pruned an orphan:\n{stdout}{stderr}"
    );
    let _ = std::fs::remove_dir_all(&specs);
    let (code, stdout, stderr) = nb
        .run(&["reconcile", "--once", "--prune-orphans", "-f", &specs_s])
        .await;
    assert_ne!(code, 0, "a missing source is an error:\n{stdout}{stderr}");
    assert!(has_job(&nb, orphan));
    assert_eq!(nb.bed.hippo.snapshot().apps.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_the_watcher_cannot_see_is_applied_by_the_interval_rescan() {
    let bed = Bed::start().await;
    // The deploy file is watched; the app it points at lives outside the watched directory, so
    // rebuilding it sends the watcher nothing (as a lost event would).
    let deploy = bed.path().join("deploy");
    std::fs::create_dir_all(&deploy).unwrap();
    let app_dir = bed.path().join("apps/outside");
    common::spin_app(&app_dir, "outside", "1.0.0", "first build");
    std::fs::write(
        deploy.join("outside.yaml"),
        common::app_doc(
            "outside",
            &["../apps/outside"],
            "    - name: production\n      range: \"*\"\n",
            false,
        ),
    )
    .unwrap();
    let (ctx, stats) = bed.context();
    let mut cfg = config(&deploy, "single");
    // The app is outside the deploy directory but inside the repository.
    cfg.source = SourceConfig::Files {
        paths: vec![deploy.clone()],
        options: hippo_gitops_core::spec::LoadOptions {
            root: Some(bed.path().to_path_buf()),
            ..Default::default()
        },
    };
    cfg.interval = Duration::from_millis(500);
    assert!(cfg.watch, "the watcher is on");
    let d = Daemon::start(cfg, ctx, stats).await.unwrap();
    let active = |bed: &Bed| {
        let st = bed.hippo.snapshot();
        let channel = st.channels.iter().find(|c| c.name == "production")?;
        st.revisions
            .iter()
            .find(|r| Some(r.id) == channel.active_revision_id)
            .map(|r| r.revision_number.clone())
    };
    eventually(20, "outside Ready on 1.0.0", || {
        all_ready(&d.shared.view(), &["outside"]) && active(&bed).as_deref() == Some("1.0.0")
    })
    .await;
    // Once the files are older than the metadata can be trusted for (PackCache::SETTLE), a
    // rescan reads nothing again: the rebuild below is seen through the bindle's metadata.
    eventually(10, "a rescan that finds the source unchanged", || {
        source_reads(&d, "unchanged") >= 1.0
    })
    .await;
    let parsed = source_reads(&d, "parsed");

    common::spin_app(&app_dir, "outside", "1.1.0", "second build");
    eventually(10, "the rebuilt app (1.1.0) applied", || {
        active(&bed).as_deref() == Some("1.1.0")
    })
    .await;
    assert!(
        source_reads(&d, "parsed") > parsed,
        "the rebuild was loaded"
    );
    d.shutdown().await.unwrap();
}

/// `hippo_gitops_source_reads_total{result}` of the running controller.
fn source_reads(d: &Daemon, result: &str) -> f64 {
    common::controller_child::metric(
        &d.shared.metrics_text(),
        &format!("hippo_gitops_source_reads_total{{result=\"{result}\"}}"),
    )
    .expect("the source reads metric")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rescan_reads_an_unchanged_source_no_more_and_an_edit_it_was_not_told_of_still_applies() {
    let bed = Bed::start().await;
    let specs = std::path::PathBuf::from(common::write_repo_app(
        bed.path(),
        "quiet",
        &["1.0.0"],
        "    - name: production\n      range: \"*\"\n",
        "",
    ));
    let (ctx, stats) = bed.context();
    let mut cfg = config(&specs, "single");
    cfg.leader = None;
    cfg.watch = false;
    let d = Daemon::start(cfg, ctx, stats).await.unwrap();
    eventually(20, "quiet Ready", || {
        all_ready(&d.shared.view(), &["quiet"])
    })
    .await;
    eventually(10, "a rescan that finds the source unchanged", || {
        source_reads(&d, "unchanged") >= 1.0
    })
    .await;
    // From then on, every interval's rescan reads metadata only.
    let parsed = source_reads(&d, "parsed");
    let unchanged = source_reads(&d, "unchanged");
    eventually(10, "three more rescans", || {
        source_reads(&d, "unchanged") >= unchanged + 3.0
    })
    .await;
    assert_eq!(
        source_reads(&d, "parsed"),
        parsed,
        "an unchanged source was parsed again"
    );

    // Edited with no watcher to tell: the interval's rescan sees the metadata move.
    let file = specs.join("quiet.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        text.replace(
            "range: \"*\"",
            "range: \"*\"\n      env:\n        LEVEL: debug",
        ),
    )
    .unwrap();
    eventually(10, "the edit applied", || {
        bed.hippo
            .snapshot()
            .environment_variables
            .iter()
            .any(|e| e.key == "LEVEL")
    })
    .await;
    assert!(source_reads(&d, "parsed") > parsed);
    d.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Issue 14.4–14.6: drift seen between cycles, states that mean what they say, alertable metrics.

/// Log lines of this thread's tracing (the test runs on one thread, the controller's tasks
/// with it), captured as text without colours.
#[derive(Clone, Default)]
struct CapturedLogs(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CapturedLogs {
    fn start() -> (CapturedLogs, tracing::subscriber::DefaultGuard) {
        let logs = CapturedLogs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    fn lines_with(&self, text: &str) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains(text))
            .map(String::from)
            .collect()
    }
}

fn app_status(d: &Daemon, app: &str) -> serde_json::Value {
    let status: serde_json::Value = serde_json::from_slice(&d.shared.status_json()).unwrap();
    status["apps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["app"] == app)
        .cloned()
        .unwrap_or_default()
}

fn cycles_by(d: &Daemon, trigger: &str) -> u64 {
    let prefix = format!("hippo_gitops_reconcile_cycles_total{{trigger=\"{trigger}\"}} ");
    d.shared
        .metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()).map(|n| n.parse().unwrap()))
        .unwrap_or(0)
}

#[tokio::test]
async fn an_allocation_failure_is_noticed_between_intervals_and_the_recovery_logged_once() {
    let (logs, _guard) = CapturedLogs::start();
    let nb = NomadBed::start().await;
    let files = copy_examples(nb.bed.path());
    let (ctx, stats) = replica(&nb);
    let mut cfg = config(&files, "single");
    cfg.leader = None;
    // The interval can't be what notices the failure: its first tick is 54 s away at least.
    cfg.interval = Duration::from_secs(60);
    let d = Daemon::start(cfg, ctx, stats).await.unwrap();
    eventually(30, "every app Ready", || {
        all_ready(&d.shared.view(), &["weather", "invoices"])
    })
    .await;
    let nomad_cycles = cycles_by(&d, "nomad");

    let job = nb.job_id("weather", "production");
    let failed_at = tokio::time::Instant::now();
    nb.nomad.fail_allocations(
        &job,
        "failed to launch command with executor: spin: no such file",
    );
    eventually(
        10,
        "the controller to show weather's failed allocation",
        || app_status(&d, "weather")["condition"]["reason"] == "AllocationFailed",
    )
    .await;
    eprintln!(
        "the failed allocation was noticed after {:?}",
        failed_at.elapsed()
    );
    assert!(
        cycles_by(&d, "nomad") > nomad_cycles,
        "noticed through the Nomad watch"
    );
    let weather = app_status(&d, "weather");
    assert_eq!(weather["condition"]["type"], "Reconciling", "{weather}");
    assert!(weather["failures"].as_u64().unwrap() >= 1, "{weather}");
    assert!(
        weather["nextAttemptAt"].is_string(),
        "retried, and when: {weather}"
    );
    let production = weather["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["channel"] == "production")
        .unwrap();
    assert_eq!(production["condition"]["reason"], "AllocationFailed");

    // The condition metric: the new series, and the Ready one gone.
    let metrics = d.shared.metrics_text();
    let weather_conditions: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("hippo_gitops_app_condition{app=\"weather\""))
        .collect();
    assert_eq!(
        weather_conditions,
        vec![
            r#"hippo_gitops_app_condition{app="weather",condition="Reconciling",reason="AllocationFailed"} 1"#
        ]
    );
    assert!(
        metrics.contains(
            r#"hippo_gitops_app_condition{app="invoices",condition="Ready",reason="UpToDate"} 1"#
        ),
        "{metrics}"
    );
    // Every metric the documented alert rules use is one the controller exports.
    let used = alert_rules::metrics_used();
    assert!(!used.is_empty(), "the rules use the controller's metrics");
    for (alert, name) in used {
        assert!(
            metrics.contains(&format!("\n{name}{{")) || metrics.contains(&format!("\n{name} ")),
            "the alert {alert} uses {name}, which /metrics does not have:\n{metrics}"
        );
    }

    // Nomad recovers and a new revision rolls out (a reschedule after a failed deployment is
    // never judged healthy): weather is Ready again, and that is logged once.
    nb.nomad.heal_allocations(&job);
    let spec = files.join("weather.yaml");
    let text = std::fs::read_to_string(&spec).unwrap();
    std::fs::write(
        &spec,
        text.replace("range: \"~1.0.0\"", "range: \"^1.0.0\""),
    )
    .unwrap();
    eventually(30, "weather Ready on 1.1.0", || {
        all_ready(&d.shared.view(), &["weather"])
    })
    .await;
    // Two more cycles (one trigger at a time: triggers queued together make one cycle).
    for _ in 0..2 {
        let next = cycles(&d) + 1;
        d.shared
            .triggers
            .send(Trigger::Webhook(
                hippo_gitops_controller::webhook::Provider::Generic,
            ))
            .await
            .unwrap();
        eventually(10, "another cycle", || cycles(&d) >= next).await;
    }
    let app_lines = logs.lines_with("app weather healthy again");
    assert_eq!(app_lines.len(), 1, "{app_lines:?}");
    assert!(app_lines[0].contains("app=\"weather\""), "{}", app_lines[0]);
    assert!(app_lines[0].contains("INFO"), "{}", app_lines[0]);
    let channel_lines = logs.lines_with("weather/production healthy again");
    assert_eq!(channel_lines.len(), 1, "{channel_lines:?}");
    assert!(logs.lines_with("invoices healthy again").is_empty());
    assert!(logs.lines_with("weather/canary healthy again").is_empty());
    d.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_cycles_write_nothing_and_what_was_applied_stays_visible() {
    // Allocations take 300 ms to be judged healthy: the cycle that applies is followed by
    // rollout checks that change nothing.
    let nb = NomadBed::start_with(common::NomadBedOptions {
        healthy_delay: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let files = copy_examples(nb.bed.path());
    let (ctx, stats) = replica(&nb);
    let mut cfg = config(&files, "single");
    cfg.leader = None;
    let d = Daemon::start(cfg, ctx, stats).await.unwrap();
    eventually(30, "every app Ready", || {
        all_ready(&d.shared.view(), &["weather", "invoices"])
    })
    .await;
    let c = cycles(&d);
    eventually(10, "two idle cycles", || cycles(&d) >= c + 2).await;
    assert!(
        d.shared.metrics_text().lines().any(|l| l
            .starts_with("hippo_gitops_reconciles_total{result=\"progressing\"}")
            && !l.ends_with(" 0")),
        "a rollout check followed the cycle that applied"
    );

    let status: serde_json::Value = serde_json::from_slice(&d.shared.status_json()).unwrap();
    assert_eq!(status["lastReconcile"]["wrote"], false, "{status}");
    let last_applied = &status["lastApplied"];
    assert_ne!(last_applied["id"], status["lastReconcile"]["id"]);
    assert!(last_applied["at"].is_string(), "{last_applied}");
    for app in ["weather", "invoices"] {
        let changes = last_applied["changes"][app].as_array();
        assert!(
            changes.is_some_and(|c| !c.is_empty()),
            "{app} in {last_applied}"
        );
        let entry = status["apps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["app"] == app)
            .unwrap();
        assert_eq!(entry["applied"], serde_json::json!([]), "idle: {entry}");
        let kept = &entry["lastApplied"];
        assert!(
            kept["changes"].as_array().is_some_and(|c| !c.is_empty()),
            "{app}: {entry}"
        );
        // The metric says when.
        let at = chrono::DateTime::parse_from_rfc3339(kept["at"].as_str().unwrap()).unwrap();
        let line = format!(
            "hippo_gitops_app_last_change_timestamp_seconds{{app=\"{app}\"}} {}",
            at.timestamp()
        );
        let metrics = d.shared.metrics_text();
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    d.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nomad_watch_names_the_jobs_whose_allocations_changed_or_went() {
    let nb = NomadBed::start().await;
    let (failing, lost) = (
        "0b8f3c7e-8d51-4bde-9d64-1d2c3b4a5f01",
        "0b8f3c7e-8d51-4bde-9d64-1d2c3b4a5f02",
    );
    nb.add_orphan_job(failing).await;
    nb.add_orphan_job(lost).await;
    let nomad = observer(&nb.nomad.url());
    // Both jobs' allocations running and judged, so nothing moves by itself any more.
    let settled = || async {
        let allocs = nomad
            .client
            .list_allocations(None, None)
            .await
            .unwrap()
            .value;
        [failing, lost]
            .iter()
            .all(|job| allocs.iter().any(|a| a.job_id == *job && a.is_healthy()))
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !settled().await {
        assert!(tokio::time::Instant::now() < deadline, "jobs never settled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wait = Duration::from_secs(30);
    // No list kept yet: one plain read keeps one, and names nothing.
    assert!(nomad
        .wait_for_allocation_change(wait)
        .await
        .unwrap()
        .is_empty());

    // Blocks until the change, then names only the job it touched.
    let watch = {
        let nomad = nomad.clone();
        tokio::spawn(async move { nomad.wait_for_allocation_change(wait).await })
    };
    nb.nomad.fail_allocations(failing, "spin: no such file");
    let changed = tokio::time::timeout(Duration::from_secs(10), watch)
        .await
        .expect("the blocking query returned on the change")
        .unwrap()
        .unwrap();
    assert_eq!(changed.into_iter().collect::<Vec<_>>(), vec![failing]);

    // A job whose allocations are gone (purged and collected) is named too.
    nb.nomad.lose_job(lost);
    let changed = nomad.wait_for_allocation_change(wait).await.unwrap();
    assert!(changed.contains(lost), "{changed:?}");
    assert!(!changed.contains(failing), "{changed:?}");

    // Nothing new: the query waits its time out and names nothing.
    let started = tokio::time::Instant::now();
    let changed = nomad
        .wait_for_allocation_change(Duration::from_millis(300))
        .await
        .unwrap();
    assert!(changed.is_empty(), "{changed:?}");
    assert!(started.elapsed() >= Duration::from_millis(300));
}

//! Progressive delivery (issue 16) in the controller, on the real Bindle server and the Hippo
//! and Nomad emulators: a version pushed to Bindle with no Git change is registered within one
//! discover interval and canary runs it; production follows only after `after` of unbroken
//! health on Nomad (Nomad's own timestamps), never earlier; an unhealthy revision is never
//! promoted, and a `rollback: true` channel is pinned back to the last healthy revision, which a
//! restart does not undo; a newer healthy revision resumes the range; a failing check holds a
//! promotion back and a passing one lets it through.

use hippo_gitops_testkit as common;

use std::{
    path::Path,
    sync::{
        atomic::{AtomicU16, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use common::{eventually, NomadBed, NomadBedOptions};
use hippo_gitops_controller::{source::SourceConfig, ControllerConfig, Daemon, Trigger};
use hippo_gitops_core::{
    delivery::{DeliveryRecords, RECORDS_VARIABLE},
    events::EventType,
};

const AFTER: Duration = Duration::from_secs(2);

fn deploy_file(dir: &Path, production: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("shop.yaml"),
        format!(
            "apiVersion: hippo-gitops/v1\nkind: App\nmetadata:\n  name: shop\nspec:\n  revisions:\n    - discover: \">=1.0.0\"\n  channels:\n    - name: canary\n      range: \"*\"\n      rollback: true\n    - name: production\n{production}"
        ),
    )
    .unwrap();
}

fn promote_after(after: Duration) -> String {
    format!(
        "      promote:\n        from: canary\n        after: {}ms\n",
        after.as_millis()
    )
}

fn config(files: &Path, state: &Path) -> ControllerConfig {
    let mut c = common::controller_config(
        SourceConfig::Files {
            paths: vec![files.to_path_buf()],
            options: Default::default(),
        },
        state,
        None,
    );
    // Discovery and promotion must come from their own wakeups, not from the interval.
    c.interval = Duration::from_secs(600);
    c.discover_interval = Duration::from_millis(700);
    c.progress_interval = Duration::from_millis(100);
    c
}

/// Pushes `shop/<version>` to the Bindle server directly: no deploy file changes.
async fn push(nb: &NomadBed, version: &str) {
    nb.bed.push_version("shop", version).await;
}

/// The revision `channel` of shop runs in Hippo.
fn running(nb: &NomadBed, channel: &str) -> Option<String> {
    nb.bed.running("shop", channel)
}

fn registered(nb: &NomadBed) -> Vec<String> {
    let state = nb.bed.hippo.snapshot();
    let Some(app) = state.apps.iter().find(|a| a.name == "shop") else {
        return Vec::new();
    };
    let mut v: Vec<String> = state
        .revisions
        .iter()
        .filter(|r| r.app_id == app.id)
        .map(|r| r.revision_number.clone())
        .collect();
    v.sort();
    v
}

/// Every (channel, revision) Hippo's channels ran, with when it was first seen: polled every
/// 10 ms for as long as the test runs.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<FirstSeen>>>);

/// (channel, revision, first seen).
type FirstSeen = (String, String, DateTime<Utc>);

impl Seen {
    fn watch(nb: &Arc<NomadBed>) -> Seen {
        let seen = Seen::default();
        let nb = Arc::downgrade(nb);
        let out = seen.clone();
        tokio::spawn(async move {
            while let Some(nb) = nb.upgrade() {
                let state = nb.bed.hippo.snapshot();
                drop(nb);
                let now = Utc::now();
                {
                    let mut list = out.0.lock().unwrap();
                    for ch in &state.channels {
                        let Some(rev) = ch.active_revision_id else {
                            continue;
                        };
                        let Some(r) = state.revisions.iter().find(|r| r.id == rev) else {
                            continue;
                        };
                        if !list
                            .iter()
                            .any(|(c, n, _)| *c == ch.name && *n == r.revision_number)
                        {
                            list.push((ch.name.clone(), r.revision_number.clone(), now));
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        seen
    }

    fn first(&self, channel: &str, revision: &str) -> Option<DateTime<Utc>> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .find(|(c, r, _)| c == channel && r == revision)
            .map(|(_, _, t)| *t)
    }

    fn revisions_of(&self, channel: &str) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(c, _, _)| c == channel)
            .map(|(_, r, _)| r.clone())
            .collect()
    }
}

/// Since when every allocation of the job's current version is healthy, by Nomad's
/// `DeploymentStatus.Timestamp` (the promotion clock), when the job runs `shop/<revision>`.
fn healthy_since(nb: &NomadBed, channel: &str, revision: &str) -> Option<DateTime<Utc>> {
    let state = nb.bed.hippo.snapshot();
    let app = state.apps.iter().find(|a| a.name == "shop")?;
    let job_id = state
        .channels
        .iter()
        .find(|c| c.app_id == app.id && c.name == channel)?
        .id
        .to_string();
    if nb.bindle_arg(&job_id)? != format!("shop/{revision}") {
        return None;
    }
    let job = nb.nomad.jobs().into_iter().find(|j| j["ID"] == job_id)?;
    let version = job["Version"].as_u64()?;
    let allocs: Vec<serde_json::Value> = nb
        .nomad
        .allocations()
        .into_iter()
        .filter(|a| {
            a["JobID"] == job_id && a["JobVersion"] == version && a["DesiredStatus"] == "run"
        })
        .collect();
    if allocs.is_empty() {
        return None;
    }
    allocs
        .iter()
        .map(|a| {
            (a["DeploymentStatus"]["Healthy"] == true)
                .then(|| a["DeploymentStatus"]["Timestamp"].as_str())
                .flatten()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc))
        })
        .try_fold(DateTime::<Utc>::MIN_UTC, |latest, t| {
            t.map(|t| latest.max(t))
        })
}

fn metric(d: &Daemon, name: &str) -> u64 {
    d.shared
        .metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name}"))
}

fn events_of(d: &Daemon, kind: EventType) -> Vec<hippo_gitops_core::events::Event> {
    d.shared
        .insight
        .events
        .all()
        .into_iter()
        .filter(|e| e.kind == kind)
        .collect()
}

fn channel_status(d: &Daemon, channel: &str) -> serde_json::Value {
    let view: serde_json::Value = serde_json::from_slice(&d.shared.status_json()).unwrap();
    view["apps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["app"] == "shop")
        .and_then(|a| {
            a["channels"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["channel"] == channel)
                .cloned()
        })
        .unwrap_or_default()
}

/// The bed (Nomad judges health after `healthy_delay`), a watch on Hippo's channels, and a
/// controller on shop's deploy file with `production` as given, once `shop/1.0.0` is on Bindle.
async fn started(healthy_delay: Duration, production: &str) -> (Arc<NomadBed>, Seen, Daemon) {
    let nb = Arc::new(
        NomadBed::start_with(NomadBedOptions {
            healthy_delay,
            ..Default::default()
        })
        .await,
    );
    let seen = Seen::watch(&nb);
    let files = nb.bed.path().join("deploy");
    deploy_file(&files, production);
    push(&nb, "1.0.0").await;
    let d = start(&nb, &files).await;
    (nb, seen, d)
}

async fn start(nb: &NomadBed, files: &Path) -> Daemon {
    let (ctx, stats) = nb.context(None);
    Daemon::start(config(files, &nb.bed.path().join("state")), ctx, stats)
        .await
        .unwrap()
}

/// Waits for `n` more cycles, each one asked for on its own.
async fn cycles(d: &Daemon, n: usize) {
    for _ in 0..n {
        let count = || {
            d.shared
                .metrics_text()
                .lines()
                .find_map(|l| l.strip_prefix("hippo_gitops_reconcile_duration_seconds_count "))
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap()
        };
        let next = count() + 1;
        d.shared.triggers.send(Trigger::Api).await.unwrap();
        eventually(10, "another cycle", || count() >= next).await;
    }
}

/// Asserts that `channel` first ran `revision` no sooner than `after` past the moment canary's
/// allocations of it were all healthy.
fn assert_promoted_after_window(nb: &NomadBed, seen: &Seen, revision: &str) {
    let healthy = healthy_since(nb, "canary", revision).expect("canary runs it healthy");
    let promoted = seen
        .first("production", revision)
        .expect("production runs it");
    let waited = promoted - healthy;
    eprintln!("{revision}: healthy in canary at {healthy}, promoted after {waited}");
    assert!(
        waited >= chrono::Duration::from_std(AFTER).unwrap(),
        "production moved to {revision} {waited} after canary was healthy on it, before {AFTER:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_bindle_is_discovered_runs_in_canary_and_is_promoted_after_its_window() {
    let (nb, seen, d) = started(Duration::from_millis(300), &promote_after(AFTER)).await;

    eventually(30, "production promoted to 1.0.0", || {
        seen.first("production", "1.0.0").is_some()
    })
    .await;
    assert_promoted_after_window(&nb, &seen, "1.0.0");
    assert_eq!(running(&nb, "canary").as_deref(), Some("1.0.0"));

    // A new version on Bindle, and no change to the deploy files.
    push(&nb, "1.1.0").await;
    let pushed = tokio::time::Instant::now();
    eventually(10, "1.1.0 registered and running in canary", || {
        running(&nb, "canary").as_deref() == Some("1.1.0")
    })
    .await;
    let took = pushed.elapsed();
    eprintln!("1.1.0 was registered and canary moved {took:?} after the push");
    // One discover interval (700 ms), plus the cycle that registers it.
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert_eq!(
        registered(&nb),
        ["1.0.0", "1.1.0"],
        "registered exactly once"
    );
    assert_eq!(
        running(&nb, "production").as_deref(),
        Some("1.0.0"),
        "production waits for the window"
    );
    // While it waits, status says how long it has been healthy.
    eventually(10, "the pending promotion in status", || {
        channel_status(&d, "production")["promotion"]
            .as_str()
            .is_some_and(|p| p.contains("canary has run 1.1.0 healthy for"))
    })
    .await;

    eventually(30, "production promoted to 1.1.0", || {
        seen.first("production", "1.1.0").is_some()
    })
    .await;
    assert_promoted_after_window(&nb, &seen, "1.1.0");
    assert_eq!(seen.revisions_of("production"), ["1.0.0", "1.1.0"]);

    eventually(10, "the counters", || {
        metric(&d, "hippo_gitops_promotions_total") == 2
    })
    .await;
    // 1.0.0 came with the app (Hippo imports a bindle's versions on create); 1.1.0 was found.
    assert_eq!(metric(&d, "hippo_gitops_discovered_total"), 1);
    assert_eq!(metric(&d, "hippo_gitops_rollbacks_total"), 0);
    let discovered = events_of(&d, EventType::Discovered);
    assert_eq!(discovered.len(), 1, "{discovered:?}");
    assert!(discovered[0].message.contains("1.1.0"), "{discovered:?}");
    let promoted = events_of(&d, EventType::Promoted);
    assert_eq!(promoted.len(), 2, "{promoted:?}");
    assert_eq!(promoted[1].channel.as_deref(), Some("production"));
    assert_eq!(promoted[1].revision_after.as_deref(), Some("1.1.0"));
    d.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_revision_is_never_promoted_is_rolled_back_and_stays_back_after_a_restart() {
    let (nb, seen, d) = started(Duration::from_millis(300), &promote_after(AFTER)).await;
    eventually(30, "production promoted to 1.0.0", || {
        seen.first("production", "1.0.0").is_some()
    })
    .await;

    // 1.1.0's allocations will be judged unhealthy.
    nb.nomad
        .make_unhealthy("shop/1.1.0", "the health check on /healthz failed");
    push(&nb, "1.1.0").await;
    eventually(10, "canary moved to 1.1.0", || {
        seen.first("canary", "1.1.0").is_some()
    })
    .await;
    let failing_at = Utc::now();
    eventually(20, "canary rolled back to 1.0.0", || {
        let ch = channel_status(&d, "canary");
        running(&nb, "canary").as_deref() == Some("1.0.0")
            && ch["condition"]["reason"] == "RolledBack"
    })
    .await;
    eprintln!(
        "rolled back {} after canary moved to 1.1.0",
        Utc::now() - failing_at
    );
    let canary = channel_status(&d, "canary");
    assert_eq!(canary["condition"]["type"], "Ready", "{canary}");
    assert!(
        canary["condition"]["message"]
            .as_str()
            .unwrap()
            .contains("1.1.0"),
        "{canary}"
    );
    assert_eq!(metric(&d, "hippo_gitops_rollbacks_total"), 1);
    let rolled = events_of(&d, EventType::RolledBack);
    assert_eq!(rolled.len(), 1, "{rolled:?}");
    assert_eq!(rolled[0].channel.as_deref(), Some("canary"));
    // The record is in Nomad, where a restart finds it.
    let (ctx, _) = nb.context(None);
    let (items, _) = ctx
        .nomad
        .as_ref()
        .unwrap()
        .client
        .read_variable(RECORDS_VARIABLE)
        .await
        .unwrap()
        .expect("the records variable");
    let records = DeliveryRecords::from_items(&items).unwrap();
    let record = records
        .rollback("shop", "canary", "range *")
        .expect("canary's record");
    assert!(record.bad.contains("1.1.0"), "{record:?}");
    assert_eq!(record.pinned, "1.0.0");

    // A restart: the channel is not moved forward to 1.1.0 again.
    d.shutdown().await.unwrap();
    let moves_before = seen.revisions_of("canary");
    let d = start(&nb, &nb.bed.path().join("deploy")).await;
    cycles(&d, 3).await;
    assert_eq!(running(&nb, "canary").as_deref(), Some("1.0.0"));
    assert_eq!(
        seen.revisions_of("canary"),
        moves_before,
        "no move after the restart"
    );
    eventually(10, "still RolledBack after the restart", || {
        channel_status(&d, "canary")["condition"]["reason"] == "RolledBack"
    })
    .await;

    // A newer healthy revision resumes the range, and is promoted in its turn.
    push(&nb, "1.2.0").await;
    eventually(10, "canary follows its range again", || {
        running(&nb, "canary").as_deref() == Some("1.2.0")
    })
    .await;
    eventually(30, "production promoted to 1.2.0", || {
        seen.first("production", "1.2.0").is_some()
    })
    .await;
    assert_promoted_after_window(&nb, &seen, "1.2.0");
    assert!(
        !seen
            .revisions_of("production")
            .contains(&"1.1.0".to_string()),
        "the failing revision was never promoted: {:?}",
        seen.revisions_of("production")
    );
    d.shutdown().await.unwrap();
}

/// A health endpoint that answers with whatever status it is set to, and counts its hits.
async fn health_server(status: Arc<AtomicU16>) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let paths: Arc<Mutex<Vec<String>>> = Arc::default();
    let hits = paths.clone();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let status = status.load(Ordering::SeqCst);
            let hits = hits.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = sock.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]).to_string();
                if let Some(path) = request.split_whitespace().nth(1) {
                    hits.lock().unwrap().push(path.to_string());
                }
                let _ = sock
                    .write_all(
                        format!(
                            "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    (format!("http://{addr}"), paths)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_check_holds_the_promotion_and_a_passing_one_lets_it_through() {
    let status = Arc::new(AtomicU16::new(503));
    let (base, hits) = health_server(status.clone()).await;
    let (nb, seen, d) = started(
        Duration::from_millis(100),
        &format!(
            "      promote:\n        from: canary\n        after: 1s\n        check:\n          url: \"{base}/health/{{domain}}\"\n          interval: 100ms\n"
        ),
    )
    .await;
    eventually(20, "canary healthy on 1.0.0", || {
        healthy_since(&nb, "canary", "1.0.0").is_some()
    })
    .await;
    // Well past `after`: the failing check holds the promotion back.
    let held_from = tokio::time::Instant::now();
    eventually(10, "the held promotion in status", || {
        channel_status(&d, "production")["promotion"]
            .as_str()
            .is_some_and(|p| p.contains("its check failed") && p.contains("503"))
    })
    .await;
    tokio::time::sleep_until(held_from + Duration::from_secs(2)).await;
    assert_eq!(running(&nb, "production"), None, "held back by the check");
    let probed: Vec<String> = hits.lock().unwrap().clone();
    assert!(probed.len() >= 5, "probed every 100 ms: {probed:?}");
    let state = nb.bed.hippo.snapshot();
    let canary_domain = &state
        .channels
        .iter()
        .find(|c| c.name == "canary")
        .unwrap()
        .domain;
    assert!(
        probed
            .iter()
            .all(|p| *p == format!("/health/{canary_domain}")),
        "{{domain}} is canary's domain: {probed:?}"
    );

    // The check passes from now on: promoted once it has passed for `after`.
    let passing_from = Utc::now();
    status.store(200, Ordering::SeqCst);
    eventually(20, "production promoted to 1.0.0", || {
        seen.first("production", "1.0.0").is_some()
    })
    .await;
    let waited = seen.first("production", "1.0.0").unwrap() - passing_from;
    eprintln!("promoted {waited} after the check started passing");
    assert!(
        waited >= chrono::Duration::seconds(1),
        "promoted {waited} after the check passed, before its 1s window"
    );
    d.shutdown().await.unwrap();
}

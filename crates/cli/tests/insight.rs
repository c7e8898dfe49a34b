//! The controller's API, event history and notifications, in-process on the real Bindle
//! server and the Hippo and Nomad emulators: `/api/v1` shapes and `since` filtering, the
//! reconcile endpoint's 401/403/404/202, events surviving a restart (and not reported again),
//! one notification per transition over ten idle cycles, a dead receiver that holds up
//! nothing, and GitHub commit statuses for a Git source at its commit.

use hippo_gitops_testkit as common;

use std::{path::Path, sync::Arc, time::Duration};

use axum::{http::StatusCode, response::IntoResponse};
use common::{
    copy_examples, eventually, git, git_repo,
    receiver::{receiver, receiver_hanging},
    NomadBed,
};
use hippo_gitops_controller::{
    notifications::DeliveryPolicy,
    source::{GitConfig, SourceConfig},
    ControllerConfig, Daemon,
};
use hippo_gitops_core::{
    events::{Event, EventType},
    status::ConditionType,
};
use serde_json::Value;
use wiremock::{
    matchers::{body_partial_json, method, path},
    Mock, MockServer, ResponseTemplate,
};

const TOKEN: &str = "t0ken-for-tests";

fn config(source: SourceConfig, state: &Path, token: Option<&str>) -> ControllerConfig {
    let mut c = common::controller_config(source, state, token);
    c.insight.external_url = Some("https://gitops.example.com".into());
    c.insight.delivery = DeliveryPolicy {
        initial_backoff: Duration::from_millis(50),
        timeout: Duration::from_secs(30),
        ..Default::default()
    };
    c
}

fn files(dir: &Path) -> SourceConfig {
    SourceConfig::Files {
        paths: vec![dir.to_path_buf()],
        options: Default::default(),
    }
}

async fn start(nb: &NomadBed, config: ControllerConfig) -> (Daemon, String) {
    common::start_controller(nb, config).await
}

async fn get(url: &str) -> (StatusCode, Value) {
    let r = reqwest::get(url).await.unwrap();
    let status = StatusCode::from_u16(r.status().as_u16()).unwrap();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn ready(daemon: &Daemon, apps: &[&str]) -> bool {
    let view = daemon.shared.view();
    apps.iter().all(|app| {
        view.apps
            .iter()
            .any(|a| &a.status.app == app && a.status.condition.kind == ConditionType::Ready)
    })
}

fn events_of(daemon: &Daemon, app: &str) -> Vec<Event> {
    daemon
        .shared
        .insight
        .events
        .all()
        .into_iter()
        .filter(|e| e.app == app)
        .collect()
}

fn cycles(daemon: &Daemon) -> u64 {
    daemon
        .shared
        .metrics_text()
        .lines()
        .filter(|l| l.starts_with("hippo_gitops_reconcile_cycles_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Pins weather's canary to `version`.
fn pin_canary(specs: &Path, version: &str) {
    let file = specs.join("weather.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("revision: "))
        .unwrap()
        .to_string();
    let indent = &line[..line.len() - line.trim_start().len()];
    std::fs::write(
        &file,
        text.replace(&line, &format!("{indent}revision: {version}")),
    )
    .unwrap();
}

#[tokio::test]
async fn the_api_answers_apps_an_app_and_events_since_a_time() {
    let nb = NomadBed::start().await;
    let specs = copy_examples(nb.bed.path());
    let state = nb.bed.path().join("state");
    let (daemon, base) = start(&nb, config(files(&specs), &state, Some(TOKEN))).await;
    eventually(30, "every app Ready", || {
        ready(&daemon, &["weather", "invoices"])
    })
    .await;

    let (status, apps) = get(&format!("{base}/api/v1/apps")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(apps["role"], "single");
    assert_eq!(apps["ready"], true);
    assert_eq!(apps["reconcileEnabled"], true);
    assert_eq!(apps["source"]["kind"], "files");
    assert!(apps["lastReconcile"]["id"].is_string());
    let weather = apps["apps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["app"] == "weather")
        .unwrap();
    assert_eq!(weather["condition"]["type"], "Ready");
    assert_eq!(weather["failures"], 0);
    let production = weather["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["channel"] == "production")
        .unwrap();
    assert_eq!(production["activeRevision"], "1.0.0");
    assert_eq!(production["desiredRevision"], "1.0.0");
    assert_eq!(production["nomad"]["state"], "job");
    assert_eq!(production["nomad"]["healthy"], production["nomad"]["total"]);
    // The last cycle that changed it, with what it changed.
    assert!(weather["lastChange"]["at"].is_string(), "{weather}");
    assert!(!weather["lastChange"]["changes"]
        .as_array()
        .unwrap()
        .is_empty());

    let (status, one) = get(&format!("{base}/api/v1/apps/weather")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["app"], "weather");
    let detail = &one["detail"];
    assert!(
        detail["origin"]
            .as_str()
            .unwrap()
            .ends_with("weather.yaml:7"),
        "{detail}"
    );
    assert_eq!(detail["pending"], serde_json::json!([]));
    let revisions: Vec<(&str, bool, &str)> = detail["revisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["version"].as_str().unwrap(),
                r["registered"].as_bool().unwrap(),
                r["source"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        revisions,
        [("1.1.0", true, "path"), ("1.0.0", true, "path")]
    );
    assert_eq!(
        detail["revisions"][0]["activeIn"],
        serde_json::json!(["canary"])
    );
    let kinds: Vec<&str> = one["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"Applied") && kinds.last() == Some(&"Ready"),
        "{kinds:?}"
    );
    assert_eq!(
        get(&format!("{base}/api/v1/apps/nope")).await.0,
        StatusCode::NOT_FOUND
    );

    // `since`: exactly the events after the one named.
    let (_, all) = get(&format!("{base}/api/v1/events")).await;
    let all = all["events"].as_array().unwrap().clone();
    assert!(all.len() >= 4, "{all:?}");
    let third = all[2]["time"].as_str().unwrap();
    let url =
        reqwest::Url::parse_with_params(&format!("{base}/api/v1/events"), &[("since", third)])
            .unwrap();
    let (_, after) = get(url.as_str()).await;
    assert_eq!(after["events"].as_array().unwrap()[..], all[3..]);
    let (_, weather_only) = get(&format!("{base}/api/v1/events?app=weather&since=1h")).await;
    assert!(weather_only["events"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["app"] == "weather"));
    assert_eq!(
        weather_only["events"].as_array().unwrap().len(),
        events_of(&daemon, "weather").len()
    );
    let (status, bad) = get(&format!("{base}/api/v1/events?since=yesterday")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(bad["error"].as_str().unwrap().contains("invalid since"));
    daemon.shutdown().await.unwrap();
}

#[tokio::test]
async fn reconcile_through_the_api_needs_the_token() {
    let nb = NomadBed::start().await;
    let specs = copy_examples(nb.bed.path());
    let mut c = config(files(&specs), &nb.bed.path().join("state"), Some(TOKEN));
    // No interval cycle after the first: what runs later was asked for.
    c.interval = Duration::from_secs(600);
    let (daemon, base) = start(&nb, c).await;
    eventually(30, "every app Ready", || {
        ready(&daemon, &["weather", "invoices"])
    })
    .await;
    let client = reqwest::Client::new();
    let post = |app: &str, auth: Option<&str>| {
        let mut r = client.post(format!("{base}/api/v1/apps/{app}/reconcile"));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.send()
    };
    assert_eq!(post("weather", None).await.unwrap().status(), 401);
    assert_eq!(
        post("weather", Some("Bearer wrong"))
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(post("weather", Some(TOKEN)).await.unwrap().status(), 401);
    assert!(!daemon.shared.metrics_text().contains("trigger=\"api\""));
    let bearer = format!("Bearer {TOKEN}");
    assert_eq!(post("nope", Some(&bearer)).await.unwrap().status(), 404);
    let reconciled_by = |daemon: &Daemon| {
        let view = daemon.shared.view();
        let weather = view.apps.iter().find(|a| a.status.app == "weather");
        weather.and_then(|a| a.reconcile_id.clone())
    };
    let before = reconciled_by(&daemon);
    let ok = post("weather", Some(&bearer)).await.unwrap();
    assert_eq!(ok.status(), 202);
    assert_eq!(
        ok.json::<Value>().await.unwrap(),
        serde_json::json!({"triggered": true, "app": "weather"})
    );
    eventually(10, "weather reconciled again", || {
        reconciled_by(&daemon) != before
    })
    .await;
    assert!(daemon
        .shared
        .metrics_text()
        .contains("hippo_gitops_reconcile_cycles_total{trigger=\"api\"} 1"));
    daemon.shutdown().await.unwrap();

    // Without a token the endpoint is off, whatever is sent.
    let (daemon, base) = start(
        &nb,
        config(files(&specs), &nb.bed.path().join("state2"), None),
    )
    .await;
    let r = client
        .post(format!("{base}/api/v1/apps/weather/reconcile"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let (_, apps) = get(&format!("{base}/api/v1/apps")).await;
    assert_eq!(apps["reconcileEnabled"], false);
    daemon.shutdown().await.unwrap();
}

#[tokio::test]
async fn events_survive_a_restart_and_are_not_reported_again() {
    let nb = NomadBed::start().await;
    let specs = copy_examples(nb.bed.path());
    let state = nb.bed.path().join("state");
    let (daemon, _) = start(&nb, config(files(&specs), &state, None)).await;
    eventually(30, "every app Ready", || {
        ready(&daemon, &["weather", "invoices"])
    })
    .await;
    let before = daemon.shared.insight.events.all();
    assert!(before
        .iter()
        .any(|e| e.app == "weather" && e.kind == EventType::Ready));
    daemon.shutdown().await.unwrap();

    let (daemon, base) = start(&nb, config(files(&specs), &state, None)).await;
    eventually(30, "every app Ready again", || {
        ready(&daemon, &["weather", "invoices"])
    })
    .await;
    let seen = cycles(&daemon);
    eventually(10, "three more cycles", || cycles(&daemon) >= seen + 3).await;
    let (_, after) = get(&format!("{base}/api/v1/events")).await;
    let after: Vec<Event> = serde_json::from_value(after["events"].clone()).unwrap();
    // Everything from before, and nothing new: nothing changed, nothing to report again.
    assert_eq!(after, before);
    daemon.shutdown().await.unwrap();
}

fn webhook_notification(url_var: &str) -> String {
    format!("apiVersion: hippo-gitops/v1\nkind: Notification\nmetadata:\n  name: team-alerts\nspec:\n  type: webhook\n  addressFromEnv: {url_var}\n  secretFromEnv: ALERTS_SECRET\n  apps: [\"weather\"]\n")
}

/// The examples with a webhook Notification for weather (its address in `ALERTS_URL`).
async fn bed_with_alerts() -> (NomadBed, std::path::PathBuf) {
    let nb = NomadBed::start().await;
    let specs = copy_examples(nb.bed.path());
    std::fs::write(
        specs.join("alerts.yaml"),
        webhook_notification("ALERTS_URL"),
    )
    .unwrap();
    (nb, specs)
}

fn env_with(url_var: &'static str, url: String) -> hippo_gitops_controller::insight::EnvLookup {
    Arc::new(move |var| match var {
        v if v == url_var => Some(url.clone()),
        "ALERTS_SECRET" => Some("k3y".into()),
        _ => None,
    })
}

#[tokio::test]
async fn one_notification_per_transition_over_ten_idle_cycles() {
    let (nb, specs) = bed_with_alerts().await;
    let r = receiver(|_| StatusCode::OK.into_response());
    let mut c = config(files(&specs), &nb.bed.path().join("state"), None);
    c.insight.env = env_with("ALERTS_URL", r.url.clone());
    let (daemon, _) = start(&nb, c).await;
    eventually(30, "every app Ready", || {
        ready(&daemon, &["weather", "invoices"])
    })
    .await;
    let sent = |r: &common::receiver::Receiver| -> Vec<Event> {
        r.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(_, body, _)| serde_json::from_slice(body).unwrap())
            .collect()
    };
    // The first convergence: weather's changes and its Ready (invoices is not for this
    // receiver).
    let expected = events_of(&daemon, "weather").len();
    r.wait_for(expected).await;
    let first = sent(&r);
    assert!(first.iter().all(|e| e.app == "weather"));
    assert_eq!(first.last().unwrap().kind, EventType::Ready);

    let seen = cycles(&daemon);
    eventually(15, "ten idle cycles", || cycles(&daemon) >= seen + 10).await;
    assert_eq!(sent(&r).len(), first.len(), "idle cycles notify nothing");

    // A transition: the canary pinned to another revision.
    pin_canary(&specs, "1.0.0");
    eventually(15, "the edit notified and Ready again", || {
        let now = sent(&r);
        now.len() > first.len() && now.last().unwrap().kind == EventType::Ready
    })
    .await;
    let news = sent(&r)[first.len()..].to_vec();
    let applied = news
        .iter()
        .find(|e| e.kind == EventType::Applied && e.channel.as_deref() == Some("canary"))
        .unwrap_or_else(|| panic!("{news:?}"));
    assert_eq!(applied.revision_before.as_deref(), Some("1.1.0"));
    assert_eq!(applied.revision_after.as_deref(), Some("1.0.0"));
    let seen = cycles(&daemon);
    let count = sent(&r).len();
    eventually(15, "ten more idle cycles", || cycles(&daemon) >= seen + 10).await;
    assert_eq!(sent(&r).len(), count);
    daemon.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_dead_receiver_holds_up_no_convergence() {
    let (nb, specs) = bed_with_alerts().await;
    let (url, begun) = receiver_hanging();
    let mut c = config(files(&specs), &nb.bed.path().join("state"), None);
    c.insight.env = env_with("ALERTS_URL", url);
    let (daemon, _) = start(&nb, c).await;
    eventually(30, "every app Ready", || {
        ready(&daemon, &["weather", "invoices"])
    })
    .await;
    // The receiver holds the first notification and answers nothing (its timeout is 30 s).
    assert_eq!(begun.load(std::sync::atomic::Ordering::SeqCst), 1);
    pin_canary(&specs, "1.0.0");
    eventually(
        10,
        "the edit applied while the receiver still holds its request",
        || {
            events_of(&daemon, "weather").iter().any(|e| {
                e.channel.as_deref() == Some("canary")
                    && e.revision_after.as_deref() == Some("1.0.0")
            })
        },
    )
    .await;
    assert_eq!(begun.load(std::sync::atomic::Ordering::SeqCst), 1);
    daemon.shutdown().await.unwrap();
}

#[tokio::test]
async fn github_commit_statuses_for_a_git_source_at_its_commit() {
    let nb = NomadBed::start().await;
    let root = nb.bed.path();
    let (url, work) = git_repo(root);
    let specs = copy_examples(&work);
    std::fs::write(
        specs.join("pr.yaml"),
        "apiVersion: hippo-gitops/v1\nkind: Notification\nmetadata:\n  name: pr-checks\nspec:\n  type: github\n  addressFromEnv: GITHUB_API\n  secretFromEnv: GITHUB_TOKEN\n  events: [Ready, Failed, Stalled, CommitApplied]\n  repository: org/deploy\n",
    )
    .unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "--quiet", "-m", "deploy files"]);
    git(&work, &["push", "--quiet", &url, "HEAD:refs/heads/main"]);
    let sha = git(&work, &["rev-parse", "HEAD"]);

    let github = MockServer::start().await;
    let status_path = format!("/api/v3/repos/org/deploy/statuses/{sha}");
    for (context, target) in [
        (
            "hippo-gitops/weather",
            "https://gitops.example.com/apps/weather",
        ),
        (
            "hippo-gitops/invoices",
            "https://gitops.example.com/apps/invoices",
        ),
        ("hippo-gitops", "https://gitops.example.com/"),
    ] {
        Mock::given(method("POST"))
            .and(path(status_path.clone()))
            .and(body_partial_json(serde_json::json!({
                "state": "success",
                "context": context,
                "target_url": target,
            })))
            .respond_with(ResponseTemplate::new(201))
            .expect(1)
            .mount(&github)
            .await;
    }
    let source = SourceConfig::Git(GitConfig {
        url,
        branch: "main".into(),
        path: "deploy-specs".into(),
        interval: Duration::from_secs(60),
        dir: root.join("clones"),
        timeout: Duration::from_secs(30),
        max_file_size: 10 << 20,
    });
    let mut c = config(source, &root.join("state"), None);
    let api = format!("{}/api/v3", github.uri());
    c.insight.env = Arc::new(move |var| match var {
        "GITHUB_API" => Some(api.clone()),
        "GITHUB_TOKEN" => Some("ghp_test".into()),
        _ => None,
    });
    let (daemon, _) = start(&nb, c).await;
    eventually(30, "the commit applied", || {
        daemon.shared.view().source.last_applied_commit.as_deref() == Some(sha.as_str())
    })
    .await;
    eventually(10, "three statuses sent", || {
        daemon.shared.insight.notifier.counts()[&("github", "delivered")] == 3
    })
    .await;
    let seen = cycles(&daemon);
    eventually(10, "three idle cycles", || cycles(&daemon) >= seen + 3).await;
    // `expect(1)` each: no status sent twice.
    github.verify().await;
    let requests = github.received_requests().await.unwrap();
    assert_eq!(requests.len(), 3);
    for r in &requests {
        let header = |name: &str| {
            r.headers
                .iter()
                .find(|(k, _)| k.as_str() == name)
                .map(|(_, v)| v.last().as_str().to_string())
        };
        assert_eq!(header("authorization").as_deref(), Some("Bearer ghp_test"));
        assert_eq!(
            header("x-github-api-version").as_deref(),
            Some("2022-11-28")
        );
    }
    daemon.shutdown().await.unwrap();
}

#[tokio::test]
async fn history_prints_a_running_controller_s_events() {
    let nb = NomadBed::start().await;
    let specs = copy_examples(nb.bed.path());
    let (daemon, base) = start(
        &nb,
        config(files(&specs), &nb.bed.path().join("state"), None),
    )
    .await;
    eventually(30, "every app Ready", || {
        ready(&daemon, &["weather", "invoices"])
    })
    .await;
    let history = |args: &[&str]| {
        let mut all = vec!["history".to_string(), "--controller".into(), base.clone()];
        all.extend(args.iter().map(|a| a.to_string()));
        let cwd = nb.bed.path().to_path_buf();
        tokio::task::spawn_blocking(move || common::run_binary(&all, &[], &cwd))
    };
    let (code, out, err) = history(&["--app", "weather", "--since", "1h", "--output", "json"])
        .await
        .unwrap();
    assert_eq!(code, 0, "{err}");
    let printed: Vec<Event> =
        serde_json::from_value(serde_json::from_str::<Value>(&out).unwrap()["events"].clone())
            .unwrap();
    assert_eq!(printed, events_of(&daemon, "weather"));
    let (code, out, _) = history(&["--app", "weather"]).await.unwrap();
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), printed.len());
    assert!(
        out.lines().any(|l| l.contains(
            "  weather/production  Applied (ChannelCreated): created channel production"
        )),
        "{out}"
    );
    assert!(
        out.lines().last().unwrap().contains("  weather  Ready ("),
        "{out}"
    );
    // Since a time after every event: nothing.
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let (code, out, _) = history(&["--since", &later]).await.unwrap();
    assert_eq!((code, out.as_str()), (0, "no events\n"));
    let (code, _, err) = history(&["--since", "yesterday"]).await.unwrap();
    assert_eq!(code, 1);
    assert!(err.contains("invalid since \"yesterday\""), "{err}");
    daemon.shutdown().await.unwrap();
    let (code, _, err) = history(&[]).await.unwrap();
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("asking the controller at {base}/api/v1/events")),
        "{err}"
    );
}

#[tokio::test]
async fn a_one_shot_run_s_json_has_its_events() {
    let nb = NomadBed::start().await;
    let specs = copy_examples(nb.bed.path());
    let specs = specs.to_string_lossy().into_owned();
    let (code, out, err) = nb
        .run(&["reconcile", "--once", "-f", &specs, "--output", "json"])
        .await;
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["apps"].as_array().unwrap().len(), 2);
    let events: Vec<Event> = serde_json::from_value(v["events"].clone()).unwrap();
    let weather: Vec<&Event> = events.iter().filter(|e| e.app == "weather").collect();
    assert!(weather.iter().any(|e| e.kind == EventType::Applied
        && e.reason == "ChannelCreated"
        && e.channel.as_deref() == Some("production")
        && e.revision_after.as_deref() == Some("1.0.0")));
    assert_eq!(weather.last().unwrap().kind, EventType::Ready);
    // The copy's production channel sets RUST_LOG=info: the key may show, never the value.
    assert!(
        !out.contains("RUST_LOG=info") && !out.contains("\"info\""),
        "{out}"
    );
    // Run again: nothing to do, and no events.
    let (code, out, _) = nb
        .run(&["reconcile", "--once", "-f", &specs, "--output", "json"])
        .await;
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["events"], serde_json::json!([]));
}

//! Notification delivery against local receivers (axum on port 0, wiremock for GitHub): the
//! webhook's HMAC and exact body, a 503 retried then delivered, Slack's 429 with Retry-After,
//! a 4xx not retried, a dead receiver that fills its bounded queue (drops counted) without
//! delaying `send` or the other receivers, and GitHub's commit status path and body.

use std::{path::PathBuf, time::Duration};

use hippo_gitops_testkit as common;

use common::{
    eventually,
    receiver::{receiver, receiver_hanging},
};

use axum::{http::StatusCode, response::IntoResponse};
use chrono::Utc;
use hippo_gitops_controller::{
    notifications::{DeliveryPolicy, Notifier},
    webhook,
};
use hippo_gitops_core::{
    events::{Event, EventType},
    secret::Secret,
    spec::{
        notification::{NotificationSpec, NotificationType},
        Origin,
    },
};
use wiremock::{
    matchers::{body_json, header, method, path},
    Mock, MockServer, ResponseTemplate,
};

fn spec(name: &str, kind: NotificationType) -> NotificationSpec {
    NotificationSpec {
        name: name.into(),
        kind,
        address_from_env: format!("{}_URL", name.to_uppercase()),
        secret_from_env: (kind != NotificationType::Slack)
            .then(|| format!("{}_SECRET", name.to_uppercase())),
        events: EventType::ALL.into_iter().collect(),
        apps: vec![],
        repository: kind.needs_commit().then(|| "org/deploy".to_string()),
        origin: Origin {
            file: PathBuf::from("alerts.yaml"),
            line: 1,
        },
    }
}

fn fast() -> DeliveryPolicy {
    DeliveryPolicy {
        queue: 4,
        attempts: 4,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        timeout: Duration::from_secs(2),
        max_retry_after: Duration::from_secs(2),
        slack_interval: Duration::from_millis(10),
    }
}

fn event(app: &str, kind: EventType) -> Event {
    Event::new(Utc::now(), app, kind, "Converged", "1 change(s) applied")
        .on_channel("production")
        .with_revisions(Some("1.0.0".into()), Some("1.1.0".into()))
        .at_commit(Some("4b825dc642cb6eb9a060e54bf8d69288fbee4904"))
}

/// A notifier with one receiver of `kind` at `url`.
fn notifier(kind: NotificationType, url: &str, policy: DeliveryPolicy) -> Notifier {
    let n = Notifier::new(policy, Some("https://gitops.example.com".into())).unwrap();
    let url = url.to_string();
    let problems = n.configure(&[spec("team", kind)], |var| match var {
        "TEAM_URL" => Some(url.clone()),
        "TEAM_SECRET" => Some("It's a Secret to Everybody".into()),
        _ => None,
    });
    assert!(problems.is_empty(), "{problems:?}");
    n
}

fn count(n: &Notifier, kind: &str, result: &str) -> u64 {
    n.counts()[&(kind, result)]
}

#[tokio::test]
async fn a_webhook_is_signed_with_hmac_and_carries_the_event_exactly() {
    let r = receiver(|_| StatusCode::NO_CONTENT.into_response());
    let n = notifier(NotificationType::Webhook, &r.url, fast());
    let e = event("weather", EventType::Ready);
    n.send(std::slice::from_ref(&e));
    r.wait_for(1).await;
    let (headers, body, _) = r.seen.lock().unwrap()[0].clone();
    assert_eq!(body, serde_json::to_vec(&e).unwrap());
    assert_eq!(headers["content-type"], "application/json");
    let signature = headers["x-signature-256"].to_str().unwrap();
    // Our inbound generic hook accepts it: the same scheme.
    let key = Secret::new("It's a Secret to Everybody");
    assert_eq!(
        webhook::verify(
            webhook::Provider::Generic,
            Some(&key),
            Some(signature),
            &body
        ),
        Ok(())
    );
    assert_ne!(
        webhook::verify(
            webhook::Provider::Generic,
            Some(&Secret::new("another key")),
            Some(signature),
            &body
        ),
        Ok(())
    );
    eventually(5, "the delivery counted", || {
        count(&n, "webhook", "delivered") == 1
    })
    .await;
}

#[tokio::test]
async fn a_503_is_retried_then_delivered() {
    let r = receiver(|n| {
        if n == 1 {
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        } else {
            StatusCode::OK.into_response()
        }
    });
    let n = notifier(NotificationType::Webhook, &r.url, fast());
    let e = event("weather", EventType::Failed);
    n.send(std::slice::from_ref(&e));
    eventually(10, "delivered after a retry", || {
        count(&n, "webhook", "delivered") == 1
    })
    .await;
    let seen = r.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].1, seen[1].1, "the same body is sent again");
    assert!(
        seen[1].2 - seen[0].2 >= Duration::from_millis(50),
        "after the backoff"
    );
    assert_eq!(count(&n, "webhook", "failed"), 0);
}

#[tokio::test]
async fn a_4xx_is_not_retried() {
    let r = receiver(|_| StatusCode::NOT_FOUND.into_response());
    let n = notifier(NotificationType::Slack, &r.url, fast());
    n.send(&[event("weather", EventType::Ready)]);
    eventually(5, "the failure counted", || {
        count(&n, "slack", "failed") == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(r.count(), 1);
}

#[tokio::test]
async fn slack_s_429_is_retried_after_retry_after() {
    let r = receiver(|n| {
        if n == 1 {
            (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")]).into_response()
        } else {
            (StatusCode::OK, "ok").into_response()
        }
    });
    let n = notifier(NotificationType::Slack, &r.url, fast());
    n.send(&[event("weather", EventType::Ready)]);
    eventually(10, "delivered after Retry-After", || {
        count(&n, "slack", "delivered") == 1
    })
    .await;
    let seen = r.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    // Retry-After (1 s), not the 50 ms backoff.
    assert!(seen[1].2 - seen[0].2 >= Duration::from_millis(900));
    let body: serde_json::Value = serde_json::from_slice(&seen[1].1).unwrap();
    assert_eq!(
        body["text"],
        "weather/production: Ready (Converged): 1 change(s) applied"
    );
}

#[tokio::test]
async fn a_dead_receiver_fills_its_bounded_queue_and_delays_no_one() {
    let hang = receiver_hanging();
    let alive = receiver(|_| StatusCode::OK.into_response());
    let n = Notifier::new(fast(), None).unwrap();
    let (hang_url, alive_url) = (hang.0.clone(), alive.url.clone());
    let problems = n.configure(
        &[
            spec("dead", NotificationType::Webhook),
            spec("alive", NotificationType::Webhook),
        ],
        move |var| match var {
            "DEAD_URL" => Some(hang_url.clone()),
            "ALIVE_URL" => Some(alive_url.clone()),
            _ => Some("key".into()),
        },
    );
    assert!(problems.is_empty(), "{problems:?}");
    // The first request is in flight (the receiver holds it)...
    n.send(&[event("weather", EventType::Applied)]);
    eventually(5, "the hanging receiver holds a request", || {
        hang.1.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
    // ... then 9 more: 4 fit its queue and 5 are dropped, while the other receiver gets
    // each one as it is sent.
    for i in 0..9 {
        n.send(&[event(&format!("app{i}"), EventType::Applied)]);
        alive.wait_for(i + 2).await;
    }
    assert_eq!(count(&n, "webhook", "dropped"), 5);
    assert_eq!(hang.1.load(std::sync::atomic::Ordering::SeqCst), 1);
    let apps: Vec<String> = alive
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|(_, body, _)| serde_json::from_slice::<Event>(body).unwrap().app)
        .collect();
    assert_eq!(apps[0], "weather");
    assert_eq!(apps[9], "app8");
    eventually(5, "the other receiver's deliveries counted", || {
        count(&n, "webhook", "delivered") == 10
    })
    .await;
}

#[tokio::test]
async fn github_gets_the_commit_status_at_the_known_sha() {
    let github = MockServer::start().await;
    let sha = "4b825dc642cb6eb9a060e54bf8d69288fbee4904";
    Mock::given(method("POST"))
        .and(path(format!("/api/v3/repos/org/deploy/statuses/{sha}")))
        .and(header("authorization", "Bearer It's a Secret to Everybody"))
        .and(header("accept", "application/vnd.github+json"))
        .and(header("x-github-api-version", "2022-11-28"))
        .and(body_json(serde_json::json!({
            "state": "success",
            "target_url": "https://gitops.example.com/apps/weather",
            "description": "Ready (Converged): 1 change(s) applied",
            "context": "hippo-gitops/weather",
        })))
        .respond_with(ResponseTemplate::new(201))
        .expect(1)
        .mount(&github)
        .await;
    let n = notifier(
        NotificationType::GitHub,
        &format!("{}/api/v3", github.uri()),
        fast(),
    );
    n.send(&[event("weather", EventType::Ready)]);
    // Without a commit (a files source) nothing is sent.
    n.send(&[Event::new(
        Utc::now(),
        "weather",
        EventType::Ready,
        "UpToDate",
        "m",
    )]);
    eventually(5, "the status delivered", || {
        count(&n, "github", "delivered") == 1
    })
    .await;
    assert_eq!(github.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_missing_variable_or_an_address_that_is_no_url_is_reported_without_its_value() {
    let n = Notifier::new(fast(), None).unwrap();
    let problems = n.configure(
        &[
            spec("a", NotificationType::Slack),
            spec("b", NotificationType::Slack),
        ],
        |var| (var == "B_URL").then(|| "hooks.slack.com/services/T/B/s3cr3t".to_string()),
    );
    let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(
        text,
        [
            "notification a: the environment variable A_URL is not set; nothing is sent to it",
            "notification b: the value of B_URL is not an http(s) URL; nothing is sent to it",
        ]
    );
    assert_eq!(n.receivers(), 0);
    let mut metrics = String::new();
    n.render_metrics(&mut metrics);
    assert!(
        metrics.contains("hippo_gitops_notifications_total{type=\"slack\",result=\"dropped\"} 0")
    );
    assert!(!metrics.contains("s3cr3t"));
}

//! What each kind of receiver is sent for an event: URL, headers and body, exactly as
//! DELIVERY-NOTIFY.md describes the receivers. Pure.

use serde_json::{json, Value};

use hippo_gitops_core::{
    events::{Event, EventType},
    spec::notification::NotificationType,
};

use crate::webhook;

use super::Target;

/// One HTTP request to send (always a `POST` of JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub url: String,
    /// Headers besides `content-type: application/json`; secrets among them are only ever
    /// sent, never logged.
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

/// GitHub cuts longer descriptions off with a 422.
const STATUS_DESCRIPTION_MAX: usize = 140;
/// Slack's limit on a block's text is 3000 characters; a field's, 2000.
const SLACK_TEXT_MAX: usize = 1900;

/// The request for `event` to `target`; `None` when it can't be sent there (a commit status
/// for an event without a commit).
pub fn build(target: &Target, event: &Event, external_url: Option<&str>) -> Option<Outgoing> {
    let link = external_url.map(|base| dashboard_link(base, &event.app));
    match target.kind {
        NotificationType::Webhook => {
            let body = serde_json::to_vec(event).expect("an event serializes");
            let mut headers = Vec::new();
            if let Some(key) = &target.secret {
                headers.push(("x-signature-256", webhook::sign(key.expose(), &body)));
            }
            Some(Outgoing {
                url: target.address.expose().to_string(),
                headers,
                body,
            })
        }
        NotificationType::Slack => Some(Outgoing {
            url: target.address.expose().to_string(),
            headers: Vec::new(),
            body: serde_json::to_vec(&slack_message(event, link.as_deref()))
                .expect("a message serializes"),
        }),
        NotificationType::GitHub => {
            let sha = event.commit.as_deref()?;
            let repository = target.repository.as_deref()?;
            let mut body = json!({
                "state": github_state(event.kind),
                "description": status_description(event),
                "context": status_context(event),
            });
            if let Some(link) = link {
                body["target_url"] = json!(link);
            }
            Some(Outgoing {
                url: format!("{}/repos/{repository}/statuses/{sha}", api_root(target)),
                headers: vec![
                    (
                        "authorization",
                        format!("Bearer {}", target.secret.as_ref()?.expose()),
                    ),
                    ("accept", "application/vnd.github+json".into()),
                    ("x-github-api-version", "2022-11-28".into()),
                ],
                body: serde_json::to_vec(&body).expect("a status serializes"),
            })
        }
        NotificationType::GitLab => {
            let sha = event.commit.as_deref()?;
            let project = target.repository.as_deref()?.replace('/', "%2F");
            let mut body = json!({
                "state": gitlab_state(event.kind),
                "name": status_context(event),
                "description": status_description(event),
            });
            if let Some(link) = link {
                body["target_url"] = json!(link);
            }
            Some(Outgoing {
                url: format!("{}/projects/{project}/statuses/{sha}", api_root(target)),
                headers: vec![(
                    "private-token",
                    target.secret.as_ref()?.expose().to_string(),
                )],
                body: serde_json::to_vec(&body).expect("a status serializes"),
            })
        }
    }
}

/// The app's page on the dashboard (`--external-url`), or its overview for controller-wide
/// events.
pub fn dashboard_link(base: &str, app: &str) -> String {
    let base = base.trim_end_matches('/');
    if app.is_empty() {
        format!("{base}/")
    } else {
        // App names are letters, digits, '-' and '_': nothing to encode.
        format!("{base}/apps/{app}")
    }
}

fn api_root(target: &Target) -> &str {
    target.address.expose().trim_end_matches('/')
}

/// Flux's mapping from the Ready condition: true → success, false → failure, otherwise
/// pending.
fn github_state(kind: EventType) -> &'static str {
    match kind {
        EventType::Ready | EventType::CommitApplied => "success",
        k if k.is_failure() => "failure",
        _ => "pending",
    }
}

fn gitlab_state(kind: EventType) -> &'static str {
    match kind {
        EventType::Ready | EventType::CommitApplied => "success",
        k if k.is_failure() => "failed",
        _ => "pending",
    }
}

/// One status per app (a later one replaces it in the pull request's checks), and one for the
/// whole commit.
fn status_context(event: &Event) -> String {
    if event.app.is_empty() {
        "hippo-gitops".into()
    } else {
        format!("hippo-gitops/{}", event.app)
    }
}

fn status_description(event: &Event) -> String {
    truncate(
        &format!("{} ({}): {}", event.kind, event.reason, event.message),
        STATUS_DESCRIPTION_MAX,
    )
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max - 1) {
        Some((i, _)) if s.len() > i + 1 => format!("{}…", &s[..i]),
        _ => s.to_string(),
    }
}

/// Slack's mrkdwn needs `&`, `<` and `>` escaped (everything else is shown as written).
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn slack_message(event: &Event, link: Option<&str>) -> Value {
    let subject = match (&event.app, &event.channel) {
        (app, _) if app.is_empty() => "hippo-gitops".to_string(),
        (app, Some(ch)) => format!("{app}/{ch}"),
        (app, None) => app.clone(),
    };
    let icon = match event.kind {
        EventType::Ready | EventType::CommitApplied => ":white_check_mark:",
        k if k.is_failure() => ":x:",
        _ => ":arrows_counterclockwise:",
    };
    let text = truncate(
        &format!(
            "{subject}: {} ({}): {}",
            event.kind, event.reason, event.message
        ),
        SLACK_TEXT_MAX,
    );
    let show = |r: &Option<String>| r.clone().unwrap_or_else(|| "-".into());
    let revision = match (&event.revision_before, &event.revision_after) {
        (None, None) => "-".to_string(),
        (None, after) => show(after),
        (before, after) => format!("{} → {}", show(before), show(after)),
    };
    let field = |name: &str, value: &str| json!({ "type": "mrkdwn", "text": format!("*{name}*\n{}", slack_escape(value)) });
    let mut context = vec![json!({
        "type": "mrkdwn",
        "text": slack_escape(&truncate(&event.message, SLACK_TEXT_MAX)),
    })];
    if let Some(commit) = &event.commit {
        context.push(
            json!({ "type": "mrkdwn", "text": format!("commit `{}`", slack_escape(commit)) }),
        );
    }
    if let Some(link) = link {
        context.push(json!({ "type": "mrkdwn", "text": format!("<{link}|Open in hippo-gitops>") }));
    }
    json!({
        "text": slack_escape(&text),
        "blocks": [
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": format!("{icon} *{}* {}", slack_escape(&subject), event.kind),
                },
            },
            {
                "type": "section",
                "fields": [
                    field("App", if event.app.is_empty() { "-" } else { &event.app }),
                    field("Channel", event.channel.as_deref().unwrap_or("-")),
                    field("Revision", &revision),
                    field("Reason", &event.reason),
                ],
            },
            { "type": "context", "elements": context },
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use hippo_gitops_core::secret::Secret;

    fn event() -> Event {
        let time = DateTime::parse_from_rfc3339("2026-12-04T14:02:00Z")
            .unwrap()
            .with_timezone(&Utc);
        Event::new(
            time,
            "weather",
            EventType::Ready,
            "Converged",
            "1 change(s) applied",
        )
        .on_channel("production")
        .with_revisions(Some("1.0.0".into()), Some("1.1.0".into()))
        .at_commit(Some("0123abc"))
    }

    fn target(kind: NotificationType, address: &str, repository: Option<&str>) -> Target {
        Target {
            name: "n".into(),
            kind,
            address: Secret::new(address),
            secret: Some(Secret::new("It's a Secret to Everybody")),
            repository: repository.map(String::from),
        }
    }

    #[test]
    fn a_webhook_gets_the_event_signed_as_our_inbound_hook_checks_it() {
        let t = target(NotificationType::Webhook, "http://receiver/hook", None);
        let out = build(&t, &event(), None).unwrap();
        assert_eq!(out.url, "http://receiver/hook");
        assert_eq!(out.body, serde_json::to_vec(&event()).unwrap());
        let sig = &out.headers[0];
        assert_eq!(sig.0, "x-signature-256");
        assert_eq!(
            webhook::verify(
                webhook::Provider::Generic,
                t.secret.as_ref(),
                Some(&sig.1),
                &out.body
            ),
            Ok(())
        );
    }

    #[test]
    fn github_gets_a_commit_status_at_the_events_commit() {
        let t = target(
            NotificationType::GitHub,
            "https://ghe.example.com/api/v3/",
            Some("org/deploy"),
        );
        let out = build(&t, &event(), Some("https://gitops.example.com/")).unwrap();
        assert_eq!(
            out.url,
            "https://ghe.example.com/api/v3/repos/org/deploy/statuses/0123abc"
        );
        assert_eq!(
            out.headers,
            [
                (
                    "authorization",
                    "Bearer It's a Secret to Everybody".to_string()
                ),
                ("accept", "application/vnd.github+json".into()),
                ("x-github-api-version", "2022-11-28".into()),
            ]
        );
        let body: Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(
            body,
            json!({
                "state": "success",
                "target_url": "https://gitops.example.com/apps/weather",
                "description": "Ready (Converged): 1 change(s) applied",
                "context": "hippo-gitops/weather",
            })
        );
        let mut failed = event();
        failed.kind = EventType::Stalled;
        failed.message = "x".repeat(300);
        let body: Value = serde_json::from_slice(&build(&t, &failed, None).unwrap().body).unwrap();
        assert_eq!(body["state"], "failure");
        assert_eq!(body["description"].as_str().unwrap().chars().count(), 140);
        assert!(body.get("target_url").is_none());
        let mut applied = event();
        applied.kind = EventType::Applied;
        let body: Value = serde_json::from_slice(&build(&t, &applied, None).unwrap().body).unwrap();
        assert_eq!(body["state"], "pending");
        // No commit (a files source): nothing to send.
        let mut local = event();
        local.commit = None;
        assert_eq!(build(&t, &local, None), None);
    }

    #[test]
    fn gitlab_gets_a_commit_status_with_the_project_path_encoded() {
        let t = target(
            NotificationType::GitLab,
            "https://gitlab.example.com/api/v4",
            Some("group/deploy"),
        );
        let mut e = event();
        e.kind = EventType::Failed;
        let out = build(&t, &e, None).unwrap();
        assert_eq!(
            out.url,
            "https://gitlab.example.com/api/v4/projects/group%2Fdeploy/statuses/0123abc"
        );
        assert_eq!(
            out.headers,
            [("private-token", "It's a Secret to Everybody".to_string())]
        );
        let body: Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(
            body,
            json!({
                "state": "failed",
                "name": "hippo-gitops/weather",
                "description": "Failed (Converged): 1 change(s) applied",
            })
        );
    }

    #[test]
    fn slack_gets_text_and_blocks_with_app_channel_revision_and_reason() {
        let t = target(
            NotificationType::Slack,
            "https://hooks.slack.com/services/T/B/x",
            None,
        );
        let mut e = event();
        e.message = "<script>alert(1)</script> & more".into();
        let out = build(&t, &e, Some("https://gitops.example.com")).unwrap();
        assert_eq!(out.url, "https://hooks.slack.com/services/T/B/x");
        assert!(out.headers.is_empty());
        let body: Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(
            body["text"],
            "weather/production: Ready (Converged): &lt;script&gt;alert(1)&lt;/script&gt; &amp; more"
        );
        assert_eq!(
            body["blocks"][0]["text"]["text"],
            ":white_check_mark: *weather/production* Ready"
        );
        let fields: Vec<&str> = body["blocks"][1]["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["text"].as_str().unwrap())
            .collect();
        assert_eq!(
            fields,
            [
                "*App*\nweather",
                "*Channel*\nproduction",
                "*Revision*\n1.0.0 → 1.1.0",
                "*Reason*\nConverged"
            ]
        );
        let context = &body["blocks"][2]["elements"];
        assert_eq!(context[1]["text"], "commit `0123abc`");
        assert_eq!(
            context[2]["text"],
            "<https://gitops.example.com/apps/weather|Open in hippo-gitops>"
        );
    }
}

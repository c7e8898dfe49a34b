//! `hippo-gitops history`: a running controller's events (`GET /api/v1/events`), as a table
//! or JSON; and the events of a `reconcile --once` run for its JSON output.

use std::{process::ExitCode, time::Duration};

use clap::Args;
use serde::Deserialize;

use hippo_gitops_core::{
    apply::RunReport,
    events::{self, Event, Tracker},
    spec::DesiredState,
};

/// How long `history` waits for the controller.
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Only this app's events.
    #[arg(long, value_name = "APP")]
    pub app: Option<String>,
    /// Only events after this: a duration back from now (30m, 1h, 2d) or a time (RFC 3339).
    #[arg(long, value_name = "DURATION|TIME")]
    pub since: Option<String>,
    /// The controller's HTTP address (its --listen).
    #[arg(
        long,
        env = "HIPPO_GITOPS_CONTROLLER",
        default_value = "http://127.0.0.1:9090",
        value_name = "URL"
    )]
    pub controller: String,
    /// Output format on stdout.
    #[arg(long, value_enum, default_value_t = crate::cli::OutputFormat::Text)]
    pub output: crate::cli::OutputFormat,
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("{0}")]
    Since(String),
    #[error("asking the controller at {url}: {source}")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the controller at {url} answered {status}: {message}")]
    Refused {
        url: String,
        status: u16,
        message: String,
    },
}

#[derive(Deserialize)]
struct EventsAnswer {
    events: Vec<Event>,
}

/// Fetches and prints the events.
pub async fn run(args: HistoryArgs) -> Result<ExitCode, HistoryError> {
    let now = chrono::Utc::now();
    // Checked here for a clear message; sent as a time so both sides agree on "now".
    let since = args
        .since
        .as_deref()
        .map(|s| events::parse_since(s, now))
        .transpose()
        .map_err(HistoryError::Since)?;
    let base = args.controller.trim_end_matches('/');
    let url = format!("{base}/api/v1/events");
    let mut query: Vec<(&str, String)> = Vec::new();
    if let Some(app) = &args.app {
        query.push(("app", app.clone()));
    }
    if let Some(t) = since {
        query.push(("since", t.to_rfc3339()));
    }
    let failed = |source| HistoryError::Request {
        url: url.clone(),
        source,
    };
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .map_err(failed)?;
    let response = client
        .get(&url)
        .query(&query)
        .send()
        .await
        .map_err(failed)?;
    let status = response.status();
    if !status.is_success() {
        let message = response.text().await.unwrap_or_default();
        return Err(HistoryError::Refused {
            url,
            status: status.as_u16(),
            message: message.trim().to_string(),
        });
    }
    let answer: EventsAnswer = response.json().await.map_err(failed)?;
    match args.output {
        crate::cli::OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "events": answer.events }))
                .expect("events serialize")
        ),
        crate::cli::OutputFormat::Text => print!("{}", text(&answer.events)),
    }
    Ok(ExitCode::SUCCESS)
}

/// One line per event: time, app/channel, type (reason): message [revisions] @commit.
pub fn text(events: &[Event]) -> String {
    if events.is_empty() {
        return "no events\n".into();
    }
    let mut out = String::new();
    for e in events {
        let subject = match (&e.app, &e.channel) {
            (a, _) if a.is_empty() => "(all apps)".to_string(),
            (a, Some(ch)) => format!("{a}/{ch}"),
            (a, None) => a.clone(),
        };
        out.push_str(&format!(
            "{}  {subject}  {} ({}): {}",
            e.time.format("%Y-%m-%d %H:%M:%S"),
            e.kind,
            e.reason,
            hippo_gitops_core::spec::excerpt::short(&e.message)
        ));
        if e.revision_before.is_some() || e.revision_after.is_some() {
            out.push_str(&format!(
                " [{} → {}]",
                e.revision_before.as_deref().unwrap_or("-"),
                e.revision_after.as_deref().unwrap_or("-")
            ));
        }
        if let Some(c) = &e.commit {
            out.push_str(&format!(" @{}", c.get(..12).unwrap_or(c)));
        }
        out.push('\n');
    }
    out
}

/// The events of a one-shot run (every change is news: there is no earlier state).
pub fn run_events(desired: &DesiredState, report: &RunReport) -> Vec<Event> {
    events::run_events(
        desired,
        report,
        None,
        &|_| true,
        &mut Tracker::default(),
        chrono::Utc::now(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use hippo_gitops_core::events::EventType;

    #[test]
    fn text_shows_one_line_per_event() {
        let t = DateTime::parse_from_rfc3339("2026-12-04T14:02:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let events = [
            Event::new(
                t,
                "weather",
                EventType::Applied,
                "ChannelUpdated",
                "update channel canary: revision",
            )
            .on_channel("canary")
            .with_revisions(Some("1.1.0".into()), Some("1.0.0".into()))
            .at_commit(Some("4b825dc642cb6eb9a060e54bf8d69288fbee4904")),
            Event::commit_applied(t, "4b825dc642cb6eb9a060e54bf8d69288fbee4904"),
        ];
        assert_eq!(
            text(&events),
            "2026-12-04 14:02:00  weather/canary  Applied (ChannelUpdated): update channel canary: revision [1.1.0 → 1.0.0] @4b825dc642cb\n2026-12-04 14:02:00  (all apps)  CommitApplied (CommitApplied): every app converged at 4b825dc642cb6eb9a060e54bf8d69288fbee4904 @4b825dc642cb\n"
        );
        assert_eq!(text(&[]), "no events\n");
    }
}

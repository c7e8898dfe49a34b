//! `/api/v1`: the controller's state and history as JSON, and "reconcile this app now".
//!
//! - `GET /api/v1/apps`: every app (condition, channels with active revision and Nomad health,
//!   last change, failures and next retry), with the role, source and last cycle.
//! - `GET /api/v1/apps/{name}`: one app, plus its details (revisions, pending plan) and its
//!   recent events.
//! - `GET /api/v1/events?app=&since=&limit=`: events, oldest first.
//! - `POST /api/v1/apps/{name}/reconcile`: needs `Authorization: Bearer <--api-token>`; 403
//!   when no token is configured, 401 for a missing or wrong one, 404 for an unknown app,
//!   202 when the app is queued.
//!
//! Answers are serialized under the status's read lock (no copy of 1000 apps per request).

use std::sync::Arc;

use axum::{
    extract::{Path, Query, State},
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use hippo_gitops_core::{
    events::{self, Event},
    status::{ChannelStatus, Condition, NomadJobStatus},
    sync::RwLockExt,
};

use crate::{
    events_store::Query as EventQuery, insight::AppDetail, AppliedChanges, CycleSummary,
    DaemonAppStatus, Role, Shared, SourceStatus, StatusView, Trigger,
};

/// Events on an app's answer (and page).
pub const APP_EVENTS: usize = 50;
/// The most events one `GET /api/v1/events` answers (the newest of those asked for).
pub const MAX_EVENTS: usize = 5000;

pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/api/v1/apps", get(apps))
        .route("/api/v1/apps/:name", get(app))
        .route("/api/v1/apps/:name/reconcile", post(reconcile))
        .route("/api/v1/events", get(events))
}

/// One channel in the API.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiChannel<'a> {
    pub channel: &'a str,
    /// What Hippo's channel runs.
    pub active_revision: Option<&'a str>,
    /// What the deploy file asks for.
    pub desired_revision: Option<&'a str>,
    /// The Nomad job: `state` (unknown, missing, job), and for a job its version, status,
    /// healthy and total allocations.
    pub nomad: &'a NomadJobStatus,
    pub condition: &'a Condition,
    /// A promotion waiting for its window, as `status` says it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub promotion: Option<&'a str>,
}

impl<'a> From<&'a ChannelStatus> for ApiChannel<'a> {
    fn from(c: &'a ChannelStatus) -> Self {
        ApiChannel {
            channel: &c.channel,
            active_revision: c.hippo_revision.as_deref(),
            desired_revision: c.desired_revision.as_deref(),
            nomad: &c.nomad,
            condition: &c.condition,
            promotion: c.promotion.as_deref(),
        }
    }
}

/// One app in the API.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiApp<'a> {
    pub app: &'a str,
    pub condition: &'a Condition,
    pub channels: Vec<ApiChannel<'a>>,
    /// The last cycle that changed the app (since the controller started).
    pub last_change: Option<&'a AppliedChanges>,
    /// Failures in a row: the backoff's exponent (0: not backing off).
    pub failures: u32,
    /// When it is looked at again (backoff, or a rollout check).
    pub next_attempt_at: Option<DateTime<Utc>>,
}

impl<'a> From<&'a DaemonAppStatus> for ApiApp<'a> {
    fn from(a: &'a DaemonAppStatus) -> Self {
        ApiApp {
            app: &a.status.app,
            condition: &a.status.condition,
            channels: a.status.channels.iter().map(ApiChannel::from).collect(),
            last_change: a.last_applied.as_ref(),
            failures: a.failures,
            next_attempt_at: a.next_attempt_at,
        }
    }
}

/// `GET /api/v1/apps`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiOverview<'a> {
    pub role: Role,
    pub ready: bool,
    pub source: &'a SourceStatus,
    pub last_reconcile: Option<&'a CycleSummary>,
    /// Whether `POST …/reconcile` is open (an API token is configured).
    pub reconcile_enabled: bool,
    pub apps: Vec<ApiApp<'a>>,
}

/// `GET /api/v1/apps/{name}`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiAppDetail<'a> {
    #[serde(flatten)]
    pub app: ApiApp<'a>,
    /// `null` until the app was first observed.
    pub detail: Option<AppDetail>,
    /// The newest events, oldest first.
    pub events: Vec<Event>,
}

pub fn overview<'a>(shared: &Shared, view: &'a StatusView) -> ApiOverview<'a> {
    ApiOverview {
        role: shared.role(),
        ready: view.ready,
        source: &view.source,
        last_reconcile: view.last_reconcile.as_ref(),
        reconcile_enabled: shared.insight.api_token.is_some(),
        apps: view.apps.iter().map(ApiApp::from).collect(),
    }
}

/// One app's answer; `None` for an app the controller doesn't know.
pub fn app_detail<'a>(
    shared: &Shared,
    view: &'a StatusView,
    name: &str,
) -> Option<ApiAppDetail<'a>> {
    let a = view.apps.iter().find(|a| a.status.app == name)?;
    Some(ApiAppDetail {
        app: ApiApp::from(a),
        detail: shared.insight.detail(name),
        events: shared.insight.events.query(&EventQuery {
            app: Some(name.to_string()),
            limit: Some(APP_EVENTS),
            ..Default::default()
        }),
    })
}

fn json_body(value: &impl Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

async fn apps(State(shared): State<Arc<Shared>>) -> Response {
    let view = shared.view.read_recovered();
    json_body(&overview(&shared, &view))
}

async fn app(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    let view = shared.view.read_recovered();
    match app_detail(&shared, &view, &name) {
        Some(detail) => json_body(&detail),
        None => error(StatusCode::NOT_FOUND, "no such app"),
    }
}

#[derive(Deserialize)]
pub struct EventsParams {
    app: Option<String>,
    since: Option<String>,
    limit: Option<usize>,
}

async fn events(State(shared): State<Arc<Shared>>, Query(params): Query<EventsParams>) -> Response {
    let since = match params.since.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => match events::parse_since(s, Utc::now()) {
            Ok(t) => Some(t),
            Err(e) => return error(StatusCode::BAD_REQUEST, &e),
        },
    };
    let found = shared.insight.events.query(&EventQuery {
        app: params.app.filter(|a| !a.is_empty()),
        since,
        limit: Some(params.limit.unwrap_or(MAX_EVENTS).min(MAX_EVENTS)),
    });
    json_body(&json!({ "events": found }))
}

async fn reconcile(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(token) = &shared.insight.api_token else {
        return error(
            StatusCode::FORBIDDEN,
            "reconciling through the API is off: start the controller with --api-token",
        );
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let valid = given.is_some_and(|g| {
        crate::webhook::constant_time_eq(g.trim().as_bytes(), token.expose().as_bytes())
    });
    if !valid {
        tracing::warn!(app = %name, "API reconcile refused: missing or wrong token");
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(json!({ "error": "missing or wrong token (Authorization: Bearer <token>)" })),
        )
            .into_response();
    }
    let known = shared
        .view
        .read_recovered()
        .apps
        .iter()
        .any(|a| a.status.app == name);
    if !known {
        return error(StatusCode::NOT_FOUND, "no such app");
    }
    shared.insight.request(&name);
    // A full queue means a trigger is already pending, which takes the request with it.
    let _ = shared.triggers.try_send(Trigger::Api);
    tracing::info!(app = %name, "reconcile requested through the API");
    (
        StatusCode::ACCEPTED,
        Json(json!({ "triggered": true, "app": name })),
    )
        .into_response()
}

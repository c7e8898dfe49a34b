//! The web dashboard on `--listen`: `GET /` (every app), `GET /apps/{name}` (one app: channels,
//! revisions, what would change now, recent events), and their stylesheet and script.
//!
//! Rendered on the server ([`render`]), so every page is complete and read-only without
//! JavaScript. The script (`dashboard.js`, no build step) polls `/api/v1/events` every two
//! seconds and updates the page in place, and drives the "Reconcile now" form, shown only
//! when an API token is configured: it asks for the token, sends it once, and clears it.
//! Every answer carries a Content-Security-Policy that allows only this origin's script and
//! stylesheet (no inline code), and no page holds an env value or a secret.

pub mod render;

use std::sync::Arc;

use axum::{
    extract::{Path, Query, State},
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use chrono::Utc;
use serde::Deserialize;

use hippo_gitops_core::{status::ConditionType, sync::RwLockExt};

use crate::{api::APP_EVENTS, events_store::Query as EventQuery, Shared};

/// Only this origin's script, stylesheet and API; no inline code, no framing, no form posts
/// elsewhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

const SCRIPT: &str = include_str!("dashboard.js");
const STYLE: &str = include_str!("dashboard.css");

pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/", get(overview))
        .route("/apps/:name", get(app))
        .route("/static/dashboard.js", get(script))
        .route("/static/dashboard.css", get(style))
}

/// Headers every dashboard answer carries.
fn secured(status: StatusCode, content_type: &'static str, body: String) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[derive(Deserialize)]
struct OverviewParams {
    q: Option<String>,
    condition: Option<String>,
}

fn condition_named(s: &str) -> Option<ConditionType> {
    match s {
        "Ready" => Some(ConditionType::Ready),
        "Reconciling" => Some(ConditionType::Reconciling),
        "Stalled" => Some(ConditionType::Stalled),
        "Suspended" => Some(ConditionType::Suspended),
        _ => None,
    }
}

async fn overview(
    State(shared): State<Arc<Shared>>,
    Query(params): Query<OverviewParams>,
) -> Response {
    let filter = render::Filter {
        name: params.q.unwrap_or_default(),
        condition: params.condition.as_deref().and_then(condition_named),
    };
    let since = shared
        .insight
        .events
        .query(&EventQuery {
            limit: Some(1),
            ..Default::default()
        })
        .pop()
        .map(|e| e.time);
    let role = shared.role();
    let view = shared.view.read_recovered();
    let html = render::overview(&view, role, &filter, since, Utc::now());
    secured(StatusCode::OK, "text/html; charset=utf-8", html)
}

async fn app(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    let role = shared.role();
    let detail = shared.insight.detail(&name);
    let events = shared.insight.events.query(&EventQuery {
        app: Some(name.clone()),
        limit: Some(APP_EVENTS),
        ..Default::default()
    });
    let view = shared.view.read_recovered();
    let Some(app) = view.apps.iter().find(|a| a.status.app == name) else {
        return secured(
            StatusCode::NOT_FOUND,
            "text/html; charset=utf-8",
            render::not_found(&name),
        );
    };
    let page = render::AppPage {
        app,
        detail: detail.as_ref(),
        events: &events,
        reconcile_enabled: shared.insight.api_token.is_some(),
        role,
    };
    secured(
        StatusCode::OK,
        "text/html; charset=utf-8",
        render::app_page(&page, Utc::now()),
    )
}

async fn script() -> Response {
    secured(
        StatusCode::OK,
        "text/javascript; charset=utf-8",
        SCRIPT.to_string(),
    )
}

async fn style() -> Response {
    secured(StatusCode::OK, "text/css; charset=utf-8", STYLE.to_string())
}

//! The controller's HTTP surface: health, readiness, metrics, status and webhook receivers.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde_json::json;
use tokio::{sync::watch, task::JoinHandle};

use super::{
    webhook::{self, Provider, WebhookError},
    ControllerError, Shared, Trigger,
};

/// Binds `addr` and serves until `stop` turns true. Answers the bound address.
pub fn serve(
    addr: SocketAddr,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> Result<(SocketAddr, JoinHandle<()>), ControllerError> {
    let listen_err = |source| ControllerError::Listen { addr, source };
    let listener = std::net::TcpListener::bind(addr).map_err(listen_err)?;
    listener.set_nonblocking(true).map_err(listen_err)?;
    let bound = listener.local_addr().map_err(listen_err)?;
    let server = axum::Server::from_tcp(listener)
        .map_err(|e| listen_err(std::io::Error::other(e)))?
        .serve(router(shared).into_make_service())
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        });
    let task = tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::warn!(error = %e, "HTTP server stopped");
        }
    });
    Ok((bound, task))
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/hooks/github", post(github))
        .route("/hooks/gitlab", post(gitlab))
        .route("/hooks/generic", post(generic))
        .with_state(shared)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let ready = shared.ready();
    let body = Json(json!({ "ready": ready, "role": shared.role() }));
    if ready {
        (StatusCode::OK, body).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        shared.metrics_text(),
    )
        .into_response()
}

async fn status(State(shared): State<Arc<Shared>>) -> Response {
    ([("content-type", "application/json")], shared.status_json()).into_response()
}

async fn github(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    hook(Provider::GitHub, &s, &headers, &body)
}

async fn gitlab(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    hook(Provider::GitLab, &s, &headers, &body)
}

async fn generic(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    hook(Provider::Generic, &s, &headers, &body)
}

fn hook(provider: Provider, shared: &Shared, headers: &HeaderMap, body: &[u8]) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let signature = header(webhook::signature_header(provider)).or(match provider {
        Provider::Generic => header("x-hub-signature-256"),
        _ => None,
    });
    if let Err(e) = webhook::verify(provider, shared.webhook_secret.as_ref(), signature, body) {
        let status = match e {
            WebhookError::Disabled => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        };
        tracing::warn!(hook = provider.name(), error = %e, "webhook refused");
        return (
            status,
            Json(json!({ "triggered": false, "error": e.to_string() })),
        )
            .into_response();
    }
    if provider == Provider::GitHub && header("x-github-event") == Some("ping") {
        return (
            StatusCode::OK,
            Json(json!({ "triggered": false, "pong": true })),
        )
            .into_response();
    }
    if let (Some(watched), Some(pushed)) = (&shared.branch, webhook::pushed_branch(body)) {
        if &pushed != watched {
            return (
                StatusCode::OK,
                Json(json!({
                    "triggered": false,
                    "reason": format!("push to {pushed}; this controller follows {watched}"),
                })),
            )
                .into_response();
        }
    }
    // A full queue means a trigger is already pending, which covers this one.
    let _ = shared.triggers.try_send(Trigger::Webhook(provider));
    tracing::info!(
        hook = provider.name(),
        "webhook accepted: fetching and reconciling"
    );
    (StatusCode::ACCEPTED, Json(json!({ "triggered": true }))).into_response()
}

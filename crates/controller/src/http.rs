//! The controller's HTTP surface: health, readiness, metrics, status and webhook receivers.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, Request, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde_json::json;
use tokio::{
    net::TcpListener,
    sync::{watch, Semaphore},
    task::JoinHandle,
};

use super::{
    webhook::{self, Provider, WebhookError},
    ControllerError, Shared, Trigger,
};

/// How long a client may take to send a request's headers; also how long a kept-alive
/// connection may sit idle (hyper's timer covers the wait for the first byte).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request may take once its headers are in: reading the body (webhooks) and
/// answering. A client that trickles its body gets `408`.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// No connection lives longer: bounds a client that never reads its answer.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// On shutdown, how long open connections may take to finish their answers.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// The longest pause of the accept loop after a failed accept (`EMFILE` and the like).
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How many connections are served at once: a quarter of the file descriptors this process may
/// open (the rest are the reconciler's: deploy files, Git, connections to Hippo, Bindle and
/// Nomad), between 8 and 1024. Connections beyond it wait in the kernel's accept queue, which
/// costs this process no descriptor.
pub fn max_connections() -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    // `None`: unlimited.
    connection_cap(limit.current.unwrap_or(u64::MAX))
}

fn connection_cap(fd_limit: u64) -> usize {
    (fd_limit / 4).clamp(8, 1024) as usize
}

/// Binds `addr` and serves until `stop` turns true, at most `max_connections` connections at
/// once. Answers the bound address.
pub fn serve(
    addr: SocketAddr,
    shared: Arc<Shared>,
    max_connections: usize,
    stop: watch::Receiver<bool>,
) -> Result<(SocketAddr, JoinHandle<()>), ControllerError> {
    let listen_err = |source| ControllerError::Listen { addr, source };
    let listener = std::net::TcpListener::bind(addr).map_err(listen_err)?;
    listener.set_nonblocking(true).map_err(listen_err)?;
    let bound = listener.local_addr().map_err(listen_err)?;
    let listener = TcpListener::from_std(listener).map_err(listen_err)?;
    let task = tokio::spawn(accept_loop(
        listener,
        router(shared),
        max_connections.max(1),
        stop,
    ));
    Ok((bound, task))
}

/// Accepts a connection only while fewer than `max` are open, and backs off (up to a second)
/// after a failed accept instead of spinning on it.
async fn accept_loop(
    listener: TcpListener,
    router: Router,
    max: usize,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(max));
    let mut http = hyper::server::conn::Http::new();
    http.http1_only(true)
        .http1_header_read_timeout(HEADER_READ_TIMEOUT);
    let mut backoff = Duration::ZERO;
    let mut warned_at: Option<tokio::time::Instant> = None;
    let mut waiting_logged = false;
    loop {
        let slot = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        if slots.available_permits() == 0 && !waiting_logged {
            tracing::warn!(
                max,
                "HTTP connection limit reached: further clients wait until one closes"
            );
        }
        waiting_logged = slots.available_permits() == 0;
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                backoff = Duration::ZERO;
                stream
            }
            Err(e) => {
                backoff = (backoff * 2).clamp(Duration::from_millis(10), ACCEPT_BACKOFF_MAX);
                if warned_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    tracing::warn!(error = %e, retry_in = ?backoff, "accepting an HTTP connection failed; backing off");
                    warned_at = Some(tokio::time::Instant::now());
                }
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => break,
                    _ = tokio::time::sleep(backoff) => continue,
                }
            }
        };
        let conn = http.serve_connection(stream, router.clone());
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let _slot = slot;
            tokio::pin!(conn);
            let limit = tokio::time::sleep(CONNECTION_LIFETIME);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = stop.wait_for(|s| *s) => {}
                _ = limit => {}
            }
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
        });
    }
    // Every slot back: the connections are done.
    let _ = tokio::time::timeout(
        SHUTDOWN_GRACE + Duration::from_secs(1),
        slots.acquire_many(max as u32),
    )
    .await;
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
        .merge(super::api::routes())
        .merge(super::dashboard::routes())
        .layer(middleware::from_fn(within_time_limit))
        .with_state(shared)
}

/// Bounds reading the body and answering (the headers are bounded by hyper's timer).
async fn within_time_limit<B>(request: Request<B>, next: Next<B>) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => (
            StatusCode::REQUEST_TIMEOUT,
            format!("the request was not received within {REQUEST_TIMEOUT:?}\n"),
        )
            .into_response(),
    }
}

/// Alive: the reconcile loop still turns (see [`super::liveness`]); 503 with the reason if not.
async fn healthz(State(shared): State<Arc<Shared>>) -> Response {
    match shared.liveness.check() {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_take_a_quarter_of_the_descriptors_within_bounds() {
        assert_eq!(connection_cap(256), 64);
        assert_eq!(connection_cap(1024), 256);
        assert_eq!(connection_cap(20), 8);
        assert_eq!(connection_cap(1 << 20), 1024);
        assert_eq!(connection_cap(u64::MAX), 1024);
    }
}

//! A typed client for Hippo's v0.19–v0.20 API, hand-written on reqwest.
//!
//! Why not the `hippo-openapi` crate: it is on reqwest 0.11's generated models, cannot send a
//! PATCH `null`, and knows nothing of the quirks below (HIPPO-API.md §12):
//! - create POSTs answer a JSON-quoted GUID; PUT/PATCH/DELETE answer 204; revision
//!   registration answers 201 with an empty body, or 404 when no app has the storage id;
//! - 400 carries `ValidationProblemDetails` with PascalCase keys; there is never a 409;
//! - tokens last 30 minutes and cannot be refreshed: with a username and password the client
//!   logs in again before expiry and once more on a 401.
//!
//! Retries: idempotent requests (GET, PUT, PATCH, DELETE) are retried on connection errors,
//! 5xx and 429. POSTs create things and `POST /api/revisions` is not idempotent, so they are
//! retried only when the request cannot have reached Hippo (connect error) or Hippo said 429;
//! any other failure is returned, and the reconciler re-observes before deciding again.

pub mod types;

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::{
    retry::{Attempt, RetryPolicy},
    secret::Secret,
    stats::RequestStats,
    transport::{Service, Transport, TransportError},
};
use types::*;

/// How the client authenticates.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// A bearer token obtained elsewhere (`HIPPO_TOKEN`, or `spin login`'s config file).
    Token(Secret),
    /// Log in with `POST /api/auth-tokens`, again whenever the token is about to expire.
    Login { username: String, password: Secret },
}

/// Errors from Hippo, with what was asked.
#[derive(Debug, thiserror::Error)]
pub enum HippoError {
    /// No response: connection refused, reset, timed out.
    #[error("{method} {path}: {source}")]
    Transport {
        method: Method,
        path: String,
        #[source]
        source: reqwest::Error,
    },
    /// Hippo rejected the request's content (400). Terminal.
    #[error("{method} {path}: Hippo rejected the request: {}", format_problem(.title, .errors))]
    Validation {
        method: Method,
        path: String,
        title: String,
        errors: std::collections::BTreeMap<String, Vec<String>>,
    },
    /// 401 after logging in again, or with a fixed token.
    #[error("{method} {path}: unauthorized ({hint})")]
    Unauthorized {
        method: Method,
        path: String,
        hint: &'static str,
    },
    /// Logging in failed.
    #[error("logging in to Hippo as {username:?} failed: {detail}")]
    Login { username: String, detail: String },
    /// Any other non-success status.
    #[error("{method} {path}: HTTP {status}{}", if .body.is_empty() { String::new() } else { format!(": {}", .body) })]
    Status {
        method: Method,
        path: String,
        status: u16,
        body: String,
    },
    /// A success status with a body that doesn't parse.
    #[error("{method} {path}: unexpected response: {message}")]
    Decode {
        method: Method,
        path: String,
        message: String,
    },
}

impl TransportError for HippoError {
    fn transport(method: Method, path: &str, source: reqwest::Error) -> Self {
        HippoError::Transport {
            method,
            path: path.to_string(),
            source,
        }
    }
}

fn format_problem(title: &str, errors: &std::collections::BTreeMap<String, Vec<String>>) -> String {
    if errors.is_empty() {
        return title.to_string();
    }
    errors
        .iter()
        .map(|(k, v)| format!("{k}: {}", v.join("; ")))
        .collect::<Vec<_>>()
        .join(", ")
}

impl HippoError {
    /// Whether trying again later may succeed (connection problems, 5xx, 429).
    pub fn is_transient(&self) -> bool {
        match self {
            HippoError::Transport { .. } => true,
            HippoError::Status { status, .. } => *status >= 500 || *status == 429,
            HippoError::Validation { .. }
            | HippoError::Unauthorized { .. }
            | HippoError::Login { .. }
            | HippoError::Decode { .. } => false,
        }
    }

    /// The HTTP status, when there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            HippoError::Validation { .. } => Some(400),
            HippoError::Unauthorized { .. } => Some(401),
            HippoError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

#[derive(Clone)]
struct BearerToken {
    value: Secret,
    /// `None` for a token given from outside: used until Hippo refuses it.
    expires_at: Option<DateTime<Utc>>,
}

/// Settings for [`HippoClient`].
#[derive(Debug, Clone)]
pub struct HippoClientConfig {
    /// Server root, e.g. `https://hippo.example.com` (no `/api`).
    pub url: String,
    pub credentials: Credentials,
    pub danger_accept_invalid_certs: bool,
    /// Per request, including reading the body.
    pub timeout: Duration,
    pub retry: RetryPolicy,
    /// Items per page for list calls; Hippo pages in memory, so large pages are cheap for it.
    pub page_size: u32,
}

impl HippoClientConfig {
    pub fn new(url: impl Into<String>, credentials: Credentials) -> Self {
        HippoClientConfig {
            url: url.into(),
            credentials,
            danger_accept_invalid_certs: false,
            timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            page_size: DEFAULT_PAGE_SIZE,
        }
    }
}

/// Items per page of a list call by default. Hippo loads the whole table and pages it in memory
/// (HIPPO-API.md §4.1: `Skip`/`Take` after loading everything), and documents no maximum
/// (`pageSize` is an `int`), so a bigger page costs it less in all than more requests. 10,000
/// makes a no-op `reconcile --once` at 10,000 apps (30,000 channels, 20,000 revisions) cost
/// 1 + 3 + 2 list requests and a login: 7, under the 10 asked for (13 at 5000). Bigger pages
/// would save a request or two more, but the client holds a page's body and its decoded items
/// at once: a page of 10,000 channels is megabytes of JSON (each item carries its active
/// revision, domain and env vars), and the three lists are read at the same time, so the
/// transient peak of a cycle grows with the page, whatever the number of apps.
pub const DEFAULT_PAGE_SIZE: u32 = 10_000;

/// The Hippo client. Cheap to share behind an `Arc`.
pub struct HippoClient {
    transport: Transport,
    credentials: Credentials,
    token: Mutex<Option<BearerToken>>,
    page_size: u32,
}

/// Log in again this long before the token's stated expiry (clock skew, slow requests).
const TOKEN_MARGIN: chrono::Duration = chrono::Duration::seconds(60);

enum Body<'a> {
    None,
    Json(&'a (dyn erased::Json + Sync)),
}

mod erased {
    /// Object-safe "serialize to JSON" so request bodies of any type share one send path.
    pub trait Json {
        fn to_json(&self) -> serde_json::Result<Vec<u8>>;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> serde_json::Result<Vec<u8>> {
            serde_json::to_vec(self)
        }
    }
}

impl HippoClient {
    pub fn new(config: HippoClientConfig, stats: RequestStats) -> Result<Self, HippoError> {
        let transport = Transport::new(
            Service {
                key: "hippo",
                name: "Hippo",
            },
            config.url.trim_end_matches('/').to_string(),
            reqwest::Client::builder()
                .danger_accept_invalid_certs(config.danger_accept_invalid_certs),
            config.timeout,
            config.retry,
            stats,
        )
        .map_err(|source| HippoError::transport(Method::GET, &config.url, source))?;
        let token = match &config.credentials {
            Credentials::Token(t) => Some(BearerToken {
                value: t.clone(),
                expires_at: None,
            }),
            Credentials::Login { .. } => None,
        };
        Ok(HippoClient {
            transport,
            credentials: config.credentials,
            token: Mutex::new(token),
            page_size: config.page_size.max(1),
        })
    }

    // -- reads ------------------------------------------------------------------------------

    /// Every app, through paged list calls.
    pub async fn list_apps(&self) -> Result<Vec<App>, HippoError> {
        self.list_all("/api/apps", true).await
    }

    /// Every channel, through paged list calls.
    pub async fn list_channels(&self) -> Result<Vec<Channel>, HippoError> {
        self.list_all("/api/channels", true).await
    }

    /// Every revision of every app (Hippo cannot filter by app), through paged list calls.
    pub async fn list_revisions(&self) -> Result<Vec<Revision>, HippoError> {
        self.list_all("/api/revisions", false).await
    }

    pub async fn get_channel(&self, id: Uuid) -> Result<Channel, HippoError> {
        let path = format!("/api/channels/{id}");
        let (_, body) = self.send(Method::GET, &path, &[], Body::None, true).await?;
        decode(&Method::GET, &path, &body)
    }

    /// Pages through a list endpoint. Stops on `isLastPage`, on an empty page, or past the
    /// reported total (`isLastPage` is unreliable with `searchText`, §13); de-duplicates by id
    /// in case the list moved between pages.
    async fn list_all<T: DeserializeOwned + HasId>(
        &self,
        path: &str,
        sortable: bool,
    ) -> Result<Vec<T>, HippoError> {
        let mut out: Vec<T> = Vec::new();
        let mut seen = HashSet::new();
        let mut page_index: i64 = 0;
        loop {
            let mut query = vec![
                ("pageIndex", page_index.to_string()),
                ("pageSize", self.page_size.to_string()),
            ];
            if sortable {
                // Hippo sorts before paging; a stable order keeps pages consistent.
                query.push(("sortBy", "Name".to_string()));
                query.push(("IsSortedAscending", "true".to_string()));
            }
            let (_, body) = self
                .send(Method::GET, path, &query, Body::None, true)
                .await?;
            let page: Page<T> = decode(&Method::GET, path, &body)?;
            // The body is not needed once decoded: it is not kept beside the items.
            drop(body);
            let n = page.items.len() as i64;
            if out.is_empty() {
                // The first (often the only) page's items are the list: no copy.
                out = page.items;
                out.retain(|item| seen.insert(item.id()));
            } else {
                out.extend(page.items.into_iter().filter(|item| seen.insert(item.id())));
            }
            page_index += 1;
            if page.is_last_page || n == 0 || page_index * self.page_size as i64 >= page.total_items
            {
                return Ok(out);
            }
        }
    }

    // -- writes -----------------------------------------------------------------------------

    pub async fn create_app(&self, name: &str, storage_id: &str) -> Result<Uuid, HippoError> {
        let body = CreateApp { name, storage_id };
        self.create("/api/apps", &body).await
    }

    pub async fn create_channel(&self, body: &CreateChannel) -> Result<Uuid, HippoError> {
        self.create("/api/channels", body).await
    }

    /// PUT: Hippo (re)starts the channel's Nomad job.
    pub async fn update_channel(&self, body: &UpdateChannel) -> Result<(), HippoError> {
        let path = format!("/api/channels/{}", body.id);
        self.send(Method::PUT, &path, &[], Body::Json(body), true)
            .await
            .map(|_| ())
    }

    /// PATCH of the environment only; the list replaces the whole set.
    pub async fn set_channel_env(&self, id: Uuid, env: Vec<EnvVar>) -> Result<(), HippoError> {
        let path = format!("/api/channels/{id}");
        let body = PatchChannelEnv {
            environment_variables: env,
        };
        self.send(Method::PATCH, &path, &[], Body::Json(&body), true)
            .await
            .map(|_| ())
    }

    pub async fn set_desired_status(
        &self,
        id: Uuid,
        status: DesiredStatus,
    ) -> Result<(), HippoError> {
        let path = format!("/api/channels/{id}/desired-status");
        let body = UpdateDesiredStatus {
            channel_id: id,
            desired_status: status,
        };
        self.send(Method::PUT, &path, &[], Body::Json(&body), true)
            .await
            .map(|_| ())
    }

    pub async fn delete_channel(&self, id: Uuid) -> Result<(), HippoError> {
        let path = format!("/api/channels/{id}");
        self.send(Method::DELETE, &path, &[], Body::None, true)
            .await
            .map(|_| ())
    }

    /// Registers a revision for every app with this storage id. Not idempotent: call only
    /// when no such app has this revision yet.
    pub async fn register_revision(
        &self,
        storage_id: &str,
        revision_number: &str,
    ) -> Result<(), HippoError> {
        let body = RegisterRevision {
            app_storage_id: storage_id,
            revision_number,
        };
        self.send(
            Method::POST,
            "/api/revisions",
            &[],
            Body::Json(&body),
            false,
        )
        .await
        .map(|_| ())
    }

    async fn create<B: Serialize + Sync>(&self, path: &str, body: &B) -> Result<Uuid, HippoError> {
        let (_, bytes) = self
            .send(Method::POST, path, &[], Body::Json(body), false)
            .await?;
        // A JSON-quoted GUID; tolerate a bare one (text/plain negotiation).
        let text = String::from_utf8_lossy(&bytes);
        let trimmed = text.trim().trim_matches('"');
        Uuid::parse_str(trimmed).map_err(|e| HippoError::Decode {
            method: Method::POST,
            path: path.to_string(),
            message: format!("expected a GUID, got {:?}: {e}", truncate(&text)),
        })
    }

    // -- transport --------------------------------------------------------------------------

    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Body<'_>,
        idempotent: bool,
    ) -> Result<(StatusCode, Vec<u8>), HippoError> {
        let payload = match body {
            Body::None => None,
            Body::Json(b) => Some(b.to_json().map_err(|e| HippoError::Decode {
                method: method.clone(),
                path: path.to_string(),
                message: format!("encoding request: {e}"),
            })?),
        };
        // A 401 with a username and password gets exactly one fresh login and one more try,
        // outside the backoff budget (an expired or revoked token is not a transient failure).
        match self
            .send_once(&method, path, query, payload.as_deref(), idempotent)
            .await
        {
            Err(HippoError::Unauthorized { .. })
                if matches!(self.credentials, Credentials::Login { .. }) =>
            {
                *self.token.lock().await = None;
                self.send_once(&method, path, query, payload.as_deref(), idempotent)
                    .await
                    .map_err(|e| match e {
                        HippoError::Unauthorized { method, path, .. } => HippoError::Unauthorized {
                            method,
                            path,
                            hint: "Hippo refused a fresh token",
                        },
                        other => other,
                    })
            }
            other => other,
        }
    }

    /// One request with transient-failure retries.
    async fn send_once(
        &self,
        method: &Method,
        path: &str,
        query: &[(&str, String)],
        payload: Option<&[u8]>,
        idempotent: bool,
    ) -> Result<(StatusCode, Vec<u8>), HippoError> {
        self.transport
            .request(
                method,
                path,
                idempotent,
                |req| async move {
                    let token = self.token().await.map_err(|e| match &e {
                        HippoError::Transport { source, .. } if source.is_connect() => {
                            Attempt::Unreachable(e)
                        }
                        _ if e.is_transient() => Attempt::Retry(e, None),
                        _ => Attempt::Fail(e),
                    })?;
                    let mut req = req
                        .header("Accept", "application/json")
                        .bearer_auth(token.expose());
                    if !query.is_empty() {
                        req = req.query(query);
                    }
                    if let Some(p) = payload {
                        req = req
                            .header("Content-Type", "application/json")
                            .body(p.to_vec());
                    }
                    Ok(req)
                },
                |resp, started| self.read_response(method.clone(), path, idempotent, resp, started),
            )
            .await
    }

    /// What a response means: its body on success, else the error and whether to try again.
    async fn read_response(
        &self,
        method: Method,
        path: &str,
        idempotent: bool,
        resp: reqwest::Response,
        started: Instant,
    ) -> Result<(StatusCode, Vec<u8>), Attempt<HippoError>> {
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get("Retry-After")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_secs);
        let bytes = match read_body(resp).await {
            Ok(b) => b,
            Err(source) => {
                let e = HippoError::transport(method, path, source);
                return Err(if idempotent {
                    Attempt::Retry(e, None)
                } else {
                    Attempt::Fail(e)
                });
            }
        };
        tracing::debug!(%method, path, status = status.as_u16(), elapsed_ms = started.elapsed().as_millis() as u64, "hippo");
        if status.is_success() {
            return Ok((status, bytes));
        }
        let path = path.to_string();
        match status.as_u16() {
            400 => {
                let problem: ProblemDetails = serde_json::from_slice(&bytes).unwrap_or_default();
                Err(Attempt::Fail(HippoError::Validation {
                    method,
                    path,
                    title: problem
                        .detail
                        .or(problem.title)
                        .unwrap_or_else(|| "bad request".into()),
                    errors: problem.errors,
                }))
            }
            401 => Err(Attempt::Fail(HippoError::Unauthorized {
                method,
                path,
                hint: if matches!(self.credentials, Credentials::Login { .. }) {
                    "logging in again"
                } else {
                    "the token was refused; it may have expired (Hippo tokens last 30 minutes): log in again or pass a username and password"
                },
            })),
            code => {
                let e = HippoError::Status {
                    method,
                    path,
                    status: code,
                    body: problem_text(&bytes),
                };
                let transient = code >= 500 || code == 429;
                let safe = idempotent || code == 429;
                Err(if transient && safe {
                    Attempt::Retry(e, retry_after)
                } else {
                    Attempt::Fail(e)
                })
            }
        }
    }

    /// A valid bearer token, logging in when there is none or it is about to expire.
    async fn token(&self) -> Result<Secret, HippoError> {
        let mut guard = self.token.lock().await;
        if let Some(t) = guard.as_ref() {
            if t.expires_at
                .is_none_or(|exp| exp - TOKEN_MARGIN > Utc::now())
            {
                return Ok(t.value.clone());
            }
        }
        let Credentials::Login { username, password } = &self.credentials else {
            // A fixed token past its known expiry: still try it, Hippo will say.
            return guard
                .as_ref()
                .map(|t| t.value.clone())
                .ok_or(HippoError::Unauthorized {
                    method: Method::POST,
                    path: "/api/auth-tokens".into(),
                    hint: "no token",
                });
        };
        let fresh = self.login(username, password).await?;
        let value = fresh.value.clone();
        *guard = Some(fresh);
        Ok(value)
    }

    async fn login(&self, username: &str, password: &Secret) -> Result<BearerToken, HippoError> {
        let path = "/api/auth-tokens";
        let body = CreateToken {
            user_name: username,
            password: password.expose(),
        };
        let resp = self
            .transport
            .builder(Method::POST, path)
            .header("Accept", "application/json")
            .json(&body)
            .send()
            .await
            .map_err(|source| HippoError::transport(Method::POST, path, source))?;
        let status = resp.status();
        self.transport.record("LOGIN", status.as_u16());
        let bytes = resp
            .bytes()
            .await
            .map_err(|source| HippoError::transport(Method::POST, path, source))?;
        if !status.is_success() {
            if status.is_server_error() || status.as_u16() == 429 {
                return Err(HippoError::Status {
                    method: Method::POST,
                    path: path.into(),
                    status: status.as_u16(),
                    body: problem_text(&bytes),
                });
            }
            let problem: ProblemDetails = serde_json::from_slice(&bytes).unwrap_or_default();
            return Err(HippoError::Login {
                username: username.to_string(),
                detail: problem
                    .detail
                    .or(problem.title)
                    .unwrap_or_else(|| format!("HTTP {status}")),
            });
        }
        // Not `decode`: its error quotes the body, and this body holds the token.
        let info: TokenInfo = serde_json::from_slice(&bytes).map_err(|e| HippoError::Decode {
            method: Method::POST,
            path: path.into(),
            message: format!(
                "the login response is not a TokenInfo ({:?} at line {}, column {})",
                e.classify(),
                e.line(),
                e.column()
            ),
        })?;
        let token = info.token.ok_or_else(|| HippoError::Decode {
            method: Method::POST,
            path: path.into(),
            message: "no token in the response".into(),
        })?;
        let expires_at = info
            .expiration
            .and_then(|e| DateTime::parse_from_rfc3339(&e).ok())
            .map(|d| d.with_timezone(&Utc))
            // Hippo's tokens last 30 minutes; assume so if it didn't say.
            .or_else(|| Some(Utc::now() + chrono::Duration::minutes(30)));
        Ok(BearerToken {
            value: Secret::new(token),
            expires_at,
        })
    }
}

/// List items are de-duplicated by id across pages.
trait HasId {
    fn id(&self) -> Uuid;
}
impl HasId for App {
    fn id(&self) -> Uuid {
        self.id
    }
}
impl HasId for Channel {
    fn id(&self) -> Uuid {
        self.id
    }
}
impl HasId for Revision {
    fn id(&self) -> Uuid {
        self.id
    }
}

/// A response's body, read chunk by chunk into one buffer sized by `Content-Length` when the
/// server gives one (trusted up to 64 MiB): no second copy of the body (as `bytes().to_vec()`
/// made) and no buffer doubling as it grows.
async fn read_body(mut resp: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    const MAX_RESERVED: u64 = 64 << 20;
    let reserved = resp.content_length().unwrap_or(0).min(MAX_RESERVED);
    let mut body = Vec::with_capacity(reserved as usize);
    while let Some(chunk) = resp.chunk().await? {
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn decode<T: DeserializeOwned>(method: &Method, path: &str, bytes: &[u8]) -> Result<T, HippoError> {
    serde_json::from_slice(bytes).map_err(|e| HippoError::Decode {
        method: method.clone(),
        path: path.to_string(),
        message: format!("{e}: {}", truncate(&String::from_utf8_lossy(bytes))),
    })
}

fn truncate(s: &str) -> String {
    const MAX: usize = 300;
    if s.len() <= MAX {
        s.to_string()
    } else {
        let mut end = MAX;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    }
}

/// The useful part of an error body: ProblemDetails' title/detail, else the raw text.
fn problem_text(bytes: &[u8]) -> String {
    match serde_json::from_slice::<ProblemDetails>(bytes) {
        Ok(p) if p.title.is_some() || p.detail.is_some() => [p.title, p.detail]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(": "),
        _ => truncate(String::from_utf8_lossy(bytes).trim()),
    }
}

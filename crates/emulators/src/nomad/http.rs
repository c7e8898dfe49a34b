//! The HTTP surface: routing, ACL token check, query parameters, blocking queries and the
//! response conventions of NOMAD-API.md §1.1 (JSON bodies, plain-text errors,
//! `X-Nomad-Index`).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::super::state_file::Persisted;
use super::filter;
use super::jobspec::decode_register;
use super::sched;
use super::state::State;
use super::vars::{self, VarOp};
use super::{RecordedRequest, Shared};

/// Server caps for blocking queries (`MaxBlockingRPCQueryTime`, `DefaultBlockingRPCQueryTime`).
const MAX_WAIT: Duration = Duration::from_secs(300);

/// The address `GET /v1/status/leader` reports (the RPC port of a one-server cluster).
const LEADER: &str = "127.0.0.1:4647";

/// A refused request: plain text (the usual case) or a JSON conflict body.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub body: ErrorBody,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ErrorBody {
    Text(String),
    /// 409 with the conflicting variable and its index.
    Json(Value, u64),
}

impl ApiError {
    pub fn text(status: u16, msg: impl Into<String>) -> Self {
        ApiError {
            status,
            body: ErrorBody::Text(msg.into()),
        }
    }

    pub fn json(status: u16, body: Value, index: u64) -> Self {
        ApiError {
            status,
            body: ErrorBody::Json(body, index),
        }
    }
}

/// A successful answer.
struct Reply {
    status: u16,
    body: Option<Value>,
    /// `X-Nomad-Index`.
    index: Option<u64>,
    /// Reads also carry `X-Nomad-KnownLeader` / `X-Nomad-LastContact`.
    query_meta: bool,
}

impl Reply {
    fn read(index: u64, body: Value) -> Self {
        Reply {
            status: 200,
            body: Some(body),
            index: Some(index),
            query_meta: true,
        }
    }

    fn write(index: u64, body: Value) -> Self {
        Reply {
            status: 200,
            body: Some(body),
            index: Some(index),
            query_meta: false,
        }
    }
}

type Answer = Result<Reply, (ApiError, Option<u64>)>;

fn err(e: ApiError) -> (ApiError, Option<u64>) {
    (e, None)
}

/// The decoded query string. Keys may appear without a value (`?lock-acquire`).
pub(super) struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(raw: Option<&str>) -> Query {
        Query(
            raw.unwrap_or_default()
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (percent_decode(k, true), percent_decode(v, true))
                })
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn has(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }

    /// Go's `strconv.ParseBool`, false when absent or unparsable.
    pub fn bool(&self, key: &str) -> bool {
        matches!(
            self.get(key),
            Some("1" | "t" | "T" | "true" | "TRUE" | "True")
        )
    }

    fn namespace(&self) -> &str {
        self.get("namespace")
            .filter(|n| !n.is_empty())
            .unwrap_or("default")
    }
}

/// `%XX` decoding (and `+` as space in query strings); invalid escapes are kept verbatim.
fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `?index=&wait=` of a blocking query (`parseWait`).
struct Blocking {
    min_index: u64,
    wait: Duration,
}

fn parse_blocking(q: &Query) -> Result<Blocking, ApiError> {
    let mut wait = MAX_WAIT;
    if let Some(w) = q.get("wait").filter(|w| !w.is_empty()) {
        let ns =
            super::duration::parse_go(w).ok_or_else(|| ApiError::text(400, "Invalid wait time"))?;
        // `blockingRPC`: above the cap is the cap, zero or negative is the default.
        wait = if ns <= 0 {
            MAX_WAIT
        } else {
            Duration::from_nanos(ns as u64).min(MAX_WAIT)
        };
    }
    let mut min_index = 0;
    if let Some(i) = q.get("index").filter(|i| !i.is_empty()) {
        min_index = i
            .parse::<u64>()
            .map_err(|_| ApiError::text(400, "Invalid index"))?;
    }
    Ok(Blocking { min_index, wait })
}

impl Shared {
    /// Runs `read` against the state until its index passes `?index=` or `?wait=` runs out.
    /// Wakes on index changes (a watch channel), never by polling.
    async fn blocking<T>(&self, b: &Blocking, read: impl Fn(&State) -> (u64, T)) -> (u64, T) {
        self.block(b, |st, _| {
            let (index, value) = read(st);
            (index, Some(value))
        })
        .await
    }

    /// [`Shared::blocking`] for a list: `index` is looked at on every index change, the list
    /// is rendered once, when the query is answered.
    async fn blocking_list<T>(
        &self,
        b: &Blocking,
        index: impl Fn(&State) -> u64,
        render: impl Fn(&State) -> T,
    ) -> (u64, T) {
        self.block(b, |st, answering| {
            let index = index(st);
            (index, answering(index).then(|| render(st)))
        })
        .await
    }

    /// The blocking loop: `read` gives the index and, at least when `answering(index)` says
    /// the query is answered now, the value.
    async fn block<T>(
        &self,
        b: &Blocking,
        read: impl Fn(&State, &dyn Fn(u64) -> bool) -> (u64, Option<T>),
    ) -> (u64, T) {
        let mut changes = self.index_tx.subscribe();
        let mut shutdown = self.shutdown.subscribe();
        let deadline = tokio::time::Instant::now() + b.wait;
        let mut closed = false;
        loop {
            changes.borrow_and_update();
            let give_up =
                closed || tokio::time::Instant::now() >= deadline || *shutdown.borrow_and_update();
            // Nomad floors the index at 1 so that a client can always block on it.
            let answering = |index: u64| give_up || b.min_index == 0 || index.max(1) > b.min_index;
            let (index, value) = read(&self.lock_state(), &answering);
            if let Some(value) = value.filter(|_| answering(index)) {
                return (index.max(1), value);
            }
            tokio::select! {
                changed = changes.changed() => closed = changed.is_err(),
                _ = tokio::time::sleep_until(deadline) => {}
                _ = shutdown.changed() => {}
            }
        }
    }
}

/// The single axum handler.
pub(super) async fn dispatch(
    AxState(shared): AxState<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let raw_path = uri.path().to_string();
    let raw_query = uri.query().map(str::to_string);
    let answer = handle(
        &shared,
        &method,
        &raw_path,
        raw_query.as_deref(),
        &headers,
        &body,
    )
    .await;
    let response = render(answer);
    shared.lock_requests().push(RecordedRequest {
        method: method.to_string(),
        path: raw_path,
        query: raw_query,
        status: response.status().as_u16(),
    });
    if method != Method::GET {
        shared.persist_soon();
    }
    response
}

fn render(answer: Answer) -> Response {
    let (status, body, content_type, index, query_meta) = match answer {
        Ok(r) => (
            r.status,
            r.body.map(|b| b.to_string()),
            "application/json",
            r.index,
            r.query_meta,
        ),
        Err((e, index)) => match e.body {
            ErrorBody::Text(t) => (e.status, Some(t), "text/plain; charset=utf-8", index, false),
            ErrorBody::Json(v, i) => (
                e.status,
                Some(v.to_string()),
                "application/json",
                Some(i.max(1)),
                false,
            ),
        },
    };
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = match body {
        Some(b) => (code, b).into_response(),
        None => code.into_response(),
    };
    let h = resp.headers_mut();
    if status != 204 {
        h.insert("content-type", HeaderValue::from_static(content_type));
    }
    if let Some(i) = index {
        if let Ok(v) = HeaderValue::from_str(&i.to_string()) {
            h.insert("x-nomad-index", v);
        }
    }
    if query_meta {
        h.insert("x-nomad-knownleader", HeaderValue::from_static("true"));
        h.insert("x-nomad-lastcontact", HeaderValue::from_static("0"));
    }
    resp
}

/// `X-Nomad-Token` wins over `Authorization: Bearer` (`parseToken`).
fn request_token(headers: &HeaderMap) -> Option<String> {
    if let Some(t) = headers.get("x-nomad-token").and_then(|v| v.to_str().ok()) {
        if !t.is_empty() {
            return Some(t.to_string());
        }
    }
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

async fn handle(
    shared: &Arc<Shared>,
    method: &Method,
    raw_path: &str,
    raw_query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Answer {
    let path = percent_decode(raw_path, false);
    let q = Query::parse(raw_query);

    // Status endpoints are neither ACL-checked nor blocking queries.
    let status = |body: Value| Reply {
        status: 200,
        body: Some(body),
        index: None,
        query_meta: false,
    };
    match path.as_str() {
        "/v1/status/leader" => return Ok(status(json!(LEADER))),
        "/v1/status/peers" => return Ok(status(json!([LEADER]))),
        _ => {}
    }
    let known = path == "/v1/jobs"
        || path.starts_with("/v1/job/")
        || path == "/v1/allocations"
        || path.starts_with("/v1/allocation/")
        || path == "/v1/deployments"
        || path.starts_with("/v1/deployment/")
        || path == "/v1/vars"
        || path.starts_with("/v1/var/");
    if !known {
        // Go's ServeMux.
        return Err(err(ApiError::text(404, "404 page not found\n")));
    }
    // A one-region cluster cannot forward anywhere else.
    if let Some(region) = q.get("region").filter(|r| !r.is_empty()) {
        if region != shared.settings.region {
            return Err(err(ApiError::text(500, "No path to region")));
        }
    }
    if let Some(want) = &shared.acl_token {
        match request_token(headers) {
            None => return Err(err(ApiError::text(403, "Permission denied"))),
            Some(t) if &t != want => return Err(err(ApiError::text(403, "ACL token not found"))),
            Some(_) => {}
        }
    }

    if path == "/v1/jobs" {
        return match *method {
            Method::GET => list_jobs(shared, &q).await,
            Method::PUT | Method::POST => register(shared, None, &q, body).await,
            _ => Err(err(invalid_method())),
        };
    }
    if let Some(rest) = path.strip_prefix("/v1/job/") {
        return job_specific(shared, method, rest, &q, body).await;
    }
    if path == "/v1/allocations" {
        get_only(method).map_err(err)?;
        return list_allocations(shared, &q).await;
    }
    if let Some(id) = path.strip_prefix("/v1/allocation/") {
        get_only(method).map_err(err)?;
        return read_allocation(shared, id, &q).await;
    }
    if path == "/v1/deployments" {
        get_only(method).map_err(err)?;
        return list_deployments(shared, &q).await;
    }
    if let Some(id) = path.strip_prefix("/v1/deployment/") {
        get_only(method).map_err(err)?;
        return read_deployment(shared, id, &q).await;
    }
    if path == "/v1/vars" {
        get_only(method).map_err(err)?;
        return list_vars(shared, &q).await;
    }
    if let Some(var_path) = path.strip_prefix("/v1/var/") {
        return var_specific(shared, method, var_path, &q, body).await;
    }
    Err(err(ApiError::text(404, "404 page not found\n")))
}

fn invalid_method() -> ApiError {
    ApiError::text(405, "Invalid method")
}

fn get_only(method: &Method) -> Result<(), ApiError> {
    if *method == Method::GET {
        Ok(())
    } else {
        Err(invalid_method())
    }
}

fn parse_filter(q: &Query) -> Result<Option<filter::Expr>, ApiError> {
    match q.get("filter").filter(|f| !f.is_empty()) {
        None => Ok(None),
        Some(f) => filter::parse(f)
            .map(Some)
            .map_err(|e| ApiError::text(400, format!("failed to read filter expression: {e}"))),
    }
}

fn keep(f: &Option<filter::Expr>, v: &Value) -> bool {
    f.as_ref().is_none_or(|e| filter::eval(e, v))
}

/// `GET /v1/jobs`: JobListStubs sorted by ID; index = max(jobs, job_summary).
async fn list_jobs(shared: &Shared, q: &Query) -> Answer {
    let b = parse_blocking(q).map_err(err)?;
    let f = parse_filter(q).map_err(err)?;
    let ns = q.namespace().to_string();
    let prefix = q.get("prefix").unwrap_or_default().to_string();
    let meta = q.bool("meta");
    let (index, list) = shared
        .blocking_list(
            &b,
            |st| st.tables.jobs.max(st.tables.job_summary),
            |st| {
                st.all_jobs()
                    .filter(|r| (ns == "*" || r.ns() == ns) && r.id().starts_with(&prefix))
                    .filter(|r| {
                        // The filter sees the full job plus the stub's summary (a copy made
                        // only when there is a filter).
                        f.is_none() || {
                            let mut full = r.job.clone();
                            full["JobSummary"] = r.summary.render(r.ns(), r.id());
                            keep(&f, &full)
                        }
                    })
                    .map(|r| r.stub(meta))
                    .collect::<Vec<Value>>()
            },
        )
        .await;
    Ok(Reply::read(index, Value::Array(list)))
}

async fn job_specific(
    shared: &Arc<Shared>,
    method: &Method,
    rest: &str,
    q: &Query,
    body: &[u8],
) -> Answer {
    // Nomad matches the suffix of the whole path (`jobSpecificRequest`); anything else is
    // a job ID, slashes included.
    const READS: &[&str] = &[
        "/allocations",
        "/evaluations",
        "/deployments",
        "/deployment",
        "/summary",
        "/versions",
    ];
    const NOT_EMULATED: &[&str] = &[
        "/plan",
        "/evaluate",
        "/revert",
        "/stable",
        "/dispatch",
        "/periodic/force",
        "/scale",
        "/services",
        "/submission",
        "/action",
    ];
    for suffix in READS {
        if let Some(id) = rest.strip_suffix(suffix) {
            get_only(method).map_err(err)?;
            return job_read_sub(shared, id, suffix, q).await;
        }
    }
    if NOT_EMULATED.iter().any(|s| rest.ends_with(s)) {
        return Err(err(ApiError::text(
            501,
            format!("/v1/job/{rest}: not implemented by the Nomad emulator"),
        )));
    }
    match *method {
        Method::GET => read_job(shared, rest, q).await,
        Method::PUT | Method::POST => register(shared, Some(rest), q, body).await,
        Method::DELETE => deregister(shared, rest, q).await,
        _ => Err(err(invalid_method())),
    }
}

/// `GET /v1/job/:id`: the job, or 404 `job not found` (after blocking, with the jobs index).
async fn read_job(shared: &Shared, id: &str, q: &Query) -> Answer {
    let b = parse_blocking(q).map_err(err)?;
    let ns = q.namespace();
    let (index, job) = shared
        .blocking(&b, |st| match st.job(ns, id) {
            Some(r) => (r.modify_index(), Some(r.job.clone())),
            None => (st.tables.jobs, None),
        })
        .await;
    match job {
        Some(j) => Ok(Reply::read(index, j)),
        None => Err((ApiError::text(404, "job not found"), Some(index))),
    }
}

async fn job_read_sub(shared: &Shared, id: &str, what: &str, q: &Query) -> Answer {
    let b = parse_blocking(q).map_err(err)?;
    let ns = q.namespace().to_string();
    let task_states = q.get("task_states") != Some("false");
    let (index, out) = shared
        .blocking(&b, |st| match what {
            // Quirk: an unknown job has no allocations, 200 [].
            "/allocations" => {
                let list: Vec<Value> = st
                    .allocs_of(&ns, id)
                    .map(|a| a.stub(&st.node_id, task_states))
                    .collect();
                (st.tables.allocs, Some(Value::Array(list)))
            }
            "/evaluations" => {
                let mut evals: Vec<_> = st.evals_of(&ns, id).collect();
                evals.sort_by_key(|e| std::cmp::Reverse(e.create_index));
                (
                    st.tables.evals,
                    Some(Value::Array(evals.iter().map(|e| e.render()).collect())),
                )
            }
            "/deployments" => {
                let mut ds: Vec<_> = st.deployments_of(&ns, id).collect();
                ds.sort_by_key(|d| std::cmp::Reverse(d.create_index));
                (
                    st.tables.deployment,
                    Some(Value::Array(ds.iter().map(|d| d.render()).collect())),
                )
            }
            // Quirk: no deployment is 200 null.
            "/deployment" => {
                let latest = st
                    .deployments_of(&ns, id)
                    .max_by_key(|d| d.create_index)
                    .map(|d| d.render());
                (st.tables.deployment, Some(latest.unwrap_or(Value::Null)))
            }
            "/summary" => match st.job(&ns, id) {
                Some(r) => (
                    r.summary.modify_index,
                    Some(r.summary.render(r.ns(), r.id())),
                ),
                None => (st.tables.job_summary, None),
            },
            // "/versions"
            _ => match st.job(&ns, id) {
                Some(r) => {
                    let versions: Vec<Value> = r.versions.iter().rev().cloned().collect();
                    (
                        r.modify_index(),
                        Some(json!({"Versions": versions, "Diffs": null})),
                    )
                }
                None => (st.tables.jobs, None),
            },
        })
        .await;
    match out {
        Some(v) => Ok(Reply::read(index, v)),
        None => Err((ApiError::text(404, "job not found"), Some(index))),
    }
}

/// `POST|PUT /v1/jobs` and `/v1/job/:id`.
async fn register(shared: &Arc<Shared>, url_id: Option<&str>, q: &Query, body: &[u8]) -> Answer {
    if body.is_empty() {
        return Err(err(ApiError::text(400, "Request body is empty")));
    }
    let parsed: Value =
        serde_json::from_slice(body).map_err(|e| err(ApiError::text(400, e.to_string())))?;
    let query_ns = q.get("namespace").filter(|n| !n.is_empty());
    let req = decode_register(&parsed, url_id, query_ns, &shared.settings.region).map_err(|e| {
        let (status, text) = e.status_and_text();
        err(ApiError::text(status, text))
    })?;
    let out = shared
        .mutate(|st, cfg| sched::register(st, cfg, req))
        .map_err(err)?;
    Ok(Reply::write(
        out.index,
        json!({
            "EvalCreateIndex": out.eval_create_index,
            "EvalID": out.eval_id,
            "Index": out.index,
            "JobModifyIndex": out.job_modify_index,
            "KnownLeader": false,
            "LastContact": 0,
            "Warnings": "",
        }),
    ))
}

/// `DELETE /v1/job/:id[?purge=true]`.
async fn deregister(shared: &Arc<Shared>, id: &str, q: &Query) -> Answer {
    let ns = q.namespace().to_string();
    let purge = q.bool("purge");
    let out = shared
        .mutate(|st, cfg| sched::deregister(st, cfg, &ns, id, purge))
        .map_err(err)?;
    Ok(Reply::write(
        out.index,
        json!({
            "EvalCreateIndex": out.eval_create_index,
            "EvalID": out.eval_id,
            "Index": out.index,
            "JobModifyIndex": out.job_modify_index,
            "KnownLeader": false,
            "LastContact": 0,
            "VolumeEvalID": "",
            "VolumeEvalIndex": 0,
        }),
    ))
}

/// `GET /v1/allocations` (`prefix`, `filter`, `namespace`, `task_states=false`).
async fn list_allocations(shared: &Shared, q: &Query) -> Answer {
    let b = parse_blocking(q).map_err(err)?;
    let f = parse_filter(q).map_err(err)?;
    let ns = q.namespace().to_string();
    let prefix = q.get("prefix").unwrap_or_default().to_string();
    let task_states = q.get("task_states") != Some("false");
    let (index, list) = shared
        .blocking_list(
            &b,
            |st| st.tables.allocs,
            |st| {
                st.allocs
                    .values()
                    .filter(|a| (ns == "*" || a.namespace == ns) && a.id.starts_with(&prefix))
                    .filter_map(|a| {
                        if f.is_none() {
                            return Some(a.stub(&st.node_id, task_states));
                        }
                        // Filter on the full stub, then drop TaskStates if asked to.
                        let full = a.stub(&st.node_id, true);
                        if !keep(&f, &full) {
                            return None;
                        }
                        Some(if task_states {
                            full
                        } else {
                            a.stub(&st.node_id, false)
                        })
                    })
                    .collect::<Vec<Value>>()
            },
        )
        .await;
    Ok(Reply::read(index, Value::Array(list)))
}

async fn read_allocation(shared: &Shared, id: &str, q: &Query) -> Answer {
    let b = parse_blocking(q).map_err(err)?;
    let (index, alloc) = shared
        .blocking(&b, |st| match st.allocs.get(id) {
            Some(a) => {
                let job = st
                    .job(&a.namespace, &a.job_id)
                    .and_then(|r| r.spec_of_version(a.job_version));
                (a.modify_index, Some(a.full(&st.node_id, job)))
            }
            None => (st.tables.allocs, None),
        })
        .await;
    match alloc {
        Some(a) => Ok(Reply::read(index, a)),
        None => Err((ApiError::text(404, "alloc not found"), Some(index))),
    }
}

async fn list_deployments(shared: &Shared, q: &Query) -> Answer {
    let b = parse_blocking(q).map_err(err)?;
    let f = parse_filter(q).map_err(err)?;
    let ns = q.namespace().to_string();
    let (index, list) = shared
        .blocking_list(
            &b,
            |st| st.tables.deployment,
            |st| {
                st.deployments
                    .values()
                    .filter(|d| ns == "*" || d.namespace == ns)
                    .map(|d| d.render())
                    .filter(|v| keep(&f, v))
                    .collect::<Vec<Value>>()
            },
        )
        .await;
    Ok(Reply::read(index, Value::Array(list)))
}

async fn read_deployment(shared: &Shared, id: &str, q: &Query) -> Answer {
    let b = parse_blocking(q).map_err(err)?;
    let (index, d) = shared
        .blocking(&b, |st| match st.deployments.get(id) {
            Some(d) => (d.modify_index, Some(d.render())),
            None => (st.tables.deployment, None),
        })
        .await;
    match d {
        Some(d) => Ok(Reply::read(index, d)),
        None => Err((ApiError::text(404, "deployment not found"), Some(index))),
    }
}

/// `GET /v1/vars`: metadata only, never Items.
async fn list_vars(shared: &Shared, q: &Query) -> Answer {
    let b = parse_blocking(q).map_err(err)?;
    let ns = q.namespace().to_string();
    let prefix = q.get("prefix").unwrap_or_default().to_string();
    let (index, list) = shared
        .blocking_list(
            &b,
            |st| st.tables.variables,
            |st| {
                st.variables
                    .values()
                    .flat_map(|m| m.values())
                    .filter(|v| (ns == "*" || v.namespace == ns) && v.path.starts_with(&prefix))
                    .map(|v| v.metadata())
                    .collect::<Vec<Value>>()
            },
        )
        .await;
    Ok(Reply::read(index, Value::Array(list)))
}

async fn var_specific(
    shared: &Arc<Shared>,
    method: &Method,
    var_path: &str,
    q: &Query,
    body: &[u8],
) -> Answer {
    if var_path.is_empty() {
        return Err(err(ApiError::text(400, "missing variable path")));
    }
    let ns = q.namespace().to_string();
    match *method {
        Method::GET => {
            let b = parse_blocking(q).map_err(err)?;
            let (index, var) = shared
                .blocking(&b, |st| match st.var(&ns, var_path) {
                    Some(v) => (v.modify_index, Some(v.with_items(Some(&v.items)))),
                    None => (st.tables.variables, None),
                })
                .await;
            match var {
                Some(v) => Ok(Reply::read(index, v)),
                None => Err((ApiError::text(404, "variable not found"), Some(index))),
            }
        }
        Method::PUT | Method::POST => {
            let op = var_op(q).map_err(err)?;
            let decoded = vars::decode_body(body).map_err(err)?;
            let reply = shared
                .mutate(|st, cfg| vars::put(st, cfg, &ns, var_path, op, decoded))
                .map_err(err)?;
            Ok(Reply {
                status: reply.status,
                body: reply.body,
                index: Some(reply.index.max(1)),
                query_meta: false,
            })
        }
        Method::DELETE => {
            let cas = parse_cas(q).map_err(err)?;
            let reply = shared
                .mutate(|st, _| vars::delete(st, &ns, var_path, cas))
                .map_err(err)?;
            Ok(Reply {
                status: reply.status,
                body: None,
                index: Some(reply.index.max(1)),
                query_meta: false,
            })
        }
        // `VariableSpecificRequest` answers other methods with a 400.
        _ => Err(err(ApiError::text(400, "Invalid method"))),
    }
}

fn parse_cas(q: &Query) -> Result<Option<u64>, ApiError> {
    match q.get("cas").filter(|c| !c.is_empty()) {
        None => Ok(None),
        Some(c) => c.parse::<u64>().map(Some).map_err(|e| {
            ApiError::text(
                400,
                format!("can not parse cas: strconv.ParseUint: parsing {c:?}: {e}"),
            )
        }),
    }
}

/// The lock operation is chosen by the presence of its query key.
fn var_op(q: &Query) -> Result<VarOp, ApiError> {
    let ops: Vec<VarOp> = [
        ("lock-acquire", VarOp::Acquire),
        ("lock-renew", VarOp::Renew),
        ("lock-release", VarOp::Release),
    ]
    .into_iter()
    .filter(|(k, _)| q.has(k))
    .map(|(_, op)| op)
    .collect();
    let cas = parse_cas(q)?;
    match ops.as_slice() {
        [] => Ok(VarOp::Set { cas }),
        [op] if cas.is_none() => Ok(*op),
        [_] => Err(ApiError::text(
            400,
            "CAS can't be used with lock operations",
        )),
        _ => Err(ApiError::text(400, "multiple lock operations")),
    }
}

//! Contract tests for the Nomad client (`src/nomad`) and `NomadObserver` (`src/observe.rs`)
//! against the facts in NOMAD-API.md (§1.1 conventions, §1.2 endpoints, §2.1 variable locks)
//! and the samples vendored in `tests/fixtures/nomad/`: exact requests (base path, method,
//! path, query, `X-Nomad-Token`, `namespace`/`region`, `filter` encoding, `index`/`wait`),
//! Nomad's real quirks (text/plain errors, `404 job not found`, `X-Nomad-Index`, 409 with a
//! JSON body), retries and timeouts, request counters, the observer's job cache, and secret
//! hygiene.

use std::{
    collections::BTreeSet,
    fmt,
    time::{Duration, Instant},
};

use hippo_gitops_core::{
    nomad::{Blocking, NomadClient, NomadConfig, NomadError},
    observe::NomadObserver,
    retry::RetryPolicy,
    secret::Secret,
    stats::RequestStats,
};
use serde_json::{json, Value};
use wiremock::{
    matchers::{body_json, header, method, path, query_param, query_param_is_missing},
    Mock, MockServer, Request, ResponseTemplate,
};

const TOKEN: &str = "nomad-acl-Secr3t-7c1e5d2a-0f4b-4d8e-9a61-3b2c1d0e9f87";
const NAMESPACE: &str = "apps";
const REGION: &str = "eu-west";

/// The Hippo channel job of the `hippo_*.json` samples.
const JOB_ID: &str = "3fa85f64-5717-4562-b3fc-2c963f66afa6";
const JOB_BINDLE: &str = "contoso/weather/1.4.0";
/// A second channel job, derived from the first.
const JOB2_ID: &str = "7d1e4c2b-9a8f-4e3d-b2c1-0a9b8c7d6e5f";
/// A wanted channel that Nomad does not run.
const ABSENT_ID: &str = "00000000-dead-4bee-8f00-000000000000";

const TEXT_PLAIN: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";

// -- helpers --------------------------------------------------------------------------------

fn fixture(name: &str) -> String {
    let p = format!("{}/tests/fixtures/nomad/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn fixture_json(name: &str) -> Value {
    serde_json::from_str(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn fast_policy() -> RetryPolicy {
    RetryPolicy {
        initial: Duration::from_millis(1),
        max_interval: Duration::from_millis(5),
        max_elapsed: Duration::from_millis(200),
        max_unreachable: Duration::from_millis(200),
    }
}

/// No token, namespace or region; a generous timeout and the fast retry policy.
fn plain_config(addr: &str) -> NomadConfig {
    let mut c = NomadConfig::new(addr);
    c.timeout = Duration::from_secs(5);
    c.retry = fast_policy();
    c
}

/// With token, namespace and region.
fn secured_config(addr: &str) -> NomadConfig {
    let mut c = plain_config(addr);
    c.token = Some(Secret::new(TOKEN));
    c.namespace = Some(NAMESPACE.to_string());
    c.region = Some(REGION.to_string());
    c
}

fn client(config: NomadConfig) -> (NomadClient, RequestStats) {
    let stats = RequestStats::default();
    let c = NomadClient::new(config, stats.clone()).expect("client builds");
    (c, stats)
}

/// A Nomad error response: text/plain with the raw message (NOMAD-API.md §1.1 Errors).
fn text_error(status: u16, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_raw(message, TEXT_PLAIN)
}

fn json_body(status: u16, body: impl Into<Vec<u8>>) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_raw(body, JSON)
}

/// `GET /v1/job/:id` answered with `body`.
fn job_read_mock(id: &str, body: String) -> Mock {
    Mock::given(method("GET"))
        .and(path(format!("/v1/job/{id}")))
        .respond_with(json_body(200, body))
}

async fn received(server: &MockServer) -> Vec<Request> {
    server
        .received_requests()
        .await
        .expect("request recording is on")
}

fn header_value(req: &Request, name: &str) -> Option<String> {
    req.headers
        .iter()
        .find(|(k, _)| k.as_str().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(","))
}

/// Decoded query pairs, in order.
fn query(req: &Request) -> Vec<(String, String)> {
    req.url
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn query_values(req: &Request, key: &str) -> Vec<String> {
    query(req)
        .into_iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v)
        .collect()
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `METHOD /path` of every request, in arrival order.
fn lines(reqs: &[Request]) -> Vec<String> {
    reqs.iter()
        .map(|r| format!("{} {}", r.method, r.url.path()))
        .collect()
}

fn count(reqs: &[Request], verb: &str, p: &str) -> usize {
    reqs.iter()
        .filter(|r| r.method.to_string() == verb && r.url.path() == p)
        .count()
}

/// Neither the Debug nor the Display form of an error (nor its sources) may carry the token.
fn assert_no_token<E: fmt::Debug + fmt::Display + std::error::Error>(e: &E) {
    let mut texts = vec![format!("{e:?}"), e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        texts.push(format!("{s:?}"));
        texts.push(s.to_string());
        source = s.source();
    }
    for text in texts {
        assert!(!text.contains(TOKEN), "error text leaks the token: {text}");
    }
}

fn expect_status(e: &NomadError) -> (u16, String) {
    match e {
        NomadError::Status { status, body, .. } => (*status, body.clone()),
        other => panic!("expected NomadError::Status, got {other:?}"),
    }
}

/// The Hippo jobs list with `JOB_ID` and a copy of it as `JOB2_ID` at `job2_index`.
fn two_jobs_list(job1_index: u64, job2_index: u64) -> String {
    let list = fixture_json("hippo_jobs_list.json");
    let mut one = list[0].clone();
    one["JobModifyIndex"] = json!(job1_index);
    let mut two = list[0].clone();
    two["ID"] = json!(JOB2_ID);
    two["Name"] = json!(JOB2_ID);
    two["JobModifyIndex"] = json!(job2_index);
    json!([one, two]).to_string()
}

/// The Hippo job sample as `JOB2_ID`, running `bindle`, at `job_modify_index`.
fn job2_read(job_modify_index: u64, bindle: &str) -> String {
    let mut job = fixture_json("hippo_job_read.json");
    job["ID"] = json!(JOB2_ID);
    job["Name"] = json!(JOB2_ID);
    job["JobModifyIndex"] = json!(job_modify_index);
    job["TaskGroups"][0]["Tasks"][0]["Config"]["args"] =
        json!(["up", "--listen", "${NOMAD_ADDR_http}", "--bindle", bindle]);
    job.to_string()
}

/// Jobs list, allocations list (both with `X-Nomad-Index`) and the job reads of the two-job
/// cluster.
async fn mount_cluster(server: &MockServer, job2_index: u64, job2_bindle: &str) {
    Mock::given(method("GET"))
        .and(path("/v1/jobs"))
        .respond_with(
            // The jobs table's index moves whenever a job changes, as in Nomad.
            json_body(200, two_jobs_list(1187, job2_index))
                .insert_header("X-Nomad-Index", (1203 + job2_index).to_string().as_str()),
        )
        .mount(server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/allocations"))
        .respond_with(
            json_body(200, fixture("hippo_job_allocations.json"))
                .insert_header("X-Nomad-Index", "1201"),
        )
        .mount(server)
        .await;
    job_read_mock(JOB_ID, fixture("hippo_job_read.json"))
        .mount(server)
        .await;
    job_read_mock(JOB2_ID, job2_read(job2_index, job2_bindle))
        .mount(server)
        .await;
}

fn ids(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

// -- base path, auth and scope -------------------------------------------------------------

#[tokio::test]
async fn nomad_addr_with_or_without_trailing_slash_or_v1_hits_v1_jobs() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/jobs"))
        .respond_with(json_body(200, fixture("hippo_jobs_list.json")))
        .expect(4)
        .mount(&server)
        .await;
    let uri = server.uri();
    for addr in [
        uri.clone(),
        format!("{uri}/"),
        format!("{uri}/v1"),
        format!("{uri}/v1/"),
    ] {
        let (c, _) = client(plain_config(&addr));
        let jobs = c
            .list_jobs(None)
            .await
            .unwrap_or_else(|e| panic!("NOMAD_ADDR={addr}: {e}"));
        assert_eq!(jobs.value.len(), 1, "NOMAD_ADDR={addr}");
        assert_eq!(jobs.value[0].id, JOB_ID, "NOMAD_ADDR={addr}");
    }
    let reqs = received(&server).await;
    assert_eq!(lines(&reqs), vec!["GET /v1/jobs"; 4]);
}

#[tokio::test]
async fn token_namespaces_and_region_go_on_every_request() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/jobs"))
        .respond_with(json_body(200, fixture("hippo_jobs_list.json")))
        .mount(&server)
        .await;
    job_read_mock(JOB_ID, fixture("hippo_job_read.json"))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/allocations"))
        .respond_with(json_body(200, "[]"))
        .mount(&server)
        .await;
    Mock::given(method("DELETE"))
        .and(path(format!("/v1/job/{JOB_ID}")))
        .respond_with(json_body(
            200,
            json!({"EvalID": "d092fdc0-e1fd-2536-67d8-43af8ca798ac", "EvalCreateIndex": 35,
                   "JobModifyIndex": 34})
            .to_string(),
        ))
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .and(path("/v1/var/hippo-gitops/leader"))
        .respond_with(json_body(
            200,
            fixture("var_lock_acquire_response.docs.json"),
        ))
        .mount(&server)
        .await;

    let mut config = secured_config(&server.uri());
    config.hippo_namespace = "hippo".to_string();
    let (c, stats) = client(config);
    c.list_jobs(None).await.unwrap();
    c.list_jobs(Some(Blocking {
        index: 7,
        wait: Duration::from_millis(10),
    }))
    .await
    .unwrap();
    assert!(c.read_job(JOB_ID).await.unwrap().is_some());
    c.list_allocations(Some(&format!("JobID == \"{JOB_ID}\"")), None)
        .await
        .unwrap();
    c.delete_job(JOB_ID, true).await.unwrap();
    let (status, _) = c
        .put_json(
            "/var/hippo-gitops/leader",
            &[("lock-acquire", String::new())],
            &json!({"Path": "hippo-gitops/leader", "Lock": {"TTL": "15s"}}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);

    let reqs = received(&server).await;
    assert_eq!(reqs.len(), 6, "{:?}", lines(&reqs));
    for r in &reqs {
        let what = format!("{} {}", r.method, r.url);
        assert_eq!(
            header_value(r, "X-Nomad-Token").as_deref(),
            Some(TOKEN),
            "{what}"
        );
        // The lock variable is the controller's own; jobs and allocations are Hippo's.
        let namespace = if r.url.path().starts_with("/v1/var/") {
            NAMESPACE
        } else {
            "hippo"
        };
        assert_eq!(query_values(r, "namespace"), vec![namespace], "{what}");
        assert_eq!(query_values(r, "region"), vec![REGION], "{what}");
    }
    assert_eq!(stats.requests("nomad"), 6);

    // Hippo's default namespace: no parameter (Nomad's default), whatever NOMAD_NAMESPACE is.
    server.reset().await;
    Mock::given(method("GET"))
        .and(path("/v1/jobs"))
        .respond_with(json_body(200, fixture("hippo_jobs_list.json")))
        .mount(&server)
        .await;
    let (c, _) = client(secured_config(&server.uri()));
    c.list_jobs(None).await.unwrap();
    let reqs = received(&server).await;
    assert!(
        query_values(&reqs[0], "namespace").is_empty(),
        "{}",
        reqs[0].url
    );
}

#[tokio::test]
async fn no_token_header_or_scope_params_when_not_configured() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/jobs"))
        .respond_with(json_body(200, fixture("hippo_jobs_list.json")))
        .mount(&server)
        .await;
    job_read_mock(JOB_ID, fixture("hippo_job_read.json"))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/allocations"))
        .respond_with(json_body(200, "[]"))
        .mount(&server)
        .await;
    Mock::given(method("DELETE"))
        .and(path(format!("/v1/job/{JOB_ID}")))
        .respond_with(json_body(200, "{}"))
        .mount(&server)
        .await;

    let (c, _) = client(plain_config(&server.uri()));
    c.list_jobs(None).await.unwrap();
    assert!(c.read_job(JOB_ID).await.unwrap().is_some());
    c.list_allocations(None, None).await.unwrap();
    c.delete_job(JOB_ID, false).await.unwrap();

    let reqs = received(&server).await;
    assert_eq!(reqs.len(), 4, "{:?}", lines(&reqs));
    for r in &reqs {
        let what = format!("{} {}", r.method, r.url);
        assert_eq!(header_value(r, "X-Nomad-Token"), None, "{what}");
        assert_eq!(header_value(r, "Authorization"), None, "{what}");
        assert!(query_values(r, "namespace").is_empty(), "{what}");
        assert!(query_values(r, "region").is_empty(), "{what}");
        assert_eq!(r.url.query(), None, "no query at all: {what}");
    }
}

// -- list and read ----------------------------------------------------------------------------

#[tokio::test]
async fn list_jobs_parses_the_hippo_list_and_returns_x_nomad_index() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/jobs"))
        .respond_with(
            json_body(200, fixture("hippo_jobs_list.json")).insert_header("X-Nomad-Index", "1201"),
        )
        .expect(1)
        .mount(&server)
        .await;
    let (c, _) = client(plain_config(&server.uri()));
    let jobs = c.list_jobs(None).await.unwrap();
    assert_eq!(jobs.index, 1201);
    assert_eq!(jobs.value.len(), 1);
    let stub = &jobs.value[0];
    assert_eq!(stub.id, JOB_ID);
    assert_eq!(stub.status, "running");
    assert!(!stub.stop);
    assert_eq!(stub.job_modify_index, 1187);
    assert_eq!(stub.modify_index, 1203);
}

#[tokio::test]
async fn list_jobs_without_x_nomad_index_reports_index_zero() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/jobs"))
        .respond_with(json_body(200, fixture("jobs_list_full.docs.json")))
        .expect(1)
        .mount(&server)
        .await;
    let (c, _) = client(plain_config(&server.uri()));
    let jobs = c.list_jobs(None).await.unwrap();
    assert_eq!(jobs.index, 0);
    let got: Vec<(String, u64, String)> = jobs
        .value
        .iter()
        .map(|j| (j.id.clone(), j.job_modify_index, j.status.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("countdash".to_string(), 56, "pending".to_string()),
            ("example".to_string(), 42, "running".to_string()),
        ]
    );
}

#[tokio::test]
async fn read_job_returns_the_hippo_job_and_its_bindle() {
    let server = MockServer::start().await;
    job_read_mock(JOB_ID, fixture("hippo_job_read.json"))
        .expect(1)
        .mount(&server)
        .await;
    job_read_mock("example", fixture("job_read.docs.json"))
        .expect(1)
        .mount(&server)
        .await;
    let (c, _) = client(plain_config(&server.uri()));

    let job = c.read_job(JOB_ID).await.unwrap().expect("job exists");
    assert_eq!(job.id, JOB_ID);
    assert_eq!(job.bindle_arg().as_deref(), Some(JOB_BINDLE));
    assert_eq!(job.version, 3);
    assert_eq!(job.job_modify_index, 1187);
    assert_eq!(job.status, "running");
    assert_eq!(job.spin_task().map(|t| t.name.as_str()), Some("spin"));
    assert_eq!(job.desired_count(), 1);

    let docs = c.read_job("example").await.unwrap().expect("job exists");
    assert_eq!(docs.id, "example");
    assert_eq!(docs.job_modify_index, 7);

    let reqs = received(&server).await;
    assert_eq!(
        lines(&reqs),
        vec![
            format!("GET /v1/job/{JOB_ID}"),
            "GET /v1/job/example".into()
        ]
    );
}

#[tokio::test]
async fn read_job_404_job_not_found_is_none_without_retry() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(format!("/v1/job/{ABSENT_ID}")))
        .respond_with(text_error(404, "job not found"))
        .expect(1)
        .mount(&server)
        .await;
    let (c, stats) = client(secured_config(&server.uri()));
    assert!(c.read_job(ABSENT_ID).await.unwrap().is_none());
    assert_eq!(received(&server).await.len(), 1);
    assert_eq!(stats.requests("nomad"), 1);
    assert_eq!(stats.writes("nomad"), 0);
}

#[tokio::test]
async fn read_job_errors_other_than_404_are_errors_not_none() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(format!("/v1/job/{JOB_ID}")))
        .respond_with(text_error(403, "Permission denied"))
        .expect(1)
        .mount(&server)
        .await;
    let (c, _) = client(secured_config(&server.uri()));
    let e = c.read_job(JOB_ID).await.expect_err("403 is an error");
    assert_eq!(expect_status(&e), (403, "Permission denied".to_string()));
    assert!(!e.is_transient());
    assert_no_token(&e);
}

// -- allocations ------------------------------------------------------------------------------

#[tokio::test]
async fn list_allocations_sends_the_filter_url_encoded() {
    let server = MockServer::start().await;
    let filter = format!("JobID == \"{JOB_ID}\"");
    Mock::given(method("GET"))
        .and(path("/v1/allocations"))
        .and(query_param("filter", filter.as_str()))
        .respond_with(
            json_body(200, fixture("hippo_job_allocations.json"))
                .insert_header("X-Nomad-Index", "1201"),
        )
        .expect(1)
        .mount(&server)
        .await;
    // Characters that end or split a query unless encoded.
    let tricky = "Meta.tag == \"a+b&c=d#e%f\"";
    Mock::given(method("GET"))
        .and(path("/v1/allocations"))
        .and(query_param("filter", tricky))
        .respond_with(json_body(200, "[]"))
        .expect(1)
        .mount(&server)
        .await;
    let (c, _) = client(plain_config(&server.uri()));

    let allocs = c.list_allocations(Some(&filter), None).await.unwrap();
    assert_eq!(allocs.index, 1201);
    let got: Vec<(u64, bool, &str)> = allocs
        .value
        .iter()
        .map(|a| (a.job_version, a.is_healthy(), a.job_id.as_str()))
        .collect();
    assert_eq!(got, vec![(3, true, JOB_ID), (2, false, JOB_ID)]);
    assert!(c
        .list_allocations(Some(tricky), None)
        .await
        .unwrap()
        .value
        .is_empty());

    let reqs = received(&server).await;
    assert_eq!(reqs.len(), 2);
    assert_eq!(query(&reqs[0]), pairs(&[("filter", &filter)]));
    assert_eq!(query(&reqs[1]), pairs(&[("filter", tricky)]));
    for r in &reqs {
        let raw = r.url.query().unwrap_or_default();
        assert!(
            !raw.contains('"') && !raw.contains(' ') && !raw.contains("=="),
            "filter not encoded: {raw}"
        );
    }
}

#[tokio::test]
async fn empty_allocation_list_parses_to_empty() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/allocations"))
        .and(query_param_is_missing("filter"))
        .respond_with(json_body(200, "[]").insert_header("X-Nomad-Index", "17"))
        .expect(1)
        .mount(&server)
        .await;
    let (c, _) = client(plain_config(&server.uri()));
    let allocs = c.list_allocations(None, None).await.unwrap();
    assert!(allocs.value.is_empty());
    assert_eq!(allocs.index, 17);
}

#[tokio::test]
async fn nomad_docs_allocation_sample_parses_with_version_and_health() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/allocations"))
        .respond_with(json_body(200, fixture("allocations_list.docs.json")))
        .expect(1)
        .mount(&server)
        .await;
    let (c, _) = client(plain_config(&server.uri()));
    let allocs = c
        .list_allocations(Some("JobID == \"example\""), None)
        .await
        .unwrap();
    assert_eq!(allocs.value.len(), 1);
    let a = &allocs.value[0];
    assert_eq!(a.id, "5457f16d-0f87-8e6b-5e91-0c7da3a41eb7");
    assert_eq!(a.job_id, "example");
    assert_eq!(a.job_version, 0);
    assert_eq!(a.client_status, "running");
    assert_eq!(
        a.deployment_status.as_ref().and_then(|d| d.healthy),
        Some(true)
    );
    assert!(a.is_healthy());
    assert!(!a.is_failed());
}

// -- blocking queries and timeouts -----------------------------------------------------------

#[tokio::test]
async fn blocking_query_sends_index_and_wait_in_milliseconds() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/allocations"))
        .and(query_param("index", "1200"))
        .and(query_param("wait", "2000ms"))
        .respond_with(
            json_body(200, fixture("hippo_job_allocations.json"))
                .insert_header("X-Nomad-Index", "1201"),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/jobs"))
        .and(query_param("index", "55"))
        .and(query_param("wait", "300ms"))
        .respond_with(json_body(200, "[]").insert_header("X-Nomad-Index", "56"))
        .expect(1)
        .mount(&server)
        .await;
    let (c, _) = client(plain_config(&server.uri()));
    let allocs = c
        .list_allocations(
            None,
            Some(Blocking {
                index: 1200,
                wait: Duration::from_secs(2),
            }),
        )
        .await
        .unwrap();
    assert_eq!(allocs.index, 1201);
    assert_eq!(allocs.value.len(), 2);
    let jobs = c
        .list_jobs(Some(Blocking {
            index: 55,
            wait: Duration::from_millis(300),
        }))
        .await
        .unwrap();
    assert_eq!(jobs.index, 56);

    let reqs = received(&server).await;
    assert_eq!(reqs.len(), 2);
    assert_eq!(
        query(&reqs[0]),
        pairs(&[("index", "1200"), ("wait", "2000ms")])
    );
    assert_eq!(
        query(&reqs[1]),
        pairs(&[("index", "55"), ("wait", "300ms")])
    );
}

#[tokio::test]
async fn blocking_query_timeout_covers_the_wait() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/allocations"))
        .and(query_param("index", "1200"))
        .and(query_param("wait", "1000ms"))
        .respond_with(
            json_body(200, "[]")
                .insert_header("X-Nomad-Index", "1300")
                .set_delay(Duration::from_millis(800)),
        )
        .expect(1)
        .mount(&server)
        .await;
    let mut config = secured_config(&server.uri());
    config.timeout = Duration::from_millis(300);
    let (c, stats) = client(config);
    let started = Instant::now();
    let allocs = c
        .list_allocations(
            None,
            Some(Blocking {
                index: 1200,
                wait: Duration::from_secs(1),
            }),
        )
        .await
        .unwrap_or_else(|e| panic!("a blocking query held for less than `wait` failed: {e}"));
    assert!(started.elapsed() >= Duration::from_millis(800));
    assert_eq!(allocs.index, 1300);
    assert_eq!(stats.requests("nomad"), 1);
}

#[tokio::test]
async fn plain_get_slower_than_the_timeout_is_a_transient_transport_error() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/allocations"))
        .respond_with(json_body(200, "[]").set_delay(Duration::from_millis(800)))
        .mount(&server)
        .await;
    let mut config = secured_config(&server.uri());
    config.timeout = Duration::from_millis(300);
    let (c, stats) = client(config);
    let started = Instant::now();
    let e = c
        .list_allocations(None, None)
        .await
        .expect_err("the answer comes after the timeout");
    assert!(
        started.elapsed() < Duration::from_millis(800),
        "did not time out: {:?}",
        started.elapsed()
    );
    assert!(matches!(e, NomadError::Transport { .. }), "{e:?}");
    assert!(e.is_transient());
    assert_no_token(&e);
    // Every attempt is counted, with status 0 for "no response".
    let attempts = received(&server).await.len() as u64;
    assert!(attempts >= 1);
    assert_eq!(stats.requests("nomad"), attempts);
    assert!(stats.snapshot().keys().all(|k| k.status == 0));
}

// -- errors -----------------------------------------------------------------------------------

#[tokio::test]
async fn no_cluster_leader_500_is_retried_then_returned() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/jobs"))
        .respond_with(text_error(500, "No cluster leader"))
        .mount(&server)
        .await;
    let (c, stats) = client(secured_config(&server.uri()));
    let e = c.list_jobs(None).await.expect_err("500 every time");
    assert_eq!(expect_status(&e), (500, "No cluster leader".to_string()));
    assert!(e.is_transient());
    assert_no_token(&e);
    let attempts = received(&server).await.len() as u64;
    assert!(attempts >= 2, "500 was not retried ({attempts} request)");
    assert_eq!(stats.requests("nomad"), attempts);
    assert_eq!(stats.writes("nomad"), 0);
    assert!(stats.snapshot().keys().all(|k| k.status == 500));
}

#[tokio::test]
async fn a_500_then_success_recovers() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/jobs"))
        .respond_with(text_error(500, "No cluster leader"))
        .up_to_n_times(2)
        .expect(2)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/jobs"))
        .respond_with(
            json_body(200, fixture("hippo_jobs_list.json")).insert_header("X-Nomad-Index", "1201"),
        )
        .expect(1)
        .mount(&server)
        .await;
    let (c, stats) = client(plain_config(&server.uri()));
    let jobs = c.list_jobs(None).await.unwrap();
    assert_eq!(jobs.index, 1201);
    assert_eq!(jobs.value[0].id, JOB_ID);
    assert_eq!(received(&server).await.len(), 3);
    assert_eq!(stats.requests("nomad"), 3);
}

#[tokio::test]
async fn permission_denied_403_is_final_and_keeps_the_body() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/jobs"))
        .respond_with(text_error(403, "Permission denied"))
        .expect(1)
        .mount(&server)
        .await;
    let (c, stats) = client(secured_config(&server.uri()));
    let e = c.list_jobs(None).await.expect_err("403");
    assert_eq!(expect_status(&e), (403, "Permission denied".to_string()));
    assert!(!e.is_transient());
    assert!(e.to_string().contains("Permission denied"), "{e}");
    assert_no_token(&e);
    assert_eq!(received(&server).await.len(), 1);
    assert_eq!(stats.requests("nomad"), 1);
}

#[tokio::test]
async fn invalid_wait_time_400_is_final() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/allocations"))
        .respond_with(text_error(400, "Invalid wait time"))
        .expect(1)
        .mount(&server)
        .await;
    let (c, stats) = client(secured_config(&server.uri()));
    let e = c
        .list_allocations(
            None,
            Some(Blocking {
                index: 1,
                wait: Duration::from_millis(100),
            }),
        )
        .await
        .expect_err("400");
    assert_eq!(expect_status(&e), (400, "Invalid wait time".to_string()));
    assert!(!e.is_transient());
    assert_no_token(&e);
    assert_eq!(received(&server).await.len(), 1);
    assert_eq!(stats.requests("nomad"), 1);
}

#[tokio::test]
async fn a_non_json_200_is_a_final_decode_error() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/jobs"))
        .respond_with(ResponseTemplate::new(200).set_body_raw("<html>proxy</html>", "text/html"))
        .expect(1)
        .mount(&server)
        .await;
    let (c, _) = client(secured_config(&server.uri()));
    let e = c.list_jobs(None).await.expect_err("not JSON");
    assert!(matches!(e, NomadError::Decode { .. }), "{e:?}");
    assert!(!e.is_transient());
    assert_no_token(&e);
}

#[tokio::test]
async fn connection_refused_is_transient_and_every_attempt_is_counted() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (c, stats) = client(secured_config(&format!("http://127.0.0.1:{port}")));
    let e = c.list_jobs(None).await.expect_err("nothing listens");
    assert!(matches!(e, NomadError::Transport { .. }), "{e:?}");
    assert!(e.is_transient());
    assert_no_token(&e);
    assert!(stats.requests("nomad") >= 2, "{:?}", stats.snapshot());
    assert!(stats.snapshot().keys().all(|k| k.status == 0));
}

// -- writes -----------------------------------------------------------------------------------

#[tokio::test]
async fn delete_job_with_and_without_purge() {
    let server = MockServer::start().await;
    let eval = json!({"EvalID": "d092fdc0-e1fd-2536-67d8-43af8ca798ac", "EvalCreateIndex": 35,
                      "JobModifyIndex": 34})
    .to_string();
    Mock::given(method("DELETE"))
        .and(path(format!("/v1/job/{JOB_ID}")))
        .and(query_param("purge", "true"))
        .respond_with(json_body(200, eval.clone()))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("DELETE"))
        .and(path(format!("/v1/job/{JOB2_ID}")))
        .and(query_param_is_missing("purge"))
        .respond_with(json_body(200, eval))
        .expect(1)
        .mount(&server)
        .await;
    let (c, stats) = client(plain_config(&server.uri()));
    c.delete_job(JOB_ID, true).await.unwrap();
    c.delete_job(JOB2_ID, false).await.unwrap();

    let reqs = received(&server).await;
    assert_eq!(
        lines(&reqs),
        vec![
            format!("DELETE /v1/job/{JOB_ID}"),
            format!("DELETE /v1/job/{JOB2_ID}")
        ]
    );
    assert_eq!(query(&reqs[0]), pairs(&[("purge", "true")]));
    assert_eq!(query(&reqs[1]), vec![]);
    assert_eq!(stats.requests("nomad"), 2);
    assert_eq!(stats.writes("nomad"), 2);
}

#[tokio::test]
async fn delete_job_error_is_returned() {
    let server = MockServer::start().await;
    Mock::given(method("DELETE"))
        .and(path(format!("/v1/job/{JOB_ID}")))
        .respond_with(text_error(403, "Permission denied"))
        .expect(1)
        .mount(&server)
        .await;
    let (c, stats) = client(secured_config(&server.uri()));
    let e = c.delete_job(JOB_ID, true).await.expect_err("403");
    assert_eq!(expect_status(&e), (403, "Permission denied".to_string()));
    assert_no_token(&e);
    assert_eq!(stats.writes("nomad"), 1);
}

#[tokio::test]
async fn variable_lock_acquire_200_and_409_are_both_answers() {
    let server = MockServer::start().await;
    let acquire = json!({
        "Namespace": "default",
        "Path": "hippo-gitops/leader",
        "Lock": {"TTL": "15s", "LockDelay": "15s"}
    });
    Mock::given(method("PUT"))
        .and(path("/v1/var/hippo-gitops/leader"))
        .and(query_param("lock-acquire", ""))
        .and(header("content-type", JSON))
        .and(body_json(acquire.clone()))
        .respond_with(json_body(
            200,
            fixture("var_lock_acquire_response.docs.json"),
        ))
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .and(path("/v1/var/hippo-gitops/leader"))
        .and(query_param("lock-acquire", ""))
        .and(body_json(acquire.clone()))
        .respond_with(json_body(409, fixture("var_lock_conflict_409.docs.json")))
        .expect(1)
        .mount(&server)
        .await;
    let (c, stats) = client(plain_config(&server.uri()));
    let q = [("lock-acquire", String::new())];

    let (status, body) = c
        .put_json("/var/hippo-gitops/leader", &q, &acquire)
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        body,
        fixture("var_lock_acquire_response.docs.json").into_bytes()
    );
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["Lock"]["ID"], "670c7248-e2ef-f982-e4c5-f4437f75f1e4");

    let (status, body) = c
        .put_json("/var/hippo-gitops/leader", &q, &acquire)
        .await
        .expect("409 is an answer, not an error");
    assert_eq!(status, 409);
    let v: Value = serde_json::from_slice(&body).expect("409 body is JSON");
    assert_eq!(v, fixture_json("var_lock_conflict_409.docs.json"));

    assert_eq!(received(&server).await.len(), 2, "409 is not retried");
    assert_eq!(stats.requests("nomad"), 2);
    assert_eq!(stats.writes("nomad"), 2);
}

#[tokio::test]
async fn variable_lock_renew_409_text_is_an_answer() {
    let server = MockServer::start().await;
    Mock::given(method("PUT"))
        .and(path("/v1/var/hippo-gitops/leader"))
        .and(query_param("lock-renew", ""))
        .respond_with(text_error(409, "attempting to modify locked variable"))
        .expect(1)
        .mount(&server)
        .await;
    let (c, _) = client(plain_config(&server.uri()));
    let (status, body) = c
        .put_json(
            "/var/hippo-gitops/leader",
            &[("lock-renew", String::new())],
            &json!({"Path": "hippo-gitops/leader", "Namespace": "default",
                    "Lock": {"ID": "670c7248-e2ef-f982-e4c5-f4437f75f1e4"}}),
        )
        .await
        .unwrap();
    assert_eq!(status, 409);
    assert_eq!(body, b"attempting to modify locked variable".to_vec());
}

/// A CAS conflict returns the current variable as JSON (NOMAD-API.md §1.1: "the conflicting
/// variable, items stripped if no read ACL"); with read access it carries its Items, so the
/// body is as long as the variable. It must come back whole and parseable.
#[tokio::test]
async fn variable_conflict_409_json_body_is_returned_whole() {
    let server = MockServer::start().await;
    let current = fixture("var_lock_acquire_response.docs.json");
    assert!(current.len() > 300, "the sample is a long conflict body");
    Mock::given(method("PUT"))
        .and(path("/v1/var/example/first"))
        .and(query_param("cas", "15"))
        .respond_with(json_body(409, current.clone()).insert_header("X-Nomad-Index", "16"))
        .expect(1)
        .mount(&server)
        .await;
    let (c, _) = client(plain_config(&server.uri()));
    let (status, body) = c
        .put_json(
            "/var/example/first",
            &[("cas", "15".to_string())],
            &json!({"Namespace": "prod", "Path": "example/first", "Items": {"user": "me"}}),
        )
        .await
        .expect("409 is an answer, not an error");
    assert_eq!(status, 409);
    let v: Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "409 body is not the JSON Nomad sent ({e}): {:?}",
            String::from_utf8_lossy(&body)
        )
    });
    assert_eq!(v, fixture_json("var_lock_acquire_response.docs.json"));
}

// -- NomadObserver ----------------------------------------------------------------------------

#[tokio::test]
async fn observer_reads_each_wanted_job_once_then_only_the_changed_one() {
    let server = MockServer::start().await;
    let (c, stats) = client(secured_config(&server.uri()));
    let observer = NomadObserver::new(c);
    let wanted = ids(&[JOB_ID, JOB2_ID, ABSENT_ID]);
    let job1 = format!("/v1/job/{JOB_ID}");
    let job2 = format!("/v1/job/{JOB2_ID}");
    let absent = format!("/v1/job/{ABSENT_ID}");
    let mut total = 0;

    // 1. Cold: one list each, one read per wanted job that exists.
    mount_cluster(&server, 500, "contoso/weather/1.5.0").await;
    let state = observer.observe(&wanted, None, 4).await.unwrap();
    let reqs = received(&server).await;
    total += reqs.len();
    assert_eq!(reqs.len(), 4, "{:?}", lines(&reqs));
    assert_eq!(count(&reqs, "GET", "/v1/jobs"), 1);
    assert_eq!(count(&reqs, "GET", "/v1/allocations"), 1);
    assert_eq!(count(&reqs, "GET", &job1), 1);
    assert_eq!(count(&reqs, "GET", &job2), 1);
    assert_eq!(count(&reqs, "GET", &absent), 0);
    for r in &reqs {
        assert!(query_values(r, "index").is_empty(), "{}", r.url);
        assert!(query_values(r, "wait").is_empty(), "{}", r.url);
    }
    assert_eq!(
        state.jobs.keys().cloned().collect::<BTreeSet<_>>(),
        ids(&[JOB_ID, JOB2_ID])
    );
    assert_eq!(
        state.details.keys().cloned().collect::<BTreeSet<_>>(),
        ids(&[JOB_ID, JOB2_ID])
    );
    assert_eq!(state.details[JOB_ID].bindle_arg(), Some(JOB_BINDLE));
    assert_eq!(
        state.details[JOB2_ID].bindle_arg(),
        Some("contoso/weather/1.5.0")
    );
    assert_eq!(state.allocations.len(), 2);
    assert_eq!(state.allocations_index, 1201);
    assert_eq!(state.allocations_of(JOB_ID).count(), 2);

    // 2. Nothing moved: the lists only, the jobs come from the cache.
    server.reset().await;
    mount_cluster(&server, 500, "contoso/weather/1.5.0").await;
    let state = observer.observe(&wanted, None, 4).await.unwrap();
    let reqs = received(&server).await;
    total += reqs.len();
    assert_eq!(
        lines(&reqs).into_iter().collect::<BTreeSet<_>>(),
        ids(&["GET /v1/jobs", "GET /v1/allocations"]),
    );
    assert_eq!(reqs.len(), 2, "{:?}", lines(&reqs));
    assert_eq!(state.details.len(), 2);
    assert_eq!(
        state.details[JOB2_ID].bindle_arg(),
        Some("contoso/weather/1.5.0")
    );

    // 3. JOB2's JobModifyIndex moved: exactly that job is read again.
    server.reset().await;
    mount_cluster(&server, 510, "contoso/weather/1.6.0").await;
    let state = observer.observe(&wanted, None, 4).await.unwrap();
    let reqs = received(&server).await;
    total += reqs.len();
    assert_eq!(reqs.len(), 3, "{:?}", lines(&reqs));
    assert_eq!(count(&reqs, "GET", &job2), 1);
    assert_eq!(count(&reqs, "GET", &job1), 0);
    assert_eq!(count(&reqs, "GET", &absent), 0);
    assert_eq!(
        state.details[JOB2_ID].bindle_arg(),
        Some("contoso/weather/1.6.0")
    );
    assert_eq!(state.details[JOB2_ID].job_modify_index, 510);
    assert_eq!(state.details[JOB_ID].bindle_arg(), Some(JOB_BINDLE));

    // 4. Settled at the new index: no reads again.
    server.reset().await;
    mount_cluster(&server, 510, "contoso/weather/1.6.0").await;
    observer.observe(&wanted, None, 4).await.unwrap();
    let reqs = received(&server).await;
    total += reqs.len();
    assert_eq!(reqs.len(), 2, "{:?}", lines(&reqs));

    assert_eq!(stats.requests("nomad"), total as u64);
    assert_eq!(stats.writes("nomad"), 0);
}

#[tokio::test]
async fn observer_drops_jobs_that_left_nomad() {
    let server = MockServer::start().await;
    let (c, _) = client(plain_config(&server.uri()));
    let observer = NomadObserver::new(c);
    let wanted = ids(&[JOB_ID, JOB2_ID]);

    mount_cluster(&server, 500, "contoso/weather/1.5.0").await;
    let state = observer.observe(&wanted, None, 2).await.unwrap();
    assert_eq!(state.details.len(), 2);

    // Both jobs gone from the list: nothing is read and nothing stale is reported.
    server.reset().await;
    Mock::given(method("GET"))
        .and(path("/v1/jobs"))
        .respond_with(json_body(200, "[]"))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/allocations"))
        .respond_with(json_body(200, "[]"))
        .mount(&server)
        .await;
    let state = observer.observe(&wanted, None, 2).await.unwrap();
    let reqs = received(&server).await;
    assert_eq!(
        lines(&reqs).into_iter().collect::<BTreeSet<_>>(),
        ids(&["GET /v1/jobs", "GET /v1/allocations"]),
    );
    assert_eq!(reqs.len(), 2);
    assert!(state.jobs.is_empty());
    assert!(state.details.is_empty(), "{:?}", state.details.keys());
    assert!(state.allocations.is_empty());
    assert_eq!(state.allocations_index, 0);

    // Back (same JobModifyIndex): reported again, read at most once each.
    server.reset().await;
    mount_cluster(&server, 500, "contoso/weather/1.5.0").await;
    let state = observer.observe(&wanted, None, 2).await.unwrap();
    let reqs = received(&server).await;
    assert!(count(&reqs, "GET", &format!("/v1/job/{JOB_ID}")) <= 1);
    assert!(count(&reqs, "GET", &format!("/v1/job/{JOB2_ID}")) <= 1);
    assert_eq!(state.details.len(), 2);
}

#[tokio::test]
async fn observer_treats_a_job_deleted_between_list_and_read_as_absent() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/jobs"))
        .respond_with(json_body(200, fixture("hippo_jobs_list.json")))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/allocations"))
        .respond_with(json_body(200, "[]"))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/v1/job/{JOB_ID}")))
        .respond_with(text_error(404, "job not found"))
        .expect(1)
        .mount(&server)
        .await;
    let (c, _) = client(plain_config(&server.uri()));
    let observer = NomadObserver::new(c);
    let state = observer.observe(&ids(&[JOB_ID]), None, 4).await.unwrap();
    assert!(state.jobs.contains_key(JOB_ID));
    assert!(state.details.is_empty());
}

#[tokio::test]
async fn observer_blocking_query_goes_on_the_allocations_list() {
    let server = MockServer::start().await;
    mount_cluster(&server, 500, "contoso/weather/1.5.0").await;
    let (c, _) = client(secured_config(&server.uri()));
    let observer = NomadObserver::new(c);
    let state = observer
        .observe(
            &ids(&[JOB_ID]),
            Some(Blocking {
                index: 1200,
                wait: Duration::from_secs(2),
            }),
            4,
        )
        .await
        .unwrap();
    assert_eq!(state.allocations_index, 1201);
    assert_eq!(state.details.len(), 1);

    let reqs = received(&server).await;
    assert_eq!(reqs.len(), 3, "{:?}", lines(&reqs));
    let allocs: Vec<&Request> = reqs
        .iter()
        .filter(|r| r.url.path() == "/v1/allocations")
        .collect();
    assert_eq!(allocs.len(), 1);
    assert_eq!(query_values(allocs[0], "index"), vec!["1200"]);
    assert_eq!(query_values(allocs[0], "wait"), vec!["2000ms"]);
    for r in reqs.iter().filter(|r| r.url.path() != "/v1/allocations") {
        assert!(query_values(r, "index").is_empty(), "{}", r.url);
        assert!(query_values(r, "wait").is_empty(), "{}", r.url);
    }
    for r in &reqs {
        assert_eq!(header_value(r, "X-Nomad-Token").as_deref(), Some(TOKEN));
        // Hippo's jobs are in `default`, not in the controller's NOMAD_NAMESPACE.
        assert!(query_values(r, "namespace").is_empty(), "{}", r.url);
        assert_eq!(query_values(r, "region"), vec![REGION]);
    }
    assert_eq!(count(&reqs, "GET", "/v1/jobs"), 1);
    assert_eq!(count(&reqs, "GET", &format!("/v1/job/{JOB_ID}")), 1);
}

#[tokio::test]
async fn observer_returns_a_nomad_error() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/jobs"))
        .respond_with(json_body(200, fixture("hippo_jobs_list.json")))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/allocations"))
        .respond_with(text_error(403, "Permission denied"))
        .expect(1)
        .mount(&server)
        .await;
    let (c, _) = client(secured_config(&server.uri()));
    let observer = NomadObserver::new(c);
    let e = observer
        .observe(&ids(&[JOB_ID]), None, 4)
        .await
        .expect_err("allocations are forbidden");
    assert_eq!(expect_status(&e), (403, "Permission denied".to_string()));
    assert!(!e.is_transient());
    assert_no_token(&e);
}

// -- secret hygiene ---------------------------------------------------------------------------

#[test]
fn config_debug_never_shows_the_token() {
    let config = secured_config("http://127.0.0.1:4646");
    let text = format!("{config:?}");
    assert!(!text.contains(TOKEN), "{text}");
    assert!(text.contains(NAMESPACE), "the rest is printed: {text}");
    assert_eq!(
        config.token.as_ref().map(|t| t.expose()),
        Some(TOKEN),
        "the token is kept"
    );
}

#[tokio::test]
async fn a_list_whose_index_did_not_move_is_not_decoded_again() {
    let server = MockServer::start().await;
    let (c, _) = client(secured_config(&server.uri()));
    let observer = NomadObserver::new(c);
    let wanted = ids(&[JOB_ID, JOB2_ID]);
    mount_cluster(&server, 500, "contoso/weather/1.5.0").await;
    let first = observer.observe(&wanted, None, 4).await.unwrap();

    // Same indexes, bodies that are not JSON at all: kept lists are used, nothing decoded.
    let lists = |jobs_index: &str, allocs_index: &str| {
        [
            Mock::given(method("GET"))
                .and(path("/v1/jobs"))
                .respond_with(
                    json_body(200, "not json").insert_header("X-Nomad-Index", jobs_index),
                ),
            Mock::given(method("GET"))
                .and(path("/v1/allocations"))
                .respond_with(
                    json_body(200, "not json either").insert_header("X-Nomad-Index", allocs_index),
                ),
        ]
    };
    server.reset().await;
    for m in lists("1703", "1201") {
        m.mount(&server).await;
    }
    let second = observer.observe(&wanted, None, 4).await.unwrap();
    assert_eq!(second.jobs, first.jobs);
    assert_eq!(second.allocations, first.allocations);
    assert_eq!(second.allocations_index, 1201);
    assert_eq!(
        second.details[JOB_ID].bindle_arg(),
        Some(JOB_BINDLE),
        "jobs come from the cache"
    );
    assert_eq!(lines(&received(&server).await).len(), 2);

    // The allocations index moved: that list is decoded (and this body fails to).
    server.reset().await;
    for m in lists("1703", "1202") {
        m.mount(&server).await;
    }
    let err = observer.observe(&wanted, None, 4).await.unwrap_err();
    assert!(
        matches!(err, NomadError::Decode { ref path, .. } if path == "/allocations"),
        "{err}"
    );
    assert!(!err.is_transient());
}

#[tokio::test]
async fn a_long_allocations_list_is_decoded_as_it_streams_in() {
    // 3000 allocations (a controller of 1000 apps), ~4 MB of JSON, each with ten task events:
    // the newest three of each are kept.
    let allocs: Vec<Value> = (0..3000)
        .map(|i| {
            json!({
                "ID": format!("{i:08x}-0000-0000-0000-000000000000"),
                "JobID": format!("job-{}", i % 1000),
                "JobVersion": 2, "DesiredStatus": "run", "ClientStatus": "running",
                "ClientDescription": "Tasks are running", "Name": format!("job.group[{i}]"),
                "DeploymentStatus": {"Healthy": true, "Canary": false, "ModifyIndex": 5},
                "TaskStates": {"spin": {"State": "running", "Failed": false, "Restarts": 0,
                    "Events": (0..10).map(|t| json!({
                        "Type": format!("Event {t}"), "Time": 1_000 + t,
                        "DisplayMessage": "x".repeat(200), "Details": {"k": "v"}
                    })).collect::<Vec<_>>()}},
                "CreateIndex": 10 + i, "ModifyIndex": 20 + i
            })
        })
        .collect();
    let body = serde_json::to_vec(&allocs).unwrap();
    assert!(body.len() > 4_000_000, "{}", body.len());
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/allocations"))
        .respond_with(json_body(200, body).insert_header("X-Nomad-Index", "77"))
        .mount(&server)
        .await;
    let (c, _) = client(plain_config(&server.uri()));
    let listed = c.list_allocations(None, None).await.unwrap();
    assert_eq!(listed.index, 77);
    assert_eq!(listed.value.len(), 3000);
    let a = &listed.value[2999];
    assert_eq!(a.job_id, "job-999");
    assert_eq!(a.create_index, 3009);
    let events = a.task_states.as_ref().unwrap()[0].events.as_ref().unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["Event 7", "Event 8", "Event 9"]);
    let grouped = hippo_gitops_core::nomad::Allocations::from(listed.value);
    assert_eq!(grouped.of("job-5").len(), 3);
    assert_eq!(grouped.len(), 3000);
}

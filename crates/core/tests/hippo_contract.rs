//! Contract tests for the typed Hippo client (`src/hippo`) against the facts in
//! HIPPO-API.md (§2, §2.1, §3, §4, §5, §12, §13) and the v0.19 OpenAPI document: exact
//! requests (method, path, query, JSON body with explicit nulls, Authorization) and the real
//! response quirks (quoted GUIDs, 204s, 201 with an empty body, 404 on revision registration,
//! ValidationProblemDetails, no 409), retries, request counters and secret hygiene.

use std::time::{Duration, Instant};

use chrono::Utc;
use hippo_gitops_core::{
    hippo::{
        types::{CreateChannel, DesiredStatus, EnvVar, Strategy, UpdateChannel},
        Credentials, HippoClient, HippoClientConfig, HippoError,
    },
    retry::RetryPolicy,
    secret::Secret,
    stats::RequestStats,
};
use serde_json::{json, Value};
use uuid::Uuid;
use wiremock::{
    matchers::{body_json, header, method, path, query_param, query_param_is_missing},
    Mock, MockServer, Request, ResponseTemplate,
};

const USERNAME: &str = "admin";
const PASSWORD: &str = "pw-Sup3rS3cret-hunter2";
const TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.token-one.c2lnbmF0dXJlLW9uZQ";
const TOKEN2: &str = "eyJhbGciOiJIUzI1NiJ9.token-two.c2lnbmF0dXJlLXR3bw";
const PRIVATE_KEY: &str = "-----BEGIN PRIVATE KEY-----MIIEvQIBADANBgkqhkiG9w0BAQEFAASC-PRIVATE";

const GUID: &str = "3fa85f64-5717-4562-b3fc-2c963f66afa6";
const APP_ID: &str = "0b8f3c7e-1111-4a2b-9c3d-000000000001";
const CHANNEL_ID: &str = "0b8f3c7e-2222-4a2b-9c3d-000000000002";
const REVISION_ID: &str = "0b8f3c7e-3333-4a2b-9c3d-000000000003";
const CERT_ID: &str = "0b8f3c7e-4444-4a2b-9c3d-000000000004";

const VALIDATION_TYPE: &str = "https://tools.ietf.org/html/rfc7231#section-6.5.1";
const VALIDATION_TITLE: &str = "One or more validation errors occurred.";

// -- helpers --------------------------------------------------------------------------------

fn uuid(s: &str) -> Uuid {
    Uuid::parse_str(s).expect("test uuid")
}

fn fast_policy() -> RetryPolicy {
    RetryPolicy {
        initial: Duration::from_millis(1),
        max_interval: Duration::from_millis(5),
        max_elapsed: Duration::from_millis(200),
        max_unreachable: Duration::from_millis(200),
    }
}

fn login_credentials() -> Credentials {
    Credentials::Login {
        username: USERNAME.to_string(),
        password: Secret::new(PASSWORD),
    }
}

fn token_credentials() -> Credentials {
    Credentials::Token(Secret::new(TOKEN))
}

fn config(url: &str, credentials: Credentials) -> HippoClientConfig {
    let mut config = HippoClientConfig::new(url, credentials);
    config.retry = fast_policy();
    config.timeout = Duration::from_secs(5);
    config
}

fn client_with(config: HippoClientConfig) -> (HippoClient, RequestStats) {
    let stats = RequestStats::default();
    let client = HippoClient::new(config, stats.clone()).expect("client");
    (client, stats)
}

/// A client with a fixed bearer token (no login calls).
fn token_client(server: &MockServer) -> (HippoClient, RequestStats) {
    client_with(config(&server.uri(), token_credentials()))
}

/// A client that logs in with a username and password.
fn login_client(server: &MockServer) -> (HippoClient, RequestStats) {
    client_with(config(&server.uri(), login_credentials()))
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn in_minutes(minutes: i64) -> String {
    (Utc::now() + chrono::Duration::minutes(minutes)).to_rfc3339()
}

fn in_seconds(seconds: i64) -> String {
    (Utc::now() + chrono::Duration::seconds(seconds)).to_rfc3339()
}

/// `POST /api/auth-tokens` with exactly the configured credentials.
fn login_mock(token: &str, expiration: &str) -> Mock {
    Mock::given(method("POST"))
        .and(path("/api/auth-tokens"))
        .and(header("content-type", "application/json"))
        .and(body_json(
            json!({"userName": USERNAME, "password": PASSWORD}),
        ))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"token": token, "expiration": expiration})),
        )
}

/// An authorised request to `verb path` with a bearer token.
fn api(verb: &str, p: &str, token: &str) -> wiremock::MockBuilder {
    Mock::given(method(verb))
        .and(path(p))
        .and(header("authorization", bearer(token).as_str()))
}

fn quoted_guid(guid: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_raw(format!("\"{guid}\""), "application/json")
}

fn validation_problem(errors: Value) -> ResponseTemplate {
    ResponseTemplate::new(400).set_body_json(json!({
        "type": VALIDATION_TYPE,
        "title": VALIDATION_TITLE,
        "status": 400,
        "traceId": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        "errors": errors,
    }))
}

/// Neither the Debug nor the Display form of an error may carry a password or a token.
fn assert_no_secrets(e: &HippoError) {
    for text in [format!("{e:?}"), e.to_string()] {
        for secret in [PASSWORD, TOKEN, TOKEN2] {
            assert!(
                !text.contains(secret),
                "error text leaks a secret ({secret}): {text}"
            );
        }
    }
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

fn sorted_query(req: &Request) -> Vec<(String, String)> {
    let mut q: Vec<(String, String)> = req
        .url
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    q.sort();
    q
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut q: Vec<(String, String)> = items
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    q.sort();
    q
}

fn app_json(id: &str, name: &str) -> Value {
    json!({
        "id": id,
        "name": name,
        "storageId": format!("{name}-storage"),
        "description": null,
        "channels": [{"id": CHANNEL_ID, "name": "production", "activeRevisionNumber": null}],
    })
}

fn app_id(n: u32) -> String {
    format!("a0000000-0000-4000-8000-{n:012}")
}

fn page(items: Vec<Value>, total: i64, index: i64, size: i64, last: bool) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "items": items,
        "totalItems": total,
        "pageIndex": index,
        "pageSize": size,
        "isLastPage": last,
    }))
}

/// A v0.19 `ChannelItem` as `GET /api/channels/{id}` returns it: the certificate includes its
/// private key, env vars carry `channelId`, `activeRevision` has components and `type`.
fn channel_json() -> Value {
    json!({
        "id": CHANNEL_ID,
        "appId": APP_ID,
        "name": "production",
        "domain": "production.myapp.hippo.local",
        "revisionSelectionStrategy": "UseRangeRule",
        "activeRevision": {
            "id": REVISION_ID,
            "appId": APP_ID,
            "revisionNumber": "1.2.3",
            "components": [{
                "id": "0b8f3c7e-5555-4a2b-9c3d-000000000005",
                "source": "4f2d...parcel",
                "name": "hello",
                "route": "/...",
                "channel": null,
                "type": "http"
            }],
            "type": "http"
        },
        "lastPublishAt": "2022-08-09T12:34:56Z",
        "rangeRule": "^1.2",
        "certificate": {
            "id": CERT_ID,
            "name": "wildcard",
            "publicKey": "-----BEGIN CERTIFICATE-----PUBLIC",
            "privateKey": PRIVATE_KEY,
            "channels": []
        },
        "environmentVariables": [
            {"channelId": CHANNEL_ID, "key": "GREETING", "value": "hello"}
        ],
        "appSummary": {
            "id": APP_ID,
            "name": "myapp",
            "storageId": "myapp",
            "channels": [{"id": CHANNEL_ID, "name": "production", "activeRevisionNumber": "1.2.3"}]
        }
    })
}

fn update_body() -> UpdateChannel {
    UpdateChannel {
        id: uuid(CHANNEL_ID),
        name: "production".into(),
        domain: "production.myapp.hippo.local".into(),
        revision_selection_strategy: Strategy::UseSpecifiedRevision,
        range_rule: None,
        active_revision_id: Some(uuid(REVISION_ID)),
        last_publish_date: Some("2022-08-09T12:34:56Z".into()),
        certificate_id: None,
    }
}

fn update_json() -> Value {
    json!({
        "id": CHANNEL_ID,
        "name": "production",
        "domain": "production.myapp.hippo.local",
        "revisionSelectionStrategy": "UseSpecifiedRevision",
        "rangeRule": null,
        "activeRevisionId": REVISION_ID,
        "lastPublishDate": "2022-08-09T12:34:56Z",
        "certificateId": null,
    })
}

fn channel_path() -> String {
    format!("/api/channels/{CHANNEL_ID}")
}

// -- authentication (§3) ----------------------------------------------------------------------

#[tokio::test]
async fn login_posts_credentials_and_later_calls_carry_the_bearer_token() {
    let server = MockServer::start().await;
    login_mock(TOKEN, &in_minutes(30))
        .expect(1)
        .mount(&server)
        .await;
    api("GET", &channel_path(), TOKEN)
        .respond_with(ResponseTemplate::new(200).set_body_json(channel_json()))
        .expect(2)
        .mount(&server)
        .await;
    let (client, _) = login_client(&server);

    client
        .get_channel(uuid(CHANNEL_ID))
        .await
        .expect("first get");
    client
        .get_channel(uuid(CHANNEL_ID))
        .await
        .expect("second get");

    let reqs = received(&server).await;
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[0].url.path(), "/api/auth-tokens");
    assert_eq!(
        header_value(&reqs[0], "authorization"),
        None,
        "the login call is anonymous"
    );
    assert_eq!(header_value(&reqs[1], "authorization"), Some(bearer(TOKEN)));
    assert_eq!(header_value(&reqs[2], "authorization"), Some(bearer(TOKEN)));
}

#[tokio::test]
async fn expired_token_triggers_a_fresh_login_before_the_next_call() {
    let server = MockServer::start().await;
    // First login: a token that has already expired; second: a valid one.
    login_mock(TOKEN, &in_minutes(-5))
        .up_to_n_times(1)
        .with_priority(1)
        .expect(1)
        .mount(&server)
        .await;
    login_mock(TOKEN2, &in_minutes(30))
        .expect(1)
        .mount(&server)
        .await;
    api("GET", &channel_path(), TOKEN)
        .respond_with(ResponseTemplate::new(200).set_body_json(channel_json()))
        .expect(1)
        .mount(&server)
        .await;
    api("GET", &channel_path(), TOKEN2)
        .respond_with(ResponseTemplate::new(200).set_body_json(channel_json()))
        .expect(1)
        .mount(&server)
        .await;
    let (client, _) = login_client(&server);

    client
        .get_channel(uuid(CHANNEL_ID))
        .await
        .expect("first get");
    client
        .get_channel(uuid(CHANNEL_ID))
        .await
        .expect("second get");

    let seq: Vec<(String, String)> = received(&server)
        .await
        .iter()
        .map(|r| (r.method.to_string(), r.url.path().to_string()))
        .collect();
    let ch = channel_path();
    assert_eq!(
        seq,
        vec![
            ("POST".to_string(), "/api/auth-tokens".to_string()),
            ("GET".to_string(), ch.clone()),
            ("POST".to_string(), "/api/auth-tokens".to_string()),
            ("GET".to_string(), ch),
        ]
    );
}

#[tokio::test]
async fn token_expiring_within_the_margin_triggers_a_fresh_login() {
    let server = MockServer::start().await;
    // Valid for 30 more seconds: inside the 60 s margin, so each call logs in first.
    login_mock(TOKEN, &in_seconds(30))
        .expect(2)
        .mount(&server)
        .await;
    api("GET", &channel_path(), TOKEN)
        .respond_with(ResponseTemplate::new(200).set_body_json(channel_json()))
        .expect(2)
        .mount(&server)
        .await;
    let (client, _) = login_client(&server);

    client
        .get_channel(uuid(CHANNEL_ID))
        .await
        .expect("first get");
    client
        .get_channel(uuid(CHANNEL_ID))
        .await
        .expect("second get");
}

#[tokio::test]
async fn a_401_triggers_exactly_one_relogin_and_one_retry() {
    let server = MockServer::start().await;
    login_mock(TOKEN, &in_minutes(30))
        .up_to_n_times(1)
        .with_priority(1)
        .expect(1)
        .mount(&server)
        .await;
    login_mock(TOKEN2, &in_minutes(30))
        .expect(1)
        .mount(&server)
        .await;
    api("GET", &channel_path(), TOKEN)
        .respond_with(ResponseTemplate::new(401))
        .expect(1)
        .mount(&server)
        .await;
    api("GET", &channel_path(), TOKEN2)
        .respond_with(ResponseTemplate::new(200).set_body_json(channel_json()))
        .expect(1)
        .mount(&server)
        .await;
    let (client, _) = login_client(&server);

    let channel = client.get_channel(uuid(CHANNEL_ID)).await.expect("get");
    assert_eq!(channel.id, uuid(CHANNEL_ID));
    assert_eq!(received(&server).await.len(), 4);
}

#[tokio::test]
async fn a_401_after_logging_in_again_is_unauthorized() {
    let server = MockServer::start().await;
    login_mock(TOKEN, &in_minutes(30))
        .expect(2)
        .mount(&server)
        .await;
    api("GET", &channel_path(), TOKEN)
        .respond_with(ResponseTemplate::new(401))
        .expect(2)
        .mount(&server)
        .await;
    let (client, _) = login_client(&server);

    let e = client
        .get_channel(uuid(CHANNEL_ID))
        .await
        .expect_err("401 twice");
    assert!(matches!(e, HippoError::Unauthorized { .. }), "{e:?}");
    assert_eq!(e.status(), Some(401));
    assert!(!e.is_transient());
    assert_no_secrets(&e);
}

#[tokio::test]
async fn a_401_logs_in_again_even_with_retries_disabled() {
    // The re-login on 401 is part of authentication, not of the transient-failure budget
    // (mod.rs docs: "logs in again before expiry and once more on a 401").
    let server = MockServer::start().await;
    login_mock(TOKEN, &in_minutes(30))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    login_mock(TOKEN2, &in_minutes(30)).mount(&server).await;
    api("GET", &channel_path(), TOKEN)
        .respond_with(ResponseTemplate::new(401))
        .mount(&server)
        .await;
    api("GET", &channel_path(), TOKEN2)
        .respond_with(ResponseTemplate::new(200).set_body_json(channel_json()))
        .mount(&server)
        .await;
    let mut cfg = config(&server.uri(), login_credentials());
    cfg.retry = RetryPolicy::none();
    let (client, _) = client_with(cfg);

    let result = client.get_channel(uuid(CHANNEL_ID)).await;
    let paths: Vec<String> = received(&server)
        .await
        .iter()
        .map(|r| format!("{} {}", r.method, r.url.path()))
        .collect();
    assert!(
        result.is_ok(),
        "expected a re-login and a retry after the 401, got {result:?}; requests: {paths:?}"
    );
    assert_eq!(paths.len(), 4, "{paths:?}");
}

#[tokio::test]
async fn login_failure_is_a_login_error_with_the_detail_and_without_the_password() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/auth-tokens"))
        .and(body_json(
            json!({"userName": USERNAME, "password": PASSWORD}),
        ))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "type": VALIDATION_TYPE,
            "title": "Login failed.",
            "status": 400,
            "detail": "Credentials are not valid.",
        })))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(channel_path()))
        .respond_with(ResponseTemplate::new(200).set_body_json(channel_json()))
        .expect(0)
        .mount(&server)
        .await;
    let (client, _) = login_client(&server);

    let e = client
        .get_channel(uuid(CHANNEL_ID))
        .await
        .expect_err("login fails");
    assert!(matches!(e, HippoError::Login { .. }), "{e:?}");
    assert!(e.to_string().contains("Credentials are not valid."), "{e}");
    assert!(!e.is_transient());
    assert_no_secrets(&e);
}

#[tokio::test]
async fn fixed_token_401_is_unauthorized_without_any_login() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/auth-tokens"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"token": TOKEN2, "expiration": in_minutes(30)})),
        )
        .expect(0)
        .mount(&server)
        .await;
    api("GET", &channel_path(), TOKEN)
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({
            "status": 401,
            "title": "Unauthorized",
            "type": "https://tools.ietf.org/html/rfc7235#section-3.1",
        })))
        .expect(1)
        .mount(&server)
        .await;
    let (client, _) = token_client(&server);

    let e = client.get_channel(uuid(CHANNEL_ID)).await.expect_err("401");
    assert!(matches!(e, HippoError::Unauthorized { .. }), "{e:?}");
    assert_eq!(e.status(), Some(401));
    assert!(!e.is_transient());
    assert_no_secrets(&e);
}

// -- paging (§4.1, §13) -------------------------------------------------------------------------

#[tokio::test]
async fn list_apps_pages_sorted_by_name_until_is_last_page() {
    let server = MockServer::start().await;
    let items: Vec<Value> = (1..=5)
        .map(|n| app_json(&app_id(n), &format!("app{n}")))
        .collect();
    for (index, (chunk, last)) in [
        (items[0..2].to_vec(), false),
        (items[2..4].to_vec(), false),
        (items[4..5].to_vec(), true),
    ]
    .into_iter()
    .enumerate()
    {
        api("GET", "/api/apps", TOKEN)
            .and(query_param("pageIndex", index.to_string().as_str()))
            .and(query_param("pageSize", "2"))
            .and(query_param("sortBy", "Name"))
            .and(query_param("IsSortedAscending", "true"))
            .and(query_param_is_missing("searchText"))
            .respond_with(page(chunk, 5, index as i64, 2, last))
            .expect(1)
            .mount(&server)
            .await;
    }
    let mut cfg = config(&server.uri(), token_credentials());
    cfg.page_size = 2;
    let (client, stats) = client_with(cfg);

    let apps = client.list_apps().await.expect("list");
    let names: Vec<&str> = apps.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["app1", "app2", "app3", "app4", "app5"]);
    assert_eq!(apps[0].id, uuid(&app_id(1)));
    assert_eq!(apps[0].storage_id, "app1-storage");

    let reqs = received(&server).await;
    assert_eq!(reqs.len(), 3);
    for (i, r) in reqs.iter().enumerate() {
        assert_eq!(
            sorted_query(r),
            pairs(&[
                ("pageIndex", &i.to_string()),
                ("pageSize", "2"),
                ("sortBy", "Name"),
                ("IsSortedAscending", "true"),
            ])
        );
    }
    assert_eq!(stats.requests("hippo"), 3);
    assert_eq!(stats.writes("hippo"), 0);
}

#[tokio::test]
async fn list_stops_on_an_empty_page() {
    let server = MockServer::start().await;
    api("GET", "/api/apps", TOKEN)
        .and(query_param("pageIndex", "0"))
        .respond_with(page(
            vec![app_json(&app_id(1), "a"), app_json(&app_id(2), "b")],
            100,
            0,
            2,
            false,
        ))
        .expect(1)
        .mount(&server)
        .await;
    api("GET", "/api/apps", TOKEN)
        .and(query_param("pageIndex", "1"))
        .respond_with(page(vec![], 100, 1, 2, false))
        .expect(1)
        .mount(&server)
        .await;
    api("GET", "/api/apps", TOKEN)
        .and(query_param("pageIndex", "2"))
        .respond_with(page(vec![], 100, 2, 2, false))
        .expect(0)
        .mount(&server)
        .await;
    let mut cfg = config(&server.uri(), token_credentials());
    cfg.page_size = 2;
    let (client, _) = client_with(cfg);

    let apps = client.list_apps().await.expect("list");
    assert_eq!(apps.len(), 2);
}

#[tokio::test]
async fn list_stops_at_total_items_even_when_is_last_page_is_false() {
    // §13: with searchText Hippo reports isLastPage false on the last page.
    let server = MockServer::start().await;
    api("GET", "/api/apps", TOKEN)
        .and(query_param("pageIndex", "0"))
        .respond_with(page(
            vec![app_json(&app_id(1), "a"), app_json(&app_id(2), "b")],
            4,
            0,
            2,
            false,
        ))
        .expect(1)
        .mount(&server)
        .await;
    api("GET", "/api/apps", TOKEN)
        .and(query_param("pageIndex", "1"))
        .respond_with(page(
            vec![app_json(&app_id(3), "c"), app_json(&app_id(4), "d")],
            4,
            1,
            2,
            false,
        ))
        .expect(1)
        .mount(&server)
        .await;
    api("GET", "/api/apps", TOKEN)
        .and(query_param("pageIndex", "2"))
        .respond_with(page(vec![app_json(&app_id(5), "e")], 4, 2, 2, false))
        .expect(0)
        .mount(&server)
        .await;
    let mut cfg = config(&server.uri(), token_credentials());
    cfg.page_size = 2;
    let (client, _) = client_with(cfg);

    let apps = client.list_apps().await.expect("list");
    let names: Vec<&str> = apps.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "c", "d"]);
}

#[tokio::test]
async fn list_revisions_pages_with_only_page_index_and_page_size() {
    let server = MockServer::start().await;
    let rev = |n: u32, number: &str| {
        json!({
            "id": format!("b0000000-0000-4000-8000-{n:012}"),
            "appId": APP_ID,
            "revisionNumber": number,
            "components": [],
            "type": null,
        })
    };
    api("GET", "/api/revisions", TOKEN)
        .and(query_param("pageIndex", "0"))
        .and(query_param("pageSize", "2"))
        .and(query_param_is_missing("sortBy"))
        .and(query_param_is_missing("IsSortedAscending"))
        .respond_with(page(vec![rev(1, "1.0.0"), rev(2, "1.1.0")], 3, 0, 2, false))
        .expect(1)
        .mount(&server)
        .await;
    api("GET", "/api/revisions", TOKEN)
        .and(query_param("pageIndex", "1"))
        .and(query_param("pageSize", "2"))
        .and(query_param_is_missing("sortBy"))
        .and(query_param_is_missing("IsSortedAscending"))
        .respond_with(page(vec![rev(3, "2.0.0")], 3, 1, 2, true))
        .expect(1)
        .mount(&server)
        .await;
    let mut cfg = config(&server.uri(), token_credentials());
    cfg.page_size = 2;
    let (client, _) = client_with(cfg);

    let revisions = client.list_revisions().await.expect("list");
    let numbers: Vec<&str> = revisions
        .iter()
        .map(|r| r.revision_number.as_str())
        .collect();
    assert_eq!(numbers, ["1.0.0", "1.1.0", "2.0.0"]);
    assert!(revisions.iter().all(|r| r.app_id == uuid(APP_ID)));

    let reqs = received(&server).await;
    assert_eq!(reqs.len(), 2);
    for (i, r) in reqs.iter().enumerate() {
        assert_eq!(
            sorted_query(r),
            pairs(&[("pageIndex", &i.to_string()), ("pageSize", "2")])
        );
    }
}

#[tokio::test]
async fn list_channels_deduplicates_items_repeated_across_pages() {
    let server = MockServer::start().await;
    let ch = |n: u32, name: &str| {
        json!({
            "id": format!("c0000000-0000-4000-8000-{n:012}"),
            "appId": APP_ID,
            "name": name,
            "domain": format!("{name}.myapp.hippo.local"),
            "revisionSelectionStrategy": "UseRangeRule",
            "activeRevision": null,
            "lastPublishAt": null,
            "rangeRule": "*",
            "certificate": null,
            "environmentVariables": [],
        })
    };
    api("GET", "/api/channels", TOKEN)
        .and(query_param("pageIndex", "0"))
        .and(query_param("pageSize", "2"))
        .and(query_param("sortBy", "Name"))
        .and(query_param("IsSortedAscending", "true"))
        .respond_with(page(vec![ch(1, "alpha"), ch(2, "beta")], 4, 0, 2, false))
        .expect(1)
        .mount(&server)
        .await;
    // An item was inserted before "beta" between the two calls: "beta" shows up again.
    api("GET", "/api/channels", TOKEN)
        .and(query_param("pageIndex", "1"))
        .and(query_param("pageSize", "2"))
        .and(query_param("sortBy", "Name"))
        .and(query_param("IsSortedAscending", "true"))
        .respond_with(page(vec![ch(2, "beta"), ch(3, "gamma")], 4, 1, 2, true))
        .expect(1)
        .mount(&server)
        .await;
    let mut cfg = config(&server.uri(), token_credentials());
    cfg.page_size = 2;
    let (client, _) = client_with(cfg);

    let channels = client.list_channels().await.expect("list");
    let names: Vec<&str> = channels.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["alpha", "beta", "gamma"]);
    assert_eq!(channels[1].id, uuid("c0000000-0000-4000-8000-000000000002"));
    assert_eq!(
        channels[1].revision_selection_strategy,
        Strategy::UseRangeRule
    );
}

// -- creates (§2 primitive returns, §4.2, §5.2) -------------------------------------------------

#[tokio::test]
async fn create_app_posts_name_and_storage_id_and_parses_a_quoted_guid() {
    let server = MockServer::start().await;
    api("POST", "/api/apps", TOKEN)
        .and(header("content-type", "application/json"))
        .and(header("accept", "application/json"))
        .and(body_json(json!({"name": "myapp", "storageId": "myapp"})))
        .respond_with(quoted_guid(GUID))
        .expect(1)
        .mount(&server)
        .await;
    let (client, _) = token_client(&server);

    let id = client.create_app("myapp", "myapp").await.expect("create");
    assert_eq!(id, uuid(GUID));
}

#[tokio::test]
async fn create_app_accepts_a_bare_guid() {
    let server = MockServer::start().await;
    api("POST", "/api/apps", TOKEN)
        .and(body_json(
            json!({"name": "myapp", "storageId": "hippos.rocks/myapp"}),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_raw(GUID, "text/plain"))
        .expect(1)
        .mount(&server)
        .await;
    let (client, _) = token_client(&server);

    let id = client
        .create_app("myapp", "hippos.rocks/myapp")
        .await
        .expect("create");
    assert_eq!(id, uuid(GUID));
}

#[tokio::test]
async fn create_app_with_a_duplicate_name_is_a_validation_error_not_a_success() {
    let server = MockServer::start().await;
    api("POST", "/api/apps", TOKEN)
        .respond_with(validation_problem(
            json!({"Name": ["The specified name already exists."]}),
        ))
        .expect(1)
        .mount(&server)
        .await;
    let (client, _) = token_client(&server);

    let e = client
        .create_app("myapp", "myapp")
        .await
        .expect_err("duplicate name");
    match &e {
        HippoError::Validation { errors, .. } => {
            assert_eq!(
                errors.get("Name"),
                Some(&vec!["The specified name already exists.".to_string()])
            );
        }
        other => panic!("expected Validation, got {other:?}"),
    }
    let text = e.to_string();
    assert!(text.contains("Name"), "{text}");
    assert!(
        text.contains("The specified name already exists."),
        "{text}"
    );
    assert_eq!(e.status(), Some(400));
    assert!(!e.is_transient());
    assert_no_secrets(&e);
}

#[tokio::test]
async fn create_channel_sends_explicit_nulls_and_the_strategy_as_a_string() {
    let server = MockServer::start().await;
    api("POST", "/api/channels", TOKEN)
        .and(header("content-type", "application/json"))
        .and(body_json(json!({
            "appId": APP_ID,
            "name": "production",
            "domain": null,
            "revisionSelectionStrategy": "UseRangeRule",
            "rangeRule": null,
            "activeRevisionId": null,
            "certificateId": null,
        })))
        .respond_with(quoted_guid(GUID))
        .expect(1)
        .mount(&server)
        .await;
    let (client, _) = token_client(&server);

    let id = client
        .create_channel(&CreateChannel {
            app_id: uuid(APP_ID),
            name: "production".into(),
            domain: None,
            revision_selection_strategy: Strategy::UseRangeRule,
            range_rule: None,
            active_revision_id: None,
            certificate_id: None,
        })
        .await
        .expect("create");
    assert_eq!(id, uuid(GUID));

    // The nulls are really on the wire, not just equal after parsing.
    let raw = String::from_utf8(received(&server).await[0].body.clone()).expect("utf-8");
    for field in ["domain", "rangeRule", "activeRevisionId", "certificateId"] {
        assert!(raw.contains(&format!("\"{field}\":null")), "{raw}");
    }
}

#[tokio::test]
async fn create_channel_with_a_specified_revision_and_domain() {
    let server = MockServer::start().await;
    api("POST", "/api/channels", TOKEN)
        .and(body_json(json!({
            "appId": APP_ID,
            "name": "staging",
            "domain": "staging.myapp.hippo.local",
            "revisionSelectionStrategy": "UseSpecifiedRevision",
            "rangeRule": null,
            "activeRevisionId": REVISION_ID,
            "certificateId": CERT_ID,
        })))
        .respond_with(quoted_guid(GUID))
        .expect(1)
        .mount(&server)
        .await;
    let (client, _) = token_client(&server);

    let id = client
        .create_channel(&CreateChannel {
            app_id: uuid(APP_ID),
            name: "staging".into(),
            domain: Some("staging.myapp.hippo.local".into()),
            revision_selection_strategy: Strategy::UseSpecifiedRevision,
            range_rule: None,
            active_revision_id: Some(uuid(REVISION_ID)),
            certificate_id: Some(uuid(CERT_ID)),
        })
        .await
        .expect("create");
    assert_eq!(id, uuid(GUID));
}

#[tokio::test]
async fn create_channel_with_a_duplicate_domain_is_a_validation_error() {
    let server = MockServer::start().await;
    api("POST", "/api/channels", TOKEN)
        .respond_with(validation_problem(
            json!({"Domain": ["The specified domain already exists."]}),
        ))
        .expect(1)
        .mount(&server)
        .await;
    let (client, _) = token_client(&server);

    let e = client
        .create_channel(&CreateChannel {
            app_id: uuid(APP_ID),
            name: "production".into(),
            domain: Some("taken.hippo.local".into()),
            revision_selection_strategy: Strategy::UseRangeRule,
            range_rule: Some("*".into()),
            active_revision_id: None,
            certificate_id: None,
        })
        .await
        .expect_err("duplicate domain");
    assert!(matches!(e, HippoError::Validation { .. }), "{e:?}");
    assert!(e.to_string().contains("Domain"), "{e}");
    assert!(!e.is_transient());
    assert_no_secrets(&e);
}

// -- PUT / PATCH / DELETE (§2 status codes, §5.3, §5.4) -----------------------------------------

#[tokio::test]
async fn update_channel_puts_every_field_and_accepts_204() {
    let server = MockServer::start().await;
    api("PUT", &channel_path(), TOKEN)
        .and(header("content-type", "application/json"))
        .and(body_json(update_json()))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    let (client, stats) = token_client(&server);

    client.update_channel(&update_body()).await.expect("put");
    assert_eq!(stats.writes("hippo"), 1);
}

#[tokio::test]
async fn update_channel_400_with_an_empty_body_is_a_validation_error() {
    // §2: a PUT whose route id differs from the body id gives 400 with an empty body.
    let server = MockServer::start().await;
    api("PUT", &channel_path(), TOKEN)
        .respond_with(ResponseTemplate::new(400))
        .expect(1)
        .mount(&server)
        .await;
    let (client, _) = token_client(&server);

    let e = client
        .update_channel(&update_body())
        .await
        .expect_err("400");
    assert!(matches!(e, HippoError::Validation { .. }), "{e:?}");
    assert_eq!(e.status(), Some(400));
    assert!(!e.is_transient());
    assert_no_secrets(&e);
}

#[tokio::test]
async fn set_channel_env_patches_raw_values_only() {
    let server = MockServer::start().await;
    api("PATCH", &channel_path(), TOKEN)
        .and(header("content-type", "application/json"))
        .and(body_json(json!({
            "environmentVariables": [
                {"key": "GREETING", "value": "hello"},
                {"key": "EMPTYISH", "value": " "},
            ]
        })))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    let (client, _) = token_client(&server);

    client
        .set_channel_env(
            uuid(CHANNEL_ID),
            vec![
                EnvVar {
                    key: "GREETING".into(),
                    value: "hello".into(),
                },
                EnvVar {
                    key: "EMPTYISH".into(),
                    value: " ".into(),
                },
            ],
        )
        .await
        .expect("patch");
}

#[tokio::test]
async fn set_channel_env_with_no_variables_sends_an_empty_list() {
    let server = MockServer::start().await;
    api("PATCH", &channel_path(), TOKEN)
        .and(body_json(json!({"environmentVariables": []})))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    let (client, _) = token_client(&server);

    client
        .set_channel_env(uuid(CHANNEL_ID), vec![])
        .await
        .expect("patch");
}

#[tokio::test]
async fn set_desired_status_puts_channel_id_and_status() {
    let server = MockServer::start().await;
    api(
        "PUT",
        &format!("/api/channels/{CHANNEL_ID}/desired-status"),
        TOKEN,
    )
    .and(header("content-type", "application/json"))
    .and(body_json(
        json!({"channelId": CHANNEL_ID, "desiredStatus": "Running"}),
    ))
    .respond_with(ResponseTemplate::new(204))
    .expect(1)
    .mount(&server)
    .await;
    api(
        "PUT",
        &format!("/api/channels/{CHANNEL_ID}/desired-status"),
        TOKEN,
    )
    .and(body_json(
        json!({"channelId": CHANNEL_ID, "desiredStatus": "Dead"}),
    ))
    .respond_with(ResponseTemplate::new(204))
    .expect(1)
    .mount(&server)
    .await;
    let (client, _) = token_client(&server);

    client
        .set_desired_status(uuid(CHANNEL_ID), DesiredStatus::Running)
        .await
        .expect("running");
    client
        .set_desired_status(uuid(CHANNEL_ID), DesiredStatus::Dead)
        .await
        .expect("dead");
}

#[tokio::test]
async fn delete_channel_accepts_204() {
    let server = MockServer::start().await;
    api("DELETE", &channel_path(), TOKEN)
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    let (client, _) = token_client(&server);

    client
        .delete_channel(uuid(CHANNEL_ID))
        .await
        .expect("delete");
    assert!(received(&server).await[0].body.is_empty());
}

// -- revision registration (§2, §4.2) ----------------------------------------------------------

#[tokio::test]
async fn register_revision_201_with_an_empty_body_is_ok() {
    let server = MockServer::start().await;
    api("POST", "/api/revisions", TOKEN)
        .and(header("content-type", "application/json"))
        .and(body_json(
            json!({"appStorageId": "myapp", "revisionNumber": "1.2.3"}),
        ))
        .respond_with(ResponseTemplate::new(201))
        .expect(1)
        .mount(&server)
        .await;
    let (client, _) = token_client(&server);

    client
        .register_revision("myapp", "1.2.3")
        .await
        .expect("register");
}

#[tokio::test]
async fn register_revision_404_is_an_error_that_is_not_transient() {
    let server = MockServer::start().await;
    api("POST", "/api/revisions", TOKEN)
        .respond_with(ResponseTemplate::new(404))
        .expect(1)
        .mount(&server)
        .await;
    let (client, _) = token_client(&server);

    let e = client
        .register_revision("nosuchapp", "1.0.0")
        .await
        .expect_err("404");
    assert_eq!(e.status(), Some(404));
    assert!(!e.is_transient());
    assert!(e.to_string().contains("404"), "{e}");
    assert_no_secrets(&e);
}

#[tokio::test]
async fn register_revision_validation_problem_is_a_validation_error() {
    let server = MockServer::start().await;
    api("POST", "/api/revisions", TOKEN)
        .respond_with(validation_problem(json!({
            "AppStorageId": ["'App Storage Id' is not in the correct format."]
        })))
        .expect(1)
        .mount(&server)
        .await;
    let (client, _) = token_client(&server);

    let e = client
        .register_revision("hippos.rocks/myapp", "1.0.0")
        .await
        .expect_err("400");
    assert!(matches!(e, HippoError::Validation { .. }), "{e:?}");
    let text = e.to_string();
    assert!(text.contains("AppStorageId"), "{text}");
    assert!(
        text.contains("'App Storage Id' is not in the correct format."),
        "{text}"
    );
    assert_eq!(e.status(), Some(400));
    assert!(!e.is_transient());
    assert_no_secrets(&e);
}

// -- retries --------------------------------------------------------------------------------

#[tokio::test]
async fn get_is_retried_on_503_and_then_succeeds() {
    let server = MockServer::start().await;
    api("GET", &channel_path(), TOKEN)
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(2)
        .with_priority(1)
        .expect(2)
        .mount(&server)
        .await;
    api("GET", &channel_path(), TOKEN)
        .respond_with(ResponseTemplate::new(200).set_body_json(channel_json()))
        .expect(1)
        .mount(&server)
        .await;
    let (client, stats) = token_client(&server);

    let channel = client.get_channel(uuid(CHANNEL_ID)).await.expect("get");
    assert_eq!(channel.name, "production");
    assert_eq!(received(&server).await.len(), 3);
    assert_eq!(stats.requests("hippo"), 3);
}

#[tokio::test]
async fn get_is_retried_on_429_with_retry_after_zero() {
    let server = MockServer::start().await;
    api("GET", &channel_path(), TOKEN)
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "0"))
        .up_to_n_times(1)
        .with_priority(1)
        .expect(1)
        .mount(&server)
        .await;
    api("GET", &channel_path(), TOKEN)
        .respond_with(ResponseTemplate::new(200).set_body_json(channel_json()))
        .expect(1)
        .mount(&server)
        .await;
    let (client, _) = token_client(&server);

    client.get_channel(uuid(CHANNEL_ID)).await.expect("get");
    assert_eq!(received(&server).await.len(), 2);
}

#[tokio::test]
async fn put_patch_and_delete_are_retried_on_500() {
    let server = MockServer::start().await;
    let desired = format!("/api/channels/{CHANNEL_ID}/desired-status");
    for (verb, p) in [
        ("PUT", channel_path()),
        ("PATCH", channel_path()),
        ("DELETE", channel_path()),
        ("PUT", desired.clone()),
    ] {
        api(verb, &p, TOKEN)
            .respond_with(ResponseTemplate::new(500).set_body_json(json!({
                "status": 500,
                "title": "An error occurred while processing your request."
            })))
            .up_to_n_times(1)
            .with_priority(1)
            .expect(1)
            .mount(&server)
            .await;
        api(verb, &p, TOKEN)
            .respond_with(ResponseTemplate::new(204))
            .expect(1)
            .mount(&server)
            .await;
    }
    let (client, stats) = token_client(&server);

    client.update_channel(&update_body()).await.expect("put");
    client
        .set_channel_env(uuid(CHANNEL_ID), vec![])
        .await
        .expect("patch");
    client
        .delete_channel(uuid(CHANNEL_ID))
        .await
        .expect("delete");
    client
        .set_desired_status(uuid(CHANNEL_ID), DesiredStatus::Running)
        .await
        .expect("desired status");
    assert_eq!(received(&server).await.len(), 8);
    assert_eq!(stats.writes("hippo"), 8);
}

#[tokio::test]
async fn post_revisions_500_is_not_retried_and_is_transient() {
    let server = MockServer::start().await;
    api("POST", "/api/revisions", TOKEN)
        .respond_with(ResponseTemplate::new(500).set_body_json(json!({
            "status": 500,
            "title": "An error occurred while processing your request."
        })))
        .expect(1)
        .mount(&server)
        .await;
    let (client, _) = token_client(&server);

    let e = client
        .register_revision("myapp", "1.2.3")
        .await
        .expect_err("500");
    assert!(e.is_transient());
    assert_eq!(e.status(), Some(500));
    assert_eq!(received(&server).await.len(), 1);
    assert_no_secrets(&e);
}

#[tokio::test]
async fn post_apps_500_is_not_retried_and_is_transient() {
    let server = MockServer::start().await;
    api("POST", "/api/apps", TOKEN)
        .respond_with(ResponseTemplate::new(500))
        .expect(1)
        .mount(&server)
        .await;
    let (client, _) = token_client(&server);

    let e = client.create_app("myapp", "myapp").await.expect_err("500");
    assert!(e.is_transient());
    assert_eq!(e.status(), Some(500));
    assert_eq!(received(&server).await.len(), 1);
    assert_no_secrets(&e);
}

#[tokio::test]
async fn post_channels_500_is_not_retried() {
    let server = MockServer::start().await;
    api("POST", "/api/channels", TOKEN)
        .respond_with(ResponseTemplate::new(502))
        .expect(1)
        .mount(&server)
        .await;
    let (client, _) = token_client(&server);

    let e = client
        .create_channel(&CreateChannel {
            app_id: uuid(APP_ID),
            name: "production".into(),
            domain: None,
            revision_selection_strategy: Strategy::UseRangeRule,
            range_rule: None,
            active_revision_id: None,
            certificate_id: None,
        })
        .await
        .expect_err("502");
    assert!(e.is_transient());
    assert_eq!(received(&server).await.len(), 1);
}

#[tokio::test]
async fn post_is_retried_on_429() {
    // 429 means Hippo did not act on the request, so even a POST may be sent again.
    let server = MockServer::start().await;
    api("POST", "/api/revisions", TOKEN)
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "0"))
        .up_to_n_times(1)
        .with_priority(1)
        .expect(1)
        .mount(&server)
        .await;
    api("POST", "/api/revisions", TOKEN)
        .respond_with(ResponseTemplate::new(201))
        .expect(1)
        .mount(&server)
        .await;
    let (client, _) = token_client(&server);

    client
        .register_revision("myapp", "1.2.3")
        .await
        .expect("register");
}

#[tokio::test]
async fn post_to_a_closed_port_is_retried_until_the_policy_gives_up() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let (client, stats) = client_with(config(
        &format!("http://127.0.0.1:{port}"),
        token_credentials(),
    ));

    let started = Instant::now();
    let e = client
        .register_revision("myapp", "1.2.3")
        .await
        .expect_err("connection refused");
    let elapsed = started.elapsed();

    assert!(matches!(e, HippoError::Transport { .. }), "{e:?}");
    assert!(e.is_transient());
    assert_eq!(e.status(), None);
    // Every attempt is counted with status 0: more than one attempt means it was retried.
    let attempts = stats.requests("hippo");
    assert!(attempts > 1, "connect errors were not retried: {attempts}");
    assert_eq!(stats.writes("hippo"), attempts);
    // The policy allows 200 ms in all, with intervals of at most ~6.5 ms.
    assert!(
        elapsed >= Duration::from_millis(150),
        "gave up too early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "took too long: {elapsed:?}"
    );
    assert_no_secrets(&e);
}

// -- request counters -------------------------------------------------------------------------

#[tokio::test]
async fn stats_count_every_request_and_writes_exclude_gets_and_login() {
    let server = MockServer::start().await;
    login_mock(TOKEN, &in_minutes(30))
        .expect(1)
        .mount(&server)
        .await;
    api("GET", "/api/apps", TOKEN)
        .respond_with(page(vec![app_json(APP_ID, "myapp")], 1, 0, 500, true))
        .expect(1)
        .mount(&server)
        .await;
    api("POST", "/api/apps", TOKEN)
        .respond_with(quoted_guid(GUID))
        .expect(1)
        .mount(&server)
        .await;
    api("PUT", &channel_path(), TOKEN)
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    api("PATCH", &channel_path(), TOKEN)
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    api(
        "PUT",
        &format!("/api/channels/{CHANNEL_ID}/desired-status"),
        TOKEN,
    )
    .respond_with(ResponseTemplate::new(204))
    .expect(1)
    .mount(&server)
    .await;
    api("DELETE", &channel_path(), TOKEN)
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    api("POST", "/api/revisions", TOKEN)
        .respond_with(ResponseTemplate::new(201))
        .expect(1)
        .mount(&server)
        .await;
    api("GET", &channel_path(), TOKEN)
        .respond_with(ResponseTemplate::new(200).set_body_json(channel_json()))
        .expect(1)
        .mount(&server)
        .await;
    let (client, stats) = login_client(&server);

    assert_eq!(client.list_apps().await.expect("list").len(), 1);
    assert_eq!(stats.writes("hippo"), 0, "a GET and a login are not writes");
    client.create_app("myapp", "myapp").await.expect("create");
    client.update_channel(&update_body()).await.expect("put");
    client
        .set_channel_env(uuid(CHANNEL_ID), vec![])
        .await
        .expect("patch");
    client
        .set_desired_status(uuid(CHANNEL_ID), DesiredStatus::Running)
        .await
        .expect("desired status");
    client
        .delete_channel(uuid(CHANNEL_ID))
        .await
        .expect("delete");
    client
        .register_revision("myapp", "1.2.3")
        .await
        .expect("register");
    client.get_channel(uuid(CHANNEL_ID)).await.expect("get");

    let total = received(&server).await.len() as u64;
    assert_eq!(total, 9, "1 login + 2 GETs + 6 writes");
    assert_eq!(stats.requests("hippo"), total);
    assert_eq!(stats.writes("hippo"), 6);
    assert_eq!(stats.requests("bindle"), 0);
}

// -- secrets ----------------------------------------------------------------------------------

#[test]
fn config_debug_does_not_show_the_password_or_the_token() {
    let login = HippoClientConfig::new("https://hippo.example.com", login_credentials());
    let text = format!("{login:?}");
    assert!(text.contains(USERNAME), "{text}");
    assert!(!text.contains(PASSWORD), "{text}");

    let token = HippoClientConfig::new("https://hippo.example.com", token_credentials());
    let text = format!("{token:?}");
    assert!(!text.contains(TOKEN), "{text}");
    assert!(text.contains("hippo.example.com"), "{text}");
}

#[tokio::test]
async fn channel_with_a_certificate_private_key_parses_and_does_not_keep_the_key() {
    let server = MockServer::start().await;
    api("GET", &channel_path(), TOKEN)
        .respond_with(ResponseTemplate::new(200).set_body_json(channel_json()))
        .expect(1)
        .mount(&server)
        .await;
    let (client, _) = token_client(&server);

    let channel = client.get_channel(uuid(CHANNEL_ID)).await.expect("get");
    assert_eq!(channel.id, uuid(CHANNEL_ID));
    assert_eq!(channel.app_id, uuid(APP_ID));
    assert_eq!(
        channel.domain.as_deref(),
        Some("production.myapp.hippo.local")
    );
    assert_eq!(channel.revision_selection_strategy, Strategy::UseRangeRule);
    assert_eq!(channel.range_rule.as_deref(), Some("^1.2"));
    assert_eq!(
        channel.certificate.as_ref().map(|c| c.id),
        Some(uuid(CERT_ID))
    );
    let active = channel.active_revision.as_ref().expect("active revision");
    assert_eq!(active.id, uuid(REVISION_ID));
    assert_eq!(active.revision_number, "1.2.3");
    assert_eq!(
        channel.environment_variables,
        vec![EnvVar {
            key: "GREETING".into(),
            value: "hello".into()
        }]
    );
    assert_eq!(
        channel.last_publish_at.as_deref(),
        Some("2022-08-09T12:34:56Z")
    );

    let text = format!("{channel:?}");
    assert!(!text.contains(PRIVATE_KEY), "{text}");
    assert!(!text.contains("PRIVATE KEY"), "{text}");
}

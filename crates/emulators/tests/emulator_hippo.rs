//! End-to-end tests of the Hippo emulator over real HTTP, against the real (embedded) Bindle
//! server for the storage, import and revision-details paths.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bindle::client::{tokens::NoToken, Client, ClientError};
use bindle::signature::{KeyEntry, KeyRing, SecretKeyEntry, SignatureRole};
use bindle::{BindleSpec, Condition, Id, Invoice, Label, Parcel};
use hippo_gitops_emulators::bindle_server::BindleServer;
use hippo_gitops_emulators::hippo::{
    ChannelRevisionSelectionStrategy, EmulatorState, HippoEmulator, HippoEmulatorConfig,
    HippoVersion, JobScheduler, RecordingScheduler, ScheduledJob, SchedulerEvent,
};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

type TestResult = Result<(), Box<dyn std::error::Error>>;

// ---------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------

/// A real Bindle server plus a client allowed to push signed invoices to it.
struct Bindle {
    server: BindleServer,
    client: Client<NoToken>,
    key: SecretKeyEntry,
    _dir: tempfile::TempDir,
}

impl Bindle {
    async fn start() -> Result<Self, Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let key = SecretKeyEntry::new("test", vec![SignatureRole::Creator]);
        let server = BindleServer::start(dir.path(), &[KeyEntry::try_from(&key)?], None).await?;
        let base = format!("{}/", server.url());
        let bootstrap = Client::new(&base, NoToken, Arc::new(KeyRing::default()))?;
        let mut ring = bootstrap.get_host_keys().await?;
        ring.add_entry(KeyEntry::try_from(&key)?);
        let client = Client::new(&base, NoToken, Arc::new(ring))?;
        Ok(Bindle {
            server,
            client,
            key,
            _dir: dir,
        })
    }

    fn url(&self) -> String {
        self.server.url()
    }

    /// Pushes `name/version` with a Spin manifest parcel (one HTTP component at `route`) and
    /// a wasm parcel, the way `spin deploy` lays a bindle out.
    async fn push(&self, name: &str, version: &str, route: &str) -> TestResult {
        let wasm = format!("(module) ;; {name} {version}").into_bytes();
        let wasm_sha = sha256(&wasm);
        let manifest = format!(
            "trigger = {{ type = \"http\", base = \"/\" }}\n\
             [[component]]\nid = \"hello\"\nsource = \"{wasm_sha}\"\n\
             [component.trigger]\nroute = \"{route}\"\n"
        )
        .into_bytes();
        let manifest_sha = sha256(&manifest);
        let parcel = |name: String, media: &str, data: &[u8], conditions| Parcel {
            label: Label {
                sha256: sha256(data),
                media_type: media.to_string(),
                name,
                size: data.len() as u64,
                annotations: None,
                feature: None,
                origin: None,
            },
            conditions,
        };
        let mut inv = Invoice::new(BindleSpec {
            id: Id::try_from(format!("{name}/{version}"))?,
            description: Some(format!("{name} at {version}")),
            authors: Some(vec!["tests".to_string()]),
        });
        inv.parcel = Some(vec![
            parcel(
                format!("spin.{manifest_sha}.toml"),
                "application/vnd.fermyon.spin+toml",
                &manifest,
                None,
            ),
            parcel(
                "hello.wasm".to_string(),
                "application/wasm",
                &wasm,
                Some(Condition {
                    member_of: None,
                    requires: None,
                }),
            ),
        ]);
        inv.sign(SignatureRole::Creator, &self.key)?;
        let id = inv.bindle.id.clone();
        let created = self.client.create_invoice(inv).await?;
        let data: BTreeMap<String, Vec<u8>> =
            BTreeMap::from([(manifest_sha, manifest), (wasm_sha, wasm)]);
        for label in created.missing.unwrap_or_default() {
            let bytes = data.get(&label.sha256).cloned().unwrap_or_default();
            match self
                .client
                .create_parcel(id.clone(), &label.sha256, bytes)
                .await
            {
                Ok(()) | Err(ClientError::ParcelAlreadyExists) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

fn sha256(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

fn config(bindle: &Bindle) -> HippoEmulatorConfig {
    HippoEmulatorConfig {
        bindle_url: bindle.url(),
        ..Default::default()
    }
}

/// An HTTP response, fully read.
struct Resp {
    status: StatusCode,
    content_type: String,
    text: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }

    /// A create endpoint's JSON-quoted GUID.
    fn guid(&self) -> Uuid {
        serde_json::from_str(&self.text).expect("a JSON-quoted GUID")
    }
}

/// A minimal Hippo client.
struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    fn anonymous(emu: &HippoEmulator) -> Self {
        Api {
            http: reqwest::Client::new(),
            base: emu.url(),
            token: None,
        }
    }

    async fn login(emu: &HippoEmulator) -> Result<Self, Box<dyn std::error::Error>> {
        let mut api = Api::anonymous(emu);
        let resp = api
            .call(
                Method::POST,
                "/api/auth-tokens",
                Some(json!({"userName": "admin", "password": "password"})),
            )
            .await?;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text);
        api.token = resp.json()["token"].as_str().map(str::to_string);
        Ok(api)
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> reqwest::Result<Resp> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("Accept", "application/json");
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let text = resp.text().await?;
        Ok(Resp {
            status,
            content_type,
            text,
        })
    }

    async fn get(&self, path: &str) -> reqwest::Result<Resp> {
        self.call(Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> reqwest::Result<Resp> {
        self.call(Method::POST, path, Some(body)).await
    }

    async fn put(&self, path: &str, body: Value) -> reqwest::Result<Resp> {
        self.call(Method::PUT, path, Some(body)).await
    }

    async fn patch(&self, path: &str, body: Value) -> reqwest::Result<Resp> {
        self.call(Method::PATCH, path, Some(body)).await
    }

    async fn delete(&self, path: &str) -> reqwest::Result<Resp> {
        self.call(Method::DELETE, path, None).await
    }

    async fn create_app(
        &self,
        name: &str,
        storage_id: &str,
    ) -> Result<Uuid, Box<dyn std::error::Error>> {
        let resp = self
            .post("/api/apps", json!({"name": name, "storageId": storage_id}))
            .await?;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text);
        Ok(resp.guid())
    }

    async fn create_channel(&self, body: Value) -> Result<Uuid, Box<dyn std::error::Error>> {
        let resp = self.post("/api/channels", body).await?;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text);
        Ok(resp.guid())
    }

    async fn register(&self, storage_id: &str, number: &str) -> reqwest::Result<Resp> {
        self.post(
            "/api/revisions",
            json!({"appStorageId": storage_id, "revisionNumber": number}),
        )
        .await
    }

    async fn channel(&self, id: Uuid) -> Result<Value, Box<dyn std::error::Error>> {
        let resp = self.get(&format!("/api/channels/{id}")).await?;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text);
        Ok(resp.json())
    }

    /// Every revision of `app`, paging through `GET /api/revisions`.
    async fn revisions_of(&self, app: Uuid) -> Result<Vec<Value>, Box<dyn std::error::Error>> {
        let mut out = Vec::new();
        for index in 0.. {
            let page = self
                .get(&format!("/api/revisions?pageIndex={index}&pageSize=2"))
                .await?
                .json();
            out.extend(
                page["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|r| r["appId"] == json!(app))
                    .cloned(),
            );
            if page["isLastPage"] == json!(true) {
                break;
            }
        }
        Ok(out)
    }
}

fn starts(events: &[SchedulerEvent]) -> Vec<&ScheduledJob> {
    events
        .iter()
        .filter_map(|e| match e {
            SchedulerEvent::Start(job) => Some(job),
            SchedulerEvent::Delete(_) => None,
        })
        .collect()
}

fn error_messages(resp: &Resp, key: &str) -> Vec<String> {
    resp.json()["errors"][key]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m.as_str().map(str::to_string))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Auth
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn api_requires_a_bearer_token_and_login_failures_are_problem_details() -> TestResult {
    let bindle = Bindle::start().await?;
    let emu = HippoEmulator::start(config(&bindle)).await?;
    let anon = Api::anonymous(&emu);

    let health = anon.get("/healthz").await?;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.json()["Status"], "Healthy");

    for path in [
        "/api/apps",
        "/api/channels",
        "/api/revisions",
        "/api/storages",
    ] {
        let resp = anon.get(path).await?;
        assert_eq!(resp.status, StatusCode::UNAUTHORIZED, "{path}");
        assert!(resp.text.is_empty());
    }
    let forged = Api {
        token: Some("not-a-token".into()),
        ..Api::anonymous(&emu)
    };
    assert_eq!(
        forged.get("/api/apps").await?.status,
        StatusCode::UNAUTHORIZED
    );
    // Authorization comes before body binding.
    let resp = anon.post("/api/apps", json!({})).await?;
    assert_eq!(resp.status, StatusCode::UNAUTHORIZED);

    let resp = anon
        .post(
            "/api/auth-tokens",
            json!({"userName": "nobody", "password": "whatever"}),
        )
        .await?;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST);
    assert_eq!(resp.json()["title"], "Login failed.");
    assert_eq!(resp.json()["detail"], "Account does not exist.");
    let resp = anon
        .post(
            "/api/auth-tokens",
            json!({"userName": "admin", "password": "wrong-one"}),
        )
        .await?;
    assert_eq!(resp.json()["detail"], "Credentials are not valid.");

    // Open registration; the new account can log in.
    let resp = anon
        .post(
            "/api/accounts",
            json!({"userName": "alice", "password": "secret1"}),
        )
        .await?;
    assert_eq!(resp.status, StatusCode::OK);
    assert!(resp.guid() != Uuid::nil());
    let resp = anon
        .post(
            "/api/accounts",
            json!({"userName": "alice", "password": "secret1"}),
        )
        .await?;
    assert_eq!(
        error_messages(&resp, "UserName"),
        ["The specified username already exists."]
    );
    let resp = anon
        .post(
            "/api/auth-tokens",
            json!({"userName": "alice", "password": "secret1"}),
        )
        .await?;
    assert_eq!(resp.status, StatusCode::OK);

    let api = Api::login(&emu).await?;
    assert_eq!(api.get("/api/apps").await?.status, StatusCode::OK);
    emu.stop().await;
    Ok(())
}

#[tokio::test]
async fn closed_registration_is_forbidden() -> TestResult {
    let bindle = Bindle::start().await?;
    let emu = HippoEmulator::start(HippoEmulatorConfig {
        registration_open: false,
        ..config(&bindle)
    })
    .await?;
    let resp = Api::anonymous(&emu)
        .post(
            "/api/accounts",
            json!({"userName": "bob", "password": "secret1"}),
        )
        .await?;
    assert_eq!(resp.status, StatusCode::FORBIDDEN);
    assert_eq!(resp.json()["detail"], "registration closed");
    Ok(())
}

#[tokio::test]
async fn tokens_expire_and_clients_log_in_again() -> TestResult {
    let bindle = Bindle::start().await?;
    let lifetime = Duration::from_secs(1);
    let emu = HippoEmulator::start(HippoEmulatorConfig {
        token_lifetime: lifetime,
        ..config(&bindle)
    })
    .await?;
    let anon = Api::anonymous(&emu);
    let resp = anon
        .post(
            "/api/auth-tokens",
            json!({"userName": "admin", "password": "password"}),
        )
        .await?;
    let info = resp.json();
    let expiration =
        chrono::DateTime::parse_from_rfc3339(info["expiration"].as_str().unwrap_or(""))?;
    let remaining = expiration.with_timezone(&chrono::Utc) - chrono::Utc::now();
    assert!(remaining <= chrono::Duration::seconds(1), "{remaining}");

    let api = Api {
        token: info["token"].as_str().map(str::to_string),
        ..Api::anonymous(&emu)
    };
    assert_eq!(api.get("/api/apps").await?.status, StatusCode::OK);
    tokio::time::sleep(lifetime + Duration::from_millis(100)).await;
    let resp = api.get("/api/apps").await?;
    assert_eq!(resp.status, StatusCode::UNAUTHORIZED);

    let again = Api::login(&emu).await?;
    assert_eq!(again.get("/api/apps").await?.status, StatusCode::OK);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Apps and revisions
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn creating_an_app_imports_the_bindle_versions_as_revisions() -> TestResult {
    let bindle = Bindle::start().await?;
    bindle.push("myapp", "1.0.0", "/one").await?;
    bindle.push("myapp", "1.1.0", "/two").await?;
    // Same prefix, different bindle: must not be imported.
    bindle.push("myapp-other", "9.0.0", "/other").await?;
    let emu = HippoEmulator::start(config(&bindle)).await?;
    let api = Api::login(&emu).await?;

    let resp = api
        .post("/api/apps", json!({"name": "myapp", "storageId": "myapp"}))
        .await?;
    assert_eq!(resp.status, StatusCode::OK);
    assert!(resp.content_type.starts_with("application/json"));
    assert!(resp.text.starts_with('"') && resp.text.ends_with('"'));
    let app = resp.guid();

    let revisions = api.revisions_of(app).await?;
    let numbers: Vec<&str> = revisions
        .iter()
        .filter_map(|r| r["revisionNumber"].as_str())
        .collect();
    assert_eq!(numbers, ["1.0.0", "1.1.0"]);
    let component = &revisions[1]["components"][0];
    assert_eq!(component["name"], "hello");
    assert_eq!(component["route"], "/two");
    assert_eq!(component["type"], "http");
    assert_eq!(revisions[1]["type"], Value::Null);

    let item = api.get(&format!("/api/apps/{app}")).await?.json();
    assert_eq!(item["storageId"], "myapp");
    assert_eq!(item["description"], "myapp at 1.1.0");
    assert_eq!(item["channels"], json!([]));
    assert_eq!(emu.snapshot().revisions.len(), 2);

    let storages = api.get("/api/storages?searchText=myapp").await?.json();
    assert_eq!(storages["items"], json!(["myapp", "myapp-other"]));
    assert_eq!(storages["totalItems"], 2);
    Ok(())
}

#[tokio::test]
async fn app_validation_is_400_never_409() -> TestResult {
    let bindle = Bindle::start().await?;
    bindle.push("myapp", "1.0.0", "/").await?;
    let emu = HippoEmulator::start(config(&bindle)).await?;
    let api = Api::login(&emu).await?;

    let resp = api
        .post("/api/apps", json!({"name": "ghost", "storageId": "ghost"}))
        .await?;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        resp.json()["type"],
        "https://tools.ietf.org/html/rfc7231#section-6.5.1"
    );
    assert_eq!(
        resp.json()["title"],
        "One or more validation errors occurred."
    );
    assert_eq!(
        error_messages(&resp, "StorageId"),
        ["Storage ID not found in bindle server"]
    );

    api.create_app("myapp", "myapp").await?;
    let resp = api
        .post("/api/apps", json!({"name": "myapp", "storageId": "myapp"}))
        .await?;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        error_messages(&resp, "Name"),
        ["The specified name already exists."]
    );

    let resp = api
        .post(
            "/api/apps",
            json!({"name": "bad name!", "storageId": "myapp"}),
        )
        .await?;
    assert_eq!(
        error_messages(&resp, "Name"),
        ["'Name' is not in the correct format."]
    );
    let resp = api.post("/api/apps", json!({"storageId": "myapp"})).await?;
    assert_eq!(
        error_messages(&resp, "Name"),
        ["The Name field is required."]
    );
    let resp = api
        .post(
            "/api/apps",
            json!({"name": ["not", "a", "string"], "storageId": "myapp"}),
        )
        .await?;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST);
    assert!(resp.json()["errors"]["name"].is_array(), "{}", resp.text);

    let resp = api
        .http
        .post(format!("{}/api/apps", api.base))
        .bearer_auth(api.token.as_deref().unwrap_or(""))
        .header("Content-Type", "text/plain")
        .body("name=x")
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let resp = api.get(&format!("/api/apps/{}", Uuid::nil())).await?;
    assert_eq!(resp.status, StatusCode::NOT_FOUND);
    assert_eq!(
        resp.json()["detail"],
        format!("Entity \"App\" ({}) was not found.", Uuid::nil())
    );
    Ok(())
}

#[tokio::test]
async fn put_with_a_different_body_id_is_an_empty_400() -> TestResult {
    let bindle = Bindle::start().await?;
    bindle.push("myapp", "1.0.0", "/").await?;
    let emu = HippoEmulator::start(config(&bindle)).await?;
    let api = Api::login(&emu).await?;
    let app = api.create_app("myapp", "myapp").await?;

    let resp = api
        .put(
            &format!("/api/apps/{app}"),
            json!({"id": Uuid::new_v4(), "name": "renamed"}),
        )
        .await?;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST);
    assert!(resp.text.is_empty());

    let resp = api
        .put(
            &format!("/api/apps/{app}"),
            json!({"id": app, "name": "renamed"}),
        )
        .await?;
    assert_eq!(resp.status, StatusCode::NO_CONTENT);
    // UpdateApp's uniqueness rule also compares against the app itself.
    let resp = api
        .put(
            &format!("/api/apps/{app}"),
            json!({"id": app, "name": "renamed"}),
        )
        .await?;
    assert_eq!(
        error_messages(&resp, "Name"),
        ["The specified name already exists."]
    );
    Ok(())
}

#[tokio::test]
async fn revision_registration_201_404_and_the_saved_row_quirk() -> TestResult {
    let bindle = Bindle::start().await?;
    bindle.push("myapp", "1.0.0", "/").await?;
    let emu = HippoEmulator::start(config(&bindle)).await?;
    let api = Api::login(&emu).await?;
    let app = api.create_app("myapp", "myapp").await?;

    bindle.push("myapp", "1.1.0", "/new").await?;
    let resp = api.register("myapp", "1.1.0").await?;
    assert_eq!(resp.status, StatusCode::CREATED);
    assert!(resp.text.is_empty());

    let resp = api.register("nosuchapp", "1.0.0").await?;
    assert_eq!(resp.status, StatusCode::NOT_FOUND);
    assert!(resp.text.is_empty());

    // The invoice is missing: 404 ProblemDetails, but the revision row is already saved.
    let resp = api.register("myapp", "7.7.7").await?;
    assert_eq!(resp.status, StatusCode::NOT_FOUND);
    assert_eq!(resp.json()["detail"], "Revision Id: myapp/7.7.7");

    let resp = api.register("my.app", "1.0.0").await?;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        error_messages(&resp, "AppStorageId"),
        ["'App Storage Id' is not in the correct format."]
    );

    let numbers: Vec<String> = api
        .revisions_of(app)
        .await?
        .iter()
        .filter_map(|r| r["revisionNumber"].as_str().map(str::to_string))
        .collect();
    assert_eq!(numbers, ["1.0.0", "1.1.0", "7.7.7"]);
    Ok(())
}

#[tokio::test]
async fn duplicate_revisions_are_stored_and_break_range_evaluation() -> TestResult {
    let bindle = Bindle::start().await?;
    bindle.push("myapp", "1.0.0", "/").await?;
    let emu = HippoEmulator::start(config(&bindle)).await?;
    let api = Api::login(&emu).await?;
    let app = api.create_app("myapp", "myapp").await?;
    let channel = api
        .create_channel(json!({"appId": app, "name": "prod", "revisionSelectionStrategy": "UseRangeRule", "rangeRule": "*"}))
        .await?;
    let before = api.channel(channel).await?;
    assert_eq!(before["activeRevision"]["revisionNumber"], "1.0.0");

    // Registering an imported version again stores a duplicate row; the range rule then
    // throws (ToDictionary on duplicate keys): 500, channel unchanged.
    let resp = api.register("myapp", "1.0.0").await?;
    assert_eq!(resp.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        resp.json()["title"],
        "An error occurred while processing your request."
    );
    assert_eq!(api.revisions_of(app).await?.len(), 2);

    bindle.push("myapp", "2.0.0", "/").await?;
    let resp = api.register("myapp", "2.0.0").await?;
    assert_eq!(resp.status, StatusCode::INTERNAL_SERVER_ERROR);
    let after = api.channel(channel).await?;
    assert_eq!(after["activeRevision"], before["activeRevision"]);
    assert_eq!(emu.snapshot().revisions.len(), 3);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Channels and scheduling
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn range_reevaluation_moves_the_channel_and_starts_the_job() -> TestResult {
    let bindle = Bindle::start().await?;
    bindle.push("myapp", "1.0.0", "/").await?;
    let emu = HippoEmulator::start(config(&bindle)).await?;
    let api = Api::login(&emu).await?;
    let app = api.create_app("myapp", "myapp").await?;
    let channel = api
        .create_channel(json!({"appId": app, "name": "spin-deploy", "revisionSelectionStrategy": "UseRangeRule", "rangeRule": "^1"}))
        .await?;

    let created = api.channel(channel).await?;
    assert_eq!(created["activeRevision"]["revisionNumber"], "1.0.0");
    assert_eq!(created["activeRevision"]["type"], "http");
    assert_eq!(created["appSummary"]["name"], "myapp");
    assert!(created["lastPublishAt"].is_string());
    assert_eq!(created["domain"], "spin-deploy.myapp.hippofactory.io");
    let events = emu.scheduler_events();
    assert_eq!(
        events,
        [SchedulerEvent::Start(ScheduledJob {
            channel_id: channel,
            bindle_id: "myapp/1.0.0".into(),
            env: BTreeMap::new(),
            domain: "spin-deploy.myapp.hippofactory.io".into(),
        })]
    );
    emu.clear_scheduler_events();

    bindle.push("myapp", "1.2.0", "/").await?;
    assert_eq!(
        api.register("myapp", "1.2.0").await?.status,
        StatusCode::CREATED
    );
    let moved = api.channel(channel).await?;
    assert_eq!(moved["activeRevision"]["revisionNumber"], "1.2.0");
    let events = emu.scheduler_events();
    assert_eq!(starts(&events).len(), 1);
    assert_eq!(starts(&events)[0].bindle_id, "myapp/1.2.0");
    emu.clear_scheduler_events();

    // 1.1.0 is not the best match, so nothing moves; 2.0.0 is outside the range.
    for version in ["1.1.0", "2.0.0"] {
        bindle.push("myapp", version, "/").await?;
        assert_eq!(
            api.register("myapp", version).await?.status,
            StatusCode::CREATED
        );
    }
    assert_eq!(
        api.channel(channel).await?["activeRevision"]["revisionNumber"],
        "1.2.0"
    );
    assert!(emu.scheduler_events().is_empty());

    let statuses = api.get("/api/channel-statuses").await?.json();
    assert_eq!(
        statuses["items"],
        json!([{"channelId": channel, "status": "Running"}])
    );

    // Deleting the active revision re-evaluates the range: back to 1.1.0.
    let active = moved["activeRevision"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let resp = api.delete(&format!("/api/revisions/{active}")).await?;
    assert_eq!(resp.status, StatusCode::NO_CONTENT);
    assert_eq!(
        api.channel(channel).await?["activeRevision"]["revisionNumber"],
        "1.1.0"
    );
    assert_eq!(starts(&emu.scheduler_events())[0].bindle_id, "myapp/1.1.0");
    Ok(())
}

#[tokio::test]
async fn patch_moves_the_revision_without_starting_a_job_but_put_starts_one() -> TestResult {
    let bindle = Bindle::start().await?;
    bindle.push("myapp", "1.0.0", "/").await?;
    bindle.push("myapp", "1.1.0", "/").await?;
    let emu = HippoEmulator::start(config(&bindle)).await?;
    let api = Api::login(&emu).await?;
    let app = api.create_app("myapp", "myapp").await?;
    let revisions = api.revisions_of(app).await?;
    let (r1, r2) = (revisions[0]["id"].clone(), revisions[1]["id"].clone());

    let resp = api
        .post("/api/channels", json!({"appId": app, "name": "prod", "revisionSelectionStrategy": "UseSpecifiedRevision"}))
        .await?;
    assert_eq!(
        error_messages(&resp, "RevisionSelectionStrategy"),
        ["ActiveRevisionId and the specified ChannelRevisionSelectionStrategy do not match up."]
    );
    let channel = api
        .create_channel(json!({"appId": app, "name": "prod", "revisionSelectionStrategy": "UseSpecifiedRevision", "activeRevisionId": r1}))
        .await?;
    assert_eq!(starts(&emu.scheduler_events()).len(), 1);
    emu.clear_scheduler_events();

    let resp = api
        .patch(
            &format!("/api/channels/{channel}"),
            json!({"activeRevisionId": r2}),
        )
        .await?;
    assert_eq!(resp.status, StatusCode::NO_CONTENT);
    assert_eq!(api.channel(channel).await?["activeRevision"]["id"], r2);
    assert!(emu.scheduler_events().is_empty());

    let resp = api
        .put(
            &format!("/api/channels/{channel}"),
            json!({"id": channel, "name": "prod", "domain": "prod.example.com",
                   "revisionSelectionStrategy": "UseSpecifiedRevision", "activeRevisionId": r1}),
        )
        .await?;
    assert_eq!(resp.status, StatusCode::NO_CONTENT);
    let events = emu.scheduler_events();
    assert_eq!(starts(&events).len(), 1);
    assert_eq!(starts(&events)[0].bindle_id, "myapp/1.0.0");
    assert_eq!(starts(&events)[0].domain, "prod.example.com");

    let resp = api
        .put(
            &format!("/api/channels/{}", Uuid::new_v4()),
            json!({"id": channel, "name": "prod", "domain": "prod.example.com",
                   "revisionSelectionStrategy": "UseRangeRule"}),
        )
        .await?;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST);
    assert!(resp.text.is_empty());

    // PUT with UseRangeRule and no rule stores "*", keeps the given active revision.
    let resp = api
        .put(
            &format!("/api/channels/{channel}"),
            json!({"id": channel, "name": "prod", "domain": "prod.example.com",
                   "revisionSelectionStrategy": "UseRangeRule", "activeRevisionId": r1}),
        )
        .await?;
    assert_eq!(resp.status, StatusCode::NO_CONTENT);
    let stored = api.channel(channel).await?;
    assert_eq!(stored["rangeRule"], "*");
    assert_eq!(stored["activeRevision"]["id"], r1);
    Ok(())
}

#[tokio::test]
async fn environment_variables_are_replaced_by_patch() -> TestResult {
    let bindle = Bindle::start().await?;
    bindle.push("myapp", "1.0.0", "/").await?;
    let emu = HippoEmulator::start(config(&bindle)).await?;
    let api = Api::login(&emu).await?;
    let app = api.create_app("myapp", "myapp").await?;
    let channel = api
        .create_channel(
            json!({"appId": app, "name": "prod", "revisionSelectionStrategy": "UseRangeRule"}),
        )
        .await?;
    let path = format!("/api/channels/{channel}");
    let env = |v: &Value| -> Vec<(String, String)> {
        v["environmentVariables"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                (
                    e["key"].as_str().unwrap_or_default().to_string(),
                    e["value"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    };
    emu.clear_scheduler_events();

    api.patch(
        &path,
        json!({"environmentVariables": [{"key": "A", "value": "1"}, {"key": "B", "value": "2"}]}),
    )
    .await?;
    assert_eq!(
        env(&api.channel(channel).await?),
        [("A".into(), "1".into()), ("B".into(), "2".into())]
    );
    // Two created variables: two StartJob calls, each with the final set.
    let events = emu.scheduler_events();
    assert_eq!(starts(&events).len(), 2);
    assert_eq!(
        starts(&events)[1].env,
        BTreeMap::from([("A".into(), "1".into()), ("B".into(), "2".into())])
    );
    emu.clear_scheduler_events();

    // Absent: unchanged.
    api.patch(&path, json!({"rangeRule": "^1"})).await?;
    assert_eq!(env(&api.channel(channel).await?).len(), 2);

    // Modifying only an existing key restarts nothing.
    api.patch(
        &path,
        json!({"environmentVariables": [{"key": "A", "value": "9"}, {"key": "B", "value": "2"}]}),
    )
    .await?;
    assert!(emu.scheduler_events().is_empty());

    // B is deleted, C created: two events.
    api.patch(
        &path,
        json!({"environmentVariables": [{"key": "A", "value": "9"}, {"key": "C", "value": "3"}]}),
    )
    .await?;
    assert_eq!(
        env(&api.channel(channel).await?),
        [("A".into(), "9".into()), ("C".into(), "3".into())]
    );
    assert_eq!(starts(&emu.scheduler_events()).len(), 2);

    // null deletes them all.
    let resp = api
        .patch(&path, json!({"environmentVariables": null}))
        .await?;
    assert_eq!(resp.status, StatusCode::NO_CONTENT);
    assert!(env(&api.channel(channel).await?).is_empty());

    // UseRangeRule with rangeRule present as null stores "*".
    api.patch(
        &path,
        json!({"revisionSelectionStrategy": "UseRangeRule", "rangeRule": null}),
    )
    .await?;
    assert_eq!(api.channel(channel).await?["rangeRule"], "*");
    Ok(())
}

#[tokio::test]
async fn desired_status_and_deletions_drive_the_scheduler() -> TestResult {
    let bindle = Bindle::start().await?;
    bindle.push("myapp", "1.0.0", "/").await?;
    let emu = HippoEmulator::start(config(&bindle)).await?;
    let api = Api::login(&emu).await?;
    let app = api.create_app("myapp", "myapp").await?;
    let prod = api
        .create_channel(
            json!({"appId": app, "name": "prod", "revisionSelectionStrategy": "UseRangeRule"}),
        )
        .await?;
    let staging = api
        .create_channel(
            json!({"appId": app, "name": "staging", "revisionSelectionStrategy": "UseRangeRule"}),
        )
        .await?;
    emu.clear_scheduler_events();

    let status_path = format!("/api/channels/{prod}/desired-status");
    let resp = api
        .put(
            &status_path,
            json!({"channelId": prod, "desiredStatus": "Dead"}),
        )
        .await?;
    assert_eq!(resp.status, StatusCode::NO_CONTENT);
    let events = emu.scheduler_events();
    assert!(matches!(events.last(), Some(SchedulerEvent::Delete(id)) if *id == prod));
    let status = api
        .get(&format!("/api/channel-statuses?channelId={prod}"))
        .await?
        .json();
    assert_eq!(status["items"][0]["status"], "Dead");
    emu.clear_scheduler_events();

    api.put(
        &status_path,
        json!({"channelId": prod, "desiredStatus": "Running"}),
    )
    .await?;
    // ActiveRevisionChanged and ChannelStatusModified both start it.
    assert_eq!(starts(&emu.scheduler_events()).len(), 2);
    emu.clear_scheduler_events();

    assert_eq!(
        api.delete(&format!("/api/channels/{staging}"))
            .await?
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(emu.scheduler_events(), [SchedulerEvent::Delete(staging)]);
    emu.clear_scheduler_events();

    assert_eq!(
        api.delete(&format!("/api/apps/{app}")).await?.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(emu.scheduler_events(), [SchedulerEvent::Delete(prod)]);
    let state = emu.snapshot();
    assert!(state.apps.is_empty() && state.channels.is_empty() && state.revisions.is_empty());
    assert_eq!(
        api.delete(&format!("/api/channels/{prod}")).await?.status,
        StatusCode::NOT_FOUND
    );
    Ok(())
}

#[tokio::test]
async fn default_domains_follow_the_emulated_version() -> TestResult {
    let bindle = Bindle::start().await?;
    bindle.push("my_app", "1.0.0", "/").await?;
    for (version, first, second) in [
        (
            HippoVersion::V0_19,
            "spin-deploy.my-app.hippofactory.io",
            "staging.my-app.hippofactory.io",
        ),
        (
            HippoVersion::V0_20,
            "my-app.hippofactory.io",
            "staging-my-app.hippofactory.io",
        ),
    ] {
        let emu = HippoEmulator::start(HippoEmulatorConfig {
            version,
            ..config(&bindle)
        })
        .await?;
        let api = Api::login(&emu).await?;
        let app = api.create_app("my_app", "my_app").await?;
        let mut domains = Vec::new();
        for name in ["spin-deploy", "staging"] {
            let id = api
                .create_channel(json!({"appId": app, "name": name, "revisionSelectionStrategy": "UseRangeRule"}))
                .await?;
            domains.push(api.channel(id).await?["domain"].clone());
        }
        assert_eq!(domains, [json!(first), json!(second)], "{version:?}");

        let resp = api
            .post("/api/channels", json!({"appId": app, "name": "other", "domain": first, "revisionSelectionStrategy": "UseRangeRule"}))
            .await?;
        assert_eq!(
            error_messages(&resp, "Domain"),
            ["The specified domain already exists."]
        );
        let resp = api
            .post("/api/channels", json!({"appId": app, "name": "staging", "revisionSelectionStrategy": "UseRangeRule", "rangeRule": ""}))
            .await?;
        assert_eq!(
            error_messages(&resp, "Name"),
            ["A channel with the same name already exists for this app."]
        );
        assert_eq!(
            error_messages(&resp, "RangeRule"),
            ["Range rule cannot be an empty string."]
        );
        emu.stop().await;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Paging, recording, persistence
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn paging_sorting_and_the_search_total_quirk() -> TestResult {
    let bindle = Bindle::start().await?;
    for name in ["alpha", "bravo", "charlie"] {
        bindle.push(name, "1.0.0", "/").await?;
    }
    let emu = HippoEmulator::start(config(&bindle)).await?;
    let api = Api::login(&emu).await?;
    for name in ["charlie", "alpha", "bravo"] {
        api.create_app(name, name).await?;
    }

    let first = api.get("/api/apps?pageSize=2").await?.json();
    assert_eq!(first["totalItems"], 3);
    assert_eq!(first["pageIndex"], 0);
    assert_eq!(first["isLastPage"], false);
    let names = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["name"].as_str().map(str::to_string))
            .collect()
    };
    assert_eq!(names(&first), ["alpha", "bravo"]);
    let second = api.get("/api/apps?pageSize=2&pageIndex=1").await?.json();
    assert_eq!(names(&second), ["charlie"]);
    assert_eq!(second["isLastPage"], true);

    let desc = api.get("/api/apps?IsSortedAscending=false").await?.json();
    assert_eq!(names(&desc), ["charlie", "bravo", "alpha"]);

    // searchText filters the items but totalItems still counts every app.
    let search = api.get("/api/apps?searchText=rav").await?.json();
    assert_eq!(names(&search), ["bravo"]);
    assert_eq!(search["totalItems"], 3);
    assert_eq!(search["isLastPage"], false);

    let resp = api.get("/api/apps?sortBy=name").await?;
    assert_eq!(resp.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(resp.json()["status"], 500);
    assert_eq!(
        api.get("/api/apps?sortBy=StorageId").await?.status,
        StatusCode::OK
    );
    let resp = api.get("/api/apps?pageIndex=abc").await?;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST);

    let channels = api.get("/api/channels").await?.json();
    assert_eq!(channels["totalItems"], 0);
    assert_eq!(channels["isLastPage"], true);
    Ok(())
}

#[tokio::test]
async fn requests_are_recorded_and_writes_counted() -> TestResult {
    let bindle = Bindle::start().await?;
    bindle.push("myapp", "1.0.0", "/").await?;
    let emu = HippoEmulator::start(config(&bindle)).await?;
    let api = Api::login(&emu).await?;
    api.create_app("myapp", "myapp").await?;
    api.get("/api/apps?pageSize=5").await?;

    let requests = emu.requests();
    assert_eq!(requests.len(), 3);
    assert_eq!(requests[0].path, "/api/auth-tokens");
    assert_eq!(requests[1].method, "POST");
    assert_eq!(requests[1].status, 200);
    assert!(requests[1]
        .body
        .as_deref()
        .unwrap_or("")
        .contains("\"storageId\""));
    assert_eq!(requests[2].query.as_deref(), Some("pageSize=5"));
    assert_eq!(emu.writes(), 1);

    emu.clear_requests();
    assert_eq!(emu.writes(), 0);
    api.register("nothing", "1.0.0").await?;
    assert_eq!(emu.writes(), 1);
    assert_eq!(emu.requests()[0].status, 404);
    Ok(())
}

#[tokio::test]
async fn state_file_survives_a_restart() -> TestResult {
    let bindle = Bindle::start().await?;
    bindle.push("myapp", "1.0.0", "/").await?;
    let dir = tempfile::tempdir()?;
    let state_file = dir.path().join("hippo-state.json");
    let cfg = || HippoEmulatorConfig {
        state_file: Some(state_file.clone()),
        ..config(&bindle)
    };

    let emu = HippoEmulator::start(cfg()).await?;
    let api = Api::login(&emu).await?;
    let app = api.create_app("myapp", "myapp").await?;
    let channel = api
        .create_channel(
            json!({"appId": app, "name": "prod", "revisionSelectionStrategy": "UseRangeRule"}),
        )
        .await?;
    api.patch(
        &format!("/api/channels/{channel}"),
        json!({"environmentVariables": [{"key": "K", "value": "V"}]}),
    )
    .await?;
    let before = emu.snapshot();
    emu.stop().await;
    assert!(state_file.exists());

    let emu = HippoEmulator::start(cfg()).await?;
    assert_eq!(emu.snapshot(), before);
    // The old token still works, as a Hippo JWT would.
    let api = Api {
        base: emu.url(),
        ..api
    };
    let ch = api.channel(channel).await?;
    assert_eq!(ch["environmentVariables"][0]["key"], "K");
    assert_eq!(ch["activeRevision"]["revisionNumber"], "1.0.0");
    assert_eq!(
        emu.snapshot().channels[0].revision_selection_strategy,
        ChannelRevisionSelectionStrategy::UseRangeRule
    );
    Ok(())
}

/// A custom scheduler receives the calls; `scheduler_events` stays empty.
#[tokio::test]
async fn a_custom_scheduler_gets_the_calls() -> TestResult {
    let bindle = Bindle::start().await?;
    bindle.push("myapp", "1.0.0", "/").await?;
    let recorder = Arc::new(RecordingScheduler::new());
    let scheduler: Arc<dyn JobScheduler> = recorder.clone();
    let emu = HippoEmulator::start_with_scheduler(config(&bindle), scheduler).await?;
    let api = Api::login(&emu).await?;
    let app = api.create_app("myapp", "myapp").await?;
    api.create_channel(
        json!({"appId": app, "name": "prod", "revisionSelectionStrategy": "UseRangeRule"}),
    )
    .await?;
    assert_eq!(starts(&recorder.events()).len(), 1);
    assert!(emu.scheduler_events().is_empty());
    Ok(())
}

/// HIPPO-API.md §13: the move is an UpdateChannelCommand, so a channel whose default domain
/// is invalid (name ending in '-') makes the registration answer 400 after the row was saved.
#[tokio::test]
async fn range_move_runs_the_channel_validators() -> TestResult {
    let bindle = Bindle::start().await?;
    bindle.push("myapp", "1.0.0", "/").await?;
    let emu = HippoEmulator::start(config(&bindle)).await?;
    let api = Api::login(&emu).await?;
    let app = api.create_app("myapp", "myapp").await?;
    let channel = api
        .create_channel(
            json!({"appId": app, "name": "edge-", "revisionSelectionStrategy": "UseRangeRule"}),
        )
        .await?;
    assert_eq!(
        api.channel(channel).await?["domain"],
        "edge-.myapp.hippofactory.io"
    );

    bindle.push("myapp", "1.1.0", "/").await?;
    let resp = api.register("myapp", "1.1.0").await?;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        error_messages(&resp, "Domain"),
        ["'Domain' is not in the correct format."]
    );
    assert_eq!(api.revisions_of(app).await?.len(), 2);
    assert_eq!(
        api.channel(channel).await?["activeRevision"]["revisionNumber"],
        "1.0.0"
    );
    Ok(())
}

#[tokio::test]
async fn certificates_and_list_item_shapes() -> TestResult {
    let bindle = Bindle::start().await?;
    bindle.push("myapp", "1.0.0", "/").await?;
    let emu = HippoEmulator::start(config(&bindle)).await?;
    let api = Api::login(&emu).await?;
    let app = api.create_app("myapp", "myapp").await?;

    let cert = api
        .post(
            "/api/certificates",
            json!({"name": "wildcard", "publicKey": "PUB", "privateKey": "PRIV"}),
        )
        .await?;
    assert_eq!(cert.status, StatusCode::OK);
    let cert = cert.guid();
    let resp = api
        .post(
            "/api/certificates",
            json!({"name": "wildcard", "publicKey": "PUB", "privateKey": "PRIV"}),
        )
        .await?;
    assert_eq!(
        error_messages(&resp, "Name"),
        ["The specified name already exists."]
    );
    let channel = api
        .create_channel(
            json!({"appId": app, "name": "prod", "revisionSelectionStrategy": "UseRangeRule",
                               "domain": "www.example.com", "certificateId": cert}),
        )
        .await?;

    let certs = api.get("/api/certificates").await?.json();
    assert_eq!(certs["totalItems"], 1);
    assert_eq!(certs["items"][0]["privateKey"], "PRIV");
    assert_eq!(certs["items"][0]["channels"][0]["id"], json!(channel));

    // List items carry no appSummary and no revision type; the detail view has both.
    let list = api.get("/api/channels").await?.json();
    let item = &list["items"][0];
    assert_eq!(item["appSummary"], Value::Null);
    assert_eq!(item["activeRevision"]["type"], Value::Null);
    assert_eq!(item["certificate"]["name"], "wildcard");
    assert_eq!(item["domain"], "www.example.com");
    let detail = api.channel(channel).await?;
    assert_eq!(
        detail["appSummary"]["channels"][0]["activeRevisionNumber"],
        "1.0.0"
    );
    assert_eq!(detail["activeRevision"]["type"], "http");

    // PATCH takes raw values, not the swagger's {"value": ...} wrappers.
    let resp = api
        .patch(
            &format!("/api/channels/{channel}"),
            json!({"name": {"value": "x"}}),
        )
        .await?;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST);
    let resp = api
        .patch(
            &format!("/api/channels/{}", Uuid::new_v4()),
            json!({"name": "x"}),
        )
        .await?;
    assert_eq!(resp.status, StatusCode::NOT_FOUND);

    let logs = api
        .get(&format!("/api/channels/{channel}/logs"))
        .await?
        .json();
    assert_eq!(logs, json!({"logs": []}));
    let statuses = api.get("/api/channel-statuses").await?.json();
    assert_eq!(statuses["totalItems"], 1);
    assert_eq!(statuses["pageSize"], i32::MAX);
    Ok(())
}

/// Many writes, few state-file writes: with an interval longer than the test, the file is
/// written at start and at stop (or drop), and holds the last state.
#[tokio::test]
async fn state_file_writes_are_coalesced_and_stop_or_drop_writes_the_last_state() -> TestResult {
    let dir = tempfile::tempdir()?;
    let state_file = dir.path().join("hippo-state.json");
    let cfg = || HippoEmulatorConfig {
        state_file: Some(state_file.clone()),
        state_write_interval: Duration::from_secs(3600),
        ..Default::default()
    };
    let saved = || -> Result<EmulatorState, Box<dyn std::error::Error>> {
        Ok(serde_json::from_str(&std::fs::read_to_string(
            &state_file,
        )?)?)
    };
    let create_certificates = |api: Api, names: Vec<String>| async move {
        for name in names {
            let resp = api
                .post(
                    "/api/certificates",
                    json!({"name": name, "publicKey": "PUB", "privateKey": "PRIV"}),
                )
                .await?;
            assert_eq!(resp.status, StatusCode::OK, "{}", resp.text);
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    };

    let emu = HippoEmulator::start(cfg()).await?;
    let writes = emu.state_file_writes();
    let names: Vec<String> = (0..30).map(|i| format!("cert-{i}")).collect();
    create_certificates(Api::login(&emu).await?, names.clone()).await?;
    assert_eq!(*writes.borrow(), 1, "only the write at start so far");
    assert!(saved()?.certificates.is_empty());
    let before = emu.snapshot();
    emu.stop().await;
    assert_eq!(*writes.borrow(), 2, "one more write, when stopping");
    assert_eq!(saved()?, before);
    let saved_names: Vec<String> = saved()?.certificates.into_iter().map(|c| c.name).collect();
    assert_eq!(saved_names, names);

    let emu = HippoEmulator::start(cfg()).await?;
    let writes = emu.state_file_writes();
    create_certificates(Api::login(&emu).await?, vec!["one-more".into()]).await?;
    let before = emu.snapshot();
    drop(emu);
    assert_eq!(*writes.borrow(), 2, "written at start and when dropped");
    assert_eq!(saved()?, before);
    assert_eq!(saved()?.certificates.len(), 31);
    Ok(())
}

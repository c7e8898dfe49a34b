//! End-to-end tests of the Nomad emulator over real HTTP, and of its Hippo scheduler with the
//! Hippo emulator and the real (embedded) Bindle server.
//!
//! Waiting is done with blocking queries (`?index=&wait=`), never with sleeps.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bindle::client::{tokens::NoToken, Client, ClientError};
use bindle::signature::{KeyEntry, KeyRing, SecretKeyEntry, SignatureRole};
use bindle::{BindleSpec, Condition, Id, Invoice, Label, Parcel};
use hippo_gitops_emulators::bindle_server::BindleServer;
use hippo_gitops_emulators::hippo::{HippoEmulator, HippoEmulatorConfig, HippoVersion};
use hippo_gitops_emulators::nomad::{HippoJobSettings, NomadEmulator, NomadEmulatorConfig};
use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const JOB: &str = "3fa85f64-5717-4562-b3fc-2c963f66afa6";
const REGISTER_SAMPLE: &str = include_str!("../src/nomad/testdata/hippo_job_register_request.json");
const READ_SAMPLE: &str = include_str!("../src/nomad/testdata/hippo_job_read.json");

// ---------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------

fn fast() -> NomadEmulatorConfig {
    NomadEmulatorConfig {
        alloc_start_delay: Duration::from_millis(20),
        healthy_delay: Duration::from_millis(20),
        ..Default::default()
    }
}

/// Hippo's register request for the sample channel, with `id` and `bindle` swapped in.
fn hippo_request(id: &str, bindle: &str) -> Value {
    let text = REGISTER_SAMPLE
        .replace(JOB, id)
        .replace("contoso/weather/1.4.0", bindle);
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// An HTTP response, fully read.
#[derive(Debug)]
struct Resp {
    status: u16,
    content_type: String,
    index: Option<u64>,
    text: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }
}

/// A minimal Nomad client.
struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    fn new(nomad: &NomadEmulator) -> Self {
        Api {
            http: reqwest::Client::new(),
            base: nomad.url(),
            token: None,
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> reqwest::Result<Resp> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.header("X-Nomad-Token", t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let content_type = header("content-type").unwrap_or_default();
        let index = header("x-nomad-index").and_then(|i| i.parse().ok());
        Ok(Resp {
            status: resp.status().as_u16(),
            content_type,
            index,
            text: resp.text().await?,
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

    async fn delete(&self, path: &str) -> reqwest::Result<Resp> {
        self.call(Method::DELETE, path, None).await
    }

    async fn register(&self, id: &str, body: Value) -> Result<Value, Box<dyn std::error::Error>> {
        let resp = self.post(&format!("/v1/job/{id}"), body).await?;
        assert_eq!(resp.status, 200, "{}", resp.text);
        Ok(resp.json())
    }

    /// Blocks on `path` (a GET list or read) until `done` holds for its body; the deadline is
    /// generous and each round trip waits for the index to move.
    async fn wait_for(
        &self,
        path: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Result<Value, Box<dyn std::error::Error>> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut index = 0;
        loop {
            let sep = if path.contains('?') { '&' } else { '?' };
            let resp = self
                .get(&format!("{path}{sep}index={index}&wait=2s"))
                .await?;
            let body = resp.json();
            if done(&body) {
                return Ok(body);
            }
            if Instant::now() > deadline {
                return Err(format!("timed out waiting on {path}: {}", resp.text).into());
            }
            index = resp.index.unwrap_or(0);
        }
    }
}

fn healthy(a: &Value) -> bool {
    a["ClientStatus"] == "running" && a["DeploymentStatus"]["Healthy"] == true
}

fn live(allocs: &Value) -> Vec<Value> {
    allocs
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["DesiredStatus"] == "run")
        .cloned()
        .collect()
}

async fn wait_healthy(api: &Api, id: &str) -> Result<Value, Box<dyn std::error::Error>> {
    api.wait_for(&format!("/v1/job/{id}/deployment"), |d| {
        d["Status"] == "successful"
    })
    .await?;
    api.wait_for(&format!("/v1/job/{id}/allocations"), |a| {
        let l = live(a);
        !l.is_empty() && l.iter().all(healthy)
    })
    .await
}

// ---------------------------------------------------------------------------------------
// Jobs
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn registered_hippo_job_reads_back_like_the_sample() -> TestResult {
    let nomad = NomadEmulator::start(fast()).await?;
    let api = Api::new(&nomad);

    let resp = api
        .post(
            &format!("/v1/job/{JOB}"),
            hippo_request(JOB, "contoso/weather/1.4.0"),
        )
        .await?;
    assert_eq!(resp.status, 200, "{}", resp.text);
    assert!(resp.content_type.starts_with("application/json"));
    let out = resp.json();
    assert_eq!(out["Warnings"], "");
    assert_eq!(out["EvalID"].as_str().map(str::len), Some(36));
    assert_eq!(out["EvalCreateIndex"], out["Index"]);
    assert_eq!(out["JobModifyIndex"], out["Index"]);
    assert_eq!(resp.index, out["Index"].as_u64());

    let read = api.get(&format!("/v1/job/{JOB}")).await?;
    assert_eq!(read.status, 200);
    let job = read.json();
    let mut want: Value = serde_json::from_str(READ_SAMPLE)?;
    for k in [
        "CreateIndex",
        "ModifyIndex",
        "JobModifyIndex",
        "SubmitTime",
        "Status",
        "Stable",
        "Version",
    ] {
        want[k] = job[k].clone();
    }
    assert_eq!(
        job, want,
        "canonical job differs from samples/hippo/hippo_job_read.json"
    );
    assert_eq!(job["Version"], 0);
    assert_eq!(job["Namespace"], "default");
    assert_eq!(job["Stop"], false);
    assert_eq!(job["JobModifyIndex"], out["JobModifyIndex"]);
    assert!(job["SubmitTime"].as_i64().unwrap_or(0) > 1_600_000_000_000_000_000);
    assert_eq!(read.index, job["ModifyIndex"].as_u64());
    // Placing the allocation makes the job running (a non-terminal allocation exists).
    assert_eq!(job["Status"], "running");

    let job = wait_healthy(&api, JOB).await?;
    let allocs = job.as_array().cloned().unwrap_or_default();
    assert_eq!(allocs.len(), 1);
    let a = &allocs[0];
    assert_eq!(a["Name"], format!("{JOB}.{JOB}[0]"));
    assert_eq!(a["JobVersion"], 0);
    assert_eq!(a["TaskGroup"], JOB);
    assert_eq!(a["ClientDescription"], "Tasks are running");
    let events: Vec<&str> = a["TaskStates"]["spin"]["Events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["Type"].as_str())
        .collect();
    assert_eq!(events, ["Received", "Task Setup", "Started"]);

    let job = api.get(&format!("/v1/job/{JOB}")).await?.json();
    assert_eq!(
        job["Stable"], true,
        "a successful deployment makes the version stable"
    );

    // The list stub: no Version, a summary, sorted by ID, prefix and meta.
    api.register("aaa-first", hippo_request("aaa-first", "a/1.0.0"))
        .await?;
    let list = api.get("/v1/jobs").await?;
    let stubs = list.json();
    let ids: Vec<&str> = stubs
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["ID"].as_str())
        .collect();
    assert_eq!(ids, [JOB, "aaa-first"]);
    let stub = &stubs[0];
    assert!(stub.get("Version").is_none() && stub.get("TaskGroups").is_none());
    assert!(stub.get("Meta").is_none());
    assert_eq!(stub["JobSummary"]["Summary"][JOB]["Running"], 1);
    assert_eq!(stub["Status"], "running");
    let prefixed = api.get("/v1/jobs?prefix=aaa").await?.json();
    assert_eq!(prefixed.as_array().map(Vec::len), Some(1));
    assert_eq!(api.get("/v1/jobs?namespace=other").await?.json(), json!([]));
    let summary = api.get(&format!("/v1/job/{JOB}/summary")).await?.json();
    assert_eq!(summary["JobID"], JOB);
    assert_eq!(summary["Summary"][JOB]["Running"], 1);
    nomad.stop().await;
    Ok(())
}

#[tokio::test]
async fn versions_change_only_with_the_spec() -> TestResult {
    let nomad = NomadEmulator::start(fast()).await?;
    let api = Api::new(&nomad);
    let body = hippo_request(JOB, "contoso/weather/1.4.0");
    let first = api.register(JOB, body.clone()).await?;
    let allocs = wait_healthy(&api, JOB).await?;
    let first_alloc = live(&allocs)[0]["ID"].clone();

    // Identical: a new evaluation, no new version, no new allocation.
    let again = api.register(JOB, body.clone()).await?;
    assert_ne!(again["EvalID"], first["EvalID"]);
    assert_eq!(again["JobModifyIndex"], first["JobModifyIndex"]);
    let job = api.get(&format!("/v1/job/{JOB}")).await?.json();
    assert_eq!(job["Version"], 0);
    assert_eq!(job["JobModifyIndex"], first["JobModifyIndex"]);
    let allocs = api.get(&format!("/v1/job/{JOB}/allocations")).await?.json();
    assert_eq!(allocs.as_array().map(Vec::len), Some(1));
    let evals = api.get(&format!("/v1/job/{JOB}/evaluations")).await?.json();
    assert_eq!(evals.as_array().map(Vec::len), Some(2));
    assert_eq!(evals[0]["TriggeredBy"], "job-register");

    // Only a tag changes: version 1, updated in place (same allocation, new JobVersion).
    let mut tags = body.clone();
    tags["Job"]["TaskGroups"][0]["Services"][0]["Tags"][1] = json!(format!(
        "traefik.http.routers.{JOB}.rule=Host(`other.example.com`)"
    ));
    let v1 = api.register(JOB, tags.clone()).await?;
    assert!(v1["JobModifyIndex"].as_u64() > first["JobModifyIndex"].as_u64());
    let allocs = api
        .wait_for(&format!("/v1/job/{JOB}/allocations"), |a| {
            live(a).iter().any(|x| x["JobVersion"] == 1 && healthy(x))
        })
        .await?;
    assert_eq!(allocs.as_array().map(Vec::len), Some(1));
    assert_eq!(allocs[0]["ID"], first_alloc);

    // The bindle changes: version 2, a new allocation; the old one stops.
    let v2 = tags
        .to_string()
        .replace("contoso/weather/1.4.0", "contoso/weather/1.5.0");
    api.register(JOB, serde_json::from_str(&v2)?).await?;
    let allocs = wait_healthy(&api, JOB).await?;
    let all = allocs.as_array().cloned().unwrap_or_default();
    assert_eq!(all.len(), 2);
    let old = all
        .iter()
        .find(|a| a["ID"] == first_alloc)
        .cloned()
        .unwrap_or_default();
    assert_eq!(old["DesiredStatus"], "stop");
    assert_eq!(old["ClientStatus"], "complete");
    assert_eq!(
        old["DesiredDescription"],
        "alloc is being updated due to job update"
    );
    let new = live(&allocs);
    assert_eq!(new.len(), 1);
    assert_eq!(new[0]["JobVersion"], 2);
    let job = api.get(&format!("/v1/job/{JOB}")).await?.json();
    assert_eq!(job["Version"], 2);
    assert_eq!(
        job["TaskGroups"][0]["Tasks"][0]["Config"]["args"][4],
        "contoso/weather/1.5.0"
    );
    let versions = api.get(&format!("/v1/job/{JOB}/versions")).await?.json();
    let numbers: Vec<u64> = versions["Versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["Version"].as_u64())
        .collect();
    assert_eq!(numbers, [2, 1, 0]);
    let deployments = api.get(&format!("/v1/job/{JOB}/deployments")).await?.json();
    let states: Vec<(u64, &str)> = deployments
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| Some((d["JobVersion"].as_u64()?, d["Status"].as_str()?)))
        .collect();
    assert_eq!(
        states,
        [(2, "successful"), (1, "successful"), (0, "successful")]
    );
    nomad.stop().await;
    Ok(())
}

#[tokio::test]
async fn blocking_queries_follow_the_allocation_lifecycle() -> TestResult {
    let nomad = NomadEmulator::start(NomadEmulatorConfig {
        alloc_start_delay: Duration::from_millis(300),
        healthy_delay: Duration::from_millis(300),
        ..Default::default()
    })
    .await?;
    let api = Api::new(&nomad);
    api.register(JOB, hippo_request(JOB, "contoso/weather/1.4.0"))
        .await?;

    let path = format!(
        "/v1/allocations?filter={}",
        urlencode(&format!("JobID == \"{JOB}\""))
    );
    let first = api.get(&path).await?;
    let index = first.index.ok_or("no X-Nomad-Index")?;
    let a = &first.json()[0];
    assert_eq!(a["ClientStatus"], "pending");
    assert_eq!(a["DesiredStatus"], "run");
    assert_eq!(a["DeploymentStatus"], Value::Null);
    assert_eq!(a["TaskStates"]["spin"]["State"], "pending");
    assert_eq!(a["TaskStates"]["spin"]["Events"][0]["Type"], "Received");
    assert_eq!(
        a["TaskStates"]["spin"]["Events"][0]["DisplayMessage"],
        "Task received by client"
    );

    // The index moves when the client starts the task: the query returns well before `wait`.
    let started = Instant::now();
    let running = api.get(&format!("{path}&index={index}&wait=20s")).await?;
    assert!(started.elapsed() < Duration::from_secs(10));
    let index2 = running.index.ok_or("no X-Nomad-Index")?;
    assert!(index2 > index);
    let a = &running.json()[0];
    assert_eq!(a["ClientStatus"], "running");
    assert_eq!(a["TaskStates"]["spin"]["State"], "running");
    assert_eq!(a["DeploymentStatus"], Value::Null);

    // And again when the deployment watcher marks it healthy.
    let health = api.get(&format!("{path}&index={index2}&wait=20s")).await?;
    let index3 = health.index.ok_or("no X-Nomad-Index")?;
    assert!(index3 > index2);
    let a = &health.json()[0];
    assert_eq!(a["DeploymentStatus"]["Healthy"], true);
    assert_eq!(a["DeploymentStatus"]["Canary"], false);
    assert!(a["DeploymentStatus"]["Timestamp"].is_string());

    // Nothing else happens: the query is held for the whole `wait`, then answers as is.
    let deployment = api
        .wait_for(&format!("/v1/job/{JOB}/deployment"), |d| {
            d["Status"] == "successful"
        })
        .await?;
    assert_eq!(deployment["TaskGroups"][JOB]["HealthyAllocs"], 1);
    assert_eq!(deployment["TaskGroups"][JOB]["DesiredTotal"], 1);
    assert_eq!(
        deployment["StatusDescription"],
        "Deployment completed successfully"
    );
    let settled = api.get(&path).await?.index.ok_or("no X-Nomad-Index")?;
    let started = Instant::now();
    let held = api
        .get(&format!("{path}&index={settled}&wait=400ms"))
        .await?;
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(400), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    assert_eq!(held.status, 200);
    assert_eq!(held.index, Some(settled));

    // Reads of a job block too, and a missing job answers 404 after the wait.
    let job_index = api
        .get(&format!("/v1/job/{JOB}"))
        .await?
        .index
        .ok_or("no index")?;
    let started = Instant::now();
    let same = api
        .get(&format!("/v1/job/{JOB}?index={job_index}&wait=300ms"))
        .await?;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(same.index, Some(job_index));
    nomad.stop().await;
    Ok(())
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn quirks_and_plain_text_errors() -> TestResult {
    let nomad = NomadEmulator::start(fast()).await?;
    let api = Api::new(&nomad);

    let missing = api.get("/v1/job/nope").await?;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.text, "job not found");
    assert_eq!(missing.content_type, "text/plain; charset=utf-8");
    assert!(
        missing.index.is_some(),
        "a 404 read still carries X-Nomad-Index"
    );

    let allocs = api.get("/v1/job/nope/allocations").await?;
    assert_eq!((allocs.status, allocs.text.as_str()), (200, "[]"));
    let latest = api.get("/v1/job/nope/deployment").await?;
    assert_eq!((latest.status, latest.text.as_str()), (200, "null"));
    let deployments = api.get("/v1/job/nope/deployments").await?;
    assert_eq!((deployments.status, deployments.text.as_str()), (200, "[]"));
    let summary = api.get("/v1/job/nope/summary").await?;
    assert_eq!(
        (summary.status, summary.text.as_str()),
        (404, "job not found")
    );
    let delete = api.delete("/v1/job/nope").await?;
    assert_eq!(
        (delete.status, delete.text.as_str()),
        (404, "job not found")
    );

    let bad_wait = api.get("/v1/jobs?index=1&wait=5parsecs").await?;
    assert_eq!(
        (bad_wait.status, bad_wait.text.as_str()),
        (400, "Invalid wait time")
    );
    let bad_index = api.get("/v1/allocations?index=-1").await?;
    assert_eq!(
        (bad_index.status, bad_index.text.as_str()),
        (400, "Invalid index")
    );

    let mismatch = api
        .post("/v1/job/other-name", hippo_request(JOB, "a/1.0.0"))
        .await?;
    assert_eq!(
        (mismatch.status, mismatch.text.as_str()),
        (400, "Job ID does not match name")
    );
    let empty = api.call(Method::POST, "/v1/jobs", None).await?;
    assert_eq!(
        (empty.status, empty.text.as_str()),
        (400, "Request body is empty")
    );
    let wrong_type = api
        .post("/v1/jobs", json!({"Job": {"ID": "x", "Priority": "high"}}))
        .await?;
    assert_eq!(wrong_type.status, 400);
    assert!(
        wrong_type.text.contains("cannot unmarshal string"),
        "{}",
        wrong_type.text
    );
    let invalid = api.post("/v1/jobs", json!({"Job": {"ID": "x"}})).await?;
    assert_eq!(invalid.status, 500);
    assert!(
        invalid.text.contains("Missing job task groups"),
        "{}",
        invalid.text
    );

    // POST /v1/jobs registers too; PUT works like POST.
    let via_jobs = api
        .put("/v1/jobs", hippo_request("put-job", "a/1.0.0"))
        .await?;
    assert_eq!(via_jobs.status, 200, "{}", via_jobs.text);

    let leader = api.get("/v1/status/leader").await?;
    assert_eq!(
        (leader.status, leader.json()),
        (200, json!("127.0.0.1:4647"))
    );
    let unknown = api.get("/v1/nothing-here").await?;
    assert_eq!(unknown.status, 404);
    let method = api.call(Method::PATCH, "/v1/jobs", None).await?;
    assert_eq!(
        (method.status, method.text.as_str()),
        (405, "Invalid method")
    );

    // Every request is recorded; writes are the non-GETs.
    let recorded = nomad.requests();
    assert!(recorded.iter().any(|r| r.path == "/v1/jobs"
        && r.query.as_deref() == Some("index=1&wait=5parsecs")
        && r.status == 400));
    assert_eq!(
        nomad.writes(),
        recorded.iter().filter(|r| r.method != "GET").count()
    );
    assert_eq!(nomad.writes(), 7);
    nomad.clear_requests();
    assert!(nomad.requests().is_empty());
    assert_eq!(nomad.writes(), 0);
    nomad.stop().await;
    Ok(())
}

#[tokio::test]
async fn x_nomad_index_is_always_present_and_never_goes_back() -> TestResult {
    let nomad = NomadEmulator::start(fast()).await?;
    let api = Api::new(&nomad);
    let paths = [
        "/v1/jobs".to_string(),
        format!("/v1/job/{JOB}"),
        format!("/v1/job/{JOB}/allocations"),
        format!("/v1/job/{JOB}/deployment"),
        format!("/v1/job/{JOB}/deployments"),
        format!("/v1/job/{JOB}/summary"),
        format!("/v1/job/{JOB}/evaluations"),
        "/v1/allocations".to_string(),
        "/v1/deployments".to_string(),
        "/v1/vars".to_string(),
        "/v1/var/some/path".to_string(),
    ];
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    let mut check = |path: &str, resp: &Resp| -> TestResult {
        let index = resp.index.ok_or(format!("no X-Nomad-Index on {path}"))?;
        assert!(index >= 1, "{path}");
        let before = last.insert(path.to_string(), index).unwrap_or(0);
        assert!(index >= before, "{path}: {before} -> {index}");
        Ok(())
    };
    for round in 0..4 {
        match round {
            1 => {
                api.register(JOB, hippo_request(JOB, "a/1.0.0")).await?;
            }
            2 => {
                wait_healthy(&api, JOB).await?;
                api.put("/v1/var/some/path", json!({"Items": {"k": "v"}}))
                    .await?;
            }
            3 => {
                api.delete(&format!("/v1/job/{JOB}")).await?;
            }
            _ => {}
        }
        for path in &paths {
            let resp = api.get(path).await?;
            check(path, &resp)?;
        }
    }
    // The jobs index moved with the registration and the stop.
    assert!(last["/v1/jobs"] > 1);
    nomad.stop().await;
    Ok(())
}

#[tokio::test]
async fn allocations_can_be_filtered() -> TestResult {
    let nomad = NomadEmulator::start(fast()).await?;
    let api = Api::new(&nomad);
    for id in ["web", "api"] {
        api.register(id, hippo_request(id, "a/1.0.0")).await?;
    }
    wait_healthy(&api, "web").await?;
    wait_healthy(&api, "api").await?;
    nomad.fail_allocations("worker", "boom");
    api.register("worker", hippo_request("worker", "a/1.0.0"))
        .await?;
    api.wait_for("/v1/job/worker/allocations", |a| {
        a[0]["ClientStatus"] == "failed"
    })
    .await?;

    let ids = |v: &Value| -> Vec<String> {
        let mut ids: Vec<String> = v
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a["JobID"].as_str().map(str::to_string))
            .collect();
        ids.sort();
        ids
    };
    let q = |f: &str| format!("/v1/allocations?filter={}", urlencode(f));
    assert_eq!(
        ids(&api.get(&q(r#"JobID == "web""#)).await?.json()),
        ["web"]
    );
    assert_eq!(
        ids(&api
            .get(&q(r#"JobID == "web" or JobID == "worker""#))
            .await?
            .json()),
        ["web", "worker"]
    );
    assert_eq!(
        ids(&api.get(&q(r#"ClientStatus == "running""#)).await?.json()),
        ["api", "web"]
    );
    assert_eq!(
        ids(&api
            .get(&q(r#"ClientStatus == "failed" and JobID == "worker""#))
            .await?
            .json()),
        ["worker"]
    );
    assert_eq!(
        ids(&api
            .get(&q(r#"DeploymentStatus.Healthy == true and JobID != "web""#))
            .await?
            .json()),
        ["api"]
    );
    assert!(ids(&api.get(&q(r#"JobID == "nope""#)).await?.json()).is_empty());

    let slim = api
        .get(&format!("{}&task_states=false", q(r#"JobID == "api""#)))
        .await?
        .json();
    assert_eq!(slim[0]["TaskStates"], Value::Null);
    assert_eq!(slim[0]["ClientStatus"], "running");

    let bad = api.get(&q(r#"JobID = "web""#)).await?;
    assert_eq!(bad.status, 400);
    assert!(
        bad.text.starts_with("failed to read filter expression"),
        "{}",
        bad.text
    );
    nomad.stop().await;
    Ok(())
}

#[tokio::test]
async fn failing_allocations_show_the_reason_and_fail_the_deployment() -> TestResult {
    let nomad = NomadEmulator::start(fast()).await?;
    let api = Api::new(&nomad);
    nomad.fail_allocations(
        JOB,
        "failed to launch command with executor: spin: not found",
    );
    api.register(JOB, hippo_request(JOB, "a/1.0.0")).await?;

    let allocs = api
        .wait_for(&format!("/v1/job/{JOB}/allocations"), |a| {
            a[0]["ClientStatus"] == "failed"
        })
        .await?;
    let a = &allocs[0];
    assert_eq!(a["DeploymentStatus"]["Healthy"], false);
    let spin = &a["TaskStates"]["spin"];
    assert_eq!(spin["State"], "dead");
    assert_eq!(spin["Failed"], true);
    let last = spin["Events"]
        .as_array()
        .and_then(|e| e.last())
        .cloned()
        .unwrap_or_default();
    assert_eq!(last["Type"], "Driver Failure");
    assert_eq!(
        last["DisplayMessage"],
        "failed to launch command with executor: spin: not found"
    );
    let d = api
        .wait_for(&format!("/v1/job/{JOB}/deployment"), |d| {
            d["Status"] == "failed"
        })
        .await?;
    assert_eq!(d["TaskGroups"][JOB]["UnhealthyAllocs"], 1);
    assert_eq!(
        d["StatusDescription"],
        "Failed due to unhealthy allocations"
    );
    let job = api.get(&format!("/v1/job/{JOB}")).await?.json();
    assert_eq!(job["Status"], "pending");
    assert_eq!(job["Stable"], false);
    let summary = api.get(&format!("/v1/job/{JOB}/summary")).await?.json();
    assert_eq!(summary["Summary"][JOB]["Failed"], 1);

    // A new version fails too while the failure lasts.
    api.register(JOB, hippo_request(JOB, "a/2.0.0")).await?;
    api.wait_for(&format!("/v1/job/{JOB}/deployment"), |d| {
        d["JobVersion"] == 1 && d["Status"] == "failed"
    })
    .await?;

    // Healing reschedules the failed allocation; the replacement runs.
    nomad.heal_allocations(JOB);
    let allocs = api
        .wait_for(&format!("/v1/job/{JOB}/allocations"), |a| {
            live(a).iter().any(|x| x["ClientStatus"] == "running")
        })
        .await?;
    let all = allocs.as_array().cloned().unwrap_or_default();
    let replaced = all
        .iter()
        .find(|x| x["JobVersion"] == 1 && x["ClientStatus"] == "failed")
        .cloned()
        .unwrap_or_default();
    assert_eq!(replaced["DesiredStatus"], "stop");
    assert_eq!(
        replaced["DesiredDescription"],
        "alloc was rescheduled because it failed"
    );
    let replacement = live(&allocs)[0].clone();
    assert_eq!(replaced["NextAllocation"], replacement["ID"]);
    assert_eq!(replacement["JobVersion"], 1);
    let job = api.get(&format!("/v1/job/{JOB}")).await?.json();
    assert_eq!(job["Status"], "running");
    nomad.stop().await;
    Ok(())
}

#[tokio::test]
async fn jobs_outside_the_node_datacenter_wait_in_a_blocked_evaluation() -> TestResult {
    let nomad = NomadEmulator::start(fast()).await?;
    let api = Api::new(&nomad);
    let mut body = hippo_request(JOB, "a/1.0.0");
    body["Job"]["Datacenters"] = json!(["eu-west-1"]);
    body["Job"]["Meta"] = json!({"channel": "prod"});
    api.register(JOB, body.clone()).await?;

    let job = api.get(&format!("/v1/job/{JOB}")).await?.json();
    assert_eq!(job["Status"], "pending");
    assert_eq!(
        api.get(&format!("/v1/job/{JOB}/allocations")).await?.text,
        "[]"
    );
    assert_eq!(
        api.get(&format!("/v1/job/{JOB}/deployment")).await?.text,
        "null"
    );
    let evals = api.get(&format!("/v1/job/{JOB}/evaluations")).await?.json();
    let statuses: Vec<&str> = evals
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["Status"].as_str())
        .collect();
    assert_eq!(statuses, ["blocked", "complete"]);
    assert!(evals[1]["FailedTGAllocs"][JOB].is_object());
    assert_eq!(evals[1]["BlockedEval"], evals[0]["ID"]);
    let summary = api.get(&format!("/v1/job/{JOB}/summary")).await?.json();
    assert_eq!(summary["Summary"][JOB]["Queued"], 1);
    // `meta=true` adds the job's Meta to the stubs.
    let stubs = api.get("/v1/jobs?meta=true").await?.json();
    assert_eq!(stubs[0]["Meta"], json!({"channel": "prod"}));

    // Globs match; the placement happens and the blocked evaluation is superseded.
    body["Job"]["Datacenters"] = json!(["dc*"]);
    api.register(JOB, body).await?;
    let allocs = wait_healthy(&api, JOB).await?;
    let evals = api.get(&format!("/v1/job/{JOB}/evaluations")).await?.json();
    assert!(evals
        .as_array()
        .into_iter()
        .flatten()
        .all(|e| e["Status"] != "blocked"));

    // Single-object reads.
    let alloc_id = live(&allocs)[0]["ID"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let alloc = api.get(&format!("/v1/allocation/{alloc_id}")).await?;
    assert_eq!(alloc.status, 200);
    assert_eq!(alloc.json()["Job"]["Version"], 1);
    assert_eq!(alloc.json()["ID"], alloc_id.as_str());
    let deployment = api.get(&format!("/v1/job/{JOB}/deployment")).await?.json();
    let by_id = api
        .get(&format!(
            "/v1/deployment/{}",
            deployment["ID"].as_str().unwrap_or_default()
        ))
        .await?;
    assert_eq!(by_id.json(), deployment);
    assert_eq!(api.get("/v1/allocation/nope").await?.status, 404);
    assert_eq!(
        api.get("/v1/jobs?region=mars").await?.text,
        "No path to region"
    );
    nomad.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_lost_job_vanishes_without_a_request() -> TestResult {
    let nomad = NomadEmulator::start(fast()).await?;
    let api = Api::new(&nomad);
    api.register(JOB, hippo_request(JOB, "a/1.0.0")).await?;
    wait_healthy(&api, JOB).await?;
    assert_eq!(nomad.jobs().len(), 1);
    assert_eq!(nomad.allocations().len(), 1);
    let before = api.get(&format!("/v1/job/{JOB}")).await?.index.unwrap_or(0);
    let requests = nomad.requests().len();

    nomad.lose_job(JOB);
    assert_eq!(nomad.requests().len(), requests);
    assert!(nomad.jobs().is_empty());
    assert!(nomad.allocations().is_empty());
    // A blocked read of the job wakes up and finds it gone.
    let gone = api
        .get(&format!("/v1/job/{JOB}?index={before}&wait=10s"))
        .await?;
    assert_eq!((gone.status, gone.text.as_str()), (404, "job not found"));
    assert!(gone.index > Some(before));
    assert_eq!(
        api.get(&format!("/v1/job/{JOB}/allocations")).await?.text,
        "[]"
    );
    assert_eq!(api.get("/v1/jobs").await?.text, "[]");
    nomad.stop().await;
    Ok(())
}

#[tokio::test]
async fn delete_stops_the_job_and_purge_removes_it() -> TestResult {
    let nomad = NomadEmulator::start(fast()).await?;
    let api = Api::new(&nomad);
    let reg = api.register(JOB, hippo_request(JOB, "a/1.0.0")).await?;
    wait_healthy(&api, JOB).await?;

    let stop = api.delete(&format!("/v1/job/{JOB}")).await?;
    assert_eq!(stop.status, 200, "{}", stop.text);
    let out = stop.json();
    assert_eq!(out["EvalID"].as_str().map(str::len), Some(36));
    assert!(out["JobModifyIndex"].as_u64() > reg["JobModifyIndex"].as_u64());
    let job = api.get(&format!("/v1/job/{JOB}")).await?.json();
    assert_eq!(job["Stop"], true);
    assert_eq!(job["Status"], "dead");
    assert_eq!(job["Version"], 1, "stopping is a new version");
    let allocs = api.get(&format!("/v1/job/{JOB}/allocations")).await?.json();
    assert_eq!(allocs[0]["DesiredStatus"], "stop");
    assert_eq!(allocs[0]["ClientStatus"], "complete");
    assert_eq!(
        allocs[0]["DesiredDescription"],
        "alloc not needed due to job update"
    );
    let stub = api.get("/v1/jobs").await?.json();
    assert_eq!(stub[0]["Status"], "dead");
    assert_eq!(stub[0]["Stop"], true);
    // Stopping again changes nothing but records an evaluation.
    assert_eq!(api.delete(&format!("/v1/job/{JOB}")).await?.status, 200);
    assert_eq!(
        api.get(&format!("/v1/job/{JOB}")).await?.json()["Version"],
        1
    );

    // Registering again restarts it as a new version.
    api.register(JOB, hippo_request(JOB, "a/1.0.0")).await?;
    let allocs = wait_healthy(&api, JOB).await?;
    assert_eq!(live(&allocs)[0]["JobVersion"], 2);
    assert_eq!(
        api.get(&format!("/v1/job/{JOB}")).await?.json()["Stop"],
        false
    );

    let purge = api.delete(&format!("/v1/job/{JOB}?purge=true")).await?;
    assert_eq!(purge.status, 200);
    assert_eq!(api.get(&format!("/v1/job/{JOB}")).await?.status, 404);
    assert_eq!(
        api.get(&format!("/v1/job/{JOB}/allocations")).await?.text,
        "[]"
    );
    assert_eq!(api.get("/v1/jobs").await?.text, "[]");
    nomad.stop().await;
    Ok(())
}

#[tokio::test]
async fn enforce_index_is_a_check_and_set() -> TestResult {
    let nomad = NomadEmulator::start(fast()).await?;
    let api = Api::new(&nomad);
    let mut body = hippo_request(JOB, "a/1.0.0");
    body["EnforceIndex"] = json!(true);
    body["JobModifyIndex"] = json!(0);
    let created = api.register(JOB, body.clone()).await?;

    let again = api.post(&format!("/v1/job/{JOB}"), body.clone()).await?;
    assert_eq!(again.status, 500);
    assert_eq!(
        again.text,
        "Enforcing job modify index 0: job already exists"
    );

    let current = created["JobModifyIndex"].as_u64().unwrap_or(0);
    body["JobModifyIndex"] = json!(current + 100);
    body["Job"]["TaskGroups"][0]["Tasks"][0]["Env"]["RUST_LOG"] = json!("debug");
    let stale = api.post(&format!("/v1/job/{JOB}"), body.clone()).await?;
    assert_eq!(stale.status, 500);
    assert_eq!(stale.content_type, "text/plain; charset=utf-8");
    assert_eq!(
        stale.text,
        format!(
            "Enforcing job modify index {}: job exists with conflicting job modify index: {current}",
            current + 100
        )
    );
    assert_eq!(
        api.get(&format!("/v1/job/{JOB}")).await?.json()["Version"],
        0
    );

    body["JobModifyIndex"] = json!(current);
    let ok = api.register(JOB, body.clone()).await?;
    assert!(ok["JobModifyIndex"].as_u64() > Some(current));
    assert_eq!(
        api.get(&format!("/v1/job/{JOB}")).await?.json()["Version"],
        1
    );

    body["Job"]["ID"] = json!("fresh");
    body["JobModifyIndex"] = json!(5);
    let absent = api.post("/v1/jobs", body).await?;
    assert_eq!(
        (absent.status, absent.text.as_str()),
        (500, "Enforcing job modify index 5: job does not exist")
    );
    nomad.stop().await;
    Ok(())
}

#[tokio::test]
async fn acl_token_is_required_when_configured() -> TestResult {
    let nomad = NomadEmulator::start(NomadEmulatorConfig {
        acl_token: Some("s3cr3t".into()),
        ..fast()
    })
    .await?;
    let mut api = Api::new(&nomad);
    let denied = api.get("/v1/jobs").await?;
    assert_eq!(
        (
            denied.status,
            denied.text.as_str(),
            denied.content_type.as_str()
        ),
        (403, "Permission denied", "text/plain; charset=utf-8")
    );
    let denied = api
        .post(&format!("/v1/job/{JOB}"), hippo_request(JOB, "a/1.0.0"))
        .await?;
    assert_eq!(denied.status, 403);
    assert!(nomad.jobs().is_empty());
    // The status endpoints are open, as in Nomad.
    assert_eq!(api.get("/v1/status/leader").await?.status, 200);

    api.token = Some("wrong".into());
    let wrong = api.get("/v1/jobs").await?;
    assert_eq!(
        (wrong.status, wrong.text.as_str()),
        (403, "ACL token not found")
    );

    api.token = Some("s3cr3t".into());
    assert_eq!(api.get("/v1/jobs").await?.status, 200);
    api.register(JOB, hippo_request(JOB, "a/1.0.0")).await?;
    let bearer = reqwest::Client::new()
        .get(format!("{}/v1/job/{JOB}", nomad.url()))
        .bearer_auth("s3cr3t")
        .send()
        .await?;
    assert_eq!(bearer.status().as_u16(), 200);
    nomad.stop().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Variables
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn variables_support_check_and_set() -> TestResult {
    let nomad = NomadEmulator::start(fast()).await?;
    let api = Api::new(&nomad);
    let missing = api.get("/v1/var/app/config").await?;
    assert_eq!(
        (missing.status, missing.text.as_str()),
        (404, "variable not found")
    );
    let no_items = api.put("/v1/var/app/config", json!({"Items": {}})).await?;
    assert_eq!(
        (no_items.status, no_items.text.as_str()),
        (400, "variable missing required Items object")
    );

    let created = api
        .put("/v1/var/app/config?cas=0", json!({"Items": {"a": "1"}}))
        .await?;
    assert_eq!(created.status, 200, "{}", created.text);
    let v = created.json();
    assert_eq!(v["Items"], json!({"a": "1"}));
    assert_eq!(v["Path"], "app/config");
    assert_eq!(v["Namespace"], "default");
    assert_eq!(created.index, v["ModifyIndex"].as_u64());
    let modify = v["ModifyIndex"].as_u64().unwrap_or(0);

    let again = api
        .put("/v1/var/app/config?cas=0", json!({"Items": {"a": "2"}}))
        .await?;
    assert_eq!(again.status, 409);
    assert_eq!(again.json()["Items"], json!({"a": "1"}));
    let stale = api
        .put(
            &format!("/v1/var/app/config?cas={}", modify + 7),
            json!({"Items": {"a": "2"}}),
        )
        .await?;
    assert_eq!(stale.status, 409);
    assert_eq!(stale.json()["ModifyIndex"], modify);
    let updated = api
        .put(
            &format!("/v1/var/app/config?cas={modify}"),
            json!({"Items": {"a": "2"}}),
        )
        .await?;
    assert_eq!(updated.status, 200);
    assert_eq!(
        api.get("/v1/var/app/config").await?.json()["Items"]["a"],
        "2"
    );
    let list = api.get("/v1/vars?prefix=app").await?.json();
    assert_eq!(list[0]["Path"], "app/config");
    assert!(list[0].get("Items").is_none(), "the list has metadata only");

    let deleted = api.delete("/v1/var/app/config").await?;
    assert_eq!(deleted.status, 204);
    assert!(deleted.text.is_empty());
    assert_eq!(api.get("/v1/var/app/config").await?.status, 404);
    nomad.stop().await;
    Ok(())
}

#[tokio::test]
async fn variable_locks_acquire_conflict_renew_release_and_expire() -> TestResult {
    let nomad = NomadEmulator::start(NomadEmulatorConfig {
        min_lock_ttl: Duration::from_millis(50),
        ..fast()
    })
    .await?;
    let api = Api::new(&nomad);
    let path = "/v1/var/leader";
    let lock_body = |ttl: &str, delay: &str| {
        json!({"Namespace": "default", "Path": "leader", "Items": {"holder": "a"},
               "Lock": {"TTL": ttl, "LockDelay": delay}})
    };

    let too_short = api
        .put(&format!("{path}?lock-acquire"), lock_body("10ms", "0s"))
        .await?;
    assert_eq!(too_short.status, 400);
    assert!(
        too_short.text.contains("TTL must be between"),
        "{}",
        too_short.text
    );
    let too_long = api
        .put(&format!("{path}?lock-acquire"), lock_body("25h", "0s"))
        .await?;
    assert_eq!(too_long.status, 400);
    let both = api
        .put(
            &format!("{path}?lock-acquire&lock-release"),
            lock_body("1s", "0s"),
        )
        .await?;
    assert_eq!(
        (both.status, both.text.as_str()),
        (400, "multiple lock operations")
    );

    // A long TTL first, so that a slow machine cannot expire it mid-test.
    let acquired = api
        .put(&format!("{path}?lock-acquire"), lock_body("2s", "100ms"))
        .await?;
    assert_eq!(acquired.status, 200, "{}", acquired.text);
    let held = acquired.json();
    assert_eq!(held["Lock"]["TTL"], "2s");
    assert_eq!(held["Lock"]["LockDelay"], "100ms");
    assert_eq!(held["Items"]["holder"], "a");
    let lock_id = held["Lock"]["ID"].as_str().unwrap_or_default().to_string();
    assert_eq!(lock_id.len(), 36);

    let other = api
        .put(&format!("{path}?lock-acquire"), lock_body("2s", "100ms"))
        .await?;
    assert_eq!(other.status, 409);
    assert!(other.content_type.starts_with("application/json"));
    assert_eq!(
        other.json(),
        json!({"CreateIndex": 0, "CreateTime": 0, "Items": null, "Lock": null,
               "ModifyIndex": 0, "ModifyTime": 0, "Namespace": "default", "Path": "leader"})
    );
    // Writing a locked variable needs the lock ID.
    let overwrite = api.put(path, json!({"Items": {"holder": "b"}})).await?;
    assert_eq!(overwrite.status, 409);

    let renew = |id: &str| json!({"Path": "leader", "Namespace": "default", "Lock": {"ID": id}});
    let renewed = api
        .put(&format!("{path}?lock-renew"), renew(&lock_id))
        .await?;
    assert_eq!(renewed.status, 200, "{}", renewed.text);
    assert_eq!(renewed.json()["Lock"]["ID"], lock_id.as_str());
    assert!(renewed.json().get("Items").is_none());
    let wrong = api
        .put(
            &format!("{path}?lock-renew"),
            renew("00000000-0000-0000-0000-000000000000"),
        )
        .await?;
    assert_eq!(
        (wrong.status, wrong.text.as_str()),
        (409, "attempting to modify locked variable")
    );

    let released = api
        .put(&format!("{path}?lock-release"), renew(&lock_id))
        .await?;
    assert_eq!(released.status, 200, "{}", released.text);
    assert_eq!(released.json()["Lock"], Value::Null);
    let after = api.get(path).await?.json();
    assert_eq!(after["Lock"], Value::Null);
    assert_eq!(after["Items"]["holder"], "a", "release keeps the items");
    let renew_free = api
        .put(&format!("{path}?lock-renew"), renew(&lock_id))
        .await?;
    assert_eq!(
        (renew_free.status, renew_free.text.as_str()),
        (409, "variable doesn't hold a lock")
    );

    // Expiry: nobody renews a 200ms lock; it is freed after 2×TTL + LockDelay = 500ms.
    let acquired = api
        .put(&format!("{path}?lock-acquire"), lock_body("200ms", "100ms"))
        .await?;
    assert_eq!(acquired.status, 200, "{}", acquired.text);
    let lock_id = acquired.json()["Lock"]["ID"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let acquired_again_at = Instant::now();
    let freed = api.wait_for(path, |v| v["Lock"].is_null()).await?;
    let waited = acquired_again_at.elapsed();
    assert!(waited >= Duration::from_millis(450), "{waited:?}");
    assert_eq!(freed["Items"]["holder"], "a");
    let late = api
        .put(&format!("{path}?lock-renew"), renew(&lock_id))
        .await?;
    assert_eq!(late.status, 409);
    let next = api
        .put(&format!("{path}?lock-acquire"), lock_body("10s", "1s"))
        .await?;
    assert_eq!(next.status, 200, "{}", next.text);
    assert_ne!(next.json()["Lock"]["ID"], lock_id.as_str());
    assert_eq!(next.json()["Lock"]["TTL"], "10s");
    nomad.stop().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Hippo scheduler
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

    /// Pushes `name/version` laid out like `spin deploy` does: a Spin manifest parcel with
    /// one HTTP component and its wasm parcel.
    async fn push(&self, name: &str, version: &str) -> TestResult {
        let wasm = format!("(module) ;; {name} {version}").into_bytes();
        let wasm_sha = sha256(&wasm);
        let manifest = format!(
            "trigger = {{ type = \"http\", base = \"/\" }}\n\
             [[component]]\nid = \"hello\"\nsource = \"{wasm_sha}\"\n\
             [component.trigger]\nroute = \"/...\"\n"
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
            description: None,
            authors: None,
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
        let data = BTreeMap::from([(manifest_sha, manifest), (wasm_sha, wasm)]);
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

/// A logged-in Hippo client.
struct Hippo {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Hippo {
    async fn login(emu: &HippoEmulator) -> Result<Self, Box<dyn std::error::Error>> {
        let http = reqwest::Client::new();
        let resp: Value = http
            .post(format!("{}/api/auth-tokens", emu.url()))
            .json(&json!({"userName": "admin", "password": "password"}))
            .send()
            .await?
            .json()
            .await?;
        let token = resp["token"].as_str().ok_or("no token")?.to_string();
        Ok(Hippo {
            http,
            base: emu.url(),
            token,
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> reqwest::Result<(u16, Value)> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }
}

#[tokio::test]
async fn hippo_scheduler_registers_jobs_the_way_hippo_does() -> TestResult {
    let bindle = Bindle::start().await?;
    bindle.push("weather", "1.0.0").await?;
    bindle.push("weather", "1.1.0").await?;
    let nomad = NomadEmulator::start(fast()).await?;
    let api = Api::new(&nomad);
    let scheduler = nomad.hippo_scheduler(HippoJobSettings {
        bindle_url: bindle.server.url(),
        driver: "raw_exec".to_string(),
        datacenters: vec!["dc1".to_string()],
    });
    let hippo = HippoEmulator::start_with_scheduler(
        HippoEmulatorConfig {
            bindle_url: bindle.server.url(),
            version: HippoVersion::V0_20,
            ..Default::default()
        },
        scheduler,
    )
    .await?;
    let h = Hippo::login(&hippo).await?;

    let (status, app) = h
        .call(
            Method::POST,
            "/api/apps",
            Some(json!({"name": "weather", "storageId": "weather"})),
        )
        .await?;
    assert_eq!(status, 200, "{app}");
    let (_, revisions) = h.call(Method::GET, "/api/revisions", None).await?;
    let rev = |n: &str| {
        revisions["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["revisionNumber"] == n)
            .map(|r| r["id"].clone())
            .unwrap_or_default()
    };
    let (r1, r2) = (rev("1.0.0"), rev("1.1.0"));
    let (status, channel) = h
        .call(
            Method::POST,
            "/api/channels",
            Some(json!({"appId": app, "name": "prod", "revisionSelectionStrategy": "UseSpecifiedRevision", "activeRevisionId": r1})),
        )
        .await?;
    assert_eq!(status, 200, "{channel}");
    let id = channel.as_str().ok_or("channel id")?.to_string();
    let channel_path = format!("/api/channels/{id}");

    // An env var: Hippo starts the job again with it, then drops it from the task.
    let (status, _) = h
        .call(
            Method::PATCH,
            &channel_path,
            Some(json!({"environmentVariables": [{"key": "GREETING", "value": "hello"}]})),
        )
        .await?;
    assert_eq!(status, 204);

    let job = api.get(&format!("/v1/job/{id}")).await?.json();
    assert_eq!(job["ID"], id.as_str());
    assert_eq!(job["Name"], id.as_str());
    assert_eq!(job["Type"], "service");
    assert_eq!(job["Datacenters"], json!(["dc1"]));
    assert_eq!(job["Version"], 0, "the env var does not reach the job spec");
    let tg = &job["TaskGroups"][0];
    assert_eq!(tg["Name"], id.as_str());
    assert_eq!(tg["Networks"][0]["DynamicPorts"][0]["Label"], "http");
    let svc = &tg["Services"][0];
    assert_eq!(svc["Name"], id.as_str());
    assert_eq!(svc["PortLabel"], "http");
    assert_eq!(svc["Provider"], "nomad");
    assert_eq!(
        svc["Tags"],
        json!([
            "traefik.enable=true",
            format!("traefik.http.routers.{id}.rule=Host(`weather.hippofactory.io`)")
        ])
    );
    let task = &tg["Tasks"][0];
    assert_eq!(task["Name"], "spin");
    assert_eq!(task["Driver"], "raw_exec");
    assert_eq!(
        task["Config"],
        json!({"command": "spin", "args": ["up", "--listen", "${NOMAD_ADDR_http}", "--bindle", "weather/1.0.0"]})
    );
    assert_eq!(
        task["Env"],
        json!({"RUST_LOG": "warn,spin=debug", "BINDLE_URL": bindle.server.url(), "SPIN_LOG_DIR": "local/log"})
    );
    assert!(task["Env"].get("GREETING").is_none());
    wait_healthy(&api, &id).await?;
    // Scheduler calls are not HTTP requests.
    assert_eq!(nomad.writes(), 0);

    // PATCH of the active revision: Hippo does not touch the job.
    let (status, _) = h
        .call(
            Method::PATCH,
            &channel_path,
            Some(json!({"activeRevisionId": r2})),
        )
        .await?;
    assert_eq!(status, 204);
    let job = api.get(&format!("/v1/job/{id}")).await?.json();
    assert_eq!(job["Version"], 0);
    assert_eq!(
        job["TaskGroups"][0]["Tasks"][0]["Config"]["args"][4],
        "weather/1.0.0"
    );

    // PUT does: version 1 runs the new bindle.
    let (status, body) = h
        .call(
            Method::PUT,
            &channel_path,
            Some(json!({"id": id, "name": "prod", "domain": "weather.hippofactory.io",
                        "revisionSelectionStrategy": "UseSpecifiedRevision", "activeRevisionId": r2})),
        )
        .await?;
    assert_eq!(status, 204, "{body}");
    let job = api.get(&format!("/v1/job/{id}")).await?.json();
    assert_eq!(job["Version"], 1);
    assert_eq!(
        job["TaskGroups"][0]["Tasks"][0]["Config"]["args"][4],
        "weather/1.1.0"
    );
    let allocs = wait_healthy(&api, &id).await?;
    assert_eq!(live(&allocs)[0]["JobVersion"], 1);

    // Deleting the channel stops the job (no purge).
    let (status, _) = h.call(Method::DELETE, &channel_path, None).await?;
    assert_eq!(status, 204);
    let job = api.get(&format!("/v1/job/{id}")).await?.json();
    assert_eq!(job["Stop"], true);
    assert_eq!(job["Status"], "dead");
    let allocs = api.get(&format!("/v1/job/{id}/allocations")).await?.json();
    assert!(live(&allocs).is_empty());
    assert_eq!(nomad.writes(), 0);

    hippo.stop().await;
    nomad.stop().await;
    Ok(())
}

#[test]
fn hippo_register_request_matches_the_sample_shape() {
    let job = hippo_gitops_emulators::hippo::ScheduledJob {
        channel_id: JOB.parse().unwrap_or_default(),
        bindle_id: "contoso/weather/1.4.0".into(),
        env: BTreeMap::from([("IGNORED".to_string(), "x".to_string())]),
        domain: "weather.hippofactory.io".into(),
    };
    let body = HippoJobSettings {
        bindle_url: "http://127.0.0.1:8080/v1".into(),
        datacenters: vec!["dc1".into()],
        ..Default::default()
    }
    .register_request(&job);
    let mut want: Value = serde_json::from_str(REGISTER_SAMPLE).unwrap_or(Value::Null);
    // The sample was made with Consul, an entrypoint and a cert resolver; the emulator's
    // Hippo uses the Nomad provider (no check) and no Traefik options.
    let svc = &mut want["Job"]["TaskGroups"][0]["Services"][0];
    svc["Provider"] = json!("nomad");
    if let Some(o) = svc.as_object_mut() {
        o.remove("Checks");
    }
    svc["Tags"] = json!([
        "traefik.enable=true",
        format!("traefik.http.routers.{JOB}.rule=Host(`weather.hippofactory.io`)")
    ]);
    assert_eq!(body, want);
}

// ---------------------------------------------------------------------------------------
// Persistence
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn state_file_survives_a_restart_and_pending_allocations_resume() -> TestResult {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("nomad-state.json");

    // First life: one healthy job, one variable, and a job whose allocation is still pending
    // (its start delay is far away) when the emulator stops.
    let nomad = NomadEmulator::start(NomadEmulatorConfig {
        state_file: Some(file.clone()),
        ..fast()
    })
    .await?;
    let api = Api::new(&nomad);
    api.register(JOB, hippo_request(JOB, "a/1.0.0")).await?;
    wait_healthy(&api, JOB).await?;
    api.put("/v1/var/app/config", json!({"Items": {"a": "1"}}))
        .await?;
    let index_before = api.get("/v1/jobs").await?.index.unwrap_or(0);
    nomad.stop().await;
    assert!(file.exists());

    let nomad = NomadEmulator::start(NomadEmulatorConfig {
        state_file: Some(file.clone()),
        alloc_start_delay: Duration::from_secs(3600),
        ..fast()
    })
    .await?;
    let api = Api::new(&nomad);
    let job = api.get(&format!("/v1/job/{JOB}")).await?;
    assert_eq!(job.status, 200);
    assert_eq!(job.json()["Stable"], true);
    assert_eq!(
        api.get("/v1/var/app/config").await?.json()["Items"]["a"],
        "1"
    );
    let allocs = api.get(&format!("/v1/job/{JOB}/allocations")).await?.json();
    assert!(healthy(&allocs[0]));
    api.register("later", hippo_request("later", "b/1.0.0"))
        .await?;
    let pending = api.get("/v1/job/later/allocations").await?;
    assert_eq!(pending.json()[0]["ClientStatus"], "pending");
    assert!(pending.index > Some(index_before), "the index continues");
    nomad.stop().await;

    // Third life, with a short delay: the pending allocation starts.
    let nomad = NomadEmulator::start(NomadEmulatorConfig {
        state_file: Some(file.clone()),
        ..fast()
    })
    .await?;
    let api = Api::new(&nomad);
    let allocs = wait_healthy(&api, "later").await?;
    assert_eq!(live(&allocs).len(), 1);
    assert_eq!(nomad.jobs().len(), 2);
    nomad.stop().await;
    Ok(())
}

/// Fast allocations, a state file written at most once per `interval`.
fn saving_to(file: &std::path::Path, interval: Duration) -> NomadEmulatorConfig {
    NomadEmulatorConfig {
        state_file: Some(file.to_path_buf()),
        state_write_interval: interval,
        ..fast()
    }
}

/// A burst of changes is one write of the state file, not one per change: with an interval
/// longer than the test, the file is written when the emulator starts and when it stops, and
/// the last write holds every change.
#[tokio::test]
async fn state_file_writes_are_coalesced_and_stop_writes_the_last_state() -> TestResult {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("nomad-state.json");
    let nomad = NomadEmulator::start(saving_to(&file, Duration::from_secs(3600))).await?;
    let writes = nomad.state_file_writes();
    let api = Api::new(&nomad);
    let ids: Vec<String> = (0..40).map(|i| format!("job-{i}")).collect();
    for id in &ids {
        api.register(id, hippo_request(id, "a/1.0.0")).await?;
    }
    api.put("/v1/var/app/config", json!({"Items": {"a": "1"}}))
        .await?;
    assert_eq!(*writes.borrow(), 1, "only the write at start so far");
    nomad.stop().await;
    assert_eq!(*writes.borrow(), 2, "one more write, when stopping");

    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&file)?)?;
    let jobs = saved["jobs"]["default"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    assert_eq!(jobs.len(), ids.len());
    assert!(ids.iter().all(|id| jobs.contains_key(id)));
    assert_eq!(
        saved["variables"]["default"]["app/config"]["items"]["a"],
        "1"
    );
    Ok(())
}

/// Without a stop, a change reaches the file within the interval; dropping the emulator
/// writes what is still pending.
#[tokio::test]
async fn state_file_follows_changes_and_a_drop_writes_the_rest() -> TestResult {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("nomad-state.json");
    let saved_jobs = || -> Result<Vec<String>, Box<dyn std::error::Error>> {
        let saved: Value = serde_json::from_str(&std::fs::read_to_string(&file)?)?;
        Ok(saved["jobs"]["default"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default())
    };

    let nomad = NomadEmulator::start(saving_to(&file, Duration::from_millis(10))).await?;
    let mut writes = nomad.state_file_writes();
    let api = Api::new(&nomad);
    api.register(JOB, hippo_request(JOB, "a/1.0.0")).await?;
    tokio::time::timeout(Duration::from_secs(10), writes.wait_for(|n| *n >= 2)).await??;
    assert_eq!(saved_jobs()?, [JOB]);
    drop(nomad);

    // Now an interval longer than the test: only the drop writes the second job.
    let nomad = NomadEmulator::start(saving_to(&file, Duration::from_secs(3600))).await?;
    let writes = nomad.state_file_writes();
    let api = Api::new(&nomad);
    api.register("later", hippo_request("later", "b/1.0.0"))
        .await?;
    assert_eq!(saved_jobs()?, [JOB]);
    drop(nomad);
    assert_eq!(*writes.borrow(), 2);
    assert_eq!(saved_jobs()?, [JOB.to_string(), "later".to_string()]);
    Ok(())
}

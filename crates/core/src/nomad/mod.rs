//! A thin Nomad HTTP client for what the controller reads and writes: jobs, allocations, and
//! (for leader election) variable locks.
//!
//! Why not `nomad-client-rs` (0.10.3), whose models cover jobs and allocations: every read here
//! needs what it discards or lacks — the `X-Nomad-Index` header and `index`/`wait` blocking
//! queries (its `send()` returns only the body), per-request timeouts (it sets none, so a hung
//! agent blocks forever), and `JobVersion` on a job's allocations (its `list_job_allocations`
//! drops it). Using it for models alone would still build its own reqwest 0.13 + rustls/aws-lc
//! stack (147 crates, 3 min 15 s cold release build on 2 cores, NOMAD-API.md §3.1) for six
//! structs; these are defined here with only the fields used, checked against Nomad's samples.
//!
//! Conventions handled (NOMAD-API.md §1.1): errors are `text/plain` bodies; a job's
//! allocations for an unknown job are `200 []`; the token goes in `X-Nomad-Token`; namespace and
//! region are query parameters.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use reqwest::{Method, StatusCode};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::{
    retry::{Attempt, RetryPolicy},
    secret::Secret,
    stats::RequestStats,
    transport::{Service, Transport, TransportError},
};

/// A job as listed by `GET /v1/jobs` (no `Version`, no task groups).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct JobStub {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub stop: bool,
    #[serde(default)]
    pub job_modify_index: u64,
    #[serde(default)]
    pub modify_index: u64,
}

/// A full job (`GET /v1/job/:id`), only the fields read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Job {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub stop: bool,
    #[serde(default)]
    pub version: u64,
    #[serde(default)]
    pub job_modify_index: u64,
    #[serde(default)]
    pub task_groups: Vec<TaskGroup>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskGroup {
    pub name: String,
    #[serde(default)]
    pub count: Option<u32>,
    #[serde(default)]
    pub tasks: Vec<Task>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Task {
    pub name: String,
    #[serde(default)]
    pub driver: String,
    #[serde(default)]
    pub config: Option<TaskConfig>,
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
}

/// A task's driver config: only `args` is read (Hippo's `spin up … --bindle <id>`). The
/// controller keeps a job per channel for as long as it runs, so the rest is not decoded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskConfig {
    /// Values, not strings: another driver's args may hold anything, and must still parse.
    #[serde(default)]
    pub args: Option<Vec<serde_json::Value>>,
}

impl Job {
    /// The task Hippo runs its app in (`spin`), or the first task.
    pub fn spin_task(&self) -> Option<&Task> {
        let tasks = || self.task_groups.iter().flat_map(|g| g.tasks.iter());
        tasks()
            .find(|t| t.name == "spin")
            .or_else(|| tasks().next())
    }

    /// The value after `--bindle` in the spin task's args: what the job runs.
    pub fn bindle_arg(&self) -> Option<String> {
        let args = self.spin_task()?.config.as_ref()?.args.as_ref()?;
        let i = args.iter().position(|a| a.as_str() == Some("--bindle"))?;
        args.get(i + 1)?.as_str().map(String::from)
    }

    /// Allocations the job wants in all.
    pub fn desired_count(&self) -> u32 {
        self.task_groups.iter().map(|g| g.count.unwrap_or(1)).sum()
    }
}

/// One kept version of a job (`GET /v1/job/:id/versions`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobVersion {
    pub version: u64,
    /// A deployment of this version succeeded.
    pub stable: bool,
    /// What it ran (the value after `--bindle`).
    pub bindle: Option<String>,
}

/// What the controller keeps of a job it manages, between reads: a few hundred bytes where
/// the decoded [`Job`] is kilobytes (a controller of 1000 apps keeps 3000 of them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFacts {
    pub id: String,
    pub version: u64,
    pub job_modify_index: u64,
    /// Allocations the job wants in all.
    pub desired_count: u32,
    /// The value after `--bindle` in the spin task's args: what the job runs.
    pub bindle: Option<String>,
    /// The spin task's `Env`, sorted by name; `None` when the job has no such task.
    pub env: Option<Vec<(String, String)>>,
}

impl JobFacts {
    /// What the job runs (the value after `--bindle`).
    pub fn bindle_arg(&self) -> Option<&str> {
        self.bindle.as_deref()
    }

    /// The spin task's environment variable `key`.
    pub fn env_var(&self, key: &str) -> Option<&str> {
        let env = self.env.as_ref()?;
        env.binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .map(|i| env[i].1.as_str())
    }
}

impl From<Job> for JobFacts {
    fn from(job: Job) -> Self {
        let bindle = job.bindle_arg();
        let desired_count = job.desired_count();
        let env = job
            .spin_task()
            .map(|t| t.env.clone().unwrap_or_default().into_iter().collect());
        JobFacts {
            id: job.id,
            version: job.version,
            job_modify_index: job.job_modify_index,
            desired_count,
            bindle,
            env,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AllocDeploymentStatus {
    /// `null` until the deployment decided.
    #[serde(default)]
    pub healthy: Option<bool>,
    /// When the deployment decided, in Unix milliseconds (Nomad sends RFC 3339 with
    /// nanoseconds; its zero time, before a decision, reads as `None`). Promotion's clock:
    /// Nomad's own, so a controller restart does not reset it.
    #[serde(default, deserialize_with = "rfc3339_millis", skip_serializing)]
    pub timestamp: Option<i64>,
}

fn rfc3339_millis<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Ok(Option::<String>::deserialize(d)?
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(&s).ok())
        .map(|t| t.timestamp_millis())
        .filter(|ms| *ms > 0))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskEvent {
    #[serde(rename = "Type", default)]
    pub kind: String,
    #[serde(default)]
    pub display_message: String,
    #[serde(default)]
    pub time: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskState {
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub failed: bool,
    /// The newest [`KEPT_EVENTS`] only (Nomad keeps up to 10 per task): they are what a failure
    /// is reported with, and every allocation in the list carries them.
    #[serde(default, deserialize_with = "newest_events")]
    pub events: Option<Vec<TaskEvent>>,
}

/// Task events kept per task state.
pub const KEPT_EVENTS: usize = 3;

fn newest_events<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<TaskEvent>>, D::Error> {
    Ok(Option::<Vec<TaskEvent>>::deserialize(d)?.map(|mut events| {
        // By time: Nomad appends in order, but nothing promises it.
        events.sort_by_key(|e| e.time);
        events.split_off(events.len().saturating_sub(KEPT_EVENTS))
    }))
}

/// An allocation as listed (`GET /v1/allocations`), only the fields read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Allocation {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "JobID")]
    pub job_id: String,
    #[serde(default)]
    pub job_version: u64,
    #[serde(default)]
    pub desired_status: String,
    #[serde(default)]
    pub client_status: String,
    #[serde(default)]
    pub client_description: String,
    #[serde(default)]
    pub deployment_status: Option<AllocDeploymentStatus>,
    /// The task states, without the task names (only whether any failed and their events are
    /// read): a map per allocation would cost a tree node each, for one entry.
    #[serde(default, deserialize_with = "task_state_values")]
    pub task_states: Option<Vec<TaskState>>,
    #[serde(default)]
    pub create_index: u64,
    /// Raised by every change to the allocation: the controller's watch tells from it which
    /// jobs' allocations moved since the index it blocked on.
    #[serde(default)]
    pub modify_index: u64,
}

fn task_state_values<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<TaskState>>, D::Error> {
    Ok(Option::<BTreeMap<String, TaskState>>::deserialize(d)?
        .map(|states| states.into_values().collect()))
}

impl Allocation {
    /// Running, and judged healthy by its deployment (`DeploymentStatus.Healthy == true`).
    /// Hippo's jobs are service jobs with Nomad's default update strategy, so every version
    /// gets a deployment that judges its allocations (AUDIT.md #5).
    pub fn is_healthy(&self) -> bool {
        self.desired_status == "run"
            && self.client_status == "running"
            && self.deployment_health() == Some(true)
    }

    /// Running, not judged yet (`Healthy` null): Nomad is still inside `min_healthy_time`, and
    /// may yet mark it unhealthy. Not healthy, not failed: still rolling out. (The allocation
    /// list carries no deployment ID, so one that no deployment will ever judge, e.g. placed
    /// after its version's deployment ended, looks the same.)
    pub fn is_health_undecided(&self) -> bool {
        self.desired_status == "run"
            && self.client_status == "running"
            && self.deployment_health().is_none()
    }

    /// When the deployment judged it healthy (Unix ms), if it did.
    pub fn healthy_since(&self) -> Option<i64> {
        self.deployment_status
            .as_ref()
            .filter(|d| d.healthy == Some(true))
            .and_then(|d| d.timestamp)
    }

    /// `DeploymentStatus.Healthy`: `None` until the deployment decided.
    pub fn deployment_health(&self) -> Option<bool> {
        self.deployment_status.as_ref().and_then(|d| d.healthy)
    }

    /// Failed for good: the client gave up, or a deployment marked it unhealthy.
    pub fn is_failed(&self) -> bool {
        matches!(self.client_status.as_str(), "failed" | "lost")
            || self.deployment_health() == Some(false)
            || self.task_states.iter().flatten().any(|t| t.failed)
    }

    /// The task's last events, newest last, as Nomad displays them (why it failed).
    pub fn last_events(&self, n: usize) -> Vec<String> {
        let mut events: Vec<&TaskEvent> = self
            .task_states
            .iter()
            .flatten()
            .flat_map(|s| s.events.iter().flatten())
            .collect();
        events.sort_by_key(|e| e.time);
        events
            .iter()
            .rev()
            .take(n)
            .rev()
            .map(|e| {
                if e.display_message.is_empty() {
                    e.kind.clone()
                } else {
                    format!("{}: {}", e.kind, e.display_message)
                }
            })
            .collect()
    }
}

/// Every job as listed, by id: a sorted list with a map's lookups, as a controller keeps it
/// between cycles (30,000 jobs at 10,000 apps), where a map keyed by id held each id twice and
/// a tree node per few jobs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobStubs(Vec<JobStub>);

impl JobStubs {
    pub fn get(&self, id: &str) -> Option<&JobStub> {
        self.find(id).ok().map(|i| &self.0[i])
    }

    pub fn contains_key(&self, id: &str) -> bool {
        self.find(id).is_ok()
    }

    /// Adds a job, replacing one listed under the same id; `id` must be `stub.id`.
    pub fn insert(&mut self, id: String, stub: JobStub) {
        debug_assert_eq!(id, stub.id);
        match self.find(&id) {
            Ok(i) => self.0[i] = stub,
            Err(i) => self.0.insert(i, stub),
        }
    }

    pub fn remove(&mut self, id: &str) -> Option<JobStub> {
        self.find(id).ok().map(|i| self.0.remove(i))
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }

    /// The ids, in order.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|j| &j.id)
    }

    /// The jobs, by id.
    pub fn values(&self) -> impl Iterator<Item = &JobStub> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn find(&self, id: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|j| j.id.as_str().cmp(id))
    }
}

/// Nomad lists jobs by id already; sorted (and deduplicated, the last kept) all the same.
impl From<Vec<JobStub>> for JobStubs {
    fn from(mut list: Vec<JobStub>) -> Self {
        list.sort_by(|a, b| a.id.cmp(&b.id));
        list.reverse();
        list.dedup_by(|later, earlier| later.id == earlier.id);
        list.reverse();
        list.shrink_to_fit();
        JobStubs(list)
    }
}

/// Allocations grouped by job id: health is looked up per channel, and scanning every
/// allocation for each job would cost jobs × allocations per observation. One list sorted by
/// job id (a binary search finds a job's run), since a controller keeps it between cycles
/// (30,000 allocations at 10,000 apps): a map from job id to a list of its own held a copy of
/// every job id, a node per few jobs and a list per job besides the allocations themselves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allocations {
    /// Sorted by `job_id`; each job's allocations in the order Nomad listed them.
    by_job: Vec<Allocation>,
}

impl Allocations {
    /// The allocations of one job, in the order Nomad listed them.
    pub fn of(&self, job_id: &str) -> &[Allocation] {
        let start = self.by_job.partition_point(|a| a.job_id.as_str() < job_id);
        let len = self.by_job[start..].partition_point(|a| a.job_id == job_id);
        &self.by_job[start..start + len]
    }

    /// Each job with its allocations, by job id.
    pub fn jobs(&self) -> impl Iterator<Item = (&str, &[Allocation])> {
        self.by_job
            .chunk_by(|a, b| a.job_id == b.job_id)
            .map(|run| (run[0].job_id.as_str(), run))
    }

    pub fn len(&self) -> usize {
        self.by_job.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_job.is_empty()
    }
}

/// Compact, as a controller keeps the list between cycles: no spare capacity, and an
/// allocation that has not failed keeps no task events or client description, which only a
/// failure is reported with ([`Allocation::last_events`]). A change to an allocation moves
/// Nomad's index, so the list is decoded again, events and all, before one that failed is
/// looked at.
impl From<Vec<Allocation>> for Allocations {
    fn from(mut list: Vec<Allocation>) -> Self {
        for a in list.iter_mut().filter(|a| !a.is_failed()) {
            a.client_description = String::new();
            for state in a.task_states.iter_mut().flatten() {
                state.events = None;
            }
        }
        // Stable: within a job, Nomad's order stays.
        list.sort_by(|a, b| a.job_id.cmp(&b.job_id));
        list.shrink_to_fit();
        Allocations { by_job: list }
    }
}

/// A response with the index Nomad reported for it (`X-Nomad-Index`).
#[derive(Debug, Clone)]
pub struct Indexed<T> {
    pub value: T,
    pub index: u64,
}

/// A list read with a known index: either unchanged since then, or decoded afresh.
#[derive(Debug, Clone)]
pub enum Listed<T> {
    /// Nomad's index equals the one given: the list decoded then still holds.
    Unchanged(u64),
    Fresh(Indexed<T>),
}

impl<T> Listed<T> {
    /// For reads made without a known index, which are always decoded.
    fn expect_fresh(self) -> Indexed<T> {
        match self {
            Listed::Fresh(i) => i,
            Listed::Unchanged(_) => unreachable!("a list read without a known index is decoded"),
        }
    }
}

/// Why reading a successful response's body failed.
enum BodyError {
    /// The connection broke or timed out mid-body: worth another try.
    Transport(reqwest::Error),
    /// Not the JSON expected.
    Decode(String),
}

/// Decodes a JSON body as it arrives: the chunks go, a few at a time, to a blocking thread
/// that parses them, so the body is never held whole (a list of 3000 allocations is
/// megabytes, and growing one buffer for it briefly needs twice that).
async fn decode_streaming<T: DeserializeOwned + Send + 'static>(
    mut resp: reqwest::Response,
) -> Result<T, BodyError> {
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(4);
    let decoder = tokio::task::spawn_blocking(move || {
        let reader = std::io::BufReader::with_capacity(
            16 * 1024,
            ChunkReader {
                chunks: rx,
                current: bytes::Bytes::new(),
            },
        );
        serde_json::from_reader::<_, T>(reader)
    });
    let mut broken = None;
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if tx.send(chunk).await.is_err() {
                    break; // The decoder stopped early: it has an error to tell.
                }
            }
            Ok(None) => break,
            Err(e) => {
                broken = Some(e);
                break;
            }
        }
    }
    drop(tx);
    let decoded = decoder
        .await
        .map_err(|e| BodyError::Decode(format!("the decoder stopped: {e}")))?;
    // A body cut short reads as truncated JSON: report the transport error, which is retried.
    if let Some(e) = broken {
        return Err(BodyError::Transport(e));
    }
    decoded.map_err(|e| BodyError::Decode(e.to_string()))
}

/// `io::Read` over body chunks sent from the async side.
struct ChunkReader {
    chunks: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    current: bytes::Bytes,
}

impl std::io::Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.chunks.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        bytes::Buf::advance(&mut self.current, n);
        Ok(n)
    }
}

/// `index`/`wait` of a blocking query.
#[derive(Debug, Clone, Copy)]
pub struct Blocking {
    pub index: u64,
    pub wait: Duration,
}

/// Errors from Nomad.
#[derive(Debug, thiserror::Error)]
pub enum NomadError {
    #[error("Nomad {method} {path}: {source}")]
    Transport {
        method: Method,
        path: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("Nomad {method} {path}: HTTP {status}: {body}")]
    Status {
        method: Method,
        path: String,
        status: u16,
        /// For messages: trimmed and cut short.
        body: String,
        /// The body as sent (a 409 on the variable API carries the conflicting variable).
        raw: Vec<u8>,
    },
    #[error("Nomad {method} {path}: unexpected response: {message}")]
    Decode {
        method: Method,
        path: String,
        message: String,
    },
    #[error("Nomad client setup: {0}")]
    Setup(String),
}

impl TransportError for NomadError {
    fn transport(method: Method, path: &str, source: reqwest::Error) -> Self {
        NomadError::Transport {
            method,
            path: path.to_string(),
            source,
        }
    }
}

impl NomadError {
    pub fn is_transient(&self) -> bool {
        match self {
            NomadError::Transport { .. } => true,
            NomadError::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// Nomad's namespace when none is named, and Hippo's (it sets none on its jobs).
pub const DEFAULT_NAMESPACE: &str = "default";

/// Nomad connection settings (`NOMAD_*` environment variables).
#[derive(Debug, Clone)]
pub struct NomadConfig {
    /// `NOMAD_ADDR`, e.g. `http://127.0.0.1:4646` (a trailing `/v1` is accepted).
    pub addr: String,
    pub token: Option<Secret>,
    /// `NOMAD_NAMESPACE`: the controller's own namespace (its leader lock variable). Nomad
    /// sets it in every task it runs, so a controller run by Nomad gets its job's namespace.
    pub namespace: Option<String>,
    /// Where Hippo's jobs live: Hippo registers them in `default` whatever namespace the
    /// controller runs in (`--hippo-nomad-namespace`).
    pub hippo_namespace: String,
    pub region: Option<String>,
    pub ca_cert: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub skip_verify: bool,
    pub timeout: Duration,
    pub retry: RetryPolicy,
}

impl NomadConfig {
    pub fn new(addr: impl Into<String>) -> Self {
        NomadConfig {
            addr: addr.into(),
            token: None,
            namespace: None,
            hippo_namespace: DEFAULT_NAMESPACE.to_string(),
            region: None,
            ca_cert: None,
            client_cert: None,
            client_key: None,
            skip_verify: false,
            timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
        }
    }
}

/// The Nomad client.
pub struct NomadClient {
    transport: Transport,
    token: Option<Secret>,
    namespace: Option<String>,
    /// `None` for `default` (sent as no parameter, Nomad's default).
    hippo_namespace: Option<String>,
    region: Option<String>,
    timeout: Duration,
}

impl NomadClient {
    pub fn new(config: NomadConfig, stats: RequestStats) -> Result<Self, NomadError> {
        let mut builder =
            reqwest::Client::builder().danger_accept_invalid_certs(config.skip_verify);
        if let Some(ca) = &config.ca_cert {
            let pem = std::fs::read(ca).map_err(|e| {
                NomadError::Setup(format!("reading NOMAD_CACERT {}: {e}", ca.display()))
            })?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| NomadError::Setup(format!("NOMAD_CACERT {}: {e}", ca.display())))?;
            builder = builder.add_root_certificate(cert);
        }
        match (&config.client_cert, &config.client_key) {
            (Some(cert), Some(key)) => {
                let mut pem = std::fs::read(cert).map_err(|e| {
                    NomadError::Setup(format!("reading NOMAD_CLIENT_CERT {}: {e}", cert.display()))
                })?;
                pem.extend(std::fs::read(key).map_err(|e| {
                    NomadError::Setup(format!("reading NOMAD_CLIENT_KEY {}: {e}", key.display()))
                })?);
                let identity = reqwest::Identity::from_pem(&pem)
                    .map_err(|e| NomadError::Setup(format!("client certificate: {e}")))?;
                builder = builder.identity(identity);
            }
            (None, None) => {}
            _ => {
                return Err(NomadError::Setup(
                    "NOMAD_CLIENT_CERT and NOMAD_CLIENT_KEY go together".into(),
                ))
            }
        }
        let addr = config.addr.trim_end_matches('/');
        let addr = addr.strip_suffix("/v1").unwrap_or(addr);
        let transport = Transport::new(
            Service {
                key: "nomad",
                name: "Nomad",
            },
            format!("{addr}/v1"),
            builder,
            config.timeout,
            config.retry,
            stats,
        )
        .map_err(|e| NomadError::Setup(e.to_string()))?;
        Ok(NomadClient {
            transport,
            token: config.token,
            namespace: config.namespace,
            hippo_namespace: Some(config.hippo_namespace)
                .filter(|ns| !ns.is_empty() && ns != DEFAULT_NAMESPACE),
            region: config.region,
            timeout: config.timeout,
        })
    }

    /// The controller's own namespace (its lock variable; `default` unless configured).
    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)
    }

    /// The namespace Hippo's jobs are read in.
    pub fn hippo_namespace(&self) -> &str {
        self.hippo_namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)
    }

    /// `GET /v1/jobs`
    pub async fn list_jobs(
        &self,
        blocking: Option<Blocking>,
    ) -> Result<Indexed<Vec<JobStub>>, NomadError> {
        self.list_jobs_since(blocking, None)
            .await
            .map(|l| l.expect_fresh())
    }

    /// `GET /v1/jobs`, decoded only when Nomad's index differs from `known`.
    pub async fn list_jobs_since(
        &self,
        blocking: Option<Blocking>,
        known: Option<u64>,
    ) -> Result<Listed<Vec<JobStub>>, NomadError> {
        self.get_list("/jobs", &[], blocking, known).await
    }

    /// `GET /v1/job/:id`; `None` when Nomad has no such job.
    pub async fn read_job(&self, id: &str) -> Result<Option<Job>, NomadError> {
        match self.get::<Job>(&format!("/job/{id}"), &[], None).await {
            Ok(j) => Ok(Some(j.value)),
            Err(NomadError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET /v1/job/:id/versions`: what each kept version ran and whether a deployment of it
    /// succeeded (`Stable`), newest first. Empty when Nomad has no such job.
    pub async fn job_versions(&self, id: &str) -> Result<Vec<JobVersion>, NomadError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Versions {
            #[serde(default)]
            versions: Vec<VersionedJob>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct VersionedJob {
            #[serde(default)]
            stable: bool,
            #[serde(flatten)]
            job: Job,
        }
        match self
            .get::<Versions>(&format!("/job/{id}/versions"), &[], None)
            .await
        {
            Ok(v) => {
                let mut out: Vec<JobVersion> = v
                    .value
                    .versions
                    .into_iter()
                    .map(|v| JobVersion {
                        version: v.job.version,
                        stable: v.stable,
                        bindle: v.job.bindle_arg(),
                    })
                    .collect();
                out.sort_by_key(|v| std::cmp::Reverse(v.version));
                Ok(out)
            }
            Err(NomadError::Status { status: 404, .. }) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// `GET /v1/var/:path` in the controller's namespace: the items and `ModifyIndex` (for a
    /// check-and-set write), or `None` when there is no such variable.
    pub async fn read_variable(
        &self,
        path: &str,
    ) -> Result<Option<(BTreeMap<String, String>, u64)>, NomadError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Variable {
            #[serde(default)]
            items: BTreeMap<String, String>,
            #[serde(default)]
            modify_index: u64,
        }
        match self
            .get::<Variable>(&format!("/var/{path}"), &[], None)
            .await
        {
            Ok(v) => Ok(Some((v.value.items, v.value.modify_index))),
            Err(NomadError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `PUT /v1/var/:path?cas=<index>` in the controller's namespace (`cas=0`: only if it
    /// does not exist). `Ok(false)` on a check-and-set conflict: someone wrote in between.
    pub async fn write_variable(
        &self,
        path: &str,
        items: &BTreeMap<String, String>,
        cas: u64,
    ) -> Result<bool, NomadError> {
        let body = serde_json::json!({
            "Namespace": self.namespace(),
            "Path": path,
            "Items": items,
        });
        let (status, _) = self
            .put_json(&format!("/var/{path}"), &[("cas", cas.to_string())], &body)
            .await?;
        Ok(status != 409)
    }

    /// `GET /v1/allocations`, optionally filtered (go-bexpr, e.g. `JobID == "…"`). One list for
    /// every job, not a request per job or per allocation.
    pub async fn list_allocations(
        &self,
        filter: Option<&str>,
        blocking: Option<Blocking>,
    ) -> Result<Indexed<Vec<Allocation>>, NomadError> {
        self.list_allocations_since(filter, blocking, None)
            .await
            .map(|l| l.expect_fresh())
    }

    /// `GET /v1/allocations`, decoded only when Nomad's index differs from `known`: the
    /// index of a list moves whenever any item in it changes, so an equal index means the
    /// list decoded last time is still what Nomad holds.
    pub async fn list_allocations_since(
        &self,
        filter: Option<&str>,
        blocking: Option<Blocking>,
        known: Option<u64>,
    ) -> Result<Listed<Vec<Allocation>>, NomadError> {
        let query: Vec<(&str, String)> = filter
            .map(|f| ("filter", f.to_string()))
            .into_iter()
            .collect();
        self.get_list("/allocations", &query, blocking, known).await
    }

    /// `DELETE /v1/job/:id` (stop; with `purge`, remove).
    pub async fn delete_job(&self, id: &str, purge: bool) -> Result<(), NomadError> {
        let query: Vec<(&str, String)> = if purge {
            vec![("purge", "true".into())]
        } else {
            vec![]
        };
        self.send(
            Method::DELETE,
            &format!("/job/{id}"),
            &query,
            None,
            None,
            true,
        )
        .await
        .map(|_| ())
    }

    /// A PUT on the variable API (leader election). Answers `(status, body)` for 2xx and 409,
    /// the body as Nomad sent it. Not retried once it may have arrived: a lock acquire that
    /// succeeded but whose answer was lost would otherwise look like a conflict until the TTL
    /// runs out.
    pub async fn put_json(
        &self,
        path: &str,
        query: &[(&str, String)],
        body: &serde_json::Value,
    ) -> Result<(u16, Vec<u8>), NomadError> {
        let bytes = serde_json::to_vec(body).map_err(|e| NomadError::Decode {
            method: Method::PUT,
            path: path.to_string(),
            message: e.to_string(),
        })?;
        match self
            .send(Method::PUT, path, query, Some(bytes), None, false)
            .await
        {
            Ok((bytes, _)) => Ok((200, bytes)),
            Err(NomadError::Status {
                status: 409, raw, ..
            }) => Ok((409, raw)),
            Err(e) => Err(e),
        }
    }

    async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
        blocking: Option<Blocking>,
    ) -> Result<Indexed<T>, NomadError> {
        let (bytes, index) = self
            .send(Method::GET, path, query, None, blocking, true)
            .await?;
        let value = serde_json::from_slice(&bytes).map_err(|e| NomadError::Decode {
            method: Method::GET,
            path: path.to_string(),
            message: e.to_string(),
        })?;
        Ok(Indexed { value, index })
    }

    /// A GET of a list that may be long (every job, every allocation): decoded as the body
    /// arrives, never buffered whole, and not decoded at all when the index is `known`.
    async fn get_list<T: DeserializeOwned + Send + 'static>(
        &self,
        path: &str,
        query: &[(&str, String)],
        blocking: Option<Blocking>,
        known: Option<u64>,
    ) -> Result<Listed<T>, NomadError> {
        self.send_with(
            Method::GET,
            path,
            query,
            None,
            blocking,
            true,
            |resp, index| async move {
                if index != 0 && Some(index) == known {
                    // Read to the end (the connection is reused) without keeping anything.
                    let mut resp = resp;
                    while resp.chunk().await.map_err(BodyError::Transport)?.is_some() {}
                    return Ok(Listed::Unchanged(index));
                }
                let value = decode_streaming(resp).await?;
                Ok(Listed::Fresh(Indexed { value, index }))
            },
        )
        .await
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Vec<u8>>,
        blocking: Option<Blocking>,
        idempotent: bool,
    ) -> Result<(Vec<u8>, u64), NomadError> {
        self.send_with(
            method,
            path,
            query,
            body,
            blocking,
            idempotent,
            |resp, index| async move {
                let bytes = resp.bytes().await.map_err(BodyError::Transport)?;
                Ok((bytes.to_vec(), index))
            },
        )
        .await
    }

    /// Sends a request (retrying what may be retried) and hands a successful response, with
    /// its `X-Nomad-Index`, to `on_success`, which reads the body.
    #[allow(clippy::too_many_arguments)]
    async fn send_with<R, F, Fut>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Vec<u8>>,
        blocking: Option<Blocking>,
        idempotent: bool,
        on_success: F,
    ) -> Result<R, NomadError>
    where
        F: Fn(reqwest::Response, u64) -> Fut,
        Fut: std::future::Future<Output = Result<R, BodyError>>,
    {
        let mut params: Vec<(&str, String)> = query.to_vec();
        // Variables (the leader lock) are the controller's own; jobs and allocations are
        // Hippo's, in Hippo's namespace.
        let namespace = if path.starts_with("/var/") {
            &self.namespace
        } else {
            &self.hippo_namespace
        };
        if let Some(ns) = namespace {
            params.push(("namespace", ns.clone()));
        }
        if let Some(region) = &self.region {
            params.push(("region", region.clone()));
        }
        // A blocking query may be held for `wait` plus Nomad's jitter (up to wait/16).
        let timeout = match blocking {
            Some(b) => {
                params.push(("index", b.index.to_string()));
                params.push(("wait", format!("{}ms", b.wait.as_millis())));
                self.timeout + b.wait + b.wait / 16
            }
            None => self.timeout,
        };
        self.transport
            .request(
                &method,
                path,
                idempotent,
                |req| {
                    let mut req = req.timeout(timeout).query(&params);
                    if let Some(t) = &self.token {
                        req = req.header("X-Nomad-Token", t.expose());
                    }
                    if let Some(b) = &body {
                        req = req
                            .header("Content-Type", "application/json")
                            .body(b.clone());
                    }
                    std::future::ready(Ok(req))
                },
                |resp, _| async {
                    let status = resp.status();
                    let index = resp
                        .headers()
                        .get("X-Nomad-Index")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    if status.is_success() {
                        return on_success(resp, index).await.map_err(|e| match e {
                            BodyError::Transport(source) => Attempt::Retry(
                                NomadError::transport(method.clone(), path, source),
                                None,
                            ),
                            BodyError::Decode(message) => Attempt::Fail(NomadError::Decode {
                                method: method.clone(),
                                path: path.to_string(),
                                message,
                            }),
                        });
                    }
                    let bytes = resp.bytes().await.map_err(|source| {
                        Attempt::Retry(NomadError::transport(method.clone(), path, source), None)
                    })?;
                    let e = NomadError::Status {
                        method: method.clone(),
                        path: path.to_string(),
                        status: status.as_u16(),
                        body: String::from_utf8_lossy(&bytes)
                            .trim()
                            .chars()
                            .take(300)
                            .collect(),
                        raw: bytes.to_vec(),
                    };
                    let transient =
                        status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS;
                    Err(if transient && idempotent {
                        Attempt::Retry(e, None)
                    } else {
                        Attempt::Fail(e)
                    })
                },
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str) -> String {
        let path = format!("{}/tests/fixtures/nomad/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn hippo_shaped_job_and_allocations_parse() {
        let job: Job = serde_json::from_str(&sample("hippo_job_read.json")).unwrap();
        assert_eq!(job.id, "3fa85f64-5717-4562-b3fc-2c963f66afa6");
        assert!(
            job.bindle_arg().is_some_and(|b| b.contains('/')),
            "{:?}",
            job.bindle_arg()
        );
        assert_eq!(job.spin_task().unwrap().name, "spin");
        let env = job.spin_task().unwrap().env.clone().unwrap();
        assert!(env.contains_key("BINDLE_URL"));
        let allocs: Vec<Allocation> =
            serde_json::from_str(&sample("hippo_job_allocations.json")).unwrap();
        assert_eq!(allocs[0].job_version, 3);
        assert!(allocs[0].is_healthy());
        assert!(!allocs[0].is_failed());
        let stubs: Vec<JobStub> = serde_json::from_str(&sample("hippo_jobs_list.json")).unwrap();
        assert!(!stubs.is_empty());
    }

    #[test]
    fn job_facts_keep_what_is_read() {
        let job: Job = serde_json::from_str(&sample("hippo_job_read.json")).unwrap();
        let facts = JobFacts::from(job.clone());
        assert_eq!(facts.bindle_arg(), job.bindle_arg().as_deref());
        assert_eq!(facts.desired_count, job.desired_count());
        assert_eq!(facts.version, job.version);
        assert_eq!(facts.job_modify_index, job.job_modify_index);
        let env = job.spin_task().unwrap().env.clone().unwrap();
        for (k, v) in &env {
            assert_eq!(facts.env_var(k), Some(v.as_str()), "{k}");
        }
        assert_eq!(facts.env_var("NOT_SET"), None);
        // A job without a spin task (or any task) has no env to compare.
        let bare: Job = serde_json::from_value(serde_json::json!({"ID": "x"})).unwrap();
        assert_eq!(JobFacts::from(bare).env, None);
    }

    #[test]
    fn task_states_may_be_null_or_absent_and_keep_the_newest_events() {
        let a: Allocation = serde_json::from_value(serde_json::json!({
            "ID": "a", "JobID": "j", "TaskStates": null
        }))
        .unwrap();
        assert_eq!(a.task_states, None);
        let a: Allocation = serde_json::from_value(serde_json::json!({
            "ID": "a", "JobID": "j", "TaskStates": {"spin": {"State": "dead", "Failed": true,
                "Events": [{"Type": "c", "Time": 3}, {"Type": "a", "Time": 1},
                           {"Type": "d", "Time": 4}, {"Type": "b", "Time": 2}]},
                "sidecar": {"State": "running", "Events": null}}
        }))
        .unwrap();
        let states = a.task_states.as_ref().unwrap();
        assert_eq!(states.len(), 2);
        assert!(a.is_failed());
        let kept: Vec<&str> = states
            .iter()
            .find(|s| s.failed)
            .and_then(|s| s.events.as_ref())
            .unwrap()
            .iter()
            .map(|e| e.kind.as_str())
            .collect();
        assert_eq!(
            kept,
            ["b", "c", "d"],
            "the oldest (a, at time 1) is dropped"
        );
        assert_eq!(a.last_events(2), ["c", "d"]);
    }

    #[test]
    fn nomad_doc_samples_parse() {
        let allocs: Vec<Allocation> =
            serde_json::from_str(&sample("allocations_list.docs.json")).unwrap();
        assert!(!allocs.is_empty());
        let _: Vec<JobStub> = serde_json::from_str(&sample("jobs_list_full.docs.json")).unwrap();
        let _: Job = serde_json::from_str(&sample("job_read.docs.json")).unwrap();
    }

    #[test]
    fn kept_allocations_hold_events_only_where_a_failure_is_reported_with_them() {
        let alloc = |id: &str, job: &str, client_status: &str| -> Allocation {
            serde_json::from_value(serde_json::json!({
                "ID": id, "JobID": job, "JobVersion": 1, "DesiredStatus": "run",
                "ClientStatus": client_status, "ClientDescription": "some words",
                "TaskStates": {"spin": {"State": "running", "Failed": false, "Events": [
                    {"Type": "Started", "DisplayMessage": "Task started by client", "Time": 2},
                ]}},
            }))
            .unwrap()
        };
        let grouped = Allocations::from(vec![
            alloc("a1", "j1", "running"),
            alloc("a2", "j2", "failed"),
            alloc("a3", "j1", "running"),
        ]);
        let running = &grouped.of("j1")[0];
        assert!(running.last_events(3).is_empty());
        assert!(running.client_description.is_empty());
        let failed = &grouped.of("j2")[0];
        assert_eq!(failed.last_events(3), ["Started: Task started by client"]);
        assert_eq!(failed.client_description, "some words");
        assert_eq!(grouped.of("j1").len(), 2);
        assert_eq!(grouped.of("j1")[1].id, "a3");
        assert!(grouped.of("j0").is_empty() && grouped.of("j3").is_empty());
        let jobs: Vec<(&str, Vec<&str>)> = grouped
            .jobs()
            .map(|(job, list)| (job, list.iter().map(|a| a.id.as_str()).collect()))
            .collect();
        assert_eq!(jobs, [("j1", vec!["a1", "a3"]), ("j2", vec!["a2"])]);
        assert_eq!(grouped.len(), 3);
    }

    #[test]
    fn job_stubs_are_looked_up_by_id() {
        let stub = |id: &str, index: u64| JobStub {
            id: id.into(),
            status: "running".into(),
            stop: false,
            job_modify_index: index,
            modify_index: index,
        };
        let mut jobs = JobStubs::from(vec![stub("b", 1), stub("a", 2), stub("b", 3)]);
        assert_eq!(jobs.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(
            jobs.get("b").map(|j| j.job_modify_index),
            Some(3),
            "the last listed"
        );
        assert!(jobs.contains_key("a") && !jobs.contains_key("c") && jobs.get("").is_none());
        jobs.insert("c".into(), stub("c", 4));
        jobs.insert("a".into(), stub("a", 5));
        let indexes: Vec<u64> = jobs.values().map(|j| j.job_modify_index).collect();
        assert_eq!(indexes, [5, 3, 4]);
        assert_eq!(jobs.remove("b").map(|j| j.id), Some("b".into()));
        assert_eq!((jobs.remove("b"), jobs.len()), (None, 2));
        jobs.clear();
        assert!(jobs.is_empty());
    }

    #[test]
    fn health_and_failure_rules() {
        let mut a: Allocation = serde_json::from_value(serde_json::json!({
            "ID": "a", "JobID": "j", "JobVersion": 1, "DesiredStatus": "run",
            "ClientStatus": "running", "DeploymentStatus": null
        }))
        .unwrap();
        assert!(
            !a.is_healthy() && a.is_health_undecided() && !a.is_failed(),
            "a deployment that has not decided yet: not healthy (min_healthy_time)"
        );
        a.deployment_status = Some(AllocDeploymentStatus {
            healthy: Some(true),
            timestamp: Some(1),
        });
        assert!(a.is_healthy() && !a.is_health_undecided());
        a.deployment_status = Some(AllocDeploymentStatus {
            healthy: Some(false),
            timestamp: Some(1),
        });
        assert!(!a.is_healthy() && a.is_failed());
        a.deployment_status = None;
        a.client_status = "pending".into();
        assert!(!a.is_healthy() && !a.is_failed());
        a.client_status = "failed".into();
        a.task_states = Some(vec![TaskState {
            state: "dead".into(),
            failed: true,
            events: Some(vec![
                TaskEvent {
                    kind: "Received".into(),
                    display_message: "Task received by client".into(),
                    time: 1,
                },
                TaskEvent {
                    kind: "Driver Failure".into(),
                    display_message: "failed to launch command: spin not found".into(),
                    time: 3,
                },
                TaskEvent {
                    kind: "Task Setup".into(),
                    display_message: "Building Task Directory".into(),
                    time: 2,
                },
            ]),
        }]);
        assert!(a.is_failed());
        assert_eq!(
            a.last_events(2),
            vec![
                "Task Setup: Building Task Directory".to_string(),
                "Driver Failure: failed to launch command: spin not found".to_string()
            ]
        );
    }
}

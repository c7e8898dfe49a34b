//! An in-process, stateful **emulator** of the parts of Nomad's HTTP API that hippo-gitops
//! and Hippo use, for end-to-end tests and the sandbox. It is not Nomad and runs nothing: it
//! follows `shared/reference/nomad/NOMAD-API.md` (routes, JSON field names, plain-text errors,
//! the documented quirks, blocking queries, variable locks) and plays a one-node cluster whose
//! client "runs" every allocation after `alloc_start_delay` and reports it healthy after
//! `healthy_delay`.
//!
//! * Jobs: register (`POST|PUT /v1/jobs`, `/v1/job/:id`, with `EnforceIndex`), read, list,
//!   versions, summary, allocations, evaluations, deployments, latest deployment, stop or
//!   purge (`DELETE /v1/job/:id[?purge=true]`). Submitted jobs are canonicalised like Nomad
//!   does (every default filled in), a new `Version` is made only when the spec changed, and
//!   the scheduler places, updates in place or replaces allocations accordingly.
//! * Allocations (`GET /v1/allocations` with `filter`, `prefix`, `task_states=false`;
//!   `GET /v1/allocation/:id`), deployments (`GET /v1/deployments`, `/v1/deployment/:id`).
//! * Variables with `?cas=` and locks (`?lock-acquire|lock-renew|lock-release`).
//! * `GET /v1/status/leader`, `/v1/status/peers`.
//! * Every GET is a blocking query (`?index=&wait=`) answering `X-Nomad-Index`.
//!
//! Behaviour worth knowing (all as in Nomad unless said otherwise):
//!
//! * One global index, stamped on per-table indexes (jobs, job summaries, allocations,
//!   deployments, evaluations, variables); `X-Nomad-Index` is the object's `ModifyIndex` or
//!   the table's index, and a blocking query returns once that index passes `?index=`.
//! * A job is `running` as soon as a non-terminal allocation exists (a pending one counts,
//!   Nomad's `getJobStatus`), `dead` when stopped, otherwise `pending` (nothing placed yet,
//!   placement blocked, or every allocation failed and awaits a reschedule).
//! * A spec change makes a new `Version`. Changes the scheduler applies in place (service
//!   tags and checks, counts, update/restart/reschedule policies) keep the allocation and
//!   move it to the new `JobVersion`; anything else (driver, config, env, resources, networks,
//!   meta) stops it (`DesiredStatus: "stop"`, `ClientStatus: "complete"`) and places a new one.
//!   Each version of a service job with placements gets a deployment; older running ones are
//!   cancelled. Stopping a job (`DELETE` without purge) is a new version with `Stop: true`.
//! * Not emulated: job plan/revert/dispatch/scale, pagination (`per_page`/`next_token`), the
//!   event stream, ACL policies (one management token), namespaces other than `default`,
//!   canaries and rolling updates (`MaxParallel`: all allocations move at once), automatic
//!   reschedule attempts, batch/system job semantics (every job behaves like a service job),
//!   allocation logs.
//!
//! Test knobs: [`NomadEmulator::fail_allocations`], [`NomadEmulator::heal_allocations`],
//! [`NomadEmulator::lose_job`]; [`NomadEmulator::hippo_scheduler`] plugs the emulator into the
//! Hippo emulator the way Hippo's `NomadJobService` talks to Nomad.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use hippo_gitops_emulators::nomad::{NomadEmulator, NomadEmulatorConfig};
//! let nomad = NomadEmulator::start(NomadEmulatorConfig::default()).await?;
//! println!("NOMAD_ADDR={}", nomad.url());
//! nomad.stop().await;
//! # Ok(()) }
//! ```

mod duration;
mod filter;
mod http;
mod jobspec;
mod sched;
mod scheduler;
mod state;
mod vars;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::Router;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use scheduler::HippoJobSettings;

use crate::serve::{bind, BackgroundServer};
use crate::state_file::{Persisted, StateFile};
use state::{State, Timer};

/// The emulated client node's name, as allocations report it.
const NODE_NAME: &str = "nomad-emulator-client";

/// How to run the emulator.
#[derive(Clone, Debug)]
pub struct NomadEmulatorConfig {
    /// `None` = `127.0.0.1:0`.
    pub listen: Option<SocketAddr>,
    /// When set, every `/v1` request (except `/v1/status/*`, which Nomad does not check)
    /// needs `X-Nomad-Token: <token>` or `Authorization: Bearer <token>`; without one the
    /// answer is 403 `Permission denied`, with another one 403 `ACL token not found`.
    pub acl_token: Option<String>,
    /// The agent's region (default `global`).
    pub region: String,
    /// The emulated node's datacenter (default `dc1`). Jobs whose `Datacenters` do not match
    /// it (globs allowed) cannot be placed: their evaluation is blocked.
    pub datacenter: String,
    /// How long an allocation stays `pending` before it runs (default 100 ms).
    pub alloc_start_delay: Duration,
    /// How long after running an allocation is reported healthy (default 100 ms).
    pub healthy_delay: Duration,
    /// Load the state from here at start (if the file exists) and save it after changes
    /// (temporary file, then rename), at most once per `state_write_interval`, and once more
    /// when stopped or dropped. Pending allocations and held locks resume on load.
    pub state_file: Option<PathBuf>,
    /// **Emulator-only knob**: the state file is written at most once per this interval (50 ms
    /// by default), or per four times the last write's duration if that is longer.
    pub state_write_interval: Duration,
    /// **Emulator-only knob**: the smallest variable lock TTL accepted. Nomad's is 10 s
    /// (fixed); tests lower it to use TTLs like `200ms`.
    pub min_lock_ttl: Duration,
}

impl Default for NomadEmulatorConfig {
    fn default() -> Self {
        NomadEmulatorConfig {
            listen: None,
            acl_token: None,
            region: "global".to_string(),
            datacenter: "dc1".to_string(),
            alloc_start_delay: Duration::from_millis(100),
            healthy_delay: Duration::from_millis(100),
            state_file: None,
            state_write_interval: super::state_file::DEFAULT_INTERVAL,
            min_lock_ttl: Duration::from_secs(10),
        }
    }
}

/// Errors starting the emulator.
#[derive(Debug, thiserror::Error)]
pub enum NomadEmulatorError {
    #[error("nomad emulator: cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("nomad emulator: cannot serve: {0}")]
    Serve(String),
    #[error("nomad emulator: cannot read state file {path}: {source}")]
    ReadState {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("nomad emulator: state file {path} is not valid: {source}")]
    ParseState {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("nomad emulator: cannot write state file {path}: {source}")]
    WriteState {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One HTTP request the emulator served.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedRequest {
    pub method: String,
    /// As received (still percent-encoded).
    pub path: String,
    pub query: Option<String>,
    pub status: u16,
}

/// The configuration the state machine needs.
struct Settings {
    region: String,
    datacenter: String,
    alloc_start_delay: Duration,
    healthy_delay: Duration,
    min_lock_ttl: Duration,
}

/// Everything the server task, the timers and the handle share.
struct Shared {
    state: Mutex<State>,
    settings: Settings,
    /// The current index; blocking queries wait on it.
    index_tx: watch::Sender<u64>,
    /// `true` once stopping: blocking queries answer, timers give up.
    shutdown: watch::Sender<bool>,
    requests: Mutex<Vec<RecordedRequest>>,
    acl_token: Option<String>,
    /// Closed by `stop` (or the drop): a stopped emulator never writes the file again (a
    /// restarted one may be using it).
    state_file: Option<StateFile>,
    runtime: tokio::runtime::Handle,
}

impl Persisted for Shared {
    fn state_file(&self) -> Option<&StateFile> {
        self.state_file.as_ref()
    }

    fn state_json(&self) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec_pretty(&*self.lock_state())
    }
}

/// Recover from poisoning: a panicking handler must not take the emulator down with it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn lock_state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn lock_requests(&self) -> MutexGuard<'_, Vec<RecordedRequest>> {
        lock(&self.requests)
    }

    /// Runs one state change, then (lock released) wakes blocking queries and starts the
    /// timers it queued.
    fn mutate<R>(self: &Arc<Self>, f: impl FnOnce(&mut State, &Settings) -> R) -> R {
        let (result, timers, index) = {
            let mut st = self.lock_state();
            let result = f(&mut st, &self.settings);
            let timers = std::mem::take(&mut st.timers);
            (result, timers, st.index)
        };
        self.index_tx.send_if_modified(|current| {
            let moved = *current != index;
            *current = index;
            moved
        });
        for t in timers {
            self.spawn_timer(t);
        }
        result
    }

    fn spawn_timer(self: &Arc<Self>, timer: Timer) {
        if *self.shutdown.borrow() {
            return;
        }
        let delay = match &timer {
            Timer::AllocStart { .. } => self.settings.alloc_start_delay,
            Timer::AllocHealthy { .. } => self.settings.healthy_delay,
            Timer::LockTtl { after, .. } | Timer::LockDelay { after, .. } => *after,
        };
        let shared = Arc::clone(self);
        let mut stop = self.shutdown.subscribe();
        self.runtime.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            shared.mutate(|st, _| sched::on_timer(st, &timer));
            shared.persist_soon();
        });
    }
}

/// A running Nomad emulator. Dropping it stops the server (without waiting).
pub struct NomadEmulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: BackgroundServer,
}

impl NomadEmulator {
    /// Loads the state file (if any), binds, serves in a tokio task and returns once
    /// listening.
    pub async fn start(config: NomadEmulatorConfig) -> Result<NomadEmulator, NomadEmulatorError> {
        let mut state = match &config.state_file {
            Some(path) => load_state(path).await?,
            None => None,
        }
        .unwrap_or_default();
        if state.node_id.is_empty() {
            state.node_id = uuid::Uuid::new_v4().to_string();
        }
        sched::resume(&mut state);
        let state_file = match &config.state_file {
            Some(path) => Some(
                StateFile::create(path, "nomad emulator", config.state_write_interval, &state)
                    .await
                    .map_err(|source| NomadEmulatorError::WriteState {
                        path: path.clone(),
                        source,
                    })?,
            ),
            None => None,
        };

        let want = config
            .listen
            .unwrap_or_else(|| SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        let (listener, addr) =
            bind(want).map_err(|source| NomadEmulatorError::Bind { addr: want, source })?;

        let index = state.index;
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            settings: Settings {
                region: config.region,
                datacenter: config.datacenter,
                alloc_start_delay: config.alloc_start_delay,
                healthy_delay: config.healthy_delay,
                min_lock_ttl: config.min_lock_ttl,
            },
            index_tx: watch::channel(index).0,
            shutdown: watch::channel(false).0,
            requests: Mutex::new(Vec::new()),
            acl_token: config.acl_token,
            state_file,
            runtime: tokio::runtime::Handle::current(),
        });
        StateFile::spawn_writer(&shared);
        // Resume what the loaded state had in flight.
        shared.mutate(|_, _| ());

        let app = Router::new()
            .route(
                "/_emulator/jobs/:job_id/:action",
                axum::routing::post(emulator_control),
            )
            .fallback(http::dispatch)
            .layer(DefaultBodyLimit::max(16 * 1024 * 1024))
            .with_state(shared.clone());
        let server = BackgroundServer::router(listener, app, "nomad emulator")
            .map_err(|e| NomadEmulatorError::Serve(e.to_string()))?;
        Ok(NomadEmulator {
            addr,
            shared,
            server,
        })
    }

    /// `http://127.0.0.1:PORT`: what `NOMAD_ADDR` holds (no `/v1`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A [`JobScheduler`](crate::hippo::JobScheduler) for
    /// `HippoEmulator::start_with_scheduler`: StartJob registers the job exactly as Hippo
    /// v0.20 builds it (see [`HippoJobSettings::register_request`]); DeleteJob deregisters it
    /// without purge, as Hippo does. These are not HTTP requests: they are neither recorded
    /// nor counted by [`NomadEmulator::writes`].
    pub fn hippo_scheduler(
        &self,
        settings: HippoJobSettings,
    ) -> Arc<dyn crate::hippo::JobScheduler> {
        Arc::new(scheduler::HippoScheduler::new(
            self.shared.clone(),
            settings,
        ))
    }

    /// From now until [`NomadEmulator::heal_allocations`], the job's allocations fail: the
    /// running and pending ones at once, new ones when they would start. A failed allocation
    /// has `ClientStatus: "failed"` and a dead, failed `spin` task whose last event is
    /// `{Type: "Driver Failure", DisplayMessage: reason}`. While the allocation's deployment
    /// is still running, its `DeploymentStatus.Healthy` becomes `false` and the deployment
    /// `failed`; a deployment that already succeeded keeps its verdict, as in Nomad (health is
    /// only watched during a deployment). Failed allocations are not rescheduled meanwhile.
    pub fn fail_allocations(&self, job_id: &str, reason: &str) {
        self.shared.mutate(|st, _| sched::fail(st, job_id, reason));
        self.shared.persist_soon();
    }

    /// From now on, allocations of `job_or_bindle` (a job ID, or the `<storageId>/<version>`
    /// its task runs) stay running but are marked unhealthy when their deployment judges them
    /// (after `healthy_delay`): `DeploymentStatus.Healthy: false`, an `Alloc Unhealthy` task
    /// event with `reason`, and the deployment fails ("Failed due to unhealthy allocations"),
    /// as when a task never passes its checks within `healthy_deadline`. Allocations already
    /// judged keep their verdict.
    pub fn make_unhealthy(&self, job_or_bindle: &str, reason: &str) {
        let (key, reason) = (job_or_bindle.to_string(), reason.to_string());
        self.shared.mutate(move |st, _| {
            st.unhealthy.insert(key, reason);
        });
        self.shared.persist_soon();
    }

    /// Ends [`NomadEmulator::make_unhealthy`] for `job_or_bindle`: allocations judged from now
    /// on are healthy again.
    pub fn make_healthy(&self, job_or_bindle: &str) {
        let key = job_or_bindle.to_string();
        self.shared.mutate(move |st, _| {
            st.unhealthy.remove(&key);
        });
        self.shared.persist_soon();
    }

    /// Ends [`NomadEmulator::fail_allocations`]: failed allocations of the job's current
    /// version are rescheduled (the failed one gets `DesiredStatus: "stop"` and
    /// `NextAllocation`; its replacement runs normally). A deployment that failed stays
    /// failed, as in Nomad: only a new job version gets a new deployment.
    pub fn heal_allocations(&self, job_id: &str) {
        self.shared.mutate(|st, _| sched::heal(st, job_id));
        self.shared.persist_soon();
    }

    /// The job (in every namespace) and its allocations, deployments and evaluations vanish,
    /// as after `nomad job stop -purge` by someone else and a garbage collection. Not
    /// recorded as a request.
    pub fn lose_job(&self, job_id: &str) {
        self.shared.mutate(|st, _| sched::lose(st, job_id));
        self.shared.persist_soon();
    }

    /// The current full Job objects, by namespace and ID.
    pub fn jobs(&self) -> Vec<serde_json::Value> {
        self.shared
            .lock_state()
            .all_jobs()
            .map(|r| r.job.clone())
            .collect()
    }

    /// The current allocations as `AllocListStub`s (with task states), oldest first.
    pub fn allocations(&self) -> Vec<serde_json::Value> {
        let st = self.shared.lock_state();
        let mut allocs: Vec<_> = st.allocs.values().collect();
        allocs.sort_by_key(|a| (a.create_index, a.slot, a.id.clone()));
        allocs
            .into_iter()
            .map(|a| a.stub(&st.node_id, true))
            .collect()
    }

    /// Every HTTP request served so far, in order of completion.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock_requests().clone()
    }

    pub fn clear_requests(&self) {
        self.shared.lock_requests().clear();
    }

    /// Recorded HTTP requests other than GET (cleared by [`NomadEmulator::clear_requests`]).
    pub fn writes(&self) -> usize {
        self.shared
            .lock_requests()
            .iter()
            .filter(|r| r.method != "GET")
            .count()
    }

    /// How many times the state file was written (the first write, at start, included);
    /// changes each time it is. Without a state file: always 0.
    pub fn state_file_writes(&self) -> watch::Receiver<u64> {
        match &self.shared.state_file {
            Some(file) => file.writes(),
            None => watch::channel(0).1,
        }
    }

    /// Answers pending blocking queries, cancels the timers, stops accepting requests, waits
    /// (up to 5 s) for in-flight ones and writes the state file a last time.
    pub async fn stop(mut self) {
        self.shared.shutdown.send_replace(true);
        self.server.stop().await;
        crate::state_file::close(&self.shared).await;
    }
}

impl Drop for NomadEmulator {
    /// Answers pending blocking queries and cancels the timers; the server is aborted (its own
    /// drop); what the state file still lacks is written now.
    fn drop(&mut self) {
        self.shared.shutdown.send_replace(true);
        self.shared.close_state_file();
    }
}

async fn load_state(path: &Path) -> Result<Option<State>, NomadEmulatorError> {
    let bytes = match tokio::fs::read(path).await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(NomadEmulatorError::ReadState {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let mut state: State =
        serde_json::from_slice(&bytes).map_err(|source| NomadEmulatorError::ParseState {
            path: path.to_path_buf(),
            source,
        })?;
    state.relink();
    Ok(Some(state))
}

/// Emulator-only control for demos and black-box tests (not part of Nomad's API, hence outside
/// `/v1`): `POST /_emulator/jobs/<id>/fail-allocations` (body: the reason),
/// `.../heal-allocations`, `.../lose`. The same as [`NomadEmulator::fail_allocations`],
/// [`NomadEmulator::heal_allocations`] and [`NomadEmulator::lose_job`].
async fn emulator_control(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
    axum::extract::Path((job_id, action)): axum::extract::Path<(String, String)>,
    body: String,
) -> (axum::http::StatusCode, String) {
    use axum::http::StatusCode;
    let reason = if body.trim().is_empty() {
        "the emulator was told to fail this allocation".to_string()
    } else {
        body.trim().to_string()
    };
    match action.as_str() {
        "fail-allocations" => shared.mutate(|st, _| sched::fail(st, &job_id, &reason)),
        "heal-allocations" => shared.mutate(|st, _| sched::heal(st, &job_id)),
        "lose" => shared.mutate(|st, _| sched::lose(st, &job_id)),
        other => {
            return (
                StatusCode::NOT_FOUND,
                format!(
                    "unknown emulator action {other:?} (fail-allocations, heal-allocations, lose)"
                ),
            )
        }
    }
    shared.persist_soon();
    (StatusCode::NO_CONTENT, String::new())
}

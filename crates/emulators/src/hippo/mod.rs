//! An in-process, stateful **emulator** of Hippo's v0.19 HTTP API, for end-to-end tests and
//! the sandbox. It is not Hippo: it follows `shared/reference/hippo/HIPPO-API.md` (routes,
//! bodies, status codes, validation messages and the documented quirks) and talks to a real
//! Bindle server for storage checks, revision import and revision details. Scheduling is
//! delegated to a [`JobScheduler`] (what Hippo's NomadJobService would be asked to do).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use hippo_gitops_emulators::hippo::{HippoEmulator, HippoEmulatorConfig};
//! let emu = HippoEmulator::start(HippoEmulatorConfig {
//!     bindle_url: "http://127.0.0.1:8080/v1".into(),
//!     ..Default::default()
//! })
//! .await?;
//! println!("Hippo emulator at {}", emu.url());
//! emu.stop().await;
//! # Ok(()) }
//! ```

mod accounts;
mod apps;
mod bindle;
mod certificates;
mod channels;
mod http;
mod model;
mod range_rule;
mod revisions;
mod routes;
mod scheduler;
mod store;
mod validate;
mod views;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, Uri};
use axum::response::Response;
use axum::Router;
use serde::{Deserialize, Serialize};

pub use model::{
    Account, App, Certificate, Channel, ChannelRevisionSelectionStrategy, DesiredStatus,
    EmulatorState, EnvVar, IssuedToken, Revision, RevisionComponent,
};
pub use scheduler::{JobScheduler, RecordingScheduler, ScheduledJob, SchedulerEvent};

use crate::serve::{bind, BackgroundServer};
use crate::state_file::{Persisted, StateFile};
use routes::{lock, Requests, Settings, Shared};
use store::Store;

/// Which Hippo release to emulate. The API is identical; only the default channel domain
/// differs (HIPPO-API.md §6.5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HippoVersion {
    /// `{channel}.{app}.{platform}`.
    #[default]
    V0_19,
    /// `{app}.{platform}` for an app's first channel, `{channel}-{app}.{platform}` after.
    V0_20,
}

/// How to run the emulator.
#[derive(Clone, Debug)]
pub struct HippoEmulatorConfig {
    /// Hippo's `ConnectionStrings:Bindle`, e.g. `http://127.0.0.1:1234/v1` (no trailing slash).
    pub bindle_url: String,
    /// `Hippo:PlatformDomain`.
    pub platform_domain: String,
    pub version: HippoVersion,
    /// Seeded administrator account `(username, password)`.
    pub admin: Option<(String, String)>,
    /// `Hippo:RegistrationMode`: Open (true) or Closed (false).
    pub registration_open: bool,
    /// Bearer token lifetime (Hippo: 30 minutes).
    pub token_lifetime: Duration,
    /// Load the state from here at start (if the file exists) and save it after requests that
    /// changed it (write to a temporary file, then rename), at most once per
    /// `state_write_interval`, and once more when stopped or dropped.
    pub state_file: Option<PathBuf>,
    /// **Emulator-only knob**: the state file is written at most once per this interval (50 ms
    /// by default), or per four times the last write's duration if that is longer.
    pub state_write_interval: Duration,
    /// `None` = `127.0.0.1:0`.
    pub listen: Option<SocketAddr>,
    /// Hippo v0.19's PUT quirk (HIPPO-API.md §13, AUDIT.md "PUT"): a channel whose
    /// `DesiredStatus` was never set (a new channel's is 0, neither Running nor Dead) gets no
    /// job (re)started by a PUT; only `desired-status Running` (or an env change) starts it.
    /// Off: a PUT restarts the job, as `ActiveRevisionChangedEventHandler` does when EF Core
    /// reports the modification.
    pub put_starts_no_job: bool,
}

impl Default for HippoEmulatorConfig {
    fn default() -> Self {
        HippoEmulatorConfig {
            bindle_url: "http://127.0.0.1:8080/v1".to_string(),
            platform_domain: "hippofactory.io".to_string(),
            version: HippoVersion::V0_19,
            admin: Some(("admin".to_string(), "password".to_string())),
            registration_open: true,
            token_lifetime: Duration::from_secs(30 * 60),
            state_file: None,
            state_write_interval: super::state_file::DEFAULT_INTERVAL,
            listen: None,
            put_starts_no_job: false,
        }
    }
}

/// Errors starting the emulator.
#[derive(Debug, thiserror::Error)]
pub enum HippoEmulatorError {
    #[error("hippo emulator: cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("hippo emulator: cannot serve: {0}")]
    Serve(String),
    #[error("hippo emulator: cannot read state file {path}: {source}")]
    ReadState {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("hippo emulator: state file {path} is not valid: {source}")]
    ParseState {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("hippo emulator: cannot write state file {path}: {source}")]
    WriteState {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("hippo emulator: cannot build the Bindle HTTP client: {0}")]
    BindleClient(#[source] reqwest::Error),
}

/// One request the emulator served.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// `None` when the body was empty; not-UTF-8 bytes are replaced.
    pub body: Option<String>,
    pub status: u16,
}

impl RecordedRequest {
    /// POST/PUT/PATCH/DELETE, except logging in and registering.
    fn is_write(&self) -> bool {
        let path = self.path.trim_end_matches('/').to_ascii_lowercase();
        match self.method.as_str() {
            "POST" => path != "/api/auth-tokens" && path != "/api/accounts",
            "PUT" | "PATCH" | "DELETE" => true,
            _ => false,
        }
    }
}

/// A running Hippo emulator. Dropping it stops the server (without waiting).
pub struct HippoEmulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    recorder: Option<Arc<RecordingScheduler>>,
    server: BackgroundServer,
}

impl HippoEmulator {
    /// Binds, serves in a tokio task and returns once listening. Scheduler calls are recorded
    /// (see [`HippoEmulator::scheduler_events`]).
    pub async fn start(config: HippoEmulatorConfig) -> Result<HippoEmulator, HippoEmulatorError> {
        let recorder = Arc::new(RecordingScheduler::new());
        Self::launch(config, recorder.clone(), Some(recorder)).await
    }

    /// Like [`HippoEmulator::start`], sending StartJob/DeleteJob to `scheduler`.
    pub async fn start_with_scheduler(
        config: HippoEmulatorConfig,
        scheduler: Arc<dyn JobScheduler>,
    ) -> Result<HippoEmulator, HippoEmulatorError> {
        Self::launch(config, scheduler, None).await
    }

    async fn launch(
        config: HippoEmulatorConfig,
        scheduler: Arc<dyn JobScheduler>,
        recorder: Option<Arc<RecordingScheduler>>,
    ) -> Result<HippoEmulator, HippoEmulatorError> {
        let mut state = match &config.state_file {
            Some(path) => load_state(path).await?,
            None => None,
        }
        .unwrap_or_default();
        if let Some((user, password)) = &config.admin {
            seed_admin(&mut state, user, password);
        }
        let state_file = match &config.state_file {
            Some(path) => Some(
                StateFile::create(path, "hippo emulator", config.state_write_interval, &state)
                    .await
                    .map_err(|source| HippoEmulatorError::WriteState {
                        path: path.clone(),
                        source,
                    })?,
            ),
            None => None,
        };

        let bindle = bindle::BindleClient::new(&config.bindle_url)
            .map_err(HippoEmulatorError::BindleClient)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(Store::from(state)),
            requests: Mutex::new(Requests::default()),
            scheduler,
            bindle,
            settings: Settings {
                platform_domain: config.platform_domain,
                version: config.version,
                registration_open: config.registration_open,
                token_lifetime: config.token_lifetime,
                put_starts_no_job: config.put_starts_no_job,
            },
            state_file,
        });
        StateFile::spawn_writer(&shared);

        let want = config
            .listen
            .unwrap_or_else(|| SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        let (listener, addr) =
            bind(want).map_err(|source| HippoEmulatorError::Bind { addr: want, source })?;

        let app = Router::new()
            .fallback(dispatch)
            // Kestrel's default MaxRequestBodySize.
            .layer(DefaultBodyLimit::max(30_000_000))
            .with_state(shared.clone());
        let server = BackgroundServer::router(listener, app, "hippo emulator")
            .map_err(|e| HippoEmulatorError::Serve(e.to_string()))?;
        Ok(HippoEmulator {
            addr,
            shared,
            recorder,
            server,
        })
    }

    /// The server root, e.g. `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request served so far, in order of completion.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).all.clone()
    }

    pub fn clear_requests(&self) {
        lock(&self.shared.requests).clear();
    }

    /// Recorded POST/PUT/PATCH/DELETE requests, except `POST /api/auth-tokens` and
    /// `POST /api/accounts` (cleared by [`HippoEmulator::clear_requests`]).
    pub fn writes(&self) -> usize {
        lock(&self.shared.requests).writes
    }

    /// A clone of the whole state.
    pub fn snapshot(&self) -> EmulatorState {
        self.shared.state().snapshot()
    }

    /// How many times the state file was written (the first write, at start, included);
    /// changes each time it is. Without a state file: always 0.
    pub fn state_file_writes(&self) -> tokio::sync::watch::Receiver<u64> {
        match &self.shared.state_file {
            Some(file) => file.writes(),
            None => tokio::sync::watch::channel(0).1,
        }
    }

    /// The scheduler calls so far; empty when started with a custom scheduler.
    pub fn scheduler_events(&self) -> Vec<SchedulerEvent> {
        self.recorder
            .as_ref()
            .map(|r| r.events())
            .unwrap_or_default()
    }

    /// Forgets the recorded scheduler calls (default scheduler only).
    pub fn clear_scheduler_events(&self) {
        if let Some(r) = &self.recorder {
            r.clear();
        }
    }

    /// Stops accepting requests, waits (up to 5 s) for in-flight ones to finish and writes
    /// the state file a last time.
    pub async fn stop(mut self) {
        self.server.stop().await;
        crate::state_file::close(&self.shared).await;
    }
}

impl Drop for HippoEmulator {
    /// The server is aborted (its own drop); what the state file still lacks is written now.
    fn drop(&mut self) {
        self.shared.close_state_file();
    }
}

/// The single axum handler: Hippo's routing rules (case-insensitive, 404 vs 405) are easier
/// to reproduce by hand than with axum's router.
async fn dispatch(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req = http::Req::new(
        method,
        uri.path().to_string(),
        uri.query().map(str::to_string),
        headers,
        body,
    );
    let resp = routes::handle(&shared, &req).await;
    lock(&shared.requests).push(RecordedRequest {
        method: req.method.to_string(),
        path: req.path.clone(),
        query: req.raw_query.clone(),
        body: (!req.body.is_empty()).then(|| String::from_utf8_lossy(&req.body).into_owned()),
        status: resp.status().as_u16(),
    });
    // Failed requests can change the state too (Hippo saves rows before its event handlers
    // fail), so this does not look at the status; an unchanged state is not written again.
    if req.method != Method::GET && req.method != Method::HEAD {
        shared.persist_soon();
    }
    resp
}

async fn load_state(path: &Path) -> Result<Option<EmulatorState>, HippoEmulatorError> {
    let bytes = match tokio::fs::read(path).await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(HippoEmulatorError::ReadState {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| HippoEmulatorError::ParseState {
            path: path.to_path_buf(),
            source,
        })
}

/// `Hippo:Administrators`: the configured password wins over a stored one.
fn seed_admin(state: &mut EmulatorState, user: &str, password: &str) {
    let hash = routes::sha256_hex(password);
    match state
        .accounts
        .iter_mut()
        .find(|a| a.user_name.eq_ignore_ascii_case(user))
    {
        Some(a) => {
            a.password_sha256 = hash;
            a.is_administrator = true;
        }
        None => state.accounts.push(Account {
            id: uuid::Uuid::new_v4().to_string(),
            user_name: user.to_string(),
            password_sha256: hash,
            is_administrator: true,
        }),
    }
}

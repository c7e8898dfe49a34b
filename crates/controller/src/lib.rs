//! The long-running controller (`reconcile` without `--once`): keeps Hippo, Bindle and Nomad
//! converged to the deploy files, from files on disk or a Git branch.
//!
//! # Shape
//! One loop owns the desired state and the per-app [`schedule`]. It wakes on a trigger (an
//! interval tick with jitter, a file change, a Git fetch or webhook, a change of leadership, a
//! change to a managed app's allocations on Nomad: [`nomad_watch`]) or when an app's backoff
//! ends, and runs a *cycle*: the apps due are reconciled together
//! through [`apply::reconcile`] (one observation of Hippo serves them all: Hippo can't filter
//! by app, so observing per app would cost O(apps²) requests), and each app's result moves it
//! in the schedule on its own: converged resets its backoff, a transient failure backs it off
//! exponentially, a terminal one stalls it until its desired state changes. Other apps keep
//! their own pace.
//!
//! Writes go through the context's [`WriteGate`]: with Nomad configured it opens only while
//! this replica holds the leader lock ([`leader`]); followers observe and serve status. The
//! HTTP server ([`http`]) reads the shared [`StatusView`] and metrics.

pub mod api;
pub mod dashboard;
pub mod events_store;
pub mod http;
pub mod insight;
pub mod leader;
pub mod liveness;
pub mod memory;
pub mod metrics;
pub mod nomad_watch;
pub mod notifications;
pub mod schedule;
pub mod source;
pub mod webhook;

use hippo_gitops_core::sync::{MutexExt, RwLockExt};
use std::{
    collections::{BTreeMap, BTreeSet},
    hash::{Hash, Hasher},
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
    time::Instant,
};
use tracing::Instrument;

use hippo_gitops_core::{
    apply::{self, ApplyError, Context},
    diff,
    gate::WriteGate,
    secret::Secret,
    spec::{self, AppSpec, DesiredState, RevisionSource},
    stats::RequestStats,
    status::{reason, AppStatus, Condition, ConditionType},
};

use self::{
    leader::{Elector, LeaderConfig},
    metrics::Metrics,
    schedule::{BackoffPolicy, Outcome, Schedule},
    source::{GitRepo, Loaded, SourceConfig},
};

/// What woke the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Interval,
    FileChanged,
    GitPoll,
    Webhook(webhook::Provider),
    BecameLeader,
    LostLeadership,
    /// An app's backoff or progress check is due (internal).
    AppDue,
    /// Reading the deploy files failed (or found no app) earlier: try again (internal).
    SourceRetry,
    /// Allocations of managed apps' Nomad jobs changed ([`nomad_watch`]): those apps are due.
    NomadChanged,
    /// `POST /api/v1/apps/{name}/reconcile`: that app is due.
    Api,
}

impl Trigger {
    fn label(self) -> &'static str {
        match self {
            Trigger::Interval => "interval",
            Trigger::FileChanged => "file",
            Trigger::GitPoll => "git",
            Trigger::Webhook(_) => "webhook",
            Trigger::BecameLeader => "leader",
            Trigger::LostLeadership => "leader",
            Trigger::AppDue => "backoff",
            Trigger::SourceRetry => "source-retry",
            Trigger::NomadChanged => "nomad",
            Trigger::Api => "api",
        }
    }
}

/// The controller's settings.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub source: SourceConfig,
    /// Full reconcile at least this often (±10% jitter, so replicas and controllers spread out).
    pub interval: Duration,
    pub backoff: BackoffPolicy,
    /// How soon to look again at an app still rolling out on Nomad.
    pub progress_interval: Duration,
    /// How often apps with a `discover` range look for new versions on the Bindle server.
    pub discover_interval: Duration,
    /// HTTP address; `None`: no HTTP server.
    pub listen: Option<SocketAddr>,
    /// HTTP connections served at once; `None`: a quarter of the process's file descriptor
    /// limit ([`http::max_connections`]).
    pub max_connections: Option<usize>,
    pub webhook_secret: Option<Secret>,
    /// Leader election; used only when Nomad is configured.
    pub leader: Option<LeaderConfig>,
    /// How long in-flight writes may take to finish on shutdown.
    pub shutdown_grace: Duration,
    /// Watch deploy files for changes (Files source).
    pub watch: bool,
    /// The dashboard, API, event history and notifications.
    pub insight: insight::InsightConfig,
}

impl ControllerConfig {
    pub fn new(source: SourceConfig) -> Self {
        ControllerConfig {
            source,
            interval: Duration::from_secs(60),
            backoff: BackoffPolicy::default(),
            progress_interval: Duration::from_secs(5),
            discover_interval: Duration::from_secs(60),
            listen: None,
            max_connections: None,
            webhook_secret: None,
            leader: Some(LeaderConfig::new("hippo-gitops/leader")),
            shutdown_grace: Duration::from_secs(30),
            watch: true,
            insight: insight::InsightConfig::default(),
        }
    }
}

/// Whether this replica writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Role {
    /// Holds the leader lock.
    Leader,
    /// Another replica holds the lock (or none could be taken yet).
    #[default]
    Follower,
    /// No Nomad, no election: the only instance.
    Single,
}

/// Where the desired state comes from, and what was applied.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceStatus {
    /// `files` or `git`.
    pub kind: &'static str,
    /// The Git URL without credentials, or the paths.
    pub location: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// The commit checked out now.
    pub commit: Option<String>,
    /// The last commit every app converged at.
    pub last_applied_commit: Option<String>,
    pub last_applied_at: Option<DateTime<Utc>>,
    /// Why the latest attempt to fetch or load did not replace the desired state (the source
    /// could not be read, or defined no app): the last state loaded stays in force, nothing is
    /// pruned, and the attempt is repeated with backoff.
    pub error: Option<String>,
}

/// A deploy file left out.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RejectedFile {
    pub file: PathBuf,
    /// `file:line:column: field: message`, as `validate` prints them.
    pub problems: Vec<String>,
}

/// The last cycle.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CycleSummary {
    pub id: String,
    pub trigger: &'static str,
    pub started_at: DateTime<Utc>,
    pub duration_seconds: f64,
    pub apps: usize,
    /// Whether the cycle changed anything (applied a change, deleted an orphan). A follower's
    /// cycle, an idle one and a rollout check write nothing.
    pub wrote: bool,
}

/// The changes one cycle made to one app.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppliedChanges {
    /// The cycle (`reconcileId`).
    pub id: String,
    pub at: DateTime<Utc>,
    pub changes: Vec<String>,
}

/// The last cycle that changed anything, and what it changed per app.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppliedCycle {
    pub id: String,
    pub at: DateTime<Utc>,
    /// App → the changes made to it.
    pub changes: BTreeMap<String, Vec<String>>,
}

/// One app: the same fields as `hippo-gitops status`, plus the controller's schedule.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DaemonAppStatus {
    #[serde(flatten)]
    pub status: AppStatus,
    /// Failures in a row (the backoff exponent).
    pub failures: u32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The cycle that last reconciled the app.
    pub reconcile_id: Option<String>,
    /// Changes made to it in that cycle (often none: a rollout check, an idle cycle).
    pub applied: Vec<String>,
    /// The last cycle that changed the app, kept until another one does (since the controller
    /// started).
    pub last_applied: Option<AppliedChanges>,
}

impl DaemonAppStatus {
    /// An app no cycle has reconciled, shown with `condition`.
    pub fn unreconciled(app: &str, condition: Condition) -> Self {
        DaemonAppStatus {
            status: AppStatus {
                app: app.to_string(),
                condition,
                channels: Vec::new(),
            },
            failures: 0,
            next_attempt_at: None,
            reconcile_id: None,
            applied: Vec::new(),
            last_applied: None,
        }
    }
}

/// What `/status` serves.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusView {
    /// As of the last [`Shared::view`]; the HTTP answers take it live from the gate.
    #[serde(skip)]
    pub role: Role,
    /// The first observation is done.
    pub ready: bool,
    pub source: SourceStatus,
    pub last_reconcile: Option<CycleSummary>,
    /// The last cycle that changed anything (`lastReconcile` moves on with every cycle).
    pub last_applied: Option<AppliedCycle>,
    pub rejected_files: Vec<RejectedFile>,
    pub apps: Vec<DaemonAppStatus>,
}

/// State shared between the loop, the elector and the HTTP server.
pub struct Shared {
    pub view: RwLock<StatusView>,
    pub metrics: Mutex<Metrics>,
    pub stats: RequestStats,
    pub gate: WriteGate,
    pub triggers: mpsc::Sender<Trigger>,
    pub webhook_secret: Option<Secret>,
    /// The Git branch webhooks must name (Git source).
    pub branch: Option<String>,
    queue_depth: std::sync::atomic::AtomicUsize,
    election: bool,
    /// Whether the loop is alive (`/healthz`).
    pub liveness: liveness::Liveness,
    /// Events, notifications and the apps' details (API, dashboard).
    pub insight: Arc<insight::Insight>,
}

impl Shared {
    /// The status with the role as of now.
    pub fn view(&self) -> StatusView {
        let mut view = self.view.read_recovered().clone();
        view.role = self.role();
        view
    }

    pub fn role(&self) -> Role {
        if !self.election {
            Role::Single
        } else if self.gate.is_leader() {
            Role::Leader
        } else {
            Role::Follower
        }
    }

    /// `/status`: serialized under the read lock (a copy of 1000 apps' statuses per request
    /// would be a megabyte each time), with the role as of now.
    pub fn status_json(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Body<'a> {
            role: Role,
            #[serde(flatten)]
            view: &'a StatusView,
        }
        let view = self.view.read_recovered();
        serde_json::to_vec(&Body {
            role: self.role(),
            view: &view,
        })
        .expect("the status view serializes")
    }

    /// Whether the first observation is done.
    pub fn ready(&self) -> bool {
        self.view.read_recovered().ready
    }

    pub fn metrics_text(&self) -> String {
        let view = self.view.read_recovered();
        let depth = self.queue_depth.load(std::sync::atomic::Ordering::Relaxed);
        let mut text = self
            .metrics
            .locked()
            .render(&view, self.role(), &self.stats, depth);
        self.insight.notifier.render_metrics(&mut text);
        text
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("watching the deploy files: {0}")]
    Watch(#[from] notify::Error),
    #[error("the controller loop failed: {0}")]
    Join(String),
    #[error(transparent)]
    Insight(#[from] insight::InsightError),
}

/// A running controller.
pub struct Daemon {
    /// Where the HTTP server listens (port 0 resolved).
    pub http_addr: Option<SocketAddr>,
    pub shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Daemon {
    /// Starts the HTTP server, the election and the loop. `ctx.gate` is replaced by the
    /// controller's own gate.
    pub async fn start(
        config: ControllerConfig,
        mut ctx: Context,
        stats: RequestStats,
    ) -> Result<Daemon, ControllerError> {
        let election = ctx.nomad.is_some() && config.leader.is_some();
        let gate = if election {
            WriteGate::leased()
        } else {
            WriteGate::single()
        };
        ctx.gate = gate.clone();
        // Daemon cycles look at Nomad but don't wait for it: progress is checked again later.
        ctx.options.wait = None;
        // Settled bindles are not asked for again every cycle (re-checked every 10 minutes);
        // an app that discovers asks again every discover interval.
        ctx.bindle_cache = Some(Arc::new(
            hippo_gitops_core::observe::BindleCache::new(Duration::from_secs(600))
                .discovering_every(config.discover_interval),
        ));
        let (trigger_tx, trigger_rx) = mpsc::channel(64);
        let branch = match &config.source {
            SourceConfig::Git(g) => Some(g.branch.clone()),
            SourceConfig::Files { .. } => None,
        };
        let insight = Arc::new(insight::Insight::open(&config.insight)?);
        let shared = Arc::new(Shared {
            view: RwLock::new(StatusView::default()),
            metrics: Mutex::default(),
            stats,
            gate: gate.clone(),
            triggers: trigger_tx.clone(),
            webhook_secret: config.webhook_secret.clone(),
            branch,
            queue_depth: Default::default(),
            election,
            liveness: liveness::Liveness::new(config.interval),
            insight,
        });
        let (stop_tx, stop_rx) = watch::channel(false);

        let http = match config.listen {
            Some(addr) => {
                let max = config.max_connections.unwrap_or_else(http::max_connections);
                let (bound, server) = http::serve(addr, shared.clone(), max, stop_rx.clone())?;
                tracing::info!(addr = %bound, "HTTP server listening on http://{bound} (dashboard at /, /api/v1, /healthz /readyz /metrics /status /hooks/*)");
                Some((bound, server))
            }
            None => None,
        };
        let http_addr = http.as_ref().map(|(a, _)| *a);

        let watcher = match (&config.source, config.watch) {
            (SourceConfig::Files { paths, .. }, true) => {
                Some(source::watch(paths, trigger_tx.clone())?)
            }
            _ => None,
        };

        let (release_tx, release_rx) = watch::channel(false);
        let elector = match (&ctx.nomad, &config.leader) {
            (Some(nomad), Some(lc)) if election => {
                let e = Arc::new(Elector::new(nomad.clone(), lc.clone(), gate.clone()));
                tracing::info!(lock = %lc.path, ttl = ?lc.ttl, "leader election through a Nomad variable lock");
                Some(tokio::spawn(e.run(release_rx, trigger_tx.clone())))
            }
            _ => {
                tracing::info!("running as a single instance: no Nomad configured for leader election, so run only one replica");
                None
            }
        };

        let (managed_jobs, managed_rx) = watch::channel(Arc::default());
        let nomad_changed: Arc<Mutex<BTreeSet<String>>> = Arc::default();
        let nomad_watch = ctx.nomad.clone().map(|observer| {
            nomad_watch::spawn(
                observer,
                managed_rx,
                nomad_changed.clone(),
                trigger_tx.clone(),
                stop_rx.clone(),
            )
        });

        let prune_orphans = ctx.options.prune_orphans;
        let looper = Loop {
            config,
            ctx,
            prune_orphans,
            source_failures: 0,
            source_retry_at: None,
            shared: shared.clone(),
            schedule: Schedule::default(),
            loaded: Loaded::default(),
            specs: BTreeMap::new(),
            git: None,
            previous_origin: BTreeMap::new(),
            pack_cache: Arc::default(),
            managed_jobs,
            nomad_changed,
            failing: BTreeSet::new(),
            failing_channels: BTreeSet::new(),
        };
        let task = tokio::spawn(async move {
            let _watcher = watcher;
            looper.run(trigger_rx, stop_rx).await;
            // In-flight writes are done (or cut off after the grace): hand over the lock.
            let _ = release_tx.send(true);
            if let Some(e) = elector {
                let _ = e.await;
            }
            if let Some(w) = nomad_watch {
                let _ = w.await;
            }
            if let Some((_, server)) = http {
                let _ = server.await;
            }
        });
        Ok(Daemon {
            http_addr,
            shared,
            stop: stop_tx,
            task,
        })
    }

    /// Stops gracefully: no new writes, in-flight ones finish (within the grace), the lock is
    /// released, the HTTP server closes.
    pub async fn shutdown(self) -> Result<(), ControllerError> {
        let _ = self.stop.send(true);
        self.task
            .await
            .map_err(|e| ControllerError::Join(e.to_string()))
    }
}

/// The reconcile loop's own state.
struct Loop {
    config: ControllerConfig,
    ctx: Context,
    shared: Arc<Shared>,
    schedule: Schedule,
    loaded: Loaded,
    specs: BTreeMap<String, Arc<AppSpec>>,
    git: Option<GitRepo>,
    /// Which file each app came from at the last load, to stall an app whose file went bad.
    previous_origin: BTreeMap<String, PathBuf>,
    /// Local bindles packed by earlier loads: a reload hashes only what changed.
    pack_cache: Arc<hippo_gitops_core::package::PackCache>,
    /// `--prune-orphans` as configured; off while the source is in error (empty-set guard).
    prune_orphans: bool,
    /// Failed reads of the source in a row (the backoff exponent).
    source_failures: u32,
    /// When to read the source again after a failure.
    source_retry_at: Option<Instant>,
    /// The managed apps' Nomad jobs, for [`nomad_watch`].
    managed_jobs: watch::Sender<Arc<nomad_watch::ManagedJobs>>,
    /// Apps whose Nomad allocations changed since the last cycle ([`nomad_watch`]).
    nomad_changed: Arc<Mutex<BTreeSet<String>>>,
    /// Apps whose last result was a failure, and channels whose last health was `Failed`: their
    /// recovery is logged once.
    failing: BTreeSet<String>,
    failing_channels: BTreeSet<(String, String)>,
}

impl Loop {
    async fn run(mut self, mut triggers: mpsc::Receiver<Trigger>, mut stop: watch::Receiver<bool>) {
        self.schedule = Schedule::new(self.config.backoff, self.config.progress_interval);
        let git_interval = self.init_source();
        // Files are looked at again on every interval, watched or not: a lost or dropped
        // watcher event (a full queue, a directory replaced) never leaves a change unapplied.
        // Cheap: only metadata is read unless something moved (`unchanged`), and a bindle whose
        // files are unchanged is not hashed again (PackCache).
        let rescan_files = matches!(self.config.source, SourceConfig::Files { .. });
        let far = Duration::from_secs(365 * 86400);
        let mut next_interval = Instant::now();
        let mut next_git = Instant::now() + git_interval.unwrap_or(far);
        let mut reload = true;
        let mut trigger = Trigger::Interval;
        let shared = self.shared.clone();
        let _ended = liveness::EndOnDrop(&shared.liveness);
        loop {
            self.shared.liveness.beat();
            if *stop.borrow() {
                break;
            }
            if reload {
                self.reload().await;
            }
            // A file change or a new commit makes the apps it changed due (update_desired did),
            // a change on Nomad the apps whose jobs it touched; an interval, a webhook (someone
            // asked for a reconcile) or a new leader, all.
            let moved_on_nomad = std::mem::take(&mut *self.nomad_changed.locked());
            for app in &moved_on_nomad {
                self.schedule.mark_due(app);
            }
            for app in self.shared.insight.take_requested() {
                self.schedule.retry_now(&app);
            }
            if !matches!(
                trigger,
                Trigger::AppDue
                    | Trigger::FileChanged
                    | Trigger::GitPoll
                    | Trigger::SourceRetry
                    | Trigger::NomadChanged
                    | Trigger::Api
            ) {
                self.schedule.mark_all_due(Instant::now().into_std());
            }
            let gate = self.shared.gate.clone();
            let grace = self.config.shutdown_grace;
            let stopped = {
                let cycle = self.cycle(trigger);
                tokio::pin!(cycle);
                tokio::select! {
                    _ = &mut cycle => false,
                    _ = stop.changed() => {
                        // No new writes; the ones in flight may finish within the grace.
                        gate.stop();
                        if tokio::time::timeout(grace, &mut cycle).await.is_err() {
                            tracing::warn!(grace = ?grace, "in-flight writes did not finish within the grace period: stopping anyway (the next run converges from where this one stopped)");
                        }
                        true
                    }
                }
            };
            if stopped {
                break;
            }
            self.shared.queue_depth.store(
                self.schedule.queue_depth(),
                std::sync::atomic::Ordering::Relaxed,
            );

            // Sleep until the next reason to work.
            let now = Instant::now();
            if trigger == Trigger::Interval || next_interval <= now {
                next_interval = now + jittered(self.config.interval);
            }
            let app_due = self
                .schedule
                .next_wakeup()
                .map(Instant::from_std)
                .unwrap_or(next_interval);
            let wake = next_interval.min(app_due);
            let source_retry = self.source_retry_at;
            trigger = tokio::select! {
                _ = stop.changed() => break,
                t = triggers.recv() => match t {
                    Some(t) => t,
                    None => break,
                },
                _ = tokio::time::sleep_until(wake) => {
                    if Instant::now() >= next_interval { Trigger::Interval } else { Trigger::AppDue }
                }
                _ = tokio::time::sleep_until(next_git), if git_interval.is_some() => Trigger::GitPoll,
                _ = tokio::time::sleep_until(source_retry.unwrap_or(next_interval)), if source_retry.is_some() => Trigger::SourceRetry,
            };
            if trigger == Trigger::GitPoll {
                next_git = Instant::now() + git_interval.unwrap_or(far);
            }
            if trigger == Trigger::FileChanged {
                // Editors write a file in several steps: take the burst as one change.
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            reload = reloads(trigger) || (rescan_files && trigger == Trigger::Interval);
            while let Ok(t) = triggers.try_recv() {
                reload |= reloads(t);
                if trigger == Trigger::AppDue {
                    trigger = t;
                }
            }
        }
        self.shared.gate.stop();
    }

    /// Sets up the source's part of the status; answers the Git poll interval.
    fn init_source(&mut self) -> Option<Duration> {
        let mut view = self.shared.view.write_recovered();
        match &self.config.source {
            SourceConfig::Git(g) => {
                let repo = GitRepo::new(g.clone());
                view.source = SourceStatus {
                    kind: "git",
                    location: source::redact_url(&g.url),
                    branch: Some(g.branch.clone()),
                    last_applied_commit: repo.recorded_applied(),
                    ..Default::default()
                };
                self.git = Some(repo);
                Some(g.interval)
            }
            SourceConfig::Files { paths, .. } => {
                view.source = SourceStatus {
                    kind: "files",
                    location: paths
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    ..Default::default()
                };
                None
            }
        }
    }

    /// Fetches (Git) and loads the deploy files, unless they and their local bindles are
    /// unchanged since the last load. On failure the previous desired state stays.
    async fn reload(&mut self) {
        if let Some(repo) = self.git.as_mut() {
            if let Err(e) = repo.sync().await {
                self.source_failed(format!("{e}: keeping the last desired state"));
                return;
            }
        }
        let (paths, options) = match (&self.git, &self.config.source) {
            (Some(repo), _) => repo.files(),
            (None, SourceConfig::Files { paths, options }) => (paths.clone(), options.clone()),
            (None, SourceConfig::Git(_)) => return,
        };
        let unchanged = self.unchanged(&paths, &options).await;
        {
            let mut metrics = self.shared.metrics.locked();
            match unchanged {
                true => metrics.source_unchanged += 1,
                false => metrics.source_parsed += 1,
            }
        }
        if unchanged {
            tracing::debug!(
                "the deploy files and their local bindles are unchanged: not read again"
            );
            return;
        }
        let result = match &self.git {
            Some(repo) => repo.load(self.pack_cache.clone()).await,
            None => source::load_files(paths, options, self.pack_cache.clone()).await,
        };
        let mut loaded = match result {
            Ok(l) => l,
            Err(e) => {
                self.source_failed(format!("{e}: keeping the last desired state"));
                return;
            }
        };
        self.log_new_problems(&loaded.rejected);
        let empty = empty_source(&loaded);
        if let (Some(why), false) = (&empty, self.specs.is_empty()) {
            // The empty-set guard: a source that suddenly names no app is taken as a mistake
            // (a deleted directory, a commit that removed everything, every file broken), never
            // as "remove them all". The files' problems are shown all the same.
            self.shared.view.write_recovered().rejected_files = rejected_files(&loaded.rejected);
            self.loaded.rejected = loaded.rejected;
            self.source_failed(format!(
                "{why}: keeping the {} app(s) last loaded and pruning nothing (an empty source is never applied; to stop managing every app, stop the controller)",
                self.specs.len()
            ));
            return;
        }
        if loaded.commit.is_some() && loaded.commit != self.loaded.commit {
            tracing::info!(
                commit = loaded.commit.as_deref().unwrap_or_default(),
                "new commit checked out"
            );
        }

        let fingerprints: Vec<(String, u64)> = loaded
            .desired
            .apps
            .iter()
            .map(|a| (a.name.clone(), fingerprint(a)))
            .collect();
        let changed = self.schedule.update_desired(&fingerprints);
        if !changed.is_empty() {
            tracing::info!(apps = %changed.join(", "), "desired state changed");
        }
        self.specs = std::mem::take(&mut loaded.desired.apps)
            .into_iter()
            .map(|a| (a.name.clone(), a))
            .collect();
        self.failing.retain(|app| self.specs.contains_key(app));
        self.shared
            .insight
            .configure_notifications(&loaded.desired.notifications);
        self.shared
            .insight
            .retain_apps(&|app| self.specs.contains_key(app));
        self.failing_channels
            .retain(|(app, _)| self.specs.contains_key(app));
        // Bindles no longer named (or whose file was left out) are packed afresh if they return.
        self.pack_cache.retain(
            &self
                .specs
                .values()
                .flat_map(|a| a.revisions.iter())
                .filter_map(|r| match &r.source {
                    RevisionSource::Local(b) => Some(b.dir.clone()),
                    RevisionSource::Existing => None,
                })
                .collect(),
        );
        // Apps whose file went bad keep their last origin, to be shown as stalled.
        self.previous_origin.retain(|app, file| {
            loaded.rejected.contains_key(file) && !self.specs.contains_key(app)
        });
        for a in self.specs.values() {
            self.previous_origin
                .insert(a.name.clone(), a.origin.file.clone());
        }
        if self.source_failures > 0 {
            tracing::info!("the deploy files are read again");
        }
        self.source_failures = 0;
        self.source_retry_at = None;
        self.ctx.options.prune_orphans = self.prune_orphans && empty.is_none();
        if let Some(why) = &empty {
            tracing::warn!("{why}: nothing to reconcile, nothing pruned");
        }
        {
            let mut view = self.shared.view.write_recovered();
            view.source.error = empty;
            view.source.commit = loaded.commit.clone();
            view.rejected_files = rejected_files(&loaded.rejected);
        }
        // The apps live on in `specs` only: one copy of 1000 apps' invoices is enough.
        self.loaded = Loaded {
            desired: DesiredState::default(),
            ..loaded
        };
    }

    /// Whether the last load stands as it is: it read every file without a problem, at the
    /// commit checked out now, and neither the deploy files nor a local bindle of the apps it
    /// gave have moved since (by metadata, [`source::unchanged`]).
    async fn unchanged(&self, paths: &[PathBuf], options: &spec::LoadOptions) -> bool {
        let Some(last) = self.loaded.stamp else {
            return false;
        };
        if !self.loaded.rejected.is_empty()
            || self.git.as_ref().and_then(|r| r.head()) != self.loaded.commit.as_deref()
        {
            return false;
        }
        let bindles = self
            .specs
            .values()
            .flat_map(|a| a.revisions.iter())
            .filter_map(|r| match &r.source {
                RevisionSource::Local(b) => Some(b.clone()),
                RevisionSource::Existing => None,
            })
            .collect();
        source::unchanged(
            paths.to_vec(),
            options.clone(),
            last,
            self.pack_cache.clone(),
            bindles,
        )
        .await
    }

    /// A load reads every file again: a file's problems are logged when they first appear.
    fn log_new_problems(&self, rejected: &BTreeMap<PathBuf, Vec<spec::Diagnostic>>) {
        for (file, problems) in rejected {
            if self.loaded.rejected.get(file) == Some(problems) {
                continue;
            }
            for p in problems {
                tracing::error!("{p} (this file is left out until it is fixed; the others go on)");
            }
        }
    }

    /// The source could not be read, or was refused as empty: the desired state stays as it
    /// was, orphans are not pruned, and the source is read again after a backoff (at most the
    /// interval).
    fn source_failed(&mut self, error: String) {
        // What was last loaded is not what the source holds: the next reload reads it all.
        self.loaded.stamp = None;
        self.source_failures += 1;
        let delay = self
            .config
            .backoff
            .delay(self.source_failures)
            .min(self.config.interval);
        self.source_retry_at = Some(Instant::now() + delay);
        self.ctx.options.prune_orphans = false;
        let mut view = self.shared.view.write_recovered();
        if view.source.error.as_deref() != Some(error.as_str()) {
            tracing::warn!(retry_in = ?delay, "{error}");
        } else {
            tracing::debug!(retry_in = ?delay, "{error}");
        }
        view.source.error = Some(error);
    }

    /// Reconciles (leader) or observes (follower) the apps due, and updates the status.
    async fn cycle(&mut self, trigger: Trigger) {
        let now = Instant::now().into_std();
        let due = self.schedule.take_due(now);
        let ready = self.shared.view.read_recovered().ready;
        if due.is_empty() && ready {
            self.publish(Vec::new(), None);
            return;
        }
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let span = tracing::info_span!("reconcile", id = %id, trigger = trigger.label());
        let desired = DesiredState {
            apps: due
                .iter()
                .filter_map(|n| self.specs.get(n).cloned())
                .collect(),
            ..Default::default()
        };
        let started = std::time::Instant::now();
        let started_at = Utc::now();
        let leader = self.ctx.gate.check().is_ok();
        let mut entries = Vec::new();
        let mut observed = false;
        let mut wrote = false;
        async {
            if leader {
                tracing::debug!(apps = desired.apps.len(), "reconciling");
                match send(apply::reconcile(&desired, &self.ctx)).await {
                    Ok(report) => {
                        observed = true;
                        wrote = report.apps.iter().any(|r| !r.applied.is_empty())
                            || report.orphans.iter().any(|(_, deleted)| matches!(deleted, Ok(true)));
                        self.update_managed_jobs(&report.snapshot);
                        let insight = &self.shared.insight;
                        insight.record_details(&desired, report.apps.iter().map(|r| &r.plan), &report.snapshot);
                        insight.record_run(&desired, &report, self.loaded.commit.as_deref(), &|app| {
                            self.specs.get(app).map(|a| fingerprint(a))
                        });
                        // The report's statuses are final: the core made them from its last
                        // observation and the run's errors.
                        for mut result in report.apps {
                            let outcome = outcome_of(&result);
                            let retry_in = self.schedule.record(&result.app, outcome, std::time::Instant::now());
                            self.count_delivery(&result);
                            self.count(outcome);
                            log_result(&result, outcome, retry_in);
                            self.log_recovery(&result, outcome);
                            let applied = std::mem::take(&mut result.applied)
                                .into_iter()
                                .map(|a| a.description)
                                .collect();
                            entries.push(self.entry(result.status, &id, applied));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "observing Hippo failed; the apps due are retried with backoff");
                        // Not the apps' fault: retried with backoff, never stalled.
                        for spec in &desired.apps {
                            self.schedule.record(&spec.name, Outcome::Retry, std::time::Instant::now());
                            self.count(Outcome::Retry);
                            entries.push(self.entry(
                                AppStatus {
                                    app: spec.name.clone(),
                                    condition: Condition::new(
                                        ConditionType::Reconciling,
                                        reason::OBSERVE_FAILED,
                                        e.to_string(),
                                    ),
                                    channels: Vec::new(),
                                },
                                &id,
                                Vec::new(),
                            ));
                        }
                    }
                }
            } else {
                match send(apply::plan(&desired, &self.ctx)).await {
                    Ok(report) => {
                        observed = true;
                        self.update_managed_jobs(&report.snapshot);
                        self.shared.insight.record_details(&desired, &report.plan.apps, &report.snapshot);
                        for st in report.statuses {
                            self.count(Outcome::Skipped);
                            entries.push(self.entry(st, &id, Vec::new()));
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "observing Hippo failed"),
                }
            }
        }
        .instrument(span)
        .await;
        let seconds = started.elapsed().as_secs_f64();
        self.shared
            .metrics
            .locked()
            .observe_cycle(seconds, trigger.label());
        if observed {
            self.shared.view.write_recovered().ready = true;
        }
        let applied: BTreeMap<String, Vec<String>> = entries
            .iter()
            .filter(|e| !e.applied.is_empty())
            .map(|e| (e.status.app.clone(), e.applied.clone()))
            .collect();
        self.publish(
            entries,
            Some(CycleSummary {
                id: id.clone(),
                trigger: trigger.label(),
                started_at,
                duration_seconds: seconds,
                apps: desired.apps.len(),
                wrote,
            }),
        );
        if !applied.is_empty() {
            self.shared.view.write_recovered().last_applied = Some(AppliedCycle {
                id,
                at: Utc::now(),
                changes: applied,
            });
        }
        if leader && observed {
            self.record_commit();
        }
    }

    /// Tells [`nomad_watch`] the managed apps' jobs, as `snapshot` shows them.
    fn update_managed_jobs(&self, snapshot: &hippo_gitops_core::observe::Snapshot) {
        if self.ctx.nomad.is_none() {
            return;
        }
        let jobs = nomad_watch::managed_jobs(self.specs.values().map(|a| &**a), snapshot);
        self.managed_jobs.send_if_modified(|kept| {
            let modified = **kept != jobs;
            if modified {
                *kept = Arc::new(jobs);
            }
            modified
        });
    }

    /// Logs, once per recovery, an app that failed and is Ready again, and a channel whose
    /// allocations failed and are healthy again.
    fn log_recovery(&mut self, result: &apply::AppResult, outcome: Outcome) {
        let app = result.app.as_str();
        for (channel, health) in &result.health {
            let key = (result.app.clone(), channel.clone());
            match health {
                diff::ChannelHealth::Failed { .. } => {
                    self.failing_channels.insert(key);
                }
                diff::ChannelHealth::Ready { .. } if self.failing_channels.remove(&key) => {
                    tracing::info!(app, channel = %channel, "{app}/{channel} healthy again");
                }
                _ => {}
            }
        }
        match (&result.error, outcome) {
            (Some(ApplyError::NotWritten(_)), _) => {}
            (Some(_), _) => {
                self.failing.insert(result.app.clone());
            }
            (None, Outcome::Converged) if self.failing.remove(app) => {
                tracing::info!(app, "app {app} healthy again");
            }
            _ => {}
        }
    }

    /// Counts the app's discoveries, promotions and rollbacks, and wakes for what it waits on:
    /// the end of a promotion's window, its next check, the next discovery round.
    fn count_delivery(&mut self, result: &apply::AppResult) {
        {
            let mut metrics = self.shared.metrics.locked();
            for a in &result.applied {
                match a.made {
                    apply::Made::RevisionDiscovered => metrics.discovered += 1,
                    apply::Made::ChannelPromoted => metrics.promotions += 1,
                    apply::Made::ChannelRolledBack => metrics.rollbacks += 1,
                    _ => {}
                }
            }
        }
        let Some(spec) = self.specs.get(&result.app) else {
            return;
        };
        let now = std::time::Instant::now();
        let mut wake: Option<Duration> =
            (!spec.discover.is_empty()).then_some(self.config.discover_interval);
        for p in &result.plan.promotions {
            if let Some(healthy_for) = p.healthy_for_ms {
                let left = Duration::from_millis(p.after_ms.saturating_sub(healthy_for));
                wake = Some(wake.map_or(left, |w| w.min(left)));
            }
        }
        let probe = self
            .ctx
            .prober
            .next_due(std::slice::from_ref(spec), Utc::now().timestamp_millis());
        if let Some(p) = probe {
            wake = Some(wake.map_or(p, |w| w.min(p)));
        }
        if let Some(w) = wake {
            // Not sooner than 100 ms: a window that just ended is looked at, not spun on.
            self.schedule
                .requeue_by(&result.app, now + w.max(Duration::from_millis(100)));
        }
    }

    fn count(&self, outcome: Outcome) {
        let label = match outcome {
            Outcome::Converged => "converged",
            Outcome::Progressing => "progressing",
            Outcome::Retry => "retrying",
            Outcome::Terminal => "stalled",
            Outcome::Skipped => "skipped",
        };
        self.shared.metrics.locked().count_result(label);
    }

    /// `failures` and `next_attempt_at` are filled in from the schedule by [`Self::publish`],
    /// and `last_applied` kept from the app's earlier entry when this cycle changed nothing.
    fn entry(&self, status: AppStatus, id: &str, applied: Vec<String>) -> DaemonAppStatus {
        DaemonAppStatus {
            next_attempt_at: None,
            failures: 0,
            reconcile_id: Some(id.to_string()),
            last_applied: (!applied.is_empty()).then(|| AppliedChanges {
                id: id.to_string(),
                at: Utc::now(),
                changes: applied.clone(),
            }),
            applied,
            status,
        }
    }

    /// Merges this cycle's app entries into the shared view.
    fn publish(&self, entries: Vec<DaemonAppStatus>, summary: Option<CycleSummary>) {
        let mut view = self.shared.view.write_recovered();
        let mut apps: BTreeMap<String, DaemonAppStatus> = view
            .apps
            .drain(..)
            .map(|a| (a.status.app.clone(), a))
            .collect();
        for mut e in entries {
            if let Some(earlier) = apps.remove(&e.status.app) {
                e.last_applied = e.last_applied.or(earlier.last_applied);
            }
            apps.insert(e.status.app.clone(), e);
        }
        apps.retain(|name, _| {
            self.specs.contains_key(name) || self.previous_origin.contains_key(name)
        });
        // Apps whose deploy file went bad: stalled until it is fixed.
        for (app, file) in &self.previous_origin {
            if self.specs.contains_key(app) {
                continue;
            }
            let problems = self
                .loaded
                .rejected
                .get(file)
                .map(|p| {
                    p.iter()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_default();
            let condition = Condition::new(
                ConditionType::Stalled,
                reason::INVALID_DEPLOY_FILE,
                format!("left out until its deploy file is fixed: {problems}"),
            );
            match apps.get_mut(app) {
                Some(entry) => entry.status.condition = condition,
                None => {
                    apps.insert(app.clone(), DaemonAppStatus::unreconciled(app, condition));
                }
            }
        }
        // Keep the schedule's view of each app current (backoff moves between cycles).
        for a in apps.values_mut() {
            if let Some((failures, next, _)) = self.schedule.state_of(&a.status.app) {
                a.failures = failures;
                a.next_attempt_at = next.map(wall_clock);
            }
        }
        view.apps = apps.into_values().collect();
        if summary.is_some() {
            view.last_reconcile = summary;
        }
    }

    /// With a Git source: once every app of every file converged at the checked-out commit,
    /// records it as applied.
    fn record_commit(&self) {
        let (Some(repo), Some(commit)) = (&self.git, &self.loaded.commit) else {
            return;
        };
        let mut view = self.shared.view.write_recovered();
        let ready: BTreeSet<&str> = view
            .apps
            .iter()
            .filter(|a| a.status.condition.kind == ConditionType::Ready)
            .map(|a| a.status.app.as_str())
            .collect();
        let all_ready = self.loaded.rejected.is_empty()
            && self.specs.keys().all(|name| ready.contains(name.as_str()));
        if !all_ready || view.source.last_applied_commit.as_ref() == Some(commit) {
            return;
        }
        view.source.last_applied_commit = Some(commit.clone());
        view.source.last_applied_at = Some(Utc::now());
        tracing::info!(commit = %commit, "applied commit: every app converged");
        self.shared.insight.commit_applied(commit);
        if let Err(e) = repo.record_applied(commit) {
            tracing::warn!(error = %e, "could not record the applied commit on disk");
        }
    }
}

/// Why `loaded` counts as an empty source (no valid app in it), if it does.
fn empty_source(loaded: &Loaded) -> Option<String> {
    if !loaded.desired.apps.is_empty() {
        return None;
    }
    Some(match loaded.rejected.values().flatten().next() {
        Some(problem) => format!("the deploy files define no valid app ({problem})"),
        None => "the deploy files define no app".to_string(),
    })
}

fn rejected_files(rejected: &BTreeMap<PathBuf, Vec<spec::Diagnostic>>) -> Vec<RejectedFile> {
    rejected
        .iter()
        .map(|(file, problems)| RejectedFile {
            file: file.clone(),
            problems: problems.iter().map(|p| p.to_string()).collect(),
        })
        .collect()
}

/// Boxes a future as `Send` at its concrete lifetimes: rustc can't prove the stream
/// combinators inside apply `Send` for every lifetime (rust-lang/rust#102211), which
/// `tokio::spawn` would otherwise ask of the whole loop.
fn send<'a, T>(
    f: impl std::future::Future<Output = T> + Send + 'a,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>> {
    Box::pin(f)
}

/// A monotonic instant as wall-clock time, for status.
fn wall_clock(t: std::time::Instant) -> DateTime<Utc> {
    Utc::now()
        + chrono::Duration::from_std(t.saturating_duration_since(std::time::Instant::now()))
            .unwrap_or_default()
}

fn reloads(t: Trigger) -> bool {
    matches!(
        t,
        Trigger::FileChanged | Trigger::GitPoll | Trigger::Webhook(_) | Trigger::SourceRetry
    )
}

/// How an app's result moves it in the schedule.
fn outcome_of(result: &apply::AppResult) -> Outcome {
    match &result.error {
        None if result
            .health
            .iter()
            .any(|(_, h)| matches!(h, diff::ChannelHealth::Progressing { .. })) =>
        {
            Outcome::Progressing
        }
        None => Outcome::Converged,
        Some(ApplyError::NotWritten(_)) => Outcome::Skipped,
        // A failed allocation among them: Nomad may recover by itself (a node comes back).
        Some(e) if e.is_transient() => Outcome::Retry,
        Some(_) => Outcome::Terminal,
    }
}

fn log_result(result: &apply::AppResult, outcome: Outcome, retry_in: Option<Duration>) {
    let app = result.app.as_str();
    match (&result.error, outcome) {
        (None, Outcome::Progressing) => {
            tracing::info!(app, "converged in Hippo; rolling out on Nomad")
        }
        (None, _) if !result.applied.is_empty() => {
            tracing::info!(app, changes = result.applied.len(), "converged")
        }
        (None, _) => tracing::debug!(app, "up to date"),
        (Some(e), Outcome::Terminal) => tracing::error!(
            app,
            reason = e.reason(),
            "stalled until its desired state changes: {e}"
        ),
        (Some(e), Outcome::Skipped) => tracing::info!(app, "{e}"),
        (Some(e), _) => tracing::warn!(
            app,
            reason = e.reason(),
            retry_in = ?retry_in.unwrap_or_default(),
            "failed; retrying with backoff: {e}"
        ),
    }
}

/// A fingerprint of an app's desired state: when it changes, a stalled app is retried and a
/// backoff starts over. Env values take part but are never shown.
pub fn fingerprint(app: &AppSpec) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    app.name.hash(&mut h);
    app.storage_id.hash(&mut h);
    app.prune.hash(&mut h);
    for r in &app.revisions {
        r.version.hash(&mut h);
        match &r.source {
            RevisionSource::Existing => 0u8.hash(&mut h),
            RevisionSource::Local(b) => {
                1u8.hash(&mut h);
                b.parcels.as_bytes().hash(&mut h);
            }
        }
    }
    format!("{:?}", app.channels).hash(&mut h);
    h.finish()
}

/// `d` ± 10%, so that replicas and many controllers don't wake in step.
fn jittered(d: Duration) -> Duration {
    let r = (uuid::Uuid::new_v4().as_u128() % 10_000) as f64 / 10_000.0;
    d.mul_f64(0.9 + 0.2 * r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..200 {
            let j = jittered(Duration::from_secs(60));
            assert!(
                j >= Duration::from_secs(54) && j <= Duration::from_secs(66),
                "{j:?}"
            );
        }
    }
}

//! Carrying out a plan: one stage at a time, observing again after each, until nothing is left.
//!
//! # Guarantees
//! - A bindle's push is verified complete (no missing parcels) before its app is created or a
//!   revision of it is registered: stages run in [`Stage`] order and an app whose push failed
//!   takes no further part in the run.
//! - A revision is registered only when the latest observation lacks it, and at most once per
//!   storage id and version per round, so Hippo's import on app creation and concurrent apps
//!   sharing a storage id never produce a duplicate.
//! - One app's failure doesn't stop the others; a failed app is left as it is, and the next run
//!   converges from there, because every decision is made from observation.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use futures::{stream, StreamExt};
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::{
    bindles::{BindleClient, BindleConfig, BindleError, PushReport},
    delivery::{Delivery, DeliveryRecords, Rollback, RECORDS_VARIABLE},
    diff::{self, Action, AppPlan, Change, ChannelHealth, ChannelTarget, Kind, Op, Plan, Stage},
    gate::{WriteGate, WriteRefused},
    hippo::{
        types::{CreateChannel, DesiredStatus, EnvVar, UpdateChannel},
        HippoClient, HippoClientConfig, HippoError,
    },
    nomad::{Blocking, NomadClient, NomadConfig, NomadError},
    observe::{self, NomadObserver, ObserveError, Snapshot, Sources, Written},
    spec::{AppSpec, DesiredState, RevisionSource},
    stats::RequestStats,
    status::{self, AppStatus, Condition},
};
use bindle::signature::SecretKeyEntry;

/// What a [`Context`] is made from: where Hippo, Bindle and Nomad are and how to reach them.
#[derive(Debug)]
pub struct Connections {
    pub hippo: HippoClientConfig,
    pub bindle: BindleConfig,
    /// Signs invoices as their creator (bindle 0.9 servers refuse unsigned ones).
    pub signing_key: SecretKeyEntry,
    /// `None`: Nomad is not configured; only Hippo and Bindle are checked.
    pub nomad: Option<NomadConfig>,
}

/// A client that could not be built from its [`Connections`] entry.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Hippo(#[from] HippoError),
    #[error(transparent)]
    Bindle(#[from] BindleError),
    #[error(transparent)]
    Nomad(#[from] NomadError),
}

/// Shared clients and settings for a reconcile.
#[derive(Clone)]
pub struct Context {
    pub hippo: Arc<HippoClient>,
    pub bindle: Arc<BindleClient>,
    /// `None`: Nomad is not configured and only Hippo and Bindle are checked.
    pub nomad: Option<Arc<NomadObserver>>,
    /// Apps worked on in parallel within a stage.
    pub concurrency: usize,
    pub options: ReconcileOptions,
    /// Checked before every write: only a leader that is not shutting down writes.
    pub gate: WriteGate,
    /// Bindle versions seen in earlier cycles (the controller); `None`: always ask.
    pub bindle_cache: Option<Arc<observe::BindleCache>>,
    /// Where uploads and waits are reported (the CLI's terminal line; nobody by default).
    pub progress: Arc<dyn crate::progress::Progress>,
    /// Promotions' checks and what they saw (kept across a controller's cycles).
    pub prober: Arc<crate::probe::Prober>,
}

impl Context {
    /// What `observe` reads from.
    pub fn sources(&self) -> Sources<'_> {
        Sources {
            hippo: &self.hippo,
            bindle: &self.bindle,
            bindle_cache: self.bindle_cache.as_deref(),
            nomad: self.nomad.as_deref(),
            concurrency: self.concurrency,
            prober: &self.prober,
        }
    }

    /// The composition root: every client of a run is built here, counting its requests in
    /// `stats` and reporting long work to `progress`.
    pub fn connect(
        connections: Connections,
        stats: RequestStats,
        progress: Arc<dyn crate::progress::Progress>,
    ) -> Result<Context, ConnectError> {
        let hippo = HippoClient::new(connections.hippo, stats.clone())?;
        let bindle = BindleClient::new(connections.bindle, connections.signing_key, stats.clone())?
            .with_progress(progress.clone());
        let nomad = match connections.nomad {
            Some(config) => Some(Arc::new(NomadObserver::new(NomadClient::new(
                config, stats,
            )?))),
            None => None,
        };
        let mut ctx = Context::new(Arc::new(hippo), Arc::new(bindle));
        ctx.nomad = nomad;
        ctx.progress = progress;
        Ok(ctx)
    }

    pub fn new(hippo: Arc<HippoClient>, bindle: Arc<BindleClient>) -> Self {
        Context {
            hippo,
            bindle,
            nomad: None,
            concurrency: 4,
            options: ReconcileOptions::default(),
            gate: WriteGate::open(),
            bindle_cache: None,
            progress: Arc::new(crate::progress::NoProgress),
            prober: Arc::default(),
        }
    }
}

/// What a reconcile does beyond converging Hippo and Bindle.
#[derive(Debug, Clone, Default)]
pub struct ReconcileOptions {
    /// Delete Nomad jobs named like a Hippo channel that has no channel behind it.
    pub prune_orphans: bool,
    /// Wait this long for Nomad to run what Hippo scheduled; `None`: look once, don't wait.
    pub wait: Option<Duration>,
}

/// Why an app's change failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{what}: {source}")]
    Hippo {
        what: String,
        #[source]
        source: HippoError,
    },
    #[error(transparent)]
    Bindle(#[from] BindleError),
    #[error("Nomad: {0}")]
    Nomad(#[from] NomadError),
    /// An allocation of a channel's job failed.
    #[error("channel {channel}: {message}")]
    AllocationFailed { channel: String, message: String },
    /// Still rolling out when the wait ended.
    #[error("not running on Nomad after {waited:?}: {details}")]
    NotReady { waited: Duration, details: String },
    /// Planned from state that changed under us (a revision id that isn't there yet).
    #[error("{0}")]
    Unresolved(String),
    /// Hippo accepted a change but the next observation shows it not done.
    #[error("{0}")]
    NotApplied(String),
    /// A local bindle could not be packed again to push it (changed or gone since loaded).
    #[error("{0}")]
    LocalBindle(String),
    /// The write gate is closed: not the leader, or shutting down. Nothing was sent.
    #[error("not written: {0}")]
    NotWritten(#[from] WriteRefused),
    /// The rollback records could not be written (nothing was pinned).
    #[error("rollback records: {0}")]
    Records(String),
    /// A problem found while planning (see [`diff::Problem`]).
    #[error("{message}")]
    Planned {
        message: String,
        reason: &'static str,
        transient: bool,
    },
}

impl ApplyError {
    pub fn is_transient(&self) -> bool {
        match self {
            ApplyError::Hippo { source, .. } => source.is_transient(),
            ApplyError::Bindle(e) => e.is_transient(),
            ApplyError::Nomad(e) => e.is_transient(),
            // Nomad may recover by itself (a node comes back, a dependency heals): retried with
            // backoff, so Reconciling, not Stalled.
            ApplyError::AllocationFailed { .. } => true,
            ApplyError::NotReady { .. } => true,
            ApplyError::Unresolved(_) => true,
            ApplyError::NotApplied(_) => true,
            // A reload (the file watcher's, or the next interval's) brings the new content.
            ApplyError::LocalBindle(_) => true,
            ApplyError::NotWritten(_) => true,
            ApplyError::Records(_) => true,
            ApplyError::Planned { transient, .. } => *transient,
        }
    }

    /// A short reason for conditions and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            ApplyError::Hippo { source, .. } => match source {
                HippoError::Validation { .. } => "HippoValidationFailed",
                HippoError::Unauthorized { .. } | HippoError::Login { .. } => "HippoUnauthorized",
                _ if source.is_transient() => "HippoUnavailable",
                _ => "HippoRequestFailed",
            },
            ApplyError::Bindle(e) => match e {
                BindleError::Conflict { .. } => "BindleConflict",
                BindleError::Yanked { .. } => "BindleYanked",
                BindleError::Rejected { .. } => "BindleRejected",
                _ if e.is_transient() => "BindleUnavailable",
                _ => "BindlePushFailed",
            },
            ApplyError::Nomad(_) => "NomadUnavailable",
            ApplyError::AllocationFailed { .. } => "AllocationFailed",
            ApplyError::NotReady { .. } => "Progressing",
            ApplyError::Unresolved(_) => "Unresolved",
            ApplyError::NotApplied(_) => "NotApplied",
            ApplyError::LocalBindle(_) => "LocalBindleChanged",
            ApplyError::NotWritten(WriteRefused::ShuttingDown) => "ShuttingDown",
            ApplyError::NotWritten(_) => "NotLeader",
            ApplyError::Records(_) => "DeliveryRecordsUnavailable",
            ApplyError::Planned { reason, .. } => reason,
        }
    }
}

/// What a change made in a run did (an event's `reason`), finer than its action and kind:
/// an update of a channel may set its env only or reschedule its job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Made {
    BindlePushed,
    AppCreated,
    RevisionRegistered,
    ChannelCreated,
    ChannelUpdated,
    EnvChanged,
    JobScheduled,
    /// A job started for a channel Hippo moved itself while registering (no planned change).
    JobStarted,
    ChannelDeleted,
    /// A revision found by `discover` was registered.
    RevisionDiscovered,
    /// A channel was pinned to what its `from` channel proved healthy.
    ChannelPromoted,
    /// A channel was pinned back from a failing revision.
    ChannelRolledBack,
}

impl Made {
    pub fn name(self) -> &'static str {
        match self {
            Made::BindlePushed => "BindlePushed",
            Made::AppCreated => "AppCreated",
            Made::RevisionRegistered => "RevisionRegistered",
            Made::ChannelCreated => "ChannelCreated",
            Made::ChannelUpdated => "ChannelUpdated",
            Made::EnvChanged => "EnvChanged",
            Made::JobScheduled => "JobScheduled",
            Made::JobStarted => "JobStarted",
            Made::ChannelDeleted => "ChannelDeleted",
            Made::RevisionDiscovered => "RevisionDiscovered",
            Made::ChannelPromoted => "ChannelPromoted",
            Made::ChannelRolledBack => "ChannelRolledBack",
        }
    }

    pub(crate) fn of(op: &Op) -> Made {
        match op {
            Op::PushBindle { .. } => Made::BindlePushed,
            Op::CreateApp { .. } => Made::AppCreated,
            Op::RegisterRevision {
                discovered: true, ..
            } => Made::RevisionDiscovered,
            Op::RegisterRevision { .. } => Made::RevisionRegistered,
            Op::UpdateChannel {
                delivery: Some(Delivery::Promote { .. }),
                ..
            } => Made::ChannelPromoted,
            Op::UpdateChannel {
                delivery: Some(Delivery::Rollback(_)),
                ..
            } => Made::ChannelRolledBack,
            Op::CreateChannel {
                delivery: Some(Delivery::Promote { .. }),
                ..
            } => Made::ChannelPromoted,
            Op::CreateChannel { .. } => Made::ChannelCreated,
            Op::UpdateChannel { .. } => Made::ChannelUpdated,
            Op::SetEnv { .. } => Made::EnvChanged,
            Op::ScheduleChannel { .. } => Made::JobScheduled,
            Op::DeleteChannel { .. } => Made::ChannelDeleted,
        }
    }
}

/// A change made in a run. Serialized (and displayed) as its description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub action: Action,
    pub kind: Kind,
    /// The bindle, app, revision or channel it was made to.
    pub name: String,
    pub made: Made,
    /// What was done, in the past tense (env keys only, never values).
    pub description: String,
}

impl Applied {
    fn of(change: &Change, description: String) -> Applied {
        Applied {
            action: change.action,
            kind: change.kind,
            name: change.name.clone(),
            made: Made::of(&change.op),
            description,
        }
    }

    /// The channel it was made to, if any.
    pub fn channel(&self) -> Option<&str> {
        (self.kind == Kind::Channel).then_some(self.name.as_str())
    }
}

impl std::fmt::Display for Applied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.description)
    }
}

impl serde::Serialize for Applied {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.description)
    }
}

/// What happened to one app in a run.
#[derive(Debug)]
pub struct AppResult {
    pub app: String,
    /// The changes made, in order.
    pub applied: Vec<Applied>,
    pub warnings: Vec<String>,
    /// Each channel's Nomad job, when Nomad is configured.
    pub health: Vec<(String, ChannelHealth)>,
    /// `None`: converged.
    pub error: Option<ApplyError>,
    /// `spec.suspend`: left alone, nothing planned or written.
    pub suspended: bool,
    /// What is still to do for this app, against the last observation: the run's final plan.
    pub plan: AppPlan,
    /// The run's outcome for the app (`reconcile --once` reports it).
    pub condition: Condition,
    /// The app and its channels as the last observation shows them; its condition is the
    /// run's when the run failed.
    pub status: AppStatus,
}

impl AppResult {
    pub fn converged(&self) -> bool {
        self.error.is_none()
    }
}

/// The outcome of a reconcile of all apps.
#[derive(Debug)]
pub struct RunReport {
    pub apps: Vec<AppResult>,
    /// Orphaned Nomad jobs found, and whether each was deleted (`--prune-orphans`).
    pub orphans: Vec<(String, Result<bool, String>)>,
    /// The last observation, after all changes.
    pub snapshot: Snapshot,
}

/// Errors that stop a whole run.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Observe(#[from] ObserveError),
}

impl ReconcileError {
    pub fn is_transient(&self) -> bool {
        match self {
            ReconcileError::Observe(e) => e.is_transient(),
        }
    }
}

/// Rounds of diff-and-apply before giving up on an app that keeps needing changes: one per
/// stage, one to verify, and slack for changes Hippo makes itself (range re-evaluation).
const MAX_ROUNDS: usize = 8;

/// Observes, then applies until every app converged or failed.
pub async fn reconcile(desired: &DesiredState, ctx: &Context) -> Result<RunReport, ReconcileError> {
    let snapshot = observe_all(desired, ctx).await?;
    reconcile_from(desired, ctx, snapshot).await
}

/// One full observation of Hippo, Bindle and (when configured) Nomad for `desired`.
pub async fn observe_all(desired: &DesiredState, ctx: &Context) -> Result<Snapshot, ObserveError> {
    observe::observe(&desired.apps, &ctx.sources()).await
}

/// As [`reconcile`], from a snapshot already taken.
pub async fn reconcile_from(
    desired: &DesiredState,
    ctx: &Context,
    mut snapshot: Snapshot,
) -> Result<RunReport, ReconcileError> {
    let mut applied: BTreeMap<String, Vec<Applied>> = BTreeMap::new();
    let mut warnings: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut failed: BTreeMap<String, ApplyError> = BTreeMap::new();
    // Apps with a problem scoped to a revision or a channel: what doesn't depend on it goes
    // on, and the app is reported failed with it at the end (as planned last).
    let mut blocked: BTreeMap<String, ApplyError> = BTreeMap::new();
    // Changes already made, by key: planned again means Hippo didn't take it.
    let mut done_keys: BTreeSet<String> = BTreeSet::new();
    let mut health = BTreeMap::new();

    // A second pass only for rollbacks: a revision that failed while waiting for Nomad is
    // rolled back in the same run, and the revision rolled back to is waited for.
    for pass in 0..2 {
        for round in 0..=MAX_ROUNDS {
            let active: Vec<Arc<AppSpec>> = desired
                .apps
                .iter()
                .filter(|a| !failed.contains_key(&a.name))
                .cloned()
                .collect();
            let plan = diff::diff(&active, &snapshot);
            for app in &plan.apps {
                warnings.insert(app.app.clone(), app.warnings.clone());
                let app_wide: Vec<&diff::Problem> =
                    app.problems.iter().filter(|p| p.is_app_wide()).collect();
                if !app_wide.is_empty() {
                    failed.insert(app.app.clone(), planned_error(&app_wide));
                } else if app.problems.is_empty() {
                    blocked.remove(&app.app);
                } else {
                    let scoped: Vec<&diff::Problem> = app.problems.iter().collect();
                    blocked.insert(app.app.clone(), planned_error(&scoped));
                }
            }
            let Some(stage) = plan.changes().map(|c| c.stage).min() else {
                break;
            };
            if round == MAX_ROUNDS {
                for app in plan.apps.iter().filter(|a| !a.changes.is_empty()) {
                    failed.entry(app.app.clone()).or_insert_with(|| {
                        ApplyError::NotApplied(format!(
                            "still not converged after {MAX_ROUNDS} rounds: {}",
                            app.changes
                                .iter()
                                .map(|c| c.describe())
                                .collect::<Vec<_>>()
                                .join("; ")
                        ))
                    });
                }
                break;
            }
            // Per app, the changes of this stage, in plan order.
            let mut work: BTreeMap<String, Vec<Change>> = BTreeMap::new();
            for change in plan.changes().filter(|c| c.stage == stage) {
                if done_keys.contains(&change.key()) && change.stage != Stage::Push {
                    failed.entry(change.app.clone()).or_insert_with(|| {
                        ApplyError::NotApplied(format!(
                            "Hippo accepted \"{}\" but still differs afterwards",
                            change.describe()
                        ))
                    });
                    continue;
                }
                if failed.contains_key(&change.app) {
                    continue;
                }
                work.entry(change.app.clone())
                    .or_default()
                    .push(change.clone());
            }
            let registered: Arc<Mutex<BTreeSet<(String, String)>>> = Arc::default();
            let results: Vec<AppStageResult> = stream::iter(work)
                .map(|(app, changes)| {
                    let registered = registered.clone();
                    let locals = local_bindles(desired, &app);
                    async move {
                        let mut ok = Vec::new();
                        for change in changes {
                            match apply_change(ctx, &change, &locals, &registered).await {
                                Ok(text) => ok.push((change, text)),
                                Err(e) => return (app, ok, Some(e)),
                            }
                        }
                        (app, ok, None)
                    }
                })
                .buffer_unordered(ctx.concurrency.max(1))
                .collect()
                .await;
            let mut pushed = Vec::new();
            for (app, ok, err) in results {
                for (change, text) in ok {
                    tracing::info!(app = %app, "{text}");
                    done_keys.insert(change.key());
                    if let Op::PushBindle { id, .. } = &change.op {
                        pushed.push(id.clone());
                    }
                    applied
                        .entry(app.clone())
                        .or_default()
                        .push(Applied::of(&change, text));
                }
                if let Some(e) = err {
                    tracing::warn!(app = %app, error = %e, "change failed");
                    failed.insert(app, e);
                }
            }
            let before = (stage == Stage::Register && ctx.nomad.is_none())
                .then(|| active_revisions(&snapshot));
            let written = match stage {
                Stage::Push => Written::Bindles(&pushed),
                Stage::CreateApp | Stage::Register => Written::Apps,
                Stage::Channels => Written::Channels,
                Stage::Nomad => Written::NomadJobs,
            };
            observe::refresh(&mut snapshot, written, &desired.apps, &ctx.sources()).await?;
            if let Some(before) = before {
                start_moved_channels(ctx, desired, &before, &snapshot, &mut applied, &mut failed)
                    .await;
            }
        }

        if let Some(nomad) = &ctx.nomad {
            health.clear();
            wait_for_nomad(desired, ctx, nomad, &mut snapshot, &mut failed, &mut health).await;
        }
        if pass == 1 {
            break;
        }
        observe::observe_delivery(&desired.apps, &ctx.sources(), &mut snapshot).await;
        let rollbacks: BTreeSet<String> = diff::diff(&desired.apps, &snapshot)
            .changes()
            .filter(|c| {
                matches!(
                    c.op,
                    Op::UpdateChannel {
                        delivery: Some(Delivery::Rollback(_)),
                        ..
                    }
                )
            })
            .map(|c| c.app.clone())
            .collect();
        if rollbacks.is_empty() {
            break;
        }
        for app in &rollbacks {
            if matches!(failed.get(app), Some(ApplyError::AllocationFailed { .. })) {
                failed.remove(app);
            }
        }
        done_keys.clear();
    }

    for (app, e) in blocked {
        failed.entry(app).or_insert(e);
    }
    let orphans = handle_orphans(ctx, &snapshot).await;
    // The final plan, once, against the last observation: what the report says is left.
    let final_plan = diff::diff(&desired.apps, &snapshot);
    let apps = desired
        .apps
        .iter()
        .zip(final_plan.apps)
        .map(|(spec, plan)| {
            let applied = applied.remove(&spec.name).unwrap_or_default();
            let error = failed.remove(&spec.name);
            let condition = Condition::of_run(spec.suspend, error.as_ref(), applied.len());
            let mut status = status::app_status(spec, &plan, &snapshot);
            if error.is_some() {
                status.condition = condition.clone();
            }
            AppResult {
                app: spec.name.clone(),
                applied,
                warnings: warnings.remove(&spec.name).unwrap_or_default(),
                health: health.remove(&spec.name).unwrap_or_default(),
                error,
                suspended: spec.suspend,
                plan,
                condition,
                status,
            }
        })
        .collect();
    Ok(RunReport {
        apps,
        orphans,
        snapshot,
    })
}

/// Reports orphaned Nomad jobs, deleting them (purged) only with `prune_orphans`.
async fn handle_orphans(ctx: &Context, snapshot: &Snapshot) -> Vec<(String, Result<bool, String>)> {
    let Some(nomad) = &ctx.nomad else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for id in diff::orphans(snapshot) {
        if !ctx.options.prune_orphans {
            tracing::warn!(job = %id, "orphaned Nomad job: no Hippo channel has this id (delete it with --prune-orphans)");
            out.push((id, Ok(false)));
            continue;
        }
        if let Err(refused) = ctx.gate.check() {
            out.push((id, Err(format!("not deleted: {refused}"))));
            continue;
        }
        let result = nomad.client.delete_job(&id, true).await;
        match &result {
            Ok(()) => tracing::info!(job = %id, "deleted orphaned Nomad job"),
            Err(e) => tracing::warn!(job = %id, error = %e, "deleting orphaned Nomad job failed"),
        }
        out.push((id, result.map(|()| true).map_err(|e| e.to_string())));
    }
    out
}

/// The longest single blocking query while waiting: short enough to notice a job list change
/// that moved no allocation.
const MAX_BLOCK: Duration = Duration::from_secs(30);

/// Checks, and unless told not to waits for, every desired channel to run on Nomad: with
/// blocking queries on the allocations list, not a poll. A failed allocation fails its app at
/// once; what is still rolling out at the deadline fails as `NotReady`.
async fn wait_for_nomad(
    desired: &DesiredState,
    ctx: &Context,
    nomad: &NomadObserver,
    snapshot: &mut Snapshot,
    failed: &mut BTreeMap<String, ApplyError>,
    health: &mut BTreeMap<String, Vec<(String, ChannelHealth)>>,
) {
    let started = tokio::time::Instant::now();
    let deadline = ctx.options.wait.map(|w| started + w);
    // What progress showed goes when the wait ends, however it ends.
    struct ClearOnDrop<'a>(&'a dyn crate::progress::Progress);
    impl Drop for ClearOnDrop<'_> {
        fn drop(&mut self) {
            self.0.clear();
        }
    }
    let _clear = ClearOnDrop(ctx.progress.as_ref());
    loop {
        let state = match &snapshot.nomad {
            Some(Ok(state)) => state,
            Some(Err(e)) => {
                for app in &desired.apps {
                    failed
                        .entry(app.name.clone())
                        .or_insert_with(|| ApplyError::NotReady {
                            waited: started.elapsed(),
                            details: format!("Nomad could not be read: {}", e.message),
                        });
                }
                return;
            }
            None => return,
        };
        let mut progressing: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let active: Vec<&Arc<AppSpec>> = desired
            .apps
            .iter()
            .filter(|a| !failed.contains_key(&a.name) && !a.suspend)
            .collect();
        for spec in active {
            let Some(app) = snapshot.app(&spec.name) else {
                continue;
            };
            let mut channels = Vec::new();
            for ch in &spec.channels {
                let Some(current) = snapshot.channels_of(app).find(|c| c.name == ch.name) else {
                    continue;
                };
                let expected = current
                    .active_revision
                    .as_ref()
                    .map(|r| format!("{}/{}", spec.storage_id, r.revision_number))
                    .unwrap_or_default();
                let h = diff::channel_health(state, current, &expected);
                match &h {
                    ChannelHealth::Failed { message } => {
                        failed.insert(
                            spec.name.clone(),
                            ApplyError::AllocationFailed {
                                channel: ch.name.clone(),
                                message: message.clone(),
                            },
                        );
                    }
                    ChannelHealth::Progressing { message } => progressing
                        .entry(spec.name.clone())
                        .or_default()
                        .push(format!("channel {}: {message}", ch.name)),
                    _ => {}
                }
                channels.push((ch.name.clone(), h));
            }
            health.insert(spec.name.clone(), channels);
        }
        progressing.retain(|app, _| !failed.contains_key(app));
        if progressing.is_empty() {
            return;
        }
        let now = tokio::time::Instant::now();
        match deadline {
            Some(deadline) if now < deadline => {
                let pending: Vec<String> = progressing
                    .iter()
                    .flat_map(|(app, list)| list.iter().map(move |m| format!("{app}: {m}")))
                    .collect();
                if ctx.progress.is_shown() {
                    ctx.progress.waiting(started.elapsed(), &pending);
                } else {
                    tracing::info!(pending = %pending.join("; "), "waiting for Nomad");
                }
                let index = state.allocations_index;
                let wait = (deadline - now).min(MAX_BLOCK);
                observe::observe_nomad(
                    &desired.apps,
                    nomad,
                    Some(Blocking { index, wait }),
                    ctx.concurrency,
                    snapshot,
                )
                .await;
            }
            _ => {
                if ctx.options.wait.is_some() {
                    for (app, details) in progressing {
                        failed.insert(
                            app,
                            ApplyError::NotReady {
                                waited: started.elapsed(),
                                details: details.join("; "),
                            },
                        );
                    }
                }
                return;
            }
        }
    }
}

/// The error for an app's planned problems: terminal unless every one is transient.
fn planned_error(problems: &[&diff::Problem]) -> ApplyError {
    ApplyError::Planned {
        message: problems
            .iter()
            .map(|p| p.message.clone())
            .collect::<Vec<_>>()
            .join("; "),
        reason: problems[0].reason,
        transient: problems.iter().all(|p| p.transient),
    }
}

/// One app's part of a stage: the changes made (with their descriptions), and the error that
/// stopped it, if any.
type AppStageResult = (String, Vec<(Change, String)>, Option<ApplyError>);

fn local_bindles(
    desired: &DesiredState,
    app: &str,
) -> BTreeMap<String, Arc<crate::package::LocalBindle>> {
    desired
        .apps
        .iter()
        .filter(|a| a.name == app)
        .flat_map(|a| a.revisions.iter())
        .filter_map(|r| match &r.source {
            RevisionSource::Local(b) => Some((b.id.to_string(), b.clone())),
            RevisionSource::Existing => None,
        })
        .collect()
}

/// Tries of a check-and-set write of the rollback records before giving up (another
/// controller writing at the same moment).
const RECORD_TRIES: usize = 3;

/// Adds `rollback` to the records in Nomad (read, change, check-and-set write).
async fn record_rollback(ctx: &Context, rollback: &Rollback) -> Result<(), ApplyError> {
    let nomad = ctx
        .nomad
        .as_ref()
        .ok_or_else(|| ApplyError::Records("a rollback needs Nomad to record it in".to_string()))?;
    for _ in 0..RECORD_TRIES {
        let (mut records, index) = match nomad.client.read_variable(RECORDS_VARIABLE).await? {
            Some((items, index)) => (
                DeliveryRecords::from_items(&items).map_err(ApplyError::Records)?,
                index,
            ),
            None => (DeliveryRecords::default(), 0),
        };
        records.record_rollback(rollback, chrono::Utc::now().timestamp_millis());
        if nomad
            .client
            .write_variable(RECORDS_VARIABLE, &records.to_items(), index)
            .await?
        {
            tracing::info!(
                app = %rollback.app,
                channel = %rollback.channel,
                failed = %rollback.failed,
                to = %rollback.to,
                "recorded rollback"
            );
            return Ok(());
        }
    }
    Err(ApplyError::Records(format!(
        "the Nomad Variable {RECORDS_VARIABLE} kept changing under {RECORD_TRIES} writes"
    )))
}

fn hippo_err(what: impl Into<String>) -> impl FnOnce(HippoError) -> ApplyError {
    let what = what.into();
    move |source| ApplyError::Hippo { what, source }
}

fn resolve_revision(target: &ChannelTarget, channel: &str) -> Result<Option<Uuid>, ApplyError> {
    match &target.active_revision {
        None => Ok(None),
        Some(r) => r.id.map(Some).ok_or_else(|| {
            ApplyError::Unresolved(format!(
                "channel {channel}: revision {} is not registered in Hippo yet",
                r.number
            ))
        }),
    }
}

async fn apply_change(
    ctx: &Context,
    change: &Change,
    locals: &BTreeMap<String, Arc<crate::package::LocalBindle>>,
    registered: &Mutex<BTreeSet<(String, String)>>,
) -> Result<String, ApplyError> {
    let hippo = &ctx.hippo;
    ctx.gate.check()?;
    match &change.op {
        Op::PushBindle { id, .. } => {
            let local = locals.get(id).ok_or_else(|| {
                ApplyError::Unresolved(format!("no local bindle {id} in the deploy files"))
            })?;
            // Packed again from disk: the desired state keeps only what the bindle is.
            let dir = local.dir.clone();
            let summary = local.clone();
            let packed = tokio::task::spawn_blocking(move || summary.pack())
                .await
                .map_err(|e| ApplyError::LocalBindle(format!("{}: {e}", dir.display())))?
                .map_err(|e| ApplyError::LocalBindle(e.to_string()))?;
            let PushReport {
                existed,
                uploaded_parcels,
                uploaded_bytes,
            } = ctx.bindle.push(&packed).await?;
            Ok(format!(
                "pushed bindle {id} ({uploaded_parcels} parcel(s), {uploaded_bytes} bytes uploaded{})",
                if existed { ", resumed" } else { "" }
            ))
        }
        Op::CreateApp { storage_id } => {
            let id = hippo
                .create_app(&change.app, storage_id)
                .await
                .map_err(hippo_err(format!("creating app {}", change.app)))?;
            Ok(format!("created app {} ({id})", change.app))
        }
        Op::RegisterRevision {
            storage_id,
            version,
            discovered,
        } => {
            let key = (storage_id.clone(), version.clone());
            if !registered.lock().await.insert(key) {
                // Another app with the same storage id registered it this round: Hippo
                // registers for all of them at once.
                return Ok(format!(
                    "revision {version} registered (shared storageId {storage_id})"
                ));
            }
            hippo
                .register_revision(storage_id, version)
                .await
                .map_err(hippo_err(format!("registering revision {version}")))?;
            Ok(if *discovered {
                format!("registered revision {version} (discovered on the Bindle server)")
            } else {
                format!("registered revision {version}")
            })
        }
        Op::CreateChannel {
            channel,
            app_id,
            target,
            env,
            delivery,
            ..
        } => {
            let app_id = app_id.ok_or_else(|| {
                ApplyError::Unresolved(format!("app {} does not exist in Hippo yet", change.app))
            })?;
            let body = CreateChannel {
                app_id,
                name: channel.clone(),
                domain: target.domain.clone(),
                revision_selection_strategy: target.strategy,
                range_rule: target.range_rule.clone(),
                // Hippo matches a range itself on create; a pinned revision needs its id.
                active_revision_id: match target.strategy {
                    crate::hippo::types::Strategy::UseRangeRule => None,
                    crate::hippo::types::Strategy::UseSpecifiedRevision => {
                        resolve_revision(target, channel)?
                    }
                },
                certificate_id: None,
            };
            let id = hippo
                .create_channel(&body)
                .await
                .map_err(hippo_err(format!("creating channel {channel}")))?;
            if !env.is_empty() {
                hippo
                    .set_channel_env(id, env_vars(env))
                    .await
                    .map_err(hippo_err(format!("setting env of channel {channel}")))?;
            }
            let text = change.describe().replacen("create", "created", 1);
            Ok(match delivery {
                Some(Delivery::Promote { .. }) => text.replacen("promote", "promoted", 1),
                _ => text,
            })
        }
        Op::UpdateChannel {
            channel,
            channel_id,
            target,
            kept,
            start_job,
            delivery,
            ..
        } => {
            // The record first: pinned without it, the channel would move back to the failed
            // revision on the next round.
            if let Some(Delivery::Rollback(rollback)) = delivery {
                record_rollback(ctx, rollback).await?;
            }
            let domain = target.domain.clone().ok_or_else(|| {
                ApplyError::Unresolved(format!("channel {channel} has no domain to send back"))
            })?;
            let body = UpdateChannel {
                id: *channel_id,
                name: channel.clone(),
                domain,
                revision_selection_strategy: target.strategy,
                range_rule: target.range_rule.clone(),
                active_revision_id: resolve_revision(target, channel)?,
                last_publish_date: kept.last_publish_date.clone(),
                certificate_id: kept.certificate_id,
            };
            hippo
                .update_channel(&body)
                .await
                .map_err(hippo_err(format!("updating channel {channel}")))?;
            if *start_job {
                start_channel_job(ctx, *channel_id, channel).await?;
            }
            let text = change.describe();
            Ok(match delivery {
                None => text.replacen("update", "updated", 1),
                Some(Delivery::Promote { .. }) => text.replacen("promote", "promoted", 1),
                Some(Delivery::Rollback(_)) => text.replacen("roll back", "rolled back", 1),
            })
        }
        Op::SetEnv {
            channel,
            channel_id,
            env,
            ..
        } => {
            hippo
                .set_channel_env(*channel_id, env_vars(env))
                .await
                .map_err(hippo_err(format!("setting env of channel {channel}")))?;
            Ok(change.describe().replacen("update", "updated", 1))
        }
        Op::ScheduleChannel {
            channel,
            channel_id,
            reason,
            deploys,
        } => {
            hippo
                .set_desired_status(*channel_id, DesiredStatus::Running)
                .await
                .map_err(hippo_err(format!("rescheduling channel {channel}")))?;
            Ok(match deploys {
                Some(bindle) => {
                    format!("deployed {bindle} to channel {channel} through Hippo ({reason})")
                }
                None => format!("rescheduled channel {channel} through Hippo ({reason})"),
            })
        }
        Op::DeleteChannel {
            channel,
            channel_id,
        } => {
            hippo
                .delete_channel(*channel_id)
                .await
                .map_err(hippo_err(format!("deleting channel {channel}")))?;
            Ok(format!("deleted channel {channel} (prune)"))
        }
    }
}

/// `desired-status Running`: Hippo (re)starts the channel's job. Idempotent.
async fn start_channel_job(ctx: &Context, id: Uuid, channel: &str) -> Result<(), ApplyError> {
    ctx.gate.check()?;
    ctx.hippo
        .set_desired_status(id, DesiredStatus::Running)
        .await
        .map_err(hippo_err(format!("starting the job of channel {channel}")))
}

/// Each channel's active revision, by channel id.
fn active_revisions(snapshot: &Snapshot) -> BTreeMap<Uuid, Option<Uuid>> {
    snapshot
        .channels()
        .iter()
        .map(|c| (c.id, c.active_revision.as_ref().map(|r| r.id)))
        .collect()
}

/// Without Nomad to verify on: the channels that Hippo itself moved to another revision
/// while registering (range re-evaluation sends Hippo's own PUT, which in v0.19 may start no
/// job) get `desired-status Running`, as a PUT of ours would.
async fn start_moved_channels(
    ctx: &Context,
    desired: &DesiredState,
    before: &BTreeMap<Uuid, Option<Uuid>>,
    after: &Snapshot,
    applied: &mut BTreeMap<String, Vec<Applied>>,
    failed: &mut BTreeMap<String, ApplyError>,
) {
    let managed: BTreeSet<&str> = desired.apps.iter().map(|a| a.name.as_str()).collect();
    for app in after.apps() {
        if !managed.contains(app.name.as_str()) || failed.contains_key(&app.name) {
            continue;
        }
        for ch in after.channels_of(app) {
            let Some(now) = &ch.active_revision else {
                continue;
            };
            if before.get(&ch.id).copied().flatten() == Some(now.id) {
                continue;
            }
            match start_channel_job(ctx, ch.id, &ch.name).await {
                Ok(()) => {
                    let text = format!(
                        "started channel {}'s job through Hippo (moved to {} by the registration)",
                        ch.name, now.revision_number
                    );
                    tracing::info!(app = %app.name, "{text}");
                    applied.entry(app.name.clone()).or_default().push(Applied {
                        action: Action::Update,
                        kind: Kind::Channel,
                        name: ch.name.clone(),
                        made: Made::JobStarted,
                        description: text,
                    });
                }
                Err(e) => {
                    tracing::warn!(app = %app.name, error = %e, "change failed");
                    failed.insert(app.name.clone(), e);
                }
            }
        }
    }
}

fn env_vars(env: &BTreeMap<String, String>) -> Vec<EnvVar> {
    env.iter()
        .map(|(k, v)| EnvVar {
            key: k.clone(),
            value: v.clone(),
        })
        .collect()
}

/// What is to do, without doing it: `plan`, `status` and a follower's cycle.
#[derive(Debug)]
pub struct PlanReport {
    pub plan: Plan,
    /// Each app as the observation shows it, in the order of the deploy files.
    pub statuses: Vec<AppStatus>,
    pub snapshot: Snapshot,
}

/// The plan against one observation, with no changes made, and each app's status.
pub async fn plan(desired: &DesiredState, ctx: &Context) -> Result<PlanReport, ReconcileError> {
    let snapshot = observe_all(desired, ctx).await?;
    let plan = diff::diff(&desired.apps, &snapshot);
    let statuses = status::app_statuses(desired, &plan, &snapshot);
    Ok(PlanReport {
        plan,
        statuses,
        snapshot,
    })
}

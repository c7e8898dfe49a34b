//! What the controller shows and tells beyond `/status`: the event history
//! ([`super::events_store`]), notifications ([`super::notifications`]), and per app the
//! details its dashboard page and `/api/v1/apps/{name}` show (revisions, the pending plan).
//! The loop feeds it after each cycle; the HTTP handlers read it.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    sync::{Arc, Mutex, RwLock},
};

use chrono::Utc;
use serde::Serialize;

use hippo_gitops_core::{
    apply::RunReport,
    diff::AppPlan,
    events::{self, Event, Tracker},
    observe::Snapshot,
    secret::Secret,
    spec::{notification::NotificationSpec, DesiredState, RevisionSource},
    sync::{MutexExt, RwLockExt},
};

use crate::{
    events_store::{self, EventStore, EventStoreError},
    notifications::{DeliveryPolicy, Notifier, NotifyError},
};

/// Reads an environment variable (a notification's address or secret).
pub type EnvLookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Settings of the dashboard, API, history and notifications.
#[derive(Clone)]
pub struct InsightConfig {
    /// `--api-token`: `POST /api/v1/apps/{name}/reconcile` needs it; without one the
    /// endpoint answers 403 and the dashboard shows no button.
    pub api_token: Option<Secret>,
    /// `--external-url`: where users reach the dashboard (links in notifications).
    pub external_url: Option<String>,
    /// Where `events.jsonl` lives; `None`: memory only.
    pub state_dir: Option<PathBuf>,
    pub memory_capacity: usize,
    pub file_limit: u64,
    pub delivery: DeliveryPolicy,
    /// Where notification addresses and secrets are read (the process environment).
    pub env: EnvLookup,
}

impl Default for InsightConfig {
    fn default() -> Self {
        InsightConfig {
            api_token: None,
            external_url: None,
            state_dir: None,
            memory_capacity: events_store::MEMORY_CAPACITY,
            file_limit: events_store::FILE_LIMIT,
            delivery: DeliveryPolicy::default(),
            env: Arc::new(|var| std::env::var(var).ok()),
        }
    }
}

impl std::fmt::Debug for InsightConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InsightConfig")
            .field("api_token", &self.api_token)
            .field("external_url", &self.external_url)
            .field("state_dir", &self.state_dir)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InsightError {
    #[error("the event history: {0}")]
    Events(#[from] EventStoreError),
    #[error(transparent)]
    Notify(#[from] NotifyError),
}

/// One revision of an app, as its page shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RevisionDetail {
    pub version: String,
    /// Registered in Hippo.
    pub registered: bool,
    /// `path` (built and pushed), `version` (on Bindle, named in the deploy file), or `hippo`
    /// (registered, not named in the deploy file).
    pub source: &'static str,
    /// Found on the Bindle server by discovery (issue 16; false until then).
    pub discovered: bool,
    /// Marked bad by a rollback (issue 16; false until then).
    pub bad: bool,
    /// The channels running it.
    pub active_in: Vec<String>,
}

/// What an app's page shows besides its status.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AppDetail {
    /// `file:line` of its deploy file.
    pub origin: String,
    pub storage_id: String,
    pub suspended: bool,
    pub revisions: Vec<RevisionDetail>,
    /// What the controller would change now (the plan from the last observation).
    pub pending: Vec<String>,
    pub problems: Vec<String>,
    /// What each channel will run once the pending changes are made.
    pub moves: Vec<String>,
}

/// Shared by the loop (writes) and the HTTP handlers (reads).
pub struct Insight {
    pub events: EventStore,
    pub notifier: Notifier,
    pub api_token: Option<Secret>,
    pub external_url: Option<String>,
    env: EnvLookup,
    details: RwLock<BTreeMap<String, AppDetail>>,
    tracking: Mutex<Tracking>,
    /// Apps someone asked to reconcile now (`POST /api/v1/apps/{name}/reconcile`); the loop
    /// takes them.
    requested: Mutex<BTreeSet<String>>,
}

#[derive(Default)]
struct Tracking {
    tracker: Tracker,
    /// Each app's desired-state fingerprint when it was last reconciled.
    reconciled: BTreeMap<String, u64>,
    /// Notification problems last logged (each is logged when it appears).
    notify_problems: BTreeSet<String>,
}

impl Insight {
    /// Opens the event history (read back from the state dir) and seeds the transitions
    /// from it, so a restart does not report again what it reported before.
    pub fn open(config: &InsightConfig) -> Result<Insight, InsightError> {
        let events = match &config.state_dir {
            Some(dir) => {
                let (store, read) =
                    EventStore::open(dir, config.memory_capacity, config.file_limit)?;
                if read.events > 0 || read.skipped > 0 {
                    tracing::info!(
                        events = read.events,
                        skipped = read.skipped,
                        "event history read back from {}",
                        dir.join(events_store::FILE_NAME).display()
                    );
                }
                store
            }
            None => EventStore::in_memory(config.memory_capacity),
        };
        let tracker = Tracker::seeded(&events.all());
        Ok(Insight {
            events,
            notifier: Notifier::new(config.delivery.clone(), config.external_url.clone())?,
            api_token: config.api_token.clone(),
            external_url: config.external_url.clone(),
            env: config.env.clone(),
            details: RwLock::default(),
            tracking: Mutex::new(Tracking {
                tracker,
                ..Default::default()
            }),
            requested: Mutex::default(),
        })
    }

    /// The receivers the deploy files name now (each reload).
    pub fn configure_notifications(&self, specs: &[NotificationSpec]) {
        let env = self.env.clone();
        let problems: BTreeSet<String> = self
            .notifier
            .configure(specs, move |var| env(var))
            .iter()
            .map(|e| e.to_string())
            .collect();
        let mut t = self.tracking.locked();
        for p in problems.difference(&t.notify_problems) {
            tracing::warn!("{p}");
        }
        t.notify_problems = problems;
    }

    /// A leader's cycle: its events stored and sent. `fingerprint(app)`: the app's desired
    /// state now.
    pub fn record_run(
        &self,
        desired: &DesiredState,
        report: &RunReport,
        commit: Option<&str>,
        fingerprint: &dyn Fn(&str) -> Option<u64>,
    ) {
        let events = {
            let mut t = self.tracking.locked();
            let Tracking {
                tracker,
                reconciled,
                ..
            } = &mut *t;
            let changed = |app: &str| {
                fingerprint(app).is_none() || reconciled.get(app).copied() != fingerprint(app)
            };
            let events = events::run_events(desired, report, commit, &changed, tracker, Utc::now());
            for result in &report.apps {
                if let Some(fp) = fingerprint(&result.app) {
                    reconciled.insert(result.app.clone(), fp);
                }
            }
            events
        };
        self.publish(events);
    }

    /// Every app converged at `commit`.
    pub fn commit_applied(&self, commit: &str) {
        self.publish(vec![Event::commit_applied(Utc::now(), commit)]);
    }

    /// Stores and sends events made elsewhere (issue 16's discovery, promotion, rollback).
    pub fn publish(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        self.notifier.send(&events);
        if let Err(e) = self.events.append(events) {
            tracing::warn!(error = %e, "could not write the event history to disk; it is kept in memory");
        }
    }

    /// The details of the apps in `desired` from an observation and each app's plan against
    /// it (in the order of `desired`).
    pub fn record_details<'p>(
        &self,
        desired: &DesiredState,
        plans: impl IntoIterator<Item = &'p AppPlan>,
        snapshot: &Snapshot,
    ) {
        let mut details = self.details.write_recovered();
        for (spec, app_plan) in desired.apps.iter().zip(plans) {
            let detail = app_detail(spec, app_plan, snapshot);
            // An unchanged detail (an idle cycle's) keeps its allocations: what lives from one
            // cycle to the next is not spread over each cycle's freed pages.
            match details.get_mut(&spec.name) {
                Some(kept) if *kept == detail => {}
                Some(kept) => *kept = detail,
                None => {
                    details.insert(spec.name.clone(), detail);
                }
            }
        }
    }

    /// Forgets apps no longer defined.
    pub fn retain_apps(&self, keep: &dyn Fn(&str) -> bool) {
        self.details.write_recovered().retain(|app, _| keep(app));
        let mut t = self.tracking.locked();
        t.tracker.retain(keep);
        t.reconciled.retain(|app, _| keep(app));
    }

    pub fn detail(&self, app: &str) -> Option<AppDetail> {
        self.details.read_recovered().get(app).cloned()
    }

    /// Asks the loop to reconcile `app` now.
    pub fn request(&self, app: &str) {
        self.requested.locked().insert(app.to_string());
    }

    /// The apps asked for since the last call.
    pub fn take_requested(&self) -> BTreeSet<String> {
        std::mem::take(&mut *self.requested.locked())
    }
}

fn app_detail(
    spec: &hippo_gitops_core::spec::AppSpec,
    plan: &AppPlan,
    snapshot: &Snapshot,
) -> AppDetail {
    let hippo_app = snapshot.app(&spec.name);
    let mut revisions: BTreeMap<String, RevisionDetail> = BTreeMap::new();
    for r in &spec.revisions {
        revisions.insert(
            r.version.clone(),
            RevisionDetail {
                version: r.version.clone(),
                registered: false,
                source: match r.source {
                    RevisionSource::Local(_) => "path",
                    RevisionSource::Existing => "version",
                },
                discovered: false,
                bad: false,
                active_in: Vec::new(),
            },
        );
    }
    if let Some(app) = hippo_app {
        for r in snapshot.revisions_of(app) {
            revisions
                .entry(r.revision_number.clone())
                .or_insert_with(|| RevisionDetail {
                    version: r.revision_number.clone(),
                    registered: true,
                    source: "hippo",
                    discovered: false,
                    bad: false,
                    active_in: Vec::new(),
                })
                .registered = true;
        }
        for c in snapshot.channels_of(app) {
            if let Some(active) = &c.active_revision {
                if let Some(r) = revisions.get_mut(&active.revision_number) {
                    r.active_in.push(c.name.clone());
                }
            }
        }
    }
    let mut revisions: Vec<RevisionDetail> = revisions.into_values().collect();
    // Kept for every app until the next cycle: without the room `push` grew.
    for r in &mut revisions {
        r.active_in.shrink_to_fit();
    }
    // Newest first.
    revisions.sort_by(|a, b| {
        let v = |r: &RevisionDetail| semver::Version::parse(&r.version).ok();
        v(b).cmp(&v(a)).then_with(|| b.version.cmp(&a.version))
    });
    AppDetail {
        origin: spec.origin.to_string(),
        storage_id: spec.storage_id.clone(),
        suspended: spec.suspend,
        revisions,
        pending: plan.changes.iter().map(|c| c.describe()).collect(),
        problems: plan
            .problems
            .iter()
            .map(|p| format!("{} ({})", p.message, p.reason))
            .collect(),
        moves: plan.moves.iter().map(|m| m.to_string()).collect(),
    }
}

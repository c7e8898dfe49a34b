//! One snapshot of what Hippo and the Bindle server hold, for the apps in the deploy files.
//!
//! Hippo is read with three paged list calls (apps, channels, revisions), never one GET per
//! object, so a no-op reconcile's Hippo request count does not grow with the number of apps
//! (beyond paging). Hippo cannot filter revisions or channels by app, which is why the
//! reconciler works on one global snapshot rather than per-app reads.

use crate::sync::MutexExt;
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use futures::{stream, StreamExt};

use crate::{
    bindles::{BindleClient, BindleError, BindleVersions},
    delivery::{DeliveryRecords, ProbeObservation, RECORDS_VARIABLE},
    hippo::{
        types::{App, Channel, Revision},
        HippoClient, HippoError,
    },
    nomad::{
        Allocation, Allocations, Blocking, Indexed, Job, JobFacts, JobStub, JobVersion, Listed,
        NomadClient, NomadError,
    },
    spec::{AppSpec, RevisionSource},
};

/// Errors that stop observation as a whole.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error("reading Hippo: {0}")]
    Hippo(#[from] HippoError),
}

impl ObserveError {
    pub fn is_transient(&self) -> bool {
        match self {
            ObserveError::Hippo(e) => e.is_transient(),
        }
    }
}

/// A failure to observe one part, kept in the snapshot so that only the apps that need it fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartialFailure {
    pub message: String,
    pub transient: bool,
}

impl From<&BindleError> for PartialFailure {
    fn from(e: &BindleError) -> Self {
        PartialFailure {
            message: e.to_string(),
            transient: e.is_transient(),
        }
    }
}

/// What Hippo and Bindle hold. Plain data: `diff` reads it without I/O.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub apps: Vec<App>,
    pub channels: Vec<Channel>,
    pub revisions: Vec<Revision>,
    /// Bindle name (storage id) → its versions on the server.
    pub bindles: BTreeMap<String, Result<Arc<BindleVersions>, PartialFailure>>,
    /// `name/version` → parcels the server lacks. Only checked for bindles not yet registered
    /// in Hippo: a registered revision was complete when registered (bindles are immutable).
    pub missing: BTreeMap<String, Result<usize, PartialFailure>>,
    /// `None` when Nomad is not configured (Hippo is then the only judge).
    pub nomad: Option<Result<NomadState, PartialFailure>>,
    /// When it was observed (Unix ms): the diff's clock for promotion windows.
    pub observed_at_ms: i64,
    /// The rollback records (a Nomad Variable); `None` when no app promotes or rolls back, or
    /// Nomad is not configured.
    pub delivery: Option<Result<Arc<DeliveryRecords>, PartialFailure>>,
    /// What each promotion's check saw, by (app, promoted channel).
    pub probes: BTreeMap<(String, String), ProbeObservation>,
}

/// What Nomad runs. The parts are shared with the [`NomadObserver`]'s cache: a snapshot costs
/// no copy of them.
#[derive(Debug, Clone, Default)]
pub struct NomadState {
    /// Every job, by id.
    pub jobs: Arc<BTreeMap<String, JobStub>>,
    /// Full jobs, read only for the channels the deploy files manage.
    pub details: BTreeMap<String, Arc<JobFacts>>,
    /// Every allocation (one list call), by job.
    pub allocations: Arc<Allocations>,
    /// `X-Nomad-Index` of the allocations list, for a blocking query on it.
    pub allocations_index: u64,
    /// The kept versions of the jobs of `rollback: true` channels, newest first: which
    /// revision last ran healthy (`Stable`) in the channel.
    pub versions: BTreeMap<String, Arc<Vec<JobVersion>>>,
}

impl NomadState {
    pub fn allocations_of<'a>(&'a self, job_id: &str) -> impl Iterator<Item = &'a Allocation> {
        self.allocations.of(job_id).iter()
    }
}

impl From<&NomadError> for PartialFailure {
    fn from(e: &NomadError) -> Self {
        PartialFailure {
            message: e.to_string(),
            transient: e.is_transient(),
        }
    }
}

/// Reads Nomad for the controller, keeping full jobs keyed by `JobModifyIndex` so that a
/// long-running controller re-reads a job only after it changed, and the two lists with their
/// `X-Nomad-Index`, so that a list whose index did not move is not decoded again.
pub struct NomadObserver {
    pub client: NomadClient,
    cache: std::sync::Mutex<ObservedNomad>,
}

#[derive(Default)]
struct ObservedNomad {
    jobs: BTreeMap<String, Arc<JobFacts>>,
    stubs: Option<(u64, Arc<BTreeMap<String, JobStub>>)>,
    allocations: Option<(u64, Arc<Allocations>)>,
    /// Job versions of `rollback: true` channels, with the job's `ModifyIndex` when read.
    versions: BTreeMap<String, (u64, Arc<Vec<JobVersion>>)>,
}

/// Runs `read` on every item, `concurrency` at a time; the first error is the answer.
async fn bounded<I, T, F, Fut>(
    items: Vec<I>,
    concurrency: usize,
    read: F,
) -> Result<Vec<T>, NomadError>
where
    F: Fn(I) -> Fut,
    Fut: std::future::Future<Output = Result<T, NomadError>>,
{
    stream::iter(items)
        .map(read)
        .buffer_unordered(concurrency.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// The list decoded now, or the one kept when Nomad's index did not move.
fn fresh_or_kept<T, U>(
    listed: Listed<T>,
    kept: Option<(u64, Arc<U>)>,
    convert: impl FnOnce(T) -> U,
) -> (u64, Arc<U>) {
    match (listed, kept) {
        (Listed::Unchanged(index), Some((_, kept))) => (index, kept),
        (Listed::Fresh(Indexed { value, index }), _) => (index, Arc::new(convert(value))),
        // Only asked with a kept list's index, so unchanged always has one.
        (Listed::Unchanged(index), None) => {
            unreachable!("unchanged at {index} without a kept list")
        }
    }
}

impl NomadObserver {
    pub fn new(client: NomadClient) -> Self {
        NomadObserver {
            client,
            cache: Default::default(),
        }
    }

    /// One jobs list, one allocations list (optionally a blocking query), and a job read for
    /// each of `wanted` whose `JobModifyIndex` moved since it was last read.
    pub async fn observe(
        &self,
        wanted: &BTreeSet<String>,
        blocking: Option<Blocking>,
        concurrency: usize,
    ) -> Result<NomadState, NomadError> {
        let (kept_allocations, kept_stubs) = {
            let cache = self.cache.locked();
            (cache.allocations.clone(), cache.stubs.clone())
        };
        let known_allocations = kept_allocations.as_ref().map(|k| k.0);
        let known_stubs = kept_stubs.as_ref().map(|k| k.0);
        let (allocations, stubs) = match blocking {
            // Block on the allocations first: that is what moves while a deployment rolls out.
            Some(_) => {
                let a = self
                    .client
                    .list_allocations_since(None, blocking, known_allocations)
                    .await?;
                (a, self.client.list_jobs_since(None, known_stubs).await?)
            }
            None => tokio::try_join!(
                self.client
                    .list_allocations_since(None, None, known_allocations),
                self.client.list_jobs_since(None, known_stubs)
            )?,
        };
        let (allocations_index, allocations) =
            fresh_or_kept(allocations, kept_allocations, Allocations::from);
        let stubs = fresh_or_kept(stubs, kept_stubs, |list: Vec<JobStub>| {
            list.into_iter().map(|j| (j.id.clone(), j)).collect()
        });
        {
            let mut cache = self.cache.locked();
            cache.allocations = Some((allocations_index, allocations.clone()));
            cache.stubs = Some(stubs.clone());
        }
        let jobs = stubs.1;
        let stale: Vec<String> = {
            let cache = &self.cache.locked().jobs;
            wanted
                .iter()
                .filter(|id| match (jobs.get(*id), cache.get(*id)) {
                    (Some(stub), Some(job)) => stub.job_modify_index != job.job_modify_index,
                    (Some(_), None) => true,
                    (None, _) => false,
                })
                .cloned()
                .collect()
        };
        let read: Vec<(String, Option<Job>)> = bounded(stale, concurrency, |id| async move {
            let job = self.client.read_job(&id).await?;
            Ok((id, job))
        })
        .await?;
        let mut guard = self.cache.locked();
        let cache = &mut guard.jobs;
        for (id, job) in read {
            match job {
                Some(j) => {
                    cache.insert(id, Arc::new(JobFacts::from(j)));
                }
                None => {
                    cache.remove(&id);
                }
            }
        }
        cache.retain(|id, _| jobs.contains_key(id));
        let details = wanted
            .iter()
            .filter_map(|id| cache.get(id).map(|j| (id.clone(), j.clone())))
            .collect();
        Ok(NomadState {
            jobs,
            details,
            allocations,
            allocations_index,
            versions: BTreeMap::new(),
        })
    }
}

impl NomadObserver {
    /// The kept versions of `ids` (newest first), read again only for a job whose
    /// `ModifyIndex` moved (a new version, or one marked stable).
    pub async fn versions(
        &self,
        ids: &BTreeSet<String>,
        stubs: &BTreeMap<String, JobStub>,
        concurrency: usize,
    ) -> Result<BTreeMap<String, Arc<Vec<JobVersion>>>, NomadError> {
        let stale: Vec<(String, u64)> = {
            let cache = &self.cache.locked().versions;
            ids.iter()
                .filter_map(|id| {
                    let stub = stubs.get(id)?;
                    let fresh = cache.get(id).is_some_and(|(i, _)| *i == stub.modify_index);
                    (!fresh).then(|| (id.clone(), stub.modify_index))
                })
                .collect()
        };
        let read: Vec<(String, u64, Vec<JobVersion>)> =
            bounded(stale, concurrency, |(id, index)| async move {
                let v = self.client.job_versions(&id).await?;
                Ok((id, index, v))
            })
            .await?;
        let mut guard = self.cache.locked();
        let cache = &mut guard.versions;
        for (id, index, v) in read {
            cache.insert(id, (index, Arc::new(v)));
        }
        cache.retain(|id, _| ids.contains(id));
        Ok(ids
            .iter()
            .filter_map(|id| cache.get(id).map(|(_, v)| (id.clone(), v.clone())))
            .collect())
    }

    /// Waits, with one blocking query (`index`/`wait`), for the allocations list to move past
    /// the one last read, and answers the jobs whose allocations changed since then: created
    /// or modified (`ModifyIndex` above the old index) or gone from the list. Empty when `wait`
    /// ran out with nothing new. The list read replaces the kept one, so the next observation
    /// need not decode it again. With no list kept yet, one plain read makes one (no job is
    /// answered: there is nothing to compare with).
    pub async fn wait_for_allocation_change(
        &self,
        wait: std::time::Duration,
    ) -> Result<BTreeSet<String>, NomadError> {
        let kept = self.cache.locked().allocations.clone();
        let Some((since, old)) = kept else {
            let listed = self.client.list_allocations_since(None, None, None).await?;
            self.keep_allocations(fresh_or_kept(listed, None, Allocations::from));
            return Ok(BTreeSet::new());
        };
        let blocking = Blocking { index: since, wait };
        let listed = self
            .client
            .list_allocations_since(None, Some(blocking), Some(since))
            .await?;
        let (index, new) = match listed {
            Listed::Unchanged(_) => return Ok(BTreeSet::new()),
            Listed::Fresh(Indexed { value, index }) => (index, Arc::new(Allocations::from(value))),
        };
        // An index that went back (a Nomad cluster restored from a snapshot) says nothing about
        // what moved: every job counts as changed.
        let changed = new
            .jobs()
            .filter(|(_, allocs)| index < since || allocs.iter().any(|a| a.modify_index > since))
            .map(|(job, _)| job.to_string())
            .chain(
                old.jobs()
                    .filter(|(job, _)| new.of(job).is_empty())
                    .map(|(job, _)| job.to_string()),
            )
            .collect();
        self.keep_allocations((index, new));
        Ok(changed)
    }

    /// Keeps `list` unless a newer one was kept meanwhile (a cycle observed while this waited).
    fn keep_allocations(&self, list: (u64, Arc<Allocations>)) {
        let mut cache = self.cache.locked();
        if cache
            .allocations
            .as_ref()
            .is_none_or(|(kept, _)| *kept <= list.0)
        {
            cache.allocations = Some(list);
        }
    }
}

/// The Nomad jobs the deploy files' channels should have: Hippo names each job after its
/// channel's GUID, and schedules one only for a channel with an active revision.
pub fn wanted_jobs(apps: &[AppSpec], snapshot: &Snapshot) -> BTreeSet<String> {
    apps.iter()
        .filter_map(|spec| snapshot.app(&spec.name))
        .flat_map(|app| snapshot.channels_of(app))
        .filter(|c| c.active_revision.is_some())
        .map(|c| c.id.to_string())
        .collect()
}

/// Observes Nomad into `snapshot` (which must hold Hippo's state already).
pub async fn observe_nomad(
    apps: &[AppSpec],
    nomad: &NomadObserver,
    blocking: Option<Blocking>,
    concurrency: usize,
    snapshot: &mut Snapshot,
) {
    let wanted = wanted_jobs(apps, snapshot);
    snapshot.nomad = Some(
        nomad
            .observe(&wanted, blocking, concurrency)
            .await
            .map_err(|e| (&e).into()),
    );
}

impl Snapshot {
    pub fn app(&self, name: &str) -> Option<&App> {
        self.apps.iter().find(|a| a.name == name)
    }

    pub fn channels_of(&self, app: &App) -> impl Iterator<Item = &Channel> {
        let id = app.id;
        self.channels.iter().filter(move |c| c.app_id == id)
    }

    pub fn revisions_of(&self, app: &App) -> impl Iterator<Item = &Revision> {
        let id = app.id;
        self.revisions.iter().filter(move |r| r.app_id == id)
    }

    /// Whether every Hippo app with this storage id has this revision (and there is one).
    fn registered_everywhere(&self, storage_id: &str, version: &str) -> bool {
        let mut apps = self
            .apps
            .iter()
            .filter(|a| a.storage_id == storage_id)
            .peekable();
        apps.peek().is_some()
            && apps.all(|a| self.revisions_of(a).any(|r| r.revision_number == version))
    }
}

/// Reads Hippo's apps, channels and revisions.
pub async fn observe_hippo(
    hippo: &HippoClient,
) -> Result<(Vec<App>, Vec<Channel>, Vec<Revision>), HippoError> {
    tokio::try_join!(
        hippo.list_apps(),
        hippo.list_channels(),
        hippo.list_revisions()
    )
}

/// Bindle versions already seen, for a long-running controller. Bindles are immutable, so a
/// storage id whose desired revisions are all registered in Hippo and were all seen on the
/// server with the same parcels needs no new query, until the entry is `max_age` old (which
/// bounds how late a yank is noticed).
#[derive(Debug)]
pub struct BindleCache {
    max_age: std::time::Duration,
    /// The age after which an app with a `discover` range asks again (its discover interval).
    discover_age: Option<std::time::Duration>,
    entries: std::sync::Mutex<BTreeMap<String, (std::time::Instant, Arc<BindleVersions>)>>,
}

impl BindleCache {
    pub fn new(max_age: std::time::Duration) -> Self {
        BindleCache {
            max_age,
            discover_age: None,
            entries: Default::default(),
        }
    }

    /// Versions of a bindle an app discovers from are asked for again once `every` old.
    pub fn discovering_every(mut self, every: std::time::Duration) -> Self {
        self.discover_age = Some(every);
        self
    }

    fn fresh(&self, name: &str, discovering: bool) -> Option<Arc<BindleVersions>> {
        let max_age = match self.discover_age {
            Some(d) if discovering => d.min(self.max_age),
            _ => self.max_age,
        };
        let entries = self.entries.locked();
        entries
            .get(name)
            .filter(|(at, _)| at.elapsed() < max_age)
            .map(|(_, v)| v.clone())
    }

    fn store(&self, name: &str, versions: &Arc<BindleVersions>) {
        self.entries.locked().insert(
            name.to_string(),
            (std::time::Instant::now(), versions.clone()),
        );
    }
}

/// What a snapshot is observed from.
#[derive(Clone, Copy)]
pub struct Sources<'a> {
    pub hippo: &'a HippoClient,
    pub bindle: &'a BindleClient,
    /// Settled bindles are not asked for again until they are this old (the controller).
    pub bindle_cache: Option<&'a BindleCache>,
    pub nomad: Option<&'a NomadObserver>,
    /// How many requests run at once.
    pub concurrency: usize,
    /// Runs promotions' checks, remembering what they saw between cycles.
    pub prober: &'a crate::probe::Prober,
}

/// Builds a full snapshot for `apps`.
pub async fn observe(apps: &[AppSpec], sources: &Sources<'_>) -> Result<Snapshot, ObserveError> {
    let (hippo_apps, channels, revisions) = observe_hippo(sources.hippo).await?;
    let mut snapshot = Snapshot {
        apps: hippo_apps,
        channels,
        revisions,
        ..Default::default()
    };
    observe_bindles(
        apps,
        sources.bindle,
        sources.bindle_cache,
        sources.concurrency,
        &mut snapshot,
    )
    .await;
    if let Some(nomad) = sources.nomad {
        observe_nomad(apps, nomad, None, sources.concurrency, &mut snapshot).await;
    }
    observe_delivery(apps, sources, &mut snapshot).await;
    sources.prober.observe(apps, &mut snapshot).await;
    Ok(snapshot)
}

/// Whether any app promotes or rolls back: only then are records and job versions read.
fn delivers(apps: &[AppSpec]) -> bool {
    apps.iter()
        .flat_map(|a| &a.channels)
        .any(|c| c.rollback || matches!(c.selector, crate::spec::Selector::Promote(_)))
}

/// The clock, the rollback records and the job versions of `rollback: true` channels: what
/// promotion and rollback are decided from (after Hippo and Nomad are in `snapshot`).
pub async fn observe_delivery(apps: &[AppSpec], sources: &Sources<'_>, snapshot: &mut Snapshot) {
    snapshot.observed_at_ms = chrono::Utc::now().timestamp_millis();
    let Some(nomad) = sources.nomad.filter(|_| delivers(apps)) else {
        return;
    };
    snapshot.delivery = Some(match nomad.client.read_variable(RECORDS_VARIABLE).await {
        Ok(None) => Ok(Arc::new(DeliveryRecords::default())),
        Ok(Some((items, _))) => {
            DeliveryRecords::from_items(&items)
                .map(Arc::new)
                .map_err(|message| PartialFailure {
                    message,
                    transient: false,
                })
        }
        Err(e) => Err((&e).into()),
    });
    let jobs: BTreeSet<String> = apps
        .iter()
        .filter_map(|spec| snapshot.app(&spec.name).map(|app| (spec, app)))
        .flat_map(|(spec, app)| {
            snapshot
                .channels_of(app)
                .filter(|c| {
                    spec.channels
                        .iter()
                        .any(|ch| ch.rollback && ch.name == c.name)
                })
                .map(|c| c.id.to_string())
        })
        .collect();
    let Some(Ok(state)) = &mut snapshot.nomad else {
        return;
    };
    match nomad
        .versions(&jobs, &state.jobs, sources.concurrency)
        .await
    {
        Ok(versions) => state.versions = versions,
        // Rollbacks wait for the next observation: no target can be chosen without them.
        Err(e) => tracing::warn!(error = %e, "reading job versions for rollback failed"),
    }
}

/// What a stage of apply wrote: [`refresh`] observes again what that may have changed.
#[derive(Debug, Clone, Copy)]
pub enum Written<'a> {
    /// These bindles (`name/version`) were pushed, each verified complete.
    Bindles(&'a [String]),
    /// Apps were created (Hippo imports their bindles' versions) or revisions registered
    /// (Hippo moves range channels).
    Apps,
    /// Channels were created, updated or deleted (Hippo registers their jobs).
    Channels,
    /// Jobs were rescheduled through Hippo.
    NomadJobs,
}

/// Brings `snapshot` up to date after `written`, re-reading only what it may have changed.
pub async fn refresh(
    snapshot: &mut Snapshot,
    written: Written<'_>,
    apps: &[AppSpec],
    sources: &Sources<'_>,
) -> Result<(), ObserveError> {
    match written {
        Written::Bindles(pushed) => {
            // A push ends with the server reporting no missing parcels; record that instead of
            // asking again. The versions list is re-read for the apps concerned.
            let names: BTreeSet<&str> = pushed
                .iter()
                .filter_map(|id| id.rsplit_once('/').map(|(n, _)| n))
                .collect();
            let apps: Vec<AppSpec> = apps
                .iter()
                .filter(|a| names.contains(a.storage_id.as_str()))
                .cloned()
                .collect();
            for id in pushed {
                snapshot.missing.insert(id.clone(), Ok(0));
            }
            let mut fresh = Snapshot {
                apps: snapshot.apps.clone(),
                revisions: snapshot.revisions.clone(),
                ..Default::default()
            };
            observe_bindles(
                &apps,
                sources.bindle,
                sources.bindle_cache,
                sources.concurrency,
                &mut fresh,
            )
            .await;
            snapshot.bindles.extend(fresh.bindles);
            snapshot.missing.extend(fresh.missing);
        }
        Written::Apps => {
            let (apps, channels, revisions) = observe_hippo(sources.hippo).await?;
            snapshot.apps = apps;
            snapshot.channels = channels;
            snapshot.revisions = revisions;
        }
        Written::Channels => {
            snapshot.channels = sources.hippo.list_channels().await?;
            // Hippo (re)registers jobs when channels change.
            if let Some(nomad) = sources.nomad {
                observe_nomad(apps, nomad, None, sources.concurrency, snapshot).await;
            }
            // A rollback wrote its record.
            observe_delivery(apps, sources, snapshot).await;
        }
        Written::NomadJobs => {
            if let Some(nomad) = sources.nomad {
                observe_nomad(apps, nomad, None, sources.concurrency, snapshot).await;
            }
            observe_delivery(apps, sources, snapshot).await;
        }
    }
    Ok(())
}

/// Fills in the Bindle part of `snapshot` for `apps`.
pub async fn observe_bindles(
    apps: &[AppSpec],
    bindle: &BindleClient,
    cache: Option<&BindleCache>,
    concurrency: usize,
    snapshot: &mut Snapshot,
) {
    // Owned names: a closure over `&str` makes the future `Send` only for one lifetime
    // (rust-lang/rust#102211), and the daemon spawns it.
    let mut names: BTreeSet<String> = apps.iter().map(|a| a.storage_id.clone()).collect();
    if let Some(cache) = cache {
        names.retain(|name| {
            let discovering = apps
                .iter()
                .any(|a| &a.storage_id == name && !a.discover.is_empty());
            let Some(versions) = cache.fresh(name, discovering) else {
                return true;
            };
            let settled = apps.iter().filter(|a| &a.storage_id == name).all(|a| {
                a.revisions.iter().all(|r| {
                    let seen = versions.get(&r.version).is_some_and(|b| {
                        !b.yanked
                            && match &r.source {
                                RevisionSource::Local(local) => local.same_parcels(&b.parcels),
                                RevisionSource::Existing => true,
                            }
                    });
                    seen && snapshot.registered_everywhere(name, &r.version)
                })
            });
            if settled {
                snapshot.bindles.insert(name.clone(), Ok(versions));
            }
            !settled
        });
    }
    let versions: Vec<(String, Result<_, PartialFailure>)> = stream::iter(names)
        .map(|name| async move {
            let result = bindle
                .versions(&name)
                .await
                .map(Arc::new)
                .map_err(|e| (&e).into());
            (name, result)
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    if let Some(cache) = cache {
        for (name, result) in &versions {
            if let Ok(v) = result {
                cache.store(name, v);
            }
        }
    }
    snapshot.bindles.extend(versions);

    // Completeness is checked only where it matters: on the server, not yanked, not yet
    // registered in Hippo (a crash between invoice and last parcel leaves exactly this).
    let mut to_check = BTreeSet::new();
    for app in apps {
        let Some(Ok(server)) = snapshot.bindles.get(&app.storage_id) else {
            continue;
        };
        for rev in &app.revisions {
            let on_server = server.get(&rev.version);
            let same_content = match (&rev.source, on_server) {
                (_, None) => false,
                (_, Some(b)) if b.yanked => false,
                (RevisionSource::Local(local), Some(b)) => local.same_parcels(&b.parcels),
                (RevisionSource::Existing, Some(_)) => true,
            };
            if same_content && !snapshot.registered_everywhere(&app.storage_id, &rev.version) {
                to_check.insert(format!("{}/{}", app.storage_id, rev.version));
            }
        }
        // Discovered versions are registered only once complete.
        for version in crate::diff::discovered(app, server) {
            if !snapshot.registered_everywhere(&app.storage_id, version) {
                to_check.insert(format!("{}/{version}", app.storage_id));
            }
        }
    }
    let missing: Vec<(String, Result<usize, PartialFailure>)> = stream::iter(to_check)
        .map(|id| async move {
            let result = match bindle::Id::try_from(id.as_str()) {
                Ok(parsed) => match bindle.missing_parcels(&parsed).await {
                    Ok(Some(m)) => Ok(m.len()),
                    // Listed by the query but gone: treat as fully missing.
                    Ok(None) => Ok(usize::MAX),
                    Err(e) => Err((&e).into()),
                },
                Err(e) => Err(PartialFailure {
                    message: format!("{id}: {e}"),
                    transient: false,
                }),
            };
            (id, result)
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    snapshot.missing.extend(missing);
}

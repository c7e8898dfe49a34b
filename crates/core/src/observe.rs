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
        Allocation, Allocations, Blocking, Indexed, Job, JobFacts, JobStubs, JobVersion, Listed,
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
///
/// Hippo's three lists are indexed by app (and apps by name and storage id) when they are set,
/// so that looking up one app's channels and revisions costs a binary search, not a scan of
/// every list: a diff of N apps is O(N log N), not O(N²). The lists can only be replaced or
/// changed through [`Snapshot::new`] and [`Snapshot::hippo_mut`], which index them again, so
/// the index cannot drift from them.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    hippo: HippoLists,
    index: HippoIndex,
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
    pub jobs: Arc<JobStubs>,
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
    stubs: Option<(u64, Arc<JobStubs>)>,
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
        let stubs = fresh_or_kept(stubs, kept_stubs, JobStubs::from);
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
                .filter(|id| match (jobs.get(id), cache.get(*id)) {
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
        stubs: &JobStubs,
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
pub fn wanted_jobs(apps: &[Arc<AppSpec>], snapshot: &Snapshot) -> BTreeSet<String> {
    apps.iter()
        .filter_map(|spec| snapshot.app(&spec.name))
        .flat_map(|app| snapshot.channels_of(app))
        .filter(|c| c.active_revision.is_some())
        .map(|c| c.id.to_string())
        .collect()
}

/// Observes Nomad into `snapshot` (which must hold Hippo's state already).
pub async fn observe_nomad(
    apps: &[Arc<AppSpec>],
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

/// Hippo's apps, channels and revisions, in the order Hippo listed them.
#[derive(Debug, Clone, Default)]
pub struct HippoLists {
    pub apps: Vec<App>,
    pub channels: Vec<Channel>,
    pub revisions: Vec<Revision>,
}

/// Positions in [`HippoLists`], each sorted by a key (stably: Hippo's order among equals).
#[derive(Debug, Clone, Default)]
struct HippoIndex {
    apps_by_name: Vec<u32>,
    apps_by_storage_id: Vec<u32>,
    channels_by_app: Vec<u32>,
    revisions_by_app: Vec<u32>,
}

/// The positions of `items` sorted by `key`.
fn sorted_positions<T, K: Ord + ?Sized>(items: &[T], key: impl Fn(&T) -> &K) -> Vec<u32> {
    let mut positions: Vec<u32> = (0..items.len() as u32).collect();
    positions.sort_by(|a, b| key(&items[*a as usize]).cmp(key(&items[*b as usize])));
    positions
}

/// The items whose key is `wanted`, through `positions` sorted by that key.
fn equal_range<'a, T, K: Ord + ?Sized>(
    positions: &'a [u32],
    items: &'a [T],
    key: impl Fn(&T) -> &K,
    wanted: &K,
) -> impl Iterator<Item = &'a T> {
    let start = positions.partition_point(|i| key(&items[*i as usize]) < wanted);
    let len = positions[start..].partition_point(|i| key(&items[*i as usize]) == wanted);
    positions[start..start + len]
        .iter()
        .map(move |i| &items[*i as usize])
}

impl HippoIndex {
    fn of(lists: &HippoLists) -> Self {
        HippoIndex {
            apps_by_name: sorted_positions(&lists.apps, |a| a.name.as_str()),
            apps_by_storage_id: sorted_positions(&lists.apps, |a| a.storage_id.as_str()),
            channels_by_app: sorted_positions(&lists.channels, |c| &c.app_id),
            revisions_by_app: sorted_positions(&lists.revisions, |r| &r.app_id),
        }
    }
}

/// Changes Hippo's lists in a [`Snapshot`]; they are indexed again when it is dropped.
pub struct HippoMut<'a>(&'a mut Snapshot);

impl std::ops::Deref for HippoMut<'_> {
    type Target = HippoLists;
    fn deref(&self) -> &HippoLists {
        &self.0.hippo
    }
}

impl std::ops::DerefMut for HippoMut<'_> {
    fn deref_mut(&mut self) -> &mut HippoLists {
        &mut self.0.hippo
    }
}

impl Drop for HippoMut<'_> {
    fn drop(&mut self) {
        self.0.index = HippoIndex::of(&self.0.hippo);
    }
}

impl Snapshot {
    /// A snapshot of Hippo's lists, nothing observed from Bindle or Nomad yet.
    pub fn new(apps: Vec<App>, channels: Vec<Channel>, revisions: Vec<Revision>) -> Self {
        let hippo = HippoLists {
            apps,
            channels,
            revisions,
        };
        Snapshot {
            index: HippoIndex::of(&hippo),
            hippo,
            ..Default::default()
        }
    }

    /// Changes Hippo's lists; the lookups see the change once the guard is dropped.
    pub fn hippo_mut(&mut self) -> HippoMut<'_> {
        HippoMut(self)
    }

    pub fn apps(&self) -> &[App] {
        &self.hippo.apps
    }

    pub fn channels(&self) -> &[Channel] {
        &self.hippo.channels
    }

    pub fn revisions(&self) -> &[Revision] {
        &self.hippo.revisions
    }

    /// The Hippo app named `name` (the first listed, should Hippo hold two).
    pub fn app(&self, name: &str) -> Option<&App> {
        equal_range(
            &self.index.apps_by_name,
            &self.hippo.apps,
            |a| a.name.as_str(),
            name,
        )
        .next()
    }

    /// The Hippo apps with this storage id.
    pub fn apps_with_storage_id<'a>(
        &'a self,
        storage_id: &'a str,
    ) -> impl Iterator<Item = &'a App> {
        equal_range(
            &self.index.apps_by_storage_id,
            &self.hippo.apps,
            |a| a.storage_id.as_str(),
            storage_id,
        )
    }

    pub fn channels_of(&self, app: &App) -> impl Iterator<Item = &Channel> {
        equal_range(
            &self.index.channels_by_app,
            &self.hippo.channels,
            |c| &c.app_id,
            &app.id,
        )
    }

    pub fn revisions_of(&self, app: &App) -> impl Iterator<Item = &Revision> {
        equal_range(
            &self.index.revisions_by_app,
            &self.hippo.revisions,
            |r| &r.app_id,
            &app.id,
        )
    }

    /// Whether every Hippo app with this storage id has this revision (and there is one).
    fn registered_everywhere(&self, storage_id: &str, version: &str) -> bool {
        let mut apps = self.apps_with_storage_id(storage_id).peekable();
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
pub async fn observe(
    apps: &[Arc<AppSpec>],
    sources: &Sources<'_>,
) -> Result<Snapshot, ObserveError> {
    let (hippo_apps, channels, revisions) = observe_hippo(sources.hippo).await?;
    let mut snapshot = Snapshot::new(hippo_apps, channels, revisions);
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
fn delivers(apps: &[Arc<AppSpec>]) -> bool {
    apps.iter()
        .flat_map(|a| &a.channels)
        .any(|c| c.rollback || matches!(c.selector, crate::spec::Selector::Promote(_)))
}

/// The clock, the rollback records and the job versions of `rollback: true` channels: what
/// promotion and rollback are decided from (after Hippo and Nomad are in `snapshot`).
pub async fn observe_delivery(
    apps: &[Arc<AppSpec>],
    sources: &Sources<'_>,
    snapshot: &mut Snapshot,
) {
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
    apps: &[Arc<AppSpec>],
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
            let apps: Vec<Arc<AppSpec>> = apps
                .iter()
                .filter(|a| names.contains(a.storage_id.as_str()))
                .cloned()
                .collect();
            for id in pushed {
                snapshot.missing.insert(id.clone(), Ok(0));
            }
            // Replaces these apps' entries (and checks the pushed ids' parcels again).
            observe_bindles(
                &apps,
                sources.bindle,
                sources.bindle_cache,
                sources.concurrency,
                snapshot,
            )
            .await;
        }
        Written::Apps => {
            let (apps, channels, revisions) = observe_hippo(sources.hippo).await?;
            *snapshot.hippo_mut() = HippoLists {
                apps,
                channels,
                revisions,
            };
        }
        Written::Channels => {
            snapshot.hippo_mut().channels = sources.hippo.list_channels().await?;
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

/// The versions of the bindles `names`: one query per name when that takes no more requests
/// than the last read of every invoice did (a controller's cycle after one app changed), else
/// one paged read of every invoice (`ceil(invoices / 255)` requests, not one per name). When
/// that read fails, every name's read has failed, transient or not as the failure was.
async fn read_versions(
    bindle: &BindleClient,
    names: BTreeSet<String>,
    concurrency: usize,
) -> Vec<(String, Result<Arc<BindleVersions>, PartialFailure>)> {
    if names.is_empty() {
        return Vec::new();
    }
    if names.len() as u64 <= bindle.all_versions_pages() {
        return stream::iter(names)
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
    }
    match bindle.versions_of(&names).await {
        Ok(mut found) => names
            .into_iter()
            .map(|name| {
                let versions = found.remove(&name).unwrap_or_default();
                (name, Ok(Arc::new(versions)))
            })
            .collect(),
        Err(e) => {
            let failure = PartialFailure::from(&e);
            names
                .into_iter()
                .map(|name| (name, Err(failure.clone())))
                .collect()
        }
    }
}

/// Fills in the Bindle part of `snapshot` for `apps`.
pub async fn observe_bindles(
    apps: &[Arc<AppSpec>],
    bindle: &BindleClient,
    cache: Option<&BindleCache>,
    concurrency: usize,
    snapshot: &mut Snapshot,
) {
    // Owned names: a closure over `&str` makes the future `Send` only for one lifetime
    // (rust-lang/rust#102211), and the daemon spawns it.
    let mut names: BTreeSet<String> = apps.iter().map(|a| a.storage_id.clone()).collect();
    if let Some(cache) = cache {
        let mut by_name = BTreeMap::<&str, Vec<&AppSpec>>::new();
        for app in apps {
            by_name.entry(&app.storage_id).or_default().push(app);
        }
        names.retain(|name| {
            let wanting = &by_name[name.as_str()];
            let discovering = wanting.iter().any(|a| !a.discover.is_empty());
            let Some(versions) = cache.fresh(name, discovering) else {
                return true;
            };
            let settled = wanting.iter().all(|a| {
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
    let versions = read_versions(bindle, names, concurrency).await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        bindles::BindleConfig,
        hippo::{types::Strategy, Credentials, HippoClientConfig},
        secret::Secret,
        stats::RequestStats,
    };
    use bindle::signature::{SecretKeyEntry, SignatureRole};
    use uuid::Uuid;
    use wiremock::{matchers, Mock, MockServer, ResponseTemplate};

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn app(n: u128, name: &str, storage_id: &str) -> App {
        App {
            id: id(n),
            name: name.into(),
            storage_id: storage_id.into(),
        }
    }

    fn channel(n: u128, app: u128, name: &str) -> Channel {
        Channel {
            id: id(n),
            app_id: id(app),
            name: name.into(),
            domain: None,
            revision_selection_strategy: Strategy::UseRangeRule,
            active_revision: None,
            last_publish_at: None,
            range_rule: Some("*".into()),
            certificate: None,
            environment_variables: vec![],
        }
    }

    fn revision(n: u128, app: u128, number: &str) -> Revision {
        Revision {
            id: id(n),
            app_id: id(app),
            revision_number: number.into(),
        }
    }

    fn channel_names<'a>(s: &'a Snapshot, app: &str) -> Vec<&'a str> {
        let app = s.app(app).expect("app");
        s.channels_of(app).map(|c| c.name.as_str()).collect()
    }

    fn revision_numbers<'a>(s: &'a Snapshot, app: &str) -> Vec<&'a str> {
        let app = s.app(app).expect("app");
        s.revisions_of(app)
            .map(|r| r.revision_number.as_str())
            .collect()
    }

    #[test]
    fn lookups_find_each_apps_rows_in_hippos_order() {
        // Interleaved, unsorted: the index must not depend on Hippo's order.
        let s = Snapshot::new(
            vec![
                app(2, "zeta", "shared"),
                app(1, "alpha", "a"),
                app(3, "mid", "shared"),
            ],
            vec![
                channel(12, 2, "z-prod"),
                channel(11, 1, "a-prod"),
                channel(13, 2, "z-canary"),
                channel(10, 1, "a-canary"),
            ],
            vec![
                revision(20, 2, "1.0.0"),
                revision(21, 1, "0.1.0"),
                revision(22, 2, "1.1.0"),
            ],
        );
        assert_eq!(s.app("alpha").map(|a| a.id), Some(id(1)));
        assert_eq!(s.app("nope").map(|a| a.id), None);
        assert_eq!(channel_names(&s, "zeta"), ["z-prod", "z-canary"]);
        assert_eq!(channel_names(&s, "alpha"), ["a-prod", "a-canary"]);
        assert!(channel_names(&s, "mid").is_empty());
        assert_eq!(revision_numbers(&s, "zeta"), ["1.0.0", "1.1.0"]);
        let shared: Vec<&str> = s
            .apps_with_storage_id("shared")
            .map(|a| a.name.as_str())
            .collect();
        assert_eq!(shared, ["zeta", "mid"]);
        assert!(s.registered_everywhere("a", "0.1.0"));
        // `mid` shares the storage id but lacks the revision.
        assert!(!s.registered_everywhere("shared", "1.0.0"));
        assert!(!s.registered_everywhere("nobody", "1.0.0"));
    }

    #[test]
    fn lookups_follow_changes_made_through_hippo_mut() {
        let mut s = Snapshot::new(
            vec![app(1, "alpha", "a")],
            vec![channel(10, 1, "prod")],
            vec![revision(20, 1, "1.0.0")],
        );
        assert_eq!(channel_names(&s, "alpha"), ["prod"]);
        {
            let mut hippo = s.hippo_mut();
            hippo.apps.insert(0, app(2, "beta", "b"));
            hippo.channels = vec![channel(11, 2, "b-prod"), channel(10, 1, "prod")];
            hippo.revisions.clear();
        }
        assert_eq!(channel_names(&s, "beta"), ["b-prod"]);
        assert_eq!(channel_names(&s, "alpha"), ["prod"]);
        assert!(revision_numbers(&s, "alpha").is_empty());
    }

    async fn mount_lists(
        hippo: &MockServer,
        apps: &[App],
        channels: &[Channel],
        revs: &[Revision],
    ) {
        fn page<T: serde::Serialize>(items: &[T]) -> serde_json::Value {
            serde_json::json!({
                "items": items, "totalItems": items.len(), "pageIndex": 0,
                "pageSize": 10000, "isLastPage": true,
            })
        }
        hippo.reset().await;
        let apps_json: Vec<serde_json::Value> = apps
            .iter()
            .map(|a| serde_json::json!({"id": a.id, "name": a.name, "storageId": a.storage_id}))
            .collect();
        for (path, body) in [
            ("/api/apps", page(&apps_json)),
            ("/api/channels", page(channels)),
            ("/api/revisions", page(revs)),
        ] {
            Mock::given(matchers::method("GET"))
                .and(matchers::path(path))
                .respond_with(ResponseTemplate::new(200).set_body_json(body))
                .mount(hippo)
                .await;
        }
    }

    /// The snapshot `refresh` updates answers the lookups from the lists it read last, not
    /// from an index of the lists it replaced.
    #[tokio::test]
    async fn lookups_answer_from_the_lists_a_refresh_read() {
        let hippo_server = MockServer::start().await;
        let hippo = HippoClient::new(
            HippoClientConfig::new(hippo_server.uri(), Credentials::Token(Secret::new("token"))),
            RequestStats::default(),
        )
        .expect("hippo client");
        let key = SecretKeyEntry::new("observe tests", vec![SignatureRole::Creator]);
        // No app in the deploy files: nothing is asked of Bindle.
        let bindle = BindleClient::new(
            BindleConfig::new("http://127.0.0.1:9/v1"),
            key,
            RequestStats::default(),
        )
        .expect("bindle client");
        let prober = crate::probe::Prober::default();
        let sources = Sources {
            hippo: &hippo,
            bindle: &bindle,
            bindle_cache: None,
            nomad: None,
            concurrency: 4,
            prober: &prober,
        };
        mount_lists(
            &hippo_server,
            &[app(1, "alpha", "a"), app(2, "beta", "b")],
            &[channel(10, 1, "a-prod"), channel(11, 2, "b-prod")],
            &[revision(20, 1, "1.0.0")],
        )
        .await;
        let mut s = observe(&[], &sources).await.expect("observe");
        assert_eq!(channel_names(&s, "alpha"), ["a-prod"]);
        assert_eq!(channel_names(&s, "beta"), ["b-prod"]);

        // Channels moved: one more for alpha, before the others in Hippo's list.
        let channels = [
            channel(12, 1, "a-canary"),
            channel(11, 2, "b-prod"),
            channel(10, 1, "a-prod"),
        ];
        mount_lists(
            &hippo_server,
            &[app(1, "alpha", "a"), app(2, "beta", "b")],
            &channels,
            &[revision(20, 1, "1.0.0")],
        )
        .await;
        refresh(&mut s, Written::Channels, &[], &sources)
            .await
            .expect("refresh channels");
        assert_eq!(channel_names(&s, "alpha"), ["a-canary", "a-prod"]);
        assert_eq!(channel_names(&s, "beta"), ["b-prod"]);

        // A new app listed first, and revisions registered: every list moved.
        mount_lists(
            &hippo_server,
            &[
                app(3, "gamma", "a"),
                app(1, "alpha", "a"),
                app(2, "beta", "b"),
            ],
            &[channel(13, 3, "g-prod"), channel(10, 1, "a-prod")],
            &[
                revision(21, 3, "1.0.0"),
                revision(20, 1, "1.0.0"),
                revision(22, 2, "2.0.0"),
            ],
        )
        .await;
        refresh(&mut s, Written::Apps, &[], &sources)
            .await
            .expect("refresh apps");
        assert_eq!(s.app("gamma").map(|a| a.id), Some(id(3)));
        assert_eq!(s.app("alpha").map(|a| a.id), Some(id(1)));
        assert_eq!(channel_names(&s, "gamma"), ["g-prod"]);
        assert_eq!(channel_names(&s, "alpha"), ["a-prod"]);
        assert!(channel_names(&s, "beta").is_empty());
        assert_eq!(revision_numbers(&s, "beta"), ["2.0.0"]);
        assert!(s.registered_everywhere("a", "1.0.0"));
    }
}

//! Drift on Nomad noticed in seconds rather than at the next interval: between cycles, one
//! blocking query on the allocations list (`index`/`wait`) is always waiting. When it returns
//! with allocations of a managed app's job changed (a job is named after its Hippo channel's
//! GUID), that app is made due and the loop woken. Cost: one long-poll at a time, and the
//! allocations list decoded once per change (the next cycle then finds it unchanged).

use hippo_gitops_core::sync::MutexExt;
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};

use hippo_gitops_core::observe::NomadObserver;

use super::{schedule::BackoffPolicy, Trigger};

/// How long one blocking query waits: Nomad's own cap (`MaxBlockingRPCQueryTime`).
const WAIT: Duration = Duration::from_secs(300);
/// The pause after a change before blocking again, so that a burst of allocation updates (a
/// rollout) costs a few decodes of the list, not one per update. Keeps the delay from a change
/// to its trigger well under two seconds.
const SETTLE: Duration = Duration::from_millis(250);
/// Waits after failed queries.
const RETRY: BackoffPolicy = BackoffPolicy {
    min: Duration::from_secs(1),
    max: Duration::from_secs(60),
};

/// Nomad job id (a Hippo channel's GUID) → the app that owns it, as of the last observation.
/// Kept between cycles (30,000 jobs at 10,000 apps): a GUID rather than its text, and each
/// app's name once, shared by its channels.
pub type ManagedJobs = BTreeMap<uuid::Uuid, Arc<str>>;

/// Watches until `stop` turns true. Apps whose jobs changed are added to `changed`, and a
/// [`Trigger::NomadChanged`] is sent (the loop takes them all from `changed`, so a trigger
/// lost to a full queue loses no app).
pub fn spawn(
    observer: Arc<NomadObserver>,
    mut managed: watch::Receiver<Arc<ManagedJobs>>,
    changed: Arc<Mutex<BTreeSet<String>>>,
    triggers: mpsc::Sender<Trigger>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut failures: u32 = 0;
        loop {
            // Nothing to watch before a cycle has found the managed apps' jobs.
            if managed.borrow_and_update().is_empty() {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => break,
                    changed = managed.changed() => if changed.is_err() { break },
                }
                continue;
            }
            let result = tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                r = observer.wait_for_allocation_change(WAIT) => r,
            };
            let pause = match result {
                Ok(jobs) => {
                    if failures > 0 {
                        tracing::info!("watching Nomad's allocations again");
                    }
                    failures = 0;
                    let apps: BTreeSet<String> = {
                        let managed = managed.borrow();
                        jobs.iter()
                            .filter_map(|j| uuid::Uuid::parse_str(j).ok())
                            .filter_map(|j| managed.get(&j).map(|app| app.to_string()))
                            .collect()
                    };
                    if apps.is_empty() {
                        Duration::ZERO
                    } else {
                        tracing::debug!(apps = %apps.iter().cloned().collect::<Vec<_>>().join(", "), "Nomad allocations changed");
                        changed.locked().extend(apps);
                        let _ = triggers.try_send(Trigger::NomadChanged);
                        SETTLE
                    }
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let delay = RETRY.delay(failures);
                    if failures == 1 {
                        tracing::warn!(error = %e, retry_in = ?delay, "watching Nomad's allocations failed (drift is then noticed at the next interval)");
                    } else {
                        tracing::debug!(error = %e, retry_in = ?delay, "watching Nomad's allocations failed");
                    }
                    delay
                }
            };
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    })
}

/// The jobs of the apps in `specs`, from an observation of Hippo: one per channel the deploy
/// files name that Hippo has.
pub fn managed_jobs<'a>(
    apps: impl Iterator<Item = &'a hippo_gitops_core::spec::AppSpec>,
    snapshot: &hippo_gitops_core::observe::Snapshot,
) -> ManagedJobs {
    let mut jobs = ManagedJobs::new();
    for spec in apps {
        let Some(app) = snapshot.app(&spec.name) else {
            continue;
        };
        let name: Arc<str> = Arc::from(spec.name.as_str());
        for channel in snapshot.channels_of(app) {
            if spec.channels.iter().any(|c| c.name == channel.name) {
                jobs.insert(channel.id, name.clone());
            }
        }
    }
    jobs
}

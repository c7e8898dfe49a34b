//! The seam where Hippo calls its `NomadJobService` (HIPPO-API.md §7).

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What Hippo's NomadJobService would be asked to do (HIPPO-API.md §7). The Nomad emulator (a
/// later piece of work) implements this; the default implementation only records the calls.
///
/// Calls are made after the emulator released its state lock, in the order Hippo makes them,
/// before the HTTP response is sent.
pub trait JobScheduler: Send + Sync + 'static {
    /// `IJobService.StartJob`: register (or re-register) the job named after the channel.
    fn start_job(&self, job: ScheduledJob);
    /// `IJobService.DeleteJob(channelId)`.
    fn delete_job(&self, channel_id: Uuid);
}

/// The arguments of one `StartJob` call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduledJob {
    /// Also the Nomad job id.
    pub channel_id: Uuid,
    /// `"<storageId>/<revisionNumber>"`, the `--bindle` argument of `spin up`.
    pub bindle_id: String,
    /// The channel's env vars as Hippo passes them to StartJob (Hippo's Nomad job then
    /// ignores them, §6.6).
    pub env: BTreeMap<String, String>,
    pub domain: String,
}

/// One recorded scheduler call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SchedulerEvent {
    Start(ScheduledJob),
    Delete(Uuid),
}

/// A [`JobScheduler`] that only records what it was asked to do.
#[derive(Debug, Default)]
pub struct RecordingScheduler {
    events: Mutex<Vec<SchedulerEvent>>,
}

impl RecordingScheduler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every call so far, in order.
    pub fn events(&self) -> Vec<SchedulerEvent> {
        self.lock().clone()
    }

    pub fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<SchedulerEvent>> {
        // A panicking test thread must not hide the events from the others.
        self.events.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl JobScheduler for RecordingScheduler {
    fn start_job(&self, job: ScheduledJob) {
        self.lock().push(SchedulerEvent::Start(job));
    }

    fn delete_job(&self, channel_id: Uuid) {
        self.lock().push(SchedulerEvent::Delete(channel_id));
    }
}

//! The emulators' state files, written in the background and coalesced: however many changes
//! come, a file is written at most once per interval, with the state as it is then. The
//! interval is the emulator's `state_write_interval`, or four times as long as the last write
//! took if that is longer, so that a large state (67 MB of Nomad jobs at 10,000 apps) is not
//! serialised over and over while the state lock is needed. Each write is crash-safe as before:
//! a temporary file created 0600, then renamed over the old one (`private_file`). Closing (the
//! emulator's `stop`, or its drop) writes what is still pending, and nothing is written after.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::{watch, Notify};

/// The default `state_write_interval`: a change is on disk a twentieth of a second later.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(50);

/// A write may take at most this share of the time (1/4): the interval grows with it.
const INTERVAL_PER_WRITE_TIME: u32 = 4;

/// The owner of a state file: what to write, serialised when the write happens.
pub(crate) trait Persisted: Send + Sync + 'static {
    fn state_file(&self) -> Option<&StateFile>;
    /// The file's content (the state as JSON).
    fn state_json(&self) -> serde_json::Result<Vec<u8>>;

    /// After a change: the file is written in the background, coalesced with other changes.
    fn persist_soon(&self) {
        if let Some(file) = self.state_file() {
            file.changed();
        }
    }

    /// The last write of the state file (blocking).
    fn close_state_file(&self) {
        if let Some(file) = self.state_file() {
            file.close(|| self.state_json());
        }
    }
}

/// [`Persisted::close_state_file`] off the async threads: for an emulator's `stop`.
pub(crate) async fn close<P: Persisted>(owner: &Arc<P>) {
    let owner = Arc::clone(owner);
    let _ = tokio::task::spawn_blocking(move || owner.close_state_file()).await;
}

/// One state file and its writer task.
pub(crate) struct StateFile {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// `"nomad emulator"` or `"hippo emulator"`, for the logs.
    owner: &'static str,
    interval: Duration,
    /// Held for the whole of a write: writes never overlap (they share the temporary file).
    written: Mutex<Written>,
    /// Something changed since the writer last looked (one stored permit: changes coalesce).
    changed: Notify,
    closed: watch::Sender<bool>,
    /// The number of files written, the first one included.
    writes: watch::Sender<u64>,
}

#[derive(Default)]
struct Written {
    /// Of the bytes last written: an unchanged state is not written again.
    digest: Option<[u8; 32]>,
    /// When the last write ended and how long it took.
    ended: Option<Instant>,
    took: Duration,
    closed: bool,
}

impl StateFile {
    /// Writes the initial state at once (an error here is the emulator's start failing).
    pub async fn create(
        path: &Path,
        owner: &'static str,
        interval: Duration,
        initial: &impl serde::Serialize,
    ) -> std::io::Result<StateFile> {
        let started = Instant::now();
        let initial = serde_json::to_vec_pretty(initial)?;
        let digest = Sha256::digest(&initial).into();
        hippo_gitops_core::private_file::replace_async(path, initial).await?;
        let inner = Inner {
            path: path.to_path_buf(),
            owner,
            interval,
            written: Mutex::new(Written {
                digest: Some(digest),
                ended: Some(Instant::now()),
                took: started.elapsed(),
                closed: false,
            }),
            changed: Notify::new(),
            closed: watch::channel(false).0,
            writes: watch::channel(1).0,
        };
        Ok(StateFile {
            inner: Arc::new(inner),
        })
    }

    /// Starts the task that writes after changes. It holds the owner weakly: dropping the
    /// owner ends it.
    pub fn spawn_writer<P: Persisted>(owner: &Arc<P>) {
        let Some(file) = owner.state_file() else {
            return;
        };
        let inner = Arc::clone(&file.inner);
        let owner = Arc::downgrade(owner);
        tokio::spawn(write_after_changes(inner, owner));
    }

    /// The state changed: it will be written within the interval.
    pub fn changed(&self) {
        self.inner.changed.notify_one();
    }

    /// Counts the files written (the initial one included) and changes when one is.
    pub fn writes(&self) -> watch::Receiver<u64> {
        self.inner.writes.subscribe()
    }

    /// Writes the state if it changed since the last write, then never again. Blocks while a
    /// background write finishes and while this one runs.
    pub fn close(&self, json: impl FnOnce() -> serde_json::Result<Vec<u8>>) {
        self.inner.closed.send_replace(true);
        let mut written = self.inner.lock();
        if written.closed {
            return;
        }
        self.inner.write(&mut written, json);
        written.closed = true;
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Written> {
        // A panic mid-write leaves the file as it was (the rename did not happen).
        self.written.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When the next write may start.
    fn next_write(&self) -> Option<Instant> {
        let written = self.lock();
        let interval = self.interval.max(written.took * INTERVAL_PER_WRITE_TIME);
        written.ended.map(|ended| ended + interval)
    }

    fn write(&self, written: &mut Written, json: impl FnOnce() -> serde_json::Result<Vec<u8>>) {
        let started = Instant::now();
        let bytes = match json() {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "{}: serialising state", self.owner);
                return;
            }
        };
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        if written.digest == Some(digest) {
            return;
        }
        // `create` made the directory.
        match hippo_gitops_core::private_file::replace(&self.path, &bytes) {
            Ok(()) => {
                written.digest = Some(digest);
                written.ended = Some(Instant::now());
                written.took = started.elapsed();
                self.writes.send_modify(|n| *n += 1);
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "{}: saving state", self.owner)
            }
        }
    }
}

/// The writer task: after a change, waits for the interval to pass since the last write, then
/// writes the state as it is by then (every change made meanwhile included).
async fn write_after_changes<P: Persisted>(inner: Arc<Inner>, owner: Weak<P>) {
    let mut closed = inner.closed.subscribe();
    loop {
        tokio::select! {
            _ = inner.changed.notified() => {}
            _ = closed.wait_for(|c| *c) => return,
        }
        if let Some(at) = inner.next_write() {
            tokio::select! {
                _ = tokio::time::sleep_until(at.into()) => {}
                _ = closed.wait_for(|c| *c) => return,
            }
        }
        let Some(owner) = owner.upgrade() else {
            return;
        };
        let inner = Arc::clone(&inner);
        let wrote = tokio::task::spawn_blocking(move || {
            let mut written = inner.lock();
            if !written.closed {
                inner.write(&mut written, || owner.state_json());
            }
        })
        .await;
        if wrote.is_err() {
            return;
        }
    }
}

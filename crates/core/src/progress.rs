//! How long work reports its progress: bindle uploads with their bytes, waits on Nomad with what
//! is pending. The core only reports; a front end decides whether and how to show it (the CLI
//! draws one line on a terminal). Without a reader ([`Progress::is_shown`] false) the log's plain
//! lines say the same, once per step.

use std::time::Duration;

/// Receives progress reports. Every method defaults to doing nothing.
pub trait Progress: Send + Sync + std::fmt::Debug {
    /// Whether somebody sees these reports; when not, waits are logged instead.
    fn is_shown(&self) -> bool {
        false
    }
    /// A push of `bytes` to upload for bindle `id` starts.
    fn upload_started(&self, _id: &str, _bytes: u64) {}
    /// `bytes` more were uploaded.
    fn uploaded(&self, _bytes: u64) {}
    /// The push of `id` ended (uploaded or failed).
    fn upload_finished(&self, _id: &str) {}
    /// A wait on Nomad: what is still pending.
    fn waiting(&self, _elapsed: Duration, _pending: &[String]) {}
    /// The wait ended, however it ended: what was shown goes.
    fn clear(&self) {}
}

/// Reports to nobody: the controller, tests and the benchmark.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {}

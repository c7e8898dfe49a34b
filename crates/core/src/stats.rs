//! Request counters per service, method and status: what `reconcile` reports, what tests
//! assert on ("zero writes"), and what the daemon will export as metrics.

use crate::sync::MutexExt;
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

/// One counter key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RequestKey {
    pub service: &'static str,
    pub method: String,
    /// HTTP status, or 0 when no response arrived.
    pub status: u16,
}

/// Shared, cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct RequestStats {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    requests: BTreeMap<RequestKey, u64>,
    uploaded_bytes: u64,
    uploaded_parcels: u64,
}

impl RequestStats {
    pub fn record(&self, service: &'static str, method: &str, status: u16) {
        let mut inner = self.inner.locked();
        *inner
            .requests
            .entry(RequestKey {
                service,
                method: method.to_string(),
                status,
            })
            .or_default() += 1;
    }

    pub fn record_upload(&self, bytes: u64) {
        let mut inner = self.inner.locked();
        inner.uploaded_bytes += bytes;
        inner.uploaded_parcels += 1;
    }

    /// All requests to `service`.
    pub fn requests(&self, service: &str) -> u64 {
        self.sum(|k| k.service == service)
    }

    /// Requests to `service` other than GET (and other than logging in).
    pub fn writes(&self, service: &str) -> u64 {
        self.sum(|k| k.service == service && k.method != "GET" && k.method != "LOGIN")
    }

    pub fn uploaded_bytes(&self) -> u64 {
        self.inner.locked().uploaded_bytes
    }

    pub fn uploaded_parcels(&self) -> u64 {
        self.inner.locked().uploaded_parcels
    }

    /// A copy of every counter.
    pub fn snapshot(&self) -> BTreeMap<RequestKey, u64> {
        self.inner.locked().requests.clone()
    }

    fn sum(&self, f: impl Fn(&RequestKey) -> bool) -> u64 {
        let inner = self.inner.locked();
        inner
            .requests
            .iter()
            .filter(|(k, _)| f(k))
            .map(|(_, v)| v)
            .sum()
    }
}

//! Leader election through a Nomad Variable lock (Nomad ≥ 1.7, NOMAD-API.md §2.1).
//!
//! Acquire with `PUT /v1/var/<path>?lock-acquire`; renew every 0.7 × TTL; release on shutdown.
//! The lease counts from when the acquire or renew was *sent*, for TTL, on our clock; Nomad
//! keeps the lock for 2 × TTL from when it *received* it, then LockDelay more. So this
//! replica stops writing (its [`WriteGate`] closes) well before another one can take over,
//! even when it is cut off from Nomad and never hears that the lock is gone.

use hippo_gitops_core::sync::MutexExt;
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::json;
use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};

use hippo_gitops_core::{
    gate::WriteGate,
    nomad::{NomadClient, NomadError},
};

use super::Trigger;

/// Settings of the election.
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    /// Variable path of the lock.
    pub path: String,
    /// Lock TTL (Nomad accepts 10s–24h).
    pub ttl: Duration,
    /// How long Nomad keeps an expired lock before another replica may take it.
    pub lock_delay: Duration,
    /// Who we are, stored in the variable's items for people reading it.
    pub holder: String,
}

impl LeaderConfig {
    pub fn new(path: impl Into<String>) -> Self {
        LeaderConfig {
            path: path.into(),
            ttl: Duration::from_secs(15),
            lock_delay: Duration::from_secs(15),
            holder: default_holder(),
        }
    }
}

/// `hostname/pid`.
pub fn default_holder() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into());
    format!("{host}/{}", std::process::id())
}

/// Why a lock operation did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another replica holds the lock.
    #[error("held by another replica")]
    Held,
    /// Our lock is gone (renew refused: expired, released, or taken).
    #[error("lock lost: {0}")]
    Lost(String),
    #[error("Nomad answered without a lock id")]
    NoLockId,
    #[error("Nomad did not answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Nomad(#[from] NomadError),
}

/// Runs the election and opens or closes the gate.
pub struct Elector {
    client: Arc<hippo_gitops_core::observe::NomadObserver>,
    config: LeaderConfig,
    gate: WriteGate,
    lock_id: Mutex<Option<String>>,
}

impl Elector {
    pub fn new(
        client: Arc<hippo_gitops_core::observe::NomadObserver>,
        config: LeaderConfig,
        gate: WriteGate,
    ) -> Self {
        Elector {
            client,
            config,
            gate,
            lock_id: Mutex::new(None),
        }
    }

    fn nomad(&self) -> &NomadClient {
        &self.client.client
    }

    fn path(&self) -> String {
        format!("/var/{}", self.config.path.trim_start_matches('/'))
    }

    /// One request's time limit: well inside the lease, so a hung renew can't outlive it.
    fn request_timeout(&self) -> Duration {
        self.config.ttl / 3
    }

    async fn put(&self, op: &str, body: serde_json::Value) -> Result<(u16, Vec<u8>), LockError> {
        let limit = self.request_timeout();
        tokio::time::timeout(
            limit,
            self.nomad()
                .put_json(&self.path(), &[(op, String::new())], &body),
        )
        .await
        .map_err(|_| LockError::Timeout(limit))?
        .map_err(LockError::from)
    }

    /// `?lock-acquire`: the lock id on success.
    pub async fn acquire(&self) -> Result<String, LockError> {
        let body = json!({
            "Namespace": self.nomad().namespace(),
            "Path": self.config.path,
            "Items": { "holder": self.config.holder },
            "Lock": {
                "TTL": go_duration(self.config.ttl),
                "LockDelay": go_duration(self.config.lock_delay),
            },
        });
        let (status, bytes) = self.put("lock-acquire", body).await?;
        if status == 409 {
            return Err(LockError::Held);
        }
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        v.pointer("/Lock/ID")
            .and_then(|id| id.as_str())
            .filter(|id| !id.is_empty())
            .map(str::to_string)
            .ok_or(LockError::NoLockId)
    }

    fn id_body(&self, id: &str) -> serde_json::Value {
        json!({
            "Namespace": self.nomad().namespace(),
            "Path": self.config.path,
            "Lock": { "ID": id },
        })
    }

    /// `?lock-renew`: 409 (expired, not ours) and 404 (variable gone) mean the lock is lost.
    pub async fn renew(&self, id: &str) -> Result<(), LockError> {
        match self.put("lock-renew", self.id_body(id)).await {
            Ok((409, body)) => Err(LockError::Lost(
                String::from_utf8_lossy(&body).trim().into(),
            )),
            Ok(_) => Ok(()),
            Err(LockError::Nomad(NomadError::Status {
                status: 404, body, ..
            })) => Err(LockError::Lost(body)),
            Err(e) => Err(e),
        }
    }

    /// `?lock-release`.
    pub async fn release(&self, id: &str) -> Result<(), LockError> {
        match self.put("lock-release", self.id_body(id)).await? {
            (409, body) => Err(LockError::Lost(
                String::from_utf8_lossy(&body).trim().into(),
            )),
            _ => Ok(()),
        }
    }

    /// Acquires, renews and re-acquires until `release` turns true; then releases the lock if
    /// held. Sends [`Trigger::BecameLeader`] when it takes the lock.
    pub async fn run(
        self: Arc<Self>,
        mut release: watch::Receiver<bool>,
        events: mpsc::Sender<Trigger>,
    ) {
        let ttl = self.config.ttl;
        let mut said_follower = false;
        loop {
            if *release.borrow() {
                break;
            }
            let sent = Instant::now();
            match self.acquire().await {
                Ok(id) => {
                    *self.lock_id.locked() = Some(id.clone());
                    self.gate.grant((sent + ttl).into_std());
                    tracing::info!(lock = %self.config.path, holder = %self.config.holder, "acquired the leader lock: this replica writes");
                    let _ = events.try_send(Trigger::BecameLeader);
                    said_follower = false;
                    if !self.keep(&id, sent + ttl, &mut release).await {
                        // Released on shutdown.
                        return;
                    }
                    let _ = events.try_send(Trigger::LostLeadership);
                }
                Err(LockError::Held) => {
                    if !said_follower {
                        tracing::info!(lock = %self.config.path, "another replica holds the leader lock: following (observing, not writing)");
                        said_follower = true;
                    }
                }
                Err(e) => {
                    tracing::warn!(lock = %self.config.path, error = %e, "could not acquire the leader lock");
                }
            }
            // Nomad's own LockLeaser retries every 1.1 × TTL.
            tokio::select! {
                _ = tokio::time::sleep(ttl.mul_f64(1.1)) => {}
                _ = release.changed() => {}
            }
        }
    }

    /// Renews until the lock is lost (returns true) or `release` fires (releases it; false).
    async fn keep(
        &self,
        id: &str,
        mut lease_end: Instant,
        release: &mut watch::Receiver<bool>,
    ) -> bool {
        let ttl = self.config.ttl;
        let mut wait = ttl.mul_f64(0.7);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = release.changed() => {
                    self.gate.revoke();
                    match self.release(id).await {
                        Ok(()) => tracing::info!(lock = %self.config.path, "released the leader lock"),
                        Err(e) => tracing::warn!(lock = %self.config.path, error = %e, "releasing the leader lock failed; it expires by itself"),
                    }
                    *self.lock_id.locked() = None;
                    return false;
                }
            }
            let sent = Instant::now();
            match self.renew(id).await {
                Ok(()) => {
                    lease_end = sent + ttl;
                    self.gate.grant(lease_end.into_std());
                    wait = ttl.mul_f64(0.7);
                }
                Err(LockError::Lost(msg)) => {
                    self.gate.revoke();
                    tracing::warn!(lock = %self.config.path, reason = %msg, "lost the leader lock: stopped writing");
                    *self.lock_id.locked() = None;
                    return true;
                }
                Err(e) => {
                    if Instant::now() >= lease_end {
                        self.gate.revoke();
                        tracing::warn!(lock = %self.config.path, error = %e, "could not renew the leader lock before the lease ran out: stopped writing");
                        *self.lock_id.locked() = None;
                        return true;
                    }
                    tracing::warn!(lock = %self.config.path, error = %e, "renewing the leader lock failed; retrying");
                    wait = (ttl / 10).max(Duration::from_millis(50));
                }
            }
        }
    }
}

/// A Go duration string, which Nomad parses (`"15s"`, `"500ms"`).
fn go_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_written_the_way_go_reads_them() {
        assert_eq!(go_duration(Duration::from_secs(15)), "15s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1500ms");
    }
}

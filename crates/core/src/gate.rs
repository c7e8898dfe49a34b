//! The write gate: whether this process may start a write to Hippo, Bindle or Nomad now.
//!
//! `reconcile --once` writes freely ([`WriteGate::open`]). The daemon's gate opens only while
//! it holds the leader lease (until a deadline on the local clock, so a leader cut off from
//! Nomad stops writing when its lease would have run out, without waiting to be told) and
//! closes for good on shutdown. Apply checks it before every single write, so a leader that
//! loses its lock stops after the write in flight.

use crate::sync::MutexExt;
use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

/// Why a write was not started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteRefused {
    #[error("not the leader: another replica holds the lock and does the writing")]
    NotLeader,
    #[error("the leader lease ran out before it was renewed")]
    LeaseExpired,
    #[error("shutting down: no new writes are started")]
    ShuttingDown,
}

/// Cheap to clone; clones share the state.
#[derive(Debug, Clone, Default)]
pub struct WriteGate {
    /// `None`: always open.
    inner: Option<Arc<Mutex<GateState>>>,
}

#[derive(Debug, Default)]
struct GateState {
    /// Writes may start until this instant (the leader lease, by our clock).
    lease_until: Option<Instant>,
    /// Whether the lease was ever granted (to tell "follower" from "expired").
    granted: bool,
    /// A single instance: no lease needed.
    forever: bool,
    stopping: bool,
}

impl WriteGate {
    /// Always open (one-shot runs, a single instance).
    pub fn open() -> Self {
        WriteGate::default()
    }

    /// Closed until [`grant`](Self::grant)ed.
    pub fn leased() -> Self {
        WriteGate {
            inner: Some(Arc::default()),
        }
    }

    /// Open until [`stop`](Self::stop)ped: a daemon that runs as the only instance.
    pub fn single() -> Self {
        let gate = WriteGate::leased();
        if let Some(inner) = &gate.inner {
            inner.locked().forever = true;
        }
        gate
    }

    /// Whether a write may start now.
    pub fn check(&self) -> Result<(), WriteRefused> {
        self.check_at(Instant::now())
    }

    fn check_at(&self, now: Instant) -> Result<(), WriteRefused> {
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        let st = inner.locked();
        if st.stopping {
            return Err(WriteRefused::ShuttingDown);
        }
        if st.forever {
            return Ok(());
        }
        match st.lease_until {
            Some(until) if now < until => Ok(()),
            Some(_) => Err(WriteRefused::LeaseExpired),
            None if st.granted => Err(WriteRefused::LeaseExpired),
            None => Err(WriteRefused::NotLeader),
        }
    }

    /// Opens the gate until `until` (a lease acquired or renewed).
    pub fn grant(&self, until: Instant) {
        if let Some(inner) = &self.inner {
            let mut st = inner.locked();
            st.lease_until = Some(until);
            st.granted = true;
        }
    }

    /// Closes the gate: the lease is lost.
    pub fn revoke(&self) {
        if let Some(inner) = &self.inner {
            let mut st = inner.locked();
            st.lease_until = None;
            st.granted = false;
        }
    }

    /// Closes the gate for good; writes already started are not affected.
    pub fn stop(&self) {
        if let Some(inner) = &self.inner {
            inner.locked().stopping = true;
        }
    }

    /// Whether this process may write now, ignoring shutdown (for the leader gauge).
    pub fn is_leader(&self) -> bool {
        match &self.inner {
            None => true,
            Some(inner) => {
                let st = inner.locked();
                st.forever || st.lease_until.is_some_and(|u| Instant::now() < u)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn open_gate_always_allows() {
        let g = WriteGate::open();
        assert_eq!(g.check(), Ok(()));
        g.revoke();
        assert_eq!(g.check(), Ok(()));
        assert!(g.is_leader());
    }

    #[test]
    fn leased_gate_opens_only_within_the_lease() {
        let g = WriteGate::leased();
        assert_eq!(g.check(), Err(WriteRefused::NotLeader));
        let now = Instant::now();
        g.grant(now + Duration::from_secs(10));
        assert_eq!(g.check_at(now), Ok(()));
        assert_eq!(
            g.check_at(now + Duration::from_secs(11)),
            Err(WriteRefused::LeaseExpired)
        );
        // Clones share the state: the elector grants, apply checks.
        let seen_by_apply = g.clone();
        g.revoke();
        assert_eq!(seen_by_apply.check(), Err(WriteRefused::NotLeader));
        assert!(!seen_by_apply.is_leader());
    }

    #[test]
    fn stop_closes_even_a_valid_lease() {
        let g = WriteGate::leased();
        g.grant(Instant::now() + Duration::from_secs(60));
        g.stop();
        assert_eq!(g.check(), Err(WriteRefused::ShuttingDown));
        // A one-shot run's gate has nothing to stop.
        let open = WriteGate::open();
        open.stop();
        assert_eq!(open.check(), Ok(()));
        // A single daemon writes without a lease, until it stops.
        let single = WriteGate::single();
        assert_eq!(single.check(), Ok(()));
        assert!(single.is_leader());
        single.stop();
        assert_eq!(single.check(), Err(WriteRefused::ShuttingDown));
    }
}

//! Whether the reconcile loop is alive, for `/healthz`: it beats at every turn (at least once
//! per `--interval`, plus however long a cycle takes), and says when it has ended. A loop that
//! ended (a panic, a bug) or stopped turning fails the probe, so the orchestrator restarts the
//! process instead of keeping a controller that serves `/status` but reconciles nothing.

use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    time::{Duration, Instant},
};

/// How long past the interval a turn may take before the loop counts as stuck: a cycle pushing
/// large bindles over a slow link takes minutes, and every request in it has a timeout.
const SLOW_CYCLE: Duration = Duration::from_secs(300);

pub struct Liveness {
    started: Instant,
    /// Milliseconds after `started` of the last beat.
    last_beat_ms: AtomicU64,
    ended: AtomicBool,
    stale_after: Duration,
}

impl Liveness {
    /// For a loop that turns at least every `interval`.
    pub fn new(interval: Duration) -> Self {
        Liveness {
            started: Instant::now(),
            last_beat_ms: AtomicU64::new(0),
            ended: AtomicBool::new(false),
            stale_after: interval * 3 + SLOW_CYCLE,
        }
    }

    pub fn beat(&self) {
        self.beat_at(Instant::now());
    }

    fn beat_at(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.started).as_millis() as u64;
        self.last_beat_ms.store(ms, Relaxed);
    }

    /// The loop returned (or unwound).
    pub fn end(&self) {
        self.ended.store(true, Relaxed);
    }

    /// `Err` with the reason when the loop is not alive.
    pub fn check(&self) -> Result<(), String> {
        self.check_at(Instant::now())
    }

    fn check_at(&self, now: Instant) -> Result<(), String> {
        if self.ended.load(Relaxed) {
            return Err("the reconcile loop has stopped".into());
        }
        let last = self.started + Duration::from_millis(self.last_beat_ms.load(Relaxed));
        let quiet = now.saturating_duration_since(last);
        if quiet > self.stale_after {
            return Err(format!(
                "the reconcile loop has made no progress for {}s (limit {}s)",
                quiet.as_secs(),
                self.stale_after.as_secs()
            ));
        }
        Ok(())
    }
}

/// Marks the loop ended when dropped: on return and on a panic's unwinding alike.
pub struct EndOnDrop<'a>(pub &'a Liveness);

impl Drop for EndOnDrop<'_> {
    fn drop(&mut self) {
        self.0.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alive_while_beating_stale_after_the_limit_and_dead_once_ended() {
        let l = Liveness::new(Duration::from_secs(60));
        let t0 = l.started;
        l.beat_at(t0 + Duration::from_secs(10));
        assert!(l.check_at(t0 + Duration::from_secs(400)).is_ok());
        let err = l
            .check_at(t0 + Duration::from_secs(10 + 480 + 1))
            .unwrap_err();
        assert!(err.contains("no progress for 481s"), "{err}");
        l.beat_at(t0 + Duration::from_secs(490));
        assert!(l.check_at(t0 + Duration::from_secs(491)).is_ok());
        {
            let _guard = EndOnDrop(&l);
        }
        assert_eq!(
            l.check_at(t0 + Duration::from_secs(491)).unwrap_err(),
            "the reconcile loop has stopped"
        );
    }

    #[test]
    fn a_panicking_loop_is_seen_as_ended() {
        let l = std::sync::Arc::new(Liveness::new(Duration::from_secs(60)));
        let l2 = l.clone();
        let _ = std::thread::spawn(move || {
            let _guard = EndOnDrop(&l2);
            panic!("the loop died");
        })
        .join();
        assert!(l.check().is_err());
    }
}

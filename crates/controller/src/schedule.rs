//! When each app is reconciled next: per-app exponential backoff that resets on success, and
//! stalls that last until the app's desired state changes. Pure: time is passed in.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

/// Exponential backoff for a failing app: `min`, `2·min`, `4·min`, … up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    pub min: Duration,
    pub max: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            min: Duration::from_secs(2),
            max: Duration::from_secs(300),
        }
    }
}

impl BackoffPolicy {
    /// The wait after the `failures`-th failure in a row (1-based).
    pub fn delay(&self, failures: u32) -> Duration {
        let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(30));
        self.min.saturating_mul(factor).min(self.max)
    }
}

/// What a reconcile of one app came to, as far as scheduling is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Converged: the backoff resets.
    Converged,
    /// Converged in Hippo, still rolling out on Nomad: look again soon, no backoff.
    Progressing,
    /// Failed in a way worth retrying: back off.
    Retry,
    /// Failed in a way only a change to the deploy file can fix: stall.
    Terminal,
    /// Not written (not the leader, shutting down): no backoff, due with the next trigger.
    Skipped,
}

#[derive(Debug, Clone)]
struct Entry {
    fingerprint: u64,
    failures: u32,
    /// Not before this instant (backoff) or at it (progress check).
    next: Option<Instant>,
    due: bool,
    stalled: bool,
}

/// The per-app schedule.
#[derive(Debug, Clone, Default)]
pub struct Schedule {
    apps: BTreeMap<String, Entry>,
    policy: BackoffPolicy,
    /// How soon to look again at an app that is still rolling out.
    progress_interval: Duration,
}

impl Schedule {
    pub fn new(policy: BackoffPolicy, progress_interval: Duration) -> Self {
        Schedule {
            apps: BTreeMap::new(),
            policy,
            progress_interval,
        }
    }

    /// Takes the apps of a (re)loaded desired state with their fingerprints. New apps and apps
    /// whose desired state changed are due at once, with their backoff and stall cleared;
    /// apps no longer desired are forgotten. Returns the names that changed.
    pub fn update_desired(&mut self, apps: &[(String, u64)]) -> Vec<String> {
        let mut changed = Vec::new();
        // Updated in place (a reload that read the files changed few apps, often none): the
        // entries of unchanged apps are neither copied nor moved.
        let wanted: BTreeMap<&str, u64> = apps.iter().map(|(n, fp)| (n.as_str(), *fp)).collect();
        self.apps
            .retain(|name, _| wanted.contains_key(name.as_str()));
        for (name, fp) in apps {
            let fresh = Entry {
                fingerprint: *fp,
                failures: 0,
                next: None,
                due: true,
                stalled: false,
            };
            match self.apps.get_mut(name) {
                Some(e) if e.fingerprint == *fp => {}
                Some(e) => {
                    changed.push(name.clone());
                    *e = fresh;
                }
                None => {
                    changed.push(name.clone());
                    self.apps.insert(name.clone(), fresh);
                }
            }
        }
        changed
    }

    /// An interval tick or a trigger: every app that is neither stalled nor backing off is due.
    pub fn mark_all_due(&mut self, now: Instant) {
        for e in self.apps.values_mut() {
            let backing_off = e.failures > 0 && e.next.is_some_and(|t| t > now);
            if !e.stalled && !backing_off {
                e.due = true;
            }
        }
    }

    /// Something the app depends on changed (its Nomad allocations): it is due now, backoff or
    /// not, unless it is stalled.
    pub fn mark_due(&mut self, app: &str) {
        if let Some(e) = self.apps.get_mut(app).filter(|e| !e.stalled) {
            e.due = true;
        }
    }

    /// Someone asked to reconcile the app now (the API): due at once, even stalled (what
    /// stalled it may have been fixed on the servers).
    pub fn retry_now(&mut self, app: &str) {
        if let Some(e) = self.apps.get_mut(app) {
            e.stalled = false;
            e.due = true;
        }
    }

    /// The apps to reconcile now, removed from the queue.
    pub fn take_due(&mut self, now: Instant) -> Vec<String> {
        let mut out = Vec::new();
        for (name, e) in self.apps.iter_mut() {
            if e.stalled {
                continue;
            }
            if e.due || e.next.is_some_and(|t| t <= now) {
                e.due = false;
                e.next = None;
                out.push(name.clone());
            }
        }
        out
    }

    /// Records a reconcile's outcome; answers when the app is due again, if it is scheduled.
    pub fn record(&mut self, app: &str, outcome: Outcome, now: Instant) -> Option<Duration> {
        let e = self.apps.get_mut(app)?;
        match outcome {
            Outcome::Converged => {
                e.failures = 0;
                e.next = None;
                None
            }
            Outcome::Progressing => {
                e.failures = 0;
                e.next = Some(now + self.progress_interval);
                Some(self.progress_interval)
            }
            Outcome::Retry => {
                e.failures = e.failures.saturating_add(1);
                let delay = self.policy.delay(e.failures);
                e.next = Some(now + delay);
                Some(delay)
            }
            Outcome::Terminal => {
                e.stalled = true;
                e.next = None;
                None
            }
            Outcome::Skipped => None,
        }
    }

    /// Look at the app again by `at` at the latest (a promotion's window ends, a check or a
    /// discovery is due), unless it is stalled or already due sooner.
    pub fn requeue_by(&mut self, app: &str, at: Instant) {
        if let Some(e) = self.apps.get_mut(app).filter(|e| !e.stalled) {
            e.next = Some(e.next.map_or(at, |n| n.min(at)));
        }
    }

    /// The earliest instant an app is due by itself (backoff or progress check).
    pub fn next_wakeup(&self) -> Option<Instant> {
        self.apps
            .values()
            .filter(|e| !e.stalled)
            .filter_map(|e| e.next)
            .min()
    }

    /// Apps waiting for a reconcile: due now, or scheduled (backoff, progress check).
    pub fn queue_depth(&self) -> usize {
        self.apps
            .values()
            .filter(|e| !e.stalled && (e.due || e.next.is_some()))
            .count()
    }

    /// Failures in a row and the next attempt, for status.
    pub fn state_of(&self, app: &str) -> Option<(u32, Option<Instant>, bool)> {
        self.apps.get(app).map(|e| (e.failures, e.next, e.stalled))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn schedule() -> Schedule {
        Schedule::new(
            BackoffPolicy {
                min: 2 * S,
                max: 60 * S,
            },
            5 * S,
        )
    }

    fn apps(list: &[(&str, u64)]) -> Vec<(String, u64)> {
        list.iter().map(|(n, f)| (n.to_string(), *f)).collect()
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = BackoffPolicy {
            min: 2 * S,
            max: 60 * S,
        };
        let delays: Vec<u64> = (1..=7).map(|n| p.delay(n).as_secs()).collect();
        assert_eq!(delays, vec![2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(p.delay(u32::MAX), 60 * S);
    }

    #[test]
    fn new_apps_are_due_once() {
        let mut s = schedule();
        let now = Instant::now();
        assert_eq!(s.update_desired(&apps(&[("a", 1), ("b", 2)])).len(), 2);
        assert_eq!(s.take_due(now), vec!["a", "b"]);
        assert!(s.take_due(now).is_empty());
        // Same fingerprints: nothing changed, nothing due.
        assert!(s.update_desired(&apps(&[("a", 1), ("b", 2)])).is_empty());
        assert!(s.take_due(now).is_empty());
    }

    #[test]
    fn a_failing_app_backs_off_while_others_stay_due() {
        let mut s = schedule();
        let t0 = Instant::now();
        s.update_desired(&apps(&[("bad", 1), ("good", 2)]));
        s.take_due(t0);
        assert_eq!(s.record("bad", Outcome::Retry, t0), Some(2 * S));
        assert_eq!(s.record("good", Outcome::Converged, t0), None);
        // An interval tick a second later: only the healthy app is due.
        s.mark_all_due(t0 + S);
        assert_eq!(s.take_due(t0 + S), vec!["good"]);
        assert_eq!(s.next_wakeup(), Some(t0 + 2 * S));
        assert_eq!(s.take_due(t0 + 2 * S), vec!["bad"]);
        assert_eq!(s.record("bad", Outcome::Retry, t0 + 2 * S), Some(4 * S));
        assert_eq!(s.record("bad", Outcome::Retry, t0 + 6 * S), Some(8 * S));
        // Success resets the backoff.
        s.record("bad", Outcome::Converged, t0 + 14 * S);
        assert_eq!(s.record("bad", Outcome::Retry, t0 + 20 * S), Some(2 * S));
    }

    #[test]
    fn a_stalled_app_waits_for_its_desired_state_to_change() {
        let mut s = schedule();
        let t0 = Instant::now();
        s.update_desired(&apps(&[("bad", 1), ("good", 2)]));
        s.take_due(t0);
        s.record("bad", Outcome::Terminal, t0);
        s.mark_all_due(t0 + 100 * S);
        assert_eq!(s.take_due(t0 + 100 * S), vec!["good"]);
        assert_eq!(s.next_wakeup(), None);
        assert_eq!(s.queue_depth(), 0);
        // Another app's edit doesn't wake it; its own does.
        s.update_desired(&apps(&[("bad", 1), ("good", 3)]));
        assert_eq!(s.take_due(t0 + 101 * S), vec!["good"]);
        assert_eq!(
            s.update_desired(&apps(&[("bad", 9), ("good", 3)])),
            vec!["bad"]
        );
        assert_eq!(s.take_due(t0 + 102 * S), vec!["bad"]);
    }

    #[test]
    fn a_changed_desired_state_clears_the_backoff() {
        let mut s = schedule();
        let t0 = Instant::now();
        s.update_desired(&apps(&[("a", 1)]));
        s.take_due(t0);
        s.record("a", Outcome::Retry, t0);
        s.record("a", Outcome::Retry, t0);
        assert!(s.take_due(t0 + S).is_empty());
        s.update_desired(&apps(&[("a", 2)]));
        assert_eq!(s.take_due(t0 + S), vec!["a"]);
        assert_eq!(s.state_of("a"), Some((0, None, false)));
    }

    #[test]
    fn progressing_apps_are_looked_at_again_without_backoff() {
        let mut s = schedule();
        let t0 = Instant::now();
        s.update_desired(&apps(&[("a", 1)]));
        s.take_due(t0);
        assert_eq!(s.record("a", Outcome::Progressing, t0), Some(5 * S));
        assert_eq!(s.queue_depth(), 1);
        assert_eq!(s.take_due(t0 + 5 * S), vec!["a"]);
        // A change on Nomad makes a backing-off app due, never a stalled one.
        s.record("a", Outcome::Retry, t0 + 5 * S);
        assert!(s.take_due(t0 + 5 * S).is_empty());
        s.mark_due("a");
        s.mark_due("unknown");
        assert_eq!(s.take_due(t0 + 5 * S), vec!["a"]);
        s.record("a", Outcome::Terminal, t0 + 5 * S);
        s.mark_due("a");
        assert!(s.take_due(t0 + 5 * S).is_empty());
        s.update_desired(&apps(&[("a", 2)]));
        s.take_due(t0);
        // Skipped (a follower, or shutting down) changes nothing.
        assert_eq!(s.record("a", Outcome::Skipped, t0), None);
        assert_eq!(s.state_of("a"), Some((0, None, false)));
        // Removed apps are forgotten.
        s.update_desired(&[]);
        assert_eq!(s.state_of("a"), None);
    }
}

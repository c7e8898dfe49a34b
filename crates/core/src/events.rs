//! Events: the history of what was done to each app, derived from each run's results.
//!
//! An event is `{time, app, channel?, type, reason, message, revisionBefore?, revisionAfter?,
//! commit?}`. Events are made on *transitions*, never once per cycle: a change applied, a
//! drift healed, an app that becomes Ready, fails or stalls (once until its condition or
//! reason changes), a commit every app converged at; issue 16's discovery, promotion and
//! rollback use the same type. [`Tracker`] remembers each app's last condition and channel
//! revisions to tell a transition from a repeat; a one-shot run uses a fresh one.
//!
//! Pure: no I/O. Env values never appear: change descriptions name env keys only (the diff's
//! invariant), and messages (errors quoted from servers) have the app's env values redacted.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::status::{Condition, ConditionType};

/// What kind of thing happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EventType {
    /// A change was made (a bindle pushed, a revision registered, a channel created or
    /// updated); or a channel moved to another revision as a result.
    Applied,
    /// A change made although the desired state had not changed since the app was Ready:
    /// something else changed Hippo or Nomad, and the controller put it back.
    DriftHealed,
    /// The app converged (after changes, or after a failure).
    Ready,
    /// The app failed and is retried with backoff (a transient error, a failed allocation).
    Failed,
    /// The app failed in a way that is not retried until its deploy file changes.
    Stalled,
    /// Every app converged at a commit (controller-wide: `app` is empty).
    CommitApplied,
    /// A new revision was found on the Bindle server and registered (issue 16).
    Discovered,
    /// A channel was pinned to the revision another channel proved healthy (issue 16).
    Promoted,
    /// A channel was pinned back to its last healthy revision (issue 16).
    RolledBack,
}

impl EventType {
    pub const ALL: [EventType; 9] = [
        EventType::Applied,
        EventType::DriftHealed,
        EventType::Ready,
        EventType::Failed,
        EventType::Stalled,
        EventType::CommitApplied,
        EventType::Discovered,
        EventType::Promoted,
        EventType::RolledBack,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EventType::Applied => "Applied",
            EventType::DriftHealed => "DriftHealed",
            EventType::Ready => "Ready",
            EventType::Failed => "Failed",
            EventType::Stalled => "Stalled",
            EventType::CommitApplied => "CommitApplied",
            EventType::Discovered => "Discovered",
            EventType::Promoted => "Promoted",
            EventType::RolledBack => "RolledBack",
        }
    }

    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.name() == s)
    }

    /// Whether the event reports a failure (for notification colours and commit states).
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            EventType::Failed | EventType::Stalled | EventType::RolledBack
        )
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub time: DateTime<Utc>,
    /// The app; empty for a controller-wide event ([`EventType::CommitApplied`]).
    pub app: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(rename = "type")]
    pub kind: EventType,
    /// A short machine-readable reason (`RevisionRegistered`, `HippoUnavailable`, ...).
    pub reason: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_before: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_after: Option<String>,
    /// The Git commit the desired state was read at (Git source).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

impl Event {
    pub fn new(
        time: DateTime<Utc>,
        app: &str,
        kind: EventType,
        reason: &str,
        message: impl Into<String>,
    ) -> Event {
        Event {
            time,
            app: app.to_string(),
            channel: None,
            kind,
            reason: reason.to_string(),
            message: message.into(),
            revision_before: None,
            revision_after: None,
            commit: None,
        }
    }

    pub fn on_channel(mut self, channel: &str) -> Event {
        self.channel = Some(channel.to_string());
        self
    }

    pub fn with_revisions(mut self, before: Option<String>, after: Option<String>) -> Event {
        self.revision_before = before;
        self.revision_after = after;
        self
    }

    pub fn at_commit(mut self, commit: Option<&str>) -> Event {
        self.commit = commit.map(str::to_string);
        self
    }

    /// Every app converged at `commit` (controller-wide).
    pub fn commit_applied(time: DateTime<Utc>, commit: &str) -> Event {
        Event::new(
            time,
            "",
            EventType::CommitApplied,
            "CommitApplied",
            format!("every app converged at {commit}"),
        )
        .at_commit(Some(commit))
    }
}

/// A change applied to an app in a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedChange {
    /// The channel it changed, if any.
    pub channel: Option<String>,
    /// `BindlePushed`, `RevisionRegistered`, `ChannelUpdated`, ...
    pub reason: String,
    /// The change's description (keys only, never env values).
    pub description: String,
}

/// One app's result in a run, as events are derived from it.
#[derive(Debug, Clone)]
pub struct AppCycle<'a> {
    pub app: &'a str,
    pub applied: Vec<AppliedChange>,
    /// The app's condition after the run.
    pub condition: &'a Condition,
    /// The run failed for this app (an error other than "not written": a follower's skip).
    pub failed: bool,
    /// Each channel's active revision in Hippo after the run.
    pub channels: Vec<(String, Option<String>)>,
    /// The app's desired state changed since it was last reconciled (a new deploy file or
    /// commit): a change made now is `Applied`, not `DriftHealed`.
    pub desired_changed: bool,
    pub commit: Option<&'a str>,
    /// The app's env values, redacted from messages.
    pub env_values: Vec<&'a str>,
}

/// What is remembered of an app between runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct AppMemory {
    condition: Option<(ConditionType, String)>,
    revisions: ChannelRevisions,
}

/// Channel → its revision, sorted by channel: a few entries per app, kept for every app, where
/// a map would cost a whole tree node each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ChannelRevisions(Vec<(String, Option<String>)>);

impl ChannelRevisions {
    fn get(&self, channel: &str) -> Option<&Option<String>> {
        self.find(channel).ok().map(|i| &self.0[i].1)
    }

    fn insert(&mut self, channel: String, revision: Option<String>) {
        match self.find(&channel) {
            Ok(i) => self.0[i].1 = revision,
            Err(i) => self.0.insert(i, (channel, revision)),
        }
    }

    fn find(&self, channel: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(c, _)| c.as_str().cmp(channel))
    }
}

impl FromIterator<(String, Option<String>)> for ChannelRevisions {
    fn from_iter<I: IntoIterator<Item = (String, Option<String>)>>(iter: I) -> Self {
        let mut out = ChannelRevisions::default();
        for (channel, revision) in iter {
            out.insert(channel, revision);
        }
        out.0.shrink_to_fit();
        out
    }
}

/// Turns each run's results into events, remembering enough to report transitions only.
#[derive(Debug, Default)]
pub struct Tracker {
    apps: BTreeMap<String, AppMemory>,
}

impl Tracker {
    /// A tracker that remembers what `events` (oldest first, e.g. read back after a restart)
    /// say of each app's last condition and channel revisions, so that a restart does not
    /// report again what was reported before it.
    pub fn seeded(events: &[Event]) -> Tracker {
        let mut t = Tracker::default();
        for e in events {
            let m = t.apps.entry(e.app.clone()).or_default();
            let kind = match e.kind {
                EventType::Ready => Some(ConditionType::Ready),
                EventType::Failed => Some(ConditionType::Reconciling),
                EventType::Stalled => Some(ConditionType::Stalled),
                _ => None,
            };
            if let Some(kind) = kind {
                m.condition = Some((kind, e.reason.clone()));
            }
            if let (Some(ch), Some(_)) = (&e.channel, &e.revision_after) {
                m.revisions.insert(ch.clone(), e.revision_after.clone());
            }
        }
        t.apps.remove("");
        t
    }

    /// Forgets apps no longer defined.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.apps.retain(|app, _| keep(app));
    }

    /// The events of one app's run, and remembers its new state.
    pub fn observe(&mut self, run: &AppCycle, now: DateTime<Utc>) -> Vec<Event> {
        let known = self.apps.get(run.app);
        let before_ready = known
            .and_then(|m| m.condition.as_ref())
            .is_some_and(|(k, _)| *k == ConditionType::Ready);
        let redact = |s: &str| redact(s, &run.env_values);
        let event = |kind, reason: &str, message: &str| {
            Event::new(now, run.app, kind, reason, redact(message)).at_commit(run.commit)
        };
        // Channels whose revision moved since the last run (unknown before: not a move).
        let mut moved: BTreeMap<&str, (Option<String>, Option<String>)> = BTreeMap::new();
        for (ch, rev) in &run.channels {
            match known.and_then(|m| m.revisions.get(ch)) {
                Some(before) if before != rev => {
                    moved.insert(ch, (before.clone(), rev.clone()));
                }
                Some(_) => {}
                None => {
                    if run.applied.iter().any(|c| c.channel.as_deref() == Some(ch)) {
                        moved.insert(ch, (None, rev.clone()));
                    }
                }
            }
        }
        let mut events = Vec::new();
        let applied_kind = if !run.desired_changed && before_ready {
            EventType::DriftHealed
        } else {
            EventType::Applied
        };
        for change in &run.applied {
            // Discovery, promotion and rollback are their own kinds, drift or not.
            let kind = match change.reason.as_str() {
                "RevisionDiscovered" => EventType::Discovered,
                "ChannelPromoted" => EventType::Promoted,
                "ChannelRolledBack" => EventType::RolledBack,
                _ => applied_kind,
            };
            let mut e = event(kind, &change.reason, &change.description);
            if let Some(ch) = &change.channel {
                e = e.on_channel(ch);
                if let Some((before, after)) = moved.remove(ch.as_str()) {
                    e = e.with_revisions(before, after);
                }
            }
            events.push(e);
        }
        // Moves no change of ours names (Hippo re-evaluating a range after a registration).
        if !run.applied.is_empty() {
            for (ch, (before, after)) in moved {
                if before.is_none() {
                    continue;
                }
                let show = |r: &Option<String>| r.clone().unwrap_or_else(|| "none".into());
                let message = format!("{ch}: {} → {}", show(&before), show(&after));
                events.push(
                    event(applied_kind, "RevisionChanged", &message)
                        .on_channel(ch)
                        .with_revisions(before, after),
                );
            }
        }
        let c = run.condition;
        let now_state = (c.kind, c.reason.clone());
        let same = known.and_then(|m| m.condition.as_ref()) == Some(&now_state);
        let transition = match c.kind {
            // Ready after a change of the desired state (it converged) or after anything but
            // Ready (a healed drift kept it Ready); on first sight, only if this run made it so.
            ConditionType::Ready => ((!run.applied.is_empty()
                && applied_kind == EventType::Applied)
                || (!before_ready && known.is_some_and(|m| m.condition.is_some())))
            .then_some(EventType::Ready),
            ConditionType::Stalled if !same => Some(EventType::Stalled),
            ConditionType::Reconciling if run.failed && !same => Some(EventType::Failed),
            _ => None,
        };
        if let Some(kind) = transition {
            events.push(event(kind, &c.reason, &c.message));
        }
        let memory = match self.apps.get_mut(run.app) {
            Some(memory) => memory,
            None => self.apps.entry(run.app.to_string()).or_default(),
        };
        // A rollout in progress is not remembered as a condition: Ready after it is news only
        // if the app was not Ready before it. What did not change is not replaced: it keeps
        // its allocations from one cycle to the next.
        let condition = if c.kind != ConditionType::Reconciling || run.failed {
            Some(now_state)
        } else if !run.applied.is_empty() {
            Some((ConditionType::Reconciling, c.reason.clone()))
        } else {
            None
        };
        if let Some(condition) = condition.filter(|c| memory.condition.as_ref() != Some(c)) {
            memory.condition = Some(condition);
        }
        let revisions: ChannelRevisions = run.channels.iter().cloned().collect();
        if memory.revisions != revisions {
            memory.revisions = revisions;
        }
        events
    }
}

/// The events of a run: each app's result, with the condition and channels the core reported
/// for it after the run ([`crate::apply::AppResult::status`]), through `tracker`.
/// `desired_changed(app)`: whether the app's desired state changed since it was last
/// reconciled (always true for a one-shot run).
pub fn run_events(
    desired: &crate::spec::DesiredState,
    report: &crate::apply::RunReport,
    commit: Option<&str>,
    desired_changed: &dyn Fn(&str) -> bool,
    tracker: &mut Tracker,
    now: DateTime<Utc>,
) -> Vec<Event> {
    use crate::apply::ApplyError;
    let mut events = Vec::new();
    // By name: a scan of the desired apps for each result would cost apps² per cycle.
    let specs: BTreeMap<&str, &crate::spec::AppSpec> = desired
        .apps
        .iter()
        .map(|a| (a.name.as_str(), &**a))
        .collect();
    for result in &report.apps {
        // A follower's skip says nothing about the app.
        if matches!(result.error, Some(ApplyError::NotWritten(_))) {
            continue;
        }
        let spec = specs.get(result.app.as_str()).copied();
        let env_values: Vec<&str> = spec
            .iter()
            .flat_map(|a| a.channels.iter())
            .flat_map(|c| c.env.values().map(String::as_str))
            .collect();
        let run = AppCycle {
            app: &result.app,
            applied: result
                .applied
                .iter()
                .map(|a| AppliedChange {
                    channel: a.channel().map(str::to_string),
                    reason: a.made.name().to_string(),
                    description: a.description.clone(),
                })
                .collect(),
            // The status's condition is the run's when the run failed.
            condition: &result.status.condition,
            failed: result.error.is_some(),
            channels: result
                .status
                .channels
                .iter()
                .map(|c| (c.channel.clone(), c.hippo_revision.clone()))
                .collect(),
            desired_changed: desired_changed(&result.app),
            commit,
            env_values,
        };
        events.extend(tracker.observe(&run, now));
    }
    events
}

/// `since` as the API and `history --since` take it: an RFC 3339 time, or a duration back
/// from `now` (`90s`, `30m`, `1h`, `2d`).
pub fn parse_since(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: i64 = n.parse().map_err(|_| {
        format!(
            "invalid since {s:?}: use a time (2026-12-04T14:00:00Z) or a duration (30m, 1h, 2d)"
        )
    })?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => {
            return Err(format!(
                "invalid since {s:?}: a duration's unit is s, m, h or d"
            ))
        }
    };
    n.checked_mul(seconds)
        .and_then(chrono::Duration::try_seconds)
        .and_then(|d| now.checked_sub_signed(d))
        .ok_or_else(|| format!("invalid since {s:?}: too far back"))
}

/// `message` with every occurrence of a value of `secrets` (3 characters or more, standing
/// as a word of its own) replaced by `***`.
pub fn redact(message: &str, secrets: &[&str]) -> String {
    let mut out = message.to_string();
    for s in secrets.iter().filter(|s| s.chars().count() >= 3) {
        let mut result = String::with_capacity(out.len());
        let mut rest = out.as_str();
        while let Some(i) = rest.find(s) {
            let before = rest[..i].chars().next_back();
            let after = rest[i + s.len()..].chars().next();
            let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
            result.push_str(&rest[..i]);
            if word(before) || word(after) {
                result.push_str(s);
            } else {
                result.push_str("***");
            }
            rest = &rest[i + s.len()..];
        }
        result.push_str(rest);
        out = result;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(kind: ConditionType, reason: &str) -> Condition {
        Condition {
            kind,
            status: true,
            reason: reason.into(),
            message: format!("{reason} message"),
        }
    }

    fn run<'a>(condition: &'a Condition, applied: &[(&str, &str)], rev: &str) -> AppCycle<'a> {
        AppCycle {
            app: "weather",
            applied: applied
                .iter()
                .map(|(ch, d)| AppliedChange {
                    channel: (!ch.is_empty()).then(|| ch.to_string()),
                    reason: "ChannelUpdated".into(),
                    description: d.to_string(),
                })
                .collect(),
            condition,
            failed: false,
            channels: vec![("production".into(), Some(rev.into()))],
            desired_changed: true,
            commit: Some("abc123"),
            env_values: vec!["s3cr3t-value"],
        }
    }

    fn kinds(events: &[Event]) -> Vec<EventType> {
        events.iter().map(|e| e.kind).collect()
    }

    #[test]
    fn one_event_per_transition_not_per_cycle() {
        let mut t = Tracker::default();
        let now = Utc::now();
        let ready = cond(ConditionType::Ready, "UpToDate");
        // First sight, nothing applied: nothing to say.
        assert!(t.observe(&run(&ready, &[], "1.0.0"), now).is_empty());
        // A change: Applied (with the move) and Ready.
        let converged = cond(ConditionType::Ready, "Converged");
        let e = t.observe(
            &run(
                &converged,
                &[("production", "update channel production")],
                "1.1.0",
            ),
            now,
        );
        assert_eq!(kinds(&e), [EventType::Applied, EventType::Ready]);
        assert_eq!(e[0].revision_before.as_deref(), Some("1.0.0"));
        assert_eq!(e[0].revision_after.as_deref(), Some("1.1.0"));
        assert_eq!(e[0].commit.as_deref(), Some("abc123"));
        // Ten idle cycles: nothing.
        for _ in 0..10 {
            assert!(t.observe(&run(&ready, &[], "1.1.0"), now).is_empty());
        }
        // A failure: one Failed, however many cycles it lasts.
        let failing = cond(ConditionType::Reconciling, "HippoUnavailable");
        let mut f = run(&failing, &[], "1.1.0");
        f.failed = true;
        assert_eq!(kinds(&t.observe(&f, now)), [EventType::Failed]);
        for _ in 0..10 {
            assert!(t.observe(&f, now).is_empty());
        }
        // Back to Ready: one Ready.
        assert_eq!(
            kinds(&t.observe(&run(&ready, &[], "1.1.0"), now)),
            [EventType::Ready]
        );
        // Stalled once.
        let stalled = cond(ConditionType::Stalled, "BindleConflict");
        let mut s = run(&stalled, &[], "1.1.0");
        s.failed = true;
        assert_eq!(kinds(&t.observe(&s, now)), [EventType::Stalled]);
        assert!(t.observe(&s, now).is_empty());
    }

    #[test]
    fn a_change_with_a_new_desired_state_is_applied_and_one_without_heals_drift() {
        let now = Utc::now();
        let ready = cond(ConditionType::Ready, "Converged");
        let mut t = Tracker::default();
        t.observe(&run(&ready, &[], "1.0.0"), now);
        let mut r = run(
            &ready,
            &[("production", "update channel production: revision")],
            "1.0.0",
        );
        r.desired_changed = false;
        let e = t.observe(&r, now);
        assert_eq!(kinds(&e), [EventType::DriftHealed]);
        r.desired_changed = true;
        let e = t.observe(&r, now);
        assert_eq!(kinds(&e), [EventType::Applied, EventType::Ready]);
        assert_eq!(e[0].channel.as_deref(), Some("production"));
        // No move: no revisions on the event.
        assert_eq!(e[0].revision_before, None);
    }

    #[test]
    fn a_rollout_in_progress_then_ready_reports_applied_then_ready() {
        let now = Utc::now();
        let mut t = Tracker::default();
        let ready = cond(ConditionType::Ready, "UpToDate");
        t.observe(&run(&ready, &[], "1.0.0"), now);
        let progressing = cond(ConditionType::Reconciling, "Progressing");
        let e = t.observe(
            &run(
                &progressing,
                &[("production", "update channel production")],
                "1.1.0",
            ),
            now,
        );
        assert_eq!(kinds(&e), [EventType::Applied]);
        assert!(t.observe(&run(&progressing, &[], "1.1.0"), now).is_empty());
        assert_eq!(
            kinds(&t.observe(&run(&ready, &[], "1.1.0"), now)),
            [EventType::Ready]
        );
    }

    #[test]
    fn a_channel_moved_by_a_registration_is_an_event_of_its_own() {
        let now = Utc::now();
        let mut t = Tracker::default();
        let ready = cond(ConditionType::Ready, "UpToDate");
        t.observe(&run(&ready, &[], "1.0.0"), now);
        let mut r = run(&ready, &[("", "register revision 1.1.0")], "1.1.0");
        r.applied[0].reason = "RevisionRegistered".into();
        let e = t.observe(&r, now);
        assert_eq!(e.len(), 3, "{e:?}");
        assert_eq!(e[0].reason, "RevisionRegistered");
        assert_eq!(e[0].channel, None);
        assert_eq!(e[1].reason, "RevisionChanged");
        assert_eq!(e[1].message, "production: 1.0.0 → 1.1.0");
        assert_eq!(e[2].kind, EventType::Ready);
    }

    #[test]
    fn discoveries_promotions_and_rollbacks_are_events_of_their_own_kind() {
        let now = Utc::now();
        let ready = cond(ConditionType::Ready, "UpToDate");
        let made = [
            ("", "RevisionDiscovered", EventType::Discovered),
            ("production", "ChannelPromoted", EventType::Promoted),
            ("production", "ChannelRolledBack", EventType::RolledBack),
            ("production", "ChannelUpdated", EventType::DriftHealed),
        ];
        for (channel, reason, kind) in made {
            // Made by the controller with no change to the deploy files, on a Ready app: not
            // drift healed (but a plain update is).
            let mut t = Tracker::default();
            t.observe(&run(&ready, &[], "1.0.0"), now);
            let mut r = run(&ready, &[(channel, "what was done")], "1.1.0");
            r.applied[0].reason = reason.into();
            r.desired_changed = false;
            let e = t.observe(&r, now);
            assert_eq!(e[0].kind, kind, "{reason}: {e:?}");
            assert_eq!(e[0].reason, reason);
            assert_eq!(e[0].message, "what was done");
            if channel.is_empty() {
                // A discovered revision moved the range channel: that move is its own event.
                assert_eq!(e[1].reason, "RevisionChanged", "{e:?}");
            } else {
                assert_eq!(e[0].channel.as_deref(), Some("production"));
                assert_eq!(e[0].revision_before.as_deref(), Some("1.0.0"));
                assert_eq!(e[0].revision_after.as_deref(), Some("1.1.0"));
                assert_eq!(e.len(), 1, "{e:?}");
            }
            // With a new desired state too.
            let mut t = Tracker::default();
            t.observe(&run(&ready, &[], "1.0.0"), now);
            r.desired_changed = true;
            let e = t.observe(&r, now);
            let expected = if kind == EventType::DriftHealed {
                EventType::Applied
            } else {
                kind
            };
            assert_eq!(e[0].kind, expected, "{reason}: {e:?}");
        }
    }

    #[test]
    fn a_seeded_tracker_does_not_repeat_what_was_reported_before_a_restart() {
        let now = Utc::now();
        let failing = cond(ConditionType::Stalled, "BindleConflict");
        let before = vec![
            Event::new(now, "weather", EventType::Stalled, "BindleConflict", "x"),
            Event::commit_applied(now, "abc"),
        ];
        let mut t = Tracker::seeded(&before);
        let mut s = run(&failing, &[], "1.0.0");
        s.failed = true;
        assert!(t.observe(&s, now).is_empty());
        let fresh = Tracker::default().observe(&s, now);
        assert_eq!(kinds(&fresh), [EventType::Stalled]);
    }

    #[test]
    fn env_values_are_redacted_from_messages() {
        let now = Utc::now();
        let mut failing = cond(ConditionType::Stalled, "HippoValidationFailed");
        failing.message = "Hippo refused RUST_LOG=s3cr3t-value (too long)".into();
        let mut s = run(&failing, &[], "1.0.0");
        s.failed = true;
        let e = Tracker::default().observe(&s, now);
        assert_eq!(e[0].message, "Hippo refused RUST_LOG=*** (too long)");
        let json = serde_json::to_string(&e).unwrap();
        assert!(!json.contains("s3cr3t"), "{json}");
        // Inside a longer word it is left alone (a short value would otherwise eat words).
        assert_eq!(redact("information", &["info"]), "information");
        assert_eq!(redact("level info.", &["info"]), "level ***.");
        assert_eq!(redact("a b", &["b"]), "a b");
    }

    #[test]
    fn since_is_a_time_or_a_duration_back() {
        let now = DateTime::parse_from_rfc3339("2026-12-04T14:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let at = |s: &str| parse_since(s, now).map(|t| t.to_rfc3339());
        assert_eq!(at("1h").unwrap(), "2026-12-04T13:00:00+00:00");
        assert_eq!(at("90s").unwrap(), "2026-12-04T13:58:30+00:00");
        assert_eq!(at("2d").unwrap(), "2026-12-02T14:00:00+00:00");
        assert_eq!(
            at("2026-12-04T12:00:00.5Z").unwrap(),
            "2026-12-04T12:00:00.500+00:00"
        );
        assert!(at("1w").is_err());
        assert!(at("yesterday").is_err());
        assert!(at("99999999999999d").is_err());
    }

    #[test]
    fn events_serialize_with_the_documented_field_names() {
        let time = DateTime::parse_from_rfc3339("2026-12-04T14:02:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let e = Event::new(time, "weather", EventType::Applied, "ChannelUpdated", "m")
            .on_channel("production")
            .with_revisions(Some("1.0.0".into()), Some("1.1.0".into()))
            .at_commit(Some("abc"));
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"time":"2026-12-04T14:02:00Z","app":"weather","channel":"production","type":"Applied","reason":"ChannelUpdated","message":"m","revisionBefore":"1.0.0","revisionAfter":"1.1.0","commit":"abc"}"#
        );
        let back: Event = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(back, e);
        let bare = Event::new(time, "a", EventType::Ready, "UpToDate", "m");
        assert_eq!(
            serde_json::to_string(&bare).unwrap(),
            r#"{"time":"2026-12-04T14:02:00Z","app":"a","type":"Ready","reason":"UpToDate","message":"m"}"#
        );
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.name()), Some(t));
        }
    }
}

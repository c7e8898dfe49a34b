//! Progressive delivery (issue 16): what `discover`, `promote` and `rollback` decide for a
//! channel, from one snapshot. Pure, like `diff`, which calls it: the clock is the snapshot's
//! (`Snapshot::observed_at_ms`), and Nomad's own timestamps say since when a revision runs
//! healthy, so a controller restart resets nothing.
//!
//! - **Promote.** A `promote` channel is pinned to the revision its `from` channel runs once
//!   every allocation of `from`'s job for it has been healthy for `after` without a break
//!   (Nomad's `DeploymentStatus.Timestamp`: a replaced or unhealthy allocation restarts it),
//!   and the optional check has passed every probe in that window ([`ProbeObservation`]).
//! - **Roll back.** A `rollback: true` channel whose revision fails on Nomad is pinned back to
//!   the newest revision Nomad marked stable for its job (a deployment of it succeeded), and the
//!   failed revision is recorded as bad for the channel ([`DeliveryRecords`], a Nomad Variable),
//!   so that no restart deploys it again. The channel follows its range again when a revision
//!   newer than every bad one matches, or when its rule in the deploy file changes.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::{
    diff::{channel_health, AppPlan, ChannelHealth, Problem},
    hippo::types::Channel,
    observe::Snapshot,
    range_rule::{max_satisfying, strict_version},
    spec::{AppSpec, ChannelSpec, Selector},
    status::reason,
};

/// The Nomad Variable (in the controller's namespace) that holds [`DeliveryRecords`].
pub const RECORDS_VARIABLE: &str = "hippo-gitops/delivery";
/// Its one item: the records as JSON (Nomad's items are strings).
pub const RECORDS_ITEM: &str = "records";

/// What the controller must remember across restarts: the revisions it rolled back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryRecords {
    /// By `app/channel`.
    #[serde(default)]
    pub rollbacks: BTreeMap<String, RollbackRecord>,
}

/// Revisions rolled back in one channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackRecord {
    /// The channel's rule when it was rolled back (`range ^1.0`, `promote from canary`): a
    /// record made under another rule is void (the deploy file changed).
    pub rule: String,
    /// Revisions that failed in the channel: never deployed to it again under this rule.
    pub bad: BTreeSet<String>,
    /// What the channel was pinned back to, last.
    pub pinned: String,
    /// When (Unix ms).
    pub at_ms: i64,
}

impl DeliveryRecords {
    pub fn key(app: &str, channel: &str) -> String {
        format!("{app}/{channel}")
    }

    /// The record of `app/channel`, if it was made under `rule`.
    pub fn rollback(&self, app: &str, channel: &str, rule: &str) -> Option<&RollbackRecord> {
        self.rollbacks
            .get(&Self::key(app, channel))
            .filter(|r| r.rule == rule)
    }

    /// Adds a rollback: `bad` joins the channel's bad revisions (a record under another rule is
    /// replaced).
    pub fn record_rollback(&mut self, rollback: &Rollback, at_ms: i64) {
        let key = Self::key(&rollback.app, &rollback.channel);
        let record = self.rollbacks.entry(key).or_insert_with(|| RollbackRecord {
            rule: rollback.rule.clone(),
            bad: BTreeSet::new(),
            pinned: rollback.to.clone(),
            at_ms,
        });
        if record.rule != rollback.rule {
            record.rule = rollback.rule.clone();
            record.bad.clear();
        }
        record.bad.insert(rollback.failed.clone());
        record.pinned = rollback.to.clone();
        record.at_ms = at_ms;
    }

    /// Decodes the variable's items; a missing item is an empty record set.
    pub fn from_items(items: &BTreeMap<String, String>) -> Result<DeliveryRecords, String> {
        match items.get(RECORDS_ITEM) {
            None => Ok(DeliveryRecords::default()),
            Some(json) => serde_json::from_str(json).map_err(|e| {
                format!("the Nomad Variable {RECORDS_VARIABLE} holds no valid records: {e}")
            }),
        }
    }

    pub fn to_items(&self) -> BTreeMap<String, String> {
        let json = serde_json::to_string(self).expect("records serialize");
        BTreeMap::from([(RECORDS_ITEM.to_string(), json)])
    }
}

/// A rollback the plan makes: written to the records before the channel is pinned, so that a
/// failure between the two never leaves the channel to move back to `failed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rollback {
    pub app: String,
    pub channel: String,
    /// The channel's rule (see [`RollbackRecord::rule`]).
    pub rule: String,
    pub failed: String,
    pub to: String,
    /// What Nomad reported.
    pub reason: String,
}

/// Why a channel update is made, when the controller decided it rather than the deploy file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Delivery {
    #[serde(rename_all = "camelCase")]
    Promote {
        from: String,
        revision: String,
        /// How long it ran healthy in `from` (and passed its check), in ms.
        healthy_for_ms: u64,
    },
    Rollback(Rollback),
}

/// A promotion that is not due yet: shown by `plan` and `status`, not a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingPromotion {
    pub channel: String,
    pub from: String,
    pub revision: String,
    /// Healthy (and passing its check) for this long, in ms; `None`: not healthy now.
    pub healthy_for_ms: Option<u64>,
    pub after_ms: u64,
    /// Why it waits, for humans: `canary has run 1.3.0 healthy for 3m of 10m`.
    pub message: String,
}

/// A channel held on an older revision by a rollback record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HeldBack {
    pub channel: String,
    pub bad: Vec<String>,
    pub pinned: String,
}

/// What the check of a promotion saw: kept by the prober between cycles (in memory), handed to
/// the diff in the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProbeObservation {
    /// The revision `from` ran when probed.
    pub revision: String,
    /// Since when every probe passed without a gap (Unix ms); `None`: the last one failed.
    pub passing_since_ms: Option<i64>,
    /// The last probe (Unix ms).
    pub last_ms: i64,
    /// Why the last failed probe failed.
    pub last_failure: Option<String>,
}

/// `a` is a newer semantic version than `b` (strictly parsed; anything else is not newer).
pub fn is_newer(a: &str, b: &str) -> bool {
    match (strict_version(a), strict_version(b)) {
        (Some(a), Some(b)) => a > b,
        _ => false,
    }
}

/// `v` is newer than every revision in `bad`.
pub fn newer_than_all(v: &str, bad: &BTreeSet<String>) -> bool {
    bad.iter().all(|b| is_newer(v, b))
}

/// `90061000` → `1d1h1m1s` (whole seconds, like Go's durations without zero parts).
pub fn human_duration(ms: u64) -> String {
    let mut s = ms / 1000;
    if s == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if s >= size {
            out.push_str(&format!("{}{unit}", s / size));
            s %= size;
        }
    }
    out
}

/// What a channel is set to this round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resolved {
    /// The deploy file's own selector (a range or a pinned revision).
    AsWritten,
    /// Pinned by the controller to this revision (`None`: none yet), for `cause` if it moves.
    Pin(Option<String>, Option<Delivery>),
    /// Left as it is: a problem (in the plan) says why.
    Skip,
}

/// The inputs [`resolve`] reads, gathered once per app by the diff.
pub(crate) struct ChannelView<'a> {
    pub spec: &'a AppSpec,
    pub channels: &'a [&'a Channel],
    /// Revision numbers Hippo will hold once the plan's registrations are made.
    pub numbers: &'a [&'a str],
    pub snapshot: &'a Snapshot,
}

impl ChannelView<'_> {
    fn current(&self, name: &str) -> Option<&Channel> {
        self.channels.iter().find(|c| c.name == name).copied()
    }

    fn running(&self, name: &str) -> Option<String> {
        self.current(name)
            .and_then(|c| c.active_revision.as_ref())
            .map(|r| r.revision_number.clone())
    }

    fn records(&self) -> Option<&DeliveryRecords> {
        match &self.snapshot.delivery {
            Some(Ok(r)) => Some(r),
            _ => None,
        }
    }

    fn bad(&self, ch: &ChannelSpec) -> BTreeSet<String> {
        self.records()
            .and_then(|r| r.rollback(&self.spec.name, &ch.name, &rule_text(&ch.selector)))
            .map(|r| r.bad.clone())
            .unwrap_or_default()
    }

    fn expected(&self, revision: &str) -> String {
        format!("{}/{revision}", self.spec.storage_id)
    }
}

/// How a rule reads in records and messages: `range ^1.0`, `revision 1.0.0`, `promote from canary`.
pub fn rule_text(selector: &Selector) -> String {
    match selector {
        Selector::Range(r) => format!("range {r}"),
        Selector::Revision(v) => format!("revision {v}"),
        Selector::Promote(p) => format!("promote from {}", p.from),
    }
}

fn channel_problem(
    ch: &ChannelSpec,
    reason: &'static str,
    transient: bool,
    message: String,
) -> Problem {
    Problem {
        message,
        transient,
        reason,
        revision: None,
        channel: Some(ch.name.clone()),
    }
}

/// Decides what `ch` is set to: rollbacks first (a failing revision is the most urgent), then a
/// rollback record's hold, then promotion.
pub(crate) fn resolve(view: &ChannelView, ch: &ChannelSpec, plan: &mut AppPlan) -> Resolved {
    let promote = match &ch.selector {
        Selector::Promote(p) => Some(p),
        Selector::Range(_) if ch.rollback => None,
        _ => return Resolved::AsWritten,
    };
    let nomad = match &view.snapshot.nomad {
        Some(Ok(n)) => n,
        // Nomad could not be read: nothing can be judged; a promote channel keeps what it
        // runs, a range follows Hippo's rule.
        Some(Err(_)) if promote.is_some() => return Resolved::Pin(view.running(&ch.name), None),
        Some(Err(_)) => return Resolved::AsWritten,
        None => {
            let (reason, what) = if promote.is_some() {
                (
                    reason::PROMOTION_NEEDS_NOMAD,
                    "promotes on health judged by Nomad",
                )
            } else {
                (
                    reason::ROLLBACK_NEEDS_NOMAD,
                    "rolls back on health judged by Nomad",
                )
            };
            plan.problems.push(channel_problem(
                ch,
                reason,
                false,
                format!("channel {} {what}, and Nomad is not configured (--nomad-addr): it is left as it is", ch.name),
            ));
            return Resolved::Skip;
        }
    };
    if let Some(Err(e)) = &view.snapshot.delivery {
        plan.problems.push(channel_problem(
            ch,
            reason::DELIVERY_RECORDS_UNAVAILABLE,
            e.transient,
            format!(
                "channel {}: reading the rollback records: {}",
                ch.name, e.message
            ),
        ));
        return Resolved::Skip;
    }
    let bad = view.bad(ch);
    let rule = rule_text(&ch.selector);
    let current = view.current(&ch.name);
    let running = view.running(&ch.name);

    // Roll back a revision that fails on Nomad.
    if let (true, Some(c), Some(r)) = (ch.rollback, current, running.as_deref()) {
        if let ChannelHealth::Failed { message } = channel_health(nomad, c, &view.expected(r)) {
            let versions = nomad.versions.get(&c.id.to_string());
            let prefix = format!("{}/", view.spec.storage_id);
            let target = versions.into_iter().flat_map(|v| v.iter()).find_map(|v| {
                let n = v.bindle.as_deref()?.strip_prefix(&prefix)?;
                (v.stable && n != r && !bad.contains(n) && view.numbers.contains(&n))
                    .then(|| n.to_string())
            });
            return match target {
                Some(to) => Resolved::Pin(
                    Some(to.clone()),
                    Some(Delivery::Rollback(Rollback {
                        app: view.spec.name.clone(),
                        channel: ch.name.clone(),
                        rule,
                        failed: r.to_string(),
                        to,
                        reason: message,
                    })),
                ),
                None => {
                    plan.problems.push(channel_problem(
                        ch,
                        reason::NO_HEALTHY_REVISION,
                        false,
                        format!(
                            "channel {}: {r} fails on Nomad ({message}), and no other revision ran healthy in this channel (Nomad keeps no stable version of its job): nothing to roll back to",
                            ch.name
                        ),
                    ));
                    Resolved::Skip
                }
            };
        }
    }

    let Some(p) = promote else {
        // A range with rollback: held on its pinned revision until one newer than every bad
        // revision matches.
        let (Selector::Range(range), Some(record)) = (
            &ch.selector,
            view.records()
                .and_then(|r| r.rollback(&view.spec.name, &ch.name, &rule)),
        ) else {
            return Resolved::AsWritten;
        };
        return match max_satisfying(range, view.numbers) {
            Some(newest) if newer_than_all(newest, &record.bad) => Resolved::AsWritten,
            _ => {
                plan.held.push(HeldBack {
                    channel: ch.name.clone(),
                    bad: record.bad.iter().cloned().collect(),
                    pinned: record.pinned.clone(),
                });
                Resolved::Pin(Some(record.pinned.clone()), None)
            }
        };
    };

    // Promote what `from` runs, once it proved healthy for `after`.
    let keep = Resolved::Pin(running.clone(), None);
    if !bad.is_empty() {
        plan.held.push(HeldBack {
            channel: ch.name.clone(),
            bad: bad.iter().cloned().collect(),
            pinned: running.clone().unwrap_or_default(),
        });
    }
    let Some(from) = view.current(&p.from) else {
        return keep;
    };
    let Some(candidate) = view.running(&p.from) else {
        return keep;
    };
    if running.as_deref() == Some(candidate.as_str())
        || running.as_deref().is_some_and(|r| !is_newer(&candidate, r))
        || bad.contains(&candidate)
    {
        return keep;
    }
    let after_ms = p.after.as_millis() as u64;
    let now = view.snapshot.observed_at_ms;
    let mut pending = |healthy_for_ms: Option<u64>, message: String| {
        plan.promotions.push(PendingPromotion {
            channel: ch.name.clone(),
            from: p.from.clone(),
            revision: candidate.clone(),
            healthy_for_ms,
            after_ms,
            message,
        });
    };
    let id = from.id.to_string();
    let healthy_since = match channel_health(nomad, from, &view.expected(&candidate)) {
        ChannelHealth::Ready { version, .. } => nomad
            .allocations_of(&id)
            .filter(|a| a.job_version == version && a.desired_status == "run")
            .map(|a| a.healthy_since())
            .try_fold(0i64, |latest, t| t.map(|t| latest.max(t))),
        ChannelHealth::Progressing { message } | ChannelHealth::Failed { message } => {
            pending(
                None,
                format!(
                    "{} runs {candidate}, not healthy on Nomad: {message}",
                    p.from
                ),
            );
            return keep;
        }
        ChannelHealth::Idle => None,
    };
    let Some(since) = healthy_since.filter(|t| *t > 0) else {
        pending(
            None,
            format!(
                "{} runs {candidate}; Nomad has not said since when it is healthy",
                p.from
            ),
        );
        return keep;
    };
    let healthy_ms = now.saturating_sub(since).max(0) as u64;
    let mut window_ms = healthy_ms;
    let mut waiting = format!(
        "{} has run {candidate} healthy for {} of {}",
        p.from,
        human_duration(healthy_ms),
        human_duration(after_ms)
    );
    if p.check.is_some() {
        let probe = view
            .snapshot
            .probes
            .get(&(view.spec.name.clone(), ch.name.clone()))
            .filter(|o| o.revision == candidate);
        match probe.and_then(|o| o.passing_since_ms.map(|t| (o, t))) {
            Some((_, t)) => {
                let passing = now.saturating_sub(t).max(0) as u64;
                window_ms = window_ms.min(passing);
                waiting.push_str(&format!(
                    "; its check has passed for {}",
                    human_duration(passing)
                ));
            }
            None => {
                let why = probe
                    .and_then(|o| o.last_failure.clone())
                    .map(|f| format!("its check failed: {f}"))
                    .unwrap_or_else(|| "its check has not been probed yet".into());
                pending(Some(0), format!("{waiting}; {why}"));
                return keep;
            }
        }
    }
    if window_ms >= after_ms {
        return Resolved::Pin(
            Some(candidate.clone()),
            Some(Delivery::Promote {
                from: p.from.clone(),
                revision: candidate,
                healthy_for_ms: window_ms,
            }),
        );
    }
    pending(Some(window_ms), waiting);
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollback(failed: &str, to: &str, rule: &str) -> Rollback {
        Rollback {
            app: "weather".into(),
            channel: "staging".into(),
            rule: rule.into(),
            failed: failed.into(),
            to: to.into(),
            reason: "unhealthy".into(),
        }
    }

    #[test]
    fn records_accumulate_bad_revisions_and_a_new_rule_voids_them() {
        let mut r = DeliveryRecords::default();
        r.record_rollback(&rollback("1.2.0", "1.1.0", "range ^1.0"), 1);
        r.record_rollback(&rollback("1.3.0", "1.1.0", "range ^1.0"), 2);
        let rec = r.rollback("weather", "staging", "range ^1.0").unwrap();
        assert_eq!(rec.bad.iter().collect::<Vec<_>>(), ["1.2.0", "1.3.0"]);
        assert_eq!(rec.at_ms, 2);
        assert!(r.rollback("weather", "staging", "range ^2.0").is_none());
        r.record_rollback(&rollback("2.1.0", "2.0.0", "range ^2.0"), 3);
        let rec = r.rollback("weather", "staging", "range ^2.0").unwrap();
        assert_eq!(rec.bad.iter().collect::<Vec<_>>(), ["2.1.0"]);
        // Round trip through the variable's items.
        let back = DeliveryRecords::from_items(&r.to_items()).unwrap();
        assert_eq!(back, r);
        assert!(DeliveryRecords::from_items(&BTreeMap::from([(
            RECORDS_ITEM.to_string(),
            "{".to_string()
        )]))
        .is_err());
    }

    #[test]
    fn versions_compare_semantically() {
        assert!(is_newer("1.10.0", "1.9.0"));
        assert!(!is_newer("1.9.0", "1.10.0"));
        assert!(!is_newer("1.0.0", "1.0.0"));
        assert!(!is_newer("banana", "1.0.0"));
        let bad = BTreeSet::from(["1.2.0".to_string(), "1.3.0".to_string()]);
        assert!(newer_than_all("1.4.0", &bad));
        assert!(!newer_than_all("1.3.0", &bad));
        assert_eq!(human_duration(3 * 60_000 + 5_000), "3m5s");
        assert_eq!(human_duration(600_000), "10m");
        assert_eq!(human_duration(999), "0s");
    }
}

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
        Selector::Promote(p) => Some(&**p),
        Selector::Range(_) if ch.rollback => None,
        _ => return Resolved::AsWritten,
    };
    let nomad = match &view.snapshot.nomad {
        Some(Ok(n)) => n,
        // Nomad could not be read: nothing can be judged, and its rollback records may be
        // unreadable too. The channel is left as it is (a held range set back to its rule would
        // run the revision it was rolled back from); status says Nomad is unavailable.
        Some(Err(_)) => return Resolved::Skip,
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
    // Held back until it runs a revision newer than every bad one.
    if !bad.is_empty() && !running.as_deref().is_some_and(|r| newer_than_all(r, &bad)) {
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

    // -- decisions, on hand-built snapshots -------------------------------------------------

    use crate::{
        diff::{
            diff_app,
            tests::{
                app_spec, channel, existing, nomad_job, ops, range_channel, rev, uuid, weather_app,
            },
            Op,
        },
        hippo::types::Strategy,
        observe::NomadState,
        spec::ProbeSpec,
    };
    use std::{sync::Arc, time::Duration};

    /// The snapshot's clock.
    const NOW: i64 = 1_800_000_000_000;
    const MIN: i64 = 60_000;
    const CANARY: u128 = 21;
    const PRODUCTION: u128 = 20;

    fn promote_channel(after: Duration, check: bool) -> ChannelSpec {
        ChannelSpec {
            name: "production".into(),
            selector: Selector::Promote(Box::new(crate::spec::PromoteSpec {
                from: "canary".into(),
                after,
                check: check.then(|| ProbeSpec {
                    url: "http://{domain}/health".into(),
                    expect_status: 200,
                    interval: Duration::from_secs(15),
                }),
            })),
            domain: None,
            env: BTreeMap::new(),
            allow_empty: false,
            rollback: false,
        }
    }

    /// An allocation of job `job` at `version`; `healthy`: the deployment's verdict and since
    /// when (Unix ms).
    fn allocation(
        job: u128,
        version: u64,
        client: &str,
        healthy: Option<(bool, i64)>,
    ) -> crate::nomad::Allocation {
        let status = healthy.map(|(h, at)| {
            serde_json::json!({
                "Healthy": h,
                "Timestamp": chrono::DateTime::from_timestamp_millis(at).unwrap().to_rfc3339(),
            })
        });
        serde_json::from_value(serde_json::json!({
            "ID": format!("{job:08x}-{version}-alloc"), "JobID": uuid(job).to_string(),
            "JobVersion": version, "DesiredStatus": "run", "ClientStatus": client,
            "DeploymentStatus": status,
            "TaskStates": {"spin": {"State": "running", "Failed": client == "failed", "Events": [
                {"Type": "Alloc Unhealthy", "DisplayMessage": "Task not running for min_healthy_time", "Time": 1}
            ]}}
        }))
        .unwrap()
    }

    /// `weather` holding 1.0.0, 1.1.0 and 1.2.0 (ids 10–12); `canary` (range
    /// `<=<canary_runs>`) runs `canary_runs` and `production` (promoted from canary after 10m) runs `production_runs`.
    /// Nomad runs exactly that, every allocation healthy since `canary_healthy_since`
    /// (production's since long ago), at job version 2.
    fn delivery(
        canary_runs: &str,
        production_runs: &str,
        canary_healthy_since: i64,
    ) -> (AppSpec, Snapshot) {
        let spec = app_spec(
            vec![existing("1.0.0"), existing("1.1.0"), existing("1.2.0")],
            vec![
                range_channel("canary", &format!("<={canary_runs}")),
                promote_channel(Duration::from_secs(600), false),
            ],
        );
        let revision = |v: &str| {
            let id = 10
                + ["1.0.0", "1.1.0", "1.2.0"]
                    .iter()
                    .position(|n| *n == v)
                    .unwrap() as u128;
            rev(id, v)
        };
        let mut snapshot = Snapshot::new(
            vec![weather_app()],
            vec![
                channel(
                    CANARY,
                    "canary",
                    Strategy::UseRangeRule,
                    Some(&format!("<={canary_runs}")),
                    Some(revision(canary_runs)),
                ),
                channel(
                    PRODUCTION,
                    "production",
                    Strategy::UseSpecifiedRevision,
                    None,
                    Some(revision(production_runs)),
                ),
            ],
            vec![rev(10, "1.0.0"), rev(11, "1.1.0"), rev(12, "1.2.0")],
        );
        snapshot.observed_at_ms = NOW;
        snapshot.delivery = Some(Ok(Arc::default()));
        for v in ["1.0.0", "1.1.0", "1.2.0"] {
            let bindles = snapshot
                .bindles
                .entry("weather".into())
                .or_insert_with(|| Ok(Arc::default()));
            Arc::make_mut(bindles.as_mut().unwrap()).insert(crate::bindles::ServerBindle {
                version: v.into(),
                parcels: crate::package::ParcelSet::of(["a"]),
                yanked: false,
            });
        }
        let mut state = NomadState::default();
        let mut allocations = Vec::new();
        for (id, runs, since) in [
            (CANARY, canary_runs, canary_healthy_since),
            (PRODUCTION, production_runs, NOW - 600 * MIN),
        ] {
            let job = nomad_job(id, &format!("weather/{runs}"), &[], 2);
            Arc::make_mut(&mut state.jobs).insert(
                job.id.clone(),
                serde_json::from_value(serde_json::json!({"ID": job.id, "Status": "running", "Stop": false, "JobModifyIndex": 7})).unwrap(),
            );
            state.details.insert(job.id.clone(), job);
            allocations.push(allocation(id, 2, "running", Some((true, since))));
        }
        state.allocations = Arc::new(allocations.into());
        snapshot.nomad = Some(Ok(state));
        (spec, snapshot)
    }

    fn nomad(snapshot: &mut Snapshot) -> &mut NomadState {
        match snapshot.nomad.as_mut() {
            Some(Ok(n)) => n,
            _ => panic!("no Nomad state"),
        }
    }

    /// Canary's allocations are now these.
    fn canary_allocations(snapshot: &mut Snapshot, canary: Vec<crate::nomad::Allocation>) {
        let n = nomad(snapshot);
        let mut all: Vec<_> = n
            .allocations_of(&uuid(PRODUCTION).to_string())
            .cloned()
            .collect();
        all.extend(canary);
        n.allocations = Arc::new(all.into());
    }

    fn promoted(plan: &AppPlan) -> Vec<(String, u64)> {
        plan.changes
            .iter()
            .filter_map(|c| match &c.op {
                Op::UpdateChannel {
                    delivery:
                        Some(Delivery::Promote {
                            revision,
                            healthy_for_ms,
                            ..
                        }),
                    ..
                } => Some((revision.clone(), *healthy_for_ms)),
                _ => None,
            })
            .collect()
    }

    fn rollbacks(plan: &AppPlan) -> Vec<Rollback> {
        plan.changes
            .iter()
            .filter_map(|c| match &c.op {
                Op::UpdateChannel {
                    delivery: Some(Delivery::Rollback(r)),
                    ..
                } => Some(r.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_promotion_is_due_only_once_from_ran_healthy_for_after() {
        // Healthy for a millisecond less than 10m: pending, and not a change.
        let (spec, snapshot) = delivery("1.1.0", "1.0.0", NOW - 10 * MIN + 1);
        let plan = diff_app(&spec, &snapshot);
        assert!(plan.changes.is_empty(), "{:?}", ops(&plan));
        assert_eq!(
            plan.promotions,
            [PendingPromotion {
                channel: "production".into(),
                from: "canary".into(),
                revision: "1.1.0".into(),
                healthy_for_ms: Some(600_000 - 1),
                after_ms: 600_000,
                message: "canary has run 1.1.0 healthy for 9m59s of 10m".into(),
            }]
        );
        // Exactly 10m: due.
        let (spec, snapshot) = delivery("1.1.0", "1.0.0", NOW - 10 * MIN);
        let plan = diff_app(&spec, &snapshot);
        assert_eq!(promoted(&plan), [("1.1.0".to_string(), 600_000)]);
        assert!(plan.promotions.is_empty());
        assert_eq!(
            ops(&plan),
            ["promote 1.1.0 to channel production (canary has run it healthy for 10m): revision: 1.0.0 -> 1.1.0"]
        );
        // Long after: due, with the time it really ran.
        let (spec, snapshot) = delivery("1.1.0", "1.0.0", NOW - 60 * MIN);
        assert_eq!(
            promoted(&diff_app(&spec, &snapshot)),
            [("1.1.0".to_string(), 3_600_000)]
        );
    }

    #[test]
    fn a_promote_channel_is_created_by_its_first_promotion() {
        // Hippo creates no `UseSpecifiedRevision` channel without a revision.
        let (spec, mut snapshot) = delivery("1.1.0", "1.0.0", NOW - 10 * MIN + 1);
        snapshot
            .hippo_mut()
            .channels
            .retain(|c| c.name != "production");
        let plan = diff_app(&spec, &snapshot);
        assert!(plan.changes.is_empty(), "{:?}", ops(&plan));
        assert_eq!(plan.promotions[0].revision, "1.1.0");
        let (spec, mut snapshot) = delivery("1.1.0", "1.0.0", NOW - 10 * MIN);
        snapshot
            .hippo_mut()
            .channels
            .retain(|c| c.name != "production");
        let plan = diff_app(&spec, &snapshot);
        assert_eq!(
            ops(&plan),
            ["promote 1.1.0 to channel production (canary has run it healthy for 10m): create channel production (revision 1.1.0)"]
        );
        assert!(matches!(
            &plan.changes[0].op,
            Op::CreateChannel {
                delivery: Some(Delivery::Promote { revision, .. }),
                ..
            } if revision == "1.1.0"
        ));
        assert_eq!(
            crate::apply::Made::of(&plan.changes[0].op).name(),
            "ChannelPromoted"
        );
        // Nor is it planned for an app still to be created.
        snapshot.hippo_mut().apps.clear();
        snapshot.hippo_mut().channels.clear();
        snapshot.hippo_mut().revisions.clear();
        let plan = diff_app(&spec, &snapshot);
        assert!(
            !ops(&plan).iter().any(|c| c.contains("production")),
            "{:?}",
            ops(&plan)
        );
    }

    #[test]
    fn the_clock_is_the_latest_allocation_to_turn_healthy() {
        // One allocation healthy for an hour, its replacement for a minute: a minute.
        let (mut spec, mut snapshot) = delivery("1.1.0", "1.0.0", NOW - 60 * MIN);
        let canary = uuid(CANARY).to_string();
        let details = nomad(&mut snapshot).details.get_mut(&canary).unwrap();
        Arc::make_mut(details).desired_count = 2;
        let mut replaced = allocation(CANARY, 2, "running", Some((true, NOW - MIN)));
        replaced.id = "replacement".into();
        canary_allocations(
            &mut snapshot,
            vec![
                allocation(CANARY, 2, "running", Some((true, NOW - 60 * MIN))),
                replaced,
            ],
        );
        let plan = diff_app(&spec, &snapshot);
        assert!(promoted(&plan).is_empty(), "{:?}", ops(&plan));
        assert_eq!(plan.promotions[0].healthy_for_ms, Some(MIN as u64));
        // With `after: 0s`, due at once.
        spec.channels[1] = promote_channel(Duration::ZERO, false);
        assert_eq!(
            promoted(&diff_app(&spec, &snapshot)),
            [("1.1.0".to_string(), MIN as u64)]
        );
    }

    #[test]
    fn an_unhealthy_failed_or_undecided_allocation_means_no_promotion() {
        for (client, healthy) in [
            ("running", Some((false, NOW - 60 * MIN))),
            ("failed", Some((true, NOW - 60 * MIN))),
            ("failed", None),
            ("running", None),
        ] {
            let (spec, mut snapshot) = delivery("1.1.0", "1.0.0", NOW - 60 * MIN);
            canary_allocations(&mut snapshot, vec![allocation(CANARY, 2, client, healthy)]);
            let plan = diff_app(&spec, &snapshot);
            assert!(
                plan.changes.is_empty(),
                "{client} {healthy:?}: {:?}",
                ops(&plan)
            );
            let p = &plan.promotions[0];
            assert_eq!(p.healthy_for_ms, None, "{client} {healthy:?}");
            assert!(
                p.message
                    .starts_with("canary runs 1.1.0, not healthy on Nomad: "),
                "{}",
                p.message
            );
        }
        // Healthy, but Nomad's deployment said nothing of since when: no clock, no promotion.
        let (spec, mut snapshot) = delivery("1.1.0", "1.0.0", NOW - 60 * MIN);
        let mut a = allocation(CANARY, 2, "running", Some((true, NOW - 60 * MIN)));
        a.deployment_status.as_mut().unwrap().timestamp = None;
        canary_allocations(&mut snapshot, vec![a]);
        let plan = diff_app(&spec, &snapshot);
        assert!(plan.changes.is_empty(), "{:?}", ops(&plan));
        assert!(plan.promotions[0]
            .message
            .contains("Nomad has not said since when it is healthy"));
    }

    #[test]
    fn a_revision_older_than_or_equal_to_what_the_channel_runs_is_never_promoted() {
        for production in ["1.2.0", "1.1.0"] {
            let (spec, snapshot) = delivery("1.1.0", production, NOW - 600 * MIN);
            let plan = diff_app(&spec, &snapshot);
            assert!(plan.changes.is_empty(), "{production}: {:?}", ops(&plan));
            assert!(plan.promotions.is_empty(), "{:?}", plan.promotions);
        }
    }

    #[test]
    fn a_revision_rolled_back_in_the_channel_is_never_promoted() {
        let (spec, mut snapshot) = delivery("1.1.0", "1.0.0", NOW - 600 * MIN);
        let mut records = DeliveryRecords::default();
        let mut r = rollback("1.1.0", "1.0.0", "promote from canary");
        r.channel = "production".into();
        records.record_rollback(&r, NOW - MIN);
        snapshot.delivery = Some(Ok(Arc::new(records)));
        let plan = diff_app(&spec, &snapshot);
        assert!(plan.changes.is_empty(), "{:?}", ops(&plan));
        assert!(plan.promotions.is_empty());
        assert_eq!(
            plan.held,
            [HeldBack {
                channel: "production".into(),
                bad: vec!["1.1.0".into()],
                pinned: "1.0.0".into(),
            }]
        );
        // A newer revision than the bad one is promoted as usual.
        let (_, mut newer) = delivery("1.2.0", "1.0.0", NOW - 600 * MIN);
        newer.delivery = snapshot.delivery.clone();
        assert_eq!(
            promoted(&diff_app(&spec, &newer)),
            [("1.2.0".to_string(), 36_000_000)]
        );
        // Once it runs, the channel is no longer held back.
        let (spec, mut promoted_since) = delivery("1.2.0", "1.2.0", NOW - 600 * MIN);
        promoted_since.delivery = snapshot.delivery.clone();
        let plan = diff_app(&spec, &promoted_since);
        assert!(plan.changes.is_empty(), "{:?}", ops(&plan));
        assert!(plan.held.is_empty(), "{:?}", plan.held);
    }

    #[test]
    fn a_failed_check_holds_the_promotion_and_its_window_counts() {
        let (mut spec, mut snapshot) = delivery("1.1.0", "1.0.0", NOW - 60 * MIN);
        spec.channels[1] = promote_channel(Duration::from_secs(600), true);
        let key = ("weather".to_string(), "production".to_string());
        // Not probed yet.
        let plan = diff_app(&spec, &snapshot);
        assert!(plan.changes.is_empty(), "{:?}", ops(&plan));
        assert!(
            plan.promotions[0]
                .message
                .ends_with("its check has not been probed yet"),
            "{}",
            plan.promotions[0].message
        );
        // The last probe failed: held, whatever Nomad says.
        snapshot.probes.insert(
            key.clone(),
            ProbeObservation {
                revision: "1.1.0".into(),
                passing_since_ms: None,
                last_ms: NOW,
                last_failure: Some("503 Service Unavailable".into()),
            },
        );
        let plan = diff_app(&spec, &snapshot);
        assert!(plan.changes.is_empty(), "{:?}", ops(&plan));
        assert_eq!(plan.promotions[0].healthy_for_ms, Some(0));
        assert!(plan.promotions[0]
            .message
            .ends_with("its check failed: 503 Service Unavailable"));
        // Passing since a minute: the window is the shorter of the two.
        let passing = |since: i64| ProbeObservation {
            revision: "1.1.0".into(),
            passing_since_ms: Some(since),
            last_ms: NOW,
            last_failure: None,
        };
        snapshot.probes.insert(key.clone(), passing(NOW - MIN));
        let plan = diff_app(&spec, &snapshot);
        assert!(plan.changes.is_empty(), "{:?}", ops(&plan));
        assert_eq!(plan.promotions[0].healthy_for_ms, Some(MIN as u64));
        // A probe of another revision does not count.
        let mut other = passing(NOW - 60 * MIN);
        other.revision = "1.0.0".into();
        snapshot.probes.insert(key.clone(), other);
        assert!(diff_app(&spec, &snapshot).changes.is_empty());
        // Passing for 10m, and healthy for an hour: due after the check's 10m.
        snapshot.probes.insert(key, passing(NOW - 10 * MIN));
        assert_eq!(
            promoted(&diff_app(&spec, &snapshot)),
            [("1.1.0".to_string(), 600_000)]
        );
    }

    /// Canary (`range: "<=1.2.0"`, `rollback: true`) runs 1.2.0 at job version 3, whose allocation
    /// Nomad's deployment marked unhealthy; `versions` are its job's versions, newest first.
    fn failing_canary(versions: &[(u64, &str, bool)]) -> (AppSpec, Snapshot) {
        let (mut spec, mut snapshot) = delivery("1.2.0", "1.0.0", NOW - 60 * MIN);
        spec.channels[0].rollback = true;
        let canary = uuid(CANARY).to_string();
        let n = nomad(&mut snapshot);
        n.details
            .insert(canary.clone(), nomad_job(CANARY, "weather/1.2.0", &[], 3));
        n.versions.insert(
            canary,
            Arc::new(
                versions
                    .iter()
                    .map(|(version, bindle, stable)| crate::nomad::JobVersion {
                        version: *version,
                        stable: *stable,
                        bindle: Some(format!("weather/{bindle}")),
                    })
                    .collect(),
            ),
        );
        canary_allocations(
            &mut snapshot,
            vec![allocation(CANARY, 3, "running", Some((false, NOW - MIN)))],
        );
        (spec, snapshot)
    }

    #[test]
    fn rollback_picks_the_newest_stable_version_that_is_neither_the_failed_one_nor_bad() {
        let (spec, snapshot) =
            failing_canary(&[(3, "1.2.0", false), (2, "1.1.0", true), (1, "1.0.0", true)]);
        let plan = diff_app(&spec, &snapshot);
        let r = rollbacks(&plan);
        assert_eq!(r.len(), 1, "{:?}", ops(&plan));
        assert_eq!(
            (
                r[0].channel.as_str(),
                r[0].failed.as_str(),
                r[0].to.as_str()
            ),
            ("canary", "1.2.0", "1.1.0")
        );
        assert_eq!(r[0].rule, "range <=1.2.0");
        assert!(
            r[0].reason
                .contains("marked unhealthy by Nomad's deployment"),
            "{}",
            r[0].reason
        );
        let change = plan.changes.iter().find(|c| c.name == "canary").unwrap();
        assert!(
            change.describe().starts_with(
                "roll back channel canary from 1.2.0 to 1.1.0 (1.2.0 failed on Nomad: "
            ),
            "{}",
            change.describe()
        );
        assert!(
            change
                .describe()
                .contains("strategy: UseRangeRule -> UseSpecifiedRevision"),
            "{}",
            change.describe()
        );
        // The failed revision itself was stable once (it failed later): still not a target.
        let (spec, snapshot) =
            failing_canary(&[(4, "1.2.0", true), (3, "1.2.0", false), (2, "1.1.0", true)]);
        assert_eq!(rollbacks(&diff_app(&spec, &snapshot))[0].to, "1.1.0");
        // 1.1.0 was rolled back before in this channel: the one before it.
        let (spec, mut snapshot) =
            failing_canary(&[(3, "1.2.0", false), (2, "1.1.0", true), (1, "1.0.0", true)]);
        let mut records = DeliveryRecords::default();
        let mut r = rollback("1.1.0", "1.0.0", "range <=1.2.0");
        r.channel = "canary".into();
        records.record_rollback(&r, NOW - 60 * MIN);
        snapshot.delivery = Some(Ok(Arc::new(records)));
        let r = rollbacks(&diff_app(&spec, &snapshot));
        assert_eq!((r[0].failed.as_str(), r[0].to.as_str()), ("1.2.0", "1.0.0"));
        // And the promotion from canary waits: canary is not healthy.
        let plan = diff_app(&spec, &snapshot);
        assert!(promoted(&plan).is_empty());
    }

    #[test]
    fn a_failing_revision_with_no_stable_version_to_go_back_to_is_a_problem() {
        let (spec, snapshot) = failing_canary(&[(3, "1.2.0", false), (2, "1.1.0", false)]);
        let plan = diff_app(&spec, &snapshot);
        assert!(rollbacks(&plan).is_empty(), "{:?}", ops(&plan));
        assert!(
            !plan.changes.iter().any(|c| c.name == "canary"),
            "{:?}",
            ops(&plan)
        );
        let p = &plan.problems[0];
        assert_eq!(p.reason, crate::status::reason::NO_HEALTHY_REVISION);
        assert_eq!(p.channel.as_deref(), Some("canary"));
        assert!(!p.transient);
        assert!(p.message.contains("1.2.0 fails on Nomad"), "{}", p.message);
    }

    /// Canary (`range: "*"`, `rollback: true`) was rolled back from 1.2.0 and pinned to 1.1.0,
    /// which runs healthy; the record was made under `rule`.
    fn held_canary(rule: &str) -> (AppSpec, Snapshot) {
        let (mut spec, mut snapshot) = delivery("1.1.0", "1.0.0", NOW - 60 * MIN);
        spec.channels[0] = range_channel("canary", "*");
        spec.channels[0].rollback = true;
        {
            let mut hippo = snapshot.hippo_mut();
            hippo.channels[0].revision_selection_strategy = Strategy::UseSpecifiedRevision;
            hippo.channels[0].range_rule = None;
        }
        let mut records = DeliveryRecords::default();
        let mut r = rollback("1.2.0", "1.1.0", rule);
        r.channel = "canary".into();
        records.record_rollback(&r, NOW - MIN);
        snapshot.delivery = Some(Ok(Arc::new(records)));
        (spec, snapshot)
    }

    #[test]
    fn a_held_range_resumes_when_a_revision_newer_than_every_bad_one_matches() {
        let (mut spec, mut snapshot) = held_canary("range *");
        let plan = diff_app(&spec, &snapshot);
        assert!(
            !plan.changes.iter().any(|c| c.name == "canary"),
            "{:?}",
            ops(&plan)
        );
        assert_eq!(
            plan.held,
            [HeldBack {
                channel: "canary".into(),
                bad: vec!["1.2.0".into()],
                pinned: "1.1.0".into(),
            }]
        );
        // 1.3.0 is registered: the range again, and nothing held.
        snapshot.hippo_mut().revisions.push(rev(13, "1.3.0"));
        spec.revisions.push(existing("1.3.0"));
        crate::diff::tests::on_server(&mut snapshot, "1.3.0", &["a"]);
        let plan = diff_app(&spec, &snapshot);
        assert!(plan.held.is_empty(), "{:?}", plan.held);
        follows_its_range_again(&plan);
    }

    #[test]
    fn nothing_moves_a_delivery_channel_while_nomad_cannot_be_read() {
        let (spec, mut snapshot) = held_canary("range *");
        snapshot.nomad = Some(Err(crate::observe::PartialFailure {
            message: "connection refused".into(),
            transient: true,
        }));
        let plan = diff_app(&spec, &snapshot);
        assert!(
            !plan
                .changes
                .iter()
                .any(|c| c.name == "canary" || c.name == "production"),
            "a held canary would run its bad revision again on its range: {:?}",
            ops(&plan)
        );
    }

    /// Canary, held on a pinned revision, is set back to its range (not by a delivery).
    fn follows_its_range_again(plan: &AppPlan) {
        let change = plan.changes.iter().find(|c| c.name == "canary").unwrap();
        assert!(matches!(
            change.op,
            Op::UpdateChannel { delivery: None, .. }
        ));
        assert!(
            change
                .describe()
                .contains("strategy: UseSpecifiedRevision -> UseRangeRule"),
            "{}",
            change.describe()
        );
    }

    #[test]
    fn a_record_made_under_another_rule_is_ignored() {
        let (spec, snapshot) = held_canary("range ^1.0");
        let plan = diff_app(&spec, &snapshot);
        assert!(plan.held.is_empty(), "{:?}", plan.held);
        follows_its_range_again(&plan);
        assert_eq!(plan.moves[0].to.as_deref(), Some("1.2.0"));
    }

    #[test]
    fn promotion_and_rollback_need_nomad() {
        let (mut spec, mut snapshot) = delivery("1.1.0", "1.0.0", NOW - 600 * MIN);
        spec.channels[0].rollback = true;
        snapshot.nomad = None;
        snapshot.delivery = None;
        let plan = diff_app(&spec, &snapshot);
        assert!(plan.changes.is_empty(), "{:?}", ops(&plan));
        let reasons: Vec<(&str, Option<&str>)> = plan
            .problems
            .iter()
            .map(|p| (p.reason, p.channel.as_deref()))
            .collect();
        assert_eq!(
            reasons,
            [
                (crate::status::reason::ROLLBACK_NEEDS_NOMAD, Some("canary")),
                (
                    crate::status::reason::PROMOTION_NEEDS_NOMAD,
                    Some("production")
                ),
            ]
        );
        assert!(plan.problems.iter().all(|p| !p.transient));
        // Nomad configured but unreadable: a promote channel keeps what it runs, silently.
        let (spec, mut snapshot) = delivery("1.1.0", "1.0.0", NOW - 600 * MIN);
        snapshot.nomad = Some(Err(crate::observe::PartialFailure {
            message: "connection refused".into(),
            transient: true,
        }));
        let plan = diff_app(&spec, &snapshot);
        assert!(promoted(&plan).is_empty(), "{:?}", ops(&plan));
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

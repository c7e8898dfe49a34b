//! Desired state + snapshot → the changes that would make them agree. Pure: no I/O, no clock.
//!
//! Changes carry a [`Stage`]; `apply` runs the lowest stage present, observes again, and diffs
//! again, so every change is computed from fresh state (a revision registered by Hippo's
//! import on app creation is never registered a second time).
//!
//! Values of environment variables never appear in a plan's text or JSON: only their keys.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use serde::Serialize;
use uuid::Uuid;

use crate::{
    delivery::{Delivery, HeldBack, PendingPromotion, Resolved},
    hippo::types::{App, Channel, Strategy},
    observe::Snapshot,
    spec::{AppSpec, ChannelSpec, RevisionSource, Selector},
};

/// Order of application: a bindle is fully pushed before its app is created (Hippo checks the
/// storage id on Bindle) and before a revision of it is registered; channels come last because
/// they point at revisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Push,
    CreateApp,
    Register,
    Channels,
    /// Heal drift between Hippo and Nomad, through Hippo (it owns the job spec).
    Nomad,
}

/// A revision by number, with its Hippo id when it exists yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RevisionRef {
    pub number: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
}

/// What a channel should look like in Hippo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelTarget {
    /// `None` only on create: Hippo assigns its default domain.
    pub domain: Option<String>,
    pub strategy: Strategy,
    pub range_rule: Option<String>,
    /// For a range: the highest matching revision Hippo knows (`None`: none matches).
    pub active_revision: Option<RevisionRef>,
}

/// Environment keys that change; values are left out on purpose (they may be secrets).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EnvChange {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
}

/// The fields of a channel that a PUT must carry but the deploy file does not manage, as Hippo
/// has them: sent back unchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeptFields {
    pub last_publish_date: Option<String>,
    pub certificate_id: Option<Uuid>,
}

/// One change. Serialises as `{"action","kind","app","name",...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Op {
    #[serde(rename_all = "camelCase")]
    PushBindle {
        id: String,
        parcels: usize,
        bytes: u64,
        /// The invoice is on the server but parcels are missing (an interrupted push).
        resume: bool,
    },
    #[serde(rename_all = "camelCase")]
    CreateApp { storage_id: String },
    #[serde(rename_all = "camelCase")]
    RegisterRevision {
        storage_id: String,
        version: String,
        /// Found on the Bindle server by a `discover` range, not listed in the deploy file.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        discovered: bool,
    },
    #[serde(rename_all = "camelCase")]
    CreateChannel {
        channel: String,
        /// `None` while the app is still to be created (resolved when this stage runs).
        #[serde(skip)]
        app_id: Option<Uuid>,
        target: ChannelTarget,
        #[serde(skip)]
        env: BTreeMap<String, String>,
        env_keys: Vec<String>,
        /// A promote channel is created by its first promotion.
        #[serde(skip_serializing_if = "Option::is_none")]
        delivery: Option<Delivery>,
    },
    /// A PUT: the only channel write that makes Hippo redeploy.
    #[serde(rename_all = "camelCase")]
    UpdateChannel {
        channel: String,
        channel_id: Uuid,
        target: ChannelTarget,
        /// Fields that differ, as `field: from -> to`.
        fields: Vec<String>,
        /// Follow the PUT with `desired-status Running`: it changes what the channel runs,
        /// and without Nomad to verify on, nothing else makes sure Hippo starts the job
        /// (Hippo v0.19 starts none after a PUT while the channel's status was never set).
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        start_job: bool,
        /// What the PUT sends back unchanged: Hippo's PUT replaces the whole channel.
        #[serde(skip)]
        kept: KeptFields,
        /// A promotion or a rollback the controller decided (not the deploy file).
        #[serde(skip_serializing_if = "Option::is_none")]
        delivery: Option<Delivery>,
    },
    /// A PATCH of the environment (the whole set).
    #[serde(rename_all = "camelCase")]
    SetEnv {
        channel: String,
        channel_id: Uuid,
        #[serde(skip)]
        env: BTreeMap<String, String>,
        change: EnvChange,
    },
    #[serde(rename_all = "camelCase")]
    DeleteChannel { channel: String, channel_id: Uuid },
    /// `PUT /api/channels/{id}/desired-status` Running: Hippo (re)registers the channel's job.
    /// Used when Nomad lacks the job, stopped it, or runs a stale bindle.
    #[serde(rename_all = "camelCase")]
    ScheduleChannel {
        channel: String,
        channel_id: Uuid,
        reason: String,
        /// Set when Nomad still runs an older bindle than Hippo's active revision: this is the
        /// deploy of that revision (Hippo's PUT started no job), not a drift repair.
        #[serde(skip_serializing_if = "Option::is_none")]
        deploys: Option<String>,
    },
}

/// What a change does, as `plan` names it (`"action"` in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Push,
    Create,
    Register,
    Update,
    Delete,
}

/// What a change is made to (`"kind"` in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Bindle,
    App,
    Revision,
    Channel,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Push => "push",
            Action::Create => "create",
            Action::Register => "register",
            Action::Update => "update",
            Action::Delete => "delete",
        }
    }
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Bindle => "bindle",
            Kind::App => "app",
            Kind::Revision => "revision",
            Kind::Channel => "channel",
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One planned change for one app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub action: Action,
    pub kind: Kind,
    pub app: String,
    pub name: String,
    pub stage: Stage,
    #[serde(flatten)]
    pub op: Op,
}

impl Change {
    fn new(app: &str, stage: Stage, op: Op) -> Change {
        let (action, kind, name) = match &op {
            Op::PushBindle { id, .. } => (Action::Push, Kind::Bindle, id.clone()),
            Op::CreateApp { .. } => (Action::Create, Kind::App, app.to_string()),
            Op::RegisterRevision { version, .. } => {
                (Action::Register, Kind::Revision, version.clone())
            }
            Op::CreateChannel { channel, .. } => (Action::Create, Kind::Channel, channel.clone()),
            Op::UpdateChannel { channel, .. }
            | Op::SetEnv { channel, .. }
            | Op::ScheduleChannel { channel, .. } => {
                (Action::Update, Kind::Channel, channel.clone())
            }
            Op::DeleteChannel { channel, .. } => (Action::Delete, Kind::Channel, channel.clone()),
        };
        Change {
            action,
            kind,
            app: app.to_string(),
            name,
            stage,
            op,
        }
    }

    /// A stable identity, to notice a change that keeps coming back after being applied.
    pub fn key(&self) -> String {
        format!("{}/{}/{}/{}", self.app, self.kind, self.action, self.name)
    }

    /// One line for humans; no secret values.
    pub fn describe(&self) -> String {
        match &self.op {
            Op::PushBindle {
                id,
                parcels,
                bytes,
                resume,
            } => format!(
                "push bindle {id} ({parcels} parcel{}, {}){}",
                if *parcels == 1 { "" } else { "s" },
                human_bytes(*bytes),
                if *resume { ", resuming an interrupted push" } else { "" }
            ),
            Op::CreateApp { storage_id } => format!(
                "create app {} (storageId {storage_id}; Hippo imports the bindle's versions as revisions)",
                self.app
            ),
            Op::RegisterRevision {
                version,
                discovered: true,
                ..
            } => format!("register revision {version} (discovered on the Bindle server)"),
            Op::RegisterRevision { version, .. } => format!("register revision {version}"),
            Op::CreateChannel {
                channel,
                target,
                env_keys,
                delivery,
                ..
            } => {
                let mut parts = vec![match (&target.range_rule, &target.active_revision) {
                    (Some(r), _) if target.strategy == Strategy::UseRangeRule => {
                        format!("range {r}")
                    }
                    (_, Some(rev)) => format!("revision {}", rev.number),
                    _ => "no revision".to_string(),
                }];
                if let Some(d) = &target.domain {
                    parts.push(format!("domain {d}"));
                }
                if !env_keys.is_empty() {
                    parts.push(format!("env {}", env_keys.join(", ")));
                }
                format!(
                    "{}create channel {channel} ({})",
                    delivery_prefix(channel, delivery.as_ref()).unwrap_or_default(),
                    parts.join(", ")
                )
            }
            Op::UpdateChannel {
                channel,
                fields,
                start_job,
                delivery,
                ..
            } => format!(
                "{}{}{}",
                delivery_prefix(channel, delivery.as_ref())
                    .unwrap_or_else(|| format!("update channel {channel}: ")),
                fields.join("; "),
                if *start_job {
                    " (then desired-status Running, so that Hippo starts the job)"
                } else {
                    ""
                }
            ),
            Op::SetEnv {
                channel, change, ..
            } => {
                let mut parts = Vec::new();
                parts.extend(change.added.iter().map(|k| format!("+{k}")));
                parts.extend(change.changed.iter().map(|k| format!("~{k}")));
                parts.extend(change.removed.iter().map(|k| format!("-{k}")));
                format!("update channel {channel} env: {}", parts.join(" "))
            }
            Op::DeleteChannel { channel, .. } => {
                format!("delete channel {channel} (not in the deploy file; prune is on)")
            }
            Op::ScheduleChannel {
                channel,
                deploys: Some(bindle),
                reason,
                ..
            } => format!("deploy {bindle} to channel {channel} through Hippo ({reason})"),
            Op::ScheduleChannel {
                channel, reason, ..
            } => format!("reschedule channel {channel} through Hippo ({reason})"),
        }
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Why an app, or a part of it, cannot be converged as it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub message: String,
    /// Retrying later may help (the Bindle server was unreachable, say).
    pub transient: bool,
    /// A short machine-readable reason (`BindleConflict`, ...), for conditions and metrics.
    pub reason: &'static str,
    /// Only this revision is blocked: the changes that don't need it go ahead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Only this channel is blocked: it keeps what it runs, the others converge.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
}

impl Problem {
    /// Blocks every change of the app (not scoped to a revision or a channel).
    pub fn is_app_wide(&self) -> bool {
        self.revision.is_none() && self.channel.is_none()
    }
}

/// What a channel will run once the plan is applied, when that differs from what it runs
/// now: `production: 2.0.0 → 2.1.0 (range ^2.0)`. Registering a revision moves a range channel
/// too, which no channel write in the plan shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelMove {
    pub channel: String,
    pub from: Option<String>,
    pub to: Option<String>,
    /// `range ^2.0` or `revision 2.0.0`.
    pub rule: String,
}

impl ChannelMove {
    /// A move that takes a running channel to no revision: Hippo removes its job.
    pub fn is_destructive(&self) -> bool {
        self.from.is_some() && self.to.is_none()
    }
}

impl std::fmt::Display for ChannelMove {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "none".into());
        write!(
            f,
            "{}: {} → {} ({})",
            self.channel,
            show(&self.from),
            show(&self.to),
            self.rule
        )
    }
}

/// The plan for one app.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AppPlan {
    pub app: String,
    pub changes: Vec<Change>,
    /// An app-wide problem empties `changes`; a problem scoped to a revision or a channel
    /// removes only the changes that depend on it.
    pub problems: Vec<Problem>,
    /// Worth knowing, but not blocking.
    pub warnings: Vec<String>,
    /// What each channel will run once `changes` are applied, where that moves.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub moves: Vec<ChannelMove>,
    /// `spec.suspend`: nothing is planned or written.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub suspended: bool,
    /// Promotions waiting for their window: not changes (`plan`'s exit code ignores them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub promotions: Vec<PendingPromotion>,
    /// Channels a rollback record holds on an older revision.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<HeldBack>,
}

/// The plan for every app.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub apps: Vec<AppPlan>,
    /// Nomad jobs named like a Hippo channel GUID with no channel behind them.
    pub orphans: Vec<String>,
}

impl Plan {
    pub fn changes(&self) -> impl Iterator<Item = &Change> {
        self.apps.iter().flat_map(|a| a.changes.iter())
    }

    pub fn has_changes(&self) -> bool {
        self.changes().next().is_some()
    }

    pub fn has_problems(&self) -> bool {
        self.apps.iter().any(|a| !a.problems.is_empty())
    }
}

/// Computes the plan for `apps` against `snapshot`.
pub fn diff(apps: &[Arc<AppSpec>], snapshot: &Snapshot) -> Plan {
    Plan {
        apps: apps.iter().map(|a| diff_app(a, snapshot)).collect(),
        orphans: orphans(snapshot),
    }
}

/// The versions of the app's bindle on the server that a `discover` range selects: not yanked,
/// strictly semver, oldest first (the order Hippo is told of them).
pub fn discovered<'a>(spec: &AppSpec, server: &'a crate::bindles::BindleVersions) -> Vec<&'a str> {
    if spec.discover.is_empty() {
        return Vec::new();
    }
    let mut found: Vec<&str> = server
        .iter()
        .filter(|b| !b.yanked)
        .map(|b| b.version.as_str())
        .filter(|v| {
            spec.discover
                .iter()
                .any(|d| max_satisfying(&d.range, &[v]).is_some())
        })
        .collect();
    found.sort_by_key(|v| crate::range_rule::strict_version(v));
    found
}

/// Running Nomad jobs whose id is a GUID that no Hippo channel has (of any app: channels of
/// apps not in the deploy files are not orphans).
pub fn orphans(snapshot: &Snapshot) -> Vec<String> {
    let Some(Ok(nomad)) = &snapshot.nomad else {
        return Vec::new();
    };
    let channels: BTreeSet<String> = snapshot
        .channels()
        .iter()
        .map(|c| c.id.to_string())
        .collect();
    nomad
        .jobs
        .values()
        .filter(|j| !j.stop && Uuid::parse_str(&j.id).is_ok() && !channels.contains(&j.id))
        .map(|j| j.id.clone())
        .collect()
}

fn problem(reason: &'static str, transient: bool, message: impl Into<String>) -> Problem {
    Problem {
        message: message.into(),
        transient,
        reason,
        revision: None,
        channel: None,
    }
}

/// A problem with one revision: the channels that don't run it go on.
fn revision_problem(
    version: &str,
    reason: &'static str,
    transient: bool,
    message: impl Into<String>,
) -> Problem {
    Problem {
        revision: Some(version.to_string()),
        ..problem(reason, transient, message)
    }
}

/// Computes the plan for one app.
pub fn diff_app(spec: &AppSpec, snapshot: &Snapshot) -> AppPlan {
    let mut plan = AppPlan {
        app: spec.name.clone(),
        ..Default::default()
    };
    if spec.suspend {
        plan.suspended = true;
        return plan;
    }
    let hippo_app = snapshot.app(&spec.name);
    if let Some(app) = hippo_app {
        if app.storage_id != spec.storage_id {
            plan.problems.push(problem(
                "StorageIdMismatch",
                false,
                format!(
                    "app {} exists in Hippo with storageId {:?}, not {:?}; Hippo cannot change an app's storageId (delete the app or use another name)",
                    spec.name, app.storage_id, spec.storage_id
                ),
            ));
            return plan;
        }
    }

    // Bindles
    let server = match snapshot.bindles.get(&spec.storage_id) {
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            plan.problems.push(problem(
                "BindleUnavailable",
                e.transient,
                format!(
                    "reading bindle {} from the Bindle server: {}",
                    spec.storage_id, e.message
                ),
            ));
            return plan;
        }
        None => {
            plan.problems.push(problem(
                "BindleUnavailable",
                true,
                format!("bindle {} was not observed", spec.storage_id),
            ));
            return plan;
        }
    };
    let mut pushes = Vec::new();
    for rev in &spec.revisions {
        let id = format!("{}/{}", spec.storage_id, rev.version);
        let missing = || snapshot.missing.get(&id);
        let problem = |reason, transient, message: String| {
            revision_problem(&rev.version, reason, transient, message)
        };
        match (&rev.source, server.get(&rev.version)) {
            (_, Some(b)) if b.yanked => plan.problems.push(problem(
                "BindleYanked",
                false,
                format!("bindle {id} is yanked on the Bindle server; use a new version"),
            )),
            // Transient: another pipeline may still be pushing it (the usual order is push,
            // then commit the version), so the controller retries with backoff.
            (RevisionSource::Existing, None) => plan.problems.push(problem(
                "BindleMissing",
                true,
                format!("bindle {id} is not on the Bindle server (a `version:` revision is checked, never pushed; use `path:` to push it)"),
            )),
            (RevisionSource::Existing, Some(_)) => match missing() {
                Some(Ok(n)) if *n > 0 => plan.problems.push(problem(
                    "BindleIncomplete",
                    false,
                    format!("bindle {id} on the Bindle server is missing parcels; push it completely first"),
                )),
                Some(Err(e)) => plan.problems.push(problem("BindleUnavailable", e.transient, e.message.clone())),
                _ => {}
            },
            (RevisionSource::Local(local), None) => pushes.push(Op::PushBindle {
                id: id.clone(),
                parcels: local.parcel_count,
                bytes: local.total_bytes,
                resume: false,
            }),
            (RevisionSource::Local(local), Some(b)) => {
                if !local.same_parcels(&b.parcels) {
                    plan.problems.push(problem(
                        "BindleConflict",
                        false,
                        format!("bindle {id} already exists on the Bindle server with different content; bindles are immutable: bump the version in {}", local.dir.display()),
                    ));
                } else {
                    match missing() {
                        Some(Ok(n)) if *n > 0 => pushes.push(Op::PushBindle {
                            id: id.clone(),
                            parcels: local.parcel_count,
                            bytes: local.total_bytes,
                            resume: true,
                        }),
                        Some(Err(e)) => plan.problems.push(problem(
                            "BindleUnavailable",
                            e.transient,
                            e.message.clone(),
                        )),
                        _ => {}
                    }
                }
            }
        }
    }
    // Versions with a problem are neither pushed nor registered; what doesn't need them goes on.
    let broken: BTreeSet<String> = plan
        .problems
        .iter()
        .filter_map(|p| p.revision.clone())
        .collect();
    // Creating the app would import every version on the server, the broken one too: nothing is
    // done for an app Hippo doesn't have until every revision is sound.
    if !plan.problems.is_empty() && hippo_app.is_none() {
        return plan;
    }
    // Hippo creates an app only when its storage id names a bindle on the Bindle server
    // (HIPPO-API.md §13): with none there and none to push, creating it would fail.
    if hippo_app.is_none() && server.is_empty() && pushes.is_empty() {
        plan.problems.push(problem(
            "StorageIdNotOnBindle",
            true,
            format!(
                "app {} cannot be created yet: Hippo requires a bindle named {:?} on the Bindle server, and there is none and none to push (add a `path:` revision, or push one first)",
                spec.name, spec.storage_id
            ),
        ));
        return plan;
    }
    // Creating the app imports every version on the server, complete or not: a discovered
    // version still being pushed would be registered before it is complete.
    if hippo_app.is_none() {
        let listed: BTreeSet<&str> = spec.revisions.iter().map(|r| r.version.as_str()).collect();
        let incomplete: Vec<&str> = discovered(spec, server)
            .into_iter()
            .filter(|v| !listed.contains(v))
            .filter(|v| {
                !matches!(
                    snapshot.missing.get(&format!("{}/{v}", spec.storage_id)),
                    Some(Ok(0))
                )
            })
            .collect();
        if !incomplete.is_empty() {
            // Transient: CI is still pushing; retried with backoff.
            plan.problems.push(problem(
                "BindleIncomplete",
                true,
                format!(
                    "app {} cannot be created yet: bindle(s) {} match a discover range but are not complete on the Bindle server, and Hippo would import them as they are; it is created once they are complete",
                    spec.name,
                    incomplete
                        .iter()
                        .map(|v| format!("{}/{v}", spec.storage_id))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
            return plan;
        }
    }
    for op in pushes {
        plan.changes.push(Change::new(&spec.name, Stage::Push, op));
    }

    let Some(app) = hippo_app else {
        plan.changes.push(Change::new(
            &spec.name,
            Stage::CreateApp,
            Op::CreateApp {
                storage_id: spec.storage_id.clone(),
            },
        ));
        // Channels are planned against an app that has the desired revisions (imported on
        // create); their revision ids are resolved after it exists.
        let versions: Vec<&str> = spec.revisions.iter().map(|r| r.version.as_str()).collect();
        for ch in &spec.channels {
            // Hippo creates no `UseSpecifiedRevision` channel without a revision: a promote
            // channel is created by its first promotion.
            if matches!(ch.selector, Selector::Promote(_)) {
                continue;
            }
            push_move(&mut plan, ch, None, eventual_revision(ch, &versions));
            let target = channel_target(ch, None, &[]);
            plan.changes
                .push(create_channel(&spec.name, None, ch, target, None));
        }
        return plan;
    };

    // Revisions
    let revisions: Vec<&crate::hippo::types::Revision> = snapshot.revisions_of(app).collect();
    let mut numbers = BTreeMap::<&str, usize>::new();
    for r in &revisions {
        *numbers.entry(r.revision_number.as_str()).or_default() += 1;
    }
    for (number, count) in &numbers {
        if *count > 1 {
            plan.warnings.push(format!(
                "Hippo holds revision {number} {count} times for app {}; Hippo's range evaluation fails for this app until the duplicates are deleted (DELETE /api/revisions/<id>)",
                spec.name
            ));
        }
    }
    // What to register: the deploy file's revisions, then what `discover` finds on the Bindle
    // server (complete, not yanked, in range), oldest first.
    let listed: BTreeSet<&str> = spec.revisions.iter().map(|r| r.version.as_str()).collect();
    let mut wanted: Vec<(&str, bool)> = spec
        .revisions
        .iter()
        .map(|r| (r.version.as_str(), false))
        .collect();
    for found in discovered(spec, server) {
        if listed.contains(found) || numbers.contains_key(found) {
            continue;
        }
        match snapshot.missing.get(&format!("{}/{found}", spec.storage_id)) {
            Some(Ok(0)) => wanted.push((found, true)),
            // Still being pushed (or not checked yet): registered once complete.
            Some(Ok(_)) | None => plan.warnings.push(format!(
                "bindle {}/{found} matches a discover range but is not complete on the Bindle server yet; it is registered once it is",
                spec.storage_id
            )),
            Some(Err(e)) => plan.problems.push(revision_problem(
                found,
                "BindleUnavailable",
                e.transient,
                e.message.clone(),
            )),
        }
    }
    for (version, discovered) in wanted {
        if numbers.contains_key(version) || broken.contains(version) {
            continue;
        }
        // Hippo registers for EVERY app with this storage id: if another already has it,
        // registering again would duplicate it there.
        let holders: Vec<&str> = snapshot
            .apps_with_storage_id(&spec.storage_id)
            .filter(|a| a.id != app.id)
            .filter(|a| {
                snapshot
                    .revisions_of(a)
                    .any(|r| r.revision_number == version)
            })
            .map(|a| a.name.as_str())
            .collect();
        if !holders.is_empty() {
            plan.problems.push(revision_problem(
                version,
                "SharedStorageId",
                false,
                format!(
                    "revision {} is missing for app {} but app(s) {} with the same storageId {} already have it; Hippo registers a revision for every app with that storageId, so registering it would duplicate it there",
                    version, spec.name, holders.join(", "), spec.storage_id
                ),
            ));
            continue;
        }
        plan.changes.push(Change::new(
            &spec.name,
            Stage::Register,
            Op::RegisterRevision {
                storage_id: spec.storage_id.clone(),
                version: version.to_string(),
                discovered,
            },
        ));
    }
    if plan.problems.iter().any(Problem::is_app_wide) {
        plan.changes.clear();
        return plan;
    }

    // Channels
    let hippo_channels: Vec<&Channel> = snapshot.channels_of(app).collect();
    let known: Vec<(&str, Uuid)> = revisions
        .iter()
        .map(|r| (r.revision_number.as_str(), r.id))
        .collect();
    // What Hippo will hold once this plan's registrations are made: a range channel moves by
    // Hippo's own rule when they are.
    let registering: Vec<String> = plan
        .changes
        .iter()
        .filter_map(|c| match &c.op {
            Op::RegisterRevision { version, .. } => Some(version.clone()),
            _ => None,
        })
        .collect();
    let eventual_numbers: Vec<&str> = known
        .iter()
        .map(|(n, _)| *n)
        .chain(registering.iter().map(String::as_str))
        .collect();
    let view = crate::delivery::ChannelView {
        spec,
        channels: &hippo_channels,
        numbers: &eventual_numbers,
        snapshot,
    };
    for written in &spec.channels {
        if let Selector::Revision(v) = &written.selector {
            if broken.contains(v) {
                // Pinned to a revision with a problem: it keeps what it runs (the revision's
                // problem says why).
                continue;
            }
        }
        // What promotion and rollback set the channel to this round; the rule as written is
        // still what moves and messages show.
        let (pinned, delivery) = match crate::delivery::resolve(&view, written, &mut plan) {
            Resolved::AsWritten => (None, None),
            Resolved::Pin(revision, delivery) => (Some(revision), delivery),
            Resolved::Skip => continue,
        };
        let ch = &match &pinned {
            Some(Some(v)) => ChannelSpec {
                selector: Selector::Revision(v.clone()),
                ..written.clone()
            },
            // Only a promote channel is pinned to nothing (none promoted yet): its target
            // has no revision.
            Some(None) | None => written.clone(),
        };
        let eventual = eventual_revision(ch, &eventual_numbers);
        let target = channel_target(ch, Some(app), &known);
        match hippo_channels.iter().find(|c| c.name == ch.name) {
            // A promote channel with nothing promoted yet: Hippo creates no
            // `UseSpecifiedRevision` channel without a revision, so its first promotion does.
            None if pinned == Some(None) => {}
            None => {
                push_move(&mut plan, written, None, eventual);
                plan.changes.push(create_channel(
                    &spec.name,
                    Some(app.id),
                    ch,
                    target,
                    delivery.clone(),
                ))
            }
            Some(current) => {
                let running = current
                    .active_revision
                    .as_ref()
                    .map(|r| r.revision_number.clone());
                if running.is_some() && eventual.is_none() && !ch.allow_empty {
                    plan.problems.push(Problem {
                        channel: Some(ch.name.clone()),
                        ..problem(
                            "NoMatchingRevision",
                            false,
                            format!(
                                "channel {}: {} selects no revision of app {}, which would leave the channel without one and remove its Nomad job; refused, it keeps running {} (set `allowEmpty: true` on the channel to allow it)",
                                ch.name,
                                selector_text(&ch.selector),
                                spec.name,
                                running.as_deref().unwrap_or_default()
                            ),
                        )
                    });
                    continue;
                }
                push_move(&mut plan, written, running, eventual);
                let fields = channel_fields(current, &target);
                if !fields.is_empty() {
                    let mut target = target;
                    // Hippo's PUT requires the domain: keep the one it assigned.
                    target.domain = target.domain.or_else(|| current.domain.clone());
                    let redeploys = target.active_revision.as_ref().and_then(|r| r.id)
                        != current.active_revision.as_ref().map(|r| r.id)
                        || target.domain != current.domain;
                    let start_job = snapshot.nomad.is_none() && redeploys;
                    plan.changes.push(Change::new(
                        &spec.name,
                        Stage::Channels,
                        Op::UpdateChannel {
                            channel: ch.name.clone(),
                            channel_id: current.id,
                            target,
                            fields,
                            start_job,
                            kept: KeptFields {
                                last_publish_date: current.last_publish_at.clone(),
                                certificate_id: current.certificate.as_ref().map(|c| c.id),
                            },
                            delivery: delivery.clone(),
                        },
                    ));
                }
                let change = env_change(current, &ch.env);
                if change != EnvChange::default() {
                    plan.changes.push(Change::new(
                        &spec.name,
                        Stage::Channels,
                        Op::SetEnv {
                            channel: ch.name.clone(),
                            channel_id: current.id,
                            env: ch.env.clone(),
                            change,
                        },
                    ));
                }
            }
        }
    }
    nomad_checks(spec, &hippo_channels, snapshot, &mut plan);
    if spec.prune {
        let wanted: BTreeSet<&str> = spec.channels.iter().map(|c| c.name.as_str()).collect();
        for c in hippo_channels {
            if !wanted.contains(c.name.as_str()) {
                plan.changes.push(Change::new(
                    &spec.name,
                    Stage::Channels,
                    Op::DeleteChannel {
                        channel: c.name.clone(),
                        channel_id: c.id,
                    },
                ));
            }
        }
    }
    plan
}

/// Drift between what Hippo says a channel runs and what Nomad runs. Channels with a Hippo
/// change still planned are left for the next round.
fn nomad_checks(
    spec: &AppSpec,
    hippo_channels: &[&Channel],
    snapshot: &Snapshot,
    plan: &mut AppPlan,
) {
    let Some(Ok(nomad)) = &snapshot.nomad else {
        return;
    };
    let pending: BTreeSet<String> = plan.changes.iter().map(|c| c.name.clone()).collect();
    for ch in &spec.channels {
        let Some(current) = hippo_channels.iter().find(|c| c.name == ch.name) else {
            continue;
        };
        if pending.contains(&ch.name) {
            continue;
        }
        let Some(active) = &current.active_revision else {
            continue;
        };
        let id = current.id.to_string();
        let expected = format!("{}/{}", spec.storage_id, active.revision_number);
        let mut deploys = None;
        let reason = match (nomad.jobs.get(&id), nomad.details.get(&id)) {
            (None, _) => Some("its Nomad job is missing".to_string()),
            (Some(stub), _) if stub.stop => Some("its Nomad job is stopped".to_string()),
            (Some(_), Some(job)) => match job.bindle_arg() {
                Some(running) if running != expected.as_str() => {
                    deploys = Some(expected.clone());
                    Some(format!(
                        "its Nomad job runs {running}, Hippo's active revision is {expected}"
                    ))
                }
                _ => None,
            },
            (Some(_), None) => None,
        };
        if let Some(reason) = reason {
            plan.changes.push(Change::new(
                &spec.name,
                Stage::Nomad,
                Op::ScheduleChannel {
                    channel: ch.name.clone(),
                    channel_id: current.id,
                    reason,
                    deploys,
                },
            ));
            continue;
        }
        if let Some(job) = nomad.details.get(&id).filter(|j| j.env.is_some()) {
            // Hippo sets RUST_LOG itself, so a key can be there with Hippo's value, not ours.
            let absent: Vec<&str> = ch
                .env
                .iter()
                .filter(|(k, v)| job.env_var(k) != Some(v.as_str()))
                .map(|(k, _)| k.as_str())
                .collect();
            if !absent.is_empty() {
                plan.warnings.push(format!(
                    "channel {}: environment variable(s) {} are set in Hippo but not in the Nomad task's Env with that value: Hippo v0.9–v0.20 does not pass channel environment variables to Nomad (not something hippo-gitops can fix)",
                    ch.name,
                    absent.join(", ")
                ));
            }
        }
    }
}

/// How a channel's Nomad job is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "camelCase")]
pub enum ChannelHealth {
    /// Every allocation of the job's current version is running and healthy.
    Ready {
        healthy: u32,
        total: u32,
        version: u64,
    },
    /// Still rolling out, or not scheduled yet.
    Progressing { message: String },
    /// An allocation of the current version failed.
    Failed { message: String },
    /// Hippo has no active revision for the channel: nothing should run.
    Idle,
}

/// The health of `channel` on Nomad, given what it should run (`<storageId>/<revision>`).
pub fn channel_health(
    nomad: &crate::observe::NomadState,
    channel: &Channel,
    expected: &str,
) -> ChannelHealth {
    if channel.active_revision.is_none() {
        return ChannelHealth::Idle;
    }
    let id = channel.id.to_string();
    let progressing = |message: String| ChannelHealth::Progressing { message };
    let Some(stub) = nomad.jobs.get(&id) else {
        return progressing("no Nomad job yet".into());
    };
    if stub.stop {
        return progressing("the Nomad job is stopped".into());
    }
    let Some(job) = nomad.details.get(&id) else {
        return progressing("the Nomad job was not read yet".into());
    };
    match job.bindle_arg() {
        Some(b) if b == expected => {}
        other => {
            return progressing(format!(
                "the Nomad job runs {}, waiting for {expected}",
                other.unwrap_or("no bindle")
            ))
        }
    }
    let current: Vec<&crate::nomad::Allocation> = nomad
        .allocations_of(&id)
        .filter(|a| a.job_version == job.version && a.desired_status == "run")
        .collect();
    if let Some(failed) = current.iter().find(|a| a.is_failed()) {
        let short = failed.id.get(..8).unwrap_or(&failed.id);
        let events = failed.last_events(3).join("; ");
        let message = if failed.deployment_health() == Some(false)
            && !matches!(failed.client_status.as_str(), "failed" | "lost")
        {
            format!(
                "allocation {short} of job version {} was marked unhealthy by Nomad's deployment (it did not pass its checks within healthy_deadline){}",
                job.version,
                if events.is_empty() { String::new() } else { format!(": {events}") }
            )
        } else {
            format!(
                "allocation {short} of job version {} failed: {events}",
                job.version
            )
        };
        return ChannelHealth::Failed { message };
    }
    let total = job.desired_count;
    let healthy = current.iter().filter(|a| a.is_healthy()).count() as u32;
    if healthy >= total && total > 0 {
        ChannelHealth::Ready {
            healthy,
            total,
            version: job.version,
        }
    } else {
        let undecided = current.iter().filter(|a| a.is_health_undecided()).count();
        let states: Vec<&str> = current.iter().map(|a| a.client_status.as_str()).collect();
        progressing(format!(
            "{healthy}/{total} allocation(s) healthy{}{}",
            if states.is_empty() {
                " (none placed yet)".to_string()
            } else {
                format!(" ({})", states.join(", "))
            },
            if undecided > 0 {
                format!("; {undecided} running, health not decided yet by Nomad's deployment (min_healthy_time)")
            } else {
                String::new()
            }
        ))
    }
}

/// The revision a channel will run once every desired revision is registered.
fn eventual_revision(ch: &ChannelSpec, numbers: &[&str]) -> Option<String> {
    match &ch.selector {
        Selector::Range(range) => max_satisfying(range, numbers).map(String::from),
        Selector::Revision(v) => Some(v.clone()),
        Selector::Promote(_) => None,
    }
}

use crate::delivery::rule_text as selector_text;

/// Records what the channel will run, when that differs from what it runs.
fn push_move(plan: &mut AppPlan, ch: &ChannelSpec, from: Option<String>, to: Option<String>) {
    if from != to {
        plan.moves.push(ChannelMove {
            channel: ch.name.clone(),
            from,
            to,
            rule: selector_text(&ch.selector),
        });
    }
}

fn create_channel(
    app: &str,
    app_id: Option<Uuid>,
    ch: &ChannelSpec,
    target: ChannelTarget,
    delivery: Option<Delivery>,
) -> Change {
    Change::new(
        app,
        Stage::Channels,
        Op::CreateChannel {
            channel: ch.name.clone(),
            app_id,
            target,
            env: ch.env.clone(),
            env_keys: ch.env.keys().cloned().collect(),
            delivery,
        },
    )
}

/// How a promotion or a rollback introduces the change it makes to `channel`.
fn delivery_prefix(channel: &str, delivery: Option<&Delivery>) -> Option<String> {
    Some(match delivery? {
        Delivery::Promote {
            from,
            revision,
            healthy_for_ms,
        } => format!(
            "promote {revision} to channel {channel} ({from} has run it healthy for {}): ",
            crate::delivery::human_duration(*healthy_for_ms)
        ),
        Delivery::Rollback(r) => format!(
            "roll back channel {channel} from {} to {} ({} failed on Nomad: {}): ",
            r.failed, r.to, r.failed, r.reason
        ),
    })
}

/// The target state of a channel. `app` is `None` while the app does not exist yet; then
/// revision ids are unknown and a range's match is left to Hippo.
fn channel_target(ch: &ChannelSpec, app: Option<&App>, known: &[(&str, Uuid)]) -> ChannelTarget {
    let lookup = |number: &str| known.iter().find(|(n, _)| *n == number).map(|(_, id)| *id);
    match &ch.selector {
        Selector::Range(range) => ChannelTarget {
            domain: ch.domain.clone(),
            strategy: Strategy::UseRangeRule,
            range_rule: Some(range.clone()),
            active_revision: app.and_then(|_| {
                let numbers: Vec<&str> = known.iter().map(|(n, _)| *n).collect();
                max_satisfying(range, &numbers).map(|n| RevisionRef {
                    number: n.to_string(),
                    id: lookup(n),
                })
            }),
        },
        Selector::Revision(v) => ChannelTarget {
            domain: ch.domain.clone(),
            strategy: Strategy::UseSpecifiedRevision,
            range_rule: None,
            active_revision: Some(RevisionRef {
                number: v.clone(),
                id: lookup(v),
            }),
        },
        Selector::Promote(_) => ChannelTarget {
            domain: ch.domain.clone(),
            strategy: Strategy::UseSpecifiedRevision,
            range_rule: None,
            active_revision: None,
        },
    }
}

/// Which fields of an existing channel differ from the target, as `field: from -> to`.
fn channel_fields(current: &Channel, target: &ChannelTarget) -> Vec<String> {
    let mut out = Vec::new();
    let show = |o: Option<&str>| o.unwrap_or("none").to_string();
    if current.revision_selection_strategy != target.strategy {
        out.push(format!(
            "strategy: {:?} -> {:?}",
            current.revision_selection_strategy, target.strategy
        ));
    }
    if target.strategy == Strategy::UseRangeRule && current.range_rule != target.range_rule {
        out.push(format!(
            "range: {} -> {}",
            show(current.range_rule.as_deref()),
            show(target.range_rule.as_deref())
        ));
    }
    let current_rev = current
        .active_revision
        .as_ref()
        .map(|r| r.revision_number.as_str());
    let target_rev = target.active_revision.as_ref().map(|r| r.number.as_str());
    if current_rev != target_rev {
        out.push(format!(
            "revision: {} -> {}",
            show(current_rev),
            show(target_rev)
        ));
    }
    if let Some(d) = &target.domain {
        if current.domain.as_deref() != Some(d) {
            out.push(format!(
                "domain: {} -> {d}",
                show(current.domain.as_deref())
            ));
        }
    }
    out
}

fn env_change(current: &Channel, desired: &BTreeMap<String, String>) -> EnvChange {
    let have: BTreeMap<&str, &str> = current
        .environment_variables
        .iter()
        .map(|e| (e.key.as_str(), e.value.as_str()))
        .collect();
    let mut change = EnvChange::default();
    for (k, v) in desired {
        match have.get(k.as_str()) {
            None => change.added.push(k.clone()),
            Some(old) if old != v => change.changed.push(k.clone()),
            Some(_) => {}
        }
    }
    for k in have.keys() {
        if !desired.contains_key(*k) {
            change.removed.push(k.to_string());
        }
    }
    change
}

pub use crate::range_rule::max_satisfying;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{
        bindles::{BindleVersions, ServerBindle},
        hippo::types::{EnvVar, Revision},
        nomad::JobFacts,
        observe::PartialFailure,
        package::{LocalBindle, ParcelSet},
        spec::{Origin, RevisionSpec},
    };
    use std::sync::Arc;

    pub(crate) fn uuid(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn local(name: &str, version: &str, shas: &[&str]) -> LocalBindle {
        LocalBindle {
            id: bindle::Id::try_from(format!("{name}/{version}")).unwrap(),
            parcels: ParcelSet::of(shas.iter().copied()),
            parcel_count: shas.len(),
            total_bytes: 10 * shas.len() as u64,
            dir: "apps/x".into(),
        }
    }

    pub(crate) fn app_spec(revisions: Vec<RevisionSpec>, channels: Vec<ChannelSpec>) -> AppSpec {
        AppSpec {
            name: "weather".into(),
            storage_id: "weather".into(),
            revisions,
            discover: Vec::new(),
            channels,
            prune: false,
            suspend: false,
            origin: Origin {
                file: "w.yaml".into(),
                line: 1,
            },
        }
    }

    pub(crate) fn existing(v: &str) -> RevisionSpec {
        RevisionSpec {
            version: v.into(),
            source: RevisionSource::Existing,
        }
    }

    fn pushed(v: &str, shas: &[&str]) -> RevisionSpec {
        RevisionSpec {
            version: v.into(),
            source: RevisionSource::Local(std::sync::Arc::new(local("weather", v, shas))),
        }
    }

    pub(crate) fn range_channel(name: &str, range: &str) -> ChannelSpec {
        ChannelSpec {
            name: name.into(),
            selector: Selector::Range(range.into()),
            domain: None,
            env: BTreeMap::new(),
            allow_empty: false,
            rollback: false,
        }
    }

    fn pinned_channel(name: &str, v: &str) -> ChannelSpec {
        ChannelSpec {
            name: name.into(),
            selector: Selector::Revision(v.into()),
            domain: None,
            env: BTreeMap::new(),
            allow_empty: false,
            rollback: false,
        }
    }

    fn server(versions: &[(&str, &[&str])]) -> Arc<BindleVersions> {
        Arc::new(
            versions
                .iter()
                .map(|(v, shas)| ServerBindle {
                    version: v.to_string(),
                    parcels: ParcelSet::of(shas.iter().copied()),
                    yanked: false,
                })
                .collect(),
        )
    }

    pub(crate) fn rev(id: u128, number: &str) -> Revision {
        Revision {
            id: uuid(id),
            app_id: uuid(1),
            revision_number: number.into(),
        }
    }

    pub(crate) fn channel(
        id: u128,
        name: &str,
        strategy: Strategy,
        range: Option<&str>,
        active: Option<Revision>,
    ) -> Channel {
        Channel {
            id: uuid(id),
            app_id: uuid(1),
            name: name.into(),
            domain: Some(format!("{name}.weather.hippofactory.io")),
            revision_selection_strategy: strategy,
            active_revision: active,
            last_publish_at: None,
            range_rule: range.map(String::from),
            certificate: None,
            environment_variables: vec![],
        }
    }

    /// App `weather` (id 1, storageId `weather`) in Hippo.
    pub(crate) fn weather_app() -> App {
        App {
            id: uuid(1),
            name: "weather".into(),
            storage_id: "weather".into(),
        }
    }

    /// Hippo with app `weather` holding revisions 1.0.0 (id 10) and 1.1.0 (id 11), a range
    /// channel `production` on ^1.0 at 1.1.0 and a pinned `canary` at 1.0.0.
    fn converged() -> (AppSpec, Snapshot) {
        let spec = app_spec(
            vec![existing("1.0.0"), pushed("1.1.0", &["a", "b"])],
            vec![
                range_channel("production", "^1.0"),
                pinned_channel("canary", "1.0.0"),
            ],
        );
        let mut snapshot = Snapshot::new(
            vec![App {
                id: uuid(1),
                name: "weather".into(),
                storage_id: "weather".into(),
            }],
            vec![
                channel(
                    20,
                    "production",
                    Strategy::UseRangeRule,
                    Some("^1.0"),
                    Some(rev(11, "1.1.0")),
                ),
                channel(
                    21,
                    "canary",
                    Strategy::UseSpecifiedRevision,
                    None,
                    Some(rev(10, "1.0.0")),
                ),
            ],
            vec![rev(10, "1.0.0"), rev(11, "1.1.0")],
        );
        snapshot.bindles = [(
            "weather".to_string(),
            Ok(server(&[("1.0.0", &["z"]), ("1.1.0", &["a", "b"])])),
        )]
        .into();
        (spec, snapshot)
    }

    pub(crate) fn ops(plan: &AppPlan) -> Vec<String> {
        plan.changes.iter().map(|c| c.describe()).collect()
    }

    #[test]
    fn converged_state_plans_nothing() {
        let (spec, snapshot) = converged();
        let plan = diff_app(&spec, &snapshot);
        assert_eq!(plan.changes, vec![]);
        assert!(plan.problems.is_empty() && plan.warnings.is_empty());
    }

    #[test]
    fn empty_hippo_plans_push_create_and_channels_in_stage_order() {
        let (spec, mut snapshot) = converged();
        snapshot.hippo_mut().apps.clear();
        snapshot.hippo_mut().channels.clear();
        snapshot.hippo_mut().revisions.clear();
        snapshot.bindles = [("weather".to_string(), Ok(server(&[("1.0.0", &["z"])])))].into();
        let plan = diff_app(&spec, &snapshot);
        let kinds: Vec<(Action, Kind, Stage)> = plan
            .changes
            .iter()
            .map(|c| (c.action, c.kind, c.stage))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (Action::Push, Kind::Bindle, Stage::Push),
                (Action::Create, Kind::App, Stage::CreateApp),
                (Action::Create, Kind::Channel, Stage::Channels),
                (Action::Create, Kind::Channel, Stage::Channels),
            ]
        );
        // No registration is planned: Hippo imports the bindle's versions on create.
        assert!(!plan.changes.iter().any(|c| c.kind == Kind::Revision));
        let json = serde_json::to_value(&plan.changes[0]).unwrap();
        assert_eq!(json["action"], "push");
        assert_eq!(json["kind"], "bindle");
        assert_eq!(json["app"], "weather");
        assert_eq!(json["name"], "weather/1.1.0");
    }

    #[test]
    fn changed_range_is_exactly_one_channel_update() {
        let (mut spec, snapshot) = converged();
        spec.channels[0] = range_channel("production", "~1.0.0");
        let plan = diff_app(&spec, &snapshot);
        assert_eq!(plan.changes.len(), 1, "{:?}", ops(&plan));
        let c = &plan.changes[0];
        assert_eq!(
            (c.action, c.kind, c.name.as_str()),
            (Action::Update, Kind::Channel, "production")
        );
        let Op::UpdateChannel { target, fields, .. } = &c.op else {
            panic!("{c:?}")
        };
        assert_eq!(target.range_rule.as_deref(), Some("~1.0.0"));
        // ~1.0.0 matches only 1.0.0: the PUT sets it (Hippo's PUT stores the id as given).
        assert_eq!(
            target.active_revision,
            Some(RevisionRef {
                number: "1.0.0".into(),
                id: Some(uuid(10))
            })
        );
        assert_eq!(
            fields,
            &vec![
                "range: ^1.0 -> ~1.0.0".to_string(),
                "revision: 1.1.0 -> 1.0.0".to_string()
            ]
        );
        // The domain Hippo assigned is sent back (PUT requires it).
        assert_eq!(
            target.domain.as_deref(),
            Some("production.weather.hippofactory.io")
        );
    }

    #[test]
    fn range_channel_left_on_a_lower_revision_is_moved_up() {
        let (spec, mut snapshot) = converged();
        snapshot.hippo_mut().channels[0].active_revision = Some(rev(10, "1.0.0"));
        let plan = diff_app(&spec, &snapshot);
        assert_eq!(
            ops(&plan),
            vec!["update channel production: revision: 1.0.0 -> 1.1.0 (then desired-status Running, so that Hippo starts the job)"]
        );
    }

    #[test]
    fn pinned_channel_moves_with_the_resolved_revision_id() {
        let (mut spec, snapshot) = converged();
        spec.channels[1] = pinned_channel("canary", "1.1.0");
        let plan = diff_app(&spec, &snapshot);
        let Op::UpdateChannel { target, .. } = &plan.changes[0].op else {
            panic!()
        };
        assert_eq!(target.strategy, Strategy::UseSpecifiedRevision);
        assert_eq!(target.active_revision.as_ref().unwrap().id, Some(uuid(11)));
    }

    #[test]
    fn env_is_replaced_as_a_set_and_values_never_show() {
        let (mut spec, mut snapshot) = converged();
        snapshot.hippo_mut().channels[0].environment_variables = vec![
            EnvVar {
                key: "OLD".into(),
                value: "x".into(),
            },
            EnvVar {
                key: "KEEP".into(),
                value: "same".into(),
            },
            EnvVar {
                key: "TOKEN".into(),
                value: "old-secret".into(),
            },
        ];
        spec.channels[0].env = [
            ("KEEP".to_string(), "same".to_string()),
            ("TOKEN".to_string(), "new-secret".to_string()),
            ("NEW".to_string(), "n".to_string()),
        ]
        .into();
        let plan = diff_app(&spec, &snapshot);
        assert_eq!(
            ops(&plan),
            vec!["update channel production env: +NEW ~TOKEN -OLD"]
        );
        let json = serde_json::to_string(&plan.changes).unwrap();
        assert!(!json.contains("secret"), "{json}");
        assert!(!plan.changes[0].describe().contains("secret"));
        // Env alone is a PATCH, not a PUT.
        assert!(matches!(plan.changes[0].op, Op::SetEnv { .. }));
    }

    #[test]
    fn prune_deletes_only_unlisted_channels_and_only_when_asked() {
        let (mut spec, mut snapshot) = converged();
        snapshot.hippo_mut().channels.push(channel(
            22,
            "old",
            Strategy::UseRangeRule,
            Some("*"),
            None,
        ));
        assert!(diff_app(&spec, &snapshot).changes.is_empty());
        spec.prune = true;
        let plan = diff_app(&spec, &snapshot);
        assert_eq!(plan.changes.len(), 1);
        assert_eq!(
            (plan.changes[0].action, plan.changes[0].name.as_str()),
            (Action::Delete, "old")
        );
    }

    /// The Bindle server holds `weather/<version>` with these parcels.
    pub(crate) fn on_server(snapshot: &mut Snapshot, version: &str, shas: &[&str]) {
        let versions = snapshot
            .bindles
            .get_mut("weather")
            .unwrap()
            .as_mut()
            .unwrap();
        Arc::make_mut(versions).insert(ServerBindle {
            version: version.into(),
            yanked: false,
            parcels: ParcelSet::of(shas.iter().copied()),
        });
    }

    #[test]
    fn a_rule_that_selects_nothing_never_empties_a_running_channel() {
        let (mut spec, snapshot) = converged();
        spec.channels[0] = range_channel("production", "^3.0");
        spec.channels[1] = pinned_channel("canary", "1.1.0");
        let plan = diff_app(&spec, &snapshot);
        assert_eq!(plan.problems.len(), 1);
        let p = &plan.problems[0];
        assert_eq!(
            (p.reason, p.channel.as_deref(), p.transient),
            ("NoMatchingRevision", Some("production"), false)
        );
        assert!(p.message.contains("keeps running 1.1.0"), "{}", p.message);
        // The other channel still converges.
        assert_eq!(
            ops(&plan),
            vec!["update channel canary: revision: 1.0.0 -> 1.1.0 (then desired-status Running, so that Hippo starts the job)"]
        );

        // Opted out: the change is made, and the plan says it empties the channel.
        spec.channels[0].allow_empty = true;
        let plan = diff_app(&spec, &snapshot);
        assert!(plan.problems.is_empty());
        let mv = plan
            .moves
            .iter()
            .find(|m| m.channel == "production")
            .unwrap();
        assert!(mv.is_destructive());
        assert_eq!(mv.to_string(), "production: 1.1.0 → none (range ^3.0)");
    }

    #[test]
    fn a_rule_matched_by_a_revision_registered_in_the_same_run_is_not_empty() {
        let (mut spec, mut snapshot) = converged();
        spec.revisions.push(pushed("3.0.0", &["c"]));
        on_server(&mut snapshot, "3.0.0", &["c"]);
        spec.channels[0] = range_channel("production", "^3.0");
        let plan = diff_app(&spec, &snapshot);
        assert!(plan.problems.is_empty(), "{:?}", plan.problems);
        assert_eq!(
            plan.moves.iter().map(|m| m.to_string()).collect::<Vec<_>>(),
            vec!["production: 1.1.0 → 3.0.0 (range ^3.0)"]
        );
    }

    #[test]
    fn a_new_revision_shows_the_range_channels_it_moves() {
        let (mut spec, mut snapshot) = converged();
        spec.revisions.push(pushed("1.2.0", &["c"]));
        on_server(&mut snapshot, "1.2.0", &["c"]);
        let plan = diff_app(&spec, &snapshot);
        assert_eq!(ops(&plan), vec!["register revision 1.2.0"]);
        assert_eq!(
            plan.moves.iter().map(|m| m.to_string()).collect::<Vec<_>>(),
            vec!["production: 1.1.0 → 1.2.0 (range ^1.0)"],
            "the pinned canary does not move"
        );
        let json = serde_json::to_value(&plan).unwrap();
        assert_eq!(json["moves"][0]["from"], "1.1.0");
        assert_eq!(json["moves"][0]["to"], "1.2.0");
    }

    #[test]
    fn an_app_is_not_created_before_its_storage_id_is_on_bindle() {
        let (mut spec, mut snapshot) = converged();
        snapshot.hippo_mut().apps.clear();
        snapshot.hippo_mut().channels.clear();
        snapshot.hippo_mut().revisions.clear();
        snapshot
            .bindles
            .insert("weather".into(), Ok(Arc::new(BindleVersions::default())));
        spec.revisions.clear();
        spec.channels.clear();
        let plan = diff_app(&spec, &snapshot);
        assert!(plan.changes.is_empty(), "{:?}", ops(&plan));
        assert_eq!(plan.problems[0].reason, "StorageIdNotOnBindle");
        // With a bindle to push first, it can.
        spec.revisions.push(pushed("1.0.0", &["a"]));
        let plan = diff_app(&spec, &snapshot);
        assert!(plan.problems.is_empty());
        assert!(
            ops(&plan)[1].starts_with("create app weather"),
            "{:?}",
            ops(&plan)
        );
    }

    #[test]
    fn a_suspended_app_is_left_alone() {
        let (mut spec, snapshot) = converged();
        spec.channels[0] = range_channel("production", "^3.0");
        spec.suspend = true;
        let plan = diff_app(&spec, &snapshot);
        assert!(plan.suspended);
        assert!(plan.changes.is_empty() && plan.problems.is_empty() && plan.moves.is_empty());
    }

    #[test]
    fn bindle_conflict_blocks_only_what_needs_that_revision() {
        let (mut spec, mut snapshot) = converged();
        // 1.2.0 conflicts with what the server holds: never pushed nor registered.
        spec.revisions.push(pushed("1.2.0", &["a", "CHANGED"]));
        on_server(&mut snapshot, "1.2.0", &["a", "b"]);
        spec.channels[1] = pinned_channel("canary", "1.2.0");
        spec.channels.push(range_channel("stable", "~1.0.0"));
        let plan = diff_app(&spec, &snapshot);
        assert_eq!(plan.problems.len(), 1);
        let p = &plan.problems[0];
        assert_eq!(p.reason, "BindleConflict");
        assert_eq!(p.revision.as_deref(), Some("1.2.0"));
        assert!(p.message.contains("bump the version") && !p.transient);
        assert!(!p.is_app_wide());
        // canary (pinned to 1.2.0) keeps what it runs; production (^1.0) stays on 1.1.0, the
        // newest sound revision; stable, which doesn't need 1.2.0, is still created.
        assert_eq!(ops(&plan), vec!["create channel stable (range ~1.0.0)"]);
        assert!(plan
            .changes
            .iter()
            .all(|c| !matches!(&c.op, Op::RegisterRevision { version, .. } if version == "1.2.0")));
    }

    #[test]
    fn existing_version_must_be_on_bindle_and_complete() {
        let (mut spec, mut snapshot) = converged();
        spec.revisions.push(existing("2.0.0"));
        let plan = diff_app(&spec, &snapshot);
        assert_eq!(plan.problems[0].reason, "BindleMissing");
        assert!(plan.problems[0].transient, "it may still be on its way");
        spec.revisions.pop();
        snapshot.missing.insert("weather/1.0.0".into(), Ok(2));
        assert_eq!(
            diff_app(&spec, &snapshot).problems[0].reason,
            "BindleIncomplete"
        );
        snapshot.missing.insert(
            "weather/1.0.0".into(),
            Err(PartialFailure {
                message: "timeout".into(),
                transient: true,
            }),
        );
        assert!(diff_app(&spec, &snapshot).problems[0].transient);
    }

    #[test]
    fn interrupted_push_is_resumed() {
        let (spec, mut snapshot) = converged();
        snapshot.missing.insert("weather/1.1.0".into(), Ok(1));
        let plan = diff_app(&spec, &snapshot);
        assert!(matches!(
            plan.changes[0].op,
            Op::PushBindle { resume: true, .. }
        ));
    }

    #[test]
    fn missing_revisions_are_registered_in_ascending_order() {
        let (mut spec, mut snapshot) = converged();
        snapshot
            .hippo_mut()
            .revisions
            .retain(|r| r.revision_number == "1.0.0");
        spec.revisions.push(pushed("1.2.0", &["c"]));
        snapshot.bindles.insert(
            "weather".into(),
            Ok(server(&[
                ("1.0.0", &["z"]),
                ("1.1.0", &["a", "b"]),
                ("1.2.0", &["c"]),
            ])),
        );
        let plan = diff_app(&spec, &snapshot);
        let regs: Vec<&str> = plan
            .changes
            .iter()
            .filter(|c| c.kind == Kind::Revision)
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(regs, vec!["1.1.0", "1.2.0"]);
    }

    #[test]
    fn discovered_versions_are_registered_once_complete_and_never_when_yanked() {
        let (mut spec, mut snapshot) = converged();
        spec.discover.push(crate::spec::DiscoverSpec {
            range: ">=1.1.0 <2.0.0".into(),
            origin: spec.origin.clone(),
        });
        for v in ["1.3.0", "1.2.0", "1.4.0", "2.0.0", "1.5.0", "01.6.0"] {
            on_server(&mut snapshot, v, &["d"]);
        }
        Arc::make_mut(
            snapshot
                .bindles
                .get_mut("weather")
                .unwrap()
                .as_mut()
                .unwrap(),
        )
        .get_mut("1.4.0")
        .unwrap()
        .yanked = true;
        // In range, not yanked, strictly semver; oldest first. 1.1.0 is already registered.
        let server = snapshot.bindles["weather"].as_ref().unwrap().clone();
        assert_eq!(
            discovered(&spec, &server),
            ["1.1.0", "1.2.0", "1.3.0", "1.5.0"]
        );
        // 1.2.0 and 1.3.0 are complete; 1.5.0 lacks a parcel.
        for (v, missing) in [("1.2.0", 0), ("1.3.0", 0), ("1.5.0", 1)] {
            snapshot.missing.insert(format!("weather/{v}"), Ok(missing));
        }
        let plan = diff_app(&spec, &snapshot);
        assert_eq!(
            ops(&plan),
            [
                "register revision 1.2.0 (discovered on the Bindle server)",
                "register revision 1.3.0 (discovered on the Bindle server)",
            ]
        );
        assert!(plan.changes.iter().all(|c| matches!(
            c.op,
            Op::RegisterRevision {
                discovered: true,
                ..
            }
        )));
        assert_eq!(
            plan.warnings,
            ["bindle weather/1.5.0 matches a discover range but is not complete on the Bindle server yet; it is registered once it is"]
        );
        // Not checked yet: not registered either.
        snapshot.missing.remove("weather/1.3.0");
        assert_eq!(
            ops(&diff_app(&spec, &snapshot)),
            ["register revision 1.2.0 (discovered on the Bindle server)"]
        );
        // Listed in the deploy file too: registered once, as listed.
        spec.revisions.push(existing("1.2.0"));
        assert_eq!(
            ops(&diff_app(&spec, &snapshot)),
            ["register revision 1.2.0"]
        );
        // An app still to be created waits: Hippo would import 1.3.0 and 1.5.0 as they are.
        snapshot.hippo_mut().apps.clear();
        snapshot.hippo_mut().channels.clear();
        snapshot.hippo_mut().revisions.clear();
        snapshot.missing.insert("weather/1.1.0".into(), Ok(0));
        let plan = diff_app(&spec, &snapshot);
        assert!(plan.changes.is_empty(), "{:?}", ops(&plan));
        let p = &plan.problems[0];
        assert_eq!((p.reason, p.transient), ("BindleIncomplete", true));
        assert!(p.is_app_wide());
        assert_eq!(
            p.message,
            "app weather cannot be created yet: bindle(s) weather/1.3.0, weather/1.5.0 match a discover range but are not complete on the Bindle server, and Hippo would import them as they are; it is created once they are complete"
        );
        snapshot.missing.insert("weather/1.3.0".into(), Ok(0));
        snapshot.missing.insert("weather/1.5.0".into(), Ok(0));
        assert!(ops(&diff_app(&spec, &snapshot))[0].starts_with("create app weather"));
    }

    #[test]
    fn registering_never_duplicates_into_an_app_sharing_the_storage_id() {
        let (spec, mut snapshot) = converged();
        snapshot
            .hippo_mut()
            .revisions
            .retain(|r| r.revision_number == "1.0.0");
        snapshot.hippo_mut().apps.push(App {
            id: uuid(2),
            name: "weather-staging".into(),
            storage_id: "weather".into(),
        });
        snapshot.hippo_mut().revisions.push(Revision {
            id: uuid(30),
            app_id: uuid(2),
            revision_number: "1.1.0".into(),
        });
        let plan = diff_app(&spec, &snapshot);
        assert!(
            !plan
                .changes
                .iter()
                .any(|c| matches!(c.op, Op::RegisterRevision { .. })),
            "{:?}",
            ops(&plan)
        );
        assert_eq!(plan.problems[0].reason, "SharedStorageId");
        assert_eq!(plan.problems[0].revision.as_deref(), Some("1.1.0"));
        assert!(plan.problems[0].message.contains("weather-staging"));
    }

    #[test]
    fn duplicate_revisions_in_hippo_are_warned_about() {
        let (spec, mut snapshot) = converged();
        snapshot.hippo_mut().revisions.push(rev(12, "1.1.0"));
        let plan = diff_app(&spec, &snapshot);
        assert_eq!(plan.warnings.len(), 1);
        assert!(plan.warnings[0].contains("1.1.0 2 times"));
    }

    #[test]
    fn domain_is_kept_unless_given() {
        let (mut spec, snapshot) = converged();
        spec.channels[0].domain = Some("weather.example.com".into());
        let plan = diff_app(&spec, &snapshot);
        assert_eq!(
            ops(&plan),
            vec!["update channel production: domain: production.weather.hippofactory.io -> weather.example.com (then desired-status Running, so that Hippo starts the job)"]
        );
    }

    #[test]
    fn storage_id_cannot_change() {
        let (mut spec, snapshot) = converged();
        spec.storage_id = "other".into();
        let plan = diff_app(&spec, &snapshot);
        assert_eq!(plan.problems[0].reason, "StorageIdMismatch");
    }

    #[test]
    fn yanked_and_unreachable_bindles_are_problems() {
        let (spec, mut snapshot) = converged();
        if let Some(Ok(s)) = snapshot.bindles.get_mut("weather") {
            Arc::make_mut(s).get_mut("1.0.0").unwrap().yanked = true;
        }
        assert_eq!(
            diff_app(&spec, &snapshot).problems[0].reason,
            "BindleYanked"
        );
        snapshot.bindles.insert(
            "weather".into(),
            Err(PartialFailure {
                message: "connection refused".into(),
                transient: true,
            }),
        );
        let p = &diff_app(&spec, &snapshot).problems[0];
        assert_eq!(p.reason, "BindleUnavailable");
        assert!(p.transient);
    }

    pub(crate) fn nomad_job(id: u128, bindle: &str, env: &[&str], version: u64) -> Arc<JobFacts> {
        let job: crate::nomad::Job = serde_json::from_value(serde_json::json!({
            "ID": uuid(id).to_string(), "Status": "running", "Stop": false, "Version": version,
            "JobModifyIndex": 7,
            "TaskGroups": [{"Name": uuid(id).to_string(), "Count": 1, "Tasks": [{
                "Name": "spin", "Driver": "exec",
                "Config": {"command": "spin", "args": ["up", "--listen", "${NOMAD_ADDR_http}", "--bindle", bindle]},
                "Env": env.iter().map(|k| (k.to_string(), "x".to_string())).collect::<BTreeMap<_, _>>()
            }]}]
        }))
        .unwrap();
        Arc::new(job.into())
    }

    fn alloc(
        job: u128,
        version: u64,
        client: &str,
        healthy: Option<bool>,
    ) -> crate::nomad::Allocation {
        serde_json::from_value(serde_json::json!({
            "ID": format!("{:08x}-alloc", job), "JobID": uuid(job).to_string(), "JobVersion": version,
            "DesiredStatus": "run", "ClientStatus": client,
            "DeploymentStatus": healthy.map(|h| serde_json::json!({"Healthy": h})),
            "TaskStates": {"spin": {"State": "dead", "Failed": client == "failed", "Events": [
                {"Type": "Received", "DisplayMessage": "Task received by client", "Time": 1},
                {"Type": "Driver Failure", "DisplayMessage": "failed to launch command with executor: spin: not found", "Time": 2}
            ]}}
        }))
        .unwrap()
    }

    /// Nomad running exactly what Hippo says for both channels of `converged()`.
    fn with_nomad(snapshot: &mut Snapshot) {
        let mut state = crate::observe::NomadState::default();
        let mut allocations = Vec::new();
        for (id, bindle) in [(20u128, "weather/1.1.0"), (21, "weather/1.0.0")] {
            let job = nomad_job(id, bindle, &["RUST_LOG", "BINDLE_URL", "SPIN_LOG_DIR"], 2);
            Arc::make_mut(&mut state.jobs).insert(
                job.id.clone(),
                serde_json::from_value(serde_json::json!({"ID": job.id, "Status": "running", "Stop": false, "JobModifyIndex": 7})).unwrap(),
            );
            state.details.insert(job.id.clone(), job);
            allocations.push(alloc(id, 2, "running", Some(true)));
        }
        state.allocations = Arc::new(allocations.into());
        snapshot.nomad = Some(Ok(state));
    }

    fn nomad_mut(snapshot: &mut Snapshot) -> &mut crate::observe::NomadState {
        match snapshot.nomad.as_mut() {
            Some(Ok(n)) => n,
            _ => panic!("no nomad state"),
        }
    }

    #[test]
    fn nomad_running_what_hippo_says_plans_nothing_and_is_ready() {
        let (spec, mut snapshot) = converged();
        with_nomad(&mut snapshot);
        let plan = diff(&[Arc::new(spec)], &snapshot);
        assert_eq!(plan.apps[0].changes, vec![]);
        assert!(plan.orphans.is_empty());
        let nomad = nomad_mut(&mut snapshot).clone();
        assert_eq!(
            channel_health(&nomad, &snapshot.channels()[0], "weather/1.1.0"),
            ChannelHealth::Ready {
                healthy: 1,
                total: 1,
                version: 2
            }
        );
    }

    #[test]
    fn lost_stopped_and_stale_jobs_are_rescheduled_through_hippo() {
        let (spec, mut snapshot) = converged();
        with_nomad(&mut snapshot);
        let prod = uuid(20).to_string();
        let canary = uuid(21).to_string();
        Arc::make_mut(&mut nomad_mut(&mut snapshot).jobs).remove(&prod);
        nomad_mut(&mut snapshot)
            .details
            .insert(canary.clone(), nomad_job(21, "weather/0.9.0", &[], 3));
        let plan = diff_app(&spec, &snapshot);
        assert_eq!(
            ops(&plan),
            vec![
                "reschedule channel production through Hippo (its Nomad job is missing)",
                "deploy weather/1.0.0 to channel canary through Hippo (its Nomad job runs weather/0.9.0, Hippo's active revision is weather/1.0.0)",
            ]
        );
        assert!(plan.changes.iter().all(|c| c.stage == Stage::Nomad));
        Arc::make_mut(&mut nomad_mut(&mut snapshot).jobs).insert(
            prod.clone(),
            serde_json::from_value(serde_json::json!({"ID": prod, "Status": "dead", "Stop": true}))
                .unwrap(),
        );
        assert!(ops(&diff_app(&spec, &snapshot))[0].contains("its Nomad job is stopped"));
    }

    #[test]
    fn a_channel_with_a_pending_hippo_change_is_not_judged_on_nomad_yet() {
        let (mut spec, mut snapshot) = converged();
        with_nomad(&mut snapshot);
        Arc::make_mut(&mut nomad_mut(&mut snapshot).jobs).clear();
        spec.channels[0] = range_channel("production", "~1.0.0");
        let plan = diff_app(&spec, &snapshot);
        let names: Vec<(&str, Action)> = plan
            .changes
            .iter()
            .map(|c| (c.name.as_str(), c.action))
            .collect();
        assert_eq!(
            names,
            vec![("production", Action::Update), ("canary", Action::Update)]
        );
        assert!(
            matches!(
                plan.changes[0].op,
                Op::UpdateChannel {
                    start_job: false,
                    ..
                }
            ),
            "with Nomad, the job is verified and healed there, not started blindly"
        );
        assert!(matches!(plan.changes[1].op, Op::ScheduleChannel { .. }));
    }

    #[test]
    fn env_missing_from_the_task_is_a_warning_not_a_change() {
        let (mut spec, mut snapshot) = converged();
        with_nomad(&mut snapshot);
        spec.channels[0].env = [("API_URL".to_string(), "https://x".to_string())].into();
        snapshot.hippo_mut().channels[0].environment_variables = vec![EnvVar {
            key: "API_URL".into(),
            value: "https://x".into(),
        }];
        let plan = diff_app(&spec, &snapshot);
        assert!(plan.changes.is_empty(), "{:?}", ops(&plan));
        assert_eq!(plan.warnings.len(), 1);
        assert!(
            plan.warnings[0].contains("API_URL")
                && plan.warnings[0].contains("does not pass channel environment variables")
        );
        assert!(
            !plan.warnings[0].contains("https://x"),
            "values never shown"
        );
    }

    #[test]
    fn orphans_are_guid_jobs_without_a_channel_that_still_run() {
        let (_, mut snapshot) = converged();
        with_nomad(&mut snapshot);
        let orphan = uuid(99).to_string();
        let stub = |id: &str, stop: bool| -> crate::nomad::JobStub {
            serde_json::from_value(serde_json::json!({"ID": id, "Status": "running", "Stop": stop}))
                .unwrap()
        };
        let n = nomad_mut(&mut snapshot);
        let jobs = Arc::make_mut(&mut n.jobs);
        jobs.insert(orphan.clone(), stub(&orphan, false));
        jobs.insert(uuid(98).to_string(), stub(&uuid(98).to_string(), true));
        jobs.insert("traefik".into(), stub("traefik", false));
        assert_eq!(orphans(&snapshot), vec![orphan]);
    }

    #[test]
    fn health_follows_the_current_versions_allocations() {
        let (_, mut snapshot) = converged();
        with_nomad(&mut snapshot);
        let ch = snapshot.channels()[0].clone();
        let n = nomad_mut(&mut snapshot);
        n.allocations = Arc::new(
            vec![
                alloc(20, 1, "running", Some(true)),
                alloc(20, 2, "pending", None),
            ]
            .into(),
        );
        let h = channel_health(n, &ch, "weather/1.1.0");
        assert_eq!(
            h,
            ChannelHealth::Progressing {
                message: "0/1 allocation(s) healthy (pending)".into()
            }
        );
        n.allocations = Arc::new(vec![alloc(20, 2, "failed", None)].into());
        let ChannelHealth::Failed { message } = channel_health(n, &ch, "weather/1.1.0") else {
            panic!()
        };
        assert!(
            message.contains(
                "Driver Failure: failed to launch command with executor: spin: not found"
            ),
            "{message}"
        );
        // Running, but Nomad's deployment has not decided (min_healthy_time): not Ready.
        n.allocations = Arc::new(vec![alloc(20, 2, "running", None)].into());
        let ChannelHealth::Progressing { message } = channel_health(n, &ch, "weather/1.1.0") else {
            panic!()
        };
        assert!(
            message.starts_with("0/1 allocation(s) healthy (running)")
                && message.contains("health not decided yet"),
            "{message}"
        );
        n.allocations = Arc::new(vec![alloc(20, 2, "running", Some(true))].into());
        assert!(matches!(
            channel_health(n, &ch, "weather/1.1.0"),
            ChannelHealth::Ready {
                healthy: 1,
                total: 1,
                ..
            }
        ));
        // Running, and marked unhealthy by the deployment: failed, and said why.
        n.allocations = Arc::new(vec![alloc(20, 2, "running", Some(false))].into());
        let ChannelHealth::Failed { message } = channel_health(n, &ch, "weather/1.1.0") else {
            panic!()
        };
        assert!(
            message.contains("marked unhealthy by Nomad's deployment"),
            "{message}"
        );
        assert!(matches!(
            channel_health(n, &ch, "weather/2.0.0"),
            ChannelHealth::Progressing { .. }
        ));
        let mut idle = ch.clone();
        idle.active_revision = None;
        assert_eq!(channel_health(n, &idle, ""), ChannelHealth::Idle);
    }
}

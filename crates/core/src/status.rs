//! Conditions: what the core concludes about each app and channel, built here and only here.
//!
//! Conditions follow Flux's kstatus: `Ready` (converged), `Reconciling` (work in progress or a
//! transient failure that will be retried), `Stalled` (a terminal error that needs a change to
//! the deploy files or to the servers), each with a reason and a message.

use serde::Serialize;

use crate::{
    apply::ApplyError,
    diff::{self, AppPlan, Kind, Plan},
    observe::Snapshot,
    spec::{AppSpec, DesiredState, Selector},
};

/// kstatus condition types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ConditionType {
    Ready,
    Reconciling,
    Stalled,
    /// `spec.suspend`: the app is left alone (Flux's `suspend`).
    Suspended,
}

/// The reasons conditions give that are not a planned problem's or an error's own.
pub mod reason {
    pub const UP_TO_DATE: &str = "UpToDate";
    pub const CONVERGED: &str = "Converged";
    pub const SUSPENDED: &str = "Suspended";
    pub const CHANGES_PENDING: &str = "ChangesPending";
    pub const RUNNING: &str = "Running";
    pub const PROGRESSING: &str = "Progressing";
    pub const ALLOCATION_FAILED: &str = "AllocationFailed";
    pub const NO_ACTIVE_REVISION: &str = "NoActiveRevision";
    pub const HIPPO_CONVERGED: &str = "HippoConverged";
    pub const NOMAD_UNAVAILABLE: &str = "NomadUnavailable";
    /// Hippo (or Bindle) could not be observed: the whole cycle failed, not the app.
    pub const OBSERVE_FAILED: &str = "ObserveFailed";
    /// The app's deploy file went bad; the app is left as it was.
    pub const INVALID_DEPLOY_FILE: &str = "InvalidDeployFile";
    /// A `promote` channel, and Nomad is not configured to judge health.
    pub const PROMOTION_NEEDS_NOMAD: &str = "PromotionNeedsNomad";
    /// A `rollback: true` channel, and Nomad is not configured to judge health.
    pub const ROLLBACK_NEEDS_NOMAD: &str = "RollbackNeedsNomad";
    /// The rollback records (a Nomad Variable) could not be read.
    pub const DELIVERY_RECORDS_UNAVAILABLE: &str = "DeliveryRecordsUnavailable";
    /// A revision fails and no other ran healthy in the channel: nothing to roll back to.
    pub const NO_HEALTHY_REVISION: &str = "NoHealthyRevision";
    /// Ready on an older revision: a newer one failed and was rolled back.
    pub const ROLLED_BACK: &str = "RolledBack";
}

/// One condition of an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: ConditionType,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl Condition {
    /// The one way a condition is made.
    pub fn new(kind: ConditionType, reason: &str, message: impl Into<String>) -> Condition {
        Condition {
            kind,
            status: true,
            reason: reason.into(),
            message: message.into(),
        }
    }

    /// An app (and each of its channels) with `spec.suspend`.
    pub fn suspended() -> Condition {
        Condition::new(
            ConditionType::Suspended,
            reason::SUSPENDED,
            "spec.suspend is set: the app is left alone, nothing is written",
        )
    }

    /// What an error means for its app: `Reconciling` while it is retried, `Stalled` when it
    /// needs a change first.
    pub fn of_error(error: &ApplyError) -> Condition {
        Condition::new(
            if error.is_transient() {
                ConditionType::Reconciling
            } else {
                ConditionType::Stalled
            },
            error.reason(),
            error.to_string(),
        )
    }

    /// The condition that sums up an app's run: suspended, failed, or converged with
    /// `applied` changes made.
    pub fn of_run(suspended: bool, error: Option<&ApplyError>, applied: usize) -> Condition {
        if suspended {
            return Condition::suspended();
        }
        match error {
            Some(e) => Condition::of_error(e),
            None if applied == 0 => Condition::new(
                ConditionType::Ready,
                reason::UP_TO_DATE,
                "Hippo and Bindle match the deploy file",
            ),
            None => Condition::new(
                ConditionType::Ready,
                reason::CONVERGED,
                format!("{applied} change(s) applied"),
            ),
        }
    }

    fn of_problem(p: &diff::Problem) -> Condition {
        Condition::new(
            if p.transient {
                ConditionType::Reconciling
            } else {
                ConditionType::Stalled
            },
            p.reason,
            p.message.clone(),
        )
    }
}

/// The Nomad side of a channel in `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "camelCase")]
pub enum NomadJobStatus {
    /// Nomad is not configured: nothing is known, and nothing is claimed healthy.
    Unknown,
    /// No job (or it could not be read).
    Missing,
    Job {
        version: u64,
        status: String,
        healthy: u32,
        total: u32,
    },
}

impl NomadJobStatus {
    /// `("v3 running", "2/2")`, `("missing", "0/0")` or `("unknown", "?")`: the job and its
    /// healthy/total allocations, as tables show them.
    pub fn job_and_allocations(&self) -> (String, String) {
        match self {
            NomadJobStatus::Unknown => ("unknown".to_string(), "?".to_string()),
            NomadJobStatus::Missing => ("missing".to_string(), "0/0".to_string()),
            NomadJobStatus::Job {
                version,
                status,
                healthy,
                total,
            } => (format!("v{version} {status}"), format!("{healthy}/{total}")),
        }
    }
}

/// One channel in `status`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelStatus {
    pub channel: String,
    /// Hippo's channel GUID, which is also its Nomad job's ID (`None` until created).
    #[serde(rename = "channelId")]
    pub channel_id: Option<uuid::Uuid>,
    /// What the deploy file asks for (a range resolved against Hippo's revisions).
    pub desired_revision: Option<String>,
    /// What Hippo's channel points at.
    pub hippo_revision: Option<String>,
    pub nomad: NomadJobStatus,
    pub condition: Condition,
    /// A promotion waiting for its window: `canary has run 1.3.0 healthy for 3m of 10m`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub promotion: Option<String>,
}

/// One app in `status`.
#[derive(Debug, Clone, Serialize)]
pub struct AppStatus {
    pub app: String,
    pub condition: Condition,
    pub channels: Vec<ChannelStatus>,
}

/// Builds `status` from a plan and the snapshot it was made from. Pure.
pub fn app_statuses(desired: &DesiredState, plan: &Plan, snapshot: &Snapshot) -> Vec<AppStatus> {
    desired
        .apps
        .iter()
        .zip(&plan.apps)
        .map(|(spec, app_plan)| app_status(spec, app_plan, snapshot))
        .collect()
}

/// One app's status: each channel's revisions, its Nomad job and condition, and the app's.
pub fn app_status(spec: &AppSpec, app_plan: &AppPlan, snapshot: &Snapshot) -> AppStatus {
    let hippo_app = snapshot.app(&spec.name);
    let numbers: Vec<&str> = hippo_app
        .map(|a| {
            snapshot
                .revisions_of(a)
                .map(|r| r.revision_number.as_str())
                .collect()
        })
        .unwrap_or_default();
    let channels: Vec<ChannelStatus> = spec
        .channels
        .iter()
        .map(|ch| {
            let current = hippo_app
                .and_then(|a| snapshot.channels_of(a).find(|c| c.name == ch.name));
            let hippo_revision = current
                .and_then(|c| c.active_revision.as_ref())
                .map(|r| r.revision_number.clone());
            let held = app_plan.held.iter().find(|h| h.channel == ch.name);
            // What the diff decided the channel runs: a promote channel and a channel held by a
            // rollback run what they were pinned to, until the plan moves them.
            let moved_to = app_plan
                .moves
                .iter()
                .find(|m| m.channel == ch.name)
                .map(|m| m.to.clone());
            let desired_revision = match (&ch.selector, held) {
                (Selector::Revision(v), _) => Some(v.clone()),
                (Selector::Promote(_), _) => moved_to.unwrap_or_else(|| hippo_revision.clone()),
                (Selector::Range(_), Some(h)) => Some(h.pinned.clone()),
                (Selector::Range(r), None) => diff::max_satisfying(r, &numbers).map(String::from),
            };
            let pending: Vec<String> = app_plan
                .changes
                .iter()
                .filter(|c| c.kind == Kind::Channel && c.name == ch.name)
                .map(|c| c.describe())
                .collect();
            let (nomad, health) = match (&snapshot.nomad, current) {
                (None, _) => (NomadJobStatus::Unknown, None),
                (Some(Err(e)), _) => (
                    NomadJobStatus::Unknown,
                    Some(Condition::new(ConditionType::Reconciling, reason::NOMAD_UNAVAILABLE, e.message.clone())),
                ),
                (Some(Ok(_)), None) => (NomadJobStatus::Missing, None),
                (Some(Ok(state)), Some(c)) => {
                    let id = c.id.to_string();
                    let job = match (state.jobs.get(&id), state.details.get(&id)) {
                        (Some(stub), Some(job)) => NomadJobStatus::Job {
                            version: job.version,
                            status: if stub.stop { "stopped".into() } else { stub.status.clone() },
                            healthy: state
                                .allocations_of(&id)
                                .filter(|a| a.job_version == job.version && a.is_healthy())
                                .count() as u32,
                            total: job.desired_count,
                        },
                        _ => NomadJobStatus::Missing,
                    };
                    let expected = hippo_revision
                        .as_ref()
                        .map(|r| format!("{}/{r}", spec.storage_id))
                        .unwrap_or_default();
                    let h = match diff::channel_health(state, c, &expected) {
                        diff::ChannelHealth::Ready { healthy, total, .. } => Condition::new(
                            ConditionType::Ready,
                            reason::RUNNING,
                            format!("{healthy}/{total} allocation(s) healthy"),
                        ),
                        diff::ChannelHealth::Progressing { message } => {
                            Condition::new(ConditionType::Reconciling, reason::PROGRESSING, message)
                        }
                        diff::ChannelHealth::Failed { message } => {
                            Condition::new(ConditionType::Reconciling, reason::ALLOCATION_FAILED, message)
                        }
                        diff::ChannelHealth::Idle => {
                            Condition::new(ConditionType::Ready, reason::NO_ACTIVE_REVISION, "Hippo has no active revision for this channel: nothing runs")
                        }
                    };
                    (job, Some(h))
                }
            };
            // The problems this channel depends on: the app's, its own, or its revision's.
            let problem = app_plan.problems.iter().find(|p| {
                p.is_app_wide()
                    || p.channel.as_deref() == Some(ch.name.as_str())
                    || (p.revision.is_some() && p.revision == desired_revision)
            });
            let condition = if app_plan.suspended {
                Condition::suspended()
            } else if let Some(p) = problem {
                Condition::of_problem(p)
            } else if current.is_none() && pending.is_empty() && matches!(ch.selector, Selector::Promote(_)) {
                // Hippo creates no pinned channel without a revision: its first promotion does.
                Condition::new(ConditionType::Ready, reason::NO_ACTIVE_REVISION, "nothing promoted yet: the channel is created in Hippo by its first promotion")
            } else if current.is_none() {
                Condition::new(ConditionType::Reconciling, reason::CHANGES_PENDING, "the channel does not exist in Hippo yet")
            } else if !pending.is_empty() {
                Condition::new(ConditionType::Reconciling, reason::CHANGES_PENDING, pending.join("; "))
            } else {
                let health = health.unwrap_or_else(|| {
                    Condition::new(ConditionType::Ready, reason::HIPPO_CONVERGED, "Hippo matches the deploy file; Nomad is not configured, so what runs is unknown")
                });
                match held {
                    Some(h) if health.kind == ConditionType::Ready => Condition::new(
                        ConditionType::Ready,
                        reason::ROLLED_BACK,
                        format!(
                            "rolled back to {}: {} failed on Nomad and is not deployed to this channel again; it follows its rule again when a newer revision is there",
                            h.pinned,
                            h.bad.join(", ")
                        ),
                    ),
                    _ => health,
                }
            };
            ChannelStatus {
                channel: ch.name.clone(),
                channel_id: current.map(|c| c.id),
                desired_revision,
                hippo_revision,
                nomad,
                condition,
                promotion: app_plan
                    .promotions
                    .iter()
                    .find(|p| p.channel == ch.name)
                    .map(|p| p.message.clone()),
            }
        })
        .collect();
    let condition = if app_plan.suspended {
        Condition::suspended()
    } else if let Some(p) = app_plan.problems.first() {
        Condition::of_problem(p)
    } else if let Some(worst) = channels
        .iter()
        .map(|c| &c.condition)
        .find(|c| c.kind == ConditionType::Stalled)
        .or_else(|| {
            channels
                .iter()
                .map(|c| &c.condition)
                .find(|c| c.kind != ConditionType::Ready)
        })
    {
        worst.clone()
    } else if let Some(rolled_back) = channels
        .iter()
        .map(|c| &c.condition)
        .find(|c| c.reason == reason::ROLLED_BACK)
    {
        rolled_back.clone()
    } else if app_plan.changes.iter().any(|c| c.kind != Kind::Channel) || hippo_app.is_none() {
        Condition::new(
            ConditionType::Reconciling,
            reason::CHANGES_PENDING,
            app_plan
                .changes
                .iter()
                .map(|c| c.describe())
                .collect::<Vec<_>>()
                .join("; "),
        )
    } else {
        Condition::new(
            ConditionType::Ready,
            reason::UP_TO_DATE,
            "matches the deploy file",
        )
    };
    AppStatus {
        app: spec.name.clone(),
        condition,
        channels,
    }
}

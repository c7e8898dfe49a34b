//! How results are reported: kstatus-style conditions per app, plan and run renderings.
//!
//! Conditions follow Flux's kstatus: `Ready` (converged), `Reconciling` (work in progress or a
//! transient failure that will be retried), `Stalled` (a terminal error that needs a change to
//! the deploy files or to the servers), each with a reason and a message.

use serde::Serialize;

use crate::{
    apply::{AppResult, RunReport},
    diff::Plan,
};

/// Why a Nomad job outlives its channel, most often: Hippo v0.19.0 never dispatches the events
/// of deleted entities, so deleting a channel leaves its job running (fixed in v0.19.1).
const ORPHAN_CAUSE: &str =
    " (a channel deleted through Hippo v0.19.0 leaves its job running; fixed in v0.19.1)";

/// kstatus condition types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ConditionType {
    Ready,
    Reconciling,
    Stalled,
    /// `spec.suspend`: the app is left alone (Flux's `suspend`).
    Suspended,
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

/// The condition that sums up an app's result.
pub fn condition(result: &AppResult) -> Condition {
    if result.suspended {
        return suspended();
    }
    match &result.error {
        None => Condition {
            kind: ConditionType::Ready,
            status: true,
            reason: if result.applied.is_empty() {
                "UpToDate".into()
            } else {
                "Converged".into()
            },
            message: if result.applied.is_empty() {
                "Hippo and Bindle match the deploy file".into()
            } else {
                format!("{} change(s) applied", result.applied.len())
            },
        },
        Some(e) if e.is_transient() => Condition {
            kind: ConditionType::Reconciling,
            status: true,
            reason: e.reason().into(),
            message: e.to_string(),
        },
        Some(e) => Condition {
            kind: ConditionType::Stalled,
            status: true,
            reason: e.reason().into(),
            message: e.to_string(),
        },
    }
}

/// `plan --output text`.
pub fn plan_text(plan: &Plan) -> String {
    let mut out = String::new();
    let mut changed = 0;
    let mut n_changes = 0;
    for app in &plan.apps {
        if app.suspended {
            out.push_str(&format!(
                "{}: suspended (spec.suspend): nothing planned\n",
                app.app
            ));
            continue;
        }
        if app.changes.is_empty() && app.problems.is_empty() && app.warnings.is_empty() {
            continue;
        }
        out.push_str(&format!("{}:\n", app.app));
        for p in &app.problems {
            out.push_str(&format!("  ! {} ({})\n", p.message, p.reason));
        }
        for m in &app.moves {
            out.push_str(&format!("  → {m}{}\n", destructive_note(m)));
        }
        for w in &app.warnings {
            out.push_str(&format!("  warning: {w}\n"));
        }
        for c in &app.changes {
            let sign = match c.action {
                "delete" => '-',
                "update" => '~',
                _ => '+',
            };
            out.push_str(&format!("  {sign} {}\n", c.describe()));
        }
        if !app.changes.is_empty() {
            changed += 1;
            n_changes += app.changes.len();
        }
    }
    for id in &plan.orphans {
        out.push_str(&format!(
            "orphaned Nomad job {id}: no Hippo channel has this id{ORPHAN_CAUSE} (reconcile --prune-orphans deletes it)\n"
        ));
    }
    let unchanged = plan
        .apps
        .iter()
        .filter(|a| a.changes.is_empty() && a.problems.is_empty())
        .count();
    let failing = plan.apps.iter().filter(|a| !a.problems.is_empty()).count();
    if n_changes == 0 && failing == 0 {
        out.push_str(&format!(
            "No changes: {unchanged} app(s) match the deploy files.\n"
        ));
    } else {
        out.push_str(&format!(
            "Plan: {n_changes} change(s) to {changed} app(s); {unchanged} unchanged{}.\n",
            if failing > 0 {
                format!("; {failing} cannot be converged")
            } else {
                String::new()
            }
        ));
    }
    out
}

/// What a destructive move does, said where it is shown.
fn destructive_note(m: &crate::diff::ChannelMove) -> &'static str {
    if m.is_destructive() {
        " [DESTRUCTIVE: no revision left; Hippo removes the channel's Nomad job]"
    } else {
        ""
    }
}

/// `plan --output markdown`: for a pull request comment. The summary line comes first; per
/// app a table of changes; problems and warnings as lists. Env values never appear (changes
/// describe keys only), and text from the deploy files is escaped for Markdown tables.
pub fn plan_markdown(plan: &Plan) -> String {
    let mut out = String::from("### hippo-gitops plan\n\n");
    let changes: usize = plan.apps.iter().map(|a| a.changes.len()).sum();
    let changed = plan.apps.iter().filter(|a| !a.changes.is_empty()).count();
    let failing = plan.apps.iter().filter(|a| !a.problems.is_empty()).count();
    let unchanged = plan
        .apps
        .iter()
        .filter(|a| a.changes.is_empty() && a.problems.is_empty())
        .count();
    if changes == 0 && failing == 0 {
        out.push_str(&format!(
            "**No changes.** {unchanged} app(s) match the deploy files.\n"
        ));
    } else {
        out.push_str(&format!(
            "**{changes} change(s) to {changed} app(s)**, {unchanged} unchanged{}.\n",
            if failing > 0 {
                format!(", **{failing} cannot be converged**")
            } else {
                String::new()
            }
        ));
    }
    for app in &plan.apps {
        if app.suspended {
            out.push_str(&format!(
                "\n#### `{}`\n\n- :pause_button: suspended (`spec.suspend`): nothing planned\n",
                md_code(&app.app)
            ));
            continue;
        }
        if app.changes.is_empty() && app.problems.is_empty() && app.warnings.is_empty() {
            continue;
        }
        out.push_str(&format!("\n#### `{}`\n\n", md_code(&app.app)));
        for p in &app.problems {
            out.push_str(&format!(
                "- :x: **{}**: {}\n",
                p.reason,
                md_cell(&p.message)
            ));
        }
        for w in &app.warnings {
            out.push_str(&format!("- :warning: {}\n", md_cell(w)));
        }
        for m in &app.moves {
            out.push_str(&format!(
                "- {} {}{}\n",
                if m.is_destructive() {
                    ":boom:"
                } else {
                    ":arrow_right:"
                },
                md_cell(&m.to_string()),
                md_cell(destructive_note(m))
            ));
        }
        if !app.changes.is_empty() {
            if !app.problems.is_empty() || !app.warnings.is_empty() {
                out.push('\n');
            }
            out.push_str("| | kind | name | change |\n|---|---|---|---|\n");
            for c in &app.changes {
                let sign = match c.action {
                    "delete" => "➖",
                    "update" => "🔄",
                    _ => "➕",
                };
                out.push_str(&format!(
                    "| {sign} | {} | `{}` | {} |\n",
                    c.kind,
                    md_code(&c.name),
                    md_cell(&c.describe())
                ));
            }
        }
    }
    if !plan.orphans.is_empty() {
        out.push_str(&format!("\n#### Orphaned Nomad jobs\n\nNo Hippo channel has these ids{ORPHAN_CAUSE} (`reconcile --prune-orphans` deletes them):\n\n"));
        for id in &plan.orphans {
            out.push_str(&format!("- `{}`\n", md_code(id)));
        }
    }
    out
}

/// Text inside a Markdown table cell: pipes and newlines would end the cell or the table, and
/// HTML would render.
fn md_cell(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace(['\n', '\r'], " ")
}

/// Text inside backticks (which can't be escaped there).
fn md_code(s: &str) -> String {
    s.replace('`', "'").replace(['\n', '\r', '|'], " ")
}

#[derive(Serialize)]
struct PlanJson<'a> {
    changes: Vec<&'a crate::diff::Change>,
    problems: Vec<AppProblemJson<'a>>,
    warnings: Vec<AppWarningJson<'a>>,
    /// What each channel will run once the changes are made, where that moves.
    moves: Vec<MoveJson<'a>>,
    /// Apps with `spec.suspend`: nothing planned.
    suspended: Vec<&'a str>,
    /// Nomad jobs named like a Hippo channel GUID that no channel has.
    orphans: &'a [String],
}

#[derive(Serialize)]
struct MoveJson<'a> {
    app: &'a str,
    #[serde(flatten)]
    r#move: &'a crate::diff::ChannelMove,
    /// The channel is left with no revision: Hippo removes its Nomad job.
    destructive: bool,
}

#[derive(Serialize)]
struct AppProblemJson<'a> {
    app: &'a str,
    reason: &'a str,
    message: &'a str,
    transient: bool,
    /// Set when only this revision is blocked.
    #[serde(skip_serializing_if = "Option::is_none")]
    revision: Option<&'a str>,
    /// Set when only this channel is blocked.
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
}

#[derive(Serialize)]
struct AppWarningJson<'a> {
    app: &'a str,
    message: &'a str,
}

/// `plan --output json`: `{"changes":[{"action","kind","app","name",...}],"problems":[...]}`.
pub fn plan_json(plan: &Plan) -> String {
    let body = PlanJson {
        changes: plan.changes().collect(),
        problems: plan
            .apps
            .iter()
            .flat_map(|a| {
                a.problems.iter().map(move |p| AppProblemJson {
                    app: &a.app,
                    reason: p.reason,
                    message: &p.message,
                    transient: p.transient,
                    revision: p.revision.as_deref(),
                    channel: p.channel.as_deref(),
                })
            })
            .collect(),
        warnings: plan
            .apps
            .iter()
            .flat_map(|a| {
                a.warnings.iter().map(move |w| AppWarningJson {
                    app: &a.app,
                    message: w,
                })
            })
            .collect(),
        moves: plan
            .apps
            .iter()
            .flat_map(|a| {
                a.moves.iter().map(move |m| MoveJson {
                    app: &a.app,
                    r#move: m,
                    destructive: m.is_destructive(),
                })
            })
            .collect(),
        suspended: plan
            .apps
            .iter()
            .filter(|a| a.suspended)
            .map(|a| a.app.as_str())
            .collect(),
        orphans: &plan.orphans,
    };
    serde_json::to_string_pretty(&body).expect("plan serialises")
}

/// One line per app for `reconcile --once`.
pub fn run_text(report: &RunReport) -> String {
    let mut out = String::new();
    for app in &report.apps {
        let c = condition(app);
        let line = match &app.error {
            _ if app.suspended => format!("{}: suspended (spec.suspend), nothing written", app.app),
            None if app.applied.is_empty() => format!("{}: ready, unchanged", app.app),
            None => format!("{}: ready, {}", app.app, app.applied.join("; ")),
            Some(e) => {
                let done = if app.applied.is_empty() {
                    String::new()
                } else {
                    format!(" (after: {})", app.applied.join("; "))
                };
                // What to do next: a one-shot run retries nothing itself.
                let (kind, next) = if e.is_transient() {
                    (
                        "not converged",
                        "transient: run again, or let the controller retry it",
                    )
                } else {
                    (
                        "stalled",
                        "fix the deploy file or the server state named above, then run again",
                    )
                };
                format!(
                    "{}: {kind} [{}]: {e}{done}; next: {next}",
                    app.app, c.reason
                )
            }
        };
        out.push_str(&line);
        if !app.health.is_empty() && app.error.is_none() {
            let channels: Vec<String> = app
                .health
                .iter()
                .map(|(ch, h)| match h {
                    crate::diff::ChannelHealth::Ready { healthy, total, .. } => {
                        format!("{ch} {healthy}/{total} healthy")
                    }
                    crate::diff::ChannelHealth::Progressing { message } => {
                        format!("{ch} {message}")
                    }
                    crate::diff::ChannelHealth::Failed { message } => {
                        format!("{ch} failed: {message}")
                    }
                    crate::diff::ChannelHealth::Idle => format!("{ch} idle"),
                })
                .collect();
            out.push_str(&format!(" (Nomad: {})", channels.join(", ")));
        }
        out.push('\n');
        for w in &app.warnings {
            out.push_str(&format!("{}: warning: {w}\n", app.app));
        }
    }
    for (id, result) in &report.orphans {
        out.push_str(&match result {
            Ok(true) => format!("orphaned Nomad job {id}: deleted (--prune-orphans)\n"),
            Ok(false) => format!("orphaned Nomad job {id}: no Hippo channel has this id{ORPHAN_CAUSE}; delete it with --prune-orphans\n"),
            Err(e) => format!("orphaned Nomad job {id}: deleting it failed: {e}\n"),
        });
    }
    out
}

#[derive(Serialize)]
struct RunJson<'a> {
    apps: Vec<AppJson<'a>>,
}

#[derive(Serialize)]
struct AppJson<'a> {
    app: &'a str,
    converged: bool,
    applied: &'a [String],
    warnings: &'a [String],
    condition: Condition,
}

/// `reconcile --once --output json`.
pub fn run_json(report: &RunReport) -> String {
    let body = RunJson {
        apps: report
            .apps
            .iter()
            .map(|a| AppJson {
                app: &a.app,
                converged: a.converged(),
                applied: &a.applied,
                warnings: &a.warnings,
                condition: condition(a),
            })
            .collect(),
    };
    serde_json::to_string_pretty(&body).expect("report serialises")
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
}

/// One app in `status`.
#[derive(Debug, Clone, Serialize)]
pub struct AppStatus {
    pub app: String,
    pub condition: Condition,
    pub channels: Vec<ChannelStatus>,
}

/// An app (and each of its channels) with `spec.suspend`.
fn suspended() -> Condition {
    cond(
        ConditionType::Suspended,
        "Suspended",
        "spec.suspend is set: the app is left alone, nothing is written",
    )
}

fn cond(kind: ConditionType, reason: &str, message: impl Into<String>) -> Condition {
    Condition {
        kind,
        status: true,
        reason: reason.into(),
        message: message.into(),
    }
}

/// Builds `status` from a plan and the snapshot it was made from. Pure.
pub fn app_statuses(
    desired: &crate::spec::DesiredState,
    plan: &Plan,
    snapshot: &crate::observe::Snapshot,
) -> Vec<AppStatus> {
    use crate::{diff, spec::Selector};
    desired
        .apps
        .iter()
        .zip(&plan.apps)
        .map(|(spec, app_plan)| {
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
                    let desired_revision = match &ch.selector {
                        Selector::Revision(v) => Some(v.clone()),
                        Selector::Range(r) => diff::max_satisfying(r, &numbers).map(String::from),
                    };
                    let current = hippo_app
                        .and_then(|a| snapshot.channels_of(a).find(|c| c.name == ch.name));
                    let hippo_revision = current
                        .and_then(|c| c.active_revision.as_ref())
                        .map(|r| r.revision_number.clone());
                    let pending: Vec<String> = app_plan
                        .changes
                        .iter()
                        .filter(|c| c.kind == "channel" && c.name == ch.name)
                        .map(|c| c.describe())
                        .collect();
                    let (nomad, health) = match (&snapshot.nomad, current) {
                        (None, _) => (NomadJobStatus::Unknown, None),
                        (Some(Err(e)), _) => (
                            NomadJobStatus::Unknown,
                            Some(cond(ConditionType::Reconciling, "NomadUnavailable", e.message.clone())),
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
                                diff::ChannelHealth::Ready { healthy, total, .. } => cond(
                                    ConditionType::Ready,
                                    "Running",
                                    format!("{healthy}/{total} allocation(s) healthy"),
                                ),
                                diff::ChannelHealth::Progressing { message } => {
                                    cond(ConditionType::Reconciling, "Progressing", message)
                                }
                                diff::ChannelHealth::Failed { message } => {
                                    cond(ConditionType::Reconciling, "AllocationFailed", message)
                                }
                                diff::ChannelHealth::Idle => {
                                    cond(ConditionType::Ready, "NoActiveRevision", "Hippo has no active revision for this channel: nothing runs")
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
                        suspended()
                    } else if let Some(p) = problem {
                        cond(
                            if p.transient { ConditionType::Reconciling } else { ConditionType::Stalled },
                            p.reason,
                            p.message.clone(),
                        )
                    } else if current.is_none() {
                        cond(ConditionType::Reconciling, "ChangesPending", "the channel does not exist in Hippo yet")
                    } else if !pending.is_empty() {
                        cond(ConditionType::Reconciling, "ChangesPending", pending.join("; "))
                    } else {
                        health.unwrap_or_else(|| {
                            cond(ConditionType::Ready, "HippoConverged", "Hippo matches the deploy file; Nomad is not configured, so what runs is unknown")
                        })
                    };
                    ChannelStatus {
                        channel: ch.name.clone(),
                        channel_id: current.map(|c| c.id),
                        desired_revision,
                        hippo_revision,
                        nomad,
                        condition,
                    }
                })
                .collect();
            let condition = if app_plan.suspended {
                suspended()
            } else if let Some(p) = app_plan.problems.first() {
                cond(
                    if p.transient { ConditionType::Reconciling } else { ConditionType::Stalled },
                    p.reason,
                    p.message.clone(),
                )
            } else if let Some(worst) = channels
                .iter()
                .map(|c| &c.condition)
                .find(|c| c.kind == ConditionType::Stalled)
                .or_else(|| channels.iter().map(|c| &c.condition).find(|c| c.kind != ConditionType::Ready))
            {
                worst.clone()
            } else if app_plan.changes.iter().any(|c| c.kind != "channel") || hippo_app.is_none() {
                cond(
                    ConditionType::Reconciling,
                    "ChangesPending",
                    app_plan.changes.iter().map(|c| c.describe()).collect::<Vec<_>>().join("; "),
                )
            } else {
                cond(ConditionType::Ready, "UpToDate", "matches the deploy file")
            };
            AppStatus {
                app: spec.name.clone(),
                condition,
                channels,
            }
        })
        .collect()
}

/// `status --output text`: a table, then one line per app that is not Ready.
pub fn statuses_text(apps: &[AppStatus]) -> String {
    let mut rows = vec![[
        "APP".to_string(),
        "CHANNEL".into(),
        "DESIRED".into(),
        "HIPPO".into(),
        "NOMAD JOB".into(),
        "ALLOCS".into(),
        "CONDITION".into(),
    ]];
    let dash = || "-".to_string();
    for app in apps {
        for ch in &app.channels {
            let (job, allocs) = match &ch.nomad {
                NomadJobStatus::Unknown => ("unknown".to_string(), "?".to_string()),
                NomadJobStatus::Missing => ("missing".to_string(), "0/0".to_string()),
                NomadJobStatus::Job {
                    version,
                    status,
                    healthy,
                    total,
                } => (format!("v{version} {status}"), format!("{healthy}/{total}")),
            };
            rows.push([
                app.app.clone(),
                ch.channel.clone(),
                ch.desired_revision.clone().unwrap_or_else(dash),
                ch.hippo_revision.clone().unwrap_or_else(dash),
                job,
                allocs,
                format!("{:?} ({})", ch.condition.kind, ch.condition.reason),
            ]);
        }
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    for app in apps {
        out.push_str(&format!(
            "{}: {:?} ({}): {}\n",
            app.app, app.condition.kind, app.condition.reason, app.condition.message
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        diff::{self, AppPlan, Problem},
        observe::Snapshot,
        spec::{self, LoadOptions},
    };

    fn example_plan() -> Plan {
        let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy-specs"));
        let mut desired = spec::load(&[dir.to_path_buf()], &LoadOptions::default()).unwrap();
        // The shipped example sets no env (Hippo drops it); a value that must never show.
        desired.apps[1].channels[0]
            .env
            .insert("RUST_LOG".into(), "info".into());
        assert_eq!(desired.apps[1].name, "weather");
        let mut snapshot = Snapshot::default();
        for app in &desired.apps {
            snapshot
                .bindles
                .insert(app.storage_id.clone(), Ok(Default::default()));
        }
        diff::diff(&desired.apps, &snapshot)
    }

    #[test]
    fn markdown_plan_summarises_tables_changes_and_keeps_env_values_out() {
        let plan = example_plan();
        let md = plan_markdown(&plan);
        let n = plan.changes().count();
        assert!(n > 0);
        assert!(
            md.contains(&format!("**{n} change(s) to 2 app(s)**, 0 unchanged.")),
            "{md}"
        );
        assert!(md.contains("#### `weather`"));
        assert!(md.contains("| ➕ | bindle | `weather/1.0.0` |"), "{md}");
        assert!(md.contains("| ➕ | channel | `production` |"), "{md}");
        // RUST_LOG is set to a value above; only the key may appear.
        assert!(md.contains("RUST_LOG"));
        for value in ["info", "debug", "warn"] {
            assert!(!md.contains(&format!("RUST_LOG={value}")), "{md}");
        }
        // One table row per change.
        assert_eq!(md.lines().filter(|l| l.starts_with("| ➕")).count(), n);
    }

    #[test]
    fn markdown_plan_escapes_what_would_break_the_table_or_render() {
        let plan = Plan {
            apps: vec![AppPlan {
                app: "we`ird".into(),
                changes: vec![],
                problems: vec![Problem {
                    message: "a | b <script>\nnext".into(),
                    transient: false,
                    reason: "BindleConflict",
                    revision: None,
                    channel: None,
                }],
                warnings: vec![],
                ..Default::default()
            }],
            orphans: vec!["0b2f".into()],
        };
        let md = plan_markdown(&plan);
        assert!(md.contains("**1 cannot be converged**"), "{md}");
        assert!(md.contains("#### `we'ird`"), "{md}");
        assert!(
            md.contains("- :x: **BindleConflict**: a \\| b &lt;script&gt; next"),
            "{md}"
        );
        assert!(md.contains("- `0b2f`"));
        let none = Plan {
            apps: vec![AppPlan {
                app: "a".into(),
                changes: vec![],
                problems: vec![],
                warnings: vec![],
                ..Default::default()
            }],
            orphans: vec![],
        };
        assert!(plan_markdown(&none).contains("**No changes.** 1 app(s)"));
    }
}

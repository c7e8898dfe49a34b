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

/// kstatus condition types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ConditionType {
    Ready,
    Reconciling,
    Stalled,
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
        if app.changes.is_empty() && app.problems.is_empty() && app.warnings.is_empty() {
            continue;
        }
        out.push_str(&format!("{}:\n", app.app));
        for p in &app.problems {
            out.push_str(&format!("  ! {} ({})\n", p.message, p.reason));
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

#[derive(Serialize)]
struct PlanJson<'a> {
    changes: Vec<&'a crate::diff::Change>,
    problems: Vec<AppProblemJson<'a>>,
    warnings: Vec<AppWarningJson<'a>>,
}

#[derive(Serialize)]
struct AppProblemJson<'a> {
    app: &'a str,
    reason: &'a str,
    message: &'a str,
    transient: bool,
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
    };
    serde_json::to_string_pretty(&body).expect("plan serialises")
}

/// One line per app for `reconcile --once`.
pub fn run_text(report: &RunReport) -> String {
    let mut out = String::new();
    for app in &report.apps {
        let c = condition(app);
        let line = match &app.error {
            None if app.applied.is_empty() => format!("{}: ready, unchanged", app.app),
            None => format!("{}: ready, {}", app.app, app.applied.join("; ")),
            Some(e) => {
                let done = if app.applied.is_empty() {
                    String::new()
                } else {
                    format!(" (after: {})", app.applied.join("; "))
                };
                let kind = if e.is_transient() {
                    "failed, will retry"
                } else {
                    "stalled"
                };
                format!("{}: {kind} [{}]: {e}{done}", app.app, c.reason)
            }
        };
        out.push_str(&line);
        out.push('\n');
        for w in &app.warnings {
            out.push_str(&format!("{}: warning: {w}\n", app.app));
        }
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

//! How `plan`, `reconcile --once` and `status` print: text for people, JSON for tools,
//! Markdown for a pull request comment. Pure functions of the core's plan and report.

use hippo_gitops_core::{
    apply::{Applied, RunReport},
    diff::{Action, Plan},
    events::Event,
    status::{AppStatus, Condition},
};
use serde::Serialize;

/// Why a Nomad job outlives its channel, most often: Hippo v0.19.0 never dispatches the events
/// of deleted entities, so deleting a channel leaves its job running (fixed in v0.19.1).
const ORPHAN_CAUSE: &str =
    " (a channel deleted through Hippo v0.19.0 leaves its job running; fixed in v0.19.1)";

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
        if app.changes.is_empty()
            && app.problems.is_empty()
            && app.warnings.is_empty()
            && app.promotions.is_empty()
            && app.held.is_empty()
        {
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
        for p in &app.promotions {
            out.push_str(&format!("  … {}: {}\n", promotion_head(p), p.message));
        }
        for h in &app.held {
            out.push_str(&format!("  ↩ {}\n", held_text(h)));
        }
        for c in &app.changes {
            let sign = match c.action {
                Action::Delete => '-',
                Action::Update => '~',
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

/// `production: 1.3.0 from canary (pending)`.
fn promotion_head(p: &hippo_gitops_core::delivery::PendingPromotion) -> String {
    format!(
        "{}: promotion of {} from {} pending",
        p.channel, p.revision, p.from
    )
}

/// `staging: held on 1.1.0 (rolled back from 1.2.0)`.
fn held_text(h: &hippo_gitops_core::delivery::HeldBack) -> String {
    format!(
        "{}: held on {} (rolled back from {}; it follows its rule again when a newer revision is there)",
        h.channel,
        h.pinned,
        h.bad.join(", ")
    )
}

/// What a destructive move does, said where it is shown.
fn destructive_note(m: &hippo_gitops_core::diff::ChannelMove) -> &'static str {
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
        if app.changes.is_empty()
            && app.problems.is_empty()
            && app.warnings.is_empty()
            && app.promotions.is_empty()
            && app.held.is_empty()
        {
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
        for p in &app.promotions {
            out.push_str(&format!(
                "- :hourglass: {}: {}\n",
                md_cell(&promotion_head(p)),
                md_cell(&p.message)
            ));
        }
        for h in &app.held {
            out.push_str(&format!(
                "- :leftwards_arrow_with_hook: {}\n",
                md_cell(&held_text(h))
            ));
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
                    Action::Delete => "➖",
                    Action::Update => "🔄",
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
    changes: Vec<&'a hippo_gitops_core::diff::Change>,
    problems: Vec<AppProblemJson<'a>>,
    warnings: Vec<AppWarningJson<'a>>,
    /// What each channel will run once the changes are made, where that moves.
    moves: Vec<MoveJson<'a>>,
    /// Apps with `spec.suspend`: nothing planned.
    suspended: Vec<&'a str>,
    /// Promotions waiting for their window (not changes).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    promotions: Vec<AppItemJson<'a, hippo_gitops_core::delivery::PendingPromotion>>,
    /// Channels a rollback holds on an older revision.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    held: Vec<AppItemJson<'a, hippo_gitops_core::delivery::HeldBack>>,
    /// Nomad jobs named like a Hippo channel GUID that no channel has.
    orphans: &'a [String],
}

#[derive(Serialize)]
struct AppItemJson<'a, T> {
    app: &'a str,
    #[serde(flatten)]
    item: &'a T,
}

#[derive(Serialize)]
struct MoveJson<'a> {
    app: &'a str,
    #[serde(flatten)]
    r#move: &'a hippo_gitops_core::diff::ChannelMove,
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
        promotions: plan
            .apps
            .iter()
            .flat_map(|a| {
                a.promotions
                    .iter()
                    .map(move |item| AppItemJson { app: &a.app, item })
            })
            .collect(),
        held: plan
            .apps
            .iter()
            .flat_map(|a| {
                a.held
                    .iter()
                    .map(move |item| AppItemJson { app: &a.app, item })
            })
            .collect(),
    };
    serde_json::to_string_pretty(&body).expect("plan serialises")
}

/// One line per app for `reconcile --once`.
pub fn run_text(report: &RunReport) -> String {
    let mut out = String::new();
    for app in &report.apps {
        let c = &app.condition;
        let line = match &app.error {
            _ if app.suspended => format!("{}: suspended (spec.suspend), nothing written", app.app),
            None if app.applied.is_empty() => format!("{}: ready, unchanged", app.app),
            None => format!("{}: ready, {}", app.app, descriptions(&app.applied)),
            Some(e) => {
                let done = if app.applied.is_empty() {
                    String::new()
                } else {
                    format!(" (after: {})", descriptions(&app.applied))
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
                    hippo_gitops_core::diff::ChannelHealth::Ready { healthy, total, .. } => {
                        format!("{ch} {healthy}/{total} healthy")
                    }
                    hippo_gitops_core::diff::ChannelHealth::Progressing { message } => {
                        format!("{ch} {message}")
                    }
                    hippo_gitops_core::diff::ChannelHealth::Failed { message } => {
                        format!("{ch} failed: {message}")
                    }
                    hippo_gitops_core::diff::ChannelHealth::Idle => format!("{ch} idle"),
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
    /// The run's events (every change is news to a one-shot run).
    events: &'a [Event],
}

#[derive(Serialize)]
struct AppJson<'a> {
    app: &'a str,
    converged: bool,
    applied: &'a [Applied],
    warnings: &'a [String],
    condition: &'a Condition,
}

/// The changes' descriptions, `; `-separated.
fn descriptions(applied: &[Applied]) -> String {
    let lines: Vec<&str> = applied.iter().map(|a| a.description.as_str()).collect();
    lines.join("; ")
}

/// `reconcile --once --output json`, with the run's events.
pub fn run_json(report: &RunReport, events: &[Event]) -> String {
    let body = RunJson {
        apps: report
            .apps
            .iter()
            .map(|a| AppJson {
                app: &a.app,
                converged: a.converged(),
                applied: &a.applied,
                warnings: &a.warnings,
                condition: &a.condition,
            })
            .collect(),
        events,
    };
    serde_json::to_string_pretty(&body).expect("report serialises")
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
            let (job, allocs) = ch.nomad.job_and_allocations();
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
        for ch in &app.channels {
            if let Some(p) = &ch.promotion {
                out.push_str(&format!(
                    "{}/{}: promotion pending: {p}\n",
                    app.app, ch.channel
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hippo_gitops_core::{
        diff::{self, AppPlan, Problem},
        observe::Snapshot,
        spec::{self, LoadOptions},
    };

    fn example_plan() -> Plan {
        let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy-specs"));
        let mut desired = spec::load(&[dir.to_path_buf()], &LoadOptions::default()).unwrap();
        // The shipped example sets no env (Hippo drops it); a value that must never show.
        std::sync::Arc::make_mut(&mut desired.apps[1]).channels[0]
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

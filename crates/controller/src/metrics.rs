//! Prometheus text exposition of the controller's metrics, written by hand: a few counters,
//! gauges and one histogram don't need a metrics library.

use std::{collections::BTreeMap, fmt::Write};

use hippo_gitops_core::stats::RequestStats;

use super::StatusView;

/// Upper bounds (seconds) of the reconcile duration histogram.
const BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// What the controller counts itself (requests are counted by [`RequestStats`]).
#[derive(Debug, Default)]
pub struct Metrics {
    /// Per bucket, observations at or below its bound; the last is +Inf.
    bucket_counts: [u64; BUCKETS.len() + 1],
    duration_sum: f64,
    duration_count: u64,
    /// Per-app reconcile results.
    results: BTreeMap<&'static str, u64>,
    /// Reconcile cycles by trigger.
    triggers: BTreeMap<&'static str, u64>,
    /// Revisions discovered, promotions and rollbacks made (issue 16).
    pub discovered: u64,
    pub promotions: u64,
    pub rollbacks: u64,
    /// Reloads of the source that parsed the deploy files, and those that found the files and
    /// their local bindles unchanged by metadata and read nothing again.
    pub source_parsed: u64,
    pub source_unchanged: u64,
}

impl Metrics {
    pub fn observe_cycle(&mut self, seconds: f64, trigger: &'static str) {
        let i = BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(BUCKETS.len());
        self.bucket_counts[i] += 1;
        self.duration_sum += seconds;
        self.duration_count += 1;
        *self.triggers.entry(trigger).or_default() += 1;
    }

    pub fn count_result(&mut self, result: &'static str) {
        *self.results.entry(result).or_default() += 1;
    }

    /// The exposition text.
    pub fn render(
        &self,
        view: &StatusView,
        role: super::Role,
        stats: &RequestStats,
        queue_depth: usize,
    ) -> String {
        let mut out = String::new();
        let w = &mut out;
        header(
            w,
            "hippo_gitops_reconcile_duration_seconds",
            "histogram",
            "Duration of reconcile cycles (observe, diff, apply).",
        );
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += self.bucket_counts[i];
            let _ = writeln!(
                w,
                "hippo_gitops_reconcile_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += self.bucket_counts[BUCKETS.len()];
        let _ = writeln!(
            w,
            "hippo_gitops_reconcile_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
        );
        let _ = writeln!(
            w,
            "hippo_gitops_reconcile_duration_seconds_sum {}",
            self.duration_sum
        );
        let _ = writeln!(
            w,
            "hippo_gitops_reconcile_duration_seconds_count {}",
            self.duration_count
        );

        header(
            w,
            "hippo_gitops_reconcile_cycles_total",
            "counter",
            "Reconcile cycles by what triggered them.",
        );
        for (trigger, n) in &self.triggers {
            let _ = writeln!(
                w,
                "hippo_gitops_reconcile_cycles_total{{trigger=\"{trigger}\"}} {n}"
            );
        }

        header(
            w,
            "hippo_gitops_reconciles_total",
            "counter",
            "App reconciles by result.",
        );
        for result in ["converged", "progressing", "retrying", "stalled", "skipped"] {
            let n = self.results.get(result).copied().unwrap_or(0);
            let _ = writeln!(
                w,
                "hippo_gitops_reconciles_total{{result=\"{result}\"}} {n}"
            );
        }

        header(
            w,
            "hippo_gitops_source_reads_total",
            "counter",
            "Reloads of the deploy files: parsed, or found unchanged (with their local bindles) by metadata and not read again.",
        );
        for (result, n) in [
            ("parsed", self.source_parsed),
            ("unchanged", self.source_unchanged),
        ] {
            let _ = writeln!(
                w,
                "hippo_gitops_source_reads_total{{result=\"{result}\"}} {n}"
            );
        }

        for (name, help, n) in [
            (
                "hippo_gitops_discovered_total",
                "Revisions found on the Bindle server by a discover range and registered in Hippo.",
                self.discovered,
            ),
            (
                "hippo_gitops_promotions_total",
                "Channels pinned to a revision their promote.from channel proved healthy.",
                self.promotions,
            ),
            (
                "hippo_gitops_rollbacks_total",
                "Channels pinned back from a revision that failed on Nomad.",
                self.rollbacks,
            ),
        ] {
            header(w, name, "counter", help);
            let _ = writeln!(w, "{name} {n}");
        }

        header(
            w,
            "hippo_gitops_apps",
            "gauge",
            "Apps by kstatus condition.",
        );
        for condition in ["Ready", "Reconciling", "Stalled"] {
            let n = view
                .apps
                .iter()
                .filter(|a| format!("{:?}", a.status.condition.kind) == condition)
                .count();
            let _ = writeln!(w, "hippo_gitops_apps{{condition=\"{condition}\"}} {n}");
        }
        header(
            w,
            "hippo_gitops_app_condition",
            "gauge",
            "1 for each app's current condition (kstatus type and reason): one series per app, so an app's old condition is gone once it changes.",
        );
        for a in &view.apps {
            let _ = writeln!(
                w,
                "hippo_gitops_app_condition{{app=\"{}\",condition=\"{:?}\",reason=\"{}\"}} 1",
                escape(&a.status.app),
                a.status.condition.kind,
                escape(&a.status.condition.reason)
            );
        }
        header(
            w,
            "hippo_gitops_app_last_change_timestamp_seconds",
            "gauge",
            "When the controller last applied a change to the app (Unix time); no series until it has, since it started.",
        );
        for a in &view.apps {
            if let Some(applied) = &a.last_applied {
                let _ = writeln!(
                    w,
                    "hippo_gitops_app_last_change_timestamp_seconds{{app=\"{}\"}} {}",
                    escape(&a.status.app),
                    applied.at.timestamp()
                );
            }
        }
        header(
            w,
            "hippo_gitops_rejected_files",
            "gauge",
            "Deploy files left out for their problems.",
        );
        let _ = writeln!(
            w,
            "hippo_gitops_rejected_files {}",
            view.rejected_files.len()
        );

        header(
            w,
            "hippo_gitops_source_error",
            "gauge",
            "1 while the deploy files can't be read or define no app: the last desired state stays in force and nothing is pruned.",
        );
        let _ = writeln!(
            w,
            "hippo_gitops_source_error {}",
            u8::from(view.source.error.is_some())
        );

        header(
            w,
            "hippo_gitops_requests_total",
            "counter",
            "Requests to Hippo, Bindle and Nomad by method and status code (0: no answer).",
        );
        for (key, n) in stats.snapshot() {
            let _ = writeln!(
                w,
                "hippo_gitops_requests_total{{service=\"{}\",method=\"{}\",code=\"{}\"}} {n}",
                key.service, key.method, key.status
            );
        }
        header(
            w,
            "hippo_gitops_uploaded_bytes_total",
            "counter",
            "Parcel bytes uploaded to Bindle.",
        );
        let _ = writeln!(
            w,
            "hippo_gitops_uploaded_bytes_total {}",
            stats.uploaded_bytes()
        );

        header(
            w,
            "hippo_gitops_queue_depth",
            "gauge",
            "Apps waiting for a reconcile (due, backing off, or rolling out).",
        );
        let _ = writeln!(w, "hippo_gitops_queue_depth {queue_depth}");

        header(
            w,
            "hippo_gitops_leader",
            "gauge",
            "1 when this replica may write (holds the leader lock, or runs alone).",
        );
        let _ = writeln!(
            w,
            "hippo_gitops_leader {}",
            u8::from(role != super::Role::Follower)
        );

        header(
            w,
            "hippo_gitops_ready",
            "gauge",
            "1 once the first observation is done.",
        );
        let _ = writeln!(w, "hippo_gitops_ready {}", u8::from(view.ready));

        if let Some(heap) = crate::memory::heap_live_bytes() {
            header(
                w,
                "hippo_gitops_heap_live_bytes",
                "gauge",
                "Bytes allocated and not yet freed (live heap; resident memory adds the allocator's free pages, stacks and the mapped binary).",
            );
            let _ = writeln!(w, "hippo_gitops_heap_live_bytes {heap}");
        }

        if let Some(commit) = &view.source.last_applied_commit {
            header(
                w,
                "hippo_gitops_last_applied_commit_info",
                "gauge",
                "The Git commit last applied in full.",
            );
            let _ = writeln!(
                w,
                "hippo_gitops_last_applied_commit_info{{sha=\"{}\"}} 1",
                escape(commit)
            );
        }
        if let Some(at) = &view.source.last_applied_at {
            header(
                w,
                "hippo_gitops_last_applied_timestamp_seconds",
                "gauge",
                "When the last commit was applied in full.",
            );
            let _ = writeln!(
                w,
                "hippo_gitops_last_applied_timestamp_seconds {}",
                at.timestamp()
            );
        }
        out
    }
}

fn header(w: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(w, "# HELP {name} {help}");
    let _ = writeln!(w, "# TYPE {name} {kind}");
}

/// Label values escape `\`, `"` and newlines.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DaemonAppStatus;
    use hippo_gitops_core::status::{Condition, ConditionType};

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut m = Metrics::default();
        m.observe_cycle(0.07, "interval");
        m.observe_cycle(0.3, "file");
        m.observe_cycle(1000.0, "webhook");
        m.count_result("converged");
        m.count_result("converged");
        m.count_result("retrying");
        let stats = RequestStats::default();
        stats.record("hippo", "GET", 200);
        stats.record("hippo", "GET", 200);
        stats.record("nomad", "PUT", 409);
        let text = m.render(&StatusView::default(), crate::Role::Leader, &stats, 3);
        for line in [
            "hippo_gitops_reconcile_duration_seconds_bucket{le=\"0.05\"} 0",
            "hippo_gitops_reconcile_duration_seconds_bucket{le=\"0.1\"} 1",
            "hippo_gitops_reconcile_duration_seconds_bucket{le=\"0.5\"} 2",
            "hippo_gitops_reconcile_duration_seconds_bucket{le=\"300\"} 2",
            "hippo_gitops_reconcile_duration_seconds_bucket{le=\"+Inf\"} 3",
            "hippo_gitops_reconcile_duration_seconds_count 3",
            "hippo_gitops_reconcile_cycles_total{trigger=\"webhook\"} 1",
            "hippo_gitops_reconciles_total{result=\"converged\"} 2",
            "hippo_gitops_reconciles_total{result=\"retrying\"} 1",
            "hippo_gitops_reconciles_total{result=\"stalled\"} 0",
            "hippo_gitops_requests_total{service=\"hippo\",method=\"GET\",code=\"200\"} 2",
            "hippo_gitops_requests_total{service=\"nomad\",method=\"PUT\",code=\"409\"} 1",
            "hippo_gitops_queue_depth 3",
            "hippo_gitops_ready 0",
            "hippo_gitops_source_error 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // No commit applied yet: no info series.
        assert!(!text.contains("last_applied_commit_info"));
    }

    fn app(name: &str, kind: ConditionType, reason: &str) -> DaemonAppStatus {
        DaemonAppStatus::unreconciled(name, Condition::new(kind, reason, "m"))
    }

    fn render(view: &StatusView) -> String {
        Metrics::default().render(view, crate::Role::Single, &RequestStats::default(), 0)
    }

    fn series<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .collect()
    }

    #[test]
    fn each_app_exports_its_current_condition_only() {
        let mut view = StatusView {
            apps: vec![
                app("weather", ConditionType::Ready, "UpToDate"),
                app("we\"ird\\app\n", ConditionType::Stalled, "BindleConflict"),
            ],
            ..Default::default()
        };
        let at = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        view.apps[0].last_applied = Some(crate::AppliedChanges {
            id: "c1".into(),
            at,
            changes: vec!["updated channel production".into()],
        });
        let text = render(&view);
        assert_eq!(
            series(&text, "hippo_gitops_app_condition"),
            vec![
                r#"hippo_gitops_app_condition{app="weather",condition="Ready",reason="UpToDate"} 1"#,
                r#"hippo_gitops_app_condition{app="we\"ird\\app\n",condition="Stalled",reason="BindleConflict"} 1"#,
            ]
        );
        assert_eq!(
            series(&text, "hippo_gitops_app_last_change_timestamp_seconds"),
            vec![r#"hippo_gitops_app_last_change_timestamp_seconds{app="weather"} 1700000000"#],
            "only apps the controller changed have a last change"
        );

        // weather fails: its Ready series goes, the new one takes its place.
        view.apps[0].status.condition.kind = ConditionType::Reconciling;
        view.apps[0].status.condition.reason = "AllocationFailed".into();
        let text = render(&view);
        let weather: Vec<&str> = series(&text, "hippo_gitops_app_condition")
            .into_iter()
            .filter(|l| l.contains(r#"app="weather""#))
            .collect();
        assert_eq!(
            weather,
            vec![
                r#"hippo_gitops_app_condition{app="weather",condition="Reconciling",reason="AllocationFailed"} 1"#
            ]
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}

//! `hippo-gitops bench` at a tiny size: every part runs, and its figures say what the
//! controller promises (no-op writes nothing, an idle cycle reads three Hippo lists and no
//! Bindle, an unchanged push uploads nothing, the spin-deploy-style redeploy duplicates).

use std::time::Duration;

use hippo_gitops_bench::{self as bench, BenchConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_benchmark_runs_and_its_figures_hold() {
    let dir = tempfile::tempdir().unwrap();
    let config = BenchConfig {
        sizes: vec![3],
        push_parcels: 3,
        parcel_bytes: 4096,
        dir: dir.path().to_path_buf(),
        binary: Some(env!("CARGO_BIN_EXE_hippo-gitops").into()),
        idle_window: Duration::from_millis(1500),
        idle_interval: Duration::from_millis(300),
        baseline: true,
    };
    let report = bench::run(&config, |_| {}).await.unwrap();
    let row = &report.rows[0];
    assert_eq!(row.apps, 3);
    // Cold: 6 bindles pushed, 3 apps, 9 channels (revisions come with the apps' import).
    assert!(row.cold.uploaded_bytes > 0);
    assert!(row.cold.hippo_writes >= 3 + 9, "{:?}", row.cold);
    assert_eq!(row.noop.hippo_writes, 0, "{:?}", row.noop);
    assert_eq!(row.noop.uploaded_bytes, 0);
    // Login + three lists, whatever the number of apps.
    assert_eq!(row.noop.hippo, 4, "{:?}", row.noop);
    // Bindle's 6 invoices in one page of the query API (255 a page), not a query per app.
    assert_eq!(row.noop.bindle, 1, "{:?}", row.noop);
    assert_eq!(row.changed.hippo_writes, 1, "{:?}", row.changed);
    // The baseline registers every version again on a redeploy.
    assert_eq!(row.baseline_duplicates, 6);
    assert!(row.baseline_redeploy.hippo_writes > 0);

    // Discovery: one app of the 3 got a version pushed straight to Bindle; it is registered
    // once, and the next round finds nothing and writes nothing.
    assert_eq!(row.discovered, 1, "{:?}", row.discover_new);
    assert!(row.discover_new.hippo_writes >= 1, "{:?}", row.discover_new);
    assert_eq!(
        row.discover_nothing.hippo_writes, 0,
        "{:?}",
        row.discover_nothing
    );
    assert!(row.discover_nothing.bindle > 0, "the round reads Bindle");

    let idle = row.idle.expect("the idle controller ran");
    assert!(idle.cycles >= 2, "{idle:?}");
    assert!((idle.per_cycle[0] - 3.0).abs() < 1.0, "{idle:?}");
    assert_eq!(idle.per_cycle[1], 0.0, "{idle:?}");
    assert!(idle.rss_kib > 0);
    // The live heap is read from the controller's own gauge, and is part of what is resident.
    assert!(idle.heap_kib > 0, "{idle:?}");
    assert!(idle.heap_kib < idle.rss_kib, "{idle:?}");
    assert!(idle.change_to_write < Duration::from_secs(10));

    let push = report.push.expect("the push comparison ran");
    assert_eq!(push.ours_unchanged_bytes, 0);
    assert_eq!(push.bytes, 3 * 4096);

    let dashboard = report.dashboard[0];
    assert_eq!(dashboard.apps, 3);
    assert!(dashboard.bytes > 1000, "{dashboard:?}");
    assert!(dashboard.median <= dashboard.max);
    // The page grows with the apps it lists (the bench's 1000-app figure is in BENCHMARKS.md).
    let bigger = bench::dashboard_overview(30, 1);
    assert!(bigger.bytes > dashboard.bytes + 27 * 100, "{bigger:?}");

    let md = bench::markdown(&report);
    assert!(md.contains("| 3 | cold converge |"), "{md}");
    assert!(md.contains("| 3 | discovery round: nothing new |"), "{md}");
    assert!(md.contains("| apps | dashboard overview (`GET /`)"), "{md}");
}

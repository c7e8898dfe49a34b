//! Progressive delivery (issue 16) through the binary: `plan` and `reconcile --once` against the
//! real Bindle server and the Hippo and Nomad emulators, with their exit codes (plan: 0 no
//! changes, 2 changes, 1 problems; `reconcile --once`: 0 converged, 1 otherwise). A pending
//! promotion, then a due one; a failing revision rolled back in the same run and never
//! promoted; promotion without Nomad; discovery of complete, incomplete and yanked bindles; and
//! discovery under injected 5xx after processing.

use hippo_gitops_testkit as common;

use std::{path::PathBuf, time::Duration};

use common::{spin_app, Bed, NomadBed, NomadBedOptions};
use hippo_gitops_core::delivery::{DeliveryRecords, RECORDS_VARIABLE};

/// A repository under the bed with `specs/shop.yaml` (app `shop`, storageId `shop`) holding
/// `revisions` and `channels` (raw YAML list items). `path:` revisions are written as
/// `../apps/shop-<version>`, whose Spin apps exist.
struct Repo {
    root: PathBuf,
}

impl Repo {
    fn new(bed: &Bed) -> Repo {
        let root = bed.path().join("repo");
        std::fs::create_dir_all(root.join(".git")).unwrap();
        Repo { root }
    }

    fn specs(&self) -> String {
        self.root.join("specs").to_string_lossy().into_owned()
    }

    /// Writes the deploy file with these `path:` versions, `discover:` ranges and channels.
    fn write(&self, paths: &[&str], discover: &[&str], channels: &str) {
        let mut revisions = String::new();
        for v in paths {
            let dir = self.root.join("apps").join(format!("shop-{v}"));
            if !dir.exists() {
                spin_app(&dir, "shop", v, v);
            }
            revisions.push_str(&format!("    - path: ../apps/shop-{v}\n"));
        }
        for d in discover {
            revisions.push_str(&format!("    - discover: \"{d}\"\n"));
        }
        std::fs::create_dir_all(self.root.join("specs")).unwrap();
        std::fs::write(
            self.root.join("specs/shop.yaml"),
            format!("apiVersion: hippo-gitops/v1\nkind: App\nmetadata:\n  name: shop\nspec:\n  revisions:\n{revisions}  channels:\n{channels}"),
        )
        .unwrap();
    }
}

/// The bed with Nomad, whose deployments judge health after 100 ms; its repository and specs
/// directory.
async fn nomad_bed() -> (NomadBed, Repo, String) {
    let nb = NomadBed::start_with(NomadBedOptions {
        healthy_delay: Duration::from_millis(100),
        ..Default::default()
    })
    .await;
    let repo = Repo::new(&nb.bed);
    let specs = repo.specs();
    (nb, repo, specs)
}

/// The bed without Nomad, and the specs directory of `shop`: every version `>=1.0.0` on the
/// Bindle server is discovered, and canary follows `*`.
async fn discovering() -> (Bed, String) {
    let bed = Bed::start().await;
    let repo = Repo::new(&bed);
    repo.write(
        &[],
        &[">=1.0.0"],
        "    - name: canary\n      range: \"*\"\n",
    );
    let specs = repo.specs();
    (bed, specs)
}

/// Canary follows `*`; production is promoted from it after `after`.
fn canary_and_production(after: &str, canary_rollback: bool) -> String {
    format!(
        "    - name: canary\n      range: \"*\"\n      rollback: {canary_rollback}\n    - name: production\n      promote:\n        from: canary\n        after: {after}\n"
    )
}

fn ok(code: i32, expected: i32, what: &str, out: &(i32, String, String)) {
    assert_eq!(
        code, expected,
        "{what}: exit {code}\nstdout:\n{}\nstderr:\n{}",
        out.1, out.2
    );
}

/// Runs the binary and asserts its exit code; answers its stdout.
async fn run_nomad(nb: &NomadBed, args: &[&str], expected: i32) -> String {
    let out = nb.run(args).await;
    ok(out.0, expected, &args.join(" "), &out);
    out.1
}

async fn run_plain(bed: &Bed, args: &[&str], expected: i32) -> String {
    let out = bed.run(args).await;
    ok(out.0, expected, &args.join(" "), &out);
    out.1
}

/// When Nomad's deployment judged every running allocation of `job` healthy: the latest
/// `DeploymentStatus.Timestamp` (promotion's clock).
fn healthy_since(nb: &NomadBed, job: &str) -> chrono::DateTime<chrono::Utc> {
    nb.nomad
        .allocations()
        .into_iter()
        .filter(|a| a["JobID"] == job && a["DesiredStatus"] == "run")
        .map(|a| {
            assert_eq!(a["DeploymentStatus"]["Healthy"], true, "{a}");
            chrono::DateTime::parse_from_rfc3339(
                a["DeploymentStatus"]["Timestamp"].as_str().unwrap(),
            )
            .unwrap()
            .to_utc()
        })
        .max()
        .expect("the job has allocations")
}

/// The line of `out` that contains `needle`.
fn line_with<'a>(out: &'a str, needle: &str) -> &'a str {
    out.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{out}"))
}

/// Sleeps until `at` (no earlier).
async fn sleep_until(at: chrono::DateTime<chrono::Utc>) {
    let left = (at - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(left + Duration::from_millis(20)).await;
}

/// Revision numbers Hippo holds for `shop`, in registration order.
fn revisions(bed: &Bed) -> Vec<String> {
    let state = bed.hippo.snapshot();
    state
        .revisions
        .iter()
        .map(|r| r.revision_number.clone())
        .collect()
}

/// What `shop`'s channel `name` runs in Hippo.
fn active(bed: &Bed, name: &str) -> Option<String> {
    bed.running("shop", name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_promotion_is_no_change_until_its_window_has_passed() {
    let (nb, repo, specs) = nomad_bed().await;
    repo.write(&["1.0.0"], &[], &canary_and_production("3s", false));

    let out = run_nomad(&nb, &["reconcile", "--once", "-f", &specs], 0).await;
    assert!(!out.contains("promote"), "{out}");
    let canary = nb.job_id("shop", "canary");
    assert_eq!(nb.bindle_arg(&canary).as_deref(), Some("shop/1.0.0"));
    assert_eq!(active(&nb.bed, "production"), None, "nothing promoted yet");
    let since = healthy_since(&nb, &canary);
    let due = since + chrono::Duration::seconds(3);

    // Pending: shown with the time it has run healthy, and not a change.
    let out = run_nomad(&nb, &["plan", "-f", &specs], 0).await;
    assert!(
        chrono::Utc::now() < due,
        "the plan ran after the window had passed: too slow to see it pending"
    );
    let line = line_with(&out, "promotion of 1.0.0");
    assert!(
        line.starts_with("  … production: promotion of 1.0.0 from canary pending: canary has run 1.0.0 healthy for ")
            && line.ends_with(" of 3s"),
        "{line}"
    );
    assert!(!out.contains("promote 1.0.0"), "{out}");
    // Nothing promoted yet, nothing due: Ready, with the promotion pending.
    let out = run_nomad(&nb, &["status", "-f", &specs], 0).await;
    assert!(
        line_with(&out, "shop  production").ends_with("Ready (NoActiveRevision)"),
        "{out}"
    );
    assert!(
        out.contains("shop/production: promotion pending: canary has run 1.0.0 healthy for "),
        "{out}"
    );
    let out = run_nomad(&nb, &["plan", "-f", &specs, "--output", "json"], 0).await;
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let p = &json["promotions"][0];
    assert_eq!(
        (
            &p["app"],
            &p["channel"],
            &p["from"],
            &p["revision"],
            &p["afterMs"]
        ),
        (
            &"shop".into(),
            &"production".into(),
            &"canary".into(),
            &"1.0.0".into(),
            &3000.into()
        ),
        "{out}"
    );
    assert!(p["healthyForMs"].as_u64().unwrap() < 3000, "{out}");
    assert_eq!(json["promotions"].as_array().unwrap().len(), 1);
    let out = run_nomad(&nb, &["plan", "-f", &specs, "--output", "markdown"], 0).await;
    assert!(
        out.contains("- :hourglass: production: promotion of 1.0.0 from canary pending: canary has run 1.0.0 healthy for "),
        "{out}"
    );

    // Due: a change.
    sleep_until(due).await;
    let out = run_nomad(&nb, &["plan", "-f", &specs], 2).await;
    let line = line_with(&out, "promote 1.0.0");
    assert!(
        line.starts_with("  + promote 1.0.0 to channel production (canary has run it healthy for ")
            && line.ends_with("): create channel production (revision 1.0.0)"),
        "{line}"
    );
    assert!(!out.contains("pending"), "{out}");
    let out = run_nomad(&nb, &["plan", "-f", &specs, "--output", "json"], 2).await;
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let delivery = &json["changes"][0]["delivery"];
    assert_eq!(
        (&delivery["kind"], &delivery["from"], &delivery["revision"]),
        (&"promote".into(), &"canary".into(), &"1.0.0".into()),
        "{out}"
    );
    assert!(delivery["healthyForMs"].as_u64().unwrap() >= 3000, "{out}");
    assert!(json.get("promotions").is_none(), "{out}");

    let out = run_nomad(&nb, &["reconcile", "--once", "-f", &specs], 0).await;
    assert!(
        out.contains("promoted 1.0.0 to channel production"),
        "{out}"
    );
    assert_eq!(active(&nb.bed, "production").as_deref(), Some("1.0.0"));
    assert_eq!(
        nb.bindle_arg(&nb.job_id("shop", "production")).as_deref(),
        Some("shop/1.0.0")
    );
    let out = run_nomad(&nb, &["plan", "-f", &specs], 0).await;
    assert!(!out.contains("promot"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_revision_is_rolled_back_in_the_same_run_and_never_promoted() {
    let (nb, repo, specs) = nomad_bed().await;
    // `after: 0s`: production takes whatever canary runs healthy, at once.
    let channels = canary_and_production("0s", true);
    repo.write(&["1.0.0"], &[], &channels);
    run_nomad(&nb, &["reconcile", "--once", "-f", &specs], 0).await;
    let out = run_nomad(&nb, &["reconcile", "--once", "-f", &specs], 0).await;
    assert!(
        out.contains("promoted 1.0.0 to channel production"),
        "{out}"
    );

    // 1.1.0 turns unhealthy wherever it runs.
    nb.nomad
        .make_unhealthy("shop/1.1.0", "health check /health failed");
    repo.write(&["1.0.0", "1.1.0"], &[], &channels);
    let out = run_nomad(&nb, &["reconcile", "--once", "-f", &specs], 0).await;
    assert!(
        out.contains("rolled back channel canary from 1.1.0 to 1.0.0 (1.1.0 failed on Nomad: "),
        "{out}"
    );
    assert!(!out.contains("promoted"), "{out}");
    assert_eq!(active(&nb.bed, "canary").as_deref(), Some("1.0.0"));
    let canary = nb.job_id("shop", "canary");
    let production = nb.job_id("shop", "production");
    assert_eq!(nb.bindle_arg(&canary).as_deref(), Some("shop/1.0.0"));
    assert_eq!(active(&nb.bed, "production").as_deref(), Some("1.0.0"));
    assert_eq!(nb.bindle_arg(&production).as_deref(), Some("shop/1.0.0"));

    // The record, in the Nomad Variable.
    let var: serde_json::Value =
        reqwest::get(format!("{}/v1/var/{RECORDS_VARIABLE}", nb.nomad.url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let items = serde_json::from_value(var["Items"].clone()).unwrap();
    let records = DeliveryRecords::from_items(&items).unwrap();
    let record = records
        .rollback("shop", "canary", "range *")
        .unwrap_or_else(|| panic!("{var}"));
    assert_eq!(record.bad.iter().collect::<Vec<_>>(), ["1.1.0"]);
    assert_eq!(record.pinned, "1.0.0");

    // Held, and nothing to do: neither canary nor production moves to 1.1.0.
    let out = run_nomad(&nb, &["plan", "-f", &specs], 0).await;
    assert!(
        out.contains("  ↩ canary: held on 1.0.0 (rolled back from 1.1.0; "),
        "{out}"
    );
    let out = run_nomad(&nb, &["plan", "-f", &specs, "--output", "json"], 0).await;
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        json["held"],
        serde_json::json!([{"app": "shop", "channel": "canary", "bad": ["1.1.0"], "pinned": "1.0.0"}]),
        "{out}"
    );
    let out = run_nomad(&nb, &["reconcile", "--once", "-f", &specs], 0).await;
    assert!(!out.contains("1.1.0 to"), "{out}");
    assert_eq!(nb.bindle_arg(&canary).as_deref(), Some("shop/1.0.0"));
    assert_eq!(nb.bindle_arg(&production).as_deref(), Some("shop/1.0.0"));
    let out = run_nomad(&nb, &["status", "-f", &specs], 0).await;
    assert!(out.contains("RolledBack"), "{out}");

    // A newer healthy revision: canary follows its range again, then production follows it.
    repo.write(&["1.0.0", "1.1.0", "1.2.0"], &[], &channels);
    let out = run_nomad(&nb, &["plan", "-f", &specs], 2).await;
    assert!(!out.contains("↩"), "{out}");
    run_nomad(&nb, &["reconcile", "--once", "-f", &specs], 0).await;
    assert_eq!(active(&nb.bed, "canary").as_deref(), Some("1.2.0"));
    assert_eq!(nb.bindle_arg(&canary).as_deref(), Some("shop/1.2.0"));
    let out = run_nomad(&nb, &["plan", "-f", &specs], 2).await;
    assert!(out.contains("promote 1.2.0 to channel production"), "{out}");
    run_nomad(&nb, &["reconcile", "--once", "-f", &specs], 0).await;
    assert_eq!(nb.bindle_arg(&production).as_deref(), Some("shop/1.2.0"));
    let out = run_nomad(&nb, &["plan", "-f", &specs], 0).await;
    assert!(!out.contains("↩") && !out.contains("pending"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_unhealthy_in_canary_is_never_promoted() {
    let (nb, repo, specs) = nomad_bed().await;
    let channels = canary_and_production("0s", false);
    repo.write(&["1.0.0"], &[], &channels);
    run_nomad(&nb, &["reconcile", "--once", "-f", &specs], 0).await;
    run_nomad(&nb, &["reconcile", "--once", "-f", &specs], 0).await;
    assert_eq!(active(&nb.bed, "production").as_deref(), Some("1.0.0"));

    nb.nomad
        .make_unhealthy("shop/1.1.0", "health check /health failed");
    repo.write(&["1.0.0", "1.1.0"], &[], &channels);
    // Canary fails (no rollback asked for); production stays, however often it is run.
    for _ in 0..2 {
        let out = run_nomad(&nb, &["reconcile", "--once", "-f", &specs], 1).await;
        assert!(!out.contains("promote"), "{out}");
        assert!(out.contains("health check /health failed"), "{out}");
    }
    assert_eq!(active(&nb.bed, "canary").as_deref(), Some("1.1.0"));
    assert_eq!(active(&nb.bed, "production").as_deref(), Some("1.0.0"));
    assert_eq!(
        nb.bindle_arg(&nb.job_id("shop", "production")).as_deref(),
        Some("shop/1.0.0")
    );
    // Not a change: plan exits 0 (a failing allocation is `reconcile`'s to report).
    let out = run_nomad(&nb, &["plan", "-f", &specs], 0).await;
    let line = line_with(&out, "promotion of 1.1.0");
    assert!(
        line.starts_with("  … production: promotion of 1.1.0 from canary pending: canary runs 1.1.0, not healthy on Nomad: "),
        "{line}"
    );
    assert!(!out.contains("promote 1.1.0"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_revision_that_fails_in_production_is_rolled_back_and_not_promoted_again() {
    let (nb, repo, specs) = nomad_bed().await;
    let channels = "    - name: canary\n      range: \"*\"\n    - name: production\n      promote:\n        from: canary\n        after: 0s\n      rollback: true\n";
    repo.write(&["1.0.0"], &[], channels);
    run_nomad(&nb, &["reconcile", "--once", "-f", &specs], 0).await;
    run_nomad(&nb, &["reconcile", "--once", "-f", &specs], 0).await;
    let production = nb.job_id("shop", "production");
    assert_eq!(nb.bindle_arg(&production).as_deref(), Some("shop/1.0.0"));

    // 1.1.0 runs healthy in canary; then it turns unhealthy: canary's allocations keep their
    // verdict, production's new ones are judged unhealthy.
    repo.write(&["1.0.0", "1.1.0"], &[], channels);
    run_nomad(&nb, &["reconcile", "--once", "-f", &specs], 0).await;
    assert_eq!(active(&nb.bed, "canary").as_deref(), Some("1.1.0"));
    nb.nomad
        .make_unhealthy("shop/1.1.0", "out of memory under production load");
    let out = run_nomad(&nb, &["reconcile", "--once", "-f", &specs], 0).await;
    assert!(
        out.contains("promoted 1.1.0 to channel production")
            && out.contains(
                "rolled back channel production from 1.1.0 to 1.0.0 (1.1.0 failed on Nomad: "
            ),
        "{out}"
    );
    assert_eq!(active(&nb.bed, "production").as_deref(), Some("1.0.0"));
    assert_eq!(nb.bindle_arg(&production).as_deref(), Some("shop/1.0.0"));

    // Canary still runs 1.1.0, healthy: never promoted again.
    let out = run_nomad(&nb, &["plan", "-f", &specs], 0).await;
    assert!(
        out.contains("  ↩ production: held on 1.0.0 (rolled back from 1.1.0; "),
        "{out}"
    );
    assert!(!out.contains("promot"), "{out}");
    let out = run_nomad(&nb, &["reconcile", "--once", "-f", &specs], 0).await;
    assert!(!out.contains("promot"), "{out}");
    assert_eq!(active(&nb.bed, "production").as_deref(), Some("1.0.0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_first_revision_has_nothing_to_roll_back_to() {
    let (nb, repo, specs) = nomad_bed().await;
    nb.nomad
        .make_unhealthy("shop/1.0.0", "health check /health failed");
    repo.write(&["1.0.0"], &[], &canary_and_production("0s", true));
    let out = run_nomad(&nb, &["reconcile", "--once", "-f", &specs], 1).await;
    assert!(!out.contains("rolled back"), "{out}");
    let out = run_nomad(&nb, &["plan", "-f", &specs], 1).await;
    assert!(
        out.contains("NoHealthyRevision")
            && out.contains("channel canary: 1.0.0 fails on Nomad (")
            && out.contains("nothing to roll back to"),
        "{out}"
    );
    let out = run_nomad(&nb, &["status", "-f", &specs], 2).await;
    assert!(out.contains("Stalled (NoHealthyRevision)"), "{out}");
    assert_eq!(active(&nb.bed, "production"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotion_without_nomad_is_stalled() {
    let bed = Bed::start().await;
    let repo = Repo::new(&bed);
    let specs = repo.specs();
    repo.write(&["1.0.0"], &[], &canary_and_production("1s", false));
    // Canary converges; production cannot.
    let out = run_plain(&bed, &["reconcile", "--once", "-f", &specs], 1).await;
    assert!(out.contains("PromotionNeedsNomad"), "{out}");
    assert_eq!(active(&bed, "canary").as_deref(), Some("1.0.0"));
    let out = bed.run(&["plan", "-f", &specs]).await;
    ok(out.0, 1, "plan", &out);
    let said = format!("{}{}", out.1, out.2);
    assert!(
        said.contains("PromotionNeedsNomad")
            && said.contains("channel production promotes on health judged by Nomad, and Nomad is not configured"),
        "{said}"
    );
    let out = run_plain(&bed, &["status", "-f", &specs], 2).await;
    assert!(out.contains("Stalled (PromotionNeedsNomad)"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_once_discovers_complete_versions_and_never_yanked_ones() {
    let (bed, specs) = discovering().await;
    bed.push_version("shop", "1.0.0").await;
    run_plain(&bed, &["reconcile", "--once", "-f", &specs], 0).await;
    assert_eq!(revisions(&bed), ["1.0.0"]);
    assert_eq!(active(&bed, "canary").as_deref(), Some("1.0.0"));

    // Pushed by CI, no change to the files.
    bed.push_version("shop", "1.1.0").await;
    let out = run_plain(&bed, &["plan", "-f", &specs], 2).await;
    assert!(
        out.contains("register revision 1.1.0 (discovered on the Bindle server)"),
        "{out}"
    );
    let out = run_plain(&bed, &["plan", "-f", &specs, "--output", "json"], 2).await;
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let change = &json["changes"][0];
    assert_eq!(
        (&change["op"], &change["version"], &change["discovered"]),
        (&"registerRevision".into(), &"1.1.0".into(), &true.into()),
        "{out}"
    );
    let out = run_plain(&bed, &["reconcile", "--once", "-f", &specs], 0).await;
    assert!(
        out.contains("registered revision 1.1.0 (discovered on the Bindle server)"),
        "{out}"
    );
    assert_eq!(revisions(&bed), ["1.0.0", "1.1.0"]);
    assert_eq!(active(&bed, "canary").as_deref(), Some("1.1.0"));

    // A push still under way, and a version yanked.
    let partial = bed.push_invoice_only("shop", "1.2.0").await;
    bed.push_version("shop", "1.3.0").await;
    bed.yank("shop/1.3.0").await;
    let out = run_plain(&bed, &["plan", "-f", &specs], 0).await;
    assert!(
        out.contains("warning: bindle shop/1.2.0 matches a discover range but is not complete on the Bindle server yet; it is registered once it is"),
        "{out}"
    );
    let out = run_plain(&bed, &["reconcile", "--once", "-f", &specs], 0).await;
    assert!(out.contains("shop/1.2.0 matches a discover range"), "{out}");
    assert!(!out.contains("registered revision"), "{out}");
    assert_eq!(revisions(&bed), ["1.0.0", "1.1.0"]);

    // Complete now: registered; the yanked one never is.
    bed.complete_push(&partial).await;
    let out = run_plain(&bed, &["reconcile", "--once", "-f", &specs], 0).await;
    assert!(
        out.contains("registered revision 1.2.0 (discovered on the Bindle server)"),
        "{out}"
    );
    assert_eq!(revisions(&bed), ["1.0.0", "1.1.0", "1.2.0"]);
    assert_eq!(active(&bed, "canary").as_deref(), Some("1.2.0"));
    let out = run_plain(&bed, &["plan", "-f", &specs], 0).await;
    assert!(!out.contains("1.3.0"), "{out}");
    common::assert_no_duplicates(&bed.hippo.snapshot());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_is_not_created_while_a_discovered_version_is_incomplete() {
    let (bed, specs) = discovering().await;
    bed.push_version("shop", "1.0.0").await;
    let partial = bed.push_invoice_only("shop", "1.1.0").await;
    // Hippo imports every version on the server when it creates an app, complete or not.
    let out = run_plain(&bed, &["plan", "-f", &specs], 1).await;
    assert!(
        out.contains("app shop cannot be created yet: bindle(s) shop/1.1.0 match a discover range but are not complete on the Bindle server"),
        "{out}"
    );
    let out = run_plain(&bed, &["reconcile", "--once", "-f", &specs], 1).await;
    assert!(out.contains("BindleIncomplete"), "{out}");
    assert!(bed.hippo.snapshot().apps.is_empty());

    bed.complete_push(&partial).await;
    run_plain(&bed, &["reconcile", "--once", "-f", &specs], 0).await;
    assert_eq!(revisions(&bed), ["1.0.0", "1.1.0"]);
    assert_eq!(active(&bed, "canary").as_deref(), Some("1.1.0"));
}

/// Discovery under 5xx after processing: Hippo registers a revision and the answer is lost
/// (the proxy replaces it with a 502), so a controller that registered again on a retry, or
/// trusted its own memory over Hippo's state, would duplicate it. `error=0.4` is 20% of Hippo's
/// answers replaced after processing (and 20% refused before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_under_injected_5xx_after_processing_registers_each_version_once() {
    use hippo_gitops_core::apply;
    use hippo_gitops_emulators::faults::{FaultProxy, FaultSpec};
    use std::sync::atomic::Ordering;

    let (bed, specs) = discovering().await;
    let desired = common::load(std::path::Path::new(&specs));
    bed.push_version("shop", "1.0.0").await;
    let (ctx, _) = bed.context();
    let report = apply::reconcile(&desired, &ctx).await.unwrap();
    assert!(report.apps[0].converged());

    let proxy = FaultProxy::start(
        bed.hippo.addr(),
        FaultSpec {
            error_rate: 0.4,
            seed: 16,
            ..Default::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let (ctx, _) = bed.context_with_hippo(format!("http://{}", proxy.addr()));
    // Registrations whose answer was lost.
    let mut lost = 0;
    let mut versions: Vec<String> = Vec::new();
    // Eight versions at a time, until a registration's answer was lost (which requests draw
    // the faults depends on the order concurrent requests reach the proxy): almost always
    // the first eight.
    for batch in 0..5 {
        for minor in 1..=8 {
            let v = format!("1.{}.0", batch * 8 + minor);
            bed.push_version("shop", &v).await;
            versions.push(v);
        }
        for run in 1.. {
            let converged = match apply::reconcile(&desired, &ctx).await {
                Ok(report) => {
                    for a in &report.apps {
                        let e = a.error.as_ref().map(|e| e.to_string()).unwrap_or_default();
                        if e.starts_with("registering revision") && e.contains("502") {
                            lost += 1;
                        }
                    }
                    report.apps.iter().all(|a| a.converged())
                }
                Err(_) => false,
            };
            // Whatever a run did, it never leaves a duplicate behind.
            common::assert_no_duplicates(&bed.hippo.snapshot());
            if converged {
                break;
            }
            assert!(run < 30, "not converged after {run} runs");
        }
        if lost > 0 {
            break;
        }
    }
    assert!(
        lost > 0,
        "no registration's answer was lost in {} versions ({} answers lost after processing)",
        versions.len(),
        proxy.counters().errors_after.load(Ordering::SeqCst)
    );
    // Every registration that reached Hippo took: one POST per version, however many answers
    // were lost.
    let registrations = bed
        .hippo
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/api/revisions")
        .count();
    assert_eq!(registrations, versions.len());
    let mut expected = vec!["1.0.0".to_string()];
    expected.extend(versions.iter().cloned());
    assert_eq!(revisions(&bed), expected);
    assert_eq!(active(&bed, "canary"), versions.last().cloned());
    let (ctx, _) = bed.context();
    let plan = apply::plan(&desired, &ctx).await.unwrap().plan;
    assert_eq!(plan.changes().count(), 0);
}

/// The records are read, changed and written back with Nomad's check-and-set: a write made
/// from a stale read is refused, so two controllers never lose each other's rollbacks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_records_are_written_with_check_and_set() {
    use std::collections::BTreeMap;

    let nb = NomadBed::start().await;
    let (ctx, _) = nb.context(None);
    let client = &ctx.nomad.as_ref().unwrap().client;
    assert_eq!(client.read_variable(RECORDS_VARIABLE).await.unwrap(), None);
    let first = DeliveryRecords::default().to_items();
    // cas=0: only if there is none.
    assert!(client
        .write_variable(RECORDS_VARIABLE, &first, 0)
        .await
        .unwrap());
    assert!(!client
        .write_variable(RECORDS_VARIABLE, &first, 0)
        .await
        .unwrap());
    let (items, index) = client
        .read_variable(RECORDS_VARIABLE)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(items, first);
    let second: BTreeMap<String, String> =
        BTreeMap::from([("records".into(), r#"{"rollbacks":{}}"#.into())]);
    assert!(client
        .write_variable(RECORDS_VARIABLE, &second, index)
        .await
        .unwrap());
    // Written from the stale read: refused, and what was written stays.
    assert!(!client
        .write_variable(RECORDS_VARIABLE, &first, index)
        .await
        .unwrap());
    let (items, newer) = client
        .read_variable(RECORDS_VARIABLE)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(items, second);
    assert!(newer > index);
}

//! End to end on the real Bindle server and the Hippo emulator: converge from empty, rerun with
//! zero writes, one changed range → one channel update, prune, a bindle conflict that fails one
//! app while the others converge, resumed pushes and no duplicate revisions.

use hippo_gitops_testkit as common;

use std::collections::BTreeMap;

use common::{app_doc, copy_examples, load, spin_app, Bed};
use hippo_gitops_core::{apply, package, spec::DesiredState, status::ConditionType};

fn writes(bed: &Bed) -> Vec<String> {
    bed.hippo
        .requests()
        .into_iter()
        .filter(|r| r.method != "GET" && r.path != "/api/auth-tokens")
        .map(|r| format!("{} {} {}", r.method, r.path, r.status))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_converge_from_empty_and_a_rerun_changes_nothing() {
    let bed = Bed::start().await;
    let specs = copy_examples(bed.path());
    let specs_s = specs.to_string_lossy().into_owned();

    let (code, stdout, stderr) = bed.run(&["reconcile", "--once", "-f", &specs_s]).await;
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("weather: ready, pushed bindle weather/1.0.0"),
        "{stdout}"
    );
    assert!(
        stdout.contains("invoices: ready, pushed bindle invoices/0.3.0"),
        "{stdout}"
    );
    assert!(!stderr.contains("password"), "{stderr}");

    let state = bed.hippo.snapshot();
    let app = |n: &str| state.apps.iter().find(|a| a.name == n).unwrap().clone();
    let weather = app("weather");
    let revs: BTreeMap<uuid::Uuid, String> = state
        .revisions
        .iter()
        .map(|r| (r.id, r.revision_number.clone()))
        .collect();
    let mut numbers: Vec<&str> = state
        .revisions
        .iter()
        .filter(|r| r.app_id == weather.id)
        .map(|r| r.revision_number.as_str())
        .collect();
    numbers.sort();
    assert_eq!(numbers, ["1.0.0", "1.1.0"], "each revision exactly once");
    let channel = |app_id, name: &str| {
        state
            .channels
            .iter()
            .find(|c| c.app_id == app_id && c.name == name)
            .unwrap_or_else(|| panic!("channel {name}"))
            .clone()
    };
    let production = channel(weather.id, "production");
    assert_eq!(production.range_rule.as_deref(), Some("~1.0.0"));
    assert_eq!(production.domain, "weather.example.com");
    assert_eq!(revs[&production.active_revision_id.unwrap()], "1.0.0");
    let canary = channel(weather.id, "canary");
    assert_eq!(revs[&canary.active_revision_id.unwrap()], "1.1.0");
    let env: Vec<(String, String)> = state
        .environment_variables
        .iter()
        .filter(|e| e.channel_id == production.id)
        .map(|e| (e.key.clone(), e.value.clone()))
        .collect();
    assert_eq!(env, vec![("RUST_LOG".to_string(), "info".to_string())]);
    let invoices = app("invoices");
    let inv_prod = channel(invoices.id, "production");
    assert_eq!(revs[&inv_prod.active_revision_id.unwrap()], "0.3.0");

    // Second run: zero writes to Hippo, zero parcels uploaded, plan exits 0.
    bed.hippo.clear_requests();
    let desired = load(&specs);
    let (ctx, stats) = bed.context();
    let report = apply::reconcile(&desired, &ctx).await.unwrap();
    assert!(
        report
            .apps
            .iter()
            .all(|a| a.converged() && a.applied.is_empty()),
        "{}",
        hippo_gitops::render::run_text(&report)
    );
    assert_eq!(writes(&bed), Vec::<String>::new());
    // The report carries each app's final plan and conditions: nothing left, all Ready.
    for app in &report.apps {
        assert!(app.plan.changes.is_empty(), "{:?}", app.plan.changes);
        assert_eq!(
            (app.condition.kind, app.condition.reason.as_str()),
            (ConditionType::Ready, "UpToDate")
        );
        assert_eq!(app.status.condition.kind, ConditionType::Ready, "{app:?}");
    }
    assert_eq!(stats.writes("hippo"), 0);
    assert_eq!(stats.uploaded_parcels(), 0);
    assert_eq!(stats.uploaded_bytes(), 0);
    assert_eq!(
        stats.writes("bindle"),
        0,
        "no invoice or parcel is even offered again"
    );

    let (code, stdout, _) = bed.run(&["plan", "-f", &specs_s]).await;
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("No changes"), "{stdout}");
    let (code, stdout, _) = bed.run(&["reconcile", "--once", "-f", &specs_s]).await;
    assert_eq!(code, 0);
    assert_eq!(
        stdout,
        "invoices: ready, unchanged\nweather: ready, unchanged\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_range_is_exactly_one_channel_update_and_plan_shows_it_first() {
    let bed = Bed::start().await;
    let specs = copy_examples(bed.path());
    let specs_s = specs.to_string_lossy().into_owned();
    let (ctx, _) = bed.context();
    apply::reconcile(&load(&specs), &ctx).await.unwrap();

    let file = specs.join("weather.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("range: \"~1.0.0\"", "range: \"^1.0\"")).unwrap();

    bed.hippo.clear_requests();
    let (code, stdout, stderr) = bed.run(&["plan", "-f", &specs_s, "--output", "json"]).await;
    assert_eq!(code, 2, "{stderr}");
    let plan: serde_json::Value =
        serde_json::from_str(&stdout).expect("plan prints only JSON on stdout");
    let changes = plan["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{stdout}");
    assert_eq!(changes[0]["action"], "update");
    assert_eq!(changes[0]["kind"], "channel");
    assert_eq!(changes[0]["app"], "weather");
    assert_eq!(changes[0]["name"], "production");
    assert_eq!(writes(&bed), Vec::<String>::new(), "plan writes nothing");

    let (code, stdout, stderr) = bed.run(&["reconcile", "--once", "-f", &specs_s]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    let w = writes(&bed);
    // Without Nomad to verify on, the PUT is followed by desired-status Running: Hippo v0.19
    // may start no job after a PUT alone (AUDIT.md, "PUT").
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(
        w[0].starts_with("PUT /api/channels/") && w[0].ends_with(" 204"),
        "{w:?}"
    );
    assert!(
        w[1].starts_with(&w[0].replace(" 204", "/desired-status")),
        "{w:?}"
    );
    // The PUT moved production to the newest ^1.0 revision.
    let state = bed.hippo.snapshot();
    let prod = state
        .channels
        .iter()
        .find(|c| c.name == "production" && c.range_rule.as_deref() == Some("^1.0"))
        .unwrap();
    let active = state
        .revisions
        .iter()
        .find(|r| Some(r.id) == prod.active_revision_id)
        .unwrap();
    assert_eq!(active.revision_number, "1.1.0");
    assert!(
        stdout.contains(
            "updated channel production: range: ~1.0.0 -> ^1.0; revision: 1.0.0 -> 1.1.0"
        ),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_deletes_unlisted_channels_only_when_asked() {
    let bed = Bed::start().await;
    let dir = bed.path().join("repo");
    spin_app(&dir.join("app"), "shop", "1.0.0", "one");
    let doc = |prune| {
        app_doc(
            "shop",
            &["app"],
            "    - name: production\n      range: \"*\"\n    - name: staging\n      range: \"*\"\n",
            prune,
        )
    };
    std::fs::write(dir.join("shop.yaml"), doc(false)).unwrap();
    let (ctx, _) = bed.context();
    apply::reconcile(&load(&dir), &ctx).await.unwrap();
    assert_eq!(bed.hippo.snapshot().channels.len(), 2);

    // staging leaves the file: kept without prune...
    std::fs::write(
        dir.join("shop.yaml"),
        doc(false).replace("    - name: staging\n      range: \"*\"\n", ""),
    )
    .unwrap();
    bed.hippo.clear_requests();
    let report = apply::reconcile(&load(&dir), &ctx).await.unwrap();
    assert!(report.apps[0].converged());
    assert_eq!(writes(&bed), Vec::<String>::new());
    assert_eq!(bed.hippo.snapshot().channels.len(), 2);

    // ...and deleted with it.
    std::fs::write(
        dir.join("shop.yaml"),
        doc(true).replace("    - name: staging\n      range: \"*\"\n", ""),
    )
    .unwrap();
    let report = apply::reconcile(&load(&dir), &ctx).await.unwrap();
    assert!(
        report.apps[0].converged(),
        "{}",
        hippo_gitops::render::run_text(&report)
    );
    let w = writes(&bed);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].starts_with("DELETE /api/channels/"), "{w:?}");
    let names: Vec<String> = bed
        .hippo
        .snapshot()
        .channels
        .iter()
        .map(|c| c.name.clone())
        .collect();
    assert_eq!(names, ["production"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bindle_conflict_fails_that_app_while_the_others_converge() {
    let bed = Bed::start().await;
    let dir = bed.path().join("repo");
    spin_app(&dir.join("weather"), "weather", "1.0.0", "ours");
    spin_app(&dir.join("shop"), "shop", "1.0.0", "shop");
    std::fs::write(
        dir.join("apps.yaml"),
        format!(
            "{}---\n{}",
            app_doc(
                "weather",
                &["weather"],
                "    - name: production\n      range: \"*\"\n",
                false
            ),
            app_doc(
                "shop",
                &["shop"],
                "    - name: production\n      range: \"*\"\n",
                false
            )
        ),
    )
    .unwrap();
    // Someone already pushed weather/1.0.0 with other content.
    let theirs = bed.path().join("theirs");
    spin_app(&theirs, "weather", "1.0.0", "theirs");
    let (ctx, _) = bed.context();
    ctx.bindle
        .push(&package::load(&theirs).unwrap())
        .await
        .unwrap();

    let dir_s = dir.to_string_lossy().into_owned();
    let (code, stdout, stderr) = bed.run(&["reconcile", "--once", "-f", &dir_s]).await;
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stdout.contains("shop: ready"), "{stdout}");
    assert!(
        stdout.contains("weather: stalled [BindleConflict]: bindle weather/1.0.0 already exists on the Bindle server with different content; bindles are immutable: bump the version"),
        "{stdout}"
    );
    let state = bed.hippo.snapshot();
    assert!(
        state.apps.iter().all(|a| a.name != "weather"),
        "nothing is written for the failing app"
    );
    assert!(state.apps.iter().any(|a| a.name == "shop"));

    // In the library's report, the failing app's status carries the run's condition, and its
    // final plan still holds what could not be done.
    let report = apply::reconcile(&load(&dir), &ctx).await.unwrap();
    let weather = report.apps.iter().find(|a| a.app == "weather").unwrap();
    assert_eq!(weather.condition.kind, ConditionType::Stalled);
    assert_eq!(weather.condition.reason, "BindleConflict");
    assert_eq!(weather.status.condition, weather.condition);
    assert!(weather
        .plan
        .problems
        .iter()
        .any(|p| p.reason == "BindleConflict"));
    let shop = report.apps.iter().find(|a| a.app == "shop").unwrap();
    assert_eq!(shop.condition.kind, ConditionType::Ready);
    assert!(shop.plan.changes.is_empty());

    // plan reports the same problem and exits 1.
    let (code, stdout, _) = bed.run(&["plan", "-f", &dir_s]).await;
    assert_eq!(code, 1);
    assert!(stdout.contains("bump the version"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bindle_edited_after_loading_is_not_pushed_until_loaded_again() {
    // The desired state keeps what a bindle is (its parcels' digest), not its bytes: a push
    // packs it again from disk, and refuses content that is not what was planned.
    let bed = Bed::start().await;
    let dir = bed.path().join("repo");
    spin_app(&dir.join("weather"), "weather", "1.0.0", "ours");
    spin_app(&dir.join("shop"), "shop", "1.0.0", "shop");
    let channels = "    - name: production\n      range: \"*\"\n";
    std::fs::write(
        dir.join("apps.yaml"),
        format!(
            "{}---\n{}",
            app_doc("weather", &["weather"], channels, false),
            app_doc("shop", &["shop"], channels, false)
        ),
    )
    .unwrap();
    let desired = load(&dir);
    // Edited after the load, before the push.
    spin_app(&dir.join("weather"), "weather", "1.0.0", "edited");

    let (ctx, stats) = bed.context();
    let report = apply::reconcile(&desired, &ctx).await.unwrap();
    let weather = report.apps.iter().find(|a| a.app == "weather").unwrap();
    let err = weather.error.as_ref().expect("weather fails");
    assert_eq!(err.reason(), "LocalBindleChanged");
    assert!(err.is_transient(), "a reload brings the new content");
    assert!(err.to_string().contains("changed on disk"), "{err}");
    assert!(report
        .apps
        .iter()
        .find(|a| a.app == "shop")
        .unwrap()
        .converged());
    let versions = ctx.bindle.versions("weather").await.unwrap();
    assert!(versions.is_empty(), "nothing was pushed for weather");
    assert_eq!(stats.uploaded_parcels(), 3, "shop's three parcels only");

    // Loaded again: the edited content is what is pushed.
    let report = apply::reconcile(&load(&dir), &ctx).await.unwrap();
    assert!(
        report.apps.iter().all(|a| a.converged()),
        "{}",
        hippo_gitops::render::run_text(&report)
    );
    let edited = package::load(&dir.join("weather")).unwrap();
    let on_server = ctx.bindle.versions("weather").await.unwrap();
    assert_eq!(on_server.get("1.0.0").unwrap().parcels, edited.parcel_set());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_revision_is_registered_once_and_moves_the_range_channel() {
    let bed = Bed::start().await;
    let dir = bed.path().join("repo");
    spin_app(&dir.join("v1"), "shop", "1.0.0", "one");
    let channels =
        "    - name: production\n      range: \"^1\"\n    - name: pinned\n      revision: 1.0.0\n";
    std::fs::write(
        dir.join("shop.yaml"),
        app_doc("shop", &["v1"], channels, false),
    )
    .unwrap();
    let (ctx, _) = bed.context();
    apply::reconcile(&load(&dir), &ctx).await.unwrap();

    spin_app(&dir.join("v2"), "shop", "1.1.0", "two");
    std::fs::write(
        dir.join("shop.yaml"),
        app_doc("shop", &["v1", "v2"], channels, false),
    )
    .unwrap();
    bed.hippo.clear_requests();
    let report = apply::reconcile(&load(&dir), &ctx).await.unwrap();
    assert!(
        report.apps[0].converged(),
        "{}",
        hippo_gitops::render::run_text(&report)
    );
    let w = writes(&bed);
    assert_eq!(w.len(), 2, "{w:?}");
    assert_eq!(
        w[0], "POST /api/revisions 201",
        "Hippo's range re-evaluation moves the channel itself"
    );
    assert!(
        w[1].starts_with("PUT /api/channels/") && w[1].ends_with("/desired-status 204"),
        "without Nomad, the moved channel's job is started through Hippo: {w:?}"
    );
    let state = bed.hippo.snapshot();
    let numbers: Vec<&str> = state
        .revisions
        .iter()
        .map(|r| r.revision_number.as_str())
        .collect();
    assert_eq!(numbers.iter().filter(|n| **n == "1.1.0").count(), 1);
    let active = |name: &str| {
        let c = state.channels.iter().find(|c| c.name == name).unwrap();
        state
            .revisions
            .iter()
            .find(|r| Some(r.id) == c.active_revision_id)
            .unwrap()
            .revision_number
            .clone()
    };
    assert_eq!(active("production"), "1.1.0");
    assert_eq!(active("pinned"), "1.0.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_push_is_resumed_and_nothing_is_duplicated() {
    let bed = Bed::start().await;
    let dir = bed.path().join("repo");
    spin_app(&dir.join("app"), "shop", "1.0.0", "one");
    std::fs::write(
        dir.join("shop.yaml"),
        app_doc(
            "shop",
            &["app"],
            "    - name: production\n      range: \"*\"\n",
            false,
        ),
    )
    .unwrap();
    // A crash after the invoice was created and before any parcel was uploaded.
    let local = package::load(&dir.join("app")).unwrap();
    let mut invoice = local.invoice.clone();
    invoice
        .sign(bindle::signature::SignatureRole::Creator, &bed.key)
        .unwrap();
    let raw = bindle::client::Client::new(
        &format!("{}/", bed.bindle.url()),
        bindle::client::tokens::NoToken,
        std::sync::Arc::new(bindle::signature::KeyRing::default()),
    )
    .unwrap();
    let created = raw.create_invoice(invoice).await.unwrap();
    assert_eq!(
        created.missing.unwrap_or_default().len(),
        local.parcels.len()
    );

    let (ctx, stats) = bed.context();
    let plan = apply::plan(&load(&dir), &ctx).await.unwrap().plan;
    assert!(plan
        .changes()
        .next()
        .unwrap()
        .describe()
        .contains("resuming an interrupted push"));
    let report = apply::reconcile(&load(&dir), &ctx).await.unwrap();
    assert!(
        report.apps[0].converged(),
        "{}",
        hippo_gitops::render::run_text(&report)
    );
    assert_eq!(stats.uploaded_parcels() as usize, local.parcels.len());
    let missing = ctx.bindle.missing_parcels(&local.id).await.unwrap();
    assert_eq!(missing, Some(vec![]));
    let state = bed.hippo.snapshot();
    assert_eq!(state.apps.len(), 1);
    assert_eq!(state.revisions.len(), 1);
    assert_eq!(state.channels.len(), 1);
}

/// Writes `docs` as `dir/apps.yaml`, converges them, and answers them loaded.
async fn converge_docs(bed: &Bed, dir: &std::path::Path, docs: &[String]) -> DesiredState {
    std::fs::write(dir.join("apps.yaml"), docs.join("---\n")).unwrap();
    let desired = load(dir);
    let (ctx, _) = bed.context();
    let report = apply::reconcile(&desired, &ctx).await.unwrap();
    assert!(
        report.apps.iter().all(|a| a.converged()),
        "{}",
        hippo_gitops::render::run_text(&report)
    );
    desired
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_op_hippo_requests_do_not_grow_with_the_number_of_apps() {
    let bed = Bed::start().await;
    let mut counts = Vec::new();
    for n in [2usize, 8] {
        let dir = bed.path().join(format!("repo{n}"));
        let mut docs = Vec::new();
        for i in 0..n {
            let name = format!("app{i}");
            spin_app(&dir.join(&name), &name, "1.0.0", &name);
            docs.push(app_doc(&name, &[&name], "    - name: production\n      range: \"*\"\n    - name: canary\n      revision: 1.0.0\n", false));
        }
        let desired = converge_docs(&bed, &dir, &docs).await;
        let (ctx, stats) = bed.context();
        let report = apply::reconcile(&desired, &ctx).await.unwrap();
        assert!(report.apps.iter().all(|a| a.applied.is_empty()));
        assert_eq!(stats.writes("hippo"), 0);
        counts.push(stats.requests("hippo"));
    }
    // One login and one page each of apps, channels and revisions, whatever the number of apps.
    assert_eq!(counts, vec![4, 4]);
}

/// A no-op reads the Bindle server's invoices in pages of 255 (the query API's `limit` is a
/// `u8`), `ceil(invoices / 255)` requests, not one query per storage id; and the versions it
/// builds are each app's own, though `app1`'s name is a substring of `app10`'s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_op_reads_bindle_in_pages_not_once_per_app() {
    let bed = Bed::start().await;
    let dir = bed.path().join("repo");
    let apps = 130; // 260 invoices: two pages
    let mut docs = Vec::new();
    for i in 0..apps {
        let name = format!("app{i}");
        for (v, version) in [("v1", "1.0.0"), ("v2", "2.0.0")] {
            spin_app(
                &dir.join(&name).join(v),
                &name,
                version,
                &format!("{name} {v}"),
            );
        }
        let revisions = [format!("{name}/v1"), format!("{name}/v2")];
        docs.push(app_doc(
            &name,
            &[&revisions[0], &revisions[1]],
            "    - name: production\n      range: \"*\"\n",
            false,
        ));
    }
    let desired = converge_docs(&bed, &dir, &docs).await;

    let (ctx, stats) = bed.context();
    let all = ctx.bindle.all_versions().await.unwrap();
    assert_eq!(all.len(), apps);
    assert!(all
        .values()
        .all(|v| v.get("1.0.0").is_some() && v.get("2.0.0").is_some()));
    assert_eq!(stats.requests("bindle"), 2, "260 invoices, 255 a page");
    for name in ["app1", "app10", "app129"] {
        assert_eq!(
            all[name],
            ctx.bindle.versions(name).await.unwrap(),
            "{name}"
        );
    }

    let (ctx, stats) = bed.context();
    let report = apply::reconcile(&desired, &ctx).await.unwrap();
    assert!(report.apps.iter().all(|a| a.applied.is_empty()));
    assert_eq!(stats.requests("bindle"), 2, "the no-op's Bindle reads");
    assert_eq!(report.snapshot.bindles.len(), apps);
    for (name, versions) in &report.snapshot.bindles {
        assert_eq!(**versions.as_ref().expect("read"), all[name], "{name}");
    }
}

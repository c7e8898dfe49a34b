//! The dashboard in a real browser (Debian's chromium driven through chromedriver over
//! WebDriver), against the controller in-process on the real Bindle server and the Hippo and
//! Nomad emulators: the overview lists every app with its condition; an edited deploy file
//! shows up as an event on the app's page without a reload; "Reconcile now" reconciles with
//! the token and is absent without one; a `<script>` in a message is shown as text; a
//! screenshot is saved (the test prints where). Also the HTTP side: the CSP header, no inline
//! script, and no env value on any page.

use hippo_gitops_testkit as common;

use std::{path::Path, time::Duration};

use common::{copy_examples, eventually, webdriver::Browser, NomadBed};
use hippo_gitops_controller::{dashboard::CONTENT_SECURITY_POLICY, source::SourceConfig, Daemon};
use hippo_gitops_core::status::ConditionType;

const TOKEN: &str = "dashboard-t0ken";

async fn start(nb: &NomadBed, specs: &Path, state: &str, token: Option<&str>) -> (Daemon, String) {
    let source = SourceConfig::Files {
        paths: vec![specs.to_path_buf()],
        options: Default::default(),
    };
    let mut c = common::controller_config(source, &nb.bed.path().join(state), token);
    c.interval = Duration::from_millis(500);
    common::start_controller(nb, c).await
}

fn condition(daemon: &Daemon, app: &str) -> Option<ConditionType> {
    daemon
        .shared
        .view()
        .apps
        .iter()
        .find(|a| a.status.app == app)
        .map(|a| a.status.condition.kind)
}

fn replace_line(file: &Path, starts: &str, with: &str) {
    let text = std::fs::read_to_string(file).unwrap();
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with(starts))
        .unwrap_or_else(|| panic!("no line starting with {starts} in {}", file.display()))
        .to_string();
    let indent = &line[..line.len() - line.trim_start().len()];
    std::fs::write(file, text.replace(&line, &format!("{indent}{with}"))).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_real_browser() {
    let nb = NomadBed::start().await;
    let specs = copy_examples(nb.bed.path());
    let (daemon, base) = start(&nb, &specs, "state", Some(TOKEN)).await;
    eventually(30, "every app Ready", || {
        condition(&daemon, "weather") == Some(ConditionType::Ready)
            && condition(&daemon, "invoices") == Some(ConditionType::Ready)
    })
    .await;
    let browser = Browser::start().await;

    // The overview: every app, with its condition.
    browser.goto(&format!("{base}/")).await;
    for app in ["weather", "invoices"] {
        let badge = browser
            .find(&format!("tr[data-app=\"{app}\"] .cond .c"))
            .await;
        assert_eq!(browser.text(&badge).await, "Ready", "{app}");
    }
    assert_eq!(browser.find_all("#apps tbody tr").await.len(), 2);
    let weather_channels = browser.find("tr[data-app=\"weather\"] .ch").await;
    let text = browser.text(&weather_channels).await;
    assert!(text.contains("production 1.0.0 1/1"), "{text}");
    // Filtering by condition is a plain GET form: it works without the script too.
    browser.goto(&format!("{base}/?q=&condition=Stalled")).await;
    assert_eq!(browser.find_all("#apps tbody tr").await.len(), 0);
    browser.goto(&format!("{base}/?q=weath")).await;
    assert_eq!(browser.find_all("#apps tbody tr").await.len(), 1);

    // An edit shows up on the app's page as an event, without a reload.
    browser.goto(&format!("{base}/apps/weather")).await;
    browser
        .run("window.__notReloaded = true; return true;")
        .await;
    let before = browser.find_all("#events tbody tr").await.len();
    assert!(before > 0);
    replace_line(&specs.join("weather.yaml"), "revision: ", "revision: 1.0.0");
    browser
        .wait_until(
            20,
            "the canary's move as an event row",
            "return [...document.querySelectorAll('#events tbody tr')].some(r => r.textContent.includes('canary') && r.textContent.includes('1.1.0 → 1.0.0'));",
        )
        .await;
    assert_eq!(
        browser.run("return window.__notReloaded === true;").await,
        serde_json::Value::Bool(true),
        "the page was reloaded"
    );
    assert!(browser.find_all("#events tbody tr").await.len() > before);

    // "Reconcile now": a wrong token is refused, the right one reconciles, and the token is
    // not kept in the page.
    let form = browser.find("#reconcile").await;
    assert!(browser.displayed(&form).await);
    let token = browser.find("#token").await;
    browser.type_into(&token, "wrong").await;
    browser
        .click(&browser.find("#reconcile button").await)
        .await;
    browser
        .wait_until(
            10,
            "the refusal",
            "return document.getElementById('reconcile-result').textContent === 'Wrong token';",
        )
        .await;
    let cycles_before = api_cycles(&daemon);
    browser.type_into(&token, TOKEN).await;
    browser
        .click(&browser.find("#reconcile button").await)
        .await;
    browser
        .wait_until(10, "the request accepted", "return document.getElementById('reconcile-result').textContent === 'Reconcile requested';")
        .await;
    assert_eq!(
        browser
            .run("return document.getElementById('token').value;")
            .await,
        ""
    );
    assert!(!browser
        .run("return document.documentElement.outerHTML;")
        .await
        .as_str()
        .unwrap()
        .contains(TOKEN));
    eventually(10, "a cycle triggered through the API", || {
        api_cycles(&daemon) > cycles_before
    })
    .await;

    // A message holding `<script>` is shown as text and never runs: an unknown field named
    // so makes the file left out and the app Stalled with the problem in its message.
    let invoices = specs.join("invoices.yaml");
    let text = std::fs::read_to_string(&invoices).unwrap();
    std::fs::write(
        &invoices,
        text.replace(
            "  prune: true",
            "  prune: true\n  \"<script>window.__xss=1</script>\": 1",
        ),
    )
    .unwrap();
    eventually(20, "invoices Stalled", || {
        condition(&daemon, "invoices") == Some(ConditionType::Stalled)
    })
    .await;
    browser.goto(&format!("{base}/")).await;
    let message = browser.find("tr[data-app=\"invoices\"] .msg").await;
    assert!(
        browser
            .text(&message)
            .await
            .contains("<script>window.__xss=1</script>"),
        "the message is shown as text"
    );
    browser.goto(&format!("{base}/apps/invoices")).await;
    let reason = browser.text(&browser.find("#reason").await).await;
    assert!(
        reason.contains("<script>window.__xss=1</script>"),
        "{reason}"
    );
    assert_eq!(
        browser.run("return typeof window.__xss;").await,
        "undefined"
    );
    assert_eq!(
        browser
            .run("return document.querySelectorAll('script').length;")
            .await,
        1
    );

    // The screenshot, for the README.
    browser.goto(&format!("{base}/")).await;
    let shot = browser
        .screenshot(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard/overview.png"))
        .await;
    browser.goto(&format!("{base}/apps/weather")).await;
    let app_shot = browser
        .screenshot(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard/app-weather.png"))
        .await;
    println!(
        "dashboard screenshots: {} and {}",
        shot.display(),
        app_shot.display()
    );

    // Without a token there is no button.
    let (plain, plain_base) = start(&nb, &specs, "state-plain", None).await;
    eventually(30, "weather observed", || {
        condition(&plain, "weather").is_some()
    })
    .await;
    browser.goto(&format!("{plain_base}/apps/weather")).await;
    browser
        .wait_until(5, "the page", "return document.readyState === 'complete';")
        .await;
    assert!(browser.find_all("#reconcile").await.is_empty());
    assert!(!browser
        .run("return document.body.textContent;")
        .await
        .as_str()
        .unwrap()
        .contains("Reconcile now"));
    browser.close().await;
    plain.shutdown().await.unwrap();
    daemon.shutdown().await.unwrap();
}

fn api_cycles(daemon: &Daemon) -> u64 {
    daemon
        .shared
        .metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix("hippo_gitops_reconcile_cycles_total{trigger=\"api\"} "))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn pages_carry_a_content_security_policy_and_no_env_value() {
    let nb = NomadBed::start().await;
    // The copy's production channel sets RUST_LOG=info; give it a value nothing else says.
    let specs = copy_examples(nb.bed.path());
    replace_line(
        &specs.join("weather.yaml"),
        "RUST_LOG:",
        "RUST_LOG: s3cr3t-env-value",
    );
    let (daemon, base) = start(&nb, &specs, "state", Some(TOKEN)).await;
    eventually(30, "weather reconciled", || {
        condition(&daemon, "weather").is_some() && !daemon.shared.insight.events.is_empty()
    })
    .await;
    for path in [
        "/",
        "/apps/weather",
        "/apps/invoices",
        "/apps/nope",
        "/static/dashboard.js",
        "/static/dashboard.css",
        "/api/v1/apps",
        "/api/v1/apps/weather",
        "/api/v1/events",
    ] {
        let r = reqwest::get(format!("{base}{path}")).await.unwrap();
        let headers = r.headers().clone();
        let body = r.text().await.unwrap();
        assert!(
            !body.contains("s3cr3t-env-value"),
            "{path} shows an env value"
        );
        assert!(!body.contains(TOKEN), "{path} shows the token");
        if !path.starts_with("/api/") {
            assert_eq!(
                headers["content-security-policy"], CONTENT_SECURITY_POLICY,
                "{path}"
            );
            assert_eq!(headers["x-content-type-options"], "nosniff");
        }
        if path == "/" || path.starts_with("/apps/") {
            assert!(body.contains("<script src=\"/static/dashboard.js\" defer></script>"));
            assert_eq!(body.matches("<script").count(), 1, "{path}: inline script");
            for handler in ["onclick=", "onload=", "onerror=", "onsubmit=", "style="] {
                assert!(!body.contains(handler), "{path}: inline {handler}");
            }
        }
    }
    assert_eq!(
        reqwest::get(format!("{base}/apps/nope"))
            .await
            .unwrap()
            .status(),
        404
    );
    daemon.shutdown().await.unwrap();
}

//! The binary as a long-running controller (`reconcile` without `--once`), each test on its own
//! in-process sandbox: a deploy file edited on disk converges; webhooks (GitHub, GitLab,
//! generic) trigger a cycle only when authenticated (401 otherwise, 403 without a secret); a
//! local bare Git repository's commits are applied and their SHA reported; SIGTERM stops it
//! within the grace and releases the leader lock; SIGKILL in the middle of a reconcile, then a
//! restart, converges with no duplicates.
//!
//! The children are real processes: their HTTP port is read from their log (port 0, never a
//! fixed port), they are driven over HTTP with a tiny HTTP/1.1 client, and a guard kills them
//! if a test panics.

use hippo_gitops_testkit as common;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use common::{assert_examples_converged, assert_no_duplicates, git, hippo_state};
use hippo_gitops_controller::webhook::sign;
use hippo_gitops_emulators::hippo::EmulatorState;
use serde_json::Value;

use hippo_gitops_testkit::controller_child;

use controller_child::*;

// ---------------------------------------------------------------------------------------------
// The tests.

#[test]
fn a_changed_deploy_file_converges_within_seconds() {
    let (_tmp, dir, sb) = checkout();
    let mut d = Daemon::start(&dir, &sandbox_args(&["-f", "deploy-specs/"]));
    let before = d.until_all_ready(30);
    assert_eq!(before["source"]["kind"], "files");
    assert_eq!(before["role"], "leader", "/status says the role as of now");
    assert_eq!(
        channel(&before, "weather", "production").unwrap()["hippoRevision"],
        "1.0.0"
    );
    assert_eq!(get(d.addr, "/healthz").unwrap().body.trim(), "ok");
    let ready = get(d.addr, "/readyz").unwrap();
    assert_eq!(ready.status, 200);
    assert_eq!(
        ready.json(),
        serde_json::json!({"ready": true, "role": "leader"}),
        "alone on the sandbox's Nomad, it leads"
    );
    let metrics = d.metrics();
    assert_eq!(metrics_value(&metrics, "hippo_gitops_leader"), 1.0);
    assert!(
        metrics_value(
            &metrics,
            "hippo_gitops_reconciles_total{result=\"converged\"}"
        ) >= 2.0,
        "{metrics}"
    );

    // The binary's memory setup (src/memory.rs): the live heap is counted and exported, and
    // transparent huge pages are off for the process.
    let heap = metrics_value(&metrics, "hippo_gitops_heap_live_bytes");
    assert!((100_000.0..1e9).contains(&heap), "{metrics}");
    let proc_status = std::fs::read_to_string(format!("/proc/{}/status", d.child.id())).unwrap();
    if let Some(line) = proc_status.lines().find(|l| l.starts_with("THP_enabled:")) {
        assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
    }

    edit_weather(&dir.join("deploy-specs"));
    let edited = Instant::now();
    // Nothing but the watcher can notice the edit: the interval is 60s.
    d.until(10, "the edit in Hippo", |addr| {
        let s = status(addr)?;
        let ch = channel(&s, "weather", "production")?;
        (ch["desiredRevision"] == "1.1.0" && ch["hippoRevision"] == "1.1.0").then_some(())
    });
    let in_hippo = edited.elapsed();
    // Then rolled out on Nomad (checked again every few seconds while in progress).
    let after = d.until_all_ready(20);
    let weather = app(&after, "weather").unwrap();
    assert!(weather["reconcileId"].is_string(), "{weather}");
    assert!(
        cycles(d.addr, "file") >= 1.0,
        "a cycle triggered by the file change:\n{}",
        d.metrics()
    );
    d.terminate();

    let state = hippo_state(&sb);
    assert_examples_converged(&state);
    assert_weather_edit_applied(&state);
    assert_state_files_private(&sb);
    eprintln!("the edit reached Hippo {in_hippo:?} after it was saved");
}

/// Every file the sandbox keeps its state in (Hippo's with live tokens and env values, Nomad's,
/// the keys, the password) is readable by its owner only. The Bindle server's store (sled) is
/// left out: it holds the parcels, which are not secret.
fn assert_state_files_private(sandbox: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(sandbox).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let files: Vec<(String, std::fs::Metadata)> = if meta.is_dir() {
            std::fs::read_dir(&path)
                .unwrap()
                .map(|e| e.unwrap())
                .filter(|e| e.file_name() != "db")
                .map(|e| {
                    (
                        format!("{name}/{}", e.file_name().to_string_lossy()),
                        e.metadata().unwrap(),
                    )
                })
                .filter(|(_, m)| m.is_file())
                .collect()
        } else {
            vec![(name, meta)]
        };
        for (name, meta) in files {
            assert_eq!(
                meta.permissions().mode() & 0o077,
                0,
                "{name} in the sandbox is readable by others: {:o}",
                meta.permissions().mode()
            );
            seen.push(name);
        }
    }
    assert!(
        seen.iter().any(|n| n == "hippo.json") && seen.iter().any(|n| n.ends_with(".toml")),
        "the sandbox's state files: {seen:?}"
    );
}

#[test]
fn webhooks_trigger_a_reconcile_only_when_authenticated() {
    let (_tmp, dir, _sb) = checkout();
    let secret = "It's a Secret to Everybody";
    let mut d = Daemon::start(
        &dir,
        &sandbox_args(&["-f", "deploy-specs/", "--webhook-secret", secret]),
    );
    // And one without a secret (started now, so both converge at the same time).
    let (_tmp2, dir2, _) = checkout();
    // Also without NO_COLOR: its log goes to a pipe, which gets no colour anyway.
    let no_secret = Daemon::start_with(&dir2, &sandbox_args(&["-f", "deploy-specs/"]), |cmd| {
        cmd.env_remove("NO_COLOR");
    });
    // Once every app is Ready nothing is due before the 60s interval: the loop is idle, so
    // every cycle from now on is one the test caused.
    d.until_all_ready(30);
    assert_eq!(cycles(d.addr, "webhook"), 0.0);

    let body = br#"{"ref":"refs/heads/main","after":"0123abcd"}"#;
    let good = sign(secret, body);
    let wrong_secret = sign("another secret", body);
    let tampered = sign(secret, br#"{"ref":"refs/heads/main"}"#);
    let refused: [(&str, Vec<(&str, &str)>); 8] = [
        ("/hooks/github", vec![]),
        (
            "/hooks/github",
            vec![("X-Hub-Signature-256", &wrong_secret)],
        ),
        ("/hooks/github", vec![("X-Hub-Signature-256", &tampered)]),
        ("/hooks/github", vec![("X-Hub-Signature-256", "sha256=zz")]),
        ("/hooks/gitlab", vec![("X-Gitlab-Token", "It's a Secret")]),
        ("/hooks/gitlab", vec![("X-Hub-Signature-256", &good)]),
        ("/hooks/generic", vec![("X-Signature-256", &wrong_secret)]),
        ("/hooks/generic", vec![]),
    ];
    for (path, headers) in &refused {
        let r = post(d.addr, path, headers, body);
        assert_eq!(r.status, 401, "{path} {headers:?}: {}", r.body);
        assert_eq!(r.json()["triggered"], false, "{path} {headers:?}");
    }
    fence_no_webhook_cycle(&mut d, &dir.join("deploy-specs"));

    // Each authenticated one triggers a cycle, labelled as a webhook's.
    let accepted: [(&str, (&str, &str)); 4] = [
        ("/hooks/github", ("X-Hub-Signature-256", &good)),
        ("/hooks/gitlab", ("X-Gitlab-Token", secret)),
        ("/hooks/generic", ("X-Signature-256", &good)),
        // GitHub-style senders work as they are on the generic hook.
        ("/hooks/generic", ("X-Hub-Signature-256", &good)),
    ];
    for (n, (path, header)) in accepted.iter().enumerate() {
        let r = post(d.addr, path, &[*header], body);
        assert_eq!(r.status, 202, "{path}: {}", r.body);
        assert_eq!(r.json(), serde_json::json!({"triggered": true}), "{path}");
        let want = (n + 1) as f64;
        let got = d.until(10, &format!("the cycle {path} triggered"), |addr| {
            let n = cycles(addr, "webhook");
            (n >= want).then_some(n)
        });
        assert_eq!(
            got,
            want,
            "one cycle per accepted webhook:\n{}",
            d.log_text()
        );
        let s = d.status();
        assert_eq!(s["lastReconcile"]["trigger"], "webhook", "{s}");
        assert!(all_ready(&s), "{s}");
    }
    assert_eq!(d.log_count("webhook refused"), refused.len());
    assert_eq!(d.log_count("webhook accepted"), accepted.len());
    d.terminate();

    // Without a secret every receiver refuses (403), whatever the request carries.
    let mut d = no_secret;
    d.until_all_ready(30);
    for (path, header) in accepted {
        let r = post(d.addr, path, &[header], body);
        assert_eq!(r.status, 403, "{path}: {}", r.body);
        assert_eq!(r.json()["triggered"], false);
    }
    fence_no_webhook_cycle(&mut d, &dir2.join("deploy-specs"));
    assert_eq!(d.log_count("webhook accepted"), 0);
    d.terminate();
    assert!(d.log_count("webhook refused") > 0);
    assert_eq!(
        d.log_count("\x1b["),
        0,
        "ANSI colour in a log written to a pipe:\n{}",
        d.log_text()
    );
}

/// Asserts that no webhook cycle ran or is queued. The controller takes its triggers in order:
/// a deploy file rewritten unchanged queues a file trigger behind whatever came before, so
/// when a cycle after it has run, a trigger queued by an earlier (refused) webhook would have
/// run a webhook cycle first, or been taken with the file trigger into one labelled `webhook`.
fn fence_no_webhook_cycle(d: &mut Daemon, specs: &Path) {
    let before = cycles(d.addr, "file");
    let file = specs.join("invoices.yaml");
    // A real change (a file change reconciles only the apps it changed): toggle `prune`, which
    // changes nothing in Hippo for this app.
    let text = std::fs::read_to_string(&file).unwrap();
    let text = if text.contains("prune: true") {
        text.replace("prune: true", "prune: false")
    } else {
        text.replace("prune: false", "prune: true")
    };
    let tmp = specs.join(".invoices.yaml.swp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, file).unwrap();
    d.until(10, "a cycle after the file trigger", |addr| {
        (cycles(addr, "file") > before || cycles(addr, "webhook") > 0.0).then_some(())
    });
    assert_eq!(
        cycles(d.addr, "webhook"),
        0.0,
        "a refused webhook triggered a cycle:\n{}",
        d.log_text()
    );
}

/// Cycles run so far that `trigger` (`webhook`, `file`, …) started.
fn cycles(addr: SocketAddr, trigger: &str) -> f64 {
    let text = get(addr, "/metrics").expect("/metrics answers").body;
    metric(
        &text,
        &format!("hippo_gitops_reconcile_cycles_total{{trigger=\"{trigger}\"}}"),
    )
    .unwrap_or(0.0)
}

#[test]
fn commits_to_a_git_branch_are_applied_and_their_sha_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (url, work) = common::git_repo(root);
    let bare = root.join("deploy.git");
    common::copy_examples(&work);
    git(&work, &["add", "-A"]);
    git(
        &work,
        &["commit", "--quiet", "-m", "the example deploy files"],
    );
    git(&work, &["push", "--quiet", &url, "HEAD:refs/heads/main"]);
    let first = git(&work, &["rev-parse", "HEAD"]);

    let home = root.join("controller");
    std::fs::create_dir_all(&home).unwrap();
    let secret = "s";
    let mut d = Daemon::start(
        &home,
        &sandbox_args(&[
            "--git-url",
            &url,
            "--git-branch",
            "main",
            "--git-path",
            "deploy-specs",
            "--git-interval",
            "60s",
            "--webhook-secret",
            secret,
        ]),
    );
    let s = d.until(30, "the first commit applied", |addr| {
        let s = status(addr)?;
        (s["source"]["lastAppliedCommit"] == first.as_str()).then_some(s)
    });
    assert!(all_ready(&s), "{s}");
    assert_eq!(s["source"]["kind"], "git");
    assert_eq!(s["source"]["location"], url.as_str());
    assert_eq!(s["source"]["branch"], "main");
    assert_eq!(s["source"]["commit"], first.as_str());
    assert!(s["source"]["lastAppliedAt"].is_string(), "{s}");
    assert!(s["source"]["error"].is_null(), "{s}");
    let metrics = d.metrics();
    assert_eq!(
        metric(
            &metrics,
            &format!("hippo_gitops_last_applied_commit_info{{sha=\"{first}\"}}")
        ),
        Some(1.0),
        "{metrics}"
    );
    // The clone lives in the state dir; the applied commit is recorded beside it.
    let applied_file = || {
        let files: Vec<PathBuf> = std::fs::read_dir(home.join("state/git"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "applied"))
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        std::fs::read_to_string(&files[0])
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(applied_file(), first);

    // A second commit; the 60s poll won't see it in time, the webhook makes it fetch at once.
    let weather = work.join("deploy-specs/weather.yaml");
    let text = std::fs::read_to_string(&weather).unwrap();
    std::fs::write(&weather, edited_weather(&text)).unwrap();
    git(
        &work,
        &["commit", "--quiet", "-am", "weather: production on 1.1"],
    );
    git(&work, &["push", "--quiet", &url, "HEAD:refs/heads/main"]);
    let second = git(&work, &["rev-parse", "HEAD"]);
    assert_ne!(first, second);

    let other = br#"{"ref":"refs/heads/other"}"#;
    let r = post(
        d.addr,
        "/hooks/github",
        &[("X-Hub-Signature-256", &sign(secret, other))],
        other,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["triggered"], false, "a push to another branch");

    // GitHub's push hook for main: fetch now.
    let pushed = |addr| {
        let push = br#"{"ref":"refs/heads/main"}"#;
        let r = post(
            addr,
            "/hooks/github",
            &[
                ("X-GitHub-Event", "push"),
                ("X-Hub-Signature-256", &sign(secret, push)),
            ],
            push,
        );
        assert_eq!(r.status, 202, "{}", r.body);
        assert_eq!(r.json()["triggered"], true);
    };
    pushed(d.addr);
    let s = d.until(20, "the second commit applied", |addr| {
        let s = status(addr)?;
        (s["source"]["lastAppliedCommit"] == second.as_str()).then_some(s)
    });
    assert_eq!(s["source"]["commit"], second.as_str());
    assert!(all_ready(&s), "{s}");
    assert_eq!(
        channel(&s, "weather", "production").unwrap()["hippoRevision"],
        "1.1.0"
    );
    let metrics = d.metrics();
    assert_eq!(
        metric(
            &metrics,
            &format!("hippo_gitops_last_applied_commit_info{{sha=\"{second}\"}}")
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            &format!("hippo_gitops_last_applied_commit_info{{sha=\"{first}\"}}")
        ),
        None,
        "only the last applied commit is reported:\n{metrics}"
    );
    assert_eq!(applied_file(), second);

    // A commit that removes every deploy file: the empty-set guard keeps every app (and the
    // last applied commit), and says why.
    git(&work, &["rm", "--quiet", "-r", "deploy-specs"]);
    git(&work, &["commit", "--quiet", "-m", "remove everything"]);
    git(&work, &["push", "--quiet", &url, "HEAD:refs/heads/main"]);
    pushed(d.addr);
    let s = d.until(20, "the empty commit refused", |addr| {
        let s = status(addr)?;
        s["source"]["error"].is_string().then_some(s)
    });
    assert!(all_ready(&s), "no app dropped: {s}");
    assert_eq!(s["source"]["lastAppliedCommit"], second.as_str());
    let error = s["source"]["error"].as_str().unwrap();
    assert!(error.contains("keeping the 2 app(s)"), "{error}");
    assert_eq!(metric(&d.metrics(), "hippo_gitops_source_error"), Some(1.0));

    // The repository can't be reached: the last desired state stays, the error says why, and
    // the fetch is retried with backoff, so that once it is back (with the files restored)
    // the controller catches up by itself, long before the 60 s poll.
    let away = root.join("deploy.git.away");
    std::fs::rename(&bare, &away).unwrap();
    pushed(d.addr);
    let s = d.until(20, "the failed fetch reported", |addr| {
        let s = status(addr)?;
        s["source"]["error"]
            .as_str()?
            .contains("git fetch")
            .then_some(s)
    });
    assert!(all_ready(&s), "no app dropped: {s}");
    git(&work, &["revert", "--no-edit", "--quiet", "HEAD"]);
    std::fs::rename(&away, &bare).unwrap();
    git(&work, &["push", "--quiet", &url, "HEAD:refs/heads/main"]);
    let restored = git(&work, &["rev-parse", "HEAD"]);
    let s = d.until(
        30,
        "the restored files read after the retried fetch",
        |addr| {
            let s = status(addr)?;
            (s["source"]["commit"] == restored.as_str() && s["source"]["error"].is_null())
                .then_some(s)
        },
    );
    assert!(all_ready(&s), "{s}");
    // Nothing but the retry could fetch it: no webhook since, and the poll is every 60 s.
    assert_eq!(
        d.log_count("the deploy files are read again"),
        1,
        "{}",
        d.log_text()
    );
    d.terminate();

    let state = hippo_state(&home.join("sb"));
    assert_examples_converged(&state);
    assert_weather_edit_applied(&state);
}

#[test]
fn sigterm_stops_within_the_grace_period_and_releases_the_leader_lock() {
    let (_tmp, dir, sb) = checkout();
    // Hippo slowed down, so the SIGTERM lands in the middle of the first reconcile.
    let mut d = Daemon::start(
        &dir,
        &sandbox_args(&[
            "-f",
            "deploy-specs/",
            "--sandbox-faults",
            "hippo:latency=150ms",
            "--shutdown-grace",
            "5s",
        ]),
    );
    // The first observation (a login and three list calls at 150ms each) is not done yet.
    let r = get(d.addr, "/readyz").unwrap();
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["ready"], false);
    assert_eq!(get(d.addr, "/healthz").unwrap().status, 200);
    // Writes have started: Hippo holds an app.
    let state_file = sb.join("hippo.json");
    d.until(30, "a write to Hippo", |_| {
        let text = std::fs::read_to_string(&state_file).ok()?;
        let state: EmulatorState = serde_json::from_str(&text).ok()?;
        (!state.apps.is_empty()).then_some(())
    });

    d.sigterm();
    let signalled = Instant::now();
    let status = d.wait_exit(Duration::from_secs(5 + 3));
    let took = signalled.elapsed();
    let Some(status) = status else {
        panic!(
            "not stopped {took:?} after SIGTERM with --shutdown-grace 5s:\n{}",
            d.log_text()
        )
    };
    assert_eq!(status.code(), Some(0), "{}", d.log_text());
    assert!(
        get(d.addr, "/healthz").is_err(),
        "/healthz still answers after the exit"
    );
    assert_no_duplicates(&hippo_state(&sb));
    // The lock was released, not left to expire (2 × 15s TTL + 15s lock delay).
    let nomad: Value =
        serde_json::from_str(&std::fs::read_to_string(sb.join("nomad.json")).unwrap()).unwrap();
    let lock = &nomad["variables"]["default"]["hippo-gitops/leader"];
    assert!(lock.is_object(), "the leader lock variable: {nomad:#}");
    assert!(lock["lock"].is_null(), "the lock is still held: {lock}");

    // So a restarted controller leads at once.
    let mut d = Daemon::start(&dir, &sandbox_args(&["-f", "deploy-specs/"]));
    d.until(10, "leadership after a restart", |addr| {
        let r = get(addr, "/readyz").ok()?;
        (r.status == 200 && r.json()["role"] == "leader").then_some(())
    });
    d.terminate();
    eprintln!("stopped {took:?} after SIGTERM");
}

#[test]
fn killed_in_the_middle_of_a_reconcile_then_restarted_converges_with_no_duplicates() {
    let (_tmp, dir, sb) = checkout();
    let mut d = Daemon::start(
        &dir,
        &sandbox_args(&[
            "-f",
            "deploy-specs/",
            "--sandbox-faults",
            "hippo:latency=150ms",
        ]),
    );
    // Kill it once Hippo holds part of the desired state, not all of it.
    let state_file = sb.join("hippo.json");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut partial = None;
    while Instant::now() < deadline && d.child.try_wait().unwrap().is_none() {
        if let Ok(text) = std::fs::read_to_string(&state_file) {
            if let Ok(state) = serde_json::from_str::<EmulatorState>(&text) {
                if !state.apps.is_empty() && state.channels.len() < 3 {
                    partial = Some(state);
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    d.child.kill().unwrap(); // SIGKILL
    d.child.wait().unwrap();
    let partial = partial.unwrap_or_else(|| {
        panic!(
            "never saw Hippo hold part of the desired state:\n{}",
            d.log_text()
        )
    });
    assert_no_duplicates(&partial);
    assert_no_duplicates(&hippo_state(&sb));
    drop(d);

    // The killed process still holds the leader lock in the sandbox's Nomad, whose state (locks
    // included) survives the restart: a restarted elector would wait up to 2 × TTL + lock delay
    // (45s by default; the sandbox's Nomad, like Nomad, takes no TTL under 10s) for it to
    // expire. So the restart runs without leader election.
    let mut d = Daemon::start(
        &dir,
        &sandbox_args(&["-f", "deploy-specs/", "--no-leader-election"]),
    );
    d.until_all_ready(30);
    let r = get(d.addr, "/readyz").unwrap();
    assert_eq!(
        r.json(),
        serde_json::json!({"ready": true, "role": "single"})
    );
    d.terminate();
    assert_examples_converged(&hippo_state(&sb));
}

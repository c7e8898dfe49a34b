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

mod common;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{mpsc, Arc, Mutex},
    time::{Duration, Instant},
};

use common::{assert_examples_converged, assert_no_duplicates, hippo_state};
use hippo_gitops::{controller::webhook::sign, emulator::hippo::EmulatorState};
use serde_json::Value;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_hippo-gitops")
}

/// How often conditions are polled.
const POLL: Duration = Duration::from_millis(50);

// ---------------------------------------------------------------------------------------------
// The child process.

/// A running `hippo-gitops reconcile` controller. Dropping it kills the process (a panicking
/// test leaves nothing behind).
struct Daemon {
    child: Child,
    addr: SocketAddr,
    /// Every stderr line so far (a thread keeps reading them).
    log: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    /// Starts `hippo-gitops reconcile ARGS` in `dir` (state in `dir/state`) and waits until its
    /// HTTP server listens.
    fn start(dir: &Path, args: &[&str]) -> Daemon {
        let mut cmd = Command::new(bin());
        cmd.arg("reconcile")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // Nothing from the environment running the tests may point the child elsewhere.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if ["HIPPO_", "BINDLE_", "NOMAD_"]
                .iter()
                .any(|p| k.starts_with(p))
            {
                cmd.env_remove(&*k);
            }
        }
        // `info` for hippo-gitops, so the "HTTP server listening" line appears (the embedded
        // bindle server logs every request at info: kept at warn, as the binary's default does).
        cmd.env("HIPPO_GITOPS_LOG", "info,bindle=warn,warp=warn,sled=warn")
            .env("HIPPO_GITOPS_STATE_DIR", dir.join("state"))
            .env("NO_COLOR", "1");
        let mut child = cmd.spawn().expect("starts the binary");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<String>();
        let lines = log.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                        lines.lock().unwrap().push(line.clone());
                        let _ = tx.send(line);
                    }
                }
            }
        });
        let mut daemon = Daemon {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let marker = "HTTP server listening on http://";
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(i) = line.find(marker) {
                        let rest = &line[i + marker.len()..];
                        let end = rest
                            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
                            .unwrap_or(rest.len());
                        daemon.addr = rest[..end]
                            .parse()
                            .unwrap_or_else(|e| panic!("address in {line:?}: {e}"));
                        return daemon;
                    }
                }
                Err(_) => panic!(
                    "the controller did not report its HTTP address (exit: {:?}):\n{}",
                    daemon.child.try_wait(),
                    daemon.log_text()
                ),
            }
        }
    }

    fn log_text(&self) -> String {
        let log = self.log.lock().unwrap();
        let from = log.len().saturating_sub(80);
        log[from..].join("\n")
    }

    fn log_count(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Polls `f` every [`POLL`] until it answers `Some`; panics after `secs`, or at once if the
    /// process exits.
    fn until<T>(&mut self, secs: u64, what: &str, mut f: impl FnMut(SocketAddr) -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = f(self.addr) {
                return v;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "the controller exited ({status}) while waiting for {what}:\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {secs}s waiting for {what}; last /status: {}\nlog:\n{}",
                get(self.addr, "/status")
                    .map(|r| r.body)
                    .unwrap_or_else(|e| e.to_string()),
                self.log_text()
            );
            std::thread::sleep(POLL);
        }
    }

    /// Waits until `/status` shows both example apps Ready; answers that status.
    fn until_all_ready(&mut self, secs: u64) -> Value {
        self.until(secs, "every app Ready", |addr| {
            let status = status(addr)?;
            all_ready(&status).then_some(status)
        })
    }

    fn status(&self) -> Value {
        status(self.addr).expect("/status answers")
    }

    fn metrics(&self) -> String {
        let r = get(self.addr, "/metrics").expect("/metrics answers");
        assert_eq!(r.status, 200);
        r.body
    }

    /// SIGTERM.
    fn sigterm(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM");
    }

    /// Waits up to `limit` for the process to exit.
    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then asserts a graceful exit (code 0) within 20 s.
    fn terminate(&mut self) {
        self.sigterm();
        let status = self.wait_exit(Duration::from_secs(20));
        let Some(status) = status else {
            panic!(
                "the controller did not stop within 20s of SIGTERM:\n{}",
                self.log_text()
            )
        };
        assert_eq!(
            status.code(),
            Some(0),
            "SIGTERM is a graceful shutdown, exit 0:\n{}",
            self.log_text()
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A tiny HTTP/1.1 client (one request per connection).

struct Response {
    status: u16,
    body: String,
}

impl Response {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut payload = raw[split + 4..].to_vec();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status code"))?;
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        payload = dechunk(&payload).ok_or_else(|| bad("bad chunked body"))?;
    }
    Ok(Response {
        status,
        body: String::from_utf8_lossy(&payload).into_owned(),
    })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

fn get(addr: SocketAddr, path: &str) -> std::io::Result<Response> {
    request(addr, "GET", path, &[], b"")
}

fn post(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    request(addr, "POST", path, headers, body).unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

fn status(addr: SocketAddr) -> Option<Value> {
    let r = get(addr, "/status").ok()?;
    (r.status == 200).then(|| r.json())
}

// ---------------------------------------------------------------------------------------------
// Reading /status, /metrics and the sandbox's state.

fn app<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status["apps"].as_array()?.iter().find(|a| a["app"] == name)
}

fn condition(status: &Value, name: &str) -> Option<String> {
    app(status, name)?["condition"]["type"]
        .as_str()
        .map(String::from)
}

fn channel<'a>(status: &'a Value, app_name: &str, name: &str) -> Option<&'a Value> {
    app(status, app_name)?["channels"]
        .as_array()?
        .iter()
        .find(|c| c["channel"] == name)
}

fn all_ready(status: &Value) -> bool {
    ["weather", "invoices"]
        .iter()
        .all(|a| condition(status, a).as_deref() == Some("Ready"))
}

/// The value of the sample named exactly `series` (name and labels), if present.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().expect("a number"))
}

/// Like [`metric`], for a sample that must be there.
fn metrics_value(text: &str, series: &str) -> f64 {
    metric(text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

/// weather.yaml as edited by [`edit_weather`]: production on 1.1.0 with `RUST_LOG=debug`.
fn assert_weather_edit_applied(state: &EmulatorState) {
    let weather = state.apps.iter().find(|a| a.name == "weather").unwrap();
    let production = state
        .channels
        .iter()
        .find(|c| c.app_id == weather.id && c.name == "production")
        .unwrap();
    let active = state
        .revisions
        .iter()
        .find(|r| Some(r.id) == production.active_revision_id)
        .map(|r| r.revision_number.as_str());
    assert_eq!(active, Some("1.1.0"), "production follows ~1.1.0 now");
    let env: Vec<(&str, &str)> = state
        .environment_variables
        .iter()
        .filter(|e| e.channel_id == production.id)
        .map(|e| (e.key.as_str(), e.value.as_str()))
        .collect();
    assert_eq!(env, [("RUST_LOG", "debug")]);
}

/// The example's weather.yaml, edited: production's range `~1.0.0` → `~1.1.0` (a redeploy on
/// another revision) and its env `RUST_LOG: info` → `debug`.
fn edited_weather(text: &str) -> String {
    let out = text
        .replace("range: \"~1.0.0\"", "range: \"~1.1.0\"")
        .replace("RUST_LOG: info", "RUST_LOG: debug");
    assert!(
        out.contains("range: \"~1.1.0\"") && out.contains("RUST_LOG: debug"),
        "the example weather.yaml changed shape:\n{text}"
    );
    out
}

/// Edits weather.yaml the way editors save: a new file renamed over the old one.
fn edit_weather(specs: &Path) {
    let file = specs.join("weather.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    let tmp = specs.join(".weather.yaml.swp");
    std::fs::write(&tmp, edited_weather(&text)).unwrap();
    std::fs::rename(tmp, file).unwrap();
}

/// A fresh "checkout": the example deploy files in an empty directory, and where its sandbox
/// keeps its state.
fn checkout() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    common::copy_examples(&dir);
    let sandbox = dir.join("sb");
    (tmp, dir, sandbox)
}

/// `--sandbox --sandbox-dir sb --listen 127.0.0.1:0`, then `extra`. Rollouts (100 ms in the
/// sandbox) are looked at again after 200 ms instead of 5 s.
fn sandbox_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--sandbox",
        "--sandbox-dir",
        "sb",
        "--listen",
        "127.0.0.1:0",
        "--interval",
        "60s",
        "--rollout-interval",
        "200ms",
    ];
    args.extend_from_slice(extra);
    args
}

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
    eprintln!("the edit reached Hippo {in_hippo:?} after it was saved");
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
    let no_secret = Daemon::start(&dir2, &sandbox_args(&["-f", "deploy-specs/"]));
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

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "commit.gpgsign=false",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "hippo-gitops tests")
        .env("GIT_AUTHOR_EMAIL", "tests@example.com")
        .env("GIT_COMMITTER_NAME", "hippo-gitops tests")
        .env("GIT_COMMITTER_EMAIL", "tests@example.com")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("runs git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn commits_to_a_git_branch_are_applied_and_their_sha_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let bare = root.join("deploy.git");
    std::fs::create_dir_all(&bare).unwrap();
    git(&bare, &["init", "--quiet", "--bare"]);
    let work = root.join("work");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "--quiet"]);
    common::copy_examples(&work);
    git(&work, &["add", "-A"]);
    git(
        &work,
        &["commit", "--quiet", "-m", "the example deploy files"],
    );
    let url = format!("file://{}", bare.display());
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

    let push = br#"{"ref":"refs/heads/main"}"#;
    let r = post(
        d.addr,
        "/hooks/github",
        &[
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature-256", &sign(secret, push)),
        ],
        push,
    );
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.json()["triggered"], true);
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

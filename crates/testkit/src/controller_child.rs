//! The binary as a controller in a child process, for the tests that drive it from outside
//! (`daemon_process.rs`, `hostile_client.rs`): start it on its own in-process sandbox, read its
//! HTTP port from its log, drive it with a tiny HTTP/1.1 client, and read `/status`,
//! `/metrics` and the sandbox's state.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{mpsc, Arc, Mutex},
    time::{Duration, Instant},
};

use hippo_gitops_emulators::hippo::EmulatorState;
use serde_json::Value;

pub fn bin() -> &'static std::path::Path {
    crate::binary()
}

/// How often conditions are polled.
pub const POLL: Duration = Duration::from_millis(50);

// ---------------------------------------------------------------------------------------------
// The child process.

/// A running `hippo-gitops reconcile` controller. Dropping it kills the process (a panicking
/// test leaves nothing behind).
pub struct Daemon {
    pub child: Child,
    pub addr: SocketAddr,
    /// Every stderr line so far (a thread keeps reading them).
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    /// Starts `hippo-gitops reconcile ARGS` in `dir` (state in `dir/state`) and waits until its
    /// HTTP server listens.
    pub fn start(dir: &Path, args: &[&str]) -> Daemon {
        Self::start_with(dir, args, |_| {})
    }

    /// As [`Daemon::start`], with `configure` applied to the command last.
    pub fn start_with(dir: &Path, args: &[&str], configure: impl FnOnce(&mut Command)) -> Daemon {
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
        configure(&mut cmd);
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

    pub fn log_text(&self) -> String {
        let log = self.log.lock().unwrap();
        let from = log.len().saturating_sub(80);
        log[from..].join("\n")
    }

    pub fn log_count(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Polls `f` every [`POLL`] until it answers `Some`; panics after `secs`, or at once if the
    /// process exits.
    pub fn until<T>(
        &mut self,
        secs: u64,
        what: &str,
        mut f: impl FnMut(SocketAddr) -> Option<T>,
    ) -> T {
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
    pub fn until_all_ready(&mut self, secs: u64) -> Value {
        self.until(secs, "every app Ready", |addr| {
            let status = status(addr)?;
            all_ready(&status).then_some(status)
        })
    }

    pub fn status(&self) -> Value {
        status(self.addr).expect("/status answers")
    }

    pub fn metrics(&self) -> String {
        let r = get(self.addr, "/metrics").expect("/metrics answers");
        assert_eq!(r.status, 200);
        r.body
    }

    /// SIGTERM.
    pub fn sigterm(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM");
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
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
    pub fn terminate(&mut self) {
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

pub struct Response {
    pub status: u16,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    request_within(addr, method, path, headers, body, Duration::from_secs(10))
}

/// [`request`] with `limit` on connecting (at most 2 s) and on each read and write.
pub fn request_within(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    limit: Duration,
) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, limit.min(Duration::from_secs(2)))?;
    stream.set_read_timeout(Some(limit))?;
    stream.set_write_timeout(Some(limit))?;
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

pub fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
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

pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<Response> {
    request(addr, "GET", path, &[], b"")
}

pub fn post(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    request(addr, "POST", path, headers, body).unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

pub fn status(addr: SocketAddr) -> Option<Value> {
    let r = get(addr, "/status").ok()?;
    (r.status == 200).then(|| r.json())
}

// ---------------------------------------------------------------------------------------------
// Reading /status, /metrics and the sandbox's state.

pub fn app<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status["apps"].as_array()?.iter().find(|a| a["app"] == name)
}

pub fn condition(status: &Value, name: &str) -> Option<String> {
    app(status, name)?["condition"]["type"]
        .as_str()
        .map(String::from)
}

pub fn channel<'a>(status: &'a Value, app_name: &str, name: &str) -> Option<&'a Value> {
    app(status, app_name)?["channels"]
        .as_array()?
        .iter()
        .find(|c| c["channel"] == name)
}

pub fn all_ready(status: &Value) -> bool {
    ["weather", "invoices"]
        .iter()
        .all(|a| condition(status, a).as_deref() == Some("Ready"))
}

/// The value of the sample named exactly `series` (name and labels), if present.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().expect("a number"))
}

/// Like [`metric`], for a sample that must be there.
pub fn metrics_value(text: &str, series: &str) -> f64 {
    metric(text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

/// weather.yaml as edited by [`edit_weather`]: production on 1.1.0 with `RUST_LOG=debug`.
pub fn assert_weather_edit_applied(state: &EmulatorState) {
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
pub fn edited_weather(text: &str) -> String {
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
pub fn edit_weather(specs: &Path) {
    let file = specs.join("weather.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    let tmp = specs.join(".weather.yaml.swp");
    std::fs::write(&tmp, edited_weather(&text)).unwrap();
    std::fs::rename(tmp, file).unwrap();
}

/// A fresh "checkout": the example deploy files in an empty directory, and where its sandbox
/// keeps its state.
pub fn checkout() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    crate::copy_examples(&dir);
    let sandbox = dir.join("sb");
    (tmp, dir, sandbox)
}

/// `--sandbox --sandbox-dir sb --listen 127.0.0.1:0`, then `extra`. Rollouts (100 ms in the
/// sandbox) are looked at again after 200 ms instead of 5 s. The interval is 60 s unless
/// `extra` sets one.
pub fn sandbox_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--sandbox",
        "--sandbox-dir",
        "sb",
        "--listen",
        "127.0.0.1:0",
        "--rollout-interval",
        "200ms",
    ];
    if !extra.contains(&"--interval") {
        args.extend(["--interval", "60s"]);
    }
    args.extend_from_slice(extra);
    args
}

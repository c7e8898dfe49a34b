//! The core's progress reports drawn on a terminal: bindle uploads with bytes and rate, waits on Nomad
//! with what is pending, drawn as one line redrawn in place on stderr. Without a terminal (CI)
//! nothing is drawn: the log's plain lines ("pushed bindle …", "waiting for Nomad …") say the
//! same, once per step.

use hippo_gitops_core::{progress::Progress, sync::MutexExt};
use std::{
    collections::BTreeMap,
    io::{IsTerminal, Write},
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

/// Whether a progress line is on screen, so log lines clear it first (see [`LogWriter`]).
static LINE_SHOWN: AtomicBool = AtomicBool::new(false);

/// Redraws at most this often.
const FRAME: Duration = Duration::from_millis(100);

#[derive(Debug, Default)]
struct Uploads {
    started: Option<Instant>,
    /// Per bindle: bytes to upload.
    active: BTreeMap<String, u64>,
    total: u64,
    done: u64,
}

/// Draws progress on stderr when it is a terminal; does nothing otherwise.
#[derive(Debug)]
pub struct TerminalProgress {
    enabled: bool,
    uploads: Mutex<Uploads>,
    last_draw: Mutex<Option<Instant>>,
}

impl TerminalProgress {
    /// Enabled when stderr is a terminal.
    pub fn stderr() -> Self {
        Self::new(std::io::stderr().is_terminal())
    }

    /// Never draws.
    pub fn disabled() -> Self {
        Self::new(false)
    }

    fn new(enabled: bool) -> Self {
        TerminalProgress {
            enabled,
            uploads: Mutex::default(),
            last_draw: Mutex::new(None),
        }
    }

    fn draw_uploads(&self, force: bool) {
        let line = {
            let u = self.uploads.locked();
            upload_line(&u, Instant::now())
        };
        if let Some(line) = line {
            self.draw(&line, force);
        }
    }

    fn draw(&self, line: &str, force: bool) {
        let now = Instant::now();
        {
            let mut last = self.last_draw.locked();
            if !force && last.is_some_and(|t| now - t < FRAME) {
                return;
            }
            *last = Some(now);
        }
        let width = terminal_width();
        let line: String = line.chars().take(width.saturating_sub(1)).collect();
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{line}");
        let _ = err.flush();
        LINE_SHOWN.store(true, Ordering::SeqCst);
    }
}

impl Progress for TerminalProgress {
    fn is_shown(&self) -> bool {
        self.enabled
    }

    /// A push of `bytes` to upload for bindle `id` starts.
    fn upload_started(&self, id: &str, bytes: u64) {
        if !self.enabled {
            return;
        }
        let mut u = self.uploads.locked();
        u.started.get_or_insert_with(Instant::now);
        u.active.insert(id.to_string(), bytes);
        u.total += bytes;
        drop(u);
        self.draw_uploads(false);
    }

    /// `bytes` more were uploaded.
    fn uploaded(&self, bytes: u64) {
        if !self.enabled {
            return;
        }
        self.uploads.locked().done += bytes;
        self.draw_uploads(false);
    }

    /// The push of `id` ended (uploaded or failed).
    fn upload_finished(&self, id: &str) {
        if !self.enabled {
            return;
        }
        let mut u = self.uploads.locked();
        u.active.remove(id);
        let idle = u.active.is_empty();
        if idle {
            *u = Uploads::default();
        }
        drop(u);
        if idle {
            self.clear();
        } else {
            self.draw_uploads(true);
        }
    }

    /// A wait on Nomad: what is still pending.
    fn waiting(&self, elapsed: Duration, pending: &[String]) {
        if self.enabled {
            self.draw(&waiting_line(elapsed, pending), true);
        }
    }

    /// Removes the line.
    fn clear(&self) {
        if self.enabled && LINE_SHOWN.swap(false, Ordering::SeqCst) {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(b"\r\x1b[2K");
            let _ = err.flush();
        }
    }
}

impl Drop for TerminalProgress {
    fn drop(&mut self) {
        self.clear();
    }
}

fn terminal_width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .filter(|w| *w > 20)
        .unwrap_or(100)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1_048_576.0)
}

fn upload_line(u: &Uploads, now: Instant) -> Option<String> {
    let started = u.started?;
    let secs = (now - started).as_secs_f64().max(0.001);
    Some(format!(
        "uploading {} bindle(s): {} of {}, {}/s",
        u.active.len(),
        mib(u.done),
        mib(u.total),
        mib((u.done as f64 / secs) as u64)
    ))
}

fn waiting_line(elapsed: Duration, pending: &[String]) -> String {
    format!(
        "waiting for Nomad ({}s): {}",
        elapsed.as_secs(),
        if pending.is_empty() {
            "checking".to_string()
        } else {
            pending.join("; ")
        }
    )
}

/// stderr for the log: clears a progress line before a log line is written, so the two never
/// share a line.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut err = std::io::stderr().lock();
        if LINE_SHOWN.swap(false, Ordering::SeqCst) {
            err.write_all(b"\r\x1b[2K")?;
        }
        err.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LogWriter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_line_shows_bytes_and_rate() {
        let t0 = Instant::now();
        let mut u = Uploads {
            started: Some(t0),
            ..Default::default()
        };
        u.active.insert("weather/1.0.0".into(), 4 * 1_048_576);
        u.total = 4 * 1_048_576;
        u.done = 1_048_576;
        assert_eq!(
            upload_line(&u, t0 + Duration::from_secs(2)).unwrap(),
            "uploading 1 bindle(s): 1.0 MiB of 4.0 MiB, 0.5 MiB/s"
        );
        assert_eq!(upload_line(&Uploads::default(), t0), None);
    }

    #[test]
    fn waiting_line_names_what_is_pending() {
        assert_eq!(
            waiting_line(
                Duration::from_secs(12),
                &["weather: channel production: 0/1 healthy".into()]
            ),
            "waiting for Nomad (12s): weather: channel production: 0/1 healthy"
        );
    }

    #[test]
    fn a_disabled_progress_keeps_no_state() {
        let p = TerminalProgress::disabled();
        p.upload_started("a/1.0.0", 10);
        p.uploaded(10);
        assert!(p.uploads.lock().unwrap().started.is_none());
        assert!(!p.is_shown());
    }
}

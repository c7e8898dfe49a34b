//! The `hippo-gitops` binary: parses arguments, sets up logging, runs a command.

use std::{
    alloc::{GlobalAlloc, Layout},
    process::ExitCode,
    sync::atomic::Ordering::Relaxed,
};

use hippo_gitops::cli::{self, LogFormat};
use hippo_gitops_controller::memory::{self, HEAP_LIVE_BYTES};
use mimalloc::MiMalloc;
use tracing_subscriber::EnvFilter;

// glibc's malloc keeps freed memory in per-thread arenas: the idle controller at 1000 apps sat
// at ~140 MiB resident with it. mimalloc, set up as `hippo_gitops_controller::memory` says, returns it.
#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// mimalloc, counting the live heap into `memory::HEAP_LIVE_BYTES` (the `/metrics` gauge
/// `hippo_gitops_heap_live_bytes`): one relaxed atomic add per allocation.
struct CountingAlloc;

// SAFETY: every method forwards to mimalloc's `GlobalAlloc` with the same arguments and returns
// its result unchanged, so `CountingAlloc` keeps each of mimalloc's guarantees (alignment, size,
// pointer validity); the counter beside it is a relaxed atomic that no allocation depends on.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = GlobalAlloc::alloc(&MiMalloc, layout);
        if !p.is_null() {
            HEAP_LIVE_BYTES.fetch_add(layout.size(), Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = GlobalAlloc::alloc_zeroed(&MiMalloc, layout);
        if !p.is_null() {
            HEAP_LIVE_BYTES.fetch_add(layout.size(), Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        GlobalAlloc::dealloc(&MiMalloc, ptr, layout);
        HEAP_LIVE_BYTES.fetch_sub(layout.size(), Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = GlobalAlloc::realloc(&MiMalloc, ptr, layout, new_size);
        if !p.is_null() {
            HEAP_LIVE_BYTES.fetch_add(new_size, Relaxed);
            HEAP_LIVE_BYTES.fetch_sub(layout.size(), Relaxed);
        }
        p
    }
}

/// Freed memory goes back to the OS at once, and no transparent huge pages (see
/// `hippo_gitops_controller::memory` for why). Runs before any thread is started.
fn set_up_memory() {
    // SAFETY: a plain call with constant arguments; mimalloc's options may be set at any time.
    unsafe {
        libmimalloc_sys::mi_option_set(memory::MI_OPTION_PURGE_DELAY, 0);
    }
    // prctl is Linux's (the release workflow also builds for macOS, which has no THP to turn off).
    #[cfg(target_os = "linux")]
    // SAFETY: a plain call with constant arguments that only sets a flag on this process (an
    // error leaves THP as it was).
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// The async runtime: at most [`memory::DEFAULT_WORKER_THREADS`] workers unless
/// `TOKIO_WORKER_THREADS` says otherwise (tokio reads it when no number is set here).
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        builder.worker_threads(cores.min(memory::DEFAULT_WORKER_THREADS));
    }
    builder.build()
}

/// Colour only on a terminal (a log file or a pipe gets plain text), and never with `NO_COLOR`
/// set to anything but the empty string (no-color.org).
fn colour_logs() -> bool {
    use std::io::IsTerminal;
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && std::io::stderr().is_terminal()
}

fn main() -> ExitCode {
    set_up_memory();
    let cli = match cli::parse_args() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let level = cli.log_level.clone();
    let filter = EnvFilter::try_new(&level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Clears a terminal's progress line before each log line.
        .with_writer(hippo_gitops::progress_line::LogWriter)
        .with_ansi(colour_logs())
        .with_target(false);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", cli::error_text(&e));
            cli::error_exit_code(&e)
        }
    }
}

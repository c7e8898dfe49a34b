//! The `hippo-gitops` binary: parses arguments, sets up logging, runs a command.

use std::process::ExitCode;

use clap::Parser;
use hippo_gitops::cli::{self, Cli, LogFormat};
use tracing_subscriber::EnvFilter;

// glibc's malloc keeps freed memory in per-thread arenas: the idle controller at 1000 apps sat
// at ~140 MiB resident with it, ~90 MiB with one arena (BENCHMARKS.md). mimalloc returns it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut level = cli.log_level.clone();
    if matches!(cli.command, cli::Command::Bench(_))
        && std::env::var_os("HIPPO_GITOPS_LOG").is_none()
    {
        // The bench prints its own progress; the controller's per-change lines would drown it.
        level = "warn,bindle=error,warp=error,hippo_gitops::emulator=error".into();
    }
    let filter = EnvFilter::try_new(&level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Clears a terminal's progress line before each log line.
        .with_writer(hippo_gitops::progress::LogWriter)
        .with_target(false);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

//! `hippo-gitops-bench`: the figures of BENCHMARKS.md. A binary of the workspace, outside the
//! shipped `hippo-gitops`: `cargo run --release -p hippo-gitops-bench -- --apps 10,100,1000`.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use hippo_gitops_core::duration::parse_duration;
use tracing_subscriber::EnvFilter;

// The controller runs on mimalloc; the in-process sandbox and reconciles measured here do too.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "hippo-gitops-bench",
    version,
    about = "Measure what reconciles cost as the number of apps grows, against a spin-deploy-style flow, on the sandbox; print Markdown tables.",
    after_help = "Example:\n  cargo build --release && cargo run --release -p hippo-gitops-bench -- --apps 10,100,1000\n\nSee BENCHMARKS.md for the figures and what each row measures. Needs no servers: it\nstarts sandboxes (the real Bindle server; Hippo and Nomad emulators) in a scratch dir.\nThe idle controller is the hippo-gitops binary beside this one (--binary to name another)."
)]
struct BenchArgs {
    /// Numbers of apps to measure (each with 2 revisions and 3 channels).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "10,100,1000",
        value_name = "N,..."
    )]
    apps: Vec<usize>,
    /// Parcels in the bindle push comparison (0: skip it).
    #[arg(long, default_value_t = 50, value_name = "N")]
    push_parcels: usize,
    /// Size of each of those parcels, in bytes.
    #[arg(long, default_value_t = 1024 * 1024, value_name = "BYTES")]
    parcel_bytes: usize,
    /// Scratch directory (emptied first).
    #[arg(long, default_value = ".hippo-gitops/bench", value_name = "DIR")]
    dir: PathBuf,
    /// Skip the idle controller (its memory, CPU and per-cycle requests).
    #[arg(long)]
    no_idle: bool,
    /// Skip the spin-deploy-style baseline (minutes at 1000 apps: it lists everything per app).
    #[arg(long)]
    no_baseline: bool,
    /// How long to watch the idle controller.
    #[arg(long, default_value = "20s", value_parser = parse_duration, value_name = "DURATION")]
    idle_window: Duration,
    /// The hippo-gitops binary to run as the idle controller (default: the one beside this
    /// binary, which `cargo build --release` puts there).
    #[arg(long, value_name = "PATH")]
    binary: Option<PathBuf>,
    /// The idle controller's --interval.
    #[arg(long, default_value = "2s", value_parser = parse_duration, value_name = "DURATION")]
    idle_interval: Duration,
}

/// `hippo-gitops` in the directory of this binary.
fn controller_beside_this_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let binary = exe.with_file_name(format!("hippo-gitops{}", std::env::consts::EXE_SUFFIX));
    anyhow::ensure!(
        binary.is_file(),
        "{} is missing: build it first (`cargo build --release`), or name it with --binary, or pass --no-idle",
        binary.display()
    );
    Ok(binary)
}

async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let config = hippo_gitops_bench::BenchConfig {
        sizes: args.apps,
        push_parcels: args.push_parcels,
        parcel_bytes: args.parcel_bytes,
        dir: std::path::absolute(&args.dir)?,
        binary: if args.no_idle {
            None
        } else {
            Some(match args.binary {
                Some(binary) => binary,
                None => controller_beside_this_binary()?,
            })
        },
        idle_window: args.idle_window,
        idle_interval: args.idle_interval,
        baseline: !args.no_baseline,
    };
    std::fs::create_dir_all(&config.dir)?;
    let started = std::time::Instant::now();
    let report = hippo_gitops_bench::run(&config, |line| {
        eprintln!("[{:>6.1}s] {line}", started.elapsed().as_secs_f64())
    })
    .await?;
    println!(
        "hippo-gitops bench, {} ({} build), {} CPU(s)\n",
        chrono::Utc::now().format("%Y-%m-%d"),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    print!("{}", hippo_gitops_bench::markdown(&report));
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = BenchArgs::parse();
    // The bench prints its own progress; the controller's per-change lines would drown it.
    let level = std::env::var("HIPPO_GITOPS_LOG")
        .unwrap_or_else(|_| "warn,bindle=error,warp=error,hippo_gitops_emulators=error".into());
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&level).unwrap_or_else(|_| EnvFilter::new("warn")))
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(bench(args))
}

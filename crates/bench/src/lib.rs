//! `hippo-gitops bench`: what a reconcile costs as the number of apps grows, against a scripted
//! `spin deploy`-style flow, on the sandbox (the real Bindle server; Hippo and Nomad emulators),
//! in one run on one machine. BENCHMARKS.md records the figures.
//!
//! Everything runs in this process except the idle controller, which is this binary started as
//! `reconcile` so that its memory and CPU are its own.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    io::BufRead,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use bindle::signature::SecretKeyFile;
use uuid::Uuid;

use hippo_gitops_core::{
    apply::{self, Context},
    bindles::{BindleClient, BindleConfig},
    hippo::types::{CreateChannel, Strategy, UpdateChannel},
    package,
    progress::NoProgress,
    spec::{self, DesiredState, LoadOptions},
    stats::RequestStats,
};
use hippo_gitops_emulators::sandbox::{self, Sandbox, SandboxConfig};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Sandbox(#[from] sandbox::SandboxError),
    #[error("{what}: {message}")]
    Step { what: String, message: String },
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

fn step(what: impl Into<String>) -> impl FnOnce(String) -> BenchError {
    let what = what.into();
    move |message| BenchError::Step { what, message }
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Numbers of apps (each with 3 channels and 2 revisions).
    pub sizes: Vec<usize>,
    /// Parcels × bytes of the bindle push comparison.
    pub push_parcels: usize,
    pub parcel_bytes: usize,
    /// Scratch space (sandboxes, generated apps).
    pub dir: PathBuf,
    /// This binary, to run the idle controller; `None`: skip that part.
    pub binary: Option<PathBuf>,
    /// How long to watch the idle controller.
    pub idle_window: Duration,
    /// Its `--interval` while idle.
    pub idle_interval: Duration,
    /// Run the spin-deploy-style baseline (O(apps²) requests: minutes at 1000 apps).
    pub baseline: bool,
}

/// Requests and time of one operation.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cost {
    pub wall: Duration,
    pub hippo: u64,
    pub bindle: u64,
    pub nomad: u64,
    pub uploaded_bytes: u64,
    pub hippo_writes: u64,
}

impl Cost {
    fn of(stats: &RequestStats, wall: Duration) -> Cost {
        Cost {
            wall,
            hippo: stats.requests("hippo"),
            bindle: stats.requests("bindle"),
            nomad: stats.requests("nomad"),
            uploaded_bytes: stats.uploaded_bytes(),
            hippo_writes: stats.writes("hippo"),
        }
    }

    fn requests(&self) -> u64 {
        self.hippo + self.bindle + self.nomad
    }
}

/// The idle controller.
#[derive(Debug, Clone, Copy, Default)]
pub struct Idle {
    /// Requests per cycle, by service (averaged over the window).
    pub per_cycle: [f64; 3],
    pub cycles: u64,
    /// Resident memory sampled every 50 ms over the window: the median and the highest.
    pub rss_kib: u64,
    pub rss_peak_kib: u64,
    /// Of the median sample, anonymous memory (the heap and stacks; the rest is mapped files:
    /// the binary and libc).
    pub rss_anon_kib: u64,
    /// The live heap (`hippo_gitops_heap_live_bytes`) sampled over the window: median, highest.
    pub heap_kib: u64,
    pub heap_peak_kib: u64,
    /// CPU time used over the window, as a share of one core.
    pub cpu_share: f64,
    /// From a deploy file's change to the first write Hippo received.
    pub change_to_write: Duration,
}

/// One size's figures.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub apps: usize,
    pub cold: Cost,
    pub noop: Cost,
    pub changed: Cost,
    pub baseline_cold: Cost,
    pub baseline_redeploy: Cost,
    /// Revisions the baseline's redeploy registered a second time.
    pub baseline_duplicates: usize,
    /// Registrations Hippo refused in that redeploy.
    pub baseline_failures: usize,
    pub idle: Option<Idle>,
    /// A discovery round (`discover` on every app) that finds one new version per 100 apps,
    /// pushed to Bindle with no change to the deploy files; and one that finds nothing.
    pub discover_new: Cost,
    pub discover_nothing: Cost,
    /// Versions the first round registered.
    pub discovered: usize,
}

/// The push comparison.
#[derive(Debug, Clone, Copy, Default)]
pub struct PushRow {
    pub parcels: usize,
    pub bytes: u64,
    pub ours_cold: Duration,
    pub theirs_cold: Duration,
    pub ours_unchanged: Duration,
    pub theirs_unchanged: Duration,
    pub ours_unchanged_bytes: u64,
}

#[derive(Debug, Clone, Default)]
pub struct BenchReport {
    pub rows: Vec<Row>,
    pub push: Option<PushRow>,
    /// The dashboard's overview page rendered at each size.
    pub dashboard: Vec<DashboardRow>,
}

/// The dashboard's overview (`GET /`) rendered on the server for `apps` apps of three
/// channels each (what the handler does under the status lock).
#[derive(Debug, Clone, Copy, Default)]
pub struct DashboardRow {
    pub apps: usize,
    pub median: Duration,
    pub max: Duration,
    pub bytes: usize,
}

/// Renders the overview of `n` apps `runs` times.
pub fn dashboard_overview(n: usize, runs: usize) -> DashboardRow {
    use hippo_gitops_controller::{dashboard::render, Role};
    let now = chrono::Utc::now();
    let view = render::sample_view(n, now);
    let filter = render::Filter::default();
    let mut times = Vec::with_capacity(runs);
    let mut bytes = 0;
    for _ in 0..runs.max(1) {
        let started = std::time::Instant::now();
        let html = render::overview(&view, Role::Leader, &filter, Some(now), now);
        times.push(started.elapsed());
        bytes = html.len();
    }
    times.sort();
    DashboardRow {
        apps: n,
        median: times[times.len() / 2],
        max: *times.last().expect("one run at least"),
        bytes,
    }
}

/// Writes `n` apps (2 versions each, 3 channels) and their deploy files under `dir`.
pub fn generate_apps(dir: &Path, n: usize) -> std::io::Result<PathBuf> {
    let specs = dir.join("deploy");
    std::fs::create_dir_all(&specs)?;
    for i in 0..n {
        let name = format!("app-{i:04}");
        for version in ["1.0.0", "1.1.0"] {
            write_spin_app(
                &specs.join(format!("apps/{name}-{version}")),
                &name,
                version,
            )?;
        }
        std::fs::write(specs.join(format!("{name}.yaml")), app_file(&name, "1"))?;
    }
    Ok(specs)
}

fn app_file(name: &str, level: &str) -> String {
    app_file_with(name, level, "")
}

/// With `extra` revision entries (`    - discover: ...\n`).
fn app_file_with(name: &str, level: &str, extra: &str) -> String {
    format!(
        "apiVersion: hippo-gitops/v1\nkind: App\nmetadata:\n  name: {name}\nspec:\n  revisions:\n    - path: apps/{name}-1.0.0\n    - path: apps/{name}-1.1.0\n{extra}  channels:\n    - name: production\n      range: \"~1.0.0\"\n    - name: staging\n      revision: 1.1.0\n    - name: canary\n      range: \"*\"\n      env:\n        LEVEL: \"{level}\"\n"
    )
}

/// A Spin app (manifest v1) with a tiny wasm module and one static file, unique per app.
fn write_spin_app(dir: &Path, name: &str, version: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir.join("static"))?;
    std::fs::write(
        dir.join("spin.toml"),
        format!("spin_manifest_version = \"1\"\nname = \"{name}\"\nversion = \"{version}\"\ntrigger = {{ type = \"http\", base = \"/\" }}\n[[component]]\nid = \"{name}\"\nsource = \"app.wasm\"\nfiles = [\"static/**/*\"]\n[component.trigger]\nroute = \"/...\"\n"),
    )?;
    let mut wasm = b"\0asm\x01\0\0\0".to_vec();
    let note = format!("{name} {version}");
    let payload = [&[4u8][..], b"note", note.as_bytes()].concat();
    wasm.push(0);
    wasm.push(payload.len() as u8);
    wasm.extend(payload);
    std::fs::write(dir.join("app.wasm"), wasm)?;
    std::fs::write(
        dir.join("static/index.html"),
        format!("<h1>{name} {version}</h1>"),
    )
}

/// Clients for the sandbox, counting into `stats`.
pub fn sandbox_context(sb: &Sandbox, stats: &RequestStats) -> Result<Context, BenchError> {
    let mut ctx = Context::connect(sb.connections(), stats.clone(), Arc::new(NoProgress))
        .map_err(|e| step("clients")(e.to_string()))?;
    ctx.options.wait = Some(Duration::from_secs(300));
    Ok(ctx)
}

async fn start_sandbox(dir: &Path) -> Result<Sandbox, BenchError> {
    let _ = std::fs::remove_dir_all(dir);
    let mut config = SandboxConfig::new(dir);
    config.alloc_delay = Duration::from_millis(10);
    config.persist = false;
    Ok(Sandbox::start(config).await?)
}

fn load(specs: &Path) -> Result<DesiredState, BenchError> {
    spec::load(&[specs.to_path_buf()], &LoadOptions::default())
        .map_err(|d| step("loading the generated deploy files")(d.to_string()))
}

/// `reconcile --once` in-process with fresh clients (a new process would log in again too).
async fn reconcile_once(sb: &Sandbox, specs: &Path, what: &str) -> Result<Cost, BenchError> {
    reconcile_counted(sb, specs, what)
        .await
        .map(|(cost, _)| cost)
}

/// As [`reconcile_once`], with how many revisions it registered as discovered.
async fn reconcile_counted(
    sb: &Sandbox,
    specs: &Path,
    what: &str,
) -> Result<(Cost, usize), BenchError> {
    let desired = load(specs)?;
    let stats = RequestStats::default();
    let ctx = sandbox_context(sb, &stats)?;
    let started = Instant::now();
    let report = apply::reconcile(&desired, &ctx)
        .await
        .map_err(|e| step(what)(e.to_string()))?;
    let wall = started.elapsed();
    if let Some(failed) = report.apps.iter().find(|a| !a.converged()) {
        return Err(step(what)(format!(
            "{} did not converge: {:?}",
            failed.app, failed.error
        )));
    }
    let discovered = report
        .apps
        .iter()
        .flat_map(|a| &a.applied)
        .filter(|a| a.made == apply::Made::RevisionDiscovered)
        .count();
    Ok((Cost::of(&stats, wall), discovered))
}

/// Every app gets `discover: ">=1.0.0"`; one app in 100 gets a version 1.2.0 pushed straight to
/// Bindle. The first `reconcile --once` finds and registers them, the second finds nothing.
async fn discovery_rounds(
    sb: &Sandbox,
    specs: &Path,
    n: usize,
    row: &mut Row,
    progress: &impl Fn(&str),
) -> Result<(), BenchError> {
    for i in 0..n {
        let name = format!("app-{i:04}");
        std::fs::write(
            specs.join(format!("{name}.yaml")),
            app_file_with(&name, "1", "    - discover: \">=1.0.0\"\n"),
        )?;
    }
    let new = n.div_ceil(100);
    let stats = RequestStats::default();
    let ctx = sandbox_context(sb, &stats)?;
    for i in 0..new {
        let name = format!("app-{i:04}");
        let dir = specs.join(format!("pushed/{name}-1.2.0"));
        write_spin_app(&dir, &name, "1.2.0")?;
        let packed = package::load(&dir).map_err(|e| step("packing 1.2.0")(e.to_string()))?;
        ctx.bindle
            .push(&packed)
            .await
            .map_err(|e| step("pushing 1.2.0")(e.to_string()))?;
    }
    progress(&format!("N={n}: discovery round, {new} new version(s)"));
    (row.discover_new, row.discovered) = reconcile_counted(sb, specs, "discovery round").await?;
    if row.discovered != new {
        return Err(step("discovery round")(format!(
            "registered {} revisions, {new} were pushed",
            row.discovered
        )));
    }
    progress(&format!("N={n}: discovery round, nothing new"));
    row.discover_nothing = reconcile_once(sb, specs, "discovery round, nothing new").await?;
    Ok(())
}

/// Deploys every app the way a scripted `spin deploy` does, one version at a time: push the
/// bindle, list apps, create the app or register the revision, list channels, list revisions,
/// then create or update each channel. Answers the cost and how many revisions it registered
/// that Hippo already had, and how many registrations Hippo refused.
pub async fn spin_deploy_baseline(
    sb: &Sandbox,
    desired: &DesiredState,
) -> Result<(Cost, usize, usize), BenchError> {
    let stats = RequestStats::default();
    let ctx = sandbox_context(sb, &stats)?;
    let hippo = &ctx.hippo;
    let err = |e: hippo_gitops_core::hippo::HippoError| step("baseline")(e.to_string());
    let started = Instant::now();
    let mut duplicates = 0;
    let mut failures = 0;
    for app in &desired.apps {
        for rev in &app.revisions {
            let spec::RevisionSource::Local(local) = &rev.source else {
                continue;
            };
            let packed = local
                .pack()
                .map_err(|e| step("baseline pack")(e.to_string()))?;
            ctx.bindle
                .push(&packed)
                .await
                .map_err(|e| step("baseline push")(e.to_string()))?;
            let apps = hippo.list_apps().await.map_err(err)?;
            match apps.iter().find(|a| a.name == app.name) {
                None => {
                    hippo
                        .create_app(&app.name, &app.storage_id)
                        .await
                        .map_err(err)?;
                }
                Some(existing) => {
                    let had = hippo
                        .list_revisions()
                        .await
                        .map_err(err)?
                        .iter()
                        .any(|r| r.app_id == existing.id && r.revision_number == rev.version);
                    // Counted, not avoided: `spin deploy` registers whatever it pushed.
                    duplicates += usize::from(had);
                    // Hippo answers 500 when a range re-evaluation meets the duplicate it just
                    // made (HIPPO-API.md §13); the script goes on, as a CI job retrying would.
                    if hippo
                        .register_revision(&app.storage_id, &rev.version)
                        .await
                        .is_err()
                    {
                        failures += 1;
                    }
                }
            }
            let app_id = hippo
                .list_apps()
                .await
                .map_err(err)?
                .into_iter()
                .find(|a| a.name == app.name)
                .map(|a| a.id)
                .ok_or_else(|| step("baseline")("app vanished".into()))?;
            let channels = hippo.list_channels().await.map_err(err)?;
            let revisions = hippo.list_revisions().await.map_err(err)?;
            let revision_id = |number: &str| -> Option<Uuid> {
                revisions
                    .iter()
                    .find(|r| r.app_id == app_id && r.revision_number == number)
                    .map(|r| r.id)
            };
            for ch in &app.channels {
                let (strategy, range, pinned) = match &ch.selector {
                    spec::Selector::Range(r) => (Strategy::UseRangeRule, Some(r.clone()), None),
                    spec::Selector::Revision(v) => match revision_id(v) {
                        Some(id) => (Strategy::UseSpecifiedRevision, None, Some(id)),
                        // Pinned to a version this script hasn't deployed yet.
                        None => continue,
                    },
                    // A script has no promotion: it leaves such a channel alone.
                    spec::Selector::Promote(_) => continue,
                };
                match channels
                    .iter()
                    .find(|c| c.app_id == app_id && c.name == ch.name)
                {
                    None => {
                        hippo
                            .create_channel(&CreateChannel {
                                app_id,
                                name: ch.name.clone(),
                                domain: ch.domain.clone(),
                                revision_selection_strategy: strategy,
                                range_rule: range,
                                active_revision_id: pinned,
                                certificate_id: None,
                            })
                            .await
                            .map_err(err)?;
                    }
                    Some(c) => {
                        hippo
                            .update_channel(&UpdateChannel {
                                id: c.id,
                                name: ch.name.clone(),
                                domain: c.domain.clone().unwrap_or_default(),
                                revision_selection_strategy: strategy,
                                range_rule: range,
                                active_revision_id: pinned
                                    .or_else(|| c.active_revision.as_ref().map(|r| r.id)),
                                last_publish_date: c.last_publish_at.clone(),
                                certificate_id: None,
                            })
                            .await
                            .map_err(err)?;
                    }
                }
            }
        }
    }
    Ok((Cost::of(&stats, started.elapsed()), duplicates, failures))
}

/// Runs the controller binary against the sandbox until idle; watches it for `window`.
async fn idle_controller(
    binary: &Path,
    sb: &Sandbox,
    specs: &Path,
    config: &BenchConfig,
    apps: usize,
) -> Result<Idle, BenchError> {
    let mut child = Command::new(binary)
        .args(["reconcile", "-f"])
        .arg(specs)
        .args(["--listen", "127.0.0.1:0", "--interval"])
        .arg(format!("{}ms", config.idle_interval.as_millis()))
        .envs(sb.env())
        .env("HIPPO_GITOPS_LOG", "info")
        .env(
            "HIPPO_GITOPS_STATE_DIR",
            config.dir.join("controller-state"),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let result = watch_idle(&mut child, sb, specs, config, apps).await;
    let _ = child.kill();
    let _ = child.wait();
    result
}

async fn watch_idle(
    child: &mut std::process::Child,
    sb: &Sandbox,
    specs: &Path,
    config: &BenchConfig,
    apps: usize,
) -> Result<Idle, BenchError> {
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(i) = line.find("listening on http://") {
                let rest = &line[i + "listening on http://".len()..];
                let addr: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
                let _ = tx.send(addr);
            }
        }
    });
    let addr = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(60)))
        .await
        .map_err(|e| step("controller")(e.to_string()))?
        .map_err(|_| step("controller")("never said where it listens".into()))?;
    let http = reqwest::Client::new();
    let get = |path: &str| {
        let url = format!("http://{addr}{path}");
        let http = http.clone();
        async move {
            http.get(url)
                .timeout(Duration::from_secs(10))
                .send()
                .await
                .map_err(|e| step("controller HTTP")(e.to_string()))?
                .text()
                .await
                .map_err(|e| step("controller HTTP")(e.to_string()))
        }
    };
    // Idle means every app Ready (the controller converged nothing: the apps already are).
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let status: serde_json::Value =
            serde_json::from_str(&get("/status").await?).unwrap_or_default();
        let ready = status["apps"].as_array().is_some_and(|a| {
            a.len() == apps && a.iter().all(|x| x["condition"]["type"] == "Ready")
        });
        if ready {
            break;
        }
        if Instant::now() > deadline {
            return Err(step("controller")(
                "apps not Ready within 10 minutes".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pid = child.id();
    let before = scrape(&get("/metrics").await?);
    let cpu_before = cpu_ticks(pid);
    let t0 = Instant::now();
    // Memory moves within a cycle (lists decoded, then freed): sample it over the window.
    let mut rss: Vec<(u64, u64)> = Vec::new();
    let mut heap: Vec<u64> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut n = 0u32;
    while t0.elapsed() < config.idle_window {
        tick.tick().await;
        rss.push((
            proc_status_kib(pid, "VmRSS:"),
            proc_status_kib(pid, "RssAnon:"),
        ));
        // The gauge every 500 ms: a scrape costs the controller a little memory itself.
        if n.is_multiple_of(10) {
            if let Some(h) = scrape(&get("/metrics").await?).heap_bytes {
                heap.push(h / 1024);
            }
        }
        n += 1;
    }
    let after = scrape(&get("/metrics").await?);
    let cpu_after = cpu_ticks(pid);
    let elapsed = t0.elapsed().as_secs_f64();
    let cycles = (after.cycles - before.cycles).max(1.0);
    let per = |s: &str| {
        (after.requests.get(s).unwrap_or(&0.0) - before.requests.get(s).unwrap_or(&0.0)) / cycles
    };
    rss.sort_unstable();
    heap.sort_unstable();
    let (rss_kib, rss_anon_kib) = rss.get(rss.len() / 2).copied().unwrap_or_default();
    let rss_peak_kib = rss.iter().map(|r| r.0).max().unwrap_or_default();
    let heap_kib = heap.get(heap.len() / 2).copied().unwrap_or_default();
    let heap_peak_kib = heap.last().copied().unwrap_or_default();
    // For analysis (BENCHMARKS.md): which mappings hold the memory at the end of the window.
    if let Some(dump) = std::env::var_os("HIPPO_GITOPS_BENCH_SMAPS") {
        let _ = std::fs::copy(format!("/proc/{pid}/smaps"), dump);
    }
    let ticks_per_sec = 100.0; // USER_HZ on Linux.
    let cpu_share = match (cpu_before, cpu_after) {
        (Some(a), Some(b)) => (b - a) as f64 / ticks_per_sec / elapsed,
        _ => f64::NAN,
    };

    // From a change to a deploy file to the first write Hippo receives.
    let writes_before = sb.hippo_writes();
    let first = specs.join("app-0000.yaml");
    std::fs::write(&first, app_file("app-0000", "2"))?;
    let changed_at = Instant::now();
    // As generous as the wait for Ready: at 10,000 apps the reload and the cycle after it take
    // more than a minute on a busy 2-core machine.
    let deadline = changed_at + Duration::from_secs(600);
    while sb.hippo_writes() == writes_before {
        if Instant::now() > deadline {
            return Err(step("controller")(
                "the change was not written within 10 minutes".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let change_to_write = changed_at.elapsed();
    Ok(Idle {
        per_cycle: [per("hippo"), per("bindle"), per("nomad")],
        cycles: cycles as u64,
        rss_kib,
        rss_peak_kib,
        rss_anon_kib,
        heap_kib,
        heap_peak_kib,
        cpu_share,
        change_to_write,
    })
}

struct Scraped {
    cycles: f64,
    requests: HashMap<String, f64>,
    heap_bytes: Option<u64>,
}

fn scrape(text: &str) -> Scraped {
    let mut out = Scraped {
        cycles: 0.0,
        requests: HashMap::new(),
        heap_bytes: None,
    };
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("hippo_gitops_reconcile_duration_seconds_count ") {
            out.cycles = v.parse().unwrap_or(0.0);
        } else if let Some(v) = line.strip_prefix("hippo_gitops_heap_live_bytes ") {
            out.heap_bytes = v.parse().ok();
        } else if let Some(rest) = line.strip_prefix("hippo_gitops_requests_total{service=\"") {
            let service = rest.split('"').next().unwrap_or_default().to_string();
            let value: f64 = line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            *out.requests.entry(service).or_default() += value;
        }
    }
    out
}

/// A `kB` line of `/proc/<pid>/status`.
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Our push against the bindle crate's own `StandaloneRead::push`, each on a fresh server,
/// then each again unchanged.
pub async fn push_comparison(config: &BenchConfig) -> Result<PushRow, BenchError> {
    use bindle::standalone::{StandaloneRead, StandaloneWrite};
    let dir = config.dir.join("push");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    // Content that doesn't compress or repeat: a SHA-256 chain.
    let mut parcels = BTreeMap::new();
    let mut seed = [7u8; 32];
    for i in 0..config.push_parcels {
        let mut data = Vec::with_capacity(config.parcel_bytes);
        while data.len() < config.parcel_bytes {
            use sha2::Digest;
            seed = sha2::Sha256::digest(seed).into();
            data.extend_from_slice(&seed);
        }
        data.truncate(config.parcel_bytes);
        let sha = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(&data))
        };
        parcels.insert(sha, (format!("parcel-{i}.bin"), data));
    }
    let id =
        bindle::Id::try_from("bench-push/1.0.0").map_err(|e| step("bindle id")(e.to_string()))?;
    let mut invoice = bindle::Invoice {
        bindle_version: "1.0.0".into(),
        yanked: None,
        yanked_signature: None,
        bindle: bindle::BindleSpec {
            id: id.clone(),
            description: None,
            authors: None,
        },
        annotations: None,
        parcel: Some(
            parcels
                .iter()
                .map(|(sha, (name, data))| bindle::Parcel {
                    label: bindle::Label {
                        sha256: sha.clone(),
                        media_type: "application/octet-stream".into(),
                        name: name.clone(),
                        size: data.len() as u64,
                        ..Default::default()
                    },
                    conditions: None,
                })
                .collect(),
        ),
        group: None,
        signature: None,
    };

    // Ours first, on its own server.
    let sb = start_sandbox(&dir.join("ours")).await?;
    let key = {
        let text = std::fs::read_to_string(sb.signing_key_path())?;
        let keys: SecretKeyFile = toml::from_str(&text).map_err(|e| step("key")(e.to_string()))?;
        keys.key
            .into_iter()
            .next()
            .ok_or_else(|| step("key")("empty".into()))?
    };
    let standalone = StandaloneWrite::new(dir.join("bindle"), &id)
        .await
        .map_err(|e| step("standalone bindle")(e.to_string()))?;
    let readers: HashMap<String, std::io::Cursor<Vec<u8>>> = parcels
        .iter()
        .map(|(sha, (_, data))| (sha.clone(), std::io::Cursor::new(data.clone())))
        .collect();
    let unsigned = invoice.clone();
    standalone
        .write(unsigned, readers)
        .await
        .map_err(|e| step("standalone bindle")(e.to_string()))?;
    let local = package::load(standalone.path()).map_err(|e| step("load")(e.to_string()))?;
    let stats = RequestStats::default();
    let client = BindleClient::new(
        BindleConfig::new(sb.bindle_url()),
        key.clone(),
        stats.clone(),
    )
    .map_err(|e| step("client")(e.to_string()))?;
    let t = Instant::now();
    client
        .push(&local)
        .await
        .map_err(|e| step("our push")(e.to_string()))?;
    let ours_cold = t.elapsed();
    let uploaded_cold = stats.uploaded_bytes();
    let t = Instant::now();
    client
        .push(&local)
        .await
        .map_err(|e| step("our push again")(e.to_string()))?;
    let ours_unchanged = t.elapsed();
    let ours_unchanged_bytes = stats.uploaded_bytes() - uploaded_cold;
    drop(client);
    sb.stop().await;

    // Theirs: the same bindle, signed in the file the way `StandaloneRead` pushes it as is.
    let sb = start_sandbox(&dir.join("theirs")).await?;
    let their_key = sb.signing_key().clone();
    invoice
        .sign(bindle::SignatureRole::Creator, &their_key)
        .map_err(|e| step("sign")(e.to_string()))?;
    let signed_dir = dir.join("signed");
    let standalone = StandaloneWrite::new(&signed_dir, &id)
        .await
        .map_err(|e| step("standalone bindle")(e.to_string()))?;
    let readers: HashMap<String, std::io::Cursor<Vec<u8>>> = parcels
        .iter()
        .map(|(sha, (_, data))| (sha.clone(), std::io::Cursor::new(data.clone())))
        .collect();
    standalone
        .write(invoice, readers)
        .await
        .map_err(|e| step("standalone bindle")(e.to_string()))?;
    let theirs = bindle::client::ClientBuilder::default()
        // The default strategy wants the server's host signature known too; the creator's is
        // what this comparison signs with.
        .verification_strategy(bindle::VerificationStrategy::CreativeIntegrity)
        .build(
            &format!("{}/", sb.bindle_url()),
            bindle::client::tokens::NoToken,
            // Its unchanged push reads the invoice back and verifies it.
            Arc::new(bindle::signature::KeyRing::new(vec![
                bindle::signature::KeyEntry::try_from(&their_key)
                    .map_err(|e| step("keyring")(e.to_string()))?,
            ])),
        )
        .map_err(|e| step("bindle client")(e.to_string()))?;
    let read = StandaloneRead::new(&signed_dir, &id)
        .await
        .map_err(|e| step("standalone read")(e.to_string()))?;
    let t = Instant::now();
    read.push(&theirs)
        .await
        .map_err(|e| step("StandaloneRead::push")(e.to_string()))?;
    let theirs_cold = t.elapsed();
    let t = Instant::now();
    read.push(&theirs)
        .await
        .map_err(|e| step("StandaloneRead::push again")(e.to_string()))?;
    let theirs_unchanged = t.elapsed();
    drop(theirs);
    sb.stop().await;
    Ok(PushRow {
        parcels: config.push_parcels,
        bytes: (config.push_parcels * config.parcel_bytes) as u64,
        ours_cold,
        theirs_cold,
        ours_unchanged,
        theirs_unchanged,
        ours_unchanged_bytes,
    })
}

/// Runs every measurement; `progress` gets a line per step.
pub async fn run(config: &BenchConfig, progress: impl Fn(&str)) -> Result<BenchReport, BenchError> {
    let mut report = BenchReport::default();
    for &n in &config.sizes {
        let base = config.dir.join(format!("n{n}"));
        let _ = std::fs::remove_dir_all(&base);
        progress(&format!("N={n}: generating {n} apps"));
        let specs = generate_apps(&base, n)?;
        let desired = load(&specs)?;
        let mut row = Row {
            apps: n,
            ..Default::default()
        };

        let sb = start_sandbox(&base.join("sandbox")).await?;
        progress(&format!("N={n}: cold converge"));
        row.cold = reconcile_once(&sb, &specs, "cold converge").await?;
        progress(&format!("N={n}: no-op reconcile --once"));
        row.noop = reconcile_once(&sb, &specs, "no-op reconcile").await?;
        std::fs::write(specs.join("app-0000.yaml"), app_file("app-0000", "changed"))?;
        progress(&format!("N={n}: one app changed"));
        row.changed = reconcile_once(&sb, &specs, "one app changed").await?;
        std::fs::write(specs.join("app-0000.yaml"), app_file("app-0000", "1"))?;
        row.idle = match &config.binary {
            Some(bin) => {
                // Back to the first state, so that the controller starts idle.
                reconcile_once(&sb, &specs, "reset").await?;
                progress(&format!(
                    "N={n}: idle controller ({:?})",
                    config.idle_window
                ));
                Some(idle_controller(bin, &sb, &specs, config, n).await?)
            }
            None => None,
        };
        discovery_rounds(&sb, &specs, n, &mut row, &progress).await?;
        sb.stop().await;

        if !config.baseline {
            report.rows.push(row);
            continue;
        }
        let sb = start_sandbox(&base.join("baseline")).await?;
        progress(&format!("N={n}: spin-deploy-style baseline, cold"));
        row.baseline_cold = spin_deploy_baseline(&sb, &desired).await?.0;
        progress(&format!(
            "N={n}: spin-deploy-style baseline, redeploy unchanged"
        ));
        let (cost, dups, failures) = spin_deploy_baseline(&sb, &desired).await?;
        row.baseline_redeploy = cost;
        row.baseline_duplicates = dups;
        row.baseline_failures = failures;
        sb.stop().await;
        report.rows.push(row);
    }
    for &n in &config.sizes {
        progress(&format!("N={n}: the dashboard's overview"));
        report.dashboard.push(dashboard_overview(n, 21));
    }
    if config.push_parcels > 0 {
        progress(&format!(
            "bindle push: {} parcels × {} bytes",
            config.push_parcels, config.parcel_bytes
        ));
        report.push = Some(push_comparison(config).await?);
    }
    Ok(report)
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn ratio(a: f64, b: f64) -> String {
    if b == 0.0 {
        "–".into()
    } else {
        format!("{:.2}", a / b)
    }
}

/// The report as Markdown tables.
pub fn markdown(report: &BenchReport) -> String {
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(
        w,
        "| apps | operation | wall | Hippo | Bindle | Nomad | uploaded | Hippo writes |"
    );
    let _ = writeln!(w, "|---:|---|---:|---:|---:|---:|---:|---:|");
    for row in &report.rows {
        for (name, c) in [
            ("cold converge", row.cold),
            ("no-op `reconcile --once`", row.noop),
            ("one app changed", row.changed),
            (
                "discovery round: 1 new version per 100 apps",
                row.discover_new,
            ),
            ("discovery round: nothing new", row.discover_nothing),
            ("baseline: cold deploy", row.baseline_cold),
            ("baseline: redeploy unchanged", row.baseline_redeploy),
        ] {
            if name.starts_with("baseline") && c.wall.is_zero() {
                continue;
            }
            let _ = writeln!(
                w,
                "| {} | {name} | {} | {} | {} | {} | {} B | {} |",
                row.apps,
                secs(c.wall),
                c.hippo,
                c.bindle,
                c.nomad,
                c.uploaded_bytes,
                c.hippo_writes
            );
        }
    }
    let _ = writeln!(w);
    let _ = writeln!(w, "| apps | ours/baseline cold: time | requests | ours/baseline no-op vs redeploy: time | requests | baseline redeploy: duplicate revisions registered / refused by Hippo |");
    let _ = writeln!(w, "|---:|---:|---:|---:|---:|---:|");
    for row in report
        .rows
        .iter()
        .filter(|r| !r.baseline_cold.wall.is_zero())
    {
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {} / {} |",
            row.apps,
            ratio(
                row.cold.wall.as_secs_f64(),
                row.baseline_cold.wall.as_secs_f64()
            ),
            ratio(
                row.cold.requests() as f64,
                row.baseline_cold.requests() as f64
            ),
            ratio(
                row.noop.wall.as_secs_f64(),
                row.baseline_redeploy.wall.as_secs_f64()
            ),
            ratio(
                row.noop.requests() as f64,
                row.baseline_redeploy.requests() as f64
            ),
            row.baseline_duplicates,
            row.baseline_failures
        );
    }
    if report.rows.iter().any(|r| r.idle.is_some()) {
        let _ = writeln!(w);
        let _ = writeln!(w, "| apps | idle controller: requests per cycle (Hippo / Bindle / Nomad) | cycles watched | resident memory: median (of which anonymous) / peak | live heap: median / peak | CPU (share of one core) | file change → first write |");
        let _ = writeln!(w, "|---:|---:|---:|---:|---:|---:|---:|");
        for row in &report.rows {
            if let Some(i) = row.idle {
                let _ = writeln!(
                    w,
                    "| {} | {:.1} / {:.1} / {:.1} | {} | {:.1} MiB ({:.1} MiB) / {:.1} MiB | {:.1} MiB / {:.1} MiB | {:.3} | {} ms |",
                    row.apps,
                    i.per_cycle[0],
                    i.per_cycle[1],
                    i.per_cycle[2],
                    i.cycles,
                    i.rss_kib as f64 / 1024.0,
                    i.rss_anon_kib as f64 / 1024.0,
                    i.rss_peak_kib as f64 / 1024.0,
                    i.heap_kib as f64 / 1024.0,
                    i.heap_peak_kib as f64 / 1024.0,
                    i.cpu_share,
                    i.change_to_write.as_millis()
                );
            }
        }
    }
    if !report.dashboard.is_empty() {
        let _ = writeln!(w);
        let _ = writeln!(
            w,
            "| apps | dashboard overview (`GET /`): render median / max of 21 | page size |"
        );
        let _ = writeln!(w, "|---:|---:|---:|");
        for d in &report.dashboard {
            let _ = writeln!(
                w,
                "| {} | {:.1} ms / {:.1} ms | {:.0} KB |",
                d.apps,
                d.median.as_secs_f64() * 1000.0,
                d.max.as_secs_f64() * 1000.0,
                d.bytes as f64 / 1000.0
            );
        }
    }
    if let Some(p) = report.push {
        let _ = writeln!(w);
        let _ = writeln!(
            w,
            "| bindle push ({} parcels, {:.0} MiB) | ours | `StandaloneRead::push` | ours/theirs |",
            p.parcels,
            p.bytes as f64 / 1048576.0
        );
        let _ = writeln!(w, "|---|---:|---:|---:|");
        let _ = writeln!(
            w,
            "| cold | {} | {} | {} |",
            secs(p.ours_cold),
            secs(p.theirs_cold),
            ratio(p.ours_cold.as_secs_f64(), p.theirs_cold.as_secs_f64())
        );
        let _ = writeln!(
            w,
            "| unchanged | {} | {} | {} |",
            secs(p.ours_unchanged),
            secs(p.theirs_unchanged),
            ratio(
                p.ours_unchanged.as_secs_f64(),
                p.theirs_unchanged.as_secs_f64()
            )
        );
        let _ = writeln!(
            w,
            "| bytes re-uploaded when unchanged | {} B | | |",
            p.ours_unchanged_bytes
        );
    }
    out
}

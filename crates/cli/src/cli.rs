//! Command-line interface: argument parsing and the commands. `main.rs` is a thin shell.
//!
//! Exit codes: `validate` 0 valid / 1 invalid; `plan` 0 no changes / 2 changes pending /
//! 1 error (Terraform's `-detailed-exitcode`); `reconcile --once` 0 all converged / 1 otherwise.

use std::{path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{self, HippoSettings};
use crate::progress_line::TerminalProgress;
use crate::render;
#[cfg(feature = "sandbox")]
use crate::sandbox_args::{sandbox_command, SandboxCommandArgs};
use crate::sandbox_args::{stop_sandbox, Sandbox, SandboxArgs};
use hippo_gitops_core::{
    apply::{self, Connections, Context},
    bindles::BindleConfig,
    hippo::HippoClientConfig,
    nomad::{self, NomadConfig},
    progress::{NoProgress, Progress},
    secret::Secret,
    spec::{self, DesiredState, LoadOptions},
    stats::RequestStats,
    status,
};

/// `0.1.0 (<git revision>, sandbox)`: the build without the `sandbox` feature (the container
/// image) says `no sandbox`.
#[cfg(feature = "sandbox")]
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("HIPPO_GITOPS_GIT_REV"),
    ", sandbox)"
);
#[cfg(not(feature = "sandbox"))]
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("HIPPO_GITOPS_GIT_REV"),
    ", no sandbox)"
);

const ABOUT: &str =
    "GitOps for Hippo: converge Hippo, Bindle and Nomad to declarative deploy files";

#[derive(Debug, Parser)]
#[command(name = "hippo-gitops", version = VERSION, about = ABOUT, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log filter (tracing's env-filter syntax, e.g. `info`, `hippo_gitops=debug`).
    #[arg(
        help_heading = "Output and logs",
        long,
        global = true,
        env = "HIPPO_GITOPS_LOG",
        // The embedded bindle server logs every request at info, and every 4xx it answers at
        // warn, though a 409 for a parcel that exists is a normal part of a push (our client
        // reports what matters).
        default_value = "info,bindle=warn,warp=error,sled=warn"
    )]
    pub log_level: String,
    /// Log format on stderr.
    #[arg(help_heading = "Output and logs", long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

/// `plan` also speaks Markdown, for pull request comments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlanOutputFormat {
    Text,
    Json,
    Markdown,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check deploy files offline; exit 0 when valid, 1 when not.
    #[command(
        after_help = "Example:\n  hippo-gitops validate -f deploy-specs/\n\nEvery problem in every file is reported as file:line:column: field: message.\nNothing is contacted and nothing is written."
    )]
    Validate(ValidateArgs),
    /// Show what reconcile would change, without changing anything.
    #[command(
        after_help = "Example:\n  HIPPO_URL=https://hippo.example.com HIPPO_USERNAME=ci HIPPO_PASSWORD=... \\\n  BINDLE_SERVER_URL=https://bindle.example.com/v1 \\\n    hippo-gitops plan -f deploy-specs/ --output json\n\nExit codes: 0 no changes, 2 changes pending, 1 error (like terraform plan -detailed-exitcode)."
    )]
    Plan(PlanArgs),
    /// Push bindles, create apps and channels, register revisions until Hippo matches the files.
    #[command(
        after_help = "Examples:\n  hippo-gitops reconcile --once -f deploy-specs/\n  hippo-gitops reconcile -f deploy-specs/ --listen 0.0.0.0:9090\n  hippo-gitops reconcile --git-url https://github.com/org/deploy.git --git-path deploy-specs/ \\\n    --webhook-secret \"$SECRET\"\n\nWith --once: prints one line per app; exit codes 0 every app converged, 1 otherwise.\nWithout: runs until SIGTERM/SIGINT, reconciling on file changes, new commits, webhooks and\nevery --interval; with Nomad configured, replicas elect one writer. One app's failure does\nnot stop the others."
    )]
    Reconcile(Box<ReconcileArgs>),
    /// Show each app's and channel's state on Hippo and Nomad, with a condition.
    #[command(
        after_help = "Example:\n  hippo-gitops status -f deploy-specs/ --output json\n\nPer channel: the desired revision, Hippo's active revision, the Nomad job's version and\nstatus, healthy/total allocations, and a condition (Ready, Reconciling, Stalled).\nExit codes: 0 all Ready, 2 some not Ready, 1 error."
    )]
    Status(StatusArgs),
    /// Print a running controller's events (what it did to which app, when, at which commit).
    #[command(
        after_help = "Examples:\n  hippo-gitops history --app weather --since 1h\n  hippo-gitops history --controller http://hippo-gitops:9090 --output json\n\nReads GET /api/v1/events from the controller (kept in memory and in its state dir)."
    )]
    History(crate::history::HistoryArgs),
    /// Run a local Bindle + Hippo + Nomad in the foreground for other tools to use.
    #[cfg(feature = "sandbox")]
    #[command(
        after_help = "Example:\n  hippo-gitops sandbox --sandbox-dir .hippo-gitops/sandbox\n\nThe Bindle server is the real bindle crate's server; Hippo and Nomad are emulators of\ntheir APIs. Prints the environment to use it (HIPPO_URL, HIPPO_USERNAME, HIPPO_PASSWORD,\nBINDLE_SERVER_URL, BINDLE_SIGNING_KEY, NOMAD_ADDR). Ctrl-C stops it; state survives a restart."
    )]
    Sandbox(SandboxCommandArgs),
    /// Print the deploy file's JSON Schema (for editors and linters).
    #[command(
        after_help = "Example:\n  hippo-gitops schema > deploy-specs/hippo-gitops.schema.json\n\nThen start each deploy file with\n  # yaml-language-server: $schema=hippo-gitops.schema.json\nfor completion and checks in editors with the YAML language server."
    )]
    Schema,
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  hippo-gitops completions bash > /etc/bash_completion.d/hippo-gitops\n  hippo-gitops completions zsh > \"${fpath[1]}/_hippo-gitops\"\n  hippo-gitops completions fish > ~/.config/fish/completions/hippo-gitops.fish"
    )]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub files: FileArgs,
    #[command(flatten)]
    pub connection: ConnectionArgs,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    /// Output format on stdout.
    #[arg(help_heading = "Output and logs", long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

pub use hippo_gitops_core::duration::parse_duration;

#[derive(Debug, Args)]
pub struct FileArgs {
    /// Deploy file or directory (every *.yaml/*.yml below it); repeatable.
    #[arg(
        help_heading = "Deploy files",
        short = 'f',
        long = "file",
        required = true,
        value_name = "PATH"
    )]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub input: InputArgs,
}

/// Where deploy files and the files they name may come from, and how large deploy files may be.
#[derive(Debug, Clone, Args)]
pub struct InputArgs {
    /// Repository root: deploy files and every file a `path:` packs must stay inside it (no
    /// `..` or symlink escapes). Default: the deploy files' Git repository (the nearest
    /// directory above them with a `.git`), or their directory outside Git.
    #[arg(help_heading = "Deploy files", long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Let deploy files and packed files come from anywhere (no root).
    #[arg(help_heading = "Deploy files", long, conflicts_with = "root")]
    pub allow_outside_root: bool,
    /// Refuse deploy files larger than this, unread (e.g. 10MB, 512KB).
    #[arg(
        help_heading = "Deploy files",
        long,
        default_value = "10MB",
        value_parser = spec::parse_size,
        value_name = "SIZE"
    )]
    pub max_file_size: u64,
}

impl InputArgs {
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            root: self.root.clone(),
            allow_outside_root: self.allow_outside_root,
            max_file_size: self.max_file_size,
            pack_cache: None,
        }
    }
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub files: FileArgs,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub files: FileArgs,
    #[command(flatten)]
    pub connection: ConnectionArgs,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    /// Output format on stdout (markdown: for a pull request comment).
    #[arg(help_heading = "Output and logs", long, value_enum, default_value_t = PlanOutputFormat::Text)]
    pub output: PlanOutputFormat,
}

#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// Deploy file or directory (every *.yaml/*.yml below it); repeatable. Not with --git-url.
    #[arg(
        help_heading = "Deploy files",
        short = 'f',
        long = "file",
        value_name = "PATH"
    )]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub input: InputArgs,
    #[command(flatten)]
    pub connection: ConnectionArgs,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    /// Apply once and exit. Without it, run as a controller until stopped.
    #[arg(help_heading = "One-shot run (--once)", long)]
    pub once: bool,
    /// Wait until Nomad runs what Hippo scheduled (the default when Nomad is configured).
    #[arg(
        help_heading = "One-shot run (--once)",
        long,
        overrides_with = "no_wait"
    )]
    pub wait: bool,
    /// Don't wait for Nomad; check what it runs once.
    #[arg(help_heading = "One-shot run (--once)", long)]
    pub no_wait: bool,
    /// How long to wait for Nomad (e.g. 90s, 5m).
    #[arg(help_heading = "One-shot run (--once)", long, default_value = "5m", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
    /// Delete Nomad jobs named like a Hippo channel GUID that no channel has.
    #[arg(help_heading = "One-shot run (--once)", long)]
    pub prune_orphans: bool,
    /// Output format on stdout (`--once`).
    #[arg(help_heading = "Output and logs", long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

/// Settings of the long-running controller (`reconcile` without `--once`).
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Reconcile everything at least this often (±10% jitter).
    #[arg(help_heading = "Controller", long, env = "HIPPO_GITOPS_INTERVAL", default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    pub interval: Duration,
    /// Don't watch the deploy files; reload them on every interval instead.
    #[arg(help_heading = "Controller", long)]
    pub no_watch: bool,
    /// Follow a Git repository instead of local files (credentials as for `git clone`).
    #[arg(
        help_heading = "Controller: Git source",
        long,
        env = "HIPPO_GITOPS_GIT_URL",
        value_name = "URL",
        conflicts_with = "files"
    )]
    pub git_url: Option<String>,
    /// Branch to follow.
    #[arg(
        help_heading = "Controller: Git source",
        long,
        env = "HIPPO_GITOPS_GIT_BRANCH",
        default_value = "main",
        value_name = "BRANCH"
    )]
    pub git_branch: String,
    /// Deploy files inside the repository (file or directory).
    #[arg(
        help_heading = "Controller: Git source",
        long,
        env = "HIPPO_GITOPS_GIT_PATH",
        default_value = ".",
        value_name = "PATH"
    )]
    pub git_path: PathBuf,
    /// How often to fetch the branch (webhooks fetch at once).
    #[arg(help_heading = "Controller: Git source", long, env = "HIPPO_GITOPS_GIT_INTERVAL", default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    pub git_interval: Duration,
    /// HTTP address for the dashboard (/), /api/v1, /healthz, /readyz, /metrics, /status and
    /// /hooks/{github,gitlab,generic}.
    #[arg(
        help_heading = "Controller: HTTP and webhooks",
        long,
        env = "HIPPO_GITOPS_LISTEN",
        default_value = "127.0.0.1:9090",
        value_name = "ADDR"
    )]
    pub listen: std::net::SocketAddr,
    /// Secret for webhooks (HMAC for GitHub and generic, token for GitLab). Without it the
    /// webhook receivers refuse every request.
    #[arg(
        help_heading = "Controller: HTTP and webhooks",
        long,
        env = "HIPPO_GITOPS_WEBHOOK_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub webhook_secret: Option<String>,
    /// Token for `POST /api/v1/apps/{name}/reconcile` and the dashboard's "Reconcile now"
    /// button. Without it both are off (403) and the dashboard is read-only.
    #[arg(
        help_heading = "Controller: HTTP and webhooks",
        long,
        env = "HIPPO_GITOPS_API_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub api_token: Option<String>,
    /// Where users reach the dashboard (e.g. https://gitops.example.com): the links in
    /// notifications and commit statuses.
    #[arg(
        help_heading = "Controller: HTTP and webhooks",
        long,
        env = "HIPPO_GITOPS_EXTERNAL_URL",
        value_name = "URL"
    )]
    pub external_url: Option<String>,
    /// Nomad variable path of the leader lock (replicas sharing it elect one writer).
    #[arg(
        help_heading = "Controller: leader election and shutdown",
        long,
        env = "HIPPO_GITOPS_LEADER_LOCK",
        default_value = "hippo-gitops/leader",
        value_name = "PATH"
    )]
    pub leader_lock: String,
    /// TTL of the leader lock (Nomad accepts 10s to 24h); it is renewed at 0.7 × TTL.
    #[arg(help_heading = "Controller: leader election and shutdown", long, default_value = "15s", value_parser = parse_duration, value_name = "DURATION")]
    pub leader_ttl: Duration,
    /// Run without leader election even with Nomad configured (only one replica!).
    #[arg(help_heading = "Controller: leader election and shutdown", long)]
    pub no_leader_election: bool,
    /// On SIGTERM, how long in-flight writes may take to finish.
    #[arg(help_heading = "Controller: leader election and shutdown", long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub shutdown_grace: Duration,
    /// How soon to look again at an app still rolling out on Nomad.
    #[arg(help_heading = "Controller", long, default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    pub rollout_interval: Duration,
    /// How often apps with a `discover` range look for new versions on the Bindle server.
    #[arg(help_heading = "Controller", long, env = "HIPPO_GITOPS_DISCOVER_INTERVAL", default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    pub discover_interval: Duration,
    /// First wait after a failure; doubles per failure in a row.
    #[arg(help_heading = "Controller", long, default_value = "2s", value_parser = parse_duration, value_name = "DURATION")]
    pub backoff_min: Duration,
    /// Longest wait between retries of a failing app.
    #[arg(help_heading = "Controller", long, default_value = "5m", value_parser = parse_duration, value_name = "DURATION")]
    pub backoff_max: Duration,
}

#[derive(Debug, Args)]
pub struct ConnectionArgs {
    /// Hippo server URL.
    #[arg(help_heading = "Hippo", long, env = "HIPPO_URL", value_name = "URL")]
    pub hippo_url: Option<String>,
    /// Hippo bearer token (expires after 30 minutes; prefer username and password).
    #[arg(
        help_heading = "Hippo",
        long,
        env = "HIPPO_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub hippo_token: Option<String>,
    /// Hippo username; logs in again whenever the token is about to expire.
    #[arg(
        help_heading = "Hippo",
        long,
        env = "HIPPO_USERNAME",
        value_name = "USER"
    )]
    pub hippo_username: Option<String>,
    /// Hippo password (asked for on a terminal when only the username is given).
    #[arg(
        help_heading = "Hippo",
        long,
        env = "HIPPO_PASSWORD",
        hide_env_values = true,
        value_name = "PASSWORD"
    )]
    pub hippo_password: Option<String>,
    /// Accept invalid TLS certificates from Hippo and Bindle (self-signed test setups only).
    #[arg(
        help_heading = "Hippo",
        long,
        env = "HIPPO_GITOPS_DANGER_ACCEPT_INVALID_CERTS"
    )]
    pub danger_accept_invalid_certs: bool,
    /// Bindle server API URL, e.g. http://127.0.0.1:8080/v1.
    #[arg(
        help_heading = "Bindle",
        long,
        env = "BINDLE_SERVER_URL",
        value_name = "URL"
    )]
    pub bindle_server: Option<String>,
    /// Bindle basic-auth username.
    #[arg(
        help_heading = "Bindle",
        long,
        env = "BINDLE_USERNAME",
        value_name = "USER"
    )]
    pub bindle_username: Option<String>,
    /// Bindle basic-auth password.
    #[arg(
        help_heading = "Bindle",
        long,
        env = "BINDLE_PASSWORD",
        hide_env_values = true,
        value_name = "PASSWORD"
    )]
    pub bindle_password: Option<String>,
    /// Bindle bearer token.
    #[arg(
        help_heading = "Bindle",
        long,
        env = "BINDLE_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub bindle_token: Option<String>,
    /// Secret-key file (as `bindle keys create` writes) to sign invoices as creator. Without
    /// one, a key is created in the state dir and its public half printed for the server's keyring.
    #[arg(
        help_heading = "Bindle",
        long,
        env = "BINDLE_SIGNING_KEY",
        value_name = "FILE"
    )]
    pub bindle_signing_key: Option<PathBuf>,
    /// Where the controller keeps its own files (the generated signing key).
    #[arg(
        help_heading = "Requests and state",
        long,
        env = "HIPPO_GITOPS_STATE_DIR",
        value_name = "DIR"
    )]
    pub state_dir: Option<PathBuf>,
    /// Nomad API address (used to verify what Hippo scheduled).
    #[arg(help_heading = "Nomad", long, env = "NOMAD_ADDR", value_name = "URL")]
    pub nomad_addr: Option<String>,
    /// Nomad ACL token.
    #[arg(
        help_heading = "Nomad",
        long,
        env = "NOMAD_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub nomad_token: Option<String>,
    /// The controller's own Nomad namespace (its leader lock variable). Nomad sets
    /// NOMAD_NAMESPACE in every task, so a controller run by Nomad gets its job's namespace.
    #[arg(
        help_heading = "Nomad",
        long,
        env = "NOMAD_NAMESPACE",
        value_name = "NAMESPACE"
    )]
    pub nomad_namespace: Option<String>,
    /// The Nomad namespace Hippo's jobs are read in: Hippo registers them in `default`,
    /// whatever namespace the controller runs in.
    #[arg(help_heading = "Nomad", long, env = "HIPPO_GITOPS_HIPPO_NAMESPACE", default_value = nomad::DEFAULT_NAMESPACE, value_name = "NAMESPACE")]
    pub hippo_nomad_namespace: String,
    /// Nomad region.
    #[arg(
        help_heading = "Nomad",
        long,
        env = "NOMAD_REGION",
        value_name = "REGION"
    )]
    pub nomad_region: Option<String>,
    /// CA certificate (PEM) to verify Nomad's TLS certificate.
    #[arg(
        help_heading = "Nomad",
        long,
        env = "NOMAD_CACERT",
        value_name = "FILE"
    )]
    pub nomad_cacert: Option<PathBuf>,
    /// Client certificate (PEM) for Nomad mTLS.
    #[arg(
        help_heading = "Nomad",
        long,
        env = "NOMAD_CLIENT_CERT",
        value_name = "FILE"
    )]
    pub nomad_client_cert: Option<PathBuf>,
    /// Client key (PEM) for Nomad mTLS.
    #[arg(
        help_heading = "Nomad",
        long,
        env = "NOMAD_CLIENT_KEY",
        value_name = "FILE"
    )]
    pub nomad_client_key: Option<PathBuf>,
    /// Do not verify Nomad's TLS certificate.
    #[arg(help_heading = "Nomad", long, env = "NOMAD_SKIP_VERIFY", value_parser = clap::builder::BoolishValueParser::new(), default_value = "false")]
    pub nomad_skip_verify: bool,
    /// Apps worked on in parallel.
    #[arg(
        help_heading = "Requests and state",
        long,
        default_value_t = 4,
        value_name = "N"
    )]
    pub concurrency: usize,
    /// Timeout of each request to Hippo or Bindle, in seconds.
    #[arg(
        help_heading = "Requests and state",
        long,
        default_value_t = 30,
        value_name = "SECONDS"
    )]
    pub request_timeout: u64,
}

/// Runs the parsed command. Errors reach here only from setup; per-app failures are results.
/// Exit code of a command line that could not be understood: `EX_USAGE` from sysexits.h. Kept
/// apart from 1 (the command failed) and 2 (`plan`: changes pending; `status`: not all Ready),
/// so that a typo in CI never passes for "changes pending".
pub const EXIT_USAGE: u8 = 64;

/// A command line that parses but asks for something impossible: exits [`EXIT_USAGE`] too.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub &'static str);

/// The exit code for a command's error: [`EXIT_USAGE`] for a [`UsageError`], else 1.
pub fn error_exit_code(e: &anyhow::Error) -> ExitCode {
    if e.downcast_ref::<UsageError>().is_some() {
        ExitCode::from(EXIT_USAGE)
    } else {
        ExitCode::from(1)
    }
}

/// An error and its causes on one line, each cause once: our errors often say their source's
/// message already, and `{:#}` would repeat it at every level of the chain.
pub fn error_text(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

/// Parses the command line. Help and version go to stdout with exit 0; any usage error goes to
/// stderr with [`EXIT_USAGE`].
pub fn parse_args() -> Result<Cli, ExitCode> {
    Cli::try_parse().map_err(|e| {
        // Printing can only fail when stdout/stderr are closed; the exit code still says it.
        let _ = e.print();
        match e.kind() {
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                ExitCode::SUCCESS
            }
            _ => ExitCode::from(EXIT_USAGE),
        }
    })
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate(args) => Ok(validate(&args.files)),
        Command::Plan(args) => plan(args).await,
        Command::Reconcile(args) => reconcile(*args).await,
        Command::Status(args) => status_command(args).await,
        Command::History(args) => Ok(crate::history::run(args).await?),
        #[cfg(feature = "sandbox")]
        Command::Sandbox(args) => sandbox_command(args).await,
        Command::Schema => {
            print!("{}", hippo_gitops_core::spec::schema::deploy_file_schema());
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "hippo-gitops",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn load(files: &FileArgs) -> Result<DesiredState, ExitCode> {
    spec::load(&files.files, &files.input.load_options()).map_err(|diagnostics| {
        for d in &diagnostics.0 {
            eprintln!("{d}");
        }
        eprintln!(
            "error: {} problem(s) in the deploy files; nothing was contacted or changed",
            diagnostics.0.len()
        );
        ExitCode::from(1)
    })
}

/// Loads the deploy files (a bad one ends the command with exit 1 before anything starts) and,
/// with `--sandbox`, starts the sandbox and points every connection at it.
async fn prepare(
    files: &FileArgs,
    connection: &mut ConnectionArgs,
    sandbox: &SandboxArgs,
) -> anyhow::Result<Result<(DesiredState, Option<Sandbox>), ExitCode>> {
    let desired = match load(files) {
        Ok(d) => d,
        Err(code) => return Ok(Err(code)),
    };
    let sandbox = sandbox.start().await?;
    if let Some(s) = &sandbox {
        connection.use_sandbox(s);
    }
    Ok(Ok((desired, sandbox)))
}

fn validate(files: &FileArgs) -> ExitCode {
    match load(files) {
        Ok(state) => {
            let revisions: usize = state.apps.iter().map(|a| a.revisions.len()).sum();
            let channels: usize = state.apps.iter().map(|a| a.channels.len()).sum();
            let notifications = match state.notifications.len() {
                0 => String::new(),
                n => format!(", {n} notification(s)"),
            };
            println!(
                "valid: {} app(s), {revisions} revision(s), {channels} channel(s){notifications}",
                state.apps.len()
            );
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// Builds the clients from flags and environment.
pub fn context(conn: &ConnectionArgs, stats: RequestStats) -> anyhow::Result<Context> {
    context_with_progress(conn, stats, Arc::new(NoProgress))
}

/// As [`context`], drawing uploads and waits on `progress`.
pub fn context_with_progress(
    conn: &ConnectionArgs,
    stats: RequestStats,
    progress: Arc<dyn Progress>,
) -> anyhow::Result<Context> {
    let settings = HippoSettings {
        url: conn.hippo_url.clone(),
        token: conn.hippo_token.clone().map(Secret::new),
        username: conn.hippo_username.clone(),
        password: conn.hippo_password.clone().map(Secret::new),
    };
    let (url, credentials) = config::hippo_credentials(
        &settings,
        config::spin_config_path().as_deref(),
        &config::prompt_password,
        config::can_prompt(),
    )?;
    let timeout = Duration::from_secs(conn.request_timeout.max(1));
    let mut hippo_config = HippoClientConfig::new(url, credentials);
    hippo_config.timeout = timeout;
    hippo_config.danger_accept_invalid_certs = conn.danger_accept_invalid_certs;

    let bindle_url = conn.bindle_server.clone().filter(|u| !u.is_empty()).ok_or(
        config::ConfigError::Missing(
            "the Bindle server URL",
            "--bindle-server",
            "BINDLE_SERVER_URL",
        ),
    )?;
    let state_dir = conn
        .state_dir
        .clone()
        .unwrap_or_else(config::default_state_dir);
    let key = config::signing_key(conn.bindle_signing_key.as_deref(), &state_dir)?;
    if key.created {
        eprintln!(
            "Created a bindle signing key at {}.\nBindle 0.9 servers accept only invoices signed by keys in their keyring: add this entry to the server's keyring (bindle-server --keyring):\n\n{}",
            key.path.display(),
            config::keyring_entry(&key.key)?
        );
    }
    let mut bindle_config = BindleConfig::new(bindle_url);
    bindle_config.auth = config::bindle_auth(
        conn.bindle_username.clone(),
        conn.bindle_password.clone().map(Secret::new),
        conn.bindle_token.clone().map(Secret::new),
    )?;
    bindle_config.timeout = timeout.max(Duration::from_secs(60));
    bindle_config.danger_accept_invalid_certs = conn.danger_accept_invalid_certs;
    let nomad = match conn.nomad_addr.clone().filter(|a| !a.is_empty()) {
        None => {
            tracing::info!(
                "NOMAD_ADDR is not set: checking Hippo and Bindle only, not what Nomad runs"
            );
            None
        }
        Some(addr) => {
            let mut nc = NomadConfig::new(addr);
            nc.token = conn.nomad_token.clone().map(Secret::new);
            nc.namespace = conn.nomad_namespace.clone();
            nc.hippo_namespace = conn.hippo_nomad_namespace.clone();
            nc.region = conn.nomad_region.clone();
            nc.ca_cert = conn.nomad_cacert.clone();
            nc.client_cert = conn.nomad_client_cert.clone();
            nc.client_key = conn.nomad_client_key.clone();
            nc.skip_verify = conn.nomad_skip_verify;
            nc.timeout = timeout;
            Some(nc)
        }
    };
    let connections = Connections {
        hippo: hippo_config,
        bindle: bindle_config,
        signing_key: key.key,
        nomad,
    };
    let mut ctx = Context::connect(connections, stats, progress)?;
    ctx.concurrency = conn.concurrency.max(1);
    Ok(ctx)
}

async fn plan(mut args: PlanArgs) -> anyhow::Result<ExitCode> {
    let (desired, sandbox) = match prepare(&args.files, &mut args.connection, &args.sandbox).await?
    {
        Ok(ready) => ready,
        Err(code) => return Ok(code),
    };
    let result = async {
        let ctx = context(&args.connection, RequestStats::default())?;
        anyhow::Ok(apply::plan(&desired, &ctx).await?)
        // The clients are dropped here: the sandbox's servers shut down gracefully and would
        // wait for their idle keep-alive connections.
    }
    .await;
    stop_sandbox(sandbox).await;
    let plan = result?.plan;
    match args.output {
        PlanOutputFormat::Text => print!("{}", render::plan_text(&plan)),
        PlanOutputFormat::Json => println!("{}", render::plan_json(&plan)),
        PlanOutputFormat::Markdown => print!("{}", render::plan_markdown(&plan)),
    }
    Ok(if plan.has_problems() {
        if args.output == PlanOutputFormat::Text {
            eprintln!("error: some apps cannot be converged (see above)");
        }
        ExitCode::from(1)
    } else if plan.has_changes() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

async fn reconcile(mut args: ReconcileArgs) -> anyhow::Result<ExitCode> {
    if !args.once {
        return daemon(args).await;
    }
    if args.daemon.git_url.is_some() {
        return Err(UsageError(
            "--git-url is for the controller; with --once, check the repository out and pass -f",
        )
        .into());
    }
    if args.files.is_empty() {
        return Err(
            UsageError("reconcile --once needs -f PATH (deploy files or a directory)").into(),
        );
    }
    let files = FileArgs {
        files: args.files.clone(),
        input: args.input.clone(),
    };
    let (desired, sandbox) = match prepare(&files, &mut args.connection, &args.sandbox).await? {
        Ok(ready) => ready,
        Err(code) => return Ok(code),
    };
    let stats = RequestStats::default();
    let result = async {
        let mut ctx = context_with_progress(
            &args.connection,
            stats.clone(),
            Arc::new(TerminalProgress::stderr()),
        )?;
        // The empty-set guard: deploy files that define no app (emptied, or a checkout gone
        // wrong) prune nothing.
        if desired.apps.is_empty() && args.prune_orphans {
            tracing::warn!("the deploy files define no app: orphaned Nomad jobs are left alone (an empty source never prunes)");
        }
        ctx.options.prune_orphans = args.prune_orphans && !desired.apps.is_empty();
        ctx.options.wait = (!args.no_wait).then_some(args.timeout);
        anyhow::Ok(apply::reconcile(&desired, &ctx).await?)
    }
    .await;
    stop_sandbox(sandbox).await;
    let report = result?;
    match args.output {
        OutputFormat::Text => print!("{}", render::run_text(&report)),
        OutputFormat::Json => {
            let events = crate::history::run_events(&desired, &report);
            println!("{}", render::run_json(&report, &events));
        }
    }
    tracing::info!(
        hippo_requests = stats.requests("hippo"),
        nomad_requests = stats.requests("nomad"),
        hippo_writes = stats.writes("hippo"),
        bindle_requests = stats.requests("bindle"),
        uploaded_bytes = stats.uploaded_bytes(),
        "reconcile finished"
    );
    Ok(if report.apps.iter().all(|a| a.converged()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `reconcile` without `--once`: the controller, until SIGTERM/SIGINT.
async fn daemon(mut args: ReconcileArgs) -> anyhow::Result<ExitCode> {
    use hippo_gitops_controller::{
        leader::LeaderConfig,
        schedule::BackoffPolicy,
        source::{GitConfig, SourceConfig},
        ControllerConfig, Daemon,
    };
    let d = &args.daemon;
    let state_dir = args
        .connection
        .state_dir
        .clone()
        .unwrap_or_else(config::default_state_dir);
    let source = match (&d.git_url, args.files.is_empty()) {
        (Some(url), _) => SourceConfig::Git(GitConfig {
            url: url.clone(),
            branch: d.git_branch.clone(),
            path: d.git_path.clone(),
            interval: d.git_interval,
            dir: state_dir.join("git"),
            timeout: Duration::from_secs(120),
            max_file_size: args.input.max_file_size,
        }),
        (None, false) => SourceConfig::Files {
            paths: args.files.clone(),
            options: args.input.load_options(),
        },
        (None, true) => return Err(UsageError("reconcile needs -f PATH or --git-url URL").into()),
    };
    let mut config = ControllerConfig::new(source);
    config.interval = d.interval.max(Duration::from_millis(100));
    config.watch = !d.no_watch;
    config.listen = Some(d.listen);
    config.webhook_secret = d
        .webhook_secret
        .clone()
        .filter(|s| !s.is_empty())
        .map(Secret::new);
    config.shutdown_grace = d.shutdown_grace;
    config.progress_interval = d.rollout_interval.max(Duration::from_millis(50));
    config.discover_interval = d.discover_interval.max(Duration::from_millis(100));
    config.backoff = BackoffPolicy {
        min: d.backoff_min,
        max: d.backoff_max.max(d.backoff_min),
    };
    config.leader = (!d.no_leader_election).then(|| {
        let mut lc = LeaderConfig::new(d.leader_lock.clone());
        lc.ttl = d.leader_ttl;
        lc
    });
    if config.webhook_secret.is_none() {
        tracing::info!("no --webhook-secret: the webhook receivers refuse every request");
    }
    config.insight.api_token = d
        .api_token
        .clone()
        .filter(|t| !t.is_empty())
        .map(Secret::new);
    config.insight.external_url = d.external_url.clone().filter(|u| !u.is_empty());
    config.insight.state_dir = Some(state_dir.clone());

    let sandbox = args.sandbox.start().await?;
    if let Some(s) = &sandbox {
        args.connection.use_sandbox(s);
    }
    let stats = RequestStats::default();
    let result = async {
        let mut ctx = context(&args.connection, stats.clone())?;
        ctx.options.prune_orphans = args.prune_orphans;
        let daemon = Daemon::start(config, ctx, stats.clone()).await?;
        shutdown_signal().await;
        tracing::info!("shutting down: no new writes; in-flight ones finish, then the leader lock is released (a second signal exits at once)");
        tokio::spawn(async {
            shutdown_signal().await;
            eprintln!("second signal: exiting at once");
            std::process::exit(130);
        });
        daemon.shutdown().await?;
        anyhow::Ok(())
    }
    .await;
    stop_sandbox(sandbox).await;
    result?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

async fn status_command(mut args: StatusArgs) -> anyhow::Result<ExitCode> {
    let (desired, sandbox) = match prepare(&args.files, &mut args.connection, &args.sandbox).await?
    {
        Ok(ready) => ready,
        Err(code) => return Ok(code),
    };
    let result = async {
        let ctx = context(&args.connection, RequestStats::default())?;
        anyhow::Ok(apply::plan(&desired, &ctx).await?)
    }
    .await;
    stop_sandbox(sandbox).await;
    let report = result?.statuses;
    match args.output {
        OutputFormat::Text => print!("{}", render::statuses_text(&report)),
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(
        if report.iter().all(|a| {
            matches!(
                a.condition.kind,
                status::ConditionType::Ready | status::ConditionType::Suspended
            )
        }) {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(2)
        },
    )
}

/// Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

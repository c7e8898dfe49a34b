//! Test beds shared by the crates' integration tests: the REAL bindle server in-process and the
//! Hippo and Nomad EMULATORS, all on loopback port 0; the `hippo-gitops` binary as a child
//! process ([`controller_child`]); the documented alert rules ([`alert_rules`]).

pub mod alert_rules;
pub mod controller_child;

pub mod receiver;
pub mod webdriver;

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::Duration,
};

use bindle::signature::{KeyEntry, SecretKeyEntry, SecretKeyFile, SignatureRole};
use hippo_gitops_core::{
    apply::{self, Connections, Context},
    bindles::BindleConfig,
    hippo::{Credentials, HippoClientConfig},
    nomad::{NomadClient, NomadConfig},
    observe::NomadObserver,
    package::PackedBindle,
    progress::NoProgress,
    retry::RetryPolicy,
    secret::Secret,
    spec::{self, DesiredState, LoadOptions},
    stats::RequestStats,
};
use hippo_gitops_emulators::{
    hippo::EmulatorState,
    {
        bindle_server::BindleServer,
        hippo::{HippoEmulator, HippoEmulatorConfig},
        nomad::{HippoJobSettings, NomadEmulator, NomadEmulatorConfig},
    },
};

/// The repository's root (the workspace), where README.md, deploy-specs/, docs/ and charts/ are.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the workspace root exists")
}

/// The `hippo-gitops` binary of this test run. Cargo builds a package's binaries before its
/// integration tests, into the directory above the tests' own (`target/<profile>/deps/`), but
/// tells only the binary's own package where (`CARGO_BIN_EXE_*`), so the tests that run it
/// live in the `hippo-gitops` package.
pub fn binary() -> &'static Path {
    static BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BINARY.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test knows its own path");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>/deps/");
        let binary = dir.join(format!("hippo-gitops{}", std::env::consts::EXE_SUFFIX));
        assert!(
            binary.is_file(),
            "{} is missing: the tests that run the binary belong to the hippo-gitops package",
            binary.display()
        );
        binary
    })
}

pub struct Bed {
    pub bindle: BindleServer,
    pub hippo: HippoEmulator,
    pub key: SecretKeyEntry,
    pub dir: tempfile::TempDir,
}

impl Bed {
    pub async fn start() -> Bed {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKeyEntry::new("hippo-gitops tests", vec![SignatureRole::Creator]);
        let bindle = BindleServer::start(
            &dir.path().join("bindle"),
            &[KeyEntry::try_from(&key).unwrap()],
            None,
        )
        .await
        .unwrap();
        let hippo = HippoEmulator::start(HippoEmulatorConfig {
            bindle_url: bindle.url(),
            ..Default::default()
        })
        .await
        .unwrap();
        let mut file = SecretKeyFile::default();
        file.key.push(key.clone());
        std::fs::write(
            dir.path().join("signing-key.toml"),
            toml::to_string(&file).unwrap(),
        )
        .unwrap();
        Bed {
            bindle,
            hippo,
            key,
            dir,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Clients as the binary builds them, with a fresh request counter.
    pub fn context(&self) -> (Context, RequestStats) {
        self.context_with_hippo(self.hippo.url())
    }

    /// [`Bed::context`], with Hippo at `hippo_url` (a fault proxy in front of the emulator).
    pub fn context_with_hippo(&self, hippo_url: String) -> (Context, RequestStats) {
        let stats = RequestStats::default();
        let mut hc = HippoClientConfig::new(
            hippo_url,
            Credentials::Login {
                username: "admin".into(),
                password: Secret::new("password"),
            },
        );
        hc.retry = fast_retry();
        let mut bc = BindleConfig::new(self.bindle.url());
        bc.retry = fast_retry();
        let connections = Connections {
            hippo: hc,
            bindle: bc,
            signing_key: self.key.clone(),
            nomad: None,
        };
        let ctx = Context::connect(connections, stats.clone(), Arc::new(NoProgress)).unwrap();
        (ctx, stats)
    }

    /// Environment for running the binary against this bed.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("HIPPO_URL", self.hippo.url()),
            ("HIPPO_USERNAME", "admin".into()),
            ("HIPPO_PASSWORD", "password".into()),
            ("BINDLE_SERVER_URL", self.bindle.url()),
            (
                "BINDLE_SIGNING_KEY",
                self.path()
                    .join("signing-key.toml")
                    .to_string_lossy()
                    .into_owned(),
            ),
            (
                "HIPPO_GITOPS_STATE_DIR",
                self.path().join("state").to_string_lossy().into_owned(),
            ),
        ]
    }

    /// A CI push with no change to the deploy files: writes the Spin app `name` `version` under
    /// `<bed>/ci/` and pushes it to the Bindle server. Answers what was pushed.
    pub async fn push_version(&self, name: &str, version: &str) -> PackedBindle {
        let packed = self.ci_app(name, version);
        let (ctx, _) = self.context();
        ctx.bindle.push(&packed).await.unwrap();
        packed
    }

    /// Half a push: the invoice of the Spin app `name` `version` is created (signed), and none
    /// of its parcels is uploaded, as when CI died after its first request. Answers the app,
    /// for [`Bed::complete_push`].
    pub async fn push_invoice_only(&self, name: &str, version: &str) -> PackedBindle {
        let packed = self.ci_app(name, version);
        let mut invoice = packed.invoice.clone();
        invoice.sign(SignatureRole::Creator, &self.key).unwrap();
        let created = self.raw_bindle().create_invoice(invoice).await.unwrap();
        assert_eq!(
            created.missing.unwrap_or_default().len(),
            packed.parcels.len(),
            "no parcel of {} is on the server yet",
            packed.id
        );
        packed
    }

    /// Uploads what the server still lacks of `packed` (a push resumed).
    pub async fn complete_push(&self, packed: &PackedBindle) {
        let (ctx, _) = self.context();
        ctx.bindle.push(packed).await.unwrap();
    }

    /// Yanks `id` (`name/version`) on the Bindle server.
    pub async fn yank(&self, id: &str) {
        self.raw_bindle().yank_invoice(id).await.unwrap();
    }

    /// A Bindle client with none of the controller's checks or retries: for making the
    /// server's state directly.
    pub fn raw_bindle(&self) -> bindle::client::Client<bindle::client::tokens::NoToken> {
        bindle::client::Client::new(
            &format!("{}/", self.bindle.url()),
            bindle::client::tokens::NoToken,
            Arc::new(bindle::signature::KeyRing::default()),
        )
        .unwrap()
    }

    /// The revision number channel `channel` of app `app` runs in the Hippo emulator.
    pub fn running(&self, app: &str, channel: &str) -> Option<String> {
        let state = self.hippo.snapshot();
        let app = state.apps.iter().find(|a| a.name == app)?;
        let ch = state
            .channels
            .iter()
            .find(|c| c.app_id == app.id && c.name == channel)?;
        let rev = ch.active_revision_id?;
        state
            .revisions
            .iter()
            .find(|r| r.id == rev)
            .map(|r| r.revision_number.clone())
    }

    fn ci_app(&self, name: &str, version: &str) -> PackedBindle {
        let dir = self.path().join("ci").join(format!("{name}-{version}"));
        spin_app(&dir, name, version, version);
        hippo_gitops_core::package::load(&dir).unwrap()
    }

    /// Runs the binary (off the async runtime's threads) and returns (exit code, stdout, stderr).
    pub async fn run(&self, args: &[&str]) -> (i32, String, String) {
        let env = self.env();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let cwd = self.path().to_path_buf();
        tokio::task::spawn_blocking(move || run_binary(&args, &env, &cwd))
            .await
            .unwrap()
    }
}

pub fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        initial: Duration::from_millis(5),
        max_interval: Duration::from_millis(50),
        max_elapsed: Duration::from_secs(5),
        max_unreachable: Duration::from_secs(5),
    }
}

pub fn run_binary(args: &[String], env: &[(&str, String)], cwd: &Path) -> (i32, String, String) {
    let out = Command::new(binary())
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env_remove("HIPPO_TOKEN")
        .env("HIPPO_GITOPS_LOG", "warn")
        .current_dir(cwd)
        .output()
        .expect("runs the binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes a Spin app (manifest v1) whose wasm bytes depend on `content`.
pub fn spin_app(dir: &Path, name: &str, version: &str, content: &str) {
    std::fs::create_dir_all(dir.join("static")).unwrap();
    std::fs::write(
        dir.join("spin.toml"),
        format!("spin_manifest_version = \"1\"\nname = \"{name}\"\nversion = \"{version}\"\ntrigger = {{ type = \"http\", base = \"/\" }}\n[[component]]\nid = \"{name}\"\nsource = \"app.wasm\"\nfiles = [\"static/**/*\"]\n[component.trigger]\nroute = \"/...\"\n"),
    )
    .unwrap();
    let mut wasm = b"\0asm\x01\0\0\0".to_vec();
    // A custom section carrying `content`, so different content gives a different digest.
    wasm.push(0);
    let payload = [&[4u8][..], b"note", content.as_bytes()].concat();
    wasm.push(payload.len() as u8);
    wasm.extend(payload);
    std::fs::write(dir.join("app.wasm"), wasm).unwrap();
    std::fs::write(
        dir.join("static/index.html"),
        format!("<h1>{name} {version}</h1>"),
    )
    .unwrap();
}

/// An app document. `revisions` are `path:` entries relative to the file; `channels` are raw YAML
/// list items.
pub fn app_doc(name: &str, revisions: &[&str], channels: &str, prune: bool) -> String {
    let revs: String = revisions
        .iter()
        .map(|r| format!("    - path: {r}\n"))
        .collect();
    format!(
        "apiVersion: hippo-gitops/v1\nkind: App\nmetadata:\n  name: {name}\nspec:\n  prune: {prune}\n  revisions:\n{revs}  channels:\n{channels}"
    )
}

pub fn load(path: &Path) -> DesiredState {
    spec::load(&[path.to_path_buf()], &LoadOptions::default()).unwrap_or_else(|d| panic!("{d}"))
}

/// The repository's own example deploy files, copied so tests may change them. The copy's
/// production channel gets `env: {RUST_LOG: info}`, which the shipped example leaves out (Hippo
/// does not pass channel env to Nomad, so it would warn on every run), for the tests of env
/// handling.
pub fn copy_examples(to: &Path) -> PathBuf {
    let from = repo_root().join("deploy-specs");
    copy_dir(&from, &to.join("deploy-specs"));
    let weather = to.join("deploy-specs/weather.yaml");
    let text = std::fs::read_to_string(&weather).unwrap();
    let with_env = text.replacen(
        "      domain: weather.example.com\n",
        "      domain: weather.example.com\n      env:\n        RUST_LOG: info\n",
        1,
    );
    assert_ne!(
        text, with_env,
        "the example's production channel has a domain line"
    );
    std::fs::write(&weather, with_env).unwrap();
    to.join("deploy-specs")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The bed with the Nomad EMULATOR too, driven by the Hippo emulator the way Hippo drives Nomad.
pub struct NomadBed {
    pub bed: Bed,
    pub nomad: NomadEmulator,
}

/// How a [`NomadBed`]'s emulators differ from the fast defaults.
#[derive(Clone, Copy)]
pub struct NomadBedOptions {
    /// How long Nomad's deployment takes to judge a running allocation (min_healthy_time).
    pub healthy_delay: Duration,
    /// Hippo v0.19's quirk: a channel PUT starts no job while its desired status is unset.
    pub put_starts_no_job: bool,
}

impl Default for NomadBedOptions {
    fn default() -> Self {
        NomadBedOptions {
            healthy_delay: Duration::from_millis(20),
            put_starts_no_job: false,
        }
    }
}

impl NomadBed {
    pub async fn start() -> NomadBed {
        Self::start_with(NomadBedOptions::default()).await
    }

    pub async fn start_with(options: NomadBedOptions) -> NomadBed {
        let mut bed = Bed::start().await;
        let nomad = NomadEmulator::start(NomadEmulatorConfig {
            alloc_start_delay: Duration::from_millis(20),
            healthy_delay: options.healthy_delay,
            // Emulator-only knob: Nomad's smallest lock TTL is 10 s, too slow for a test.
            min_lock_ttl: Duration::from_millis(100),
            ..Default::default()
        })
        .await
        .unwrap();
        let scheduler = nomad.hippo_scheduler(HippoJobSettings {
            bindle_url: bed.bindle.url(),
            driver: "exec".into(),
            datacenters: vec!["dc1".into()],
        });
        // Replace the bed's Hippo with one that schedules onto the Nomad emulator.
        bed.hippo = HippoEmulator::start_with_scheduler(
            HippoEmulatorConfig {
                bindle_url: bed.bindle.url(),
                put_starts_no_job: options.put_starts_no_job,
                ..Default::default()
            },
            scheduler,
        )
        .await
        .unwrap();
        NomadBed { bed, nomad }
    }

    pub fn context(
        &self,
        wait: Option<Duration>,
    ) -> (apply::Context, hippo_gitops_core::stats::RequestStats) {
        let (mut ctx, stats) = self.bed.context();
        let mut nc = NomadConfig::new(self.nomad.url());
        nc.retry = fast_retry();
        ctx.nomad = Some(Arc::new(NomadObserver::new(
            NomadClient::new(nc, stats.clone()).unwrap(),
        )));
        ctx.options.wait = wait;
        (ctx, stats)
    }

    pub async fn run(&self, args: &[&str]) -> (i32, String, String) {
        self.run_env(args, &[]).await
    }

    /// Runs the binary against this bed with `extra` environment variables too.
    pub async fn run_env(
        &self,
        args: &[&str],
        extra: &[(&'static str, &str)],
    ) -> (i32, String, String) {
        let mut env = self.bed.env();
        env.push(("NOMAD_ADDR", self.nomad.url()));
        env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let cwd = self.bed.path().to_path_buf();
        tokio::task::spawn_blocking(move || run_binary(&args, &env, &cwd))
            .await
            .unwrap()
    }

    /// Registers a Hippo-shaped job under `id`, a GUID no Hippo channel has: an orphan.
    pub async fn add_orphan_job(&self, id: &str) {
        let mut job = serde_json::from_str::<serde_json::Value>(include_str!(
            "../../core/tests/fixtures/nomad/hippo_job_register_request.json"
        ))
        .unwrap()["Job"]
            .clone();
        job["ID"] = id.into();
        job["Name"] = id.into();
        let resp = reqwest::Client::new()
            .post(format!("{}/v1/jobs", self.nomad.url()))
            .json(&serde_json::json!({ "Job": job }))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{:?}", resp.text().await);
    }

    pub fn job_id(&self, app: &str, channel: &str) -> String {
        let state = self.bed.hippo.snapshot();
        let app = state.apps.iter().find(|a| a.name == app).unwrap();
        state
            .channels
            .iter()
            .find(|c| c.app_id == app.id && c.name == channel)
            .unwrap()
            .id
            .to_string()
    }

    pub fn bindle_arg(&self, job_id: &str) -> Option<String> {
        self.nomad
            .jobs()
            .into_iter()
            .find(|j| j["ID"] == job_id)
            .and_then(|j| {
                let args = j["TaskGroups"][0]["Tasks"][0]["Config"]["args"]
                    .as_array()?
                    .clone();
                let i = args.iter().position(|a| a == "--bindle")?;
                args.get(i + 1)?.as_str().map(String::from)
            })
    }
}

/// The sandbox's Hippo emulator state, as saved in `<sandbox dir>/hippo.json`.
pub fn hippo_state(sandbox: &Path) -> EmulatorState {
    let text = std::fs::read_to_string(sandbox.join("hippo.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// No app twice, no channel twice in an app, no revision number twice in an app.
pub fn assert_no_duplicates(state: &EmulatorState) {
    use std::collections::BTreeSet;
    let names: BTreeSet<&str> = state.apps.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(
        names.len(),
        state.apps.len(),
        "duplicate app: {:?}",
        state.apps
    );
    let channels: BTreeSet<(uuid::Uuid, &str)> = state
        .channels
        .iter()
        .map(|c| (c.app_id, c.name.as_str()))
        .collect();
    assert_eq!(
        channels.len(),
        state.channels.len(),
        "duplicate channel: {:?}",
        state.channels
    );
    let revisions: BTreeSet<(uuid::Uuid, &str)> = state
        .revisions
        .iter()
        .map(|r| (r.app_id, r.revision_number.as_str()))
        .collect();
    assert_eq!(
        revisions.len(),
        state.revisions.len(),
        "duplicate revision: {:?}",
        state.revisions
    );
}

pub fn assert_examples_converged(state: &EmulatorState) {
    assert_no_duplicates(state);
    assert_eq!(state.apps.len(), 2, "{:?}", state.apps);
    assert_eq!(state.channels.len(), 3, "{:?}", state.channels);
    assert_eq!(state.revisions.len(), 3, "{:?}", state.revisions);
}

/// Writes `<root>/apps/<name>-<v>` for each version and `<root>/specs/<name>.yaml` naming them
/// as `../apps/...`, in a repository (`<root>/.git`: deploy files are confined to their Git top
/// level, else to their own directory). Returns the specs directory.
pub fn write_repo_app(
    root: &Path,
    name: &str,
    versions: &[&str],
    channels: &str,
    extra: &str,
) -> String {
    std::fs::create_dir_all(root.join(".git")).unwrap();
    let mut paths = Vec::new();
    for v in versions {
        let dir = root.join("apps").join(format!("{name}-{v}"));
        if !dir.exists() {
            spin_app(&dir, name, v, v);
        }
        paths.push(format!("../apps/{name}-{v}"));
    }
    let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    let specs = root.join("specs");
    std::fs::create_dir_all(&specs).unwrap();
    std::fs::write(
        specs.join(format!("{name}.yaml")),
        app_doc(name, &refs, channels, false) + extra,
    )
    .unwrap();
    specs.to_string_lossy().into_owned()
}

/// Polls `f` every 20 ms until it holds; panics with `what` after `secs`.
pub async fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs git in `dir` with a fixed identity and no system config; answers its stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
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

/// A bare repository `<root>/deploy.git` and an empty work tree `<root>/work` to push to it
/// from; answers the bare repository's `file://` URL and the work tree.
pub fn git_repo(root: &Path) -> (String, PathBuf) {
    let bare = root.join("deploy.git");
    std::fs::create_dir_all(&bare).unwrap();
    git(&bare, &["init", "--quiet", "--bare"]);
    let work = root.join("work");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "--quiet"]);
    (format!("file://{}", bare.display()), work)
}

/// A controller on `source` for the dashboard and API tests: fast intervals, no election,
/// HTTP on a free port, its event history in `state`, and `token` for the API.
pub fn controller_config(
    source: hippo_gitops_controller::source::SourceConfig,
    state: &Path,
    token: Option<&str>,
) -> hippo_gitops_controller::ControllerConfig {
    use hippo_gitops_controller::{insight::InsightConfig, schedule::BackoffPolicy};
    let mut c = hippo_gitops_controller::ControllerConfig::new(source);
    c.interval = Duration::from_millis(300);
    c.progress_interval = Duration::from_millis(100);
    c.backoff = BackoffPolicy {
        min: Duration::from_millis(100),
        max: Duration::from_secs(1),
    };
    c.leader = None;
    c.listen = Some("127.0.0.1:0".parse().unwrap());
    c.insight = InsightConfig {
        api_token: token.map(Secret::new),
        state_dir: Some(state.to_path_buf()),
        ..Default::default()
    };
    c
}

/// Starts a controller against the bed; answers it and its HTTP base URL.
pub async fn start_controller(
    nb: &NomadBed,
    config: hippo_gitops_controller::ControllerConfig,
) -> (hippo_gitops_controller::Daemon, String) {
    let (ctx, stats) = nb.context(None);
    let daemon = hippo_gitops_controller::Daemon::start(config, ctx, stats)
        .await
        .unwrap();
    let base = format!("http://{}", daemon.http_addr.unwrap());
    (daemon, base)
}

//! `--sandbox` and the `sandbox` command: the Hippo and Nomad emulators and the real Bindle
//! server, started in this process. They come with the `sandbox` feature (on by default); a
//! build without it (the container image) has neither the flags nor the command, and none of
//! the emulators' code.

#[cfg(feature = "sandbox")]
pub use with_sandbox::*;
#[cfg(not(feature = "sandbox"))]
pub use without_sandbox::*;

#[cfg(feature = "sandbox")]
mod with_sandbox {
    use std::{path::PathBuf, process::ExitCode, time::Duration};

    use clap::Args;
    pub use hippo_gitops_emulators::sandbox::Sandbox;
    use hippo_gitops_emulators::sandbox::{self, SandboxConfig, SandboxFaults};

    use crate::cli::{parse_duration, ConnectionArgs};

    #[derive(Debug, Args)]
    pub struct SandboxCommandArgs {
        /// Where the sandbox keeps its state.
        #[arg(long, env = "HIPPO_GITOPS_SANDBOX_DIR", default_value = sandbox::DEFAULT_DIR, value_name = "DIR")]
        pub sandbox_dir: PathBuf,
        /// Address of Hippo; Bindle and Nomad take the next two ports (port 0: any free ports).
        #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
        pub listen_base: std::net::SocketAddr,
        /// Faults to inject (see `reconcile --help`).
        #[arg(long, env = "HIPPO_GITOPS_SANDBOX_FAULTS", value_name = "SPEC")]
        pub sandbox_faults: Option<SandboxFaults>,
        #[command(flatten)]
        pub emulation: SandboxEmulationArgs,
    }

    /// How faithfully the sandbox's emulators reproduce what real Hippo and Nomad do slowly or
    /// oddly.
    #[derive(Debug, Args)]
    pub struct SandboxEmulationArgs {
        /// Emulated Nomad: how long a running allocation waits for its deployment's health verdict
        /// (Nomad's min_healthy_time; Hippo's jobs get 10s). `Healthy` is null until then.
        #[arg(help_heading = "Sandbox", long, env = "HIPPO_GITOPS_SANDBOX_HEALTH_DELAY", default_value = "100ms", value_parser = parse_duration, value_name = "DURATION")]
        pub sandbox_health_delay: Duration,
        /// Emulated Hippo: reproduce v0.19's quirk where a channel PUT starts no Nomad job while
        /// the channel's desired status was never set.
        #[arg(
            help_heading = "Sandbox",
            long,
            env = "HIPPO_GITOPS_SANDBOX_PUT_STARTS_NO_JOB"
        )]
        pub sandbox_put_starts_no_job: bool,
    }

    impl SandboxEmulationArgs {
        fn apply(&self, config: &mut SandboxConfig) {
            config.health_delay = self.sandbox_health_delay;
            config.hippo_put_starts_no_job = self.sandbox_put_starts_no_job;
        }
    }

    /// `--sandbox`: run against a local stack started for the command.
    #[derive(Debug, Args)]
    pub struct SandboxArgs {
        /// Start a local sandbox for this run (the real Bindle server; Hippo and Nomad emulators) and
        /// point every connection at it, instead of HIPPO_URL/BINDLE_SERVER_URL/NOMAD_ADDR.
        #[arg(help_heading = "Sandbox", long)]
        pub sandbox: bool,
        /// Where the sandbox keeps its state (kept across runs).
        #[arg(help_heading = "Sandbox", long, env = "HIPPO_GITOPS_SANDBOX_DIR", default_value = sandbox::DEFAULT_DIR, value_name = "DIR")]
        pub sandbox_dir: PathBuf,
        /// Faults to inject, per service: `hippo:error=0.2,latency=50ms;bindle:drop=0.05;nomad:...`,
        /// or one spec for all (`error=0.2,latency=50ms`).
        #[arg(
            help_heading = "Sandbox",
            long,
            env = "HIPPO_GITOPS_SANDBOX_FAULTS",
            value_name = "SPEC"
        )]
        pub sandbox_faults: Option<SandboxFaults>,
        #[command(flatten)]
        pub emulation: SandboxEmulationArgs,
    }

    impl SandboxArgs {
        pub(crate) async fn start(&self) -> anyhow::Result<Option<Sandbox>> {
            if !self.sandbox {
                return Ok(None);
            }
            let mut config = SandboxConfig::new(&self.sandbox_dir);
            config.faults = self.sandbox_faults.unwrap_or_default();
            self.emulation.apply(&mut config);
            let sandbox = Sandbox::start(config).await?;
            eprintln!(
                "sandbox: started in {} (Bindle: the real bindle server; Hippo and Nomad: emulators)",
                self.sandbox_dir.display()
            );
            Ok(Some(sandbox))
        }
    }

    impl ConnectionArgs {
        /// Points every connection at the sandbox.
        pub(crate) fn use_sandbox(&mut self, sandbox: &Sandbox) {
            self.hippo_url = Some(sandbox.hippo_url().to_string());
            self.hippo_token = None;
            self.hippo_username = Some(sandbox::ADMIN_USER.to_string());
            self.hippo_password = Some(sandbox.password().to_string());
            self.bindle_server = Some(sandbox.bindle_url().to_string());
            self.bindle_username = None;
            self.bindle_password = None;
            self.bindle_token = None;
            self.bindle_signing_key = Some(sandbox.signing_key_path().to_path_buf());
            self.nomad_addr = Some(sandbox.nomad_url().to_string());
            self.nomad_token = None;
            self.nomad_namespace = None;
            self.nomad_region = None;
            self.nomad_cacert = None;
            self.nomad_client_cert = None;
            self.nomad_client_key = None;
        }
    }

    /// Stops the sandbox, if one was started. Call after the clients are dropped: its servers shut
    /// down gracefully and would wait for idle keep-alive connections.
    pub(crate) async fn stop_sandbox(sandbox: Option<Sandbox>) {
        if let Some(s) = sandbox {
            s.stop().await;
        }
    }

    pub(crate) async fn sandbox_command(args: SandboxCommandArgs) -> anyhow::Result<ExitCode> {
        let mut config = SandboxConfig::new(&args.sandbox_dir);
        config.listen_base = args.listen_base;
        config.faults = args.sandbox_faults.unwrap_or_default();
        args.emulation.apply(&mut config);
        let sandbox = Sandbox::start(config).await?;
        eprintln!(
            "hippo-gitops sandbox is running, state in {}.\nBindle is the real bindle server; Hippo and Nomad are emulators of their APIs.\nUse it with:\n",
            args.sandbox_dir.display()
        );
        for (k, v) in sandbox.env() {
            println!("export {k}={v}");
        }
        eprintln!("\nPress Ctrl-C to stop.");
        crate::cli::shutdown_signal().await;
        eprintln!("stopping the sandbox");
        sandbox.stop().await;
        Ok(ExitCode::SUCCESS)
    }
}

#[cfg(not(feature = "sandbox"))]
mod without_sandbox {
    use clap::Args;

    use crate::cli::ConnectionArgs;

    /// No `--sandbox` flags in this build.
    #[derive(Debug, Args)]
    pub struct SandboxArgs {}

    /// A sandbox this build can't start: no value of it exists.
    pub enum Sandbox {}

    impl SandboxArgs {
        pub(crate) async fn start(&self) -> anyhow::Result<Option<Sandbox>> {
            Ok(None)
        }
    }

    impl ConnectionArgs {
        pub(crate) fn use_sandbox(&mut self, sandbox: &Sandbox) {
            match *sandbox {}
        }
    }

    pub(crate) async fn stop_sandbox(sandbox: Option<Sandbox>) {
        if let Some(sandbox) = sandbox {
            match sandbox {}
        }
    }
}

//! The sandbox: a local Bindle + Hippo + Nomad to try and test against, in-process.
//!
//! The Bindle server is the REAL bindle crate server; Hippo and Nomad are EMULATORS that follow
//! the verified references of their APIs (`src/emulator/`). Hippo schedules each channel onto
//! the Nomad emulator the way Hippo schedules onto Nomad. State is kept under the sandbox
//! directory, so a restarted sandbox carries on where it stopped.
//!
//! Faults can be injected per service ([`FaultSpec`]) through a proxy in front of it; the
//! controller talks to the proxies, the services to each other directly.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use bindle::signature::{KeyEntry, SecretKeyEntry, SecretKeyFile, SignatureRole};

use hippo_gitops_core::{
    apply::Connections,
    bindles::BindleConfig,
    hippo::{Credentials, HippoClientConfig},
    nomad::NomadConfig,
    secret::Secret,
};

use crate::{
    bindle_server::{BindleServer, BindleServerError},
    faults::{FaultProxy, FaultSpec, FaultSpecError},
    hippo::{HippoEmulator, HippoEmulatorConfig, HippoEmulatorError},
    nomad::{HippoJobSettings, NomadEmulator, NomadEmulatorConfig, NomadEmulatorError},
};

/// Default sandbox directory, relative to the working directory.
pub const DEFAULT_DIR: &str = ".hippo-gitops/sandbox";

/// The sandbox's Hippo administrator.
pub const ADMIN_USER: &str = "admin";

/// Faults per service.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SandboxFaults {
    pub hippo: FaultSpec,
    pub bindle: FaultSpec,
    pub nomad: FaultSpec,
}

impl FromStr for SandboxFaults {
    type Err = FaultSpecError;

    /// `hippo:error=0.2,latency=50ms;bindle:drop=0.05` or, for all three, `error=0.2,latency=50ms`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut faults = SandboxFaults::default();
        for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            match part.split_once(':') {
                Some((service, spec)) => {
                    let spec: FaultSpec = spec.parse()?;
                    match service.trim() {
                        "hippo" => faults.hippo = spec,
                        "bindle" => faults.bindle = spec,
                        "nomad" => faults.nomad = spec,
                        other => {
                            return Err(FaultSpecError {
                                spec: s.to_string(),
                                message: format!(
                                    "unknown service {other:?} (hippo, bindle or nomad)"
                                ),
                            })
                        }
                    }
                }
                None => {
                    let spec: FaultSpec = part.parse()?;
                    faults = SandboxFaults {
                        hippo: spec,
                        bindle: spec,
                        nomad: spec,
                    };
                }
            }
        }
        Ok(faults)
    }
}

/// How to start the sandbox.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    pub dir: PathBuf,
    /// Address of the first service; the others take the next ports. Port 0: any free ports.
    pub listen_base: SocketAddr,
    pub faults: SandboxFaults,
    /// Emulated Nomad: how long an allocation takes to start.
    pub alloc_delay: Duration,
    /// Emulated Nomad: how long a running allocation's deployment takes to judge its health
    /// (Nomad's `min_healthy_time`; 10 s in the update strategy Hippo's jobs get). Until then
    /// `DeploymentStatus.Healthy` is null.
    pub health_delay: Duration,
    /// Emulated Hippo: v0.19's PUT quirk (a PUT starts no job while the channel's desired
    /// status was never set).
    pub hippo_put_starts_no_job: bool,
    /// Keep the emulators' state in the directory across restarts. Benchmarks turn it off: the
    /// emulators rewrite their whole state file after every change, which at 1000 apps would
    /// measure the emulators' disk writes rather than the controller.
    pub persist: bool,
}

impl SandboxConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        SandboxConfig {
            dir: dir.into(),
            listen_base: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            faults: SandboxFaults::default(),
            alloc_delay: Duration::from_millis(100),
            health_delay: Duration::from_millis(100),
            hippo_put_starts_no_job: false,
            persist: true,
        }
    }
}

/// Errors starting the sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("sandbox directory {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("sandbox {0}")]
    Bindle(#[from] BindleServerError),
    #[error("sandbox Hippo emulator: {0}")]
    Hippo(#[from] HippoEmulatorError),
    #[error("sandbox Nomad emulator: {0}")]
    Nomad(#[from] NomadEmulatorError),
    #[error("sandbox fault proxy: {0}")]
    Proxy(std::io::Error),
    #[error("sandbox: {0}")]
    Other(String),
}

/// A running sandbox.
pub struct Sandbox {
    pub bindle: BindleServer,
    pub hippo: HippoEmulator,
    pub nomad: NomadEmulator,
    proxies: Vec<FaultProxy>,
    hippo_url: String,
    bindle_url: String,
    nomad_url: String,
    password: String,
    key_path: PathBuf,
    key: SecretKeyEntry,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SandboxError + '_ {
    move |source| SandboxError::Dir {
        path: path.to_path_buf(),
        source,
    }
}

/// The sandbox's creator key (trusted by its Bindle server) and admin password, created once.
fn load_or_create_secrets(dir: &Path) -> Result<(SecretKeyEntry, PathBuf, String), SandboxError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let key_path = dir.join("signing-key.toml");
    let key = match std::fs::read_to_string(&key_path) {
        Ok(text) => toml::from_str::<SecretKeyFile>(&text)
            .ok()
            .and_then(|f| f.key.into_iter().next())
            .ok_or_else(|| {
                SandboxError::Other(format!("{} is not a bindle key file", key_path.display()))
            })?,
        Err(_) => {
            let key = SecretKeyEntry::new("hippo-gitops sandbox", vec![SignatureRole::Creator]);
            let mut file = SecretKeyFile::default();
            file.key.push(key.clone());
            let text = toml::to_string(&file).map_err(|e| SandboxError::Other(e.to_string()))?;
            write_private(&key_path, &text).map_err(io_err(&key_path))?;
            key
        }
    };
    let pw_path = dir.join("hippo-admin-password");
    let password = match std::fs::read_to_string(&pw_path) {
        Ok(p) if !p.trim().is_empty() => p.trim().to_string(),
        _ => {
            let p = format!("sandbox-{}", uuid::Uuid::new_v4().simple());
            write_private(&pw_path, &p).map_err(io_err(&pw_path))?;
            p
        }
    };
    Ok((key, key_path, password))
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    hippo_gitops_core::private_file::replace(path, text.as_bytes())
}

impl Sandbox {
    pub async fn start(config: SandboxConfig) -> Result<Sandbox, SandboxError> {
        let dir = &config.dir;
        let (key, key_path, password) = load_or_create_secrets(dir)?;
        let ip = config.listen_base.ip();
        let port = |n: u16| {
            SocketAddr::new(
                ip,
                if config.listen_base.port() == 0 {
                    0
                } else {
                    config.listen_base.port() + n
                },
            )
        };
        let trusted = KeyEntry::try_from(&key).map_err(|e| SandboxError::Other(e.to_string()))?;
        let bindle = BindleServer::start(&dir.join("bindle"), &[trusted], Some(port(1))).await?;
        let nomad = NomadEmulator::start(NomadEmulatorConfig {
            listen: Some(port(2)),
            alloc_start_delay: config.alloc_delay,
            healthy_delay: config.health_delay,
            state_file: config.persist.then(|| dir.join("nomad.json")),
            ..Default::default()
        })
        .await?;
        let scheduler = nomad.hippo_scheduler(HippoJobSettings {
            bindle_url: bindle.url(),
            driver: "exec".into(),
            datacenters: vec!["dc1".into()],
        });
        let hippo = HippoEmulator::start_with_scheduler(
            HippoEmulatorConfig {
                bindle_url: bindle.url(),
                admin: Some((ADMIN_USER.into(), password.clone())),
                state_file: config.persist.then(|| dir.join("hippo.json")),
                listen: Some(port(0)),
                put_starts_no_job: config.hippo_put_starts_no_job,
                ..Default::default()
            },
            scheduler,
        )
        .await?;

        let any = SocketAddr::new(ip, 0);
        let proxy = |upstream: SocketAddr, spec: FaultSpec| async move {
            if spec.is_none() {
                return Ok(None);
            }
            FaultProxy::start(upstream, spec, any)
                .await
                .map(Some)
                .map_err(SandboxError::Proxy)
        };
        let hippo_proxy = proxy(hippo.addr(), config.faults.hippo).await?;
        let bindle_proxy = proxy(bindle.addr(), config.faults.bindle).await?;
        let nomad_proxy = proxy(nomad.addr(), config.faults.nomad).await?;
        let hippo_url = hippo_proxy
            .as_ref()
            .map_or_else(|| hippo.url(), |p| format!("http://{}", p.addr()));
        let bindle_url = bindle_proxy
            .as_ref()
            .map_or_else(|| bindle.url(), |p| format!("http://{}/v1", p.addr()));
        let nomad_url = nomad_proxy
            .as_ref()
            .map_or_else(|| nomad.url(), |p| format!("http://{}", p.addr()));
        let proxies = [hippo_proxy, bindle_proxy, nomad_proxy]
            .into_iter()
            .flatten()
            .collect();
        Ok(Sandbox {
            bindle,
            hippo,
            nomad,
            proxies,
            hippo_url,
            bindle_url,
            nomad_url,
            password,
            key_path,
            key,
        })
    }

    /// What a [`Context`](hippo_gitops_core::apply::Context) needs to work on this sandbox:
    /// its admin login, its signing key, and Nomad.
    pub fn connections(&self) -> Connections {
        Connections {
            hippo: HippoClientConfig::new(
                self.hippo_url(),
                Credentials::Login {
                    username: ADMIN_USER.into(),
                    password: Secret::new(self.password()),
                },
            ),
            bindle: BindleConfig::new(self.bindle_url()),
            signing_key: self.key.clone(),
            nomad: Some(NomadConfig::new(self.nomad_url())),
        }
    }

    /// The creator key the sandbox's Bindle server trusts.
    pub fn signing_key(&self) -> &SecretKeyEntry {
        &self.key
    }

    pub fn hippo_url(&self) -> &str {
        &self.hippo_url
    }

    pub fn bindle_url(&self) -> &str {
        &self.bindle_url
    }

    pub fn nomad_url(&self) -> &str {
        &self.nomad_url
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    pub fn signing_key_path(&self) -> &Path {
        &self.key_path
    }

    /// Writes the Hippo emulator has received (for benchmarks and tests).
    pub fn hippo_writes(&self) -> usize {
        self.hippo.writes()
    }

    /// The environment that points hippo-gitops (or Spin, or curl) at this sandbox.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("HIPPO_URL", self.hippo_url.clone()),
            ("HIPPO_USERNAME", ADMIN_USER.to_string()),
            ("HIPPO_PASSWORD", self.password.clone()),
            ("BINDLE_SERVER_URL", self.bindle_url.clone()),
            ("BINDLE_SIGNING_KEY", self.key_path.display().to_string()),
            ("NOMAD_ADDR", self.nomad_url.clone()),
        ]
    }

    /// Stops every service and waits until their stores are released.
    pub async fn stop(self) {
        drop(self.proxies);
        self.hippo.stop().await;
        self.nomad.stop().await;
        self.bindle.stop().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_specs_per_service_or_for_all() {
        let f: SandboxFaults = "hippo:error=0.2,latency=50ms;nomad:drop=0.1"
            .parse()
            .unwrap();
        assert_eq!(f.hippo.error_rate, 0.2);
        assert!(f.bindle.is_none());
        assert_eq!(f.nomad.drop_rate, 0.1);
        let all: SandboxFaults = "error=0.2".parse().unwrap();
        assert_eq!(all.bindle.error_rate, 0.2);
        assert!("consul:error=0.1".parse::<SandboxFaults>().is_err());
    }
}

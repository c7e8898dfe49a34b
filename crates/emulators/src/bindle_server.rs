//! The real bindle 0.9.1 server, run in-process with the `EmbeddedProvider` (sled).
//!
//! Not an emulator: this is the bindle crate's own HTTP server. `FileProvider` is avoided on
//! purpose (a failed upload poisons a parcel sha forever; concurrent pushes race), see
//! `shared/reference/bindle/BINDLE.md` §9.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener},
    path::{Path, PathBuf},
    time::Duration,
};

use bindle::{
    authn::always::AlwaysAuthenticate,
    authz::always::AlwaysAuthorize,
    provider::embedded::EmbeddedProvider,
    search::StrictEngine,
    signature::{KeyEntry, KeyRing, SecretKeyEntry, SecretKeyFile, SignatureRole},
    VerificationStrategy,
};
use tokio::task::JoinHandle;

/// Errors starting the embedded Bindle server.
#[derive(Debug, thiserror::Error)]
pub enum BindleServerError {
    /// The data directory or the port could not be set up.
    #[error("bindle server: {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The bindle crate refused to start (sled lock, key problems).
    #[error("bindle server: {0}")]
    Start(String),
}

/// A running embedded Bindle server. Dropping it stops the server.
pub struct BindleServer {
    addr: SocketAddr,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl BindleServer {
    /// Starts a server storing its data under `data_dir`, trusting the given creator public keys
    /// (bindle 0.9 rejects invoices not signed by a trusted creator). Binds `listen`, or a free
    /// loopback port when `None`.
    pub async fn start(
        data_dir: &Path,
        trusted_creators: &[KeyEntry],
        listen: Option<SocketAddr>,
    ) -> Result<Self, BindleServerError> {
        let io = |context: &str| {
            let context = context.to_string();
            move |source| BindleServerError::Io { context, source }
        };
        std::fs::create_dir_all(data_dir).map_err(io("creating data dir"))?;
        let host_key = load_or_create_host_key(&data_dir.join("host-key.toml"))?;
        // `server()` does not report the bound port, so pick it here (BINDLE.md §5.1).
        let addr = match listen {
            Some(a) if a.port() != 0 => a,
            other => {
                let ip = other.map(|a| a.ip()).unwrap_or(Ipv4Addr::LOCALHOST.into());
                let probe = TcpListener::bind((ip, 0)).map_err(io("picking a port"))?;
                probe.local_addr().map_err(io("picking a port"))?
            }
        };
        let mut keystore = SecretKeyFile::default();
        keystore.key.push(host_key.clone());
        let mut keyring = KeyRing::default();
        keyring.add_entry(
            KeyEntry::try_from(&host_key).map_err(|e| BindleServerError::Start(e.to_string()))?,
        );
        for k in trusted_creators {
            keyring.add_entry(k.clone());
        }
        let index = StrictEngine::default();
        let store = EmbeddedProvider::new(&data_dir.join("db"), index.clone())
            .await
            .map_err(|e| BindleServerError::Start(format!("opening store: {e}")))?;
        let task = tokio::spawn(bindle::server::server(
            store,
            index,
            AlwaysAuthenticate,
            AlwaysAuthorize,
            addr,
            None,
            keystore,
            VerificationStrategy::default(),
            keyring,
        ));
        let server = BindleServer {
            addr,
            task: Some(task),
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if tokio::time::Instant::now() > deadline {
                return Err(BindleServerError::Start(format!(
                    "not listening on {addr} after 10s"
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(server)
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The API base URL, as `BINDLE_SERVER_URL` expects it (`http://host:port/v1`).
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Stops the server and waits until its store is released (sled locks its directory).
    pub async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for BindleServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The host key is kept so that a restarted server signs with the same key.
fn load_or_create_host_key(path: &PathBuf) -> Result<SecretKeyEntry, BindleServerError> {
    if let Ok(text) = std::fs::read_to_string(path) {
        let file: SecretKeyFile = toml::from_str(&text)
            .map_err(|e| BindleServerError::Start(format!("{}: {e}", path.display())))?;
        if let Some(k) = file.key.into_iter().next() {
            return Ok(k);
        }
    }
    let key = SecretKeyEntry::new(
        "hippo-gitops embedded bindle host",
        vec![SignatureRole::Host],
    );
    let mut file = SecretKeyFile::default();
    file.key.push(key.clone());
    let text = toml::to_string(&file).map_err(|e| BindleServerError::Start(e.to_string()))?;
    hippo_gitops_core::private_file::replace(path, text.as_bytes()).map_err(|source| {
        BindleServerError::Io {
            context: format!("writing {}", path.display()),
            source,
        }
    })?;
    Ok(key)
}

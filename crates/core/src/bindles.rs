//! The Bindle server: what versions of a bindle exist, what parcels they lack, and pushing a
//! local bindle idempotently.
//!
//! Bindles are immutable and content-addressed by parcel digest, but the server answers 409 for
//! an existing `name/version` whatever its content, and `StandaloneRead::push` then silently
//! keeps the old content (BINDLE.md §2). [`BindleClient::push`] compares the parcel digests
//! itself and refuses to go on when they differ, resumes a partial push from the server's
//! missing-parcel list, and only reports success once that list is empty.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{atomic::AtomicU64, Arc},
    time::Duration,
};

use bindle::{
    client::{tokens::TokenManager, Client, ClientBuilder, ClientError},
    signature::{KeyRing, SecretKeyEntry, SignatureRole},
    Id, Invoice, QueryOptions,
};
use futures::{stream, StreamExt, TryStreamExt};

use crate::{
    package::{PackedBindle, ParcelSet, ParcelSource},
    retry::{retry, Attempt, RetryPolicy},
    secret::Secret,
    stats::RequestStats,
};

/// How to authenticate to the Bindle server.
#[derive(Debug, Clone, Default)]
pub enum BindleAuth {
    #[default]
    None,
    Basic {
        username: String,
        password: Secret,
    },
    Token(Secret),
}

/// Runtime choice of token manager; the bindle client is generic over it.
#[derive(Clone)]
struct AnyAuth(BindleAuth);

#[async_trait::async_trait]
impl TokenManager for AnyAuth {
    async fn apply_auth_header(
        &self,
        builder: reqwest::RequestBuilder,
    ) -> bindle::client::Result<reqwest::RequestBuilder> {
        Ok(match &self.0 {
            BindleAuth::None => builder,
            BindleAuth::Basic { username, password } => {
                builder.basic_auth(username, Some(password.expose()))
            }
            BindleAuth::Token(t) => builder.bearer_auth(t.expose()),
        })
    }
}

/// Settings for [`BindleClient`].
#[derive(Debug, Clone)]
pub struct BindleConfig {
    /// API base, e.g. `http://127.0.0.1:8080/v1`.
    pub url: String,
    pub auth: BindleAuth,
    pub danger_accept_invalid_certs: bool,
    /// Per request.
    pub timeout: Duration,
    pub retry: RetryPolicy,
    /// Parcels uploaded in parallel for one bindle.
    pub upload_concurrency: usize,
}

impl BindleConfig {
    pub fn new(url: impl Into<String>) -> Self {
        BindleConfig {
            url: url.into(),
            auth: BindleAuth::None,
            danger_accept_invalid_certs: false,
            timeout: Duration::from_secs(60),
            retry: RetryPolicy::default(),
            upload_concurrency: 8,
        }
    }
}

/// Errors talking to the Bindle server.
#[derive(Debug, thiserror::Error)]
pub enum BindleError {
    /// The server holds this name/version with other parcels. Terminal.
    #[error("bindle {id} already exists on the Bindle server with different content; bindles are immutable: bump the version")]
    Conflict { id: String },
    /// Terminal: a yanked id can never be pushed or served again.
    #[error("bindle {id} is yanked on the Bindle server; use a new version")]
    Yanked { id: String },
    /// The server rejected the invoice or a parcel (400). Terminal.
    #[error("the Bindle server rejected {id}: {message}{hint}")]
    Rejected {
        id: String,
        message: String,
        hint: &'static str,
    },
    #[error("{op} {id}: {source}")]
    Client {
        op: &'static str,
        id: String,
        #[source]
        source: ClientError,
    },
    #[error("{op} {id}: no answer from the Bindle server within {timeout:?}")]
    Timeout {
        op: &'static str,
        id: String,
        timeout: Duration,
    },
    /// Pushed, but the server still lists missing parcels. Transient.
    #[error("bindle {id} is still missing {missing} parcel(s) after the push")]
    Incomplete { id: String, missing: usize },
    #[error("reading parcel {sha} of {id}: {source}")]
    Local {
        id: String,
        sha: String,
        #[source]
        source: std::io::Error,
    },
    #[error("signing {id}: {message}")]
    Sign { id: String, message: String },
}

impl BindleError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            BindleError::Timeout { .. } | BindleError::Incomplete { .. } => true,
            BindleError::Client { source, .. } => client_error_is_transient(source),
            _ => false,
        }
    }
}

fn client_error_is_transient(e: &ClientError) -> bool {
    match e {
        ClientError::HttpClientError(_) | ClientError::Io(_) => true,
        // 400s come back as ServerError("Bad request: ...") too; only real 5xx are transient.
        ClientError::ServerError(msg) => {
            !msg.as_deref().is_some_and(|m| m.starts_with("Bad request"))
        }
        ClientError::InvalidRequest { status_code, .. } => status_code.as_u16() == 429,
        _ => false,
    }
}

/// The status a client result stands for, for request counters.
fn status_of<T>(r: &Result<T, ClientError>, ok: u16) -> u16 {
    match r {
        Ok(_) => ok,
        Err(ClientError::InvoiceAlreadyExists | ClientError::ParcelAlreadyExists) => 409,
        Err(
            ClientError::InvoiceNotFound
            | ClientError::ParcelNotFound
            | ClientError::ResourceNotFound,
        ) => 404,
        Err(ClientError::Unauthorized) => 401,
        Err(ClientError::InvalidRequest { status_code, .. }) => status_code.as_u16(),
        Err(ClientError::ServerError(Some(m))) if m.starts_with("Bad request") => 400,
        Err(ClientError::ServerError(_)) => 500,
        Err(_) => 0,
    }
}

/// One version of a bindle as the server holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerBindle {
    pub version: String,
    pub parcels: ParcelSet,
    pub yanked: bool,
}

/// A bindle's versions on the server, sorted by version: a sorted list rather than a map, as
/// a controller keeps one per app and a map of two entries costs a whole tree node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BindleVersions(Vec<ServerBindle>);

impl BindleVersions {
    pub fn get(&self, version: &str) -> Option<&ServerBindle> {
        self.find(version).ok().map(|i| &self.0[i])
    }

    pub fn get_mut(&mut self, version: &str) -> Option<&mut ServerBindle> {
        self.find(version).ok().map(|i| &mut self.0[i])
    }

    /// Adds a version, replacing one listed under the same version.
    pub fn insert(&mut self, bindle: ServerBindle) {
        match self.find(&bindle.version) {
            Ok(i) => self.0[i] = bindle,
            Err(i) => self.0.insert(i, bindle),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Drops the room `insert` grew: the controller keeps one of these for every app.
    pub fn shrink_to_fit(&mut self) {
        self.0.shrink_to_fit();
    }

    pub fn iter(&self) -> impl Iterator<Item = &ServerBindle> {
        self.0.iter()
    }

    fn find(&self, version: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|b| b.version.as_str().cmp(version))
    }
}

impl FromIterator<ServerBindle> for BindleVersions {
    fn from_iter<I: IntoIterator<Item = ServerBindle>>(iter: I) -> Self {
        let mut out = BindleVersions::default();
        for b in iter {
            out.insert(b);
        }
        out.shrink_to_fit();
        out
    }
}

/// What a push did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushReport {
    /// The invoice existed already (a resumed or repeated push).
    pub existed: bool,
    pub uploaded_parcels: usize,
    pub uploaded_bytes: u64,
}

/// Invoices per page of the query API: its `limit` is a `u8`.
pub const QUERY_PAGE: u8 = u8::MAX;

/// The Bindle client used by `observe` and `apply`.
pub struct BindleClient {
    client: Client<AnyAuth>,
    key: SecretKeyEntry,
    timeout: Duration,
    retry: RetryPolicy,
    concurrency: usize,
    stats: RequestStats,
    url: String,
    progress: Arc<dyn crate::progress::Progress>,
    /// Invoices on the server at the last [`Self::all_versions`] read.
    invoices_seen: AtomicU64,
}

impl BindleClient {
    /// Shows uploads on `progress` (a terminal's progress line).
    pub fn with_progress(mut self, progress: Arc<dyn crate::progress::Progress>) -> Self {
        self.progress = progress;
        self
    }

    /// `key` signs invoices as creator (bindle 0.9 servers reject unsigned invoices).
    pub fn new(
        config: BindleConfig,
        key: SecretKeyEntry,
        stats: RequestStats,
    ) -> Result<Self, BindleError> {
        let url = config.url.trim_end_matches('/').to_string();
        let client = ClientBuilder::default()
            .danger_accept_invalid_certs(config.danger_accept_invalid_certs)
            // Invoices are read through the query API, which does not verify signatures;
            // nothing here relies on client-side verification.
            .build(
                &format!("{url}/"),
                AnyAuth(config.auth),
                Arc::new(KeyRing::default()),
            )
            .map_err(|source| BindleError::Client {
                op: "connect",
                id: url.clone(),
                source,
            })?;
        Ok(BindleClient {
            client,
            key,
            timeout: config.timeout,
            retry: config.retry,
            concurrency: config.upload_concurrency.max(1),
            stats,
            url,
            progress: Arc::new(crate::progress::NoProgress),
            invoices_seen: AtomicU64::new(0),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs one client call with a timeout, retrying transient failures.
    async fn call<T, F, Fut>(
        &self,
        op: &'static str,
        id: &str,
        method: &'static str,
        ok_status: u16,
        f: F,
    ) -> Result<Result<T, ClientError>, BindleError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        retry(
            self.retry,
            || async {
                match tokio::time::timeout(self.timeout, f()).await {
                    Err(_) => {
                        self.stats.record("bindle", method, 0);
                        Err(Attempt::Retry(
                            BindleError::Timeout {
                                op,
                                id: id.to_string(),
                                timeout: self.timeout,
                            },
                            None,
                        ))
                    }
                    Ok(r) => {
                        self.stats.record("bindle", method, status_of(&r, ok_status));
                        match r {
                            Err(e) if client_error_is_transient(&e) => Err(Attempt::Retry(
                                BindleError::Client {
                                    op,
                                    id: id.to_string(),
                                    source: e,
                                },
                                None,
                            )),
                            other => Ok(other),
                        }
                    }
                }
            },
            |e, delay| tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "Bindle request failed; retrying"),
        )
        .await
    }

    /// Every version of the bindle `name` on the server (query API, exact name match).
    pub async fn versions(&self, name: &str) -> Result<BindleVersions, BindleError> {
        let mut all = self.query_pages(Some(name), |n| n == name).await?;
        Ok(all.remove(name).unwrap_or_default())
    }

    /// Every version of every bindle on the server, by name: the whole invoice index read
    /// in pages of [`QUERY_PAGE`] (`ceil(invoices / 255)` requests, however many names).
    pub async fn all_versions(&self) -> Result<BTreeMap<String, BindleVersions>, BindleError> {
        self.query_pages(None, |_| true).await
    }

    /// The versions of the bindles named in `names`, read as [`Self::all_versions`] does but
    /// keeping only those names (an absent name has no versions).
    pub async fn versions_of(
        &self,
        names: &BTreeSet<String>,
    ) -> Result<BTreeMap<String, BindleVersions>, BindleError> {
        self.query_pages(None, |n| names.contains(n)).await
    }

    /// How many requests [`Self::all_versions`] took the last time it ran (1 before that).
    pub fn all_versions_pages(&self) -> u64 {
        self.invoices_seen
            .load(std::sync::atomic::Ordering::Relaxed)
            .div_ceil(u64::from(QUERY_PAGE))
            .max(1)
    }

    /// Pages through the query API (`query` matches names by substring, absent matches every
    /// invoice, yanked ones included), keeping the invoices whose name passes `keep`.
    ///
    /// The server sorts its index by id, so pages are consistent while nothing is pushed;
    /// an invoice pushed meanwhile may shift one out of the page read next (it is then seen
    /// as absent until the next read, and a push of it finds it there: 409, then compared).
    async fn query_pages(
        &self,
        query: Option<&str>,
        keep: impl Fn(&str) -> bool,
    ) -> Result<BTreeMap<String, BindleVersions>, BindleError> {
        let mut out = BTreeMap::<String, BindleVersions>::new();
        let id = query.unwrap_or("*");
        let mut offset = 0u64;
        loop {
            let opts = || QueryOptions {
                query: query.map(str::to_string),
                version: None,
                offset: Some(offset),
                limit: Some(QUERY_PAGE),
                strict: Some(true),
                yanked: Some(true),
            };
            let matches = self
                .call("query", id, "GET", 200, || {
                    self.client.query_invoices(opts())
                })
                .await?
                .map_err(|source| BindleError::Client {
                    op: "query",
                    id: id.to_string(),
                    source,
                })?;
            let n = matches.invoices.len() as u64;
            for inv in &matches.invoices {
                let name = inv.bindle.id.name();
                if !keep(name) {
                    continue;
                }
                match out.get_mut(name) {
                    Some(versions) => versions.insert(server_bindle(inv)),
                    None => {
                        out.insert(name.to_string(), [server_bindle(inv)].into_iter().collect());
                    }
                }
            }
            offset += n;
            if !matches.more || n == 0 {
                if query.is_none() {
                    self.invoices_seen.store(
                        matches.total.max(offset),
                        std::sync::atomic::Ordering::Relaxed,
                    );
                }
                // Built by `insert` across pages.
                out.values_mut().for_each(BindleVersions::shrink_to_fit);
                return Ok(out);
            }
        }
    }

    /// The parcels the server still lacks for `id`; `None` when there is no such invoice (or it
    /// is yanked).
    pub async fn missing_parcels(&self, id: &Id) -> Result<Option<Vec<String>>, BindleError> {
        let id_s = id.to_string();
        match self
            .call("missing", &id_s, "GET", 200, || {
                self.client.get_missing_parcels(id.clone())
            })
            .await?
        {
            Ok(labels) => Ok(Some(labels.into_iter().map(|l| l.sha256).collect())),
            Err(ClientError::InvoiceNotFound | ClientError::ResourceNotFound) => Ok(None),
            Err(source) => Err(BindleError::Client {
                op: "missing",
                id: id_s,
                source,
            }),
        }
    }

    /// Pushes `local` so that the server holds exactly its parcels under its id.
    pub async fn push(&self, local: &PackedBindle) -> Result<PushReport, BindleError> {
        let id = local.id.clone();
        let id_s = id.to_string();
        let mut invoice: Invoice = local.invoice.clone();
        // Signing is the last change to the parcel list: the signature covers it.
        invoice
            .sign(SignatureRole::Creator, &self.key)
            .map_err(|e| BindleError::Sign {
                id: id_s.clone(),
                message: e.to_string(),
            })?;
        let created = self
            .call("create invoice", &id_s, "POST", 201, || {
                self.client.create_invoice(invoice.clone())
            })
            .await?;
        let (existed, missing) = match created {
            Ok(resp) => (
                false,
                resp.missing
                    .unwrap_or_default()
                    .into_iter()
                    .map(|l| l.sha256)
                    .collect::<Vec<_>>(),
            ),
            Err(ClientError::InvoiceAlreadyExists) => {
                let server = self.versions(id.name()).await?;
                let version = id.version_string();
                match server.get(&version) {
                    Some(b) if b.yanked => return Err(BindleError::Yanked { id: id_s }),
                    Some(b) if local.parcel_set() != b.parcels => {
                        return Err(BindleError::Conflict { id: id_s })
                    }
                    Some(_) => {}
                    // 409 but not listed: the index is behind; try again later.
                    None => {
                        return Err(BindleError::Incomplete {
                            id: id_s,
                            missing: local.parcels.len(),
                        })
                    }
                }
                match self.missing_parcels(&id).await? {
                    Some(m) => (true, m),
                    None => return Err(BindleError::Yanked { id: id_s }),
                }
            }
            Err(ClientError::ServerError(Some(message))) if message.starts_with("Bad request") => {
                let hint = if message.contains("signature") {
                    "; the server must trust the controller's signing key (add its public key to the Bindle server's keyring)"
                } else {
                    ""
                };
                return Err(BindleError::Rejected {
                    id: id_s,
                    message,
                    hint,
                });
            }
            Err(source) => {
                return Err(BindleError::Client {
                    op: "create invoice",
                    id: id_s,
                    source,
                })
            }
        };

        // A parcel listed at several names (equal files at two paths) is missing once.
        let missing: Vec<String> = missing
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let to_upload: u64 = missing
            .iter()
            .filter_map(|sha| {
                local
                    .invoice
                    .parcel
                    .iter()
                    .flatten()
                    .find(|p| &p.label.sha256 == sha)
                    .map(|p| p.label.size)
            })
            .sum();
        self.progress.upload_started(&id_s, to_upload);
        let uploads: Result<Vec<(String, u64)>, BindleError> =
            stream::iter(missing.into_iter().map(|sha| {
                let id = id.clone();
                let id_s = id_s.clone();
                async move {
                    let source = local
                        .parcels
                        .get(&sha)
                        .ok_or_else(|| BindleError::Conflict { id: id_s.clone() })?;
                    let size = match source {
                        ParcelSource::File(path) => std::fs::metadata(path)
                            .map_err(|e| BindleError::Local {
                                id: id_s.clone(),
                                sha: sha.clone(),
                                source: e,
                            })?
                            .len(),
                        ParcelSource::Bytes(bytes) => bytes.len() as u64,
                    };
                    let r = self
                        .call("upload parcel", &id_s, "POST", 200, || {
                            self.upload_parcel(&id, &sha, source)
                        })
                        .await?;
                    match r {
                        Ok(()) => {
                            self.stats.record_upload(size);
                            self.progress.uploaded(size);
                            Ok((sha, size))
                        }
                        // Uploaded meanwhile (by us before a crash, or another writer).
                        Err(ClientError::ParcelAlreadyExists) => Ok((sha, 0)),
                        Err(ClientError::ServerError(Some(message)))
                            if message.starts_with("Bad request") =>
                        {
                            Err(BindleError::Rejected {
                                id: id_s,
                                message,
                                hint: "",
                            })
                        }
                        Err(source) => Err(BindleError::Client {
                            op: "upload parcel",
                            id: id_s,
                            source,
                        }),
                    }
                }
            }))
            .buffer_unordered(self.concurrency)
            .try_collect()
            .await;
        self.progress.upload_finished(&id_s);
        let uploads = uploads?;

        let still = self.missing_parcels(&id).await?.unwrap_or_default();
        if !still.is_empty() {
            return Err(BindleError::Incomplete {
                id: id_s,
                missing: still.len(),
            });
        }
        Ok(PushReport {
            existed,
            uploaded_parcels: uploads.iter().filter(|(_, n)| *n > 0).count(),
            uploaded_bytes: uploads.iter().map(|(_, n)| n).sum(),
        })
    }
}

impl BindleClient {
    /// One upload attempt. A file parcel is streamed from disk in small chunks (opened again
    /// for each attempt), so memory does not grow with the parcel's size; only the generated
    /// manifest (a few hundred bytes) is sent from memory.
    async fn upload_parcel(
        &self,
        id: &Id,
        sha: &str,
        source: &ParcelSource,
    ) -> Result<(), ClientError> {
        match source {
            ParcelSource::File(path) => {
                self.client
                    .create_parcel_from_file(id.clone(), sha, path)
                    .await
            }
            ParcelSource::Bytes(bytes) => {
                self.client
                    .create_parcel(id.clone(), sha, bytes.clone())
                    .await
            }
        }
    }
}

fn server_bindle(inv: &Invoice) -> ServerBindle {
    ServerBindle {
        version: inv.bindle.id.version_string(),
        parcels: ParcelSet::of(inv.parcel.iter().flatten().map(|p| p.label.sha256.as_str())),
        yanked: inv.yanked.unwrap_or(false),
    }
}

//! The one HTTP transport of the Hippo and Nomad clients: a reqwest client with a timeout, the
//! retry loop ([`crate::retry`]) and request counters per service ([`RequestStats`]).
//!
//! What a request carries (auth, query, body) and what a response means (an error body, a
//! status worth retrying, an index header) stay with each client; what every request does the
//! same way is here, once: send within the timeout, count it, classify a failed send, retry.
//!
//! The Bindle client does not use it: its requests are made by the `bindle` crate's own
//! reqwest client, which hands back a parsed result or a `ClientError`, never a response.

use std::{
    fmt::Display,
    future::Future,
    time::{Duration, Instant},
};

use reqwest::{Method, RequestBuilder, Response};

use crate::{
    retry::{retry, transport_attempt, Attempt, RetryPolicy},
    stats::RequestStats,
};

/// Which service a transport talks to.
#[derive(Debug, Clone, Copy)]
pub struct Service {
    /// The counters' key (`hippo`, `nomad`).
    pub key: &'static str,
    /// How log lines name it (`Hippo`, `Nomad`).
    pub name: &'static str,
}

/// A client's error for a request that got no (complete) response.
pub trait TransportError: Display {
    fn transport(method: Method, path: &str, source: reqwest::Error) -> Self;
}

/// A reqwest client for one service, with its base URL, retry policy and counters.
pub struct Transport {
    http: reqwest::Client,
    base: String,
    service: Service,
    retry: RetryPolicy,
    stats: RequestStats,
}

impl Transport {
    /// `http` carries what is particular to the service (TLS); every request gets `timeout`,
    /// including reading the body, unless it sets its own, and connecting gets at most 10 s of it.
    pub fn new(
        service: Service,
        base: String,
        http: reqwest::ClientBuilder,
        timeout: Duration,
        retry: RetryPolicy,
        stats: RequestStats,
    ) -> reqwest::Result<Self> {
        let http = http
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("hippo-gitops/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Transport {
            http,
            base,
            service,
            retry,
            stats,
        })
    }

    /// A request to `path` below the base URL, sent as it is: no retry, not counted.
    pub fn builder(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    /// Counts a request made with [`Transport::builder`].
    pub fn record(&self, method: &str, status: u16) {
        self.stats.record(self.service.key, method, status);
    }

    /// Sends `method path` until it succeeds, fails for good, or the retry policy's time is up.
    ///
    /// Each attempt: `prepare` completes the request (headers, query, body; it may fail, and
    /// say whether to try again); the request is sent and counted, with status 0 when no
    /// response arrived, and a failed send is retried as [`transport_attempt`] says for an
    /// `idempotent` request or not; a response goes to `on_response` with the instant it was
    /// sent, which reads it and says what it means.
    pub async fn request<T, E, P, PF, R, RF>(
        &self,
        method: &Method,
        path: &str,
        idempotent: bool,
        prepare: P,
        on_response: R,
    ) -> Result<T, E>
    where
        E: TransportError,
        P: Fn(RequestBuilder) -> PF,
        PF: Future<Output = Result<RequestBuilder, Attempt<E>>>,
        R: Fn(Response, Instant) -> RF,
        RF: Future<Output = Result<T, Attempt<E>>>,
    {
        retry(
            self.retry,
            || async {
                let req = prepare(self.builder(method.clone(), path)).await?;
                let started = Instant::now();
                let resp = match req.send().await {
                    Ok(r) => r,
                    Err(source) => {
                        self.record(method.as_str(), 0);
                        let connect = source.is_connect();
                        let e = E::transport(method.clone(), path, source);
                        return Err(transport_attempt(e, idempotent, connect));
                    }
                };
                self.record(method.as_str(), resp.status().as_u16());
                on_response(resp, started).await
            },
            |e, delay| {
                tracing::warn!(
                    error = %e,
                    retry_in_ms = delay.as_millis() as u64,
                    "{} request failed; retrying",
                    self.service.name
                )
            },
        )
        .await
    }
}

//! Faults on demand: an HTTP proxy in front of a sandbox service that adds latency, answers
//! 5xx and drops connections at given rates.
//!
//! Errors come in the two kinds that matter to a controller: refused before the service saw the
//! request (`503`), and *after* the service processed it (the request is forwarded, then the
//! answer is replaced by `502`, or the connection is dropped) — the case where a retried
//! non-idempotent POST would create a duplicate.

use std::{
    convert::Infallible,
    fmt,
    net::SocketAddr,
    str::FromStr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use hyper::{
    service::{make_service_fn, service_fn},
    Body, Client, Request, Response, Server, StatusCode, Uri,
};

use crate::serve::{bind, BackgroundServer};

/// What to inject, per service. Parsed from `error=0.2,latency=50ms,drop=0.05,seed=7`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct FaultSpec {
    /// Share of requests answered with a 5xx (half before, half after reaching the service).
    pub error_rate: f64,
    /// Added before every request is forwarded.
    pub latency: Duration,
    /// Share of requests whose connection is dropped without an answer (half after the service
    /// processed the request).
    pub drop_rate: f64,
    /// Seed of the pseudo-random choices, for reproducible runs.
    pub seed: u64,
}

impl FaultSpec {
    pub fn is_none(&self) -> bool {
        self.error_rate == 0.0 && self.drop_rate == 0.0 && self.latency.is_zero()
    }
}

/// Parse errors of a fault spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid fault spec {spec:?}: {message} (expected e.g. \"error=0.2,latency=50ms,drop=0.05\")"
)]
pub struct FaultSpecError {
    pub spec: String,
    pub message: String,
}

impl FromStr for FaultSpec {
    type Err = FaultSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |message: String| FaultSpecError {
            spec: s.to_string(),
            message,
        };
        let mut spec = FaultSpec::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| err(format!("{part:?} is not key=value")))?;
            let rate = || -> Result<f64, FaultSpecError> {
                let v: f64 = value
                    .trim_end_matches('%')
                    .parse()
                    .map_err(|_| err(format!("{key}: {value:?} is not a number")))?;
                let v = if value.ends_with('%') { v / 100.0 } else { v };
                if (0.0..=1.0).contains(&v) {
                    Ok(v)
                } else {
                    Err(err(format!("{key}: {value} is not between 0 and 1")))
                }
            };
            match key.trim() {
                "error" => spec.error_rate = rate()?,
                "drop" => spec.drop_rate = rate()?,
                "latency" => {
                    spec.latency = parse_millis(value).ok_or_else(|| {
                        err(format!("latency: {value:?} is not a duration like 50ms"))
                    })?
                }
                "seed" => {
                    spec.seed = value
                        .parse()
                        .map_err(|_| err(format!("seed: {value:?} is not a number")))?
                }
                other => return Err(err(format!("unknown key {other:?}"))),
            }
        }
        Ok(spec)
    }
}

impl fmt::Display for FaultSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "error={},latency={}ms,drop={}",
            self.error_rate,
            self.latency.as_millis(),
            self.drop_rate
        )
    }
}

fn parse_millis(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Some(ms) = s.strip_suffix("ms") {
        ms.parse().ok().map(Duration::from_millis)
    } else if let Some(secs) = s.strip_suffix('s') {
        secs.parse::<f64>().ok().map(Duration::from_secs_f64)
    } else {
        s.parse().ok().map(Duration::from_millis)
    }
}

/// Counts of what the proxy did, for tests and for the sandbox's summary.
#[derive(Debug, Default)]
pub struct FaultCounters {
    pub forwarded: AtomicU64,
    pub errors_before: AtomicU64,
    pub errors_after: AtomicU64,
    pub drops_before: AtomicU64,
    pub drops_after: AtomicU64,
}

/// SplitMix64: small, seedable, good enough to pick faults.
struct Rng(AtomicU64);

impl Rng {
    fn next_f64(&self) -> f64 {
        let mut z = self
            .0
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A running fault proxy. Dropping it stops it.
pub struct FaultProxy {
    addr: SocketAddr,
    counters: Arc<FaultCounters>,
    /// Not an axum router: a handler's error drops the connection, which is one of the faults.
    _server: BackgroundServer,
}

/// The connection was dropped on purpose.
#[derive(Debug)]
struct Dropped;

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection dropped by fault injection")
    }
}

impl std::error::Error for Dropped {}

impl FaultProxy {
    /// Listens on `listen` (port 0 for any) and forwards to `upstream` with `spec`'s faults.
    pub async fn start(
        upstream: SocketAddr,
        spec: FaultSpec,
        listen: SocketAddr,
    ) -> Result<FaultProxy, std::io::Error> {
        let (listener, addr) = bind(listen)?;
        let counters = Arc::new(FaultCounters::default());
        let rng = Arc::new(Rng(AtomicU64::new(spec.seed)));
        let client: Client<hyper::client::HttpConnector> = Client::new();
        let c = counters.clone();
        let make = make_service_fn(move |_| {
            let (client, counters, rng) = (client.clone(), c.clone(), rng.clone());
            async move {
                Ok::<_, Infallible>(service_fn(move |req| {
                    handle(
                        req,
                        upstream,
                        spec,
                        client.clone(),
                        counters.clone(),
                        rng.clone(),
                    )
                }))
            }
        });
        let server = Server::from_tcp(listener)
            .map_err(|e| std::io::Error::other(e.to_string()))?
            .serve(make);
        Ok(FaultProxy {
            addr,
            counters,
            _server: BackgroundServer::spawn("fault proxy", |stop| {
                server.with_graceful_shutdown(stop)
            }),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn counters(&self) -> &FaultCounters {
        &self.counters
    }
}

async fn handle(
    mut req: Request<Body>,
    upstream: SocketAddr,
    spec: FaultSpec,
    client: Client<hyper::client::HttpConnector>,
    counters: Arc<FaultCounters>,
    rng: Arc<Rng>,
) -> Result<Response<Body>, Dropped> {
    if !spec.latency.is_zero() {
        tokio::time::sleep(spec.latency).await;
    }
    let roll = rng.next_f64();
    let after = rng.next_f64() < 0.5;
    let drop = roll < spec.drop_rate;
    let error = !drop && roll < spec.drop_rate + spec.error_rate;
    if drop && !after {
        counters.drops_before.fetch_add(1, Ordering::Relaxed);
        return Err(Dropped);
    }
    if error && !after {
        counters.errors_before.fetch_add(1, Ordering::Relaxed);
        return Ok(status(
            StatusCode::SERVICE_UNAVAILABLE,
            "injected fault: service unavailable",
        ));
    }
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    *req.uri_mut() = match Uri::try_from(format!("http://{upstream}{path}")) {
        Ok(u) => u,
        Err(_) => return Ok(status(StatusCode::BAD_REQUEST, "bad request uri")),
    };
    let resp = match client.request(req).await {
        Ok(r) => r,
        Err(e) => return Ok(status(StatusCode::BAD_GATEWAY, &format!("upstream: {e}"))),
    };
    counters.forwarded.fetch_add(1, Ordering::Relaxed);
    if drop {
        // The service processed the request; its answer is lost.
        let _ = hyper::body::to_bytes(resp.into_body()).await;
        counters.drops_after.fetch_add(1, Ordering::Relaxed);
        return Err(Dropped);
    }
    if error {
        let _ = hyper::body::to_bytes(resp.into_body()).await;
        counters.errors_after.fetch_add(1, Ordering::Relaxed);
        return Ok(status(
            StatusCode::BAD_GATEWAY,
            "injected fault: answer lost after processing",
        ));
    }
    Ok(resp)
}

fn status(code: StatusCode, text: &str) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("Content-Type", "text/plain; charset=utf-8")
        .body(Body::from(text.to_string()))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_reject_nonsense() {
        let s: FaultSpec = "error=0.2,latency=50ms,drop=5%,seed=3".parse().unwrap();
        assert_eq!(s.error_rate, 0.2);
        assert_eq!(s.latency, Duration::from_millis(50));
        assert!((s.drop_rate - 0.05).abs() < 1e-9);
        assert_eq!(s.seed, 3);
        assert!("error=2".parse::<FaultSpec>().is_err());
        assert!("oops=1".parse::<FaultSpec>().is_err());
        assert!("latency=fast".parse::<FaultSpec>().is_err());
        assert!("".parse::<FaultSpec>().unwrap().is_none());
    }

    #[tokio::test]
    async fn injects_errors_before_and_after_and_drops() {
        // Upstream: counts what reaches it.
        let hits = Arc::new(AtomicU64::new(0));
        let h = hits.clone();
        let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        upstream.set_nonblocking(true).unwrap();
        let up_addr = upstream.local_addr().unwrap();
        let make = make_service_fn(move |_| {
            let h = h.clone();
            async move {
                Ok::<_, Infallible>(service_fn(move |_req: Request<Body>| {
                    h.fetch_add(1, Ordering::SeqCst);
                    async { Ok::<_, Infallible>(Response::new(Body::from("ok"))) }
                }))
            }
        });
        tokio::spawn(Server::from_tcp(upstream).unwrap().serve(make));
        let spec = FaultSpec {
            error_rate: 0.3,
            drop_rate: 0.2,
            latency: Duration::ZERO,
            seed: 42,
        };
        let proxy = FaultProxy::start(up_addr, spec, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let (mut ok, mut err5xx, mut dropped) = (0, 0, 0);
        for _ in 0..200 {
            match client
                .get(format!("http://{}/x", proxy.addr()))
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => ok += 1,
                Ok(r) if r.status().is_server_error() => err5xx += 1,
                Ok(r) => panic!("unexpected {}", r.status()),
                Err(_) => dropped += 1,
            }
        }
        let c = proxy.counters();
        assert_eq!(ok + err5xx + dropped, 200);
        assert!(
            ok > 80 && err5xx > 30 && dropped > 15,
            "ok {ok} 5xx {err5xx} dropped {dropped}"
        );
        assert!(
            c.errors_after.load(Ordering::SeqCst) > 0 && c.errors_before.load(Ordering::SeqCst) > 0
        );
        assert!(
            c.drops_after.load(Ordering::SeqCst) > 0 && c.drops_before.load(Ordering::SeqCst) > 0
        );
        // What reached the service: the successes plus the faults injected after it.
        let after = c.errors_after.load(Ordering::SeqCst) + c.drops_after.load(Ordering::SeqCst);
        assert_eq!(hits.load(Ordering::SeqCst), ok + after);
    }
}

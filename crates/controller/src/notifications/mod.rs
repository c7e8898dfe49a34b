//! Notifications: events sent to webhooks, Slack, and GitHub/GitLab commit statuses, as the
//! `kind: Notification` documents ([`crate::spec::notification`]) say.
//!
//! Delivery never holds up reconciling: [`Notifier::send`] only puts requests in each
//! receiver's bounded queue (a full queue drops the request, counted), and one task per
//! receiver sends them in order. A request is retried with backoff on a 5xx or a connection
//! error (and after `Retry-After` on a 429), never on another 4xx. Every request has a
//! timeout. So a slow or dead receiver costs one task and a bounded queue, and the others are
//! not delayed. Each notification ends as `delivered`, `failed` or `dropped` in
//! `hippo_gitops_notifications_total{type,result}`.
//!
//! Addresses and secrets come from the controller's environment (the document names the
//! variables); they are kept as [`Secret`]s and never logged: errors are logged without their
//! URL.

pub mod payload;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::mpsc, task::JoinHandle, time::Instant};

use hippo_gitops_core::{
    events::Event,
    secret::Secret,
    spec::notification::{NotificationSpec, NotificationType},
    sync::MutexExt,
};

use self::payload::Outgoing;

/// A receiver, with its address and secret read from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The Notification's `metadata.name`.
    pub name: String,
    pub kind: NotificationType,
    /// The URL (webhook, Slack) or API root (GitHub, GitLab).
    pub address: Secret,
    /// HMAC key (webhook) or API token (GitHub, GitLab).
    pub secret: Option<Secret>,
    pub repository: Option<String>,
}

/// How requests are sent.
#[derive(Debug, Clone)]
pub struct DeliveryPolicy {
    /// Requests waiting per receiver; more are dropped.
    pub queue: usize,
    /// Tries per request (the first one included).
    pub attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Per request.
    pub timeout: Duration,
    /// The longest `Retry-After` honoured.
    pub max_retry_after: Duration,
    /// Slack takes about one message a second per webhook.
    pub slack_interval: Duration,
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        DeliveryPolicy {
            queue: 100,
            attempts: 5,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(60),
            slack_interval: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error(
        "notification {name}: the environment variable {var} is not set; nothing is sent to it"
    )]
    MissingEnv { name: String, var: String },
    /// The value is never shown: it may be a secret URL.
    #[error(
        "notification {name}: the value of {var} is not an http(s) URL; nothing is sent to it"
    )]
    BadAddress { name: String, var: String },
    #[error("building the HTTP client for notifications: {0}")]
    Client(#[source] reqwest::Error),
}

/// How each notification ended, by receiver type.
pub const RESULTS: [&str; 3] = ["delivered", "failed", "dropped"];

#[derive(Debug, Default)]
struct Counters(Mutex<BTreeMap<(&'static str, &'static str), u64>>);

impl Counters {
    fn add(&self, kind: NotificationType, result: &'static str) {
        *self.0.locked().entry((kind.name(), result)).or_default() += 1;
    }
}

/// One configured receiver and its delivery task.
struct Route {
    spec: NotificationSpec,
    target: Target,
    queue: mpsc::Sender<Outgoing>,
    worker: JoinHandle<()>,
}

impl Drop for Route {
    fn drop(&mut self) {
        // Reconfigured or shut down: what it still holds is abandoned.
        self.worker.abort();
    }
}

/// Sends events to the configured receivers.
pub struct Notifier {
    routes: Mutex<Vec<Route>>,
    counters: Arc<Counters>,
    client: reqwest::Client,
    policy: DeliveryPolicy,
    /// `--external-url`: links to the dashboard.
    external_url: Option<String>,
}

impl Notifier {
    pub fn new(policy: DeliveryPolicy, external_url: Option<String>) -> Result<Self, NotifyError> {
        let client = reqwest::Client::builder()
            .timeout(policy.timeout)
            .connect_timeout(policy.timeout)
            .user_agent(concat!("hippo-gitops/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(NotifyError::Client)?;
        Ok(Notifier {
            routes: Mutex::default(),
            counters: Arc::default(),
            client,
            policy,
            external_url,
        })
    }

    /// Sets the receivers to `specs`, their addresses and secrets read through `env`.
    /// Receivers that did not change keep their queue and task. Answers the documents that
    /// can't be used (a variable not set, an address that is not a URL).
    pub fn configure(
        &self,
        specs: &[NotificationSpec],
        env: impl Fn(&str) -> Option<String>,
    ) -> Vec<NotifyError> {
        let mut problems = Vec::new();
        let mut old = std::mem::take(&mut *self.routes.locked());
        let mut routes = Vec::new();
        for spec in specs {
            let target = match resolve(spec, &env) {
                Ok(t) => t,
                Err(e) => {
                    problems.push(e);
                    continue;
                }
            };
            if let Some(i) = old
                .iter()
                .position(|r| r.target == target && r.spec == *spec)
            {
                routes.push(old.swap_remove(i));
                continue;
            }
            let (queue, rx) = mpsc::channel(self.policy.queue.max(1));
            let worker = tokio::spawn(deliver_all(
                rx,
                target.name.clone(),
                target.kind,
                self.client.clone(),
                self.policy.clone(),
                self.counters.clone(),
            ));
            routes.push(Route {
                spec: spec.clone(),
                target,
                queue,
                worker,
            });
        }
        *self.routes.locked() = routes;
        problems
    }

    /// How many receivers are configured.
    pub fn receivers(&self) -> usize {
        self.routes.locked().len()
    }

    /// Queues `events` for every receiver that wants them; never waits.
    pub fn send(&self, events: &[Event]) {
        let routes = self.routes.locked();
        for event in events {
            for route in routes.iter().filter(|r| r.spec.wants(event)) {
                let Some(out) = payload::build(&route.target, event, self.external_url.as_deref())
                else {
                    continue;
                };
                if let Err(mpsc::error::TrySendError::Full(_)) = route.queue.try_send(out) {
                    tracing::warn!(
                        notification = %route.target.name,
                        "notification dropped: the receiver's queue is full (it is slow or down)"
                    );
                    self.counters.add(route.target.kind, "dropped");
                }
            }
        }
    }

    /// `(type, result) → count`, every pair present.
    pub fn counts(&self) -> BTreeMap<(&'static str, &'static str), u64> {
        let counted = self.counters.0.locked();
        let mut all = BTreeMap::new();
        for t in NotificationType::ALL {
            for r in RESULTS {
                all.insert(
                    (t.name(), r),
                    counted.get(&(t.name(), r)).copied().unwrap_or(0),
                );
            }
        }
        all
    }

    /// `hippo_gitops_notifications_total` in the Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP hippo_gitops_notifications_total Notifications by receiver type and how they ended (delivered; failed: refused or out of retries; dropped: the receiver's queue was full)."
        );
        let _ = writeln!(out, "# TYPE hippo_gitops_notifications_total counter");
        for ((t, r), n) in self.counts() {
            let _ = writeln!(
                out,
                "hippo_gitops_notifications_total{{type=\"{t}\",result=\"{r}\"}} {n}"
            );
        }
    }
}

fn resolve(
    spec: &NotificationSpec,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Target, NotifyError> {
    let read = |var: &str| {
        env(var)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| NotifyError::MissingEnv {
                name: spec.name.clone(),
                var: var.to_string(),
            })
    };
    let address = read(&spec.address_from_env)?;
    let is_url = url::Url::parse(&address)
        .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host());
    if !is_url {
        return Err(NotifyError::BadAddress {
            name: spec.name.clone(),
            var: spec.address_from_env.clone(),
        });
    }
    let secret = match &spec.secret_from_env {
        Some(var) => Some(Secret::new(read(var)?)),
        None => None,
    };
    Ok(Target {
        name: spec.name.clone(),
        kind: spec.kind,
        address: Secret::new(address),
        secret,
        repository: spec.repository.clone(),
    })
}

/// One receiver's task: its requests in order, each until it ends.
async fn deliver_all(
    mut queue: mpsc::Receiver<Outgoing>,
    name: String,
    kind: NotificationType,
    client: reqwest::Client,
    policy: DeliveryPolicy,
    counters: Arc<Counters>,
) {
    let mut last_sent: Option<Instant> = None;
    while let Some(out) = queue.recv().await {
        if let (NotificationType::Slack, Some(last)) = (kind, last_sent) {
            tokio::time::sleep_until(last + policy.slack_interval).await;
        }
        last_sent = Some(Instant::now());
        let result = deliver(&client, &out, &policy, &name).await;
        counters.add(kind, result);
    }
}

/// Sends one request, retrying what may succeed later; answers how it ended.
async fn deliver(
    client: &reqwest::Client,
    out: &Outgoing,
    policy: &DeliveryPolicy,
    name: &str,
) -> &'static str {
    let mut backoff = policy.initial_backoff;
    for attempt in 1..=policy.attempts.max(1) {
        let mut request = client
            .post(&out.url)
            .header("content-type", "application/json")
            .body(out.body.clone());
        for (k, v) in &out.headers {
            request = request.header(*k, v);
        }
        let (wait, why) = match request.send().await {
            Ok(r) if r.status().is_success() => return "delivered",
            Ok(r) if r.status() == reqwest::StatusCode::TOO_MANY_REQUESTS => (
                retry_after(r.headers())
                    .unwrap_or(backoff)
                    .min(policy.max_retry_after),
                format!("HTTP {}", r.status()),
            ),
            Ok(r) if r.status().is_server_error() => (backoff, format!("HTTP {}", r.status())),
            Ok(r) => {
                tracing::warn!(notification = %name, status = r.status().as_u16(), "notification refused by its receiver; not retried");
                return "failed";
            }
            // Without the URL: a Slack webhook's URL is its secret.
            Err(e) => (backoff, e.without_url().to_string()),
        };
        if attempt == policy.attempts.max(1) {
            tracing::warn!(notification = %name, attempts = attempt, "notification not delivered, giving up: {why}");
            return "failed";
        }
        tracing::debug!(notification = %name, attempt, retry_in = ?wait, "notification not delivered, retrying: {why}");
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(policy.max_backoff);
    }
    "failed"
}

/// `Retry-After` in seconds (the form Slack and GitHub use).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

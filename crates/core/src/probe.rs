//! The checks of promotions (`promote.check`): an HTTP GET of the `from` channel's URL every
//! `interval` while a revision waits to be promoted. What each saw is kept here between cycles
//! (a long-running controller) and handed to the diff through the snapshot; the diff decides.
//!
//! A window of passing probes is unbroken only if no probe failed and no two were further
//! apart than twice the interval: a gap (the controller was down, a one-shot run) proves
//! nothing about the time between, so the window starts again.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use crate::{
    delivery::ProbeObservation,
    observe::Snapshot,
    spec::{AppSpec, ProbeSpec, Selector},
    sync::MutexExt,
};

/// The longest a probe may take; a slower answer is a failure.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the checks and remembers what they saw.
pub struct Prober {
    http: reqwest::Client,
    seen: std::sync::Mutex<BTreeMap<(String, String), ProbeObservation>>,
}

impl Default for Prober {
    fn default() -> Self {
        Prober {
            http: reqwest::Client::builder()
                .timeout(PROBE_TIMEOUT)
                .build()
                .expect("a plain HTTP client builds"),
            seen: Default::default(),
        }
    }
}

/// One check to run: the promoted channel, the revision `from` runs and where to probe it.
struct Due {
    key: (String, String),
    revision: String,
    url: String,
    check: ProbeSpec,
}

impl Prober {
    /// Probes every check whose interval has passed, for revisions waiting to be promoted
    /// (`from` runs a revision that the promoted channel does not), and puts what every check
    /// saw into `snapshot.probes`.
    pub async fn observe(&self, apps: &[Arc<AppSpec>], snapshot: &mut Snapshot) {
        let now = snapshot.observed_at_ms;
        let mut due = Vec::new();
        let mut live = std::collections::BTreeSet::new();
        for spec in apps.iter().filter(|a| !a.suspend) {
            let Some(app) = snapshot.app(&spec.name) else {
                continue;
            };
            let channels: Vec<_> = snapshot.channels_of(app).collect();
            for ch in &spec.channels {
                let Selector::Promote(p) = &ch.selector else {
                    continue;
                };
                let Some(check) = &p.check else { continue };
                let running = |name: &str| {
                    channels
                        .iter()
                        .find(|c| c.name == name)
                        .and_then(|c| c.active_revision.as_ref())
                        .map(|r| r.revision_number.clone())
                };
                let Some(from) = channels.iter().find(|c| c.name == p.from) else {
                    continue;
                };
                let Some(candidate) = running(&p.from) else {
                    continue;
                };
                if running(&ch.name).as_deref() == Some(candidate.as_str()) {
                    continue;
                }
                let key = (spec.name.clone(), ch.name.clone());
                live.insert(key.clone());
                let last = self.seen.locked().get(&key).cloned();
                let interval = check.interval.as_millis() as i64;
                if last
                    .as_ref()
                    .is_some_and(|o| o.revision == candidate && now - o.last_ms < interval)
                {
                    continue;
                }
                let domain = from.domain.clone().unwrap_or_default();
                due.push(Due {
                    key,
                    revision: candidate,
                    url: check.url.replace("{domain}", &domain),
                    check: check.clone(),
                });
            }
        }
        let results = futures::future::join_all(due.into_iter().map(|d| async move {
            let outcome = self.probe(&d.url, d.check.expect_status).await;
            (d, outcome)
        }))
        .await;
        let mut seen = self.seen.locked();
        seen.retain(|k, _| live.contains(k));
        for (d, outcome) in results {
            let gap = 2 * d.check.interval.as_millis() as i64;
            let before = seen
                .get(&d.key)
                .filter(|o| o.revision == d.revision && now - o.last_ms <= gap);
            let observation = match outcome {
                Ok(()) => ProbeObservation {
                    revision: d.revision.clone(),
                    passing_since_ms: Some(before.and_then(|o| o.passing_since_ms).unwrap_or(now)),
                    last_ms: now,
                    last_failure: None,
                },
                Err(why) => {
                    tracing::info!(app = %d.key.0, channel = %d.key.1, revision = %d.revision, url = %d.url, "promotion check failed: {why}");
                    ProbeObservation {
                        revision: d.revision.clone(),
                        passing_since_ms: None,
                        last_ms: now,
                        last_failure: Some(why),
                    }
                }
            };
            seen.insert(d.key, observation);
        }
        snapshot.probes = seen.clone();
    }

    async fn probe(&self, url: &str, expect: u16) -> Result<(), String> {
        match self.http.get(url).send().await {
            Ok(resp) if resp.status().as_u16() == expect => Ok(()),
            Ok(resp) => Err(format!(
                "GET {url} answered {}, expected {expect}",
                resp.status().as_u16()
            )),
            Err(e) if e.is_timeout() => Err(format!(
                "GET {url} did not answer within {}s",
                PROBE_TIMEOUT.as_secs()
            )),
            Err(e) => Err(format!("GET {url}: {e}")),
        }
    }

    /// How soon a check is due again (the controller wakes for it); `None`: none is waiting.
    pub fn next_due(&self, apps: &[Arc<AppSpec>], now_ms: i64) -> Option<Duration> {
        let seen = self.seen.locked();
        seen.iter()
            .filter_map(|((app, channel), o)| {
                let spec = apps.iter().find(|a| &a.name == app)?;
                let ch = spec.channels.iter().find(|c| &c.name == channel)?;
                let Selector::Promote(p) = &ch.selector else {
                    return None;
                };
                let interval = p.check.as_ref()?.interval.as_millis() as i64;
                Some(Duration::from_millis(
                    (o.last_ms + interval - now_ms).max(0) as u64,
                ))
            })
            .min()
    }
}

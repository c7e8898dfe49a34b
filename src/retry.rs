//! Bounded exponential backoff for transient failures (connection errors, 5xx, 429).

use std::{future::Future, time::Duration};

use backoff::{backoff::Backoff, ExponentialBackoff};

/// How long and how often a single request is retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max_interval: Duration,
    /// Give up once this much time has passed since the first attempt.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial: Duration::from_millis(200),
            max_interval: Duration::from_secs(5),
            max_elapsed: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// No retries at all (plan output in tests that count requests, for example).
    pub fn none() -> Self {
        RetryPolicy {
            initial: Duration::ZERO,
            max_interval: Duration::ZERO,
            max_elapsed: Duration::ZERO,
        }
    }

    fn backoff(&self) -> ExponentialBackoff {
        ExponentialBackoff {
            initial_interval: self.initial,
            current_interval: self.initial,
            max_interval: self.max_interval,
            max_elapsed_time: Some(self.max_elapsed),
            multiplier: 2.0,
            randomization_factor: 0.3,
            ..ExponentialBackoff::default()
        }
    }
}

/// What an attempt says about trying again.
pub enum Attempt<E> {
    /// Worth another try, optionally not before the given delay (`Retry-After`).
    Retry(E, Option<Duration>),
    /// Final.
    Fail(E),
}

/// Runs `op` until it succeeds, fails for good, or the policy's time is up; the last error is
/// returned. `on_retry` sees each error that is retried (for a warning line).
pub async fn retry<T, E, F, Fut>(
    policy: RetryPolicy,
    mut op: F,
    mut on_retry: impl FnMut(&E, Duration),
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Attempt<E>>>,
{
    let mut backoff = policy.backoff();
    let started = tokio::time::Instant::now();
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(Attempt::Fail(e)) => return Err(e),
            Err(Attempt::Retry(e, after)) => {
                let Some(delay) = backoff.next_backoff() else {
                    return Err(e);
                };
                // A server's Retry-After is honoured, but never past the policy's time bound.
                let delay = after.map_or(delay, |a| a.max(delay));
                if started.elapsed() + delay > policy.max_elapsed {
                    return Err(e);
                }
                on_retry(&e, delay);
                tokio::time::sleep(delay).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn fast() -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_millis(1),
            max_interval: Duration::from_millis(2),
            max_elapsed: Duration::from_millis(500),
        }
    }

    #[tokio::test]
    async fn retries_transient_then_succeeds() {
        let n = AtomicU32::new(0);
        let r: Result<u32, &str> = retry(
            fast(),
            || async {
                let i = n.fetch_add(1, Ordering::SeqCst);
                if i < 2 {
                    Err(Attempt::Retry("503", None))
                } else {
                    Ok(i)
                }
            },
            |_, _| {},
        )
        .await;
        assert_eq!(r, Ok(2));
    }

    #[tokio::test]
    async fn terminal_errors_are_not_retried() {
        let n = AtomicU32::new(0);
        let r: Result<(), &str> = retry(
            fast(),
            || async {
                n.fetch_add(1, Ordering::SeqCst);
                Err(Attempt::Fail("400"))
            },
            |_, _| {},
        )
        .await;
        assert_eq!(r, Err("400"));
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_retry_after_beyond_the_bound_gives_up_at_once() {
        let n = AtomicU32::new(0);
        let started = std::time::Instant::now();
        let r: Result<(), &str> = retry(
            fast(),
            || async {
                n.fetch_add(1, Ordering::SeqCst);
                Err(Attempt::Retry("429", Some(Duration::from_secs(120))))
            },
            |_, _| {},
        )
        .await;
        assert_eq!(r, Err("429"));
        assert_eq!(n.load(Ordering::SeqCst), 1);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn gives_up_after_the_bound() {
        let n = AtomicU32::new(0);
        let r: Result<(), &str> = retry(
            RetryPolicy {
                max_elapsed: Duration::from_millis(20),
                ..fast()
            },
            || async {
                n.fetch_add(1, Ordering::SeqCst);
                Err(Attempt::Retry("503", None))
            },
            |_, _| {},
        )
        .await;
        assert_eq!(r, Err("503"));
        assert!(n.load(Ordering::SeqCst) > 1);
    }
}

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
    /// A server that refuses connections (nothing listens, wrong address) is retried only this
    /// long: a restart takes seconds, a wrong URL never heals, and waiting `max_elapsed` for it
    /// only delays the error.
    pub max_unreachable: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial: Duration::from_millis(200),
            max_interval: Duration::from_secs(5),
            max_elapsed: Duration::from_secs(30),
            max_unreachable: Duration::from_secs(3),
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
            max_unreachable: Duration::ZERO,
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
    /// The connection could not be made: retried within `max_unreachable` only.
    Unreachable(E),
    /// Final.
    Fail(E),
}

/// How a failed send is retried: a connection that could not be made never reached the server,
/// so it may be retried even when the request is not idempotent, but only briefly; other
/// transport errors are retried only when repeating the request is safe.
pub fn transport_attempt<E>(e: E, idempotent: bool, connect: bool) -> Attempt<E> {
    if connect {
        Attempt::Unreachable(e)
    } else if idempotent {
        Attempt::Retry(e, None)
    } else {
        Attempt::Fail(e)
    }
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
            Err(attempt @ (Attempt::Retry(..) | Attempt::Unreachable(_))) => {
                let (e, after, bound) = match attempt {
                    Attempt::Retry(e, after) => (e, after, policy.max_elapsed),
                    Attempt::Unreachable(e) => {
                        (e, None, policy.max_unreachable.min(policy.max_elapsed))
                    }
                    Attempt::Fail(_) => unreachable!("matched above"),
                };
                let Some(delay) = backoff.next_backoff() else {
                    return Err(e);
                };
                // A server's Retry-After is honoured, but never past the policy's time bound.
                let delay = after.map_or(delay, |a| a.max(delay));
                if started.elapsed() + delay > bound {
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
            max_unreachable: Duration::from_millis(500),
        }
    }

    #[tokio::test]
    async fn an_unreachable_server_is_retried_only_briefly() {
        let policy = RetryPolicy {
            initial: Duration::from_millis(5),
            max_interval: Duration::from_millis(100),
            max_elapsed: Duration::from_secs(2),
            max_unreachable: Duration::from_millis(50),
        };
        let started = tokio::time::Instant::now();
        let n = AtomicU32::new(0);
        let r: Result<(), &str> = retry(
            policy,
            || async {
                n.fetch_add(1, Ordering::SeqCst);
                Err(Attempt::Unreachable("connection refused"))
            },
            |_, _| {},
        )
        .await;
        assert_eq!(r, Err("connection refused"));
        let took = started.elapsed();
        // Bounds far apart, so that a loaded machine can't blur them: the budget is 50 ms.
        assert!(
            took < Duration::from_millis(1500),
            "gave up early: {took:?}"
        );
        assert!(n.load(Ordering::SeqCst) > 1, "but did retry");
        // A 503 under the same policy goes on far longer.
        let started = tokio::time::Instant::now();
        let _: Result<(), &str> = retry(
            policy,
            || async { Err(Attempt::Retry("503", None)) },
            |_, _| {},
        )
        .await;
        assert!(started.elapsed() > Duration::from_millis(1500));
    }

    #[test]
    fn a_failed_connection_is_unreachable_even_for_a_post() {
        assert!(matches!(
            transport_attempt("e", false, true),
            Attempt::Unreachable(_)
        ));
        assert!(matches!(
            transport_attempt("e", true, false),
            Attempt::Retry(_, None)
        ));
        assert!(matches!(
            transport_attempt("e", false, false),
            Attempt::Fail(_)
        ));
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
                max_unreachable: Duration::from_millis(20),
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

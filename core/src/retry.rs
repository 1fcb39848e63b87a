//! The one retry policy: every call lakescore tries again (a worker's registry calls, a
//! batch job's units, a contended manifest commit, the CLI's uploads and its wait for a job
//! lock) waits with exponential backoff and jitter ([`backon`]), within a number of
//! retries and a budget of total waiting. Jitter keeps many clients that failed together
//! (workers after a registry restart) from retrying together.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// How often, and how patiently, a call is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts after the first one.
    pub retries: usize,
    /// The wait before the first retry; doubled before each next one (plus jitter: up to
    /// as much again, at random).
    pub first_delay: Duration,
    /// No single wait is longer than this (before jitter).
    pub max_delay: Duration,
    /// No retry starts later than this after the first attempt (the calls' own time
    /// counts): a dependency that answers slowly is not asked again and again.
    pub budget: Duration,
}

impl RetryPolicy {
    /// A worker's calls to the registry (resolve, fetch): up to 5 retries from 0.2 s, at
    /// most 10 s of waiting.
    pub const REGISTRY: Self =
        Self::new(5, Duration::from_millis(200), Duration::from_secs(4), Duration::from_secs(10));

    /// The CLI's upload of a version (same `Idempotency-Key` every time): 2 retries from 1 s.
    pub const UPLOAD: Self = Self::new(2, Duration::from_secs(1), Duration::from_secs(4), Duration::from_secs(10));

    /// A manifest another writer changed between read and write: read it again soon.
    pub const CONTENDED_COMMIT: Self =
        Self::new(7, Duration::from_millis(10), Duration::from_millis(500), Duration::from_secs(5));

    /// Waiting for a lock held by a run that died elsewhere, which goes stale within a
    /// minute: about every 5 s (from 1 s), for up to 2 minutes.
    pub const STALE_LOCK: Self =
        Self::new(60, Duration::from_secs(1), Duration::from_secs(5), Duration::from_secs(120));

    /// A policy of `retries` retries, the first after `first_delay`, none waiting longer
    /// than `max_delay`, none starting after `budget` of waiting.
    pub const fn new(retries: usize, first_delay: Duration, max_delay: Duration, budget: Duration) -> Self {
        Self { retries, first_delay, max_delay, budget }
    }

    /// A batch job unit's retries (the job's `max_retries`): from 1 s, up to 30 s apart.
    pub const fn units(retries: usize) -> Self {
        Self::new(retries, Duration::from_secs(1), Duration::from_secs(30), Duration::from_secs(600))
    }

    /// The same policy with waits `factor` times shorter: for tests of the callers.
    pub fn scaled_down(self, factor: u32) -> Self {
        let f = factor.max(1);
        Self::new(self.retries, self.first_delay / f, self.max_delay / f, self.budget / f)
    }

    /// The waits, as backon computes them (exponential, with jitter).
    fn delays(&self) -> impl Iterator<Item = Duration> {
        ExponentialBuilder::new()
            .with_jitter()
            .with_min_delay(self.first_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.retries)
            .build()
    }

    /// Run `call` until it succeeds, fails with an error `retry_on` does not take, or the
    /// policy is spent (then its last error is the answer). Each retry is logged as
    /// "`what`; retrying".
    pub async fn retry<T, E, F, Fut>(
        &self,
        what: &str,
        mut retry_on: impl FnMut(&E) -> bool,
        mut call: F,
    ) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Display,
    {
        // tokio's clock, the one the waits sleep on.
        let started = tokio::time::Instant::now();
        let mut delays = self.delays();
        let mut attempt = 0;
        loop {
            let error = match call().await {
                Ok(value) => return Ok(value),
                Err(e) if retry_on(&e) => e,
                Err(e) => return Err(e),
            };
            match delays.next() {
                Some(delay) if started.elapsed() + delay <= self.budget => {
                    attempt += 1;
                    let delay_ms = delay.as_millis() as u64;
                    tracing::warn!(attempt, error = %error, delay_ms, "{what}; retrying");
                    tokio::time::sleep(delay).await;
                }
                _ => return Err(error),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn retries_what_it_is_told_to_with_growing_jittered_waits() {
        let policy = RetryPolicy::new(5, Duration::from_millis(10), Duration::from_secs(1), Duration::from_secs(10));
        let calls = AtomicUsize::new(0);
        let started = tokio::time::Instant::now();
        let result: Result<(), String> = policy
            .retry(
                "test",
                |e: &String| e == "transient",
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err("transient".to_string())
                },
            )
            .await;
        assert_eq!(result, Err("transient".to_string()));
        assert_eq!(calls.load(Ordering::SeqCst), 6, "the first attempt and 5 retries");
        let waited = started.elapsed();
        // 10, 20, 40, 80, 160 ms, each plus up to as much again.
        assert!(waited >= Duration::from_millis(310), "backoff doubles: {waited:?}");
        assert!(waited < Duration::from_millis(620 + 500), "jitter adds at most one wait more: {waited:?}");

        // An error it is not told to retry is the answer at once.
        let calls = AtomicUsize::new(0);
        let result: Result<(), String> = policy
            .retry(
                "test",
                |e: &String| e == "transient",
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err("final".to_string())
                },
            )
            .await;
        assert_eq!((result, calls.load(Ordering::SeqCst)), (Err("final".to_string()), 1));
    }

    #[tokio::test]
    async fn no_retry_starts_past_the_budget() {
        let policy =
            RetryPolicy::new(100, Duration::from_millis(50), Duration::from_millis(50), Duration::from_millis(200));
        let calls = AtomicUsize::new(0);
        let started = tokio::time::Instant::now();
        let _: Result<(), &str> = policy
            .retry(
                "test",
                |_| true,
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err("down")
                },
            )
            .await;
        assert!(calls.load(Ordering::SeqCst) <= 5, "{} calls", calls.load(Ordering::SeqCst));
        // The budget and one last wait (at most 100 ms), with room for a loaded machine.
        assert!(started.elapsed() < Duration::from_millis(1300), "{:?}", started.elapsed());
    }
}

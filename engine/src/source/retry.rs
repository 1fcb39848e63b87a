//! Retries for the registry calls a worker makes. Resolving a reference and fetching an
//! artifact are idempotent reads, so a registry that is briefly away (a rolling restart, a
//! dropped connection, a database failover answering 503) costs the caller a short wait
//! instead of a failed scoring request.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::{Credentials, ModelSource, ModelVersion};
use crate::error::{Result, ScoreError};
use lakescore_core::reference::ModelRef;

/// How often, and how patiently, [`RetryingSource`] tries again.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts after the first one.
    pub retries: u32,
    /// Wait before the first retry; doubled before each next one.
    pub first_backoff: Duration,
    /// No retry starts later than this after the first attempt: a registry that answers
    /// slowly (a timeout) is not asked again and again.
    pub budget: Duration,
}

impl Default for RetryPolicy {
    /// Up to 5 retries, after 0.2, 0.4, 0.8, 1.6 and 3.2 s, none later than 10 s in.
    fn default() -> Self {
        Self { retries: 5, first_backoff: Duration::from_millis(200), budget: Duration::from_secs(10) }
    }
}

/// A model source whose calls are retried, with exponential backoff, while they fail with
/// `UNAVAILABLE`. Every other error (not found, permission denied, corrupt artifact) is the
/// answer and is returned at once.
pub struct RetryingSource<S> {
    inner: S,
    policy: RetryPolicy,
}

impl<S> RetryingSource<S> {
    /// Wrap `inner`.
    pub fn new(inner: S, policy: RetryPolicy) -> Self {
        Self { inner, policy }
    }

    async fn run<T, F, Fut>(&self, what: &str, mut call: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        // tokio's clock, the one the backoff sleeps on.
        let started = tokio::time::Instant::now();
        let mut backoff = self.policy.first_backoff;
        let mut attempt = 0;
        loop {
            match call().await {
                Err(ScoreError::Unavailable(msg))
                    if attempt < self.policy.retries && started.elapsed() + backoff <= self.policy.budget =>
                {
                    attempt += 1;
                    tracing::warn!(what, attempt, error = %msg, backoff_ms = backoff.as_millis() as u64, "registry unavailable; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.saturating_mul(2);
                }
                other => return other,
            }
        }
    }
}

#[async_trait]
impl<S: ModelSource> ModelSource for RetryingSource<S> {
    async fn resolve(&self, reference: &ModelRef, creds: &Credentials) -> Result<ModelVersion> {
        self.run("resolve", || self.inner.resolve(reference, creds)).await
    }

    async fn fetch(&self, version: &ModelVersion, creds: &Credentials) -> Result<Bytes> {
        self.run("fetch", || self.inner.fetch(version, creds)).await
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// A source that always answers with the same error, counting the calls.
    struct Failing {
        error: ScoreError,
        calls: AtomicU32,
    }

    #[async_trait]
    impl ModelSource for Failing {
        async fn resolve(&self, _: &ModelRef, _: &Credentials) -> Result<ModelVersion> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Err(self.error.clone())
        }
        async fn fetch(&self, _: &ModelVersion, _: &Credentials) -> Result<Bytes> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Err(self.error.clone())
        }
        fn describe(&self) -> String {
            "failing".into()
        }
    }

    async fn calls(error: ScoreError, policy: RetryPolicy) -> (u32, Duration) {
        let source = RetryingSource::new(Failing { error, calls: AtomicU32::new(0) }, policy);
        let started = tokio::time::Instant::now();
        let reference = ModelRef::parse("m").expect("reference");
        assert!(source.resolve(&reference, &Credentials::none()).await.is_err());
        (source.inner.calls.load(Ordering::SeqCst), started.elapsed())
    }

    // Real time, scaled down (tokio's paused clock needs its `test-util` feature, which would
    // give the tests' tokio other features than the release binary's and so a second build of
    // everything above tokio when the tests run in the release profile).
    #[tokio::test]
    async fn retries_only_unavailable_within_the_budget() {
        let policy = RetryPolicy {
            first_backoff: Duration::from_millis(10),
            budget: Duration::from_secs(5),
            ..RetryPolicy::default()
        };
        let (n, waited) = calls(ScoreError::Unavailable("down".into()), policy).await;
        assert_eq!(n, 6, "the first attempt and 5 retries");
        assert!(waited >= Duration::from_millis(10 + 20 + 40 + 80 + 160), "backoff doubles: {waited:?}");
        let (n, _) = calls(ScoreError::NotFound("no model".into()), policy).await;
        assert_eq!(n, 1, "an answer is not retried");
        let (n, _) = calls(ScoreError::PermissionDenied("no".into()), policy).await;
        assert_eq!(n, 1);
        // After two retries (50 and 100 ms) at least 150 ms have passed; the third would
        // start at 350 ms or later, past 300 ms (its 200 ms backoff alone would still fit:
        // the time already spent counts).
        let tight = RetryPolicy {
            first_backoff: Duration::from_millis(50),
            budget: Duration::from_millis(300),
            ..RetryPolicy::default()
        };
        let (n, waited) = calls(ScoreError::Unavailable("down".into()), tight).await;
        assert_eq!(n, 3, "retries after 50 and 100 ms; the next would start past the budget");
        assert!(waited >= Duration::from_millis(150) && waited < Duration::from_millis(300), "{waited:?}");
    }
}

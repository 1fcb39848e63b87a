//! Retries for the registry calls a worker makes. Resolving a reference and fetching an
//! artifact are idempotent reads, so a registry that is briefly away (a rolling restart, a
//! dropped connection, a database failover answering 503) costs the caller a short wait
//! instead of a failed scoring request.

use async_trait::async_trait;
use bytes::Bytes;
use tracing::Instrument;

use super::{Credentials, ModelSource, ModelVersion};
use crate::error::{Result, ScoreError};
use lakescore_core::reference::ModelRef;
pub use lakescore_core::retry::RetryPolicy;

/// A model source whose calls are retried, as [`RetryPolicy`] says, while they fail with
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

    async fn run<T, F, Fut>(&self, what: &str, call: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let unavailable = |e: &ScoreError| matches!(e, ScoreError::Unavailable(_));
        let span = tracing::info_span!("registry", call = what);
        self.policy.retry("registry unavailable", unavailable, call).instrument(span).await
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
    use std::time::Duration;

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
        // REGISTRY's shape (5 retries, doubling from its first delay), scaled down, with a
        // budget no jittered sum of the five waits reaches (REGISTRY's own, scaled, could be
        // reached by jitter alone, and a loaded machine only adds to the time).
        let registry = RetryPolicy::REGISTRY.scaled_down(20);
        let policy =
            RetryPolicy::new(registry.retries, registry.first_delay, registry.max_delay, Duration::from_secs(30));
        let (n, waited) = calls(ScoreError::Unavailable("down".into()), policy).await;
        assert_eq!(n, 6, "the first attempt and 5 retries");
        assert!(waited >= Duration::from_millis(10 + 20 + 40 + 80 + 160), "backoff doubles: {waited:?}");
        let (n, _) = calls(ScoreError::NotFound("no model".into()), policy).await;
        assert_eq!(n, 1, "an answer is not retried");
        let (n, _) = calls(ScoreError::PermissionDenied("no".into()), policy).await;
        assert_eq!(n, 1);
        // Waits of 50-100, then 100-200, then 200-400 ms: the third retry would start past
        // 300 ms, so at most two are made (a slow machine can only make it fewer).
        let tight = RetryPolicy::new(5, Duration::from_millis(50), Duration::from_secs(1), Duration::from_millis(300));
        let (n, _) = calls(ScoreError::Unavailable("down".into()), tight).await;
        assert!((1..=3).contains(&n), "no retry starts past the budget: {n} calls");
    }
}

//! Retries for the registry calls a worker makes. Resolving a reference and fetching an
//! artifact are idempotent reads, so a registry that is briefly away (a rolling restart, a
//! dropped connection, a database failover answering 503) costs the caller a short wait
//! instead of a failed scoring request.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::{Credentials, ModelSource, ModelVersion};
use crate::error::{Result, ScoreError};
use crate::model_ref::ModelRef;

/// How often, and how patiently, [`RetryingSource`] tries again.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts after the first one.
    pub retries: u32,
    /// Wait before the first retry; doubled before each next one.
    pub first_backoff: Duration,
}

impl Default for RetryPolicy {
    /// 4 retries: after 0.2, 0.4, 0.8 and 1.6 s (3 s in all).
    fn default() -> Self {
        Self { retries: 4, first_backoff: Duration::from_millis(200) }
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
        let mut backoff = self.policy.first_backoff;
        let mut attempt = 0;
        loop {
            match call().await {
                Err(ScoreError::Unavailable(msg)) if attempt < self.policy.retries => {
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

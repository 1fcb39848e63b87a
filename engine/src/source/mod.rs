//! Where models come from: the [`ModelSource`] trait, with an HTTP implementation against
//! the registry REST API ([`HttpModelSource`]) and a local directory one
//! ([`DirModelSource`], `dir:///path`, for offline scoring and tests).

mod dir;
mod grpc;
mod http;
mod retry;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use sha2::{Digest, Sha256};

pub use dir::DirModelSource;
pub use grpc::GrpcModelSource;
pub use http::HttpModelSource;
pub use retry::{RetryPolicy, RetryingSource};

use crate::error::{Result, ScoreError};
use lakescore_core::reference::ModelRef;

/// The caller's credentials, forwarded unchanged to the registry (passthrough auth).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// The raw `authorization` header value (`Bearer <token>`), if the caller sent one.
    pub authorization: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("Credentials")
            .field("authorization", &self.authorization.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Credentials {
    /// No credentials.
    pub fn none() -> Self {
        Self::default()
    }

    /// From a raw `authorization` header value.
    pub fn bearer_header(value: impl Into<String>) -> Self {
        Self { authorization: Some(value.into()) }
    }
}

pub use lakescore_core::wire::{ModelVersion, VersionStatus};

/// Resolves model references and fetches artifacts. Implementations must forward the
/// caller's credentials so that the registry decides what the caller may score.
#[async_trait]
pub trait ModelSource: Send + Sync + 'static {
    /// Resolve a reference to a version record.
    async fn resolve(&self, reference: &ModelRef, creds: &Credentials) -> Result<ModelVersion>;

    /// Fetch the artifact bytes of a resolved version. Implementations verify the sha256
    /// (see [`verify_sha256`]).
    async fn fetch(&self, version: &ModelVersion, creds: &Credentials) -> Result<Bytes>;

    /// A short description for logs (`http://registry:8080`, `dir:///models`).
    fn describe(&self) -> String;
}

/// Hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Check that `bytes` hash to `expected` (hex, case-insensitive); `DATA_LOSS` otherwise.
pub fn verify_sha256(bytes: &[u8], expected: &str, what: &str) -> Result<()> {
    let got = sha256_hex(bytes);
    if got.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(ScoreError::DataLoss(format!(
            "artifact of {what} does not match its sha256 (expected {expected}, got {got})"
        )))
    }
}

/// Build a model source from a URL: `http(s)://host[:port][/prefix]` for the registry
/// REST API, `dir:///absolute/path` (or a plain absolute path) for a local directory.
pub fn model_source_from_url(url: &str, http: HttpSourceOptions) -> Result<Arc<dyn ModelSource>> {
    if let Some(path) = url.strip_prefix("dir://") {
        if path.is_empty() {
            return Err(ScoreError::invalid("dir:// model source needs a path (dir:///models)"));
        }
        return Ok(Arc::new(DirModelSource::new(path)?));
    }
    if url.starts_with('/') {
        return Ok(Arc::new(DirModelSource::new(url)?));
    }
    let parsed =
        url::Url::parse(url).map_err(|e| ScoreError::invalid(format!("invalid model source URL {url:?}: {e}")))?;
    match parsed.scheme() {
        // Registry calls are idempotent reads: retried while the registry is unavailable.
        "http" | "https" => {
            Ok(Arc::new(RetryingSource::new(HttpModelSource::new(parsed, http)?, RetryPolicy::REGISTRY)))
        }
        "grpc" => Ok(Arc::new(RetryingSource::new(GrpcModelSource::new(url, http)?, RetryPolicy::REGISTRY))),
        "file" => {
            let path = parsed.to_file_path().map_err(|_| ScoreError::invalid(format!("invalid file URL {url:?}")))?;
            Ok(Arc::new(DirModelSource::new(path)?))
        }
        other => Err(ScoreError::invalid(format!(
            "unsupported model source scheme {other:?} (use grpc:// or http(s):// for the registry, or dir:///path)"
        ))),
    }
}

/// The registry's HTTP API behind a model source URL: itself for `http(s)://`, the same
/// address for `grpc://` (the registry serves both on one port); `None` for a directory.
pub fn registry_http_url(model_source: &str) -> Option<url::Url> {
    let url = url::Url::parse(model_source).ok()?;
    match url.scheme() {
        "http" | "https" => Some(url),
        "grpc" => url::Url::parse(&format!("http://{}", url.authority())).ok(),
        _ => None,
    }
}

/// Options of the HTTP model source.
#[derive(Debug, Clone)]
pub struct HttpSourceOptions {
    /// Timeout for one registry request.
    pub timeout: std::time::Duration,
    /// Largest artifact the worker downloads.
    pub max_artifact_bytes: u64,
}

impl Default for HttpSourceOptions {
    fn default() -> Self {
        Self { timeout: std::time::Duration::from_secs(120), max_artifact_bytes: 2 << 30 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_debug_hides_the_token() {
        let c = Credentials::bearer_header("Bearer secret");
        assert!(!format!("{c:?}").contains("secret"));
    }

    #[test]
    fn verifies_sha256() {
        let h = sha256_hex(b"abc");
        assert!(verify_sha256(b"abc", &h.to_uppercase(), "m").is_ok());
        assert!(matches!(verify_sha256(b"abd", &h, "m"), Err(ScoreError::DataLoss(_))));
    }
}

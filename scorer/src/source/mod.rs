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
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use dir::DirModelSource;
pub use grpc::GrpcModelSource;
pub use http::HttpModelSource;
pub use retry::{RetryPolicy, RetryingSource};

use crate::error::{Result, ScoreError};
use crate::model_ref::ModelRef;

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

/// One dimension of a tensor shape in a signature: a size, a symbolic name, or unknown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Dim {
    /// A fixed size.
    Fixed(i64),
    /// A symbolic dimension (`N`, `batch`).
    Symbolic(String),
}

/// One input or output in a model signature, as the registry reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureIo {
    /// Input/output name.
    pub name: String,
    /// ONNX type string: `tensor(float)`, `seq(map(int64,tensor(float)))`.
    #[serde(rename = "type", default)]
    pub ty: String,
    /// Element type for tensors (`float`, `int64`, `string`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elem_type: Option<String>,
    /// Shape for tensors; `None` inside for unknown dims.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<Vec<Option<Dim>>>,
}

/// The model signature read from the ONNX file (only the parts the worker uses; other
/// fields of the registry's record are ignored).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// Graph inputs.
    #[serde(default)]
    pub inputs: Vec<SignatureIo>,
    /// Graph outputs.
    #[serde(default)]
    pub outputs: Vec<SignatureIo>,
}

/// A resolved model version: what `GET /api/v1/resolve/{reference}` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelVersion {
    /// Registered model name.
    pub model: String,
    /// Version number (from 1).
    pub version: u64,
    /// Hex sha256 of the artifact: the version's identity.
    pub sha256: String,
    /// Artifact size in bytes.
    #[serde(default)]
    pub size: u64,
    /// `ready` or `archived`.
    #[serde(default = "default_status")]
    pub status: String,
    /// The signature, when the source knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
}

fn default_status() -> String {
    "ready".to_string()
}

impl ModelVersion {
    /// `name:version`, the pinned reference of this version.
    pub fn pinned_reference(&self) -> String {
        format!("{}:{}", self.model, self.version)
    }
}

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
            Ok(Arc::new(RetryingSource::new(HttpModelSource::new(parsed, http)?, RetryPolicy::default())))
        }
        "grpc" => Ok(Arc::new(RetryingSource::new(GrpcModelSource::new(url, http)?, RetryPolicy::default()))),
        "file" => {
            let path = parsed.to_file_path().map_err(|_| ScoreError::invalid(format!("invalid file URL {url:?}")))?;
            Ok(Arc::new(DirModelSource::new(path)?))
        }
        other => Err(ScoreError::invalid(format!(
            "unsupported model source scheme {other:?} (use grpc:// or http(s):// for the registry, or dir:///path)"
        ))),
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
    fn parses_a_registry_record() {
        let json = r#"{"model": "fraud", "version": 3, "sha256": "ab", "size": 123, "status": "ready",
            "created_at": "2026-01-01T00:00:00Z", "tags": {"a": "b"},
            "signature": {"inputs": [{"name":"X","type":"tensor(float)","elem_type":"float","shape":["N",4]},
                                     {"name":"Y","type":"tensor(float)","elem_type":"float","shape":[null,1]}],
                          "outputs": [{"name":"p","type":"seq(map(int64,tensor(float)))"}],
                          "opset_imports": {"ai.onnx": 17}}}"#;
        let v: ModelVersion = serde_json::from_str(json).unwrap();
        assert_eq!(v.pinned_reference(), "fraud:3");
        let sig = v.signature.unwrap();
        assert_eq!(sig.inputs[0].shape.as_ref().unwrap(), &vec![Some(Dim::Symbolic("N".into())), Some(Dim::Fixed(4))]);
        assert_eq!(sig.inputs[1].shape.as_ref().unwrap()[0], None);
        assert_eq!(sig.outputs[0].shape, None);
    }

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

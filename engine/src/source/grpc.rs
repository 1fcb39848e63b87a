//! The registry's gRPC service (`proto/registry.proto`) as a model source: the transport
//! workers use in production. The caller's `authorization` metadata is forwarded unchanged.

use async_trait::async_trait;
use bytes::Bytes;
use lakescore_proto::registry::registry_client::RegistryClient;
use lakescore_proto::registry::{FetchArtifactRequest, ResolveModelRequest};
use tonic::transport::{Channel, Endpoint};

use super::{verify_sha256, Credentials, HttpSourceOptions, ModelSource, ModelVersion};
use crate::error::{Result, ScoreError};
use lakescore_core::reference::ModelRef;
use lakescore_core::ErrorCode;

/// Resolves and fetches models over the registry's gRPC service.
#[derive(Debug, Clone)]
pub struct GrpcModelSource {
    target: String,
    channel: Channel,
    options: HttpSourceOptions,
}

impl GrpcModelSource {
    /// `url` is `grpc://host:port` (the registry's HTTP port: gRPC is multiplexed there).
    pub fn new(url: &str, options: HttpSourceOptions) -> Result<Self> {
        let hostport = url
            .strip_prefix("grpc://")
            .filter(|h| !h.is_empty())
            .ok_or_else(|| ScoreError::invalid(format!("invalid gRPC registry URL {url:?} (grpc://host:port)")))?;
        let endpoint = Endpoint::from_shared(format!("http://{hostport}"))
            .map_err(|e| ScoreError::invalid(format!("invalid gRPC registry URL {url:?}: {e}")))?
            .timeout(options.timeout)
            .connect_timeout(std::time::Duration::from_secs(10));
        // Connects on first use, and reconnects after the registry restarts.
        Ok(Self { target: url.to_string(), channel: endpoint.connect_lazy(), options })
    }

    fn request<T>(&self, message: T, creds: &Credentials) -> Result<tonic::Request<T>> {
        let mut req = tonic::Request::new(message);
        if let Some(auth) = &creds.authorization {
            let value = auth
                .parse()
                .map_err(|_| ScoreError::Unauthenticated("the authorization header is not valid metadata".into()))?;
            req.metadata_mut().insert("authorization", value);
        }
        Ok(req)
    }
}

/// A registry answer that is not OK, as the worker's error: the same code (decoded once,
/// by `ErrorCode::from_grpc`), with what the worker was doing.
fn status_error(what: &str, s: tonic::Status) -> ScoreError {
    let code = ErrorCode::from_grpc(&s);
    if code == ErrorCode::Unavailable {
        return ScoreError::Unavailable(format!("{what}: registry unavailable: {}", s.message()));
    }
    ScoreError::from_code(code, format!("{what}: {}", s.message()))
}

#[async_trait]
impl ModelSource for GrpcModelSource {
    async fn resolve(&self, reference: &ModelRef, creds: &Credentials) -> Result<ModelVersion> {
        let reference_str = reference.to_string();
        let what = format!("resolving model {reference_str}");
        let mut client = RegistryClient::new(self.channel.clone());
        let resp = client
            .resolve_model(self.request(ResolveModelRequest { reference: reference_str.clone() }, creds)?)
            .await
            .map_err(|s| status_error(&what, s))?
            .into_inner();
        let mut version: ModelVersion = serde_json::from_str(&resp.record_json)
            .map_err(|e| ScoreError::Internal(format!("{what}: the registry's answer is not a version record: {e}")))?;
        if version.model != reference.name || version.sha256 != resp.sha256 {
            return Err(ScoreError::Internal(format!("{what}: inconsistent answer from the registry")));
        }
        // The typed status is authoritative: a worker never scores a version the registry
        // says is archived, whatever the JSON record says.
        version.status =
            resp.version_status().try_into().map_err(|e: String| ScoreError::Internal(format!("{what}: {e}")))?;
        Ok(version)
    }

    async fn fetch(&self, version: &ModelVersion, creds: &Credentials) -> Result<Bytes> {
        let what = format!("fetching the artifact of {}", version.pinned_reference());
        let limit = self.options.max_artifact_bytes;
        if version.size.max(0) as u64 > limit {
            return Err(ScoreError::ResourceExhausted(format!(
                "{what}: {} bytes is over the worker's limit of {limit} bytes",
                version.size
            )));
        }
        let mut client = RegistryClient::new(self.channel.clone());
        let request = FetchArtifactRequest { model: version.model.clone(), version: version.version };
        let mut stream = client
            .fetch_artifact(self.request(request, creds)?)
            .await
            .map_err(|s| status_error(&what, s))?
            .into_inner();
        let mut body = Vec::with_capacity((version.size.max(0) as u64).min(limit) as usize);
        while let Some(chunk) = stream.message().await.map_err(|s| status_error(&what, s))? {
            if (body.len() + chunk.data.len()) as u64 > limit {
                return Err(ScoreError::ResourceExhausted(format!(
                    "{what}: artifact over the worker's limit of {limit} bytes"
                )));
            }
            body.extend_from_slice(&chunk.data);
        }
        verify_sha256(&body, &version.sha256, &version.pinned_reference())?;
        Ok(Bytes::from(body))
    }

    fn describe(&self) -> String {
        self.target.clone()
    }
}

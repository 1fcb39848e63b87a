//! The registry's gRPC service for scoring workers (`proto/registry.proto`), multiplexed
//! on the HTTP port. Calls authenticate with the bearer token the worker passes through,
//! and go through the same authorization as the REST API.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use lakescore_proto::registry::registry_server::{Registry as RegistryService, RegistryServer};
use lakescore_proto::registry::{ArtifactChunk, FetchArtifactRequest, ResolveModelRequest, ResolveModelResponse};
use tonic::{Request, Response, Status};

use crate::auth::Caller;
use crate::service::Registry;

/// Largest chunk of an artifact in one message (well under gRPC's 4 MiB default).
const CHUNK: usize = 1 << 20;

/// The tonic service as mounted on the registry's router.
pub type Server = RegistryServer<GrpcRegistry>;

pub struct GrpcRegistry {
    registry: Registry,
}

impl GrpcRegistry {
    pub fn server(registry: Registry) -> RegistryServer<Self> {
        RegistryServer::new(Self { registry })
    }

    async fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let header = match request.metadata().get("authorization") {
            Some(v) => Some(v.to_str().map_err(|_| Status::unauthenticated("the authorization header is not ASCII"))?),
            None => None,
        };
        Ok(self.registry.authenticator().authenticate(header).await?)
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<ArtifactChunk, Status>> + Send>>;

#[tonic::async_trait]
impl RegistryService for GrpcRegistry {
    async fn resolve_model(
        &self,
        request: Request<ResolveModelRequest>,
    ) -> Result<Response<ResolveModelResponse>, Status> {
        let caller = self.caller(&request).await?;
        let v = self.registry.resolve(&caller, &request.get_ref().reference).await?;
        let record_json = serde_json::to_string(&v).map_err(|e| Status::internal(e.to_string()))?;
        let version_status = lakescore_proto::registry::VersionStatus::from(v.status) as i32;
        Ok(Response::new(ResolveModelResponse {
            model: v.model,
            version: v.version,
            sha256: v.sha256,
            size: v.size,
            record_json,
            version_status,
        }))
    }

    type FetchArtifactStream = ChunkStream;

    async fn fetch_artifact(&self, request: Request<FetchArtifactRequest>) -> Result<Response<ChunkStream>, Status> {
        let caller = self.caller(&request).await?;
        let req = request.into_inner();
        let stream = self.registry.artifact(&caller, &req.model, req.version).await?.stream(None).await?;
        // Re-chunk storage reads to bounded message sizes.
        let chunks = stream.flat_map(|piece| {
            let out: Vec<Result<ArtifactChunk, Status>> = match piece {
                Ok(bytes) => (0..bytes.len())
                    .step_by(CHUNK)
                    .map(|at| Ok(ArtifactChunk { data: bytes.slice(at..(at + CHUNK).min(bytes.len())).to_vec() }))
                    .collect(),
                Err(e) => vec![Err(Status::from(e))],
            };
            futures::stream::iter(out)
        });
        Ok(Response::new(Box::pin(chunks)))
    }
}

//! The registry's gRPC service for scoring workers (`proto/registry.proto`), multiplexed
//! on the HTTP port. Calls authenticate with the bearer token the worker passes through,
//! and go through the same authorization as the REST API.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use lakescore_proto::registry::registry_server::{Registry as RegistryService, RegistryServer};
use lakescore_proto::registry::{ArtifactChunk, FetchArtifactRequest, ResolveModelRequest, ResolveModelResponse};
use tonic::{Request, Response, Status};

use crate::auth::Caller;
use crate::error::RegistryError;
use crate::reference::ModelRef;
use crate::service::{Need, Registry};

/// Largest chunk of an artifact in one message (well under gRPC's 4 MiB default).
const CHUNK: usize = 1 << 20;

impl From<RegistryError> for Status {
    fn from(e: RegistryError) -> Self {
        let msg = e.to_string();
        match e {
            RegistryError::BadRequest(_) | RegistryError::InvalidModel(_) => Status::invalid_argument(msg),
            RegistryError::Unauthorized(_) => Status::unauthenticated(msg),
            RegistryError::Forbidden(_) => Status::permission_denied(msg),
            RegistryError::NotFound(_) => Status::not_found(msg),
            RegistryError::Conflict(_) => Status::already_exists(msg),
            RegistryError::PayloadTooLarge(_) => Status::resource_exhausted(msg),
            RegistryError::UnsupportedMediaType(_) | RegistryError::RangeNotSatisfiable(_) => {
                Status::invalid_argument(msg)
            }
            RegistryError::Unavailable(_) => Status::unavailable(msg),
            RegistryError::Internal(_) => Status::internal(msg),
        }
    }
}

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
        Ok(self.registry.auth.authenticate(header).await?)
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
        let reference = ModelRef::parse(&request.get_ref().reference)?;
        self.registry.authorize(&caller, reference.model_name(), Need::Read).await?;
        let v = self.registry.store.resolve(&reference).await?;
        let record_json = serde_json::to_string(&v).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(ResolveModelResponse {
            model: v.model,
            version: v.version,
            sha256: v.sha256,
            size: v.size,
            status: format!("{:?}", v.status).to_lowercase(),
            record_json,
        }))
    }

    type FetchArtifactStream = ChunkStream;

    async fn fetch_artifact(&self, request: Request<FetchArtifactRequest>) -> Result<Response<ChunkStream>, Status> {
        let caller = self.caller(&request).await?;
        let req = request.into_inner();
        self.registry.authorize(&caller, &req.model, Need::Read).await?;
        let v = self.registry.store.get_version(&req.model, req.version).await?;
        let stream = self.registry.artifacts.get(&v.sha256, None).await?;
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

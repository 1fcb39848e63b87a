//! lakescore's model registry: versioned ONNX models over HTTP, metadata in SQLite or
//! PostgreSQL, artifacts in object storage.

pub mod api;
pub mod artifacts;
pub mod auth;
pub mod config;
pub mod db;
pub mod error;
pub mod failpoint;
pub mod filter;
pub mod grpc;
pub mod metrics;
pub mod oidc;
pub mod onnx;
pub mod service;

use std::future::Future;

pub use auth::{AuthConfig, Caller};
pub use config::RegistryConfig;
pub use error::{RegistryError, Result};
pub use service::Registry;

/// Serves the registry's HTTP API on `listener` until `shutdown` resolves, then drains
/// in-flight requests and closes the database pool.
pub async fn serve(
    registry: Registry,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    metrics::init();
    // Keys are fetched beside serving, not before it: an issuer that hangs must not hold
    // up start-up (readiness says "not ready" until they are held).
    let auth = registry.authenticator().clone();
    tokio::spawn(async move { auth.warm().await });
    // gRPC (for scoring workers) and REST share the port: requests are told apart by
    // their content type, and HTTP/2 without TLS (h2c) is accepted beside HTTP/1.1.
    let app = api::router(registry.clone());
    let addr = listener.local_addr()?;
    tracing::info!(%addr, database = %db::redact_url(&registry.config().effective_database_url()),
        storage = registry.storage_description(), "registry listening");
    let served = axum::serve(listener, app).with_graceful_shutdown(shutdown).await;
    registry.close().await;
    served
}

//! lakescore's model registry: versioned ONNX models over HTTP, metadata in SQLite or
//! PostgreSQL, artifacts in object storage.
//!
//! It owns the registry's service, its REST and gRPC transports, the database, the artifact
//! store, ONNX inspection and OIDC auth. Of the worker's crates it may use only
//! `lakescore-engine`'s compatibility probe (without ONNX Runtime): never the lake, the
//! Flight transport or SQL.

pub mod api;
pub mod artifacts;
pub mod auth;
pub mod config;
pub mod db;
pub mod error;
pub mod filter;
pub mod grpc;
pub mod metrics;
pub mod mlflow;
pub mod oidc;
pub mod onnx;
pub mod resolve_cache;
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
    let served = serve_http(listener, app, shutdown).await;
    registry.close().await;
    served
}

/// Largest HTTP/2 header list (bytes) the registry accepts. Workers pass callers' tokens
/// through, and an Entra token with many groups or roles runs to tens of KiB; hyper's
/// default (16 KiB) refused them, which is why this is not `axum::serve`.
pub const MAX_HEADER_LIST_BYTES: u32 = 256 << 10;

/// Puts the caller's address in each request (`ConnectInfo`), for handlers and for the log
/// of refused calls.
fn with_peer<B>(peer: std::net::SocketAddr) -> impl Fn(http::Request<B>) -> http::Request<B> + Clone {
    move |mut req| {
        req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
        req
    }
}

/// HTTP/1.1 and HTTP/2 (h2c, for the workers' gRPC) on `listener` until `shutdown`
/// resolves; then stops accepting, lets every connection finish its in-flight requests
/// (graceful shutdown), and returns once they have.
async fn serve_http(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;

    let mut builder = Builder::new(TokioExecutor::new());
    // Headroom above the limit: a request over it is answered by `api::limit_headers` on its
    // own stream; only past four times the limit does hyper refuse it with GOAWAY.
    builder.http2().max_header_list_size(MAX_HEADER_LIST_BYTES.saturating_mul(4));
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: pass, rather than spin or exit.
                    tracing::warn!(error = %e, "could not accept a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(tower::ServiceExt::map_request(app.clone(), with_peer(peer)));
        let builder = builder.clone();
        let mut stopping = stopping.clone();
        connections.spawn(async move {
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                done = connection.as_mut() => {
                    if let Err(e) = done {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = stopping.changed() => connection.as_mut().graceful_shutdown(),
            }
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error while shutting down");
            }
        });
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let _ = stop.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

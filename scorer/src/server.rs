//! Serving the Flight service on a TCP listener.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::config::ScorerConfig;
use crate::error::{Result, ScoreError};
use crate::flight::ScorerService;
use crate::scorer::Scorer;

/// Build the scorer from `config` (loading ONNX Runtime, connecting the model source) and
/// serve Arrow Flight on `listener` until `shutdown` completes.
pub async fn serve<F>(config: ScorerConfig, listener: TcpListener, shutdown: F) -> Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let scorer = tokio::task::spawn_blocking(move || Scorer::from_config(config)).await??;
    serve_scorer(Arc::new(scorer), listener, shutdown).await
}

/// Serve an already built scorer on `listener` until `shutdown` completes.
pub async fn serve_scorer<F>(scorer: Arc<Scorer>, listener: TcpListener, shutdown: F) -> Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    serve_service(ScorerService::new(scorer), listener, shutdown).await
}

/// Serve a configured Flight service (e.g. with a token validator) until `shutdown` completes.
pub async fn serve_service<F>(service: ScorerService, listener: TcpListener, shutdown: F) -> Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let scorer = service.scorer().clone();
    let addr = listener.local_addr().ok();
    tracing::info!(
        addr = ?addr,
        model_source = %scorer.cache().source().describe(),
        engine = scorer.cache().engine().name(),
        "scoring worker (Arrow Flight) listening"
    );
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        // Flow-control windows sized from the measured bandwidth-delay product (as gRPC C++
        // does), not HTTP/2's fixed 64 KiB: with a fixed window a multi-megabyte batch
        // crawls in window-sized round trips (benches/scoring.py: logreg20 DoExchange
        // 4.1 M → 5.8 M rows/s on localhost).
        .http2_adaptive_window(Some(true))
        // Room above the worker's own limit, so that a call over it is answered on its own
        // stream (RESOURCE_EXHAUSTED, see `FlightServer`) instead of by GOAWAY.
        .http2_max_header_list_size(
            scorer.config().max_header_list_bytes.saturating_mul(crate::flight::TRANSPORT_HEADER_HEADROOM),
        )
        .add_service(service.into_server())
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
        .map_err(|e| ScoreError::Unavailable(format!("Flight server failed: {e}")))
}

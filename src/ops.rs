//! The scoring worker's operations listener: `/metrics` (Prometheus text: scoring, the
//! model cache, Flight calls, jobs, SQL), `/healthz` (the process answers) and `/readyz`
//! (the worker takes calls: the same state its `grpc.health.v1` service reports).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use lakescore_scorer::WorkerHealth;

/// Serves the listener until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    health: WorkerHealth,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    lakescore_core::metrics::init();
    let addr = listener.local_addr().ok();
    let app = Router::new()
        .route("/metrics", get(|| async { metrics() }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(move || async move { ready(&health) }));
    tracing::info!(addr = ?addr, "worker metrics and health listening (/metrics, /healthz, /readyz)");
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
    Ok(())
}

fn metrics() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"))], lakescore_core::metrics::render())
}

fn ready(health: &WorkerHealth) -> impl IntoResponse {
    if health.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not serving: the model source has not answered yet, or the worker is draining",
        )
    }
}

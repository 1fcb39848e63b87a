//! Serving the Flight service on a TCP listener.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use lakescore_engine::error::{Result, ScoreError};

use crate::health::WorkerHealth;
use crate::service::ScorerService;

/// Bytes a client may send on one call before the worker reads them: above one 65,536-row
/// batch of 20 float32 features (5 MiB), so that a batch streams without waiting on reads.
const STREAM_WINDOW_BYTES: u32 = 8 << 20;
/// Bytes a client may send on all the calls of one connection before the worker reads them.
const CONNECTION_WINDOW_BYTES: u32 = 16 << 20;
/// The largest HTTP/2 DATA frame a client may send (the protocol's default is 16 KiB).
const MAX_FRAME_BYTES: u32 = 1 << 20;

/// Serve a configured Flight service (e.g. with a token validator) until `shutdown` completes,
/// with `grpc.health.v1.Health` beside it reporting `health` (serving once the model source
/// answers, not serving from the moment `shutdown` completes).
pub async fn serve_service<F>(
    service: ScorerService,
    listener: TcpListener,
    shutdown: F,
    health: WorkerHealth,
) -> Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let scorer = service.scorer().clone();
    let draining = Arc::new(AtomicBool::new(false));
    let probe = {
        let (health, source, draining) = (health.clone(), scorer.cache().source().clone(), draining.clone());
        tokio::spawn(async move { health.serve_when_source_answers(source, draining).await })
    };
    let health_service = health.service();
    let shutdown = async move {
        shutdown.await;
        draining.store(true, Ordering::SeqCst);
        probe.abort();
        health.set(false).await;
    };
    let addr = listener.local_addr().ok();
    tracing::info!(
        addr = ?addr,
        model_source = %scorer.cache().source().describe(),
        engine = scorer.cache().engine().name(),
        "scoring worker (Arrow Flight) listening"
    );
    tonic::transport::Server::builder()
        // HTTP/2 flow-control windows: with hyper's 1 MiB default a 5 MiB batch crawls in
        // window-sized round trips (benches/scoring.py, logreg20 DoExchange: 4.1 M → 5.7 M
        // rows/s). Fixed rather than adaptive (hyper's BDP estimate): on localhost that
        // estimate settled low on about one connection in three (3.9 M instead of 7 M).
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        // Larger DATA frames from clients: h2 reads a connection in reads sized by the frame
        // it waits for, so at the 16 KiB default a 2 MiB message took 256 read calls.
        .max_frame_size(Some(MAX_FRAME_BYTES))
        // Room above the worker's own limit, so that a call over it is answered on its own
        // stream (RESOURCE_EXHAUSTED, see `FlightServer`) instead of by GOAWAY.
        .http2_max_header_list_size(
            scorer.config().max_header_list_bytes.saturating_mul(crate::service::TRANSPORT_HEADER_HEADROOM),
        )
        .add_service(service.into_server())
        .add_service(health_service)
        // Nagle off on every connection: tonic's `tcp_nodelay` is ignored for an incoming
        // stream of our own, and with it on a small call's response waited for the client's
        // delayed ACK (1,000-row DoExchange calls: p90 44 ms instead of 1.5 ms).
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), shutdown)
        .await
        .map_err(|e| ScoreError::Unavailable(format!("Flight server failed: {e}")))
}

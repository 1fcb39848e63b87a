//! Whether the worker can take calls: `grpc.health.v1.Health` on the Flight port (what
//! Kubernetes' gRPC probes ask) and the same answer for the worker's `/readyz`.
//!
//! Serving once the engine is loaded (the worker exists) and its model source has answered
//! a lookup (any answer but "unreachable": a registry that refuses an anonymous probe is up);
//! not serving again from the moment the worker starts draining.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lakescore_core::reference::ModelRef;
use lakescore_engine::source::{Credentials, ModelSource};
use lakescore_engine::ScoreError;
use tonic::server::NamedService;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};
use tonic_health::ServingStatus;

/// How often the model source is asked while it has not answered yet.
const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// A name no model has (names start with a letter or digit).
const PROBE_MODEL: &str = "lakescore-readiness-probe";

/// The worker's serving state, shared by the gRPC health service and `/readyz`.
#[derive(Clone, Debug)]
pub struct WorkerHealth {
    reporter: HealthReporter,
    ready: Arc<AtomicBool>,
}

impl WorkerHealth {
    /// A health state starting as not serving.
    pub async fn new() -> Self {
        let health = Self { reporter: HealthReporter::new(), ready: Arc::new(AtomicBool::new(false)) };
        health.set(false).await;
        health
    }

    /// The `grpc.health.v1.Health` service reporting this state: for the whole server
    /// (`""`) and for the Flight service by name.
    pub fn service(&self) -> HealthServer<HealthService> {
        HealthServer::new(HealthService::from_health_reporter(self.reporter.clone()))
    }

    /// Whether the worker takes calls now.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Reports serving (or not) everywhere at once.
    pub async fn set(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
        let status = if ready { ServingStatus::Serving } else { ServingStatus::NotServing };
        self.reporter.set_service_status("", status).await;
        let flight = <crate::service::FlightServer as NamedService>::NAME;
        self.reporter.set_service_status(flight, status).await;
    }

    /// Asks `source` until it answers, then reports serving (unless draining started).
    pub async fn serve_when_source_answers(&self, source: Arc<dyn ModelSource>, draining: Arc<AtomicBool>) {
        let Ok(probe) = ModelRef::parse(PROBE_MODEL) else { return };
        loop {
            match source.resolve(&probe, &Credentials::none()).await {
                Err(e @ (ScoreError::Unavailable(_) | ScoreError::DeadlineExceeded(_))) => {
                    tracing::warn!(source = %source.describe(), error = %e, "model source not reachable yet: not serving");
                }
                _ => {
                    if !draining.load(Ordering::SeqCst) {
                        self.set(true).await;
                        tracing::info!(source = %source.describe(), "model source answered: serving");
                    }
                    return;
                }
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }
}

//! lakescore's scoring worker, composed: the scoring core (`lakescore-engine`), lake I/O
//! (`lakescore-lake`), the Arrow Flight transport (`lakescore-flight`) and, when the
//! configuration turns it on, Flight SQL (`lakescore-sql`) on the same port.
//!
//! Entry points: [`serve`] (config + listener + shutdown), or [`service`] to mount the
//! Flight service yourself (e.g. with a token validator) and serve it with
//! [`serve_service`]. The modules of the crates below are re-exported under their names.

#![warn(missing_docs)]

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

pub use lakescore_engine::{cache, config, engine, error, mapping, scorer, source};
pub use lakescore_flight::{input as flight_input, output as flight_output, router, service as flight};
pub use lakescore_lake::{job, lake, manifest, sink, storage, writer};

pub use lakescore_engine::{
    find_onnxruntime, proto, Backend, Credentials, DirModelSource, GraphOptimization, GrpcModelSource, HttpModelSource,
    ModelSource, ModelVersion, OrtEngine, OrtOptions, ResolvedModel, ScoreError, Scorer, ScorerConfig, TractEngine,
    TreesEngine,
};
pub use lakescore_flight::{
    serve_service, FlightServer, FlightSqlFront, ScorerService, TokenValidator, WorkerHealth, ACTION_DESCRIBE,
    ACTION_SCORE_DATASET, ACTION_WARM,
};
pub use lakescore_lake::{Lake, OutputSummary, MANIFEST_NAME};
pub use lakescore_sql::SqlEngine;

use error::Result;

/// The Flight service over `scorer`: its lake (the configured storage roots), its batch
/// jobs, and Flight SQL when `sql.enabled`.
pub fn service(scorer: Arc<Scorer>) -> Result<ScorerService> {
    let sql_enabled = scorer.config().sql.enabled;
    let lake = Arc::new(Lake::new(scorer)?);
    let service = ScorerService::new(lake.clone());
    Ok(match sql_enabled {
        true => service.with_sql(Arc::new(SqlEngine::new(lake))),
        false => service,
    })
}

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
    serve_service(service(scorer)?, listener, shutdown, WorkerHealth::new().await).await
}

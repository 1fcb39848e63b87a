//! lakescore scoring worker: an Arrow Flight service that scores record batches with
//! registered ONNX models (tree ensembles and linear models natively, the rest on ONNX Runtime via `ort`, or tract-onnx as the pure-Rust fallback) and writes enriched Parquet back to
//! object storage.
//!
//! Entry points: [`serve`] (config + listener + shutdown), or [`Scorer`] +
//! [`ScorerService`] to mount the Flight service yourself.

#![warn(missing_docs)]

pub mod cache;
pub mod config;
pub mod engine;
pub mod error;
pub mod flight_input;
mod flight_output;
pub mod job;
pub mod mapping;

pub mod flight;
pub mod scorer;
pub mod server;
pub mod source;
#[cfg(feature = "sql")]
pub mod sql;
pub mod storage;

pub use config::{Backend, ScorerConfig};
pub use engine::ort::{find_onnxruntime, GraphOptimization, OrtEngine, OrtOptions};
pub use engine::tract::TractEngine;
pub use engine::trees::TreesEngine;
pub use error::ScoreError;
pub use flight::{FlightServer, ScorerService, TokenValidator, ACTION_DESCRIBE, ACTION_SCORE_DATASET, ACTION_WARM};
pub use lakescore_proto as proto;
pub use scorer::{ResolvedModel, Scorer};
pub use server::{serve, serve_scorer, serve_service};
pub use source::{Credentials, DirModelSource, GrpcModelSource, HttpModelSource, ModelSource, ModelVersion};
pub use storage::{OutputSummary, MANIFEST_NAME};

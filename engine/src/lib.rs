//! lakescore's scoring core: everything between "a model reference and Arrow record batches"
//! and "the enriched batches".
//!
//! Owns the [`engine::Engine`] trait and its adapters (the native tree and linear engine,
//! ONNX Runtime through `ort`, tract), the Arrow ↔ tensor [`mapping`], the [`cache`] of
//! loaded models, the model [`source`]s (registry over HTTP or gRPC, a directory), the
//! worker's typed [`config`], its one error type ([`error::ScoreError`]), and the
//! [`scorer::Scorer`] that ties them together.
//!
//! Features: `ort` (ONNX Runtime, loaded at run time from the `onnxruntime` wheel's library)
//! and `tract` (the pure-Rust fallback), both default; without them the crate is the native
//! engine, the mapping and the model cache alone (what the fuzz targets need; the
//! registry's [`compatibility`] probe takes `tract` alone).
//!
//! It knows nothing of storage, transports or SQL: it may not depend on `lakescore-lake`,
//! `lakescore-flight` or `lakescore-sql` (they depend on it).

#![warn(missing_docs)]

pub mod cache;
pub mod compatibility;
pub mod config;
pub mod engine;
pub mod error;
pub mod mapping;
pub mod metrics;
pub mod scorer;
pub mod source;

pub use config::{Backend, GraphOptimization, ScorerConfig};
#[cfg(feature = "ort")]
pub use engine::ort::{find_onnxruntime, OrtEngine, OrtOptions};
#[cfg(feature = "tract")]
pub use engine::tract::TractEngine;
pub use engine::trees::TreesEngine;
pub use error::ScoreError;
pub use lakescore_proto as proto;
pub use scorer::{BatchStream, ResolvedModel, Scorer};
pub use source::{Credentials, DirModelSource, GrpcModelSource, HttpModelSource, ModelSource, ModelVersion};

//! lakescore's lake I/O: scoring where the data lives.
//!
//! Owns the storage roots and URL policy and the Parquet reader adapter ([`storage`]), the
//! parallel Parquet writer ([`writer`]), the [`sink::OutputSink`] every write path goes through
//! (and the commits behind it: data files, then a Delta table's commit ([`delta`]) or the
//! [`manifest`]), [`lake::Lake`]
//! (`score-dataset` and the reads behind DoGet), and batch jobs ([`job::JobManager`]).
//!
//! It depends on `lakescore-engine` for scoring, and may not depend on the transports
//! (`lakescore-flight`, `lakescore-sql`): they call it.

#![warn(missing_docs)]

pub mod delta;
pub mod job;
pub mod lake;
pub mod manifest;
pub mod sink;
pub mod storage;
pub mod writer;

pub use job::JobManager;
pub use lake::{job_id, Input, InputFile, Lake, OutputFormat};
pub use manifest::{Manifest, ManifestModel, MANIFEST_NAME};
pub use sink::{Commit, Committed, OutputSink};
pub use storage::{Location, Storage};
pub use writer::OutputSummary;

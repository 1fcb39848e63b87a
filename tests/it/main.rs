//! lakescore's integration tests, as one test binary (one link instead of one per file,
//! on 2 cores). `common` is the harness of the tests that run the `lakescore` binary
//! (registry, workers, CLI, identity providers, the database, object stores); `worker` the
//! harness of those that run a scoring worker in process (`worker_*`).
//!
//! Run one group with `scripts/test --test it -- sql::` (a module path filter), or one test
//! by name. `tests/tract.rs` is a binary of its own: it needs a process in which ONNX
//! Runtime was never loaded.

#[macro_use]
mod common;
mod worker;

mod auth;
mod batch_jobs;
mod cli;
mod faults;
mod fuzz_replay;
mod identity_provider;
mod image;
mod load;
mod registry_api;
mod registry_azure;
mod scoring_e2e;
mod sql;
mod worker_flight;
mod worker_hostile_input;
mod worker_ops;
mod worker_trees;

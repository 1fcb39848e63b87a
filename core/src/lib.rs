//! lakescore's shared vocabulary: what the registry, the scoring worker and the CLI must
//! agree on, written once.
//!
//! - [`reference`]: the model reference grammar (`name`, `name:7`, `name@alias`);
//! - [`wire`]: the records the registry serves and workers and clients read (models,
//!   versions with their [`wire::VersionStatus`], signatures, grants, audit entries, pages);
//! - [`store`]: [`store::open_store`], the one way a storage URL becomes an object store;
//! - [`error`]: [`error::ErrorCode`], from which each crate's errors get both their HTTP
//!   status and their gRPC code, and through which incoming gRPC statuses are decoded;
//! - [`retry`]: [`retry::RetryPolicy`], the one way a call is tried again.
//!
//! It depends on `lakescore-proto` alone of lakescore's crates, and on no engine, storage
//! layout or transport of its own: every other crate depends on it.

pub mod error;
pub mod failpoint;
pub mod metrics;
pub mod reference;
pub mod retry;
pub mod store;
pub mod wire;

pub use error::ErrorCode;
pub use reference::{ModelRef, ReferenceError, VersionSelector};

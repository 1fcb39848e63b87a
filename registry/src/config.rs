//! The registry's typed configuration. The binary fills it from flags, `LAKESCORE_*`
//! environment variables and an optional TOML file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Default upload cap: 1 GiB.
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 1 << 30;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// HTTP listen address.
    pub listen: SocketAddr,
    /// `sqlite://…` or `postgres://…`. Default: SQLite under `data_dir`.
    pub database_url: Option<String>,
    /// Object storage URL for artifacts (`file:///…`, `s3://…`, `az://…`, `gs://…`).
    /// Default: the local directory `data_dir/artifacts`.
    pub storage_url: Option<String>,
    /// object_store configuration keys for the artifact store (credentials, endpoint,
    /// `allow_http`, …), over what the environment (`AWS_*`, `AZURE_*`, `GOOGLE_*`) gives.
    pub storage_options: BTreeMap<String, String>,
    /// How long a storage request is retried (with backoff) before the caller gets a 503.
    pub storage_retry_timeout_secs: u64,
    /// How many times a failed storage request is retried.
    pub storage_max_retries: usize,
    /// Where the embedded defaults keep their files.
    pub data_dir: PathBuf,
    /// Largest accepted artifact, in bytes.
    pub max_upload_bytes: u64,
    /// Operator domains a model may use (see `onnx::DEFAULT_ALLOWED_OP_DOMAINS`).
    pub allowed_op_domains: Vec<String>,
    /// A model whose graph makes a tensor of constant shape larger than this many bytes is
    /// refused at registration; keep it equal to the workers' `max_inference_bytes` (0: no
    /// bound).
    pub max_inference_bytes: u64,
    /// Maximum database connections.
    pub db_max_connections: u32,
    /// Longest a database statement may run or wait for a lock (PostgreSQL
    /// `statement_timeout`, SQLite busy timeout) before the caller gets a 503.
    pub db_statement_timeout_secs: u64,
    /// How long a resolved reference (`fraud@champion` → version) is answered from memory.
    /// A write through this process drops every cached answer at once; this bounds how long
    /// a write through another replica (several registries on one PostgreSQL) goes unseen.
    /// `0` turns the cache off.
    pub resolve_cache_ms: u64,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: None,
            storage_url: None,
            storage_options: BTreeMap::new(),
            storage_retry_timeout_secs: 30,
            storage_max_retries: 3,
            data_dir: PathBuf::from("lakescore-data"),
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            allowed_op_domains: crate::onnx::DEFAULT_ALLOWED_OP_DOMAINS.iter().map(|s| s.to_string()).collect(),
            max_inference_bytes: 4 << 30,
            db_max_connections: 16,
            db_statement_timeout_secs: 30,
            resolve_cache_ms: 2000,
        }
    }
}

impl RegistryConfig {
    /// How the artifact store is opened: its options and retry policy.
    pub fn store_options(&self) -> lakescore_core::store::StoreOptions {
        lakescore_core::store::StoreOptions {
            options: self.storage_options.clone(),
            retry: object_store::RetryConfig {
                max_retries: self.storage_max_retries,
                retry_timeout: std::time::Duration::from_secs(self.storage_retry_timeout_secs),
                ..lakescore_core::store::default_retry()
            },
        }
    }

    /// The database URL in effect: the configured one, else SQLite under `data_dir`.
    pub fn effective_database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}?mode=rwc", self.data_dir.join("registry.db").display()),
        }
    }
}

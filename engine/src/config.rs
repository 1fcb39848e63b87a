//! The worker's typed configuration.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Configuration of a scoring worker. `Default` gives the embedded `lakescore serve`
/// settings except for `model_source`, which must be set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScorerConfig {
    /// Arrow Flight listen address.
    pub listen: std::net::SocketAddr,
    /// Where models come from: the registry root URL (`http://127.0.0.1:8080`), or
    /// `dir:///path` for a local directory of ONNX files.
    pub model_source: String,
    /// Inference engine: `auto` (tree ensembles and linear models natively, the rest on ONNX
    /// Runtime when its library loads, else tract), `ort`, `trees` or `tract`.
    pub backend: Backend,
    /// The ONNX Runtime shared library (`--onnxruntime-lib`); `None`: searched, see
    /// `find_onnxruntime` (the `ort` feature's engine).
    pub onnxruntime_lib: Option<PathBuf>,
    /// Threads one inference call uses; 0: one per core.
    pub intra_op_threads: usize,
    /// ONNX Runtime graph optimization level.
    pub graph_optimization: GraphOptimization,
    /// Bytes of model artifacts kept loaded (LRU); the model in use is always kept.
    pub model_cache_bytes: u64,
    /// Rows per inference call: incoming batches are split / merged to this size.
    pub inference_batch_rows: usize,
    /// Largest incoming record batch, in rows; larger: `RESOURCE_EXHAUSTED`.
    pub max_batch_rows: usize,
    /// Largest incoming record batch, in bytes of Arrow memory; larger: `RESOURCE_EXHAUSTED`.
    pub max_batch_bytes: usize,
    /// Largest gRPC message the worker accepts (bytes).
    pub max_message_bytes: usize,
    /// Largest HTTP/2 header list of a call (bytes): room for large bearer tokens (an Entra
    /// token with many groups or roles runs to tens of KiB). A call over it gets
    /// `RESOURCE_EXHAUSTED` on its own stream; only past four times this does the transport
    /// close the connection.
    pub max_header_list_bytes: u32,
    /// Rows per output Parquet file before a new file is started.
    pub max_rows_per_file: usize,
    /// Rows per Parquet row group.
    pub row_group_rows: usize,
    /// Storage URL prefixes that commands may read from / write to (`file:///data/`,
    /// `s3://bucket/prefix/`). Empty: any location the worker's credentials reach, unless
    /// authentication is on: then `lakescore` sets it to the data directory's `datasets/`.
    /// A local location is checked with its symbolic links resolved.
    pub storage_roots: Vec<String>,
    /// Options passed to the object store builders (keys as object_store names them, e.g.
    /// `aws_region`); environment variables (`AWS_*`, `AZURE_*`, `GOOGLE_*`) apply too. A key
    /// no provider knows is refused at start-up.
    pub storage_options: BTreeMap<String, String>,
    /// Flight location advertised in `GetFlightInfo` endpoints (`grpc://host:8815`);
    /// `None`: no location, i.e. "this same worker".
    pub advertise_location: Option<String>,
    /// Timeout of one registry request.
    #[serde(with = "secs")]
    pub registry_timeout: Duration,
    /// How long a batch job's finished units wait before they are committed to a Delta
    /// output together (also at 256 units, and at the job's end): a Delta log takes a few
    /// commits a second, so many workers must not commit per unit. A crash re-scores at most
    /// the units of the group not yet committed.
    #[serde(with = "secs")]
    pub job_commit_interval: Duration,
    /// Largest model artifact the worker downloads.
    pub max_artifact_bytes: u64,
    /// Bytes ONNX Runtime may hold for inference at once (the tensors runs create), over all
    /// models and calls of this worker; a run that needs more fails with
    /// `RESOURCE_EXHAUSTED` and the worker keeps serving. `0`: unbounded. Size it for the
    /// largest legitimate batch (`inference_batch_rows` × the widest model's tensors) and below
    /// the container's memory limit.
    pub max_inference_bytes: usize,
    /// Whether ONNX Runtime's intra-op threads spin while they wait for work (ONNX Runtime's
    /// own default). Off by default: a Flight stream scores two chunks at once while it
    /// decodes and encodes others, and spinning threads take the cores that work needs
    /// (benches/scoring.py, 2 cores: logreg20 DoExchange 5.3 M → 7.2 M rows/s, mlp64
    /// 3.6 M → 4.2 M, medians). On helps a model whose calls are long and split over many
    /// threads: the 100-tree forest on `--backend ort` ran at 0.94× in-process ONNX Runtime
    /// with it, 0.88× without (tree ensembles run on the native engine by default). A
    /// Kubernetes CPU limit throttles a spinning worker.
    pub intra_op_spinning: bool,
    /// SQL over Flight SQL on the same port (`[scorer.sql]`).
    pub sql: SqlConfig,
}

/// Limits of SQL queries (Flight SQL, `lakescore sql`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqlConfig {
    /// Whether the worker answers Flight SQL at all.
    pub enabled: bool,
    /// Queries running at once on this worker; one more gets `RESOURCE_EXHAUSTED`.
    pub max_concurrent_queries: usize,
    /// Wall-clock limit of one query, planning to last row; past it: `DEADLINE_EXCEEDED`.
    #[serde(with = "secs")]
    pub query_timeout: Duration,
    /// Memory one query's operators may hold (sorts, joins, aggregates spill to local disk
    /// where DataFusion can); a query that needs more: `RESOURCE_EXHAUSTED`.
    pub query_memory_bytes: usize,
    /// Local disk the spill files of one query may take (in the system's temporary
    /// directory); past it: `RESOURCE_EXHAUSTED`.
    pub query_spill_bytes: u64,
    /// Rows per batch inside a query (and per `predict` call into the engine).
    pub batch_rows: usize,
    /// How long a caller's session (its `CREATE EXTERNAL TABLE`s, prepared statements) is
    /// kept after its last call.
    #[serde(with = "secs")]
    pub session_idle: Duration,
}

impl Default for SqlConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_concurrent_queries: 8,
            query_timeout: Duration::from_secs(900),
            query_memory_bytes: 2 << 30,
            query_spill_bytes: 16 << 30,
            batch_rows: 65_536,
            session_idle: Duration::from_secs(3600),
        }
    }
}

/// Which inference engine the worker runs models with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Tree ensembles and linear models on the native engine, every other model on ONNX Runtime when its
    /// shared library loads; otherwise on tract, loudly, for the models tract runs correctly
    /// (others get `FAILED_PRECONDITION` naming the missing engine).
    #[default]
    Auto,
    /// ONNX Runtime only: start-up fails without it.
    Ort,
    /// The native engine only (tree ensembles, linear models): models it does not fully
    /// cover are refused.
    Trees,
    /// tract-onnx only (pure Rust): models with `ai.onnx.ml` operators are refused.
    Tract,
}

impl Backend {
    /// The name as configured (`auto`, `ort`, `tract`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::Ort => "ort",
            Backend::Trees => "trees",
            Backend::Tract => "tract",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "ort" | "onnxruntime" => Ok(Self::Ort),
            "trees" | "native" => Ok(Self::Trees),
            "tract" => Ok(Self::Tract),
            other => Err(format!("unknown backend {other:?} (auto, ort, trees, tract)")),
        }
    }
}

mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        if !(v.is_finite() && v > 0.0) {
            return Err(serde::de::Error::custom("timeout must be a positive number of seconds"));
        }
        Ok(Duration::from_secs_f64(v))
    }
}

impl Default for ScorerConfig {
    fn default() -> Self {
        Self {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 8815)),
            model_source: String::new(),
            backend: Backend::Auto,
            onnxruntime_lib: None,
            intra_op_threads: 0,
            graph_optimization: GraphOptimization::All,
            model_cache_bytes: 2 << 30,
            inference_batch_rows: 65_536,
            max_batch_rows: 4 << 20,
            max_batch_bytes: 512 << 20,
            max_message_bytes: 512 << 20,
            max_header_list_bytes: 256 << 10,
            max_rows_per_file: 4 << 20,
            row_group_rows: 131_072,
            storage_roots: Vec::new(),
            storage_options: BTreeMap::new(),
            advertise_location: None,
            registry_timeout: Duration::from_secs(120),
            job_commit_interval: Duration::from_secs(10),
            max_artifact_bytes: 2 << 30,
            max_inference_bytes: 4 << 30,
            intra_op_spinning: false,
            sql: SqlConfig::default(),
        }
    }
}

impl ScorerConfig {
    /// A default configuration reading models from `model_source`.
    pub fn new(model_source: impl Into<String>) -> Self {
        Self { model_source: model_source.into(), ..Self::default() }
    }
}

/// Graph optimization level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GraphOptimization {
    /// No graph optimizations.
    Disable,
    /// Basic (level 1).
    Basic,
    /// Extended (level 2).
    Extended,
    /// Everything (the ONNX Runtime default).
    #[default]
    All,
}

impl std::str::FromStr for GraphOptimization {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "disable" | "none" | "0" => Ok(Self::Disable),
            "basic" | "1" => Ok(Self::Basic),
            "extended" | "2" => Ok(Self::Extended),
            "all" | "3" | "99" => Ok(Self::All),
            other => Err(format!("unknown graph optimization level {other:?} (disable, basic, extended, all)")),
        }
    }
}

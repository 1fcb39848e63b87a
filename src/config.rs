//! Server configuration: one typed struct filled from an optional TOML file, then
//! overridden by flags and `LAKESCORE_*` environment variables (clap reads both).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use lakescore_registry::oidc::OidcConfig;
use lakescore_registry::{AuthConfig, RegistryConfig};
use lakescore_scorer::ScorerConfig;
use serde::Deserialize;

/// The TOML file's shape.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub registry: RegistryConfig,
    /// The scoring worker (Arrow Flight).
    pub scorer: ScorerConfig,
    /// Authentication: `[auth.oidc]` (issuer, audiences, tenants), `[auth.claims]`, `[auth.roles]`.
    pub auth: AuthConfig,
    pub insecure_no_auth: bool,
    /// Seconds in-flight requests get to finish after SIGTERM / Ctrl-C.
    pub shutdown_grace_secs: Option<u64>,
    /// The worker's metrics and health listener (`/metrics`, `/healthz`, `/readyz`).
    pub metrics_listen: Option<SocketAddr>,
}

/// How long in-flight requests may run on after a stop signal, unless configured.
pub const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 25;

#[derive(Debug, Args, Clone)]
pub struct ServerArgs {
    /// TOML configuration file; flags and environment variables override it.
    #[arg(long, env = "LAKESCORE_CONFIG")]
    pub config: Option<PathBuf>,
    /// HTTP listen address of the registry [default: 127.0.0.1:8080].
    #[arg(long, env = "LAKESCORE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Metadata database: sqlite://PATH or postgres://USER:PASS@HOST/DB [default: sqlite under --data-dir].
    #[arg(long, env = "LAKESCORE_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Artifact storage: file:///DIR, s3://BUCKET/PREFIX, az://CONTAINER/PREFIX, gs://BUCKET/PREFIX
    /// [default: DATA_DIR/artifacts]. Credentials come from the usual AWS_*, AZURE_*, GOOGLE_* variables.
    #[arg(long, env = "LAKESCORE_STORAGE_URL")]
    pub storage_url: Option<String>,
    /// Directory for the embedded defaults (SQLite file, artifacts, upload spool) [default: ./lakescore-data].
    #[arg(long, env = "LAKESCORE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Largest accepted model upload in bytes [default: 1073741824 = 1 GiB].
    #[arg(long, env = "LAKESCORE_MAX_UPLOAD_BYTES")]
    pub max_upload_bytes: Option<u64>,
    /// Arrow Flight listen address of the scoring worker [default: 127.0.0.1:8815].
    #[arg(long, env = "LAKESCORE_FLIGHT_LISTEN")]
    pub flight_listen: Option<SocketAddr>,
    /// Registry the worker resolves models from (`lakescore scorer`): grpc://registry:8080 (its
    /// gRPC service, on the HTTP port), http://registry:8080 (its REST API), or dir:///path
    /// for a directory of ONNX files [serve: the in-process registry].
    #[arg(long, env = "LAKESCORE_REGISTRY_URL")]
    pub registry_url: Option<String>,
    /// Inference engine: auto (tree ensembles and linear models on the native engine, other
    /// models on ONNX Runtime when its library loads, else on tract-onnx for the models it runs
    /// correctly), ort (ONNX Runtime for everything), trees (the native engine only), or tract
    /// [default: auto].
    #[arg(long, env = "LAKESCORE_BACKEND")]
    pub backend: Option<lakescore_scorer::Backend>,
    /// ONNX Runtime shared library (libonnxruntime.so.1.31.x from the onnxruntime wheel)
    /// [default: ORT_DYLIB_PATH, ./lakescore-data/onnxruntime, next to the binary, then python3's onnxruntime].
    #[arg(long, env = "LAKESCORE_ONNXRUNTIME_LIB")]
    pub onnxruntime_lib: Option<PathBuf>,
    /// Threads per inference call [default: 0 = one per core].
    #[arg(long, env = "LAKESCORE_INTRA_OP_THREADS")]
    pub intra_op_threads: Option<usize>,
    /// Bytes ONNX Runtime may hold for inference at once in the worker (a run that needs more
    /// fails with RESOURCE_EXHAUSTED; 0: unbounded); the registry refuses models whose
    /// constant-shaped tensors are larger [default: 4294967296 = 4 GiB].
    #[arg(long, env = "LAKESCORE_MAX_INFERENCE_BYTES")]
    pub max_inference_bytes: Option<u64>,
    /// Storage URL prefixes Flight jobs may read and write (comma-separated), e.g.
    /// file:///data/,s3://lake/scores/ [default: anywhere the worker's credentials reach; with
    /// OIDC on, only DATA_DIR/datasets/].
    #[arg(long, env = "LAKESCORE_STORAGE_ROOTS", value_delimiter = ',')]
    pub storage_roots: Vec<String>,
    /// Flight location advertised in GetFlightInfo endpoints, e.g. grpc://worker-0.workers:8815.
    #[arg(long, env = "LAKESCORE_ADVERTISE_LOCATION")]
    pub advertise_location: Option<String>,
    /// OIDC issuer whose access tokens are accepted, e.g.
    /// https://login.microsoftonline.com/{tenantid}/v2.0 (enables authentication).
    #[arg(long, env = "LAKESCORE_OIDC_ISSUER")]
    pub oidc_issuer: Option<String>,
    /// Accepted token audiences (comma-separated), e.g. api://lakescore.
    #[arg(long, env = "LAKESCORE_OIDC_AUDIENCES", value_delimiter = ',')]
    pub oidc_audiences: Vec<String>,
    /// Tenants accepted for a {tenantid} issuer (comma-separated; * for any).
    #[arg(long, env = "LAKESCORE_OIDC_ALLOWED_TENANTS", value_delimiter = ',')]
    pub oidc_allowed_tenants: Vec<String>,
    /// Allow listening on a non-loopback address without authentication (never in production).
    #[arg(long, env = "LAKESCORE_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
    /// HTTP listen address of the scoring worker's /metrics (Prometheus), /healthz and /readyz,
    /// e.g. 0.0.0.0:9816 [default: none; in `serve` the registry's /metrics shows the worker's
    /// metrics too].
    #[arg(long, env = "LAKESCORE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Seconds in-flight requests and Flight streams get to finish after SIGTERM or Ctrl-C;
    /// past it, scoring jobs are cancelled (their partial output removed, no manifest) and
    /// the process exits. Keep it below Kubernetes' terminationGracePeriodSeconds [default: 25].
    #[arg(long, env = "LAKESCORE_SHUTDOWN_GRACE_SECS")]
    pub shutdown_grace_secs: Option<u64>,
}

/// The settled configuration the servers run with.
#[derive(Debug)]
pub struct Settings {
    pub registry: RegistryConfig,
    pub scorer: ScorerConfig,
    pub auth: AuthConfig,
    pub insecure_no_auth: bool,
    pub shutdown_grace: std::time::Duration,
    pub metrics_listen: Option<SocketAddr>,
}

impl ServerArgs {
    pub fn settle(&self) -> anyhow::Result<Settings> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .with_context(|| format!("invalid configuration in {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let mut registry = file.registry;
        if let Some(v) = self.listen {
            registry.listen = v;
        }
        if let Some(v) = &self.database_url {
            registry.database_url = Some(v.clone());
        }
        if let Some(v) = &self.storage_url {
            registry.storage_url = Some(v.clone());
        }
        if let Some(v) = &self.data_dir {
            registry.data_dir = v.clone();
        }
        if let Some(v) = self.max_upload_bytes {
            registry.max_upload_bytes = v;
        }
        let mut scorer = file.scorer;
        if let Some(v) = self.flight_listen {
            scorer.listen = v;
        }
        if let Some(v) = &self.registry_url {
            scorer.model_source = v.clone();
        }
        if let Some(v) = self.backend {
            scorer.backend = v;
        }
        if let Some(v) = &self.onnxruntime_lib {
            scorer.onnxruntime_lib = Some(v.clone());
        }
        if let Some(v) = self.intra_op_threads {
            scorer.intra_op_threads = v;
        }
        if !self.storage_roots.is_empty() {
            scorer.storage_roots = self.storage_roots.clone();
        }
        if let Some(v) = self.max_inference_bytes {
            scorer.max_inference_bytes = usize::try_from(v).context("max_inference_bytes is too large")?;
            registry.max_inference_bytes = v;
        }
        if let Some(v) = &self.advertise_location {
            scorer.advertise_location = Some(v.clone());
        }
        let mut auth = file.auth;
        if self.oidc_issuer.is_some() || !self.oidc_audiences.is_empty() || !self.oidc_allowed_tenants.is_empty() {
            let oidc = auth.oidc.get_or_insert_with(OidcConfig::default);
            if let Some(v) = &self.oidc_issuer {
                oidc.issuer = v.clone();
            }
            if !self.oidc_audiences.is_empty() {
                oidc.audiences = self.oidc_audiences.clone();
            }
            if !self.oidc_allowed_tenants.is_empty() {
                oidc.allowed_tenants = self.oidc_allowed_tenants.clone();
            }
        }
        auth.check().map_err(|e| anyhow::anyhow!("{e}"))?;
        if auth.oidc.is_some() && scorer.storage_roots.is_empty() {
            // With authentication on, "anywhere the worker can reach" would let any caller
            // make the worker read any local file it can open (`file:///etc/...`).
            let datasets = std::path::absolute(registry.data_dir.join("datasets"))
                .context("cannot make the data directory absolute")?;
            let root = url::Url::from_directory_path(&datasets)
                .map_err(|()| anyhow::anyhow!("{} cannot be a file:// URL", datasets.display()))?;
            tracing::warn!(
                storage_root = %root,
                "storage_roots is not set: with authentication on, Flight jobs may only read and write under the \
                 data directory's datasets/; set [scorer] storage_roots (LAKESCORE_STORAGE_ROOTS) to your lake"
            );
            scorer.storage_roots = vec![root.to_string()];
        }
        if registry.max_upload_bytes == 0 {
            bail!("max_upload_bytes must be greater than 0");
        }
        if let Some(url) = &registry.database_url {
            if !(url.starts_with("sqlite:") || url.starts_with("postgres:") || url.starts_with("postgresql:")) {
                bail!("database_url must start with sqlite:// or postgres://");
            }
        }
        if let Some(url) = &registry.storage_url {
            url::Url::parse(url).with_context(|| format!("storage_url '{url}' is not a URL"))?;
        }
        let grace = self.shutdown_grace_secs.or(file.shutdown_grace_secs).unwrap_or(DEFAULT_SHUTDOWN_GRACE_SECS);
        Ok(Settings {
            registry,
            scorer,
            auth,
            insecure_no_auth: self.insecure_no_auth || file.insecure_no_auth,
            shutdown_grace: std::time::Duration::from_secs(grace),
            metrics_listen: self.metrics_listen.or(file.metrics_listen),
        })
    }
}

impl Settings {
    /// Without authentication the server only listens on loopback, unless told otherwise.
    pub fn check_auth_posture(&self, listen: &[SocketAddr]) -> anyhow::Result<()> {
        if self.auth.oidc.is_some() {
            for warning in self.auth.warnings() {
                tracing::warn!("{warning}");
            }
            return Ok(());
        }
        tracing::warn!(
            "AUTHENTICATION IS OFF: every caller may read, register and delete models (OIDC is not configured)"
        );
        if let Some(addr) = listen.iter().find(|a| !a.ip().is_loopback()) {
            if !self.insecure_no_auth {
                bail!(
                    "refusing to listen on {addr} without authentication: configure OIDC, listen on loopback, \
                     or pass --insecure-no-auth"
                );
            }
            tracing::warn!(%addr, "listening on a non-loopback address WITHOUT authentication (--insecure-no-auth)");
        }
        Ok(())
    }
}

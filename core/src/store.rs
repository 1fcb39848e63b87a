//! [`open_store`]: the one way a storage URL becomes an object store, for the registry's
//! artifacts and the worker's inputs and outputs alike. Same URL forms (`file://`, `s3://`,
//! `az://`, `abfss://…@account.dfs.core.windows.net/…`, `gs://`, `memory://`, and the
//! https URLs object_store recognises), same option validation, same retry policy.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use object_store::path::Path;
pub use object_store::RetryConfig;
use object_store::{ObjectStore, ObjectStoreScheme};
use url::Url;

/// Why a storage URL or its options cannot be used. Always the configuration's or the
/// caller's fault: `INVALID_ARGUMENT` / 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(String);

/// How stores are opened: object_store configuration keys (credentials, endpoint,
/// `allow_http`, …, over what the environment's `AWS_*`, `AZURE_*`, `GOOGLE_*` give), and
/// how long failed requests are retried.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// object_store configuration keys, matched case-insensitively. Keys of another
    /// provider (`aws_…` when opening `az://`) are skipped, so one set of options can
    /// serve several stores; any other key the provider does not know is an error.
    pub options: BTreeMap<String, String>,
    /// Retries of failed requests, with backoff.
    pub retry: RetryConfig,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self { options: BTreeMap::new(), retry: default_retry() }
    }
}

/// Three retries within 30 s: a storage hiccup is ridden out, a storage outage is
/// reported (503 / `UNAVAILABLE`) within the time a caller waits.
pub fn default_retry() -> RetryConfig {
    RetryConfig { max_retries: 3, retry_timeout: Duration::from_secs(30), ..Default::default() }
}

/// Parses a storage URL; an absolute local path is taken as `file://`.
pub fn parse_url(raw: &str) -> Result<Url, StoreError> {
    if raw.is_empty() {
        return Err(StoreError("empty storage URL".into()));
    }
    if raw.starts_with('/') {
        return Url::from_file_path(raw).map_err(|_| StoreError(format!("invalid path {raw:?}")));
    }
    let url = Url::parse(raw).map_err(|e| {
        StoreError(format!(
            "invalid storage URL {raw:?}: {e} (use file:///abs/path, s3://bucket/prefix, az://container/prefix, \
             abfss://container@account.dfs.core.windows.net/prefix, gs://bucket/prefix)"
        ))
    })?;
    if url.cannot_be_a_base() {
        return Err(StoreError(format!("invalid storage URL {raw:?}")));
    }
    Ok(url)
}

/// The path of `url` inside its store (cheap: no store is opened), for callers that keep
/// their stores and open one per bucket or container.
pub fn path_in_store(url: &Url) -> Result<Path, StoreError> {
    ObjectStoreScheme::parse(url)
        .map(|(_, path)| path)
        .map_err(|e| StoreError(format!("cannot use storage URL {url}: {e}")))
}

/// Opens the store behind `url` and returns it with the path of `url` inside it.
/// `memory://` is one in-process store shared by every caller (for tests).
pub fn open_store(url: &Url, options: &StoreOptions) -> Result<(Arc<dyn ObjectStore>, Path), StoreError> {
    let bad = |e: &dyn std::fmt::Display| StoreError(format!("cannot use storage URL {url}: {e}"));
    let (scheme, path) = ObjectStoreScheme::parse(url).map_err(|e| bad(&e))?;
    let store: Arc<dyn ObjectStore> = match scheme {
        ObjectStoreScheme::Local => {
            url.to_file_path().map_err(|_| bad(&"not a local path"))?;
            Arc::new(object_store::local::LocalFileSystem::new())
        }
        ObjectStoreScheme::Memory => memory_store(),
        ObjectStoreScheme::AmazonS3 => {
            let builder =
                object_store::aws::AmazonS3Builder::from_env().with_url(url.as_str()).with_retry(options.retry.clone());
            let builder = configure(builder, &options.options, "aws_", |b, k, v| b.with_config(k, v))?;
            Arc::new(builder.build().map_err(|e| bad(&e))?)
        }
        ObjectStoreScheme::MicrosoftAzure => {
            let builder = object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_url(url.as_str())
                .with_retry(options.retry.clone());
            let builder = configure(builder, &options.options, "azure_", |b, k, v| b.with_config(k, v))?;
            Arc::new(builder.build().map_err(|e| bad(&e))?)
        }
        ObjectStoreScheme::GoogleCloudStorage => {
            let builder = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_url(url.as_str())
                .with_retry(options.retry.clone());
            let builder = configure(builder, &options.options, "google_", |b, k, v| b.with_config(k, v))?;
            Arc::new(builder.build().map_err(|e| bad(&e))?)
        }
        other => {
            return Err(bad(&format!("{other:?} storage is not supported (file, s3, az/abfss, gs, memory)")));
        }
    };
    Ok((store, path))
}

/// Checks that every option is a configuration key of some provider, so that a typo is
/// reported when the configuration is loaded rather than when a store is first opened.
pub fn validate_options(options: &BTreeMap<String, String>) -> Result<(), StoreError> {
    for key in options.keys() {
        let lower = key.to_ascii_lowercase();
        let known = lower.parse::<object_store::aws::AmazonS3ConfigKey>().is_ok()
            || lower.parse::<object_store::azure::AzureConfigKey>().is_ok()
            || lower.parse::<object_store::gcp::GoogleConfigKey>().is_ok();
        if !known {
            return Err(StoreError(format!(
                "unknown storage option '{key}' (object_store configuration keys such as aws_region, \
                 azure_storage_account_name, google_service_account)"
            )));
        }
    }
    Ok(())
}

fn memory_store() -> Arc<dyn ObjectStore> {
    static MEMORY: OnceLock<Arc<dyn ObjectStore>> = OnceLock::new();
    MEMORY.get_or_init(|| Arc::new(object_store::memory::InMemory::new())).clone()
}

/// The prefixes of each provider's own configuration keys.
const PROVIDER_PREFIXES: &[&str] = &["aws_", "azure_", "google_"];

/// Applies `options` to a builder. A key this provider does not know is an error, unless
/// it carries another provider's prefix.
fn configure<B, K>(
    mut builder: B,
    options: &BTreeMap<String, String>,
    own_prefix: &str,
    set: impl Fn(B, K, &str) -> B,
) -> Result<B, StoreError>
where
    K: std::str::FromStr,
    K::Err: std::fmt::Display,
{
    for (key, value) in options {
        let lower = key.to_ascii_lowercase();
        match lower.parse::<K>() {
            Ok(k) => builder = set(builder, k, value),
            Err(_) if PROVIDER_PREFIXES.iter().any(|p| *p != own_prefix && lower.starts_with(p)) => {}
            Err(e) => return Err(StoreError(format!("unknown storage option '{key}': {e}"))),
        }
    }
    Ok(builder)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(url: &str, options: &[(&str, &str)]) -> Result<Path, StoreError> {
        let options = StoreOptions {
            options: options.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        };
        open_store(&parse_url(url)?, &options).map(|(_, path)| path)
    }

    #[test]
    fn opens_every_scheme() {
        assert_eq!(open("/data/lake", &[]).unwrap().as_ref(), "data/lake");
        assert_eq!(open("file:///data/lake/x.parquet", &[]).unwrap().as_ref(), "data/lake/x.parquet");
        assert_eq!(open("memory:///t/a", &[]).unwrap().as_ref(), "t/a");
        let s3 = [("aws_region", "eu-west-1"), ("AWS_SKIP_SIGNATURE", "true")];
        assert_eq!(open("s3://bucket/scores/", &s3).unwrap().as_ref(), "scores");
        let az = [("azure_storage_account_name", "acct"), ("azure_skip_signature", "true")];
        assert_eq!(open("az://models/p", &az).unwrap().as_ref(), "p");
        assert_eq!(open("abfss://lake@acct.dfs.core.windows.net/raw/tx", &az).unwrap().as_ref(), "raw/tx");
        assert_eq!(open("gs://bucket/p", &[("google_skip_signature", "true")]).unwrap().as_ref(), "p");
    }

    #[test]
    fn validates_options_per_provider() {
        // Another provider's keys are skipped, so one option set serves several stores.
        let mixed = [("azure_storage_account_name", "acct"), ("aws_region", "eu-west-1")];
        assert!(open("az://models/p", &mixed).is_ok());
        // An unknown key of no provider is a configuration error, not silently dropped.
        let err = open("s3://bucket/p", &[("regoin", "eu")]).unwrap_err();
        assert!(err.to_string().contains("unknown storage option 'regoin'"), "{err}");
        let typo = BTreeMap::from([("regoin".to_string(), "eu".to_string())]);
        assert!(validate_options(&typo).is_err());
        let good = BTreeMap::from([
            ("AWS_REGION".to_string(), "eu".to_string()),
            ("azure_storage_account_name".into(), "a".into()),
        ]);
        assert!(validate_options(&good).is_ok());
    }

    #[test]
    fn refuses_what_it_cannot_open() {
        assert!(parse_url("").is_err());
        assert!(parse_url("not a url").is_err());
        assert!(open("ftp://host/x", &[]).is_err());
    }
}

//! Artifact storage: content-addressed ONNX files in any object_store backend.
//! A version's file lives at `<prefix>/sha256/<first two hex>/<sha256>.onnx`, so identical
//! bytes are stored once however many versions share them.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path as FsPath;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
pub use object_store::RetryConfig;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, ObjectStoreScheme, WriteMultipart};
use tokio::io::AsyncReadExt;

use crate::error::{RegistryError, Result};

/// Part size for multipart uploads of large artifacts.
const PART_SIZE: usize = 8 << 20;

#[derive(Clone)]
pub struct ArtifactStore {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    description: String,
}

impl ArtifactStore {
    /// Opens `url` (`file://`, `s3://`, `az://`, `gs://`, or an https URL object_store
    /// recognises) or, without one, the local directory `default_dir`. Cloud stores take
    /// credentials from the environment (`AWS_*`, `AZURE_*`, `GOOGLE_*`) and from `options`
    /// (object_store configuration keys, which win).
    pub fn open(
        url: Option<&str>,
        options: &BTreeMap<String, String>,
        retry: RetryConfig,
        default_dir: &FsPath,
    ) -> Result<Self> {
        let Some(url) = url else { return Self::local(default_dir) };
        let bad = |e: &dyn std::fmt::Display| RegistryError::BadRequest(format!("cannot use storage URL '{url}': {e}"));
        let parsed = url::Url::parse(url).map_err(|e| bad(&e))?;
        let (scheme, prefix) = ObjectStoreScheme::parse(&parsed).map_err(|e| bad(&e))?;
        fn configure<B, K>(
            mut builder: B,
            options: &BTreeMap<String, String>,
            set: impl Fn(B, K, &str) -> B,
        ) -> Result<B>
        where
            K: std::str::FromStr,
            K::Err: std::fmt::Display,
        {
            for (k, v) in options {
                let key = k
                    .parse::<K>()
                    .map_err(|e| RegistryError::BadRequest(format!("unknown storage option '{k}': {e}")))?;
                builder = set(builder, key, v);
            }
            Ok(builder)
        }
        let store: Arc<dyn ObjectStore> = match scheme {
            ObjectStoreScheme::Local => {
                let dir = parsed.to_file_path().map_err(|_| bad(&"not a local path"))?;
                return Self::local(&dir);
            }
            ObjectStoreScheme::AmazonS3 => {
                let b = AmazonS3Builder::from_env().with_url(url).with_retry(retry);
                Arc::new(configure(b, options, |b, k, v| b.with_config(k, v))?.build().map_err(|e| bad(&e))?)
            }
            ObjectStoreScheme::MicrosoftAzure => {
                let b = MicrosoftAzureBuilder::from_env().with_url(url).with_retry(retry);
                Arc::new(configure(b, options, |b, k, v| b.with_config(k, v))?.build().map_err(|e| bad(&e))?)
            }
            ObjectStoreScheme::GoogleCloudStorage => {
                let b = GoogleCloudStorageBuilder::from_env().with_url(url).with_retry(retry);
                Arc::new(configure(b, options, |b, k, v| b.with_config(k, v))?.build().map_err(|e| bad(&e))?)
            }
            other => return Err(bad(&format!("{other:?} storage is not supported for artifacts"))),
        };
        Ok(Self { store, prefix, description: url.to_string() })
    }

    fn local(dir: &FsPath) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let store = LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| RegistryError::BadRequest(format!("cannot use {} for artifacts: {e}", dir.display())))?;
        Ok(Self { store: Arc::new(store), prefix: Path::default(), description: format!("file://{}", dir.display()) })
    }

    pub fn describe(&self) -> &str {
        &self.description
    }

    fn key(&self, sha256: &str) -> Path {
        let shard = sha256.get(..2).unwrap_or("00");
        self.prefix.clone().join("sha256").join(shard).join(format!("{sha256}.onnx"))
    }

    pub async fn exists(&self, sha256: &str) -> Result<bool> {
        match self.store.head(&self.key(sha256)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Stores the spooled file under its sha256. Returns whether this call wrote it (false
    /// when the same bytes were already stored).
    pub async fn put_file(&self, sha256: &str, file: &FsPath, size: u64) -> Result<bool> {
        if self.exists(sha256).await? {
            return Ok(false);
        }
        let key = self.key(sha256);
        let mut f = tokio::fs::File::open(file).await?;
        if size as usize <= PART_SIZE {
            let mut buf = Vec::with_capacity(size as usize);
            f.read_to_end(&mut buf).await?;
            self.store.put(&key, buf.into()).await?;
            return Ok(true);
        }
        // Multipart uploads become visible only when completed, so a failure here never
        // leaves a partial artifact under the final key.
        let mut upload = WriteMultipart::new_with_chunk_size(self.store.put_multipart(&key).await?, PART_SIZE);
        let mut buf = vec![0u8; PART_SIZE];
        loop {
            let n = match f.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    let _ = upload.abort().await;
                    return Err(e.into());
                }
            };
            if n == 0 {
                break;
            }
            if let Err(e) = upload.wait_for_capacity(4).await {
                let _ = upload.abort().await;
                return Err(e.into());
            }
            upload.write(&buf[..n]);
        }
        upload.finish().await?;
        Ok(true)
    }

    /// Streams an artifact, or a byte range of it.
    pub async fn get(&self, sha256: &str, range: Option<Range<u64>>) -> Result<BoxStream<'static, Result<Bytes>>> {
        let opts = GetOptions { range: range.map(GetRange::Bounded), ..Default::default() };
        let result = self.store.get_opts(&self.key(sha256), opts).await?;
        Ok(result.into_stream().map_err(RegistryError::from).boxed())
    }

    pub async fn read_all(&self, sha256: &str) -> Result<Bytes> {
        Ok(self.store.get(&self.key(sha256)).await?.bytes().await?)
    }

    pub async fn delete(&self, sha256: &str) -> Result<()> {
        match self.store.delete(&self.key(sha256)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Every stored artifact's sha256 and last-modified time (for garbage collection).
    pub fn list(&self) -> BoxStream<'static, Result<(String, chrono::DateTime<chrono::Utc>)>> {
        let prefix = self.prefix.clone().join("sha256");
        self.store
            .list(Some(&prefix))
            .map_err(RegistryError::from)
            .try_filter_map(|meta| async move {
                let sha = meta.location.filename().and_then(|f| f.strip_suffix(".onnx")).map(str::to_string);
                Ok(sha.map(|s| (s, meta.last_modified)))
            })
            .boxed()
    }

    /// Readiness: the store answers. A missing probe object is a fine answer.
    pub async fn check(&self) -> Result<()> {
        match self.store.head(&self.prefix.clone().join("_lakescore_probe")).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

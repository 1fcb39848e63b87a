//! Artifact storage: content-addressed ONNX files in any object_store backend.
//! A version's file lives at `<prefix>/sha256/<first two hex>/<sha256>.onnx`, so identical
//! bytes are stored once however many versions share them.

use std::ops::Range;
use std::path::Path as FsPath;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use lakescore_core::store::{open_store, StoreOptions};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, WriteMultipart};
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
    /// Opens `url` (any URL [`lakescore_core::store::open_store`] takes) or, without one,
    /// the local directory `default_dir` (created when missing).
    pub fn open(url: Option<&str>, options: &StoreOptions, default_dir: &FsPath) -> Result<Self> {
        let url = match url {
            Some(url) => lakescore_core::store::parse_url(url)?,
            None => {
                std::fs::create_dir_all(default_dir)?;
                let dir = std::path::absolute(default_dir)?;
                url::Url::from_directory_path(&dir)
                    .map_err(|_| RegistryError::BadRequest(format!("cannot use {} for artifacts", dir.display())))?
            }
        };
        let (store, prefix) = open_store(&url, options)?;
        Ok(Self { store, prefix, description: url.to_string() })
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

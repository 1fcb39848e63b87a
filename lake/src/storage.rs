//! Object storage: resolving storage URLs (with an allow-list of roots, symbolic links
//! included), listing Parquet inputs, and reading Parquet objects ([`ObjectReader`]). The
//! writing side is [`crate::writer`] and [`crate::sink`].

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, TryFutureExt, TryStreamExt};
use lakescore_core::store::{open_store, path_in_store, StoreOptions};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use url::Url;

use lakescore_engine::error::{Result, ScoreError};

use crate::manifest::{Manifest, MANIFEST_NAME};

/// A resolved storage location.
#[derive(Debug, Clone)]
pub struct Location {
    /// The store.
    pub store: Arc<dyn ObjectStore>,
    /// The path inside the store.
    pub path: Path,
    /// The normalized URL.
    pub url: Url,
}

impl Location {
    /// The path of `rel` (`a/b`, each part as it is, not URL-decoded) under this location.
    pub fn child(&self, rel: &str) -> Path {
        let parts = rel.split('/').filter(|p| !p.is_empty()).map(object_store::path::PathPart::from);
        Path::from_iter(self.path.parts().chain(parts))
    }

    /// URL of an object of this store.
    pub fn url_of(&self, path: &Path) -> String {
        let mut url = self.url.clone();
        url.set_path(&format!("/{path}"));
        if let Some(bucket_prefix) = self.bucket_path_prefix() {
            url.set_path(&format!("/{bucket_prefix}/{path}"));
        }
        url.to_string()
    }

    /// For URLs whose path starts with a container segment that object_store strips from
    /// the object path (`https://account.blob.core.windows.net/container/...`), that segment.
    fn bucket_path_prefix(&self) -> Option<String> {
        let full = self.url.path().trim_start_matches('/');
        let inner = self.path.as_ref();
        if inner.is_empty() || full == inner || full.trim_end_matches('/') == inner {
            return None;
        }
        full.strip_suffix(inner)
            .or_else(|| full.trim_end_matches('/').strip_suffix(inner))
            .map(|p| p.trim_end_matches('/').to_string())
            .filter(|p| !p.is_empty())
    }
}

/// Resolves storage URLs to object stores, enforcing the configured roots.
#[derive(Debug)]
pub struct Storage {
    roots: Vec<String>,
    /// The local directories among `roots`, with symbolic links resolved: a `file://` location
    /// must still be inside one of them once its own links are resolved.
    local_roots: Vec<std::path::PathBuf>,
    options: StoreOptions,
    stores: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
}

fn parse_storage_url(raw: &str) -> Result<Url> {
    Ok(lakescore_core::store::parse_url(raw)?)
}

impl Storage {
    /// `roots`: URL prefixes that may be used (empty: any). `options`: how stores are opened.
    pub fn new(roots: &[String], options: StoreOptions) -> Result<Self> {
        lakescore_core::store::validate_options(&options.options)?;
        let roots = roots
            .iter()
            .map(|r| {
                let url = parse_storage_url(r)?;
                let mut s = url.to_string();
                if !s.ends_with('/') {
                    s.push('/');
                }
                Ok(s)
            })
            .collect::<Result<Vec<_>>>()?;
        let local_roots = roots
            .iter()
            .filter_map(|r| Url::parse(r).ok())
            .filter(|u| u.scheme() == "file")
            .filter_map(|u| u.to_file_path().ok())
            .map(|p| resolve_links(&p))
            .collect();
        Ok(Self { roots, local_roots, options, stores: Mutex::new(HashMap::new()) })
    }

    /// A local file or directory that the roots allow by name but that a symbolic link
    /// leads out of (`/data/lake/x -> /etc`) is refused before anything is read.
    fn check_links(&self, url: &Url, what: &str) -> Result<()> {
        if self.roots.is_empty() || url.scheme() != "file" {
            return Ok(());
        }
        let Ok(path) = url.to_file_path() else {
            return Err(ScoreError::InvalidArgument(format!("{what}: {url} is not a local path")));
        };
        let real = resolve_links(&path);
        if self.local_roots.iter().any(|root| real.starts_with(root)) {
            return Ok(());
        }
        Err(ScoreError::PermissionDenied(format!(
            "{what}: {url} leads through a symbolic link to {}, outside the storage locations this worker may use",
            real.display()
        )))
    }

    fn allowed(&self, url: &Url) -> bool {
        if self.roots.is_empty() {
            return true;
        }
        let s = url.as_str();
        self.roots.iter().any(|root| s.starts_with(root.as_str()) || s == root.trim_end_matches('/'))
    }

    /// The location of a storage URL (or an absolute local path) inside the allowed roots.
    /// `what` names the field in errors.
    pub fn locate(&self, raw: &str, what: &str) -> Result<Location> {
        let url = parse_storage_url(raw).map_err(|e| e.context(what))?;
        if url.path().split('/').any(|seg| seg == ".." || seg == "%2e%2e" || seg == "%2E%2E") {
            return Err(ScoreError::InvalidArgument(format!("{what}: '..' is not allowed in {url}")));
        }
        if !self.allowed(&url) {
            return Err(ScoreError::PermissionDenied(format!(
                "{what}: {url} is outside the storage locations this worker may use"
            )));
        }
        self.check_links(&url, what)?;
        let path = path_in_store(&url).map_err(|e| ScoreError::from(e).context(what))?;
        let store = self.store(&url, what)?;
        Ok(Location { store, path, url })
    }

    /// The store behind `url`: one per scheme and authority (bucket, container, account),
    /// opened once and reused across calls so that connections and credentials are too.
    fn store(&self, url: &Url, what: &str) -> Result<Arc<dyn ObjectStore>> {
        let key = format!("{}://{}", url.scheme(), url.authority());
        let mut stores = self.stores.lock().map_err(|_| ScoreError::internal("storage lock poisoned"))?;
        if let Some(store) = stores.get(&key) {
            return Ok(store.clone());
        }
        let (store, _) = open_store(url, &self.options).map_err(|e| ScoreError::from(e).context(what))?;
        stores.insert(key, store.clone());
        Ok(store)
    }

    /// For SQL, which asks for a store by scheme and authority and then reads paths in it:
    /// the store behind `url`, and the paths in it that the roots allow (one empty path:
    /// all of it). A store no root reaches is refused.
    pub fn rooted_store(&self, url: &Url) -> Result<(Arc<dyn ObjectStore>, Vec<Path>)> {
        let what = "SQL table location";
        let key = format!("{}://{}", url.scheme(), url.authority());
        let prefixes: Vec<Path> = if self.roots.is_empty() {
            vec![Path::default()]
        } else {
            self.roots
                .iter()
                .filter_map(|r| Url::parse(r).ok())
                .filter(|r| format!("{}://{}", r.scheme(), r.authority()) == key)
                .filter_map(|r| path_in_store(&r).ok())
                .collect()
        };
        if prefixes.is_empty() {
            return Err(ScoreError::PermissionDenied(format!(
                "{what}: {url} is outside the storage locations this worker may use"
            )));
        }
        Ok((self.store(url, what)?, prefixes))
    }

    /// Whether a local path (of a `file://` store, without its leading `/`) stays inside
    /// the local roots once its symbolic links are resolved; always for other stores.
    pub fn local_path_allowed(&self, path: &Path) -> bool {
        if self.roots.is_empty() {
            return true;
        }
        let real = resolve_links(&std::path::Path::new("/").join(path.as_ref()));
        self.local_roots.iter().any(|root| real.starts_with(root))
    }

    /// The Parquet files at `loc`: the object itself, or every `*.parquet` object under
    /// the prefix (names starting with `_` or `.` skipped), sorted by path.
    pub async fn list_parquet(&self, loc: &Location) -> Result<Vec<ObjectMeta>> {
        let what = loc.url.to_string();
        if loc.url.path().ends_with(".parquet") {
            let meta =
                loc.store.head(&loc.path).await.map_err(|e| ScoreError::from_store(e, format!("input {what}")))?;
            return Ok(vec![meta]);
        }
        let prefix = (!loc.path.as_ref().is_empty()).then_some(&loc.path);
        let mut files: Vec<ObjectMeta> = loc
            .store
            .list(prefix)
            .try_filter(|m| {
                // Hidden and bookkeeping paths (`_errors/`, `_lakescore_jobs/`, `.tmp`) are not
                // data, at any depth below the prefix.
                let below =
                    m.location.prefix_match(&loc.path).map(|parts| parts.collect::<Vec<_>>()).unwrap_or_default();
                let hidden = below.iter().any(|p| p.as_ref().starts_with('_') || p.as_ref().starts_with('.'));
                let ok = !hidden && m.location.filename().is_some_and(|n| n.ends_with(".parquet"));
                futures::future::ready(ok)
            })
            .try_collect()
            .await
            .map_err(|e| ScoreError::from_store(e, format!("listing input {what}")))?;
        if files.is_empty() {
            // A single object without the .parquet suffix.
            if let Ok(meta) = loc.store.head(&loc.path).await {
                return Ok(vec![meta]);
            }
            return Err(ScoreError::NotFound(format!("input {what}: no Parquet files found")));
        }
        files.sort_by(|a, b| a.location.cmp(&b.location));
        // A prefix lakescore committed: the files its manifest lists, and no others (a
        // running or crashed writer's parts are not committed rows).
        let manifest_path = Path::from_iter(loc.path.parts().chain(std::iter::once(MANIFEST_NAME.into())));
        match loc.store.get(&manifest_path).await {
            Ok(got) => {
                let bytes = got.bytes().await.map_err(|e| ScoreError::from_store(e, format!("input {what}")))?;
                let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
                    ScoreError::DataLoss(format!("input {what}: its manifest {MANIFEST_NAME} is not valid: {e}"))
                })?;
                let listed: std::collections::HashSet<Path> = manifest
                    .files
                    .iter()
                    .map(|f| Path::from_iter(loc.path.parts().chain(f.path.split('/').map(Into::into))))
                    .collect();
                if let Some(missing) = listed.iter().find(|p| !files.iter().any(|f| &f.location == *p)) {
                    return Err(ScoreError::DataLoss(format!(
                        "input {what}: its manifest lists {}, which is not there",
                        loc.url_of(missing)
                    )));
                }
                files.retain(|f| listed.contains(&f.location));
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(ScoreError::from_store(e, format!("input {what}"))),
        }
        // A listed file may itself be a link that leads out of the roots.
        for file in &files {
            if let Ok(url) = Url::parse(&loc.url_of(&file.location)) {
                self.check_links(&url, "input")?;
            }
        }
        Ok(files)
    }
}

/// `path` with every symbolic link resolved: the deepest part that exists is canonicalized
/// and the rest (not created yet, e.g. an output prefix) appended as written.
fn resolve_links(path: &std::path::Path) -> std::path::PathBuf {
    let mut existing = path;
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            return rest.iter().rev().fold(real, |acc: std::path::PathBuf, part| acc.join(part));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return path.to_path_buf(),
        }
    }
}

/// An [`AsyncFileReader`] over one object of an [`ObjectStore`].
#[derive(Debug, Clone)]
pub struct ObjectReader {
    store: Arc<dyn ObjectStore>,
    path: Path,
    size: u64,
}

impl ObjectReader {
    /// A reader of the object `meta` describes in `store`. Its size is known, so the footer is
    /// read with a plain range (Azure Blob refuses suffix ranges).
    pub fn new(store: Arc<dyn ObjectStore>, meta: &ObjectMeta) -> Self {
        Self { store, path: meta.location.clone(), size: meta.size }
    }
}

pub(crate) fn parquet_err(e: object_store::Error) -> ParquetError {
    ParquetError::External(Box::new(e))
}

impl AsyncFileReader for ObjectReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        self.store.get_range(&self.path, range).map_err(parquet_err).boxed()
    }

    fn get_byte_ranges(&mut self, ranges: Vec<Range<u64>>) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move { self.store.get_ranges(&self.path, &ranges).await.map_err(parquet_err) }.boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self.size;
            let metadata =
                ParquetMetaDataReader::new().with_arrow_reader_options(options).load_and_finish(self, size).await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}

/// Validate a client-supplied job id: `[A-Za-z0-9_-]{1,64}`.
pub fn valid_job_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enforces_roots_and_refuses_dot_dot() {
        let s = Storage::new(&["file:///data/lake".to_string()], StoreOptions::default()).unwrap();
        assert!(s.locate("file:///data/lake/x.parquet", "input").is_ok());
        assert!(s.locate("/data/lake/sub/", "input").is_ok());
        assert!(matches!(s.locate("file:///data/lakehouse/x", "input"), Err(ScoreError::PermissionDenied(_))));
        // Normalized by the URL parser, then refused as outside the root.
        assert!(s.locate("file:///data/lake/../etc/passwd", "input").is_err());
        assert!(matches!(s.locate("relative/path", "output"), Err(ScoreError::InvalidArgument(_))));
        assert!(valid_job_id("a-b_C9"));
    }

    #[tokio::test]
    async fn refuses_symbolic_links_out_of_the_roots() {
        let dir = tempfile::tempdir().unwrap();
        let lake = dir.path().join("lake");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(lake.join("ok")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret.parquet"), b"PAR1").unwrap();
        std::os::unix::fs::symlink(&outside, lake.join("escape")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret.parquet"), lake.join("ok/linked.parquet")).unwrap();
        let root = format!("file://{}/", lake.display());
        let s = Storage::new(&[root], StoreOptions::default()).unwrap();
        // A directory link and a file link that lead out are refused by name...
        for url in [format!("{}/escape/secret.parquet", lake.display()), format!("{}/escape/new/", lake.display())] {
            let err = s.locate(&url, "input").unwrap_err();
            assert!(matches!(err, ScoreError::PermissionDenied(ref m) if m.contains("symbolic link")), "{err}");
        }
        // ...and a prefix whose listing holds a link out is refused as a whole.
        let loc = s.locate(&format!("{}/ok/", lake.display()), "input").unwrap();
        let err = s.list_parquet(&loc).await.unwrap_err();
        assert!(matches!(err, ScoreError::PermissionDenied(ref m) if m.contains("linked.parquet")), "{err}");
        // Locations inside the root, existing or not yet, pass.
        assert!(s.locate(&format!("{}/ok/", lake.display()), "output").is_ok());
        assert!(s.locate(&format!("{}/new/deeper/", lake.display()), "output").is_ok());
        assert!(!valid_job_id("../x"));
    }
}

//! Object storage: resolving storage URLs (with an allow-list of roots), listing Parquet
//! inputs, and writing enriched Parquet with the output commit protocol: data files named
//! by job id, then the manifest `_lakescore.json` written last. A failed job removes its
//! data files and never writes a manifest.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, TryFutureExt, TryStreamExt};
use lakescore_core::store::{open_store, path_in_store, StoreOptions};
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutPayload, UpdateVersion};
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::arrow_writer::{compute_leaves, ArrowColumnWriter, ArrowRowGroupWriterFactory};
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::errors::ParquetError;
use parquet::file::metadata::{KeyValue, ParquetMetaData, ParquetMetaDataReader};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::ColumnPath;
use serde::Serialize;
use url::Url;

use lakescore_engine::error::{Result, ScoreError};
use lakescore_engine::scorer::ResolvedModel;

/// Name of the manifest written last under an output prefix.
pub const MANIFEST_NAME: &str = "_lakescore.json";

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

fn parquet_err(e: object_store::Error) -> ParquetError {
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

/// `name type, …` for an error message.
fn describe_fields(fields: &[SchemaField]) -> String {
    fields.iter().map(|f| format!("{} {}", f.name, f.ty)).collect::<Vec<_>>().join(", ")
}

/// Validate a client-supplied job id: `[A-Za-z0-9_-]{1,64}`.
pub fn valid_job_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// One written data file.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct WrittenFile {
    /// File name relative to the output prefix.
    pub path: String,
    /// Full URL.
    pub url: String,
    /// Rows.
    pub rows: u64,
    /// Bytes.
    pub bytes: u64,
    /// sha256 of the file's bytes, as written (manifests before it have none).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sha256: String,
}

/// The object upload of one data file, hashing what passes through it: the manifest lists
/// each file's sha256 without reading it back.
struct HashingWriter {
    inner: BufWriter,
    /// The hash of the chunks before the last one. The last chunk is hashed on a blocking
    /// thread (`pending`) while the Parquet writer encodes the next row group: on the
    /// writer's own task, hashing took a seventh of the worker's CPU in a DoPut.
    hasher: sha2::Sha256,
    pending: Option<tokio::task::JoinHandle<sha2::Sha256>>,
    /// `complete` was called: the upload is shut down, and `BufWriter::abort` would panic.
    completing: bool,
}

impl HashingWriter {
    fn new(inner: BufWriter) -> Self {
        Self { inner, hasher: sha2::Sha256::default(), pending: None, completing: false }
    }

    /// Abort the upload (its parts, where the store has them); nothing to abort once
    /// `complete` was called.
    async fn abort(&mut self) -> object_store::Result<()> {
        if self.completing {
            return Ok(());
        }
        self.inner.abort().await
    }

    /// Wait for the last chunk's hash; then `hasher` covers everything written.
    async fn settle(&mut self) -> parquet::errors::Result<()> {
        if let Some(pending) = self.pending.take() {
            self.hasher = pending.await.map_err(|e| ParquetError::External(Box::new(e)))?;
        }
        Ok(())
    }

    /// The sha256 of everything written, as hex (after `complete`, which settles it).
    fn sha256(self) -> String {
        hex::encode(sha2::Digest::finalize(self.hasher))
    }

    /// Hand one chunk of the file (a finished row group, or the footer) to the upload.
    async fn write(&mut self, bs: Bytes) -> parquet::errors::Result<()> {
        self.settle().await?;
        let mut hasher = std::mem::take(&mut self.hasher);
        let chunk = bs.clone();
        self.pending = Some(tokio::task::spawn_blocking(move || {
            sha2::Digest::update(&mut hasher, &chunk);
            hasher
        }));
        // `put` keeps the row group's bytes as they are; `write_all` copied them into the
        // upload's buffer first.
        self.inner.put(bs).await.map_err(parquet_err)
    }

    /// Settle the hash and complete the upload.
    async fn complete(&mut self) -> parquet::errors::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.settle().await?;
        self.completing = true;
        self.inner.shutdown().await.map_err(|e| ParquetError::External(Box::new(e)))
    }
}

/// One data file being written: batches encoded into Parquet row groups, and each finished
/// row group handed to the upload. The columns of a batch are encoded on blocking threads, a
/// share of the columns each: arrow-rs's `AsyncArrowWriter` encodes them one after another
/// on the calling task, which caps a file at one core's rate (about 175 ns/row for a
/// 20-feature classifier's output), below what DoExchange moves, however many cores the
/// worker has. The bytes are `ArrowWriter`'s: its schema conversion, its column writers, its
/// row-group cut.
struct ParquetFile {
    file: SerializedFileWriter<Vec<u8>>,
    factory: ArrowRowGroupWriterFactory,
    /// The file's schema: its fields, not a batch's, say how columns are encoded.
    schema: SchemaRef,
    /// Parquet's leaf columns, in order: the top-level field each belongs to.
    leaf_fields: Vec<usize>,
    /// The open row group's column writers, by top-level field (a nested field has several).
    open: Option<Vec<Vec<ArrowColumnWriter>>>,
    open_rows: usize,
    row_group_rows: usize,
    threads: usize,
    upload: HashingWriter,
}

impl ParquetFile {
    fn try_new(
        upload: HashingWriter,
        schema: SchemaRef,
        props: WriterProperties,
        metadata: &[(String, String)],
    ) -> Result<Self> {
        // Rows are what cuts row groups here (the writer's properties set no byte limit).
        let row_group_rows =
            props.max_row_group_row_count().unwrap_or(parquet::file::properties::DEFAULT_MAX_ROW_GROUP_ROW_COUNT);
        let (mut file, factory) =
            ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props))?.into_serialized_writer()?;
        for (key, value) in metadata {
            file.append_key_value_metadata(KeyValue::new(key.clone(), value.clone()));
        }
        let leaves = file.schema_descr();
        let leaf_fields = (0..leaves.num_columns()).map(|i| leaves.get_column_root_idx(i)).collect();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(Self {
            file,
            factory,
            schema,
            leaf_fields,
            open: None,
            open_rows: 0,
            row_group_rows: row_group_rows.max(1),
            threads,
            upload,
        })
    }

    /// Bytes written so far (the whole file once finished).
    fn bytes_written(&self) -> usize {
        self.file.bytes_written()
    }

    async fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let mut offset = 0;
        while offset < batch.num_rows() {
            let rows = (self.row_group_rows - self.open_rows).min(batch.num_rows() - offset);
            self.encode(batch.slice(offset, rows)).await?;
            offset += rows;
            if self.open_rows >= self.row_group_rows {
                self.close_row_group().await?;
            }
        }
        Ok(())
    }

    /// Encode `batch` into the open row group (opened here when there is none).
    async fn encode(&mut self, batch: RecordBatch) -> Result<()> {
        let columns = match self.open.take() {
            Some(columns) => columns,
            None => {
                let index = self.file.flushed_row_groups().len();
                let mut by_field: Vec<Vec<ArrowColumnWriter>> =
                    (0..self.schema.fields().len()).map(|_| Vec::new()).collect();
                for (writer, field) in self.factory.create_column_writers(index)?.into_iter().zip(&self.leaf_fields) {
                    by_field[*field].push(writer);
                }
                by_field
            }
        };
        let rows = batch.num_rows();
        let schema = self.schema.clone();
        let columns = on_threads(self.threads, columns, move |i, mut writers| {
            let leaves = compute_leaves(schema.field(i), batch.column(i))?;
            for (writer, leaf) in writers.iter_mut().zip(&leaves) {
                writer.write(leaf)?;
            }
            Ok(writers)
        })
        .await?;
        self.open = Some(columns);
        self.open_rows += rows;
        Ok(())
    }

    /// Close the open row group (if any) and hand its bytes to the upload.
    async fn close_row_group(&mut self) -> Result<()> {
        let Some(columns) = self.open.take() else {
            return Ok(());
        };
        let chunks = on_threads(self.threads, columns, |_, writers| {
            writers.into_iter().map(ArrowColumnWriter::close).collect::<parquet::errors::Result<Vec<_>>>()
        })
        .await?;
        let mut row_group = self.file.next_row_group()?;
        for chunk in chunks.into_iter().flatten() {
            chunk.append_to_row_group(&mut row_group)?;
        }
        row_group.close()?;
        self.open_rows = 0;
        self.send(true).await
    }

    /// Hand what has been written so far to the upload, without copying it. With `more`, the
    /// next row group's buffer is reserved at this one's size, not grown by doubling.
    async fn send(&mut self, more: bool) -> Result<()> {
        self.file.flush().map_err(ParquetError::from)?;
        let reserve = if more { self.file.inner().len() } else { 0 };
        let bytes = std::mem::replace(self.file.inner_mut(), Vec::with_capacity(reserve));
        if !bytes.is_empty() {
            self.upload.write(Bytes::from(bytes)).await?;
        }
        Ok(())
    }

    /// Close the last row group, write the footer and complete the upload.
    async fn finish(&mut self) -> Result<()> {
        self.close_row_group().await?;
        self.file.finish()?;
        self.send(false).await?;
        Ok(self.upload.complete().await?)
    }
}

/// Run `work` on each top-level field's column writers, the fields shared out over `threads`
/// blocking threads; the results in field order.
async fn on_threads<T, F>(threads: usize, columns: Vec<Vec<ArrowColumnWriter>>, work: F) -> Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(usize, Vec<ArrowColumnWriter>) -> parquet::errors::Result<T> + Send + Sync + 'static,
{
    let threads = threads.clamp(1, columns.len().max(1));
    let mut shares: Vec<Vec<(usize, Vec<ArrowColumnWriter>)>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, writers) in columns.into_iter().enumerate() {
        shares[i % threads].push((i, writers));
    }
    let work = Arc::new(work);
    let tasks = shares.into_iter().map(|share| {
        let work = work.clone();
        tokio::task::spawn_blocking(move || {
            share
                .into_iter()
                .map(|(i, writers)| Ok((i, work(i, writers)?)))
                .collect::<parquet::errors::Result<Vec<_>>>()
        })
    });
    let mut done = Vec::new();
    for share in futures::future::join_all(tasks).await {
        done.extend(share??);
    }
    done.sort_by_key(|(i, _)| *i);
    Ok(done.into_iter().map(|(_, t)| t).collect())
}

/// What the manifest records about the model.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ManifestModel {
    /// The reference the command gave.
    pub reference: String,
    /// Resolved name.
    pub name: String,
    /// Resolved version.
    pub version: i64,
    /// Artifact sha256.
    pub sha256: String,
    /// Engine used.
    pub engine: String,
}

impl From<&ResolvedModel> for ManifestModel {
    fn from(model: &ResolvedModel) -> Self {
        ManifestModel {
            reference: model.reference.clone(),
            name: model.version.model.clone(),
            version: model.version.version,
            sha256: model.version.sha256.clone(),
            engine: model.handle.engine.to_string(),
        }
    }
}

/// The summary of a finished output job (`PutResult.app_metadata`, `score-dataset`'s result).
#[derive(Debug, Clone, Serialize)]
pub struct OutputSummary {
    /// Rows written.
    pub rows: u64,
    /// URLs of the data files.
    pub files: Vec<String>,
    /// Bytes of data files.
    pub bytes: u64,
    /// The job id.
    pub job_id: String,
    /// URL of the manifest.
    pub manifest: String,
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: i64,
    /// Artifact sha256.
    pub sha256: String,
}

#[derive(Serialize, serde::Deserialize)]
struct SchemaField {
    name: String,
    #[serde(rename = "type")]
    ty: String,
    nullable: bool,
}

#[derive(Serialize)]
struct Manifest<'a> {
    format: u32,
    job_id: &'a str,
    created_at: String,
    model: &'a ManifestModel,
    rows: u64,
    bytes: u64,
    files: &'a [WrittenFile],
    schema: Vec<SchemaField>,
}

/// What an append reads back from the manifest it extends.
#[derive(serde::Deserialize)]
struct CommittedManifest {
    files: Vec<WrittenFile>,
    schema: Vec<SchemaField>,
}

/// A worker's appends run one at a time: on stores without conditional writes (local
/// files; S3 configured without them) this is what keeps two appends from losing each
/// other's files. Stores with them (S3, Azure, GCS) also refuse a manifest another worker
/// changed since it was read, and the append reads it again.
static APPENDS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Tries at an append whose manifest keeps changing under it.
const APPEND_ATTEMPTS: usize = 8;

/// Writes enriched batches as Parquet files under an output prefix; see the module docs.
pub struct JobWriter {
    loc: Location,
    job_id: String,
    schema: SchemaRef,
    props: WriterProperties,
    max_rows_per_file: usize,
    current: Option<(ParquetFile, Path, u64)>,
    done: Vec<WrittenFile>,
    seq: usize,
    /// Key-value metadata for every file's footer (lineage).
    metadata: Vec<(String, String)>,
}

impl std::fmt::Debug for JobWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobWriter")
            .field("url", &self.loc.url.as_str())
            .field("job_id", &self.job_id)
            .field("files", &self.done.len())
            .finish()
    }
}

impl JobWriter {
    /// A writer for `schema` under the output prefix `loc`.
    pub fn new(
        loc: Location,
        job_id: String,
        schema: SchemaRef,
        max_rows_per_file: usize,
        row_group_rows: usize,
    ) -> Self {
        let mut props = WriterProperties::builder();
        // Dictionary encoding rarely pays for floats (features, probabilities) and costs
        // a lot of encode time; keep it for strings and integers.
        for field in schema.fields() {
            if field.data_type().is_floating() {
                props = props.set_column_dictionary_enabled(ColumnPath::from(field.name().as_str()), false);
            } else if let DataType::FixedSizeList(item, _) = field.data_type() {
                if item.data_type().is_floating() {
                    let path = ColumnPath::new(vec![field.name().clone(), "list".into(), item.name().clone()]);
                    props = props.set_column_dictionary_enabled(path, false);
                }
            }
        }
        let props = props
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(row_group_rows.max(1)))
            .set_created_by(concat!("lakescore ", env!("CARGO_PKG_VERSION")).to_string())
            .build();
        Self {
            loc,
            job_id,
            schema,
            props,
            max_rows_per_file: max_rows_per_file.max(1),
            current: None,
            done: Vec::new(),
            seq: 0,
            metadata: Vec::new(),
        }
    }

    /// Key-value metadata written into every data file's Parquet footer (lineage: which
    /// model, version and input made it).
    pub fn with_metadata(mut self, entries: Vec<(String, String)>) -> Self {
        self.metadata = entries;
        self
    }

    /// Closes the data files without a manifest (one unit of a batch job) and says what
    /// they are; no file at all when nothing was written. On error the files are removed.
    pub async fn close(mut self) -> Result<Vec<WrittenFile>> {
        if let Err(e) = self.close_current().await {
            self.abort().await;
            return Err(e);
        }
        Ok(std::mem::take(&mut self.done))
    }

    /// The Parquet properties the files are written with.
    pub fn properties(&self) -> &WriterProperties {
        &self.props
    }

    /// The schema of the written files.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The job id.
    pub fn job_id(&self) -> &str {
        &self.job_id
    }

    fn child(&self, name: &str) -> Path {
        let mut parts: Vec<_> = self.loc.path.parts().collect();
        parts.push(name.into());
        Path::from_iter(parts)
    }

    async fn open(&mut self) -> Result<()> {
        let name = format!("part-{}-{:05}.parquet", self.job_id, self.seq);
        self.seq += 1;
        let path = self.child(&name);
        // Never clobber: a reused job id must not overwrite earlier output.
        match self.loc.store.head(&path).await {
            Ok(_) => {
                return Err(ScoreError::FailedPrecondition(format!(
                    "output {} already exists (job id {} reused)",
                    self.loc.url_of(&path),
                    self.job_id
                )))
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(ScoreError::from_store(e, format!("output {}", self.loc.url))),
        }
        let upload = HashingWriter::new(BufWriter::new(self.loc.store.clone(), path.clone()));
        let file = ParquetFile::try_new(upload, self.schema.clone(), self.props.clone(), &self.metadata)?;
        self.current = Some((file, path, 0));
        Ok(())
    }

    async fn close_current(&mut self) -> Result<()> {
        if let Some((mut w, path, rows)) = self.current.take() {
            if let Err(e) = w.finish().await {
                let _ = w.upload.abort().await;
                return Err(e);
            }
            let bytes = w.bytes_written() as u64;
            let sha256 = w.upload.sha256();
            let name = path.filename().unwrap_or_default().to_string();
            self.done.push(WrittenFile { url: self.loc.url_of(&path), path: name, rows, bytes, sha256 });
        }
        Ok(())
    }

    /// Append a batch (must have the writer's schema).
    pub async fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let mut offset = 0;
        while offset < batch.num_rows() {
            if self.current.is_none() {
                self.open().await?;
            }
            let Some((w, _, rows)) = self.current.as_mut() else {
                return Err(ScoreError::internal("no open output file"));
            };
            let room = self.max_rows_per_file - *rows as usize;
            let n = room.min(batch.num_rows() - offset);
            w.write(&batch.slice(offset, n)).await?;
            *rows += n as u64;
            offset += n;
            if *rows as usize >= self.max_rows_per_file {
                self.close_current().await?;
            }
        }
        Ok(())
    }

    /// Close the data files, then write the manifest (last): the files and the manifest's
    /// URL. An output with no rows still gets one (empty) data file so that readers see
    /// the schema.
    pub async fn finish(self, model: &ManifestModel) -> Result<(Vec<WrittenFile>, String)> {
        self.commit(model, false).await
    }

    /// Close the data files, then commit them as an append to the prefix (SQL's
    /// `INSERT INTO`): the manifest written last lists the files committed there before
    /// and these, and must record the same schema. The files are this append's.
    pub async fn append(self, model: &ManifestModel) -> Result<(Vec<WrittenFile>, String)> {
        self.commit(model, true).await
    }

    async fn commit(mut self, model: &ManifestModel, append: bool) -> Result<(Vec<WrittenFile>, String)> {
        let result = self.finish_inner(model, append).await;
        if result.is_err() {
            self.abort().await;
        }
        result
    }

    async fn finish_inner(&mut self, model: &ManifestModel, append: bool) -> Result<(Vec<WrittenFile>, String)> {
        if self.done.is_empty() && self.current.is_none() {
            self.open().await?;
        }
        self.close_current().await?;
        let path = self.child(MANIFEST_NAME);
        if append {
            self.put_appended_manifest(model, &path).await?;
        } else {
            let body = self.manifest_body(model, &[])?;
            self.loc
                .store
                .put(&path, PutPayload::from(body))
                .await
                .map_err(|e| ScoreError::from_store(e, format!("writing the manifest under {}", self.loc.url)))?;
        }
        Ok((std::mem::take(&mut self.done), self.loc.url_of(&path)))
    }

    fn schema_fields(&self) -> Vec<SchemaField> {
        self.schema
            .fields()
            .iter()
            .map(|f| SchemaField { name: f.name().clone(), ty: f.data_type().to_string(), nullable: f.is_nullable() })
            .collect()
    }

    /// The manifest for the files written, after `earlier` ones committed before them.
    fn manifest_body(&self, model: &ManifestModel, earlier: &[WrittenFile]) -> Result<Vec<u8>> {
        let files: Vec<WrittenFile> = earlier.iter().chain(&self.done).cloned().collect();
        let manifest = Manifest {
            format: 1,
            job_id: &self.job_id,
            created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            model,
            rows: files.iter().map(|f| f.rows).sum(),
            bytes: files.iter().map(|f| f.bytes).sum(),
            files: &files,
            schema: self.schema_fields(),
        };
        serde_json::to_vec_pretty(&manifest).map_err(ScoreError::internal)
    }

    /// Read the prefix's manifest (if any), add this writer's files to it, and write it
    /// back only if nobody changed it in between (see [`APPENDS`]).
    async fn put_appended_manifest(&mut self, model: &ManifestModel, path: &Path) -> Result<()> {
        let what = format!("the manifest under {}", self.loc.url);
        let store = self.loc.store.clone();
        let fields = self.schema_fields();
        let _one_at_a_time = APPENDS.lock().await;
        for _ in 0..APPEND_ATTEMPTS {
            let (earlier, mode) = match store.get(path).await {
                Ok(got) => {
                    let version = UpdateVersion { e_tag: got.meta.e_tag.clone(), version: got.meta.version.clone() };
                    let body = got.bytes().await.map_err(|e| ScoreError::from_store(e, &what))?;
                    let committed: CommittedManifest = serde_json::from_slice(&body).map_err(|e| {
                        ScoreError::FailedPrecondition(format!("{what} is not a lakescore manifest: {e}"))
                    })?;
                    if committed.schema.iter().map(|f| (&f.name, &f.ty)).ne(fields.iter().map(|f| (&f.name, &f.ty))) {
                        return Err(ScoreError::FailedPrecondition(format!(
                            "{what} records other columns ({}) than the rows appended ({})",
                            describe_fields(&committed.schema),
                            describe_fields(&fields)
                        )));
                    }
                    (committed.files, PutMode::Update(version))
                }
                Err(object_store::Error::NotFound { .. }) => (Vec::new(), PutMode::Create),
                Err(e) => return Err(ScoreError::from_store(e, &what)),
            };
            let body = PutPayload::from(self.manifest_body(model, &earlier)?);
            match store.put_opts(path, body.clone(), mode.into()).await {
                Ok(_) => return Ok(()),
                // Another worker committed in between: read its manifest again.
                Err(object_store::Error::Precondition { .. } | object_store::Error::AlreadyExists { .. }) => continue,
                // No conditional writes on this store: the lock above is the guard.
                Err(object_store::Error::NotImplemented { .. }) => {
                    store.put(path, body).await.map_err(|e| ScoreError::from_store(e, &what))?;
                    return Ok(());
                }
                Err(e) => return Err(ScoreError::from_store(e, &what)),
            }
        }
        Err(ScoreError::Unavailable(format!(
            "{what} changed under {APPEND_ATTEMPTS} appends in a row: other writers keep committing there; try again"
        )))
    }

    /// Give up: abort the open upload and delete the files already written. Best effort;
    /// no manifest is written.
    pub async fn abort(&mut self) {
        if let Some((mut w, path, _)) = self.current.take() {
            if let Err(e) = w.upload.abort().await {
                tracing::warn!(path = %path, error = %e, "aborting an output upload failed");
            }
            // Stores whose multipart abort leaves nothing behind need no delete; a local
            // file system may have created the file already.
            let _ = self.loc.store.delete(&path).await;
        }
        for f in self.done.drain(..) {
            let mut parts: Vec<_> = self.loc.path.parts().collect();
            parts.push(f.path.as_str().into());
            let path = Path::from_iter(parts);
            if let Err(e) = self.loc.store.delete(&path).await {
                tracing::warn!(path = %path, error = %e, "removing a partial output file failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::{Commit, OutputSink};
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};

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

    fn test_model(engine: &str) -> ManifestModel {
        ManifestModel { reference: "m".into(), name: "m".into(), version: 1, sha256: "x".into(), engine: engine.into() }
    }

    #[tokio::test]
    async fn writes_files_then_manifest_and_aborts_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::new(&[], StoreOptions::default()).unwrap();
        let out = format!("{}/out/", dir.path().display());
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from_iter_values(0..25))]).unwrap();
        let model = test_model("ort");

        let loc = storage.locate(&out, "output").unwrap();
        let mut w = OutputSink::new(loc, "job1".into(), schema.clone(), 10, 4, model.clone(), Commit::Manifest);
        w.write(&batch).await.unwrap();
        let summary = w.commit().await.unwrap().summary;
        assert_eq!(summary.rows, 25);
        assert_eq!(summary.files.len(), 3);
        assert!(dir.path().join("out/_lakescore.json").is_file());
        assert!(dir.path().join("out/part-job1-00002.parquet").is_file());
        // Each file's sha256, hashed a row group at a time while the next is encoded, is
        // that of its bytes.
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("out/_lakescore.json")).unwrap()).unwrap();
        let listed = manifest["files"].as_array().unwrap();
        assert_eq!(listed.len(), 3, "{manifest}");
        for file in listed {
            let bytes = std::fs::read(dir.path().join("out").join(file["path"].as_str().unwrap())).unwrap();
            assert_eq!(file["sha256"], hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)), "{file}");
        }

        // Reusing a job id does not clobber.
        let loc = storage.locate(&out, "output").unwrap();
        let mut w = OutputSink::new(loc, "job1".into(), schema.clone(), 10, 4, model.clone(), Commit::Manifest);
        assert!(matches!(w.write(&batch).await, Err(ScoreError::FailedPrecondition(_))));

        // An aborted sink, a sink whose input broke and a sink dropped mid-write leave
        // neither files nor a manifest.
        let left = |name: &str| -> Vec<_> {
            std::fs::read_dir(dir.path().join(name))
                .map(|d| d.flatten().map(|e| e.file_name()).collect())
                .unwrap_or_default()
        };
        let sink = |name: &str| {
            let loc = storage.locate(&format!("{}/{name}/", dir.path().display()), "output").unwrap();
            OutputSink::new(loc, name.into(), schema.clone(), 10, 4, model.clone(), Commit::Manifest)
        };
        let mut w = sink("aborted");
        w.write(&batch).await.unwrap();
        w.abort().await;
        assert!(left("aborted").is_empty(), "{:?}", left("aborted"));
        let broken = futures::stream::iter([Ok(batch.clone()), Err(ScoreError::Cancelled("reset".into()))]);
        let err = sink("broken").write_stream(broken).await.unwrap_err();
        assert!(matches!(err, ScoreError::Cancelled(_)), "{err}");
        assert!(left("broken").is_empty(), "{:?}", left("broken"));
        let mut w = sink("dropped");
        w.write(&batch).await.unwrap();
        assert!(!left("dropped").is_empty());
        drop(w);
        for _ in 0..100 {
            if left("dropped").is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(left("dropped").is_empty(), "{:?}", left("dropped"));

        let files = storage.list_parquet(&storage.locate(&out, "input").unwrap()).await.unwrap();
        assert_eq!(files.len(), 3);
    }

    #[tokio::test]
    async fn appends_extend_the_manifest_and_a_refused_one_leaves_it() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::new(&[], StoreOptions::default()).unwrap();
        let out = format!("{}/table/", dir.path().display());
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from_iter_values(0..15))]).unwrap();
        let model = test_model("sql");
        let manifest = || -> serde_json::Value {
            serde_json::from_slice(&std::fs::read(dir.path().join("table/_lakescore.json")).unwrap()).unwrap()
        };
        let paths = |m: &serde_json::Value| -> Vec<String> {
            m["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap().to_string()).collect()
        };

        // The first append creates the manifest, the second extends it.
        for (job, files, rows) in [("a1", 2, 15), ("a2", 4, 30)] {
            let loc = storage.locate(&out, "output").unwrap();
            let mut w = OutputSink::new(loc, job.into(), schema.clone(), 10, 4, model.clone(), Commit::Append);
            w.write(&batch).await.unwrap();
            let summary = w.commit().await.unwrap().summary;
            assert_eq!((summary.rows, summary.files.len()), (15, 2), "{job} counts its own rows");
            let m = manifest();
            assert_eq!((paths(&m).len(), m["rows"].as_u64().unwrap()), (files, rows), "{m}");
            assert_eq!(m["job_id"], job);
        }
        let committed = manifest();
        assert_eq!(paths(&committed)[..2], ["part-a1-00000.parquet", "part-a1-00001.parquet"]);

        // Other columns than the table's: refused, its parts removed, the manifest unchanged.
        let other = Arc::new(Schema::new(vec![Field::new("b", DataType::Utf8, false)]));
        let strings =
            RecordBatch::try_new(other.clone(), vec![Arc::new(arrow::array::StringArray::from(vec!["x"]))]).unwrap();
        let loc = storage.locate(&out, "output").unwrap();
        let mut w = OutputSink::new(loc, "a3".into(), other, 10, 4, model.clone(), Commit::Append);
        w.write(&strings).await.unwrap();
        let err = w.commit().await.unwrap_err();
        assert!(matches!(&err, ScoreError::FailedPrecondition(m) if m.contains("b Utf8")), "{err}");
        assert_eq!(manifest(), committed);
        assert!(!dir.path().join("table/part-a3-00000.parquet").exists());
    }

    /// A batch of every layout the column writers handle apart, with nulls, `rows` long.
    fn mixed_batch(rows: usize, seed: usize) -> RecordBatch {
        use arrow::array::{
            ArrayRef, DictionaryArray, FixedSizeListArray, Float32Array, Float64Array, Int32Array, ListArray,
            StringArray, StructArray,
        };
        use arrow::datatypes::Int32Type;
        let at = |i: usize| i + seed;
        let item = Arc::new(Field::new("item", DataType::Float32, false));
        let floats = Float32Array::from_iter((0..rows).map(|i| (at(i) % 5 != 0).then(|| at(i) as f32 * 0.37 - 4.0)));
        let strings = StringArray::from_iter((0..rows).map(|i| (at(i) % 3 != 0).then(|| format!("s{}", at(i) * 7))));
        let dictionary: DictionaryArray<Int32Type> = (0..rows).map(|i| ["red", "green", "blue"][at(i) % 3]).collect();
        let lists =
            ListArray::from_iter_primitive::<Int32Type, _, _>((0..rows).map(|i| {
                (at(i) % 4 != 1).then(|| (0..at(i) % 3).map(|j| Some((at(i) + j) as i32)).collect::<Vec<_>>())
            }));
        let nested = StructArray::from(vec![
            (
                Arc::new(Field::new("x", DataType::Float64, true)),
                Arc::new(Float64Array::from_iter((0..rows).map(|i| (at(i) % 2 == 0).then_some(at(i) as f64))))
                    as ArrayRef,
            ),
            (
                Arc::new(Field::new("y", DataType::Int32, false)),
                Arc::new(Int32Array::from_iter_values((0..rows).map(|i| at(i) as i32))) as ArrayRef,
            ),
        ]);
        let probabilities = FixedSizeListArray::try_new(
            item,
            3,
            Arc::new(Float32Array::from_iter_values((0..rows * 3).map(|i| (i + seed) as f32 / 10.0))),
            None,
        )
        .unwrap();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(floats),
            Arc::new(Int64Array::from_iter_values((0..rows).map(|i| at(i) as i64))),
            Arc::new(strings),
            Arc::new(dictionary),
            Arc::new(lists),
            Arc::new(nested),
            Arc::new(probabilities),
        ];
        let names = ["f", "i", "s", "d", "l", "st", "p"];
        RecordBatch::try_from_iter_with_nullable(names.into_iter().zip(columns).map(|(n, c)| (n, c, true))).unwrap()
    }

    #[tokio::test]
    async fn parquet_files_are_arrow_writers_bytes() {
        // Row groups of 4 rows, batches that end inside one, on one, an empty batch, a file
        // cut inside a batch: each file is byte for byte what arrow-rs's ArrowWriter writes
        // with the same properties, metadata and rows.
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::new(&[], StoreOptions::default()).unwrap();
        let batches: Vec<RecordBatch> =
            [(7, 0), (1, 7), (0, 8), (13, 8), (4, 21), (2, 25)].iter().map(|&(n, s)| mixed_batch(n, s)).collect();
        let schema = batches[0].schema();
        let metadata = vec![("lakescore.model".to_string(), "m:3".to_string())];
        let out = format!("{}/mixed/", dir.path().display());
        let mut w = JobWriter::new(storage.locate(&out, "output").unwrap(), "mix".into(), schema.clone(), 20, 4)
            .with_metadata(metadata.clone());
        let props = w.props.clone();
        for b in &batches {
            w.write(b).await.unwrap();
        }
        let (files, _) = w.finish(&test_model("trees")).await.unwrap();
        assert_eq!((files.iter().map(|f| f.rows).sum::<u64>(), files.len()), (27, 2));

        for (file, rows) in [(0, 0..20), (1, 20..27)] {
            let mut expected = Vec::new();
            let mut reference = ArrowWriter::try_new(&mut expected, schema.clone(), Some(props.clone())).unwrap();
            for (key, value) in &metadata {
                reference.append_key_value_metadata(KeyValue::new(key.clone(), value.clone()));
            }
            // The same batch boundaries as the job's (a row group cut inside a batch too).
            let mut at = 0;
            for b in &batches {
                let (start, end) = (at.max(rows.start), (at + b.num_rows()).min(rows.end));
                if start < end {
                    reference.write(&b.slice(start - at, end - start)).unwrap();
                }
                at += b.num_rows();
            }
            reference.close().unwrap();
            let written = std::fs::read(dir.path().join(format!("mixed/part-mix-{file:05}.parquet"))).unwrap();
            assert!(written == expected, "file {file}: {} bytes, ArrowWriter {} bytes", written.len(), expected.len());
        }
    }
}

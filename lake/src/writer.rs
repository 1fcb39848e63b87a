//! Enriched Parquet out: [`JobWriter`] writes batches as Parquet parts named by job id
//! under an output prefix (columns encoded on all cores, each file's sha256 hashed as it
//! streams), and commits them with the prefix's [`manifest`](crate::manifest) written last
//! (a new one, or an append to the one there). Write paths use it through
//! [`crate::sink::OutputSink`], which owns aborting and committing.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use bytes::Bytes;
use lakescore_core::retry::RetryPolicy;
use lakescore_engine::error::{Result, ScoreError};
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use parquet::arrow::arrow_writer::{compute_leaves, ArrowColumnWriter, ArrowRowGroupWriterFactory};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::errors::ParquetError;
use parquet::file::metadata::{KeyValue, ParquetMetaData};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::ColumnPath;
use serde::Serialize;

use crate::manifest::{
    describe_fields, Manifest, ManifestModel, SchemaField, WrittenFile, FORMAT_WRITE, MANIFEST_NAME,
};
use crate::storage::{parquet_err, Location};
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
    async fn finish(&mut self) -> Result<ParquetMetaData> {
        self.close_row_group().await?;
        let metadata = self.file.finish()?;
        self.send(false).await?;
        self.upload.complete().await?;
        Ok(metadata)
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
    /// URL of the manifest (empty for a Delta table).
    pub manifest: String,
    /// A Delta table's URL (absent for plain Parquet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// The table version this output committed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table_version: Option<i64>,
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: i64,
    /// Artifact sha256.
    pub sha256: String,
}

/// A worker's appends run one at a time: on stores without conditional writes (local
/// files; S3 configured without them) this is what keeps two appends from losing each
/// other's files. Stores with them (S3, Azure, GCS) also refuse a manifest another worker
/// changed since it was read, and the append reads it again.
static APPENDS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The files a writer wrote and their columns: what its manifest is made of.
struct ManifestDraft {
    loc: Location,
    job_id: String,
    files: Vec<WrittenFile>,
    schema: Vec<SchemaField>,
}

impl ManifestDraft {
    /// The manifest for these files, after `earlier` ones committed before them.
    fn body(&self, model: &ManifestModel, earlier: &[WrittenFile]) -> Result<Vec<u8>> {
        let files: Vec<WrittenFile> = earlier.iter().chain(&self.files).cloned().collect();
        let mut manifest = Manifest::new(FORMAT_WRITE, &self.job_id, model, files);
        manifest.schema = self.schema.clone();
        serde_json::to_vec_pretty(&manifest).map_err(ScoreError::internal)
    }

    /// One try at an append: read the manifest, write it back extended unless it changed
    /// in between.
    async fn append_once(&self, model: &ManifestModel, path: &Path) -> std::result::Result<(), AppendFailed> {
        let what = format!("the manifest under {}", self.loc.url);
        let store = &self.loc.store;
        let fields = &self.schema;
        let (earlier, mode) = match store.get(path).await {
            Ok(got) => {
                let version = UpdateVersion { e_tag: got.meta.e_tag.clone(), version: got.meta.version.clone() };
                let body = got.bytes().await.map_err(|e| ScoreError::from_store(e, &what))?;
                let committed: Manifest = serde_json::from_slice(&body)
                    .map_err(|e| ScoreError::FailedPrecondition(format!("{what} is not a lakescore manifest: {e}")))?;
                if committed.format != FORMAT_WRITE {
                    return Err(AppendFailed::Error(ScoreError::FailedPrecondition(format!(
                        "{what} is batch job {}'s: rows are appended only to tables written by COPY or INSERT",
                        committed.job_id
                    ))));
                }
                if committed.schema.iter().map(|f| (&f.name, &f.ty)).ne(fields.iter().map(|f| (&f.name, &f.ty))) {
                    return Err(AppendFailed::Error(ScoreError::FailedPrecondition(format!(
                        "{what} records other columns ({}) than the rows appended ({})",
                        describe_fields(&committed.schema),
                        describe_fields(fields)
                    ))));
                }
                (committed.files, PutMode::Update(version))
            }
            Err(object_store::Error::NotFound { .. }) => (Vec::new(), PutMode::Create),
            Err(e) => return Err(ScoreError::from_store(e, &what).into()),
        };
        let body = PutPayload::from(self.body(model, &earlier)?);
        match store.put_opts(path, body.clone(), mode.into()).await {
            Ok(_) => Ok(()),
            // Another worker committed in between: read its manifest again.
            Err(object_store::Error::Precondition { .. } | object_store::Error::AlreadyExists { .. }) => {
                Err(AppendFailed::Conflict)
            }
            // No conditional writes on this store: the lock above is the guard.
            Err(object_store::Error::NotImplemented { .. }) => {
                store.put(path, body).await.map_err(|e| ScoreError::from_store(e, &what))?;
                Ok(())
            }
            Err(e) => Err(ScoreError::from_store(e, &what).into()),
        }
    }
}

/// How one try at an append failed.
enum AppendFailed {
    /// Another writer changed the manifest between the read and the write: try again.
    Conflict,
    /// Anything else: the answer.
    Error(ScoreError),
}

impl From<ScoreError> for AppendFailed {
    fn from(e: ScoreError) -> Self {
        AppendFailed::Error(e)
    }
}

impl std::fmt::Display for AppendFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppendFailed::Conflict => f.write_str("another writer changed the manifest in between"),
            AppendFailed::Error(e) => e.fmt(f),
        }
    }
}

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

    /// Where the files go.
    pub fn location(&self) -> &Location {
        &self.loc
    }

    /// The job id.
    pub fn job_id(&self) -> &str {
        &self.job_id
    }

    fn child(&self, name: &str) -> Path {
        self.loc.child(name)
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
            let metadata = match w.finish().await {
                Ok(m) => m,
                Err(e) => {
                    let _ = w.upload.abort().await;
                    return Err(e);
                }
            };
            let bytes = w.bytes_written() as u64;
            let stats = Some(crate::delta::file_stats(&self.schema, &metadata, rows));
            let sha256 = w.upload.sha256();
            let name = path.filename().unwrap_or_default().to_string();
            self.done.push(WrittenFile { url: self.loc.url_of(&path), path: name, rows, bytes, sha256, stats });
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

    /// Close the data files for a commit made by the caller (a Delta table's): like
    /// [`Self::close`], but an output with no rows still gets one (empty) file, so that the
    /// commit records the columns.
    pub async fn finish_files(mut self) -> Result<Vec<WrittenFile>> {
        if self.done.is_empty() && self.current.is_none() {
            if let Err(e) = self.open().await {
                self.abort().await;
                return Err(e);
            }
        }
        self.close().await
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
            // Never over another output's manifest: its files would be forgotten.
            let body = self.draft().body(model, &[])?;
            let create = PutOptions { mode: PutMode::Create, ..Default::default() };
            self.loc.store.put_opts(&path, PutPayload::from(body), create).await.map_err(|e| match e {
                object_store::Error::AlreadyExists { .. } => ScoreError::FailedPrecondition(format!(
                    "{} holds an output already (its manifest {}); write to another prefix, or append with INSERT",
                    self.loc.url,
                    self.loc.url_of(&path)
                )),
                e => ScoreError::from_store(e, format!("writing the manifest under {}", self.loc.url)),
            })?;
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

    /// What the manifest of the files written so far is made of (no file writer in it: it
    /// is shared across the awaits of an append's tries).
    fn draft(&self) -> ManifestDraft {
        ManifestDraft {
            loc: self.loc.clone(),
            job_id: self.job_id.clone(),
            files: self.done.clone(),
            schema: self.schema_fields(),
        }
    }

    /// Read the prefix's manifest (if any), add this writer's files to it, and write it
    /// back only if nobody changed it in between (see [`APPENDS`]).
    async fn put_appended_manifest(&mut self, model: &ManifestModel, path: &Path) -> Result<()> {
        let _one_at_a_time = APPENDS.lock().await;
        let policy = RetryPolicy::CONTENDED_COMMIT;
        let conflict = |e: &AppendFailed| matches!(e, AppendFailed::Conflict);
        let draft = self.draft();
        let appended =
            policy.retry("the manifest changed under an append", conflict, || draft.append_once(model, path)).await;
        appended.map_err(|e| match e {
            AppendFailed::Conflict => ScoreError::Unavailable(format!(
                "the manifest under {} changed under {} appends in a row: other writers keep committing there; \
                 try again",
                self.loc.url,
                policy.retries + 1
            )),
            AppendFailed::Error(e) => e,
        })
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
    use arrow::array::Int64Array;
    use arrow::datatypes::Field;
    use lakescore_core::store::StoreOptions;

    use crate::storage::Storage;

    fn test_model(engine: &str) -> ManifestModel {
        ManifestModel { reference: "m".into(), name: "m".into(), version: 1, sha256: "x".into(), engine: engine.into() }
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

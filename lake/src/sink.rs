//! [`OutputSink`]: the one way scored rows reach storage. Every write path (DoPut,
//! `score-dataset`, a batch job's units, SQL `COPY … TO` and `INSERT INTO`) writes through
//! it, so each of them gets the same guarantees, and another output format plugs in here once.
//!
//! - Rows become visible only through [`OutputSink::commit`], after every batch was written.
//! - An error while writing (a broken input stream included) removes what was written
//!   before the error is returned; nothing is committed.
//! - A sink dropped before its commit (the future that drove it was dropped: a client went
//!   away, a timeout) removes what it wrote in a task of its own, so no write path has to
//!   remember to run in a spawned task to leave nothing half written.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use futures::{Stream, StreamExt};
use lakescore_engine::error::{Result, ScoreError};

use crate::storage::{JobWriter, Location, ManifestModel, OutputSummary, WrittenFile};

/// How a sink's rows become visible once all of them are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// A new output prefix: the manifest, written last, lists the files (DoPut,
    /// `score-dataset`, `COPY … TO`).
    Manifest,
    /// Added to the prefix's manifest, which must record the same columns (`INSERT INTO`).
    Append,
    /// Data files only, committed by the caller (a batch job's unit: the job's manifest lists
    /// them).
    Parts,
}

/// What a committed sink wrote.
#[derive(Debug, Clone)]
pub struct Committed {
    /// The summary a client sees (its `manifest` is empty for [`Commit::Parts`]).
    pub summary: OutputSummary,
    /// The data files, with their row counts and sha256.
    pub files: Vec<WrittenFile>,
}

/// Writes a stream of scored batches and commits them as one output; see the module docs.
pub struct OutputSink {
    /// `None` once committed or aborted.
    writer: Option<JobWriter>,
    model: ManifestModel,
    commit: Commit,
}

impl std::fmt::Debug for OutputSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputSink").field("writer", &self.writer).field("commit", &self.commit).finish()
    }
}

impl OutputSink {
    /// A sink for batches of `schema` under the prefix `out`: Parquet files named by
    /// `job_id`, of at most `max_rows_per_file` rows in row groups of `row_group_rows`.
    pub fn new(
        out: Location,
        job_id: String,
        schema: SchemaRef,
        max_rows_per_file: usize,
        row_group_rows: usize,
        model: ManifestModel,
        commit: Commit,
    ) -> Self {
        let writer = JobWriter::new(out, job_id, schema, max_rows_per_file, row_group_rows);
        Self { writer: Some(writer), model, commit }
    }

    /// Key-value metadata written into every data file's footer (lineage).
    pub fn with_metadata(mut self, entries: Vec<(String, String)>) -> Self {
        self.writer = self.writer.take().map(|w| w.with_metadata(entries));
        self
    }

    /// Write one batch (of the sink's schema). On error, what was written is removed and
    /// the sink takes nothing more.
    pub async fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let Some(writer) = self.writer.as_mut() else {
            return Err(ScoreError::internal("the output sink was already committed or aborted"));
        };
        if let Err(e) = writer.write(batch).await {
            self.abort().await;
            return Err(e);
        }
        Ok(())
    }

    /// Write every batch of `batches`; the first error (of the stream or of a write)
    /// removes what was written and is returned.
    pub async fn write_all<S>(&mut self, batches: S) -> Result<()>
    where
        S: Stream<Item = Result<RecordBatch>>,
    {
        futures::pin_mut!(batches);
        while let Some(batch) = batches.next().await {
            match batch {
                Ok(batch) => self.write(&batch).await?,
                Err(e) => {
                    self.abort().await;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Write every batch of `batches`, then commit: the whole life of most sinks.
    pub async fn write_stream<S>(mut self, batches: S) -> Result<Committed>
    where
        S: Stream<Item = Result<RecordBatch>>,
    {
        self.write_all(batches).await?;
        self.commit().await
    }

    /// Make the written rows visible as the sink's [`Commit`] says. An output with no rows
    /// still gets one (empty) data file, so that readers see its columns. On error nothing
    /// is committed and the data files are removed.
    pub async fn commit(mut self) -> Result<Committed> {
        let Some(writer) = self.writer.take() else {
            return Err(ScoreError::internal("the output sink was already committed or aborted"));
        };
        let job_id = writer.job_id().to_string();
        let (files, manifest) = match self.commit {
            Commit::Manifest => writer.finish(&self.model).await?,
            Commit::Append => writer.append(&self.model).await?,
            Commit::Parts => (writer.close().await?, String::new()),
        };
        let summary = OutputSummary {
            rows: files.iter().map(|f| f.rows).sum(),
            files: files.iter().map(|f| f.url.clone()).collect(),
            bytes: files.iter().map(|f| f.bytes).sum(),
            job_id,
            manifest,
            model: self.model.name.clone(),
            version: self.model.version,
            sha256: self.model.sha256.clone(),
        };
        Ok(Committed { summary, files })
    }

    /// Give up: remove what was written. Nothing is committed.
    pub async fn abort(&mut self) {
        if let Some(mut writer) = self.writer.take() {
            writer.abort().await;
        }
    }
}

impl Drop for OutputSink {
    fn drop(&mut self) {
        let Some(mut writer) = self.writer.take() else { return };
        // Dropped mid-write: the future driving the sink is gone, so the removal runs on its
        // own (a sink is only ever used inside the runtime).
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move { writer.abort().await });
            }
            Err(_) => tracing::warn!(?writer, "an output sink was dropped outside the runtime; its files stay"),
        }
    }
}

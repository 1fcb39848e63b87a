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
use object_store::ObjectStoreExt;

use crate::delta::{self, Outcome, TableCommit};
use crate::manifest::{ManifestModel, WrittenFile};
use crate::storage::Location;
use crate::writer::{JobWriter, OutputSummary};

/// How a sink's rows become visible once all of them are written.
#[derive(Debug, Clone)]
pub enum Commit {
    /// Added to the Delta table at the prefix in one commit (the table is created by it
    /// when there is none), with the lineage and application transactions given.
    Table(Box<TableCommit>),
    /// A new output prefix: the manifest, written last, lists the files (DoPut,
    /// `score-dataset`, `COPY … TO`).
    Manifest,
    /// Added to the prefix's manifest, which must record the same columns (`INSERT INTO`).
    Append,
    /// Data files only, committed by the caller (a batch job's unit: the job's manifest lists
    /// them).
    Parts,
    /// Data files only, that the caller commits to a Delta table (a batch job's unit):
    /// written with the table's types, as [`Commit::Table`] writes them.
    TableParts,
}

/// What a committed sink wrote.
#[derive(Debug, Clone)]
pub struct Committed {
    /// The summary a client sees (its `manifest` is empty for [`Commit::Parts`]).
    pub summary: OutputSummary,
    /// The data files, with their row counts and sha256.
    pub files: Vec<WrittenFile>,
    /// For [`Commit::Table`]: the table's version, or that its application transactions
    /// were committed before (then nothing was, and the files are gone).
    pub table: Option<Outcome>,
}

/// Writes a stream of scored batches and commits them as one output; see the module docs.
pub struct OutputSink {
    /// `None` once committed or aborted.
    writer: Option<JobWriter>,
    /// The types a Delta table's files hold, when the rows have others (nanosecond
    /// timestamps, unsigned integers, …): each batch is cast to it.
    cast: Option<SchemaRef>,
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
        let for_table = matches!(commit, Commit::Table(_) | Commit::TableParts);
        let cast = for_table.then(|| delta::delta_types(&schema)).filter(|s| s.fields() != schema.fields());
        let schema = cast.clone().unwrap_or(schema);
        let writer = JobWriter::new(out, job_id, schema, max_rows_per_file, row_group_rows);
        Self { writer: Some(writer), cast, model, commit }
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
        let written = match &self.cast {
            Some(schema) => match delta::cast_to(batch, schema) {
                Ok(cast) => writer.write(&cast).await,
                Err(e) => Err(e),
            },
            None => writer.write(batch).await,
        };
        if let Err(e) = written {
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
        let (loc, schema) = (writer.location().clone(), writer.schema().clone());
        let (mut files, manifest, table) = match &self.commit {
            Commit::Manifest => {
                let (files, manifest) = writer.finish(&self.model).await?;
                (files, manifest, None)
            }
            Commit::Append => {
                let (files, manifest) = writer.append(&self.model).await?;
                (files, manifest, None)
            }
            Commit::Parts | Commit::TableParts => (writer.close().await?, String::new(), None),
            Commit::Table(spec) => {
                // Like the manifest, an empty output still gets a file: the table's columns.
                let files = writer.finish_files().await?;
                // The files with their sha256 in the commit's lineage: the log's Add actions
                // carry no checksum.
                let mut spec = spec.as_ref().clone();
                let listed = serde_json::to_value(&files).map_err(ScoreError::internal)?;
                spec.lineage.insert("files".into(), listed);
                match delta::commit_files(&loc, &schema, &files, &spec, None).await {
                    Ok(outcome) => {
                        if matches!(outcome, Outcome::AlreadyCommitted(_)) {
                            remove_files(&loc, &files).await;
                        }
                        (files, String::new(), Some(outcome))
                    }
                    Err(e) => {
                        // Unless the commit landed after all (its answer lost on the way).
                        if !delta::references_any(&loc, &files).await {
                            remove_files(&loc, &files).await;
                        }
                        return Err(e);
                    }
                }
            }
        };
        if matches!(table, Some(Outcome::AlreadyCommitted(_))) {
            files.clear();
        }
        let summary = OutputSummary {
            rows: files.iter().map(|f| f.rows).sum(),
            files: files.iter().map(|f| f.url.clone()).collect(),
            bytes: files.iter().map(|f| f.bytes).sum(),
            job_id,
            manifest,
            table: table.is_some().then(|| loc.url.to_string()),
            table_version: match &table {
                Some(Outcome::Version(v)) => Some(*v),
                _ => None,
            },
            model: self.model.name.clone(),
            version: self.model.version,
            sha256: self.model.sha256.clone(),
        };
        Ok(Committed { summary, files, table })
    }

    /// Give up: remove what was written. Nothing is committed.
    pub async fn abort(&mut self) {
        if let Some(mut writer) = self.writer.take() {
            writer.abort().await;
        }
    }
}

/// Remove written files that will not be (or are no longer) committed.
pub(crate) async fn remove_files(loc: &Location, files: &[WrittenFile]) {
    for f in files {
        let _ = loc.store.delete(&loc.child(&f.path)).await;
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use lakescore_core::store::StoreOptions;

    use super::*;
    use crate::storage::Storage;

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
}

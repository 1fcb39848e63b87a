//! [`Lake`]: the scorer next to the data: Parquet inputs read from the storage roots, scored
//! rows written through an [`OutputSink`].

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use futures::{FutureExt, Stream, StreamExt, TryStreamExt};
use lakescore_core::store::StoreOptions;
use lakescore_engine::error::{Result, ScoreError};
use lakescore_engine::mapping::ScorePlan;
use lakescore_engine::scorer::{run_ahead, BatchStream, ResolvedModel, Scorer};
use lakescore_engine::source::Credentials;
use lakescore_proto::ScoreCommand;
use object_store::ObjectMeta;
use parquet::arrow::ParquetRecordBatchStreamBuilder;

use crate::manifest::ManifestModel;
use crate::sink::{Commit, OutputSink};
use crate::storage::{valid_job_id, Location, ObjectReader, Storage};
use crate::writer::OutputSummary;

/// The scorer with the storage roots it may read and write. Cheap to share (`Arc<Lake>`).
#[derive(Debug)]
pub struct Lake {
    scorer: Arc<Scorer>,
    storage: Storage,
}

impl Lake {
    /// The lake of `scorer`'s configuration (`storage_roots`, `storage_options`).
    pub fn new(scorer: Arc<Scorer>) -> Result<Self> {
        let config = scorer.config();
        let storage = Storage::new(
            &config.storage_roots,
            StoreOptions { options: config.storage_options.clone(), ..Default::default() },
        )?;
        Ok(Self { scorer, storage })
    }

    /// The scorer.
    pub fn scorer(&self) -> &Arc<Scorer> {
        &self.scorer
    }

    /// The storage resolver.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// A sink for `schema` under `out`, with the worker's file and row-group sizes.
    pub fn sink(
        &self,
        out: Location,
        job_id: String,
        schema: SchemaRef,
        model: ManifestModel,
        commit: Commit,
    ) -> OutputSink {
        let config = self.scorer.config();
        OutputSink::new(out, job_id, schema, config.max_rows_per_file, config.row_group_rows, model, commit)
    }

    /// Score `input` and write it under `cmd.output` with the commit protocol (see
    /// [`OutputSink`]).
    pub async fn write_output<S>(
        &self,
        model: &ResolvedModel,
        plan: Arc<ScorePlan>,
        cmd: &ScoreCommand,
        input: S,
    ) -> Result<OutputSummary>
    where
        S: Stream<Item = Result<RecordBatch>> + Send + 'static,
    {
        let sink = self.sink(
            self.output_location(cmd)?,
            job_id(cmd)?,
            plan.output_schema().clone(),
            ManifestModel::from(model),
            Commit::Manifest,
        );
        // Decoded and scored ahead while the sink encodes and hashes.
        let scored = run_ahead(self.scorer.score_stream(model, plan, cmd, input), 2);
        Ok(sink.write_stream(scored).await?.summary)
    }

    /// Where `cmd.output` points (checked against the storage roots).
    pub fn output_location(&self, cmd: &ScoreCommand) -> Result<Location> {
        if cmd.output.is_empty() {
            return Err(ScoreError::invalid("the score command has no output (a storage URL prefix)"));
        }
        self.storage.locate(&cmd.output, "output")
    }

    /// The Parquet files of `cmd.input`.
    pub async fn input_files(&self, cmd: &ScoreCommand) -> Result<(Location, Vec<ObjectMeta>)> {
        if cmd.input.is_empty() {
            return Err(ScoreError::invalid("the score command has no input (a storage URL of Parquet files)"));
        }
        let loc = self.storage.locate(&cmd.input, "input")?;
        let files = self.storage.list_parquet(&loc).await?;
        Ok((loc, files))
    }

    /// Open one Parquet file: its Arrow schema and a stream of its batches.
    pub async fn read_parquet(
        &self,
        loc: &Location,
        meta: &ObjectMeta,
        row_groups: Option<Vec<usize>>,
    ) -> Result<(SchemaRef, BatchStream)> {
        let url = loc.url_of(&meta.location);
        let read_error = {
            let url = url.clone();
            move |e: parquet::errors::ParquetError| ScoreError::from(e).context(format!("reading {url}"))
        };
        // The Parquet reader, like the IPC one, can panic on a malformed file instead of
        // failing: a dataset in storage is input too, so a panic is INVALID_ARGUMENT.
        let malformed = {
            let url = url.clone();
            move |_| ScoreError::InvalidArgument(format!("reading {url}: the Parquet file is malformed"))
        };
        let reader = ObjectReader::new(loc.store.clone(), meta);
        let mut builder = AssertUnwindSafe(ParquetRecordBatchStreamBuilder::new(reader))
            .catch_unwind()
            .await
            .map_err(malformed.clone())?
            .map_err(read_error.clone())?
            .with_batch_size(self.scorer.config().inference_batch_rows.max(1));
        if let Some(groups) = row_groups {
            let n = builder.metadata().num_row_groups();
            if let Some(bad) = groups.iter().find(|g| **g >= n) {
                return Err(ScoreError::InvalidArgument(format!("{url} has no row group {bad} ({n} row groups)")));
            }
            builder = builder.with_row_groups(groups);
        }
        let schema = builder.schema().clone();
        let batches = builder.build().map_err(read_error.clone())?;
        let stream = AssertUnwindSafe(batches)
            .catch_unwind()
            .map(move |item| match item {
                Ok(batch) => batch.map_err(&read_error),
                Err(panic) => Err(malformed(panic)),
            })
            .boxed();
        Ok((schema, stream))
    }

    /// `score-dataset`: every Parquet file of `cmd.input`, scored, written under
    /// `cmd.output`, manifest last. Every file must give the same enriched schema.
    pub async fn score_dataset(self: &Arc<Self>, cmd: &ScoreCommand, creds: &Credentials) -> Result<OutputSummary> {
        let model = self.scorer.resolve_model(&cmd.model, creds).await?;
        let out = self.output_location(cmd)?;
        let (loc, files) = self.input_files(cmd).await?;
        let Some(first) = files.first() else {
            return Err(ScoreError::NotFound(format!("input {}: no Parquet files", cmd.input)));
        };
        // The first file's plan gives the output's columns; every other file must agree.
        let (schema, _) = self.read_parquet(&loc, first, None).await?;
        let expected = self.plan_file(&model, cmd, schema, &loc, first)?.output_schema().clone();
        let sink = self.sink(out, job_id(cmd)?, expected.clone(), ManifestModel::from(&model), Commit::Manifest);
        let (lake, cmd) = (self.clone(), Arc::new(cmd.clone()));
        let scored = futures::stream::iter(files)
            .then(move |meta| {
                let (lake, cmd, model) = (lake.clone(), cmd.clone(), model.clone());
                let (loc, expected) = (loc.clone(), expected.clone());
                async move {
                    let (schema, batches) = lake.read_parquet(&loc, &meta, None).await?;
                    let plan = lake.plan_file(&model, &cmd, schema, &loc, &meta)?;
                    if plan.output_schema().fields() != expected.fields() {
                        return Err(ScoreError::InvalidArgument(format!(
                            "input file {} gives another result schema than the first file",
                            loc.url_of(&meta.location)
                        )));
                    }
                    Ok(lake.scorer.score_stream(&model, plan, &cmd, batches))
                }
            })
            .try_flatten()
            .boxed();
        // Read and scored ahead while the sink encodes and hashes, as in `write_output`.
        Ok(sink.write_stream(run_ahead(scored, 2)).await?.summary)
    }

    /// The plan for one input file; its errors name the file.
    fn plan_file(
        &self,
        model: &ResolvedModel,
        cmd: &ScoreCommand,
        schema: SchemaRef,
        loc: &Location,
        meta: &ObjectMeta,
    ) -> Result<Arc<ScorePlan>> {
        self.scorer
            .plan(model, cmd, schema)
            .map_err(|e| e.context(format!("input file {}", loc.url_of(&meta.location))))
    }
}

/// The job id the command gives (checked), or a new one.
pub fn job_id(cmd: &ScoreCommand) -> Result<String> {
    if cmd.job_id.is_empty() {
        Ok(uuid::Uuid::now_v7().simple().to_string())
    } else if valid_job_id(&cmd.job_id) {
        Ok(cmd.job_id.clone())
    } else {
        Err(ScoreError::invalid("job_id must match [A-Za-z0-9_-]{1,64}"))
    }
}

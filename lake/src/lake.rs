//! [`Lake`]: the scorer next to the data: Parquet inputs read from the storage roots, scored
//! rows written through an [`OutputSink`].

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{FieldRef, SchemaRef};
use futures::{FutureExt, Stream, StreamExt, TryStreamExt};
use lakescore_core::store::StoreOptions;
use lakescore_engine::error::{Result, ScoreError};
use lakescore_engine::mapping::ScorePlan;
use lakescore_engine::scorer::{run_ahead, BatchStream, ResolvedModel, Scorer};
use lakescore_engine::source::Credentials;
use lakescore_proto::ScoreCommand;
use object_store::{ObjectMeta, ObjectStoreExt};
use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};

use crate::delta::{self, TableCommit, TableVersion};
use crate::manifest::{ManifestModel, MANIFEST_NAME};
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

    /// Score `input` and write it to `cmd.output` with the commit protocol (see
    /// [`OutputSink`]).
    pub async fn write_output<S>(
        &self,
        model: &ResolvedModel,
        plan: Arc<ScorePlan>,
        cmd: &ScoreCommand,
        creds: &Credentials,
        input: S,
    ) -> Result<OutputSummary>
    where
        S: Stream<Item = Result<RecordBatch>> + Send + 'static,
    {
        let job_id = job_id(cmd)?;
        let (out, format) = self.output_target(cmd).await?;
        let manifest_model = ManifestModel::from(model);
        let commit = match format {
            OutputFormat::Parquet => Commit::Manifest,
            OutputFormat::Delta => {
                let lineage = lineage(&manifest_model, cmd, None, &job_id, creds);
                Commit::Table(Box::new(TableCommit { lineage, ..Default::default() }))
            }
        };
        let sink = self.sink(out, job_id, plan.output_schema().clone(), manifest_model, commit);
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

    /// Where `cmd.output` points and what it is written as: `output_format` when given
    /// (refused when the location holds the other format already), else what is there
    /// already, else a Delta table.
    pub async fn output_target(&self, cmd: &ScoreCommand) -> Result<(Location, OutputFormat)> {
        let out = self.output_location(cmd)?;
        let is_table = delta::is_table(&out).await?;
        let has_manifest = match out.store.head(&out.child(MANIFEST_NAME)).await {
            Ok(_) => true,
            Err(object_store::Error::NotFound { .. }) => false,
            Err(e) => return Err(ScoreError::from_store(e, format!("output {}", out.url))),
        };
        let format = match cmd.output_format.trim().to_ascii_lowercase().as_str() {
            "" if has_manifest => OutputFormat::Parquet,
            "" | "delta" => OutputFormat::Delta,
            "parquet" => OutputFormat::Parquet,
            other => {
                return Err(ScoreError::InvalidArgument(format!(
                "output_format '{other}': give 'delta' (a Delta table, the default) or 'parquet' (Parquet parts and \
                     a _lakescore.json manifest)"
            )))
            }
        };
        match format {
            OutputFormat::Delta if has_manifest && !is_table => Err(ScoreError::FailedPrecondition(format!(
                "output {} holds plain Parquet output (a {MANIFEST_NAME} manifest), not a Delta table; write to \
                 another location, or with output_format 'parquet'",
                out.url
            ))),
            OutputFormat::Parquet if is_table => Err(ScoreError::FailedPrecondition(format!(
                "output {} is a Delta table: Parquet parts written there would not be in the table; write it as \
                 Delta (output_format 'delta') or to another location",
                out.url
            ))),
            _ => Ok((out, format)),
        }
    }

    /// What `cmd.input` reads: a Delta table's live files at the version the command asks
    /// for, or the Parquet files of a prefix (those its manifest lists, when it has one).
    pub async fn input(&self, cmd: &ScoreCommand) -> Result<Input> {
        if cmd.input.is_empty() {
            return Err(ScoreError::invalid("the score command has no input (a storage URL of Parquet files)"));
        }
        let loc = self.storage.locate(&cmd.input, "input")?;
        let at = TableVersion::from_command(cmd.input_version, &cmd.input_timestamp)?;
        if delta::is_table(&loc).await? {
            let table = delta::table_input(&loc, &at, &cmd.input_partitions).await?;
            let files =
                table.files.into_iter().map(|f| InputFile { meta: f.meta, partition: f.partition.into() }).collect();
            return Ok(Input {
                loc,
                files,
                table_version: Some(table.version),
                partition_fields: table.partition_fields.into(),
            });
        }
        if at != TableVersion::Latest || !cmd.input_partitions.is_empty() {
            return Err(ScoreError::InvalidArgument(format!(
                "input {}: input_version, input_timestamp and input_partitions are for Delta tables, and it is not one \
                 (no _delta_log/)",
                loc.url
            )));
        }
        let files = self.storage.list_parquet(&loc).await?;
        let files = files.into_iter().map(|meta| InputFile { meta, partition: Arc::from([]) }).collect();
        Ok(Input { loc, files, table_version: None, partition_fields: Arc::from([]) })
    }

    /// One input file opened for scoring: planned against its schema (a Delta table's
    /// partition columns appended), then read with only the columns that plan uses (the
    /// model's features and the kept columns). Plan errors name the file.
    pub async fn open_scored(
        &self,
        model: &ResolvedModel,
        cmd: &ScoreCommand,
        loc: &Location,
        meta: &ObjectMeta,
        row_groups: Option<Vec<usize>>,
        (fields, values): (Arc<[FieldRef]>, Arc<[Option<String>]>),
    ) -> Result<(Arc<ScorePlan>, BatchStream)> {
        let url = loc.url_of(&meta.location);
        let plan = |schema: SchemaRef| {
            let schema = partitioned_schema(&schema, &fields, &values)?;
            self.scorer.plan(model, cmd, schema).map_err(|e| e.context(format!("input file {url}")))
        };
        let mut planned = None;
        let (_, batches) = self
            .read_parquet(loc, meta, row_groups, |file_schema| {
                let full = plan(file_schema.clone())?;
                let used: Vec<String> = full.read_columns().into_iter().map(str::to_string).collect();
                let columns: Vec<usize> = file_schema
                    .fields()
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| used.contains(f.name()))
                    .map(|(i, _)| i)
                    .collect();
                if columns.len() < file_schema.fields().len() {
                    // The plan of the columns read must be the same plan: the same columns
                    // fed and kept, the same result (a default that depends on which
                    // columns exist would not be; then every column is read).
                    let projected = plan(Arc::new(file_schema.project(&columns)?))?;
                    if projected.read_columns() == used && projected.output_schema() == full.output_schema() {
                        planned = Some(projected);
                        return Ok(Some(columns));
                    }
                }
                planned = Some(full);
                Ok(None)
            })
            .await?;
        let plan = planned.ok_or_else(|| ScoreError::Internal(format!("input file {url}: not planned")))?;
        let (_, batches) = with_partitions(plan.input_schema().clone(), batches, fields, values)?;
        Ok((plan, batches))
    }

    /// Open one Parquet file: its Arrow schema and a stream of its batches.
    /// `project` sees the file's schema and names the columns to read (`None`: all).
    pub async fn read_parquet(
        &self,
        loc: &Location,
        meta: &ObjectMeta,
        row_groups: Option<Vec<usize>>,
        project: impl FnOnce(SchemaRef) -> Result<Option<Vec<usize>>>,
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
        if let Some(columns) = project(builder.schema().clone())? {
            let mask = ProjectionMask::roots(builder.parquet_schema(), columns);
            builder = builder.with_projection(mask);
        }
        let batches = builder.build().map_err(read_error.clone())?;
        let schema = batches.schema().clone();
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
        let job_id = job_id(cmd)?;
        let (out, format) = self.output_target(cmd).await?;
        let input = Arc::new(self.input(cmd).await?);
        let Some(first) = input.files.first() else {
            return Err(ScoreError::NotFound(format!("input {}: no Parquet files", cmd.input)));
        };
        // The first file's plan gives the output's columns; every other file must agree.
        let (plan, _) = self.open_scored(&model, cmd, &input.loc, &first.meta, None, input.partition(first)).await?;
        let expected = plan.output_schema().clone();
        let manifest_model = ManifestModel::from(&model);
        let commit = match format {
            OutputFormat::Parquet => Commit::Manifest,
            OutputFormat::Delta => {
                let lineage = lineage(&manifest_model, cmd, input.table_version, &job_id, creds);
                Commit::Table(Box::new(TableCommit { lineage, ..Default::default() }))
            }
        };
        let sink = self.sink(out, job_id, expected.clone(), manifest_model, commit);
        let (lake, cmd) = (self.clone(), Arc::new(cmd.clone()));
        let files = input.files.clone();
        let scored = futures::stream::iter(files)
            .then(move |file| {
                let (lake, cmd, model) = (lake.clone(), cmd.clone(), model.clone());
                let (input, expected) = (input.clone(), expected.clone());
                async move {
                    let (plan, batches) =
                        lake.open_scored(&model, &cmd, &input.loc, &file.meta, None, input.partition(&file)).await?;
                    if plan.output_schema().fields() != expected.fields() {
                        return Err(ScoreError::InvalidArgument(format!(
                            "input file {} gives another result schema than the first file",
                            input.loc.url_of(&file.meta.location)
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
}

/// What an output is written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// A Delta table.
    Delta,
    /// Parquet parts and a `_lakescore.json` manifest.
    Parquet,
}

/// A score command's input: its files, and for a Delta table the version read and its
/// partition columns.
#[derive(Debug, Clone)]
pub struct Input {
    /// The input's location.
    pub loc: Location,
    /// Its files, in path order.
    pub files: Vec<InputFile>,
    /// A Delta table's version read.
    pub table_version: Option<i64>,
    /// A Delta table's partition columns (empty otherwise).
    pub partition_fields: Arc<[FieldRef]>,
}

impl Input {
    /// `file`'s partition columns and values, for [`Lake::open_scored`].
    pub fn partition(&self, file: &InputFile) -> (Arc<[FieldRef]>, Arc<[Option<String>]>) {
        (self.partition_fields.clone(), file.partition.clone())
    }
}

/// One input file and, in a partitioned Delta table, its partition values.
#[derive(Debug, Clone)]
pub struct InputFile {
    /// The file.
    pub meta: ObjectMeta,
    /// Its partition values, in [`Input::partition_fields`] order (`None`: null).
    pub partition: Arc<[Option<String>]>,
}

/// `schema` with a Delta file's partition columns appended, as [`with_partitions`] gives.
fn partitioned_schema(schema: &SchemaRef, fields: &[FieldRef], values: &[Option<String>]) -> Result<SchemaRef> {
    if fields.is_empty() {
        return Ok(schema.clone());
    }
    Ok(delta::with_partition_values(RecordBatch::new_empty(schema.clone()), fields, values)?.schema())
}

/// `batches` (of `schema`) with a Delta file's partition columns appended.
pub fn with_partitions(
    schema: SchemaRef,
    batches: BatchStream,
    fields: Arc<[FieldRef]>,
    values: Arc<[Option<String>]>,
) -> Result<(SchemaRef, BatchStream)> {
    if fields.is_empty() {
        return Ok((schema, batches));
    }
    let schema = partitioned_schema(&schema, &fields, &values)?;
    let batches = batches.map(move |b| delta::with_partition_values(b?, &fields, &values)).boxed();
    Ok((schema, batches))
}

/// What a Delta commit of scored rows records in `commitInfo.lakescore`.
pub fn lineage(
    model: &ManifestModel,
    cmd: &ScoreCommand,
    input_version: Option<i64>,
    job_id: &str,
    creds: &Credentials,
) -> serde_json::Map<String, serde_json::Value> {
    let mut lineage = serde_json::Map::new();
    lineage.insert("model".into(), model.name.clone().into());
    lineage.insert("version".into(), model.version.into());
    lineage.insert("sha256".into(), model.sha256.clone().into());
    lineage.insert("reference".into(), model.reference.clone().into());
    lineage.insert("engine".into(), model.engine.clone().into());
    if !cmd.input.is_empty() {
        lineage.insert("input".into(), cmd.input.clone().into());
    }
    if let Some(v) = input_version {
        lineage.insert("input_version".into(), v.into());
    }
    lineage.insert("job_id".into(), job_id.into());
    if let Some(principal) = principal(creds) {
        lineage.insert("principal".into(), principal.into());
    }
    lineage.insert("lakescore_version".into(), env!("CARGO_PKG_VERSION").into());
    lineage
}

/// Who the caller's token names (`upn`, `preferred_username`, `oid` or `sub`, the first it
/// has): read, not verified, from a token the registry has just accepted for this call.
fn principal(creds: &Credentials) -> Option<String> {
    use base64::Engine as _;
    let token = creds.authorization.as_deref()?.strip_prefix("Bearer ")?;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    ["upn", "preferred_username", "oid", "sub"]
        .iter()
        .find_map(|c| claims.get(*c).and_then(|v| v.as_str()).map(str::to_string))
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

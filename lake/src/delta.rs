//! Delta Lake tables through delta-rs's log (`deltalake-core`): what a reader scores (the
//! live files of one version, the latest or one picked by number or time) and the commits
//! writers make (the files an [`crate::sink::OutputSink`] wrote, added in one commit, with
//! the lineage in `commitInfo` and application transactions that let a unit commit once).
//!
//! lakescore writes the Parquet files itself (its parallel writer, [`crate::writer`]) and
//! hands delta-rs only the commit: the log, its conflict checks and its retries are
//! delta-rs's, so Spark, Synapse, Polars, DuckDB and delta-rs read what it commits.
//!
//! The tables live in the stores lakescore opened (the storage roots, their credentials):
//! delta-rs is given that store, never a URL to open on its own.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use arrow::array::{new_null_array, ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use deltalake_core::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake_core::kernel::transaction::{CommitBuilder, CommitProperties, TransactionError};
use deltalake_core::kernel::{Action, Add, Remove, StructType, Transaction};
use deltalake_core::logstore::{
    default_logstore, logstore_factories, LogStore, LogStoreFactory, LogStoreRef, ObjectStoreRef, StorageConfig,
};
use deltalake_core::operations::create::CreateBuilder;
use deltalake_core::protocol::{DeltaOperation, SaveMode};
use deltalake_core::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStoreExt};
use parquet::file::metadata::ParquetMetaData;
use serde_json::Value;
use url::Url;

use lakescore_engine::error::{Result, ScoreError};

use crate::manifest::WrittenFile;
use crate::storage::Location;

/// The directory of a Delta table's log.
pub const LOG_DIR: &str = "_delta_log";

/// Which version of a table to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum TableVersion {
    /// The latest.
    #[default]
    Latest,
    /// This version.
    Number(i64),
    /// The last version committed at or before this time.
    AsOf(chrono::DateTime<chrono::Utc>),
}

impl TableVersion {
    /// From a score command's `input_version` and `input_timestamp`.
    pub fn from_command(version: Option<i64>, timestamp: &str) -> Result<Self> {
        match (version, timestamp.trim()) {
            (Some(_), t) if !t.is_empty() => {
                Err(ScoreError::invalid("input_version and input_timestamp are exclusive: give one"))
            }
            (Some(v), _) if v < 0 => Err(ScoreError::InvalidArgument(format!("input_version {v} is negative"))),
            (Some(v), _) => Ok(Self::Number(v)),
            (None, "") => Ok(Self::Latest),
            (None, t) => chrono::DateTime::parse_from_rfc3339(t)
                .map(|t| Self::AsOf(t.with_timezone(&chrono::Utc)))
                .map_err(|e| {
                    ScoreError::InvalidArgument(format!(
                        "input_timestamp '{t}' is not an RFC 3339 time (2026-11-01T00:00:00Z): {e}"
                    ))
                }),
        }
    }

    fn is_latest(&self) -> bool {
        matches!(self, Self::Latest)
    }
}

/// The stores delta-rs may be handed: it only opens `file://` and `memory://` tables on its
/// own, and looks a log store up by scheme even when given the store.
fn register_schemes() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        #[derive(Debug)]
        struct GivenStore;
        impl LogStoreFactory for GivenStore {
            fn with_options(
                &self,
                prefixed: ObjectStoreRef,
                root: ObjectStoreRef,
                location: &Url,
                options: &StorageConfig,
            ) -> deltalake_core::DeltaResult<Arc<dyn LogStore>> {
                // Commits are conditional puts (`PutMode::Create`), which object_store does
                // natively on S3, Azure, GCS and local files.
                Ok(default_logstore(prefixed, root, location, options))
            }
        }
        let factories = logstore_factories();
        for scheme in ["s3", "s3a", "az", "adl", "azure", "abfs", "abfss", "gs", "http", "https"] {
            if let Ok(url) = Url::parse(&format!("{scheme}://")) {
                factories.insert(url, Arc::new(GivenStore));
            }
        }
    });
}

/// The table's URL for delta-rs: the location's, as a directory.
fn table_url(loc: &Location) -> Result<Url> {
    let mut url = Url::parse(&loc.url_of(&loc.path)).map_err(ScoreError::internal)?;
    if !url.path().ends_with('/') {
        url.set_path(&format!("{}/", url.path()));
    }
    Ok(url)
}

/// delta-rs's log store for the table at `loc`, over lakescore's store.
pub fn log_store(loc: &Location) -> Result<LogStoreRef> {
    register_schemes();
    let url = table_url(loc)?;
    DeltaTableBuilder::from_url(url.clone())
        .and_then(|b| b.with_storage_backend(loc.store.clone(), url).build_storage())
        .map_err(|e| delta_error(e, &loc.url))
}

/// Whether `loc` holds a Delta table (a `_delta_log/` with a commit or a checkpoint).
pub async fn is_table(loc: &Location) -> Result<bool> {
    let log = loc.child(LOG_DIR);
    let listed = loc.store.list_with_delimiter(Some(&log)).await;
    match listed {
        Ok(l) => Ok(l
            .objects
            .iter()
            .any(|o| o.location.filename().is_some_and(|n| n.ends_with(".json") || n.contains(".checkpoint")))),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        // A file (local stores fail to list "under" it): no table.
        Err(_) if loc.store.head(&loc.path).await.is_ok() => Ok(false),
        Err(e) => Err(ScoreError::from_store(e, format!("looking for a Delta table at {}", loc.url))),
    }
}

/// The table at `loc` as of `at`; `None` when there is none yet.
pub async fn open(loc: &Location, at: &TableVersion) -> Result<Option<DeltaTable>> {
    if !is_table(loc).await? {
        return Ok(None);
    }
    let mut table = DeltaTable::new(log_store(loc)?);
    let loaded = match at {
        TableVersion::Latest => table.load().await,
        TableVersion::Number(v) => table.load_version(*v as u64).await,
        TableVersion::AsOf(t) => table.load_with_datetime(*t).await,
    };
    match loaded {
        Ok(()) => {
            if let TableVersion::AsOf(t) = at {
                // delta-rs reads the first version for a time before it: that is no version.
                if let Some(committed) = commit_time(loc, table.version().unwrap_or(0) as i64).await {
                    if committed > *t {
                        return Err(ScoreError::NotFound(format!(
                            "Delta table {}: no version was committed at or before {t} (its first, version {}, at {committed})",
                            loc.url,
                            table.version().unwrap_or(0)
                        )));
                    }
                }
            }
            Ok(Some(table))
        }
        Err(DeltaTableError::InvalidVersion(v)) => Err(ScoreError::NotFound(format!(
            "Delta table {}: it has no version {v}{}",
            loc.url,
            latest_hint(loc).await
        ))),
        // delta-rs's kernel says so in its own words for a version past the last.
        Err(e) if matches!(at, TableVersion::Number(_)) => match (at, latest_version(loc).await) {
            (TableVersion::Number(v), Some(latest)) if *v > latest => Err(ScoreError::NotFound(format!(
                "Delta table {}: it has no version {v} (its versions are 0 to {latest})",
                loc.url
            ))),
            _ => Err(delta_error(e, &loc.url)),
        },
        Err(DeltaTableError::NotATable(_)) if !at.is_latest() => {
            Err(ScoreError::NotFound(format!("Delta table {}: no version was committed at or before {at:?}", loc.url)))
        }
        Err(e) => Err(delta_error(e, &loc.url)),
    }
}

/// When version `v`'s commit file was written (what delta-rs's time travel goes by);
/// `None` when it is gone (a checkpointed, cleaned-up log).
async fn commit_time(loc: &Location, v: i64) -> Option<chrono::DateTime<chrono::Utc>> {
    let path = loc.child(&format!("{LOG_DIR}/{v:020}.json"));
    loc.store.head(&path).await.ok().map(|m| m.last_modified)
}

async fn latest_hint(loc: &Location) -> String {
    latest_version(loc).await.map(|v| format!(" (its versions are 0 to {v})")).unwrap_or_default()
}

async fn latest_version(loc: &Location) -> Option<i64> {
    let mut table = DeltaTable::new(log_store(loc).ok()?);
    table.load().await.ok()?;
    table.version().map(|v| v as i64)
}

/// One live data file of a table version, with its partition values.
#[derive(Debug, Clone)]
pub struct TableFile {
    /// The file.
    pub meta: ObjectMeta,
    /// Its partition columns' values (`None`: null), in the table's partition order.
    pub partition: Vec<Option<String>>,
}

/// A table version as a reader scores it.
#[derive(Debug, Clone)]
pub struct TableInput {
    /// The version read.
    pub version: i64,
    /// The table's partition columns (typed as the table's schema says).
    pub partition_fields: Vec<FieldRef>,
    /// Its live files, in path order.
    pub files: Vec<TableFile>,
}

/// The live files of the table at `loc` as of `at`, those of the partitions `filters`
/// (`column=value`) pick. A table whose files need what lakescore does not read (deletion
/// vectors, column mapping) is refused by name rather than read wrong.
pub async fn table_input(loc: &Location, at: &TableVersion, filters: &[String]) -> Result<TableInput> {
    let Some(table) = open(loc, at).await? else {
        return Err(ScoreError::NotFound(format!("{} is not a Delta table (no {LOG_DIR}/)", loc.url)));
    };
    let state = table.snapshot().map_err(|e| delta_error(e, &loc.url))?;
    let version = state.version() as i64;
    let metadata = state.metadata();
    if let Some(mode) = metadata.configuration().get("delta.columnMapping.mode").filter(|m| m.as_str() != "none") {
        return Err(ScoreError::Unimplemented(format!(
            "Delta table {} uses column mapping (delta.columnMapping.mode = {mode}), which lakescore does not read yet",
            loc.url
        )));
    }
    let schema = state.snapshot().arrow_schema();
    let partition_columns: Vec<String> = metadata.partition_columns().to_vec();
    let mut partition_fields = Vec::new();
    for name in partition_columns.iter() {
        let field = schema.field_with_name(name).map_err(|_| {
            ScoreError::DataLoss(format!("Delta table {}: partition column {name} not in its schema", loc.url))
        })?;
        partition_fields.push(Arc::new(field.clone()));
    }
    let wanted = parse_filters(filters, &partition_columns, &loc.url)?;
    let log_store = table.log_store();
    let mut files = Vec::new();
    let mut views = state.snapshot().file_views(log_store.as_ref(), None);
    while let Some(view) = views.try_next().await.map_err(|e| delta_error(e, &loc.url))? {
        if view.deletion_vector_descriptor().is_some() {
            return Err(ScoreError::Unimplemented(format!(
                "Delta table {} version {version}: {} has a deletion vector, which lakescore does not apply yet; \
                 rewrite the table without them (delta.enableDeletionVectors = false, then OPTIMIZE or REORG)",
                loc.url,
                view.path()
            )));
        }
        let values = view.partition_values_map();
        let partition: Vec<Option<String>> =
            partition_columns.iter().map(|c| values.get(c).cloned().flatten()).collect();
        if !wanted.iter().all(|(i, v)| partition[*i].as_deref() == *v) {
            continue;
        }
        // The log's paths are relative and URL-encoded; object_store's path is decoded
        // already (a Spark partition directory `ts=2026-11-01 00%3A00%3A00` stays as it is).
        let location = Path::from_iter(loc.path.parts().chain(view.object_store_path().parts()));
        let meta = ObjectMeta {
            location,
            last_modified: view.modification_datetime().unwrap_or_default(),
            size: view.size().max(0) as u64,
            e_tag: None,
            version: None,
        };
        files.push(TableFile { meta, partition });
    }
    files.sort_by(|a, b| a.meta.location.cmp(&b.meta.location));
    Ok(TableInput { version, partition_fields, files })
}

/// `column=value` filters as (partition index, value); `column=` (empty) matches null.
fn parse_filters<'a>(filters: &'a [String], columns: &[String], url: &Url) -> Result<Vec<(usize, Option<&'a str>)>> {
    filters
        .iter()
        .map(|f| {
            let Some((column, value)) = f.split_once('=') else {
                return Err(ScoreError::InvalidArgument(format!("input_partitions: '{f}' is not column=value")));
            };
            let column = column.trim();
            let index = columns.iter().position(|c| c == column).ok_or_else(|| {
                ScoreError::InvalidArgument(format!(
                    "input_partitions: {column} is not a partition column of {url} (its partition columns: {})",
                    if columns.is_empty() { "none".to_string() } else { columns.join(", ") }
                ))
            })?;
            Ok((index, (!value.is_empty()).then_some(value)))
        })
        .collect()
}

/// `batch` with the partition columns a file's rows share appended (Delta's data files do
/// not hold them), typed as the table says.
pub fn with_partition_values(
    batch: RecordBatch,
    fields: &[FieldRef],
    values: &[Option<String>],
) -> Result<RecordBatch> {
    if fields.is_empty() {
        return Ok(batch);
    }
    let rows = batch.num_rows();
    let mut schema_fields: Vec<FieldRef> = batch.schema().fields().iter().cloned().collect();
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    for (field, value) in fields.iter().zip(values) {
        if batch.schema().index_of(field.name()).is_ok() {
            continue;
        }
        let column = match value {
            None => new_null_array(field.data_type(), rows),
            Some(v) => {
                let text: ArrayRef = Arc::new(StringArray::from(vec![v.as_str(); rows]));
                arrow::compute::cast(&text, field.data_type()).map_err(|e| {
                    ScoreError::DataLoss(format!(
                        "partition value '{v}' of {} is not a {}: {e}",
                        field.name(),
                        field.data_type()
                    ))
                })?
            }
        };
        schema_fields.push(Arc::new(Field::new(field.name(), field.data_type().clone(), true)));
        columns.push(column);
    }
    Ok(RecordBatch::try_new(Arc::new(Schema::new(schema_fields)), columns)?)
}

/// What a commit of written files records besides the files.
#[derive(Debug, Clone, Default)]
pub struct TableCommit {
    /// `commitInfo.lakescore`: the model, the input and its version, the job, the caller.
    pub lineage: serde_json::Map<String, Value>,
    /// Application transactions: a commit whose app id the table already has at this
    /// version or later is not made (the unit was committed before).
    pub txns: Vec<Transaction>,
    /// The job lock's epoch (app id, epoch): the commit is refused once the table records a
    /// later epoch for it, so a worker that lost its lock cannot commit.
    pub fence: Option<Transaction>,
    /// Checked like the fence, not recorded: the job's generation (a job whose output was
    /// removed has moved on; a shard still at the old one commits nothing).
    pub guards: Vec<Transaction>,
    /// Partition columns of a table created by this commit.
    pub partition_by: Vec<String>,
    /// Partition values of each file (by file path), in `partition_by` order.
    pub partition_values: HashMap<String, Vec<Option<String>>>,
}

/// How a commit ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The table's new version.
    Version(i64),
    /// The table records some of the commit's application transactions already (these app
    /// ids): nothing was committed.
    AlreadyCommitted(Vec<String>),
}

/// The application transactions a writer has seen in a table's commits up to a version:
/// what lets a batch job check its units against the commits made since it last looked,
/// rather than the whole log for each unit.
#[derive(Debug, Clone, Default)]
pub struct TxnWatch {
    /// The version the watch has read up to (`None`: none yet).
    pub scanned: Option<i64>,
    /// App ids seen, with their latest version.
    pub seen: HashMap<String, i64>,
}

impl TxnWatch {
    /// Read the commits after [`Self::scanned`] up to `version`.
    async fn catch_up(&mut self, log_store: &dyn LogStore, version: i64, url: &Url) -> Result<()> {
        let from = self.scanned.map_or(0, |v| v + 1);
        for v in from..=version {
            let Some(bytes) = log_store.read_commit_entry(v as u64).await.map_err(|e| delta_error(e, url))? else {
                continue;
            };
            for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let Ok(action) = serde_json::from_slice::<Value>(line) else { continue };
                if let (Some(app), Some(version)) = (action["txn"]["appId"].as_str(), action["txn"]["version"].as_i64())
                {
                    let latest = self.seen.entry(app.to_string()).or_insert(version);
                    *latest = (*latest).max(version);
                }
            }
        }
        self.scanned = Some(version);
        Ok(())
    }
}

/// Delta's statistics of a written file, `{"numRecords", "nullCount", "minValues",
/// "maxValues"}`, from its Parquet footer: readers skip files with them. Min and max are
/// given for top-level numeric and string columns whose every row group has them.
pub fn file_stats(schema: &Schema, metadata: &ParquetMetaData, rows: u64) -> String {
    use parquet::file::statistics::Statistics as S;
    let (mut nulls, mut mins, mut maxs) = (serde_json::Map::new(), serde_json::Map::new(), serde_json::Map::new());
    let leaves = metadata.file_metadata().schema_descr();
    for (leaf, column) in (0..leaves.num_columns()).map(|i| (i, leaves.column(i))) {
        // Top-level primitive columns only: one path segment.
        if column.path().parts().len() != 1 {
            continue;
        }
        let Ok(field) = schema.field_with_name(&column.path().parts()[0]) else { continue };
        let stats: Vec<Option<&S>> = metadata.row_groups().iter().map(|rg| rg.column(leaf).statistics()).collect();
        let null_count: Option<u64> = stats.iter().map(|s| s.and_then(|s| s.null_count_opt())).sum();
        if let Some(n) = null_count {
            nulls.insert(field.name().clone(), n.into());
        }
        // Unsigned integers are kept as signed Parquet integers: their bounds would wrap.
        let numeric = field.data_type().is_signed_integer() || field.data_type().is_floating();
        let bounds: Option<Vec<(Value, Value)>> = stats
            .iter()
            .map(|s| -> Option<(Value, Value)> {
                match (*s)? {
                    S::Int32(v) if numeric => Some(((*v.min_opt()?).into(), (*v.max_opt()?).into())),
                    S::Int64(v) if numeric => Some(((*v.min_opt()?).into(), (*v.max_opt()?).into())),
                    S::Float(v) if numeric => Some((finite(*v.min_opt()? as f64)?, finite(*v.max_opt()? as f64)?)),
                    S::Double(v) if numeric => Some((finite(*v.min_opt()?)?, finite(*v.max_opt()?)?)),
                    S::ByteArray(v) if matches!(field.data_type(), arrow::datatypes::DataType::Utf8) => {
                        let min = std::str::from_utf8(v.min_opt()?.data()).ok()?;
                        let max = std::str::from_utf8(v.max_opt()?.data()).ok()?;
                        // Long values are left out rather than truncated: a cut maximum
                        // would be below the real one.
                        (max.len() <= 64 && min.len() <= 64).then(|| (min.into(), max.into()))
                    }
                    _ => None,
                }
            })
            .collect();
        let Some(bounds) = bounds.filter(|b| !b.is_empty()) else { continue };
        let pick = |greater: bool| {
            bounds.iter().map(|b| if greater { &b.1 } else { &b.0 }).cloned().reduce(|a, b| {
                if (compare(&b, &a) == std::cmp::Ordering::Greater) == greater {
                    b
                } else {
                    a
                }
            })
        };
        if let (Some(min), Some(max)) = (pick(false), pick(true)) {
            mins.insert(field.name().clone(), min);
            maxs.insert(field.name().clone(), max);
        }
    }
    serde_json::json!({"numRecords": rows, "nullCount": nulls, "minValues": mins, "maxValues": maxs}).to_string()
}

fn finite(v: f64) -> Option<Value> {
    v.is_finite().then(|| v.into())
}

fn compare(a: &Value, b: &Value) -> std::cmp::Ordering {
    match (a, b) {
        (Value::String(a), Value::String(b)) => a.cmp(b),
        (Value::Number(a), Value::Number(b)) => match (a.as_i64(), b.as_i64()) {
            (Some(a), Some(b)) => a.cmp(&b),
            _ => a.as_f64().unwrap_or(0.0).total_cmp(&b.as_f64().unwrap_or(0.0)),
        },
        _ => std::cmp::Ordering::Equal,
    }
}

fn add_action(file: &WrittenFile, partition_by: &[String], values: Option<&Vec<Option<String>>>) -> Add {
    let partition_values = partition_by
        .iter()
        .enumerate()
        .map(|(i, c)| (c.clone(), values.and_then(|v| v.get(i).cloned().flatten())))
        .collect();
    Add {
        path: file.path.clone(),
        partition_values,
        size: file.bytes as i64,
        modification_time: chrono::Utc::now().timestamp_millis(),
        data_change: true,
        stats: file.stats.clone(),
        tags: None,
        deletion_vector: None,
        base_row_id: None,
        default_row_commit_version: None,
        clustering_provider: None,
    }
}

/// `schema` as a table keeps it: every column nullable (as Spark creates tables, so that a
/// later write whose input column may hold nulls, a pandas-written file, still fits), and
/// each type as Delta has it ([`delta_type`]). What a table is created with, and what its
/// data files are written as.
pub fn table_schema(schema: &Schema) -> SchemaRef {
    let fields: Vec<Field> =
        delta_types(schema).fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect();
    Arc::new(Schema::new(fields))
}

/// `schema` with each type as Delta has it ([`delta_type`]): what a table's data files are
/// written as.
pub fn delta_types(schema: &Schema) -> SchemaRef {
    let fields: Vec<Field> =
        schema.fields().iter().map(|f| f.as_ref().clone().with_data_type(delta_type(f.data_type()))).collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// The Arrow type a Delta table reads `dt` back as, which its files must hold so that
/// every engine reads them and the next write of the same rows fits: timestamps in
/// microseconds (UTC when zoned; Spark refuses nanoseconds), dates as days, unsigned
/// integers as the next wider signed type (checked when cast), one string, one binary and
/// one list type, dictionaries as their values.
pub fn delta_type(dt: &DataType) -> DataType {
    use arrow::datatypes::TimeUnit;
    let field = |f: &FieldRef| Arc::new(f.as_ref().clone().with_data_type(delta_type(f.data_type())));
    match dt {
        DataType::Timestamp(_, tz) => DataType::Timestamp(TimeUnit::Microsecond, tz.as_ref().map(|_| "UTC".into())),
        DataType::Date64 => DataType::Date32,
        DataType::UInt8 => DataType::Int16,
        DataType::UInt16 => DataType::Int32,
        DataType::UInt32 | DataType::UInt64 => DataType::Int64,
        DataType::Float16 => DataType::Float32,
        DataType::LargeUtf8 | DataType::Utf8View => DataType::Utf8,
        DataType::LargeBinary | DataType::BinaryView | DataType::FixedSizeBinary(_) => DataType::Binary,
        // The table says array, which readers take as a variable list: polars refuses a
        // file whose Arrow schema says fixed-size list against it.
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => DataType::List(field(f)),
        DataType::Struct(fields) => DataType::Struct(fields.iter().map(field).collect()),
        DataType::Dictionary(_, values) => delta_type(values),
        other => other.clone(),
    }
}

/// `batch` with its columns cast to `schema`'s types (see [`table_schema`]); an unsigned
/// value too large for the signed type is an error, not a null.
pub fn cast_to(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let options = arrow::compute::CastOptions { safe: false, ..Default::default() };
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(column, field)| {
            if column.data_type() == field.data_type() {
                return Ok(column.clone());
            }
            arrow::compute::cast_with_options(column, field.data_type(), &options).map_err(|e| {
                ScoreError::InvalidArgument(format!(
                    "column {} ({}) cannot be written to a Delta table as {}: {e}",
                    field.name(),
                    column.data_type(),
                    field.data_type()
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// The Delta schema of `schema`: what the table is created with.
fn delta_schema(schema: &Schema, url: &Url) -> Result<StructType> {
    let converted: std::result::Result<StructType, _> = schema.try_into_kernel();
    converted
        .map_err(|e| ScoreError::InvalidArgument(format!("the result's columns cannot be a Delta table at {url}: {e}")))
}

/// Refuse rows whose columns the table does not have as they are: names, types, and no
/// null in a column the table says has none. Names the first column that differs.
pub fn check_schema(table: &Schema, ours: &Schema, url: &Url) -> Result<()> {
    for field in ours.fields() {
        let Ok(theirs) = table.field_with_name(field.name()) else {
            return Err(ScoreError::FailedPrecondition(format!(
                "Delta table {url} has no column {}; its columns: {}",
                field.name(),
                describe(table)
            )));
        };
        if !same_type(theirs.data_type(), field.data_type()) {
            return Err(ScoreError::FailedPrecondition(format!(
                "Delta table {url}: column {} is {} there, the rows have {}",
                field.name(),
                theirs.data_type(),
                field.data_type()
            )));
        }
        if !theirs.is_nullable() && field.is_nullable() {
            return Err(ScoreError::FailedPrecondition(format!(
                "Delta table {url}: column {} may hold no nulls there, the rows' may",
                field.name()
            )));
        }
    }
    if let Some(missing) = table.fields().iter().find(|f| ours.field_with_name(f.name()).is_err() && !f.is_nullable()) {
        return Err(ScoreError::FailedPrecondition(format!(
            "Delta table {url}: its column {} (not nullable) is not in the rows",
            missing.name()
        )));
    }
    Ok(())
}

/// Arrow types as Delta keeps them: a fixed-size list is a list there, any string a string.
fn same_type(table: &arrow::datatypes::DataType, ours: &arrow::datatypes::DataType) -> bool {
    use arrow::datatypes::DataType::*;
    match (table, ours) {
        (List(a) | LargeList(a) | FixedSizeList(a, _), List(b) | LargeList(b) | FixedSizeList(b, _)) => {
            same_type(a.data_type(), b.data_type())
        }
        (Utf8 | LargeUtf8 | Utf8View, Utf8 | LargeUtf8 | Utf8View) => true,
        (Timestamp(_, z1), Timestamp(_, z2)) => z1.is_some() == z2.is_some(),
        (Struct(a), Struct(b)) if a.len() == b.len() => {
            a.iter().zip(b.iter()).all(|(x, y)| x.name() == y.name() && same_type(x.data_type(), y.data_type()))
        }
        (table, Dictionary(_, values)) => same_type(table, values),
        // What the rows are written as: see `delta_type`.
        (table, ours) if *ours != delta_type(ours) => same_type(table, &delta_type(ours)),
        (a, b) => a == b,
    }
}

fn describe(schema: &Schema) -> String {
    schema.fields().iter().map(|f| format!("{} {}", f.name(), f.data_type())).collect::<Vec<_>>().join(", ")
}

/// Commit `files` (written under `loc`, with columns `schema`) to the table there: the table
/// is created by this commit when there is none, with `schema`'s columns. One commit,
/// whatever the number of files; a concurrent writer's append is merged by delta-rs's
/// retry (blind appends do not conflict).
pub async fn commit_files(
    loc: &Location,
    schema: &SchemaRef,
    files: &[WrittenFile],
    spec: &TableCommit,
    mut watch: Option<&mut TxnWatch>,
) -> Result<Outcome> {
    let url = &loc.url;
    let mut metadata: HashMap<String, Value> = HashMap::new();
    metadata.insert("lakescore".into(), Value::Object(spec.lineage.clone()));
    metadata.insert("clientVersion".into(), Value::String(concat!("lakescore.", env!("CARGO_PKG_VERSION")).into()));
    if let Some(principal) = spec.lineage.get("principal").and_then(Value::as_str) {
        metadata.insert("userName".into(), Value::String(principal.to_string()));
    }
    let mut txns = spec.txns.clone();
    txns.extend(spec.fence.clone());
    let adds: Vec<Action> = files
        .iter()
        .map(|f| Action::Add(add_action(f, &spec.partition_by, spec.partition_values.get(&f.path))))
        .collect();
    // Created here, or appended to: a table another writer created meanwhile is appended to.
    for attempt in 0..2 {
        let existing = open(loc, &TableVersion::Latest).await?;
        let Some(table) = existing else {
            let columns = delta_schema(&table_schema(schema), url)?;
            // No retry: a writer that loses the race to create the table appends to it
            // through the checks below (delta-rs would commit the losing create on top).
            let properties = CommitProperties::default()
                .with_metadata(metadata.clone())
                .with_application_transactions(txns.clone())
                .with_max_retries(0);
            let created = CreateBuilder::new()
                .with_log_store(log_store(loc)?)
                .with_columns(columns.fields().cloned())
                .with_partition_columns(spec.partition_by.clone())
                .with_save_mode(SaveMode::ErrorIfExists)
                .with_actions(adds.clone())
                .with_commit_properties(properties)
                .await;
            match created {
                Ok(table) => return Ok(Outcome::Version(table.version().unwrap_or(0) as i64)),
                Err(_) if attempt == 0 && is_table(loc).await.unwrap_or(false) => continue,
                Err(e) => return Err(delta_error(e, url)),
            }
        };
        let state = table.snapshot().map_err(|e| delta_error(e, url))?;
        let log_store = table.log_store();
        check_schema(&state.snapshot().arrow_schema(), schema, url)?;
        let partitioned = state.metadata().partition_columns();
        if *partitioned != spec.partition_by {
            return Err(ScoreError::FailedPrecondition(format!(
                "Delta table {url} is partitioned by [{}]; these rows are written partitioned by [{}]",
                partitioned.join(", "),
                spec.partition_by.join(", ")
            )));
        }
        let mut recorded = Vec::new();
        match watch.as_deref_mut() {
            Some(watch) if !spec.txns.is_empty() => {
                watch.catch_up(log_store.as_ref(), state.version() as i64, url).await?;
                for txn in &spec.txns {
                    if watch.seen.get(&txn.app_id).is_some_and(|v| *v >= txn.version) {
                        recorded.push(txn.app_id.clone());
                    }
                }
            }
            _ => {
                for txn in &spec.txns {
                    let version = state
                        .transaction_version(log_store.as_ref(), &txn.app_id)
                        .await
                        .map_err(|e| delta_error(e, url))?;
                    if version.is_some_and(|v| v >= txn.version) {
                        recorded.push(txn.app_id.clone());
                    }
                }
            }
        }
        if !recorded.is_empty() {
            return Ok(Outcome::AlreadyCommitted(recorded));
        }
        let fences = spec.fence.iter().chain(&spec.guards).cloned().collect();
        check_fences(state, log_store.as_ref(), fences, url).await?;
        let operation = DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: (!spec.partition_by.is_empty()).then(|| spec.partition_by.clone()),
            predicate: None,
        };
        let properties =
            CommitProperties::default().with_metadata(metadata.clone()).with_application_transactions(txns.clone());
        let builder = CommitBuilder::from(properties).with_actions(adds.clone());
        return land(builder, state, log_store.clone(), operation, url).await.map(Outcome::Version);
    }
    Err(ScoreError::Unavailable(format!("Delta table {url}: created and removed while committing; try again")))
}

/// Remove `paths` (data files of the table at `loc`) in one commit: what a failed or
/// cancelled batch job had committed unit by unit.
pub async fn remove_files(
    loc: &Location,
    paths: &[WrittenFile],
    lineage: serde_json::Map<String, Value>,
    txns: Vec<Transaction>,
    fence: &Transaction,
) -> Result<Option<i64>> {
    if paths.is_empty() && txns.is_empty() {
        return Ok(None);
    }
    let Some(table) = open(loc, &TableVersion::Latest).await? else { return Ok(None) };
    let state = table.snapshot().map_err(|e| delta_error(e, &loc.url))?;
    check_fences(state, table.log_store().as_ref(), vec![fence.clone()], &loc.url).await?;
    let now = chrono::Utc::now().timestamp_millis();
    let actions: Vec<Action> = paths
        .iter()
        .map(|f| {
            Action::Remove(Remove {
                path: f.path.clone(),
                data_change: true,
                deletion_timestamp: Some(now),
                extended_file_metadata: Some(true),
                partition_values: Some(HashMap::new()),
                size: Some(f.bytes as i64),
                tags: None,
                deletion_vector: None,
                base_row_id: None,
                default_row_commit_version: None,
            })
        })
        .collect();
    let mut metadata = HashMap::new();
    metadata.insert("lakescore".to_string(), Value::Object(lineage));
    let operation = DeltaOperation::Delete { predicate: None };
    let properties = CommitProperties::default().with_metadata(metadata).with_application_transactions(txns);
    let builder = CommitBuilder::from(properties).with_actions(actions);
    land(builder, state, table.log_store(), operation, &loc.url).await.map(Some)
}

/// Refuse a commit when the table records a later version of one of `fences` (a lock's
/// epoch, a job's generation) than this writer holds.
async fn check_fences(
    state: &deltalake_core::table::state::DeltaTableState,
    log_store: &dyn LogStore,
    fences: Vec<Transaction>,
    url: &Url,
) -> Result<()> {
    for fence in fences {
        let recorded = state.transaction_version(log_store, &fence.app_id).await.map_err(|e| delta_error(e, url))?;
        if let Some(later) = recorded.filter(|v| *v > fence.version) {
            return Err(ScoreError::Locked(format!(
                "Delta table {url}: {} is at {later} there, this run holds {}: it was taken over (or the job \
                 moved on), and this run commits nothing more",
                fence.app_id, fence.version
            )));
        }
    }
    Ok(())
}

/// Make one commit: its version once it is in the log. Checkpoints and log cleanup run
/// after, and their failure is logged, not the commit's: its files are in the table.
async fn land(
    builder: CommitBuilder,
    state: &deltalake_core::table::state::DeltaTableState,
    log_store: LogStoreRef,
    operation: DeltaOperation,
    url: &Url,
) -> Result<i64> {
    let prepared = builder.build(Some(state), log_store, operation).into_prepared_commit_future().await;
    let landed = prepared.map_err(|e| commit_error(e, url))?.await.map_err(|e| commit_error(e, url))?;
    let version = landed.version as i64;
    if let Err(e) = landed.await {
        tracing::warn!(table = %url, version, error = %e, "committed; the checkpoint or log cleanup after it failed");
    }
    Ok(version)
}

/// Whether the table at `loc` has any of `files` live: after a commit that failed in a way
/// that leaves its landing unknown (a connection lost on the log's write), what says
/// whether the files may be deleted. Unknown (no answer) counts as yes: a file left over
/// is harmless, a table pointing at a deleted one is not.
pub async fn references_any(loc: &Location, files: &[WrittenFile]) -> bool {
    if files.is_empty() {
        return false;
    }
    let Ok(Some(table)) = open(loc, &TableVersion::Latest).await else { return true };
    let Ok(state) = table.snapshot() else { return true };
    let names: std::collections::HashSet<String> = files.iter().map(|f| f.path.clone()).collect();
    let mut views = state.snapshot().file_views(table.log_store().as_ref(), None);
    loop {
        match views.try_next().await {
            Ok(Some(view)) => {
                let path = view.path();
                if names.contains(path.as_ref()) {
                    return true;
                }
            }
            Ok(None) => return false,
            Err(_) => return true,
        }
    }
}

/// A commit's error: losing a race to a concurrent commit of the same application
/// transaction (a unit, or the lock's epoch) is `UNAVAILABLE`: read the table again, and
/// the unit is found committed, or the epoch taken over.
fn commit_error(e: DeltaTableError, url: &Url) -> ScoreError {
    if let DeltaTableError::Transaction { source: TransactionError::CommitConflict(conflict) } = &e {
        return ScoreError::Unavailable(format!(
            "Delta table {url}: a concurrent commit conflicts with this one ({conflict}); nothing was committed"
        ));
    }
    delta_error(e, url)
}

/// delta-rs's errors as lakescore's codes.
pub fn delta_error(e: DeltaTableError, url: &Url) -> ScoreError {
    match e {
        DeltaTableError::ObjectStore { source } => ScoreError::from_store(source, format!("Delta table {url}")),
        DeltaTableError::NotATable(_) => ScoreError::NotFound(format!("{url} is not a Delta table")),
        DeltaTableError::InvalidVersion(v) => ScoreError::NotFound(format!("Delta table {url} has no version {v}")),
        DeltaTableError::Transaction { source: TransactionError::MaxCommitAttempts(n) } => ScoreError::Unavailable(
            format!("Delta table {url}: the commit lost to concurrent writers {n} times; try again"),
        ),
        DeltaTableError::Transaction { source: TransactionError::UnsupportedTableFeatures(f) } => {
            ScoreError::Unimplemented(format!("Delta table {url} needs table features lakescore cannot write: {f:?}"))
        }
        DeltaTableError::SchemaMismatch { msg } => ScoreError::FailedPrecondition(format!("Delta table {url}: {msg}")),
        DeltaTableError::InvalidJsonLog { .. } | DeltaTableError::InvalidData { .. } => {
            ScoreError::DataLoss(format!("Delta table {url}: {e}"))
        }
        other => ScoreError::Unavailable(format!("Delta table {url}: {other}")),
    }
}

/// The table's commits, newest first: version, time, operation and lakescore's lineage.
pub async fn history(loc: &Location, limit: Option<usize>) -> Result<Vec<Value>> {
    let Some(table) = open(loc, &TableVersion::Latest).await? else {
        return Err(ScoreError::NotFound(format!("{} is not a Delta table (no {LOG_DIR}/)", loc.url)));
    };
    let latest = table.version().unwrap_or(0) as i64;
    let log_store = table.log_store();
    let mut commits = Vec::new();
    // Version by version, newest first, each numbered by its own file (a commit without
    // commitInfo, as some writers make, is listed with what the log has: its version).
    for version in (0..=latest).rev().take(limit.unwrap_or(usize::MAX)) {
        let Some(bytes) = log_store.read_commit_entry(version as u64).await.map_err(|e| delta_error(e, &loc.url))?
        else {
            break; // cleaned up below a checkpoint: nothing older to list
        };
        let info = bytes
            .split(|b| *b == b'\n')
            .filter_map(|line| serde_json::from_slice::<Value>(line).ok())
            .find_map(|action| action.get("commitInfo").cloned())
            .unwrap_or(Value::Null);
        commits.push(serde_json::json!({
            "version": version,
            "timestamp": info.get("timestamp"),
            "operation": info.get("operation"),
            "operation_parameters": info.get("operationParameters"),
            "user_name": info.get("userName"),
            "client_version": info.get("clientVersion"),
            "lakescore": info.get("lakescore"),
        }));
    }
    Ok(commits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Storage;
    use crate::writer::JobWriter;
    use arrow::array::{Float64Array, Int64Array};

    fn location(name: &str) -> Location {
        let storage = Storage::new(&[], Default::default()).expect("storage");
        storage.locate(&format!("memory:///{name}/"), "output").expect("location")
    }

    fn batch(values: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("score", DataType::Float64, true),
        ]));
        let scores: Float64Array = values.iter().map(|v| (*v != 3).then_some(*v as f64 / 2.0)).collect();
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(values.to_vec())), Arc::new(scores)])
            .expect("batch")
    }

    /// Files of `values`, written as the sinks write them.
    async fn written(loc: &Location, job: &str, values: &[i64]) -> Vec<WrittenFile> {
        let b = batch(values);
        let mut w = JobWriter::new(loc.clone(), job.into(), b.schema(), 1000, 100);
        w.write(&b).await.expect("write");
        w.finish_files().await.expect("files")
    }

    async fn rows(loc: &Location, at: TableVersion) -> Vec<i64> {
        let input = table_input(loc, &at, &[]).await.expect("table input");
        let mut ids = Vec::new();
        for f in input.files {
            let bytes = loc.store.get(&f.meta.location).await.expect("get").bytes().await.expect("bytes");
            let reader =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes).expect("parquet").build();
            for b in reader.expect("reader") {
                let b = b.expect("batch");
                let col = b.column(0).as_any().downcast_ref::<Int64Array>().expect("ids").clone();
                ids.extend(col.values().iter().copied());
            }
        }
        ids.sort();
        ids
    }

    #[tokio::test]
    async fn creates_appends_refuses_other_columns_and_travels_in_time() {
        let loc = location("create");
        let schema = batch(&[1]).schema();
        assert!(!is_table(&loc).await.expect("probe"));
        let first = written(&loc, "a", &[1, 2, 3]).await;
        let spec = TableCommit::default();
        assert_eq!(commit_files(&loc, &schema, &first, &spec, None).await.expect("create"), Outcome::Version(0));
        let second = written(&loc, "b", &[4, 5]).await;
        assert_eq!(commit_files(&loc, &schema, &second, &spec, None).await.expect("append"), Outcome::Version(1));
        assert_eq!(rows(&loc, TableVersion::Latest).await, vec![1, 2, 3, 4, 5]);
        assert_eq!(rows(&loc, TableVersion::Number(0)).await, vec![1, 2, 3]);
        let err = table_input(&loc, &TableVersion::Number(9), &[]).await.unwrap_err();
        assert!(matches!(&err, ScoreError::NotFound(m) if m.contains("no version 9")), "{err}");

        // Statistics for readers' file skipping, from the files' footers.
        let stats: Value = serde_json::from_str(first[0].stats.as_deref().expect("stats")).expect("json");
        assert_eq!(stats["numRecords"], 3);
        assert_eq!((stats["minValues"]["id"].clone(), stats["maxValues"]["id"].clone()), (1.into(), 3.into()));
        assert_eq!(stats["nullCount"]["score"], 1);

        // Other columns: refused by name, nothing committed.
        let other = Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, false)]));
        let err = commit_files(&loc, &other, &[], &spec, None).await.unwrap_err();
        assert!(matches!(&err, ScoreError::FailedPrecondition(m) if m.contains("column id")), "{err}");
        // Created with every column nullable (as Spark creates tables): rows that may hold
        // nulls where the first write's had none still fit.
        let table = open(&loc, &TableVersion::Latest).await.expect("open").expect("table");
        assert!(table.snapshot().expect("snapshot").snapshot().arrow_schema().fields().iter().all(|f| f.is_nullable()));
        assert_eq!(open(&loc, &TableVersion::Latest).await.expect("open").expect("table").version(), Some(1));

        // The lineage is in commitInfo.
        let mut lineage = serde_json::Map::new();
        lineage.insert("model".into(), "m".into());
        let third = written(&loc, "c", &[6]).await;
        commit_files(&loc, &schema, &third, &TableCommit { lineage, ..Default::default() }, None)
            .await
            .expect("commit");
        let history = history(&loc, Some(1)).await.expect("history");
        assert_eq!((history[0]["version"].clone(), history[0]["lakescore"]["model"].clone()), (2.into(), "m".into()));
    }

    #[tokio::test]
    async fn application_transactions_commit_once_and_a_later_epoch_fences() {
        let loc = location("txn");
        let schema = batch(&[1]).schema();
        let unit = |n: i64| TableCommit {
            txns: vec![Transaction::new(format!("job:u{n}"), 1)],
            fence: Some(Transaction::new("job:lock", 1)),
            ..Default::default()
        };
        let files = written(&loc, "u0", &[1]).await;
        assert_eq!(commit_files(&loc, &schema, &files, &unit(0), None).await.expect("u0"), Outcome::Version(0));
        // The same unit again, checked through the log and through a watch.
        let again = commit_files(&loc, &schema, &files, &unit(0), None).await.expect("u0 again");
        assert_eq!(again, Outcome::AlreadyCommitted(vec!["job:u0".into()]));
        let mut watch = TxnWatch::default();
        let again = commit_files(&loc, &schema, &files, &unit(0), Some(&mut watch)).await.expect("u0 watched");
        assert_eq!(again, Outcome::AlreadyCommitted(vec!["job:u0".into()]));
        assert_eq!((watch.scanned, watch.seen.get("job:lock")), (Some(0), Some(&1)));

        // A run that took the lock over (epoch 2) commits; the one it took over from cannot.
        let taken = TableCommit { fence: Some(Transaction::new("job:lock", 2)), ..unit(1) };
        let f1 = written(&loc, "u1", &[2]).await;
        assert_eq!(commit_files(&loc, &schema, &f1, &taken, Some(&mut watch)).await.expect("u1"), Outcome::Version(1));
        let f2 = written(&loc, "u2", &[3]).await;
        let err = commit_files(&loc, &schema, &f2, &unit(2), None).await.unwrap_err();
        assert!(matches!(&err, ScoreError::Locked(m) if m.contains("job:lock is at 2")), "{err}");
        assert_eq!(rows(&loc, TableVersion::Latest).await, vec![1, 2]);
        // Removal is fenced the same way.
        let err =
            remove_files(&loc, &f1, Default::default(), vec![], &Transaction::new("job:lock", 1)).await.unwrap_err();
        assert!(matches!(err, ScoreError::Locked(_)), "{err}");
        assert_eq!(rows(&loc, TableVersion::Latest).await, vec![1, 2]);
    }

    #[tokio::test]
    async fn writers_creating_one_table_at_once_both_append_and_the_table_keeps_its_metadata() {
        let loc = location("race");
        let schema = batch(&[1]).schema();
        let (a, b) = (written(&loc, "a", &[1]).await, written(&loc, "b", &[2]).await);
        let spec = TableCommit::default();
        let (x, y) =
            tokio::join!(commit_files(&loc, &schema, &a, &spec, None), commit_files(&loc, &schema, &b, &spec, None));
        let mut versions = vec![x.expect("a"), y.expect("b")];
        versions.sort_by_key(|o| format!("{o:?}"));
        assert_eq!(versions, vec![Outcome::Version(0), Outcome::Version(1)]);
        assert_eq!(rows(&loc, TableVersion::Latest).await, vec![1, 2]);
        // The loser appended: its commit holds no second protocol or metadata.
        let log = log_store(&loc).expect("log store");
        let second = log.read_commit_entry(1).await.expect("read").expect("version 1");
        let text = String::from_utf8_lossy(&second);
        assert!(!text.contains("\"metaData\"") && !text.contains("\"protocol\""), "{text}");
        // Before the first commit there is no version to travel to.
        let before = chrono::Utc::now() - chrono::Duration::days(1);
        let err = table_input(&loc, &TableVersion::AsOf(before), &[]).await.unwrap_err();
        assert!(matches!(&err, ScoreError::NotFound(m) if m.contains("at or before")), "{err}");
    }

    #[tokio::test]
    async fn rows_are_kept_as_delta_types_and_a_partitioned_table_refuses_unpartitioned_rows() {
        use arrow::datatypes::TimeUnit;
        // Nanosecond timestamps and unsigned integers (pandas, Arrow-native writers): the
        // table keeps microseconds and signed integers, and the same rows fit it again.
        let ours = Schema::new(vec![
            Field::new("at", DataType::Timestamp(TimeUnit::Nanosecond, Some("+01:00".into())), true),
            Field::new("n", DataType::UInt32, false),
        ]);
        let table = table_schema(&ours);
        assert_eq!(table.field(0).data_type(), &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())));
        assert_eq!(table.field(1).data_type(), &DataType::Int64);
        let url = Url::parse("file:///t/").expect("url");
        check_schema(&table, &ours, &url).expect("the same rows fit");
        let big = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("n", DataType::UInt64, false)])),
            vec![Arc::new(arrow::array::UInt64Array::from(vec![u64::MAX]))],
        )
        .expect("batch");
        let err = cast_to(&big, &delta_types(&big.schema())).unwrap_err();
        assert!(matches!(&err, ScoreError::InvalidArgument(m) if m.contains("column n")), "{err}");

        let loc = location("partitioned");
        let schema = batch(&[1]).schema();
        let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new("day", DataType::Utf8, true));
        let day = written(&loc, "a", &[1]).await;
        let mut values = HashMap::new();
        values.insert(day[0].path.clone(), vec![Some("2026-11-01".to_string())]);
        let spec = TableCommit { partition_by: vec!["day".into()], partition_values: values, ..Default::default() };
        commit_files(&loc, &Arc::new(Schema::new(fields)), &day, &spec, None).await.expect("create");
        let more = written(&loc, "b", &[2]).await;
        let err = commit_files(&loc, &schema, &more, &TableCommit::default(), None).await.unwrap_err();
        assert!(matches!(&err, ScoreError::FailedPrecondition(m) if m.contains("partitioned by [day]")), "{err}");
    }

    #[tokio::test]
    async fn partitions_are_read_as_columns_and_filtered() {
        let loc = location("parts");
        let schema = batch(&[1]).schema();
        let mut partitioned: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        partitioned.push(Field::new("day", DataType::Utf8, true));
        let table_schema = Arc::new(Schema::new(partitioned));
        let (a, b) = (written(&loc, "a", &[1, 2]).await, written(&loc, "b", &[3]).await);
        let mut values = HashMap::new();
        values.insert(a[0].path.clone(), vec![Some("2026-11-01".to_string())]);
        values.insert(b[0].path.clone(), vec![None]);
        let spec = TableCommit { partition_by: vec!["day".into()], partition_values: values, ..Default::default() };
        let files: Vec<WrittenFile> = a.iter().chain(&b).cloned().collect();
        commit_files(&loc, &table_schema, &files, &spec, None).await.expect("commit");

        let input = table_input(&loc, &TableVersion::Latest, &[]).await.expect("input");
        assert_eq!(input.partition_fields.iter().map(|f| f.name().as_str()).collect::<Vec<_>>(), ["day"]);
        assert_eq!(input.files.len(), 2);
        let one = table_input(&loc, &TableVersion::Latest, &["day=2026-11-01".into()]).await.expect("filtered");
        assert_eq!(one.files.len(), 1);
        assert_eq!(one.files[0].partition, vec![Some("2026-11-01".to_string())]);
        let null = table_input(&loc, &TableVersion::Latest, &["day=".into()]).await.expect("null partition");
        assert_eq!(null.files[0].partition, vec![None]);
        let err = table_input(&loc, &TableVersion::Latest, &["id=1".into()]).await.unwrap_err();
        assert!(matches!(&err, ScoreError::InvalidArgument(m) if m.contains("not a partition column")), "{err}");

        let with = with_partition_values(batch(&[1, 2]), &one.partition_fields, &one.files[0].partition).expect("with");
        assert_eq!(with.schema().field(2).name(), "day");
        let days = with.column(2).as_any().downcast_ref::<StringArray>().expect("utf8");
        assert_eq!((days.value(0), days.value(1)), ("2026-11-01", "2026-11-01"));
    }
}

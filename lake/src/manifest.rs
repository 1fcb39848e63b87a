//! The manifest, `_lakescore.json`: written last under an output prefix, the one record of
//! what was committed there (its files with their sha256, rows and bytes, the model, and
//! for a batch job its input, units and rows in error). One type for every writer: rows
//! written in one go (DoPut, `score-dataset`, SQL `COPY`/`INSERT`: format 1) and batch jobs
//! (format 2).

use lakescore_engine::scorer::ResolvedModel;
use serde::{Deserialize, Serialize};

/// Name of the manifest written last under an output prefix.
pub const MANIFEST_NAME: &str = "_lakescore.json";

/// The format of a manifest of rows written in one go.
pub const FORMAT_WRITE: u32 = 1;
/// The format of a batch job's manifest.
pub const FORMAT_JOB: u32 = 2;

/// `_lakescore.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT_WRITE`] or [`FORMAT_JOB`].
    pub format: u32,
    /// The job (or write) id the files are named by.
    pub job_id: String,
    /// When it was committed (RFC 3339, UTC).
    pub created_at: String,
    /// The model the rows were scored with.
    pub model: ManifestModel,
    /// Rows in the files.
    pub rows: u64,
    /// Bytes of the files.
    pub bytes: u64,
    /// The data files.
    pub files: Vec<WrittenFile>,
    /// The files' columns (a write's; a job's parts carry theirs in their footers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schema: Vec<SchemaField>,
    /// A batch job's input (empty otherwise, and in job manifests that predate it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub input: String,
    /// A batch job's output action (`append_row` or `summary_only`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_action: Option<String>,
    /// A batch job's rows set aside under `_errors/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rows: Option<u64>,
    /// A batch job's units.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub units: Option<UnitCounts>,
    /// A batch job's input units, each with its parts and row counts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<UnitRecord>,
    /// A batch job that wrote a Delta table: the table (its log lists the files; this summary
    /// is in the commit that ended the job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// The table version that ended the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_version: Option<i64>,
}

impl Manifest {
    /// A manifest of `files` as they stand now, of no particular writer.
    pub fn new(format: u32, job_id: &str, model: &ManifestModel, files: Vec<WrittenFile>) -> Self {
        Self {
            format,
            job_id: job_id.to_string(),
            created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            model: model.clone(),
            rows: files.iter().map(|f| f.rows).sum(),
            bytes: files.iter().map(|f| f.bytes).sum(),
            files,
            schema: Vec::new(),
            input: String::new(),
            output_action: None,
            error_rows: None,
            units: None,
            inputs: Vec::new(),
            table: None,
            table_version: None,
        }
    }
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

/// One column of a manifest's schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaField {
    /// The column's name.
    pub name: String,
    /// Its Arrow type, as Arrow prints it.
    #[serde(rename = "type")]
    pub ty: String,
    /// Whether it may hold nulls.
    pub nullable: bool,
}

/// One written data file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
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
    /// Delta's statistics of the file (see [`crate::delta::file_stats`]): kept in a Delta
    /// table's log, not in manifests.
    #[serde(skip)]
    pub stats: Option<String>,
}

/// `name type, …` for an error message.
pub(crate) fn describe_fields(fields: &[SchemaField]) -> String {
    fields.iter().map(|f| format!("{} {}", f.name, f.ty)).collect::<Vec<_>>().join(", ")
}

/// What a finished unit of a batch job committed (its marker), and what the job's manifest
/// lists per input.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnitRecord {
    /// The unit's number, in input order.
    pub unit: usize,
    /// URL of the input file.
    pub input: String,
    /// The row groups of the file it covers (all when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row_groups: Option<Vec<usize>>,
    /// Rows scored (written unless summary_only).
    pub rows: u64,
    /// Rows set aside under `_errors/`.
    pub error_rows: u64,
    /// The Parquet parts it wrote.
    #[serde(default)]
    pub files: Vec<WrittenFile>,
    /// URL of its rows in error, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_file: Option<String>,
    /// Attempts it took.
    pub attempts: u32,
    /// Set when every attempt failed: the unit's error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

/// A batch job's units, as its manifest counts them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitCounts {
    /// Units of the input.
    pub total: u64,
    /// Units that failed every attempt.
    pub failed: u64,
    /// Units that took more than one attempt.
    pub retried: u64,
    /// Units committed by earlier runs of the job.
    pub resumed: u64,
}

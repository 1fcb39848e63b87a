//! Delta tables in SQL, through delta-rs's DataFusion table provider:
//!
//! - `CREATE EXTERNAL TABLE t STORED AS DELTATABLE LOCATION '<url>'`;
//! - a table's URL in `FROM` (`SELECT * FROM 'file:///lake/tx/'`), read as Delta when a
//!   `_delta_log/` is there; `…?version=3` or `…?timestamp=2026-11-01T00:00:00Z` read it as
//!   of then;
//! - `delta_history('<url>')`: the table's commits, newest first, with lakescore's lineage;
//! - `INSERT INTO` a Delta table: one commit, through the worker's output sink
//!   ([`DeltaSqlTable`] keeps the table's location for it).
//!
//! Locations are checked against the storage roots before anything is read, and the
//! tables are opened on the worker's own stores.

use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableFunctionImpl, TableProvider, TableProviderFactory};
use datafusion::common::{plan_err, ScalarValue};
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{CreateExternalTable, Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;

use lakescore_engine::error::ScoreError;
use lakescore_lake::delta::{self, TableVersion};
use lakescore_lake::storage::Location;
use lakescore_lake::Lake;

fn external(e: ScoreError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// A Delta table as SQL sees it: delta-rs's provider, and where the table is (so that an
/// `INSERT` commits through the worker's sink).
#[derive(Debug)]
pub(crate) struct DeltaSqlTable {
    pub(crate) loc: Location,
    /// The version it reads: at `Latest`, each scan reads the table as it is then (a
    /// table created once is read after later `INSERT`s and other writers' commits).
    at: TableVersion,
    inner: Arc<dyn TableProvider>,
}

impl DeltaSqlTable {
    /// The table at `url` (inside the roots) as of `at`, for the session `state`.
    pub(crate) async fn open(lake: &Lake, url: &str, at: TableVersion, state: &dyn Session) -> DfResult<Self> {
        let loc = lake.storage().locate(url, "Delta table").map_err(external)?;
        let inner = Self::provider(&loc, &at, state).await?;
        Ok(Self { loc, at, inner })
    }

    /// delta-rs's provider of the table at `loc` as of `at`.
    async fn provider(loc: &Location, at: &TableVersion, state: &dyn Session) -> DfResult<Arc<dyn TableProvider>> {
        let table = delta::open(loc, at).await.map_err(external)?.ok_or_else(|| {
            external(ScoreError::NotFound(format!("{} is not a Delta table (no _delta_log/)", loc.url)))
        })?;
        let session = state
            .as_any()
            .downcast_ref::<datafusion::execution::SessionState>()
            .cloned()
            .ok_or_else(|| DataFusionError::Internal("not a DataFusion session".into()))?;
        table.table_provider().with_session(Arc::new(session)).await
    }
}

#[async_trait]
impl TableProvider for DeltaSqlTable {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if self.at == TableVersion::Latest {
            // Planned against the columns it had; a table whose columns changed since is
            // read as it was planned.
            let now = Self::provider(&self.loc, &self.at, state).await?;
            if now.schema() == self.inner.schema() {
                return now.scan(state, projection, filters, limit).await;
            }
        }
        self.inner.scan(state, projection, filters, limit).await
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }
}

/// `CREATE EXTERNAL TABLE … STORED AS DELTATABLE LOCATION '…'`.
#[derive(Debug)]
pub(crate) struct DeltaTables {
    pub(crate) lake: Arc<Lake>,
}

#[async_trait]
impl TableProviderFactory for DeltaTables {
    async fn create(&self, state: &dyn Session, cmd: &CreateExternalTable) -> DfResult<Arc<dyn TableProvider>> {
        if !cmd.table_partition_cols.is_empty() || !cmd.options.is_empty() {
            return plan_err!(
                "a Delta table's columns, partitions and options are its log's: CREATE EXTERNAL TABLE {} STORED AS \
                 DELTATABLE LOCATION '<url>' takes none",
                cmd.name
            );
        }
        let [location] = cmd.locations.as_slice() else {
            return plan_err!("a Delta table has one LOCATION, not {}", cmd.locations.len());
        };
        let table = DeltaSqlTable::open(&self.lake, location, TableVersion::Latest, state).await?;
        Ok(Arc::new(table))
    }
}

/// A table URL in `FROM` with its time travel: `<url>?version=N` or `<url>?timestamp=T`.
pub(crate) fn split_version(name: &str) -> DfResult<(&str, TableVersion)> {
    let Some((url, query)) = name.split_once('?') else { return Ok((name, TableVersion::Latest)) };
    let at = match query.split_once('=') {
        Some(("version", v)) => {
            let v: i64 = v.parse().map_err(|_| DataFusionError::Plan(format!("'{v}' in {name} is not a version")))?;
            TableVersion::from_command(Some(v), "")
        }
        Some(("timestamp", t)) => TableVersion::from_command(None, t),
        _ => {
            return plan_err!("{name}: a Delta table URL takes ?version=N or ?timestamp=<RFC 3339 time>, nothing else")
        }
    };
    Ok((url, at.map_err(external)?))
}

/// `delta_history('<url>')`: one row per commit of the table, newest first.
#[derive(Debug)]
pub(crate) struct DeltaHistory {
    pub(crate) lake: Arc<Lake>,
}

/// The rows of `delta_history`.
#[derive(Debug)]
struct HistoryTable {
    lake: Arc<Lake>,
    url: String,
}

fn history_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("version", DataType::Int64, false),
        Field::new("timestamp", DataType::Int64, true),
        Field::new("operation", DataType::Utf8, true),
        Field::new("user_name", DataType::Utf8, true),
        Field::new("model", DataType::Utf8, true),
        Field::new("model_version", DataType::Int64, true),
        Field::new("job_id", DataType::Utf8, true),
        Field::new("input", DataType::Utf8, true),
        Field::new("input_version", DataType::Int64, true),
        Field::new("lakescore", DataType::Utf8, true),
    ]))
}

impl TableFunctionImpl for DeltaHistory {
    fn call(&self, args: &[Expr]) -> DfResult<Arc<dyn TableProvider>> {
        let [Expr::Literal(ScalarValue::Utf8(Some(url)), _)] = args else {
            return plan_err!("delta_history takes one argument: the table's URL, as a string");
        };
        self.lake.storage().locate(url, "delta_history").map_err(external)?;
        Ok(Arc::new(HistoryTable { lake: self.lake.clone(), url: url.clone() }))
    }
}

#[async_trait]
impl TableProvider for HistoryTable {
    fn schema(&self) -> SchemaRef {
        history_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let loc = self.lake.storage().locate(&self.url, "delta_history").map_err(external)?;
        let commits = delta::history(&loc, None).await.map_err(external)?;
        let text = |key: &str| -> Vec<Option<String>> {
            commits.iter().map(|c| c[key].as_str().map(str::to_string)).collect()
        };
        let lineage = |key: &str| -> Vec<Option<String>> {
            commits
                .iter()
                .map(|c| match &c["lakescore"][key] {
                    serde_json::Value::Null => None,
                    serde_json::Value::String(s) => Some(s.clone()),
                    other => Some(other.to_string()),
                })
                .collect()
        };
        let lineage_number =
            |key: &str| -> Vec<Option<i64>> { commits.iter().map(|c| c["lakescore"][key].as_i64()).collect() };
        let batch = RecordBatch::try_new(
            history_schema(),
            vec![
                Arc::new(Int64Array::from_iter_values(commits.iter().map(|c| c["version"].as_i64().unwrap_or(-1)))),
                Arc::new(Int64Array::from_iter(commits.iter().map(|c| c["timestamp"].as_i64()))),
                Arc::new(StringArray::from(text("operation"))),
                Arc::new(StringArray::from(text("user_name"))),
                Arc::new(StringArray::from(lineage("model"))),
                Arc::new(Int64Array::from(lineage_number("version"))),
                Arc::new(StringArray::from(lineage("job_id"))),
                Arc::new(StringArray::from(lineage("input"))),
                Arc::new(Int64Array::from(lineage_number("input_version"))),
                Arc::new(StringArray::from(
                    commits
                        .iter()
                        .map(|c| (!c["lakescore"].is_null()).then(|| c["lakescore"].to_string()))
                        .collect::<Vec<_>>(),
                )),
            ],
        )?;
        let exec = datafusion::datasource::memory::MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            history_schema(),
            projection.cloned(),
        )?;
        Ok(exec)
    }
}

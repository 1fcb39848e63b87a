//! SQL over lake files with `predict()`, served as Flight SQL on the worker's Flight port.
//!
//! [`SqlEngine`] runs statements with DataFusion for one caller at a time:
//! - a **session** per bearer token (its `CREATE EXTERNAL TABLE`s and prepared statements),
//!   dropped after `sql.session_idle` without calls;
//! - tables are Parquet, CSV or NDJSON files or prefixes in storage, read only inside the
//!   worker's `storage_roots` ([`stores`]), by `CREATE EXTERNAL TABLE … LOCATION` or by
//!   querying a URL directly (`SELECT * FROM 'file:///data/lake/tx/'`);
//! - `predict(model_ref, …)` ([`predict`]) with the models of the statement resolved once,
//!   with the caller's token, before it is planned;
//! - `COPY (SELECT …) TO '<prefix>' STORED AS PARQUET` and `INSERT INTO` an external
//!   Parquet table write through the worker's commit protocol (Parquet parts, then
//!   `_lakescore.json` last; an `INSERT` extends the table's manifest);
//! - the registry as tables: `lakescore.models`, `lakescore.versions`, `lakescore.aliases`
//!   ([`catalog`]), as the caller's token sees it;
//! - per query: a memory pool of `sql.query_memory_bytes`, a deadline of `sql.query_timeout`,
//!   and one of `sql.max_concurrent_queries` slots while it plans or streams.
//!
//! [`flight`] maps the Flight SQL commands onto it: it is `lakescore-flight`'s
//! [`lakescore_flight::FlightSqlFront`].
//!
//! This crate owns everything that needs DataFusion; it depends on the engine, the lake and
//! the Flight crates, and none of them depends on it.

mod catalog;
mod delta;
pub mod flight;
pub mod predict;
mod stores;

use std::any::Any;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow::array::{RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::dataframe::DataFrame;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::ListingTable;
use datafusion::datasource::source_as_provider;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{LogicalPlan, WriteOp};
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use datafusion::sql::parser::{CopyToSource, CopyToStatement, DFParser, Statement};
use datafusion::sql::sqlparser::ast::Statement as Sql;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use futures::{FutureExt, StreamExt};
use sha2::Digest;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use lakescore_engine::config::SqlConfig;
use lakescore_engine::error::{Result, ScoreError};
use lakescore_engine::mapping::Missing;
use lakescore_engine::scorer::{BatchStream, ResolvedModel};
use lakescore_engine::source::{registry_http_url, Credentials, HttpSourceOptions};
use lakescore_lake::delta::TableCommit;
use lakescore_lake::manifest::ManifestModel;
use lakescore_lake::sink::Commit;
use lakescore_lake::storage::Location;
use lakescore_lake::Lake;
use lakescore_lake::OutputFormat;
use predict::{model_references, Predict, PredictTable};
use stores::{RootedStores, RootedUrlTables};

/// Statements planned but not fetched yet, over all sessions; more is `RESOURCE_EXHAUSTED`
/// (a client that plans without ever fetching cannot grow the worker's memory).
const MAX_PENDING: usize = 1024;
/// Sessions (callers with distinct tokens) kept at once; one more is `RESOURCE_EXHAUSTED`
/// until idle ones expire.
const MAX_SESSIONS: usize = 4096;
/// Prepared statements open in one session.
const MAX_PREPARED: usize = 256;

/// A caller's session.
struct Session {
    /// Holds the session's catalog (its external tables); each query runs in a context
    /// derived from it with its own memory pool and `predict`.
    ctx: SessionContext,
    prepared: Mutex<HashMap<String, Prepared>>,
    last_used: Mutex<Instant>,
    /// What `predict` does with a null in a model input: `SET lakescore.missing = '…'`.
    missing: Mutex<Missing>,
}

/// A prepared statement: its text, and the parameters bound last.
#[derive(Clone)]
struct Prepared {
    sql: String,
    params: Option<Vec<ScalarValue>>,
}

/// What a planned statement gives when fetched.
enum Output {
    /// A query, run when fetched.
    Query(DataFrame),
    /// The result of a statement that ran while it was planned (DDL, `COPY`, `INSERT`).
    Done(RecordBatch),
}

/// A statement planned and waiting for its `DoGet`.
struct Pending {
    output: Output,
    schema: SchemaRef,
    deadline: tokio::time::Instant,
    session: String,
}

/// A statement ready to be fetched: its result schema and the handle for the ticket.
#[derive(Debug, Clone)]
pub struct Planned {
    /// Handle to fetch the result with ([`SqlEngine::fetch`]).
    pub handle: String,
    /// The result's schema, as its stream sends it (dictionaries as their values).
    pub schema: SchemaRef,
}

/// A running query's place among `sql.max_concurrent_queries`, counted in
/// `lakescore_sql_queries_running` while it is held.
struct QuerySlot {
    _permit: OwnedSemaphorePermit,
}

impl Drop for QuerySlot {
    fn drop(&mut self) {
        metrics::gauge!("lakescore_sql_queries_running").decrement(1.0);
    }
}

/// Runs SQL for the worker's callers; see the module docs.
pub struct SqlEngine {
    lake: Arc<Lake>,
    config: SqlConfig,
    stores: Arc<RootedStores>,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    pending: Mutex<HashMap<String, Pending>>,
    slots: Arc<Semaphore>,
    /// Statements being planned, waiting, or streamed, by handle: `CancelFlightInfo` fires
    /// these. Shared with the result streams, which remove theirs when they end.
    running: Running,
}

impl std::fmt::Debug for SqlEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlEngine").field("config", &self.config).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>> {
    m.lock().map_err(|_| ScoreError::internal("SQL state lock poisoned"))
}

impl SqlEngine {
    /// An engine over the worker's lake (models, storage) with its `sql` settings.
    pub fn new(lake: Arc<Lake>) -> Self {
        let config = lake.scorer().config().sql.clone();
        let slots = Arc::new(Semaphore::new(config.max_concurrent_queries.max(1)));
        Self {
            stores: Arc::new(RootedStores::new(lake.clone())),
            lake,
            config,
            sessions: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            slots,
            running: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn timeout(&self) -> std::time::Duration {
        self.config.query_timeout
    }

    fn slot(&self) -> Result<QuerySlot> {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => {
                metrics::gauge!("lakescore_sql_queries_running").increment(1.0);
                Ok(QuerySlot { _permit: permit })
            }
            Err(_) => {
                metrics::counter!("lakescore_sql_queries_refused_total").increment(1);
                Err(ScoreError::ResourceExhausted(format!(
                    "{} SQL queries are running on this worker, its limit (sql.max_concurrent_queries): retry later",
                    self.config.max_concurrent_queries
                )))
            }
        }
    }

    fn runtime(&self) -> Result<Arc<datafusion::execution::runtime_env::RuntimeEnv>> {
        Ok(RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(FairSpillPool::new(self.config.query_memory_bytes)))
            .with_max_temp_directory_size(self.config.query_spill_bytes)
            .with_object_store_registry(self.stores.clone())
            .build_arc()?)
    }

    /// The caller's session (created on first use), keyed by the token it presents;
    /// sessions idle for longer than `sql.session_idle` are dropped on the way.
    fn session(&self, creds: &Credentials) -> Result<(String, Arc<Session>)> {
        let key = match &creds.authorization {
            Some(a) => hex::encode(sha2::Sha256::digest(a.as_bytes())),
            None => "anonymous".to_string(),
        };
        let mut sessions = lock(&self.sessions)?;
        let idle = self.config.session_idle;
        sessions.retain(|_, s| s.last_used.lock().map(|t| t.elapsed() < idle).unwrap_or(false));
        if let Some(s) = sessions.get(&key) {
            *lock(&s.last_used)? = Instant::now();
            return Ok((key, s.clone()));
        }
        if sessions.len() >= MAX_SESSIONS {
            return Err(ScoreError::ResourceExhausted(format!(
                "{MAX_SESSIONS} SQL sessions are open on this worker; idle ones close after sql.session_idle"
            )));
        }
        let config = SessionConfig::new()
            .with_batch_size(self.config.batch_rows.max(1))
            .with_information_schema(true)
            .with_create_default_catalog_and_schema(true);
        let mut state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(self.runtime()?)
            .with_default_features()
            .build();
        state
            .table_factories_mut()
            .insert("DELTATABLE".into(), Arc::new(delta::DeltaTables { lake: self.lake.clone() }));
        let ctx = SessionContext::new_with_state(state);
        ctx.register_udtf("delta_history", Arc::new(delta::DeltaHistory { lake: self.lake.clone() }));
        if let Some(registry) = registry_http_url(&self.lake.scorer().config().model_source) {
            let options = HttpSourceOptions {
                timeout: self.lake.scorer().config().registry_timeout,
                max_artifact_bytes: self.lake.scorer().config().max_artifact_bytes,
            };
            let tables = catalog::RegistryTables::new(registry, options, creds.clone())?;
            let default_catalog = ctx.state().config().options().catalog.default_catalog.clone();
            if let Some(catalog) = ctx.catalog(&default_catalog) {
                catalog.register_schema(catalog::SCHEMA, Arc::new(tables))?;
            }
        }
        let ctx = RootedUrlTables::enable(self.lake.clone(), ctx);
        let session = Arc::new(Session {
            ctx,
            prepared: Mutex::new(HashMap::new()),
            last_used: Mutex::new(Instant::now()),
            missing: Mutex::new(Missing::default()),
        });
        sessions.insert(key.clone(), session.clone());
        Ok((key, session))
    }

    /// Resolve the models a statement names, once, with the caller's token.
    async fn models(&self, sql: &str, creds: &Credentials) -> Result<Arc<HashMap<String, ResolvedModel>>> {
        let mut models = HashMap::new();
        for reference in model_references(sql)? {
            let model = self
                .lake
                .scorer()
                .resolve_model(&reference, creds)
                .await
                .map_err(|e| e.context(format!("predict('{reference}')")))?;
            models.insert(reference, model);
        }
        Ok(Arc::new(models))
    }

    /// The context one statement runs in: the session's catalog, its own memory pool, and
    /// `predict` over its models.
    fn query_context(&self, session: &Session, models: Arc<HashMap<String, ResolvedModel>>) -> Result<SessionContext> {
        let state =
            SessionStateBuilder::new_from_existing(session.ctx.state()).with_runtime_env(self.runtime()?).build();
        let ctx = SessionContext::new_with_state(state);
        let missing = *lock(&session.missing)?;
        let udf = Arc::new(Predict::udf(self.lake.scorer().clone(), models.clone(), missing));
        ctx.register_udf(udf.as_ref().clone());
        ctx.register_udtf(predict::PREDICT, Arc::new(PredictTable::new(udf, models)));
        Ok(ctx)
    }

    /// What a planned query may do: DDL for the session's tables, queries; not DML (writes
    /// go through [`write_parts`]) nor `SET` (which could lift the session's limits).
    fn options() -> SQLOptions {
        SQLOptions::new().with_allow_ddl(true).with_allow_dml(false).with_allow_statements(false)
    }

    fn parse(sql: &str) -> Result<Statement> {
        let mut statements = DFParser::parse_sql_with_dialect(sql, &GenericDialect {})?;
        match (statements.pop_front(), statements.is_empty()) {
            (Some(s), true) => Ok(s),
            (None, _) => Err(ScoreError::invalid("SQL: no statement")),
            (Some(_), false) => Err(ScoreError::invalid("SQL: one statement per call")),
        }
    }

    /// The session setting a `SET` statement makes, if it is one lakescore has: only
    /// `SET lakescore.missing = 'auto' | 'nan' | 'error'` (what `predict` does with a null in a
    /// model input; fill values are SQL's own `coalesce(column, value)`).
    fn session_setting(statement: &Statement) -> Option<Result<Missing>> {
        use datafusion::sql::sqlparser::ast::{Expr, Set, Value};
        let Statement::Statement(s) = statement else { return None };
        let Sql::Set(Set::SingleAssignment { variable, values, .. }) = s.as_ref() else { return None };
        if !variable.to_string().eq_ignore_ascii_case("lakescore.missing") {
            return None;
        }
        Some(match values.as_slice() {
            [Expr::Value(v)] => match &v.value {
                Value::SingleQuotedString(mode) => Missing::parse(mode),
                _ => Err(ScoreError::invalid("SET lakescore.missing takes a string: 'auto', 'nan' or 'error'")),
            },
            [Expr::Identifier(mode)] => Missing::parse(&mode.value),
            _ => Err(ScoreError::invalid("SET lakescore.missing takes one value: 'auto', 'nan' or 'error'")),
        })
    }

    /// What may run: queries, `EXPLAIN`, `SHOW`, `CREATE EXTERNAL TABLE` (inside the roots,
    /// checked here for a clear refusal before anything is read), `DROP`, `COPY`, `INSERT`.
    /// No `UPDATE` or `DELETE` (tables are appended to), and no views or in-memory tables:
    /// they would keep a query's resolved models, or its rows, past the query.
    fn check_statement(&self, statement: &Statement) -> Result<()> {
        match statement {
            Statement::CreateExternalTable(create) => {
                for location in &create.locations {
                    self.lake.storage().locate(location, "LOCATION")?;
                }
                Ok(())
            }
            Statement::CopyTo(_) | Statement::Explain(_) => Ok(()),
            Statement::Statement(s) => match **s {
                Sql::Query(_)
                | Sql::Insert(_)
                | Sql::Explain { .. }
                | Sql::ExplainTable { .. }
                | Sql::ShowTables { .. }
                | Sql::ShowColumns { .. }
                | Sql::Drop { .. } => Ok(()),
                Sql::Update(_) | Sql::Delete(_) => Err(ScoreError::Unimplemented(
                    "tables here are Parquet parts under a prefix, only appended to: COPY (SELECT …) TO '<prefix>' \
                     and INSERT INTO write them; UPDATE and DELETE are not supported"
                        .into(),
                )),
                _ => Err(ScoreError::Unimplemented(
                    "this statement is not supported here: queries, EXPLAIN, SHOW, CREATE EXTERNAL TABLE, DROP, \
                     COPY … TO and INSERT INTO are"
                        .into(),
                )),
            },
            Statement::Reset(_) => Err(ScoreError::Unimplemented("RESET is not supported".into())),
        }
    }

    /// The statement's frame: planned, checked against [`Self::options`], DDL run.
    async fn frame(ctx: &SessionContext, sql: &str, params: Option<Vec<ScalarValue>>) -> Result<DataFrame> {
        let plan = ctx.state().create_logical_plan(sql).await?;
        Self::options().verify_plan(&plan)?;
        let df = ctx.execute_logical_plan(plan).await?;
        Ok(match params {
            Some(p) => df.with_param_values(p)?,
            None => df,
        })
    }

    /// Plan `sql` for the caller (with `params` bound to `$1`, `$2`, …): DDL and writes run
    /// now, a query when fetched. The handle is good for one fetch, until the deadline.
    pub async fn plan(&self, sql: &str, params: Option<Vec<ScalarValue>>, creds: &Credentials) -> Result<Planned> {
        let _slot = self.slot()?;
        let deadline = tokio::time::Instant::now() + self.config.query_timeout;
        let handle = uuid::Uuid::now_v7().simple().to_string();
        let (key, session) = self.session(creds)?;
        let statement = Self::parse(sql)?;
        if let Some(setting) = Self::session_setting(&statement) {
            *lock(&session.missing)? = setting?;
            let done = Output::Done(RecordBatch::new_empty(Arc::new(Schema::empty())));
            return self.park(handle, done, deadline, key);
        }
        self.check_statement(&statement)?;
        let cancel = CancellationToken::new();
        let entry = Registered::new(self.running.clone(), &handle, &key, cancel.clone())?;
        let models =
            tokio::time::timeout_at(deadline, self.models(sql, creds)).await.map_err(|_| self.deadline_error())??;
        let ctx = self.query_context(&session, models.clone())?;
        let write = match statement {
            Statement::CopyTo(copy) => Some(Write::Copy(copy)),
            Statement::Statement(s) if matches!(*s, Sql::Insert(_)) => Some(Write::Insert),
            _ => None,
        };
        let output = match write {
            Some(write) => {
                // In its own task, with the deadline and cancels handled inside it: a client
                // that goes away mid-write (which drops this call) cancels it through the
                // guard, and the task removes its parts rather than stopping mid-write.
                let guard = cancel.clone().drop_guard();
                let task = tokio::spawn(write_parts(WriteJob {
                    lake: self.lake.clone(),
                    ctx,
                    write,
                    sql: sql.to_string(),
                    params,
                    models,
                    deadline,
                    cancel: cancel.clone(),
                    timeout: self.deadline_error(),
                    creds: creds.clone(),
                }));
                let out = task.await??;
                guard.disarm();
                Output::Done(out)
            }
            None => {
                // Planning reads files (schemas, footers): guarded like the Flight path's reads.
                let planned = AssertUnwindSafe(Self::frame(&ctx, sql, params)).catch_unwind();
                let df = tokio::select! {
                    df = planned => df.unwrap_or_else(|p| Err(panicked(p)))?,
                    _ = tokio::time::sleep_until(deadline) => return Err(self.deadline_error()),
                    _ = cancel.cancelled() => return Err(ScoreError::Cancelled("the query was cancelled".into())),
                };
                // DDL has run by now and has no rows to give.
                if matches!(df.logical_plan(), LogicalPlan::EmptyRelation(_)) && df.schema().fields().is_empty() {
                    Output::Done(RecordBatch::new_empty(Arc::new(Schema::empty())))
                } else {
                    Output::Query(df)
                }
            }
        };
        let planned = self.park(handle, output, deadline, key)?;
        entry.keep();
        Ok(planned)
    }

    /// Keep a planned statement for its fetch.
    fn park(&self, handle: String, output: Output, deadline: tokio::time::Instant, session: String) -> Result<Planned> {
        // As the results stream will send it (dictionaries as their values): what fetch
        // conforms every batch to.
        let schema = lakescore_flight::output::flight_schema(match &output {
            Output::Query(df) => df.schema().as_arrow(),
            Output::Done(batch) => batch.schema_ref(),
        });
        let mut pending = lock(&self.pending)?;
        let now = tokio::time::Instant::now();
        let expired: Vec<String> = pending.iter().filter(|(_, p)| p.deadline <= now).map(|(h, _)| h.clone()).collect();
        if !expired.is_empty() {
            let mut running = lock(&self.running)?;
            for handle in &expired {
                pending.remove(handle);
                running.remove(handle);
            }
        }
        if pending.len() >= MAX_PENDING {
            return Err(ScoreError::ResourceExhausted(format!(
                "{MAX_PENDING} SQL statements are planned and not fetched on this worker: fetch or cancel them"
            )));
        }
        pending.insert(handle.clone(), Pending { output, schema: schema.clone(), deadline, session });
        Ok(Planned { handle, schema })
    }

    /// A result computed already (a catalog listing), kept for its fetch.
    pub(crate) fn ready(&self, batch: RecordBatch, creds: &Credentials) -> Result<Planned> {
        let (key, _) = self.session(creds)?;
        let handle = uuid::Uuid::now_v7().simple().to_string();
        let deadline = tokio::time::Instant::now() + self.config.query_timeout;
        self.park(handle, Output::Done(batch), deadline, key)
    }

    fn deadline_error(&self) -> ScoreError {
        ScoreError::DeadlineExceeded(format!(
            "the query ran past its time limit of {} s (sql.query_timeout)",
            self.config.query_timeout.as_secs_f64()
        ))
    }

    /// The result of a planned statement, streamed: one fetch per handle, by the caller
    /// who planned it, within the query's deadline and a concurrency slot.
    pub fn fetch(&self, handle: &str, creds: &Credentials) -> Result<(SchemaRef, BatchStream)> {
        let (key, _) = self.session(creds)?;
        let slot = self.slot()?;
        let pending = {
            let mut all = lock(&self.pending)?;
            match all.get(handle) {
                Some(p) if p.session == key => all.remove(handle),
                _ => None,
            }
        };
        let Some(pending) = pending else {
            return Err(ScoreError::NotFound(format!(
                "no SQL statement {handle} to fetch here: each is fetched once, from the worker that planned it, \
                 within sql.query_timeout"
            )));
        };
        // The statement's entry (for CancelFlightInfo) lives as long as its stream.
        let cancel = CancellationToken::new();
        let entry = Registered::new(self.running.clone(), handle, &key, cancel.clone())?;
        let schema = pending.schema.clone();
        let batches: BatchStream = match pending.output {
            Output::Done(batch) => futures::stream::iter([Ok(batch)]).boxed(),
            Output::Query(df) => futures::stream::once(async move { df.execute_stream().await })
                .map(|s| match s {
                    Ok(s) => s.map(|b| b.map_err(ScoreError::from)).boxed(),
                    Err(e) => futures::stream::iter([Err(ScoreError::from(e))]).boxed(),
                })
                .flatten()
                .boxed(),
        };
        // What GetFlightInfo announced is what goes out: DataFusion's logical schema and the
        // batches its operators make can disagree on encodings (a hive partition column is
        // `dictionary<uint16, utf8>` in the plan and plain `utf8` out of a GROUP BY), and Flight
        // SQL clients (ADBC) refuse a stream whose schema is not the announced one. The
        // announced schema has dictionaries as their values, so a dictionary column is decoded
        // here, once, and the batches take the transport's zero-copy path.
        let announced = schema.clone();
        let batches = batches.map(move |b| b.and_then(|b| conform(b, &announced))).boxed();
        // A reader that panics on a malformed file ends this query, not the worker.
        let batches =
            AssertUnwindSafe(batches).catch_unwind().map(|item| item.unwrap_or_else(|p| Err(panicked(p)))).boxed();
        Ok((schema, self.limited(batches, pending.deadline, (slot, entry), cancel)))
    }

    /// `batches` until the deadline or a cancel, holding the query's slot (and its entry
    /// for `CancelFlightInfo`) until it ends or the client goes away (which drops it, and
    /// with it the query).
    fn limited(
        &self,
        batches: BatchStream,
        deadline: tokio::time::Instant,
        held: (QuerySlot, Registered),
        cancel: CancellationToken,
    ) -> BatchStream {
        let timeout = self.deadline_error();
        let sleep = Box::pin(tokio::time::sleep_until(deadline));
        futures::stream::unfold(Some((batches, sleep, held, cancel, timeout)), |state| async move {
            let (mut batches, mut sleep, held, cancel, timeout) = state?;
            tokio::select! {
                biased;
                _ = cancel.cancelled() => Some((Err(ScoreError::Cancelled("the query was cancelled".into())), None)),
                _ = &mut sleep => Some((Err(timeout), None)),
                item = batches.next() => item.map(|i| (i, Some((batches, sleep, held, cancel, timeout)))),
            }
        })
        .boxed()
    }

    /// Cancel the caller's statement being planned, waiting or streamed; whether there was one.
    pub fn cancel(&self, handle: &str, creds: &Credentials) -> Result<bool> {
        let (key, _) = self.session(creds)?;
        let pending = {
            let mut all = lock(&self.pending)?;
            match all.get(handle) {
                Some(p) if p.session == key => all.remove(handle).is_some(),
                _ => false,
            }
        };
        let running = match lock(&self.running)?.get(handle) {
            Some((owner, token)) if *owner == key => {
                token.cancel();
                true
            }
            _ => false,
        };
        Ok(pending || running)
    }

    /// Prepare `sql`: its result schema and parameter types, and a handle that executions
    /// (with parameters bound) use.
    pub async fn prepare(&self, sql: &str, creds: &Credentials) -> Result<(String, SchemaRef, Option<SchemaRef>)> {
        let (_, session) = self.session(creds)?;
        let (schema, params) = self.describe(sql, creds).await?;
        let handle = uuid::Uuid::now_v7().simple().to_string();
        let mut prepared = lock(&session.prepared)?;
        if prepared.len() >= MAX_PREPARED {
            return Err(ScoreError::ResourceExhausted(format!(
                "{MAX_PREPARED} prepared statements are open in this session: close some"
            )));
        }
        prepared.insert(handle.clone(), Prepared { sql: sql.to_string(), params: None });
        Ok((handle, schema, params))
    }

    /// The result schema and parameter types of `sql`, planned but not run (nothing is
    /// created, copied or scored): for prepared statements and `GetSchema`.
    pub async fn describe(&self, sql: &str, creds: &Credentials) -> Result<(SchemaRef, Option<SchemaRef>)> {
        let _slot = self.slot()?;
        let deadline = tokio::time::Instant::now() + self.config.query_timeout;
        let (_, session) = self.session(creds)?;
        let statement = Self::parse(sql)?;
        if let Some(setting) = Self::session_setting(&statement) {
            setting?;
            return Ok((Arc::new(Schema::empty()), None));
        }
        self.check_statement(&statement)?;
        let insert = matches!(&statement, Statement::Statement(s) if matches!(**s, Sql::Insert(_)));
        match statement {
            Statement::CopyTo(_) => return Ok((write_result_schema(), None)),
            Statement::Statement(_) | Statement::Explain(_) => {}
            _ => return Ok((Arc::new(Schema::empty()), None)),
        }
        let work = async {
            let models = self.models(sql, creds).await?;
            let ctx = self.query_context(&session, models)?;
            let plan = ctx.state().create_logical_plan(sql).await?;
            Self::options().with_allow_dml(insert).verify_plan(&plan)?;
            let params = parameter_schema(plan.get_parameter_types()?);
            let schema = if insert { write_result_schema() } else { Arc::new(plan.schema().as_arrow().clone()) };
            Ok::<_, ScoreError>((schema, params))
        };
        tokio::time::timeout_at(deadline, work).await.map_err(|_| self.deadline_error())?
    }

    /// Bind parameters (one row) to a prepared statement.
    pub fn bind(&self, handle: &str, params: &RecordBatch, creds: &Credentials) -> Result<()> {
        let (_, session) = self.session(creds)?;
        let mut prepared = lock(&session.prepared)?;
        let statement = prepared.get_mut(handle).ok_or_else(|| unknown_prepared(handle))?;
        if params.num_rows() != 1 {
            return Err(ScoreError::InvalidArgument(format!(
                "bind one row of parameters per execution ({} sent)",
                params.num_rows()
            )));
        }
        let values = params
            .columns()
            .iter()
            .map(|c| ScalarValue::try_from_array(c, 0))
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        statement.params = Some(values);
        Ok(())
    }

    /// Plan a prepared statement with its bound parameters.
    pub async fn plan_prepared(&self, handle: &str, creds: &Credentials) -> Result<Planned> {
        let (_, session) = self.session(creds)?;
        let statement = lock(&session.prepared)?.get(handle).cloned().ok_or_else(|| unknown_prepared(handle))?;
        self.plan(&statement.sql, statement.params, creds).await
    }

    /// The text of a prepared statement.
    fn prepared_sql(&self, handle: &str, creds: &Credentials) -> Result<String> {
        let (_, session) = self.session(creds)?;
        let prepared = lock(&session.prepared)?;
        Ok(prepared.get(handle).ok_or_else(|| unknown_prepared(handle))?.sql.clone())
    }

    /// Close a prepared statement.
    pub fn close_prepared(&self, handle: &str, creds: &Credentials) -> Result<()> {
        let (_, session) = self.session(creds)?;
        lock(&session.prepared)?.remove(handle);
        Ok(())
    }

    /// The caller's session context, for the catalog commands.
    pub(crate) fn catalog(&self, creds: &Credentials) -> Result<SessionContext> {
        Ok(self.session(creds)?.1.ctx.clone())
    }
}

/// `COPY (query) TO 'prefix' STORED AS PARQUET` and `INSERT INTO table …`: the rows
/// written as Parquet parts under the prefix, then the manifest (a new one for `COPY`, the
/// table's extended for `INSERT`), recording the statement's model; on any error, cancel
/// or timeout the parts are removed and the manifest is left as it was.
async fn write_parts(job: WriteJob) -> Result<RecordBatch> {
    let WriteJob { lake, ctx, write, sql, params, models, deadline, cancel, timeout, creds } = job;
    let verb = write.verb();
    let cancelled = move || ScoreError::Cancelled(format!("the {verb} was cancelled; its partial output was removed"));
    let target = tokio::time::timeout_at(deadline, write.target(&lake, &ctx, &sql, params))
        .await
        .map_err(|_| timeout.clone())??;
    let schema: SchemaRef = Arc::new(target.rows.schema().as_arrow().clone());
    let mut lineage = vec![("lakescore.sql".to_string(), target.source.clone())];
    let mut used: Vec<&ResolvedModel> = models.values().collect();
    used.sort_by(|a, b| a.reference.cmp(&b.reference));
    for m in &used {
        lineage.push((format!("lakescore.sql.model.{}", m.reference), m.version.pinned_reference()));
    }
    // The manifest names the statement's model (the first by reference when it has
    // several; all of them are in every part's footer).
    let model = match used.first() {
        Some(m) => ManifestModel::from(*m),
        None => ManifestModel {
            reference: String::new(),
            name: String::new(),
            version: 0,
            sha256: String::new(),
            engine: "sql".into(),
        },
    };
    let job_id = uuid::Uuid::now_v7().simple().to_string();
    let commit = match (&write, target.format) {
        (_, OutputFormat::Delta) => {
            let cmd = lakescore_proto::ScoreCommand { job_id: job_id.clone(), ..Default::default() };
            let mut lineage = lakescore_lake::lake::lineage(&model, &cmd, None, &job_id, &creds);
            lineage.insert("sql".into(), target.source.clone().into());
            let models: serde_json::Map<String, serde_json::Value> =
                used.iter().map(|m| (m.reference.clone(), m.version.pinned_reference().into())).collect();
            lineage.insert("models".into(), models.into());
            Commit::Table(Box::new(TableCommit { lineage, ..Default::default() }))
        }
        (Write::Copy(_), OutputFormat::Parquet) => Commit::Manifest,
        (Write::Insert, OutputFormat::Parquet) => Commit::Append,
    };
    let sink = lake.sink(target.out, job_id, schema, model, commit).with_metadata(lineage);
    let rows = target.rows.execute_stream().await?.map(|b| b.map_err(ScoreError::from));
    // The statement's rows until they end, it is cancelled or its time is up; nothing
    // commits once it is cancelled or out of time, even with every row written.
    let rows = futures::stream::unfold(Some(rows), move |state| {
        let (cancel, timeout) = (cancel.clone(), timeout.clone());
        async move {
            let mut rows = state?;
            let next = tokio::select! {
                biased;
                _ = cancel.cancelled() => Some(Err(cancelled())),
                _ = tokio::time::sleep_until(deadline) => Some(Err(timeout)),
                b = rows.next() => match b {
                    Some(b) => Some(b),
                    None if cancel.is_cancelled() => Some(Err(cancelled())),
                    None if tokio::time::Instant::now() >= deadline => Some(Err(timeout)),
                    None => None,
                },
            };
            next.map(|item| {
                let more = item.is_ok();
                (item, more.then_some(rows))
            })
        }
    });
    let summary = sink.write_stream(rows).await?.summary;
    Ok(RecordBatch::try_new(
        write_result_schema(),
        vec![
            Arc::new(UInt64Array::from(vec![summary.rows])),
            Arc::new(StringArray::from(vec![summary.table.clone().unwrap_or(summary.manifest)])),
            Arc::new(arrow::array::Int64Array::from(vec![summary.table_version])),
        ],
    )?)
}

/// What `COPY` and `INSERT` return: the rows written, the manifest's URL (a Delta table's
/// own URL), and the Delta table's version the statement committed.
fn write_result_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("count", DataType::UInt64, false),
        Field::new("manifest", DataType::Utf8, false),
        Field::new("table_version", DataType::Int64, true),
    ]))
}

/// A statement that writes through the commit protocol.
enum Write {
    Copy(CopyToStatement),
    /// `INSERT INTO` an external Parquet table over a prefix.
    Insert,
}

/// Where a write goes and the rows it writes.
struct WriteTarget {
    out: Location,
    format: OutputFormat,
    rows: DataFrame,
    /// The query the rows come from, for the parts' lineage.
    source: String,
}

impl Write {
    fn verb(&self) -> &'static str {
        match self {
            Write::Copy(_) => "COPY",
            Write::Insert => "INSERT",
        }
    }

    /// Check the statement and plan its rows; `sql` is the statement's text.
    async fn target(
        &self,
        lake: &Lake,
        ctx: &SessionContext,
        sql: &str,
        params: Option<Vec<ScalarValue>>,
    ) -> Result<WriteTarget> {
        match self {
            Write::Copy(copy) => {
                let output_format = match copy.stored_as.as_deref().map(str::to_ascii_lowercase).as_deref() {
                    None => "",
                    Some("deltatable" | "delta") => "delta",
                    Some("parquet") => "parquet",
                    Some(other) => {
                        return Err(ScoreError::Unimplemented(format!(
                            "COPY writes a Delta table (the default, or STORED AS DELTATABLE) or Parquet parts with a \
                             manifest (STORED AS PARQUET) through lakescore's commit protocol: STORED AS {other} is \
                             not supported"
                        )))
                    }
                };
                if !copy.partitioned_by.is_empty() || !copy.options.is_empty() {
                    return Err(ScoreError::Unimplemented(
                        "COPY … TO takes no PARTITIONED BY or OPTIONS here: parts are sized by the worker's \
                         max_rows_per_file and row_group_rows"
                            .into(),
                    ));
                }
                lake.storage().locate(&copy.target, "COPY target")?;
                let cmd = lakescore_proto::ScoreCommand {
                    output: copy.target.clone(),
                    output_format: output_format.into(),
                    ..Default::default()
                };
                let (out, format) = lake.output_target(&cmd).await?;
                let source = match &copy.source {
                    CopyToSource::Relation(name) => format!("SELECT * FROM {name}"),
                    CopyToSource::Query(query) => query.to_string(),
                };
                let rows = SqlEngine::frame(ctx, &source, params).await?;
                Ok(WriteTarget { out, format, rows, source })
            }
            Write::Insert => {
                let plan = ctx.state().create_logical_plan(sql).await?;
                let LogicalPlan::Dml(dml) = plan else {
                    return Err(ScoreError::internal("INSERT did not plan as an insert"));
                };
                if dml.op != WriteOp::Insert(InsertOp::Append) {
                    return Err(ScoreError::Unimplemented(format!(
                        "{} is not supported: tables here only take appended rows (INSERT INTO … SELECT / VALUES)",
                        dml.op.name().to_uppercase()
                    )));
                }
                let table = dml.table_name.to_string();
                let provider = source_as_provider(&dml.target)?;
                let rows = DataFrame::new(ctx.state(), dml.input.as_ref().clone());
                let rows = match params.clone() {
                    Some(p) => rows.with_param_values(p)?,
                    None => rows,
                };
                if let Some(delta) = (provider.as_ref() as &dyn Any).downcast_ref::<delta::DeltaSqlTable>() {
                    // One commit to the table, through the same sink as every other write.
                    let out = delta.loc.clone();
                    return Ok(WriteTarget { out, format: OutputFormat::Delta, rows, source: sql.to_string() });
                }
                let listing = (provider.as_ref() as &dyn Any).downcast_ref::<ListingTable>().filter(|t| {
                    (t.options().format.as_ref() as &dyn Any).is::<ParquetFormat>()
                        && t.options().table_partition_cols.is_empty()
                });
                let location = match listing.map(|t| t.table_paths().as_slice()) {
                    Some([url]) if url.is_collection() => url.as_str().to_string(),
                    _ => {
                        return Err(ScoreError::Unimplemented(format!(
                            "INSERT INTO {table}: rows are appended to external Parquet tables over one prefix \
                             without partitions (CREATE EXTERNAL TABLE {table} (…) STORED AS PARQUET LOCATION \
                             '<prefix>/'); write anything else with COPY (SELECT …) TO '<prefix>'"
                        )))
                    }
                };
                let out = lake.storage().locate(&location, "INSERT target")?;
                Ok(WriteTarget { out, format: OutputFormat::Parquet, rows, source: sql.to_string() })
            }
        }
    }
}

/// One `COPY` or `INSERT`, with what it needs to run in its own task.
struct WriteJob {
    lake: Arc<Lake>,
    ctx: SessionContext,
    write: Write,
    /// The statement's text.
    sql: String,
    params: Option<Vec<ScalarValue>>,
    models: Arc<HashMap<String, ResolvedModel>>,
    deadline: tokio::time::Instant,
    cancel: CancellationToken,
    /// The error to end with at the deadline.
    timeout: ScoreError,
    /// The caller (a Delta commit's lineage names them).
    creds: Credentials,
}

/// The engine's running statements: handle → (session, cancel token).
type Running = Arc<Mutex<HashMap<String, (String, CancellationToken)>>>;

/// A statement's entry in the engine's running map, removed when this is dropped (the
/// planning call ends, or its stream does) unless [`Registered::keep`] hands it on.
struct Registered {
    running: Option<Running>,
    handle: String,
}

impl Registered {
    fn new(running: Running, handle: &str, session: &str, cancel: CancellationToken) -> Result<Self> {
        lock(&running)?.insert(handle.to_string(), (session.to_string(), cancel));
        Ok(Self { running: Some(running), handle: handle.to_string() })
    }

    /// Leave the entry in place: the statement waits for its fetch (expired with it).
    fn keep(mut self) {
        self.running = None;
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Some(running) = &self.running {
            if let Ok(mut running) = running.lock() {
                running.remove(&self.handle);
            }
        }
    }
}

/// A panic inside a query (a reader meeting a file it cannot handle) as the query's error.
fn panicked(payload: Box<dyn std::any::Any + Send>) -> ScoreError {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(panic = %what, "a SQL query panicked");
    ScoreError::Internal(format!("the query failed inside the worker: {what}"))
}

fn unknown_prepared(handle: &str) -> ScoreError {
    ScoreError::NotFound(format!("no prepared statement {handle} in this session (closed, or the session expired)"))
}

/// `batch` with the `announced` schema: as it is where its schema already is that one,
/// else each column whose type differs cast to the announced type (a change of encoding,
/// such as a dictionary decoded or built: the values stay).
fn conform(batch: RecordBatch, announced: &SchemaRef) -> Result<RecordBatch> {
    if batch.schema_ref() == announced {
        return Ok(batch);
    }
    let got = batch.schema();
    if got.fields().len() != announced.fields().len() {
        return Err(ScoreError::Internal(format!(
            "the query's batches have {} columns, its schema {}",
            got.fields().len(),
            announced.fields().len()
        )));
    }
    let columns = batch
        .columns()
        .iter()
        .zip(announced.fields())
        .map(|(column, field)| {
            if column.data_type() == field.data_type() {
                return Ok(column.clone());
            }
            arrow::compute::cast(column, field.data_type()).map_err(|e| {
                ScoreError::Internal(format!(
                    "column '{}' comes out of the query as {}, not the announced {}: {e}",
                    field.name(),
                    column.data_type(),
                    field.data_type()
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    Ok(RecordBatch::try_new_with_options(announced.clone(), columns, &options)?)
}

/// The parameter schema (`$1`, `$2`, … in order) when every parameter's type is known.
fn parameter_schema(types: HashMap<String, Option<DataType>>) -> Option<SchemaRef> {
    let mut known: Vec<(usize, String, DataType)> = Vec::new();
    for (name, ty) in types {
        let position = name.strip_prefix('$')?.parse::<usize>().ok()?;
        known.push((position, name, ty?));
    }
    known.sort_by_key(|(p, _, _)| *p);
    Some(Arc::new(Schema::new(known.into_iter().map(|(_, n, t)| Field::new(n, t, true)).collect::<Vec<_>>())))
}

#[cfg(test)]
mod tests;

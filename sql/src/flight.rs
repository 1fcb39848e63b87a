//! Flight SQL commands onto [`SqlEngine`]. The worker's Flight service hands a call here
//! when its descriptor, ticket or action body is a Flight SQL message ([`flight_sql_command`]);
//! lakescore's own score commands never are, so both share one port, one token check and
//! one set of limits.
//!
//! Statements (plain and prepared) are planned by `GetFlightInfo` and fetched once by
//! `DoGet` with the ticket it returned; catalog commands (`GetCatalogs`, `GetDbSchemas`,
//! `GetTables`, `GetTableTypes`, `GetSqlInfo`) are answered the same way.

use std::sync::Arc;

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::Schema;
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult,
    Any, Command, CommandGetDbSchemas, CommandGetTables, DoPutPreparedStatementResult, DoPutUpdateResult,
    ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{FlightDescriptor, FlightEndpoint, FlightInfo, Ticket};
use bytes::Bytes;
use futures::StreamExt;
use prost::Message;

use lakescore_engine::error::{Result, ScoreError};
use lakescore_engine::scorer::BatchStream;
use lakescore_engine::source::Credentials;
use lakescore_flight::input::FlightInput;
use lakescore_flight::router::{
    FlightSqlFront, ACTION_CLOSE_PREPARED_STATEMENT, ACTION_CREATE_PREPARED_STATEMENT, FLIGHT_SQL_TYPE_PREFIX,
};
use lakescore_flight::service::ipc_schema;

use crate::{Planned, SqlEngine};

/// The Flight SQL command in `bytes` (a descriptor's `cmd`, a ticket), or `None` when they
/// are not a Flight SQL message (a lakescore score command, protobuf or JSON).
fn flight_sql_command(bytes: &[u8]) -> Option<Result<Command>> {
    let any = Any::decode(bytes).ok()?;
    if !any.type_url.starts_with(FLIGHT_SQL_TYPE_PREFIX) {
        return None;
    }
    Some(Command::try_from(any).map_err(|e| ScoreError::InvalidArgument(format!("invalid Flight SQL command: {e}"))))
}

/// The Flight SQL command in `bytes`, which the service's router found to be one.
fn command(bytes: &[u8]) -> Result<Command> {
    flight_sql_command(bytes).unwrap_or_else(|| Err(ScoreError::invalid("not a Flight SQL command")))
}

fn unsupported(cmd: &Command) -> ScoreError {
    ScoreError::Unimplemented(format!(
        "Flight SQL {} is not supported here (statements, prepared statements with parameters, catalogs, \
         schemas, tables, table types and SQL info are)",
        cmd.type_url().trim_start_matches(FLIGHT_SQL_TYPE_PREFIX)
    ))
}

/// The catalog commands, answered from the session's catalog as one batch.
fn is_catalog(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::CommandGetCatalogs(_)
            | Command::CommandGetDbSchemas(_)
            | Command::CommandGetTables(_)
            | Command::CommandGetTableTypes(_)
            | Command::CommandGetSqlInfo(_)
    )
}

fn ticket_info(planned: &Planned, descriptor: FlightDescriptor) -> Result<FlightInfo> {
    let ticket = TicketStatementQuery { statement_handle: Bytes::from(planned.handle.clone().into_bytes()) };
    let endpoint = FlightEndpoint::new().with_ticket(Ticket::new(ticket.as_any().encode_to_vec()));
    Ok(FlightInfo::new()
        .try_with_schema(&planned.schema)?
        .with_descriptor(descriptor)
        .with_endpoint(endpoint)
        .with_ordered(true))
}

fn handle_text(bytes: &[u8], what: &str) -> Result<String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| ScoreError::InvalidArgument(format!("invalid {what} handle")))
}

impl SqlEngine {
    /// What the worker says of itself to `GetSqlInfo`.
    fn sql_info() -> Result<SqlInfoData> {
        let mut info = SqlInfoDataBuilder::new();
        info.append(SqlInfo::FlightSqlServerName, "lakescore");
        info.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
        info.append(SqlInfo::FlightSqlServerArrowVersion, "59");
        info.append(SqlInfo::FlightSqlServerReadOnly, false);
        info.append(SqlInfo::FlightSqlServerSql, true);
        info.append(SqlInfo::FlightSqlServerSubstrait, false);
        info.append(SqlInfo::FlightSqlServerTransaction, 0i32);
        info.append(SqlInfo::FlightSqlServerCancel, true);
        info.append(SqlInfo::SqlDdlCatalog, false);
        info.append(SqlInfo::SqlDdlSchema, false);
        info.append(SqlInfo::SqlDdlTable, true);
        info.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
        Ok(info.build()?)
    }

    /// The answer to a catalog command, as one batch: a query like any other (a slot, the
    /// deadline), since listing `lakescore.*` asks the registry.
    async fn catalog_batch(&self, cmd: Command, creds: &Credentials) -> Result<RecordBatch> {
        let _slot = self.slot()?;
        tokio::time::timeout(self.timeout(), self.list_catalog(cmd, creds)).await.map_err(|_| self.deadline_error())?
    }

    async fn list_catalog(&self, cmd: Command, creds: &Credentials) -> Result<RecordBatch> {
        let ctx = self.catalog(creds)?;
        let catalogs = ctx.catalog_names();
        Ok(match cmd {
            Command::CommandGetCatalogs(c) => {
                let mut b = c.into_builder();
                catalogs.iter().for_each(|name| b.append(name));
                b.build()?
            }
            Command::CommandGetDbSchemas(c) => {
                let mut b = CommandGetDbSchemas::into_builder(c);
                for catalog in &catalogs {
                    let Some(provider) = ctx.catalog(catalog) else { continue };
                    provider.schema_names().iter().for_each(|schema| b.append(catalog, schema));
                }
                b.build()?
            }
            Command::CommandGetTables(c) => {
                let mut b = CommandGetTables::into_builder(c);
                for catalog in &catalogs {
                    let Some(provider) = ctx.catalog(catalog) else { continue };
                    for schema in provider.schema_names() {
                        let Some(tables) = provider.schema(&schema) else { continue };
                        for name in tables.table_names() {
                            let Some(table) = tables.table(&name).await? else { continue };
                            let kind = match table.table_type() {
                                datafusion::datasource::TableType::View => "VIEW",
                                datafusion::datasource::TableType::Temporary => "LOCAL TEMPORARY",
                                datafusion::datasource::TableType::Base => "TABLE",
                            };
                            b.append(catalog, &schema, &name, kind, table.schema().as_ref())?;
                        }
                    }
                }
                b.build()?
            }
            Command::CommandGetTableTypes(c) => {
                let mut b = c.into_builder();
                ["LOCAL TEMPORARY", "TABLE", "VIEW"].iter().for_each(|t| b.append(t));
                b.build()?
            }
            Command::CommandGetSqlInfo(c) => Self::sql_info()?.record_batch(c.info)?,
            other => return Err(unsupported(&other)),
        })
    }

    /// `GetFlightInfo` of a Flight SQL command: the statement planned (DDL and `COPY` run),
    /// and one endpoint whose ticket fetches it.
    async fn command_info(
        &self,
        cmd: Command,
        descriptor: FlightDescriptor,
        creds: &Credentials,
    ) -> Result<FlightInfo> {
        let planned = match cmd {
            Command::CommandStatementQuery(q) => self.plan(&q.query, None, creds).await?,
            Command::CommandPreparedStatementQuery(p) => {
                self.plan_prepared(&handle_text(&p.prepared_statement_handle, "prepared statement")?, creds).await?
            }
            catalog if is_catalog(&catalog) => {
                let batch = self.catalog_batch(catalog, creds).await?;
                self.ready(batch, creds)?
            }
            other => return Err(unsupported(&other)),
        };
        ticket_info(&planned, descriptor)
    }

    /// `GetSchema` of a Flight SQL command: the result's schema, planned but not run.
    async fn command_schema(&self, cmd: Command, creds: &Credentials) -> Result<Arc<Schema>> {
        match cmd {
            Command::CommandStatementQuery(q) => Ok(self.describe(&q.query, creds).await?.0),
            Command::CommandPreparedStatementQuery(p) => {
                let handle = handle_text(&p.prepared_statement_handle, "prepared statement")?;
                Ok(self.describe(&self.prepared_sql(&handle, creds)?, creds).await?.0)
            }
            catalog if is_catalog(&catalog) => Ok(self.catalog_batch(catalog, creds).await?.schema()),
            other => Err(unsupported(&other)),
        }
    }

    /// `DoGet` of a Flight SQL ticket: the planned statement's rows.
    async fn command_get(&self, cmd: Command, creds: &Credentials) -> Result<(Arc<Schema>, BatchStream)> {
        match cmd {
            Command::TicketStatementQuery(t) => self.fetch(&handle_text(&t.statement_handle, "statement")?, creds),
            Command::CommandPreparedStatementQuery(p) => {
                let planned = self
                    .plan_prepared(&handle_text(&p.prepared_statement_handle, "prepared statement")?, creds)
                    .await?;
                self.fetch(&planned.handle, creds)
            }
            catalog if is_catalog(&catalog) => {
                let batch = self.catalog_batch(catalog, creds).await?;
                Ok((batch.schema(), futures::stream::iter([Ok(batch)]).boxed()))
            }
            other => Err(unsupported(&other)),
        }
    }

    /// `DoPut` of a Flight SQL command: parameters bound to a prepared statement, or an
    /// update statement (DDL, `COPY`) run. The reply's `app_metadata`.
    async fn command_put(&self, cmd: Command, mut input: FlightInput, creds: &Credentials) -> Result<Bytes> {
        match cmd {
            Command::CommandPreparedStatementQuery(p) => {
                let handle = handle_text(&p.prepared_statement_handle, "prepared statement")?;
                let mut rows: Option<RecordBatch> = None;
                if input.schema().await?.is_some() {
                    let mut batches = input.batches();
                    while let Some(batch) = batches.next().await {
                        let batch = batch?;
                        if rows.is_some() && batch.num_rows() > 0 {
                            return Err(ScoreError::invalid("bind one row of parameters per execution"));
                        }
                        if batch.num_rows() > 0 {
                            rows = Some(batch);
                        }
                    }
                }
                if let Some(rows) = rows {
                    self.bind(&handle, &rows, creds)?;
                }
                let result =
                    DoPutPreparedStatementResult { prepared_statement_handle: Some(p.prepared_statement_handle) };
                Ok(result.encode_to_vec().into())
            }
            Command::CommandStatementUpdate(u) => {
                let count = self.update(&u.query, None, creds).await?;
                Ok(DoPutUpdateResult { record_count: count }.encode_to_vec().into())
            }
            Command::CommandPreparedStatementUpdate(p) => {
                let handle = handle_text(&p.prepared_statement_handle, "prepared statement")?;
                let planned = self.plan_prepared(&handle, creds).await?;
                let count = self.drain(&planned.handle, creds).await?;
                Ok(DoPutUpdateResult { record_count: count }.encode_to_vec().into())
            }
            other => Err(unsupported(&other)),
        }
    }

    /// Run a statement for its effect; the rows it reports (`COPY`'s count), else -1.
    async fn update(
        &self,
        sql: &str,
        params: Option<Vec<datafusion::common::ScalarValue>>,
        creds: &Credentials,
    ) -> Result<i64> {
        let planned = self.plan(sql, params, creds).await?;
        self.drain(&planned.handle, creds).await
    }

    async fn drain(&self, handle: &str, creds: &Credentials) -> Result<i64> {
        let (_, mut batches) = self.fetch(handle, creds)?;
        let mut count: Option<i64> = None;
        while let Some(batch) = batches.next().await {
            let batch = batch?;
            // COPY's count; any other statement run as an update reports -1.
            let counted = batch
                .column_by_name("count")
                .and_then(|c| c.as_any().downcast_ref::<arrow::array::UInt64Array>())
                .filter(|c| !c.is_empty() && c.is_valid(0))
                .map(|c| c.value(0) as i64);
            if let Some(c) = counted {
                count = Some(count.unwrap_or(0).saturating_add(c));
            }
        }
        Ok(count.unwrap_or(-1))
    }

    /// A Flight SQL action's result body, or `None` for an action that returns nothing.
    async fn action(&self, kind: &str, body: &[u8], creds: &Credentials) -> Result<Option<Bytes>> {
        let any = Any::decode(body).map_err(|e| ScoreError::InvalidArgument(format!("invalid {kind} request: {e}")))?;
        let bad = |e: arrow::error::ArrowError| ScoreError::InvalidArgument(format!("invalid {kind} request: {e}"));
        match kind {
            ACTION_CREATE_PREPARED_STATEMENT => {
                let req: ActionCreatePreparedStatementRequest = any
                    .unpack()
                    .map_err(bad)?
                    .ok_or_else(|| ScoreError::invalid("expected ActionCreatePreparedStatementRequest"))?;
                let (handle, schema, params) = self.prepare(&req.query, creds).await?;
                let result = ActionCreatePreparedStatementResult {
                    prepared_statement_handle: Bytes::from(handle.into_bytes()),
                    dataset_schema: ipc_schema(&schema)?,
                    parameter_schema: match params {
                        Some(p) => ipc_schema(&p)?,
                        None => Bytes::new(),
                    },
                };
                Ok(Some(result.as_any().encode_to_vec().into()))
            }
            ACTION_CLOSE_PREPARED_STATEMENT => {
                let req: ActionClosePreparedStatementRequest = any
                    .unpack()
                    .map_err(bad)?
                    .ok_or_else(|| ScoreError::invalid("expected ActionClosePreparedStatementRequest"))?;
                self.close_prepared(&handle_text(&req.prepared_statement_handle, "prepared statement")?, creds)?;
                Ok(None)
            }
            other => Err(ScoreError::InvalidArgument(format!("unknown Flight SQL action {other:?}"))),
        }
    }

    /// `CancelFlightInfo` for a statement's `FlightInfo`: whether one was cancelled.
    fn cancel_statements(&self, info: &FlightInfo, creds: &Credentials) -> Result<bool> {
        let mut cancelled = false;
        for endpoint in &info.endpoint {
            let Some(ticket) = &endpoint.ticket else { continue };
            if let Some(Ok(Command::TicketStatementQuery(t))) = flight_sql_command(&ticket.ticket) {
                cancelled |= self.cancel(&handle_text(&t.statement_handle, "statement")?, creds)?;
            }
        }
        Ok(cancelled)
    }
}

#[async_trait::async_trait]
impl FlightSqlFront for SqlEngine {
    fn actions(&self) -> Vec<(&'static str, &'static str)> {
        vec![
            (
                ACTION_CREATE_PREPARED_STATEMENT,
                "Flight SQL: prepare a statement (body: ActionCreatePreparedStatementRequest).",
            ),
            (
                ACTION_CLOSE_PREPARED_STATEMENT,
                "Flight SQL: close a prepared statement (body: ActionClosePreparedStatementRequest).",
            ),
        ]
    }

    async fn flight_info(&self, descriptor: FlightDescriptor, creds: &Credentials) -> Result<FlightInfo> {
        let cmd = command(&descriptor.cmd)?;
        self.command_info(cmd, descriptor, creds).await
    }

    async fn schema(&self, command_bytes: &[u8], creds: &Credentials) -> Result<Arc<Schema>> {
        self.command_schema(command(command_bytes)?, creds).await
    }

    async fn do_get(&self, ticket: &[u8], creds: &Credentials) -> Result<(Arc<Schema>, BatchStream)> {
        self.command_get(command(ticket)?, creds).await
    }

    async fn do_put(&self, command_bytes: &[u8], input: FlightInput, creds: &Credentials) -> Result<Bytes> {
        self.command_put(command(command_bytes)?, input, creds).await
    }

    async fn do_action(&self, kind: &str, body: &[u8], creds: &Credentials) -> Result<Option<Bytes>> {
        self.action(kind, body, creds).await
    }

    fn cancel_info(&self, info: &FlightInfo, creds: &Credentials) -> Result<bool> {
        self.cancel_statements(info, creds)
    }
}

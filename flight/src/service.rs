//! The Arrow Flight service: score commands answered with `lakescore-engine` and
//! `lakescore-lake`, Flight SQL handed to the plugged-in front ([`crate::router`]).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use arrow::datatypes::{FieldRef, Schema, SchemaRef};
use arrow::ipc::writer::IpcWriteOptions;
use arrow::ipc::CompressionType;
use arrow_flight::error::FlightError;
use arrow_flight::flight_descriptor::DescriptorType;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest,
    HandshakeResponse, IpcMessage, PollInfo, PutResult, SchemaAsIpc, SchemaResult, Ticket,
};
use base64::Engine as _;
use bytes::Bytes;
use futures::stream::{self, BoxStream};
use futures::{StreamExt, TryStreamExt};
use lakescore_proto::{DescribeRequest, ScoreCommand, ScoreTicket};
use object_store::ObjectStoreExt;
use prost::Message;
use serde_json::json;
use tonic::{Request, Response, Status, Streaming};

use lakescore_engine::error::{Result, ScoreError};
use lakescore_engine::mapping::schema_from_model;
use lakescore_engine::scorer::{BatchStream, ResolvedModel, Scorer};
use lakescore_engine::source::Credentials;
use lakescore_lake::job::JobSettings;
use lakescore_lake::{JobManager, Lake};

use crate::input::{flight_data_request, grpc_request, FlightDataStream, FlightInput};
use crate::metered::{method_label, received_bytes, MeteredBody};
use crate::output::{flight_schema, grpc_message, grpc_response, Results};
use crate::router::{route, FlightSqlFront, Route};

/// Flight action: score a dataset in storage, server-side.
pub const ACTION_SCORE_DATASET: &str = "score-dataset";
/// Flight's standard action for stopping a query (a batch job here).
pub const ACTION_CANCEL_FLIGHT_INFO: &str = "CancelFlightInfo";
/// Flight action: load a model ahead of use.
pub const ACTION_WARM: &str = "warm";
/// Flight action: the output schema for an input schema.
pub const ACTION_DESCRIBE: &str = "describe";

/// The Flight service. Build with [`ScorerService::new`], serve with
/// [`ScorerService::into_server`] (or [`crate::serve_service`]): only through
/// [`FlightServer`], which watches request bodies for resets, is it reachable as a gRPC
/// service.
#[derive(Clone)]
pub struct ScorerService {
    lake: Arc<Lake>,
    jobs: Arc<JobManager>,
    validator: Option<Arc<dyn TokenValidator>>,
    /// Flight SQL on the same port (`None`: turned off, answered `UNIMPLEMENTED`).
    sql: Option<Arc<dyn FlightSqlFront>>,
}

impl std::fmt::Debug for ScorerService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScorerService")
            .field("lake", &self.lake)
            .field("validates_tokens", &self.validator.is_some())
            .finish()
    }
}

/// Checks the caller's `authorization` header on every call, before any work. The registry
/// still decides, with the same token, which models the caller may score.
#[async_trait::async_trait]
pub trait TokenValidator: Send + Sync {
    /// `Err(ScoreError::Unauthenticated)` for a missing or invalid token; `peer` is the
    /// caller's address, for the log of refused calls.
    async fn validate(&self, authorization: Option<&str>, peer: Option<std::net::SocketAddr>) -> Result<()>;
}

impl ScorerService {
    /// A service over a lake, with its own batch jobs and without Flight SQL.
    pub fn new(lake: Arc<Lake>) -> Self {
        let jobs = Arc::new(JobManager::new(lake.clone()));
        Self { lake, jobs, validator: None, sql: None }
    }

    /// Answer Flight SQL calls with `front`.
    pub fn with_sql(mut self, front: Arc<dyn FlightSqlFront>) -> Self {
        self.sql = Some(front);
        self
    }

    /// The scorer behind the service.
    pub fn scorer(&self) -> &Arc<Scorer> {
        self.lake.scorer()
    }

    /// Where the service reads and writes.
    pub fn lake(&self) -> &Arc<Lake> {
        &self.lake
    }

    /// The route of a call with this command (or action).
    fn route(&self, bytes: &[u8], action: Option<&str>) -> Result<Route<'_>> {
        route(self.sql.as_deref(), bytes, action)
    }

    /// Validate every caller's token with `validator` before doing anything for them.
    pub fn with_token_validator(mut self, validator: Arc<dyn TokenValidator>) -> Self {
        self.validator = Some(validator);
        self
    }

    /// The caller's credentials, validated when a validator is configured.
    async fn authenticate<T>(&self, req: &Request<T>) -> Result<Credentials> {
        let creds = credentials(req)?;
        if let Some(v) = &self.validator {
            v.validate(creds.authorization.as_deref(), req.remote_addr()).await?;
        }
        Ok(creds)
    }

    /// The tonic service to add to a `tonic::transport::Server` (message size limits set
    /// from the configuration). It watches request bodies so that a client stream that is
    /// reset (which tonic reports as a normal end of stream) is never committed as output,
    /// and sends DoGet and DoExchange results below tonic's codec ([`crate::output`]).
    pub fn into_server(self) -> FlightServer {
        let max_message_bytes = self.scorer().config().max_message_bytes;
        let max_header_list_bytes = self.scorer().config().max_header_list_bytes as usize;
        let service = Arc::new(self);
        FlightServer {
            inner: FlightServiceServer::new(Routed(service.clone()))
                .max_decoding_message_size(max_message_bytes)
                .max_encoding_message_size(max_message_bytes),
            service,
            max_message_bytes,
            max_header_list_bytes,
        }
    }

    /// What a DoGet answers: a ticket's row groups scored, or a Flight SQL query's rows.
    async fn get(&self, request: Request<Ticket>) -> Result<Results, Status> {
        let creds = self.authenticate(&request).await?;
        let ticket = request.into_inner().ticket;
        if let Route::Sql(sql) = self.route(&ticket, None)? {
            let (schema, batches) = sql.do_get(&ticket, &creds).await?;
            return Ok(Results { schema, options: IpcWriteOptions::default(), batches });
        }
        let ticket =
            ScoreTicket::decode(ticket).map_err(|e| ScoreError::InvalidArgument(format!("invalid ticket: {e}")))?;
        let (fields, values) = ticket_partition(&ticket)?;
        let cmd = ticket.command.ok_or_else(|| ScoreError::invalid("invalid ticket: no score command"))?;
        let options = result_options(&cmd)?;
        let model = self.scorer().resolve_model(&cmd.model, &creds).await?;
        let loc = self.lake.storage().locate(&ticket.file, "ticket file")?;
        let meta =
            loc.store.head(&loc.path).await.map_err(|e| ScoreError::from_store(e, format!("input {}", loc.url)))?;
        let row_groups =
            (!ticket.row_groups.is_empty()).then(|| ticket.row_groups.iter().map(|g| *g as usize).collect());
        let (plan, batches) = self.lake.open_scored(&model, &cmd, &loc, &meta, row_groups, (fields, values)).await?;
        let batches = self.scorer().score_stream(&model, plan.clone(), &cmd, batches);
        Ok(Results { schema: plan.output_schema().clone(), options, batches })
    }

    /// What a DoPut answers: the client's batches scored and written to storage; the
    /// result's summary.
    async fn put(&self, request: Request<FlightDataStream>) -> Result<PutResult, Status> {
        // The stream is not `Sync`: only the call's head is held across awaits.
        let (metadata, extensions, messages) = request.into_parts();
        let head = Request::from_parts(metadata, extensions, ());
        let creds = self.authenticate(&head).await?;
        let Some(mut incoming) =
            Incoming::start(&head, messages, self.scorer().config().max_batch_bytes, self.sql.as_deref()).await?
        else {
            return Err(ScoreError::invalid("empty DoPut: no Flight descriptor was sent").into());
        };
        let cmd = match &incoming.call {
            Call::Score(cmd) => cmd.as_ref().clone(),
            Call::Sql(command) => {
                let Some(sql) = self.sql.as_deref() else { return Err(ScoreError::internal("no SQL front").into()) };
                let app_metadata = sql.do_put(&command.clone(), incoming.input, &creds).await?;
                return Ok(PutResult { app_metadata });
            }
        };
        let model = self.scorer().resolve_model(&cmd.model, &creds).await?;
        self.lake.output_location(&cmd)?;
        let Some(schema) = incoming.schema().await? else {
            // Nothing to score and no schema to write: an empty result.
            let summary = json!({"rows": 0, "files": [], "bytes": 0, "manifest": null});
            return Ok(PutResult { app_metadata: Bytes::from(summary.to_string()) });
        };
        let plan = self.scorer().plan(&model, &cmd, schema)?;
        // A client going away mid-stream ends the input with an error: the sink removes its
        // parts and commits nothing (and would, too, if this call were dropped).
        let summary = self.lake.write_output(&model, plan, &cmd, &creds, incoming.batches()).await?;
        Ok(PutResult { app_metadata: Bytes::from(serde_json::to_vec(&summary).map_err(ScoreError::internal)?) })
    }

    /// What a DoExchange answers: the client's batches scored; `None` (an empty answer) when
    /// the client sent nothing, or no schema.
    async fn exchange(&self, request: Request<FlightDataStream>) -> Result<Option<Results>, Status> {
        // The stream is not `Sync`: only the call's head is held across awaits.
        let (metadata, extensions, messages) = request.into_parts();
        let head = Request::from_parts(metadata, extensions, ());
        let creds = self.authenticate(&head).await?;
        let Some(mut incoming) =
            Incoming::start(&head, messages, self.scorer().config().max_batch_bytes, self.sql.as_deref()).await?
        else {
            return Ok(None);
        };
        let cmd = match &incoming.call {
            Call::Score(cmd) => cmd.as_ref().clone(),
            Call::Sql(_) => {
                return Err(ScoreError::Unimplemented("Flight SQL commands are not taken by DoExchange".into()).into())
            }
        };
        let options = result_options(&cmd)?;
        let model = self.scorer().resolve_model(&cmd.model, &creds).await?;
        let Some(schema) = incoming.schema().await? else {
            return Ok(None);
        };
        let plan = self.scorer().plan(&model, &cmd, schema)?;
        let batches = self.scorer().score_stream(&model, plan.clone(), &cmd, incoming.batches());
        Ok(Some(Results { schema: plan.output_schema().clone(), options, batches }))
    }
}

/// How a request body ended, recorded below tonic (which turns a client's RST_STREAM into
/// a clean end of the request stream).
#[derive(Debug, Default)]
struct BodyState {
    failed: AtomicBool,
}

pin_project_lite::pin_project! {
    struct WatchedBody<B> {
        #[pin]
        inner: B,
        state: Arc<BodyState>,
        received: metrics::Counter,
    }
}

impl<B: http_body::Body> http_body::Body for WatchedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Err(_))) => this.state.failed.store(true, Ordering::SeqCst),
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received.increment(bytes::Buf::remaining(data) as u64);
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The Flight gRPC service ([`FlightServiceServer`] over [`ScorerService`]) with request
/// bodies watched for resets; add it to a `tonic::transport::Server` with `add_service`.
#[derive(Debug, Clone)]
pub struct FlightServer {
    inner: FlightServiceServer<Routed>,
    /// The service behind `inner`, for the calls answered below tonic's codec.
    service: Arc<ScorerService>,
    max_message_bytes: usize,
    max_header_list_bytes: usize,
}

/// The gRPC paths of the calls answered below tonic's codec.
const DO_GET_PATH: &str = "/arrow.flight.protocol.FlightService/DoGet";
const DO_EXCHANGE_PATH: &str = "/arrow.flight.protocol.FlightService/DoExchange";
const DO_PUT_PATH: &str = "/arrow.flight.protocol.FlightService/DoPut";

/// How many times `max_header_list_bytes` the HTTP/2 transport itself takes before it
/// tears the connection down (GOAWAY); in between, the call is answered on its own stream.
pub const TRANSPORT_HEADER_HEADROOM: u32 = 4;

impl tonic::server::NamedService for FlightServer {
    const NAME: &'static str = <FlightServiceServer<Routed> as tonic::server::NamedService>::NAME;
}

impl tower_service::Service<http::Request<tonic::body::Body>> for FlightServer {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower_service::Service::<http::Request<WatchedBody<tonic::body::Body>>>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let size = lakescore_core::error::header_list_bytes(req.headers());
        if size > self.max_header_list_bytes {
            // Refused on this stream alone: the connection and its other calls go on.
            let limit = self.max_header_list_bytes;
            let status = Status::resource_exhausted(format!(
                "the call's headers take {size} bytes, over the worker's limit of {limit} (max_header_list_bytes); \
                 a bearer token this large usually lists too many groups: emit app roles, or only the groups \
                 assigned to the application"
            ));
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        let method = method_label(req.uri().path());
        let started = Instant::now();
        let state = Arc::new(BodyState::default());
        let (mut parts, body) = req.into_parts();
        parts.extensions.insert(state.clone());
        let received = received_bytes(method);
        let request = http::Request::from_parts(parts, WatchedBody { inner: body, state, received });
        let answer = self.answer(request);
        Box::pin(async move {
            let response = answer.await?;
            Ok(MeteredBody::wrap(response, method, started).map(tonic::body::Body::new))
        })
    }
}

impl FlightServer {
    /// The call's response: DoExchange, DoPut and DoGet answered below tonic's codec, the
    /// rest by tonic.
    fn answer(
        &mut self,
        request: http::Request<WatchedBody<tonic::body::Body>>,
    ) -> tonic::codegen::BoxFuture<http::Response<tonic::body::Body>, std::convert::Infallible> {
        let (service, max) = (self.service.clone(), self.max_message_bytes);
        match request.uri().path() {
            DO_EXCHANGE_PATH => Box::pin(async move {
                let messages = async {
                    let results = service.exchange(flight_data_request(request, max)?).await?;
                    Ok(results.map_or_else(|| stream::empty().boxed(), |r| r.into_grpc_messages(max)))
                };
                Ok(grpc_response(messages.await))
            }),
            DO_PUT_PATH => Box::pin(async move {
                let result = async { service.put(flight_data_request(request, max)?).await };
                Ok(grpc_response(result.await.map(|r| stream::iter([Ok(vec![grpc_message(&r)])]).boxed())))
            }),
            DO_GET_PATH => Box::pin(async move {
                let results = async {
                    let mut request = grpc_request::<Ticket, _>(request, max)?;
                    let ticket = request
                        .get_mut()
                        .message()
                        .await?
                        .ok_or_else(|| Status::internal("Missing request message."))?;
                    let (metadata, extensions, _) = request.into_parts();
                    service.get(Request::from_parts(metadata, extensions, ticket)).await
                };
                Ok(grpc_response(results.await.map(|r| r.into_grpc_messages(max))))
            }),
            _ => tower_service::Service::call(&mut self.inner, request),
        }
    }
}

fn credentials<T>(req: &Request<T>) -> Result<Credentials> {
    match req.metadata().get("authorization") {
        None => Ok(Credentials::none()),
        Some(v) => v
            .to_str()
            .map(Credentials::bearer_header)
            .map_err(|_| ScoreError::Unauthenticated("the authorization header is not ASCII".into())),
    }
}

fn command_from_descriptor(desc: Option<&FlightDescriptor>) -> Result<ScoreCommand> {
    let desc = desc.ok_or_else(|| {
        ScoreError::invalid("the first message carries no Flight descriptor (a CMD with a score command)")
    })?;
    if desc.r#type() != DescriptorType::Cmd {
        return Err(ScoreError::invalid(
            "the Flight descriptor must be a CMD holding a score command (protobuf or JSON)",
        ));
    }
    decode_command(&desc.cmd)
}

fn decode_command(bytes: &[u8]) -> Result<ScoreCommand> {
    ScoreCommand::from_bytes(bytes).map_err(|e| ScoreError::InvalidArgument(format!("invalid score command: {e}")))
}

/// The IPC options for results, with the compression the command asks for.
fn result_options(cmd: &ScoreCommand) -> Result<IpcWriteOptions> {
    let codec = match cmd.result_compression.to_ascii_lowercase().as_str() {
        "" | "none" => None,
        "lz4" | "lz4_frame" => Some(CompressionType::LZ4_FRAME),
        "zstd" => Some(CompressionType::ZSTD),
        other => {
            return Err(ScoreError::InvalidArgument(format!(
                "result_compression {other:?} is not one of none, lz4, zstd"
            )))
        }
    };
    Ok(IpcWriteOptions::default().try_with_compression(codec)?)
}

/// A ticket's Delta partition columns and their values (none for a plain Parquet file).
#[allow(clippy::type_complexity)]
fn ticket_partition(ticket: &ScoreTicket) -> Result<(Arc<[FieldRef]>, Arc<[Option<String>]>)> {
    if ticket.partition_schema.is_empty() {
        return Ok((Arc::from([]), Arc::from([])));
    }
    let schema = std::panic::catch_unwind(|| arrow::ipc::convert::try_schema_from_ipc_buffer(&ticket.partition_schema))
        .map_err(|_| ScoreError::invalid("invalid ticket: its partition schema is malformed"))?
        .map_err(|e| ScoreError::InvalidArgument(format!("invalid ticket: its partition schema: {e}")))?;
    let values: Vec<Option<String>> =
        schema.fields().iter().map(|f| ticket.partition_values.get(f.name()).cloned()).collect();
    Ok((schema.fields().iter().cloned().collect(), values.into()))
}

/// `schema` as announced to clients: as the results stream will send it
/// ([`flight_schema`]), IPC-encoded.
pub fn ipc_schema(schema: &Schema) -> Result<Bytes> {
    let msg = IpcMessage::try_from(SchemaAsIpc::new(&flight_schema(schema), &IpcWriteOptions::default()))?;
    Ok(msg.0)
}

fn fields_json(schema: &Schema) -> serde_json::Value {
    serde_json::Value::Array(
        schema
            .fields()
            .iter()
            .map(|f| json!({"name": f.name(), "type": f.data_type().to_string(), "nullable": f.is_nullable()}))
            .collect(),
    )
}

/// The input stream of a DoPut / DoExchange: the score command from the first message's
/// descriptor, and the decoded input.
struct Incoming {
    call: Call,
    input: FlightInput,
    body: Option<Arc<BodyState>>,
}

/// What a DoPut / DoExchange asks for.
enum Call {
    Score(Box<ScoreCommand>),
    /// A Flight SQL command, for the SQL front.
    Sql(Bytes),
}

impl Call {
    /// From the first message's descriptor: a Flight SQL command, or a score command.
    fn of(desc: Option<&FlightDescriptor>, sql: Option<&dyn FlightSqlFront>) -> Result<Self> {
        if let Some(d) = desc {
            if let Route::Sql(_) = route(sql, &d.cmd, None)? {
                return Ok(Call::Sql(d.cmd.clone()));
            }
        }
        Ok(Call::Score(Box::new(command_from_descriptor(desc)?)))
    }
}

impl Incoming {
    /// `None` when the client sent nothing at all.
    /// `head`: the call's metadata and extensions (where the body's state is).
    async fn start(
        head: &Request<()>,
        mut stream: FlightDataStream,
        max_batch_bytes: usize,
        sql: Option<&dyn FlightSqlFront>,
    ) -> Result<Option<Self>> {
        let body = head.extensions().get::<Arc<BodyState>>().cloned();
        let first = match stream.next().await {
            Some(Ok(first)) => first,
            None => return Ok(None),
            Some(Err(status)) => return Err(ScoreError::from_status(&status)),
        };
        let call = Call::of(first.flight_descriptor.as_ref(), sql)?;
        let all = stream::once(async move { Ok(first) }).chain(stream.map_err(FlightError::from));
        Ok(Some(Self { call, input: FlightInput::new(all, max_batch_bytes), body }))
    }

    /// Wait for the schema; `None` when the stream ends before one.
    async fn schema(&mut self) -> Result<Option<SchemaRef>> {
        self.input.schema().await
    }

    /// The record batches; a stream the client reset ends with a `CANCELLED` error rather
    /// than normally.
    fn batches(self) -> BatchStream {
        let body = self.body;
        let broken = stream::once(async move {
            match body {
                Some(b) if b.failed.load(Ordering::SeqCst) => {
                    Some(Err(ScoreError::Cancelled("the client stream was reset before it ended".into())))
                }
                _ => None,
            }
        })
        .filter_map(futures::future::ready);
        self.input.batches().chain(broken).boxed()
    }
}

impl ScorerService {
    async fn flight_info(&self, desc: FlightDescriptor, creds: &Credentials) -> Result<FlightInfo> {
        if let Route::Sql(sql) = self.route(&desc.cmd, None)? {
            return sql.flight_info(desc, creds).await;
        }
        let cmd = command_from_descriptor(Some(&desc))?;
        let model = self.scorer().resolve_model(&cmd.model, creds).await?;
        let input = self.lake.input(&cmd).await?;
        let first = input
            .files
            .first()
            .ok_or_else(|| ScoreError::NotFound(format!("input {}: no Parquet files", cmd.input)))?;
        let (plan, _) =
            self.lake.open_scored(&model, &cmd, &input.loc, &first.meta, None, input.partition(first)).await?;
        // Pin the model's version (and a Delta input's) so that every endpoint scores with
        // the same model, and reads the same table version, even when an alias moves or the
        // table is written meanwhile.
        let pinned = ScoreCommand {
            model: model.version.pinned_reference(),
            input_version: input.table_version.or(cmd.input_version),
            input_timestamp: if input.table_version.is_some() { String::new() } else { cmd.input_timestamp.clone() },
            ..cmd.clone()
        };
        let partition_schema = if input.partition_fields.is_empty() {
            Vec::new()
        } else {
            ipc_schema(&arrow::datatypes::Schema::new(input.partition_fields.to_vec()))?.to_vec()
        };
        let mut info = FlightInfo::new()
            .try_with_schema(&flight_schema(plan.output_schema()))?
            .with_descriptor(desc)
            .with_ordered(true);
        let mut total_bytes: i64 = 0;
        for file in &input.files {
            let partition_values = input
                .partition_fields
                .iter()
                .zip(file.partition.iter())
                .filter_map(|(f, v)| v.clone().map(|v| (f.name().clone(), v)))
                .collect();
            let ticket = ScoreTicket {
                command: Some(pinned.clone()),
                file: input.loc.url_of(&file.meta.location),
                row_groups: Vec::new(),
                partition_schema: partition_schema.clone(),
                partition_values,
            };
            let meta = &file.meta;
            let mut endpoint = FlightEndpoint::new().with_ticket(Ticket::new(ticket.encode_to_vec()));
            if let Some(location) = &self.scorer().config().advertise_location {
                endpoint = endpoint.with_location(location.clone());
            }
            info = info.with_endpoint(endpoint);
            total_bytes = total_bytes.saturating_add(meta.size as i64);
        }
        Ok(info.with_total_bytes(total_bytes))
    }

    async fn describe(&self, body: &[u8], creds: &Credentials) -> Result<serde_json::Value> {
        let req: DescribeRequest = match lakescore_proto::decode_message::<DescribeRequest>(body) {
            Ok(r) if r.command.is_some() => r,
            // A bare score command is accepted too.
            _ => DescribeRequest { command: Some(decode_command(body)?), schema: Vec::new() },
        };
        let cmd = req.command.unwrap_or_default();
        let model = self.scorer().resolve_model(&cmd.model, creds).await?;
        let input: SchemaRef = if req.schema.is_empty() {
            schema_from_model(&cmd, model.handle.model.inputs())?
        } else {
            // Guarded like the Flight input (see flight_input): the IPC reader is not
            // hardened against every malformed message.
            let decoded = std::panic::catch_unwind(|| arrow::ipc::convert::try_schema_from_ipc_buffer(&req.schema))
                .map_err(|_| ScoreError::invalid("describe: invalid IPC schema: the message is malformed"))?;
            Arc::new(decoded.map_err(|e| ScoreError::InvalidArgument(format!("describe: invalid IPC schema: {e}")))?)
        };
        let plan = self.scorer().plan(&model, &cmd, input.clone())?;
        let out = plan.output_schema();
        Ok(json!({
            "model": model.version.model,
            "version": model.version.version,
            "sha256": model.version.sha256,
            "engine": model.handle.engine,
            "inputs": model.handle.model.inputs(),
            "outputs": model.handle.model.outputs(),
            "input_schema": fields_json(&input),
            "output_schema": fields_json(out),
            "output_schema_ipc": base64::engine::general_purpose::STANDARD.encode(ipc_schema(out)?),
        }))
    }

    async fn warm(&self, body: &[u8], creds: &Credentials) -> Result<serde_json::Value> {
        let reference = match decode_command(body) {
            Ok(cmd) => cmd.model,
            // A bare model reference as UTF-8 text.
            Err(e) => match std::str::from_utf8(body) {
                Ok(s) if !s.trim().is_empty() && !s.trim_start().starts_with('{') => s.trim().to_string(),
                _ => return Err(e),
            },
        };
        let started = Instant::now();
        let model: ResolvedModel = self.scorer().resolve_model(&reference, creds).await?;
        Ok(json!({
            "model": model.version.model,
            "version": model.version.version,
            "sha256": model.version.sha256,
            "engine": model.handle.engine,
            "cached": model.cached,
            "load_ms": model.handle.load_time.as_millis() as u64,
            "elapsed_ms": started.elapsed().as_millis() as u64,
        }))
    }
}

type FlightStream<T> = BoxStream<'static, Result<T, Status>>;

/// The service as tonic's generated server takes it: private, so that the only way to serve
/// it is [`FlightServer`], which answers the streaming calls itself.
#[derive(Debug, Clone)]
pub(crate) struct Routed(Arc<ScorerService>);

impl std::ops::Deref for Routed {
    type Target = ScorerService;

    fn deref(&self) -> &ScorerService {
        &self.0
    }
}

#[tonic::async_trait]
impl FlightService for Routed {
    type HandshakeStream = FlightStream<HandshakeResponse>;
    type ListFlightsStream = FlightStream<FlightInfo>;
    type DoGetStream = FlightStream<FlightData>;
    type DoPutStream = FlightStream<PutResult>;
    type DoExchangeStream = FlightStream<FlightData>;
    type DoActionStream = FlightStream<arrow_flight::Result>;
    type ListActionsStream = FlightStream<ActionType>;

    async fn handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        // Auth is a bearer token on every call; the handshake only echoes the payload.
        let mut stream = request.into_inner();
        let payload = match stream.message().await? {
            Some(req) => req.payload,
            None => Bytes::new(),
        };
        let resp = HandshakeResponse { protocol_version: 0, payload };
        Ok(Response::new(stream::iter([Ok(resp)]).boxed()))
    }

    async fn list_flights(&self, _request: Request<Criteria>) -> Result<Response<Self::ListFlightsStream>, Status> {
        Ok(Response::new(stream::empty().boxed()))
    }

    async fn get_flight_info(&self, request: Request<FlightDescriptor>) -> Result<Response<FlightInfo>, Status> {
        let creds = self.authenticate(&request).await?;
        let info = self.flight_info(request.into_inner(), &creds).await?;
        Ok(Response::new(info))
    }

    /// A batch job (a score command with `batch` settings and a `job_id`) as a long-running
    /// query: the first poll starts it, later polls with the returned descriptor report its
    /// progress (units done / units), and the last one its summary in `app_metadata`, or its
    /// error. Without `batch`: the endpoints of `GetFlightInfo`, complete at once.
    async fn poll_flight_info(&self, request: Request<FlightDescriptor>) -> Result<Response<PollInfo>, Status> {
        let creds = self.authenticate(&request).await?;
        let descriptor = request.into_inner();
        if let Route::Sql(_) = self.route(&descriptor.cmd, None)? {
            let info = self.flight_info(descriptor, &creds).await?;
            return Ok(Response::new(PollInfo { info: Some(info), progress: Some(1.0), ..Default::default() }));
        }
        let cmd = command_from_descriptor(Some(&descriptor))?;
        let Some(batch) = &cmd.batch else {
            let info = self.flight_info(descriptor, &creds).await?;
            return Ok(Response::new(PollInfo { info: Some(info), progress: Some(1.0), ..Default::default() }));
        };
        let settings = JobSettings::from_proto(batch)?;
        let job = match self.jobs.find_job(&cmd) {
            Some(job) => job,
            None => self.jobs.start_job(cmd, settings, creds, true)?,
        };
        let mut info = FlightInfo::new().with_descriptor(descriptor.clone()).with_total_records(job.rows() as i64);
        match job.outcome() {
            None => Ok(Response::new(PollInfo {
                info: Some(info),
                flight_descriptor: Some(descriptor),
                progress: Some(job.progress().unwrap_or(0.0)),
                expiration_time: None,
            })),
            Some(Ok(summary)) => {
                info.app_metadata = serde_json::to_vec(&summary).map_err(ScoreError::internal)?.into();
                info.total_records = summary.rows as i64;
                Ok(Response::new(PollInfo {
                    info: Some(info),
                    flight_descriptor: None,
                    progress: Some(1.0),
                    expiration_time: None,
                }))
            }
            Some(Err(e)) => Err(e.into()),
        }
    }

    async fn get_schema(&self, request: Request<FlightDescriptor>) -> Result<Response<SchemaResult>, Status> {
        let creds = self.authenticate(&request).await?;
        let descriptor = request.into_inner();
        if let Route::Sql(sql) = self.route(&descriptor.cmd, None)? {
            // Planned, not run: GetSchema creates, copies and scores nothing.
            let schema = sql.schema(&descriptor.cmd, &creds).await?;
            return Ok(Response::new(SchemaResult { schema: ipc_schema(&schema)? }));
        }
        let info = self.flight_info(descriptor, &creds).await?;
        Ok(Response::new(SchemaResult { schema: info.schema }))
    }

    // DoGet, DoPut and DoExchange are answered by `FlightServer` below tonic's codec, where a
    // client's reset is seen: never here, where a reset DoPut would look like a finished one.
    async fn do_get(&self, _request: Request<Ticket>) -> Result<Response<Self::DoGetStream>, Status> {
        Err(Status::internal("DoGet reached tonic's route; FlightServer answers it"))
    }

    async fn do_put(&self, _request: Request<Streaming<FlightData>>) -> Result<Response<Self::DoPutStream>, Status> {
        Err(Status::internal("DoPut reached tonic's route; FlightServer answers it"))
    }

    async fn do_exchange(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(Status::internal("DoExchange reached tonic's route; FlightServer answers it"))
    }

    async fn do_action(&self, request: Request<Action>) -> Result<Response<Self::DoActionStream>, Status> {
        let creds = self.authenticate(&request).await?;
        let action = request.into_inner();
        if let Route::Sql(sql) = self.route(&[], Some(&action.r#type))? {
            let result = sql.do_action(&action.r#type, &action.body, &creds).await?;
            let results: Vec<Result<arrow_flight::Result, Status>> =
                result.into_iter().map(|body| Ok(arrow_flight::Result { body })).collect();
            return Ok(Response::new(stream::iter(results).boxed()));
        }
        let value = match action.r#type.as_str() {
            ACTION_DESCRIBE => self.describe(&action.body, &creds).await?,
            ACTION_WARM => self.warm(&action.body, &creds).await?,
            ACTION_SCORE_DATASET => {
                let cmd = decode_command(&action.body)?;
                match &cmd.batch {
                    // Runs in the background (PollFlightInfo and CancelFlightInfo reach it);
                    // this call waits for its end.
                    Some(batch) => {
                        let settings = JobSettings::from_proto(batch)?;
                        let job = self.jobs.start_job(cmd.clone(), settings, creds, false)?;
                        serde_json::to_value(job.wait().await?).map_err(ScoreError::internal)?
                    }
                    None => {
                        let lake = self.lake.clone();
                        // Server-side job: it completes even if the caller goes away (were it
                        // dropped, its sink would remove what it wrote).
                        let job = tokio::spawn(async move { lake.score_dataset(&cmd, &creds).await });
                        serde_json::to_value(job.await.map_err(ScoreError::from)??).map_err(ScoreError::internal)?
                    }
                }
            }
            ACTION_CANCEL_FLIGHT_INFO => {
                let request = arrow_flight::CancelFlightInfoRequest::decode(action.body)
                    .map_err(|e| ScoreError::InvalidArgument(format!("invalid CancelFlightInfoRequest: {e}")))?;
                let sql_info = match request.info.as_ref() {
                    Some(info) => match info.flight_descriptor.as_ref() {
                        Some(d) => match self.route(&d.cmd, None)? {
                            Route::Sql(sql) => Some((sql, info)),
                            Route::Score => None,
                        },
                        None => None,
                    },
                    None => None,
                };
                if let Some((sql, info)) = sql_info {
                    let status = if sql.cancel_info(info, &creds)? {
                        arrow_flight::CancelStatus::Cancelled
                    } else {
                        arrow_flight::CancelStatus::NotCancellable
                    };
                    let result = arrow_flight::CancelFlightInfoResult::new(status);
                    return Ok(Response::new(
                        stream::iter([Ok(arrow_flight::Result { body: result.encode_to_vec().into() })]).boxed(),
                    ));
                }
                let cmd = command_from_descriptor(request.info.as_ref().and_then(|i| i.flight_descriptor.as_ref()))?;
                // Every run of the job here, its shards included.
                let running = self.jobs.running_jobs(&cmd);
                running.iter().for_each(|job| job.cancel());
                let status = if running.is_empty() {
                    arrow_flight::CancelStatus::NotCancellable
                } else {
                    arrow_flight::CancelStatus::Cancelling
                };
                let result = arrow_flight::CancelFlightInfoResult::new(status);
                return Ok(Response::new(
                    stream::iter([Ok(arrow_flight::Result { body: result.encode_to_vec().into() })]).boxed(),
                ));
            }
            other => {
                return Err(ScoreError::InvalidArgument(format!(
                    "unknown action {other:?} (actions: {ACTION_SCORE_DATASET}, {ACTION_WARM}, {ACTION_DESCRIBE}, \
                     {ACTION_CANCEL_FLIGHT_INFO})"
                ))
                .into())
            }
        };
        let body = serde_json::to_vec(&value).map_err(ScoreError::internal)?;
        Ok(Response::new(stream::iter([Ok(arrow_flight::Result { body: body.into() })]).boxed()))
    }

    async fn list_actions(&self, _request: Request<Empty>) -> Result<Response<Self::ListActionsStream>, Status> {
        let mut actions = vec![
            (
                ACTION_SCORE_DATASET,
                "Score the Parquet files at `input` and write enriched Parquet under `output` (body: ScoreCommand, protobuf or JSON). Returns {rows, files, bytes, job_id, manifest, ...}.",
            ),
            (
                ACTION_WARM,
                "Load a model ahead of use (body: ScoreCommand or a model reference). Returns {model, version, sha256, cached, load_ms}.",
            ),
            (
                ACTION_DESCRIBE,
                "The result schema for an input schema (body: DescribeRequest or ScoreCommand). Returns JSON with input/output fields and output_schema_ipc (base64).",
            ),
            (
                ACTION_CANCEL_FLIGHT_INFO,
                "Stop a SQL statement, or a batch job running here (body: CancelFlightInfoRequest whose descriptor is the job's ScoreCommand); its partial output is removed.",
            ),
        ];
        if let Some(sql) = &self.sql {
            actions.extend(sql.actions());
        }
        let items: Vec<Result<ActionType, Status>> = actions
            .into_iter()
            .map(|(t, d)| Ok(ActionType { r#type: t.to_string(), description: d.to_string() }))
            .collect();
        Ok(Response::new(stream::iter(items).boxed()))
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Float32Array, RecordBatch};
    use arrow::datatypes::{DataType, Field};

    use super::*;

    /// The codec of each record batch message `result_compression` produces.
    async fn result_codecs(compression: &str) -> Result<Vec<Option<CompressionType>>> {
        let cmd = ScoreCommand { result_compression: compression.into(), ..Default::default() };
        let schema = Arc::new(Schema::new(vec![Field::new("label", DataType::Float32, false)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Float32Array::from_iter_values((0..4096).map(|i| i as f32)))],
        )
        .map_err(ScoreError::from)?;
        let results = Results { schema, options: result_options(&cmd)?, batches: stream::iter([Ok(batch)]).boxed() };
        let messages: Vec<_> = results
            .into_grpc_messages(usize::MAX)
            .try_collect()
            .await
            .map_err(|status| ScoreError::from_status(&status))?;
        let sent = crate::output::tests::read_messages(&messages);
        Ok(sent
            .iter()
            .filter_map(|m| arrow::ipc::root_as_message(&m.data_header).ok()?.header_as_record_batch())
            .map(|b| b.compression().map(|c| c.codec()))
            .collect())
    }

    #[tokio::test]
    async fn results_are_compressed_when_asked() {
        assert_eq!(result_codecs("").await.unwrap(), vec![None]);
        assert_eq!(result_codecs("none").await.unwrap(), vec![None]);
        assert_eq!(result_codecs("lz4").await.unwrap(), vec![Some(CompressionType::LZ4_FRAME)]);
        assert_eq!(result_codecs("ZSTD").await.unwrap(), vec![Some(CompressionType::ZSTD)]);
        let err = result_codecs("gzip").await.unwrap_err();
        assert!(matches!(err, ScoreError::InvalidArgument(ref m) if m.contains("gzip")), "{err}");
    }
}

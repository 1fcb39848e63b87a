//! `lakescore score`: score a local Parquet or CSV file through a scoring worker over
//! Arrow Flight, writing enriched Parquet locally (DoExchange) or under an object-store
//! prefix the worker writes to (DoPut).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::{FlightClient, FlightDescriptor};
use clap::Args;
use futures::{StreamExt, TryStreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use lakescore_core::retry::RetryPolicy;
use lakescore_core::ErrorCode;
use serde_json::{json, Value};

#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// Model reference: name (latest), name:7, or name@alias.
    #[arg(long)]
    pub model: String,
    /// Input: a local .parquet or .csv file (header row; types inferred), streamed to the
    /// worker; or a storage URL of Parquet files (file:///…, s3://…, az://…) that the worker
    /// reads itself as a batch job (then --output must be a storage URL too).
    #[arg(long)]
    pub input: PathBuf,
    /// Output: a local .parquet file (scored here, streamed back), or a storage URL the
    /// worker writes to (file:///…, s3://…, az://…): a Delta table there (created on the
    /// first write, appended to after), or with --format parquet Parquet parts and a
    /// `_lakescore.json` manifest.
    #[arg(long)]
    pub output: String,
    /// What a storage URL --output becomes: delta (a Delta Lake table, read by Spark,
    /// Synapse, Polars, DuckDB) or parquet (plain parts and a manifest). Default: what is
    /// there already, else delta.
    #[arg(long, value_enum)]
    pub format: Option<OutputFormat>,
    /// A Delta table --input read as of this version (time travel).
    #[arg(long, conflicts_with = "input_timestamp")]
    pub input_version: Option<i64>,
    /// A Delta table --input read as of this time (RFC 3339, e.g. 2026-11-01T00:00:00Z): the
    /// last version committed then.
    #[arg(long)]
    pub input_timestamp: Option<String>,
    /// Only these partitions of a partitioned Delta table --input: COLUMN=VALUE, repeatable
    /// (all must match).
    #[arg(long = "input-partition", value_name = "COLUMN=VALUE")]
    pub input_partitions: Vec<String>,
    /// Columns feeding a single 2-D model input [N, F], in order (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub feature_columns: Vec<String>,
    /// Scoring worker.
    #[arg(long, env = "LAKESCORE_FLIGHT_URL", default_value = "grpc://127.0.0.1:8815")]
    pub flight_url: String,
    /// Bearer token passed to the worker (and by it to the registry).
    #[arg(long, env = "LAKESCORE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Rows per record batch sent.
    #[arg(long, default_value_t = 65_536)]
    pub batch_rows: usize,
    /// Compress the Arrow data sent to the worker and the scored rows it sends back: none,
    /// lz4 or zstd (worth it across a slow network; costs CPU on both ends).
    #[arg(long, value_enum, default_value_t = Compression::None)]
    pub compression: Compression,
    #[command(flatten)]
    pub missing: MissingArgs,
    #[command(flatten)]
    pub batch: BatchArgs,
}

/// Nulls in the model's input columns (pandas writes a float NaN as an Arrow null).
#[derive(Debug, Args)]
pub struct MissingArgs {
    /// What a null becomes where no fill value covers its column: auto (NaN in float inputs
    /// of a model that defines missing values, a tree ensemble such as LightGBM's or
    /// XGBoost's; refused for other models), nan (NaN in every float input), error (every
    /// null refused). Integer, bool and string inputs have no NaN: a null there needs a fill.
    #[arg(long, value_enum, default_value_t = Missing::Auto)]
    pub missing: Missing,
    /// Replace nulls in every input column with this number (NaN allowed for float inputs).
    #[arg(long, allow_negative_numbers = true)]
    pub fill_null: Option<f64>,
    /// Replace nulls in one column: COLUMN=NUMBER (NaN allowed), repeatable; overrides
    /// --fill-null for that column.
    #[arg(long = "fill-null-column", value_name = "COLUMN=NUMBER", value_parser = parse_column_fill)]
    pub fill_null_columns: Vec<(String, f64)>,
}

/// `ScoreCommand.output_format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Delta,
    Parquet,
}

/// `ScoreCommand.missing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Missing {
    Auto,
    Nan,
    Error,
}

fn parse_column_fill(s: &str) -> Result<(String, f64), String> {
    let (column, value) = s.rsplit_once('=').ok_or_else(|| format!("'{s}' is not COLUMN=NUMBER"))?;
    let value: f64 = value.trim().parse().map_err(|_| format!("'{value}' in '{s}' is not a number"))?;
    if column.is_empty() {
        return Err(format!("'{s}' names no column"));
    }
    Ok((column.to_string(), value))
}

/// A double as proto3 JSON writes it: `NaN` and the infinities are strings.
fn proto_double(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else if v.is_nan() {
        json!("NaN")
    } else if v > 0.0 {
        json!("Infinity")
    } else {
        json!("-Infinity")
    }
}

impl ScoreArgs {
    /// The command's fields that say which columns feed the model and how their nulls are
    /// handled: the same for a stream and a batch job.
    fn feed(&self, cmd: &mut Value) {
        if let Some(format) = self.format {
            cmd["output_format"] = json!(match format {
                OutputFormat::Delta => "delta",
                OutputFormat::Parquet => "parquet",
            });
        }
        if let Some(v) = self.input_version {
            cmd["input_version"] = json!(v);
        }
        if let Some(t) = &self.input_timestamp {
            cmd["input_timestamp"] = json!(t);
        }
        if !self.input_partitions.is_empty() {
            cmd["input_partitions"] = json!(self.input_partitions);
        }
        if !self.feature_columns.is_empty() {
            cmd["feature_columns"] = json!(self.feature_columns);
        }
        let m = &self.missing;
        cmd["missing"] = json!(match m.missing {
            Missing::Auto => "auto",
            Missing::Nan => "nan",
            Missing::Error => "error",
        });
        if let Some(v) = m.fill_null {
            cmd["fill_null"] = proto_double(v);
        }
        if !m.fill_null_columns.is_empty() {
            cmd["fill_null_columns"] = m
                .fill_null_columns
                .iter()
                .map(|(c, v)| (c.clone(), proto_double(*v)))
                .collect::<serde_json::Map<_, _>>()
                .into();
        }
    }
}

/// Batch jobs (a storage URL as --input): Azure ML batch endpoints' settings.
#[derive(Debug, Args)]
pub struct BatchArgs {
    /// Names the job: running it again with the same id resumes it (committed units are
    /// skipped) [default: a new id].
    #[arg(long)]
    pub job_id: Option<String>,
    /// Row groups per unit of work (0: one file per unit).
    #[arg(long, default_value_t = 0)]
    pub mini_batch_size: u32,
    /// Retries of a unit that fails with a transient error.
    #[arg(long, default_value_t = 3)]
    pub max_retries: u32,
    /// Seconds one attempt of a unit may take.
    #[arg(long, default_value_t = 300.0)]
    pub timeout_secs: f64,
    /// Units scored at once by the worker.
    #[arg(long, default_value_t = 1)]
    pub max_concurrency: u32,
    /// Rows the model cannot score (set aside under OUTPUT/_errors/) the job tolerates; -1: any.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub error_threshold_rows: i64,
    /// Units that fail every attempt the job tolerates; -1: any.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub error_threshold_units: i64,
    /// Write only the manifest with its counts, no scored rows (a validation run).
    #[arg(long)]
    pub summary_only: bool,
    /// Spread the job over these workers (comma-separated grpc://HOST:PORT), or over every
    /// address one name resolves to (grpc://lakescore-workers:8815, the chart's headless
    /// worker Service). A worker that goes away costs only its share, run again elsewhere.
    /// [default: --flight-url alone]
    #[arg(long, value_delimiter = ',')]
    pub workers: Vec<String>,
}

/// Arrow IPC body compression on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Compression {
    None,
    Lz4,
    Zstd,
}

impl Compression {
    fn ipc(self) -> Option<arrow::ipc::CompressionType> {
        match self {
            Compression::None => None,
            Compression::Lz4 => Some(arrow::ipc::CompressionType::LZ4_FRAME),
            Compression::Zstd => Some(arrow::ipc::CompressionType::ZSTD),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// Record batches read from the input file, in order.
type Batches = Box<dyn Iterator<Item = anyhow::Result<RecordBatch>> + Send>;

/// Opens the input file: its schema, its row count when the format records it, its batches.
fn read_input(path: &Path, batch_rows: usize) -> anyhow::Result<(SchemaRef, Option<u64>, Batches)> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("parquet") | Some("pq") => {
            let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                .with_context(|| format!("{} is not a readable Parquet file", path.display()))?;
            let rows = builder.metadata().file_metadata().num_rows() as u64;
            let reader = builder.with_batch_size(batch_rows).build()?;
            let schema = arrow::record_batch::RecordBatchReader::schema(&reader);
            Ok((schema, Some(rows), Box::new(reader.map(|b| b.map_err(anyhow::Error::from)))))
        }
        Some("csv") => {
            let format = arrow::csv::reader::Format::default().with_header(true);
            let (schema, _) = format.infer_schema(std::io::BufReader::new(&file), Some(10_000))?;
            let file = std::fs::File::open(path)?;
            let schema = std::sync::Arc::new(schema);
            let reader = arrow::csv::ReaderBuilder::new(schema.clone())
                .with_format(format)
                .with_batch_size(batch_rows)
                .build(file)?;
            Ok((schema, None, Box::new(reader.map(|b| b.map_err(anyhow::Error::from)))))
        }
        _ => bail!("{}: expected a .parquet or .csv file", path.display()),
    }
}

fn progress(total: Option<u64>) -> ProgressBar {
    let pb = match total {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    let template = if total.is_some() {
        "scoring [{bar:30}] {human_pos}/{human_len} rows {per_sec} eta {eta}"
    } else {
        "scoring {spinner} {human_pos} rows {per_sec}"
    };
    pb.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> "),
    );
    pb
}

/// `grpc://HOST:PORT` as the HTTP/2 endpoint tonic dials.
pub(crate) fn endpoint(url: &str) -> anyhow::Result<String> {
    match url.strip_prefix("grpc://").or_else(|| url.strip_prefix("grpc+tcp://")) {
        Some(hostport) => Ok(format!("http://{hostport}")),
        None => bail!("{url}: worker URLs are grpc://HOST:PORT (TLS endpoints are not supported by this client yet)"),
    }
}

/// A Flight client of the worker at `url`, sending `token`.
async fn connect(url: &str, token: Option<&str>) -> anyhow::Result<FlightClient> {
    let channel = tonic::transport::Channel::from_shared(endpoint(url)?)?
        .connect()
        .await
        .with_context(|| format!("cannot reach the scoring worker at {url}"))?;
    let mut client = FlightClient::new(channel);
    if let Some(t) = token {
        client.add_header("authorization", &format!("Bearer {t}"))?;
    }
    Ok(client)
}

pub async fn run(args: ScoreArgs) -> anyhow::Result<()> {
    if args.input.to_string_lossy().contains("://") {
        return run_job(&args).await;
    }
    let mut client = connect(&args.flight_url, args.token.as_deref()).await?;
    let remote_output = args.output.contains("://");
    let mut cmd = json!({"model": args.model, "result_compression": args.compression.name()});
    args.feed(&mut cmd);
    if remote_output {
        cmd["output"] = json!(args.output);
    }

    let (input_path, batch_rows) = (args.input.clone(), args.batch_rows.max(1));
    let (schema, total, batches) = tokio::task::spawn_blocking(move || read_input(&input_path, batch_rows)).await??;
    let pb = progress(total);
    // Batches are read on a blocking thread and handed over through a small channel, so
    // the file is never held in memory whole.
    let (tx, rx) = tokio::sync::mpsc::channel::<anyhow::Result<RecordBatch>>(4);
    tokio::task::spawn_blocking(move || {
        for b in batches {
            if tx.blocking_send(b).is_err() {
                break;
            }
        }
    });
    let sent = pb.clone();
    let input = tokio_stream_from(rx).map(move |b| {
        if let Ok(b) = &b {
            sent.inc(b.num_rows() as u64);
        }
        b.map_err(|e| arrow_flight::error::FlightError::ExternalError(e.into()))
    });
    let data = FlightDataEncoderBuilder::new()
        .with_options(arrow::ipc::writer::IpcWriteOptions::default().try_with_compression(args.compression.ipc())?)
        .with_schema(schema)
        .with_flight_descriptor(Some(FlightDescriptor::new_cmd(cmd.to_string())))
        .build(input);
    let started = Instant::now();

    if remote_output {
        let results: Vec<_> =
            client.do_put(data).await.map_err(flight_error)?.try_collect().await.map_err(flight_error)?;
        pb.finish_and_clear();
        let summary: Value =
            results.first().map(|r| serde_json::from_slice(&r.app_metadata)).transpose()?.unwrap_or(Value::Null);
        println!("{}", serde_json::to_string_pretty(&summary)?);
        eprintln!("scored {} rows in {:.1}s", summary["rows"], started.elapsed().as_secs_f64());
        return Ok(());
    }

    let out_path = PathBuf::from(&args.output);
    let dir = out_path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir)?;
    let mut stream = client.do_exchange(data).await.map_err(flight_error)?;
    let mut writer: Option<parquet::arrow::ArrowWriter<std::fs::File>> = None;
    let mut rows = 0usize;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(flight_error)?;
        rows += batch.num_rows();
        let w = match &mut writer {
            Some(w) => w,
            None => writer.insert(parquet::arrow::ArrowWriter::try_new(tmp.reopen()?, batch.schema(), None)?),
        };
        w.write(&batch)?;
    }
    pb.finish_and_clear();
    match writer {
        Some(w) => {
            w.close()?;
        }
        None => {
            let schema =
                stream.schema().cloned().unwrap_or_else(|| std::sync::Arc::new(arrow::datatypes::Schema::empty()));
            parquet::arrow::ArrowWriter::try_new(tmp.reopen()?, schema, None)?.close()?;
        }
    }
    // Only a complete result takes the output's name.
    tmp.persist(&out_path).with_context(|| format!("cannot write {}", out_path.display()))?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "scored {rows} rows in {secs:.1}s ({:.0} rows/s) into {}",
        rows as f64 / secs.max(1e-9),
        out_path.display()
    );
    Ok(())
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

pub(crate) fn flight_error(e: arrow_flight::error::FlightError) -> anyhow::Error {
    match e {
        arrow_flight::error::FlightError::Tonic(s) => anyhow::anyhow!("{}: {}", code_name(s.code()), s.message()),
        other => anyhow::anyhow!("{other}"),
    }
}

fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::Unavailable => "UNAVAILABLE",
        _ => "ERROR",
    }
}

/// A batch job: the workers read the input from storage and write the output there; this
/// waits for the summary. With several workers each scores a shard of the units, a shard
/// whose worker goes away is run again on another, and a last call commits the manifest.
/// Ctrl-C leaves the job resumable with the same --job-id.
async fn run_job(args: &ScoreArgs) -> anyhow::Result<()> {
    if !args.output.contains("://") {
        bail!("a storage URL as --input needs a storage URL as --output (the worker writes there)");
    }
    let b = &args.batch;
    let job_id = b.job_id.clone().unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string());
    let mut cmd = json!({
        "model": args.model,
        "input": args.input.to_string_lossy(),
        "output": args.output,
        "job_id": job_id,
        "batch": {
            "mini_batch_size": b.mini_batch_size,
            "max_retries": b.max_retries,
            "timeout_secs": b.timeout_secs,
            "max_concurrency": b.max_concurrency,
            "error_threshold_rows": b.error_threshold_rows,
            "error_threshold_units": b.error_threshold_units,
            "output_action": if b.summary_only { "OUTPUT_ACTION_SUMMARY_ONLY" } else { "OUTPUT_ACTION_APPEND_ROW" },
        },
    });
    args.feed(&mut cmd);
    let workers =
        resolve_workers(if b.workers.is_empty() { std::slice::from_ref(&args.flight_url) } else { &b.workers }).await?;
    let started = Instant::now();
    let bars = indicatif::MultiProgress::new();
    let token = args.token.as_deref();
    let job = run_job_on(&workers, token, &cmd, &job_id, &bars);
    let summary = tokio::select! {
        summary = job => summary?,
        _ = tokio::signal::ctrl_c() => {
            // Stop it everywhere: each worker removes what the job wrote.
            eprintln!("job {job_id}: cancelling on {} worker(s)…", workers.len());
            let request = arrow_flight::CancelFlightInfoRequest::new(
                arrow_flight::FlightInfo::new().with_descriptor(FlightDescriptor::new_cmd(cmd.to_string())),
            );
            for worker in &workers {
                if let Ok(mut client) = connect(worker, token).await {
                    let _ = client.cancel_flight_info(request.clone()).await;
                }
            }
            bail!("job {job_id} cancelled; its partial output is being removed");
        }
    };
    println!("{}", serde_json::to_string_pretty(&summary)?);
    eprintln!(
        "job {job_id}: {} rows scored, {} rows in error, {} of {} units failed, {} retried, {} resumed, on {} worker(s) in {:.1}s",
        summary["rows"], summary["error_rows"], summary["failed_units"], summary["units"], summary["retried_units"],
        summary["resumed_units"], workers.len(), started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Shards on every worker (when there are several), then the commit.
async fn run_job_on(
    workers: &[String],
    token: Option<&str>,
    cmd: &Value,
    job_id: &str,
    bars: &indicatif::MultiProgress,
) -> anyhow::Result<Value> {
    let spinner = |msg: String| {
        let pb = bars.add(ProgressBar::new_spinner());
        pb.set_message(msg);
        pb.enable_steady_tick(Duration::from_millis(200));
        pb
    };
    if workers.len() > 1 {
        let n = workers.len();
        let shards = (0..n).map(|shard| {
            let mut cmd = cmd.clone();
            cmd["batch"]["shard_index"] = json!(shard);
            cmd["batch"]["shard_count"] = json!(n);
            let pb = spinner(format!("job {job_id}: shard {}/{n}", shard + 1));
            let (workers, job_id) = (workers, job_id);
            async move {
                // Its own worker first, then the others in turn when one goes away.
                let mut last = None;
                for attempt in 0..n {
                    let worker = &workers[(shard + attempt) % n];
                    pb.set_message(format!("job {job_id}: shard {}/{n} on {worker}", shard + 1));
                    match job_action(worker, token, &cmd).await {
                        Ok(summary) => {
                            pb.finish_with_message(format!(
                                "job {job_id}: shard {}/{n} on {worker}: {} rows, {} in error",
                                shard + 1,
                                summary["rows"],
                                summary["error_rows"]
                            ));
                            return Ok(());
                        }
                        Err(JobError::Unavailable(e)) => {
                            // Also for logs (progress bars are not drawn without a terminal).
                            pb.suspend(|| {
                                eprintln!("job {job_id}: shard {}/{n}: {worker} went away ({e}); moving on", shard + 1)
                            });
                            last = Some(e);
                        }
                        Err(JobError::Failed(e) | JobError::Locked(e)) => return Err(e),
                    }
                }
                Err(last.unwrap_or_else(|| anyhow::anyhow!("no worker left")))
            }
        });
        futures::future::try_join_all(shards).await?;
    }
    // The commit (and, with one worker, the whole job): the first worker that answers.
    let pb = spinner(format!("job {job_id}: committing"));
    let mut summary = None;
    for worker in workers {
        match job_action(worker, token, cmd).await {
            Ok(s) => {
                summary = Some(s);
                break;
            }
            Err(JobError::Unavailable(e)) => pb.suspend(|| eprintln!("job {job_id}: {worker} went away ({e})")),
            Err(JobError::Failed(e) | JobError::Locked(e)) => return Err(e),
        }
    }
    pb.finish_and_clear();
    summary.ok_or_else(|| anyhow::anyhow!("no worker could commit job {job_id}; run it again with --job-id {job_id}"))
}

/// How a job call failed: the worker went away (try another), the job's lock is held by
/// another run (wait), or the job failed.
enum JobError {
    Unavailable(anyhow::Error),
    Locked(anyhow::Error),
    Failed(anyhow::Error),
}

impl std::fmt::Display for JobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobError::Unavailable(e) | JobError::Locked(e) | JobError::Failed(e) => write!(f, "{e:#}"),
        }
    }
}

/// One `score-dataset` call. A job whose lock is still held by a run that just died (the
/// worker answers the reason `locked`) is waited for: the lock goes stale within a minute.
async fn job_action(worker: &str, token: Option<&str>, cmd: &Value) -> Result<Value, JobError> {
    let locked = |e: &JobError| matches!(e, JobError::Locked(_));
    let waited = RetryPolicy::STALE_LOCK
        .retry("the job's lock is held by another run", locked, || job_action_once(worker, token, cmd))
        .await;
    // Still locked when the wait is over: the other run is alive, and the answer is that.
    waited
}

async fn job_action_once(worker: &str, token: Option<&str>, cmd: &Value) -> Result<Value, JobError> {
    let mut client = connect(worker, token).await.map_err(JobError::Unavailable)?;
    let action = arrow_flight::Action::new("score-dataset", cmd.to_string());
    let result = async { client.do_action(action).await?.try_collect::<Vec<_>>().await }.await;
    match result {
        Ok(result) => result
            .first()
            .map(|r| serde_json::from_slice(r))
            .transpose()
            .map(|v| v.unwrap_or(Value::Null))
            .map_err(|e| JobError::Failed(e.into())),
        Err(arrow_flight::error::FlightError::Tonic(s)) => match ErrorCode::from_grpc(&s) {
            ErrorCode::Locked => Err(JobError::Locked(flight_error(arrow_flight::error::FlightError::Tonic(s)))),
            // The worker went away mid-call (killed, restarted): another may take the job.
            _ if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown) => {
                Err(JobError::Unavailable(flight_error(arrow_flight::error::FlightError::Tonic(s))))
            }
            _ => Err(JobError::Failed(flight_error(arrow_flight::error::FlightError::Tonic(s)))),
        },
        Err(e) => Err(JobError::Failed(flight_error(e))),
    }
}

/// The worker URLs: as given, or, for a single name, every address it resolves to (a
/// headless Service's pods).
async fn resolve_workers(urls: &[String]) -> anyhow::Result<Vec<String>> {
    if urls.len() != 1 {
        return Ok(urls.to_vec());
    }
    let hostport = endpoint(&urls[0])?.trim_start_matches("http://").to_string();
    let mut addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host(&hostport)
        .await
        .with_context(|| format!("cannot resolve the worker name in {}", urls[0]))?
        .collect();
    addrs.sort();
    addrs.dedup();
    Ok(match addrs.len() {
        0 | 1 => urls.to_vec(),
        _ => addrs.into_iter().map(|a| format!("grpc://{a}")).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_fills_parse_and_nan_is_written_as_proto3_json_does() {
        assert_eq!(parse_column_fill("amount=0.5"), Ok(("amount".to_string(), 0.5)));
        assert_eq!(parse_column_fill("a=b=-2"), Ok(("a=b".to_string(), -2.0)));
        let (column, nan) = parse_column_fill("f0=NaN").expect("NaN is a fill value");
        assert!(column == "f0" && nan.is_nan());
        for bad in ["amount", "=1", "amount=x"] {
            assert!(parse_column_fill(bad).is_err(), "{bad}");
        }
        assert_eq!(proto_double(1.5), json!(1.5));
        assert_eq!(proto_double(f64::NAN), json!("NaN"));
        assert_eq!(proto_double(f64::NEG_INFINITY), json!("-Infinity"));
        // The command the CLI sends decodes as the worker reads it.
        let cmd = json!({"model": "m", "missing": "nan", "fill_null": proto_double(f64::NAN),
                         "fill_null_columns": {"f0": proto_double(f64::NAN), "f1": proto_double(2.0)}});
        let decoded = lakescore_proto::ScoreCommand::from_bytes(cmd.to_string().as_bytes()).expect("decodes");
        assert_eq!(decoded.missing, "nan");
        assert!(decoded.fill_null.is_some_and(f64::is_nan) && decoded.fill_null_columns["f0"].is_nan());
        assert_eq!(decoded.fill_null_columns["f1"], 2.0);
    }
}

//! `lakescore sql`: run a SQL statement on a scoring worker over Flight SQL and print the
//! result as a table, or write it to a local Parquet or CSV file.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow_flight::sql::client::FlightSqlServiceClient;
use clap::Args;
use futures::TryStreamExt;

#[derive(Debug, Args)]
pub struct SqlArgs {
    /// The statement, e.g. "SELECT predict('fraud@champion', amount, age)['label'] FROM 'file:///data/lake/tx/'".
    /// Without -e or -f it is read from standard input.
    #[arg(short = 'e', long = "execute", conflicts_with = "file")]
    pub execute: Option<String>,
    /// Read the statement from this file.
    #[arg(short = 'f', long)]
    pub file: Option<PathBuf>,
    /// Write the result to this local file (.parquet or .csv) instead of printing it.
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
    /// Rows printed at most (the rest are counted); --output writes them all.
    #[arg(long, default_value_t = 1000)]
    pub max_rows: usize,
    /// Scoring worker.
    #[arg(long, env = "LAKESCORE_FLIGHT_URL", default_value = "grpc://127.0.0.1:8815")]
    pub flight_url: String,
    /// Bearer token passed to the worker (and by it to the registry).
    #[arg(long, env = "LAKESCORE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

fn statement(args: &SqlArgs) -> anyhow::Result<String> {
    let sql = match (&args.execute, &args.file) {
        (Some(sql), _) => sql.clone(),
        (None, Some(path)) => {
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?
        }
        (None, None) => {
            let mut sql = String::new();
            std::io::stdin().read_to_string(&mut sql).context("cannot read the statement from standard input")?;
            sql
        }
    };
    let sql = sql.trim().trim_end_matches(';').trim().to_string();
    if sql.is_empty() {
        bail!("no SQL statement given (-e, -f, or standard input)");
    }
    Ok(sql)
}

/// Where the result goes: a file written whole, then moved into place.
enum Sink {
    Print { schema: SchemaRef, batches: Vec<RecordBatch>, rows: usize, max_rows: usize },
    Parquet(parquet::arrow::ArrowWriter<tempfile::NamedTempFile>, PathBuf),
    Csv(arrow::csv::Writer<tempfile::NamedTempFile>, PathBuf),
}

impl Sink {
    fn open(output: Option<&Path>, schema: SchemaRef, max_rows: usize) -> anyhow::Result<Self> {
        // A statement without a result (CREATE EXTERNAL TABLE …) has nothing to write.
        let Some(path) = output.filter(|_| !schema.fields().is_empty()) else {
            return Ok(Sink::Print { schema, batches: Vec::new(), rows: 0, max_rows });
        };
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let tmp = tempfile::NamedTempFile::new_in(dir).with_context(|| format!("cannot write in {}", dir.display()))?;
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("parquet") | Some("pq") => {
                Ok(Sink::Parquet(parquet::arrow::ArrowWriter::try_new(tmp, schema, None)?, path.to_path_buf()))
            }
            Some("csv") => Ok(Sink::Csv(arrow::csv::Writer::new(tmp), path.to_path_buf())),
            _ => bail!("{}: --output takes a .parquet or .csv file", path.display()),
        }
    }

    fn write(&mut self, batch: RecordBatch) -> anyhow::Result<()> {
        match self {
            Sink::Print { batches, rows, max_rows, .. } => {
                let room = max_rows.saturating_sub(*rows);
                if room > 0 {
                    batches.push(batch.slice(0, room.min(batch.num_rows())));
                }
                *rows += batch.num_rows();
            }
            Sink::Parquet(w, _) => w.write(&batch)?,
            Sink::Csv(w, _) => w.write(&batch)?,
        }
        Ok(())
    }

    fn finish(self) -> anyhow::Result<()> {
        match self {
            Sink::Print { schema, batches, rows, max_rows } => {
                if schema.fields().is_empty() {
                    // A statement with no result (CREATE EXTERNAL TABLE …).
                    println!("OK");
                    return Ok(());
                }
                let shown = if batches.is_empty() { vec![RecordBatch::new_empty(schema)] } else { batches };
                println!("{}", arrow::util::pretty::pretty_format_batches(&shown)?);
                if rows > max_rows {
                    println!("{rows} rows ({max_rows} shown; --max-rows, or --output FILE for all)");
                } else {
                    println!("{rows} rows");
                }
            }
            Sink::Parquet(w, path) => {
                let tmp = w.into_inner()?;
                tmp.persist(&path).with_context(|| format!("cannot write {}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
            Sink::Csv(w, path) => {
                let tmp = w.into_inner();
                tmp.persist(&path).with_context(|| format!("cannot write {}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
        }
        Ok(())
    }
}

pub async fn run(args: SqlArgs) -> anyhow::Result<()> {
    let sql = statement(&args)?;
    let channel = tonic::transport::Channel::from_shared(crate::score::endpoint(&args.flight_url)?)?
        .connect()
        .await
        .with_context(|| format!("cannot reach the scoring worker at {}", args.flight_url))?;
    let mut client = FlightSqlServiceClient::new(channel);
    if let Some(t) = &args.token {
        client.set_header("authorization", format!("Bearer {t}"));
    }
    let info = client.execute(sql, None).await.map_err(crate::score::flight_error)?;
    let schema: SchemaRef = std::sync::Arc::new(info.clone().try_decode_schema()?);
    let mut sink = Sink::open(args.output.as_deref(), schema, args.max_rows)?;
    for endpoint in info.endpoint {
        let Some(ticket) = endpoint.ticket else { continue };
        let mut batches = client.do_get(ticket).await.map_err(crate::score::flight_error)?;
        while let Some(batch) = batches.try_next().await.map_err(crate::score::flight_error)? {
            sink.write(batch)?;
        }
    }
    sink.finish()
}

//! The worker's Parquet output (`OutputSink`: what DoPut, `score-dataset`, batch jobs and SQL
//! `INSERT INTO` write) against arrow-rs's `ArrowWriter` with its defaults writing the same
//! batches into memory, in one process. The batches are what `logreg20` gives in the scoring
//! benchmark: 20 float32 feature columns passed through, `label` (int64) and `probabilities`
//! (fixed-size list of 3 float32), 1,000,000 rows in 65,536-row batches, best of 3.
//!
//!     cargo bench -p lakescore-lake --bench parquet_output
//!     LAKESCORE_BENCH_ROWS=200000 cargo bench -p lakescore-lake --bench parquet_output

#[path = "../../benches/common/mod.rs"]
mod common;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use common::best_of_3;
use lakescore_core::store::StoreOptions;
use lakescore_lake::manifest::ManifestModel;
use lakescore_lake::sink::{Commit, OutputSink};
use lakescore_lake::storage::Storage;
use lakescore_lake::writer::JobWriter;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;

const FEATURES: usize = common::SCORED_FEATURES;
const BATCH_ROWS: usize = common::SCORED_BATCH_ROWS;

fn batches(rows: usize) -> (SchemaRef, Vec<RecordBatch>) {
    let schema = common::scored_schema();
    let out = (0..rows)
        .step_by(BATCH_ROWS)
        .map(|done| common::scored_batch(&schema, done, BATCH_ROWS.min(rows - done)))
        .collect();
    (schema, out)
}

fn main() {
    let rows: usize = std::env::var("LAKESCORE_BENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let (schema, input) = batches(rows);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let storage = Storage::new(&[], StoreOptions::default()).expect("storage");
    let model = ManifestModel {
        reference: "bench@champion".into(),
        name: "bench".into(),
        version: 1,
        sha256: String::new(),
        engine: "linear".into(),
    };

    let mut job = 0;
    let defaults = lakescore_engine::ScorerConfig::default();
    let (worker, worker_bytes) = best_of_3(|| {
        job += 1;
        let url = format!("file://{}/out{job}/", dir.path().display());
        let loc = storage.locate(&url, "output").expect("output location");
        runtime.block_on(async {
            let sink = OutputSink::new(
                loc,
                format!("bench{job}"),
                schema.clone(),
                defaults.max_rows_per_file,
                defaults.row_group_rows,
                model.clone(),
                Commit::Manifest,
            );
            let batches = futures::stream::iter(input.iter().cloned().map(Ok));
            sink.write_stream(batches).await.expect("write").summary.bytes
        })
    });
    let in_memory = |props: Option<WriterProperties>| {
        best_of_3(|| {
            let mut sink = Vec::new();
            let mut writer = ArrowWriter::try_new(&mut sink, schema.clone(), props.clone()).expect("writer");
            for batch in &input {
                writer.write(batch).expect("write");
            }
            writer.close().expect("close");
            sink.len() as u64
        })
    };
    let (baseline, baseline_bytes) = in_memory(None);
    let probe = storage.locate(&format!("file://{}/probe/", dir.path().display()), "output").expect("location");
    let props =
        JobWriter::new(probe, "probe".into(), schema.clone(), defaults.max_rows_per_file, defaults.row_group_rows)
            .properties()
            .clone();
    let (same_props, same_props_bytes) = in_memory(Some(props));

    let rate = |secs: f64| rows as f64 / secs;
    println!("Parquet output: {rows} rows x ({FEATURES} float32 + label + 3 probabilities), {BATCH_ROWS}-row batches, best of 3");
    println!("| writer | rows/s | MB/s written | file bytes | ratio |");
    println!("| --- | --- | --- | --- | --- |");
    println!(
        "| arrow-rs ArrowWriter, its defaults, into memory | {:.0} | {:.0} | {baseline_bytes} | 1.00 |",
        rate(baseline),
        baseline_bytes as f64 / baseline / 1e6
    );
    println!(
        "| arrow-rs ArrowWriter, lakescore's properties, into memory (one thread) | {:.0} | {:.0} | {same_props_bytes} | {:.2} |",
        rate(same_props),
        same_props_bytes as f64 / same_props / 1e6,
        baseline / same_props
    );
    println!(
        "| lakescore OutputSink, local files (columns on all cores, sha256, manifest) | {:.0} | {:.0} | {worker_bytes} | {:.2} |",
        rate(worker),
        worker_bytes as f64 / worker / 1e6,
        baseline / worker
    );
}

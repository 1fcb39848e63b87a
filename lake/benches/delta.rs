//! Delta Lake against plain Parquet, in one process on the same rows (`logreg20`'s scored
//! batches, as in `parquet_output`), best of 3 each, runs interleaved:
//!
//! - writing: the worker's `OutputSink` committing to a Delta table (files, then one commit
//!   through delta-rs, a new table each run) against the same sink writing Parquet parts and
//!   the `_lakescore.json` manifest;
//! - reading: a score command's input as a Delta table (its snapshot's live files, through
//!   `Lake::input` and `Lake::read_parquet`) against the same files as a plain prefix.
//!
//! ```text
//! cargo bench -p lakescore-lake --bench delta
//! LAKESCORE_BENCH_ROWS=1000000 cargo bench -p lakescore-lake --bench delta
//! ```
//!
//! The batches are generated as they are written (not held: 10M rows are ~1 GB of Arrow),
//! the same way for both arms.

#[path = "../../benches/common/mod.rs"]
#[allow(dead_code)] // shared by the benches; each uses part of it
mod common;

use std::sync::Arc;

use futures::StreamExt;
use lakescore_engine::config::ScorerConfig;
use lakescore_engine::engine::trees::TreesEngine;
use lakescore_engine::source::DirModelSource;
use lakescore_engine::Scorer;
use lakescore_lake::delta::TableCommit;
use lakescore_lake::manifest::ManifestModel;
use lakescore_lake::sink::Commit;
use lakescore_lake::Lake;
use lakescore_proto::ScoreCommand;

fn main() {
    let rows: usize = std::env::var("LAKESCORE_BENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000_000);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let models = tempfile::tempdir().expect("model dir");
    let config = ScorerConfig { storage_roots: vec![], ..ScorerConfig::new("dir:///unused") };
    let source = Arc::new(DirModelSource::new(models.path()).expect("model source"));
    let scorer = Scorer::with_parts(config, source, Arc::new(TreesEngine::new(None, 1))).expect("scorer");
    let lake = Arc::new(Lake::new(Arc::new(scorer)).expect("lake"));
    let schema = common::scored_schema();
    let model = ManifestModel {
        reference: "bench@champion".into(),
        name: "bench".into(),
        version: 1,
        sha256: String::new(),
        engine: "linear".into(),
    };

    let write = |url: String, commit: Commit, job: String| {
        let loc = lake.storage().locate(&url, "output").expect("output location");
        let sink = lake.sink(loc, job, schema.clone(), model.clone(), commit);
        let schema = schema.clone();
        let batches = futures::stream::iter((0..rows).step_by(common::SCORED_BATCH_ROWS))
            .map(move |done| Ok(common::scored_batch(&schema, done, common::SCORED_BATCH_ROWS.min(rows - done))));
        runtime.block_on(async { sink.write_stream(batches).await.expect("write").summary })
    };
    let (mut plain_best, mut delta_best) = (f64::MAX, f64::MAX);
    let (mut plain_url, mut delta_url) = (String::new(), String::new());
    for run in 0..3 {
        plain_url = format!("file://{}/plain{run}/", dir.path().display());
        let started = std::time::Instant::now();
        let summary = write(plain_url.clone(), Commit::Manifest, format!("plain{run}"));
        plain_best = plain_best.min(started.elapsed().as_secs_f64());
        assert_eq!(summary.rows as usize, rows);

        delta_url = format!("file://{}/delta{run}/", dir.path().display());
        let mut lineage = serde_json::Map::new();
        lineage.insert("model".into(), "bench".into());
        let commit = Commit::Table(Box::new(TableCommit { lineage, ..Default::default() }));
        let started = std::time::Instant::now();
        let summary = write(delta_url.clone(), commit, format!("delta{run}"));
        delta_best = delta_best.min(started.elapsed().as_secs_f64());
        assert_eq!((summary.rows as usize, summary.table_version), (rows, Some(0)));
    }

    // Reading every row of each, as score-dataset and batch jobs read their input.
    let read = |url: &str| {
        runtime.block_on(async {
            let cmd = ScoreCommand { input: url.to_string(), ..Default::default() };
            let input = lake.input(&cmd).await.expect("input");
            let mut n = 0;
            for file in &input.files {
                let (_, mut batches) =
                    lake.read_parquet(&input.loc, &file.meta, None, |_| Ok(None)).await.expect("read");
                while let Some(batch) = batches.next().await {
                    n += batch.expect("batch").num_rows();
                }
            }
            n
        })
    };
    let (mut prefix_best, mut table_best) = (f64::MAX, f64::MAX);
    for _ in 0..3 {
        let started = std::time::Instant::now();
        assert_eq!(read(&plain_url), rows);
        prefix_best = prefix_best.min(started.elapsed().as_secs_f64());
        let started = std::time::Instant::now();
        assert_eq!(read(&delta_url), rows);
        table_best = table_best.min(started.elapsed().as_secs_f64());
    }

    let rate = |secs: f64| rows as f64 / secs;
    println!(
        "Delta against plain Parquet: {rows} rows x ({} float32 + label + 3 probabilities), best of 3",
        common::SCORED_FEATURES
    );
    println!("| what | plain Parquet (manifest) rows/s | Delta table rows/s | Delta / plain (target >= 0.95) |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| write through OutputSink (files, then the manifest / one Delta commit) | {:.0} | {:.0} | {:.2} |",
        rate(plain_best),
        rate(delta_best),
        plain_best / delta_best
    );
    println!(
        "| read as an input (prefix listing / table snapshot), every row decoded | {:.0} | {:.0} | {:.2} |",
        rate(prefix_best),
        rate(table_best),
        prefix_best / table_best
    );
}

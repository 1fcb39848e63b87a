//! Batch jobs and their locks on object_store's in-memory store (`memory://`), with a real
//! model (`rf` from tests/models, on the native engine) and its onnxruntime outputs: what
//! the end-to-end tests cover through processes, here in one process and in seconds.

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{Array, Int64Array, RecordBatch};
use bytes::Bytes;
use futures::TryStreamExt;
use lakescore_engine::config::ScorerConfig;
use lakescore_engine::engine::trees::TreesEngine;
use lakescore_engine::source::{Credentials, DirModelSource};
use lakescore_engine::Scorer;
use lakescore_proto::{BatchSettings, ScoreCommand};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::*;
use crate::lake::Lake;

/// tests/models/generated, when the models are there; in strict mode they must be.
fn models() -> Option<PathBuf> {
    let dir = std::env::var_os("LAKESCORE_TEST_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/models/generated"));
    if dir.join("rf.onnx").is_file() {
        return Some(dir);
    }
    assert!(std::env::var("LAKESCORE_TEST_STRICT").as_deref() != Ok("1"), "no test models in {}", dir.display());
    eprintln!("skipped: no test models in {} (run tests/models/generate.py)", dir.display());
    None
}

/// A job manager over a worker with `rf` (from `models`) and the in-memory store as its root.
fn manager(models: &std::path::Path) -> JobManager {
    let dir = tempfile::tempdir().expect("tempdir").keep();
    std::fs::copy(models.join("rf.onnx"), dir.join("rf.onnx")).expect("copy rf.onnx");
    let config = ScorerConfig { storage_roots: vec!["memory:///".into()], ..ScorerConfig::new("dir:///unused") };
    let source = Arc::new(DirModelSource::new(&dir).expect("model dir"));
    let scorer = Scorer::with_parts(config, source, Arc::new(TreesEngine::new(None, 1))).expect("scorer");
    JobManager::new(Arc::new(Lake::new(Arc::new(scorer)).expect("lake")))
}

fn store() -> Arc<dyn ObjectStore> {
    let url = url::Url::parse("memory:///").expect("url");
    lakescore_core::store::open_store(&url, &Default::default()).expect("memory store").0
}

/// `copies` copies of rf's rows as Parquet files under `memory:///<prefix>/in/`.
async fn input(models: &std::path::Path, prefix: &str, copies: usize) {
    let bytes = Bytes::from(std::fs::read(models.join("rf.rows.parquet")).expect("rf rows"));
    for i in 0..copies {
        let path = Path::from(format!("{prefix}/in/part-{i}.parquet"));
        store().put(&path, PutPayload::from(bytes.clone())).await.expect("put input");
    }
}

fn command(prefix: &str, job_id: &str) -> (ScoreCommand, JobSettings) {
    let batch = BatchSettings { error_threshold_rows: Some(-1), ..Default::default() };
    let settings = JobSettings::from_proto(&batch).expect("settings");
    let cmd = ScoreCommand {
        model: "rf".into(),
        feature_columns: (0..20).map(|i| format!("f{i}")).collect(),
        input: format!("memory:///{prefix}/in/"),
        output: format!("memory:///{prefix}/out/"),
        job_id: job_id.into(),
        batch: Some(batch),
        // The manifest's job record (Delta jobs: tests/it/batch_jobs.rs, tests/python).
        output_format: "parquet".into(),
        ..Default::default()
    };
    (cmd, settings)
}

async fn listing(prefix: &str) -> Vec<String> {
    let mut all: Vec<String> =
        store().list(Some(&Path::from(prefix))).map_ok(|m| m.location.to_string()).try_collect().await.expect("list");
    all.sort();
    all
}

async fn read_parquet(path: &str) -> Vec<RecordBatch> {
    let bytes = store().get(&Path::from(path)).await.expect("get").bytes().await.expect("bytes");
    ParquetRecordBatchReaderBuilder::try_new(bytes)
        .expect("parquet")
        .build()
        .expect("reader")
        .map(|b| b.expect("batch"))
        .collect()
}

/// The labels onnxruntime gave rf's rows.
fn expected_labels(models: &std::path::Path) -> Vec<i64> {
    let file = std::fs::File::open(models.join("rf.expected.parquet")).expect("rf expected");
    let reader = ParquetRecordBatchReaderBuilder::try_new(file).expect("parquet").build().expect("reader");
    let mut labels = Vec::new();
    for batch in reader {
        let batch = batch.expect("batch");
        let column = batch.column_by_name("output_label").expect("onnxruntime's output_label");
        let column = column.as_any().downcast_ref::<Int64Array>().expect("int64 labels");
        labels.extend(column.iter().map(|v| v.expect("label")));
    }
    labels
}

#[tokio::test]
async fn a_job_commits_every_unit_once_and_answers_its_summary_again() {
    let Some(models) = models() else { return };
    let jobs = Arc::new(manager(&models));
    input(&models, "jobs-commit", 2).await;
    let (cmd, settings) = command("jobs-commit", "j1");

    let summary =
        jobs.start_job(cmd.clone(), settings.clone(), Credentials::none(), false).expect("start").wait().await;
    let summary = summary.expect("the job");
    let labels = expected_labels(&models);
    assert_eq!((summary.rows, summary.units, summary.error_rows), (2 * labels.len() as u64, 2, 0));
    // The committed parts hold onnxruntime's labels for each copy of the input.
    let manifest: serde_json::Value = serde_json::from_slice(
        &store()
            .get(&Path::from("jobs-commit/out/_lakescore.json"))
            .await
            .expect("manifest")
            .bytes()
            .await
            .expect("bytes"),
    )
    .expect("manifest json");
    let files = manifest["files"].as_array().expect("files");
    assert_eq!(files.len(), summary.files.len());
    let mut scored = Vec::new();
    for f in files {
        for batch in read_parquet(&format!("jobs-commit/out/{}", f["path"].as_str().expect("path"))).await {
            let column = batch.column_by_name("label").expect("label");
            scored
                .extend(column.as_any().downcast_ref::<Int64Array>().expect("int64").iter().map(|v| v.expect("label")));
        }
    }
    assert_eq!(scored, [labels.clone(), labels].concat());
    // Nothing of the run is left but its output: no markers, no lock.
    let left = listing("jobs-commit/out/").await;
    assert!(left.iter().all(|p| !p.contains("_lakescore_jobs")), "{left:?}");

    // The same job again: its committed summary, and nothing written.
    let again = jobs.start_job(cmd.clone(), settings.clone(), Credentials::none(), false).expect("start").wait().await;
    let again = again.expect("the rerun");
    assert_eq!((again.rows, again.manifest.clone()), (summary.rows, summary.manifest.clone()));
    assert_eq!(listing("jobs-commit/out/").await, left);
    // Another job under the same id (another input): refused, naming what differs.
    let other = ScoreCommand { input: "memory:///jobs-commit/other/".into(), ..cmd };
    let err = jobs.start_job(other, settings, Credentials::none(), false).expect("start").wait().await.unwrap_err();
    assert!(matches!(&err, ScoreError::FailedPrecondition(m) if m.contains("scored input")), "{err}");
}

#[tokio::test]
async fn a_held_lock_is_locked_until_released_and_a_dead_holder_here_is_taken_over() {
    let loc = Location {
        store: store(),
        path: Path::from("locks/out"),
        url: url::Url::parse("memory:///locks/out/").expect("url"),
    };
    let held = JobLock::acquire(&loc, "j2", None).await.expect("the first run takes the lock");
    let err = JobLock::acquire(&loc, "j2", None).await.err().expect("a second run is refused");
    assert!(matches!(&err, ScoreError::Locked(m) if m.contains("already running")), "{err}");
    assert_eq!(lakescore_core::ErrorCode::from_grpc(&tonic_status(err)), lakescore_core::ErrorCode::Locked);
    // A shard's lock is its own.
    let shard = JobLock::acquire(&loc, "j2", Some((0, 2))).await.expect("a shard's lock");
    held.release().await;
    shard.release().await;
    let again = JobLock::acquire(&loc, "j2", None).await.expect("free once released");

    // A lock whose holder was a process on this host that is gone: taken over at once.
    let again_epoch = again.epoch;
    drop(again);
    let dead = serde_json::json!({"job_id": "j2", "host": host_name(), "pid": u32::MAX, "at": "then"});
    let dead_epoch = again_epoch + 1;
    write_json(&loc, &format!("_lakescore_jobs/j2/lease/{dead_epoch:010}"), &dead, PutMode::Create)
        .await
        .expect("a dead holder's lock");
    let taken = JobLock::acquire(&loc, "j2", None).await.expect("a dead holder's lock is taken over");
    assert_eq!(taken.epoch, dead_epoch + 1, "each holder has its own epoch");
    let holder: serde_json::Value =
        read_json(&loc, &format!("_lakescore_jobs/j2/lease/{:010}", taken.epoch)).await.expect("read").expect("lock");
    assert_eq!(holder["pid"], std::process::id());
    // The run it took over from learns it lost the lock before it commits.
    let stale = JobLock {
        loc: loc.clone(),
        dir: JobLock::dir("j2", None),
        epoch: dead_epoch,
        heartbeat: tokio::spawn(async {}),
    };
    let err = stale.check("j2").await.unwrap_err();
    assert!(matches!(&err, ScoreError::Locked(m) if m.contains("taken over")), "{err}");
    taken.release().await;
}

/// The status a worker would answer `err` with.
fn tonic_status(err: ScoreError) -> tonic::Status {
    err.into()
}

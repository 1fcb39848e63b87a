//! Batch jobs on real data in local storage: a dataset with planted bad rows and a corrupt
//! file, scored by `lakescore score --input <prefix> --output <prefix>` through a worker
//! (Azure ML batch-endpoint settings: units, retries, error thresholds, output action);
//! then a worker killed mid-job, a second run of the same job refused while the first holds
//! it, and the job resumed on a new worker. Predictions are checked against onnxruntime's.

use crate::common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use arrow::array::{Array, Float32Array, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use common::{labels, models_dir, read_parquet, spawn_serve_env, ServeProcess};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_lakescore");
/// Rows of the second file whose `f0` is made null.
const NULL_ROWS: [usize; 2] = [3, 7];
/// The row of the third file whose `f1` (a string column there, as CSV-born data has it)
/// does not parse as a number.
const UNPARSEABLE_ROW: usize = 5;
/// Rows in error in the whole dataset.
const BAD_ROWS: usize = NULL_ROWS.len() + 1;

/// `in/`: three Parquet files made of rf's 200 rows (rows 0–79, 80–139 with two nulls,
/// 140–199 with `f1` as text, one value not a number) and one corrupt file; the labels
/// onnxruntime gives the rows that can be scored, in order.
fn dataset(dir: &Path) -> Vec<i64> {
    let rows = read_parquet(&models_dir().join("rf.rows.parquet"));
    let expected = labels(&read_parquet(&models_dir().join("rf.expected.parquet")), "output_label");
    let input = dir.join("in");
    std::fs::create_dir_all(&input).expect("mkdir");
    let write = |name: &str, batch: &RecordBatch| {
        let file = std::fs::File::create(input.join(name)).expect("create");
        let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).expect("writer");
        w.write(batch).expect("write");
        w.close().expect("close");
    };
    write("a.parquet", &rows.slice(0, 80));
    // f0 nullable, null at two rows.
    let b = rows.slice(80, 60);
    let f0 = b.column(0).as_any().downcast_ref::<Float32Array>().expect("f32");
    let with_nulls: Float32Array = (0..f0.len()).map(|i| (!NULL_ROWS.contains(&i)).then(|| f0.value(i))).collect();
    let mut fields: Vec<Arc<Field>> = b.schema().fields().iter().cloned().collect();
    fields[0] = Arc::new(Field::new("f0", DataType::Float32, true));
    let mut columns = b.columns().to_vec();
    columns[0] = Arc::new(with_nulls);
    write("b.parquet", &RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).expect("batch"));
    // f1 as text: each float32 printed so that it parses back to itself, one not a number.
    let c = rows.slice(140, 60);
    let f1 = c.column(1).as_any().downcast_ref::<Float32Array>().expect("f32");
    let text: StringArray = (0..f1.len())
        .map(|i| Some(if i == UNPARSEABLE_ROW { "n/a".to_string() } else { f1.value(i).to_string() }))
        .collect();
    let mut fields: Vec<Arc<Field>> = c.schema().fields().iter().cloned().collect();
    fields[1] = Arc::new(Field::new("f1", DataType::Utf8, false));
    let mut columns = c.columns().to_vec();
    columns[1] = Arc::new(text);
    write("c.parquet", &RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).expect("batch"));
    std::fs::write(input.join("d.parquet"), b"PAR1 this is not a Parquet file PAR1").expect("corrupt file");
    let bad = |i: usize| NULL_ROWS.iter().any(|n| 80 + n == i) || i == 140 + UNPARSEABLE_ROW;
    expected.iter().enumerate().filter(|(i, _)| !bad(*i)).map(|(_, l)| *l).collect()
}

/// onnxruntime's labels for rf's 200 rows with `f0` set to NaN at `rows`.
fn onnxruntime_labels_with_nan_f0(rows: &[usize]) -> Vec<i64> {
    const SCRIPT: &str = r#"
import json, sys
import numpy as np, onnxruntime as ort, pyarrow.parquet as pq
models, rows = sys.argv[1], json.loads(sys.argv[2])
t = pq.read_table(f"{models}/rf.rows.parquet")
x = np.column_stack([t[f"f{i}"].to_numpy() for i in range(20)]).astype(np.float32)
x[rows, 0] = np.nan
opts = ort.SessionOptions(); opts.intra_op_num_threads = 1
s = ort.InferenceSession(f"{models}/rf.onnx", opts, providers=["CPUExecutionProvider"])
print(json.dumps([int(v) for v in s.run(["output_label"], {s.get_inputs()[0].name: x})[0]]))
"#;
    let models = models_dir();
    let rows = serde_json::to_string(rows).expect("json");
    let got = common::python_json(SCRIPT, &[models.to_str().expect("utf-8"), &rows]);
    serde_json::from_value(got).expect("labels")
}

fn features() -> String {
    (0..20).map(|i| format!("f{i}")).collect::<Vec<_>>().join(",")
}

/// `lakescore score` with a storage URL in and out, strict about missing values (so that the
/// dataset's null rows are rows in error); (success, stdout, stderr).
fn score_job(s: &ServeProcess, dir: &Path, out: &str, extra: &[&str]) -> (bool, Value, String) {
    score_job_with(s, "rf@champion", dir, out, &[&["--missing", "error"], extra].concat())
}

/// `lakescore score` with a storage URL in and out, with the model reference and every
/// argument given.
fn score_job_with(s: &ServeProcess, model: &str, dir: &Path, out: &str, extra: &[&str]) -> (bool, Value, String) {
    let done = Command::new(BIN)
        .args(["score", "--model", model, "--feature-columns", &features()])
        .args(["--flight-url", &format!("grpc://{}", s.flight)])
        .arg("--input")
        .arg(format!("file://{}/in/", dir.display()))
        .args(["--output", &format!("file://{}/{out}/", dir.display())])
        // Parquet parts and the manifest: what these tests read (Delta jobs: tests/python/test_delta.py).
        .args(["--format", "parquet"])
        .args(extra)
        .output()
        .expect("run lakescore score");
    let summary = serde_json::from_slice(&done.stdout).unwrap_or(Value::Null);
    (done.status.success(), summary, String::from_utf8_lossy(&done.stderr).into_owned())
}

/// The data parts under `dir`, in name order (units in input order).
fn parts(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "parquet")).collect())
        .unwrap_or_default();
    files.sort();
    files
}

fn scored_labels(dir: &Path) -> Vec<i64> {
    parts(dir).iter().flat_map(|p| labels(&read_parquet(p), "label")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rows_and_bad_files_are_set_aside_and_thresholds_decide() {
    let data = tempfile::tempdir().expect("tempdir");
    let want = dataset(data.path());
    let s = tokio::task::block_in_place(|| spawn_serve_env(data.path(), &["--intra-op-threads", "1"], &[]));
    common::register_champion(&s.url, None, "rf", "rf.onnx").await;

    // Tolerant: the corrupt file is a failed unit (1 allowed), the null rows (strict about
    // missing values) and the unparseable one go to _errors.
    let strict_args = ["--missing", "error", "--job-id", "j1", "--error-threshold-units", "1"];
    let (ok, summary, err) =
        tokio::task::block_in_place(|| score_job_with(&s, "rf@champion", data.path(), "out", &strict_args));
    assert!(ok, "{err}");
    assert_eq!(summary["rows"], want.len(), "{summary}");
    assert_eq!(summary["error_rows"], BAD_ROWS, "{summary}");
    assert_eq!((summary["units"].as_u64(), summary["failed_units"].as_u64()), (Some(4), Some(1)), "{summary}");
    assert_eq!(summary["version"], 1);
    let out = data.path().join("out");
    assert_eq!(scored_labels(&out), want, "labels equal onnxruntime's, bad rows left out");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(out.join("_lakescore.json")).expect("manifest")).expect("json");
    assert_eq!(manifest["job_id"], "j1");
    assert_eq!(manifest["model"]["version"], 1);
    // Each part's checksum, as the bytes on disk have it.
    let files = manifest["files"].as_array().expect("files");
    assert_eq!(files.len(), parts(&out).len());
    for f in files {
        let bytes = std::fs::read(out.join(f["path"].as_str().expect("path"))).expect("part");
        assert_eq!(f["sha256"], hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)), "{f}");
    }
    let inputs = manifest["inputs"].as_array().expect("inputs");
    assert!(inputs.iter().any(|u| u["input"].as_str().unwrap_or("").ends_with("d.parquet") && u["failed"].is_string()));
    assert!(inputs.iter().any(|u| u["input"].as_str().unwrap_or("").ends_with("b.parquet") && u["error_rows"] == 2));
    assert!(inputs.iter().any(|u| u["input"].as_str().unwrap_or("").ends_with("c.parquet") && u["error_rows"] == 1));
    // The rows in error, whole, with their row number in the file and the reason: one file
    // per unit with errors (b's, then c's).
    let errors = parts(&out.join("_errors"));
    assert_eq!(errors.len(), 2, "{errors:?}");
    let unparseable = read_parquet(&errors[1]);
    assert_eq!(unparseable.num_rows(), 1);
    let text = unparseable.column_by_name("f1").expect("f1").as_any().downcast_ref::<StringArray>().expect("str");
    assert_eq!(text.value(0), "n/a");
    let row = unparseable.column_by_name("_row").expect("_row").as_any().downcast_ref::<UInt64Array>().expect("u64");
    assert_eq!(row.value(0), UNPARSEABLE_ROW as u64);
    let message =
        unparseable.column_by_name("_error_message").expect("msg").as_any().downcast_ref::<StringArray>().expect("str");
    assert!(message.value(0).contains("'f1'") && message.value(0).contains("'n/a'"), "{}", message.value(0));
    let rejected = read_parquet(&errors[0]);
    assert_eq!(rejected.num_rows(), 2);
    assert_eq!(rejected.column_by_name("f0").expect("f0").null_count(), 2);
    let row = rejected.column_by_name("_row").expect("_row").as_any().downcast_ref::<UInt64Array>().expect("u64");
    assert_eq!(row.values().to_vec(), NULL_ROWS.iter().map(|r| *r as u64).collect::<Vec<_>>());
    let code =
        rejected.column_by_name("_error_code").expect("code").as_any().downcast_ref::<StringArray>().expect("str");
    assert_eq!(code.value(0), "InvalidArgument");
    // Lineage in every part's footer.
    let file = std::fs::File::open(&parts(&out)[0]).expect("part");
    let meta = parquet::file::reader::FileReader::metadata(
        &parquet::file::serialized_reader::SerializedFileReader::new(file).expect("reader"),
    )
    .file_metadata()
    .key_value_metadata()
    .cloned()
    .unwrap_or_default();
    let get = |k: &str| meta.iter().find(|kv| kv.key == k).and_then(|kv| kv.value.clone());
    assert_eq!(get("lakescore.version").as_deref(), Some("1"));
    assert_eq!(get("lakescore.job_id").as_deref(), Some("j1"));
    assert!(get("lakescore.input").is_some_and(|i| i.ends_with("a.parquet")), "{meta:?}");
    // Done is done: the same job again (as an orchestrator retries a task whose job had in
    // fact finished) succeeds at once with the committed summary and writes nothing; so does
    // the same model by another reference. Another job under the same id is refused, named.
    let committed = std::fs::read(out.join("_lakescore.json")).expect("manifest");
    let listing = |dir: &Path| {
        let mut names: Vec<_> = std::fs::read_dir(dir).expect("ls").flatten().map(|e| e.file_name()).collect();
        names.sort();
        names
    };
    let before = listing(&out);
    for model in ["rf@champion", "rf:1"] {
        let (ok, again, err) =
            tokio::task::block_in_place(|| score_job_with(&s, model, data.path(), "out", &strict_args));
        assert!(ok, "{model}: {err}");
        for key in ["job_id", "rows", "error_rows", "units", "failed_units", "version", "sha256", "files", "bytes"] {
            assert_eq!(again[key], summary[key], "{model}: {key}");
        }
        assert_eq!(std::fs::read(out.join("_lakescore.json")).expect("manifest"), committed, "manifest untouched");
        assert_eq!(listing(&out), before, "nothing written");
    }
    let (ok, _, err) = tokio::task::block_in_place(|| {
        score_job(&s, data.path(), "out", &["--job-id", "j1", "--error-threshold-units", "1", "--summary-only"])
    });
    assert!(!ok && err.contains("j1") && err.contains("another job") && err.contains("output action"), "{err}");
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/models/rf/versions", s.url))
        .header("content-type", "application/octet-stream")
        .body(common::model_bytes("gbc.onnx"))
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), 201);
    let (ok, _, err) = tokio::task::block_in_place(|| score_job_with(&s, "rf:2", data.path(), "out", &strict_args));
    assert!(!ok && err.contains("another job") && err.contains("rf:1") && err.contains("rf:2"), "{err}");
    assert_eq!(std::fs::read(out.join("_lakescore.json")).expect("manifest"), committed, "manifest untouched");

    // Missing values as GBDT users expect them (the default): the null rows reach the forest
    // as NaN and score as onnxruntime scores them fed NaN; only the unparseable row is left.
    let (ok, summary, err) = tokio::task::block_in_place(|| {
        score_job_with(&s, "rf@champion", data.path(), "nan", &["--job-id", "j5", "--error-threshold-units", "1"])
    });
    assert!(ok, "{err}");
    assert_eq!(summary["rows"], want.len() + NULL_ROWS.len(), "{summary}");
    assert_eq!(summary["error_rows"], 1, "{summary}");
    let with_nan = onnxruntime_labels_with_nan_f0(&NULL_ROWS.map(|r| 80 + r));
    let unparseable = 140 + UNPARSEABLE_ROW;
    let want_nan: Vec<i64> = with_nan.iter().enumerate().filter(|(i, _)| *i != unparseable).map(|(_, l)| *l).collect();
    assert_eq!(scored_labels(&data.path().join("nan")), want_nan);

    // Strict: three rows in error over a threshold of one fail the job; nothing of it stays
    // but the rows in error.
    let (ok, _, err) = tokio::task::block_in_place(|| {
        score_job(
            &s,
            data.path(),
            "strict",
            &["--job-id", "j2", "--error-threshold-rows", "1", "--error-threshold-units", "-1"],
        )
    });
    assert!(!ok && err.contains("error_threshold_rows"), "{err}");
    let strict = data.path().join("strict");
    assert!(parts(&strict).is_empty(), "no parts left: {:?}", parts(&strict));
    assert!(!strict.join("_lakescore.json").exists());
    // The default allows no failed unit: the corrupt file fails the job.
    let (ok, _, err) = tokio::task::block_in_place(|| score_job(&s, data.path(), "default", &["--job-id", "j3"]));
    assert!(!ok && err.contains("failed units"), "{err}");

    // summary_only: the counts, no rows.
    let (ok, summary, err) = tokio::task::block_in_place(|| {
        score_job(&s, data.path(), "summary", &["--job-id", "j4", "--error-threshold-units", "1", "--summary-only"])
    });
    assert!(ok, "{err}");
    assert_eq!(
        (summary["rows"].as_u64(), summary["output_action"].as_str()),
        (Some(want.len() as u64), Some("summary_only"))
    );
    assert!(parts(&data.path().join("summary")).is_empty());
    assert!(data.path().join("summary/_lakescore.json").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_s_job_is_refused_twice_then_resumed_with_the_same_version() {
    let data = tempfile::tempdir().expect("tempdir");
    let want = dataset(data.path());
    std::fs::remove_file(data.path().join("in/d.parquet")).expect("rm corrupt file");
    // The first worker stops for good after committing its first unit.
    let mut first = tokio::task::block_in_place(|| {
        spawn_serve_env(data.path(), &["--intra-op-threads", "1"], &[("LAKESCORE_FAILPOINTS", "job.after_unit")])
    });
    common::register_champion(&first.url, None, "rf", "rf.onnx").await;
    let cmd = serde_json::json!({
        "model": "rf@champion", "feature_columns": features().split(',').collect::<Vec<_>>(),
        "input": format!("file://{}/in/", data.path().display()),
        "output": format!("file://{}/out/", data.path().display()), "output_format": "parquet",
        "job_id": "resumable", "batch": {"error_threshold_rows": -1}, "missing": "error",
    });
    let action = |flight: String, cmd: Value| async move {
        let mut client = common::flight_client(&flight, None).await;
        common::score_dataset(&mut client, &cmd).await
    };
    let running = tokio::spawn(action(first.flight.clone(), cmd.clone()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !first.log_lines().iter().any(|l| l.contains("failpoint reached: job.after_unit")) {
        assert!(std::time::Instant::now() < deadline, "the job never committed a unit");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // A second run of the job while the first holds it: refused, with the reason clients
    // wait on (`locked`, in the status details) rather than wording.
    let err = action(first.flight.clone(), cmd.clone()).await.expect_err("a second run at once");
    let arrow_flight::error::FlightError::Tonic(status) = &err else { panic!("not a status: {err}") };
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{err}");
    assert_eq!(lakescore_core::ErrorCode::from_grpc(status), lakescore_core::ErrorCode::Locked, "{err}");
    assert!(err.to_string().contains("already running"), "{err}");
    // The alias moves on: the resumed job must still score with version 1.
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/api/v1/models/rf/versions", first.url))
        .header("content-type", "application/octet-stream")
        .body(common::model_bytes("logreg.onnx"))
        .send()
        .await
        .expect("upload v2");
    assert_eq!(r.status(), 201);
    let r = http
        .put(format!("{}/api/v1/models/rf/aliases/champion", first.url))
        .json(&serde_json::json!({"version": 2}))
        .send()
        .await
        .expect("move alias");
    assert_eq!(r.status(), 200);

    // SIGKILL mid-job: no manifest, one unit committed.
    first.child.kill().expect("kill");
    let _ = first.child.wait();
    running.abort();
    assert!(!data.path().join("out/_lakescore.json").exists());

    // A new worker on the same storage resumes it: the committed unit is skipped, the rest
    // scored with the pinned version, one manifest, labels equal onnxruntime's.
    let second = tokio::task::block_in_place(|| spawn_serve_env(data.path(), &["--intra-op-threads", "1"], &[]));
    let result = action(second.flight.clone(), cmd).await.expect("the resumed job completes");
    let summary: Value = serde_json::from_slice(&result[0]).expect("summary");
    assert_eq!(summary["resumed_units"], 1, "{summary}");
    assert_eq!(summary["version"], 1, "pinned at the job's start: {summary}");
    assert_eq!(summary["rows"], want.len(), "{summary}");
    assert_eq!(scored_labels(&data.path().join("out")), want);
    assert!(
        !data.path().join("out/_lakescore_jobs/resumable/units").exists()
            || std::fs::read_dir(data.path().join("out/_lakescore_jobs/resumable/units"))
                .map(|d| d.count())
                .unwrap_or(0)
                == 0
    );
}

/// The live data files of the Delta table at `dir`, from its log: every `add` not removed
/// by a later `remove` (what any Delta reader reads).
fn delta_live_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut commits: Vec<_> = std::fs::read_dir(dir.join("_delta_log"))
        .expect("a Delta log")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    commits.sort();
    let mut live = std::collections::BTreeSet::new();
    for commit in commits {
        for line in std::fs::read_to_string(&commit).expect("commit").lines() {
            let action: Value = serde_json::from_str(line).expect("action");
            if let Some(path) = action["add"]["path"].as_str() {
                live.insert(path.to_string());
            }
            if let Some(path) = action["remove"]["path"].as_str() {
                live.remove(path);
            }
        }
    }
    live.into_iter().map(|p| dir.join(p)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_job_killed_midway_leaves_a_readable_table_and_its_resume_adds_each_row_once() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut want = six_files(data.path());
    want.sort();
    // Every finished unit committed at once, so that the kill comes after commits.
    let config = data.path().join("lakescore.toml");
    std::fs::write(&config, "[scorer]\njob_commit_interval = 0.001\n").expect("config");
    let config = config.to_str().expect("utf-8").to_string();
    // The first worker stops for good once it has committed its first unit.
    let mut first = tokio::task::block_in_place(|| {
        spawn_serve_env(
            data.path(),
            &["--intra-op-threads", "1", "--config", &config],
            &[("LAKESCORE_FAILPOINTS", "job.after_unit")],
        )
    });
    common::register_champion(&first.url, None, "rf", "rf.onnx").await;
    let out = data.path().join("out");
    let cmd = serde_json::json!({
        "model": "rf@champion", "feature_columns": features().split(',').collect::<Vec<_>>(),
        "input": format!("file://{}/in/", data.path().display()),
        "output": format!("file://{}/", out.display()),
        "job_id": "delta-resumable", "batch": {}, "missing": "error",
    });
    let action = |flight: String, cmd: Value| async move {
        let mut client = common::flight_client(&flight, None).await;
        common::score_dataset(&mut client, &cmd).await
    };
    let running = tokio::spawn(action(first.flight.clone(), cmd.clone()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !first.log_lines().iter().any(|l| l.contains("failpoint reached: job.after_unit")) {
        assert!(std::time::Instant::now() < deadline, "the job never committed a unit");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    first.child.kill().expect("kill");
    let _ = first.child.wait();
    running.abort();

    // The table as the kill left it: readable, the first unit's rows and no other.
    let committed: Vec<i64> = delta_live_files(&out).iter().flat_map(|p| labels(&read_parquet(p), "label")).collect();
    assert_eq!(committed.len(), 34, "one unit of 34 rows committed before the kill");

    // A new worker resumes it: the committed unit is skipped, and every row is in the table
    // once.
    let second = tokio::task::block_in_place(|| {
        spawn_serve_env(data.path(), &["--intra-op-threads", "1", "--config", &config], &[])
    });
    let result = action(second.flight.clone(), cmd.clone()).await.expect("the resumed job completes");
    let summary: Value = serde_json::from_slice(&result[0]).expect("summary");
    assert_eq!(
        (summary["resumed_units"].clone(), summary["units"].clone()),
        (serde_json::json!(1), serde_json::json!(6)),
        "{summary}"
    );
    let mut got: Vec<i64> = delta_live_files(&out).iter().flat_map(|p| labels(&read_parquet(p), "label")).collect();
    got.sort();
    assert_eq!(got, want, "each row once, labelled as onnxruntime labels it");
    // The parts of the unit that was running at the kill are not in the table, and gone.
    let parts = std::fs::read_dir(&out)
        .expect("out")
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "parquet"));
    let parts = parts.count();
    assert_eq!(parts, delta_live_files(&out).len(), "no orphaned part");
    // Run again: answered from the table's last commit, nothing added.
    let versions = std::fs::read_dir(out.join("_delta_log")).expect("log").count();
    let again = action(second.flight.clone(), cmd).await.expect("again");
    let again: Value = serde_json::from_slice(&again[0]).expect("summary");
    assert_eq!(again["rows"], 200, "{again}");
    assert_eq!(std::fs::read_dir(out.join("_delta_log")).expect("log").count(), versions);
}

/// `in/`: rf's 200 rows in six Parquet files; onnxruntime's labels for them, in order.
fn six_files(dir: &Path) -> Vec<i64> {
    let rows = read_parquet(&models_dir().join("rf.rows.parquet"));
    let input = dir.join("in");
    std::fs::create_dir_all(&input).expect("mkdir");
    for (i, start) in (0..200).step_by(34).enumerate() {
        let file = std::fs::File::create(input.join(format!("part-{i}.parquet"))).expect("create");
        let mut w = parquet::arrow::ArrowWriter::try_new(file, rows.schema(), None).expect("writer");
        w.write(&rows.slice(start, 34.min(200 - start))).expect("write");
        w.close().expect("close");
    }
    labels(&read_parquet(&models_dir().join("rf.expected.parquet")), "output_label")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_spread_over_three_workers_survives_losing_one() {
    let data = tempfile::tempdir().expect("tempdir");
    // Six files: two units for each of three workers.
    let want = six_files(data.path());
    let serve = tokio::task::block_in_place(|| spawn_serve_env(data.path(), &["--intra-op-threads", "1"], &[]));
    common::register_champion(&serve.url, None, "rf", "rf.onnx").await;
    let worker = |failpoint: bool| {
        let dir = tempfile::tempdir().expect("tempdir");
        let registry = format!("grpc://{}", serve.url.trim_start_matches("http://"));
        let env: &[(&str, &str)] = if failpoint { &[("LAKESCORE_FAILPOINTS", "job.after_unit")] } else { &[] };
        let p = common::spawn_lakescore(
            "scorer",
            dir.path(),
            &["--flight-listen", "127.0.0.1:0", "--registry-url", &registry, "--intra-op-threads", "1"],
            env,
        );
        (p, dir)
    };
    let (steady, _d1) = tokio::task::block_in_place(|| worker(false));
    // This one stops for good after its first unit, and is then killed.
    let (mut doomed, _d2) = tokio::task::block_in_place(|| worker(true));
    let workers = [&serve.flight, &steady.flight, &doomed.flight].map(|a| format!("grpc://{a}")).join(",");
    let job = Command::new(BIN)
        .args(["score", "--model", "rf@champion", "--feature-columns", &features(), "--job-id", "spread"])
        .arg("--input")
        .arg(format!("file://{}/in/", data.path().display()))
        .args(["--output", &format!("file://{}/out/", data.path().display()), "--workers", &workers])
        .args(["--format", "parquet"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("lakescore score");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !doomed.log_lines().iter().any(|l| l.contains("failpoint reached: job.after_unit")) {
        assert!(std::time::Instant::now() < deadline, "the third worker never took its shard");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    doomed.child.kill().expect("kill");
    let _ = doomed.child.wait();
    let done = tokio::task::block_in_place(|| job.wait_with_output()).expect("job");
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(done.status.success(), "{stderr}");
    let summary: Value = serde_json::from_slice(&done.stdout).expect("summary");
    assert_eq!(summary["rows"], 200, "{summary}");
    assert_eq!(summary["units"], 6, "{summary}");
    assert_eq!(summary["failed_units"], 0, "{summary}");
    assert!(stderr.contains("went away"), "the lost shard moved to another worker: {stderr}");
    // Every row once, in input order across the units, with onnxruntime's labels.
    assert_eq!(scored_labels(&data.path().join("out")), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_polled_to_their_end_or_cancelled_midway() {
    use arrow_flight::{CancelFlightInfoRequest, CancelStatus, FlightDescriptor, FlightInfo};
    let data = tempfile::tempdir().expect("tempdir");
    let want = six_files(data.path());
    // Each unit takes at least 0.3 s: long enough to watch and to stop.
    let s = tokio::task::block_in_place(|| {
        spawn_serve_env(data.path(), &["--intra-op-threads", "1"], &[("LAKESCORE_FAILPOINTS", "job.before_unit=0.3")])
    });
    common::register_champion(&s.url, None, "rf", "rf.onnx").await;
    let cmd = |job: &str| {
        FlightDescriptor::new_cmd(
            serde_json::json!({
                "model": "rf@champion", "feature_columns": features().split(',').collect::<Vec<_>>(),
                "input": format!("file://{}/in/", data.path().display()),
                "output": format!("file://{}/{job}/", data.path().display()), "output_format": "parquet",
                "job_id": job, "batch": {},
            })
            .to_string(),
        )
    };
    let mut client = common::flight_client(&s.flight, None).await;

    // Polled: progress climbs, the last answer carries the summary.
    let mut progress = Vec::new();
    let last = loop {
        let poll = client.poll_flight_info(cmd("polled")).await.expect("poll");
        progress.push(poll.progress.expect("progress"));
        if poll.flight_descriptor.is_none() {
            break poll;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "{progress:?}");
    assert!(progress.iter().any(|p| *p > 0.0 && *p < 1.0), "progress seen between 0 and 1: {progress:?}");
    let info = last.info.expect("final info");
    let summary: Value = serde_json::from_slice(&info.app_metadata).expect("summary");
    assert_eq!((summary["rows"].as_u64(), info.total_records), (Some(200), 200), "{summary}");
    assert_eq!(scored_labels(&data.path().join("polled")), want);

    // Cancelled once a unit is in: nothing of it stays.
    loop {
        let poll = client.poll_flight_info(cmd("stopped")).await.expect("poll");
        if poll.progress.unwrap_or(0.0) > 0.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let request = CancelFlightInfoRequest::new(FlightInfo::new().with_descriptor(cmd("stopped")));
    let result = client.cancel_flight_info(request).await.expect("cancel");
    assert_eq!(result.status(), CancelStatus::Cancelling);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        match client.poll_flight_info(cmd("stopped")).await {
            Ok(poll) => assert!(poll.flight_descriptor.is_some(), "the job finished although cancelled"),
            Err(arrow_flight::error::FlightError::Tonic(status)) => break status,
            Err(e) => panic!("{e}"),
        }
        assert!(std::time::Instant::now() < deadline, "the cancelled job did not end");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(status.code(), tonic::Code::Cancelled, "{status}");
    let out = data.path().join("stopped");
    assert!(parts(&out).is_empty(), "{:?}", parts(&out));
    assert!(!out.join("_lakescore.json").exists());
    let markers = std::fs::read_dir(out.join("_lakescore_jobs/stopped/units")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(markers, 0, "no unit marker left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_jobs_read_and_write_azure_blob_storage() {
    let endpoint = std::env::var("LAKESCORE_TEST_AZURITE_BLOB")
        .expect("LAKESCORE_TEST_AZURITE_BLOB is not set: run the tests with scripts/test, which starts Azurite");
    let data = tempfile::tempdir().expect("tempdir");
    let mut want = dataset(data.path());
    std::fs::remove_file(data.path().join("in/d.parquet")).expect("rm corrupt file");
    // c.parquet's f1 is text, passed through as text: its rows would have other columns than
    // the table's (a failed unit: a table has one set of columns); the table takes
    // a.parquet's and b.parquet's.
    std::fs::remove_file(data.path().join("in/c.parquet")).expect("rm text file");
    want.truncate(want.len() - (60 - 1));
    let config = data.path().join("lakescore.toml");
    std::fs::write(&config, common::azurite_scorer_config(&endpoint)).expect("config");
    let s = tokio::task::block_in_place(|| {
        spawn_serve_env(data.path(), &["--config", config.to_str().expect("utf-8")], &[])
    });
    common::register_champion(&s.url, None, "rf", "rf.onnx").await;
    let prefix = format!("az://lakescore-test/jobs-{}", uuid::Uuid::new_v4().simple());
    let action = |cmd: Value| {
        let flight = s.flight.clone();
        let logs = s.logs.clone();
        async move {
            let mut client = common::flight_client(&flight, None).await;
            let result = common::score_dataset(&mut client, &cmd).await.unwrap_or_else(|e| {
                panic!(
                    "{e}: {:?}",
                    logs.lock().map(|l| l
                        .iter()
                        .filter(|l| l.contains("failed every attempt"))
                        .cloned()
                        .collect::<Vec<_>>())
                )
            });
            serde_json::from_slice::<Value>(&result[0]).expect("summary")
        }
    };
    let features: Vec<String> = features().split(',').map(str::to_string).collect();

    // Local Parquet in, Azure Blob out as a Delta table: parts, error rows, the lock and the
    // table's commits on Azure (conditional puts there).
    let first = action(serde_json::json!({
        "model": "rf@champion", "feature_columns": features,
        "input": format!("file://{}/in/", data.path().display()), "output": format!("{prefix}/scored/"),
        "job_id": "to-azure", "batch": {"max_concurrency": 2}, "missing": "error",
    }))
    .await;
    assert_eq!(
        (first["rows"].as_u64(), first["error_rows"].as_u64()),
        (Some(want.len() as u64), Some(NULL_ROWS.len() as u64)),
        "{first}"
    );
    assert_eq!(first["table"], format!("{prefix}/scored/"), "{first}");
    assert!(first["table_version"].as_i64().is_some_and(|v| v >= 1), "units, then the job's end: {first}");

    // The Delta table on Azure Blob in (its live files; _errors/ and _lakescore_jobs/ are not
    // in it), local Parquet out: the same labels as onnxruntime's.
    let second = action(serde_json::json!({
        "model": "rf@champion", "feature_columns": features, "drop_input_columns": true,
        "input": format!("{prefix}/scored/"), "output": format!("file://{}/back/", data.path().display()),
        "output_format": "parquet", "job_id": "from-azure", "batch": {}, "missing": "error",
    }))
    .await;
    assert_eq!(second["rows"], want.len(), "{second}");
    assert_eq!(second["units"], 2, "one unit per part written to Azure: {second}");
    assert_eq!(scored_labels(&data.path().join("back")), want);
}

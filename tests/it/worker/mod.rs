//! Shared harness of the end-to-end tests: the generated test models (real ONNX files and
//! onnxruntime's reference outputs from tests/models/generate.py), a worker on a real TCP
//! port, and a real Flight client.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, FixedSizeListArray, Float32Array, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
};
use arrow::compute::concat_batches;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::{FlightClient, FlightDescriptor};
use futures::TryStreamExt;
use lakescore_scorer::mapping::default_column_name;
use lakescore_scorer::ScorerConfig;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;
use tokio::sync::oneshot;

/// The directory of generated test models: `LAKESCORE_TEST_MODELS`, else
/// `tests/models/generated` at the repository root.
pub fn models_dir() -> PathBuf {
    let dir = std::env::var_os("LAKESCORE_TEST_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/models/generated"));
    assert!(
        dir.join("manifest.json").is_file(),
        "no generated test models in {} (run tests/models/generate.py, or set LAKESCORE_TEST_MODELS)",
        dir.display()
    );
    dir.canonicalize().expect("models dir")
}

pub fn manifest() -> Value {
    let text = std::fs::read(models_dir().join("manifest.json")).expect("manifest.json");
    serde_json::from_slice(&text).expect("manifest.json is JSON")
}

/// The core (non-benchmark) model names.
pub fn core_models() -> Vec<String> {
    let m = manifest();
    let mut names: Vec<String> = m["models"]
        .as_object()
        .expect("models")
        .iter()
        .filter(|(_, v)| !v["bench_only"].as_bool().unwrap_or(false))
        .map(|(k, _)| k.clone())
        .collect();
    names.sort();
    names
}

/// ONNX Runtime for the tests: the usual search (ORT_DYLIB_PATH, …), else the project's
/// venv at ~/.cache/lakescore/venv.
pub fn onnxruntime_lib() -> Option<PathBuf> {
    if lakescore_scorer::find_onnxruntime(None).is_ok() {
        return None;
    }
    let home = std::env::var_os("HOME")?;
    let lib = Path::new(&home).join(".cache/lakescore/venv/lib");
    for entry in std::fs::read_dir(&lib).ok()?.flatten() {
        let capi = entry.path().join("site-packages/onnxruntime/capi");
        if let Ok(files) = std::fs::read_dir(&capi) {
            for f in files.flatten() {
                let name = f.file_name().to_string_lossy().to_string();
                if name.starts_with("libonnxruntime.so.") {
                    return Some(f.path());
                }
            }
        }
    }
    None
}

pub fn read_parquet(path: &Path) -> RecordBatch {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
    let schema = builder.schema().clone();
    let reader = builder.build().unwrap();
    let batches: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
    concat_batches(&schema, &batches).unwrap()
}

pub fn rows(model: &str) -> RecordBatch {
    read_parquet(&models_dir().join(format!("{model}.rows.parquet")))
}

pub fn expected(model: &str) -> RecordBatch {
    read_parquet(&models_dir().join(format!("{model}.expected.parquet")))
}

/// A running worker.
pub struct Worker {
    pub addr: std::net::SocketAddr,
    pub data: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Worker {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Start a worker on 127.0.0.1:0 scoring the generated models (`dir://` source),
    /// allowed to use storage under its own temporary directory only.
    pub async fn start_with(tweak: impl FnOnce(&mut ScorerConfig)) -> Self {
        let data = tempfile::tempdir().expect("tempdir");
        let mut config = ScorerConfig::new(format!("dir://{}", models_dir().display()));
        config.onnxruntime_lib = onnxruntime_lib();
        config.storage_roots = vec![format!("file://{}/", data.path().display())];
        config.inference_batch_rows = 64;
        // One thread: tree ensembles then sum in the same order as the single-threaded
        // reference run (with more threads ORT may sum per-thread partials, which differs
        // in the last float32 bits).
        config.intra_op_threads = 1;
        tweak(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            lakescore_scorer::serve(config, listener, async {
                let _ = rx.await;
            })
            .await
            .expect("worker failed");
        });
        Self { addr, data, shutdown: Some(tx), task: Some(task) }
    }

    pub async fn client(&self) -> FlightClient {
        let mut last = None;
        for _ in 0..100 {
            match tonic::transport::Channel::from_shared(format!("http://{}", self.addr)).expect("uri").connect().await
            {
                Ok(ch) => return FlightClient::new(ch),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("cannot connect to the worker: {last:?}");
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.data.path().join(rel)
    }

    pub fn url(&self, rel: &str) -> String {
        format!("file://{}/{rel}", self.data.path().display())
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), task).await;
        }
    }
}

/// The score command JSON for a generated model.
pub fn command(model: &str) -> Value {
    let m = manifest();
    let entry = &m["models"][model];
    let mut cmd = serde_json::json!({"model": model});
    if let Some(fc) = entry["feature_columns"].as_array() {
        cmd["feature_columns"] = Value::Array(fc.clone());
    }
    cmd
}

fn floats(a: &dyn Array) -> Vec<f64> {
    if let Some(l) = a.as_any().downcast_ref::<FixedSizeListArray>() {
        return floats(l.values().as_ref());
    }
    if let Some(x) = a.as_any().downcast_ref::<Float32Array>() {
        return x.values().iter().map(|v| *v as f64).collect();
    }
    if let Some(x) = a.as_any().downcast_ref::<Float64Array>() {
        return x.values().to_vec();
    }
    panic!("not a float column: {:?}", a.data_type());
}

fn ints(a: &dyn Array) -> Vec<i64> {
    if let Some(l) = a.as_any().downcast_ref::<FixedSizeListArray>() {
        return ints(l.values().as_ref());
    }
    if let Some(x) = a.as_any().downcast_ref::<Int64Array>() {
        return x.values().to_vec();
    }
    if let Some(x) = a.as_any().downcast_ref::<Int32Array>() {
        return x.values().iter().map(|v| *v as i64).collect();
    }
    panic!("not an int column: {:?}", a.data_type());
}

fn strings(a: &dyn Array) -> Vec<String> {
    let x = a.as_any().downcast_ref::<StringArray>().expect("string column");
    (0..x.len()).map(|i| x.value(i).to_string()).collect()
}

/// |a - b| <= 1e-5 relative (with a tiny absolute floor for values near zero); NaN only
/// where the other is NaN.
pub fn close(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || (a - b).abs() <= 1e-5 * a.abs().max(b.abs()) + 1e-7
}

/// The test venv's Python.
pub fn python() -> PathBuf {
    std::env::var_os("LAKESCORE_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(&std::env::var_os("HOME").expect("HOME")).join(".cache/lakescore/venv/bin/python"))
}

/// `model`'s generated rows with the feature values at `(row, column)` replaced by nulls, and
/// onnxruntime's outputs (Python, as tests/models/generate.py computes them) for the same
/// rows with `NaN` there: (rows, expected).
pub fn rows_with_nulls(model: &str, at: &[(usize, &str)]) -> (RecordBatch, RecordBatch) {
    const SCRIPT: &str = r#"
import json, sys, tempfile
from pathlib import Path
import numpy as np, pyarrow.parquet as pq
repo, models, name, at = sys.argv[1], Path(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
sys.path.insert(0, f"{repo}/tests/models")
import generate
entry = json.loads((models / "manifest.json").read_text())["models"][name]
rows = pq.read_table(models / f"{name}.rows.parquet")
cols = {c: rows[c].to_numpy().astype(np.float32) for c in entry["feature_columns"]}
for row, col in at:
    cols[col][row] = np.nan
x = np.column_stack([cols[c] for c in entry["feature_columns"]])
out = Path(tempfile.mkdtemp())
generate.run_and_write_expected(out, name, models / f"{name}.onnx", {list(entry["columns"])[0]: x})
print(json.dumps(str(out / f"{name}.expected.parquet")))
"#;
    let at_json =
        serde_json::to_string(&at.iter().map(|(r, c)| serde_json::json!([r, c])).collect::<Vec<_>>()).unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf();
    let out = std::process::Command::new(python())
        .arg("-c")
        .arg(SCRIPT)
        .args([repo.to_str().unwrap(), models_dir().to_str().unwrap(), model, &at_json])
        .output()
        .expect("run python (set LAKESCORE_TEST_PYTHON or run scripts/test)");
    assert!(out.status.success(), "python failed: {}", String::from_utf8_lossy(&out.stderr));
    let path: String = serde_json::from_slice(&out.stdout).expect("python printed the expected file");
    let expected = read_parquet(Path::new(&path));
    let _ = std::fs::remove_dir_all(Path::new(&path).parent().unwrap());

    let base = rows(model);
    let mut columns = base.columns().to_vec();
    for (i, field) in base.schema().fields().iter().enumerate() {
        let null_rows: Vec<usize> = at.iter().filter(|(_, c)| c == field.name()).map(|(r, _)| *r).collect();
        if null_rows.is_empty() {
            continue;
        }
        let values = base.column(i).as_any().downcast_ref::<Float32Array>().expect("float32 feature");
        let with_nulls: Float32Array =
            (0..values.len()).map(|r| (!null_rows.contains(&r)).then(|| values.value(r))).collect();
        columns[i] = Arc::new(with_nulls);
    }
    let fields: Vec<arrow::datatypes::FieldRef> =
        base.schema().fields().iter().map(|f| Arc::new(f.as_ref().clone().with_nullable(true))).collect();
    let batch = RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), columns).unwrap();
    (batch, expected)
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> &'a ArrayRef {
    batch.column_by_name(name).unwrap_or_else(|| panic!("result has no column '{name}': {:?}", batch.schema()))
}

/// Compare lakescore's enriched result with onnxruntime's outputs for `model`, row by row:
/// labels exactly, floats within 1e-5 relative; and the input columns passed through.
pub fn assert_matches_expected(model: &str, got: &RecordBatch) {
    assert_matches_outputs(model, got, &expected(model), &rows(model));
}

/// [`assert_matches_expected`] for other rows (`input`) and onnxruntime's outputs on them.
pub fn assert_matches_outputs(model: &str, got: &RecordBatch, exp: &RecordBatch, input: &RecordBatch) {
    let m = manifest();
    let outputs = m["models"][model]["outputs_expected"].as_array().expect("outputs_expected").clone();
    let (exp, input) = (exp.clone(), input.clone());
    assert_eq!(got.num_rows(), input.num_rows(), "{model}: row count");
    for field in input.schema().fields() {
        assert_eq!(
            column(got, field.name()).as_ref(),
            column(&input, field.name()).as_ref(),
            "{model}: input column {} not passed through unchanged",
            field.name()
        );
    }
    let names: Vec<&str> = outputs.iter().map(|o| o["name"].as_str().unwrap()).collect();
    for o in &outputs {
        let name = o["name"].as_str().unwrap();
        let col = default_column_name(name, &names);
        let e = column(&exp, name);
        match o["kind"].as_str().unwrap() {
            "tensor" => {
                let g = column(got, &col);
                match o["dtype"].as_str().unwrap() {
                    "int64" | "int32" => assert_eq!(ints(g.as_ref()), ints(e.as_ref()), "{model}: {col}"),
                    "string" => assert_eq!(strings(g.as_ref()), strings(e.as_ref()), "{model}: {col}"),
                    _ => {
                        let (g, e) = (floats(g.as_ref()), floats(e.as_ref()));
                        assert_eq!(g.len(), e.len(), "{model}: {col} length");
                        for (i, (a, b)) in g.iter().zip(&e).enumerate() {
                            assert!(close(*a, *b), "{model}: {col}[{i}] = {a}, onnxruntime {b}");
                        }
                    }
                }
            }
            "seq_map" => {
                let keys: Vec<String> = o["keys"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|k| match k {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect();
                let e = floats(e.as_ref());
                let k = keys.len();
                for (j, key) in keys.iter().enumerate() {
                    let g = floats(column(got, &format!("{col}_{key}")).as_ref());
                    for (i, a) in g.iter().enumerate() {
                        let b = e[i * k + j];
                        assert!(close(*a, b), "{model}: {col}_{key}[{i}] = {a}, onnxruntime {b}");
                    }
                }
            }
            other => panic!("unknown output kind {other}"),
        }
    }
}

pub fn concat(batches: &[RecordBatch]) -> RecordBatch {
    assert!(!batches.is_empty(), "no batches");
    concat_batches(&batches[0].schema(), batches).unwrap()
}

/// Split a batch into pieces of the given sizes (cycled), to exercise split / merge.
pub fn split(batch: &RecordBatch, sizes: &[usize]) -> Vec<RecordBatch> {
    let mut out = Vec::new();
    let mut offset = 0;
    let mut i = 0;
    while offset < batch.num_rows() {
        let n = sizes[i % sizes.len()].min(batch.num_rows() - offset);
        out.push(batch.slice(offset, n));
        offset += n;
        i += 1;
    }
    out
}

pub fn arc<T>(t: T) -> Arc<T> {
    Arc::new(t)
}

// ---- Flight calls shared by the test files ----

pub fn descriptor(cmd: &Value) -> FlightDescriptor {
    FlightDescriptor::new_cmd(serde_json::to_vec(cmd).unwrap())
}

pub async fn exchange(
    client: &mut arrow_flight::FlightClient,
    cmd: &Value,
    batches: Vec<RecordBatch>,
) -> Result<Vec<RecordBatch>, FlightError> {
    let input = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(descriptor(cmd)))
        .build(futures::stream::iter(batches.into_iter().map(Ok)));
    client.do_exchange(input).await?.try_collect().await
}

pub async fn put(
    client: &mut arrow_flight::FlightClient,
    cmd: &Value,
    batches: Vec<RecordBatch>,
) -> Result<Value, FlightError> {
    let input = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(descriptor(cmd)))
        .build(futures::stream::iter(batches.into_iter().map(Ok)));
    let results: Vec<_> = client.do_put(input).await?.try_collect().await?;
    assert_eq!(results.len(), 1, "one PutResult");
    Ok(serde_json::from_slice(&results[0].app_metadata).expect("app_metadata is JSON"))
}

pub fn status(err: FlightError) -> tonic::Status {
    match err {
        FlightError::Tonic(s) => *s,
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

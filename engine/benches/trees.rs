//! The native engine against ONNX Runtime, in one process on the same rows: the 100-tree
//! depth-12 RandomForest (`big_rf`), the 300-tree depth-6 gradient-boosting classifier
//! (`gb300`), a 3-class LogisticRegression (`logreg20`, the linear engine) and a 300-tree,
//! 31-leaf LightGBM binary classifier converted by onnxmltools (`lgbm300`: its graph's
//! Identity, Cast and Mul by one around the ensemble included), 1,000,000 rows × 20 float32
//! features in 65,536-row calls (the worker's inference batch), best of 3, with all cores
//! and with one thread each. Both engines get the same row-major tensor; the
//! `logreg20 (columns)` row is the linear engine as the worker runs it, on the batch's
//! feature columns where they are (no tensor at all), against ONNX Runtime on the tensor.
//!
//!     tests/models/generate.py --bench          # big_rf, gb300, logreg20 and lgbm300, once
//!     cargo bench -p lakescore-engine --bench trees
//!     LAKESCORE_BENCH_ROWS=200000 cargo bench -p lakescore-engine --bench trees
//!     LAKESCORE_BENCH_MODELS=logreg20 cargo bench -p lakescore-engine --bench trees   # a subset

#[path = "../../benches/common/mod.rs"]
mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::{best_of_3, normal_values};
use lakescore_engine::engine::{Engine, LoadedModel, Tensor, TensorData};
use lakescore_engine::{OrtEngine, OrtOptions, TreesEngine};

const FEATURES: usize = 20;
const CALL_ROWS: usize = 65_536;

/// Rows per second scoring `x` in `CALL_ROWS`-row calls, best of 3.
fn rows_per_sec(model: &dyn LoadedModel, input: &str, x: &[f32]) -> f64 {
    let (secs, ()) = best_of_3(|| {
        for chunk in x.chunks(CALL_ROWS * FEATURES) {
            let rows = chunk.len() / FEATURES;
            let tensor = Tensor { shape: vec![rows, FEATURES], data: TensorData::Float32(chunk.to_vec()) };
            model.run(vec![(input.to_string(), tensor)]).expect("run");
        }
    });
    (x.len() / FEATURES) as f64 / secs
}

/// Rows per second scoring `x` as feature columns (the worker's path for a linear model), in
/// `CALL_ROWS`-row calls, best of 3.
fn columns_per_sec(model: &dyn LoadedModel, x: &[f32]) -> f64 {
    let n = x.len() / FEATURES;
    let columns: Vec<Vec<f32>> = (0..FEATURES).map(|f| x.iter().skip(f).step_by(FEATURES).copied().collect()).collect();
    let (secs, ()) = best_of_3(|| {
        for first in (0..n).step_by(CALL_ROWS) {
            let rows = CALL_ROWS.min(n - first);
            let call: Vec<&[f32]> = columns.iter().map(|c| &c[first..first + rows]).collect();
            model.run_columns(&call, rows).expect("run_columns");
        }
    });
    n as f64 / secs
}

fn main() {
    let n: usize = std::env::var("LAKESCORE_BENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let cores = std::thread::available_parallelism().map(|c| c.get()).unwrap_or(1);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/models/generated");
    let models = std::env::var("LAKESCORE_BENCH_MODELS").unwrap_or_else(|_| "big_rf,gb300,logreg20,lgbm300".into());
    // Roughly standard-normal features (the models were trained on such data).
    let x = normal_values(n * FEATURES, 0);
    println!("native engine: {n} rows x {FEATURES} features, {CALL_ROWS}-row calls, best of 3, {cores} cores");
    println!("| model | threads | onnxruntime rows/s | native rows/s | ratio |");
    println!("| --- | --- | --- | --- | --- |");
    for threads in [cores, 1] {
        let ort: Arc<dyn Engine> = Arc::new(
            OrtEngine::new(OrtOptions { intra_op_threads: threads, ..Default::default() })
                .expect("ONNX Runtime (set ORT_DYLIB_PATH or LAKESCORE_ONNXRUNTIME_LIB)"),
        );
        let native = TreesEngine::new(None, threads);
        for name in models.split(',') {
            let path = dir.join(format!("{name}.onnx"));
            let Ok(bytes) = std::fs::read(&path) else {
                println!("| {name} | missing: run tests/models/generate.py --bench | | | |");
                continue;
            };
            let bytes = Bytes::from(bytes);
            let theirs = ort.load(bytes.clone()).expect("onnxruntime loads it");
            let ours = native.load(bytes).expect("the native engine compiles it");
            let input = theirs.inputs()[0].name.clone();
            let a = rows_per_sec(theirs.as_ref(), &input, &x);
            let b = rows_per_sec(ours.as_ref(), &input, &x);
            println!("| {name} | {threads} | {a:.0} | {b:.0} | {:.2}x |", b / a);
            if ours.takes_columns() {
                let c = columns_per_sec(ours.as_ref(), &x);
                println!("| {name} (columns) | {threads} | {a:.0} | {c:.0} | {:.2}x |", c / a);
            }
        }
    }
}

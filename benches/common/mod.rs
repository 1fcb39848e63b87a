//! What the Rust benchmarks share (`mod common;` in each, by path from `engine/benches` and
//! `lake/benches`): reproducible input values, scored rows, and the best-of-3 timer.

use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, FixedSizeListArray, Float32Array, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

/// Feature columns of [`scored_schema`].
#[allow(dead_code)]
pub const SCORED_FEATURES: usize = 20;
/// Rows per batch of [`scored_batch`], as the worker's inference batches.
#[allow(dead_code)]
pub const SCORED_BATCH_ROWS: usize = 65_536;

/// What `logreg20` gives in the scoring benchmark: 20 float32 feature columns passed
/// through, `label` (int64) and `probabilities` (fixed-size list of 3 float32).
#[allow(dead_code)]
pub fn scored_schema() -> SchemaRef {
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let mut fields: Vec<Field> =
        (0..SCORED_FEATURES).map(|i| Field::new(format!("f{i}"), DataType::Float32, true)).collect();
    fields.push(Field::new("label", DataType::Int64, false));
    fields.push(Field::new("probabilities", DataType::FixedSizeList(item, 3), false));
    Arc::new(Schema::new(fields))
}

/// `n` rows of [`scored_schema`], the rows from `done` on: the same for the same arguments.
#[allow(dead_code)]
pub fn scored_batch(schema: &SchemaRef, done: usize, n: usize) -> RecordBatch {
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let mut columns: Vec<ArrayRef> = (0..SCORED_FEATURES)
        .map(|i| Arc::new(Float32Array::from(normal_values(n, (done + i) as u64))) as ArrayRef)
        .collect();
    columns.push(Arc::new(Int64Array::from_iter_values((0..n).map(|r| ((r * 7 + done) % 3) as i64))));
    let probabilities =
        Float32Array::from(normal_values(n * 3, done as u64 ^ 0xff).iter().map(|v| v.abs() / 8.0).collect::<Vec<_>>());
    columns.push(Arc::new(FixedSizeListArray::try_new(item, 3, Arc::new(probabilities), None).expect("probabilities")));
    RecordBatch::try_new(schema.clone(), columns).expect("batch")
}

/// `n` roughly standard-normal float32 values (the sum of four uniforms, scaled), the same
/// for the same `seed`: random floats, which Snappy cannot shrink and models were trained on.
pub fn normal_values(n: usize, seed: u64) -> Vec<f32> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ seed;
    let mut uniform = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 / (1u64 << 24) as f32
    };
    (0..n).map(|_| (0..4).map(|_| uniform()).sum::<f32>() * 1.7 - 3.4).collect()
}

/// The fastest of three runs of `run`, in seconds, and what the last run returned.
pub fn best_of_3<T>(mut run: impl FnMut() -> T) -> (f64, T) {
    let mut best = f64::MAX;
    let mut out = None;
    for _ in 0..3 {
        let start = Instant::now();
        out = Some(run());
        best = best.min(start.elapsed().as_secs_f64());
    }
    (best, out.expect("three runs"))
}

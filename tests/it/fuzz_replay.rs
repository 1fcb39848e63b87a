//! The cargo fuzz targets' checks (`fuzz/checks/`), replayed as ordinary tests: over their
//! seeds (the generated models, Arrow Flight streams of their sample rows), the inputs that
//! once crashed a target (`tests/fuzz-regressions/`), the corpus `scripts/fuzz` has grown on
//! this machine (`~/.cache/lakescore/fuzz-corpus/<target>/`, when there is one), and a few
//! hundred deterministic mutations of each seed. CI runs these instead of an instrumented
//! fuzz build (the second build of the dependency tree would not fit its time); a real
//! fuzzing session is `scripts/fuzz 1800`.

#[path = "../../fuzz/checks/arrow_to_tensor.rs"]
mod arrow_to_tensor;
#[path = "../../fuzz/checks/onnx_inspect.rs"]
mod onnx_inspect;
#[path = "../../fuzz/checks/tree_compile.rs"]
mod tree_compile;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, FixedSizeListArray, Float32Array, Int64Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;

use crate::common::models_dir;
use crate::worker_trees::Rng;

/// Mutations of each seed (bit flips, overwrites, truncations, repeated spans).
const MUTATIONS: usize = 300;
/// Seeds larger than this are replayed but not mutated (the benchmark models: megabytes).
const MUTATE_BELOW: usize = 256 << 10;
/// Corpus files replayed per target at most.
const CORPUS_FILES: usize = 5000;

/// A mutation of `seed` that keeps its first `keep` bytes (the part that picks what the
/// rest means, so the mutations reach past it).
fn mutate(seed: &[u8], keep: usize, rng: &mut Rng) -> Vec<u8> {
    let mut out = seed.to_vec();
    let keep = keep.min(out.len());
    let span = out.len() - keep;
    if span == 0 {
        return out;
    }
    for _ in 0..1 + rng.below(4) {
        let span = out.len().saturating_sub(keep).max(1);
        let at = keep + rng.below(span);
        match rng.below(5) {
            0 if at < out.len() => out[at] ^= 1 << rng.below(8),
            1 if at < out.len() => out[at] = [0, 0xff, 0x7f, 0x80][rng.below(4)],
            2 => out.truncate(at),
            3 if at + 4 <= out.len() => {
                let v = (rng.next() as u32).to_le_bytes();
                out[at..at + 4].copy_from_slice(&v);
            }
            _ => {
                let end = (at + 1 + rng.below(64)).min(out.len());
                let copy = out[at.min(end)..end].to_vec();
                out.splice(at..at, copy);
            }
        }
    }
    out
}

fn files_in(dir: &Path, keep: impl Fn(&Path) -> bool) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.is_file() && keep(p)).collect())
        .unwrap_or_default();
    files.sort();
    files
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The corpus `scripts/fuzz` grew on this machine for `target`, if any.
fn grown_corpus(target: &str) -> Vec<PathBuf> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
    let Some(cache) = cache else { return Vec::new() };
    let mut files = files_in(&cache.join("lakescore/fuzz-corpus").join(target), |_| true);
    files.truncate(CORPUS_FILES);
    files
}

/// Runs `check` on every seed, `MUTATIONS` mutations of each small one, and the grown
/// corpus; a panic names the input that caused it.
fn replay(target: &str, seeds: &[(String, Vec<u8>)], keep: impl Fn(&[u8]) -> usize, check: fn(&[u8])) {
    assert!(!seeds.is_empty(), "{target}: no seeds");
    let run = |what: &str, data: &[u8]| {
        if std::panic::catch_unwind(|| check(data)).is_err() {
            panic!("{target}: the check failed on {what} ({} bytes)", data.len());
        }
    };
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut inputs = 0usize;
    for (name, seed) in seeds {
        run(name, seed);
        inputs += 1;
        if seed.len() < MUTATE_BELOW {
            for i in 0..MUTATIONS {
                run(&format!("mutation {i} of {name}"), &mutate(seed, keep(seed), &mut rng));
            }
            inputs += MUTATIONS;
        }
    }
    for file in grown_corpus(target) {
        run(&file.display().to_string(), &read(&file));
        inputs += 1;
    }
    eprintln!("{target}: {inputs} inputs replayed");
}

fn named(files: Vec<PathBuf>) -> Vec<(String, Vec<u8>)> {
    files.iter().map(|f| (f.file_name().unwrap_or_default().to_string_lossy().into_owned(), read(f))).collect()
}

#[test]
fn onnx_inspect_replays_its_seeds_and_their_mutations() {
    let seeds = named(files_in(&models_dir(), |p| p.extension().is_some_and(|e| e == "onnx" || e == "bin")));
    replay("onnx_inspect", &seeds, |_| 0, onnx_inspect::check);
}

#[test]
fn tree_compile_replays_its_seeds_and_their_mutations() {
    let dir = models_dir();
    let seeds =
        named(["rf", "rf_nozipmap", "gbr", "gbc", "gbc3"].iter().map(|m| dir.join(format!("{m}.onnx"))).collect());
    replay("tree_compile", &seeds, |_| 0, tree_compile::check);
}

/// One arrow_to_tensor input: the signature pick, the command, then the Flight data
/// messages of `batch` (schema, dictionaries, batches) as length-prefixed header and body.
fn flight_seed(pick: u8, command: serde_json::Value, batch: &RecordBatch) -> Vec<u8> {
    let batches: Vec<RecordBatch> =
        (0..batch.num_rows()).step_by(16).map(|o| batch.slice(o, 16.min(batch.num_rows() - o))).collect();
    // Dictionaries sent as dictionaries (the encoder's default turns them into values).
    let encoder = arrow_flight::encode::FlightDataEncoderBuilder::new()
        .with_dictionary_handling(arrow_flight::encode::DictionaryHandling::Resend)
        .build(futures::stream::iter(batches.into_iter().map(Ok)));
    let messages: Vec<arrow_flight::FlightData> =
        futures::executor::block_on(futures::TryStreamExt::try_collect(encoder)).expect("encode Flight data");
    let command = serde_json::to_vec(&command).expect("command");
    let mut out = vec![pick];
    out.extend_from_slice(&u16::try_from(command.len()).expect("short command").to_le_bytes());
    out.extend_from_slice(&command);
    for m in messages {
        for part in [&m.data_header, &m.data_body] {
            out.extend_from_slice(&u32::try_from(part.len()).expect("part length").to_le_bytes());
            out.extend_from_slice(part);
        }
    }
    out
}

fn sample_rows(model: &str, rows: usize) -> RecordBatch {
    let path = models_dir().join(format!("{model}.rows.parquet"));
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("parquet")
        .with_batch_size(rows)
        .build()
        .expect("reader");
    reader.next().expect("a batch").expect("rows")
}

fn one_column(name: &str, array: ArrayRef) -> RecordBatch {
    RecordBatch::try_new(Arc::new(Schema::new(vec![Field::new(name, array.data_type().clone(), true)])), vec![array])
        .expect("batch")
}

#[test]
fn arrow_to_tensor_replays_its_seeds_the_regressions_and_their_mutations() {
    use serde_json::json;
    let logreg = sample_rows("logreg", 40);
    let pipeline = sample_rows("pipeline", 40);
    let city = pipeline.schema().index_of("city").expect("pipeline rows have a city");
    let dict_city = {
        let mut columns = pipeline.columns().to_vec();
        columns[city] = arrow::compute::cast(
            &columns[city],
            &DataType::Dictionary(Box::new(DataType::Int32), Box::new(columns[city].data_type().clone())),
        )
        .expect("dictionary-encode city");
        let fields: Vec<Field> = pipeline
            .schema()
            .fields()
            .iter()
            .zip(&columns)
            .map(|(f, c)| Field::new(f.name(), c.data_type().clone(), true))
            .collect();
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).expect("batch")
    };
    let values = Float32Array::from_iter_values((0..160).map(|i| i as f32));
    let lists =
        FixedSizeListArray::try_new(Arc::new(Field::new("item", DataType::Float32, true)), 4, Arc::new(values), None)
            .expect("fixed-size lists");
    let bools = RecordBatch::try_from_iter([
        ("a", Arc::new(BooleanArray::from(vec![true, false, true])) as ArrayRef),
        ("b", Arc::new(Int64Array::from(vec![1, 0, 1])) as ArrayRef),
    ])
    .expect("batch");
    let four = json!({"feature_columns": ["f0", "f1", "f2", "f3"]});
    let mut seeds = vec![
        ("float4".to_string(), flight_seed(0, four.clone(), &logreg)),
        (
            "float4_fill".into(),
            flight_seed(0, json!({"feature_columns": ["f0", "f1", "f2", "f3"], "fill_null": 0.0}), &logreg),
        ),
        ("float4_missing".into(), flight_seed(128, four, &logreg)),
        ("float_any".into(), flight_seed(4, json!({"feature_columns": ["f0", "f1"]}), &logreg)),
        (
            "int64".into(),
            flight_seed(
                3,
                json!({"columns": {"X": {"names": ["n"]}}}),
                &one_column("n", Arc::new(Int64Array::from_iter_values(0..40))),
            ),
        ),
        ("list".into(), flight_seed(1, json!({}), &one_column("X", Arc::new(lists)))),
        ("bool".into(), flight_seed(5, json!({"feature_columns": ["a", "b"]}), &bools)),
        ("pipeline".into(), flight_seed(2, json!({"passthrough_columns": ["city"]}), &pipeline)),
        ("pipeline_dict".into(), flight_seed(2, json!({}), &dict_city)),
    ];
    let regressions = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions");
    let found = named(files_in(&regressions, |_| true));
    assert!(!found.is_empty(), "no inputs in {}", regressions.display());
    seeds.extend(found);
    // Mutations keep the signature pick, the command's length and the command: they go to
    // the Flight messages, where the worker reads what a client sends.
    let keep = |seed: &[u8]| 3 + seed.get(1..3).map_or(0, |n| usize::from(u16::from_le_bytes([n[0], n[1]])));
    replay("arrow_to_tensor", &seeds, keep, arrow_to_tensor::check);
}

//! Hostile and unusual Flight input: messages over the decode limit, batches out of
//! protocol order or not matching their schema, wrong shapes for the model, zero-row
//! batches, all-null and dictionary-encoded columns, invalid UTF-8. Each case gets a precise
//! status before any inference, and the worker keeps serving afterwards.

use crate::worker as common;

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, DictionaryArray, FixedSizeListArray, Float32Array, Float64Array, Int16Array, Int32Array,
    NullArray, RecordBatch, StringArray,
};
use arrow::buffer::Buffer;
use arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef};
use arrow_flight::encode::{DictionaryHandling, FlightDataEncoderBuilder};
use arrow_flight::{Action, FlightClient, FlightData};
use common::*;
use futures::TryStreamExt;
use serde_json::{json, Value};

/// The Flight messages a well-behaved client sends: descriptor + schema, then one message
/// per batch.
async fn encoded(cmd: &Value, schema: SchemaRef, batches: Vec<RecordBatch>) -> Vec<FlightData> {
    FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(descriptor(cmd)))
        .with_schema(schema)
        .build(futures::stream::iter(batches.into_iter().map(Ok)))
        .try_collect()
        .await
        .expect("encode")
}

/// DoExchange with hand-assembled messages; the status the worker answers with.
async fn exchange_raw(client: &mut FlightClient, messages: Vec<FlightData>) -> Result<Vec<RecordBatch>, tonic::Status> {
    let input = futures::stream::iter(messages.into_iter().map(Ok));
    let result = async { client.do_exchange(input).await?.try_collect::<Vec<_>>().await }.await;
    result.map_err(status)
}

fn expect_code(result: Result<Vec<RecordBatch>, tonic::Status>, code: tonic::Code, what: &str) -> String {
    match result {
        Ok(b) => panic!("{what}: accepted, {} batches back", b.len()),
        Err(s) => {
            assert_eq!(s.code(), code, "{what}: {}", s.message());
            s.message().to_string()
        }
    }
}

/// The worker still scores a normal request, correctly.
async fn still_serves(client: &mut FlightClient) {
    let got = exchange(client, &command("logreg"), vec![rows("logreg")]).await.expect("the worker still serves");
    assert_matches_expected("logreg", &concat(&got));
}

fn with_column(batch: &RecordBatch, name: &str, array: ArrayRef) -> RecordBatch {
    let mut fields: Vec<Field> = batch.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    let mut columns = batch.columns().to_vec();
    match fields.iter().position(|f| f.name() == name) {
        Some(i) => {
            fields[i] = Field::new(name, array.data_type().clone(), true);
            columns[i] = array;
        }
        None => {
            fields.push(Field::new(name, array.data_type().clone(), true));
            columns.push(array);
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).expect("batch")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_decode_limit_is_resource_exhausted() {
    let worker = Worker::start_with(|c| c.max_message_bytes = 64 * 1024).await;
    let mut client = worker.client().await;
    // 2,000 rows × 20 float32 columns: one ~160 kB IPC message, over the 64 kB limit.
    let big = arrow::compute::concat_batches(&rows("rf").schema(), &vec![rows("rf"); 10]).expect("concat");
    let err = exchange(&mut client, &command("rf"), vec![big.clone()]).await.expect_err("over the limit");
    let s = status(err);
    assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{}", s.message());
    assert!(s.message().contains("65536"), "names the limit: {}", s.message());
    let mut cmd = command("rf");
    cmd["output"] = json!(worker.url("big/"));
    let err = put(&mut client, &cmd, vec![big]).await.expect_err("over the limit");
    assert_eq!(status(err).code(), tonic::Code::ResourceExhausted);
    assert!(!worker.path("big/_delta_log").exists(), "no commit for a refused stream");
    still_serves(&mut client).await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_are_invalid_argument() {
    let worker = Worker::start().await;
    let mut client = worker.client().await;
    let batch = rows("logreg").slice(0, 20);
    let msgs = encoded(&command("logreg"), batch.schema(), vec![batch.clone()]).await;
    assert_eq!(msgs.len(), 2, "schema, then one batch");

    // A batch before the schema: the descriptor alone, then the batch.
    let bare = FlightData { flight_descriptor: msgs[0].flight_descriptor.clone(), ..Default::default() };
    let m = expect_code(
        exchange_raw(&mut client, vec![bare, msgs[1].clone()]).await,
        tonic::Code::InvalidArgument,
        "batch before schema",
    );
    assert!(m.to_lowercase().contains("schema"), "{m}");

    // A second schema in the middle of the stream.
    let again = FlightData { flight_descriptor: None, ..msgs[0].clone() };
    let m = expect_code(
        exchange_raw(&mut client, vec![msgs[0].clone(), msgs[1].clone(), again, msgs[1].clone()]).await,
        tonic::Code::InvalidArgument,
        "second schema",
    );
    assert!(m.contains("schema changed"), "{m}");

    // Batches that do not match the announced schema: fewer columns, other types.
    let narrow =
        RecordBatch::try_from_iter(vec![("f0", Arc::new(Int32Array::from(vec![1, 2, 3])) as ArrayRef)]).expect("batch");
    let narrow_msgs = encoded(&command("logreg"), narrow.schema(), vec![narrow]).await;
    expect_code(
        exchange_raw(&mut client, vec![msgs[0].clone(), narrow_msgs[1].clone()]).await,
        tonic::Code::InvalidArgument,
        "batch with fewer columns than its schema",
    );
    // (IPC batches carry no types: same-width buffers would be read as the schema says, so
    // the mismatch that can be caught is buffers too short for it.)
    let shorts = RecordBatch::try_from_iter(
        (0..4).map(|i| (format!("f{i}"), Arc::new(Int16Array::from(vec![7i16; 100])) as ArrayRef)),
    )
    .expect("batch");
    let shorts_msgs = encoded(&command("logreg"), shorts.schema(), vec![shorts]).await;
    expect_code(
        exchange_raw(&mut client, vec![msgs[0].clone(), shorts_msgs[1].clone()]).await,
        tonic::Code::InvalidArgument,
        "int16 buffers, too short for the float32 schema",
    );
    // Garbage where the IPC header should be.
    let garbage = FlightData { data_header: vec![0xff; 64].into(), data_body: vec![1; 64].into(), ..msgs[1].clone() };
    expect_code(
        exchange_raw(&mut client, vec![msgs[0].clone(), garbage]).await,
        tonic::Code::InvalidArgument,
        "garbage IPC header",
    );
    still_serves(&mut client).await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_shapes_for_the_model_are_refused_before_inference() {
    let worker = Worker::start().await;
    let mut client = worker.client().await;
    let batch = rows("logreg").slice(0, 10);

    // logreg takes X float [N, 4]: one column given for four features.
    let cmd = json!({"model": "logreg", "columns": {"X": {"names": ["f0"]}}});
    let m = expect_code(
        exchange(&mut client, &cmd, vec![batch.clone()]).await.map_err(status),
        tonic::Code::InvalidArgument,
        "one column for [N, 4]",
    );
    assert!(m.contains("'X'") && m.contains("4 columns, 1 given"), "{m}");

    // A fixed-size list column of the wrong width, named after the input.
    let values = Float32Array::from((0..30).map(|v| v as f32).collect::<Vec<_>>());
    let list =
        FixedSizeListArray::try_new(Arc::new(Field::new("item", DataType::Float32, false)), 3, Arc::new(values), None)
            .expect("list");
    let listed = RecordBatch::try_from_iter(vec![("X", Arc::new(list) as ArrayRef)]).expect("batch");
    let m = expect_code(
        exchange(&mut client, &json!({"model": "logreg"}), vec![listed]).await.map_err(status),
        tonic::Code::InvalidArgument,
        "list of 3 for [N, 4]",
    );
    assert!(m.contains("'X'") && m.contains("list of 3 values, but 4 are needed"), "{m}");

    // One scalar column named after a 2-D input.
    let scalar = RecordBatch::try_from_iter(vec![("X", Arc::new(Float32Array::from(vec![1.0; 10])) as ArrayRef)])
        .expect("batch");
    let m = expect_code(
        exchange(&mut client, &json!({"model": "logreg"}), vec![scalar]).await.map_err(status),
        tonic::Code::InvalidArgument,
        "scalar column for [N, 4]",
    );
    assert!(m.contains("one value per row"), "{m}");

    // A string column where the model wants floats: parsed, and a value that does not parse
    // is named with its column, row and the expected type.
    let mut text = vec!["1.5"; 10];
    text[6] = "one and a half";
    let strings = with_column(&batch, "f3", Arc::new(StringArray::from(text)));
    let m = expect_code(
        exchange(&mut client, &command("logreg"), vec![strings.clone()]).await.map_err(status),
        tonic::Code::InvalidArgument,
        "unparseable string for float",
    );
    assert!(m.contains("'f3'") && m.contains("'one and a half' at row 6") && m.contains("float32"), "{m}");
    let parsed = exchange(&mut client, &command("logreg"), vec![strings.slice(0, 6)]).await.expect("numbers as text");
    assert_eq!(concat(&parsed).num_rows(), 6);
    still_serves(&mut client).await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_row_batches_inside_a_stream_change_nothing() {
    let worker = Worker::start().await;
    let mut client = worker.client().await;
    let all = rows("logreg");
    let mut batches = Vec::new();
    for piece in split(&all, &[50, 100, 50]) {
        batches.push(all.slice(0, 0));
        batches.push(piece);
    }
    batches.push(all.slice(0, 0));
    let got = exchange(&mut client, &command("logreg"), batches.clone()).await.expect("exchange");
    assert_matches_expected("logreg", &concat(&got));

    let mut cmd = command("logreg");
    cmd["output"] = json!(worker.url("zero/"));
    let summary = put(&mut client, &cmd, batches).await.expect("put");
    assert_eq!(summary["rows"], all.num_rows());
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_null_columns_pass_through_or_are_named() {
    let worker = Worker::start().await;
    let mut client = worker.client().await;
    let base = rows("logreg");
    let n = base.num_rows();
    // Extra columns that are entirely null: a Null-typed column and a nullable float one.
    let extra = with_column(&base, "note", Arc::new(NullArray::new(n)));
    let extra = with_column(&extra, "score_prev", Arc::new(Float64Array::from(vec![None::<f64>; n])));
    let got = concat(&exchange(&mut client, &command("logreg"), vec![extra.clone()]).await.expect("exchange"));
    assert_matches_expected("logreg", &got);
    assert_eq!(got.column_by_name("note").expect("note").logical_null_count(), n);
    assert_eq!(got.column_by_name("score_prev").expect("score_prev").logical_null_count(), n);
    // And through DoPut into Parquet.
    let mut cmd = command("logreg");
    cmd["output"] = json!(worker.url("nulls/"));
    let summary = put(&mut client, &cmd, vec![extra]).await.expect("put with all-null columns");
    assert_eq!(summary["rows"], n);

    // A feature column that is entirely null: refused by name, unless fill_null says what
    // to put there; then the rows score as if the column held that value.
    let nulls = with_column(&base, "f1", Arc::new(Float32Array::from(vec![None::<f32>; n])));
    let m = expect_code(
        exchange(&mut client, &command("logreg"), vec![nulls.clone()]).await.map_err(status),
        tonic::Code::InvalidArgument,
        "all-null feature",
    );
    assert!(m.contains("'f1'") && m.contains("null"), "{m}");
    let mut cmd = command("logreg");
    cmd["fill_null"] = json!(0.5);
    let filled = concat(&exchange(&mut client, &cmd, vec![nulls]).await.expect("fill_null"));
    let halves = with_column(&base, "f1", Arc::new(Float32Array::from(vec![0.5f32; n])));
    let direct = concat(&exchange(&mut client, &command("logreg"), vec![halves]).await.expect("exchange"));
    for col in ["label", "probability_0", "probability_1"] {
        assert_eq!(filled.column_by_name(col), direct.column_by_name(col), "{col}");
    }
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dictionary_encoded_columns_are_decoded() {
    let worker = Worker::start().await;
    let mut client = worker.client().await;
    let base = rows("logreg");
    let n = base.num_rows();
    // f0 as a dictionary of its float32 values, and a dictionary-encoded string column to
    // keep, as Parquet readers and pandas categoricals produce them.
    let f0 = base.column_by_name("f0").expect("f0").clone();
    let keys = Int32Array::from((0..n as i32).collect::<Vec<_>>());
    let dict_f0 = DictionaryArray::<Int32Type>::try_new(keys, f0).expect("dictionary");
    let segments: DictionaryArray<Int32Type> =
        (0..n).map(|i| ["retail", "sme", "corporate"][i % 3]).collect::<DictionaryArray<Int32Type>>();
    let dict = with_column(&base, "f0", Arc::new(dict_f0));
    let dict = with_column(&dict, "segment", Arc::new(segments.clone()));

    let input = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(descriptor(&command("logreg"))))
        .with_dictionary_handling(DictionaryHandling::Resend)
        .build(futures::stream::iter(split(&dict, &[64]).into_iter().map(Ok)));
    let got: Vec<RecordBatch> =
        client.do_exchange(input).await.expect("exchange").try_collect().await.expect("dictionary input scored");
    let got = concat(&got);
    let plain = concat(&exchange(&mut client, &command("logreg"), vec![base]).await.expect("exchange"));
    assert_matches_expected("logreg", &plain);
    for col in ["label", "probability_0", "probability_1"] {
        assert_eq!(got.column_by_name(col), plain.column_by_name(col), "{col}");
    }
    let segment = arrow::compute::cast(got.column_by_name("segment").expect("segment"), &DataType::Utf8).expect("cast");
    let want = arrow::compute::cast(&segments, &DataType::Utf8).expect("cast");
    assert_eq!(&segment, &want, "the dictionary column is passed through");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_in_a_string_column_is_refused() {
    let worker = Worker::start().await;
    let mut client = worker.client().await;
    let base = rows("logreg").slice(0, 3);
    // A string column whose second value is not UTF-8, as a buggy or hostile writer might
    // send it (built without validation; the IPC encoder copies buffers as they are).
    let offsets = Buffer::from_slice_ref([0i32, 2, 4, 6]);
    let values = Buffer::from_slice_ref(b"ok\xff\xfeok");
    let data = unsafe {
        arrow::array::ArrayData::new_unchecked(DataType::Utf8, 3, Some(0), None, 0, vec![offsets, values], vec![])
    };
    let bad = with_column(&base, "comment", Arc::new(StringArray::from(data)));
    let msgs = encoded(&command("logreg"), bad.schema(), vec![bad]).await;
    let m = expect_code(exchange_raw(&mut client, msgs).await, tonic::Code::InvalidArgument, "invalid UTF-8");
    assert!(m.to_lowercase().contains("utf"), "{m}");
    still_serves(&mut client).await;
    worker.stop().await;
}

/// The Flight messages of a fuzz input (`fuzz/fuzz_targets/arrow_to_tensor.rs` layout:
/// signature byte, u16 command length and command, then u32-length-prefixed IPC header
/// and body per message).
fn fuzz_input_messages(bytes: &[u8]) -> Vec<FlightData> {
    let cmd_len = u16::from_le_bytes([bytes[1], bytes[2]]) as usize;
    let mut rest = &bytes[3 + cmd_len..];
    let mut take = |n: usize| {
        let (head, tail) = rest.split_at(n.min(rest.len()));
        rest = tail;
        head.to_vec()
    };
    let mut out = Vec::new();
    loop {
        let len = take(4);
        if len.len() < 4 {
            break;
        }
        let header = take(u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize);
        let body_len = u32::from_le_bytes(take(4).try_into().expect("4 bytes")) as usize;
        let body = take(body_len);
        out.push(FlightData { data_header: header.into(), data_body: body.into(), ..Default::default() });
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipc_messages_that_crash_the_arrow_reader_are_invalid_argument() {
    let worker = Worker::start().await;
    let mut client = worker.client().await;
    // Found by the arrow_to_tensor fuzz target: a dictionary batch whose buffer offset lies
    // far past its body, on which arrow-ipc panics instead of returning an error.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions");
    let mut files: Vec<_> = std::fs::read_dir(&dir).expect("fuzz-regressions").flatten().map(|e| e.path()).collect();
    files.sort();
    assert!(!files.is_empty());
    for file in files {
        let mut msgs = fuzz_input_messages(&std::fs::read(&file).expect("read"));
        assert!(!msgs.is_empty(), "{}", file.display());
        // The schema of these inputs is the pipeline model's (age, income, tenure, city).
        msgs[0].flight_descriptor = Some(descriptor(&command("pipeline")));
        let m = expect_code(exchange_raw(&mut client, msgs).await, tonic::Code::InvalidArgument, "malformed IPC");
        assert!(m.contains("invalid Flight stream"), "{}: {m}", file.display());
        still_serves(&mut client).await;
    }
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_parquet_in_storage_is_invalid_argument() {
    let worker = Worker::start().await;
    let mut client = worker.client().await;
    // A valid file of the model's rows, then two broken copies: random bytes, and the
    // valid file with its column data overwritten (footer and metadata intact).
    let dir = worker.path("lake/in");
    std::fs::create_dir_all(&dir).unwrap();
    let input = rows("logreg");
    let mut good = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut good, input.schema(), None).unwrap();
    w.write(&input).unwrap();
    w.close().unwrap();
    let noise: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let mut scrambled = good.clone();
    let footer = u32::from_le_bytes(scrambled[scrambled.len() - 8..scrambled.len() - 4].try_into().unwrap()) as usize;
    let data_end = scrambled.len() - 8 - footer;
    for (i, b) in scrambled[4..data_end].iter_mut().enumerate() {
        *b ^= noise[i % noise.len()] | 1;
    }
    for (name, bytes) in [("noise", noise.clone()), ("scrambled", scrambled)] {
        std::fs::write(dir.join(format!("{name}.parquet")), &bytes).unwrap();
        let mut cmd = command("logreg");
        cmd["input"] = json!(worker.url(&format!("lake/in/{name}.parquet")));
        cmd["output"] = json!(worker.url(&format!("lake/out-{name}/")));
        let err = match client.do_action(Action::new("score-dataset", serde_json::to_vec(&cmd).unwrap())).await {
            Ok(s) => s.try_collect::<Vec<_>>().await.map(|r| r.len()),
            Err(e) => Err(e),
        }
        .expect_err(name);
        let s = status(err);
        assert_eq!(s.code(), tonic::Code::InvalidArgument, "{name}: {}", s.message());
        assert!(s.message().contains(&format!("{name}.parquet")), "{name}: names the file: {}", s.message());
        assert!(!worker.path(&format!("lake/out-{name}/_delta_log")).exists(), "{name}: no commit");
        still_serves(&mut client).await;
    }
    worker.stop().await;
}

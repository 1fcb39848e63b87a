//! The worker's path for client input on DoExchange / DoPut: a score command and Flight
//! data messages, decoded by the worker's own [`FlightInput`], planned against one of a few
//! model signatures, turned into tensors, and assembled with outputs of the planned shapes.
//! Every step must answer with a `ScoreError` or a result whose shapes hold. Never a panic.
//!
//! Input layout: byte 0 picks the signature; a u16 (little endian) length and the command
//! (protobuf or JSON, as on the wire); then Flight data messages, each a u32 header length,
//! the IPC header (a flatbuffer `Message`, as in `FlightData.data_header`), a u32 body
//! length and the body.

use arrow_flight::FlightData;
use futures::StreamExt;
use lakescore_engine::engine::probe::{OutputShape, ResolvedOutput};
use lakescore_engine::engine::{ElemType, IoInfo, OutputValue, Tensor, TensorData, ValueType};
use lakescore_engine::mapping::{PlanOptions, ScorePlan};
use lakescore_engine::proto::ScoreCommand;
use lakescore_flight::input::FlightInput;

fn tensor(name: &str, elem: ElemType, shape: &[Option<i64>]) -> IoInfo {
    IoInfo { name: name.into(), info: ValueType::Tensor { elem, shape: shape.to_vec() } }
}

/// Model signatures like the ones skl2onnx and other converters write.
fn signature(pick: u8) -> Vec<IoInfo> {
    match pick % 6 {
        0 => vec![tensor("X", ElemType::Float32, &[None, Some(4)])],
        1 => vec![tensor("X", ElemType::Float32, &[None, Some(2), Some(2)])],
        2 => {
            vec![tensor("age", ElemType::Float32, &[None, Some(1)]), tensor("city", ElemType::String, &[None, Some(1)])]
        }
        3 => vec![tensor("X", ElemType::Int64, &[None])],
        4 => vec![tensor("X", ElemType::Float64, &[None, None])],
        _ => vec![tensor("X", ElemType::Bool, &[Some(3), Some(2)])],
    }
}

fn outputs() -> Vec<ResolvedOutput> {
    vec![
        ResolvedOutput { name: "label".into(), shape: OutputShape::Tensor { elem: ElemType::Int64, dims: vec![] } },
        ResolvedOutput {
            name: "probabilities".into(),
            shape: OutputShape::Tensor { elem: ElemType::Float32, dims: vec![2] },
        },
    ]
}

/// Splits `n` bytes off the front of `data`.
fn take<'a>(data: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    (data.len() >= n).then(|| {
        let (head, tail) = data.split_at(n);
        *data = tail;
        head
    })
}

fn take_len(data: &mut &[u8], width: usize) -> Option<usize> {
    let b = take(data, width)?;
    Some(b.iter().rev().fold(0usize, |acc, byte| (acc << 8) | *byte as usize))
}

fn messages(mut data: &[u8]) -> Vec<FlightData> {
    let mut out = Vec::new();
    while let Some(n) = take_len(&mut data, 4) {
        let Some(header) = take(&mut data, n) else { break };
        let body = take_len(&mut data, 4).and_then(|n| take(&mut data, n)).unwrap_or_default();
        out.push(FlightData {
            data_header: header.to_vec().into(),
            data_body: body.to_vec().into(),
            ..Default::default()
        });
    }
    out
}

pub fn check(data: &[u8]) {
    let mut data = data;
    let Some(pick) = take(&mut data, 1) else { return };
    let inputs = signature(pick[0]);
    let Some(cmd) = take_len(&mut data, 2).and_then(|n| take(&mut data, n)) else { return };
    let Ok(cmd) = ScoreCommand::from_bytes(cmd) else { return };
    let mut input = FlightInput::new(futures::stream::iter(messages(data).into_iter().map(Ok)), 64 << 20);
    futures::executor::block_on(async move {
        let Ok(Some(schema)) = input.schema().await else { return };
        // The high bit of the first byte: a model that defines missing values (nulls as NaN).
        let options = PlanOptions { model_defines_missing: pick[0] >= 128, ..Default::default() };
        let Ok(plan) = ScorePlan::new(&cmd, schema, &inputs, &outputs(), options) else { return };
        let mut batches = input.batches();
        while let Some(batch) = batches.next().await {
            let Ok(batch) = batch else { return };
            if plan.check_batch(&batch).is_err() {
                continue;
            }
            let Ok(feeds) = plan.feeds(&batch) else { continue };
            let rows = batch.num_rows();
            for (name, t) in &feeds {
                assert_eq!(t.shape.first().copied(), Some(rows), "input {name}: batch dimension");
                assert_eq!(t.data.len(), t.shape.iter().product::<usize>(), "input {name}: data fits the shape");
            }
            let values = vec![
                OutputValue::Tensor(Tensor { shape: vec![rows], data: TensorData::Int64(vec![1; rows]) }),
                OutputValue::Tensor(Tensor { shape: vec![rows, 2], data: TensorData::Float32(vec![0.5; rows * 2]) }),
            ];
            let out = plan.assemble(&batch, values).expect("outputs of the planned shapes assemble");
            assert_eq!(out.num_rows(), rows);
            assert_eq!(out.schema().fields(), plan.output_schema().fields());
        }
    });
}

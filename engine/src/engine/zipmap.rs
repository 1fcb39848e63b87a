//! Serving `ai.onnx.ml` ZipMap outputs without ZipMap.
//!
//! A ZipMap turns the class-probability tensor `[N, K]` into N maps `{class: p}`; reading
//! those maps back through the ONNX Runtime API costs several calls and allocations per row,
//! more than the model itself for small models. When a ZipMap's output is a graph output
//! (as skl2onnx writes classifiers), the model is rewritten to output the probability
//! tensor instead, and the engine rebuilds the same per-class values from that tensor and
//! the ZipMap's class labels: identical numbers, a fraction of the cost.

use bytes::Bytes;
use lakescore_proto::onnx::{
    tensor_proto, tensor_shape_proto, type_proto, ModelProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use prost::Message;

use super::MapKeys;

/// One ZipMap graph output replaced by its input tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct StrippedZipMap {
    /// The graph output the caller knows (e.g. `output_probability`).
    pub output: String,
    /// The probability tensor now output in its place.
    pub tensor: String,
    /// The class labels, in tensor column order.
    pub keys: MapKeys,
}

/// Rewrite `model` so that every ZipMap whose output is a graph output (and nothing else's
/// input) is removed and its input tensor output instead. `None` when there is nothing to
/// rewrite or the model cannot be decoded (then it is served as it is).
pub fn strip_zipmaps(model: &Bytes) -> Option<(Vec<u8>, Vec<StrippedZipMap>)> {
    let mut proto = ModelProto::decode(model.clone()).ok()?;
    let graph = proto.graph.as_mut()?;
    let mut stripped = Vec::new();
    let mut remove = Vec::new();
    for (index, node) in graph.node.iter().enumerate() {
        if node.op_type() != "ZipMap"
            || node.domain() != "ai.onnx.ml"
            || node.input.len() != 1
            || node.output.len() != 1
        {
            continue;
        }
        let (input, output) = (&node.input[0], &node.output[0]);
        let is_graph_output = graph.output.iter().any(|o| o.name() == output);
        let consumed = graph.node.iter().any(|n| n.input.iter().any(|i| i == output));
        let input_taken =
            graph.output.iter().any(|o| o.name() == input) || graph.input.iter().any(|i| i.name() == input);
        if !is_graph_output || consumed || input_taken {
            continue;
        }
        let mut keys = None;
        for attr in &node.attribute {
            match attr.name() {
                "classlabels_int64s" if !attr.ints.is_empty() => keys = Some(MapKeys::Int64(attr.ints.clone())),
                "classlabels_strings" if !attr.strings.is_empty() => {
                    let labels: Option<Vec<String>> =
                        attr.strings.iter().map(|s| String::from_utf8(s.to_vec()).ok()).collect();
                    keys = labels.map(MapKeys::String);
                }
                _ => {}
            }
        }
        let Some(keys) = keys else { continue };
        stripped.push(StrippedZipMap { output: output.clone(), tensor: input.clone(), keys });
        remove.push(index);
    }
    if stripped.is_empty() {
        return None;
    }
    for index in remove.into_iter().rev() {
        graph.node.remove(index);
    }
    for z in &stripped {
        let slot = graph.output.iter_mut().find(|o| o.name() == z.output)?;
        let dims = vec![
            tensor_shape_proto::Dimension { value: None, denotation: None },
            tensor_shape_proto::Dimension {
                value: Some(tensor_shape_proto::dimension::Value::DimValue(z.keys.len() as i64)),
                denotation: None,
            },
        ];
        *slot = ValueInfoProto {
            name: Some(z.tensor.clone()),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: Some(tensor_proto::DataType::Float as i32),
                    shape: Some(TensorShapeProto { dim: dims }),
                })),
                denotation: None,
            }),
            ..Default::default()
        };
    }
    Some((proto.encode_to_vec(), stripped))
}

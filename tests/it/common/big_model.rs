//! A large but valid ONNX model, built in Rust with tract's protobuf types, for upload
//! benchmarks and for exercising multipart writes to object storage.

use prost::Message;
use tract_onnx::pb;

pub const MODEL_BYTES: usize = 10 << 20;

/// A valid ONNX model (`Y = X + W`) whose float initializer makes it ~10 MB; `seed` changes
/// the weights so that every upload is new content (no dedupe shortcut).
pub fn model_of_10mb(seed: u32) -> Vec<u8> {
    let n = MODEL_BYTES / 4;
    let mut raw = Vec::with_capacity(n * 4);
    for i in 0..n as u32 {
        raw.extend_from_slice(&((i ^ seed) as f32).to_le_bytes());
    }
    let tensor_type = |name: &str| pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: 1,
                shape: Some(pb::TensorShapeProto {
                    dim: vec![pb::tensor_shape_proto::Dimension {
                        denotation: String::new(),
                        value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(n as i64)),
                    }],
                }),
            })),
        }),
        doc_string: String::new(),
    };
    pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 17 }],
        producer_name: "lakescore-bench".into(),
        graph: Some(pb::GraphProto {
            name: "add".into(),
            node: vec![pb::NodeProto {
                input: vec!["X".into(), "W".into()],
                output: vec!["Y".into()],
                name: "add".into(),
                op_type: "Add".into(),
                ..Default::default()
            }],
            initializer: vec![pb::TensorProto {
                dims: vec![n as i64],
                data_type: 1,
                name: "W".into(),
                raw_data: raw,
                ..Default::default()
            }],
            input: vec![tensor_type("X")],
            output: vec![tensor_type("Y")],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

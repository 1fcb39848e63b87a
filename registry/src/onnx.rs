//! ONNX inspection: decode an uploaded ModelProto, reject what cannot be served safely,
//! and read the model's signature (inputs, outputs, opsets, producer) from the file itself.

use std::collections::{HashMap, HashSet};

use prost::Message;
use tract_onnx::pb;

use crate::error::{RegistryError, Result};

/// Operator domains accepted without configuration. Ops from any other domain need the
/// domain to be allow-listed, so a model never reaches a runtime with custom-op libraries.
pub const DEFAULT_ALLOWED_OP_DOMAINS: &[&str] =
    &["", "ai.onnx", "ai.onnx.ml", "com.microsoft", "ai.onnx.preview.training"];

const ML_DOMAIN: &str = "ai.onnx.ml";

pub use lakescore_core::wire::{Dim, OpsetImport, Signature, ValueInfo};

/// Inspect `bytes` as an ONNX model. Anything that is not a servable single-file model is
/// an [`RegistryError::InvalidModel`] whose message says exactly why.
/// A graph that makes a tensor of constant shape larger than `max_tensor_bytes` is refused:
/// no worker with that inference bound could run it.
pub fn inspect(bytes: &[u8], allowed_domains: &[String], max_tensor_bytes: u64) -> Result<Signature> {
    let model = pb::ModelProto::decode(bytes)
        .map_err(|e| invalid(format!("not an ONNX model: protobuf decoding failed ({e})")))?;
    if model.ir_version <= 0 {
        return Err(invalid("not an ONNX model: ir_version is missing"));
    }
    let Some(graph) = model.graph.as_ref() else {
        return Err(invalid("the ModelProto has no graph"));
    };
    if model.opset_import.is_empty() {
        return Err(invalid("the model declares no opset_import"));
    }
    if graph.output.is_empty() {
        return Err(invalid("the graph declares no outputs"));
    }
    check_graph(graph, allowed_domains, true)?;
    check_constant_shapes(graph, max_tensor_bytes)?;
    for f in &model.functions {
        for node in &f.node {
            check_node(node, allowed_domains)?;
        }
    }

    // tract's generated TypeProto only knows tensors; inputs and outputs of classic ML models
    // are often sequences of maps (ZipMap), so their types are read with the fuller messages below.
    let io = IoModel::decode(bytes).map_err(|e| invalid(format!("graph inputs/outputs: {e}")))?;
    let io_graph = io.graph.unwrap_or_default();
    let initializers: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs = io_graph
        .input
        .iter()
        // Before IR 4, initializers were also listed as graph inputs; they are not model inputs.
        .filter(|v| !initializers.contains(v.name.as_str()))
        .map(value_info)
        .collect();
    let outputs = io_graph.output.iter().map(value_info).collect();

    let uses_ai_onnx_ml =
        model.opset_import.iter().any(|o| o.domain == ML_DOMAIN) && graph_uses_domain(graph, ML_DOMAIN);
    Ok(Signature {
        ir_version: model.ir_version,
        producer_name: model.producer_name.clone(),
        producer_version: model.producer_version.clone(),
        graph_name: graph.name.clone(),
        opset_imports: model
            .opset_import
            .iter()
            .map(|o| OpsetImport { domain: o.domain.clone(), version: o.version })
            .collect(),
        uses_ai_onnx_ml,
        inputs,
        outputs,
        metadata: model.metadata_props.iter().map(|p| (p.key.clone(), p.value.clone())).collect(),
    })
}

fn invalid(msg: impl Into<String>) -> RegistryError {
    RegistryError::InvalidModel(msg.into())
}

fn graph_uses_domain(graph: &pb::GraphProto, domain: &str) -> bool {
    graph.node.iter().any(|n| {
        n.domain == domain
            || n.attribute.iter().any(|a| {
                a.g.as_ref().is_some_and(|g| graph_uses_domain(g, domain))
                    || a.graphs.iter().any(|g| graph_uses_domain(g, domain))
            })
    })
}

/// Checks a graph and its subgraphs. `top_level` graphs must be closed: every node input is
/// produced by a graph input, an initializer or an earlier node (subgraphs may capture
/// names from their enclosing scope, so they are not checked for that).
fn check_graph(graph: &pb::GraphProto, allowed_domains: &[String], top_level: bool) -> Result<()> {
    for t in &graph.initializer {
        check_tensor(t)?;
    }
    for s in &graph.sparse_initializer {
        for t in s.values.iter().chain(s.indices.iter()) {
            check_tensor(t)?;
        }
    }
    let mut known: HashSet<&str> =
        graph.input.iter().map(|v| v.name.as_str()).chain(graph.initializer.iter().map(|t| t.name.as_str())).collect();
    for s in &graph.sparse_initializer {
        if let Some(v) = &s.values {
            known.insert(v.name.as_str());
        }
    }
    for node in &graph.node {
        check_node(node, allowed_domains)?;
        if top_level {
            for input in node.input.iter().filter(|i| !i.is_empty()) {
                if !known.contains(input.as_str()) {
                    return Err(invalid(format!(
                        "node '{}' ({}) reads '{}', which no graph input, initializer or earlier node produces",
                        node.name, node.op_type, input
                    )));
                }
            }
        }
        known.extend(node.output.iter().map(String::as_str));
    }
    if top_level {
        for out in &graph.output {
            if !known.contains(out.name.as_str()) {
                return Err(invalid(format!("graph output '{}' is produced by no node", out.name)));
            }
        }
    }
    Ok(())
}

/// Tensors whose shape the graph fixes with constants (`ConstantOfShape`, `Expand` of a
/// constant shape) can be sized without running anything: a file of a few hundred bytes can
/// ask for gigabytes. Shapes computed from the data are out of reach here; the worker's
/// `max_inference_bytes` stops those at run time.
fn check_constant_shapes(graph: &pb::GraphProto, max_bytes: u64) -> Result<()> {
    let mut constants: HashMap<&str, Vec<i64>> =
        graph.initializer.iter().filter_map(|t| Some((t.name.as_str(), small_int64s(t)?))).collect();
    for node in &graph.node {
        for sub in node.attribute.iter().flat_map(|a| a.g.iter().chain(a.graphs.iter())) {
            check_constant_shapes(sub, max_bytes)?;
        }
        if !node.domain.is_empty() {
            continue;
        }
        let attr = |name: &str| node.attribute.iter().find(|a| a.name == name);
        let (shape, width) = match node.op_type.as_str() {
            "Constant" => {
                let value = attr("value").and_then(|a| a.t.as_ref()).and_then(small_int64s);
                let value = value.or_else(|| attr("value_ints").map(|a| a.ints.clone()));
                if let (Some(out), Some(value)) = (node.output.first(), value) {
                    constants.insert(out.as_str(), value);
                }
                continue;
            }
            // Filled with `value`'s type (float when absent).
            "ConstantOfShape" => {
                let value = attr("value").and_then(|a| a.t.as_ref());
                (node.input.first(), value.map_or(Some(4), |t| elem_width(t.data_type)).unwrap_or(1))
            }
            // At least the shape's elements, of a type only known from the input: one byte each.
            "Expand" => (node.input.get(1), 1),
            _ => continue,
        };
        let Some(dims) = shape.and_then(|name| constants.get(name.as_str())) else { continue };
        if dims.iter().any(|&d| d < 0) {
            continue;
        }
        let bytes = dims.iter().try_fold(width, |acc, &d| acc.checked_mul(d as u64));
        if bytes.is_none_or(|b| b > max_bytes) {
            return Err(invalid(format!(
                "node '{}' ({}) makes a tensor of shape {dims:?} ({}), over the registry's max_inference_bytes of \
                 {max_bytes} bytes: no worker could run it",
                node.name,
                node.op_type,
                bytes.map_or("more bytes than fit in 64 bits".to_string(), |b| format!(
                    "{b} bytes, {:.1} GiB",
                    b as f64 / f64::from(1u32 << 30)
                )),
            )));
        }
    }
    Ok(())
}

/// The values of a small int64 tensor (a shape), inline or raw.
fn small_int64s(t: &pb::TensorProto) -> Option<Vec<i64>> {
    const INT64: i32 = 7;
    if t.data_type != INT64 || t.raw_data.len() > 8 * 64 || t.int64_data.len() > 64 {
        return None;
    }
    if !t.int64_data.is_empty() {
        return Some(t.int64_data.clone());
    }
    let chunks = t.raw_data.chunks_exact(8);
    chunks
        .remainder()
        .is_empty()
        .then(|| chunks.map(|c| i64::from_le_bytes(c.try_into().expect("chunks of 8 bytes"))).collect())
}

fn check_node(node: &pb::NodeProto, allowed_domains: &[String]) -> Result<()> {
    if !allowed_domains.contains(&node.domain) {
        return Err(invalid(format!(
            "node '{}' uses op '{}' from domain '{}', which is not allowed (allowed: {})",
            node.name,
            node.op_type,
            node.domain,
            allowed_domains.iter().map(|d| format!("'{d}'")).collect::<Vec<_>>().join(", ")
        )));
    }
    for a in &node.attribute {
        for t in a.t.iter().chain(a.tensors.iter()) {
            check_tensor(t)?;
        }
        for g in a.g.iter().chain(a.graphs.iter()) {
            check_graph(g, allowed_domains, false)?;
        }
    }
    Ok(())
}

/// The registry stores one file per version, so tensors must carry their data inline: a
/// reference to external data would make a runtime open paths chosen by the uploader.
fn check_tensor(t: &pb::TensorProto) -> Result<()> {
    if t.data_location == Some(pb::tensor_proto::DataLocation::External as i32) || !t.external_data.is_empty() {
        let location = t.external_data.iter().find(|e| e.key == "location").map(|e| e.value.as_str()).unwrap_or("");
        let why = if location.starts_with('/') || location.starts_with('\\') || location.contains(':') {
            "an absolute path"
        } else if location.split(['/', '\\']).any(|c| c == "..") {
            "a path that escapes the model directory"
        } else {
            "a file beside the model"
        };
        return Err(invalid(format!(
            "tensor '{}' keeps its data externally at '{location}' ({why}); only single-file models with inline data are accepted",
            t.name
        )));
    }
    if !t.raw_data.is_empty() {
        if let Some(width) = elem_width(t.data_type) {
            let count = t.dims.iter().try_fold(1u64, |acc, &d| u64::try_from(d).ok().and_then(|d| acc.checked_mul(d)));
            let expected = count.and_then(|c| c.checked_mul(width));
            if expected != Some(t.raw_data.len() as u64) {
                return Err(invalid(format!(
                    "tensor '{}' has {} bytes of raw data, but its dims {:?} of {} need {}",
                    t.name,
                    t.raw_data.len(),
                    t.dims,
                    elem_type_name(t.data_type),
                    expected.map_or("an impossible size".to_string(), |e| format!("{e} bytes"))
                )));
            }
        }
    }
    Ok(())
}

/// Bytes per element of fixed-width ONNX element types (None for string and sub-byte types).
fn elem_width(data_type: i32) -> Option<u64> {
    Some(match data_type {
        2 | 3 | 9 | 17..=20 => 1, // uint8, int8, bool, float8 variants
        4 | 5 | 10 | 16 => 2,     // uint16, int16, float16, bfloat16
        1 | 6 | 12 => 4,          // float, int32, uint32
        7 | 11 | 13 | 14 => 8,    // int64, double, uint64, complex64
        15 => 16,                 // complex128
        _ => return None,
    })
}

/// ONNX's names for element types, as used in `tensor(float)`.
pub fn elem_type_name(data_type: i32) -> &'static str {
    match data_type {
        1 => "float",
        2 => "uint8",
        3 => "int8",
        4 => "uint16",
        5 => "int16",
        6 => "int32",
        7 => "int64",
        8 => "string",
        9 => "bool",
        10 => "float16",
        11 => "double",
        12 => "uint32",
        13 => "uint64",
        14 => "complex64",
        15 => "complex128",
        16 => "bfloat16",
        17 => "float8e4m3fn",
        18 => "float8e4m3fnuz",
        19 => "float8e5m2",
        20 => "float8e5m2fnuz",
        21 => "uint4",
        22 => "int4",
        _ => "undefined",
    }
}

fn value_info(v: &IoValueInfo) -> ValueInfo {
    let (elem_type, shape) = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(io_type::Value::TensorType(t) | io_type::Value::SparseTensorType(t)) => (
            Some(elem_type_name(t.elem_type).to_string()),
            t.shape.as_ref().map(|s| {
                s.dim
                    .iter()
                    .map(|d| match &d.value {
                        Some(pb::tensor_shape_proto::dimension::Value::DimValue(n)) => Dim::Fixed(*n),
                        Some(pb::tensor_shape_proto::dimension::Value::DimParam(p)) if !p.is_empty() => {
                            Dim::Symbolic(p.clone())
                        }
                        _ => Dim::Unknown,
                    })
                    .collect()
            }),
        ),
        _ => (None, None),
    };
    ValueInfo { name: v.name.clone(), value_type: type_string(v.r#type.as_ref()), elem_type, shape }
}

fn type_string(t: Option<&IoType>) -> String {
    match t.and_then(|t| t.value.as_ref()) {
        Some(io_type::Value::TensorType(t)) => format!("tensor({})", elem_type_name(t.elem_type)),
        Some(io_type::Value::SparseTensorType(t)) => format!("sparse_tensor({})", elem_type_name(t.elem_type)),
        Some(io_type::Value::SequenceType(s)) => format!("seq({})", type_string(s.elem_type.as_deref())),
        Some(io_type::Value::OptionalType(o)) => format!("optional({})", type_string(o.elem_type.as_deref())),
        Some(io_type::Value::MapType(m)) => {
            format!("map({},{})", elem_type_name(m.key_type), type_string(m.value_type.as_deref()))
        }
        None => "unknown".to_string(),
    }
}

// The slice of onnx.proto needed to read graph input/output types in full (field numbers
// from onnx.proto3). Everything else in the file is skipped by the decoder.
#[derive(Clone, PartialEq, Message)]
struct IoModel {
    #[prost(message, optional, tag = "7")]
    graph: Option<IoGraph>,
}

#[derive(Clone, PartialEq, Message)]
struct IoGraph {
    #[prost(message, repeated, tag = "11")]
    input: Vec<IoValueInfo>,
    #[prost(message, repeated, tag = "12")]
    output: Vec<IoValueInfo>,
}

#[derive(Clone, PartialEq, Message)]
struct IoValueInfo {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "2")]
    r#type: Option<IoType>,
}

#[derive(Clone, PartialEq, Message)]
struct IoType {
    #[prost(oneof = "io_type::Value", tags = "1, 4, 5, 8, 9")]
    value: Option<io_type::Value>,
}

mod io_type {
    use super::pb;

    #[derive(Clone, PartialEq, prost::Oneof)]
    #[allow(clippy::enum_variant_names)] // named after onnx.proto's fields
    pub enum Value {
        #[prost(message, tag = "1")]
        TensorType(Tensor),
        #[prost(message, tag = "4")]
        SequenceType(Sequence),
        #[prost(message, tag = "5")]
        MapType(Map),
        #[prost(message, tag = "8")]
        SparseTensorType(Tensor),
        #[prost(message, tag = "9")]
        OptionalType(Sequence),
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Tensor {
        #[prost(int32, tag = "1")]
        pub elem_type: i32,
        #[prost(message, optional, tag = "2")]
        pub shape: Option<pb::TensorShapeProto>,
    }

    /// Also used for `Optional`, which has the same single field.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sequence {
        #[prost(message, optional, boxed, tag = "1")]
        pub elem_type: Option<Box<super::IoType>>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Map {
        #[prost(int32, tag = "1")]
        pub key_type: i32,
        #[prost(message, optional, boxed, tag = "2")]
        pub value_type: Option<Box<super::IoType>>,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> Vec<String> {
        DEFAULT_ALLOWED_OP_DOMAINS.iter().map(|s| s.to_string()).collect()
    }

    fn tensor_input(name: &str, elem: i32, dims: &[pb::tensor_shape_proto::dimension::Value]) -> pb::ValueInfoProto {
        pb::ValueInfoProto {
            name: name.into(),
            r#type: Some(pb::TypeProto {
                denotation: String::new(),
                value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                    elem_type: elem,
                    shape: Some(pb::TensorShapeProto {
                        dim: dims
                            .iter()
                            .map(|d| pb::tensor_shape_proto::Dimension {
                                denotation: String::new(),
                                value: Some(d.clone()),
                            })
                            .collect(),
                    }),
                })),
            }),
            doc_string: String::new(),
        }
    }

    fn identity_model() -> pb::ModelProto {
        use pb::tensor_shape_proto::dimension::Value as D;
        pb::ModelProto {
            ir_version: 8,
            opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 17 }],
            producer_name: "unit".into(),
            graph: Some(pb::GraphProto {
                name: "g".into(),
                node: vec![pb::NodeProto {
                    input: vec!["x".into()],
                    output: vec!["y".into()],
                    name: "id".into(),
                    op_type: "Identity".into(),
                    ..Default::default()
                }],
                input: vec![tensor_input("x", 1, &[D::DimParam("N".into()), D::DimValue(3)])],
                output: vec![tensor_input("y", 1, &[D::DimParam("N".into()), D::DimValue(3)])],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn reads_symbolic_and_fixed_dims() {
        let sig = inspect(&identity_model().encode_to_vec(), &allowed(), u64::MAX).expect("valid model");
        assert_eq!(sig.inputs.len(), 1);
        assert_eq!(sig.inputs[0].value_type, "tensor(float)");
        assert_eq!(sig.inputs[0].shape, Some(vec![Dim::Symbolic("N".into()), Dim::Fixed(3)]));
        assert!(!sig.uses_ai_onnx_ml);
    }

    #[test]
    fn rejects_dangling_node_input() {
        let mut m = identity_model();
        if let Some(g) = m.graph.as_mut() {
            g.node[0].input[0] = "nowhere".into();
        }
        let err = inspect(&m.encode_to_vec(), &allowed(), u64::MAX).expect_err("dangling input");
        assert!(err.to_string().contains("'nowhere'"), "{err}");
    }

    #[test]
    fn rejects_unlisted_domain() {
        let mut m = identity_model();
        if let Some(g) = m.graph.as_mut() {
            g.node[0].domain = "com.evil".into();
        }
        let err = inspect(&m.encode_to_vec(), &allowed(), u64::MAX).expect_err("custom domain");
        assert!(err.to_string().contains("com.evil"), "{err}");
        let mut with_evil = allowed();
        with_evil.push("com.evil".into());
        inspect(&m.encode_to_vec(), &with_evil, u64::MAX).expect("allow-listed domain");
    }

    #[test]
    fn rejects_empty_bytes() {
        assert!(matches!(inspect(&[], &allowed(), u64::MAX), Err(RegistryError::InvalidModel(_))));
    }
}

#[cfg(test)]
mod backends_tests {
    /// Against the generated models (when present), as registration records it: linear
    /// regression is tract's, tree ensembles and ZipMap classifiers are not (tract), and
    /// the forest is the native engine's.
    #[test]
    fn tract_compatibility_of_generated_models() {
        let dir = std::env::var_os("LAKESCORE_TEST_MODELS")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/models/generated"));
        if !dir.join("linreg.onnx").exists() {
            assert!(std::env::var_os("LAKESCORE_TEST_STRICT").is_none(), "test models missing in {}", dir.display());
            return;
        }
        let allowed: Vec<String> = super::DEFAULT_ALLOWED_OP_DOMAINS.iter().map(|s| s.to_string()).collect();
        let backends = |name: &str| {
            let bytes = std::fs::read(dir.join(name)).expect("model");
            let sig = super::inspect(&bytes, &allowed, u64::MAX).expect("valid");
            lakescore_engine::compatibility::backends(&bytes, &sig)
        };
        let check = |name: &str| backends(name)["tract"].clone();
        assert_eq!(backends("rf.onnx")["trees"], "ok");
        assert_eq!(check("linreg.onnx"), "ok");
        for name in ["rf.onnx", "logreg.onnx", "gbr.onnx"] {
            assert!(check(name).starts_with("unsupported: uses ai.onnx.ml"), "{name}: {}", check(name));
        }
        println!("mlp: {}", check("mlp.onnx"));
    }
}

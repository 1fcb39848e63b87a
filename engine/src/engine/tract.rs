//! tract-onnx: the pure-Rust fallback engine, for the models it runs correctly.
//!
//! tract runs plain tensor graphs (linear models written as MatMul/Add, neural networks)
//! well, but not the classic-ML operators of the `ai.onnx.ml` domain: some are missing
//! (`Scaler`, `TreeEnsembleRegressor`), others load and give wrong answers (binary
//! `TreeEnsembleClassifier` labels). So this engine refuses every model whose graph uses
//! an `ai.onnx.ml` operator, with `FAILED_PRECONDITION` naming the operators, rather than
//! ever serving a wrong prediction.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use lakescore_proto::onnx::{tensor_shape_proto, type_proto, GraphProto, ModelProto, ValueInfoProto};
use prost::Message;
use tract_onnx::prelude::{
    tract_ndarray, tvec, DatumType, Framework, InferenceFact, InferenceModelExt, IntoTValue, IntoTensor, TDim, TValue,
    TVec, TypedFact, TypedOp,
};
use tract_onnx::tract_core::plan::SimplePlan;
use tract_onnx::tract_hir::infer::{GenericFactoid, ShapeFactoid};

use super::{ElemType, Engine, IoInfo, LoadedModel, OutputValue, Tensor, TensorData, ValueType};
use crate::error::{Result, ScoreError};

/// The operator domain tract cannot be trusted with.
pub const ML_DOMAIN: &str = "ai.onnx.ml";

/// The tract-onnx engine.
#[derive(Debug, Clone, Default)]
pub struct TractEngine {
    /// Why ONNX Runtime is not in use, when tract stands in for it (`--backend auto`
    /// without a usable ONNX Runtime): named in the refusal of `ai.onnx.ml` models.
    ort_missing: Option<String>,
}

impl TractEngine {
    /// The tract engine chosen on purpose (`--backend tract`).
    pub fn new() -> Self {
        Self::default()
    }

    /// The tract engine standing in for ONNX Runtime, which could not be loaded for
    /// `reason` (`--backend auto`).
    pub fn fallback(reason: impl fmt::Display) -> Self {
        Self { ort_missing: Some(reason.to_string()) }
    }

    fn refuse_ml(&self, ops: &BTreeSet<String>) -> ScoreError {
        let ops = ops.iter().cloned().collect::<Vec<_>>().join(", ");
        match &self.ort_missing {
            Some(reason) => ScoreError::FailedPrecondition(format!(
                "the model uses {ML_DOMAIN} operators ({ops}), which the tract fallback engine cannot run \
                 correctly; it needs ONNX Runtime: {reason}"
            )),
            None => ScoreError::FailedPrecondition(format!(
                "the model uses {ML_DOMAIN} operators ({ops}), which the tract backend cannot run correctly; \
                 it needs ONNX Runtime (--backend ort or auto)"
            )),
        }
    }
}

/// The `ai.onnx.ml` operator types used anywhere in the model: the main graph, subgraphs
/// of control-flow nodes, and local functions.
pub fn ml_ops(model: &ModelProto) -> BTreeSet<String> {
    fn walk(graph: &GraphProto, found: &mut BTreeSet<String>) {
        for node in &graph.node {
            if node.domain() == ML_DOMAIN {
                found.insert(node.op_type().to_string());
            }
            for attr in &node.attribute {
                if let Some(g) = &attr.g {
                    walk(g, found);
                }
                for g in &attr.graphs {
                    walk(g, found);
                }
            }
        }
    }
    let mut found = BTreeSet::new();
    if let Some(graph) = &model.graph {
        walk(graph, &mut found);
    }
    for function in &model.functions {
        for node in &function.node {
            if node.domain() == ML_DOMAIN {
                found.insert(node.op_type().to_string());
            }
        }
    }
    found
}

fn onnx_elem(elem_type: i32) -> ElemType {
    match elem_type {
        1 => ElemType::Float32,
        11 => ElemType::Float64,
        6 => ElemType::Int32,
        7 => ElemType::Int64,
        9 => ElemType::Bool,
        8 => ElemType::String,
        other => ElemType::Other(format!("onnx element type {other}")),
    }
}

/// The declared type of a graph input or output, as ONNX Runtime reports it: fixed dims
/// as numbers, symbolic or unnamed ones as `None`.
fn declared(v: &ValueInfoProto) -> IoInfo {
    let info = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(t)) => ValueType::Tensor {
            elem: onnx_elem(t.elem_type()),
            shape: t
                .shape
                .as_ref()
                .map(|s| {
                    s.dim
                        .iter()
                        .map(|d| match d.value {
                            Some(tensor_shape_proto::dimension::Value::DimValue(v)) if v >= 0 => Some(v),
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default(),
        },
        Some(_) => ValueType::Other { description: "a non-tensor value".into() },
        None => ValueType::Other { description: "an untyped value".into() },
    };
    IoInfo { name: v.name().to_string(), info }
}

fn tract_err(what: &str) -> impl Fn(tract_onnx::prelude::TractError) -> ScoreError + '_ {
    move |e| ScoreError::FailedPrecondition(format!("{what}: {e:#}"))
}

impl Engine for TractEngine {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn load(&self, model: bytes::Bytes) -> Result<Box<dyn LoadedModel>> {
        let proto = ModelProto::decode(model.clone())
            .map_err(|e| ScoreError::FailedPrecondition(format!("not an ONNX model: {e}")))?;
        let ml = ml_ops(&proto);
        if !ml.is_empty() {
            return Err(self.refuse_ml(&ml));
        }
        let graph =
            proto.graph.as_ref().ok_or_else(|| ScoreError::FailedPrecondition("the model has no graph".into()))?;
        let initializers: BTreeSet<&str> = graph.initializer.iter().map(|t| t.name()).collect();
        let inputs: Vec<IoInfo> =
            graph.input.iter().filter(|i| !initializers.contains(i.name())).map(declared).collect();
        let outputs: Vec<IoInfo> = graph.output.iter().map(declared).collect();
        for io in inputs.iter().chain(&outputs) {
            if let ValueType::Tensor { elem: ElemType::Other(t), .. } = &io.info {
                return Err(ScoreError::FailedPrecondition(format!(
                    "the tract backend cannot serve '{}': {t} is not supported",
                    io.name
                )));
            }
            if !matches!(io.info, ValueType::Tensor { .. }) {
                return Err(ScoreError::FailedPrecondition(format!(
                    "the tract backend serves tensors only; '{}' is {}",
                    io.name, io.info
                )));
            }
        }

        let cannot = "tract cannot load the model";
        let mut inference = tract_onnx::onnx().model_for_read(&mut model.as_ref()).map_err(tract_err(cannot))?;
        let n_inputs = inference.input_outlets().map_err(tract_err(cannot))?.len();
        if n_inputs != inputs.len() {
            return Err(ScoreError::FailedPrecondition(format!(
                "{cannot}: it sees {n_inputs} inputs, the graph declares {}",
                inputs.len()
            )));
        }
        // Unknown dimensions (skl2onnx leaves the batch dimension unnamed) become symbols, so
        // that one optimized plan serves every batch size: the first dimension of every
        // input is the shared batch symbol `N`, any other unknown one gets its own.
        let batch = inference.symbols.sym("N");
        for ix in 0..n_inputs {
            let fact = inference.input_fact(ix).map_err(tract_err(cannot))?.clone();
            if fact.shape.is_open() {
                continue;
            }
            let dims: TVec<GenericFactoid<TDim>> = fact
                .shape
                .dims()
                .enumerate()
                .map(|(axis, d)| match d {
                    GenericFactoid::Only(d) => GenericFactoid::Only(d.clone()),
                    GenericFactoid::Any if axis == 0 => GenericFactoid::Only(TDim::from(batch.clone())),
                    GenericFactoid::Any => {
                        GenericFactoid::Only(TDim::from(inference.symbols.sym(&format!("d{ix}_{axis}"))))
                    }
                })
                .collect();
            let fact = InferenceFact { shape: ShapeFactoid::closed(dims), ..fact };
            inference.set_input_fact(ix, fact).map_err(tract_err(cannot))?;
        }
        let typed = inference.into_optimized().map_err(tract_err(cannot))?;
        let input_types: Vec<DatumType> = (0..n_inputs)
            .map(|ix| typed.input_fact(ix).map(|f| f.datum_type))
            .collect::<std::result::Result<_, _>>()
            .map_err(tract_err(cannot))?;
        let n_outputs = typed.output_outlets().map_err(tract_err(cannot))?.len();
        if n_outputs != outputs.len() {
            return Err(ScoreError::FailedPrecondition(format!(
                "{cannot}: it has {n_outputs} outputs, the graph declares {}",
                outputs.len()
            )));
        }
        let plan = SimplePlan::new(typed).map_err(tract_err(cannot))?;
        Ok(Box::new(TractModel { plan, inputs, input_types, outputs }))
    }
}

type Plan = SimplePlan<TypedFact, Box<dyn TypedOp>>;

struct TractModel {
    plan: Arc<Plan>,
    inputs: Vec<IoInfo>,
    /// The element type tract expects for each input, in input order.
    input_types: Vec<DatumType>,
    outputs: Vec<IoInfo>,
}

fn to_tract(name: &str, expected: DatumType, tensor: Tensor) -> Result<TValue> {
    let what = format!("model input '{name}'");
    let shape = tract_ndarray::IxDyn(&tensor.shape);
    let bad_shape = |e: tract_ndarray::ShapeError| {
        ScoreError::InvalidArgument(format!("{what}: values do not fit the shape {:?}: {e}", tensor.shape))
    };
    let got = tensor.data.elem();
    let t = match tensor.data {
        TensorData::Float32(v) if expected == DatumType::F32 => {
            tract_ndarray::ArrayD::from_shape_vec(shape, v).map_err(bad_shape)?.into_tensor()
        }
        TensorData::Float64(v) if expected == DatumType::F64 => {
            tract_ndarray::ArrayD::from_shape_vec(shape, v).map_err(bad_shape)?.into_tensor()
        }
        TensorData::Int32(v) if expected == DatumType::I32 => {
            tract_ndarray::ArrayD::from_shape_vec(shape, v).map_err(bad_shape)?.into_tensor()
        }
        TensorData::Int64(v) if expected == DatumType::I64 => {
            tract_ndarray::ArrayD::from_shape_vec(shape, v).map_err(bad_shape)?.into_tensor()
        }
        TensorData::Bool(v) if expected == DatumType::Bool => {
            tract_ndarray::ArrayD::from_shape_vec(shape, v).map_err(bad_shape)?.into_tensor()
        }
        TensorData::String(v) if expected == DatumType::String => {
            tract_ndarray::ArrayD::from_shape_vec(shape, v).map_err(bad_shape)?.into_tensor()
        }
        _ => {
            return Err(ScoreError::InvalidArgument(format!(
                "{what}: got {got} values, the model expects {expected:?}"
            )))
        }
    };
    Ok(t.into_tvalue())
}

fn from_tract(name: &str, value: &TValue) -> Result<OutputValue> {
    let what = format!("model output '{name}'");
    let err = |e: tract_onnx::prelude::TractError| ScoreError::Internal(format!("{what}: {e:#}"));
    let shape = value.shape().to_vec();
    let data = match value.datum_type() {
        DatumType::F32 => {
            TensorData::Float32(value.to_plain_array_view::<f32>().map_err(err)?.iter().copied().collect())
        }
        DatumType::F64 => {
            TensorData::Float64(value.to_plain_array_view::<f64>().map_err(err)?.iter().copied().collect())
        }
        DatumType::I32 => TensorData::Int32(value.to_plain_array_view::<i32>().map_err(err)?.iter().copied().collect()),
        DatumType::I64 => TensorData::Int64(value.to_plain_array_view::<i64>().map_err(err)?.iter().copied().collect()),
        DatumType::Bool => {
            TensorData::Bool(value.to_plain_array_view::<bool>().map_err(err)?.iter().copied().collect())
        }
        DatumType::String => {
            TensorData::String(value.to_plain_array_view::<String>().map_err(err)?.iter().cloned().collect())
        }
        other => {
            return Err(ScoreError::FailedPrecondition(format!(
                "{what} has element type {other:?}, which lakescore cannot return"
            )))
        }
    };
    Ok(OutputValue::Tensor(Tensor { shape, data }))
}

impl LoadedModel for TractModel {
    fn engine(&self) -> &'static str {
        "tract"
    }

    fn inputs(&self) -> &[IoInfo] {
        &self.inputs
    }

    fn outputs(&self) -> &[IoInfo] {
        &self.outputs
    }

    fn run(&self, inputs: Vec<(String, Tensor)>) -> Result<Vec<OutputValue>> {
        let mut slots: Vec<Option<Tensor>> = vec![None; self.inputs.len()];
        for (name, tensor) in inputs {
            let ix = self
                .inputs
                .iter()
                .position(|i| i.name == name)
                .ok_or_else(|| ScoreError::InvalidArgument(format!("the model has no input '{name}'")))?;
            slots[ix] = Some(tensor);
        }
        let mut values: TVec<TValue> = tvec![];
        for ((slot, io), dt) in slots.into_iter().zip(&self.inputs).zip(&self.input_types) {
            let tensor =
                slot.ok_or_else(|| ScoreError::InvalidArgument(format!("no value for model input '{}'", io.name)))?;
            values.push(to_tract(&io.name, *dt, tensor)?);
        }
        let results = self.plan.run(values).map_err(|e| ScoreError::Internal(format!("tract run failed: {e:#}")))?;
        if results.len() != self.outputs.len() {
            return Err(ScoreError::Internal(format!(
                "tract returned {} outputs, the model declares {}",
                results.len(),
                self.outputs.len()
            )));
        }
        self.outputs.iter().zip(&results).map(|(io, v)| from_tract(&io.name, v)).collect()
    }
}

#[cfg(test)]
mod tests {
    use lakescore_proto::onnx::NodeProto;

    use super::*;

    #[test]
    fn finds_ml_ops_in_graphs_and_subgraphs() {
        let node = |op: &str, domain: Option<&str>| NodeProto {
            op_type: Some(op.into()),
            domain: domain.map(Into::into),
            ..Default::default()
        };
        let mut model = ModelProto {
            graph: Some(GraphProto { node: vec![node("MatMul", None), node("Add", Some(""))], ..Default::default() }),
            ..Default::default()
        };
        assert!(ml_ops(&model).is_empty());
        let inner = GraphProto { node: vec![node("TreeEnsembleClassifier", Some(ML_DOMAIN))], ..Default::default() };
        let mut iff = node("If", None);
        iff.attribute.push(lakescore_proto::onnx::AttributeProto { g: Some(inner), ..Default::default() });
        if let Some(g) = model.graph.as_mut() {
            g.node.push(iff);
            g.node.push(node("ZipMap", Some(ML_DOMAIN)));
        }
        let found: Vec<String> = ml_ops(&model).into_iter().collect();
        assert_eq!(found, vec!["TreeEnsembleClassifier".to_string(), "ZipMap".to_string()]);
    }

    #[test]
    fn refusals_name_the_ops_and_the_missing_engine() {
        let ops: BTreeSet<String> = ["LinearClassifier".to_string(), "ZipMap".to_string()].into();
        let e = TractEngine::new().refuse_ml(&ops);
        assert!(matches!(e, ScoreError::FailedPrecondition(_)));
        assert!(e.message().contains("LinearClassifier, ZipMap"), "{e}");
        let e = TractEngine::fallback("ONNX Runtime 1.31.x not found").refuse_ml(&ops);
        assert!(e.message().contains("needs ONNX Runtime: ONNX Runtime 1.31.x not found"), "{e}");
    }

    #[test]
    fn garbage_is_refused_not_a_panic() {
        let e = TractEngine::new().load(bytes::Bytes::from_static(b"\xff\xff not onnx")).err();
        assert!(matches!(e, Some(ScoreError::FailedPrecondition(_))), "{e:?}");
    }
}

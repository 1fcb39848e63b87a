//! Inference engines behind one trait, and the engine-neutral tensor types that the
//! Arrow mapping layer ([`crate::mapping`]) produces and consumes.

#[cfg(feature = "ort")]
pub mod ort;
pub mod probe;
#[cfg(feature = "tract")]
pub mod tract;
pub mod trees;
pub mod zipmap;

use std::fmt;

use serde::Serialize;

use crate::error::Result;

/// Tensor element types the worker understands.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ElemType {
    /// `float`
    Float32,
    /// `double`
    Float64,
    /// `int32`
    Int32,
    /// `int64`
    Int64,
    /// `bool`
    Bool,
    /// `string`
    String,
    /// Any other ONNX element type (not fed or read by the mapping layer).
    Other(String),
}

impl fmt::Display for ElemType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ElemType::Float32 => f.write_str("float32"),
            ElemType::Float64 => f.write_str("float64"),
            ElemType::Int32 => f.write_str("int32"),
            ElemType::Int64 => f.write_str("int64"),
            ElemType::Bool => f.write_str("bool"),
            ElemType::String => f.write_str("string"),
            ElemType::Other(o) => f.write_str(o),
        }
    }
}

/// The type of a model input or output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ValueType {
    /// A tensor; `None` dims are symbolic or unknown.
    Tensor {
        /// Element type.
        elem: ElemType,
        /// Dimensions (`None` = symbolic / unknown).
        shape: Vec<Option<i64>>,
    },
    /// `seq(map(key, value))`: the `ai.onnx.ml` ZipMap output.
    SeqMap {
        /// Key type (`int64` or `string`).
        key: ElemType,
        /// Value type (`float32` in practice).
        value: ElemType,
    },
    /// Anything else, described.
    Other {
        /// A description of the type.
        description: String,
    },
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueType::Tensor { elem, shape } => {
                write!(f, "tensor({elem})[")?;
                for (i, d) in shape.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    match d {
                        Some(d) => write!(f, "{d}")?,
                        None => f.write_str("N")?,
                    }
                }
                f.write_str("]")
            }
            ValueType::SeqMap { key, value } => write!(f, "seq(map({key}, {value}))"),
            ValueType::Other { description } => f.write_str(description),
        }
    }
}

/// A named model input or output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IoInfo {
    /// Name in the graph.
    pub name: String,
    /// Its type.
    #[serde(flatten)]
    pub info: ValueType,
}

/// Dense tensor data, row-major.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// float32
    Float32(Vec<f32>),
    /// float64
    Float64(Vec<f64>),
    /// int32
    Int32(Vec<i32>),
    /// int64
    Int64(Vec<i64>),
    /// bool
    Bool(Vec<bool>),
    /// string
    String(Vec<String>),
}

impl TensorData {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            TensorData::Float32(v) => v.len(),
            TensorData::Float64(v) => v.len(),
            TensorData::Int32(v) => v.len(),
            TensorData::Int64(v) => v.len(),
            TensorData::Bool(v) => v.len(),
            TensorData::String(v) => v.len(),
        }
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type.
    pub fn elem(&self) -> ElemType {
        match self {
            TensorData::Float32(_) => ElemType::Float32,
            TensorData::Float64(_) => ElemType::Float64,
            TensorData::Int32(_) => ElemType::Int32,
            TensorData::Int64(_) => ElemType::Int64,
            TensorData::Bool(_) => ElemType::Bool,
            TensorData::String(_) => ElemType::String,
        }
    }
}

/// A dense tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Row-major data; `data.len()` is the product of `shape`.
    pub data: TensorData,
}

/// Keys of a `seq(map(key, value))` output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapKeys {
    /// int64 class labels.
    Int64(Vec<i64>),
    /// string class labels.
    String(Vec<String>),
}

impl MapKeys {
    /// Number of keys.
    pub fn len(&self) -> usize {
        match self {
            MapKeys::Int64(k) => k.len(),
            MapKeys::String(k) => k.len(),
        }
    }

    /// True when there are no keys.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The keys as strings (for column names).
    pub fn labels(&self) -> Vec<String> {
        match self {
            MapKeys::Int64(k) => k.iter().map(i64::to_string).collect(),
            MapKeys::String(k) => k.clone(),
        }
    }
}

/// One model output after a run.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputValue {
    /// A tensor.
    Tensor(Tensor),
    /// `seq(map)`: one map per row, all with the same keys; `values` is row-major
    /// `[rows, keys.len()]` in the order of `keys`.
    SeqMap {
        /// The keys (class labels), in column order.
        keys: MapKeys,
        /// Row-major values (`Float32` or `Float64`).
        values: TensorData,
        /// Number of rows (maps).
        rows: usize,
    },
}

/// Whether a model defines what a missing value is: its graph has a tree ensemble
/// (`TreeEnsembleClassifier`, `TreeEnsembleRegressor`, `TreeEnsemble`: each split says where
/// `NaN` goes, as LightGBM and XGBoost learned it) or an `Imputer` (which replaces it). With
/// `missing: auto`, nulls in such a model's float inputs reach it as `NaN`. Bytes that do not
/// decode define nothing (the engine refuses them on its own).
pub fn defines_missing_values(model: &[u8]) -> bool {
    use prost::Message;
    let Ok(model) = lakescore_proto::onnx::ModelProto::decode(model) else { return false };
    let graph_nodes = model.graph.iter().flat_map(|g| g.node.iter());
    let function_nodes = model.functions.iter().flat_map(|f| f.node.iter());
    graph_nodes.chain(function_nodes).any(|n| {
        n.domain() == "ai.onnx.ml"
            && matches!(n.op_type(), "TreeEnsembleClassifier" | "TreeEnsembleRegressor" | "TreeEnsemble" | "Imputer")
    })
}

/// An inference engine: turns ONNX bytes into a runnable model.
pub trait Engine: Send + Sync + 'static {
    /// Short engine name (`ort`, `trees`, `tract`).
    fn name(&self) -> &'static str;

    /// Load a model from its ONNX bytes. Blocking (call from a blocking thread).
    fn load(&self, model: bytes::Bytes) -> Result<Box<dyn LoadedModel>>;
}

/// A loaded, runnable model. `run` is blocking and may be called from several threads.
pub trait LoadedModel: Send + Sync + 'static {
    /// The engine running it (`ort`, `trees`, `linear`, `tract`): an engine may hand some
    /// models to another.
    fn engine(&self) -> &'static str;

    /// Graph inputs, in graph order.
    fn inputs(&self) -> &[IoInfo];

    /// Graph outputs, in graph order.
    fn outputs(&self) -> &[IoInfo];

    /// Run the model on named inputs; returns every output, in [`Self::outputs`] order.
    fn run(&self, inputs: Vec<(String, Tensor)>) -> Result<Vec<OutputValue>>;

    /// Whether the model reads its one `[N, F]` float32 input a feature column at a time
    /// ([`Self::run_columns`]): the worker then hands it a batch's columns where they are,
    /// instead of interleaving them into a row-major tensor first. The native linear engine
    /// does.
    fn takes_columns(&self) -> bool {
        false
    }

    /// Run the model on its one `[N, F]` float32 input given as its F feature columns of
    /// `rows` values each, in feature order; only called when [`Self::takes_columns`].
    fn run_columns(&self, columns: &[&[f32]], rows: usize) -> Result<Vec<OutputValue>> {
        let _ = (columns, rows);
        Err(crate::error::ScoreError::internal("this model takes tensors, not columns"))
    }
}

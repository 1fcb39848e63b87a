//! lakescore's native engine for the classical models most tabular scoring runs: tree
//! ensembles and linear models.
//!
//! Most tabular models are tree ensembles (random forests, gradient boosting from
//! scikit-learn, LightGBM or XGBoost), exported to ONNX as one `ai.onnx.ml`
//! `TreeEnsembleClassifier` or `TreeEnsembleRegressor` (or opset 5's `TreeEnsemble`) with a
//! `Cast` on the label, a `ZipMap` on the scores, `Identity` nodes and (onnxmltools'
//! LightGBM classifiers) a multiplication of the probabilities by one around it; most of the
//! rest are linear (`LinearClassifier` / `LinearRegressor`, often with a `Normalizer`).
//! [`NativeModel::compile`] turns such a graph into a compact evaluator. Linear models are
//! one float32 multiply-add pass over blocks of rows ([`linear`]); tree ensembles
//! ([`ensemble`] compiles them, [`eval`] walks them) have nodes 16 bytes each in depth-first
//! order (24 in double precision), trees walked over blocks of rows so that a tree stays in
//! cache, sixteen rows at a time in lock-step without data-dependent branches, all cores.
//! Its outputs are ONNX Runtime's: the same comparisons, the same accumulation in tree order
//! in the same precision (double for double input, `*_as_tensor` or not), and the same
//! finalisation rules (base values, binary cases, post-transforms, `PROBIT` included).
//!
//! A graph it does not fully cover (another operator, an attribute it does not know, a
//! post-transform it does not implement) is [`Unsupported`], with the reason: the worker then
//! runs it on ONNX Runtime. Nothing here panics on a hostile model; every index is checked
//! when the graph is compiled.
//!
//! It depends on no other lakescore crate (only the ONNX protobuf types): the worker's
//! `lakescore-engine` adapts it to its `Engine` trait.

mod ensemble;
mod eval;
mod linear;

use std::collections::HashMap;
use std::fmt;

use lakescore_proto::onnx::{
    attribute_proto, tensor_proto, type_proto, AttributeProto, ModelProto, NodeProto, TensorProto,
};
use prost::Message;

use ensemble::Forest;
pub use eval::Predictions;
use eval::{Kind, PostTransform};
use linear::{Features, Linear, LinearKind};

/// Why a model is not covered by the native engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported(pub String);

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unsupported {}

pub(crate) fn unsupported<T>(why: impl Into<String>) -> Result<T, Unsupported> {
    Err(Unsupported(why.into()))
}

/// The element type of the model's input tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputType {
    /// `tensor(float)`
    Float32,
    /// `tensor(double)`
    Float64,
}

/// A classifier's class labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClassLabels {
    /// `classlabels_int64s`
    Int64(Vec<i64>),
    /// `classlabels_strings`
    String(Vec<String>),
}

impl ClassLabels {
    fn len(&self) -> usize {
        match self {
            ClassLabels::Int64(l) => l.len(),
            ClassLabels::String(l) => l.len(),
        }
    }
}

/// What one graph output holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputKind {
    /// The predicted label per row, `[N]` (int64 or string, as the class labels).
    Label,
    /// Class scores `[N, classes]` or regression values `[N, targets]`, float32.
    Scores,
    /// The class scores as `seq(map(label, float))` (ZipMap), with these keys.
    ZipMap(ClassLabels),
}

/// A graph output and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphOutput {
    /// Its name in the graph.
    pub name: String,
    /// What it holds.
    pub kind: OutputKind,
}

/// A compiled graph: one tree ensemble or linear model, and what is allowed around it.
#[derive(Debug, Clone)]
pub struct NativeModel {
    /// The graph input's name.
    pub input: String,
    /// Its element type.
    pub input_type: InputType,
    /// Features per row (the input's second dimension).
    pub n_features: usize,
    /// The graph outputs, in graph order.
    pub outputs: Vec<GraphOutput>,
    estimator: Estimator,
    /// A `Normalizer` on the scores, on the way to every output that holds them.
    normalizer: Option<Norm>,
}

/// The one model node of the graph.
#[derive(Debug, Clone)]
enum Estimator {
    Trees(Forest),
    Linear(Linear),
}

impl Estimator {
    fn class_labels(&self) -> Option<&ClassLabels> {
        match self {
            Estimator::Trees(f) => match f.kind() {
                Kind::Classifier { labels, .. } => Some(labels),
                Kind::Regressor { .. } => None,
            },
            Estimator::Linear(Linear { kind: LinearKind::Classifier { labels }, .. }) => Some(labels),
            _ => None,
        }
    }
}

/// `ai.onnx.ml` `Normalizer`'s `norm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Norm {
    Max,
    L1,
    L2,
}

impl NativeModel {
    /// Compile an ONNX model whose graph is a single tree ensemble or linear model (with
    /// `Cast`, `Identity`, `Normalizer`, `ZipMap` and a `Mul` by one around it); anything
    /// else is [`Unsupported`], saying why.
    pub fn compile(model: &[u8]) -> Result<Self, Unsupported> {
        let model = ModelProto::decode(model).map_err(|e| Unsupported(format!("not an ONNX model ({e})")))?;
        let Some(graph) = model.graph.as_ref() else { return unsupported("the model has no graph") };
        if !graph.sparse_initializer.is_empty() || !model.functions.is_empty() {
            return unsupported("the graph has sparse initializers or functions");
        }
        let initializers: Vec<&str> = graph.initializer.iter().map(|t| t.name()).collect();
        let inputs: Vec<_> = graph.input.iter().filter(|i| !initializers.contains(&i.name())).collect();
        let [input] = inputs.as_slice() else {
            return unsupported(format!("the graph has {} inputs; the native engine takes one", inputs.len()));
        };
        let Some(type_proto::Value::TensorType(tensor)) = input.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
            return unsupported("the graph input is not a tensor");
        };
        let input_type = match tensor_proto::DataType::try_from(tensor.elem_type()) {
            Ok(tensor_proto::DataType::Float) => InputType::Float32,
            Ok(tensor_proto::DataType::Double) => InputType::Float64,
            _ => return unsupported("the graph input is neither float nor double"),
        };
        let dims = tensor.shape.as_ref().map(|s| s.dim.as_slice()).unwrap_or_default();
        let n_features = match dims {
            [_, width] => match width.value {
                Some(lakescore_proto::onnx::tensor_shape_proto::dimension::Value::DimValue(w)) if w > 0 => w as usize,
                _ => return unsupported("the graph input's feature dimension is not fixed"),
            },
            _ => return unsupported("the graph input is not [N, features]"),
        };

        // The one model node, and what is allowed around it.
        let mut model_node: Option<&NodeProto> = None;
        for node in &graph.node {
            let ml = node.domain() == "ai.onnx.ml";
            match (node.op_type(), ml) {
                (
                    "TreeEnsembleClassifier"
                    | "TreeEnsembleRegressor"
                    | "TreeEnsemble"
                    | "LinearClassifier"
                    | "LinearRegressor",
                    true,
                ) => {
                    if model_node.replace(node).is_some() {
                        return unsupported("the graph has more than one model node (tree ensemble or linear model)");
                    }
                }
                ("Normalizer", true) => {}
                ("Cast" | "Identity" | "ZipMap", _) if node.domain().is_empty() || ml => {}
                // Checked where it sits: only a multiplication of the scores by one.
                ("Mul", false) if node.domain().is_empty() => {}
                (op, _) => {
                    return unsupported(format!("the graph has a {op} node, which the native engine does not run"))
                }
            }
        }
        let Some(node) = model_node else { return unsupported("the graph has no tree ensemble or linear model") };
        let [model_input] = node.input.as_slice() else {
            return unsupported(format!("the {} has several inputs", node.op_type()));
        };
        let linear = node.op_type().starts_with("Linear");
        // ONNX Runtime's LinearClassifier rounds any input to float32; its LinearRegressor
        // takes float32 only.
        let mut cast_input = linear && input_type == InputType::Float64;
        if model_input == input.name() {
            if node.op_type() == "LinearRegressor" && cast_input {
                return unsupported("a LinearRegressor on double input (ONNX Runtime takes float only)");
            }
        } else {
            // Only a Cast of the graph input to float may sit in between.
            let cast = graph.node.iter().find(|n| n.output.iter().any(|o| o == model_input));
            match cast {
                Some(c)
                    if c.op_type() == "Cast"
                        && c.input.first().map(String::as_str) == Some(input.name())
                        && attr_int(c, "to") == Some(tensor_proto::DataType::Float as i64)
                        && c.attribute.len() == 1 =>
                {
                    cast_input = input_type == InputType::Float64;
                }
                _ => return unsupported(format!("the {} is not fed by the graph input", node.op_type())),
            }
        }
        let estimator = if linear {
            Estimator::Linear(compile_linear(node, n_features)?)
        } else {
            // ONNX Runtime computes a tree ensemble in its input's type: double input not
            // cast to float is compared, summed and finished in double.
            let double = input_type == InputType::Float64 && !cast_input;
            Estimator::Trees(ensemble::compile(node, n_features, double)?)
        };
        let initializer: HashMap<&str, &TensorProto> = graph.initializer.iter().map(|t| (t.name(), t)).collect();

        // Each graph output: the label, the scores, or the scores zipped, through Cast,
        // Identity, Normalizer and ZipMap nodes.
        let producer: HashMap<&str, &NodeProto> =
            graph.node.iter().flat_map(|n| n.output.iter().map(move |o| (o.as_str(), n))).collect();
        let classifier = estimator.class_labels().is_some();
        let label_name = if classifier { node.output.first() } else { None };
        let scores_name = if classifier { node.output.get(1) } else { node.output.first() };
        let mut outputs = Vec::new();
        // Per output that holds scores: whether it is normalized, and how.
        let mut norms: Vec<Option<Norm>> = Vec::new();
        for out in &graph.output {
            let mut name = out.name();
            let mut zipmap = None;
            let mut normalizer = None;
            // A Cast to int64 or a multiplication by one seen on the way back.
            let (mut cast, mut scaled) = (false, false);
            // Each step goes one node back: more steps than nodes is a cycle.
            let mut steps = 0;
            let kind = loop {
                steps += 1;
                if steps > graph.node.len() + 1 {
                    return unsupported(format!("graph output '{}' is computed in a cycle", out.name()));
                }
                if Some(name) == label_name.map(String::as_str) {
                    if zipmap.is_some() || normalizer.is_some() || scaled {
                        return unsupported("a ZipMap, Normalizer or Mul over the label");
                    }
                    if cast && !matches!(estimator.class_labels(), Some(ClassLabels::Int64(_))) {
                        return unsupported("a Cast of string labels");
                    }
                    break OutputKind::Label;
                }
                if Some(name) == scores_name.map(String::as_str) {
                    if cast {
                        return unsupported("a Cast of the scores");
                    }
                    norms.push(normalizer);
                    break zipmap.map_or(OutputKind::Scores, OutputKind::ZipMap);
                }
                let Some(n) = producer.get(name) else {
                    return unsupported(format!(
                        "graph output '{}' does not come from the {}",
                        out.name(),
                        node.op_type()
                    ));
                };
                if n.op_type() == "Mul" {
                    // A multiplication by a constant one (onnxmltools' LightGBM classifiers
                    // have one on their probabilities): x · 1 is x, NaN and signs included.
                    let from = match n.input.as_slice() {
                        [a, b] if n.attribute.is_empty() && is_one(&initializer, b) => a,
                        [a, b] if n.attribute.is_empty() && is_one(&initializer, a) => b,
                        _ => return unsupported(format!("a Mul around the {} other than by one", node.op_type())),
                    };
                    scaled = true;
                    name = from;
                    continue;
                }
                let [from] = n.input.as_slice() else {
                    return unsupported(format!("a node around the {} has several inputs", node.op_type()));
                };
                match n.op_type() {
                    "Identity" => {}
                    "Cast" => {
                        // Only the int64 label cast to int64 (skl2onnx's `output_label`,
                        // onnxmltools' `label`), checked when the path reaches the label.
                        if attr_int(n, "to") != Some(tensor_proto::DataType::Int64 as i64)
                            || n.attribute.len() != 1
                            || zipmap.is_some()
                            || normalizer.is_some()
                            || scaled
                        {
                            return unsupported("a Cast other than the int64 label to int64");
                        }
                        cast = true;
                    }
                    "ZipMap" => {
                        let Some(labels) = estimator.class_labels() else {
                            return unsupported("a ZipMap over a regressor");
                        };
                        let keys = zipmap_labels(n)?;
                        if &keys != labels || zipmap.is_some() || normalizer.is_some() || scaled || cast {
                            return unsupported("a ZipMap whose labels are not the classifier's");
                        }
                        zipmap = Some(keys);
                    }
                    "Normalizer" => {
                        let norm = match n.attribute.as_slice() {
                            [] => Norm::Max,
                            [a] if a.name() == "norm" => match a.s.as_deref() {
                                Some(b"MAX") => Norm::Max,
                                Some(b"L1") => Norm::L1,
                                Some(b"L2") => Norm::L2,
                                _ => return unsupported("a Normalizer with a norm other than MAX, L1 or L2"),
                            },
                            _ => return unsupported("a Normalizer with attributes other than norm"),
                        };
                        if normalizer.replace(norm).is_some() {
                            return unsupported("two Normalizers in a row");
                        }
                    }
                    op => return unsupported(format!("a {op} node around the {}", node.op_type())),
                }
                name = from;
            };
            outputs.push(GraphOutput { name: out.name().to_string(), kind });
        }
        let normalizer = norms.first().copied().flatten();
        if norms.iter().any(|n| *n != normalizer) {
            return unsupported("the scores reach some outputs through a Normalizer and others not");
        }
        Ok(Self { input: input.name().to_string(), input_type, n_features, outputs, estimator, normalizer })
    }

    /// The class labels, for a classifier.
    pub fn class_labels(&self) -> Option<&ClassLabels> {
        self.estimator.class_labels()
    }

    /// Scores per row: classes for a classifier, targets for a regressor.
    pub fn width(&self) -> usize {
        match &self.estimator {
            Estimator::Trees(f) => f.width(),
            Estimator::Linear(l) => l.width(),
        }
    }

    /// Number of trees (0 for a linear model).
    pub fn n_trees(&self) -> usize {
        match &self.estimator {
            Estimator::Trees(f) => f.n_trees(),
            Estimator::Linear(_) => 0,
        }
    }

    /// What runs the model: `trees` (a tree ensemble) or `linear`.
    pub fn engine(&self) -> &'static str {
        match &self.estimator {
            Estimator::Trees(_) => "trees",
            Estimator::Linear(_) => "linear",
        }
    }

    /// Score `rows` rows of row-major float32 features on up to `threads` threads.
    pub fn predict_f32(&self, features: &[f32], rows: usize, threads: usize) -> Result<Predictions, Unsupported> {
        self.check_len(features.len(), rows)?;
        let predictions = match &self.estimator {
            Estimator::Trees(Forest::F32(e)) => e.predict(features, self.n_features, rows, threads),
            Estimator::Trees(Forest::F64(e)) => {
                let widened: Vec<f64> = features.iter().map(|v| f64::from(*v)).collect();
                e.predict(&widened, self.n_features, rows, threads)
            }
            Estimator::Linear(l) => l.predict(Features::Rows(features), self.n_features, rows, threads),
        };
        Ok(self.normalized(predictions))
    }

    /// Whether the model reads its features one column at a time
    /// ([`Self::predict_f32_columns`]): linear models do; tree ensembles walk rows.
    pub fn takes_columns(&self) -> bool {
        matches!(self.estimator, Estimator::Linear(_))
    }

    /// Score `rows` rows given as one float32 slice per feature, in feature order: the
    /// columns of an Arrow batch, read where they are instead of being interleaved into
    /// rows first. Only for a model that [`takes_columns`](Self::takes_columns).
    pub fn predict_f32_columns(
        &self,
        columns: &[&[f32]],
        rows: usize,
        threads: usize,
    ) -> Result<Predictions, Unsupported> {
        let Estimator::Linear(l) = &self.estimator else {
            return unsupported("a tree ensemble takes rows, not columns");
        };
        if columns.len() != self.n_features || columns.iter().any(|c| c.len() != rows) {
            return unsupported(format!(
                "{} columns are not {} features of {rows} rows",
                columns.len(),
                self.n_features
            ));
        }
        Ok(self.normalized(l.predict(Features::Columns(columns), self.n_features, rows, threads)))
    }

    /// Score `rows` rows of row-major float64 features (a tree ensemble in double precision,
    /// or rounded to float32 first where the graph casts them or the model is linear).
    pub fn predict_f64(&self, features: &[f64], rows: usize, threads: usize) -> Result<Predictions, Unsupported> {
        self.check_len(features.len(), rows)?;
        match &self.estimator {
            Estimator::Trees(Forest::F64(e)) => {
                Ok(self.normalized(e.predict(features, self.n_features, rows, threads)))
            }
            _ => {
                let narrowed: Vec<f32> = features.iter().map(|v| *v as f32).collect();
                self.predict_f32(&narrowed, rows, threads)
            }
        }
    }

    /// The scores through the graph's `Normalizer`, as ONNX Runtime's computes it: a row
    /// whose norm is 0 is left as it is.
    fn normalized(&self, mut p: Predictions) -> Predictions {
        let Some(norm) = self.normalizer else { return p };
        for s in p.scores.chunks_exact_mut(p.width.max(1)) {
            let divisor = match norm {
                Norm::Max => s.iter().fold(f32::MIN, |max, v| if max < *v { *v } else { max }),
                Norm::L1 => s.iter().map(|v| v.abs()).sum(),
                Norm::L2 => s.iter().map(|v| v * v).sum(),
            };
            if divisor == 0.0 {
                continue;
            }
            for v in s.iter_mut() {
                *v = match norm {
                    Norm::Max | Norm::L1 => *v / divisor,
                    Norm::L2 => {
                        let r = (*v * *v / divisor).sqrt();
                        if *v < 0.0 {
                            -r
                        } else {
                            r
                        }
                    }
                };
            }
        }
        p
    }

    fn check_len(&self, len: usize, rows: usize) -> Result<(), Unsupported> {
        if rows.checked_mul(self.n_features) != Some(len) {
            return unsupported(format!("{len} values are not {rows} rows of {} features", self.n_features));
        }
        Ok(())
    }
}

/// Whether `name` is a float initializer holding one 1.0 (a scalar, `[1]` or `[1, 1]`),
/// so that multiplying the scores by it changes neither their values nor their shape.
fn is_one(initializer: &HashMap<&str, &TensorProto>, name: &str) -> bool {
    let Some(t) = initializer.get(name) else { return false };
    matches!(
        ensemble::tensor_values(t),
        Ok((dims, ensemble::Values::F32(v))) if dims.len() <= 2 && dims.iter().all(|d| *d == 1) && v == [1.0]
    )
}

fn attr<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute.iter().find(|a| a.name() == name)
}

fn attr_int(node: &NodeProto, name: &str) -> Option<i64> {
    attr(node, name).and_then(|a| a.i)
}

fn strings(a: &AttributeProto) -> Result<Vec<String>, Unsupported> {
    a.strings
        .iter()
        .map(|s| String::from_utf8(s.to_vec()).map_err(|_| Unsupported(format!("attribute {} is not UTF-8", a.name()))))
        .collect()
}

fn zipmap_labels(node: &NodeProto) -> Result<ClassLabels, Unsupported> {
    match (attr(node, "classlabels_int64s"), attr(node, "classlabels_strings")) {
        (Some(a), None) => Ok(ClassLabels::Int64(a.ints.clone())),
        (None, Some(a)) => Ok(ClassLabels::String(strings(a)?)),
        _ => unsupported("a ZipMap without one list of class labels"),
    }
}

/// The attributes of one ensemble node, checked: every attribute is one the engine knows.
#[derive(Default)]
pub(crate) struct Attributes {
    ints: HashMap<String, Vec<i64>>,
    floats: HashMap<String, Vec<f32>>,
    strings: HashMap<String, Vec<String>>,
    pub(crate) tensors: HashMap<String, ensemble::Values>,
}

impl Attributes {
    pub(crate) fn ints(&self, name: &str) -> &[i64] {
        self.ints.get(name).map(Vec::as_slice).unwrap_or_default()
    }
    pub(crate) fn floats(&self, name: &str) -> &[f32] {
        self.floats.get(name).map(Vec::as_slice).unwrap_or_default()
    }
    pub(crate) fn strings(&self, name: &str) -> &[String] {
        self.strings.get(name).map(Vec::as_slice).unwrap_or_default()
    }
    pub(crate) fn string(&self, name: &str, default: &str) -> String {
        self.strings(name).first().cloned().unwrap_or_else(|| default.to_string())
    }
}

pub(crate) fn read_attributes(node: &NodeProto, known: &[&str]) -> Result<Attributes, Unsupported> {
    use attribute_proto::AttributeType as T;
    let mut out = Attributes::default();
    for a in &node.attribute {
        let name = a.name().to_string();
        if !known.contains(&name.as_str()) {
            return unsupported(format!("{} attribute '{name}' is not covered", node.op_type()));
        }
        match a.r#type() {
            T::Ints => drop(out.ints.insert(name, a.ints.clone())),
            T::Int => drop(out.ints.insert(name, a.i.into_iter().collect())),
            T::Floats => drop(out.floats.insert(name, a.floats.clone())),
            T::Float => drop(out.floats.insert(name, a.f.into_iter().collect())),
            T::Strings => drop(out.strings.insert(name, strings(a)?)),
            T::Tensor => {
                let Some(t) = a.t.as_ref() else { return unsupported(format!("attribute '{name}' has no tensor")) };
                let (_, values) =
                    ensemble::tensor_values(t).map_err(|e| Unsupported(format!("attribute '{name}': {e}")))?;
                drop(out.tensors.insert(name, values))
            }
            T::String => {
                let s = a.s.as_ref().map(|s| String::from_utf8_lossy(s).into_owned()).unwrap_or_default();
                drop(out.strings.insert(name, vec![s]))
            }
            _ => return unsupported(format!("attribute '{name}' has a type the native engine does not read")),
        }
    }
    Ok(out)
}

/// The node's `post_transform`: `NONE`, or, where `transforms` allows them, `LOGISTIC`,
/// `SOFTMAX` and `SOFTMAX_ZERO`, and `PROBIT` where `probit` does (tree ensembles); anything
/// else is left to ONNX Runtime.
pub(crate) fn post_transform(a: &Attributes, transforms: bool, probit: bool) -> Result<PostTransform, Unsupported> {
    Ok(match a.string("post_transform", "NONE").as_str() {
        "NONE" => PostTransform::None,
        "LOGISTIC" if transforms => PostTransform::Logistic,
        "SOFTMAX" if transforms => PostTransform::Softmax,
        "SOFTMAX_ZERO" if transforms => PostTransform::SoftmaxZero,
        "PROBIT" if transforms && probit => PostTransform::Probit,
        other => return unsupported(format!("post_transform {other} is not covered here")),
    })
}

/// A classifier's labels: the int64 list (named `ints`, as the operator names it) or the
/// string list, exactly one of them.
pub(crate) fn class_labels(a: &Attributes, ints: &str) -> Result<ClassLabels, Unsupported> {
    match (a.ints.get(ints), a.strings.get("classlabels_strings")) {
        (Some(l), None) => Ok(ClassLabels::Int64(l.clone())),
        (None, Some(l)) => Ok(ClassLabels::String(l.clone())),
        _ => unsupported("a classifier without one list of class labels"),
    }
}

/// The most classes or targets a linear model may have here: a batch's scores take
/// `rows × scores` floats, and a few bytes of model must not ask for gigabytes per batch.
/// Larger models run on ONNX Runtime.
const MAX_LINEAR_SCORES: usize = 1024;
/// The most features a linear model may have here: a row-major input (or a batch's last,
/// partial block of columns) is transposed 64 rows at a time, 256 bytes per feature, and a
/// one-row call must not take gigabytes. Wider models run on ONNX Runtime.
const MAX_LINEAR_FEATURES: usize = 65_536;

const LINEAR_CLASSIFIER_ATTRIBUTES: &[&str] =
    &["coefficients", "intercepts", "classlabels_ints", "classlabels_strings", "multi_class", "post_transform"];
const LINEAR_REGRESSOR_ATTRIBUTES: &[&str] = &["coefficients", "intercepts", "targets", "post_transform"];

fn compile_linear(node: &NodeProto, n_features: usize) -> Result<Linear, Unsupported> {
    let classifier = node.op_type() == "LinearClassifier";
    let known = if classifier { LINEAR_CLASSIFIER_ATTRIBUTES } else { LINEAR_REGRESSOR_ATTRIBUTES };
    if n_features > MAX_LINEAR_FEATURES {
        return unsupported(format!(
            "{n_features} features (the native engine's linear models cover up to {MAX_LINEAR_FEATURES})"
        ));
    }
    let a = read_attributes(node, known)?;
    let post = post_transform(&a, true, false)?;
    let intercepts = a.floats("intercepts");
    let (sums, kind, intercepts) = if classifier {
        // multi_class is read and ignored, as ONNX Runtime ignores it: the post-transform
        // says how scores become probabilities.
        let labels = class_labels(&a, "classlabels_ints")?;
        let k = intercepts.len();
        if k > MAX_LINEAR_SCORES {
            return unsupported(format!("{k} classes (the native engine covers up to {MAX_LINEAR_SCORES})"));
        }
        // One score is the binary case, which ONNX Runtime takes with exactly two labels.
        let labels_fit = match k {
            0 => false,
            1 => labels.len() == 2,
            k => labels.len() == k,
        };
        if !labels_fit {
            return unsupported(format!("{} class labels for {k} intercepts", labels.len()));
        }
        (k, LinearKind::Classifier { labels }, intercepts.to_vec())
    } else {
        let targets = match a.ints("targets").first() {
            Some(t) if (1..=MAX_LINEAR_SCORES as i64).contains(t) => *t as usize,
            Some(t) => return unsupported(format!("targets {t} (the native engine covers 1 to {MAX_LINEAR_SCORES})")),
            None => return unsupported("a LinearRegressor without targets"),
        };
        // ONNX Runtime uses the intercepts only when there is one per target.
        let intercepts = if intercepts.len() == targets { intercepts.to_vec() } else { vec![0.0; targets] };
        (targets, LinearKind::Regressor, intercepts)
    };
    let coefficients = a.floats("coefficients").to_vec();
    if sums.checked_mul(n_features) != Some(coefficients.len()) {
        return unsupported(format!("{} coefficients for {sums} scores of {n_features} features", coefficients.len()));
    }
    Ok(Linear { coefficients, intercepts, sums, kind, post })
}

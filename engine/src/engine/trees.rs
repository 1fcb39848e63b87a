//! The native engine ([`lakescore_trees`]: tree ensembles and linear models) behind the
//! [`Engine`] trait: graphs it fully covers run on it, the rest on the fallback engine
//! (ONNX Runtime).

use std::sync::Arc;

use lakescore_trees::{ClassLabels, NativeModel, OutputKind};

use super::{ElemType, Engine, IoInfo, LoadedModel, MapKeys, OutputValue, Tensor, TensorData, ValueType};
use crate::error::{Result, ScoreError};

/// See the module documentation.
pub struct TreesEngine {
    fallback: Option<Arc<dyn Engine>>,
    threads: usize,
    /// `trees`, or `trees+<fallback>`.
    name: &'static str,
}

impl std::fmt::Debug for TreesEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TreesEngine")
            .field("fallback", &self.fallback.as_ref().map(|e| e.name()))
            .field("threads", &self.threads)
            .finish()
    }
}

impl TreesEngine {
    /// Tree ensembles and linear models natively on `threads` threads (0: one per core); other models on
    /// `fallback`, or refused when there is none.
    pub fn new(fallback: Option<Arc<dyn Engine>>, threads: usize) -> Self {
        let threads = match threads {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            n => n,
        };
        let name = match fallback.as_ref().map(|e| e.name()) {
            None => "trees",
            Some("ort") => "trees+ort",
            Some("tract") => "trees+tract",
            Some(_) => "trees+other",
        };
        Self { fallback, threads, name }
    }
}

impl Engine for TreesEngine {
    fn name(&self) -> &'static str {
        self.name
    }

    fn load(&self, model: bytes::Bytes) -> Result<Box<dyn LoadedModel>> {
        match NativeModel::compile(&model) {
            Ok(compiled) => Ok(Box::new(Native::new(compiled, self.threads))),
            Err(why) => match &self.fallback {
                Some(engine) => {
                    tracing::debug!(reason = %why, engine = engine.name(), "not a model for the native engine");
                    engine.load(model)
                }
                None => Err(ScoreError::FailedPrecondition(format!(
                    "the native engine (backend trees) does not run this model: {why}"
                ))),
            },
        }
    }
}

struct Native {
    model: NativeModel,
    inputs: Vec<IoInfo>,
    outputs: Vec<IoInfo>,
    threads: usize,
}

fn key_type(labels: &ClassLabels) -> ElemType {
    match labels {
        ClassLabels::Int64(_) => ElemType::Int64,
        ClassLabels::String(_) => ElemType::String,
    }
}

fn map_keys(labels: &ClassLabels) -> MapKeys {
    match labels {
        ClassLabels::Int64(l) => MapKeys::Int64(l.clone()),
        ClassLabels::String(l) => MapKeys::String(l.clone()),
    }
}

impl Native {
    fn new(model: NativeModel, threads: usize) -> Self {
        let elem = match model.input_type {
            lakescore_trees::InputType::Float32 => ElemType::Float32,
            lakescore_trees::InputType::Float64 => ElemType::Float64,
        };
        let inputs = vec![IoInfo {
            name: model.input.clone(),
            info: ValueType::Tensor { elem, shape: vec![None, Some(model.n_features as i64)] },
        }];
        let outputs = model
            .outputs
            .iter()
            .map(|o| {
                let info = match (&o.kind, model.class_labels()) {
                    (OutputKind::Label, Some(labels)) => {
                        ValueType::Tensor { elem: key_type(labels), shape: vec![None] }
                    }
                    (OutputKind::ZipMap(labels), _) => {
                        ValueType::SeqMap { key: key_type(labels), value: ElemType::Float32 }
                    }
                    _ => ValueType::Tensor { elem: ElemType::Float32, shape: vec![None, Some(model.width() as i64)] },
                };
                IoInfo { name: o.name.clone(), info }
            })
            .collect();
        Self { model, inputs, outputs, threads }
    }

    /// The graph's outputs from the engine's predictions for `rows` rows.
    fn output_values(&self, predictions: lakescore_trees::Predictions, rows: usize) -> Result<Vec<OutputValue>> {
        let lakescore_trees::Predictions { labels, scores, width } = predictions;
        // Each output takes the vectors it needs; only a second user of one gets a copy.
        let mut label_uses = self.model.outputs.iter().filter(|o| o.kind == OutputKind::Label).count();
        let mut score_uses = self.model.outputs.len() - label_uses;
        let (mut labels, mut scores) = (Some(labels), Some(scores));
        self.model
            .outputs
            .iter()
            .map(|o| {
                Ok(match (&o.kind, self.model.class_labels()) {
                    (OutputKind::Label, Some(ClassLabels::Int64(_))) => OutputValue::Tensor(Tensor {
                        shape: vec![rows],
                        data: TensorData::Int64(share(&mut labels, &mut label_uses)),
                    }),
                    (OutputKind::Label, Some(ClassLabels::String(names))) => OutputValue::Tensor(Tensor {
                        shape: vec![rows],
                        data: TensorData::String(
                            share(&mut labels, &mut label_uses)
                                .iter()
                                .map(|i| names.get(*i as usize).cloned().unwrap_or_default())
                                .collect(),
                        ),
                    }),
                    (OutputKind::ZipMap(keys), _) => OutputValue::SeqMap {
                        keys: map_keys(keys),
                        values: TensorData::Float32(share(&mut scores, &mut score_uses)),
                        rows,
                    },
                    _ => OutputValue::Tensor(Tensor {
                        shape: vec![rows, width],
                        data: TensorData::Float32(share(&mut scores, &mut score_uses)),
                    }),
                })
            })
            .collect()
    }
}

impl LoadedModel for Native {
    fn engine(&self) -> &'static str {
        self.model.engine()
    }

    fn inputs(&self) -> &[IoInfo] {
        &self.inputs
    }

    fn outputs(&self) -> &[IoInfo] {
        &self.outputs
    }

    fn run(&self, inputs: Vec<(String, Tensor)>) -> Result<Vec<OutputValue>> {
        let [(name, tensor)] = inputs.as_slice() else {
            return Err(ScoreError::invalid(format!("model input '{}' is the only input", self.model.input)));
        };
        if name != &self.model.input {
            return Err(ScoreError::invalid(format!("no model input '{name}' (the input is '{}')", self.model.input)));
        }
        let rows = tensor.shape.first().copied().unwrap_or(0);
        let invalid = |e: lakescore_trees::Unsupported| ScoreError::invalid(format!("model input '{name}': {e}"));
        let predictions = match &tensor.data {
            TensorData::Float32(x) => self.model.predict_f32(x, rows, self.threads).map_err(invalid)?,
            TensorData::Float64(x) => self.model.predict_f64(x, rows, self.threads).map_err(invalid)?,
            other => {
                return Err(ScoreError::invalid(format!(
                    "model input '{name}' is {}, the model takes float",
                    other.elem()
                )))
            }
        };
        self.output_values(predictions, rows)
    }

    fn takes_columns(&self) -> bool {
        self.model.takes_columns()
    }

    fn run_columns(&self, columns: &[&[f32]], rows: usize) -> Result<Vec<OutputValue>> {
        let predictions = self
            .model
            .predict_f32_columns(columns, rows, self.threads)
            .map_err(|e| ScoreError::invalid(format!("model input '{}': {e}", self.model.input)))?;
        self.output_values(predictions, rows)
    }
}

/// The vector for one more of its `uses`: moved out for the last, copied for the others.
fn share<T: Clone>(slot: &mut Option<Vec<T>>, uses: &mut usize) -> Vec<T> {
    *uses = uses.saturating_sub(1);
    if *uses == 0 {
        slot.take().unwrap_or_default()
    } else {
        slot.clone().unwrap_or_default()
    }
}

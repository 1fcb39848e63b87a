//! The load-time output probe: one run on an all-zero row learns each output's per-row
//! shape (widths, ZipMap class labels), which the mapping layer turns into columns.

use super::{ElemType, LoadedModel, MapKeys, OutputValue, Tensor, TensorData, ValueType};
use crate::error::{Result, ScoreError};

/// A model output with its per-row shape, learnt by a probe run when the model is loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedOutput {
    /// Output name in the graph.
    pub name: String,
    /// Per-row shape.
    pub shape: OutputShape,
}

/// The per-row shape of a model output.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputShape {
    /// A tensor `[N, dims...]`.
    Tensor {
        /// Element type.
        elem: ElemType,
        /// The dimensions after the batch dimension (empty for `[N]`).
        dims: Vec<usize>,
    },
    /// `seq(map(key, value))` with these keys (ZipMap).
    SeqMap {
        /// Class labels, in column order.
        keys: MapKeys,
        /// Value type.
        value: ElemType,
    },
    /// An output the worker cannot turn into columns (reason).
    Unsupported(String),
}

/// The element types the mapping layer feeds and returns.
pub(crate) fn supported_elem(elem: &ElemType) -> bool {
    !matches!(elem, ElemType::Other(_))
}

fn zero_tensor(elem: &ElemType, shape: Vec<usize>) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let data = match elem {
        ElemType::Float32 => TensorData::Float32(vec![0.0; n]),
        ElemType::Float64 => TensorData::Float64(vec![0.0; n]),
        ElemType::Int32 => TensorData::Int32(vec![0; n]),
        ElemType::Int64 => TensorData::Int64(vec![0; n]),
        ElemType::Bool => TensorData::Bool(vec![false; n]),
        ElemType::String => TensorData::String(vec![String::new(); n]),
        ElemType::Other(o) => {
            return Err(ScoreError::FailedPrecondition(format!("input element type {o} is not supported")))
        }
    };
    Ok(Tensor { shape, data })
}

/// Learn every output's per-row shape (widths, ZipMap class labels) by running the model
/// once on a single all-zero row. Falls back on the declared types when that run fails.
pub fn probe_outputs(model: &dyn LoadedModel) -> Vec<ResolvedOutput> {
    let declared = || {
        model
            .outputs()
            .iter()
            .map(|o| ResolvedOutput {
                name: o.name.clone(),
                shape: match &o.info {
                    ValueType::Tensor { elem, shape }
                        if !shape.is_empty() && shape[1..].iter().all(|d| d.is_some_and(|d| d >= 0)) =>
                    {
                        OutputShape::Tensor {
                            elem: elem.clone(),
                            dims: shape[1..].iter().map(|d| d.unwrap_or(0) as usize).collect(),
                        }
                    }
                    other => OutputShape::Unsupported(format!("cannot determine the per-row shape of {other}")),
                },
            })
            .collect::<Vec<_>>()
    };
    let mut feeds = Vec::new();
    for input in model.inputs() {
        let ValueType::Tensor { elem, shape } = &input.info else {
            return declared();
        };
        if shape.is_empty() || !supported_elem(elem) {
            return declared();
        }
        let dims: Vec<usize> = shape
            .iter()
            .enumerate()
            .map(|(i, d)| match d {
                Some(d) if *d > 0 => *d as usize,
                _ if i == 0 => 1,
                _ => 1,
            })
            .collect();
        match zero_tensor(elem, dims) {
            Ok(t) => feeds.push((input.name.clone(), t)),
            Err(_) => return declared(),
        }
    }
    let rows = model
        .inputs()
        .first()
        .and_then(|i| match &i.info {
            ValueType::Tensor { shape, .. } => shape.first().copied().flatten(),
            _ => None,
        })
        .filter(|d| *d > 0)
        .unwrap_or(1) as usize;
    let outputs = match model.run(feeds) {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(error = %e, "probe run failed; using the declared output shapes");
            return declared();
        }
    };
    model
        .outputs()
        .iter()
        .zip(outputs)
        .map(|(io, value)| ResolvedOutput {
            name: io.name.clone(),
            shape: match value {
                OutputValue::Tensor(t) => {
                    if t.shape.first() != Some(&rows) {
                        OutputShape::Unsupported(format!(
                            "output shape {:?} has no row dimension (expected [{rows}, ...] for {rows} input row(s))",
                            t.shape
                        ))
                    } else if !supported_elem(&t.data.elem()) {
                        OutputShape::Unsupported(format!("element type {} is not supported", t.data.elem()))
                    } else {
                        OutputShape::Tensor { elem: t.data.elem(), dims: t.shape[1..].to_vec() }
                    }
                }
                OutputValue::SeqMap { keys, values, .. } => OutputShape::SeqMap { keys, value: values.elem() },
            },
        })
        .collect()
}

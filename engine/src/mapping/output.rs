//! Tensors → columns: the output fields a model output becomes (scalar, fixed-size list,
//! or one column per class / index) and the arrays built from each batch's outputs.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, FixedSizeListArray, Float32Array, Float64Array, Int32Array, Int64Array, StringArray,
};
use arrow::datatypes::{DataType, Field};
use lakescore_proto::OutputLayout;

use super::arrow_type;
use crate::engine::probe::{OutputShape, ResolvedOutput};
use crate::engine::{OutputValue, TensorData};
use crate::error::{Result, ScoreError};

/// How one model output becomes columns.
#[derive(Debug, Clone)]
pub(super) struct OutputColumns {
    /// Index into the model's outputs.
    pub(super) output_index: usize,
    pub(super) name: String,
    pub(super) kind: OutKind,
}

#[derive(Debug, Clone)]
pub(super) enum OutKind {
    /// One scalar column (`[N]` or `[N, 1]` tensors).
    Scalar,
    /// One FixedSizeList column of `width`.
    List { width: usize },
    /// One column per class / index.
    Split { width: usize },
}

/// `output_label` → `label`, `output_probability` → `probability` (skl2onnx's names), unless
/// stripping makes two outputs collide; other names are kept.
pub fn default_column_name(output: &str, all_outputs: &[&str]) -> String {
    match output.strip_prefix("output_") {
        Some(rest) if !rest.is_empty() && !all_outputs.contains(&rest) => {
            let clash = all_outputs.iter().filter(|o| **o != output).any(|o| o.strip_prefix("output_") == Some(rest));
            if clash {
                output.to_string()
            } else {
                rest.to_string()
            }
        }
        _ => output.to_string(),
    }
}

pub(super) fn output_fields(out: &ResolvedOutput, column: &str, layout: OutputLayout) -> Result<(OutKind, Vec<Field>)> {
    match &out.shape {
        OutputShape::Unsupported(why) => {
            Err(ScoreError::FailedPrecondition(format!("model output '{}' cannot be returned: {why}", out.name)))
        }
        OutputShape::Tensor { elem, dims } => {
            let dt = arrow_type(elem).map_err(|e| e.context(format!("model output '{}'", out.name)))?;
            let width: usize = dims.iter().product();
            let kind = match (dims.len(), layout) {
                (0, _) => OutKind::Scalar,
                (_, OutputLayout::List) => OutKind::List { width },
                (_, OutputLayout::Columns) => OutKind::Split { width },
                (_, OutputLayout::Unspecified) if width == 1 => OutKind::Scalar,
                (_, OutputLayout::Unspecified) => OutKind::List { width },
            };
            let fields = match kind {
                OutKind::Scalar => vec![Field::new(column, dt, false)],
                OutKind::List { width } => vec![Field::new(
                    column,
                    DataType::FixedSizeList(Arc::new(Field::new("item", dt, false)), width as i32),
                    false,
                )],
                OutKind::Split { width } => {
                    (0..width).map(|j| Field::new(format!("{column}_{j}"), dt.clone(), false)).collect()
                }
            };
            Ok((kind, fields))
        }
        OutputShape::SeqMap { keys, value } => {
            let dt = arrow_type(value).map_err(|e| e.context(format!("model output '{}'", out.name)))?;
            let width = keys.len();
            let kind = match layout {
                OutputLayout::List => OutKind::List { width },
                _ => OutKind::Split { width },
            };
            let fields = match kind {
                OutKind::List { width } => {
                    let mut md = HashMap::new();
                    md.insert(
                        "lakescore.classes".to_string(),
                        serde_json::to_string(&keys.labels()).unwrap_or_default(),
                    );
                    vec![Field::new(
                        column,
                        DataType::FixedSizeList(Arc::new(Field::new("item", dt, false)), width as i32),
                        false,
                    )
                    .with_metadata(md)]
                }
                _ => keys
                    .labels()
                    .into_iter()
                    .map(|label| Field::new(format!("{column}_{label}"), dt.clone(), false))
                    .collect(),
            };
            Ok((kind, fields))
        }
    }
}

fn data_to_array(data: TensorData) -> ArrayRef {
    match data {
        TensorData::Float32(v) => Arc::new(Float32Array::from(v)),
        TensorData::Float64(v) => Arc::new(Float64Array::from(v)),
        TensorData::Int32(v) => Arc::new(Int32Array::from(v)),
        TensorData::Int64(v) => Arc::new(Int64Array::from(v)),
        TensorData::Bool(v) => Arc::new(BooleanArray::from(v)),
        TensorData::String(v) => Arc::new(StringArray::from(v)),
    }
}

/// Column `j` of a row-major `[rows, width]` payload.
fn strided(data: &TensorData, width: usize, j: usize) -> TensorData {
    fn pick<T: Clone>(v: &[T], width: usize, j: usize) -> Vec<T> {
        v.iter().skip(j).step_by(width).cloned().collect()
    }
    match data {
        TensorData::Float32(v) => TensorData::Float32(pick(v, width, j)),
        TensorData::Float64(v) => TensorData::Float64(pick(v, width, j)),
        TensorData::Int32(v) => TensorData::Int32(pick(v, width, j)),
        TensorData::Int64(v) => TensorData::Int64(pick(v, width, j)),
        TensorData::Bool(v) => TensorData::Bool(pick(v, width, j)),
        TensorData::String(v) => TensorData::String(pick(v, width, j)),
    }
}

fn layout_columns(kind: &OutKind, data: TensorData, width: usize) -> Result<Vec<ArrayRef>> {
    Ok(match kind {
        OutKind::Scalar => vec![data_to_array(data)],
        OutKind::List { width } => {
            let values = data_to_array(data);
            let item = Arc::new(Field::new("item", values.data_type().clone(), false));
            vec![Arc::new(FixedSizeListArray::try_new(item, *width as i32, values, None)?)]
        }
        OutKind::Split { .. } => (0..width).map(|j| data_to_array(strided(&data, width, j))).collect(),
    })
}

pub(super) fn output_arrays(
    oc: &OutputColumns,
    expected: &OutputShape,
    value: OutputValue,
    rows: usize,
) -> Result<Vec<ArrayRef>> {
    let changed = |what: String| {
        ScoreError::Internal(format!("model output '{}' changed shape between batches: {what}", oc.name))
    };
    match (expected, value) {
        (OutputShape::Tensor { elem, dims }, OutputValue::Tensor(t)) => {
            let width: usize = dims.iter().product();
            if t.shape.first() != Some(&rows) || t.shape[1..] != dims[..] || &t.data.elem() != elem {
                return Err(changed(format!("{} {:?}, expected {elem} [{rows}, {dims:?}]", t.data.elem(), t.shape)));
            }
            if t.data.len() != rows * width {
                return Err(changed(format!("{} values for shape {:?}", t.data.len(), t.shape)));
            }
            layout_columns(&oc.kind, t.data, width)
        }
        (OutputShape::SeqMap { keys, value }, OutputValue::SeqMap { keys: got, values, rows: n }) => {
            if n != rows {
                return Err(changed(format!("{n} maps for {rows} rows")));
            }
            if rows > 0 && &got != keys {
                return Err(changed(format!("classes {:?}, expected {:?}", got.labels(), keys.labels())));
            }
            if &values.elem() != value || values.len() != rows * keys.len() {
                return Err(changed(format!("{} values of {}", values.len(), values.elem())));
            }
            layout_columns(&oc.kind, values, keys.len())
        }
        (_, _) => Err(changed("another kind of value".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names() {
        let all = ["output_label", "output_probability"];
        assert_eq!(default_column_name("output_label", &all), "label");
        assert_eq!(default_column_name("variable", &["variable"]), "variable");
        assert_eq!(default_column_name("output_x", &["output_x", "x"]), "output_x");
    }
}

//! The Arrow ⇄ tensor mapping shared by every engine: which columns feed which model
//! input (with lossless casting and null handling), and how model outputs become columns.
//!
//! A [`ScorePlan`] is built once per input schema (per Flight stream or per file) and
//! validates everything that can be checked without data; per batch it turns a
//! [`RecordBatch`] into input tensors ([`ScorePlan::feeds`]) and the model outputs back
//! into the enriched batch ([`ScorePlan::assemble`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, ArrowPrimitiveType, BooleanArray, FixedSizeListArray, Float32Array, Float64Array, Int32Array,
    Int64Array, PrimitiveArray, RecordBatch, StringArray,
};
use arrow::compute::kernels::cmp::eq;
use arrow::compute::{cast_with_options, CastOptions};
use arrow::datatypes::{DataType, Field, Float32Type, Float64Type, Int32Type, Int64Type, Schema, SchemaRef};
use lakescore_proto::{OutputLayout, ScoreCommand};

use crate::engine::{ElemType, IoInfo, LoadedModel, MapKeys, OutputValue, Tensor, TensorData, ValueInfo};
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
fn supported_elem(elem: &ElemType) -> bool {
    !matches!(elem, ElemType::Other(_))
}

fn arrow_type(elem: &ElemType) -> Result<DataType> {
    Ok(match elem {
        ElemType::Float32 => DataType::Float32,
        ElemType::Float64 => DataType::Float64,
        ElemType::Int32 => DataType::Int32,
        ElemType::Int64 => DataType::Int64,
        ElemType::Bool => DataType::Boolean,
        ElemType::String => DataType::Utf8,
        ElemType::Other(o) => {
            return Err(ScoreError::FailedPrecondition(format!(
                "element type {o} is not supported (float32, float64, int32, int64, bool, string are)"
            )))
        }
    })
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
                    ValueInfo::Tensor { elem, shape }
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
        let ValueInfo::Tensor { elem, shape } = &input.info else {
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
            ValueInfo::Tensor { shape, .. } => shape.first().copied().flatten(),
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

/// How one model input is fed.
#[derive(Debug, Clone)]
struct InputFeed {
    name: String,
    elem: ElemType,
    /// The full tensor shape with the batch dim first (`None` dims resolved per batch).
    rank: usize,
    source: FeedSource,
}

#[derive(Debug, Clone)]
enum FeedSource {
    /// `[N]` or `[N, F]` from F scalar columns (`[N]`: exactly one column).
    Columns(Vec<(usize, String)>),
    /// `[N, d1, d2, ...]` from one FixedSizeList column of `width` = d1·d2·… elements.
    List { index: usize, column: String, dims: Vec<usize> },
}

/// How one model output becomes columns.
#[derive(Debug, Clone)]
struct OutputColumns {
    /// Index into the model's outputs.
    output_index: usize,
    name: String,
    kind: OutKind,
}

#[derive(Debug, Clone)]
enum OutKind {
    /// One scalar column (`[N]` or `[N, 1]` tensors).
    Scalar,
    /// One FixedSizeList column of `width`.
    List { width: usize },
    /// One column per class / index.
    Split { width: usize },
}

/// Options for building a plan.
#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    /// Schema-level metadata added to the output schema (model, version, sha256).
    pub metadata: HashMap<String, String>,
}

/// Everything needed to score batches of one input schema with one model.
#[derive(Debug)]
pub struct ScorePlan {
    input_schema: SchemaRef,
    output_schema: SchemaRef,
    feeds: Vec<InputFeed>,
    outputs: Vec<OutputColumns>,
    expected: Vec<ResolvedOutput>,
    passthrough: Vec<usize>,
    fill_null: Option<f64>,
    /// Fixed batch size of the model's inputs, if any.
    fixed_rows: Option<usize>,
}

fn type_label(dt: &DataType) -> String {
    match dt {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "string".into(),
        DataType::Boolean => "bool".into(),
        other => other.to_string().to_lowercase(),
    }
}

fn is_numeric(dt: &DataType) -> bool {
    dt.is_integer() || dt.is_floating() || matches!(dt, DataType::Decimal128(_, _) | DataType::Decimal256(_, _))
}

fn is_string(dt: &DataType) -> bool {
    match dt {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, v) => matches!(v.as_ref(), DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View),
        _ => false,
    }
}

/// Can a column of `dt` feed a tensor of `elem` (possibly after a checked cast)?
fn can_feed(dt: &DataType, elem: &ElemType) -> bool {
    if let DataType::Dictionary(_, values) = dt {
        // Dictionary-encoded columns (Parquet readers, pandas categoricals) are decoded first.
        return can_feed(values, elem);
    }
    match elem {
        ElemType::String => is_string(dt),
        ElemType::Bool => dt == &DataType::Boolean || dt.is_integer(),
        ElemType::Float32 | ElemType::Float64 | ElemType::Int32 | ElemType::Int64 => {
            is_numeric(dt) || dt == &DataType::Boolean
        }
        ElemType::Other(_) => false,
    }
}

/// Casts that can never lose information.
fn statically_lossless(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    if from == to {
        return true;
    }
    matches!(
        (from, to),
        (Boolean, Float32 | Float64 | Int32 | Int64)
            | (Int8 | Int16 | UInt8 | UInt16 | Float16, Float32)
            | (Int8 | Int16 | Int32 | UInt8 | UInt16 | UInt32 | Float16 | Float32, Float64)
            | (Int8 | Int16 | UInt8 | UInt16, Int32)
            | (Int8 | Int16 | Int32 | UInt8 | UInt16 | UInt32, Int64)
    )
}

fn feed_err(column: &str, input: &str, elem: &ElemType, what: impl std::fmt::Display) -> ScoreError {
    ScoreError::InvalidArgument(format!("column '{column}' {what}; model input '{input}' expects {elem}"))
}

impl ScorePlan {
    /// Build and validate a plan: every model input is matched to columns of
    /// `input_schema` with a usable type, every selected output gets column names that do
    /// not collide with the kept input columns.
    pub fn new(
        cmd: &ScoreCommand,
        input_schema: SchemaRef,
        inputs: &[IoInfo],
        outputs: &[ResolvedOutput],
        options: PlanOptions,
    ) -> Result<Self> {
        let feeds = plan_inputs(cmd, &input_schema, inputs)?;
        let fixed_rows = inputs.iter().find_map(|i| match &i.info {
            ValueInfo::Tensor { shape, .. } => shape.first().copied().flatten().filter(|d| *d > 0).map(|d| d as usize),
            _ => None,
        });
        if let Some(fill) = cmd.fill_null {
            if !fill.is_finite() {
                return Err(ScoreError::invalid("fill_null must be a finite number"));
            }
            for f in &feeds {
                if matches!(f.elem, ElemType::Int32 | ElemType::Int64) && fill.fract() != 0.0 {
                    return Err(ScoreError::InvalidArgument(format!(
                        "fill_null {fill} is not an integer, but model input '{}' expects {}",
                        f.name, f.elem
                    )));
                }
            }
        }

        // Passthrough columns.
        let passthrough: Vec<usize> = if cmd.drop_input_columns {
            Vec::new()
        } else if cmd.passthrough_columns.is_empty() {
            (0..input_schema.fields().len()).collect()
        } else {
            let mut seen = HashSet::new();
            cmd.passthrough_columns
                .iter()
                .map(|c| {
                    if !seen.insert(c.as_str()) {
                        return Err(ScoreError::InvalidArgument(format!("passthrough column '{c}' is listed twice")));
                    }
                    input_schema.index_of(c).map_err(|_| {
                        ScoreError::InvalidArgument(format!("passthrough column '{c}' is not in the input"))
                    })
                })
                .collect::<Result<_>>()?
        };

        // Output columns.
        let selected: Vec<(usize, String, OutputLayout)> = if cmd.outputs.is_empty() {
            let names: Vec<&str> = outputs.iter().map(|o| o.name.as_str()).collect();
            outputs
                .iter()
                .enumerate()
                .filter(|(_, o)| match &o.shape {
                    OutputShape::Unsupported(why) => {
                        tracing::debug!(output = %o.name, why, "output skipped");
                        false
                    }
                    _ => true,
                })
                .map(|(i, o)| (i, default_column_name(&o.name, &names), OutputLayout::Unspecified))
                .collect()
        } else {
            let names: Vec<&str> = outputs.iter().map(|o| o.name.as_str()).collect();
            cmd.outputs
                .iter()
                .map(|spec| {
                    let i = outputs.iter().position(|o| o.name == spec.name).ok_or_else(|| {
                        ScoreError::InvalidArgument(format!(
                            "the model has no output '{}' (outputs: {})",
                            spec.name,
                            names.join(", ")
                        ))
                    })?;
                    let column = if spec.column.is_empty() {
                        default_column_name(&spec.name, &names)
                    } else {
                        spec.column.clone()
                    };
                    Ok((i, column, spec.layout()))
                })
                .collect::<Result<_>>()?
        };
        if selected.is_empty() {
            return Err(ScoreError::FailedPrecondition("the model has no output that lakescore can return".into()));
        }

        let mut fields: Vec<Field> = passthrough.iter().map(|i| input_schema.field(*i).clone()).collect();
        let mut taken: HashMap<String, String> =
            passthrough.iter().map(|i| (input_schema.field(*i).name().clone(), "input column".to_string())).collect();
        let mut out_cols = Vec::new();
        for (index, column, layout) in selected {
            let out = &outputs[index];
            let (kind, new_fields) = output_fields(out, &column, layout)?;
            for f in &new_fields {
                if let Some(owner) = taken.get(f.name()) {
                    return Err(ScoreError::InvalidArgument(format!(
                        "result column '{}' of model output '{}' collides with the {owner} '{}': \
                         rename it with outputs[].column, or leave the input column out with passthrough_columns",
                        f.name(),
                        out.name,
                        f.name()
                    )));
                }
                taken.insert(f.name().clone(), format!("column of model output '{}'", out.name));
            }
            fields.extend(new_fields);
            out_cols.push(OutputColumns { output_index: index, name: out.name.clone(), kind });
        }
        let output_schema = Arc::new(Schema::new_with_metadata(fields, options.metadata));
        Ok(Self {
            input_schema,
            output_schema,
            feeds,
            outputs: out_cols,
            expected: outputs.to_vec(),
            passthrough,
            fill_null: cmd.fill_null,
            fixed_rows,
        })
    }

    /// The schema of the incoming batches.
    pub fn input_schema(&self) -> &SchemaRef {
        &self.input_schema
    }

    /// The enriched schema: kept input columns, then the output columns.
    pub fn output_schema(&self) -> &SchemaRef {
        &self.output_schema
    }

    /// The model's fixed batch size, if its inputs have one.
    pub fn fixed_rows(&self) -> Option<usize> {
        self.fixed_rows
    }

    /// Check that a batch has the schema this plan was built for.
    pub fn check_batch(&self, batch: &RecordBatch) -> Result<()> {
        let got = batch.schema();
        if got.fields() != self.input_schema.fields() {
            return Err(ScoreError::InvalidArgument("a batch's schema differs from the stream's schema".into()));
        }
        Ok(())
    }

    /// The model inputs for a batch.
    pub fn feeds(&self, batch: &RecordBatch) -> Result<Vec<(String, Tensor)>> {
        let rows = batch.num_rows();
        self.feeds
            .iter()
            .map(|feed| {
                let tensor = match &feed.source {
                    FeedSource::Columns(cols) => {
                        let arrays: Vec<(&str, &ArrayRef)> =
                            cols.iter().map(|(i, name)| (name.as_str(), batch.column(*i))).collect();
                        let data = interleave(&arrays, &feed.elem, &feed.name, self.fill_null)?;
                        let shape = if feed.rank == 1 { vec![rows] } else { vec![rows, cols.len()] };
                        Tensor { shape, data }
                    }
                    FeedSource::List { index, column, dims } => {
                        let list = batch
                            .column(*index)
                            .as_any()
                            .downcast_ref::<FixedSizeListArray>()
                            .ok_or_else(|| feed_err(column, &feed.name, &feed.elem, "is not a fixed-size list"))?;
                        if list.null_count() > 0 {
                            let row = (0..list.len()).find(|i| list.is_null(*i)).unwrap_or(0);
                            return Err(feed_err(
                                column,
                                &feed.name,
                                &feed.elem,
                                format!("has a null list at row {row}"),
                            ));
                        }
                        let width: usize = dims.iter().product();
                        let values = list.values().slice(list.offset() * width, rows * width);
                        let data = interleave(&[(column.as_str(), &values)], &feed.elem, &feed.name, self.fill_null)?;
                        let mut shape = vec![rows];
                        shape.extend(dims);
                        Tensor { shape, data }
                    }
                };
                Ok((feed.name.clone(), tensor))
            })
            .collect()
    }

    /// Build the enriched batch from a scored batch and the model's outputs (all outputs,
    /// in model order).
    pub fn assemble(&self, batch: &RecordBatch, outputs: Vec<OutputValue>) -> Result<RecordBatch> {
        let rows = batch.num_rows();
        let mut columns: Vec<ArrayRef> = self.passthrough.iter().map(|i| batch.column(*i).clone()).collect();
        let mut outputs: Vec<Option<OutputValue>> = outputs.into_iter().map(Some).collect();
        for oc in &self.outputs {
            let value = outputs
                .get_mut(oc.output_index)
                .and_then(Option::take)
                .ok_or_else(|| ScoreError::Internal(format!("the engine returned no output '{}'", oc.name)))?;
            let expected = &self.expected[oc.output_index].shape;
            columns.extend(output_arrays(oc, expected, value, rows)?);
        }
        Ok(RecordBatch::try_new(self.output_schema.clone(), columns)?)
    }

    /// An empty enriched batch (for an input batch of zero rows).
    pub fn empty_output(&self) -> RecordBatch {
        RecordBatch::new_empty(self.output_schema.clone())
    }
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

fn output_fields(out: &ResolvedOutput, column: &str, layout: OutputLayout) -> Result<(OutKind, Vec<Field>)> {
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

fn plan_inputs(cmd: &ScoreCommand, schema: &Schema, inputs: &[IoInfo]) -> Result<Vec<InputFeed>> {
    if !cmd.feature_columns.is_empty() && inputs.len() != 1 {
        return Err(ScoreError::InvalidArgument(format!(
            "feature_columns applies to models with a single 2-D input; this model has inputs {}: use columns",
            inputs.iter().map(|i| format!("'{}'", i.name)).collect::<Vec<_>>().join(", ")
        )));
    }
    for key in cmd.columns.keys() {
        if !inputs.iter().any(|i| &i.name == key) {
            return Err(ScoreError::InvalidArgument(format!(
                "columns names model input '{key}', which the model does not have (inputs: {})",
                inputs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", ")
            )));
        }
    }
    let column = |name: &str, input: &str, elem: &ElemType| -> Result<(usize, &Field)> {
        let i = schema.index_of(name).map_err(|_| {
            ScoreError::InvalidArgument(format!(
                "column '{name}' is missing from the input; model input '{input}' expects {elem}"
            ))
        })?;
        Ok((i, schema.field(i)))
    };
    let check_type = |field: &Field, input: &str, elem: &ElemType| -> Result<()> {
        if can_feed(field.data_type(), elem) {
            Ok(())
        } else {
            Err(feed_err(field.name(), input, elem, format!("is {}", type_label(field.data_type()))))
        }
    };

    let mut feeds = Vec::new();
    for input in inputs {
        let ValueInfo::Tensor { elem, shape } = &input.info else {
            return Err(ScoreError::FailedPrecondition(format!(
                "model input '{}' is {}, which lakescore cannot feed (tensors only)",
                input.name, input.info
            )));
        };
        if !supported_elem(elem) {
            return Err(ScoreError::FailedPrecondition(format!(
                "model input '{}' has element type {elem}, which lakescore cannot feed \
                 (float32, float64, int32, int64, bool, string)",
                input.name
            )));
        }
        let rank = shape.len();
        if rank == 0 {
            return Err(ScoreError::FailedPrecondition(format!(
                "model input '{}' is a scalar, not one value per row",
                input.name
            )));
        }
        let inner: Vec<Option<i64>> = shape[1..].to_vec();
        let describe = input.info.to_string();
        let explicit: Option<Vec<String>> = cmd
            .columns
            .get(&input.name)
            .map(|l| l.names.clone())
            .or_else(|| (!cmd.feature_columns.is_empty()).then(|| cmd.feature_columns.clone()));

        // A single FixedSizeList column (named explicitly, or after the input).
        let list_candidate: Option<String> = match &explicit {
            Some(names) if names.len() == 1 => Some(names[0].clone()),
            None => Some(input.name.clone()),
            _ => None,
        };
        if rank >= 2 {
            if let Some(name) = &list_candidate {
                if let Ok(i) = schema.index_of(name) {
                    if let DataType::FixedSizeList(item, width) = schema.field(i).data_type() {
                        let dims = fixed_dims(&inner).ok_or_else(|| {
                            ScoreError::FailedPrecondition(format!(
                                "model input '{}' ({describe}) has symbolic inner dimensions; feed it from scalar columns",
                                input.name
                            ))
                        })?;
                        let want: usize = dims.iter().product();
                        if *width as usize != want {
                            return Err(feed_err(
                                name,
                                &input.name,
                                elem,
                                format!("is a list of {width} values, but {want} are needed ({describe})"),
                            ));
                        }
                        if !can_feed(item.data_type(), elem) {
                            return Err(feed_err(
                                name,
                                &input.name,
                                elem,
                                format!("holds {}", type_label(item.data_type())),
                            ));
                        }
                        feeds.push(InputFeed {
                            name: input.name.clone(),
                            elem: elem.clone(),
                            rank,
                            source: FeedSource::List { index: i, column: name.clone(), dims },
                        });
                        continue;
                    }
                }
            }
        }
        if rank > 2 {
            return Err(ScoreError::InvalidArgument(format!(
                "model input '{}' ({describe}) must be fed from one fixed-size list column named '{}' (or mapped with columns)",
                input.name, input.name
            )));
        }
        let width = inner.first().copied().flatten();
        let names: Vec<String> = match explicit {
            Some(names) => names,
            None => {
                if schema.index_of(&input.name).is_ok() && (rank == 1 || width.is_none() || width == Some(1)) {
                    vec![input.name.clone()]
                } else if schema.index_of(&input.name).is_ok() {
                    return Err(ScoreError::InvalidArgument(format!(
                        "column '{}' is one value per row, but model input '{}' expects {describe}: \
                         send a fixed-size list column, or name the columns with {}",
                        input.name,
                        input.name,
                        if inputs.len() == 1 { "feature_columns" } else { "columns" }
                    )));
                } else {
                    return Err(ScoreError::InvalidArgument(format!(
                        "column '{}' is missing from the input; model input '{}' expects {describe}: \
                         send a column named '{}', or name the columns with {}",
                        input.name,
                        input.name,
                        input.name,
                        if inputs.len() == 1 { "feature_columns" } else { "columns" }
                    )));
                }
            }
        };
        if names.is_empty() {
            return Err(ScoreError::InvalidArgument(format!("no columns given for model input '{}'", input.name)));
        }
        if rank == 1 && names.len() != 1 {
            return Err(ScoreError::InvalidArgument(format!(
                "model input '{}' ({describe}) takes one column, {} given",
                input.name,
                names.len()
            )));
        }
        if let Some(w) = width {
            if rank == 2 && names.len() as i64 != w {
                return Err(ScoreError::InvalidArgument(format!(
                    "model input '{}' expects {describe}: {w} columns, {} given",
                    input.name,
                    names.len()
                )));
            }
        }
        let mut cols = Vec::with_capacity(names.len());
        let mut seen = HashSet::new();
        for name in &names {
            if !seen.insert(name.as_str()) {
                return Err(ScoreError::InvalidArgument(format!(
                    "column '{name}' is listed twice for model input '{}'",
                    input.name
                )));
            }
            let (i, field) = column(name, &input.name, elem)?;
            check_type(field, &input.name, elem)?;
            cols.push((i, name.clone()));
        }
        feeds.push(InputFeed { name: input.name.clone(), elem: elem.clone(), rank, source: FeedSource::Columns(cols) });
    }
    Ok(feeds)
}

fn fixed_dims(dims: &[Option<i64>]) -> Option<Vec<usize>> {
    dims.iter().map(|d| d.filter(|d| *d > 0).map(|d| d as usize)).collect()
}

/// Cast `array` to `to`, refusing values that do not survive the cast (float64 → float32
/// only refuses overflow: rounding to the nearest float32 is what every ONNX user does).
fn checked_cast(array: &ArrayRef, to: &DataType, column: &str, input: &str, elem: &ElemType) -> Result<ArrayRef> {
    let from = array.data_type();
    let safe = CastOptions { safe: true, ..Default::default() };
    let casted = cast_with_options(array, to, &safe)
        .map_err(|e| feed_err(column, input, elem, format!("cannot be cast: {e}")))?;
    if statically_lossless(from, to) {
        return Ok(casted);
    }
    let mismatch: Option<usize> = if from == &DataType::Float64 && to == &DataType::Float32 {
        let src = array.as_any().downcast_ref::<Float64Array>();
        let dst = casted.as_any().downcast_ref::<Float32Array>();
        match (src, dst) {
            (Some(src), Some(dst)) => {
                (0..src.len()).find(|i| src.is_valid(*i) && src.value(*i).is_finite() && !dst.value(*i).is_finite())
            }
            _ => return Err(ScoreError::internal("float64 → float32 cast produced another type")),
        }
    } else {
        let back = cast_with_options(&casted, from, &safe)?;
        let same = eq(&back, array)?;
        (0..array.len()).find(|i| array.is_valid(*i) && !(same.is_valid(*i) && same.value(*i)))
    };
    if let Some(row) = mismatch {
        let value = arrow::util::display::array_value_to_string(array, row).unwrap_or_default();
        return Err(feed_err(
            column,
            input,
            elem,
            format!("value {value} at row {row} cannot be converted to {} without loss", type_label(to)),
        ));
    }
    Ok(casted)
}

fn null_error(array: &dyn Array, column: &str, input: &str, elem: &ElemType, fill_possible: bool) -> ScoreError {
    let row = (0..array.len()).find(|i| array.is_null(*i)).unwrap_or(0);
    let hint = if fill_possible { "; set fill_null in the score command to replace nulls" } else { "" };
    feed_err(column, input, elem, format!("has {} null value(s), the first at row {row}{hint}", array.null_count()))
}

fn primitive_columns<T: ArrowPrimitiveType>(
    arrays: &[(&str, &ArrayRef)],
    elem: &ElemType,
    input: &str,
    fill: Option<T::Native>,
) -> Result<Vec<T::Native>> {
    let width = arrays.len();
    let rows = arrays.first().map(|(_, a)| a.len()).unwrap_or(0);
    let mut out: Vec<T::Native> = vec![T::Native::default(); rows * width];
    for (j, (name, array)) in arrays.iter().enumerate() {
        let casted = checked_cast(array, &T::DATA_TYPE, name, input, elem)?;
        let typed = casted
            .as_any()
            .downcast_ref::<PrimitiveArray<T>>()
            .ok_or_else(|| ScoreError::internal("cast produced another type"))?;
        if array.null_count() > 0 && fill.is_none() {
            return Err(null_error(array.as_ref(), name, input, elem, true));
        }
        let values = typed.values();
        let valid = |i: usize| typed.is_valid(i);
        if width == 1 {
            if typed.null_count() == 0 {
                out.copy_from_slice(values);
            } else {
                let f = fill.unwrap_or_default();
                for (i, o) in out.iter_mut().enumerate() {
                    *o = if valid(i) { values[i] } else { f };
                }
            }
        } else if typed.null_count() == 0 {
            for (i, v) in values.iter().enumerate() {
                out[i * width + j] = *v;
            }
        } else {
            let f = fill.unwrap_or_default();
            for (i, v) in values.iter().enumerate() {
                out[i * width + j] = if valid(i) { *v } else { f };
            }
        }
    }
    Ok(out)
}

/// A dictionary-encoded column as plain values (a lossless cast); other columns as they are.
fn decode_dictionary(array: &ArrayRef, column: &str, input: &str, elem: &ElemType) -> Result<ArrayRef> {
    match array.data_type() {
        DataType::Dictionary(_, values) => cast_with_options(array, values, &CastOptions::default())
            .map_err(|e| feed_err(column, input, elem, format!("cannot be decoded from its dictionary: {e}"))),
        _ => Ok(array.clone()),
    }
}

/// Columns (all of `rows` rows) → one row-major tensor payload of `elem`.
fn interleave(arrays: &[(&str, &ArrayRef)], elem: &ElemType, input: &str, fill: Option<f64>) -> Result<TensorData> {
    let decoded: Vec<(&str, ArrayRef)> = arrays
        .iter()
        .map(|(name, array)| Ok((*name, decode_dictionary(array, name, input, elem)?)))
        .collect::<Result<_>>()?;
    let arrays: Vec<(&str, &ArrayRef)> = decoded.iter().map(|(name, array)| (*name, array)).collect();
    let arrays = arrays.as_slice();
    Ok(match elem {
        ElemType::Float32 => {
            TensorData::Float32(primitive_columns::<Float32Type>(arrays, elem, input, fill.map(|f| f as f32))?)
        }
        ElemType::Float64 => TensorData::Float64(primitive_columns::<Float64Type>(arrays, elem, input, fill)?),
        ElemType::Int32 => {
            TensorData::Int32(primitive_columns::<Int32Type>(arrays, elem, input, fill.map(|f| f as i32))?)
        }
        ElemType::Int64 => {
            TensorData::Int64(primitive_columns::<Int64Type>(arrays, elem, input, fill.map(|f| f as i64))?)
        }
        ElemType::Bool => {
            let width = arrays.len();
            let rows = arrays.first().map(|(_, a)| a.len()).unwrap_or(0);
            let mut out = vec![false; rows * width];
            for (j, (name, array)) in arrays.iter().enumerate() {
                let casted = checked_cast(array, &DataType::Boolean, name, input, elem)?;
                let typed = casted
                    .as_any()
                    .downcast_ref::<BooleanArray>()
                    .ok_or_else(|| ScoreError::internal("cast produced another type"))?;
                if array.null_count() > 0 && fill.is_none() {
                    return Err(null_error(array.as_ref(), name, input, elem, true));
                }
                let f = fill.is_some_and(|f| f != 0.0);
                for i in 0..rows {
                    out[i * width + j] = if typed.is_valid(i) { typed.value(i) } else { f };
                }
            }
            TensorData::Bool(out)
        }
        ElemType::String => {
            let width = arrays.len();
            let rows = arrays.first().map(|(_, a)| a.len()).unwrap_or(0);
            let mut out = vec![String::new(); rows * width];
            for (j, (name, array)) in arrays.iter().enumerate() {
                if array.null_count() > 0 {
                    return Err(null_error(array.as_ref(), name, input, elem, false));
                }
                let casted = cast_with_options(array, &DataType::Utf8, &CastOptions::default())
                    .map_err(|e| feed_err(name, input, elem, format!("cannot be read as string: {e}")))?;
                let typed = casted
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .ok_or_else(|| ScoreError::internal("cast produced another type"))?;
                for i in 0..rows {
                    out[i * width + j] = typed.value(i).to_string();
                }
            }
            TensorData::String(out)
        }
        ElemType::Other(o) => {
            return Err(ScoreError::FailedPrecondition(format!("model input '{input}' has element type {o}")))
        }
    })
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

fn output_arrays(oc: &OutputColumns, expected: &OutputShape, value: OutputValue, rows: usize) -> Result<Vec<ArrayRef>> {
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

/// Derive an input schema from a model's inputs (for `describe` without an input schema):
/// one column per input named after it (`[N]`, `[N, 1]`), `feature_columns` /
/// `columns` for `[N, F]`, else a fixed-size list column named after the input.
pub fn schema_from_model(cmd: &ScoreCommand, inputs: &[IoInfo]) -> Result<SchemaRef> {
    let mut fields = Vec::new();
    for input in inputs {
        let ValueInfo::Tensor { elem, shape } = &input.info else {
            return Err(ScoreError::FailedPrecondition(format!("model input '{}' is not a tensor", input.name)));
        };
        let dt = arrow_type(elem)?;
        let names: Option<Vec<String>> = cmd
            .columns
            .get(&input.name)
            .map(|l| l.names.clone())
            .or_else(|| (!cmd.feature_columns.is_empty()).then(|| cmd.feature_columns.clone()));
        let inner = fixed_dims(shape.get(1..).unwrap_or(&[]));
        match (names, shape.len(), inner) {
            (Some(names), _, _) => fields.extend(names.into_iter().map(|n| Field::new(n, dt.clone(), false))),
            (None, 1, _) => fields.push(Field::new(&input.name, dt, false)),
            (None, _, Some(dims)) if dims.iter().product::<usize>() == 1 => {
                fields.push(Field::new(&input.name, dt, false))
            }
            (None, _, Some(dims)) => fields.push(Field::new(
                &input.name,
                DataType::FixedSizeList(Arc::new(Field::new("item", dt, false)), dims.iter().product::<usize>() as i32),
                false,
            )),
            (None, _, None) => fields.push(Field::new(&input.name, dt, false)),
        }
    }
    Ok(Arc::new(Schema::new(fields)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, UInt64Array};
    use lakescore_proto::{ColumnList, OutputSpec};

    fn tensor_io(name: &str, elem: ElemType, shape: Vec<Option<i64>>) -> IoInfo {
        IoInfo { name: name.into(), info: ValueInfo::Tensor { elem, shape } }
    }

    fn classifier_outputs() -> Vec<ResolvedOutput> {
        vec![
            ResolvedOutput {
                name: "output_label".into(),
                shape: OutputShape::Tensor { elem: ElemType::Int64, dims: vec![] },
            },
            ResolvedOutput {
                name: "output_probability".into(),
                shape: OutputShape::SeqMap { keys: MapKeys::Int64(vec![0, 1]), value: ElemType::Float32 },
            },
        ]
    }

    fn batch(cols: Vec<(&str, ArrayRef)>) -> RecordBatch {
        RecordBatch::try_from_iter(cols).unwrap()
    }

    #[test]
    fn feeds_a_2d_input_from_feature_columns_with_casts() {
        let b = batch(vec![
            ("a", Arc::new(Float64Array::from(vec![1.5, 2.5])) as ArrayRef),
            ("b", Arc::new(Int64Array::from(vec![3, 4])) as ArrayRef),
            ("id", Arc::new(StringArray::from(vec!["x", "y"])) as ArrayRef),
        ]);
        let cmd = ScoreCommand { feature_columns: vec!["a".into(), "b".into()], ..Default::default() };
        let inputs = [tensor_io("X", ElemType::Float32, vec![None, Some(2)])];
        let plan = ScorePlan::new(&cmd, b.schema(), &inputs, &classifier_outputs(), Default::default()).unwrap();
        let feeds = plan.feeds(&b).unwrap();
        assert_eq!(feeds[0].1.shape, vec![2, 2]);
        assert_eq!(feeds[0].1.data, TensorData::Float32(vec![1.5, 3.0, 2.5, 4.0]));
        let names: Vec<_> = plan.output_schema().fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(names, vec!["a", "b", "id", "label", "probability_0", "probability_1"]);

        let out = plan
            .assemble(
                &b,
                vec![
                    OutputValue::Tensor(Tensor { shape: vec![2], data: TensorData::Int64(vec![1, 0]) }),
                    OutputValue::SeqMap {
                        keys: MapKeys::Int64(vec![0, 1]),
                        values: TensorData::Float32(vec![0.25, 0.75, 0.5, 0.5]),
                        rows: 2,
                    },
                ],
            )
            .unwrap();
        let p1 = out.column(5).as_any().downcast_ref::<Float32Array>().unwrap();
        assert_eq!(p1.values(), &[0.75, 0.5]);
    }

    #[test]
    fn refuses_lossy_casts_and_nulls_naming_the_column() {
        let b = batch(vec![
            ("a", Arc::new(Int64Array::from(vec![1, 16_777_217])) as ArrayRef),
            ("b", Arc::new(Float64Array::from(vec![Some(1.0), None])) as ArrayRef),
        ]);
        let inputs = [tensor_io("X", ElemType::Float32, vec![None, Some(2)])];
        let cmd = ScoreCommand { feature_columns: vec!["a".into(), "b".into()], ..Default::default() };
        let plan = ScorePlan::new(&cmd, b.schema(), &inputs, &classifier_outputs(), Default::default()).unwrap();
        let err = plan.feeds(&b).unwrap_err();
        assert!(
            matches!(&err, ScoreError::InvalidArgument(m) if m.contains("'a'") && m.contains("16777217") && m.contains("float32")),
            "{err}"
        );

        let b2 = batch(vec![
            ("a", Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef),
            ("b", Arc::new(Float64Array::from(vec![Some(1.0), None])) as ArrayRef),
        ]);
        let err = plan.feeds(&b2).unwrap_err();
        assert!(matches!(&err, ScoreError::InvalidArgument(m) if m.contains("'b'") && m.contains("null")), "{err}");

        let cmd = ScoreCommand { fill_null: Some(-1.0), ..cmd };
        let plan = ScorePlan::new(&cmd, b2.schema(), &inputs, &classifier_outputs(), Default::default()).unwrap();
        assert_eq!(plan.feeds(&b2).unwrap()[0].1.data, TensorData::Float32(vec![1.0, 1.0, 2.0, -1.0]));

        let b3 = batch(vec![("a", Arc::new(UInt64Array::from(vec![u64::MAX])) as ArrayRef)]);
        let inputs = [tensor_io("a", ElemType::Int64, vec![None])];
        let plan =
            ScorePlan::new(&ScoreCommand::default(), b3.schema(), &inputs, &classifier_outputs(), Default::default())
                .unwrap();
        assert!(plan.feeds(&b3).is_err());
    }

    #[test]
    fn refuses_wrong_types_and_missing_columns_at_plan_time() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("age", DataType::Utf8, false),
            Field::new("city", DataType::Int64, false),
        ]));
        let inputs = [
            tensor_io("age", ElemType::Float32, vec![None, Some(1)]),
            tensor_io("city", ElemType::String, vec![None, Some(1)]),
        ];
        let err = ScorePlan::new(
            &ScoreCommand::default(),
            schema.clone(),
            &inputs,
            &classifier_outputs(),
            Default::default(),
        )
        .unwrap_err();
        assert!(
            matches!(&err, ScoreError::InvalidArgument(m) if m.contains("'age'") && m.contains("float32")),
            "{err}"
        );

        let inputs = [tensor_io("income", ElemType::Float32, vec![None, Some(1)])];
        let err = ScorePlan::new(
            &ScoreCommand::default(),
            schema.clone(),
            &inputs,
            &classifier_outputs(),
            Default::default(),
        )
        .unwrap_err();
        assert!(matches!(&err, ScoreError::InvalidArgument(m) if m.contains("'income'")), "{err}");

        // Collision between an output column and an input column.
        let schema = Arc::new(Schema::new(vec![
            Field::new("x", DataType::Float32, false),
            Field::new("label", DataType::Int64, false),
        ]));
        let inputs = [tensor_io("x", ElemType::Float32, vec![None])];
        let err = ScorePlan::new(
            &ScoreCommand::default(),
            schema.clone(),
            &inputs,
            &classifier_outputs(),
            Default::default(),
        )
        .unwrap_err();
        assert!(matches!(&err, ScoreError::InvalidArgument(m) if m.contains("collides")), "{err}");
        let cmd = ScoreCommand {
            passthrough_columns: vec!["x".into()],
            columns: [("x".to_string(), ColumnList { names: vec!["x".into()] })].into(),
            outputs: vec![OutputSpec {
                name: "output_probability".into(),
                column: "p".into(),
                layout: OutputLayout::List as i32,
            }],
            ..Default::default()
        };
        let plan = ScorePlan::new(&cmd, schema, &inputs, &classifier_outputs(), Default::default()).unwrap();
        let names: Vec<_> = plan.output_schema().fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(names, vec!["x", "p"]);
    }

    #[test]
    fn default_names() {
        let all = ["output_label", "output_probability"];
        assert_eq!(default_column_name("output_label", &all), "label");
        assert_eq!(default_column_name("variable", &["variable"]), "variable");
        assert_eq!(default_column_name("output_x", &["output_x", "x"]), "output_x");
    }
}

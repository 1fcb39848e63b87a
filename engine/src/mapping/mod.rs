//! The Arrow ⇄ tensor mapping shared by every engine: which columns feed which model
//! input (with lossless casting and null handling), and how model outputs become columns.
//!
//! A [`ScorePlan`] is built once per input schema (per Flight stream or per file) and
//! validates everything that can be checked without data; per batch it turns a
//! [`RecordBatch`] into input tensors ([`ScorePlan::feeds`]) and the model outputs back
//! into the enriched batch ([`ScorePlan::assemble`]).
//!
//! This module holds the plan; `input` maps columns to tensors, `output` tensors to
//! columns. The per-row output shapes come from the load-time probe
//! ([`crate::engine::probe`]).

mod input;
mod output;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use lakescore_proto::{OutputLayout, ScoreCommand};

use self::input::{fixed_dims, plan_inputs, InputFeed};
pub use self::output::default_column_name;
use self::output::{output_arrays, output_fields, OutputColumns};
use crate::engine::probe::{OutputShape, ResolvedOutput};
use crate::engine::{ElemType, IoInfo, OutputValue, Tensor, ValueType};
use crate::error::{Result, ScoreError};

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

/// Options for building a plan.
#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    /// Schema-level metadata added to the output schema (model, version, sha256).
    pub metadata: HashMap<String, String>,
    /// Whether the model defines what a missing value is ([`crate::engine::defines_missing_values`]):
    /// with `missing: auto`, nulls in its float inputs reach it as `NaN`.
    pub model_defines_missing: bool,
}

/// What a null in a model input becomes where no fill value covers its column
/// (`ScoreCommand.missing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Missing {
    /// `NaN` in float inputs of a model that defines missing values; refused otherwise.
    #[default]
    Auto,
    /// `NaN` in every float input.
    Nan,
    /// Every null refused (strict).
    Error,
}

impl Missing {
    /// Its name in a command.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Nan => "nan",
            Self::Error => "error",
        }
    }

    /// The mode a command names: `""`/`auto`, `nan` or `error`.
    pub fn parse(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(Self::Auto),
            "nan" => Ok(Self::Nan),
            "error" | "strict" => Ok(Self::Error),
            other => Err(ScoreError::InvalidArgument(format!(
                "missing '{other}' is not one of auto (the default), nan, error"
            ))),
        }
    }
}

/// How nulls in the input columns are handled, from the command and the model.
#[derive(Debug, Clone)]
pub(super) struct NullPolicy {
    fill: Option<f64>,
    columns: HashMap<String, f64>,
    missing: Missing,
    model_defines_missing: bool,
}

impl NullPolicy {
    fn new(cmd: &ScoreCommand, model_defines_missing: bool) -> Result<Self> {
        let missing = Missing::parse(&cmd.missing)?;
        let check = |what: String, v: f64| {
            if v.is_infinite() {
                return Err(ScoreError::InvalidArgument(format!("{what} must be a finite number or NaN, not {v}")));
            }
            Ok(())
        };
        if let Some(v) = cmd.fill_null {
            check("fill_null".into(), v)?;
        }
        for (column, v) in &cmd.fill_null_columns {
            check(format!("fill_null_columns['{column}']"), *v)?;
        }
        Ok(Self {
            fill: cmd.fill_null,
            columns: cmd.fill_null_columns.clone().into_iter().collect(),
            missing,
            model_defines_missing,
        })
    }

    /// What a null in `column`, which feeds an input of `elem`, becomes: a value (`NaN`
    /// included), or `None`: refused. A `NaN` fill applies to float inputs only.
    pub(super) fn fill(&self, column: &str, elem: &ElemType) -> Option<f64> {
        if !matches!(elem, ElemType::Float32 | ElemType::Float64 | ElemType::Int32 | ElemType::Int64 | ElemType::Bool) {
            return None;
        }
        let float = matches!(elem, ElemType::Float32 | ElemType::Float64);
        let given = self.columns.get(column).copied().or(self.fill).filter(|v| float || !v.is_nan());
        given.or_else(|| {
            let nan = match self.missing {
                Missing::Auto => self.model_defines_missing,
                Missing::Nan => true,
                Missing::Error => false,
            };
            (float && nan).then_some(f64::NAN)
        })
    }

    /// What to tell a caller whose null in a column feeding `elem` was refused.
    pub(super) fn hint(&self, elem: &ElemType) -> &'static str {
        match elem {
            ElemType::Float32 | ElemType::Float64 => match self.missing {
                Missing::Auto => {
                    "; this model does not define missing values (it has no tree ensemble or Imputer): set \
                     fill_null (fill_null_columns per column) to replace nulls, or missing 'nan' to pass them as NaN"
                }
                _ => "; set fill_null (fill_null_columns per column) to replace nulls, or missing 'nan' to pass them as NaN",
            },
            ElemType::Int32 | ElemType::Int64 | ElemType::Bool => {
                "; this input has no NaN: set fill_null (fill_null_columns per column) to replace nulls"
            }
            _ => "",
        }
    }
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
    /// Fixed batch size of the model's inputs, if any.
    fixed_rows: Option<usize>,
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
        let nulls = NullPolicy::new(cmd, options.model_defines_missing)?;
        let feeds = plan_inputs(cmd, &input_schema, inputs, &nulls)?;
        let fixed_rows = inputs.iter().find_map(|i| match &i.info {
            ValueType::Tensor { shape, .. } => shape.first().copied().flatten().filter(|d| *d > 0).map(|d| d as usize),
            _ => None,
        });
        for f in &feeds {
            if !matches!(f.elem, ElemType::Int32 | ElemType::Int64) {
                continue;
            }
            for (column, fill) in f.fills() {
                if fill.is_some_and(|v| v.fract() != 0.0) {
                    return Err(ScoreError::InvalidArgument(format!(
                        "the fill value {} for column '{column}' is not an integer, but model input '{}' expects {}",
                        fill.unwrap_or_default(),
                        f.name,
                        f.elem
                    )));
                }
            }
        }
        for column in cmd.fill_null_columns.keys() {
            if !feeds.iter().any(|f| f.elem != ElemType::String && f.fills().any(|(c, _)| c == column)) {
                return Err(ScoreError::InvalidArgument(format!(
                    "fill_null_columns names column '{column}', which feeds no numeric or bool model input \
                     (string inputs take no fill value)"
                )));
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

    /// The input columns the plan reads (the model's features and the kept columns), by
    /// name in input-schema order: a reader may leave every other column unread.
    pub fn read_columns(&self) -> Vec<&str> {
        let fed: Vec<&str> = self.feeds.iter().flat_map(|f| f.fills().map(|(c, _)| c)).collect();
        self.input_schema
            .fields()
            .iter()
            .enumerate()
            .filter(|(i, f)| self.passthrough.contains(i) || fed.contains(&f.name().as_str()))
            .map(|(_, f)| f.name().as_str())
            .collect()
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
        self.feeds.iter().map(|feed| Ok((feed.name.clone(), feed.tensor(batch)?))).collect()
    }

    /// The batch's feature columns as they are, for a model that [takes
    /// columns](crate::engine::LoadedModel::takes_columns): when its one input is `[N, F]`
    /// float32 from F float32 columns without nulls, which is when [`Self::feeds`] would only
    /// interleave them. `None` otherwise (casts, nulls, lists, several inputs).
    pub fn float_columns<'a>(&self, batch: &'a RecordBatch) -> Option<Vec<&'a [f32]>> {
        match self.feeds.as_slice() {
            [feed] => feed.float_columns(batch),
            _ => None,
        }
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

/// Derive an input schema from a model's inputs (for `describe` without an input schema):
/// one column per input named after it (`[N]`, `[N, 1]`), `feature_columns` /
/// `columns` for `[N, F]`, else a fixed-size list column named after the input.
pub fn schema_from_model(cmd: &ScoreCommand, inputs: &[IoInfo]) -> Result<SchemaRef> {
    let mut fields = Vec::new();
    for input in inputs {
        let ValueType::Tensor { elem, shape } = &input.info else {
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
    use crate::engine::{MapKeys, TensorData};
    use arrow::array::{Float32Array, Float64Array, Int64Array, StringArray};
    use lakescore_proto::{ColumnList, OutputSpec};

    pub(super) fn tensor_io(name: &str, elem: ElemType, shape: Vec<Option<i64>>) -> IoInfo {
        IoInfo { name: name.into(), info: ValueType::Tensor { elem, shape } }
    }

    pub(super) fn classifier_outputs() -> Vec<ResolvedOutput> {
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

    pub(super) fn batch(cols: Vec<(&str, ArrayRef)>) -> RecordBatch {
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
    fn refuses_wrong_types_and_missing_columns_at_plan_time() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("age", DataType::Date32, false),
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
            matches!(&err, ScoreError::InvalidArgument(m) if m.contains("'age' is date32") && m.contains("float32")),
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
        // `label` is neither fed nor kept: a reader can leave it out.
        assert_eq!(plan.read_columns(), vec!["x"]);
    }
}

//! `predict(model_ref, …)`: scores rows with a registry model inside a SQL query and
//! returns the model's outputs as one struct, its fields named like the Flight outputs
//! (`label`, `probability_1`, `variable`, …).
//!
//! Arguments after the reference feed the model the way a Flight stream's columns do
//! ([`crate::mapping`]): for a model with one input, the arguments in order are its feature
//! columns (`predict('fraud@champion', amount, age, …)`); for a model with several inputs,
//! each argument is the column named like the input it feeds, or one struct argument holds
//! them by name (`predict('m', named_struct('city', c, 'amount', a))`).
//!
//! Models are resolved before the query is planned, once per query with the caller's
//! token (see [`model_references`]), so `fraud@champion` cannot change version
//! mid-query; the function only looks them up. Batches are scored whole, through the same
//! loaded models as Flight scoring.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, RecordBatchOptions, StructArray};
use arrow::datatypes::{DataType, Field, FieldRef, Fields, Schema, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use lakescore_proto::ScoreCommand;

use crate::error::ScoreError;
use crate::mapping::ScorePlan;
use crate::scorer::{score_chunk, ResolvedModel, Scorer};

/// The SQL function's name.
pub const PREDICT: &str = "predict";

/// The model references a statement passes to `predict` as string literals, in order of
/// appearance, each once. Found with the SQL tokenizer, so that comments and string
/// contents are never mistaken for calls.
pub fn model_references(sql: &str) -> Result<Vec<String>, ScoreError> {
    let tokens = Tokenizer::new(&GenericDialect {}, sql)
        .tokenize()
        .map_err(|e| ScoreError::InvalidArgument(format!("SQL: {e}")))?;
    let significant: Vec<&Token> = tokens.iter().filter(|t| !matches!(t, Token::Whitespace(_))).collect();
    let mut refs: Vec<String> = Vec::new();
    for window in significant.windows(3) {
        if let [Token::Word(w), Token::LParen, Token::SingleQuotedString(reference)] = window {
            if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(PREDICT) && !refs.contains(reference) {
                refs.push(reference.clone());
            }
        }
    }
    Ok(refs)
}

/// The `predict` function of one query, over the models resolved for it.
#[derive(Debug)]
pub struct Predict {
    scorer: Arc<Scorer>,
    models: Arc<HashMap<String, ResolvedModel>>,
    signature: Signature,
}

impl PartialEq for Predict {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.models, &other.models)
    }
}

impl Eq for Predict {}

impl Hash for Predict {
    fn hash<H: Hasher>(&self, state: &mut H) {
        Arc::as_ptr(&self.models).hash(state);
    }
}

impl Predict {
    /// The function over `models` (reference as written → resolved model).
    pub fn udf(scorer: Arc<Scorer>, models: Arc<HashMap<String, ResolvedModel>>) -> ScalarUDF {
        ScalarUDF::new_from_impl(Self { scorer, models, signature: Signature::variadic_any(Volatility::Immutable) })
    }

    fn model(&self, reference: Option<&ScalarValue>) -> Result<&ResolvedModel, ScoreError> {
        let reference = match reference {
            Some(ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) | ScalarValue::Utf8View(Some(s))) => s,
            _ => {
                return Err(ScoreError::InvalidArgument(
                    "predict's first argument must be the model reference as a string literal, \
                     e.g. predict('fraud@champion', amount, age)"
                        .into(),
                ))
            }
        };
        self.models.get(reference).ok_or_else(|| {
            ScoreError::InvalidArgument(format!(
                "predict: model reference '{reference}' must be written as a string literal in the query"
            ))
        })
    }

    /// The input schema and the score command that feed `model` from the arguments after
    /// the reference.
    fn feed(model: &ResolvedModel, args: &[FieldRef]) -> Result<(SchemaRef, ScoreCommand, bool), ScoreError> {
        let inputs = model.handle.model.inputs();
        if args.is_empty() {
            return Err(ScoreError::InvalidArgument(format!(
                "predict('{}', …) needs the columns that feed the model (inputs: {})",
                model.reference,
                inputs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", ")
            )));
        }
        // One struct argument: its fields, by name.
        if let [only] = args {
            if let DataType::Struct(fields) = only.data_type() {
                let cmd = ScoreCommand {
                    drop_input_columns: true,
                    feature_columns: if inputs.len() == 1 && fields.len() > 1 {
                        fields.iter().map(|f| f.name().clone()).collect()
                    } else {
                        Vec::new()
                    },
                    ..Default::default()
                };
                return Ok((Arc::new(Schema::new(fields.clone())), cmd, true));
            }
        }
        let mut names: Vec<String> = Vec::with_capacity(args.len());
        for (i, f) in args.iter().enumerate() {
            let name = if names.contains(f.name()) { format!("{}#{}", f.name(), i + 1) } else { f.name().clone() };
            names.push(name);
        }
        let fields: Vec<Field> =
            args.iter().zip(&names).map(|(f, name)| Field::new(name, f.data_type().clone(), f.is_nullable())).collect();
        // A model with one input takes the arguments in order, as its feature columns; a
        // model with several finds each input's column by name.
        let feature_columns = if inputs.len() == 1 { names } else { Vec::new() };
        let cmd = ScoreCommand { drop_input_columns: true, feature_columns, ..Default::default() };
        Ok((Arc::new(Schema::new(fields)), cmd, false))
    }

    fn plan(&self, model: &ResolvedModel, args: &[FieldRef]) -> Result<(Arc<ScorePlan>, bool), ScoreError> {
        let (schema, cmd, structured) = Self::feed(model, args)?;
        let plan =
            self.scorer.plan(model, &cmd, schema).map_err(|e| e.context(format!("predict('{}')", model.reference)))?;
        Ok((plan, structured))
    }
}

fn external(e: ScoreError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

impl ScalarUDFImpl for Predict {
    fn name(&self) -> &str {
        PREDICT
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Err(DataFusionError::Internal("predict's type comes from return_field_from_args".into()))
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DfResult<FieldRef> {
        let model = self.model(args.scalar_arguments.first().copied().flatten()).map_err(external)?;
        let (plan, _) = self.plan(model, &args.arg_fields[1..]).map_err(external)?;
        let fields: Fields = plan.output_schema().fields().clone();
        Ok(Arc::new(Field::new(PREDICT, DataType::Struct(fields), true)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let reference = match args.args.first() {
            Some(ColumnarValue::Scalar(s)) => Some(s),
            _ => None,
        };
        let model = self.model(reference).map_err(external)?;
        let (plan, structured) = self.plan(model, &args.arg_fields[1..]).map_err(external)?;
        let rows = args.number_rows;
        let mut columns: Vec<ArrayRef> =
            args.args[1..].iter().map(|a| a.to_array(rows)).collect::<DfResult<Vec<ArrayRef>>>()?;
        if structured {
            let only = columns.pop().ok_or_else(|| DataFusionError::Internal("predict: no struct argument".into()))?;
            let array = only
                .as_any()
                .downcast_ref::<StructArray>()
                .ok_or_else(|| DataFusionError::Internal("predict: the struct argument is not a struct".into()))?;
            columns = array.columns().to_vec();
        }
        let batch = RecordBatch::try_new_with_options(
            plan.input_schema().clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )?;
        // Inference is CPU-bound and runs on the query's thread: on the worker's
        // multi-threaded runtime, tell tokio first, so that other calls' tasks move to
        // other threads meanwhile (Flight scoring uses blocking threads for the same reason).
        let run = || score_chunk(&model.handle, &plan, &batch);
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let scored = if multi_thread { tokio::task::block_in_place(run) } else { run() };
        let scored =
            scored.map_err(|e| {
                external(e.context(format!(
                    "predict('{}') = {}:{}",
                    model.reference, model.version.model, model.version.version
                )))
            })?;
        Ok(ColumnarValue::Array(Arc::new(StructArray::from(scored))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_literal_references_only() {
        let sql = "SELECT predict('fraud@champion', a, b) AS p, PREDICT ( 'churn:3', c), \
                   'predict(''not this'')' -- predict('nor this')\n, \"predict\"('quoted') /* predict('x') */ \
                   FROM t WHERE predict('fraud@champion', a, b)['label'] = 1";
        assert_eq!(model_references(sql).unwrap(), vec!["fraud@champion".to_string(), "churn:3".to_string()]);
        assert!(model_references("SELECT 1").unwrap().is_empty());
        assert!(model_references("SELECT 'unterminated").is_err());
    }
}

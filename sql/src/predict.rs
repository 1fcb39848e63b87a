//! `predict(model_ref, …)`: scores rows with a registry model inside a SQL query and
//! returns the model's outputs as one struct, its fields named like the Flight outputs
//! (`label`, `probability_1`, `variable`, …).
//!
//! Arguments after the reference feed the model the way a Flight stream's columns do
//! ([`lakescore_engine::mapping`]): for a model with one input, the arguments in order are its feature
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
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{plan_datafusion_err, plan_err, Column, ScalarValue, TableReference};
use datafusion::datasource::{provider_as_source, ViewTable};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::session_state::SessionState;
use datafusion::functions::core::expr_fn::{get_field, named_struct};
use datafusion::logical_expr::{
    lit, ColumnarValue, Expr, LogicalPlanBuilder, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature, Volatility,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use futures::FutureExt;
use lakescore_proto::ScoreCommand;

use lakescore_engine::error::ScoreError;
use lakescore_engine::mapping::{Missing, ScorePlan};
use lakescore_engine::scorer::{score_chunk, ResolvedModel, Scorer};

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
    /// What a null in a model input becomes (the session's `lakescore.missing`).
    missing: Missing,
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
    /// The function over `models` (reference as written → resolved model), handling nulls
    /// in model inputs as `missing` says.
    pub fn udf(scorer: Arc<Scorer>, models: Arc<HashMap<String, ResolvedModel>>, missing: Missing) -> ScalarUDF {
        let signature = Signature::variadic_any(Volatility::Immutable);
        ScalarUDF::new_from_impl(Self { scorer, models, missing, signature })
    }

    fn model(&self, reference: Option<&ScalarValue>) -> Result<&ResolvedModel, ScoreError> {
        lookup(&self.models, reference)
    }

    /// The input schema and the score command that feed `model` from the arguments after
    /// the reference.
    fn feed(&self, model: &ResolvedModel, args: &[FieldRef]) -> Result<(SchemaRef, ScoreCommand, bool), ScoreError> {
        let missing = self.missing.name().to_string();
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
                    missing,
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
        let cmd = ScoreCommand { drop_input_columns: true, feature_columns, missing, ..Default::default() };
        Ok((Arc::new(Schema::new(fields)), cmd, false))
    }

    fn plan(&self, model: &ResolvedModel, args: &[FieldRef]) -> Result<(Arc<ScorePlan>, bool), ScoreError> {
        let (schema, cmd, structured) = self.feed(model, args)?;
        let plan =
            self.scorer.plan(model, &cmd, schema).map_err(|e| e.context(format!("predict('{}')", model.reference)))?;
        Ok((plan, structured))
    }
}

/// The model a `predict` call names, among those resolved for the query.
fn lookup<'m>(
    models: &'m HashMap<String, ResolvedModel>,
    reference: Option<&ScalarValue>,
) -> Result<&'m ResolvedModel, ScoreError> {
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
    models.get(reference).ok_or_else(|| {
        ScoreError::InvalidArgument(format!(
            "predict: model reference '{reference}' must be written as a string literal in the query"
        ))
    })
}

/// The runtime this thread runs on, when it is the multi-threaded one: the only kind on
/// which `block_in_place` may hand this thread's other tasks to other threads.
fn multi_thread_runtime() -> Option<tokio::runtime::Handle> {
    tokio::runtime::Handle::try_current()
        .ok()
        .filter(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
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
        let run = || score_chunk(model, &plan, &batch);
        let scored = if multi_thread_runtime().is_some() { tokio::task::block_in_place(run) } else { run() };
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

/// The column that carries the outputs' struct between the table form's two projections.
const SCORED: &str = "__lakescore_predict";

/// `FROM predict('fraud@champion', tx)`: the table form (Synapse's `PREDICT(MODEL = …,
/// DATA = …)`). Its rows are `tx`'s, with every column of `tx` followed by the model's
/// outputs as columns, as a Flight exchange returns them. `tx` is a table of the session,
/// its name as a string (`'lake.tx'`), or a location (`'s3://lake/tx/'`). The model's
/// inputs are fed by name from `tx`'s columns; a model with one 2-D input takes its feature
/// columns after the data, in order (`predict('m', tx, f0, f1, …)`).
///
/// It is the scalar [`Predict`] underneath: a projection of `tx`'s columns and
/// `predict(…)`, then one that spreads the struct into columns.
#[derive(Debug)]
pub struct PredictTable {
    predict: Arc<ScalarUDF>,
    models: Arc<HashMap<String, ResolvedModel>>,
}

impl PredictTable {
    /// The table function over `predict` (the query's [`Predict::udf`]) and its `models`
    /// (reference as written → resolved model).
    pub fn new(predict: Arc<ScalarUDF>, models: Arc<HashMap<String, ResolvedModel>>) -> Self {
        Self { predict, models }
    }

    /// The rows to score: a table of the session (`tx`, `'lake.tx'`) or a location
    /// (`'s3://lake/tx/'`, read through the storage roots as in `FROM '…'`).
    fn data(data: &Expr, session: &dyn Session) -> DfResult<LogicalPlanBuilder> {
        let name = match data {
            Expr::Column(c) if c.relation.is_none() => TableReference::bare(c.name.clone()),
            Expr::Literal(ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)), _) => {
                if s.contains("://") || s.starts_with('/') {
                    TableReference::bare(s.clone())
                } else {
                    TableReference::from(s.as_str())
                }
            }
            other => {
                return plan_err!(
                    "predict(…)'s second argument is the data to score: a table's name, or a location as a \
                     string, not {other}"
                )
            }
        };
        let state = session
            .as_any()
            .downcast_ref::<SessionState>()
            .ok_or_else(|| DataFusionError::Internal("predict: not a DataFusion session".into()))?;
        let schema = state.schema_for_ref(name.clone())?;
        let table = schema.table(name.table());
        // Table functions are planned synchronously, and a location's schema is read from
        // storage: wait for it without holding up the worker's other tasks.
        let provider = match multi_thread_runtime() {
            Some(h) => tokio::task::block_in_place(|| h.block_on(table)),
            None => table
                .now_or_never()
                .ok_or_else(|| plan_datafusion_err!("predict: '{name}' cannot be read while this query is planned"))?,
        }?
        .ok_or_else(|| plan_datafusion_err!("predict: no table '{name}'"))?;
        LogicalPlanBuilder::scan(name, provider_as_source(provider), None)
    }

    /// The arguments after the reference that feed `model` from the data's `columns`.
    fn feed(model: &ResolvedModel, columns: &[Column], features: &[Expr]) -> DfResult<Vec<Expr>> {
        let inputs = model.handle.model.inputs();
        if features.is_empty() {
            // By name, as one struct argument.
            let mut fields = Vec::with_capacity(inputs.len() * 2);
            for input in inputs {
                let Some(column) = columns.iter().find(|c| c.name == input.name) else {
                    return plan_err!(
                        "predict('{}', …): the data has no column '{}' for the model's input '{}' ({}); \
                         a model with one 2-D input takes its feature columns after the data: \
                         predict('{}', tx, f0, f1, …)",
                        model.reference,
                        input.name,
                        input.name,
                        input.info,
                        model.reference
                    );
                };
                fields.push(lit(input.name.clone()));
                fields.push(Expr::Column(column.clone()));
            }
            return Ok(vec![named_struct(fields)]);
        }
        if inputs.len() != 1 {
            return plan_err!(
                "predict('{}', …): feature columns after the data are for a model with one input; \
                 this one's inputs ({}) are fed from the columns named like them",
                model.reference,
                inputs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", ")
            );
        }
        features
            .iter()
            .map(|f| match f {
                Expr::Column(c) => Ok(Expr::Column(c.clone())),
                Expr::Literal(ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)), _) => {
                    Ok(Expr::Column(Column::from_name(s.clone())))
                }
                other => plan_err!("predict('{}', …): feature columns are column names, not {other}", model.reference),
            })
            .collect()
    }
}

impl TableFunctionImpl for PredictTable {
    fn call_with_args(&self, args: TableFunctionArgs) -> DfResult<Arc<dyn TableProvider>> {
        let [reference, data, features @ ..] = args.exprs() else {
            return plan_err!("predict as a table takes the model and the data: FROM predict('fraud@champion', tx)");
        };
        let literal = match reference {
            Expr::Literal(value, _) => Some(value),
            _ => None,
        };
        let model = lookup(&self.models, literal).map_err(external)?;
        let input = Self::data(data, args.session())?;
        let schema = input.schema().clone();
        let columns = schema.columns();
        let mut call = vec![reference.clone()];
        call.extend(Self::feed(model, &columns, features)?);
        let passthrough: Vec<Expr> = columns.into_iter().map(Expr::Column).collect();
        let scored = input.project(passthrough.iter().cloned().chain([self.predict.call(call).alias(SCORED)]))?;
        let DataType::Struct(outputs) = scored.schema().field_with_unqualified_name(SCORED)?.data_type().clone() else {
            return Err(DataFusionError::Internal("predict: the outputs are not a struct".into()));
        };
        if let Some(clash) = outputs.iter().find(|o| schema.has_column_with_unqualified_name(o.name())) {
            return plan_err!(
                "predict('{}', …): the model's output '{}' has the name of a column of the data; \
                 use the scalar form, which names its result: SELECT …, predict('{}', …) AS p FROM …",
                model.reference,
                clash.name(),
                model.reference
            );
        }
        let spread = outputs
            .iter()
            .map(|o| get_field(Expr::Column(Column::from_name(SCORED)), o.name().as_str()).alias(o.name()));
        let plan = scored.project(passthrough.into_iter().chain(spread))?.build()?;
        Ok(Arc::new(ViewTable::new(plan, None)))
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

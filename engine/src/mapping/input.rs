//! Columns → tensors: matching columns to model inputs at plan time, then per batch
//! dictionary decoding, lossless casts, null handling and row-major interleaving.

use std::collections::HashSet;

use arrow::array::{
    Array, ArrayRef, ArrowPrimitiveType, BooleanArray, FixedSizeListArray, Float32Array, Float64Array, PrimitiveArray,
    RecordBatch, StringArray,
};
use arrow::compute::kernels::cmp::eq;
use arrow::compute::{cast_with_options, CastOptions};
use arrow::datatypes::{DataType, Field, Float32Type, Float64Type, Int32Type, Int64Type, Schema};
use lakescore_proto::ScoreCommand;

use super::NullPolicy;
use crate::engine::probe::supported_elem;
use crate::engine::{ElemType, IoInfo, Tensor, TensorData, ValueType};
use crate::error::{Result, ScoreError};

/// How one model input is fed.
#[derive(Debug, Clone)]
pub(super) struct InputFeed {
    pub(super) name: String,
    pub(super) elem: ElemType,
    /// The full tensor shape with the batch dim first (`None` dims resolved per batch).
    rank: usize,
    source: FeedSource,
    /// What a null becomes in each source column (`None`: refused), in source order.
    fills: Vec<Option<f64>>,
    /// Said to a caller whose null was refused.
    null_hint: &'static str,
}

#[derive(Debug, Clone)]
enum FeedSource {
    /// `[N]` or `[N, F]` from F scalar columns (`[N]`: exactly one column).
    Columns(Vec<(usize, String)>),
    /// `[N, d1, d2, ...]` from one FixedSizeList column of `width` = d1·d2·… elements.
    List { index: usize, column: String, dims: Vec<usize> },
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
        // Strings are parsed per row (CSV-born data): a value that does not parse is that
        // row's error, found when the batch is scored, not a schema mismatch.
        ElemType::Float32 | ElemType::Float64 | ElemType::Int32 | ElemType::Int64 => {
            is_numeric(dt) || dt == &DataType::Boolean || is_string(dt)
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

impl FeedSource {
    /// The names of the columns it reads, in order.
    fn columns(&self) -> Vec<&str> {
        match self {
            FeedSource::Columns(cols) => cols.iter().map(|(_, c)| c.as_str()).collect(),
            FeedSource::List { column, .. } => vec![column.as_str()],
        }
    }
}

impl InputFeed {
    fn new(name: &str, elem: &ElemType, rank: usize, source: FeedSource, nulls: &NullPolicy) -> Self {
        let fills = source.columns().iter().map(|c| nulls.fill(c, elem)).collect();
        Self { name: name.to_string(), elem: elem.clone(), rank, source, fills, null_hint: nulls.hint(elem) }
    }

    /// Each source column with what a null in it becomes.
    pub(super) fn fills(&self) -> impl Iterator<Item = (&str, Option<f64>)> + '_ {
        self.source.columns().into_iter().zip(self.fills.iter().copied())
    }

    /// See [`super::ScorePlan::float_columns`].
    pub(super) fn float_columns<'a>(&self, batch: &'a RecordBatch) -> Option<Vec<&'a [f32]>> {
        let FeedSource::Columns(cols) = &self.source else { return None };
        if self.rank != 2 || self.elem != ElemType::Float32 {
            return None;
        }
        cols.iter()
            .map(|(i, _)| {
                let column = batch.column(*i).as_any().downcast_ref::<Float32Array>()?;
                (column.null_count() == 0).then(|| column.values().as_ref())
            })
            .collect()
    }

    /// This input's tensor for a batch (nulls replaced by their column's fill value, `NaN`
    /// included, where there is one).
    pub(super) fn tensor(&self, batch: &RecordBatch) -> Result<Tensor> {
        let nulls = Nulls { fills: &self.fills, hint: self.null_hint };
        let rows = batch.num_rows();
        let tensor = match &self.source {
            FeedSource::Columns(cols) => {
                let arrays: Vec<(&str, &ArrayRef)> =
                    cols.iter().map(|(i, name)| (name.as_str(), batch.column(*i))).collect();
                let data = interleave(&arrays, &self.elem, &self.name, &nulls)?;
                let shape = if self.rank == 1 { vec![rows] } else { vec![rows, cols.len()] };
                Tensor { shape, data }
            }
            FeedSource::List { index, column, dims } => {
                let list = batch
                    .column(*index)
                    .as_any()
                    .downcast_ref::<FixedSizeListArray>()
                    .ok_or_else(|| feed_err(column, &self.name, &self.elem, "is not a fixed-size list"))?;
                if list.null_count() > 0 {
                    let row = (0..list.len()).find(|i| list.is_null(*i)).unwrap_or(0);
                    return Err(feed_err(column, &self.name, &self.elem, format!("has a null list at row {row}")));
                }
                let width: usize = dims.iter().product();
                let values = list.values().slice(list.offset() * width, rows * width);
                let data = interleave(&[(column.as_str(), &values)], &self.elem, &self.name, &nulls)?;
                let mut shape = vec![rows];
                shape.extend(dims);
                Tensor { shape, data }
            }
        };
        Ok(tensor)
    }
}

pub(super) fn plan_inputs(
    cmd: &ScoreCommand,
    schema: &Schema,
    inputs: &[IoInfo],
    nulls: &NullPolicy,
) -> Result<Vec<InputFeed>> {
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
        let ValueType::Tensor { elem, shape } = &input.info else {
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
                        let source = FeedSource::List { index: i, column: name.clone(), dims };
                        feeds.push(InputFeed::new(&input.name, elem, rank, source, nulls));
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
        feeds.push(InputFeed::new(&input.name, elem, rank, FeedSource::Columns(cols), nulls));
    }
    Ok(feeds)
}

pub(super) fn fixed_dims(dims: &[Option<i64>]) -> Option<Vec<usize>> {
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
    if is_string(from) {
        return parsed(array, casted, to, column, input, elem);
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

/// Strings parsed to numbers (`casted`, a safe cast: null where a value did not parse):
/// refuses the first value that did not parse, or that overflowed to infinity.
fn parsed(
    array: &ArrayRef,
    casted: ArrayRef,
    to: &DataType,
    column: &str,
    input: &str,
    elem: &ElemType,
) -> Result<ArrayRef> {
    let text = cast_with_options(array, &DataType::Utf8, &CastOptions::default())?;
    let text = text
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| ScoreError::internal("cast produced another type"))?;
    let overflowed = |i: usize| -> bool {
        let value = match to {
            DataType::Float32 => casted.as_any().downcast_ref::<Float32Array>().map(|a| f64::from(a.value(i))),
            DataType::Float64 => casted.as_any().downcast_ref::<Float64Array>().map(|a| a.value(i)),
            _ => None,
        };
        value.is_some_and(|v| v.is_infinite()) && !text.value(i).to_ascii_lowercase().contains("inf")
    };
    let bad = (0..array.len()).find(|i| array.is_valid(*i) && (casted.is_null(*i) || overflowed(*i)));
    match bad {
        Some(row) => Err(feed_err(
            column,
            input,
            elem,
            format!("value '{}' at row {row} does not parse as {}", text.value(row), type_label(to)),
        )),
        None => Ok(casted),
    }
}

/// What nulls become in the columns of one input, in column order (`None`: refused), and
/// what to tell a caller whose null was refused.
struct Nulls<'a> {
    fills: &'a [Option<f64>],
    hint: &'static str,
}

impl Nulls<'_> {
    /// The fill value of column `j` as `T`, or the error naming the column's first null.
    fn fill<T>(
        &self,
        j: usize,
        array: &dyn Array,
        column: &str,
        input: &str,
        elem: &ElemType,
        to: impl Fn(f64) -> T,
    ) -> Result<T> {
        match self.fills.get(j).copied().flatten() {
            Some(v) => Ok(to(v)),
            None => {
                let row = (0..array.len()).find(|i| array.is_null(*i)).unwrap_or(0);
                Err(feed_err(
                    column,
                    input,
                    elem,
                    format!("has {} null value(s), the first at row {row}{}", array.null_count(), self.hint),
                ))
            }
        }
    }
}

fn primitive_columns<T: ArrowPrimitiveType>(
    arrays: &[(&str, &ArrayRef)],
    elem: &ElemType,
    input: &str,
    nulls: &Nulls,
    from_f64: impl Fn(f64) -> T::Native,
) -> Result<Vec<T::Native>> {
    let width = arrays.len();
    let rows = arrays.first().map(|(_, a)| a.len()).unwrap_or(0);
    // Every column cast and checked before any is written.
    let mut columns: Vec<PrimitiveArray<T>> = Vec::with_capacity(width);
    let mut fills: Vec<T::Native> = Vec::with_capacity(width);
    for (j, (name, array)) in arrays.iter().enumerate() {
        let casted = checked_cast(array, &T::DATA_TYPE, name, input, elem)?;
        let typed = casted
            .as_any()
            .downcast_ref::<PrimitiveArray<T>>()
            .ok_or_else(|| ScoreError::internal("cast produced another type"))?;
        fills.push(if array.null_count() > 0 {
            nulls.fill(j, array.as_ref(), name, input, elem, &from_f64)?
        } else {
            T::Native::default()
        });
        columns.push(typed.clone());
    }
    let len = rows * width;
    if let [column] = columns.as_slice() {
        let f = fills[0];
        return Ok(match column.nulls() {
            None => column.values().to_vec(),
            Some(nulls) => {
                column.values().iter().enumerate().map(|(i, v)| if nulls.is_valid(i) { *v } else { f }).collect()
            }
        });
    }
    // Written into uninitialised memory: zeroing a batch-sized tensor first costs as much as
    // a copy of it (a memset pass and its page faults) for values overwritten right after.
    let mut out: Vec<T::Native> = Vec::with_capacity(len);
    let slots = &mut out.spare_capacity_mut()[..len];
    // Row-major in blocks of rows whose output fits in L1 while every column writes into
    // it: a whole batch written one column at a time misses the cache on every value.
    let block = (16 << 10) / (width * std::mem::size_of::<T::Native>()).max(1);
    let block = block.max(8);
    for start in (0..rows).step_by(block) {
        let end = (start + block).min(rows);
        let rows_out = &mut slots[start * width..end * width];
        for (j, column) in columns.iter().enumerate() {
            let values = &column.values()[start..end];
            match column.nulls() {
                None => {
                    for (row, v) in rows_out.chunks_exact_mut(width).zip(values) {
                        row[j].write(*v);
                    }
                }
                Some(nulls) => {
                    let f = fills[j];
                    for (k, (row, v)) in rows_out.chunks_exact_mut(width).zip(values).enumerate() {
                        row[j].write(if nulls.is_valid(start + k) { *v } else { f });
                    }
                }
            }
        }
    }
    // SAFETY: the loops above wrote all `len` slots: every row of every block, in each of the
    // `width` columns (a column shorter than `rows` would panic at `values()[start..end]`
    // before this line; the columns come from one record batch, so none is).
    unsafe { out.set_len(len) };
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
fn interleave(arrays: &[(&str, &ArrayRef)], elem: &ElemType, input: &str, nulls: &Nulls) -> Result<TensorData> {
    let decoded: Vec<(&str, ArrayRef)> = arrays
        .iter()
        .map(|(name, array)| Ok((*name, decode_dictionary(array, name, input, elem)?)))
        .collect::<Result<_>>()?;
    let arrays: Vec<(&str, &ArrayRef)> = decoded.iter().map(|(name, array)| (*name, array)).collect();
    let arrays = arrays.as_slice();
    Ok(match elem {
        ElemType::Float32 => {
            TensorData::Float32(primitive_columns::<Float32Type>(arrays, elem, input, nulls, |f| f as f32)?)
        }
        ElemType::Float64 => TensorData::Float64(primitive_columns::<Float64Type>(arrays, elem, input, nulls, |f| f)?),
        ElemType::Int32 => TensorData::Int32(primitive_columns::<Int32Type>(arrays, elem, input, nulls, |f| f as i32)?),
        ElemType::Int64 => TensorData::Int64(primitive_columns::<Int64Type>(arrays, elem, input, nulls, |f| f as i64)?),
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
                let f = if array.null_count() > 0 {
                    nulls.fill(j, array.as_ref(), name, input, elem, |f| f != 0.0)?
                } else {
                    false
                };
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
                    // Strings take no fill value: the fills of a string input are all `None`.
                    nulls.fill(j, array.as_ref(), name, input, elem, |_| ())?;
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, UInt64Array};

    use super::*;
    use crate::mapping::tests::{batch, classifier_outputs, tensor_io};
    use crate::mapping::ScorePlan;

    #[test]
    fn float_columns_are_lent_only_where_feeds_would_just_interleave_them() {
        let floats = |v: Vec<Option<f32>>| Arc::new(Float32Array::from(v)) as ArrayRef;
        let b = batch(vec![("a", floats(vec![Some(1.0), Some(2.0)])), ("b", floats(vec![Some(3.0), Some(4.0)]))]);
        let cmd = ScoreCommand { feature_columns: vec!["a".into(), "b".into()], ..Default::default() };
        let inputs = [tensor_io("X", ElemType::Float32, vec![None, Some(2)])];
        let plan = ScorePlan::new(&cmd, b.schema(), &inputs, &classifier_outputs(), Default::default()).unwrap();
        assert_eq!(plan.float_columns(&b), Some(vec![&[1.0f32, 2.0][..], &[3.0, 4.0][..]]));
        assert_eq!(plan.feeds(&b).unwrap()[0].1.data, TensorData::Float32(vec![1.0, 3.0, 2.0, 4.0]));
        // A null (fill_null or an error), a cast, or a double input: the tensor path.
        let with_null = batch(vec![("a", floats(vec![Some(1.0), None])), ("b", floats(vec![Some(3.0), Some(4.0)]))]);
        assert_eq!(plan.float_columns(&with_null), None);
        let doubles = batch(vec![
            ("a", Arc::new(Float64Array::from(vec![1.0, 2.0])) as ArrayRef),
            ("b", floats(vec![Some(3.0), Some(4.0)])),
        ]);
        let plan = ScorePlan::new(&cmd, doubles.schema(), &inputs, &classifier_outputs(), Default::default()).unwrap();
        assert_eq!(plan.float_columns(&doubles), None);
        let double_input = [tensor_io("X", ElemType::Float64, vec![None, Some(2)])];
        let plan = ScorePlan::new(&cmd, b.schema(), &double_input, &classifier_outputs(), Default::default()).unwrap();
        assert_eq!(plan.float_columns(&b), None);
    }

    /// The first feed's values as f32 bit patterns (NaN compares by bits).
    fn float_bits(plan: &ScorePlan, b: &RecordBatch) -> Vec<u32> {
        match &plan.feeds(b).unwrap()[0].1.data {
            TensorData::Float32(v) => v.iter().map(|x| x.to_bits()).collect(),
            other => panic!("not float32: {other:?}"),
        }
    }

    #[test]
    fn nulls_become_nan_for_models_that_define_missing_values_and_are_refused_otherwise() {
        use crate::mapping::{Missing, PlanOptions};
        let b = batch(vec![
            ("a", Arc::new(Float64Array::from(vec![Some(1.0), None, Some(3.0)])) as ArrayRef),
            ("b", Arc::new(Float32Array::from(vec![None, Some(2.0), Some(4.0)])) as ArrayRef),
        ]);
        let inputs = [tensor_io("X", ElemType::Float32, vec![None, Some(2)])];
        let base = ScoreCommand { feature_columns: vec!["a".into(), "b".into()], ..Default::default() };
        let plan_with = |cmd: &ScoreCommand, defines: bool| {
            let options = PlanOptions { model_defines_missing: defines, ..Default::default() };
            ScorePlan::new(cmd, b.schema(), &inputs, &classifier_outputs(), options)
        };
        let nan = f32::NAN.to_bits();
        let bits = |v: [f32; 6]| v.map(f32::to_bits).to_vec();
        // auto (the default): NaN for a tree ensemble, refused for a model that does not
        // define missing values, with what to do about it.
        let trees = plan_with(&base, true).unwrap();
        assert_eq!(
            float_bits(&trees, &b),
            vec![1.0f32.to_bits(), nan, nan, 2.0f32.to_bits(), 3.0f32.to_bits(), 4.0f32.to_bits()]
        );
        let linear = plan_with(&base, false).unwrap();
        let err = linear.feeds(&b).unwrap_err();
        assert!(
            matches!(&err, ScoreError::InvalidArgument(m) if m.contains("'a'") && m.contains("1 null value(s), the first at row 1")
                && m.contains("does not define missing values") && m.contains("fill_null") && m.contains("'nan'")),
            "{err}"
        );
        // nan: whatever the model. error: refused, whatever the model.
        let cmd = ScoreCommand { missing: "nan".into(), ..base.clone() };
        assert_eq!(float_bits(&plan_with(&cmd, false).unwrap(), &b), float_bits(&trees, &b));
        let cmd = ScoreCommand { missing: "error".into(), ..base.clone() };
        let err = plan_with(&cmd, true).unwrap().feeds(&b).unwrap_err();
        assert!(matches!(&err, ScoreError::InvalidArgument(m) if m.contains("'a'") && m.contains("null")), "{err}");
        let cmd = ScoreCommand { missing: "maybe".into(), ..base.clone() };
        assert!(matches!(plan_with(&cmd, true), Err(ScoreError::InvalidArgument(m)) if m.contains("auto")));
        assert_eq!(Missing::parse("NaN").unwrap(), Missing::Nan);

        // fill values: per column over the global one over the mode; NaN is a fill value.
        let cmd = ScoreCommand {
            missing: "error".into(),
            fill_null: Some(-1.0),
            fill_null_columns: [("b".to_string(), f64::NAN)].into(),
            ..base.clone()
        };
        assert_eq!(
            float_bits(&plan_with(&cmd, false).unwrap(), &b),
            vec![1.0f32.to_bits(), nan, (-1.0f32).to_bits(), 2.0f32.to_bits(), 3.0f32.to_bits(), 4.0f32.to_bits()]
        );
        let cmd = ScoreCommand { fill_null: Some(f64::NAN), ..base.clone() };
        assert_eq!(float_bits(&plan_with(&cmd, false).unwrap(), &b), float_bits(&trees, &b));
        let cmd = ScoreCommand { fill_null_columns: [("a".to_string(), 7.0)].into(), ..base.clone() };
        assert_eq!(float_bits(&plan_with(&cmd, true).unwrap(), &b), bits([1.0, f32::NAN, 7.0, 2.0, 3.0, 4.0]));
        for bad in [
            ScoreCommand { fill_null: Some(f64::INFINITY), ..base.clone() },
            ScoreCommand { fill_null_columns: [("b".to_string(), f64::NEG_INFINITY)].into(), ..base.clone() },
            ScoreCommand { fill_null_columns: [("c".to_string(), 0.0)].into(), ..base.clone() },
        ] {
            assert!(matches!(plan_with(&bad, true), Err(ScoreError::InvalidArgument(_))), "{bad:?}");
        }

        // Integer inputs have no NaN: a null needs an integer fill, whatever the mode.
        let ints = [tensor_io("X", ElemType::Int64, vec![None, Some(2)])];
        let plan_ints = |cmd: &ScoreCommand| {
            let options = PlanOptions { model_defines_missing: true, ..Default::default() };
            ScorePlan::new(cmd, b.schema(), &ints, &classifier_outputs(), options)
        };
        let cmd = ScoreCommand { missing: "nan".into(), ..base.clone() };
        let err = plan_ints(&cmd).unwrap().feeds(&b).unwrap_err();
        assert!(
            matches!(&err, ScoreError::InvalidArgument(m) if m.contains("null") && m.contains("has no NaN")),
            "{err}"
        );
        let cmd = ScoreCommand { fill_null_columns: [("a".to_string(), 2.5)].into(), ..base.clone() };
        assert!(matches!(plan_ints(&cmd), Err(ScoreError::InvalidArgument(m)) if m.contains("not an integer")));
        let cmd = ScoreCommand { fill_null: Some(9.0), ..base.clone() };
        assert_eq!(plan_ints(&cmd).unwrap().feeds(&b).unwrap()[0].1.data, TensorData::Int64(vec![1, 9, 9, 2, 3, 4]));
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

        // Strings parse per row; the first that does not is named with its row.
        let b4 = batch(vec![
            ("a", Arc::new(StringArray::from(vec![Some("1.5"), Some("-2e3"), None])) as ArrayRef),
            ("b", Arc::new(StringArray::from(vec!["3", "4x", "1e39"])) as ArrayRef),
        ]);
        let plan = ScorePlan::new(&cmd, b4.schema(), &inputs, &classifier_outputs(), Default::default()).unwrap();
        assert_eq!(
            plan.feeds(&b4.slice(0, 1)).unwrap()[0].1.data,
            TensorData::Float32(vec![1.5, 3.0]),
            "parsed, not refused at plan time"
        );
        let err = plan.feeds(&b4.slice(0, 2)).unwrap_err();
        assert!(
            matches!(&err, ScoreError::InvalidArgument(m) if m.contains("'b'") && m.contains("'4x' at row 1 does not parse as float32")),
            "{err}"
        );
        let err = plan.feeds(&b4.slice(2, 1)).unwrap_err();
        assert!(matches!(&err, ScoreError::InvalidArgument(m) if m.contains("'1e39' at row 0")), "{err}");
        let as_int = [tensor_io("X", ElemType::Int64, vec![None, Some(2)])];
        let plan = ScorePlan::new(&cmd, b4.schema(), &as_int, &classifier_outputs(), Default::default()).unwrap();
        let err = plan.feeds(&b4.slice(0, 1)).unwrap_err();
        assert!(
            matches!(&err, ScoreError::InvalidArgument(m) if m.contains("'1.5' at row 0 does not parse as int64")),
            "{err}"
        );

        // Many columns over several blocks of rows, with nulls filled: every value lands at
        // row * width + column.
        let (rows, width) = (1000usize, 20usize);
        let columns: Vec<(String, ArrayRef)> = (0..width)
            .map(|j| {
                let values: Float32Array =
                    (0..rows).map(|i| ((i * 7 + j) % 11 != 0).then_some((i * width + j) as f32)).collect();
                (format!("c{j}"), Arc::new(values) as ArrayRef)
            })
            .collect();
        let wide = batch(columns.iter().map(|(n, a)| (n.as_str(), a.clone())).collect());
        let names: Vec<String> = columns.iter().map(|(n, _)| n.clone()).collect();
        let cmd = ScoreCommand { feature_columns: names, fill_null: Some(-1.0), ..Default::default() };
        let inputs = [tensor_io("X", ElemType::Float32, vec![None, Some(width as i64)])];
        let plan = ScorePlan::new(&cmd, wide.schema(), &inputs, &classifier_outputs(), Default::default()).unwrap();
        let want: Vec<f32> =
            (0..rows * width).map(|k| if ((k / width) * 7 + k % width) % 11 != 0 { k as f32 } else { -1.0 }).collect();
        assert_eq!(plan.feeds(&wide).unwrap()[0].1.data, TensorData::Float32(want));

        let b3 = batch(vec![("a", Arc::new(UInt64Array::from(vec![u64::MAX])) as ArrayRef)]);
        let inputs = [tensor_io("a", ElemType::Int64, vec![None])];
        let plan =
            ScorePlan::new(&ScoreCommand::default(), b3.schema(), &inputs, &classifier_outputs(), Default::default())
                .unwrap();
        assert!(plan.feeds(&b3).is_err());
    }
}

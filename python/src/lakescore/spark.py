"""Score Spark DataFrames on lakescore workers (``pip install 'lakescore[spark]'``).

    from lakescore.spark import score

    scored = score(df, "fraud@champion", feature_columns=[f"f{i}" for i in range(20)],
                   workers="grpc://lakescore-worker.ml.svc.cluster.local:8815")
    scored.write.parquet("abfss://lake@acct.dfs.core.windows.net/scores/")

What happens:

* On the driver, before any task runs, the worker's ``describe`` action resolves the
  reference once and pins the version (``fraud@champion`` → ``fraud:7``) and gives the
  output schema for the DataFrame's schema, so the result is typed up front; a bad token,
  a missing grant or an unknown model fails here, with the server's message, as
  :class:`~lakescore.Unauthenticated` / :class:`~lakescore.PermissionDenied` /
  :class:`~lakescore.NotFound`.
* Each partition (``DataFrame.mapInArrow``) streams its Arrow batches to one worker over
  DoExchange, one batch at a time (bounded memory). Partitions are spread over the
  workers: a list of Flight URLs, or one name that resolves to several addresses (the
  Helm chart's headless worker Service), resolved in every task.
* A worker that goes away mid-partition (``UNAVAILABLE``, a reset connection) costs a
  resend of that partition's current batch to the next worker; rows already scored stay,
  since every worker scores with the pinned version.
* The caller's token is what the workers see and pass to the registry. The token source
  is shipped to the executors when it can be (a callable, an ``azure.identity``
  credential, :func:`lakescore.auth.azure`), so long jobs renew it there; otherwise (the
  default ``$LAKESCORE_TOKEN`` / ``lakescore login`` cache, a string) the driver's current
  token is shipped as it is.
"""

from __future__ import annotations

import collections
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from .auth import AzureToken, CallableToken, StaticToken, TokenLike, TokenProvider, token_provider
from .scoring import DEFAULT_BATCH_ROWS, Description, Outputs, Scorer

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["score", "describe", "register", "default_workers"]


def default_workers(spark: Any = None) -> str:
    """``spark.lakescore.workers`` from the Spark conf, else ``$LAKESCORE_WORKERS``, else
    ``grpc://127.0.0.1:8815``."""
    if spark is not None:
        try:
            value = spark.conf.get("spark.lakescore.workers", None)
            if value:
                return str(value)
        except Exception:  # noqa: BLE001 - no such conf
            pass
    return os.environ.get("LAKESCORE_WORKERS") or "grpc://127.0.0.1:8815"


def _for_executors(provider: TokenProvider) -> TokenProvider:
    """What the executors use for tokens: the provider itself when it renews tokens and
    pickles, else the driver's current token."""
    if isinstance(provider, (CallableToken, AzureToken)):
        try:
            from pyspark import cloudpickle

            cloudpickle.dumps(provider)
            return provider
        except Exception as e:  # noqa: BLE001
            warnings.warn(
                f"the token source cannot be shipped to the executors ({e}); they get the driver's "
                "current token, which is not renewed during the job",
                stacklevel=3,
            )
    return StaticToken(provider.token())


def _spark_type_of(t: pa.DataType) -> pa.DataType:
    """The Arrow type Spark can take for a prediction column (fixed-size lists become lists)."""
    if pa.types.is_fixed_size_list(t):
        return pa.list_(_spark_type_of(t.value_type))
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return pa.list_(_spark_type_of(t.value_type))
    return t


def describe(
    df: DataFrame,
    model: str,
    *,
    workers: str | Sequence[str] | None = None,
    token: TokenLike = None,
    **options: Any,
) -> Description:
    """The worker's ``describe`` for ``df``'s schema: pinned version and output schema."""
    from pyspark.sql.pandas.types import to_arrow_schema

    scorer = Scorer(workers or default_workers(df.sparkSession), token)
    return scorer.describe(model, to_arrow_schema(df.schema), **options)


def score(
    df: DataFrame,
    model: str,
    *,
    feature_columns: Sequence[str] | None = None,
    outputs: Outputs = None,
    passthrough_columns: Sequence[str] | None = None,
    workers: str | Sequence[str] | None = None,
    token: TokenLike = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    retries: int | None = None,
    calls_per_partition: int = 2,
    **options: Any,
) -> DataFrame:
    """``df`` with ``model``'s predictions appended (same rows, each partition in order).

    Args:
        model: ``name``, ``name:7`` or ``name@alias``; resolved once, here, and pinned.
        feature_columns: for a model with one 2-D input ``[N, F]``: its F columns, in order.
        outputs: model outputs to append (default all), as :meth:`lakescore.Scorer.score`.
        passthrough_columns: input columns to keep (default all).
        workers: Flight URLs of the workers (a list, a comma-separated string, or one name
            that resolves to several addresses); default ``spark.lakescore.workers``,
            ``$LAKESCORE_WORKERS``, ``grpc://127.0.0.1:8815``.
        token: see :mod:`lakescore.auth`.
        batch_rows: rows per batch sent to a worker (Spark's Arrow batches are sliced to it;
            ``spark.sql.execution.arrow.maxRecordsPerBatch`` sets how large they come).
        retries: how many times a partition may move to another worker (default: twice
            the number of workers, at least 3).
        calls_per_partition: DoExchange calls each partition deals its batches to (each
            in lock step; see :class:`lakescore.Scorer`'s ``calls_per_stream``), so that a
            worker scores one batch while the next is on its way.
        options: ``columns``, ``missing``, ``fill_null``, ``compression``, as for
            :meth:`Scorer.score`.

    Raises (at the driver, before any task): ``Unauthenticated``, ``PermissionDenied``,
    ``NotFound``, ``InvalidArgument`` (columns that do not fit the model).
    """
    from pyspark.sql.pandas.types import from_arrow_type, to_arrow_schema
    from pyspark.sql.types import StructField, StructType

    spark = df.sparkSession
    workers = workers or default_workers(spark)
    provider = token_provider(token)
    opts = dict(options, feature_columns=feature_columns, outputs=outputs, passthrough_columns=passthrough_columns)

    driver = Scorer(workers, provider)
    n_workers = len(driver.locations())
    if retries is None:
        retries = max(3, 2 * n_workers)
    input_schema = to_arrow_schema(df.schema)
    desc = driver.describe(model, input_schema, **opts)
    pinned = desc.reference

    in_fields = {f.name: f for f in df.schema.fields}
    spark_fields = []
    for f in desc.output_schema:
        if f.name in in_fields:
            spark_fields.append(in_fields[f.name])
        else:
            spark_fields.append(StructField(f.name, from_arrow_type(_spark_type_of(f.type)), True))
    spark_schema = StructType(spark_fields)
    try:
        large = str(spark.conf.get("spark.sql.execution.arrow.useLargeVarTypes")).lower() == "true"
    except Exception:  # noqa: BLE001 - a Spark without the setting
        large = False
    try:
        target = to_arrow_schema(spark_schema, prefers_large_types=large)
    except TypeError:  # older pyspark
        target = to_arrow_schema(spark_schema)

    executor_tokens = _for_executors(provider)
    shipped_workers = workers
    shipped_retries = retries

    def score_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        start = ctx.partitionId() if ctx is not None else 0
        scorer = Scorer(
            shipped_workers,
            executor_tokens,
            batch_rows=batch_rows,
            retries=shipped_retries,
            calls_per_stream=calls_per_partition,
        )
        try:
            it = iter(batches)
            first = next(it, None)
            if first is None:
                return
            for out in scorer.score_batches(_chain(first, it), pinned, start=start, **opts):
                yield _conform(out, target)
        finally:
            scorer.close()

    return df.mapInArrow(score_partition, spark_schema)


def register(
    spark: SparkSession,
    *models: str,
    name: str = "lakescore_predict",
    outputs: Outputs = None,
    workers: str | Sequence[str] | None = None,
    token: TokenLike = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    retries: int | None = None,
    calls_per_task: int = 2,
    **options: Any,
) -> dict[str, str]:
    """Register the SQL function ``name`` (default ``lakescore_predict``) that scores on
    the workers::

        lakescore.spark.register(spark, "fraud@champion")
        spark.sql("SELECT id, lakescore_predict('fraud@champion', amount, merchant, hour) AS p FROM tx")

    The first argument names one of ``models``; the others are the model's inputs, in the
    order of its signature: one argument per input, or, for an input ``[N, F]``, its F
    features one by one. The function returns a struct of the model's outputs, named as
    Flight names them (``p.label``, ``p.probabilities``), like ``PREDICT`` in Synapse's
    Spark pools.

    What happens:

    * Here, on the driver, each reference is resolved once and pinned
      (``fraud@champion`` → ``fraud:7``), with the caller's token: the whole query scores
      with that version even if the alias moves meanwhile. A bad token, a missing grant or
      an unknown model fails here. Spark types a function when it is registered, so the
      models named here must all give the same outputs (champion and challenger of one
      model do); register another name for a model whose outputs differ.
    * Each task streams its rows to a worker over DoExchange in Arrow batches, with the
      token and the failover of :func:`score` (a worker lost mid-task costs a resend of
      the batches in flight).

    Args:
        models: references the function may be called with (``name``, ``name:7``,
            ``name@alias``).
        name: the SQL function's name.
        outputs: model outputs to return (default all), as :meth:`lakescore.Scorer.score`.
        workers, token, batch_rows, retries: as :func:`score`.
        calls_per_task: DoExchange calls each task deals its batches to.
        options: ``missing``, ``fill_null``, as for :meth:`Scorer.score`.

    Returns: each reference given and the version it was pinned to.
    """
    from pyspark.sql.functions import ArrowUDFType, arrow_udf
    from pyspark.sql.pandas.types import from_arrow_type, to_arrow_type
    from pyspark.sql.types import StructField, StructType

    if not models:
        raise ValueError("name the models the function may score with, e.g. register(spark, 'fraud@champion')")
    workers = workers or default_workers(spark)
    provider = token_provider(token)
    driver = Scorer(workers, provider)
    if retries is None:
        retries = max(3, 2 * len(driver.locations()))

    # Pin each reference and learn its arguments (the columns its signature implies, an
    # [N, F] input spread over F arguments) and its outputs.
    pinned: dict[str, str] = {}
    plans: dict[str, tuple[pa.Schema, dict[str, list[str]]]] = {}
    result_fields: list[pa.Field] | None = None
    first_model = ""
    for model in models:
        desc = driver.describe(model, outputs=outputs, **options)
        columns: dict[str, list[str]] = {}
        for inp in desc.inputs:
            shape = inp.get("shape") or []
            features = shape[1] if len(shape) == 2 and isinstance(shape[1], int) and shape[1] > 1 else None
            if features is not None:
                columns[inp["name"]] = [f"{inp['name']}_{i}" for i in range(features)]
        if columns:
            desc = driver.describe(model, outputs=outputs, columns=columns, **options)
        fields = [pa.field(f.name, _spark_type_of(f.type)) for f in desc.prediction_fields]
        if result_fields is None:
            result_fields, first_model = fields, model
        elif [(f.name, f.type) for f in fields] != [(f.name, f.type) for f in result_fields]:
            raise ValueError(
                f"'{model}' returns {[f'{f.name}: {f.type}' for f in fields]} but '{first_model}' returns "
                f"{[f'{f.name}: {f.type}' for f in result_fields]}: one SQL function has one result type; "
                "register the two under different names"
            )
        pinned[model] = desc.reference
        pinned[desc.reference] = desc.reference
        plans[desc.reference] = (desc.input_schema, columns)
    assert result_fields is not None
    struct = StructType([StructField(f.name, from_arrow_type(f.type), True) for f in result_fields])
    target = pa.struct(
        [pa.field(f.name, to_arrow_type(sf.dataType)) for f, sf in zip(result_fields, struct.fields, strict=True)]
    )

    executor_tokens = _for_executors(provider)
    shipped_workers, shipped_retries, shipped_name = workers, retries, name
    opts = dict(options, outputs=outputs, passthrough_columns=[])

    def predict(batches: Iterator[tuple[pa.Array, ...]]) -> Iterator[pa.Array]:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        sizes: collections.deque[int] = collections.deque()
        chosen: dict[str, str] = {}

        def inputs() -> Iterator[pa.RecordBatch]:
            for arrays in batches:
                refs, args = arrays[0], arrays[1:]
                reference = _one_reference(refs, shipped_name)
                if reference is None:  # an empty batch: an empty answer, nothing to send
                    sizes.append(0)
                    continue
                ref = pinned.get(reference)
                if ref is None:
                    raise ValueError(
                        f"{shipped_name}() was registered for {sorted(models)}, not '{reference}': "
                        f"call lakescore.spark.register(spark, '{reference}', name=...) first"
                    )
                if chosen.setdefault("ref", ref) != ref:
                    raise ValueError(
                        f"{shipped_name}() scores with one model per call (a literal such as "
                        f"'{models[0]}'); this call got '{reference}' after '{chosen['ref']}'"
                    )
                schema = plans[ref][0]
                if len(args) != len(schema):
                    raise ValueError(
                        f"{shipped_name}('{reference}', ...) takes {len(schema)} model inputs after the "
                        f"reference ({', '.join(schema.names)}), got {len(args)}"
                    )
                sizes.append(len(refs))
                yield pa.RecordBatch.from_arrays(list(args), names=schema.names)

        scorer = Scorer(
            shipped_workers,
            executor_tokens,
            batch_rows=batch_rows,
            retries=shipped_retries,
            calls_per_stream=calls_per_task,
        )
        try:
            feed = inputs()
            first = next(feed, None)
            if first is None:
                for _ in sizes:  # only empty batches
                    yield pa.array([], type=target)
                return
            ref = chosen["ref"]
            start = ctx.partitionId() if ctx is not None else 0
            scored = scorer.score_batches(
                _chain(first, feed), ref, start=start, columns=plans[ref][1] or None, **opts
            )
            yield from _rechunk(scored, sizes, target)
        finally:
            scorer.close()

    with warnings.catch_warnings():
        # The iterator type is given, not inferred from the hints (the arity varies).
        warnings.filterwarnings("ignore", message="It is preferred to specify type hints")
        udf = arrow_udf(predict, struct, ArrowUDFType.SCALAR_ITER)
    spark.udf.register(name, udf)
    return {m: pinned[m] for m in models}


def _one_reference(refs: pa.Array, function: str) -> str | None:
    """The one model reference of a batch's first argument (None for an empty batch)."""
    if len(refs) == 0:
        return None
    if refs.null_count:
        raise ValueError(f"{function}(): the model reference is null")
    distinct = refs.unique()
    if len(distinct) != 1:
        raise ValueError(
            f"{function}() scores with one model per call (a literal reference); got {distinct.to_pylist()[:5]}"
        )
    return str(distinct[0].as_py())


def _rechunk(
    scored: Iterator[pa.RecordBatch], sizes: collections.deque[int], target: pa.DataType
) -> Iterator[pa.Array]:
    """The scored rows as one struct array per input batch, of that batch's length, in
    Spark's types: the workers may answer in other slices than Spark sent."""
    held: list[pa.RecordBatch] = []
    have = 0
    for batch in scored:
        held.append(batch)
        have += batch.num_rows
        while sizes and have >= sizes[0]:
            want = sizes.popleft()
            table = pa.Table.from_batches(held).combine_chunks()
            out, rest = table.slice(0, want), table.slice(want)
            held = rest.to_batches()
            have -= want
            yield _as_struct(out, target)
    while sizes and sizes[0] == 0:
        sizes.popleft()
        yield pa.array([], type=target)
    if sizes or have:
        raise RuntimeError(f"the workers answered {have} rows more or {sum(sizes)} fewer than were sent")


def _as_struct(table: pa.Table, target: pa.DataType) -> pa.Array:
    columns = []
    for i in range(target.num_fields):
        field = target.field(i)
        col = table.column(field.name).combine_chunks() if table.num_rows else pa.array([], type=field.type)
        columns.append(col if col.type == field.type else col.cast(field.type))
    return pa.StructArray.from_arrays(columns, fields=list(target))


def _chain(first: pa.RecordBatch, rest: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    yield first
    yield from rest


def _conform(batch: pa.RecordBatch, target: pa.Schema) -> pa.RecordBatch:
    """The worker's batch with Spark's Arrow types (and no schema metadata)."""
    if batch.schema.names != target.names:
        raise ValueError(f"the worker answered columns {batch.schema.names}, expected {target.names}")
    columns = []
    for col, field in zip(batch.columns, target, strict=True):
        columns.append(col if col.type == field.type else col.cast(field.type))
    return pa.RecordBatch.from_arrays(columns, schema=target)

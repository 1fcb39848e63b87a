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

import os
import warnings
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import pyarrow as pa

from .auth import CallableToken, AzureToken, StaticToken, TokenLike, TokenProvider, token_provider
from .scoring import DEFAULT_BATCH_ROWS, Description, Outputs, Scorer

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame

__all__ = ["score", "describe", "default_workers"]


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


def _chain(first: pa.RecordBatch, rest: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    yield first
    yield from rest


def _conform(batch: pa.RecordBatch, target: pa.Schema) -> pa.RecordBatch:
    """The worker's batch with Spark's Arrow types (and no schema metadata)."""
    if batch.schema.names != target.names:
        raise ValueError(f"the worker answered columns {batch.schema.names}, expected {target.names}")
    columns = []
    for col, field in zip(batch.columns, target):
        columns.append(col if col.type == field.type else col.cast(field.type))
    return pa.RecordBatch.from_arrays(columns, schema=target)

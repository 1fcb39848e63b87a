"""lakescore.spark on real PySpark (local[2]) against real workers: predictions equal
onnxruntime's row for row, the version is pinned at the driver, a worker killed mid-job
costs nothing but a retry, and refusals come at the driver before any task."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests

import lakescore
from lakescore import Registry
from lakescore.spark import score

from conftest import Issuer, Proc, ort_predict, tagged_model, unique
from test_registry import linreg_variant

RF_FEATURES = [f"f{i}" for i in range(20)]


def with_id(table: pa.Table, copies: int = 1) -> pa.Table:
    t = pa.concat_tables([table] * copies)
    return t.append_column("id", pa.array(np.arange(t.num_rows, dtype=np.int64)))


def collect_sorted(df: Any) -> pa.Table:
    rows = df.orderBy("id").toPandas()
    return pa.Table.from_pandas(rows, preserve_index=False)


def flat(column: Any) -> np.ndarray:
    """A [N, 1] output as N values (a scalar column or one-element lists)."""
    values = column.to_pylist()
    return np.array([v[0] if isinstance(v, list) else v for v in values], dtype=np.float32)


def rf_expected(models: Path, t: pa.Table) -> dict[str, Any]:
    x = np.column_stack([t[c].to_numpy() for c in RF_FEATURES]).astype(np.float32)
    return ort_predict(models / "rf.onnx", {"X": x})


def test_zipmap_classifier_equals_onnxruntime_across_two_workers(
    spark: Any, server: Proc, worker2: Proc, models: Path
) -> None:
    name = unique("sprf")
    Registry(server.url, token="").register(name, tagged_model(models / "rf.onnx"), create_model=True,
                                           alias="champion")
    data = with_id(pq.read_table(models / "rf.rows.parquet"), copies=10)  # 2,000 rows
    df = spark.createDataFrame(data.to_pandas()).repartition(6)

    out = score(df, f"{name}@champion", feature_columns=RF_FEATURES, workers=[server.flight, worker2.flight],
                token="")
    # Typed before anything ran: the describe action gave the schema.
    assert out.columns == RF_FEATURES + ["id", "label", "probability_0", "probability_1", "probability_2"]
    assert dict(out.dtypes)["label"] == "bigint" and dict(out.dtypes)["probability_0"] == "float"

    got = collect_sorted(out)
    assert got.num_rows == data.num_rows
    want = rf_expected(models, data)
    np.testing.assert_array_equal(got["label"].to_numpy(), want["output_label"])
    probs = np.column_stack([got[f"probability_{k}"].to_numpy() for k in range(3)])
    np.testing.assert_allclose(probs, want["output_probability"], rtol=1e-6, atol=1e-7)
    assert server.loaded(f"{name}:1") and worker2.loaded(f"{name}:1"), "partitions spread over both workers"

    # Empty partitions and a column subset.
    few = score(df.filter("id < 3"), f"{name}:1", feature_columns=RF_FEATURES, outputs=["output_label"],
                passthrough_columns=["id"], workers=server.flight, token="")
    assert few.columns == ["id", "label"]
    assert sorted(r["id"] for r in few.collect()) == [0, 1, 2]


def test_mixed_type_multi_input_pipeline_equals_onnxruntime(spark: Any, server: Proc, models: Path) -> None:
    name = unique("sppipe")
    Registry(server.url, token="").register(name, models / "pipeline.onnx", create_model=True)
    data = with_id(pq.read_table(models / "pipeline.rows.parquet"), copies=3)
    df = spark.createDataFrame(data.to_pandas()).repartition(3)
    got = collect_sorted(score(df, name, workers=server.flight, token=""))

    feeds = {c: data[c].to_numpy().reshape(-1, 1).astype(np.float32) for c in ("age", "income", "tenure")}
    feeds["city"] = np.array(data["city"].to_pylist(), dtype=object).reshape(-1, 1)
    want = ort_predict(models / "pipeline.onnx", feeds)
    np.testing.assert_array_equal(got["label"].to_numpy(), want["output_label"])
    np.testing.assert_allclose(
        np.column_stack([got["probability_0"].to_numpy(), got["probability_1"].to_numpy()]),
        want["output_probability"], rtol=1e-6, atol=1e-7,
    )
    assert got["city"].to_pylist() == data["city"].to_pylist()


def test_moving_the_alias_during_the_job_does_not_mix_versions(
    spark: Any, server: Proc, worker2: Proc, models: Path, tmp_path: Path
) -> None:
    """The job pins name@champion to v1 at the driver. Its first partition moves the alias
    to v2 (other predictions, same signature) as soon as it runs; every row is still v1's."""
    name = unique("spalias")
    reg = Registry(server.url, token="")
    v1_bytes, v2_bytes = linreg_variant(models, 0.0), linreg_variant(models, 100.0)
    reg.register(name, v1_bytes, create_model=True, alias="champion")
    reg.register(name, v2_bytes)
    data = with_id(pq.read_table(models / "linreg.rows.parquet"), copies=8)
    feats = [f"f{i}" for i in range(5)]
    df = spark.createDataFrame(data.to_pandas()).repartition(8)

    marker = str(tmp_path / "moved")
    alias_url = f"{server.url}/api/v1/models/{name}/aliases/champion"

    def move_alias_once(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for b in batches:
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.close(fd)
                requests.put(alias_url, json={"version": 2}, timeout=30).raise_for_status()
            yield b

    gated = df.mapInArrow(move_alias_once, df.schema)
    out = score(gated, f"{name}@champion", feature_columns=feats, workers=[server.flight, worker2.flight], token="")
    got = collect_sorted(out)
    assert os.path.exists(marker) and reg.resolve(f"{name}@champion").version == 2, "the alias moved mid-job"

    x = np.column_stack([data[c].to_numpy() for c in feats]).astype(np.float32)
    v1_path, v2_path = tmp_path / "v1.onnx", tmp_path / "v2.onnx"
    v1_path.write_bytes(v1_bytes)
    v2_path.write_bytes(v2_bytes)
    want_v1 = ort_predict(v1_path, {"X": x})["variable"].reshape(-1)
    want_v2 = ort_predict(v2_path, {"X": x})["variable"].reshape(-1)
    assert not np.allclose(want_v1, want_v2)
    got_values = flat(got["variable"])
    np.testing.assert_allclose(got_values, want_v1, rtol=1e-6, atol=1e-5)

    # A new job resolves the alias again: v2.
    again = collect_sorted(score(df, f"{name}@champion", feature_columns=feats, workers=server.flight, token=""))
    np.testing.assert_allclose(flat(again["variable"]), want_v2, rtol=1e-6, atol=1e-4)


def test_a_worker_killed_mid_job_costs_a_retry_not_the_job(
    spark: Any, server: Proc, spare_worker: Proc, models: Path, tmp_path: Path
) -> None:
    name = unique("spkill")
    Registry(server.url, token="").register(name, models / "rf.onnx", create_model=True)
    data = with_id(pq.read_table(models / "rf.rows.parquet"), copies=20)  # 4,000 rows
    df = spark.createDataFrame(data.to_pandas()).repartition(4)
    marker = str(tmp_path / "killed")
    pid = spare_worker.proc.pid
    spare_log = str(spare_worker.log_path)
    loaded = f"{name}:1"

    def kill_spare_mid_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        part = TaskContext.get().partitionId()
        for i, b in enumerate(batches):
            # Partitions 1 and 3 start on the spare worker (workers[1]); kill it while
            # partition 1 streams to it: once it has scored a batch (Spark lets this stage
            # run ahead of the scoring one, so wait for that here).
            if part == 1 and i == 3:
                deadline = time.time() + 60
                while time.time() < deadline:
                    with open(spare_log) as f:
                        if any("model loaded" in line and loaded in line for line in f):
                            break
                    time.sleep(0.05)
                try:
                    fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    pass
                else:
                    os.close(fd)
                    os.kill(pid, signal.SIGKILL)
            yield b

    previous = spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch")
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "100")
    try:
        gated = df.mapInArrow(kill_spare_mid_partition, df.schema)
        out = score(gated, name, feature_columns=RF_FEATURES, workers=[server.flight, spare_worker.flight],
                    token="", batch_rows=100)
        got = collect_sorted(out)
    finally:
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", previous)
    spare_worker.proc.wait(10)
    assert not spare_worker.alive() and os.path.exists(marker)
    assert spare_worker.loaded(f"{name}:1"), "the spare worker was scoring before it died"
    want = rf_expected(models, data)
    assert got.num_rows == data.num_rows
    np.testing.assert_array_equal(got["label"].to_numpy(), want["output_label"])
    probs = np.column_stack([got[f"probability_{k}"].to_numpy() for k in range(3)])
    np.testing.assert_allclose(probs, want["output_probability"], rtol=1e-6, atol=1e-7)


def test_refusals_come_at_the_driver_and_tokens_pass_through(
    spark: Any, auth_server: Proc, issuer: Issuer, models: Path
) -> None:
    name = unique("spgrant")
    owner = Registry(auth_server.url, token=issuer.token_fn("writer-app"))
    owner.register(name, models / "rf.onnx", create_model=True, alias="champion")
    data = with_id(pq.read_table(models / "rf.rows.parquet"))
    df = spark.createDataFrame(data.to_pandas()).repartition(2)
    sc = spark.sparkContext
    sc.setJobGroup("lakescore-refusals", "refused at the driver")
    try:
        with pytest.raises(lakescore.PermissionDenied) as denied:
            score(df, f"{name}@champion", feature_columns=RF_FEATURES, workers=auth_server.flight,
                  token=issuer.token_fn("reader-app"))
        assert denied.value.detail and "gRPC" not in denied.value.detail
        with pytest.raises(lakescore.Unauthenticated):
            score(df, f"{name}@champion", feature_columns=RF_FEATURES, workers=auth_server.flight,
                  token="not-a-token")
        with pytest.raises(lakescore.NotFound):
            score(df, unique("missing"), feature_columns=RF_FEATURES, workers=auth_server.flight,
                  token=issuer.token_fn("writer-app"))
        assert list(sc.statusTracker().getJobIdsForGroup("lakescore-refusals")) == [], "no task ran"
    finally:
        sc.setJobGroup("", "")

    # Granted, the reader's own token (fetched by the executors from the shipped source)
    # is what the workers check and pass to the registry.
    owner.grant(name, "app:reader-app", "read")
    out = score(df, f"{name}@champion", feature_columns=RF_FEATURES, workers=auth_server.flight,
                token=issuer.token_fn("reader-app"))
    got = collect_sorted(out)
    np.testing.assert_array_equal(got["label"].to_numpy(), rf_expected(models, data)["output_label"])


def test_nulls_in_spark_columns_reach_a_forest_as_nan(spark: Any, server: Proc, models: Path) -> None:
    """Spark nulls in a feature column: scored as onnxruntime scores NaN there by default;
    refused with missing="error", naming the column."""
    from pyspark.sql import functions as F

    name = unique("spnan")
    Registry(server.url, token="").register(name, models / "rf.onnx", create_model=True, alias="champion")
    data = with_id(pq.read_table(models / "rf.rows.parquet"))
    df = spark.createDataFrame(data.to_pandas())
    df = df.withColumn("f3", F.when(F.col("id") % 5 == 0, F.lit(None).cast("float")).otherwise(F.col("f3")))
    got = collect_sorted(score(df, f"{name}@champion", feature_columns=RF_FEATURES, workers=server.flight, token=""))
    assert got["f3"].null_count == (data.num_rows + 4) // 5
    x = np.column_stack([data[c].to_numpy() for c in RF_FEATURES]).astype(np.float32)
    x[::5, 3] = np.nan
    want = ort_predict(models / "rf.onnx", {"X": x})
    np.testing.assert_array_equal(got["label"].to_numpy(), want["output_label"])
    probs = np.column_stack([got[f"probability_{k}"].to_numpy() for k in range(3)])
    np.testing.assert_allclose(probs, want["output_probability"], rtol=1e-6, atol=1e-7)

    strict = score(df, f"{name}@champion", feature_columns=RF_FEATURES, workers=server.flight, token="",
                   missing="error")
    with pytest.raises(Exception) as e:
        strict.collect()
    assert "f3" in str(e.value) and "null" in str(e.value), str(e.value)[:2000]

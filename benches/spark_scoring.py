#!/usr/bin/env python3
"""Spark batch-scoring benchmark: lakescore.spark.score against onnxruntime inside Spark's
Python workers (what mlflow.pyfunc.spark_udf does), same model, same rows, one run.

Run by hand on an otherwise idle machine (a few minutes), with the venv scripts/test-python
makes (PySpark, the lakescore package, onnxruntime) and a release build:

    nice -n 19 cargo build --release
    ~/.cache/lakescore/venv-py/bin/python benches/spark_scoring.py [--rows 1000000]
        [--partitions 8] [--lakescore BIN] [--worker-threads N]

Model: big_rf (RandomForestClassifier, 100 trees, depth 12, 3 classes, 20 float features,
probabilities as a tensor; `tests/models/generate.py --bench`, generated when missing).
Data: ROWS x 20 float32 features plus an int64 id, written once as Parquet (one file per
partition) and read back by each run. Spark: local[2] (Spark's own default parallelism on
this machine), Arrow batches of spark.sql.execution.arrow.maxRecordsPerBatch (10,000) rows.
Each run ends in Spark's `noop` sink, so every row is scored and nothing is collected.

  floor        mapInArrow that passes the batches through: what Spark + Arrow cost alone
  onnxruntime  mapInArrow with an onnxruntime InferenceSession per Python worker (loaded
               once per worker process from the model bytes, 1 intra-op thread, as many
               concurrent sessions as Spark runs tasks): label + probabilities appended
  lakescore    lakescore.spark.score: each partition streams its batches to a lakescore
               worker (`lakescore serve` on this machine, started here) over DoExchange

Each is run once untimed on a slice (Python workers started, model loaded) and then timed
on all rows. The script prints rows/s for each and the ratio lakescore / onnxruntime, and
checks on a sample that both give the same labels.

On one machine both paths share the same two cores, and lakescore's adds a hop (Spark's
Python worker -> gRPC -> worker -> back): with the same engine on both sides it is at best
even on a laptop, and it is ahead here because the worker runs forests on its native tree
engine. The larger point of the worker path is on a cluster, where workers scale (the Helm chart's HPA) independently
of Spark executors and a model is loaded once per worker rather than once per Python
worker process of every executor.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from _common import Serve, bench_model, default_binary

FEATURES = [f"f{i}" for i in range(20)]
SEED = 20261130


def write_data(out: Path, rows: int, partitions: int) -> Path:
    """ROWS x 20 float32 + id, one Parquet file per partition."""
    out.mkdir(parents=True)
    rng = np.random.default_rng(SEED)
    per = -(-rows // partitions)
    start = 0
    for p in range(partitions):
        n = min(per, rows - start)
        if n <= 0:
            break
        x = rng.standard_normal((n, len(FEATURES)), dtype=np.float32)
        cols = {"id": pa.array(np.arange(start, start + n, dtype=np.int64))}
        cols.update({f: x[:, i] for i, f in enumerate(FEATURES)})
        pq.write_table(pa.table(cols), out / f"part-{p:04d}.parquet")
        start += n
    return out


def ort_map_fn(model_bytes: bytes, threads: int):
    """The mlflow-spark_udf-like baseline: a session per Python worker process."""

    def score(batches):
        import numpy as np
        import onnxruntime as ort
        import pyarrow as pa

        import sys
        import types

        # Cached in the Python worker process (reused across tasks), as spark_udf caches
        # the loaded model.
        cache = sys.modules.setdefault("_lakescore_bench_cache", types.ModuleType("_lakescore_bench_cache"))
        sess = getattr(cache, "session", None)
        if sess is None:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            sess = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
            cache.session = sess
        for b in batches:
            if b.num_rows == 0:
                continue
            x = np.column_stack([b.column(f).to_numpy() for f in FEATURES]).astype(np.float32, copy=False)
            label, probs = sess.run(["label", "probabilities"], {"X": x})
            flat = pa.array(probs.reshape(-1), pa.float32())
            probs_col = pa.ListArray.from_arrays(
                pa.array(np.arange(0, probs.size + 1, probs.shape[1], dtype=np.int32)), flat
            )
            yield pa.RecordBatch.from_arrays(
                [*b.columns, pa.array(label, pa.int64()), probs_col],
                names=[*b.schema.names, "label", "probabilities"],
            )

    return score


def timed(label: str, df, rows: int) -> float:
    t0 = time.perf_counter()
    df.write.format("noop").mode("overwrite").save()
    secs = time.perf_counter() - t0
    print(f"  {label:<12} {secs:8.2f} s   {rows / secs:12,.0f} rows/s", flush=True)
    return secs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--lakescore", type=Path, help="lakescore binary (default: the release build)")
    ap.add_argument("--worker-threads", type=int, default=0,
                    help="the worker's --intra-op-threads (default 0: one per core, its default)")
    ap.add_argument("--spark-master", default="local[2]")
    ap.add_argument("--calls", type=int, default=2, help="lakescore.spark.score's calls_per_partition (default 2)")
    args = ap.parse_args()

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark.sql import SparkSession
    from pyspark.sql.types import ArrayType, FloatType, LongType, StructField, StructType

    import lakescore
    from lakescore.spark import score as lakescore_score

    binary = args.lakescore or default_binary()
    if not Path(binary).is_file():
        sys.exit(f"{binary} not found: `cargo build --release` (or pass --lakescore BIN)")
    model = bench_model("big_rf")
    work = Path(tempfile.mkdtemp(prefix="lakescore-spark-bench-"))
    serve = None
    spark = None
    try:
        data = write_data(work / "rows", args.rows, args.partitions)
        file_bytes = max(f.stat().st_size for f in data.glob("*.parquet"))
        serve = Serve(binary, work, args.worker_threads)
        lakescore.Registry(serve.http, token="").register("big_rf", model, create_model=True, alias="bench")

        spark = (
            SparkSession.builder.master(args.spark_master)
            .appName("lakescore-spark-bench")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.driver.host", "127.0.0.1")
            .config("spark.driver.bindAddress", "127.0.0.1")
            .config("spark.driver.memory", "2g")
            .config("spark.sql.adaptive.enabled", "false")
            # one partition per file
            .config("spark.sql.files.maxPartitionBytes", str(file_bytes + 1))
            .config("spark.sql.files.openCostInBytes", str(file_bytes + 1))
            .getOrCreate()
        )
        spark.sparkContext.setLogLevel("ERROR")
        cores = spark.sparkContext.defaultParallelism
        df = spark.read.parquet(str(data))
        parts = df.rdd.getNumPartitions()
        out_schema = StructType(df.schema.fields + [StructField("label", LongType()),
                                                    StructField("probabilities", ArrayType(FloatType()))])
        model_bytes = model.read_bytes()

        def floor(batches):
            yield from batches

        runs = {
            "floor": lambda d: d.mapInArrow(floor, d.schema),
            "onnxruntime": lambda d: d.mapInArrow(ort_map_fn(model_bytes, 1), out_schema),
            "lakescore": lambda d: lakescore_score(d, "big_rf@bench", feature_columns=FEATURES,
                                                   workers=serve.flight, token="",
                                                   calls_per_partition=args.calls),
        }

        print(f"big_rf (100 trees, depth 12, 3 classes) on {args.rows:,} rows x 20 features, "
              f"Spark {spark.version} {args.spark_master} ({cores} task slots, {parts} partitions), "
              f"{os.cpu_count()} cores; lakescore {binary} (intra-op threads "
              f"{args.worker_threads or 'one per core'}), onnxruntime in Spark: 1 intra-op thread per task",
              flush=True)

        # Warm-up: Python workers up, models loaded, JIT warm.
        sample = df.filter(f"id < {min(20_000, args.rows)}")
        for name, make in runs.items():
            make(sample).write.format("noop").mode("overwrite").save()

        # Same answers (sample): labels equal.
        a = runs["onnxruntime"](sample).select("id", "label").orderBy("id").toPandas()
        b = runs["lakescore"](sample).select("id", "label").orderBy("id").toPandas()
        assert (a["label"].to_numpy() == b["label"].to_numpy()).all(), "labels differ"
        print(f"  sample of {len(a):,} rows: labels equal", flush=True)

        secs = {name: timed(name, make(df), args.rows) for name, make in runs.items()}
        ratio = secs["onnxruntime"] / secs["lakescore"]
        print(f"  lakescore / onnxruntime-in-Spark throughput: {ratio:.2f}x "
              f"({'faster' if ratio > 1 else 'slower'}); Spark+Arrow floor alone "
              f"{args.rows / secs['floor']:,.0f} rows/s", flush=True)
    finally:
        if spark is not None:
            spark.stop()
        if serve is not None:
            serve.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

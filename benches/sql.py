#!/usr/bin/env python3
"""SQL `predict()` over a Parquet file against (a) DoExchange of the same rows and (b) what
an analyst uses today: DuckDB with an Arrow-vectorized Python UDF calling onnxruntime.

    ~/.cache/lakescore/venv/bin/python benches/sql.py [--rows 1000000] [--threads 2]

Needs the release binary (cargo build --release), and `duckdb` and the ADBC Flight SQL
driver in the Python environment (pip install duckdb adbc-driver-flightsql). One run, one machine, one file: 1,000,000 rows x 20 float32
features, the 100-tree depth-12 RandomForest (big_rf) and a LogisticRegression. Each figure
is the best of --repeat runs; the outputs of all three are checked equal on the same rows.
The SQL query is what an analyst writes:

    SELECT predict('m@bench', f0, ..., f19)['label'] FROM 'file:///…/rows.parquet'

fetched over Flight SQL by the ADBC driver, as a BI tool or notebook would.
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
import onnxruntime as ort
import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bench_model, default_binary  # noqa: E402
from scoring import FEATURES, Server, as_table, feature_matrix, logreg_model, run_exchange  # noqa: E402


def sql_predict(server: Server, sql: str) -> tuple[float, pa.Table]:
    import adbc_driver_flightsql.dbapi as adbc

    start = time.perf_counter()
    with adbc.connect(server.flight, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(sql)
        table = cur.fetch_arrow_table()
    return time.perf_counter() - start, table


def duckdb_udf(path: Path, model: Path, threads: int) -> tuple[float, np.ndarray]:
    import duckdb
    from duckdb.sqltypes import BIGINT, FLOAT

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def predict_columns(cols: list[pa.Array]) -> pa.Array:
        x = np.column_stack([c.to_numpy(zero_copy_only=False) for c in cols]).astype(np.float32, copy=False)
        return pa.array(sess.run(None, {name: x})[0].astype(np.int64))

    # DuckDB wants one named parameter per argument.
    args = ", ".join(FEATURES)
    predict = eval(f"lambda {args}: predict_columns([{args}])", {"predict_columns": predict_columns})

    con = duckdb.connect()
    con.execute(f"SET threads = {threads}")
    con.create_function("predict", predict, [FLOAT] * len(FEATURES), BIGINT, type="arrow")
    start = time.perf_counter()
    labels = con.sql(f"SELECT predict({args}) AS label FROM read_parquet('{path}')").to_arrow_table()
    elapsed = time.perf_counter() - start
    return elapsed, labels.column("label").to_numpy()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", type=Path, default=default_binary())
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=65_536, help="rows per DoExchange batch")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--models", default="big_rf,logreg20")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="lakescore-sqlbench-"))
    x = feature_matrix(args.rows, seed=7)
    table = as_table(x)
    data = work / "rows.parquet"
    pq.write_table(table, data, row_group_size=131_072, compression="snappy")
    batches = table.to_batches(max_chunksize=args.batch)

    server = Server(args.binary, work / "serve", args.threads)
    print(f"{args.rows:,} rows x {len(FEATURES)} float32 in one Parquet file; {args.threads} threads; "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"{'model':<10} {'SQL predict':>14} {'DoExchange':>14} {'DuckDB + UDF':>14} {'SQL/DoEx':>9} {'SQL/DuckDB':>11}")
    try:
        client = flight.FlightClient(server.flight)
        for name in args.models.split(","):
            path = bench_model(name) if name == "big_rf" else logreg_model(work)
            server.register(name, path)
            model = f"{name}@bench"
            cols = ", ".join(FEATURES)
            sql = f"SELECT predict('{model}', {cols})['label'] AS label FROM 'file://{data}'"
            best = {"sql": float("inf"), "exchange": float("inf"), "duckdb": float("inf")}
            labels = {}
            for _ in range(args.repeat):
                t, out = sql_predict(server, sql)
                best["sql"] = min(best["sql"], t)
                labels["sql"] = out.column("label").to_numpy()
                t, outs = run_exchange(client, model, batches, table.schema)
                best["exchange"] = min(best["exchange"], t)
                labels["exchange"] = np.concatenate([b.column(b.schema.get_field_index("label")).to_numpy() for b in outs])
                t, lab = duckdb_udf(data, path, args.threads)
                best["duckdb"] = min(best["duckdb"], t)
                labels["duckdb"] = lab
            # SQL gives no order; compare label counts (all three) and, for DoExchange and
            # DuckDB, which keep the file's order, row by row.
            assert np.array_equal(labels["exchange"], labels["duckdb"].astype(labels["exchange"].dtype)), name
            assert np.array_equal(np.bincount(labels["sql"]), np.bincount(labels["exchange"])), name
            rate = {k: args.rows / v for k, v in best.items()}
            print(
                f"{name:<10} {rate['sql']:>10,.0f} r/s {rate['exchange']:>10,.0f} r/s {rate['duckdb']:>10,.0f} r/s "
                f"{rate['sql'] / rate['exchange']:>8.2f}x {rate['sql'] / rate['duckdb']:>10.2f}x",
                flush=True,
            )
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

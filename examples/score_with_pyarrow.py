#!/usr/bin/env python3
"""Score a table with a lakescore worker over Arrow Flight, from plain pyarrow.

    python examples/score_with_pyarrow.py [PARQUET] [--model rf@champion]
        [--features f0,f1,...] [--flight grpc://127.0.0.1:8815] [--output file:///tmp/scores/]
        [--token TOKEN]

What it shows:

1. DoExchange: stream record batches to the worker and read the same rows back, in the
   same order, with the model's prediction columns appended.
2. DoPut: stream the same batches; the worker writes enriched Parquet under `--output`
   (a storage URL prefix) and answers with a summary (rows, files, bytes, manifest, ...).

The model is named by a registry reference (`name`, `name:7` or `name@alias`); register
one first, e.g. with the test models (`tests/models/README.md`):

    ~/.cache/lakescore/venv/bin/python tests/models/generate.py
    lakescore serve &
    lakescore models register rf tests/models/generated/rf.onnx --alias champion
    python examples/score_with_pyarrow.py tests/models/generated/rf.rows.parquet

Without a Parquet file a small random table with columns f0..f19 (float32) is scored.
Needs only pyarrow (and numpy, which pyarrow uses anyway).
"""

import argparse
import json
import os
import sys
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("parquet", nargs="?", help="Parquet file to score (default: 1,000 generated rows)")
    ap.add_argument("--model", default="rf@champion", help="model reference (default rf@champion)")
    ap.add_argument(
        "--features",
        help="comma-separated feature columns, in the model's feature order, for a model with one "
        "2-D input [N, F] (default: f0..f19, or the table's f<i> columns)",
    )
    ap.add_argument("--flight", default="grpc://127.0.0.1:8815", help="worker location")
    ap.add_argument(
        "--output",
        help="storage URL prefix for DoPut's Parquet (default: a fresh temporary directory, as file:///…/)",
    )
    ap.add_argument("--token", default=os.environ.get("LAKESCORE_TOKEN"), help="OIDC access token (or LAKESCORE_TOKEN)")
    ap.add_argument("--batch-rows", type=int, default=65_536, help="rows per record batch sent (default 65536)")
    return ap.parse_args()


def load_table(path):
    if path:
        return pq.read_table(path)
    # 1,000 rows, 20 float32 feature columns: the shape of tests/models/generated/rf.onnx.
    rng = np.random.default_rng(7)
    return pa.table({f"f{i}": rng.standard_normal(1_000, dtype=np.float32) for i in range(20)})


def main():
    args = parse_args()
    table = load_table(args.parquet)

    if args.features:
        features = [c.strip() for c in args.features.split(",") if c.strip()]
    else:
        # The test models name their features f0, f1, ... in order; sort numerically.
        features = sorted((c for c in table.column_names if c[:1] == "f" and c[1:].isdigit()), key=lambda c: int(c[1:]))

    # --- the score command -------------------------------------------------------------
    # A Flight descriptor of type CMD carries a lakescore ScoreCommand. The worker takes
    # its canonical proto3 JSON form (proto/lakescore.proto), so plain json.dumps will do.
    # `feature_columns` feeds a model with a single 2-D input [N, F] from F columns, in
    # order; models whose inputs are named like the table's columns need no mapping.
    command = {"model": args.model}
    if features:
        command["feature_columns"] = features

    # --- auth -------------------------------------------------------------------------
    # Every call carries the caller's own bearer token as a gRPC header; the worker passes
    # it on to the registry, so the caller can only score models it may read. A server
    # without OIDC (the default `lakescore serve`) ignores it.
    headers = [(b"authorization", f"Bearer {args.token}".encode())] if args.token else []
    options = flight.FlightCallOptions(headers=headers)

    client = flight.FlightClient(args.flight)
    batches = table.to_batches(max_chunksize=args.batch_rows)

    # --- 1. DoExchange: batches in, enriched batches out --------------------------------
    descriptor = flight.FlightDescriptor.for_command(json.dumps(command).encode())
    writer, reader = client.do_exchange(descriptor, options=options)

    # One thread, in lock step: write a batch, then read that batch's rows back before
    # writing the next. The worker answers each batch as soon as it has it, so this never
    # stalls on flow control (a client that writes a whole large table before reading does),
    # memory stays at one batch each way, and a worker error is raised here as an exception.
    # Do not write from a second thread while this one reads: when the call fails, pyarrow's
    # Flight client can abort the whole interpreter while another thread is still writing.
    # (The `lakescore` package, `pip install ./python`, does all of this for you.)
    scored_batches = []
    try:
        writer.begin(table.schema)
        for batch in batches:
            if batch.num_rows == 0:
                continue  # the worker answers rows; an empty batch gets no answer
            writer.write_batch(batch)
            got = 0
            while got < batch.num_rows:  # the answer may come in several chunks
                chunk = reader.read_chunk()
                if chunk.data is not None:
                    scored_batches.append(chunk.data)
                    got += chunk.data.num_rows
        writer.done_writing()  # half-close: no more rows; the worker ends the call
        schema = reader.schema
        for _ in reader:  # nothing more comes; this surfaces a late error, if any
            pass
    finally:
        writer.close()
    scored = pa.Table.from_batches(scored_batches, schema=schema)  # same rows, same order

    new_columns = [c for c in scored.column_names if c not in table.column_names]
    print(f"DoExchange {args.model}: {scored.num_rows} rows; appended columns:")
    for name in new_columns:
        print(f"  {name}: {scored.schema.field(name).type}")
    # The result schema's metadata pins the model version that scored the rows.
    meta = {k.decode(): v.decode() for k, v in (scored.schema.metadata or {}).items()}
    print(f"  scored by {meta.get('lakescore.model')}:{meta.get('lakescore.version')}")
    print("first rows:")
    for row in scored.select(new_columns).slice(0, 5).to_pylist():
        print("  ", row)

    # --- 2. DoPut: batches in, enriched Parquet written by the worker -------------------
    # `output` is a storage URL prefix the worker can reach (file:///, s3://, az://, gs://).
    # Files are named by job id, and a manifest (_lakescore.json) is written last, so a
    # reader never mistakes partial output for complete.
    output = args.output or f"file://{tempfile.mkdtemp(prefix='lakescore-scores-')}/"
    put_descriptor = flight.FlightDescriptor.for_command(json.dumps({**command, "output": output}).encode())
    writer, metadata_reader = client.do_put(put_descriptor, table.schema, options=options)
    with writer:
        for batch in batches:
            writer.write_batch(batch)
        writer.done_writing()
        # The worker answers once, after it has committed the output: a PutResult whose
        # app_metadata is a JSON summary.
        result = metadata_reader.read()
    summary = json.loads(result.to_pybytes())
    print(f"\nDoPut {args.model} -> {output}")
    print(json.dumps(summary, indent=2))

    # The files are plain Parquet; read them back like any other.
    local = [f[len("file://"):] for f in summary.get("files", []) if f.startswith("file://")]
    if local:
        written = pa.concat_tables(pq.read_table(f) for f in local)
        print(f"read back {written.num_rows} rows from {len(local)} file(s)")


if __name__ == "__main__":
    try:
        main()
    except pa.ArrowException as e:
        # The worker's gRPC status arrives as a pyarrow exception: NOT_FOUND (unknown model)
        # as ArrowKeyError, INVALID_ARGUMENT (a column missing or of the wrong type, named
        # in the message) as ArrowInvalid, UNAUTHENTICATED / PERMISSION_DENIED /
        # UNAVAILABLE as flight.FlightUnauthenticatedError / ...; drop gRPC's debug context.
        print(f"{type(e).__name__}: {str(e).split('. gRPC client debug context')[0]}", file=sys.stderr)
        sys.exit(1)

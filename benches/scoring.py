#!/usr/bin/env python3
"""Scoring benchmark: lakescore over Arrow Flight against in-process ONNX Runtime.

Run by hand (it takes a few minutes and wants an otherwise idle machine):

    nice -n 19 cargo build --release
    ~/.cache/lakescore/venv/bin/python benches/scoring.py [--lakescore BIN] [--rows N]

Same model, same rows, same machine, one script. For each model it measures

  (a) onnxruntime in-process (Python): InferenceSession.run over the rows in batches, on a
      ready float32 [N, F] matrix: the ceiling for the model;
  (b) lakescore DoExchange from a pyarrow.flight client: batches in, enriched batches out;
  (c) lakescore DoPut: batches in, enriched Parquet written to local disk, PutResult back;

on a 1,000,000-row, 20-feature float32 table, with

  big_rf    RandomForestClassifier, 100 trees, depth 12, 3 classes (tests/models/generate.py
            --bench; generated when missing)
  gb300     GradientBoostingClassifier, 300 trees, depth 6, binary (likewise)
  logreg20  LogisticRegression, 20 features, 3 classes (built here: scikit-learn + skl2onnx,
            fixed seed, zipmap=False like big_rf)
  mlp64     MLPClassifier, 2 hidden layers of 64, 20 features, 3 classes (built here, likewise)

The tract backend is not measured: it refuses these models (their graphs use ai.onnx.ml
operators, which tract does not run correctly; see scorer/src/engine/tract.rs). The tree
ensembles and logreg20 run on lakescore's native engine (`trees` and `linear`, the default
backend `auto`); for them (b) is also measured against a second worker started with
`--backend ort`, so that both engines show in the table.

and prints rows/s and the ratio to (a). As a reference for what the transport alone costs,
it also times the same DoExchange against an Arrow C++ Flight server (pyarrow, in this
process) that appends zero-filled columns of the same size and scores nothing. Then

  (d) peak RSS (VmHWM) of the lakescore process while it scores 10,000,000 rows through
      DoPut, streamed in batches (the client never holds more than one batch either).

The script starts `lakescore serve` itself (free ports, a temporary --data-dir, ONNX
Runtime from the onnxruntime package of this Python), registers the models with the CLI,
runs everything, and stops the server with SIGTERM. Both engines run the same
libonnxruntime with the same intra-op thread count (--threads, default: all cores, which is
also both defaults), one inter-op thread, all graph optimizations, 65,536-row batches.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq
from _common import Serve, bench_model, default_binary, onnxruntime_library

N_FEATURES = 20
FEATURES = [f"f{i}" for i in range(N_FEATURES)]
SEED = 20261125


# --------------------------------------------------------------------------- setup


def classifier_model(out: Path, name: str, model) -> Path:
    """Fits `model` on 20 features, 3 classes (fixed seed) and writes it as ONNX with the
    probabilities as a tensor (no ZipMap)."""
    import warnings

    from skl2onnx import to_onnx
    from sklearn.datasets import make_classification
    from sklearn.exceptions import ConvergenceWarning

    X, y = make_classification(
        n_samples=20_000, n_features=N_FEATURES, n_informative=10, n_classes=3, random_state=SEED
    )
    with warnings.catch_warnings():
        # Training quality does not matter for a speed benchmark.
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X.astype(np.float32), y)
    onx = to_onnx(
        model,
        X[:1].astype(np.float32),
        options={id(model): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    path = out / f"{name}.onnx"
    path.write_bytes(onx.SerializeToString())
    return path


def logreg_model(out: Path) -> Path:
    """LogisticRegression on 20 features, 3 classes."""
    from sklearn.linear_model import LogisticRegression

    return classifier_model(out, "logreg20", LogisticRegression(max_iter=1000))


def mlp_model(out: Path) -> Path:
    """MLPClassifier, 2 hidden layers of 64, on 20 features, 3 classes."""
    from sklearn.neural_network import MLPClassifier

    return classifier_model(out, "mlp64", MLPClassifier(hidden_layer_sizes=(64, 64), max_iter=50, random_state=SEED))


def feature_matrix(rows: int, seed: int) -> np.ndarray:
    """rows x 20 float32, row-major (what an [N, F] model input wants)."""
    return np.random.default_rng(seed).standard_normal((rows, N_FEATURES), dtype=np.float32)


def as_table(x: np.ndarray) -> pa.Table:
    return pa.table({name: x[:, i] for i, name in enumerate(FEATURES)})


class Server(Serve):
    """`lakescore serve` with its memory and CPU time readable from /proc."""

    def cpu_seconds(self) -> float:
        """User + system CPU time the process has used so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def status(self, key: str) -> int:
        """A /proc/<pid>/status field in bytes (VmRSS, VmHWM)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(key)

    def reset_peak_rss(self) -> bool:
        """Reset VmHWM to the current RSS (Linux >= 4.0, `5` to clear_refs)."""
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
            return True
        except OSError:
            return False


class RssSampler:
    """Samples VmRSS every 10 ms: a cross-check of VmHWM (and the only peak if clear_refs
    cannot be written)."""

    def __init__(self, server: Server):
        self.server, self.peak, self._stop = server, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.server.status("VmRSS"))
            except (OSError, KeyError):
                return
            self._stop.wait(0.01)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# --------------------------------------------------------------------------- the runs


def run_ort(path: Path, x: np.ndarray, batch: int, threads: int) -> tuple[float, list]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    sess.run(None, {name: x[:batch]})  # warm-up, like the worker's loaded model
    start = time.perf_counter()
    outs = [sess.run(None, {name: x[i : i + batch]}) for i in range(0, len(x), batch)]
    return time.perf_counter() - start, outs


def command(model: str, **extra) -> bytes:
    return json.dumps({"model": model, "feature_columns": FEATURES, **extra}).encode()


def run_exchange(client: flight.FlightClient, model: str, batches: list[pa.RecordBatch], schema) -> tuple[float, list]:
    """DoExchange with a writer thread, so that sending and receiving overlap (as any client
    streaming more than gRPC's window must)."""
    start = time.perf_counter()
    writer, reader = client.do_exchange(flight.FlightDescriptor.for_command(command(model)))
    failure = []

    def send():
        try:
            writer.begin(schema)
            for b in batches:
                writer.write_batch(b)
            writer.done_writing()
        except Exception as e:  # reported by the reader side too
            failure.append(e)

    sender = threading.Thread(target=send)
    sender.start()
    out = []
    try:
        while True:
            try:
                chunk = reader.read_chunk()
            except StopIteration:
                break
            out.append(chunk.data)
    finally:
        sender.join()
    writer.close()
    elapsed = time.perf_counter() - start
    if failure:
        raise failure[0]
    return elapsed, out


def small_calls(client: flight.FlightClient, model: str, batch: pa.RecordBatch, calls: int) -> dict:
    """`calls` DoExchange calls of one small batch each, one after another (an online caller
    scoring a few rows at a time), and as many `warm` actions: each call resolves the model
    reference anew, and `warm` is that resolve plus the loaded-model cache lookup alone."""
    def timed(fn) -> list[float]:
        out = []
        for _ in range(calls):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
        return sorted(out)

    exchange = timed(lambda: run_exchange(client, model, [batch], batch.schema))
    warm = timed(lambda: list(client.do_action(flight.Action("warm", model.encode()))))
    pct = lambda xs, p: xs[min(len(xs) - 1, int(len(xs) * p))] * 1000  # noqa: E731
    return {
        "calls_per_s": calls / sum(exchange),
        "p50_ms": pct(exchange, 0.5),
        "p99_ms": pct(exchange, 0.99),
        "resolve_p50_ms": pct(warm, 0.5),
    }


class EchoServer(flight.FlightServerBase):
    """Reference for the transport alone: an Arrow C++ Flight server (pyarrow, in this
    process) whose DoExchange appends zero-filled `label` (int64) and `probabilities`
    (3 x float32) columns, the size of the models' outputs, and streams the batches back.
    No model, no conversion to tensors."""

    def do_exchange(self, context, descriptor, reader, writer):
        started = False
        for chunk in reader:
            b, n = chunk.data, chunk.data.num_rows
            label = pa.array(np.zeros(n, dtype=np.int64))
            probs = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(3 * n, dtype=np.float32)), 3)
            out = pa.RecordBatch.from_arrays(b.columns + [label, probs], names=b.schema.names + ["label", "probabilities"])
            if not started:
                writer.begin(out.schema)
                started = True
            writer.write_batch(out)


def run_put(client: flight.FlightClient, model: str, batches, schema, output: str) -> tuple[float, dict]:
    start = time.perf_counter()
    desc = flight.FlightDescriptor.for_command(command(model, output=output))
    writer, meta = client.do_put(desc, schema)
    for b in batches:
        writer.write_batch(b)
    writer.done_writing()
    summary = json.loads(meta.read().to_pybytes())
    writer.close()
    return time.perf_counter() - start, summary


def streamed_batches(rows: int, batch: int, seed: int):
    """`rows` rows in batches of `batch`, generated on the fly (never all in memory)."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < rows:
        n = min(batch, rows - done)
        cols = rng.standard_normal((N_FEATURES, n), dtype=np.float32)
        yield pa.record_batch([pa.array(c) for c in cols], names=FEATURES)
        done += n


def check_against_ort(model: str, scored: list[pa.RecordBatch], ort_outs: list, rows: int):
    """lakescore's labels must equal onnxruntime's; probabilities within 1e-5."""
    table = pa.Table.from_batches(scored)
    if table.num_rows != rows:
        raise AssertionError(f"{model}: DoExchange returned {table.num_rows} rows, expected {rows}")
    labels = np.concatenate([o[0] for o in ort_outs])
    probs = np.concatenate([o[1] for o in ort_outs])
    got_labels = table.column("label").to_numpy()
    got_probs = np.asarray(table.column("probabilities").combine_chunks().flatten()).reshape(probs.shape)
    bad = int(np.count_nonzero(got_labels != labels))
    if bad or not np.allclose(got_probs, probs, rtol=1e-5, atol=1e-6):
        raise AssertionError(f"{model}: lakescore disagrees with onnxruntime ({bad} labels differ)")


# --------------------------------------------------------------------------- main


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def fmt_rate(r: float) -> str:
    return f"{r:,.0f}"


def mib(b: int) -> str:
    return f"{b / 2**20:,.0f} MiB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lakescore", type=Path, default=default_binary(), help="release binary (default %(default)s)")
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows for (a)-(c) (default 1,000,000)")
    ap.add_argument("--rss-rows", type=int, default=10_000_000, help="rows for (d) (default 10,000,000; 0 skips)")
    ap.add_argument("--batch-rows", type=int, default=65_536, help="rows per batch, everywhere (default 65,536)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="intra-op threads, both engines (default: cores)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each measurement; the best is reported (default 3)")
    ap.add_argument(
        "--models", default="big_rf,gb300,logreg20,mlp64", help="comma-separated subset of big_rf,gb300,logreg20,mlp64"
    )
    ap.add_argument("--no-echo", action="store_true", help="skip the transport-only reference (Arrow C++ Flight echo)")
    ap.add_argument(
        "--small-calls", type=int, default=200, help="1,000-row DoExchange calls timed one by one (default 200; 0 skips)"
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (server log, outputs)")
    args = ap.parse_args()

    if not args.lakescore.exists():
        sys.exit(f"{args.lakescore} not found: build it with `cargo build --release` or pass --lakescore")
    ort_lib = onnxruntime_library()
    tmp = Path(tempfile.mkdtemp(prefix="lakescore-bench-"))
    models = {}
    for name in args.models.split(","):
        if name in ("big_rf", "gb300"):
            models[name] = bench_model(name)
        elif name == "logreg20":
            models[name] = logreg_model(tmp)
        elif name == "mlp64":
            models[name] = mlp_model(tmp)
        else:
            sys.exit(f"unknown model {name!r} (big_rf, gb300, logreg20, mlp64)")

    print(f"lakescore       {args.lakescore}")
    print(f"onnxruntime     {ort.__version__} ({ort_lib}); same library in both engines")
    print(f"pyarrow         {pa.__version__}; numpy {np.__version__}; python {sys.version.split()[0]}")
    print(
        f"machine         {os.cpu_count()} cores; intra-op threads {args.threads} in both "
        f"(ONNX Runtime's and lakescore's default: all cores), 1 inter-op thread, all graph optimizations"
    )
    print(f"load average    {loadavg()} at start (the figures assume an otherwise idle machine)")
    print(f"workload        {args.rows:,} rows x {N_FEATURES} float32 features, batches of {args.batch_rows:,} rows; best of {args.repeat}")
    print(flush=True)

    x = feature_matrix(args.rows, SEED)
    table = as_table(x)
    batches = table.to_batches(max_chunksize=args.batch_rows)

    echo = None if args.no_echo else EchoServer("grpc://127.0.0.1:0")
    echo_client = flight.FlightClient(f"grpc://127.0.0.1:{echo.port}") if echo else None
    server = Server(args.lakescore, tmp, args.threads, ort_lib=ort_lib)
    ort_server = None  # `--backend ort`, started for the first model on a native engine
    start_rss = server.status("VmRSS")
    results = []  # (model, method, seconds, rows/s, ratio, note)
    rss = []  # (model, rows, seconds, vmhwm, sampled peak, baseline, files)
    rc = None
    try:
        client = flight.FlightClient(server.flight)
        for name, path in models.items():
            server.register(name, path)
            ref = f"{name}@bench"
            # Load the model ahead (`warm`), so that cold load is not timed; report it apart.
            t0 = time.perf_counter()
            warm = json.loads(next(iter(client.do_action(flight.Action("warm", ref.encode())))).body.to_pybytes())
            cold = time.perf_counter() - t0

            ort_times, ort_outs = [], None
            for _ in range(args.repeat):
                t, ort_outs = run_ort(path, x, args.batch_rows, args.threads)
                ort_times.append(t)
            ceiling = args.rows / min(ort_times)
            results.append((name, "(a) onnxruntime in-process (Python)", min(ort_times), ceiling, 1.0, ""))

            ex_times = []
            cpu0 = server.cpu_seconds()
            for i in range(args.repeat):
                t, scored = run_exchange(client, ref, batches, table.schema)
                if i == 0:
                    check_against_ort(name, scored, ort_outs, args.rows)
                del scored
                ex_times.append(t)
            # The worker's own CPU per row, all threads (ONNX Runtime's spinning included).
            cpu_ns = (server.cpu_seconds() - cpu0) / (args.repeat * args.rows) * 1e9
            rate = args.rows / min(ex_times)
            engine = warm.get("engine", "?")
            results.append((
                name, f"(b) lakescore DoExchange [{engine}]", min(ex_times), rate, rate / ceiling,
                f"output == onnxruntime; worker CPU {cpu_ns:,.0f} ns/row",
            ))
            if engine in ("trees", "linear"):
                if ort_server is None:
                    ort_server = Server(args.lakescore, tmp / "ort", args.threads, backend="ort", ort_lib=ort_lib)
                ort_server.register(name, path)
                ort_client = flight.FlightClient(ort_server.flight)
                list(ort_client.do_action(flight.Action("warm", ref.encode())))
                ort_ex = [run_exchange(ort_client, ref, batches, table.schema)[0] for _ in range(args.repeat)]
                ort_rate = args.rows / min(ort_ex)
                results.append((
                    name, "    lakescore DoExchange [ort] (--backend ort)", min(ort_ex), ort_rate, ort_rate / ceiling,
                    f"native {engine}: {rate / ort_rate:.2f}x this",
                ))
            if echo is not None:
                fl_times = [run_exchange(echo_client, ref, batches, table.schema)[0] for _ in range(args.repeat)]
                rate = args.rows / min(fl_times)
                results.append((
                    name, "    transport only: Arrow C++ Flight echo", min(fl_times), rate, rate / ceiling,
                    "pyarrow server, no model (reference)",
                ))

            put_times, put_hwm = [], 0
            for i in range(args.repeat):
                out = tmp / f"out-{name}-{i}"
                server.reset_peak_rss()
                t, summary = run_put(client, ref, batches, table.schema, out.as_uri() + "/")
                put_hwm = max(put_hwm, server.status("VmHWM"))
                if summary.get("rows") != args.rows:
                    raise AssertionError(f"{name}: DoPut wrote {summary.get('rows')} rows, expected {args.rows}")
                put_times.append(t)
                shutil.rmtree(out, ignore_errors=True)
            rate = args.rows / min(put_times)
            results.append((
                name, "(c) lakescore DoPut -> Parquet (local disk)", min(put_times), rate, rate / ceiling,
                f"{len(summary['files'])} file(s), {summary['bytes'] / 2**20:,.0f} MiB",
            ))
            results.append((name, "    cold model load (warm action)", cold, None, None, f"load_ms={warm.get('load_ms')}"))
            if args.small_calls:
                small = small_calls(client, ref, batches[0].slice(0, 1000), args.small_calls)
                results.append((
                    name, f"    1,000-row calls, one at a time ({args.small_calls})", args.small_calls / small["calls_per_s"],
                    small["calls_per_s"] * 1000, None,
                    f"p50 {small['p50_ms']:.2f} ms, p99 {small['p99_ms']:.2f} ms per call; "
                    f"resolve + model lookup (warm) p50 {small['resolve_p50_ms']:.2f} ms",
                ))

            if args.rss_rows:
                out = tmp / f"rss-{name}"
                baseline = server.status("VmRSS")
                exact = server.reset_peak_rss()
                with RssSampler(server) as sampler:
                    t, summary = run_put(
                        client, ref, streamed_batches(args.rss_rows, args.batch_rows, SEED + 1),
                        table.schema, out.as_uri() + "/",
                    )
                hwm = server.status("VmHWM")
                if summary.get("rows") != args.rss_rows:
                    raise AssertionError(f"{name}: DoPut wrote {summary.get('rows')} rows, expected {args.rss_rows}")
                rss.append((name, args.rss_rows, t, hwm if exact else None, sampler.peak, baseline, put_hwm, len(summary["files"])))
                shutil.rmtree(out, ignore_errors=True)
    finally:
        rc = server.stop()
        if ort_server is not None:
            ort_server.stop()
        if echo is not None:
            echo.shutdown()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    print(f"{'model':<9} {'method':<44} {'seconds':>8} {'rows/s':>11} {'vs (a)':>7}  note")
    for name, method, secs, rate, ratio, note in results:
        r = fmt_rate(rate) if rate is not None else ""
        q = f"{ratio:.2f}x" if ratio is not None else ""
        print(f"{name:<9} {method:<44} {secs:>8.2f} {r:>11} {q:>7}  {note}")
    if rss:
        print()
        print(f"(d) peak RSS of the lakescore serve process (registry + worker), DoPut of streamed rows to Parquet")
        print(f"{'model':<9} {'rows':>11} {'seconds':>8} {'rows/s':>11} {'VmHWM':>10} {'sampled':>10} {'idle RSS':>10} {'(c) VmHWM':>10}  files")
        for name, rows, secs, hwm, sampled, base, put_hwm, files in rss:
            print(
                f"{name:<9} {rows:>11,} {secs:>8.2f} {fmt_rate(rows / secs):>11} "
                f"{mib(hwm) if hwm is not None else 'n/a':>10} {mib(sampled):>10} {mib(base):>10} {mib(put_hwm):>10}  {files}"
            )
        print("VmHWM reset (clear_refs) before each DoPut: it is that job's peak; 'sampled' is VmRSS polled every 10 ms;")
        print(f"RSS of lakescore serve right after start-up (no model loaded): {mib(start_rss)}.")
        print(f"'idle RSS': before the job, model loaded; '(c) VmHWM': the same peak for the {args.rows:,}-row DoPut runs of (c).")
    print(f"\nlakescore serve stopped with SIGTERM, exit status {rc}; load average {loadavg()} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Scoring over Flight against real workers: predictions equal onnxruntime's, every input
kind, DoPut and score-dataset, errors mid-stream as exceptions (never an abort), and a
worker killed mid-stream."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import lakescore
from lakescore import Registry, Scorer

from conftest import ROOT, Proc, ort_predict, start_worker, unique

RF_FEATURES = [f"f{i}" for i in range(20)]


@pytest.fixture(scope="module")
def rf(server: Proc, models: Path) -> str:
    """The ZipMap RandomForest as `<name>@champion`."""
    name = unique("rf")
    Registry(server.url, token="").register(name, models / "rf.onnx", create_model=True, alias="champion")
    return f"{name}@champion"


@pytest.fixture(scope="module")
def pipeline(server: Proc, models: Path) -> str:
    name = unique("pipeline")
    Registry(server.url, token="").register(name, models / "pipeline.onnx", create_model=True, alias="champion")
    return f"{name}@champion"


def rf_rows(models: Path) -> pa.Table:
    return pq.read_table(models / "rf.rows.parquet")


def assert_rf_equal(scored: pa.Table, rows: pa.Table, models: Path) -> None:
    """label and probability_<class> equal onnxruntime's on the same rows."""
    x = np.column_stack([rows[c].to_numpy() for c in RF_FEATURES]).astype(np.float32)
    want = ort_predict(models / "rf.onnx", {"X": x})
    assert scored.num_rows == rows.num_rows
    np.testing.assert_array_equal(scored["label"].to_numpy(), want["output_label"])
    probs = np.column_stack([scored[f"probability_{k}"].to_numpy() for k in range(3)])
    np.testing.assert_allclose(probs, want["output_probability"], rtol=1e-6, atol=1e-7)
    for c in RF_FEATURES:  # inputs passed through, same order
        assert scored[c].equals(rows[c])


def test_table_rf_equals_onnxruntime(server: Proc, rf: str, models: Path) -> None:
    rows = rf_rows(models)
    scored = Scorer(server.flight, token="").score(rows, model=rf, feature_columns=RF_FEATURES)
    assert isinstance(scored, pa.Table)
    assert scored.column_names == RF_FEATURES + ["label", "probability_0", "probability_1", "probability_2"]
    meta = scored.schema.metadata
    assert meta[b"lakescore.version"] == b"1"
    assert_rf_equal(scored, rows, models)


@pytest.mark.parametrize("calls", [1, 2, 3])
def test_many_small_batches_keep_order(server: Proc, rf: str, models: Path, calls: int) -> None:
    rows = rf_rows(models)
    # 29 batches dealt to `calls` lock-step calls, answers read back in order
    scorer = Scorer(server.flight, token="", batch_rows=7, calls_per_stream=calls)
    scored = scorer.score(rows, model=rf, feature_columns=RF_FEATURES)
    assert_rf_equal(scored, rows, models)


def test_pandas_and_polars_pipeline(server: Proc, pipeline: str, models: Path) -> None:
    import pandas as pd
    import polars as pl

    rows = pq.read_table(models / "pipeline.rows.parquet")
    feeds = {c: rows[c].to_numpy(zero_copy_only=False).reshape(-1, 1) for c in ("age", "income", "tenure")}
    feeds = {k: v.astype(np.float32) for k, v in feeds.items()}
    feeds["city"] = np.array(rows["city"].to_pylist(), dtype=object).reshape(-1, 1)
    want = ort_predict(models / "pipeline.onnx", feeds)

    scorer = Scorer(server.flight, token="")
    df = rows.to_pandas()
    df.index = pd.RangeIndex(100, 100 + len(df))
    out = scorer.score(df, model=pipeline)
    assert isinstance(out, pd.DataFrame) and list(out.index) == list(df.index)
    np.testing.assert_array_equal(out["label"].to_numpy(), want["output_label"])
    np.testing.assert_allclose(out[["probability_0", "probability_1"]].to_numpy(), want["output_probability"], rtol=1e-6)
    assert out["city"].tolist() == df["city"].tolist()

    pout = scorer.score(pl.from_arrow(rows), model=pipeline, outputs=["output_label"], passthrough_columns=["city"])
    assert isinstance(pout, pl.DataFrame) and pout.columns == ["city", "label"]
    np.testing.assert_array_equal(pout["label"].to_numpy(), want["output_label"])


def test_reader_streams_and_returns_a_reader(server: Proc, rf: str, models: Path) -> None:
    rows = rf_rows(models)
    big = pa.concat_tables([rows] * 50)  # 10,000 rows

    def batches():
        yield from big.to_batches(max_chunksize=333)

    reader = pa.RecordBatchReader.from_batches(big.schema, batches())
    out = Scorer(server.flight, token="", batch_rows=1000).score(reader, model=rf, feature_columns=RF_FEATURES)
    assert isinstance(out, pa.RecordBatchReader)
    assert out.schema.names[-1] == "probability_2"
    got = out.read_all()
    assert got.num_rows == big.num_rows
    np.testing.assert_array_equal(got["label"].to_numpy(), np.tile(
        pq.read_table(models / "rf.expected.parquet")["output_label"].to_numpy(), 50))


def test_outputs_layout_and_empty_input(server: Proc, models: Path) -> None:
    name = unique("nozip")
    Registry(server.url, token="").register(name, models / "rf_nozipmap.onnx", create_model=True)
    scorer = Scorer(server.flight, token="")
    rows = rf_rows(models)
    out = scorer.score(rows, model=name, feature_columns=RF_FEATURES,
                       outputs=[{"name": "probabilities", "column": "p", "layout": "columns"}],
                       passthrough_columns=[])
    assert out.column_names == ["p_0", "p_1", "p_2"]
    empty = scorer.score(rows.slice(0, 0), model=name, feature_columns=RF_FEATURES)
    assert empty.num_rows == 0 and empty.column_names[-2:] == ["label", "probabilities"]
    d = scorer.describe(name, rows.schema, feature_columns=RF_FEATURES)
    assert d.reference == f"{name}:1" and d.engine == "trees"  # a forest: the native tree engine
    assert [f.name for f in d.prediction_fields] == ["label", "probabilities"]
    assert pa.types.is_fixed_size_list(d.output_schema.field("probabilities").type)
    assert scorer.warm(name)["version"] == 1


def test_typed_errors(server: Proc, rf: str, models: Path) -> None:
    scorer = Scorer(server.flight, token="")
    rows = rf_rows(models)
    with pytest.raises(lakescore.NotFound) as nf:
        scorer.score(rows, model=unique("nope"), feature_columns=RF_FEATURES)
    assert "does not exist" in nf.value.detail and nf.value.code == "NOT_FOUND"
    with pytest.raises(lakescore.InvalidArgument) as ia:
        scorer.score(rows.drop_columns(["f3"]), model=rf, feature_columns=RF_FEATURES)
    assert "f3" in ia.value.detail and "gRPC" not in ia.value.detail
    with pytest.raises(lakescore.InvalidArgument):
        scorer.describe(rf, feature_columns=["f0"])
    with pytest.raises(TypeError):
        scorer.score([1, 2, 3], model=rf)


def test_error_mid_stream_is_an_exception_not_an_abort(server: Proc, rf: str, models: Path, tmp_path: Path) -> None:
    """Batches 0-2 are fine, batch 3 has a null feature, refused (missing="error"): the worker
    fails the call mid-way. In a child interpreter, so that an abort would show as a signal,
    not kill pytest."""
    script = tmp_path / "midstream.py"
    script.write_text(textwrap.dedent(f"""
        import numpy as np, pyarrow as pa, pyarrow.parquet as pq, lakescore
        rows = pq.read_table({str(models / "rf.rows.parquet")!r})
        feats = [f"f{{i}}" for i in range(20)]
        good = rows.to_batches(max_chunksize=50)
        cols = [pa.array([None] * 50, pa.float32())] + [good[0].column(i) for i in range(1, 20)]
        bad = pa.RecordBatch.from_arrays(cols, schema=pa.schema([pa.field(f, pa.float32()) for f in feats]))
        schema = bad.schema
        def stream():
            for b in good[:3]:
                yield b.cast(schema)
            yield bad
            for _ in range(200):       # the client would go on writing
                yield good[0].cast(schema)
        scorer = lakescore.Scorer({server.flight!r}, token="", batch_rows=50)
        seen = 0
        for attempt in range(20):      # again and again: no crash, ever
            seen = 0
            try:
                for out in scorer.score_batches(stream(), {rf!r}, schema=schema, feature_columns=feats,
                                                missing="error"):
                    seen += out.num_rows
            except lakescore.InvalidArgument as e:
                assert "f0" in e.detail, e.detail
            else:
                raise SystemExit("no error")
        assert seen == 150, seen
        # the DoPut path too
        try:
            scorer.score_to("file://{tmp_path}/put/", pa.RecordBatchReader.from_batches(schema, stream()), {rf!r},
                            feature_columns=feats, missing="error")
        except lakescore.InvalidArgument as e:
            print("put:", e.detail[:60])
        print("alive")
    """))
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, f"rc={res.returncode}\n{res.stdout}\n{res.stderr}"
    assert res.stdout.strip().endswith("alive")


def test_score_to_and_score_dataset(server: Proc, rf: str, models: Path, tmp_path: Path) -> None:
    scorer = Scorer(server.flight, token="")
    rows = rf_rows(models)
    out = tmp_path / "put"
    # Plain Parquet and its manifest here (Delta tables, the default: test_delta.py).
    summary = scorer.score_to(f"file://{out}/", rows, model=rf, feature_columns=RF_FEATURES, output_format="parquet")
    assert summary["rows"] == 200 and summary["version"] == 1
    assert (out / "_lakescore.json").is_file()
    written = pa.concat_tables([pq.read_table(f.removeprefix("file://")) for f in summary["files"]])
    assert_rf_equal(written, rows, models)

    src = tmp_path / "in"
    src.mkdir()
    pq.write_table(rows, src / "part-0.parquet")
    ds = scorer.score_dataset(f"file://{src}/", f"file://{tmp_path}/ds/", model=rf, feature_columns=RF_FEATURES,
                              output_format="parquet")
    assert ds["rows"] == 200
    manifest = json.loads((tmp_path / "ds" / "_lakescore.json").read_text())
    assert manifest  # written last, by the worker
    scored = pa.concat_tables([pq.read_table(f.removeprefix("file://")) for f in ds["files"]])
    assert_rf_equal(scored, rows, models)

    # As a batch job (units, retries, error thresholds), named so that it can be resumed.
    job = scorer.score_dataset(f"file://{src}/", f"file://{tmp_path}/job/", model=rf, feature_columns=RF_FEATURES,
                               batch={"max_retries": 1, "error_threshold_rows": 0}, job_id="pyjob-1",
                               output_format="parquet")
    assert job["rows"] == 200 and (tmp_path / "job" / "_lakescore.json").is_file()


def test_unavailable_worker_is_skipped(server: Proc, rf: str, models: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"grpc://127.0.0.1:{s.getsockname()[1]}"
    scorer = Scorer([dead, server.flight], token="")
    scorer._sleep = lambda s: None
    rows = rf_rows(models)
    scored = pa.Table.from_batches(list(scorer.score_batches(rows.to_batches(), rf, start=0,
                                                             feature_columns=RF_FEATURES)))
    assert_rf_equal(scored, rows, models)
    assert scorer.failovers == 1
    assert_rf_equal(scorer.score(rows, model=rf, feature_columns=RF_FEATURES), rows, models)
    with pytest.raises(lakescore.Unavailable):
        Scorer(dead, token="", retries=1).describe(rf)


def test_worker_killed_mid_stream_moves_to_another(
    server: Proc, spare_worker: Proc, rf: str, models: Path
) -> None:
    """The stream starts on the spare worker, which is SIGKILLed after 3 batches; the rest
    (and the batch in flight) go to the other worker, and the rows equal onnxruntime's."""
    rows = pa.concat_tables([rf_rows(models)] * 5)
    batches = rows.to_batches(max_chunksize=100)

    def stream():
        for i, b in enumerate(batches):
            if i == 3:
                assert spare_worker.loaded(rf.split("@")[0] + ":1"), "the spare worker was scoring"
                spare_worker.kill()
            yield b

    scorer = Scorer([spare_worker.flight, server.flight], token="", batch_rows=100)
    out = pa.Table.from_batches(list(scorer.score_batches(stream(), rf, schema=rows.schema, start=0,
                                                          feature_columns=RF_FEATURES)))
    assert not spare_worker.alive()
    assert scorer.failovers >= 1
    assert_rf_equal(out, rows, models)


def test_dns_name_with_several_addresses(server: Proc, rf: str, models: Path, tmp_path: Path, monkeypatch: Any) -> None:
    """One name resolving to two addresses (the chart's headless worker Service): a worker
    at 127.0.0.1:P (the server's) and another at 127.0.0.2:P, the same port."""
    import socket

    port = int(server.flight.rsplit(":", 1)[1])
    other = start_worker(server.url, tmp_path / "w127002", listen=f"127.0.0.2:{port}")
    try:
        real = socket.getaddrinfo

        def fake(host: str, p: Any, *a: Any, **k: Any) -> Any:
            if host == "workers.lakescore.test":
                return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, int(p))) for ip in ("127.0.0.1", "127.0.0.2")]
            return real(host, p, *a, **k)

        monkeypatch.setattr(socket, "getaddrinfo", fake)
        url = f"grpc://workers.lakescore.test:{port}"
        assert lakescore.expand_workers(url) == [f"grpc://127.0.0.1:{port}", f"grpc://127.0.0.2:{port}"]
        scorer = Scorer(url, token="")
        rows = rf_rows(models)
        for start in (0, 1):  # each call (Spark: each partition) starts at its own index
            out = pa.Table.from_batches(list(scorer.score_batches(rows.to_batches(), rf, start=start,
                                                                  feature_columns=RF_FEATURES)))
            assert_rf_equal(out, rows, models)
        assert other.loaded(rf.split("@")[0] + ":1"), "the second address scored too"
    finally:
        other.kill()
    a, b = server.flight, "grpc://127.0.0.1:1"
    assert lakescore.expand_workers([a, b, a]) == [a, b]
    assert lakescore.expand_workers(f"{a}, {b}") == [a, b]


def test_the_pyarrow_example_runs_and_fails_cleanly(server: Proc, rf: str, models: Path) -> None:
    example = ROOT / "examples" / "score_with_pyarrow.py"
    ok = subprocess.run([sys.executable, str(example), str(models / "rf.rows.parquet"), "--model", rf,
                         "--flight", server.flight], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "DoExchange" in ok.stdout and "200 rows" in ok.stdout
    bad = subprocess.run([sys.executable, str(example), str(models / "rf.rows.parquet"), "--model",
                          unique("nope") + "@x", "--flight", server.flight], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1, (bad.returncode, bad.stderr)
    assert "does not exist" in bad.stderr


def rf_rows_with_nan(models: Path) -> Any:
    """rf's rows as a pandas DataFrame with NaN in three features on every seventh row, as
    pandas holds missing values (pyarrow makes them nulls)."""
    df = rf_rows(models).to_pandas()
    for i in range(0, len(df), 7):
        df.loc[i, ["f0", "f4", "f11"][i % 3]] = np.nan
    return df


def test_pandas_missing_values_reach_a_forest_as_nan(server: Proc, rf: str, models: Path) -> None:
    """A tree ensemble defines what missing means: by default the nulls pandas' NaN become
    reach it as NaN and score as onnxruntime scores NaN; missing="error" refuses them by
    column; fill values (per column) replace them."""
    import pandas as pd

    df = rf_rows_with_nan(models)
    assert pa.Table.from_pandas(df).column("f0").null_count > 0, "pandas NaN arrives as nulls"
    scorer = Scorer(server.flight, token="")
    scored = scorer.score(df, model=rf, feature_columns=RF_FEATURES)
    assert isinstance(scored, pd.DataFrame)
    x = df[RF_FEATURES].to_numpy(np.float32)
    want = ort_predict(models / "rf.onnx", {"X": x})
    np.testing.assert_array_equal(scored["label"].to_numpy(), want["output_label"])
    probs = np.column_stack([scored[f"probability_{k}"].to_numpy() for k in range(3)])
    np.testing.assert_allclose(probs, want["output_probability"], rtol=1e-6, atol=1e-7)

    with pytest.raises(lakescore.InvalidArgument) as e:
        scorer.score(df, model=rf, feature_columns=RF_FEATURES, missing="error")
    assert "'f0'" in e.value.detail and "null" in e.value.detail, e.value.detail

    fills = {"f0": 0.5, "f4": -1.0, "f11": float("nan")}
    filled = scorer.score(df, model=rf, feature_columns=RF_FEATURES, missing="error", fill_null=fills)
    want = ort_predict(models / "rf.onnx", {"X": df[RF_FEATURES].fillna({"f0": 0.5, "f4": -1.0}).to_numpy(np.float32)})
    np.testing.assert_array_equal(filled["label"].to_numpy(), want["output_label"])
    with pytest.raises(ValueError):
        scorer.score(df, model=rf, feature_columns=RF_FEATURES, missing="sometimes")


@pytest.mark.parametrize("name", ["lgbm_binary", "lgbm_multi", "xgb_binary", "xgb_reg", "hgb_binary"])
def test_gbdt_models_score_pandas_missing_values_like_onnxruntime(
    server: Proc, models: Path, manifest: dict[str, Any], name: str
) -> None:
    """LightGBM, XGBoost and HistGradientBoosting models (trained with missing values) on a
    pandas table whose NaN arrive as nulls: every output equals onnxruntime's on the same rows
    with NaN, by default; missing="error" refuses them."""
    entry = manifest["models"][name]
    feats = entry["feature_columns"]
    ref = unique(name)
    Registry(server.url, token="").register(ref, models / f"{name}.onnx", create_model=True, alias="champion")
    df = pq.read_table(models / f"{name}.rows.parquet").to_pandas()
    for i in range(0, len(df), 3):
        df.loc[i, feats[i % len(feats)]] = np.nan
    assert pa.Table.from_pandas(df).column(feats[0]).null_count > 0
    names = [o["name"] for o in entry["outputs_expected"]]
    outputs = [{"name": n, "column": f"out{i}", "layout": "list"} for i, n in enumerate(names)]
    scorer = Scorer(server.flight, token="")
    scored = scorer.score(df, model=f"{ref}@champion", feature_columns=feats, outputs=outputs)
    want = ort_predict(models / f"{name}.onnx", {"X": df[feats].to_numpy(np.float32)})
    for i, n in enumerate(names):
        got = np.array([v if isinstance(v, list) else [v] for v in scored[f"out{i}"]]).reshape(len(df), -1)
        expect = np.asarray(want[n]).reshape(len(df), -1)
        if expect.dtype.kind in "iu":
            np.testing.assert_array_equal(got, expect, err_msg=f"{name}: {n}")
        else:
            np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-6, err_msg=f"{name}: {n}")
    with pytest.raises(lakescore.InvalidArgument) as e:
        scorer.score(df, model=f"{ref}@champion", feature_columns=feats, missing="error")
    assert "null" in e.value.detail, e.value.detail

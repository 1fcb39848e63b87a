"""Delta Lake in and out, checked with clients nobody here wrote: delta-rs's Python package
(`deltalake`) and `polars.read_delta` read every table lakescore writes (DoPut, score-dataset,
batch jobs, SQL), with rows equal to onnxruntime's and the lineage in `commitInfo`; a
partitioned table written by `deltalake` (rows then deleted, files rewritten) is scored at
an old version and at the latest, reading only the live files; the same on S3 (moto's
server, which honours the conditional writes Delta commits and job locks rely on)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import lakescore
from lakescore import Registry, Scorer

from conftest import Proc, _missing, free_port, ort_predict, start_serve, unique

deltalake = pytest.importorskip("deltalake")
polars = pytest.importorskip("polars")

RF_FEATURES = [f"f{i}" for i in range(20)]


@pytest.fixture(scope="module")
def rf(server: Proc, models: Path) -> str:
    name = unique("rf")
    Registry(server.url, token="").register(name, models / "rf.onnx", create_model=True, alias="champion")
    return f"{name}@champion"


@pytest.fixture(scope="module")
def logreg(server: Proc, models: Path) -> str:
    name = unique("logreg")
    Registry(server.url, token="").register(name, models / "logreg.onnx", create_model=True, alias="champion")
    return f"{name}@champion"


def rf_rows(models: Path) -> pa.Table:
    return pq.read_table(models / "rf.rows.parquet")


def rf_expected(models: Path, rows: pa.Table) -> dict[str, Any]:
    x = np.column_stack([rows[c].to_numpy() for c in RF_FEATURES]).astype(np.float32)
    return ort_predict(models / "rf.onnx", {"X": x})


def assert_scored(scored: pa.Table, rows: pa.Table, models: Path) -> None:
    """Each scored row's label and probabilities are onnxruntime's for the same features
    (rows matched by their features: a table's row order is not its write order)."""
    want = rf_expected(models, rows)
    key = lambda t, i: tuple(float(t[c][i].as_py()) for c in RF_FEATURES[:4])  # noqa: E731
    expected = {key(rows, i): (int(want["output_label"][i]), want["output_probability"][i]) for i in range(rows.num_rows)}
    assert scored.num_rows == rows.num_rows
    for i in range(scored.num_rows):
        label, probs = expected[key(scored, i)]
        assert scored["label"][i].as_py() == label
        got = [scored[f"probability_{k}"][i].as_py() for k in range(3)]
        np.testing.assert_allclose(got, probs, rtol=1e-6, atol=1e-7)


def lakescore_commit(table: Any, version: int) -> dict[str, Any]:
    """The `lakescore` lineage of one commit, as delta-rs's history gives it."""
    for commit in table.history():
        if commit.get("version") == version:
            return commit
    raise AssertionError(f"no commit {version} in {table.history()}")


def test_do_put_creates_then_appends_a_delta_table_that_deltalake_and_polars_read(
    server: Proc, rf: str, models: Path, tmp_path: Path
) -> None:
    scorer = Scorer(server.flight, token="")
    rows = rf_rows(models)
    url = f"file://{tmp_path}/scored/"
    first = scorer.score_to(url, rows, model=rf, feature_columns=RF_FEATURES)
    second = scorer.score_to(url, rows.slice(0, 50), model=rf, feature_columns=RF_FEATURES)
    assert (first["table_version"], second["table_version"]) == (0, 1), (first, second)
    assert first["table"] == url and not (tmp_path / "scored" / "_lakescore.json").exists()

    table = deltalake.DeltaTable(str(tmp_path / "scored"))
    assert table.version() == 1
    read = table.to_pyarrow_table()
    assert read.num_rows == 250
    assert_scored(deltalake.DeltaTable(str(tmp_path / "scored"), version=0).to_pyarrow_table(), rows, models)
    # polars reads the same table, through its own reader.
    frame = polars.read_delta(str(tmp_path / "scored"))
    assert frame.height == 250
    assert sorted(frame["label"].to_list()) == sorted(read["label"].to_pylist())

    # The lineage is in commitInfo: the model's name, version and sha256, the write's id.
    sha256 = Registry(server.url, token="").get_version(rf.split("@")[0], 1).sha256
    info = lakescore_commit(table, 0)["lakescore"]
    assert info["model"] == rf.split("@")[0] and info["version"] == 1 and info["sha256"] == sha256, info
    assert info["job_id"] == first["job_id"] and info["lakescore_version"], info
    # Each file with its sha256, which the log's Add actions do not carry.
    assert {f["path"] for f in info["files"]} == {Path(f).name for f in first["files"]}
    # Statistics for readers' file skipping.
    adds = pa.table(table.get_add_actions(flatten=True)).to_pydict()
    assert sum(adds["num_records"]) == 250 and all(n > 0 for n in adds["num_records"]), adds
    assert min(adds["min.f0"]) == pc.min(rows["f0"]).as_py(), adds

    # Rows whose columns differ from the table's (the features as the other float type):
    # refused, naming the column, and the table unchanged.
    other = pa.float64() if rows.schema.field("f0").type == pa.float32() else pa.float32()
    retyped = rows.cast(pa.schema([pa.field(c, other) for c in rows.column_names]))
    with pytest.raises(lakescore.FailedPrecondition, match="column f0"):
        scorer.score_to(url, retyped, model=rf, feature_columns=RF_FEATURES)
    assert deltalake.DeltaTable(str(tmp_path / "scored")).version() == 1

    # Probabilities as one list column (written as Arrow's fixed-size list): an array column
    # of the table, read as lists by delta-rs and polars.
    listed = f"file://{tmp_path}/listed/"
    scorer.score_to(listed, rows, model=rf, feature_columns=RF_FEATURES, drop_input_columns=True,
                    outputs=[{"name": "output_label", "column": "label"},
                             {"name": "output_probability", "column": "p", "layout": "list"}])
    scorer.score_to(listed, rows, model=rf, feature_columns=RF_FEATURES, drop_input_columns=True,
                    outputs=[{"name": "output_label", "column": "label"},
                             {"name": "output_probability", "column": "p", "layout": "list"}])
    lists = deltalake.DeltaTable(str(tmp_path / "listed")).to_pyarrow_table()
    assert lists.num_rows == 2 * rows.num_rows
    want = rf_expected(models, rows)["output_probability"]
    got = sorted(map(tuple, lists["p"].to_pylist()))
    np.testing.assert_allclose(np.array(got), np.array(sorted(map(tuple, want.tolist() * 2))), rtol=1e-6, atol=1e-7)
    assert polars.read_delta(str(tmp_path / "listed"))["p"].list.len().to_list() == [3] * (2 * rows.num_rows)

    # Plain Parquet when asked for, with its manifest.
    plain = scorer.score_to(f"file://{tmp_path}/plain/", rows, model=rf, feature_columns=RF_FEATURES,
                            output_format="parquet")
    assert plain["manifest"].endswith("_lakescore.json") and "table" not in plain
    # ...and refused where a Delta table is.
    with pytest.raises(lakescore.FailedPrecondition, match="Delta table"):
        scorer.score_to(url, rows, model=rf, feature_columns=RF_FEATURES, output_format="parquet")


def test_a_partitioned_table_written_by_deltalake_is_scored_at_an_old_version_and_at_the_latest(
    server: Proc, rf: str, models: Path, tmp_path: Path
) -> None:
    rows = rf_rows(models)
    region = pa.array(["north" if i % 3 else "south" for i in range(rows.num_rows)])
    source = tmp_path / "tx"
    deltalake.write_deltalake(str(source), rows.append_column("region", region), partition_by=["region"])
    # Rows deleted: delta-rs rewrites the files that held them (the old ones stay on disk).
    deltalake.DeltaTable(str(source)).delete("f0 > 0")
    live = deltalake.DeltaTable(str(source)).to_pyarrow_table()
    assert 0 < live.num_rows < rows.num_rows
    on_disk = list(source.rglob("*.parquet"))
    assert sum(pq.read_metadata(p).num_rows for p in on_disk) > rows.num_rows  # what a prefix reader would see

    scorer = Scorer(server.flight, token="")
    url = f"file://{source}/"
    old = scorer.score_dataset(url, f"file://{tmp_path}/old/", model=rf, feature_columns=RF_FEATURES,
                               input_version=0)
    latest = scorer.score_dataset(url, f"file://{tmp_path}/latest/", model=rf, feature_columns=RF_FEATURES)
    assert old["rows"] == rows.num_rows and latest["rows"] == live.num_rows, (old, latest)

    scored_old = deltalake.DeltaTable(str(tmp_path / "old")).to_pyarrow_table()
    assert_scored(scored_old.drop_columns(["region"]), rows, models)
    # The partition column is a column of the scored rows, with each row's own value.
    regions = {tuple(r[c] for c in RF_FEATURES[:4]): r["region"] for r in scored_old.to_pylist()}
    for i, r in enumerate(rows.to_pylist()):
        assert regions[tuple(r[c] for c in RF_FEATURES[:4])] == region[i].as_py()
    scored_latest = deltalake.DeltaTable(str(tmp_path / "latest")).to_pyarrow_table()
    assert pc.all(pc.less_equal(scored_latest["f0"], 0)).as_py()
    # The version read is in the output's lineage.
    info = lakescore_commit(deltalake.DeltaTable(str(tmp_path / "old")), 0)["lakescore"]
    assert info["input"] == url and info["input_version"] == 0, info
    info = lakescore_commit(deltalake.DeltaTable(str(tmp_path / "latest")), 0)["lakescore"]
    assert info["input_version"] == 1, info

    # One partition only; time travel by timestamp reads the same as the version it falls on.
    south = scorer.score_dataset(url, f"file://{tmp_path}/south/", model=rf, feature_columns=RF_FEATURES,
                                 input_version=0, input_partitions={"region": "south"})
    assert south["rows"] == region.to_pylist().count("south")
    with pytest.raises(lakescore.LakescoreError, match="no version 7"):
        scorer.score_dataset(url, f"file://{tmp_path}/none/", model=rf, feature_columns=RF_FEATURES, input_version=7)
    with pytest.raises(lakescore.LakescoreError, match="not a partition column"):
        scorer.score_dataset(url, f"file://{tmp_path}/none/", model=rf, feature_columns=RF_FEATURES,
                             input_partitions={"f0": "1"})


def test_a_batch_job_commits_each_unit_once_and_a_rerun_adds_nothing(
    server: Proc, rf: str, models: Path, tmp_path: Path
) -> None:
    rows = rf_rows(models)
    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        pq.write_table(rows.slice(i * 50, 50), src / f"part-{i}.parquet")
    scorer = Scorer(server.flight, token="")
    out = tmp_path / "job"
    job_id = unique("deltajob")
    settings = {"max_retries": 1, "error_threshold_rows": 0}
    first = scorer.score_dataset(f"file://{src}/", f"file://{out}/", model=rf, feature_columns=RF_FEATURES,
                                 batch=settings, job_id=job_id)
    assert first["rows"] == 200 and first["units"] == 4 and first["table"] == f"file://{out}/", first
    table = deltalake.DeltaTable(str(out))
    # The run's lock epoch (which creates the table), its finished units in groups (one
    # every job_commit_interval, 10 s: here one), then the job's end.
    ops = [c["operation"] for c in reversed(table.history())]
    assert table.version() == 2 and len(ops) == 3, table.history()
    assert lakescore_commit(table, 0)["lakescore"]["lock"]["epoch"] == 1
    assert_scored(table.to_pyarrow_table(), rows, models)
    for unit in range(4):
        assert table.transaction_version(f"lakescore-job:{job_id}:u{unit}") == 1
    assert table.transaction_version(f"lakescore-job:{job_id}") == 1
    assert polars.read_delta(str(out)).height == 200

    # The same job again: answered from the table, nothing added.
    again = scorer.score_dataset(f"file://{src}/", f"file://{out}/", model=rf, feature_columns=RF_FEATURES,
                                 batch=settings, job_id=job_id)
    assert again["rows"] == 200 and again["units"] == 4, again
    assert deltalake.DeltaTable(str(out)).version() == 2

    # A second job appends to the same table.
    other = scorer.score_dataset(f"file://{src}/", f"file://{out}/", model=rf, feature_columns=RF_FEATURES,
                                 batch=settings, job_id=unique("deltajob"))
    assert other["rows"] == 200
    assert deltalake.DeltaTable(str(out)).to_pyarrow_table().num_rows == 400


def test_two_workers_appending_to_one_table_at_once_both_land(
    server: Proc, worker2: Proc, rf: str, models: Path, tmp_path: Path
) -> None:
    rows = rf_rows(models)
    url = f"file://{tmp_path}/shared/"
    results: list[Any] = []

    def write(flight: str, n: int) -> None:
        try:
            s = Scorer(flight, token="")
            for _ in range(n):
                results.append(s.score_to(url, rows, model=rf, feature_columns=RF_FEATURES))
        except Exception as e:  # noqa: BLE001
            results.append(e)

    threads = [threading.Thread(target=write, args=(w.flight, 4)) for w in (server, worker2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, errors
    table = deltalake.DeltaTable(str(tmp_path / "shared"))
    # Eight commits (optimistic concurrency: the losers of a race retried on the new version).
    assert table.version() == 7
    assert sorted(r["table_version"] for r in results) == list(range(8))
    assert table.to_pyarrow_table().num_rows == 8 * rows.num_rows


def test_sql_reads_and_writes_delta_tables(server: Proc, logreg: str, models: Path, tmp_path: Path) -> None:
    adbc = pytest.importorskip("adbc_driver_flightsql.dbapi")
    rows = pq.read_table(models / "logreg.rows.parquet")
    lake = tmp_path / "lake"
    deltalake.write_deltalake(str(lake / "tx"), rows)
    deltalake.write_deltalake(str(lake / "tx"), rows.slice(0, 10), mode="append")
    cols = ", ".join(f"f{i}" for i in range(4))
    with adbc.connect(server.flight, autocommit=True) as conn, conn.cursor() as cur:
        # A table by URL, at its latest version and at an older one.
        cur.execute(f"SELECT count(*) FROM 'file://{lake}/tx/'")
        assert cur.fetchone()[0] == rows.num_rows + 10
        cur.execute(f"SELECT count(*) FROM 'file://{lake}/tx/?version=0'")
        assert cur.fetchone()[0] == rows.num_rows
        # COPY writes a Delta table by default...
        cur.execute(
            f"COPY (SELECT f0, f1, predict('{logreg}', {cols})['label'] AS label FROM 'file://{lake}/tx/?version=0') "
            f"TO 'file://{lake}/scored/'"
        )
        copied = cur.fetch_arrow_table()
        assert copied["count"][0].as_py() == rows.num_rows and copied["table_version"][0].as_py() == 0
        # ...that an external table names, and INSERT appends to in one commit.
        cur.execute(f"CREATE EXTERNAL TABLE scored STORED AS DELTATABLE LOCATION 'file://{lake}/scored/'")
        cur.execute(f"INSERT INTO scored SELECT f0, f1, predict('{logreg}', {cols})['label'] FROM "
                    f"'file://{lake}/tx/?version=0' WHERE f0 > 0")
        inserted = cur.fetch_arrow_table()
        assert inserted["table_version"][0].as_py() == 1
        cur.execute("SELECT count(*) FROM scored")
        positive = pc.sum(pc.greater(rows["f0"], 0)).as_py()
        assert cur.fetchone()[0] == rows.num_rows + positive
        cur.execute(f"SELECT version, operation, model, model_version FROM delta_history('file://{lake}/scored/') "
                    "ORDER BY version")
        history = cur.fetchall()
        assert [h[0] for h in history] == [0, 1] and all(h[2] == logreg.split("@")[0] for h in history), history

    table = deltalake.DeltaTable(str(lake / "scored"))
    assert table.version() == 1
    scored = table.to_pyarrow_table()
    assert scored.num_rows == rows.num_rows + positive
    # The COPY's labels are onnxruntime's.
    x = np.column_stack([rows[c].to_numpy() for c in ("f0", "f1", "f2", "f3")])
    want = ort_predict(models / "logreg.onnx", {"X": x})["output_label"]
    first = deltalake.DeltaTable(str(lake / "scored"), version=0).to_pyarrow_table()
    by_key = {(r["f0"], r["f1"]): r["label"] for r in first.to_pylist()}
    for i, r in enumerate(rows.select(["f0", "f1"]).to_pylist()):
        assert by_key[(r["f0"], r["f1"])] == int(want[i])
    shutil.rmtree(lake, ignore_errors=True)


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, str]]:
    """moto's S3 server (5.1.11 and later refuse `If-None-Match: *` and a stale `If-Match`
    with 412, as S3 does) with a bucket `lake`; yields the environment that points object
    stores at it."""
    moto_server = Path(sys.executable).parent / "moto_server"
    if not moto_server.exists():
        _missing("moto_server is not installed (tests/python/requirements.txt)")
    import boto3
    import requests

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([str(moto_server), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while True:
            try:
                requests.get(endpoint, timeout=2)
                break
            except requests.RequestException:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)
        env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1",
               "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test",
                     aws_secret_access_key="test").create_bucket(Bucket="lake")
        yield env
    finally:
        proc.terminate()
        proc.wait(10)


def test_delta_tables_on_s3_are_read_written_and_appended_to_at_once(
    s3: dict[str, str], models: Path, tmp_path: Path
) -> None:
    # delta-rs's own S3 client: commits through If-None-Match (no lock service).
    opts = {**s3, "conditional_put": "etag"}
    rows = rf_rows(models)
    region = pa.array(["north" if i % 3 else "south" for i in range(rows.num_rows)])
    deltalake.write_deltalake("s3://lake/tx", rows.append_column("region", region), partition_by=["region"],
                              storage_options=opts)
    deltalake.DeltaTable("s3://lake/tx", storage_options=opts).delete("f0 > 0")

    server = start_serve(tmp_path / "serve", env=s3)
    try:
        name = unique("rf")
        Registry(server.url, token="").register(name, models / "rf.onnx", create_model=True, alias="champion")
        scorer = Scorer(server.flight, token="")
        rf = f"{name}@champion"
        # The deltalake-written table at its first version, scored into a new S3 table.
        first = scorer.score_dataset("s3://lake/tx/", "s3://lake/scored/", model=rf, feature_columns=RF_FEATURES,
                                     input_version=0)
        assert (first["rows"], first["table_version"]) == (rows.num_rows, 0), first

        # Two writers appending at once: every commit lands, none lost.
        more = rows.append_column("region", region).slice(0, 50)
        results: list[Any] = []

        def write(n: int) -> None:
            try:
                s = Scorer(server.flight, token="")
                for _ in range(n):
                    results.append(s.score_to("s3://lake/scored/", more, model=rf,
                                              feature_columns=RF_FEATURES))
            except Exception as e:  # noqa: BLE001
                results.append(e)

        threads = [threading.Thread(target=write, args=(3,)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not [r for r in results if isinstance(r, Exception)], results
        assert sorted(r["table_version"] for r in results) == list(range(1, 7))

        # A batch job from the table's latest version, each unit committed once.
        job_id = unique("s3job")
        settings = {"max_retries": 1, "error_threshold_rows": 0, "mini_batch_size": 1}
        job = scorer.score_dataset("s3://lake/tx/", "s3://lake/job/", model=rf, feature_columns=RF_FEATURES,
                                   batch=settings, job_id=job_id)
        again = scorer.score_dataset("s3://lake/tx/", "s3://lake/job/", model=rf, feature_columns=RF_FEATURES,
                                     batch=settings, job_id=job_id)
        assert job["rows"] == again["rows"] > 0, (job, again)
    finally:
        server.stop()

    table = deltalake.DeltaTable("s3://lake/scored", storage_options=opts)
    assert table.version() == 6
    assert table.to_pyarrow_table().num_rows == rows.num_rows + 6 * 50
    assert_scored(deltalake.DeltaTable("s3://lake/scored", version=0, storage_options=opts)
                  .to_pyarrow_table().drop_columns(["region"]), rows, models)
    info = lakescore_commit(table, 0)["lakescore"]
    assert info["input"] == "s3://lake/tx/" and info["input_version"] == 0, info
    live = deltalake.DeltaTable("s3://lake/tx", storage_options=opts).to_pyarrow_table()
    job_table = polars.read_delta("s3://lake/job", storage_options=opts)
    assert job_table.height == live.num_rows
    assert deltalake.DeltaTable("s3://lake/job", storage_options=opts).transaction_version(
        f"lakescore-job:{job_id}") == 1

"""SQL `predict()` through a client nobody here wrote: the ADBC Flight SQL driver (from
PyPI) through its DBAPI, with bearer tokens from a real issuer, against `lakescore serve`
requiring them. Predictions are checked against onnxruntime on the same rows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lakescore import Registry

from conftest import Issuer, Proc, ort_predict, unique

adbc = pytest.importorskip("adbc_driver_flightsql.dbapi")
from adbc_driver_flightsql import DatabaseOptions  # noqa: E402
from adbc_driver_manager import ProgrammingError, DatabaseError  # noqa: E402

FEATURES = ["f0", "f1", "f2", "f3"]


def connect(server: Proc, token: str):
    return adbc.connect(
        server.flight,
        db_kwargs={DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {token}"},
        autocommit=True,
    )


@pytest.fixture(scope="module")
def lake(auth_server: Proc, models: Path) -> Path:
    """The logistic regression's rows under the worker's storage root (with auth on and no
    storage_roots configured: the data directory's datasets/)."""
    d = auth_server.data_dir / "datasets" / unique("sql")
    (d / "tx").mkdir(parents=True)
    shutil.copy(models / "logreg.rows.parquet", d / "tx" / "part-0.parquet")
    return d


@pytest.fixture(scope="module")
def logreg(auth_server: Proc, issuer: Issuer, models: Path) -> str:
    name = unique("logreg")
    Registry(auth_server.url, token=issuer.token_fn("writer-app")).register(
        name, models / "logreg.onnx", create_model=True, alias="champion"
    )
    return f"{name}@champion"


def test_adbc_dbapi_predict_prepare_objects_copy_and_insert(
    auth_server: Proc, issuer: Issuer, lake: Path, logreg: str, models: Path
) -> None:
    rows = pq.read_table(models / "logreg.rows.parquet")
    expected = ort_predict(models / "logreg.onnx", {"X": np.column_stack([rows[c].to_numpy() for c in FEATURES])})
    want = {
        (float(a), float(b)): int(label)
        for a, b, label in zip(rows["f0"].to_numpy(), rows["f1"].to_numpy(), expected["output_label"])
    }
    cols = ", ".join(FEATURES)
    with connect(auth_server, issuer.token("writer-app")) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE EXTERNAL TABLE tx STORED AS PARQUET LOCATION 'file://{lake}/tx/'")
        cur.execute(f"SELECT f0, f1, predict('{logreg}', {cols})['label'] AS label FROM tx")
        scored = cur.fetch_arrow_table()
        assert scored.num_rows == rows.num_rows
        for a, b, label in zip(scored["f0"].to_pylist(), scored["f1"].to_pylist(), scored["label"].to_pylist()):
            assert label == want[(a, b)]

        # A prepared statement with a parameter.
        cur.execute("SELECT count(*) AS n FROM tx WHERE f0 > $1", parameters=(0.25,))
        n = cur.fetch_arrow_table()["n"][0].as_py()
        assert n == int((rows["f0"].to_numpy() > 0.25).sum())

        # The session's table in adbc_get_objects.
        objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
        tables = [
            t["table_name"]
            for catalog in objects
            for schema in catalog["catalog_db_schemas"] or []
            for t in schema["db_schema_tables"] or []
        ]
        assert "tx" in tables, tables
        cur.execute(f"SELECT version, sha256 FROM lakescore.versions WHERE model = '{logreg.split('@')[0]}'")
        versions = cur.fetch_arrow_table().to_pylist()
        assert [v["version"] for v in versions] == [1]

        # COPY through the commit protocol: Parquet parts, then the manifest last.
        cur.execute(
            f"COPY (SELECT f0, f1, predict('{logreg}', {cols})['label'] AS label FROM tx) "
            f"TO 'file://{lake}/scored/' STORED AS PARQUET"
        )
        assert cur.fetch_arrow_table()["count"][0].as_py() == rows.num_rows
        first = json.loads((lake / "scored" / "_lakescore.json").read_text())
        assert first["model"]["version"] == 1 and first["rows"] == rows.num_rows

        # INSERT INTO an external table over the same prefix appends a second commit.
        cur.execute(
            "CREATE EXTERNAL TABLE scored (f0 FLOAT, f1 FLOAT, label BIGINT) "
            f"STORED AS PARQUET LOCATION 'file://{lake}/scored/'"
        )
        cur.execute(f"INSERT INTO scored SELECT f0, f1, predict('{logreg}', {cols})['label'] FROM tx WHERE f0 > 0")
        positive = sum(1 for v in rows["f0"].to_pylist() if v > 0)
        assert cur.fetch_arrow_table()["count"][0].as_py() == positive
    manifest = json.loads((lake / "scored" / "_lakescore.json").read_text())
    assert manifest["rows"] == rows.num_rows + positive
    assert [f["path"] for f in manifest["files"]][: len(first["files"])] == [f["path"] for f in first["files"]]
    parts = sorted((lake / "scored").glob("*.parquet"))
    assert sorted(p.name for p in parts) == sorted(f["path"] for f in manifest["files"])
    table = pa.concat_tables([pq.read_table(p) for p in parts])
    assert table.num_rows == rows.num_rows + positive
    for a, b, label in zip(table["f0"].to_pylist(), table["f1"].to_pylist(), table["label"].to_pylist()):
        assert label == want[(a, b)]


def test_a_reader_without_a_grant_is_refused(auth_server: Proc, issuer: Issuer, lake: Path, logreg: str) -> None:
    with connect(auth_server, issuer.token("reader-app")) as conn, conn.cursor() as cur:
        with pytest.raises((ProgrammingError, DatabaseError)) as e:
            cur.execute(f"SELECT predict('{logreg}', f0, f1, f2, f3) FROM 'file://{lake}/tx/'")
            cur.fetch_arrow_table()
        assert "PERMISSION_DENIED" in str(e.value) or "Unauthorized" in str(e.value) or "permission" in str(e.value).lower()
        # The registry's tables show only what the caller may read.
        cur.execute("SELECT name FROM lakescore.models")
        assert logreg.split("@")[0] not in cur.fetch_arrow_table()["name"].to_pylist()
        # Outside the storage roots.
        with pytest.raises((ProgrammingError, DatabaseError)) as e:
            cur.execute("SELECT * FROM 'file:///etc/passwd'")
            cur.fetch_arrow_table()
        assert "outside the storage locations" in str(e.value)
    with pytest.raises((ProgrammingError, DatabaseError)) as e:
        with connect(auth_server, "not-a-token") as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
            cur.fetch_arrow_table()
    assert "UNAUTHENTICATED" in str(e.value) or "Unauthenticated" in str(e.value)

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


def test_every_announced_schema_is_the_streamed_schema(
    auth_server: Proc, issuer: Issuer, lake: Path, logreg: str, models: Path
) -> None:
    """Whatever the query's shape, the schema GetFlightInfo announces is the schema of the
    batches DoGet sends: ADBC refuses a stream that differs ("inconsistent schema"), and
    pyarrow.flight's reader is compared with the announced schema too. The corpus covers
    hive partition columns (a dictionary in DataFusion's plan), dictionary-encoded string
    columns, fields of `predict`'s struct, the whole struct, and empty results."""
    import pyarrow.flight as flight

    rows = pq.read_table(models / "logreg.rows.parquet")
    table_dir = lake / "hive"
    segments = pa.array([["retail", "sme", "corporate"][i % 3] for i in range(rows.num_rows)]).dictionary_encode()
    with_segment = rows.append_column("segment", segments)
    for b, (start, length) in enumerate([(0, 70), (70, 70), (140, rows.num_rows - 140)], start=1):
        part = table_dir / f"batch={b}"
        part.mkdir(parents=True)
        pq.write_table(with_segment.slice(start, length), part / "part-0.parquet")
    cols = ", ".join(FEATURES)
    p = f"predict('{logreg}', {cols})"
    queries = [
        "SELECT batch, count(*) AS n FROM t GROUP BY batch",
        "SELECT * FROM t",
        "SELECT batch FROM t WHERE batch = '2'",
        "SELECT DISTINCT batch FROM t ORDER BY batch",
        "SELECT segment, count(*) AS n FROM t GROUP BY segment",
        "SELECT segment, batch, max(f0) AS m FROM t GROUP BY segment, batch ORDER BY segment, batch",
        f"SELECT batch, {p}['label'] AS label, {p}['probability_1'] AS p1 FROM t",
        f"SELECT {p} AS scored FROM t",
        f"SELECT batch, segment, {p}['label'] AS label FROM t WHERE f0 > 1e30",
        "SELECT * FROM t WHERE batch = 'no-such-batch'",
        "SELECT batch, segment FROM t UNION ALL SELECT batch, segment FROM t WHERE batch = '1'",
        f"SELECT label, count(*) AS n FROM (SELECT {p}['label'] AS label FROM t) GROUP BY label",
    ]
    token = issuer.token("writer-app")
    with connect(auth_server, token) as conn, conn.cursor() as cur:
        cur.execute(
            f"CREATE EXTERNAL TABLE t STORED AS PARQUET PARTITIONED BY (batch) LOCATION 'file://{table_dir}/'"
        )
        counts: dict[str, int] = {}
        for q in queries:
            cur.execute(q)
            counts[q] = cur.fetch_arrow_table().num_rows
    assert counts[queries[0]] == 3
    assert counts[queries[1]] == rows.num_rows
    assert counts[queries[2]] == 70
    assert counts[queries[4]] == 3
    assert counts[queries[8]] == 0 and counts[queries[9]] == 0
    assert counts[queries[10]] == rows.num_rows + 70

    # The same through pyarrow.flight: the announced schema, then the stream's.
    client = flight.FlightClient(auth_server.flight)
    options = flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {token}".encode())])
    for q in queries:
        cmd = _statement_query(f"SELECT * FROM ({q}) AS q")
        info = client.get_flight_info(flight.FlightDescriptor.for_command(cmd), options)
        for endpoint in info.endpoints:
            got = client.do_get(endpoint.ticket, options).read_all()
            assert got.schema.remove_metadata() == info.schema.remove_metadata(), q


def _statement_query(sql: str) -> bytes:
    """A Flight SQL CommandStatementQuery packed in a protobuf Any, written by hand (two
    length-delimited fields) so that the test needs no generated protobuf code."""

    def field(number: int, payload: bytes) -> bytes:
        out = bytes([number << 3 | 2])
        n = len(payload)
        while True:
            byte, n = n & 0x7F, n >> 7
            out += bytes([byte | (0x80 if n else 0)])
            if not n:
                return out + payload

    query = field(1, sql.encode())
    return field(1, b"type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery") + field(2, query)


def test_predict_passes_nulls_to_a_forest_as_nan_unless_the_session_is_strict(
    auth_server: Proc, issuer: Issuer, lake: Path, models: Path
) -> None:
    """SQL `predict` handles nulls as every other interface does: by default a tree ensemble
    gets NaN (onnxruntime's answer on NaN), `SET lakescore.missing = 'error'` makes the
    session strict, and a fill value is SQL's own `coalesce`."""
    name = unique("sqlrf")
    Registry(auth_server.url, token=issuer.token_fn("writer-app")).register(
        name, models / "rf.onnx", create_model=True, alias="champion"
    )
    feats = [f"f{i}" for i in range(20)]
    rows = pq.read_table(models / "rf.rows.parquet")
    f2 = rows["f2"].to_pylist()
    for i in range(0, len(f2), 4):
        f2[i] = None
    rows = rows.set_column(rows.schema.get_field_index("f2"), "f2", pa.array(f2, pa.float32()))
    rows = rows.append_column("id", pa.array(range(rows.num_rows), pa.int64()))
    (lake / "nulls").mkdir()
    pq.write_table(rows, lake / "nulls" / "part-0.parquet")
    x = np.column_stack([np.array(rows[c].to_pylist(), dtype=np.float64) for c in feats]).astype(np.float32)
    want = ort_predict(models / "rf.onnx", {"X": x})["output_label"]
    x[np.isnan(x)] = 0.5
    want_filled = ort_predict(models / "rf.onnx", {"X": x})["output_label"]
    args = ", ".join(feats)
    query = f"SELECT id, predict('{name}@champion', {args})['label'] AS label FROM 'file://{lake}/nulls/' ORDER BY id"
    with connect(auth_server, issuer.token("writer-app")) as conn, conn.cursor() as cur:
        cur.execute(query)
        assert cur.fetch_arrow_table()["label"].to_pylist() == want.tolist()
        cur.execute("SET lakescore.missing = 'error'")
        with pytest.raises((ProgrammingError, DatabaseError)) as e:
            cur.execute(query)
            cur.fetch_arrow_table()
        assert "'f2'" in str(e.value) and "null" in str(e.value), str(e.value)
        filled = query.replace(", f2,", ", coalesce(f2, 0.5),")
        cur.execute(filled)
        assert cur.fetch_arrow_table()["label"].to_pylist() == want_filled.tolist()
        with pytest.raises((ProgrammingError, DatabaseError)) as e:
            cur.execute("SET lakescore.missing = 'sometimes'")
        assert "auto" in str(e.value)
        cur.execute("SET lakescore.missing = 'auto'")
        cur.execute(query)
        assert cur.fetch_arrow_table()["label"].to_pylist() == want.tolist()

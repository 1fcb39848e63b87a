"""MLflow's own client (the `mlflow` package from PyPI) against `lakescore serve`, with only
the tracking URI (and token) changed: the registry calls, loading a registered model by
alias with the `onnx` and `python_function` flavors, `spark_udf`, refusals in MLflow's
error codes; and lakescore's own SQL function `lakescore_predict` in Spark SQL. Every
prediction is compared with onnxruntime on the same rows."""

from __future__ import annotations

import os

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lakescore import Registry

from conftest import STRICT, Issuer, Proc, ort_predict, tagged_model, unique

# Nothing here may reach the internet: MLflow's usage telemetry is off before it loads.
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["DO_NOT_TRACK"] = "true"
try:
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException, RestException
except ImportError:
    # A failure, not a skip, under LAKESCORE_TEST_STRICT (CI).
    if STRICT:
        pytest.fail("mlflow is not installed (tests/python/requirements.txt)", pytrace=False)
    pytest.skip("mlflow is not installed (tests/python/requirements.txt)", allow_module_level=True)

MODEL = "logreg_nozipmap"  # one input X [N, 4]; label [N] int64, probabilities [N, 2] float


@pytest.fixture()
def mlflow_at(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Points MLflow's client at a lakescore registry (and a token), as a user would."""

    def point(url: str, token: str | None = None) -> MlflowClient:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        monkeypatch.setenv("MLFLOW_REGISTRY_URI", url)
        # No retry storms on the refusals the tests provoke.
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        if token is None:
            monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
        else:
            monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", token)
        mlflow.set_tracking_uri(url)
        mlflow.set_registry_uri(url)
        return MlflowClient(tracking_uri=url, registry_uri=url)

    yield point
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


def features(models: Path) -> np.ndarray:
    t = pq.read_table(models / f"{MODEL}.rows.parquet")
    cols = [c for c in t.column_names if c.startswith("f")]
    return np.column_stack([t[c].to_numpy() for c in cols]).astype(np.float32)


def register_two_versions(url: str, models: Path, name: str, token: str = "") -> None:
    reg = Registry(url, token=token)
    reg.register(name, tagged_model(models / f"{MODEL}.onnx"), create_model=True)
    reg.register(name, tagged_model(models / f"{MODEL}.onnx"))


def error_code(e: MlflowException) -> str:
    return str(e.error_code)


def test_registry_calls(server: Proc, models: Path, mlflow_at: Any) -> None:
    client = mlflow_at(server.url)
    name = unique("mlf")
    register_two_versions(server.url, models, name)

    # Models: create with tags, get, update, tags, search by name and by tag.
    other = unique("mlfnew")
    created = client.create_registered_model(other, tags={"team": "risk"}, description="made by MLflow")
    assert created.name == other and created.tags == {"team": "risk"}
    client.update_registered_model(other, description="changed")
    client.set_registered_model_tag(other, "stage", "dev")
    client.delete_registered_model_tag(other, "team")
    got = client.get_registered_model(other)
    assert got.description == "changed" and got.tags == {"stage": "dev"}
    assert got.creation_timestamp > 1_700_000_000_000
    with pytest.raises(MlflowException) as dup:
        client.create_registered_model(other)
    assert error_code(dup.value) == "RESOURCE_ALREADY_EXISTS"

    found = client.search_registered_models(filter_string=f"name LIKE '{name}%'")
    assert [m.name for m in found] == [name]
    tagged = client.search_registered_models(filter_string=f"name = '{other}' AND tags.stage = 'dev'")
    assert [m.name for m in tagged] == [other]
    assert client.search_registered_models(filter_string=f"name = '{other}' AND tags.stage = 'prod'") == []

    # Aliases move, and the version by alias follows them.
    client.set_registered_model_alias(name, "champion", 1)
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    client.set_registered_model_alias(name, "champion", 2)
    v = client.get_model_version_by_alias(name, "champion")
    assert (v.name, v.version, v.aliases) == (name, "2", ["champion"])
    assert client.get_registered_model(name).aliases == {"champion": "2"}
    client.delete_registered_model_alias(name, "champion")
    with pytest.raises(MlflowException) as gone:
        client.get_model_version_by_alias(name, "champion")
    assert error_code(gone.value) == "RESOURCE_DOES_NOT_EXIST"

    # Versions: tags, description, search, the download URI.
    client.set_model_version_tag(name, "1", "validated", "yes")
    client.set_model_version_tag(name, "2", "validated", "no")
    client.delete_model_version_tag(name, "2", "validated")
    client.update_model_version(name, "1", description="first")
    v1 = client.get_model_version(name, "1")
    assert (v1.tags, v1.description, v1.status, v1.current_stage) == ({"validated": "yes"}, "first", "READY", "None")
    assert client.get_model_version(name, "2").tags == {}
    versions = client.search_model_versions(f"name = '{name}'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    assert [v.version for v in client.search_model_versions(f"name = '{name}' AND tags.validated = 'yes'")] == ["1"]
    uri = client.get_model_version_download_uri(name, "1")
    assert uri == f"mlflow-artifacts:/lakescore-models/{name}/1"
    latest = client.get_latest_versions(name)
    assert [v.version for v in latest] == ["2"]

    # Deleting a version archives it (MLflow's "Archived" stage); the model stays.
    client.delete_model_version(name, "1")
    assert client.get_model_version(name, "1").current_stage == "Archived"

    # What lakescore refuses, in MLflow's codes with a message saying why.
    with pytest.raises(MlflowException) as rename:
        client.rename_registered_model(name, name + "x")
    assert error_code(rename.value) == "INVALID_PARAMETER_VALUE" and "rename" in str(rename.value)
    with pytest.raises(MlflowException) as missing:
        client.get_registered_model(unique("nosuch"))
    assert error_code(missing.value) == "RESOURCE_DOES_NOT_EXIST"
    with pytest.raises(MlflowException) as bad_filter:
        client.search_registered_models(filter_string="owner = 'x'")
    assert error_code(bad_filter.value) == "INVALID_PARAMETER_VALUE"

    # The tracking API is not lakescore's: MLflow's client says which endpoint and why.
    with pytest.raises(MlflowException) as tracking:
        client.search_experiments()
    assert error_code(tracking.value) == "ENDPOINT_NOT_FOUND"
    assert "/api/2.0/mlflow/experiments/search" in str(tracking.value) and "model registry" in str(tracking.value)

    client.delete_registered_model(other)
    with pytest.raises(MlflowException):
        client.get_registered_model(other)


def test_search_pages_through_every_model(server: Proc, mlflow_at: Any) -> None:
    client = mlflow_at(server.url)
    prefix = unique("mlfpage")
    names = [f"{prefix}-{i:02d}" for i in range(7)]
    for n in names:
        client.create_registered_model(n)
    first = client.search_registered_models(filter_string=f"name LIKE '{prefix}%'", max_results=3)
    assert [m.name for m in first] == names[:3] and first.token
    seen = list(first)
    token = first.token
    while token:
        page = client.search_registered_models(filter_string=f"name LIKE '{prefix}%'", max_results=3, page_token=token)
        seen.extend(page)
        token = page.token
    assert [m.name for m in seen] == names
    # The fluent API follows the pages itself.
    assert [m.name for m in mlflow.search_registered_models(filter_string=f"name LIKE '{prefix}%'")] == names


def test_load_by_alias_and_predict_equals_onnxruntime(server: Proc, models: Path, mlflow_at: Any, tmp_path: Path) -> None:
    import onnxruntime as ort
    import pandas as pd

    client = mlflow_at(server.url)
    name = unique("mlfload")
    register_two_versions(server.url, models, name)
    client.set_registered_model_alias(name, "champion", 2)
    x = features(models)
    expected = ort_predict(models / f"{MODEL}.onnx", {"X": x})

    # The onnx flavor: the ModelProto itself, run by onnxruntime.
    proto = mlflow.onnx.load_model(f"models:/{name}@champion")
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    label, probabilities = sess.run(["label", "probabilities"], {"X": x})
    np.testing.assert_array_equal(label, expected["label"])
    np.testing.assert_allclose(probabilities, expected["probabilities"], rtol=1e-6)

    # The python_function flavor on a pandas DataFrame of float64 features, as pandas
    # makes them: the signature lakescore wrote lets MLflow hand it to the model as one
    # matrix (cast to the model's float32), and the outputs come back whole.
    pyfunc = mlflow.pyfunc.load_model(f"models:/{name}/1")
    assert pyfunc.metadata.get_input_schema().is_tensor_spec()
    assert pyfunc.metadata.get_output_schema().input_names() == ["label", "probabilities"]
    out = pyfunc.predict(pd.DataFrame(x.astype(np.float64), columns=[f"f{i}" for i in range(x.shape[1])]))
    np.testing.assert_array_equal(np.asarray(out["label"]), expected["label"])
    np.testing.assert_allclose(np.asarray(out["probabilities"]), expected["probabilities"], rtol=1e-6)

    # The download is the registered file, byte for byte.
    local = mlflow.artifacts.download_artifacts(f"models:/{name}/1", dst_path=str(tmp_path))
    files = {p.name for p in Path(local).iterdir()}
    assert {"MLmodel", "model.onnx"} <= files, files  # and MLflow's own registered_model_meta
    registered = Registry(server.url, token="").get_version(name, 1)
    import hashlib

    assert hashlib.sha256((Path(local) / "model.onnx").read_bytes()).hexdigest() == registered.sha256


def test_spark_udf_and_sql_predict_equal_onnxruntime(spark: Any, server: Proc, models: Path, mlflow_at: Any) -> None:
    import lakescore.spark

    client = mlflow_at(server.url)
    name = unique("mlfspark")
    register_two_versions(server.url, models, name)
    client.set_registered_model_alias(name, "champion", 1)
    x = features(models)
    expected = ort_predict(models / f"{MODEL}.onnx", {"X": x})
    cols = [f"f{i}" for i in range(x.shape[1])]
    table = pa.table({"id": np.arange(len(x), dtype=np.int64), **{c: x[:, i] for i, c in enumerate(cols)}})
    df = spark.createDataFrame(table.to_pandas()).repartition(3)
    df.createOrReplaceTempView("tx_" + name.replace("-", "_"))
    view = "tx_" + name.replace("-", "_")

    # MLflow's spark_udf on the model loaded through lakescore's artifact proxy; its result
    # type comes from the output signature lakescore wrote.
    from pyspark.sql import functions as F

    udf = mlflow.pyfunc.spark_udf(spark, f"models:/{name}@champion", env_manager="local")
    scored = df.select("id", udf(F.array(*cols)).alias("p")).orderBy("id").toPandas()
    np.testing.assert_array_equal(scored["p"].map(lambda p: p["label"]).to_numpy(), expected["label"])
    np.testing.assert_allclose(
        np.stack(scored["p"].map(lambda p: np.asarray(p["probabilities"], dtype=np.float32)).to_numpy()),
        expected["probabilities"],
        rtol=1e-6,
    )

    # lakescore's SQL function: the version pinned here, scored on the workers.
    pinned = lakescore.spark.register(spark, f"{name}@champion", workers=server.flight, token="")
    assert pinned == {f"{name}@champion": f"{name}:1"}
    client.set_registered_model_alias(name, "champion", 2)  # moving it now changes nothing
    rows = spark.sql(
        f"SELECT id, lakescore_predict('{name}@champion', {', '.join(cols)}) AS p FROM {view} ORDER BY id"
    ).toPandas()
    np.testing.assert_array_equal(rows["p"].map(lambda p: p["label"]).to_numpy(), expected["label"])
    probabilities = np.stack(rows["p"].map(lambda p: np.asarray(p["probabilities"], dtype=np.float32)).to_numpy())
    np.testing.assert_allclose(probabilities, expected["probabilities"], rtol=1e-6)
    assert spark.sql(f"SELECT p.label FROM (SELECT lakescore_predict('{name}@champion', {', '.join(cols)}) AS p FROM {view})").count() == len(x)

    # A reference the function was not registered for fails with a message that says so.
    with pytest.raises(Exception, match="was registered for"):
        spark.sql(f"SELECT lakescore_predict('{name}:2', {', '.join(cols)}) FROM {view}").collect()


def test_tokens_and_grants_as_mlflow_sees_them(
    auth_server: Proc, issuer: Issuer, models: Path, mlflow_at: Any
) -> None:
    name = unique("mlfauth")
    admin = issuer.token("admin-app")
    register_two_versions(auth_server.url, models, name, token=admin)
    Registry(auth_server.url, token=admin).set_alias(name, "champion", 2)

    # No token: UNAUTHENTICATED.
    client = mlflow_at(auth_server.url)
    with pytest.raises(MlflowException) as no_token:
        client.get_registered_model(name)
    assert error_code(no_token.value) == "UNAUTHENTICATED"

    # A reader without a grant: PERMISSION_DENIED, and the model is not listed.
    client = mlflow_at(auth_server.url, issuer.token("reader-app"))
    with pytest.raises(MlflowException) as denied:
        client.get_model_version_by_alias(name, "champion")
    assert error_code(denied.value) == "PERMISSION_DENIED"
    with pytest.raises(MlflowException) as denied_load:
        mlflow.onnx.load_model(f"models:/{name}@champion")
    assert "PERMISSION_DENIED" in str(denied_load.value)
    assert client.search_registered_models(filter_string=f"name = '{name}'") == []

    # Granted read: the same client loads the model, but may not move the alias.
    Registry(auth_server.url, token=admin).grant(name, "app:reader-app", "read")
    assert client.get_model_version_by_alias(name, "champion").version == "2"
    proto = mlflow.onnx.load_model(f"models:/{name}@champion")
    assert [o.name for o in proto.graph.output] == ["label", "probabilities"]
    with pytest.raises(MlflowException) as write:
        client.set_registered_model_alias(name, "champion", 1)
    assert error_code(write.value) == "PERMISSION_DENIED"
    assert [m.name for m in client.search_registered_models(filter_string=f"name = '{name}'")] == [name]

    # A garbage token: UNAUTHENTICATED, never a 500.
    client = mlflow_at(auth_server.url, "not-a-jwt")
    with pytest.raises(MlflowException) as garbage:
        client.get_registered_model(name)
    assert error_code(garbage.value) == "UNAUTHENTICATED"
    assert RestException is not None

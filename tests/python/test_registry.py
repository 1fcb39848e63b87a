"""The registry client against a real `lakescore serve`: CRUD, pagination, search, typed
errors with the server's message, idempotent retried uploads, sha256-verified downloads."""

from __future__ import annotations

import hashlib
import socket
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

import lakescore
from lakescore import Registry

from conftest import Proc, unique


def linreg_variant(models: Path, shift: float) -> bytes:
    """linreg.onnx with its bias moved by `shift`: same signature, other predictions and
    other bytes (so tests that need their own artifact get one)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(models / "linreg.onnx"))
    for i, init in enumerate(m.graph.initializer):
        arr = numpy_helper.to_array(init)
        if arr.size == 1 or arr.ndim == 1:
            m.graph.initializer[i].CopyFrom(numpy_helper.from_array(arr + shift, init.name))
            break
    else:  # pragma: no cover
        raise AssertionError("linreg.onnx has no bias initializer")
    return m.SerializeToString()


def test_models_crud_and_typed_errors(registry: Registry) -> None:
    name = unique("crud")
    m = registry.create_model(name, description="card fraud", tags={"team": "risk"})
    assert (m.name, m.description, m.tags, m.latest_version) == (name, "card fraud", {"team": "risk"}, None)

    with pytest.raises(lakescore.Conflict) as e:
        registry.create_model(name)
    assert e.value.status == 409 and f"'{name}' already exists" in e.value.detail
    assert registry.create_model(name, exist_ok=True).name == name

    m = registry.update_model(name, description="updated", tags={"team": "growth"})
    assert (m.description, m.tags) == ("updated", {"team": "growth"})
    assert registry.get_model(name).description == "updated"

    with pytest.raises(lakescore.InvalidArgument) as bad:
        registry.create_model("Not A Name")
    assert "invalid model name" in str(bad.value)

    registry.delete_model(name)
    with pytest.raises(lakescore.NotFound) as nf:
        registry.get_model(name)
    assert nf.value.detail == f"model '{name}' does not exist"
    assert nf.value.type.endswith("/not-found") and nf.value.problem["status"] == 404
    assert isinstance(nf.value, LookupError)


def test_list_iterates_pages_and_search(registry: Registry) -> None:
    prefix = f"pg{uuid.uuid4().hex[:6]}"
    names = [f"{prefix}-{i:02d}" for i in range(7)]
    for i, n in enumerate(names):
        registry.create_model(n, tags={"parity": "even" if i % 2 == 0 else "odd"})

    pages: list[str] = []
    registry.session.hooks["response"].append(lambda r, *a, **k: pages.append(r.url))
    listed = [m.name for m in registry.list_models(f"name LIKE '{prefix}-%'", page_size=3)]
    assert listed == names
    assert len([u for u in pages if "/models" in u]) == 3, pages  # 3 + 3 + 1

    even = [m.name for m in registry.search_models(f"{prefix}-%", tags={"parity": "even"}, page_size=2)]
    assert even == names[0::2]
    assert list(registry.search_models(f"{prefix}-%", tags={"parity": "it's"})) == []

    with pytest.raises(lakescore.InvalidArgument) as e:
        list(registry.list_models("colour = 'red'"))
    assert "invalid filter" in e.value.detail


def test_register_versions_aliases(registry: Registry, models: Path, manifest: dict[str, Any]) -> None:
    import onnx

    name = unique("reg")
    v1 = registry.register(name, models / "rf.onnx", create_model=True, alias="champion",
                           description="ten trees", tags={"stage": "prod"})
    assert (v1.version, v1.sha256, v1.size) == (1, manifest["models"]["rf"]["sha256"], manifest["models"]["rf"]["size"])
    assert v1.aliases == ["champion"] and v1.description == "ten trees" and v1.tags == {"stage": "prod"}
    assert [i.name for i in v1.signature.inputs] == ["X"] and v1.signature.inputs[0].shape == [None, 20]
    assert v1.signature.uses_ai_onnx_ml and v1.reference == f"{name}:1"

    v2 = registry.register(name, (models / "logreg.onnx").read_bytes())  # bytes
    v3 = registry.register(name, onnx.load(str(models / "mlp.onnx")))  # onnx.ModelProto
    with open(models / "gbr.onnx", "rb") as f:
        v4 = registry.register(name, f)  # a binary file
    assert [v2.version, v3.version, v4.version] == [2, 3, 4]
    assert v3.sha256 == manifest["models"]["mlp"]["sha256"]

    # reuse_existing answers the version that already has these bytes
    again = registry.register(name, models / "logreg.onnx", reuse_existing=True)
    assert again.version == 2

    assert registry.resolve(f"{name}@champion").version == 1
    assert registry.resolve(name).version == 4
    registry.set_alias(name, "champion", 3)
    assert registry.get_alias(name, "champion").version == 3
    assert registry.resolve(f"{name}@champion").sha256 == v3.sha256
    assert registry.get_model(name).aliases == {"champion": 3}

    assert [v.version for v in registry.list_versions(name, page_size=2)] == [1, 2, 3, 4]
    archived = registry.archive_version(name, 3)
    assert archived.status == "archived"
    with pytest.raises(lakescore.NotFound):
        registry.resolve(f"{name}@champion")  # archiving removed the alias
    assert registry.resolve(f"{name}:3").status == "archived"
    assert [v.version for v in registry.list_versions(name, status="ready")] == [1, 2, 4]
    assert registry.update_version(name, 4, description="gbr").description == "gbr"

    registry.set_alias(name, "staging", 4)
    registry.delete_alias(name, "staging")
    with pytest.raises(lakescore.NotFound):
        registry.get_alias(name, "staging")
    with pytest.raises(lakescore.Conflict) as c:
        registry.delete_model(name)
    assert "force=true" in c.value.detail
    registry.delete_model(name, force=True)


def test_invalid_models_are_typed(registry: Registry, models: Path, manifest: dict[str, Any]) -> None:
    name = unique("bad")
    registry.create_model(name)
    for file, meta in manifest["bad"].items():
        if meta["expect_http_status"] != 422:
            continue
        with pytest.raises(lakescore.InvalidModel) as e:
            registry.register(name, (models / file).read_bytes())
        assert e.value.status == 422 and e.value.detail, file
    with pytest.raises(lakescore.InvalidModel) as e:
        registry.register(name, models / "bad_not_onnx.bin")
    assert "not an ONNX model" in e.value.detail
    assert list(registry.list_versions(name)) == []
    with pytest.raises(lakescore.NotFound):
        registry.register(unique("nomodel"), models / "rf.onnx")


def test_idempotency_key_replays_and_refuses_another_request(registry: Registry, models: Path) -> None:
    name = unique("idem")
    registry.create_model(name)
    key = str(uuid.uuid4())
    a = registry.register(name, models / "rf.onnx", idempotency_key=key)
    b = registry.register(name, models / "rf.onnx", idempotency_key=key)
    assert a.version == b.version == 1
    with pytest.raises(lakescore.IdempotencyKeyReused) as e:
        registry.register(name, models / "logreg.onnx", idempotency_key=key)
    assert e.value.status == 422 and key in e.value.detail
    assert [v.version for v in registry.list_versions(name)] == [1]


class DropFirstAnswer:
    """A TCP proxy in front of the registry that forwards requests but, on its first
    connection, drops the answer and closes the connection: a lost response."""

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("http://").split(":")
        self.target = (host, int(port))
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            drop = self.connections == 1
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, drop), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket, drop: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if drop:  # the server answered: lose it
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.sock.close()


def test_upload_retried_after_a_lost_answer_registers_once(server: Proc, registry: Registry, models: Path) -> None:
    name = unique("lost")
    registry.create_model(name)
    proxy = DropFirstAnswer(server.url)
    try:
        via_proxy = Registry(proxy.url, token="", retries=3)
        via_proxy._sleep = lambda s: None
        v = via_proxy.register(name, models / "rf.onnx", description="retried")
    finally:
        proxy.close()
    assert proxy.connections >= 2, "the first answer was dropped, so the upload was sent again"
    assert v.version == 1 and v.description == "retried"
    assert [x.version for x in registry.list_versions(name)] == [1], "one version, not two"


def test_no_answer_at_all_is_unavailable(models: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    reg = Registry(f"http://127.0.0.1:{port}", token="", retries=1)
    reg._sleep = lambda s: None
    with pytest.raises(lakescore.Unavailable):
        reg.get_model("x")


def test_download_is_verified_against_the_sha256(server: Proc, registry: Registry, models: Path, tmp_path: Path) -> None:
    name = unique("dl")
    data = linreg_variant(models, 17.0)  # an artifact only this test uses
    v = registry.register(name, data, create_model=True, alias="live")
    assert registry.download(f"{name}@live") == data
    out = registry.download(f"{name}:1", tmp_path / "model.onnx")
    assert Path(out).read_bytes() == data

    # Corrupt the stored artifact (same size): the client notices.
    stored = [p for p in (server.data_dir / "artifacts").rglob(f"{v.sha256}*") if p.is_file()]
    assert len(stored) == 1, stored
    raw = bytearray(stored[0].read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    stored[0].write_bytes(bytes(raw))
    target = tmp_path / "corrupt.onnx"
    with pytest.raises(lakescore.DataLoss) as e:
        registry.download(f"{name}:1", target)
    assert not target.exists(), "nothing is written when the bytes do not verify"
    assert not list(tmp_path.glob(".corrupt.onnx.*")), "no partial file is left"
    if isinstance(e.value, lakescore.IntegrityError):
        assert hashlib.sha256(bytes(raw)).hexdigest() in e.value.detail
    unverified = registry.download(f"{name}:1", verify=False)
    assert isinstance(unverified, bytes)


def test_health(registry: Registry) -> None:
    assert registry.healthy() and registry.ready()
    assert Registry("http://127.0.0.1:1", token="", retries=0).healthy() is False


def test_requests_session_and_url_forms(server: Proc) -> None:
    s = requests.Session()
    reg = Registry(server.url + "/api/v1/", token="", session=s)
    assert reg.url == server.url and reg.session is s
    name = unique("url")
    reg.create_model(name)
    assert reg.get_model(name).name == name

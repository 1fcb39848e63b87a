"""Fixtures for the Python client's tests: real lakescore processes (the binary just built),
a real OpenID provider (tests/oidc-provider, from npm) and real PySpark in local[2].

Environment (scripts/test-python sets it; each has a default for running pytest by hand):

    LAKESCORE_BIN               the lakescore binary (default: $CARGO_TARGET_DIR or
                                ~/.cache/lakescore/target, then ./target: debug/lakescore)
    ORT_DYLIB_PATH              libonnxruntime (default: the one in this Python's onnxruntime)
    LAKESCORE_TEST_MODELS       generated test models (default tests/models/generated, made
                                with tests/models/generate.py when missing)
    LAKESCORE_TEST_OIDC_PROVIDER  tests/oidc-provider/server.mjs (needs node + npm ci)
    LAKESCORE_TEST_STRICT=1     a missing binary, node or Java fails instead of skipping
"""

from __future__ import annotations

import functools
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
STRICT = bool(os.environ.get("LAKESCORE_TEST_STRICT"))


def _missing(what: str) -> None:
    if STRICT:
        pytest.fail(f"{what} (LAKESCORE_TEST_STRICT is set: nothing may be skipped)")
    pytest.skip(what)


# --------------------------------------------------------------------------- paths
@functools.lru_cache(maxsize=1)
def lakescore_bin() -> Path | None:
    env = os.environ.get("LAKESCORE_BIN")
    if env:
        return Path(env)
    candidates = []
    if os.environ.get("CARGO_TARGET_DIR"):
        candidates.append(Path(os.environ["CARGO_TARGET_DIR"]) / "debug" / "lakescore")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lakescore"
    candidates += [cache / "target" / "debug" / "lakescore", ROOT / "target" / "debug" / "lakescore"]
    for c in candidates:
        if c.is_file():
            return c
    return None


@functools.lru_cache(maxsize=1)
def ort_dylib() -> str:
    env = os.environ.get("ORT_DYLIB_PATH")
    if env:
        return env
    import onnxruntime

    capi = Path(onnxruntime.__file__).parent / "capi"
    libs = sorted(glob.glob(str(capi / "libonnxruntime.so.*")))
    if not libs:
        pytest.fail(f"no libonnxruntime.so.* in {capi}")
    return libs[0]


def models_dir() -> Path:
    d = Path(os.environ.get("LAKESCORE_TEST_MODELS") or ROOT / "tests" / "models" / "generated")
    if not (d / "manifest.json").is_file():
        subprocess.run([sys.executable, str(ROOT / "tests" / "models" / "generate.py"), "--out", str(d)], check=True)
    return d


lakescore_bin()  # resolved now, before any test changes HOME


@pytest.fixture(scope="session")
def models() -> Path:
    return models_dir()


@pytest.fixture(scope="session")
def manifest(models: Path) -> dict[str, Any]:
    return json.loads((models / "manifest.json").read_text())


def tagged_model(path: Path) -> bytes:
    """The model's bytes with a unique metadata entry: same graph and predictions, another
    sha256, so a worker that loaded the original (its cache is by content) loads it anew
    and says so in its log."""
    import onnx

    m = onnx.load(str(path))
    entry = m.metadata_props.add()
    entry.key, entry.value = "lakescore.test", uuid.uuid4().hex
    return m.SerializeToString()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- processes
class Proc:
    """A lakescore process with JSON logs on stderr, kept in memory and in a file."""

    def __init__(self, command: str, data_dir: Path, args: list[str], env: dict[str, str] | None = None) -> None:
        binary = lakescore_bin()
        if binary is None or not binary.is_file():
            _missing("no lakescore binary (build it, or set LAKESCORE_BIN)")
        self.command = command
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("LAKESCORE_")}
        full_env.update(ORT_DYLIB_PATH=ort_dylib(), LAKESCORE_LOG="info")
        full_env.update(env or {})
        self.lines: list[str] = []
        #: The log, also as a file (for code in other processes, e.g. Spark tasks).
        self.log_path = data_dir / f"lakescore-{command}.log"
        self.url = ""
        self.flight = ""
        self._ready = threading.Event()
        self.proc = subprocess.Popen(
            [str(binary), "--log-format", "json", command, "--data-dir", str(data_dir), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=full_env,
            start_new_session=True,
        )
        self._want_url = command in ("serve", "registry")
        self._want_flight = command in ("serve", "scorer")
        threading.Thread(target=self._drain, daemon=True).start()
        if not self._ready.wait(60):
            self.kill()
            raise RuntimeError(f"lakescore {command} did not start:\n" + "\n".join(self.lines[-30:]))
        if self.proc.poll() is not None:
            raise RuntimeError(f"lakescore {command} exited:\n" + "\n".join(self.lines[-30:]))

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        log = open(self.log_path, "a", buffering=1)
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            self.lines.append(line)
            log.write(line + "\n")
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            fields = entry.get("fields", {})
            msg = fields.get("message", "")
            addr = str(fields.get("addr", "")).removeprefix("Some(").removesuffix(")")
            if msg == "registry listening":
                self.url = f"http://{addr}"
            elif msg.startswith("scoring worker"):
                self.flight = f"grpc://{addr}"
            if (not self._want_url or self.url) and (not self._want_flight or self.flight):
                self._ready.set()
        self._ready.set()

    def log_text(self) -> str:
        return "\n".join(self.lines)

    def loaded(self, reference: str) -> bool:
        """Whether this process loaded model ``name:version`` (so it scored with it)."""
        return any("model loaded" in l and f"{reference}" in l for l in self.lines)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def wait_ready(url: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if requests.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url}/readyz never answered 200")


def start_serve(data_dir: Path, *extra: str, env: dict[str, str] | None = None) -> Proc:
    p = Proc(
        "serve",
        data_dir,
        [
            "--listen", "127.0.0.1:0",
            "--flight-listen", "127.0.0.1:0",
            "--intra-op-threads", "1",
            "--shutdown-grace-secs", "2",
            *extra,
        ],
        env,
    )
    wait_ready(p.url)
    return p


def start_worker(registry_url: str, data_dir: Path, *extra: str, listen: str = "127.0.0.1:0") -> Proc:
    """A `lakescore scorer` process resolving models through the registry's gRPC service."""
    grpc = registry_url.replace("http://", "grpc://")
    return Proc(
        "scorer",
        data_dir,
        [
            "--registry-url", grpc,
            "--flight-listen", listen,
            "--intra-op-threads", "1",
            "--shutdown-grace-secs", "2",
            *extra,
        ],
    )


@pytest.fixture(scope="session")
def tmp_session() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="lakescore-pytest-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def server(tmp_session: Path) -> Iterator[Proc]:
    """`lakescore serve` without authentication: registry + one worker."""
    p = start_serve(tmp_session / "serve")
    yield p
    p.stop()


@pytest.fixture(scope="session")
def worker2(server: Proc, tmp_session: Path) -> Iterator[Proc]:
    """A second worker (`lakescore scorer`) for the registry of `server`."""
    p = start_worker(server.url, tmp_session / "worker2")
    yield p
    p.stop()


@pytest.fixture()
def spare_worker(server: Proc, tmp_path: Path) -> Iterator[Proc]:
    """A worker of its own, for tests that kill it."""
    p = start_worker(server.url, tmp_path / "spare")
    yield p
    p.kill()


@pytest.fixture()
def registry(server: Proc) -> Any:
    from lakescore import Registry

    with Registry(server.url, token="") as r:
        yield r


# --------------------------------------------------------------------------- OIDC
RESOURCE = "api://lakescore"
CLIENTS = [
    {"client_id": "admin-app", "client_secret": "admin-secret", "roles": ["LakeScore.Admin"]},
    {"client_id": "writer-app", "client_secret": "writer-secret", "scope": "lakescore.read lakescore.write"},
    {"client_id": "reader-app", "client_secret": "reader-secret", "scope": "lakescore.read"},
]
SECRETS = {c["client_id"]: c["client_secret"] for c in CLIENTS}
SCOPES = {"admin-app": "lakescore.read", "writer-app": "lakescore.read lakescore.write", "reader-app": "lakescore.read"}


class Issuer:
    def __init__(self, proc: subprocess.Popen[bytes], issuer: str) -> None:
        self.proc = proc
        self.issuer = issuer

    def token(self, client: str, resource: str = RESOURCE) -> str:
        r = requests.post(
            f"{self.issuer}/token",
            auth=(client, SECRETS[client]),
            data={"grant_type": "client_credentials", "scope": SCOPES[client], "resource": resource},
            timeout=30,
        )
        r.raise_for_status()
        return r.json()["access_token"]

    def token_fn(self, client: str, resource: str = RESOURCE) -> Any:
        """A picklable callable fetching fresh tokens (what a pipeline would pass)."""
        return _TokenFn(self.issuer, client, SECRETS[client], SCOPES[client], resource)


class _TokenFn:
    def __init__(self, issuer: str, client: str, secret: str, scope: str, resource: str) -> None:
        self.issuer, self.client, self.secret, self.scope, self.resource = issuer, client, secret, scope, resource

    def __call__(self) -> str:
        r = requests.post(
            f"{self.issuer}/token",
            auth=(self.client, self.secret),
            data={"grant_type": "client_credentials", "scope": self.scope, "resource": self.resource},
            timeout=30,
        )
        r.raise_for_status()
        return r.json()["access_token"]


@pytest.fixture(scope="session")
def issuer() -> Iterator[Issuer]:
    script = os.environ.get("LAKESCORE_TEST_OIDC_PROVIDER") or str(ROOT / "tests" / "oidc-provider" / "server.mjs")
    if not shutil.which("node"):
        _missing("node is not installed (apt-get install nodejs npm)")
    if not (Path(script).parent / "node_modules").is_dir():
        _missing("tests/oidc-provider has no node_modules (scripts/test runs npm ci there)")
    proc = subprocess.Popen(
        ["node", script, "--port", "0", "--resource", RESOURCE, "--clients", json.dumps(CLIENTS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().strip()
    if not line.startswith("READY "):
        proc.kill()
        pytest.fail(f"oidc-provider did not start: {line!r}")
    yield Issuer(proc, line.removeprefix("READY "))
    proc.terminate()
    proc.wait(10)


def auth_config(issuer: str) -> str:
    # The README's configuration for a non-Entra issuer (tests/identity_provider.rs), with
    # per-model grants: readers reach only models they own or were granted.
    return f"""
[auth]
default_permission = "granted"

[auth.oidc]
issuer = "{issuer}"
audiences = ["{RESOURCE}"]

[auth.claims]
subject = ["sub"]
scopes = "scope"
app_id = ["client_id", "azp"]

[auth.roles]
reader = ["scope:lakescore.read"]
writer = ["scope:lakescore.write"]
admin = ["role:LakeScore.Admin"]
"""


@pytest.fixture(scope="session")
def auth_server(issuer: Issuer, tmp_session: Path) -> Iterator[Proc]:
    """`lakescore serve` requiring tokens from `issuer`, default_permission = granted."""
    d = tmp_session / "auth"
    d.mkdir(parents=True, exist_ok=True)
    config = d / "lakescore.toml"
    config.write_text(auth_config(issuer.issuer))
    p = start_serve(d / "data", "--config", str(config))
    yield p
    p.stop()


# --------------------------------------------------------------------------- Spark
@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    if not shutil.which("java"):
        _missing("no java (apt-get install openjdk-17-jre-headless)")
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        _missing("pyspark is not installed (tests/python/requirements.txt)")
    # Spark's Python workers import what tests ship them by reference (conftest helpers).
    here = str(Path(__file__).parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"  # loopback only
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    session = (
        SparkSession.builder.master("local[2]")
        .appName("lakescore-tests")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "4")
        # repartition(n) gives n partitions (the tests aim partitions at workers by index)
        .config("spark.sql.adaptive.enabled", "false")
        .config("spark.driver.memory", "1g")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "10000")
        .config("spark.python.worker.reuse", "true")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


# --------------------------------------------------------------------------- onnxruntime
def ort_predict(model_path: Path, feeds: dict[str, Any]) -> dict[str, Any]:
    """onnxruntime's outputs for the feeds, by output name (ZipMap: [N, classes] array)."""
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    values = sess.run(names, feeds)
    out: dict[str, Any] = {}
    for name, v in zip(names, values):
        if isinstance(v, list) and v and isinstance(v[0], dict):
            keys = sorted(v[0])
            out[name] = np.array([[row[k] for k in keys] for row in v], dtype=np.float32)
        else:
            out[name] = np.asarray(v)
    return out

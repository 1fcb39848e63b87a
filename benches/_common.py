"""What the Python benchmarks share: the release binary, ONNX Runtime's library, free
ports, the generated benchmark models, and `lakescore serve` started and stopped."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GENERATED = REPO / "tests" / "models" / "generated"


def default_binary() -> Path:
    """The release `lakescore`: under CARGO_TARGET_DIR, the project's cache, or ./target."""
    candidates = []
    if os.environ.get("CARGO_TARGET_DIR"):
        candidates.append(Path(os.environ["CARGO_TARGET_DIR"]) / "release" / "lakescore")
    candidates += [
        Path.home() / ".cache" / "lakescore" / "target" / "release" / "lakescore",
        REPO / "target" / "release" / "lakescore",
    ]
    return next((c for c in candidates if c.is_file()), candidates[0])


def onnxruntime_library() -> Path:
    """The shared library of the onnxruntime package this Python imports (the same one
    in-process runs use), unless ORT_DYLIB_PATH names another."""
    if os.environ.get("ORT_DYLIB_PATH"):
        return Path(os.environ["ORT_DYLIB_PATH"])
    import onnxruntime as ort

    capi = Path(ort.__file__).parent / "capi"
    libs = sorted(capi.glob(f"libonnxruntime.so.{ort.__version__}")) or sorted(capi.glob("libonnxruntime.so.*"))
    if not libs:
        sys.exit(f"no libonnxruntime.so.* under {capi}; set ORT_DYLIB_PATH")
    return libs[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_model(name: str) -> Path:
    """big_rf or gb300, made by tests/models/generate.py --bench when missing."""
    path = GENERATED / f"{name}.onnx"
    if not path.exists():
        print(f"generating {name} (tests/models/generate.py --bench) ...", flush=True)
        subprocess.run([sys.executable, str(REPO / "tests" / "models" / "generate.py"), "--bench"], check=True)
    return path


class Serve:
    """`lakescore serve` on free ports with its data under `data_dir`, ready when built."""

    def __init__(self, binary: Path, data_dir: Path, threads: int, backend: str = "auto", ort_lib: Path | None = None):
        self.binary = binary
        self.http = f"http://127.0.0.1:{free_port()}"
        self.flight = f"grpc://127.0.0.1:{free_port()}"
        data_dir.mkdir(parents=True, exist_ok=True)
        self.log = open(data_dir / "serve.log", "wb")
        lib = ort_lib or onnxruntime_library()
        env = dict(os.environ, ORT_DYLIB_PATH=str(lib), LAKESCORE_LOG="warn")
        self.proc = subprocess.Popen(
            [
                str(binary), "serve", "--data-dir", str(data_dir / "lakescore-data"),
                "--listen", self.http.removeprefix("http://"), "--flight-listen", self.flight.removeprefix("grpc://"),
                "--onnxruntime-lib", str(lib), "--intra-op-threads", str(threads), "--backend", backend,
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self.pid = self.proc.pid
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"lakescore serve exited with {self.proc.returncode}; see {self.log.name}")
            try:
                urllib.request.urlopen(self.http + "/readyz", timeout=1).read()
                host, port = self.flight.removeprefix("grpc://").rsplit(":", 1)
                socket.create_connection((host, int(port)), timeout=1).close()
                return
            except Exception:  # noqa: BLE001
                time.sleep(0.2)
        self.stop()
        sys.exit(f"lakescore serve did not become ready in 60 s; see {self.log.name}")

    def register(self, name: str, path: Path, alias: str = "bench") -> None:
        subprocess.run(
            [str(self.binary), "models", "--url", self.http, "register", name, str(path), "--alias", alias, "-o", "json"],
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
            print("warning: lakescore serve ignored SIGTERM for 30 s; killed", file=sys.stderr)
        self.log.close()
        return rc

"""The distribution itself: versioned with the crate, typed, installable, light to import."""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import lakescore

from conftest import ROOT


def crate_version() -> str:
    text = (ROOT / "Cargo.toml").read_text()
    section = text[text.index("[workspace.package]"):]
    m = re.search(r'^version\s*=\s*"([^"]+)"', section, re.M)
    assert m, "no [workspace.package] version in Cargo.toml"
    return m.group(1)


def test_versioned_with_the_crate() -> None:
    assert lakescore.__version__ == crate_version()
    assert importlib.metadata.version("lakescore") == crate_version()
    pyproject = (ROOT / "python" / "pyproject.toml").read_text()
    assert f'version = "{crate_version()}"' in pyproject


def test_typed() -> None:
    assert importlib.resources.files("lakescore").joinpath("py.typed").is_file()


def test_wheel_contents_and_metadata(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(ROOT / "python", src, ignore=shutil.ignore_patterns("*.egg-info", "build", "dist"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--disable-pip-version-check",
         "-q", "-w", str(tmp_path / "dist"), str(src)],
        check=True, timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("lakescore-*.whl")
    assert wheel.name.startswith(f"lakescore-{crate_version()}-py3-none-any")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = z.read(next(n for n in names if n.endswith("METADATA"))).decode()
    for module in ("__init__", "auth", "errors", "models", "registry", "scoring", "spark"):
        assert f"lakescore/{module}.py" in names
    assert "lakescore/py.typed" in names
    assert "Requires-Python: >=3.10" in meta
    assert re.search(r"^Requires-Dist: pyarrow", meta, re.M) and re.search(r"^Requires-Dist: requests", meta, re.M)
    assert re.search(r"^Requires-Dist: pyspark.*extra == \"spark\"", meta, re.M)
    assert re.search(r"^Requires-Dist: azure-identity.*extra == \"azure\"", meta, re.M)


def test_import_needs_no_extra() -> None:
    code = (
        "import sys, lakescore, lakescore.spark\n"
        "heavy = [m for m in ('pyspark', 'pandas', 'polars', 'azure.identity') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_errors_by_reason_not_wording() -> None:
    """A status whose details carry lakescore's reason is classified by it, whatever its
    message says; details from elsewhere (or none) fall back to the gRPC code."""
    import pyarrow.flight as flight

    from lakescore import errors

    def varint(n: int) -> bytes:
        out = b""
        while True:
            byte, n = n & 0x7F, n >> 7
            out += bytes([byte | (0x80 if n else 0)])
            if not n:
                return out

    def field(number: int, value: bytes | int) -> bytes:
        if isinstance(value, int):
            return varint(number << 3) + varint(value)
        return varint(number << 3 | 2) + varint(len(value)) + value

    def details(reason: str, code: int, message: str, domain: str = "lakescore.dev") -> bytes:
        info = field(1, reason.encode()) + field(2, domain.encode())
        any_ = field(1, b"type.googleapis.com/google.rpc.ErrorInfo") + field(2, info)
        return field(1, code) + field(2, message.encode()) + field(3, any_)

    locked = flight.FlightServerError("whatever the words", extra_info=details("locked", 9, "job j is held"))
    err = errors.from_flight(locked)
    assert isinstance(err, lakescore.Locked) and isinstance(err, lakescore.FailedPrecondition)
    assert (err.reason, err.code, err.status, err.detail) == ("locked", "FAILED_PRECONDITION", 409, "job j is held")
    assert errors.status_details(b"\xff\xff") is None
    other = flight.FlightServerError("x", extra_info=details("locked", 9, "m", domain="example.com"))
    assert errors.status_details(other.extra_info) is None
    assert not isinstance(errors.from_flight(other), lakescore.Locked)

"""Files written whole or not at all."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "wb", *, private: bool = False) -> Iterator[IO[Any]]:
    """A temporary file beside ``path`` that replaces it when the block ends normally, and
    is removed when the block raises: readers see the old file or the whole new one.
    ``private``: readable by the owner only (tokens)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        if private:
            os.fchmod(fd, 0o600)
        with os.fdopen(fd, mode) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise

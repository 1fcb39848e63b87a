"""The registry's REST API (``/api/v1``) as a Python client.

    from lakescore import Registry

    reg = Registry("http://127.0.0.1:8080")          # token: $LAKESCORE_TOKEN / lakescore login
    reg.create_model("fraud", description="card fraud", tags={"team": "risk"})
    v = reg.register("fraud", "model.onnx", alias="champion")
    reg.resolve("fraud@champion").signature.inputs
    reg.download("fraud@champion", "copy.onnx")     # verified against the sha256
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, Union
from urllib.parse import quote

import requests

from . import errors
from ._fs import atomic_file
from .auth import TokenLike, TokenProvider, token_provider
from .models import Alias, AuditEntry, Grant, Model, ModelVersion

__all__ = ["Registry", "ModelSource"]

#: A model to register: a path, bytes, a binary file object or an ``onnx.ModelProto``.
ModelSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, BinaryIO, Any]

_RETRY_STATUSES = frozenset({502, 503, 504})
_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
_CHUNK = 1 << 20


def _q(segment: str | int) -> str:
    return quote(str(segment), safe="")


def _quote_filter_value(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class _Multipart:
    """A multipart/form-data body (``metadata`` JSON part, ``artifact`` part) streamed from
    a file, with a known length (so requests sends Content-Length, not chunks)."""

    def __init__(self, metadata: bytes, artifact: BinaryIO, artifact_size: int) -> None:
        self.boundary = "lakescore-" + uuid.uuid4().hex
        b = self.boundary.encode()
        head = (
            b"--" + b + b"\r\n"
            b'Content-Disposition: form-data; name="metadata"\r\n'
            b"Content-Type: application/json\r\n\r\n" + metadata + b"\r\n"
            b"--" + b + b"\r\n"
            b'Content-Disposition: form-data; name="artifact"; filename="model.onnx"\r\n'
            b"Content-Type: application/octet-stream\r\n\r\n"
        )
        tail = b"\r\n--" + b + b"--\r\n"
        self._parts: list[BinaryIO] = [io.BytesIO(head), artifact, io.BytesIO(tail)]
        self.len = len(head) + artifact_size + len(tail)
        self.content_type = f"multipart/form-data; boundary={self.boundary}"

    def __len__(self) -> int:
        return self.len

    def read(self, n: int = -1) -> bytes:
        out = bytearray()
        while self._parts and (n < 0 or len(out) < n):
            chunk = self._parts[0].read(-1 if n < 0 else n - len(out))
            if chunk:
                out += chunk
            else:
                self._parts.pop(0)
        return bytes(out)


class _Upload:
    """A model source that can be read again for each attempt of an upload."""

    def __init__(self, model: ModelSource) -> None:
        self._path: Path | None = None
        self._bytes: bytes | None = None
        if isinstance(model, (str, os.PathLike)):
            self._path = Path(model)
            if not self._path.is_file():
                raise FileNotFoundError(f"no model file {self._path}")
        elif isinstance(model, (bytes, bytearray, memoryview)):
            self._bytes = bytes(model)
        elif hasattr(model, "SerializeToString"):  # onnx.ModelProto
            self._bytes = model.SerializeToString()
        elif hasattr(model, "read"):
            data = model.read()
            self._bytes = data.encode() if isinstance(data, str) else bytes(data)
        else:
            raise TypeError(
                f"cannot register a {type(model).__name__}: pass a path, bytes, a binary file or an onnx.ModelProto"
            )

    @property
    def size(self) -> int:
        if self._path is not None:
            return self._path.stat().st_size
        assert self._bytes is not None
        return len(self._bytes)

    def open(self) -> BinaryIO:
        if self._path is not None:
            return open(self._path, "rb")
        assert self._bytes is not None
        return io.BytesIO(self._bytes)


class Registry:
    """A client of the registry's REST API.

    Args:
        url: the registry, e.g. ``http://127.0.0.1:8080`` (default ``$LAKESCORE_URL``, else
            that address); ``/api/v1`` is added.
        token: see :mod:`lakescore.auth` (a string, a callable, an ``azure.identity``
            credential; default ``$LAKESCORE_TOKEN`` or the ``lakescore login`` cache).
        timeout: seconds per request (connect and each read).
        retries: how many times a request that got no answer, or a 502/503/504, is sent
            again (reads always; uploads and creations with their ``Idempotency-Key``).
        session: a ``requests.Session`` to use (proxies, TLS settings, adapters).
        verify: TLS verification, as requests takes it (a CA bundle path, or False).
    """

    def __init__(
        self,
        url: str | None = None,
        token: TokenLike = None,
        *,
        timeout: float = 60.0,
        retries: int = 4,
        session: requests.Session | None = None,
        verify: bool | str = True,
    ) -> None:
        url = url or os.environ.get("LAKESCORE_URL") or "http://127.0.0.1:8080"
        url = url.rstrip("/")
        if url.endswith("/api/v1"):
            url = url[: -len("/api/v1")]
        self.url = url
        self.api = url + "/api/v1"
        self.tokens: TokenProvider = token_provider(token)
        self.timeout = timeout
        self.retries = retries
        self.session = session or requests.Session()
        self.verify = verify
        self._sleep: Callable[[float], None] = time.sleep

    def __repr__(self) -> str:
        return f"Registry({self.url!r})"

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ transport
    def _headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = {"accept": "application/json, application/problem+json"}
        tok = self.tokens.token()
        if tok:
            headers["authorization"] = f"Bearer {tok}"
        if extra:
            headers.update(extra)
        return headers

    def _backoff(self, attempt: int, resp: requests.Response | None) -> None:
        delay = min(8.0, 0.25 * (2**attempt)) * (0.5 + random.random())
        if resp is not None:
            ra = resp.headers.get("retry-after")
            if ra and ra.isdigit():
                delay = min(30.0, float(ra))
        self._sleep(delay)

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        body: Callable[[], tuple[Any, str]] | None = None,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
        ok: tuple[int, ...] = (200, 201, 204),
        retry: bool | None = None,
    ) -> requests.Response:
        """One API call with retries; raises the typed error of a non-``ok`` answer.

        ``body`` makes a fresh (data, content type) for each attempt (uploads)."""
        url = path if path.startswith("http") else self.api + path
        if retry is None:
            retry = method in _IDEMPOTENT_METHODS or bool(headers and "Idempotency-Key" in headers)
        attempts = 1 + (self.retries if retry else 0)
        refreshed = False
        attempt = 0
        while True:
            hdrs = self._headers(headers)
            data = None
            to_close: Any = None
            if body is not None:
                data, ctype = body()
                to_close = data
                hdrs["content-type"] = ctype
            try:
                resp = self.session.request(
                    method,
                    url,
                    params={k: v for k, v in (params or {}).items() if v is not None},
                    json=json,
                    data=data,
                    headers=hdrs,
                    stream=stream,
                    timeout=self.timeout,
                    verify=self.verify,
                )
            except (requests.ConnectionError, requests.Timeout) as e:
                attempt += 1
                if attempt >= attempts:
                    raise errors.Unavailable(f"{method} {url}: no answer from the registry: {e}") from e
                self._backoff(attempt, None)
                continue
            finally:
                if to_close is not None and hasattr(to_close, "close"):
                    to_close.close()
            if resp.status_code in ok:
                return resp
            if resp.status_code == 401 and not refreshed:
                # A token that expired in between, or was revoked: ask the source again once.
                refreshed = True
                old = hdrs.get("authorization")
                self.tokens.invalidate()
                new = self.tokens.token()
                if new and f"Bearer {new}" != old:
                    resp.close()
                    continue
            retryable = resp.status_code in _RETRY_STATUSES or (
                resp.status_code == 409
                and headers is not None
                and "Idempotency-Key" in headers
                and _problem_reason(resp) == "locked"
            )
            attempt += 1
            if retry and retryable and attempt < attempts:
                self._backoff(attempt, resp)
                resp.close()
                continue
            raise errors.from_http(resp.status_code, resp.content, resp.reason or "")

    def _get_json(self, path: str, **params: Any) -> Any:
        return self._request("GET", path, params=params).json()

    def _pages(self, path: str, key: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        token: str | None = None
        while True:
            page = self._get_json(path, **params, page_token=token)
            if token is None:
                # What the server says about the listing (a token in group overage sees
                # no model granted to its groups), once.
                for message in page.get("warnings", []):
                    warnings.warn(str(message), stacklevel=3)
            yield from page.get(key, [])
            token = page.get("next_page_token")
            if not token:
                return

    # ------------------------------------------------------------------ health
    def healthy(self) -> bool:
        """``GET /healthz`` answered 200."""
        try:
            return self._request("GET", self.url + "/healthz", retry=False).status_code == 200
        except (errors.LakescoreError, requests.RequestException):
            return False

    def ready(self) -> bool:
        """``GET /readyz`` answered 200 (database, storage and signing keys reachable)."""
        try:
            return self._request("GET", self.url + "/readyz", retry=False).status_code == 200
        except (errors.LakescoreError, requests.RequestException):
            return False

    # ------------------------------------------------------------------ models
    def create_model(
        self,
        name: str,
        description: str | None = None,
        tags: Mapping[str, str] | None = None,
        *,
        exist_ok: bool = False,
        idempotency_key: str | None = None,
    ) -> Model:
        """Create a registered model (``POST /models``), sent with an ``Idempotency-Key``
        so that a retry after a lost answer gets the first answer back. ``exist_ok``:
        return the existing model instead of raising :class:`~lakescore.Conflict`."""
        payload: dict[str, Any] = {"name": name}
        if description is not None:
            payload["description"] = description
        if tags is not None:
            payload["tags"] = dict(tags)
        key = idempotency_key or str(uuid.uuid4())
        try:
            resp = self._request("POST", "/models", json=payload, headers={"Idempotency-Key": key}, ok=(200, 201))
        except errors.Conflict:
            if exist_ok:
                return self.get_model(name)
            raise
        return Model.from_json(resp.json())

    def get_model(self, name: str) -> Model:
        return Model.from_json(self._get_json(f"/models/{_q(name)}"))

    def list_models(self, filter: str | None = None, *, page_size: int | None = None) -> Iterator[Model]:
        """Every model (matching ``filter``, e.g. ``name LIKE 'fraud%' AND tags.team =
        'risk'``), by name, fetched page by page as the iterator advances."""
        for m in self._pages("/models", "models", {"filter": filter, "page_size": page_size}):
            yield Model.from_json(m)

    def search_models(
        self,
        name: str | None = None,
        *,
        tags: Mapping[str, str] | None = None,
        description: str | None = None,
        page_size: int | None = None,
    ) -> Iterator[Model]:
        """Models whose name (and description) match a ``LIKE`` pattern (``%`` and ``_``,
        case-insensitive) and that carry all of ``tags``."""
        clauses = []
        if name is not None:
            clauses.append(f"name LIKE {_quote_filter_value(name)}")
        if description is not None:
            clauses.append(f"description LIKE {_quote_filter_value(description)}")
        for k, v in (tags or {}).items():
            clauses.append(f"tags.{k} = {_quote_filter_value(v)}")
        return self.list_models(" AND ".join(clauses) or None, page_size=page_size)

    def update_model(
        self, name: str, *, description: str | None = None, tags: Mapping[str, str] | None = None
    ) -> Model:
        """Change the description and/or replace the tags (``PATCH``)."""
        payload: dict[str, Any] = {}
        if description is not None:
            payload["description"] = description
        if tags is not None:
            payload["tags"] = dict(tags)
        return Model.from_json(self._request("PATCH", f"/models/{_q(name)}", json=payload).json())

    def delete_model(self, name: str, *, force: bool = False) -> None:
        """Delete a model; with versions it needs ``force=True`` (they go too)."""
        self._request("DELETE", f"/models/{_q(name)}", params={"force": "true" if force else None})

    # ------------------------------------------------------------------ versions
    def register(
        self,
        name: str,
        model: ModelSource,
        *,
        description: str | None = None,
        tags: Mapping[str, str] | None = None,
        alias: str | list[str] | None = None,
        create_model: bool = False,
        reuse_existing: bool = False,
        idempotency_key: str | None = None,
    ) -> ModelVersion:
        """Register a new version of ``name`` from a path, bytes, a binary file or an
        ``onnx.ModelProto``; returns the version record (number, sha256, signature).

        The upload carries an ``Idempotency-Key`` and is sent again (with the same key)
        when it got no answer or a 503, so a retry never makes a second version.
        ``reuse_existing``: if a ready version already has these bytes, return it instead.
        ``alias``: point these alias(es) at the new version. ``create_model``: create
        ``name`` first when it does not exist.
        """
        if create_model:
            self.create_model(name, exist_ok=True)
        upload = _Upload(model)
        key = idempotency_key or str(uuid.uuid4())
        meta: dict[str, Any] = {}
        if description is not None:
            meta["description"] = description
        if tags is not None:
            meta["tags"] = dict(tags)

        def body() -> tuple[Any, str]:
            if not meta:
                return upload.open(), "application/octet-stream"
            import json as _json

            mp = _Multipart(_json.dumps(meta).encode(), upload.open(), upload.size)
            return mp, mp.content_type

        resp = self._request(
            "POST",
            f"/models/{_q(name)}/versions",
            params={"reuse_existing": "true" if reuse_existing else None},
            body=body,
            headers={"Idempotency-Key": key},
            ok=(200, 201),
        )
        version = ModelVersion.from_json(resp.json())
        aliases = [alias] if isinstance(alias, str) else list(alias or [])
        for a in aliases:
            self.set_alias(name, a, version.version)
        if aliases:
            version = self.get_version(name, version.version)
        return version

    def list_versions(
        self, name: str, *, status: str | None = None, page_size: int | None = None
    ) -> Iterator[ModelVersion]:
        """The model's versions, oldest first (``status``: ``ready`` or ``archived``)."""
        for v in self._pages(f"/models/{_q(name)}/versions", "versions", {"status": status, "page_size": page_size}):
            yield ModelVersion.from_json(v)

    def get_version(self, name: str, version: int) -> ModelVersion:
        return ModelVersion.from_json(self._get_json(f"/models/{_q(name)}/versions/{int(version)}"))

    def update_version(
        self,
        name: str,
        version: int,
        *,
        description: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> ModelVersion:
        payload: dict[str, Any] = {}
        if description is not None:
            payload["description"] = description
        if tags is not None:
            payload["tags"] = dict(tags)
        resp = self._request("PATCH", f"/models/{_q(name)}/versions/{int(version)}", json=payload)
        return ModelVersion.from_json(resp.json())

    def archive_version(self, name: str, version: int) -> ModelVersion:
        """Archive (soft-delete) a version: still resolvable as ``name:N``, never through
        an alias or as latest."""
        resp = self._request("DELETE", f"/models/{_q(name)}/versions/{int(version)}")
        return ModelVersion.from_json(resp.json())

    delete_version = archive_version

    def resolve(self, reference: str) -> ModelVersion:
        """``name`` (latest ready), ``name:7`` or ``name@alias`` → the version record."""
        return ModelVersion.from_json(self._get_json(f"/resolve/{_q(reference)}"))

    def download(
        self,
        reference: str | ModelVersion,
        path: str | os.PathLike[str] | None = None,
        *,
        verify: bool = True,
    ) -> bytes | Path:
        """The ONNX bytes of a version, checked against its sha256 (``IntegrityError`` when
        they differ). With ``path`` they are streamed to that file (written only once
        verified) and the path is returned; otherwise the bytes are."""
        version = reference if isinstance(reference, ModelVersion) else self.resolve(reference)
        resp = self._request(
            "GET", f"/models/{_q(version.model)}/versions/{version.version}/artifact", stream=True
        )
        digest = hashlib.sha256()
        try:
            if path is None:
                buf = bytearray()
                for chunk in resp.iter_content(_CHUNK):
                    digest.update(chunk)
                    buf += chunk
                self._check(version, digest.hexdigest(), verify)
                return bytes(buf)
            target = Path(path)
            with atomic_file(target) as f:
                for chunk in resp.iter_content(_CHUNK):
                    digest.update(chunk)
                    f.write(chunk)
                # Checked before the block ends: a mismatch leaves no file.
                self._check(version, digest.hexdigest(), verify)
            return target
        finally:
            resp.close()

    @staticmethod
    def _check(version: ModelVersion, got: str, verify: bool) -> None:
        if verify and got != version.sha256:
            raise errors.IntegrityError(
                f"the artifact of {version.reference} has sha256 {got}, the registry says {version.sha256}"
            )

    # ------------------------------------------------------------------ aliases
    def set_alias(self, name: str, alias: str, version: int) -> Alias:
        """Point ``name@alias`` at ``version`` (atomically; creates or moves it)."""
        resp = self._request(
            "PUT", f"/models/{_q(name)}/aliases/{_q(alias)}", json={"version": int(version)}, ok=(200, 201)
        )
        return Alias.from_json(resp.json())

    def get_alias(self, name: str, alias: str) -> Alias:
        return Alias.from_json(self._get_json(f"/models/{_q(name)}/aliases/{_q(alias)}"))

    def delete_alias(self, name: str, alias: str) -> None:
        self._request("DELETE", f"/models/{_q(name)}/aliases/{_q(alias)}")

    # ------------------------------------------------------------------ grants
    def list_grants(self, name: str) -> list[Grant]:
        data = self._get_json(f"/models/{_q(name)}/grants")
        items = data.get("grants", []) if isinstance(data, dict) else data
        return [Grant.from_json(g) for g in items]

    def grant(self, name: str, principal: str, permission: str = "read") -> Grant:
        """Let ``principal`` (``user:<oid>``, ``group:<id>``, ``role:<role>``,
        ``app:<client id>``) ``read`` or ``write`` the model (owner or admin only)."""
        resp = self._request(
            "PUT", f"/models/{_q(name)}/grants", json={"principal": principal, "permission": permission}, ok=(200, 201)
        )
        data = resp.json()  # the model's grants, after the change
        items = data if isinstance(data, list) else data.get("grants", [data]) if isinstance(data, dict) else []
        for g in items:
            if isinstance(g, dict) and g.get("principal") == principal:
                return Grant.from_json(g)
        return Grant(principal, permission)

    def revoke(self, name: str, principal: str) -> None:
        self._request("DELETE", f"/models/{_q(name)}/grants", params={"principal": principal})

    # ------------------------------------------------------------------ audit
    def audit(self, model: str | None = None, *, page_size: int | None = None) -> Iterator[AuditEntry]:
        """The audit log (admins), newest first, page by page."""
        for e in self._pages("/audit", "entries", {"model": model, "page_size": page_size}):
            yield AuditEntry.from_json(e)


def _problem_reason(resp: Any) -> str | None:
    """The reason code of a problem+json answer (the last segment of its ``type``)."""
    try:
        problem = resp.json()
    except ValueError:
        return None
    type_ = problem.get("type") if isinstance(problem, dict) else None
    return type_.rstrip("/").rsplit("/", 1)[-1] if isinstance(type_, str) else None

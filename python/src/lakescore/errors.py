"""Typed exceptions for lakescore errors, from REST (problem+json) and Flight (gRPC status).

Every error the server reports becomes a subclass of :class:`LakescoreError` that keeps the
server's own message (``detail`` for REST, the status message for Flight), so::

    try:
        registry.create_model("fraud")
    except lakescore.Conflict as e:
        print(e.detail)            # "model 'fraud' already exists"

The classes follow the server's error table (``core/src/error.rs``): one per kind of
failure, whatever the transport. Over REST the class is chosen by the server's stable
reason code (the last segment of problem+json's ``type``; ``reason`` keeps it). Over
Flight, by the reason in the status details (a ``google.rpc.ErrorInfo``) where pyarrow
hands them over (``FlightError.extra_info``: the codes it raises as ``FlightError``
subclasses), else by the gRPC code, as pyarrow names it; never by the server's wording.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

__all__ = [
    "LakescoreError",
    "InvalidArgument",
    "BadRequest",
    "Unauthenticated",
    "PermissionDenied",
    "NotFound",
    "Conflict",
    "FailedPrecondition",
    "Locked",
    "PayloadTooLarge",
    "UnsupportedMediaType",
    "RangeNotSatisfiable",
    "InvalidModel",
    "IdempotencyKeyReused",
    "ResourceExhausted",
    "HeadersTooLarge",
    "DeadlineExceeded",
    "Cancelled",
    "Unimplemented",
    "Unavailable",
    "DataLoss",
    "IntegrityError",
    "InternalError",
]


class LakescoreError(Exception):
    """Base class of every error the client raises for a server answer.

    Attributes:
        detail: the server's message (problem+json ``detail`` / gRPC status message).
        status: HTTP status (REST; for Flight the HTTP equivalent of the gRPC code).
        code: gRPC status name (``NOT_FOUND``, ``PERMISSION_DENIED``, …).
        reason: the server's stable reason code (``not-found``, ``locked``, …), when it
            sent one.
        title, type: the problem+json ``title`` and ``type`` (REST only).
        problem: the whole problem+json body (REST only).
    """

    status: int = 500
    code: str = "INTERNAL"

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        code: str | None = None,
        title: str | None = None,
        type: str | None = None,
        problem: dict[str, Any] | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.title = title
        self.type = type
        self.problem = problem

    def __str__(self) -> str:
        return self.detail

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.detail!r}, status={self.status}, code={self.code!r})"


class InvalidArgument(LakescoreError):
    """400 / ``INVALID_ARGUMENT``: the request is malformed or does not fit the model."""

    status = 400
    code = "INVALID_ARGUMENT"


BadRequest = InvalidArgument


class Unauthenticated(LakescoreError):
    """401 / ``UNAUTHENTICATED``: no token, or one the server does not accept."""

    status = 401
    code = "UNAUTHENTICATED"


class PermissionDenied(LakescoreError):
    """403 / ``PERMISSION_DENIED``: the caller may not do this (no role, no grant)."""

    status = 403
    code = "PERMISSION_DENIED"


class NotFound(LakescoreError, LookupError):
    """404 / ``NOT_FOUND``: no such model, version, alias or object."""

    status = 404
    code = "NOT_FOUND"


class Conflict(LakescoreError):
    """409 / ``ALREADY_EXISTS``: it exists already, or a concurrent request is running."""

    status = 409
    code = "ALREADY_EXISTS"


class FailedPrecondition(Conflict):
    """409 / ``FAILED_PRECONDITION``: valid, but not in a state to serve (an archived version)."""

    code = "FAILED_PRECONDITION"


class Locked(FailedPrecondition):
    """409 / ``FAILED_PRECONDITION``, reason ``locked``: a lock another run holds (a batch
    job running on another worker, or a crashed run's lock not yet stale); the same call
    succeeds once it is released."""


class PayloadTooLarge(LakescoreError):
    """413: the upload is over the registry's size cap."""

    status = 413
    code = "RESOURCE_EXHAUSTED"


class UnsupportedMediaType(InvalidArgument):
    """415: the wrong content type."""

    status = 415


class RangeNotSatisfiable(InvalidArgument):
    """416 / ``OUT_OF_RANGE``."""

    status = 416
    code = "OUT_OF_RANGE"


class InvalidModel(InvalidArgument):
    """422: the upload is not a valid, self-contained ONNX model (the reason is in ``detail``)."""

    status = 422


class IdempotencyKeyReused(InvalidArgument):
    """422: an ``Idempotency-Key`` sent again with a different request."""

    status = 422


class ResourceExhausted(LakescoreError):
    """429 / ``RESOURCE_EXHAUSTED``: over a configured limit (message, batch, memory)."""

    status = 429
    code = "RESOURCE_EXHAUSTED"


class HeadersTooLarge(ResourceExhausted):
    """431: the request headers (usually a huge bearer token) are over the server's limit."""

    status = 431


class DeadlineExceeded(LakescoreError):
    """504 / ``DEADLINE_EXCEEDED``."""

    status = 504
    code = "DEADLINE_EXCEEDED"


class Cancelled(LakescoreError):
    """499 / ``CANCELLED``."""

    status = 499
    code = "CANCELLED"


class Unimplemented(LakescoreError):
    """501 / ``UNIMPLEMENTED``."""

    status = 501
    code = "UNIMPLEMENTED"


class Unavailable(LakescoreError):
    """503 / ``UNAVAILABLE``: the server or one of its dependencies is down or going away;
    the request may succeed when sent again (to another worker)."""

    status = 503
    code = "UNAVAILABLE"


class DataLoss(LakescoreError):
    """500 / ``DATA_LOSS``: stored bytes are corrupt."""

    status = 500
    code = "DATA_LOSS"


class IntegrityError(DataLoss):
    """A downloaded artifact whose sha256 is not the version's."""


class InternalError(LakescoreError):
    """500 / ``INTERNAL`` (and anything unexpected)."""

    status = 500
    code = "INTERNAL"


_BY_PROBLEM = {
    "bad-request": InvalidArgument,
    "unauthorized": Unauthenticated,
    "forbidden": PermissionDenied,
    "not-found": NotFound,
    "conflict": Conflict,
    "failed-precondition": FailedPrecondition,
    "payload-too-large": PayloadTooLarge,
    "headers-too-large": HeadersTooLarge,
    "unsupported-media-type": UnsupportedMediaType,
    "range-not-satisfiable": RangeNotSatisfiable,
    "invalid-model": InvalidModel,
    "idempotency-key-reused": IdempotencyKeyReused,
    "resource-exhausted": ResourceExhausted,
    "deadline-exceeded": DeadlineExceeded,
    "cancelled": Cancelled,
    "unimplemented": Unimplemented,
    "dependency-unavailable": Unavailable,
    "data-loss": DataLoss,
    "internal": InternalError,
    "locked": Locked,
}

_BY_STATUS = {
    400: InvalidArgument,
    401: Unauthenticated,
    403: PermissionDenied,
    404: NotFound,
    410: NotFound,
    409: Conflict,
    412: FailedPrecondition,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    416: RangeNotSatisfiable,
    422: InvalidModel,
    429: ResourceExhausted,
    431: HeadersTooLarge,
    499: Cancelled,
    500: InternalError,
    501: Unimplemented,
    504: DeadlineExceeded,
}


def from_http(status: int, body: bytes | str | None, reason: str = "") -> LakescoreError:
    """The exception for an HTTP error answer (problem+json or anything else)."""
    problem: dict[str, Any] | None = None
    if body:
        try:
            parsed = json.loads(body)
            if isinstance(parsed, dict):
                problem = parsed
        except ValueError:
            pass
    cls: type[LakescoreError] | None = None
    title = type_ = code_reason = None
    if problem is not None:
        type_ = problem.get("type") if isinstance(problem.get("type"), str) else None
        title = problem.get("title") if isinstance(problem.get("title"), str) else None
        if type_:
            code_reason = type_.rstrip("/").rsplit("/", 1)[-1]
            cls = _BY_PROBLEM.get(code_reason)
        detail = problem.get("detail") or title or reason
    else:
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else (body or "")
        detail = text.strip()[:2000] or reason
    if cls is None:
        cls = _BY_STATUS.get(status) or (Unavailable if status >= 500 else InvalidArgument)
    if not detail:
        detail = f"HTTP {status}"
    return cls(str(detail), status=status, title=title, type=type_, problem=problem, reason=code_reason)


# gRPC status codes by number (google.rpc.Code).
_GRPC_CODE_NAMES = {
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    6: "ALREADY_EXISTS",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    10: "ABORTED",
    11: "OUT_OF_RANGE",
    12: "UNIMPLEMENTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    15: "DATA_LOSS",
    16: "UNAUTHENTICATED",
}

_ERROR_DOMAIN = "lakescore.dev"
_ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo"


def _proto_fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    """The (field number, value) pairs of a protobuf message: varints as ints,
    length-delimited fields as bytes (fixed-width ones are skipped)."""

    def varint(i: int) -> tuple[int, int]:
        value = shift = 0
        while True:
            if i >= len(buf) or shift > 63:
                raise ValueError("truncated varint")
            byte = buf[i]
            value |= (byte & 0x7F) << shift
            i += 1
            if not byte & 0x80:
                return value, i
            shift += 7

    i = 0
    while i < len(buf):
        key, i = varint(i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = varint(i)
            yield number, value
        elif wire == 2:
            size, i = varint(i)
            if i + size > len(buf):
                raise ValueError("truncated field")
            yield number, buf[i : i + size]
            i += size
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        else:
            raise ValueError(f"wire type {wire}")


def status_details(details: bytes) -> tuple[str, str, str] | None:
    """``(reason, gRPC code name, message)`` from a gRPC status's details
    (``grpc-status-details-bin``: a ``google.rpc.Status`` with a ``google.rpc.ErrorInfo``),
    when a lakescore server sent them; None otherwise."""
    try:
        code, message, reason = 0, "", None
        for number, value in _proto_fields(details):
            if number == 1 and isinstance(value, int):
                code = value
            elif number == 2 and isinstance(value, bytes):
                message = value.decode("utf-8", "replace")
            elif number == 3 and isinstance(value, bytes):
                any_fields = dict(_proto_fields(value))
                if any_fields.get(1) != _ERROR_INFO_TYPE.encode():
                    continue
                payload = any_fields.get(2)
                info = dict(_proto_fields(payload)) if isinstance(payload, bytes) else {}
                named = info.get(1)
                if info.get(2) == _ERROR_DOMAIN.encode() and isinstance(named, bytes):
                    reason = named.decode("ascii", "replace")
    except ValueError:
        return None
    if reason is None:
        return None
    return reason, _GRPC_CODE_NAMES.get(code, "UNKNOWN"), message


# pyarrow's Flight client words each gRPC code in its message (arrow/flight/transport/grpc):
# what classifies a status from a server that sent no reason (not lakescore's).
_FLIGHT_PHRASES: list[tuple[str, type[LakescoreError], str]] = [
    ("returned invalid argument error", InvalidArgument, "INVALID_ARGUMENT"),
    ("returned not found error", NotFound, "NOT_FOUND"),
    ("returned already exists error", Conflict, "ALREADY_EXISTS"),
    ("returned unauthenticated error", Unauthenticated, "UNAUTHENTICATED"),
    ("returned unauthorized error", PermissionDenied, "PERMISSION_DENIED"),
    ("returned unimplemented error", Unimplemented, "UNIMPLEMENTED"),
    ("returned unavailable error", Unavailable, "UNAVAILABLE"),
    ("returned timeout error", DeadlineExceeded, "DEADLINE_EXCEEDED"),
    ("cancelled call", Cancelled, "CANCELLED"),
    ("returned resource exhausted error", ResourceExhausted, "RESOURCE_EXHAUSTED"),
    ("returned precondition failed error", FailedPrecondition, "FAILED_PRECONDITION"),
    ("returned aborted error", InternalError, "ABORTED"),
    ("returned out-of-range error", RangeNotSatisfiable, "OUT_OF_RANGE"),
    ("returned data loss error", DataLoss, "DATA_LOSS"),
    ("returned internal error", InternalError, "INTERNAL"),
    ("rpc failed with message", InternalError, "UNKNOWN"),
]

_HTTP_OF_CODE = {
    "INVALID_ARGUMENT": 400,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
    "CANCELLED": 499,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 409,
    "OUT_OF_RANGE": 416,
    "DATA_LOSS": 500,
}

# Transport failures that gRPC reports with another code (a worker killed mid-call): the
# call may succeed elsewhere.
_TRANSPORT_GONE = re.compile(
    r"connection reset|socket closed|broken pipe|rst_stream|failed to connect|connection refused|"
    r"goaway|stream removed|end of tcp stream|transport closing|connection aborted|keepalive",
    re.IGNORECASE,
)


def _flight_message(text: str, marker: str) -> str:
    _, _, rest = text.partition("with message: ")
    msg = rest if rest else text
    for cut in (". gRPC client debug context", "\ngRPC client debug context", ". Client context:", "\nDetail:"):
        idx = msg.find(cut)
        if idx >= 0:
            msg = msg[:idx]
    return msg.strip()


def from_flight(exc: BaseException) -> LakescoreError | None:
    """The exception for an error pyarrow's Flight client raised, or None when it is not
    a gRPC status (a local Arrow error)."""
    if isinstance(exc, LakescoreError):
        return exc
    extra = getattr(exc, "extra_info", None)
    details = status_details(extra) if isinstance(extra, bytes) and extra else None
    if details is not None:
        reason, code, message = details
        cls = _BY_PROBLEM.get(reason)
        if cls is not None:
            err = cls(message, status=_HTTP_OF_CODE.get(code, cls.status), code=code, reason=reason)
            err.__cause__ = exc
            return err
    text = str(exc)
    lowered = text.lower()
    for phrase, cls, code in _FLIGHT_PHRASES:
        if phrase in lowered:
            detail = _flight_message(text, phrase)
            if cls in (InternalError,) and code in ("INTERNAL", "UNKNOWN") and _TRANSPORT_GONE.search(detail):
                cls, code = Unavailable, "UNAVAILABLE"
            err = cls(detail, status=_HTTP_OF_CODE.get(code, 500), code=code)
            err.__cause__ = exc
            return err
    try:
        import pyarrow.flight as flight

        if isinstance(exc, flight.FlightUnavailableError):
            return Unavailable(text)
        if isinstance(exc, flight.FlightUnauthenticatedError):
            return Unauthenticated(text)
        if isinstance(exc, flight.FlightUnauthorizedError):
            return PermissionDenied(text)
        if isinstance(exc, flight.FlightTimedOutError):
            return DeadlineExceeded(text)
        if isinstance(exc, flight.FlightCancelledError):
            return Cancelled(text)
        if isinstance(exc, flight.FlightError):
            if _TRANSPORT_GONE.search(text):
                return Unavailable(text)
            return InternalError(text)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(exc, OSError) and _TRANSPORT_GONE.search(text):
        return Unavailable(text)
    return None

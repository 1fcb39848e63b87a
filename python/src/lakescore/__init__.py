"""lakescore: Python client for the lakescore ONNX model registry and its Arrow Flight
scoring workers.

    from lakescore import Registry, Scorer

    reg = Registry("http://127.0.0.1:8080")
    reg.register("fraud", "model.onnx", alias="champion", create_model=True)

    scorer = Scorer("grpc://127.0.0.1:8815")
    scored = scorer.score(df, model="fraud@champion", feature_columns=[...])

Spark: :func:`lakescore.spark.score` (``pip install 'lakescore[spark]'``).
"""

from . import auth, errors
from .auth import DEFAULT_SCOPE, TokenProvider
from .errors import (
    BadRequest,
    Cancelled,
    Conflict,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    HeadersTooLarge,
    IdempotencyKeyReused,
    IntegrityError,
    InternalError,
    InvalidArgument,
    InvalidModel,
    LakescoreError,
    Locked,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RangeNotSatisfiable,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    UnsupportedMediaType,
)
from .models import Alias, AuditEntry, Grant, Model, ModelVersion, Signature, ValueInfo
from .registry import Registry
from .scoring import Description, ScoreCommand, Scorer, expand_workers

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "Registry",
    "Scorer",
    "Description",
    "ScoreCommand",
    "expand_workers",
    "Model",
    "ModelVersion",
    "Signature",
    "ValueInfo",
    "Alias",
    "Grant",
    "AuditEntry",
    "TokenProvider",
    "DEFAULT_SCOPE",
    "auth",
    "errors",
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

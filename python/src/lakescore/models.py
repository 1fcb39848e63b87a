"""Records the registry answers with, as typed, immutable objects (``raw`` keeps the JSON)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Model", "ModelVersion", "Signature", "ValueInfo", "Alias", "Grant", "AuditEntry"]


@dataclass(frozen=True)
class ValueInfo:
    """One graph input or output: name, ONNX type (``tensor(float)``), element type, shape
    (ints for fixed dims, names for symbolic ones, None where unnamed)."""

    name: str
    type: str
    elem_type: str | None = None
    shape: list[Any] | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ValueInfo:
        return cls(d.get("name", ""), d.get("type", ""), d.get("elem_type"), d.get("shape"))


@dataclass(frozen=True)
class Signature:
    """What the ONNX file says about itself."""

    inputs: list[ValueInfo]
    outputs: list[ValueInfo]
    opset_imports: dict[str, int]
    ir_version: int = 0
    producer_name: str = ""
    producer_version: str = ""
    graph_name: str = ""
    uses_ai_onnx_ml: bool = False
    metadata: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> Signature:
        d = d or {}
        return cls(
            inputs=[ValueInfo.from_json(v) for v in d.get("inputs", [])],
            outputs=[ValueInfo.from_json(v) for v in d.get("outputs", [])],
            opset_imports={o.get("domain") or "ai.onnx": int(o.get("version", 0)) for o in d.get("opset_imports", [])},
            ir_version=int(d.get("ir_version", 0)),
            producer_name=d.get("producer_name", ""),
            producer_version=d.get("producer_version", ""),
            graph_name=d.get("graph_name", ""),
            uses_ai_onnx_ml=bool(d.get("uses_ai_onnx_ml", False)),
            metadata=dict(d.get("metadata") or {}),
        )


@dataclass(frozen=True)
class Model:
    """A registered model."""

    name: str
    description: str
    tags: dict[str, str]
    aliases: dict[str, int]
    latest_version: int | None
    created_at: str
    updated_at: str
    created_by: str
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Model:
        return cls(
            name=d["name"],
            description=d.get("description", ""),
            tags=dict(d.get("tags") or {}),
            aliases={k: int(v) for k, v in (d.get("aliases") or {}).items()},
            latest_version=d.get("latest_version"),
            created_at=d.get("created_at", ""),
            updated_at=d.get("updated_at", ""),
            created_by=d.get("created_by", ""),
            raw=d,
        )


@dataclass(frozen=True)
class ModelVersion:
    """One immutable version; ``reference`` (``name:7``) names exactly it."""

    model: str
    version: int
    sha256: str
    size: int
    status: str
    description: str
    tags: dict[str, str]
    aliases: list[str]
    signature: Signature
    created_at: str
    created_by: str
    backends: dict[str, str]
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @property
    def reference(self) -> str:
        """The pinned reference ``name:version``."""
        return f"{self.model}:{self.version}"

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ModelVersion:
        return cls(
            model=d.get("model", ""),
            version=int(d.get("version", 0)),
            sha256=d.get("sha256", ""),
            size=int(d.get("size", 0)),
            status=d.get("status", "ready"),
            description=d.get("description", ""),
            tags=dict(d.get("tags") or {}),
            aliases=list(d.get("aliases") or []),
            signature=Signature.from_json(d.get("signature")),
            created_at=d.get("created_at", ""),
            created_by=d.get("created_by", ""),
            backends=dict(d.get("backends") or {}),
            raw=d,
        )


@dataclass(frozen=True)
class Alias:
    model: str
    alias: str
    version: int

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Alias:
        return cls(d["model"], d["alias"], int(d["version"]))


@dataclass(frozen=True)
class Grant:
    """``principal`` (``user:<oid>``, ``group:<id>``, ``role:<role>``, ``app:<client id>``)
    may ``permission`` (``read`` / ``write``) the model."""

    principal: str
    permission: str
    granted_at: str = ""
    granted_by: str = ""

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Grant:
        return cls(d["principal"], d["permission"], d.get("granted_at", ""), d.get("granted_by", ""))


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: str
    principal: str
    action: str
    model: str | None
    detail: Any

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> AuditEntry:
        return cls(int(d["id"]), d["at"], d["principal"], d["action"], d.get("model"), d.get("detail"))

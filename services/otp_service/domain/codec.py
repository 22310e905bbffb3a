"""JSON plumbing for stored records: a schema-versioned envelope and typed field readers that fail as CorruptRecord."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypeVar

from services.otp_service.domain.errors import CorruptRecord

T = TypeVar("T")
"""The type a field reader expects."""


def dump(kind: str, schema: int, body: Mapping[str, Any]) -> bytes:
    """Encode `body` as compact, key-sorted JSON tagged with the record kind and schema version."""
    return json.dumps(
        {"kind": kind, "schema": schema, **body}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")


def load(data: bytes, kind: str, schema: int) -> dict[str, Any]:
    """Decode bytes written by `dump` for `kind`, refusing other kinds and schema versions."""
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptRecord(f"{kind} record is not JSON") from exc
    if not isinstance(obj, dict) or obj.get("kind") != kind:
        raise CorruptRecord(f"record is not a {kind}")
    if obj.get("schema") != schema:
        raise CorruptRecord(
            f"{kind} record has an unsupported schema version",
            reason="UNSUPPORTED_SCHEMA",
            metadata={"schema": str(obj.get("schema"))},
        )
    return obj


def field(obj: Mapping[str, Any], name: str, typ: type[T]) -> T:
    """Return obj[name] if it has type `typ` (bool is not accepted as int), else raise CorruptRecord."""
    value = obj.get(name)
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise CorruptRecord(f"record field {name!r} is missing or not a {typ.__name__}")
    return value


def optional(obj: Mapping[str, Any], name: str, typ: type[T]) -> T | None:
    """Return `field` for a value that may be null."""
    if obj.get(name) is None:
        return None
    return field(obj, name, typ)

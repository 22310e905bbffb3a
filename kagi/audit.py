"""The CA's tamper-evident audit trail: records hash-chained with SHA-256, and a verifier for the chain.

Each record carries the hash of the one before it and its own hash over a canonical JSON encoding, so
changing, deleting or reordering any record breaks the chain at that point; truncating the tail is caught
by comparing the last hash with a head hash kept elsewhere (`expected_head`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kagi.clock import Clock, utc_datetime
from kagi.errors import InvalidArgument

GENESIS_HASH = "0" * 64
"""The previous-hash of the first record in a chain."""


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One audited CA event (issue, revoke, CRL, key change), chained to its predecessor."""

    sequence: int
    at: str
    actor: str
    action: str
    subject: str
    details: tuple[tuple[str, str], ...]
    previous_hash: str
    hash: str

    def body(self) -> dict[str, Any]:
        """Return every field except `hash`: what the hash is computed over."""
        return {
            "sequence": self.sequence,
            "at": self.at,
            "actor": self.actor,
            "action": self.action,
            "subject": self.subject,
            "details": [list(pair) for pair in self.details],
            "previous_hash": self.previous_hash,
        }

    def computed_hash(self) -> str:
        """Return the SHA-256 (hex) of the canonical encoding of the body."""
        return _hash(self.body())

    def to_json(self) -> bytes:
        """Encode the record (hash included) for the store."""
        return _canonical({**self.body(), "hash": self.hash})

    @classmethod
    def from_json(cls, data: bytes) -> AuditRecord:
        """Decode a stored record (its hash is checked only by verify_audit_chain)."""
        try:
            raw = json.loads(data)
            return cls(
                sequence=int(raw["sequence"]),
                at=str(raw["at"]),
                actor=str(raw["actor"]),
                action=str(raw["action"]),
                subject=str(raw["subject"]),
                details=tuple((str(k), str(v)) for k, v in raw["details"]),
                previous_hash=str(raw["previous_hash"]),
                hash=str(raw["hash"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidArgument("audit record cannot be decoded", reason="AUDIT_RECORD_MALFORMED") from exc


def next_audit_record(
    previous: AuditRecord | None,
    *,
    clock: Clock,
    actor: str,
    action: str,
    subject: str,
    details: Mapping[str, str] | None = None,
) -> AuditRecord:
    """Build the record that follows `previous` (None: the first of the chain).

    Never put a secret in `details`: the trail is read by auditors and kept for years.
    """
    pairs = tuple(sorted((str(key), str(value)) for key, value in (details or {}).items()))
    sequence = 0 if previous is None else previous.sequence + 1
    previous_hash = GENESIS_HASH if previous is None else previous.hash
    at = utc_datetime(clock).isoformat(timespec="microseconds").replace("+00:00", "Z")
    unsigned = AuditRecord(sequence, at, actor, action, subject, pairs, previous_hash, hash="")
    return AuditRecord(sequence, at, actor, action, subject, pairs, previous_hash, unsigned.computed_hash())


@dataclass(frozen=True, slots=True)
class AuditVerification:
    """The verdict on a chain: ok, or the first bad sequence position and why."""

    ok: bool
    checked: int
    first_bad_index: int | None = None
    problem: str = ""


def verify_audit_chain(
    records: Iterable[AuditRecord],
    *,
    anchor: AuditRecord | None = None,
    expected_head: str | None = None,
) -> AuditVerification:
    """Check a run of records in order.

    `anchor` is the trusted record just before the run (None: the run starts the chain). `expected_head`,
    when given, is the hash the last record must have (catches a truncated tail).
    """
    expected_sequence = 0 if anchor is None else anchor.sequence + 1
    expected_previous = GENESIS_HASH if anchor is None else anchor.hash
    checked = 0
    last_hash = expected_previous
    for index, record in enumerate(records):
        if record.computed_hash() != record.hash:
            return AuditVerification(False, checked, index, "record content does not match its hash (modified)")
        if record.sequence != expected_sequence:
            return AuditVerification(
                False,
                checked,
                index,
                f"sequence {record.sequence} where {expected_sequence} was expected (deleted or reordered)",
            )
        if record.previous_hash != expected_previous:
            return AuditVerification(False, checked, index, "previous-hash link broken (deleted or reordered)")
        checked += 1
        expected_sequence += 1
        expected_previous = last_hash = record.hash
    if expected_head is not None and last_hash != expected_head:
        return AuditVerification(False, checked, checked, "chain does not end at the expected head (truncated)")
    return AuditVerification(True, checked)


def _canonical(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _hash(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(_canonical(body)).hexdigest()

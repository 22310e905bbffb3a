"""The CA's OCSP answer cache: signed answers to nonce-less OCSP requests, kept per request (its DER bytes).

Why per request bytes: a cached answer is then found without parsing the request at all (the gateway asks
about one certificate with the same bytes every time), and a request that differs by one byte (a nonce, another
encoding of the same CertID) is simply another entry, looked up after parsing.

An entry remembers the certificate it is about (issuer, serial), the store version of the record it was signed
from (None for a serial the CA never issued) and until when it is served: half its validity, so a client never
gets a nearly stale answer. `invalidate` drops every entry of a serial whose status changed and counts the
invalidations, so that whoever read a status before an invalidation does not put an answer signed from it
afterwards. Bounded: the oldest entries go first. One per event loop (not thread-safe).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from services.ca_service.domain.settings import CaKind

_Slot = tuple[CaKind, int]


@dataclass(frozen=True, slots=True)
class OcspAnswer:
    """A DER OCSP response with its certificate status and nextUpdate (None for errors and
    unknown serials)."""

    der: bytes
    status: str
    next_update: datetime | None


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """An answer with the record version it was signed from (None: unknown serial) and until
    when (POSIX seconds) it is served."""

    answer: OcspAnswer
    issuer: CaKind
    serial: int
    version: int | None
    fresh_until: float


class OcspAnswerCache:
    """Keeps signed answers per request bytes; see the module docstring."""

    def __init__(self, max_entries: int) -> None:
        self._max_entries = max_entries
        self._entries: dict[bytes, CachedAnswer] = {}
        self._by_serial: dict[_Slot, list[bytes]] = {}
        self.invalidations = 0
        """Counts `invalidate` calls: read it before a status read, compare it before `put`."""

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, request: bytes, now: float) -> CachedAnswer | None:
        """Return the entry for the request bytes REQUEST while it is fresh at NOW, else None."""
        entry = self._entries.get(request)
        if entry is None or now >= entry.fresh_until:
            return None
        return entry

    def put(self, request: bytes, entry: CachedAnswer) -> None:
        """Keep ENTRY for the request bytes REQUEST, in place of any older one; drop the oldest beyond the bound."""
        if self._max_entries <= 0:
            return
        if request in self._entries:
            self._forget(request)
        while len(self._entries) >= self._max_entries:
            self._forget(next(iter(self._entries)))
        self._entries[request] = entry
        self._by_serial.setdefault((entry.issuer, entry.serial), []).append(request)

    def invalidate(self, issuer: CaKind, serial: int) -> None:
        """Drop every answer about ISSUER's SERIAL (its status changed) and count the invalidation."""
        self.invalidations += 1
        for request in self._by_serial.pop((issuer, serial), ()):
            self._entries.pop(request, None)

    def clear(self) -> None:
        """Drop every answer (counted as an invalidation)."""
        self.invalidations += 1
        self._entries.clear()
        self._by_serial.clear()

    def _forget(self, request: bytes) -> None:
        entry = self._entries.pop(request)
        slot = (entry.issuer, entry.serial)
        requests = self._by_serial.get(slot)
        if requests is not None:
            requests.remove(request)
            if not requests:
                del self._by_serial[slot]

"""The gateway's OCSP response cache: signed answers to nonce-less OCSP requests, kept per CertID.

What is served from it, and when:

- Only requests without a nonce extension. A request with a nonce always goes to the CA, since the nonce is
  echoed inside the signed response and so makes every answer unique.
- The key is the request's CertID (hash algorithm, issuer name hash, issuer key hash, serial), read with
  cryptography, never the raw bytes: an RFC 5019 GET, a POST and another DER encoding of the same CertID share
  one entry. Requests cryptography cannot read (undecodable, or naming several certificates) are forwarded to
  the CA as before, uncached.
- Only successful answers of status good or revoked that carry a nextUpdate, and no nonce, are kept. An entry
  is served until a little before its nextUpdate (`refresh_margin`), never past it; then the next request goes
  to the CA and replaces it.
- Bounded: at most `max_entries` CertIDs, the least recently used going first. 0 turns the cache off.

Invalidation, failing towards freshness:

- The revocation stream (kagi.clients.revocation.RevocationRegistry) reports each revoked serial; every answer for
  that serial is dropped at once. An answer for a serial revoked in the last `REVOKED_GRACE` seconds is not
  kept either: it may have been fetched before the revocation, or from a CA replica that has not heard of it
  yet (each replica reads the revocation feed on its own).
- While the registry is not live (the stream down, or the CRL not loaded since it reconnected), a revocation
  could be missed, so nothing is served from the cache and nothing is stored: every request goes to the CA.
- Each (re)connection of the stream starts a new epoch, and the cache is emptied when it sees one: an answer
  learnt before the stream broke may predate a revocation made while it was down.

The promise is thus the revocation stream's: an answer this gateway gives is at most a couple of seconds behind
a revocation, and exactly the CA's while the stream is down.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.x509 import ocsp

from kagi.clients.revocation import RevocationRegistry

REVOKED_GRACE = 10.0
"""How long (seconds) after the stream reports a serial revoked no answer for it is kept: far
longer than a CA replica takes to read the revocation feed (a quarter of a second)."""

REFRESH_BEFORE = 300.0
"""Caps how long before its nextUpdate an entry is refreshed (seconds)."""

DEFAULT_MAX_ENTRIES = 10_000
"""Bounds the cache: a response with the delegated signer's certificate is about 1 KiB."""


@dataclass(frozen=True, slots=True)
class CertId:
    """The certificate an OCSP request asks about (RFC 6960 CertID): what a cached answer is kept under."""

    hash_algorithm: str
    issuer_name_hash: bytes
    issuer_key_hash: bytes
    serial: int


@dataclass(frozen=True, slots=True)
class OcspQuestion:
    """The CertID of a single-certificate OCSP request, and whether the request carries a nonce."""

    cert_id: CertId
    has_nonce: bool


def read_ocsp_request(der: bytes) -> OcspQuestion | None:
    """Return the CertID and nonce presence of an OCSP request, or None when cryptography cannot read it."""
    try:
        request = ocsp.load_der_ocsp_request(der)
        cert_id = CertId(
            request.hash_algorithm.name,
            request.issuer_name_hash,
            request.issuer_key_hash,
            request.serial_number,
        )
        has_nonce = any(isinstance(extension.value, x509.OCSPNonce) for extension in request.extensions)
    except (ValueError, UnsupportedAlgorithm):
        # Several CertIDs, bad DER, an unknown hash or a broken extension: the CA decides what to answer.
        return None
    return OcspQuestion(cert_id, has_nonce)


@dataclass(frozen=True, slots=True)
class OcspAnswer:
    """A signed OCSP response the CA gave, with its HTTP caching headers' values (RFC 5019 section 6).

    The headers that never change are written once, when the answer arrives: a cached answer is served many
    times, and formatting HTTP dates costs more than the lookup.
    """

    der: bytes
    this_update: datetime
    next_update: datetime
    etag: str
    last_modified: str
    expires: str

    @classmethod
    def of(cls, der: bytes, this_update: datetime, next_update: datetime) -> OcspAnswer:
        """Build the answer for DER, its ETag the SHA-1 of the response (RFC 5019 section 6.2)."""
        # The ETag names the response; it protects nothing.
        etag = '"' + hashlib.sha1(der, usedforsecurity=False).hexdigest() + '"'
        return cls(der, this_update, next_update, etag, http_date(this_update), http_date(next_update))

    def max_age(self, now: float) -> int:
        """Return the seconds from NOW (POSIX) to nextUpdate, for Cache-Control max-age (0 once past)."""
        return max(0, int(self.next_update.timestamp() - now))


def http_date(moment: datetime) -> str:
    """Return MOMENT as an HTTP date (RFC 9110 IMF-fixdate, GMT)."""
    return format_datetime(moment.astimezone(UTC), usegmt=True)


@dataclass(frozen=True, slots=True)
class _Entry:
    answer: OcspAnswer
    fresh_until: float


def refresh_margin(this_update: datetime, next_update: datetime) -> float:
    """Return how long before NEXT_UPDATE an answer stops being served: a quarter of its validity, 5 min at most."""
    return min(REFRESH_BEFORE, max(0.0, (next_update - this_update).total_seconds()) / 4)


class OcspResponseCache:
    """Answers to nonce-less OCSP requests by CertID, dropped on revocation, bypassed while the stream is down."""

    def __init__(
        self,
        revocation: RevocationRegistry,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        *,
        wall_clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._revocation = revocation
        self._max_entries = max_entries
        self._wall_clock = wall_clock
        self._monotonic = monotonic
        self._entries: OrderedDict[CertId, _Entry] = OrderedDict()
        # Serial -> the CertIDs cached for it (one per CertID hash algorithm and issuer), to drop them at once.
        self._by_serial: dict[int, set[CertId]] = {}
        # Serial -> when the stream reported it revoked, oldest first; None stands for "some unknown serial".
        self._revoked_recently: OrderedDict[int | None, float] = OrderedDict()
        self._epoch = revocation.epoch
        revocation.on_revocation(self._revoked)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def enabled(self) -> bool:
        """Tell whether the cache keeps anything at all (a size of 0 turns it off)."""
        return self._max_entries > 0

    def get(self, cert_id: CertId) -> OcspAnswer | None:
        """Return the answer to serve for CERT_ID, or None when the request must go to the CA."""
        if not self._usable():
            return None
        entry = self._entries.get(cert_id)
        if entry is None:
            return None
        if self._wall_clock() >= entry.fresh_until:
            self._drop(cert_id)
            return None
        self._entries.move_to_end(cert_id)
        return entry.answer

    def ticket(self) -> int | None:
        """Return the epoch to store a CA answer under, taken before asking the CA; None: it cannot be stored."""
        return self._epoch if self._usable() else None

    def put(self, cert_id: CertId, answer: OcspAnswer, ticket: int | None) -> bool:
        """Keep ANSWER for CERT_ID if it is still worth serving and nothing changed since TICKET was taken."""
        if ticket is None or not self._usable() or ticket != self._epoch:
            return False
        if self._recently_revoked(cert_id.serial):
            return False
        fresh_until = answer.next_update.timestamp() - refresh_margin(answer.this_update, answer.next_update)
        if self._wall_clock() >= fresh_until:
            return False
        self._drop(cert_id)
        self._entries[cert_id] = _Entry(answer, fresh_until)
        self._by_serial.setdefault(cert_id.serial, set()).add(cert_id)
        while len(self._entries) > self._max_entries:
            self._drop(next(iter(self._entries)))
        return True

    def clear(self) -> None:
        """Drop every cached answer."""
        self._entries.clear()
        self._by_serial.clear()

    def _usable(self) -> bool:
        if self._max_entries <= 0 or not self._revocation.live:
            return False
        epoch = self._revocation.epoch
        if epoch != self._epoch:
            # The stream reconnected: whatever was revoked while it was down never reached this cache.
            self.clear()
            self._epoch = epoch
        return True

    def _drop(self, cert_id: CertId) -> None:
        if self._entries.pop(cert_id, None) is None:
            return
        same_serial = self._by_serial.get(cert_id.serial)
        if same_serial is not None:
            same_serial.discard(cert_id)
            if not same_serial:
                del self._by_serial[cert_id.serial]

    def _revoked(self, issuer: int, serial: int | None) -> None:
        # Any issuer: the CertID's issuer hashes are not the stream's issuer enum, and a serial is rarely shared.
        if serial is None:
            self.clear()  # an event naming no readable serial: any answer may be stale
        else:
            for cert_id in list(self._by_serial.get(serial, ())):
                self._drop(cert_id)
        now = self._monotonic()
        self._revoked_recently.pop(serial, None)
        self._revoked_recently[serial] = now
        while self._revoked_recently:
            oldest, at = next(iter(self._revoked_recently.items()))
            if at > now - REVOKED_GRACE:
                break
            del self._revoked_recently[oldest]

    def _recently_revoked(self, serial: int) -> bool:
        horizon = self._monotonic() - REVOKED_GRACE
        return any(self._revoked_recently.get(key, -math.inf) > horizon for key in (serial, None))

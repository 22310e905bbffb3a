"""Publishing CRLs: built from the store's revoked index, numbered by a store counter, kept in the store.

Every replica serves the CRL last published in the store, so all of them hand out the same bytes. A
revocation asks its replica to rebuild after a short debounce (a burst of revocations makes one CRL); other
replicas hear of the revocation on the feed and rebuild only if, a few seconds later, the published CRL still
does not cover it (the revoking replica crashed). A CRL is also rebuilt once half its validity has passed, so
none is ever served close to its nextUpdate. CRL numbers come from `increment`, atomic across replicas, and a
publication is a compare-and-swap on the metadata: a replica never replaces a newer CRL with an older one.

The DER is kept in parts of at most 1 MiB (a 100k-entry CRL is about 5 MB; a store value is at most 4 MiB).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass

import structlog

from kagi.clock import Clock
from kagi.errors import Unavailable
from kagi.store.base import Create, Delete, KeyExists, KeyValueStore, Operation, Replace, VersionMismatch
from services.ca_service.app.feed import RevocationNotice
from services.ca_service.app.records import status_from_crl_entry
from services.ca_service.app.repository import CRL, CRL_NUMBERS, crl_parts, revoked_collection
from services.ca_service.domain.authority import CertificateAuthority
from services.ca_service.domain.crl import build_crl
from services.ca_service.domain.hierarchy import ISSUING_KINDS
from services.ca_service.domain.revocation import CertificateStatus
from services.ca_service.domain.settings import CaKind, PkiSettings

log = structlog.get_logger("kagi.ca.crl")

PART_BYTES = 1024 * 1024
"""PART_BYTES is the size of the parts a CRL's DER is stored in."""

COVER_MARGIN = 1.0
"""COVER_MARGIN: a CRL listed this long after a revocation's feed stamp surely includes it (commit latency)."""


@dataclass(frozen=True, slots=True)
class PublishedCrl:
    """PublishedCrl is a signed CRL as published in the store."""

    issuer: CaKind
    der: bytes
    number: int
    this_update: int
    next_update: int
    listed_at: float
    entry_count: int


@dataclass(frozen=True, slots=True)
class _Meta:
    number: int
    this_update: int
    next_update: int
    listed_at: float
    parts: int
    sha256: str
    entries: int

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "number": self.number,
                "this_update": self.this_update,
                "next_update": self.next_update,
                "listed_at": self.listed_at,
                "parts": self.parts,
                "sha256": self.sha256,
                "entries": self.entries,
            }
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> _Meta:
        raw = json.loads(data)
        return cls(
            int(raw["number"]),
            int(raw["this_update"]),
            int(raw["next_update"]),
            float(raw["listed_at"]),
            int(raw["parts"]),
            str(raw["sha256"]),
            int(raw["entries"]),
        )


def _part_key(number: int, index: int) -> str:
    return f"{number:020d}.{index:04d}"


async def revoked_statuses(store: KeyValueStore, issuer: CaKind) -> list[CertificateStatus]:
    """revoked_statuses lists every revoked certificate of `issuer` from the store's revoked index."""
    collection = revoked_collection(issuer)
    statuses: list[CertificateStatus] = []
    token = ""
    while True:
        page = await store.list(collection, page_size=1000, page_token=token)
        statuses += [status_from_crl_entry(issuer, entry.key, entry.value) for entry in page.entries]
        token = page.next_page_token
        if not token:
            return statuses


class CrlPublisher:
    """CrlPublisher builds, publishes and serves the CRLs of the issuing CAs."""

    def __init__(
        self,
        store: KeyValueStore,
        authorities: Mapping[CaKind, CertificateAuthority],
        settings: PkiSettings,
        clock: Clock,
        *,
        debounce: float = 1.0,
        cover_grace: float = 3.0,
        check_interval: float = 60.0,
    ) -> None:
        self._store = store
        self._authorities = dict(authorities)
        self._settings = settings
        self._clock = clock
        self._debounce = debounce
        self._cover_grace = cover_grace
        self._check_interval = check_interval
        self._locks = {kind: asyncio.Lock() for kind in ISSUING_KINDS}
        self._dirty = dict.fromkeys(ISSUING_KINDS, False)
        self._scheduled: dict[CaKind, asyncio.Task[None]] = {}
        self._covering: dict[CaKind, asyncio.Task[None]] = {}
        self._uncovered: dict[CaKind, float] = {}
        self._cache: dict[CaKind, tuple[int, PublishedCrl]] = {}
        self._periodic: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start begins the periodic freshness check."""
        if self._periodic is None or self._periodic.done():
            self._periodic = asyncio.get_running_loop().create_task(self._run_periodic())

    async def stop(self) -> None:
        """Stop cancels pending rebuilds and the periodic check."""
        tasks = [t for t in (self._periodic, *self._scheduled.values(), *self._covering.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def request_rebuild(self, issuer: CaKind, *, delay: float | None = None) -> None:
        """Request_rebuild asks for a new CRL of `issuer` after the debounce; requests meanwhile are merged."""
        self._dirty[issuer] = True
        task = self._scheduled.get(issuer)
        if task is None or task.done():
            wait = self._debounce if delay is None else delay
            self._scheduled[issuer] = asyncio.get_running_loop().create_task(self._debounced(issuer, wait))

    def on_revocation(self, notice: RevocationNotice) -> None:
        """On_revocation (a feed listener) makes sure, after a grace period, that some CRL covers `notice`."""
        stamped = notice.observed_at
        self._uncovered[notice.issuer] = max(self._uncovered.get(notice.issuer, 0.0), stamped)
        task = self._covering.get(notice.issuer)
        if task is None or task.done():
            self._covering[notice.issuer] = asyncio.get_running_loop().create_task(self._ensure_covered(notice.issuer))

    async def current(self, issuer: CaKind) -> PublishedCrl:
        """Current returns the published CRL of `issuer`, building one first when none is fresh enough."""
        if self._dirty[issuer]:
            # This replica revoked something the published CRL may lack: publish now rather than after the
            # debounce, so a caller that revoked and then fetched the CRL finds its revocation in it.
            self._dirty[issuer] = False
            return await self.rebuild(issuer)
        entry = await self._store.get(CRL, issuer.value)
        if entry is not None:
            meta = _Meta.from_json(entry.value)
            if not self._stale(meta):
                return await self._load(issuer, meta, entry.version)
        return await self.rebuild(issuer, only_if_stale=True)

    async def rebuild(self, issuer: CaKind, *, only_if_stale: bool = False) -> PublishedCrl:
        """Rebuild lists the revoked index, signs the next-numbered CRL and publishes it.

        With `only_if_stale`, a fresh CRL published meanwhile (by this or another replica) is returned instead.
        """
        async with self._locks[issuer]:
            for _ in range(5):
                entry = await self._store.get(CRL, issuer.value)
                previous = _Meta.from_json(entry.value) if entry is not None else None
                if only_if_stale and previous is not None and entry is not None and not self._stale(previous):
                    return await self._load(issuer, previous, entry.version)
                published = await self._build_and_publish(issuer, previous, entry.version if entry else None)
                if published is not None:
                    return published
            raise Unavailable("the CRL could not be published (too many concurrent publications)", reason="CRL_BUSY")

    async def _build_and_publish(
        self, issuer: CaKind, previous: _Meta | None, version: int | None
    ) -> PublishedCrl | None:
        listed_at = self._clock.now()
        started = time.perf_counter()
        statuses = await revoked_statuses(self._store, issuer)
        number = await self._store.increment(CRL_NUMBERS, issuer.value)
        ca = self._authorities[issuer]
        # Signing 100k entries takes a few hundred ms of CPU: off the event loop, so RPCs keep flowing.
        signed = await asyncio.to_thread(
            build_crl, ca, statuses, crl_number=number, settings=self._settings, clock=self._clock
        )
        der = signed.der
        meta = _Meta(
            number=number,
            this_update=int(signed.this_update.timestamp()),
            next_update=int(signed.next_update.timestamp()),
            listed_at=listed_at,
            parts=max(1, -(-len(der) // PART_BYTES)),
            sha256=hashlib.sha256(der).hexdigest(),
            entries=signed.entry_count,
        )
        collection = crl_parts(issuer)
        operations: list[Operation] = [
            Create(CRL, issuer.value, meta.to_json())
            if version is None
            else Replace(CRL, issuer.value, meta.to_json(), version)
        ]
        operations += [
            Create(collection, _part_key(number, i), der[i * PART_BYTES : (i + 1) * PART_BYTES])
            for i in range(meta.parts)
        ]
        if previous is not None:
            operations += [Delete(collection, _part_key(previous.number, i)) for i in range(previous.parts)]
        try:
            results = await self._store.commit(operations)
        except (VersionMismatch, KeyExists):
            return None  # another replica published meanwhile: look again
        published = PublishedCrl(issuer, der, number, meta.this_update, meta.next_update, listed_at, signed.entry_count)
        head = results[0]
        if head is not None:
            self._cache[issuer] = (head.version, published)
        log.info(
            "crl published",
            issuer=issuer.value,
            crl_number=number,
            entries=signed.entry_count,
            bytes=len(der),
            ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return published

    async def _load(self, issuer: CaKind, meta: _Meta, version: int) -> PublishedCrl:
        cached = self._cache.get(issuer)
        if cached is not None and cached[0] == version:
            return cached[1]
        collection = crl_parts(issuer)
        parts = []
        for index in range(meta.parts):
            part = await self._store.get(collection, _part_key(meta.number, index))
            if part is None:
                # Replaced between our two reads: the caller's next call sees the newer CRL.
                raise Unavailable("the CRL is being replaced; retry", reason="CRL_BUSY")
            parts.append(part.value)
        der = b"".join(parts)
        if hashlib.sha256(der).hexdigest() != meta.sha256:
            raise Unavailable("the stored CRL does not match its digest; retry", reason="CRL_BUSY")
        published = PublishedCrl(
            issuer, der, meta.number, meta.this_update, meta.next_update, meta.listed_at, meta.entries
        )
        self._cache[issuer] = (version, published)
        return published

    def _stale(self, meta: _Meta) -> bool:
        now = self._clock.now()
        return now >= meta.this_update + (meta.next_update - meta.this_update) / 2

    async def _debounced(self, issuer: CaKind, wait: float) -> None:
        await asyncio.sleep(wait)
        while self._dirty[issuer]:
            self._dirty[issuer] = False
            try:
                await self.rebuild(issuer)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("crl rebuild failed; will retry", issuer=issuer.value, error=str(exc))
                self._dirty[issuer] = True
                await asyncio.sleep(max(self._debounce, 1.0))

    async def _ensure_covered(self, issuer: CaKind) -> None:
        while issuer in self._uncovered:
            await asyncio.sleep(self._cover_grace)
            stamped = self._uncovered.pop(issuer, 0.0)
            try:
                entry = await self._store.get(CRL, issuer.value)
            except Exception as exc:
                log.warning("crl coverage check failed", issuer=issuer.value, error=str(exc))
                self.request_rebuild(issuer)
                continue
            meta = _Meta.from_json(entry.value) if entry is not None else None
            if meta is None or meta.listed_at - COVER_MARGIN < stamped:
                self.request_rebuild(issuer, delay=0.0)

    async def _run_periodic(self) -> None:
        while True:
            for issuer in ISSUING_KINDS:
                try:
                    await self.current(issuer)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("crl freshness check failed", issuer=issuer.value, error=str(exc))
            await asyncio.sleep(self._check_interval)

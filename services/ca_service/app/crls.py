"""Publishing CRLs: built from the store's revoked index, numbered by a store counter, kept in the store.

Every replica serves the CRL last published in the store, so all of them hand out the same bytes. A
revocation asks its replica to rebuild after a short debounce (a burst of revocations makes one CRL); other
replicas hear of the revocation on the feed and rebuild only if, a few seconds later, the published CRL still
does not cover it (the revoking replica crashed). A CRL is also rebuilt once half its validity has passed, so
none is ever served close to its nextUpdate. CRL numbers come from `increment`, atomic across replicas, and a
publication is a compare-and-swap on the metadata: a replica never replaces a newer CRL with an older one.

The DER is kept in parts of at most 1 MiB (a 100k-entry CRL is about 5 MB; a store value is at most 4 MiB): the
repository splits and joins them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping

import structlog

from kagi.clock import Clock
from kagi.errors import Unavailable
from services.ca_service.app.feed import RevocationNotice
from services.ca_service.app.records import CrlMeta, PublishedCrl
from services.ca_service.app.repository import CaRepository
from services.ca_service.domain.authority import CertificateAuthority
from services.ca_service.domain.crl import build_crl
from services.ca_service.domain.hierarchy import ISSUING_KINDS
from services.ca_service.domain.settings import CaKind, PkiSettings

log = structlog.get_logger("kagi.ca.crl")

COVER_MARGIN = 1.0
"""A CRL listed this long after a revocation's feed stamp surely includes it (commit latency)."""


class CrlPublisher:
    """Builds, publishes and serves the CRLs of the issuing CAs."""

    def __init__(
        self,
        repository: CaRepository,
        authorities: Mapping[CaKind, CertificateAuthority],
        settings: PkiSettings,
        clock: Clock,
        *,
        debounce: float = 1.0,
        cover_grace: float = 3.0,
        check_interval: float = 60.0,
    ) -> None:
        self._repository = repository
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
        """Begin the periodic freshness check, after making sure the published CRLs cover the store's revocations."""
        if self._periodic is None or self._periodic.done():
            self._periodic = asyncio.get_running_loop().create_task(self._run_periodic())

    async def stop(self) -> None:
        """Cancel pending rebuilds and the periodic check."""
        tasks = [t for t in (self._periodic, *self._scheduled.values(), *self._covering.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def request_rebuild(self, issuer: CaKind, *, delay: float | None = None) -> None:
        """Ask for a new CRL of ISSUER after the debounce; requests meanwhile are merged."""
        self._dirty[issuer] = True
        task = self._scheduled.get(issuer)
        if task is None or task.done():
            wait = self._debounce if delay is None else delay
            self._scheduled[issuer] = asyncio.get_running_loop().create_task(self._debounced(issuer, wait))

    def on_revocation(self, notice: RevocationNotice) -> None:
        """Make sure, after a grace period, that some CRL covers NOTICE (a feed listener)."""
        stamped = notice.observed_at
        self._uncovered[notice.issuer] = max(self._uncovered.get(notice.issuer, 0.0), stamped)
        task = self._covering.get(notice.issuer)
        if task is None or task.done():
            self._covering[notice.issuer] = asyncio.get_running_loop().create_task(self._ensure_covered(notice.issuer))

    async def current(self, issuer: CaKind) -> PublishedCrl:
        """Return the published CRL of ISSUER, building one first when none is fresh enough."""
        if self._dirty[issuer]:
            # This replica revoked something the published CRL may lack: publish now rather than after the
            # debounce, so a caller that revoked and then fetched the CRL finds its revocation in it.
            self._dirty[issuer] = False
            return await self.rebuild(issuer)
        published = await self._repository.crl(issuer)
        if published is not None and not self._stale(published[0]):
            return await self._load(issuer, *published)
        return await self.rebuild(issuer, only_if_stale=True)

    async def rebuild(self, issuer: CaKind, *, only_if_stale: bool = False) -> PublishedCrl:
        """List the revoked certificates, sign the next-numbered CRL and publish it.

        With `only_if_stale`, a fresh CRL published meanwhile (by this or another replica) is returned instead.
        """
        async with self._locks[issuer]:
            for _ in range(5):
                previous = await self._repository.crl(issuer)
                if only_if_stale and previous is not None and not self._stale(previous[0]):
                    return await self._load(issuer, *previous)
                published = await self._build_and_publish(issuer, previous)
                if published is not None:
                    return published
            raise Unavailable("the CRL could not be published (too many concurrent publications)", reason="CRL_BUSY")

    async def _build_and_publish(self, issuer: CaKind, previous: tuple[CrlMeta, int] | None) -> PublishedCrl | None:
        listed_at = self._clock.now()
        started = time.perf_counter()
        statuses = await self._repository.revoked_statuses(issuer)
        number = await self._repository.next_crl_number(issuer)
        ca = self._authorities[issuer]
        # Signing 100k entries takes a few hundred ms of CPU: off the event loop, so RPCs keep flowing.
        signed = await asyncio.to_thread(
            build_crl, ca, statuses, crl_number=number, settings=self._settings, clock=self._clock
        )
        der = signed.der
        published = PublishedCrl(
            issuer,
            der,
            number,
            int(signed.this_update.timestamp()),
            int(signed.next_update.timestamp()),
            listed_at,
            signed.entry_count,
        )
        version = await self._repository.publish_crl(published, replacing=previous)
        if version is None:
            return None  # another replica published meanwhile: look again
        self._cache[issuer] = (version, published)
        log.info(
            "crl published",
            issuer=issuer.value,
            crl_number=number,
            entries=signed.entry_count,
            bytes=len(der),
            ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return published

    async def _load(self, issuer: CaKind, meta: CrlMeta, version: int) -> PublishedCrl:
        cached = self._cache.get(issuer)
        if cached is not None and cached[0] == version:
            return cached[1]
        der = await self._repository.crl_der(issuer, meta)
        published = PublishedCrl(
            issuer, der, meta.number, meta.this_update, meta.next_update, meta.listed_at, meta.entries
        )
        self._cache[issuer] = (version, published)
        return published

    def _stale(self, meta: CrlMeta) -> bool:
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
                published = await self._repository.crl(issuer)
            except Exception as exc:
                log.warning("crl coverage check failed", issuer=issuer.value, error=str(exc))
                self.request_rebuild(issuer)
                continue
            if published is None or published[0].listed_at - COVER_MARGIN < stamped:
                self.request_rebuild(issuer, delay=0.0)

    async def _cover_stored_revocations(self) -> None:
        """Publish a CRL for each issuer whose published one predates a revocation in the store: one committed
        just before a crash whose debounced CRL never came, or before the snapshot a store was restored from."""
        for issuer in ISSUING_KINDS:
            try:
                statuses = await self._repository.revoked_statuses(issuer)
                published = await self._repository.crl(issuer)
                latest = max((s.revocation.revoked_at.timestamp() for s in statuses if s.revocation), default=None)
                if latest is not None and (published is None or published[0].listed_at - COVER_MARGIN < latest):
                    await self.rebuild(issuer)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("crl coverage check at start failed", issuer=issuer.value, error=str(exc))

    async def _run_periodic(self) -> None:
        await self._cover_stored_revocations()
        while True:
            for issuer in ISSUING_KINDS:
                try:
                    await self.current(issuer)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("crl freshness check failed", issuer=issuer.value, error=str(exc))
            await asyncio.sleep(self._check_interval)

"""The CA's own check of its callers: an internal certificate it revoked is refused by the CA too, within 2 s.

The other services follow the CA's revocation stream (kagi.clients.revocation); the CA reads its own records.
A serial seen revoked (in its records, or on the revocation feed, which brings every replica's revocations
within a quarter of a second) is refused for good; a serial found good is trusted for `good_for` seconds (1 by
default) before the records are read again, so a revocation on any replica takes effect within that time even
while the feed lags. When the records cannot be read (the store is down), the call fails closed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from kagi.errors import ErrorKind, KagiError, Unauthenticated, Unavailable
from services.ca_service.app.feed import RevocationFeed, RevocationNotice
from services.ca_service.app.revocation import Revocation
from services.ca_service.domain.settings import CaKind

_GOOD_LIMIT = 65536


class CallerRevocations:
    """Refuses a caller whose internal certificate the CA revoked (the CA server's peer check)."""

    def __init__(
        self,
        revocation: Revocation,
        feed: RevocationFeed,
        *,
        good_for: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._revocation = revocation
        self._good_for = good_for
        self._monotonic = monotonic
        self._revoked: set[int] = set()
        self._good_until: dict[int, float] = {}
        feed.add_listener(self._noticed)

    async def check_peer(self, serial: int) -> None:
        """Raise Unauthenticated when SERIAL is revoked, Unavailable when the records cannot be read."""
        if serial in self._revoked:
            raise _revoked()
        now = self._monotonic()
        if self._good_until.get(serial, 0.0) > now:
            return
        try:
            answer = await self._revocation.status(format(serial, "x"), CaKind.INTERNAL)
        except KagiError as exc:
            if exc.kind is not ErrorKind.UNAVAILABLE:
                raise
            raise Unavailable(
                "the caller's certificate cannot be checked for revocation now (the store is unreachable); retry",
                reason="CALLER_REVOCATION_UNKNOWN",
            ) from None
        if answer.record is not None and answer.record.revoked:
            self._revoked.add(serial)
            raise _revoked()
        if len(self._good_until) >= _GOOD_LIMIT:
            self._good_until.clear()
        self._good_until[serial] = now + self._good_for

    def _noticed(self, notice: RevocationNotice) -> None:
        if notice.issuer is not CaKind.INTERNAL:
            return
        try:
            serial = int(notice.serial_hex, 16)
        except ValueError:
            return
        self._revoked.add(serial)
        self._good_until.pop(serial, None)


def _revoked() -> Unauthenticated:
    return Unauthenticated("the caller's certificate is revoked", reason="CALLER_CERTIFICATE_REVOKED")

"""The in-process cache of token records, keyed by token id and carrying the versions they were read at.

A cached entry is only ever a guess: every decision taken from it is either written with a compare-and-swap
naming the cached verification-record version (which fails if any replica changed the token since), or, when
nothing is to be written, confirmed by re-reading that version. So a stale entry costs a retry, never a wrong
answer. Sealed seeds stay sealed in here; nothing in the cache is a secret in clear.
"""

from __future__ import annotations

from collections import OrderedDict

from services.otp_service.app.repository import TokenRecords

DEFAULT_CACHE_SIZE = 20_000
"""How many tokens a process keeps cached (about 1-2 KB each)."""


class TokenCache:
    """A bounded least-recently-used map from token id to TokenRecords (0 entries: disabled).

    Used from one event loop only, so it needs no lock.
    """

    def __init__(self, size: int = DEFAULT_CACHE_SIZE) -> None:
        if size < 0:
            raise ValueError("cache size must be >= 0")
        self._size = size
        self._entries: OrderedDict[str, TokenRecords] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token_id: str) -> TokenRecords | None:
        """Return the cached records of a token (marking them recently used), or None."""
        records = self._entries.get(token_id)
        if records is not None:
            self._entries.move_to_end(token_id)
        return records

    def put(self, records: TokenRecords) -> None:
        """Cach records, unless a newer version of them is cached already (concurrent requests race)."""
        if self._size == 0:
            return
        token_id = records.token.token_id
        current = self._entries.get(token_id)
        if current is not None and current.state_version > records.state_version:
            return
        self._entries[token_id] = records
        self._entries.move_to_end(token_id)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def drop(self, token_id: str) -> None:
        """Forget a token (its records may have changed in a way this process did not see)."""
        self._entries.pop(token_id, None)

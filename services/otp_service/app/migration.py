"""Moving a Redis store's tokens from the service-wide layout to the per-token placement (`PLACEMENT`).

Before per-token placement, every OTP key lived in the service-wide group; a Redis store written then keeps its
tokens there, where the service, now opening Redis with `PLACEMENT`, no longer looks. `migrate_to_placement` moves
them: for each token, its durable records (token, verification state, activation digest) are created under the
token's group in ONE commit, then deleted from the old layout in one commit, each conditional on the version read.

Run it with every OTP replica stopped (an upgrade step: stop, migrate, start the new version). It is safe to stop
and run again: a token whose new records exist already (an earlier run stopped between its two commits) only has
its old records deleted, and a run over a migrated store moves nothing. Transient records (recorded answers of
retried requests) are not moved: they expire within minutes, and a replayed code is still refused, because the
verification state that refuses it is moved.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kagi.store import Create, Delete, Entry, KeyExists, KeyValueStore
from services.otp_service.app.repository import ACTIVATIONS, TOKENS, VERIFICATION

MOVED_COLLECTIONS = (VERIFICATION, TOKENS, ACTIVATIONS)
"""The durable per-token collections, in the order their records are created in a token's commit."""

_PAGE = 200


@dataclass(frozen=True, slots=True)
class MigrationReport:
    """What a migration found and did."""

    tokens: int
    """Tokens found in the old layout."""
    moved: int
    """Tokens whose records this run created in the new layout (the rest had them already)."""


async def count_unmoved(old: KeyValueStore) -> int:
    """Count the tokens still in the old (service-wide) layout."""
    found: set[str] = set()
    for collection in MOVED_COLLECTIONS:
        token = ""
        while True:
            page = await old.list(collection, page_size=_PAGE, page_token=token)
            found.update(e.key for e in page.entries)
            token = page.next_page_token
            if not token:
                break
    return len(found)


async def migrate_to_placement(
    old: KeyValueStore, new: KeyValueStore, progress: Callable[[int], None] | None = None
) -> MigrationReport:
    """Move every token from OLD (the store opened service-wide) to NEW (the same store opened with `PLACEMENT`).

    PROGRESS, when given, is called with the number of tokens done after each one.
    """
    tokens = moved = 0
    for collection in MOVED_COLLECTIONS:
        while True:
            # From the start each time: what was moved is gone from the old layout's listing.
            page = await old.list(collection, page_size=_PAGE)
            if not page.entries:
                break
            for listed in page.entries:
                moved += await _move(old, new, listed.key)
                tokens += 1
                if progress is not None:
                    progress(1)
    return MigrationReport(tokens, moved)


async def _move(old: KeyValueStore, new: KeyValueStore, token_id: str) -> int:
    """Move one token's records; return 1 if this call created them in the new layout, 0 if they were there."""
    present: dict[str, Entry] = {}
    for collection in MOVED_COLLECTIONS:
        entry = await old.get(collection, token_id)
        if entry is not None:
            present[collection] = entry
    if not present:
        return 0
    created = 1
    try:
        await new.commit([Create(c, token_id, e.value) for c, e in present.items()])
    except KeyExists:
        created = 0  # an earlier run created them and stopped before deleting the old ones
    await old.commit([Delete(c, token_id, e.version) for c, e in present.items()])
    return created

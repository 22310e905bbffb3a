"""Creating and reissuing a token are ordered commits, each in one placement group, with a crash story each; on
SQLite and Redis, both opened with the OTP's per-token placement, so any commit spanning groups would fail.

Creation writes the token's records first, then claims its service ID and indexes it under its user: a claim
refused (the ID taken) deletes the records and draws again; a crash between the two leaves records nobody can
reach or list, which `remove_orphans` deletes once they are old enough; a claim that landed with its reply lost
leaves a live token that no sweep touches. Reissue creates the new token first and revokes the old one last;
one that finds the old token revoked by someone else meanwhile revokes its own new token and fails.

A crash is a store whose commit is cut off before (or after) it reaches the real store, for one chosen commit.
"""

from __future__ import annotations

import builtins
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import pytest

from kagi.clock import FakeClock
from kagi.store import Entry, KeyValueStore, Operation, Page, Placement, StoreUnavailable, open_store
from kagi.store.sqlite import SQLiteStore
from services.otp_service.app.repository import BY_SERVICE_ID, PLACEMENT, TOKENS, VERIFICATION
from services.otp_service.app.use_cases import OtpService
from services.otp_service.domain import IllegalTransition, OtpPolicy, SeedVault, TokenState, create_token
from tests.integration.otp.otp_grpc_support import CHEAP_HASHER, KEK_1, NOW, USAGE_START_PASSWORD

DAY = 24 * 3600.0

Hook = Callable[[Sequence[Operation]], Awaitable[None]]


class CrashingStore(KeyValueStore):
    """The real store, except that the first commit `hits` picks is cut off: before it is sent (`landed=False`:
    nothing written) or after (`landed=True`: written, reply lost); `before` runs ahead of that commit instead."""

    def __init__(self, inner: KeyValueStore) -> None:
        self.inner = inner
        self.hits: Callable[[Sequence[Operation]], bool] = lambda ops: False
        self.landed = False
        self.before: Hook | None = None

    @property
    def placement(self) -> Placement:
        """Return the real store's placement."""
        return self.inner.placement

    async def commit(self, operations: Sequence[Operation]) -> builtins.list[Entry | None]:
        """Commit, unless this is the commit to cut off."""
        if not self.hits(operations):
            return await self.inner.commit(operations)
        self.hits = lambda ops: False
        if self.before is not None:
            await self.before(operations)
            return await self.inner.commit(operations)
        if self.landed:
            await self.inner.commit(operations)
        raise StoreUnavailable("the process crashed here")

    async def get(self, collection: str, key: str) -> Entry | None:
        """Read through."""
        return await self.inner.get(collection, key)

    async def create(self, collection: str, key: str, value: bytes, *, ttl: float | None = None) -> Entry:
        """Write through."""
        return await self.inner.create(collection, key, value, ttl=ttl)

    async def compare_and_swap(
        self, collection: str, key: str, value: bytes, *, version: int, ttl: float | None = None
    ) -> Entry:
        """Write through."""
        return await self.inner.compare_and_swap(collection, key, value, version=version, ttl=ttl)

    async def delete(self, collection: str, key: str, *, version: int | None = None) -> bool:
        """Write through."""
        return await self.inner.delete(collection, key, version=version)

    async def increment(self, collection: str, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        """Write through."""
        return await self.inner.increment(collection, key, amount, ttl=ttl)

    async def list(self, collection: str, *, page_size: int = 100, page_token: str = "") -> Page:
        """Read through."""
        return await self.inner.list(collection, page_size=page_size, page_token=page_token)

    async def ping(self) -> None:
        """Ping through."""
        await self.inner.ping()

    async def close(self) -> None:
        """Close the real store."""
        await self.inner.close()


def _claims(ops: Sequence[Operation]) -> bool:
    return any(op.collection == BY_SERVICE_ID for op in ops)


@pytest.fixture(params=["sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path, namespace: str) -> AsyncIterator[CrashingStore]:
    """The OTP's store with its per-token placement enforced, on SQLite and on the test run's Redis."""
    clock = FakeClock(NOW)
    if request.param == "sqlite":
        inner: KeyValueStore = SQLiteStore(tmp_path / "otp.db", namespace=namespace, clock=clock, placement=PLACEMENT)
    else:
        url: str = request.getfixturevalue("redis_server")
        inner = open_store(url, namespace=namespace, state_dir=None, placement=PLACEMENT)
    crashing = CrashingStore(inner)
    try:
        yield crashing
    finally:
        await crashing.close()


def _service(store: KeyValueStore, clock: FakeClock, seed: int | None = None) -> OtpService:
    draws = random.Random(seed).randbytes if seed is not None else random.SystemRandom().randbytes
    return OtpService(store, vault=SeedVault(KEK_1), hasher=CHEAP_HASHER, policy=OtpPolicy(), clock=clock, random=draws)


async def _create(service: OtpService, owner: str = "user-0001") -> str:
    token = await service.create(owner_id=owner, email="taro@example.jp", usage_start_password=USAGE_START_PASSWORD)
    return token.token_id


async def _listed(service: OtpService, owner: str = "user-0001") -> list[str]:
    tokens, _ = await service.list_for_user(owner)
    return [t.token_id for t in tokens]


async def _has_records(store: KeyValueStore, token_id: str) -> bool:
    return await store.get(TOKENS, token_id) is not None or await store.get(VERIFICATION, token_id) is not None


async def test_a_taken_service_id_deletes_the_drawn_records_and_draws_again(store: CrashingStore) -> None:
    """The first draw's service ID is held by another token: its records are deleted, the second draw stands."""
    clock = FakeClock(NOW)
    first = create_token(
        owner_id="user-0001",
        email="taro@example.jp",
        usage_start_password=USAGE_START_PASSWORD,
        now=clock.now(),
        policy=OtpPolicy(),
        hasher=CHEAP_HASHER,
        random=random.Random(7).randbytes,
    ).token
    await store.create(BY_SERVICE_ID, first.service_id, b"0" * 32)
    service = _service(store, clock, seed=7)
    token_id = await _create(service)
    assert token_id != first.token_id
    assert not await _has_records(store, first.token_id)
    assert await _listed(service) == [token_id]
    assert await service.token_for_service(first.service_id) == "0" * 32


async def test_a_crash_between_records_and_claim_leaves_an_unreachable_orphan_that_the_sweep_removes(
    store: CrashingStore,
) -> None:
    """The records are written, the claim never: no user list, no service ID and no answer name the token; the
    sweep leaves it while it is young (a creation may still be between its commits) and removes it after."""
    clock = FakeClock(NOW)
    service = _service(store, clock)
    live = await _create(service)
    store.hits = _claims
    with pytest.raises(StoreUnavailable):
        await _create(service)
    page = await store.list(TOKENS)
    orphans = [e.key for e in page.entries if e.key != live]
    assert len(orphans) == 1
    assert await _listed(service) == [live]
    assert await service.remove_orphans() == 0
    clock.advance(DAY + 1)
    assert await service.remove_orphans() == 1
    assert [e.key for e in (await store.list(TOKENS)).entries] == [live]
    assert not await _has_records(store, orphans[0])
    assert (await service.get(live)).state is TokenState.PENDING_ACTIVATION


async def test_a_claim_whose_reply_was_lost_leaves_a_live_token_no_sweep_touches(store: CrashingStore) -> None:
    """The claim landed but the call failed: the token is listed and found by its service ID, and stays."""
    clock = FakeClock(NOW)
    service = _service(store, clock)
    store.hits, store.landed = _claims, True
    with pytest.raises(StoreUnavailable):
        await _create(service)
    (token_id,) = await _listed(service)
    token = await service.get(token_id)
    assert await service.token_for_service(token.service_id) == token_id
    clock.advance(DAY + 1)
    assert await service.remove_orphans() == 0
    assert await _has_records(store, token_id)


async def test_a_reissue_cut_off_before_the_revocation_leaves_the_old_token_as_it_was(store: CrashingStore) -> None:
    """The new token is created and listed, the old one untouched; the retried reissue revokes the old one."""
    clock = FakeClock(NOW)
    service = _service(store, clock)
    old = await _create(service)
    clock.advance(1)  # the user's list is in creation order
    store.hits = lambda ops: any(op.collection == VERIFICATION and op.key == old for op in ops)
    with pytest.raises(StoreUnavailable):
        await service.reissue(old, email="", usage_start_password=USAGE_START_PASSWORD)
    assert (await service.get(old)).state is TokenState.PENDING_ACTIVATION
    listed = await _listed(service)
    assert len(listed) == 2
    assert listed[0] == old
    replacement = await service.reissue(old, email="", usage_start_password=USAGE_START_PASSWORD)
    assert (await service.get(old)).state is TokenState.REVOKED
    assert (await service.get(replacement.token_id)).state is TokenState.PENDING_ACTIVATION


async def test_a_reissue_that_finds_the_old_token_revoked_meanwhile_revokes_its_new_token(
    store: CrashingStore,
) -> None:
    """Another replica revokes the old token between the new token's creation and the old one's revocation:
    the reissue fails as an illegal transition and its new token is revoked, not left pending."""
    clock = FakeClock(NOW)
    service = _service(store, clock)
    other_replica = _service(store.inner, clock)
    old = await _create(service)

    async def revoke_elsewhere(ops: Sequence[Operation]) -> None:
        await other_replica.revoke(old)

    store.hits = lambda ops: any(op.collection == VERIFICATION and op.key == old for op in ops)
    store.before = revoke_elsewhere
    with pytest.raises(IllegalTransition):
        await service.reissue(old, email="", usage_start_password=USAGE_START_PASSWORD)
    states = {token_id: (await service.get(token_id)).state for token_id in await _listed(service)}
    assert len(states) == 2
    assert set(states.values()) == {TokenState.REVOKED}

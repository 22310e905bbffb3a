"""The CA's role names agree with the runtime's, and the group-committing store keeps each write's own
semantics: a failed condition fails only its caller, and concurrent writes share commits."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kagi.runtime.identity import Role
from kagi.store import KeyExists, open_store
from services.ca_service.adapters.batching_store import BatchingStore
from services.ca_service.app.access import ISSUE_ROLES, MANAGE_ROLES
from services.ca_service.domain.identity import SERVICE_ROLES


def test_service_roles_are_the_runtime_roles() -> None:
    """Every SPIFFE role the CA certifies is a runtime Role and the reverse, so allow-lists can name them all."""
    assert set(SERVICE_ROLES) == {role.value for role in Role}
    assert ISSUE_ROLES["service"] == frozenset({Role.OPERATOR})
    assert Role.GATEWAY not in ISSUE_ROLES["customer"]
    assert MANAGE_ROLES["service"] == frozenset({Role.OPERATOR})


async def test_batched_writes_fail_alone_and_share_commits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """50 concurrent creates, one on a taken key: 49 land, the one fails with KeyExists, in far fewer commits."""
    inner = open_store("sqlite:", namespace="batch", state_dir=tmp_path)
    store = BatchingStore(inner)
    commits: list[int] = []
    original = inner.commit

    async def counting(operations):  # type: ignore[no-untyped-def]
        commits.append(len(operations))
        return await original(operations)

    monkeypatch.setattr(inner, "commit", counting)
    try:
        await store.create("c", "taken", b"0")
        results = await asyncio.gather(
            *(store.create("c", "taken" if i == 7 else f"k{i}", b"1") for i in range(50)), return_exceptions=True
        )
        assert [i for i, r in enumerate(results) if isinstance(r, KeyExists)] == [7]
        assert sum(1 for r in results if not isinstance(r, BaseException)) == 49
        assert len(commits) < 10
        page = await store.list("c", page_size=100)
        assert len(page.entries) == 50
    finally:
        await store.close()

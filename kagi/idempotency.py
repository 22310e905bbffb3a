"""Idempotent mutations: a retried request with the same request_id gets the first answer, and its effect
happens once.

The ledger claims the request id with create-if-absent before acting, so two concurrent retries cannot both
act: the second sees the claim and is told to retry (ABORTED) until the first has finished. The stored answer
is what the first call returned, minus any secret (a seed, a temporary password, a session token): secrets are
returned once, never replayed.

Entries are scoped: the caller passes a scope naming who asked (the caller's identity), what (the method) and
about what (the subject: an enrollment, an account, a token), so two customers' keys never meet and a
caller's key never answers another caller. `before_replay` is the request's credential check, run before
anything stored for the id is disclosed (its answer, or even that a request with it is in progress).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Generic, TypeVar

from kagi.errors import Aborted, InvalidArgument
from kagi.store.base import KeyExists, KeyValueStore, VersionMismatch

T = TypeVar("T")

COLLECTION = "idempotency"
MAX_REQUEST_ID = 128
_PENDING = "pending"
_DONE = "done"


def check_request_id(request_id: str) -> str:
    """check_request_id validates a request id: at most 128 printable ASCII characters (empty means none)."""
    if len(request_id) > MAX_REQUEST_ID or not all(0x21 <= ord(c) <= 0x7E for c in request_id):
        raise InvalidArgument(
            "invalid request_id",
            reason="INVALID_REQUEST_ID",
            fields={"request_id": f"must be at most {MAX_REQUEST_ID} printable ASCII characters without spaces"},
        )
    return request_id


def scope_of(method: str, caller: str, subject: str) -> str:
    """scope_of is a ledger scope: the method in clear, the caller and the subject hashed (they may be personal,
    an account number, and the key must stay short)."""
    return f"{method}/{fingerprint(caller, subject)[:32]}"


def fingerprint(*parts: str | bytes) -> str:
    """Fingerprint hashes the request's meaningful fields, so a reused request_id with other content is caught."""
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


@dataclass(frozen=True)
class Codec(Generic[T]):
    """Codec turns an answer into the bytes kept for replays (secrets removed) and back."""

    dump: Callable[[T], bytes]
    load: Callable[[bytes], T]


acting_request: ContextVar[str] = ContextVar("kagi_acting_request", default="")
"""acting_request names the request (its ledger key) whose action is running, for a step that records it with
its own write: a retry after a crash that lost the stored answer then finds the step done by this very request
and answers from its record instead of refusing it as out of order."""


class IdempotencyLedger:
    """IdempotencyLedger runs each (scope, request_id) action once and replays its stored answer afterwards.

    `ttl` is how long an answer is replayed; `pending_ttl` how long a claim lives. An action that raises
    releases its claim at once, so a retry acts again; only a claim nobody can release (the process was killed,
    or the store was unreachable when the release was tried) blocks retries, as "still in progress", until
    `pending_ttl` expires it. The services read it from KAGI_IDEMPOTENCY_PENDING_SECONDS (default 30): a few
    times a call's deadline, so a slow action keeps its claim while it runs.
    """

    def __init__(self, store: KeyValueStore, *, ttl: float = 24 * 3600, pending_ttl: float = 30) -> None:
        self._store = store
        self._ttl = ttl
        self._pending_ttl = pending_ttl

    async def run(
        self,
        scope: str,
        request_id: str,
        request_fingerprint: str,
        action: Callable[[], Awaitable[T]],
        codec: Codec[T],
        *,
        before_replay: Callable[[], Awaitable[None]] | None = None,
    ) -> T:
        """Run performs `action` once for this request id, or returns the answer stored by the first run.

        An empty request id means the caller asked for no idempotency: the action simply runs. When the id
        is already known, `before_replay` (the credential check) runs first and may raise; only then is the
        stored answer replayed, a fingerprint mismatch reported, or an unfinished first run reported.
        """
        check_request_id(request_id)
        if not request_id:
            return await action()
        key = f"{scope}/{request_id}"
        claim = json.dumps({"state": _PENDING, "fp": request_fingerprint}).encode()
        try:
            entry = await self._store.create(COLLECTION, key, claim, ttl=self._pending_ttl)
        except KeyExists:
            if before_replay is not None:
                await before_replay()
            return await self._replay(key, request_fingerprint, codec)
        acting = acting_request.set(key)
        try:
            answer = await action()
        except BaseException:
            # The action failed and changed nothing it acknowledged: free the id so a retry can try again.
            await self._release(key, entry.version)
            raise
        finally:
            acting_request.reset(acting)
        record = {"state": _DONE, "fp": request_fingerprint, "answer": codec.dump(answer).hex()}
        # VersionMismatch: the claim expired while acting (a very slow action); the answer still stands.
        with contextlib.suppress(VersionMismatch):
            await self._store.compare_and_swap(
                COLLECTION, key, json.dumps(record).encode(), version=entry.version, ttl=self._ttl
            )
        return answer

    async def _replay(self, key: str, request_fingerprint: str, codec: Codec[T]) -> T:
        entry = await self._store.get(COLLECTION, key)
        if entry is None:
            raise Aborted("the first request with this request_id just ended; retry", reason="REQUEST_IN_PROGRESS")
        record = json.loads(entry.value)
        if record["fp"] != request_fingerprint:
            raise InvalidArgument(
                "request_id was already used for a different request",
                reason="REQUEST_ID_REUSED",
                fields={"request_id": "must be new for each different request"},
            )
        if record["state"] != _DONE:
            raise Aborted("a request with this request_id is still in progress; retry", reason="REQUEST_IN_PROGRESS")
        return codec.load(bytes.fromhex(record["answer"]))

    async def _release(self, key: str, version: int) -> None:
        # Best effort: the claim expires by itself, and the action's own error is what the caller must see.
        with contextlib.suppress(Exception):
            await self._store.delete(COLLECTION, key, version=version)

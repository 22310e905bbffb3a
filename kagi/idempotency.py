"""Idempotent mutations: a retried request with the same request_id gets the first answer, and its effect
happens once.

`IdempotencyLedger.run` claims the request id with create-if-absent before acting, so two concurrent retries
cannot both act: the second sees the claim and is told to retry (ABORTED) until the first has finished.
`IdempotencyLedger.run_in_commit` is for an action that ends in one atomic commit of its own (an enrollment
step, a token's activation): that commit writes the answer too (`commit_answering`), create-if-absent, so the
effect and its answer land together or not at all, two concurrent retries cannot both commit, and no claim
before nor answer after costs a write of its own. The stored answer is what the first call returned, minus any
secret (a seed, a temporary password, a session token): secrets are returned once, never replayed.

Entries are scoped: the caller passes a scope naming who asked (the caller's identity), what (the method) and
about what (the subject: an enrollment, an account, a token), so two customers' keys never meet and a
caller's key never answers another caller. `before_replay` is the request's credential check, run before
anything stored for the id is disclosed (its answer, or even that a request with it is in progress).

A ledger keeps its entries in one collection, "idempotency" unless told. A service whose store spreads its
aggregates over placement groups (kagi.store.Placement) gives `run_in_commit` answers that commit with one
aggregate a ledger of their own, in a collection spread by the aggregate id that starts the scope
("<aggregate id>/<method>/<hash>"), so the answer lands in the group of the commit that carries it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from kagi.errors import Aborted, InvalidArgument
from kagi.store.base import Create, KeyExists, KeyValueStore, Operation, VersionMismatch

T = TypeVar("T")
R = TypeVar("R")

COLLECTION = "idempotency"
MAX_REQUEST_ID = 128
_PENDING = "pending"
_DONE = "done"


def check_request_id(request_id: str) -> str:
    """Return a valid request id: at most 128 printable ASCII characters (empty means none)."""
    if len(request_id) > MAX_REQUEST_ID or not all(0x21 <= ord(c) <= 0x7E for c in request_id):
        raise InvalidArgument(
            "invalid request_id",
            reason="INVALID_REQUEST_ID",
            fields={"request_id": f"must be at most {MAX_REQUEST_ID} printable ASCII characters without spaces"},
        )
    return request_id


def scope_of(method: str, caller: str, subject: str) -> str:
    """Return a ledger scope: the method in clear, the caller and the subject hashed (they may be personal, an
    account number, and the key must stay short)."""
    return f"{method}/{fingerprint(caller, subject)[:32]}"


def fingerprint(*parts: str | bytes) -> str:
    """Hash the request's meaningful fields, so a reused request_id with other content is caught."""
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


@dataclass(frozen=True)
class Codec(Generic[T]):
    """Turn an answer into the bytes kept for replays (secrets removed) and back."""

    dump: Callable[[T], bytes]
    load: Callable[[bytes], T]


acting_request: ContextVar[str] = ContextVar("kagi_acting_request", default="")
"""Names the request (its ledger key) whose action is running, for a step that records it with
its own write: a retry after a crash that lost the stored answer then finds the step done by this very request
and answers from its record instead of refusing it as out of order."""


class RequestAnswered(Aborted):
    """A concurrent call with the same request id committed its answer first; nothing of this call was written.

    `IdempotencyLedger.run_in_commit` answers the call with that answer; seen anywhere else it is a plain
    ABORTED, and the retry is answered from the ledger.
    """

    reason = "REQUEST_IN_PROGRESS"


def _record(request_fingerprint: str, answer: bytes) -> bytes:
    return json.dumps({"state": _DONE, "fp": request_fingerprint, "answer": answer.hex()}).encode()


class _Answering:
    """The answer a running `run_in_commit` action writes with its own commit, once it knows its result."""

    def __init__(
        self,
        collection: str,
        key: str,
        request_fingerprint: str,
        answer: Callable[[Any], Any],
        dump: Callable[[Any], bytes],
        ttl: float,
    ) -> None:
        self.collection = collection
        self.key = key
        self._fingerprint = request_fingerprint
        self._answer = answer
        self._dump = dump
        self._ttl = ttl
        self.offered = False  # a commit carrying the answer was tried
        self.committed = False  # ... and succeeded: `response` is the answer the store now holds
        self.response: Any = None

    def operation(self, result: object) -> Create:
        """Return the create-if-absent of the answer to RESULT, its secrets removed by the codec."""
        self.response = self._answer(result)
        self.offered = True
        return Create(self.collection, self.key, _record(self._fingerprint, self._dump(self.response)), ttl=self._ttl)


_answering: ContextVar[_Answering | None] = ContextVar("kagi_answering", default=None)


async def commit_answering(
    commit: Callable[[list[Operation]], Awaitable[R]], operations: Sequence[Operation], result: object
) -> R:
    """Commit OPERATIONS, and with them the running request's answer to RESULT when `run_in_commit` runs it.

    RESULT must be what the action then returns. The answer goes last, so the entries a commit returns keep
    their positions. When the answer's key is taken (a concurrent call with the same request id committed
    first) RequestAnswered is raised instead of KeyExists, so no lost-race loop tries again.
    """
    answering = _answering.get()
    if answering is None:
        return await commit(list(operations))
    answer = answering.operation(result)
    try:
        written = await commit([*operations, answer])
    except KeyExists as exc:
        if exc.failed is not None and exc.failed.collection == answer.collection and exc.failed.key == answer.key:
            raise RequestAnswered("a request with this request_id was answered concurrently; retry") from None
        raise
    answering.committed = True
    return written


class IdempotencyLedger:
    """Run each (scope, request_id) action once and replay its stored answer afterwards.

    `ttl` is how long an answer is replayed; `pending_ttl` how long a claim of `run` lives. An action that
    raises releases its claim at once, so a retry acts again; only a claim nobody can release (the process was
    killed, or the store was unreachable when the release was tried) blocks retries, as "still in progress",
    until `pending_ttl` expires it. The services read it from KAGI_IDEMPOTENCY_PENDING_SECONDS (default 30): a
    few times a call's deadline, so a slow action keeps its claim while it runs. `run_in_commit` has no claim.
    `collection` is where the entries live (see the module docstring).
    """

    def __init__(
        self, store: KeyValueStore, *, ttl: float = 24 * 3600, pending_ttl: float = 30, collection: str = COLLECTION
    ) -> None:
        self._store = store
        self._collection = collection
        self._ttl = ttl
        self._pending_ttl = pending_ttl

    def in_collection(self, collection: str) -> IdempotencyLedger:
        """Return a ledger like this one (same store and lifetimes) that keeps its entries in COLLECTION."""
        return IdempotencyLedger(self._store, ttl=self._ttl, pending_ttl=self._pending_ttl, collection=collection)

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
        """Perform `action` once for this request id, or return the answer stored by the first run.

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
            entry = await self._store.create(self._collection, key, claim, ttl=self._pending_ttl)
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
        # VersionMismatch: the claim expired while acting (a very slow action); the answer still stands.
        with contextlib.suppress(VersionMismatch):
            await self._store.compare_and_swap(
                self._collection,
                key,
                _record(request_fingerprint, codec.dump(answer)),
                version=entry.version,
                ttl=self._ttl,
            )
        return answer

    async def run_in_commit(
        self,
        scope: str,
        request_id: str,
        request_fingerprint: str,
        action: Callable[[], Awaitable[R]],
        answer: Callable[[R], T],
        codec: Codec[T],
        *,
        before_replay: Callable[[], Awaitable[None]] | None = None,
    ) -> T:
        """Perform `action` once for this request id and return `answer` of its result, or the stored answer.

        The action's own atomic commit, made through `commit_answering`, writes the answer too: the effect and
        its answer land together or not at all. Of concurrent calls with one request id only one can commit;
        the others are answered as replays of it. An action that returns without such a commit (nothing of its
        own left to write) has its answer written after it. An action that fails stores nothing, so a retry
        acts again. An empty request id and a known one are handled as by `run`.
        """
        check_request_id(request_id)
        if not request_id:
            return answer(await action())
        key = f"{scope}/{request_id}"
        entry = await self._store.get(self._collection, key)
        if entry is not None:
            if before_replay is not None:
                await before_replay()
            return self._answer(entry.value, request_fingerprint, codec)
        answering = _Answering(self._collection, key, request_fingerprint, answer, codec.dump, self._ttl)
        running = _answering.set(answering)
        acting = acting_request.set(key)
        try:
            result = await action()
        except Exception:
            # A concurrent call with this id may have committed first (this call's commit then failed, or its
            # step found the state moved on): its answer is this call's too. Otherwise the failure is this call's.
            stored = None if answering.committed else await self._stored(key)
            if stored is None:
                raise
            if before_replay is not None:
                await before_replay()
            return self._answer(stored, request_fingerprint, codec)
        finally:
            acting_request.reset(acting)
            _answering.reset(running)
        if answering.committed:
            committed: T = answering.response
            return committed
        response = answer(result)
        try:
            await self._store.create(
                self._collection, key, _record(request_fingerprint, codec.dump(response)), ttl=self._ttl
            )
        except KeyExists:
            # A concurrent call with this id answered first: its answer stands for both.
            if before_replay is not None:
                await before_replay()
            return await self._replay(key, request_fingerprint, codec)
        return response

    async def _stored(self, key: str) -> bytes | None:
        """Return the entry stored under KEY, or None when there is none or it cannot be read now."""
        try:
            entry = await self._store.get(self._collection, key)
        except Exception:
            return None
        return entry.value if entry is not None else None

    async def _replay(self, key: str, request_fingerprint: str, codec: Codec[T]) -> T:
        entry = await self._store.get(self._collection, key)
        if entry is None:
            raise Aborted("the first request with this request_id just ended; retry", reason="REQUEST_IN_PROGRESS")
        return self._answer(entry.value, request_fingerprint, codec)

    @staticmethod
    def _answer(value: bytes, request_fingerprint: str, codec: Codec[T]) -> T:
        """Decode a stored entry: its answer, REQUEST_ID_REUSED for other content, or still in progress."""
        record = json.loads(value)
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
            await self._store.delete(self._collection, key, version=version)

"""Idempotent gRPC mutations: the ledger keyed by the request's `request_id` within the scope (caller identity,
method, subject), with protobuf answers stored without their secret fields and request fingerprints computed
without theirs. A replay is answered only after the request's credential check (`before_replay`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from google.protobuf.message import Message

from kagi.idempotency import Codec, IdempotencyLedger, fingerprint, scope_of
from kagi.runtime.grpc_server import current_caller

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)
Result = TypeVar("Result")


def _without(message: Message, fields: Iterable[str]) -> Message:
    copy = type(message)()
    copy.CopyFrom(message)
    for name in fields:
        copy.ClearField(name)
    return copy


def _clear_paths(message: Message, paths: Iterable[str]) -> None:
    for path in paths:
        *parents, leaf = path.split(".")
        target: Message | None = message
        for parent in parents:
            target = getattr(target, parent) if target is not None and target.HasField(parent) else None
        if target is not None:
            target.ClearField(leaf)


def _entry(
    request: Message,
    response_type: type[Resp],
    secret_request: Iterable[str],
    secret_response: Iterable[str],
    subject: str,
    aggregate: str = "",
) -> tuple[str, str, str, Codec[Resp]]:
    """Return the request's ledger scope, request id, fingerprint (secrets left out) and answer codec.

    With an AGGREGATE id the scope starts with it ("<aggregate>/<method>/<hash>"), for a ledger spread by it.
    """
    secret_request = list(secret_request)
    secret_response = list(secret_response)
    request_id = str(getattr(request, "request_id", ""))
    scope = scope_of(request.DESCRIPTOR.full_name, caller_identity(), subject)
    if aggregate:
        scope = f"{aggregate}/{scope}"
    unkept = _without(request, secret_request) if secret_request else request
    print_ = fingerprint(unkept.SerializeToString(deterministic=True))

    def dump(answer: Resp) -> bytes:
        if not secret_response:
            return answer.SerializeToString(deterministic=True)
        stored = response_type()
        stored.CopyFrom(answer)
        _clear_paths(stored, secret_response)
        return stored.SerializeToString(deterministic=True)

    return scope, request_id, print_, Codec[Resp](dump=dump, load=response_type.FromString)


async def run_idempotent(
    ledger: IdempotencyLedger,
    request: Req,
    action: Callable[[], Awaitable[Resp]],
    response_type: type[Resp],
    *,
    secret_request_fields: Iterable[str] = (),
    secret_response_fields: Iterable[str] = (),
    subject: str = "",
    before_replay: Callable[[], Awaitable[None]] | None = None,
) -> Resp:
    """Run `action` once per (caller, method, subject, request_id) and replay its answer.

    The caller is the authenticated service identity (its SPIFFE ID); the subject is what the request is about
    (an account, an enrollment and its credential, a token): another caller or another subject reusing a
    request id is a different entry, never a replay nor a refusal. `before_replay` checks the request's
    credential before anything stored for the id is disclosed.

    Secret request fields (passwords, PINs) are left out of the fingerprint: a hash of a 4-digit PIN would
    give it away. Secret response fields (seeds, temporary passwords, session tokens; dotted paths for nested
    ones) are cleared in the stored answer, so a replay never returns a secret a second time.
    """
    scope, request_id, print_, codec = _entry(
        request, response_type, secret_request_fields, secret_response_fields, subject
    )
    return await ledger.run(scope, request_id, print_, action, codec, before_replay=before_replay)


async def run_idempotent_in_commit(
    ledger: IdempotencyLedger,
    request: Req,
    action: Callable[[], Awaitable[Result]],
    answer: Callable[[Result], Resp],
    response_type: type[Resp],
    *,
    secret_request_fields: Iterable[str] = (),
    secret_response_fields: Iterable[str] = (),
    subject: str = "",
    aggregate: str = "",
    before_replay: Callable[[], Awaitable[None]] | None = None,
) -> Resp:
    """Run `action` once per (caller, method, subject, request_id), its answer written by its own commit.

    As `run_idempotent`, for a use case that ends in one atomic commit made through
    `kagi.idempotency.commit_answering` with its result; `answer` renders that result as the response, both
    for the stored answer (secret fields cleared) and for this call. AGGREGATE, when the commit keeps to one
    aggregate's placement group, starts the ledger key (LEDGER is then spread by it: kagi.idempotency).
    """
    scope, request_id, print_, codec = _entry(
        request, response_type, secret_request_fields, secret_response_fields, subject, aggregate
    )
    return await ledger.run_in_commit(scope, request_id, print_, action, answer, codec, before_replay=before_replay)


def caller_identity() -> str:
    """Name the authenticated caller of this RPC for ledger scopes."""
    caller = current_caller()
    if caller.plaintext:
        return "plaintext"
    return caller.spiffe_id or "anonymous"


class IdempotentApi:
    """Give a gRPC servicer `_once` and `_once_in_commit`: each mutation runs once per request_id through
    `_ledger`."""

    _ledger: IdempotencyLedger

    async def _once(
        self,
        request: Message,
        action: Callable[[], Awaitable[Resp]],
        response_type: type[Resp],
        *,
        secret_request: tuple[str, ...] = (),
        secret_response: tuple[str, ...] = (),
        subject: str = "",
        before_replay: Callable[[], Awaitable[None]] | None = None,
    ) -> Resp:
        return await run_idempotent(
            self._ledger,
            request,
            action,
            response_type,
            secret_request_fields=secret_request,
            secret_response_fields=secret_response,
            subject=subject,
            before_replay=before_replay,
        )

    async def _once_in_commit(
        self,
        request: Message,
        action: Callable[[], Awaitable[Result]],
        answer: Callable[[Result], Resp],
        response_type: type[Resp],
        *,
        secret_request: tuple[str, ...] = (),
        secret_response: tuple[str, ...] = (),
        subject: str = "",
        ledger: IdempotencyLedger | None = None,
        aggregate: str = "",
        before_replay: Callable[[], Awaitable[None]] | None = None,
    ) -> Resp:
        return await run_idempotent_in_commit(
            ledger or self._ledger,
            request,
            action,
            answer,
            response_type,
            secret_request_fields=secret_request,
            secret_response_fields=secret_response,
            subject=subject,
            aggregate=aggregate,
            before_replay=before_replay,
        )

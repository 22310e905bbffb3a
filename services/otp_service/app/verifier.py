"""The verification hot path: one code checked against a token, decided and recorded in one atomic store write.

Correctness first. Replay, the failure counter and the lockout live in the token's verification record, and
`domain.verify_code` turns (token, state, code, now) into the next state. That state is written with ONE
`commit` whose first operation is a compare-and-swap on the verification record at the version the decision
was taken from; on Redis the commit is one Lua script, on SQLite one `BEGIN IMMEDIATE` transaction. Two
requests carrying the same code (on one replica or on ten) cannot both win: the loser's swap fails, it re-reads,
sees `last_step` moved and answers REPLAYED. Nothing is ever read and then blindly written.

The same commit carries, when they change, the token record (first accepted code: REGISTERED -> ACTIVE; the
failure that locks: -> LOCKED), and, when the request has a request_id, a create-if-absent of the request's
recorded answer, kept under "<token id>/<request id>" so that every key of the commit is the token's (one
placement group: on a Redis Cluster a verification touches one shard, one slot). So a retried VerifyCode
cannot consume a second code or count a second failure: its commit fails on the existing request record and
the first answer is returned. (This is why VerifyCode does not go through the generic idempotency ledger,
which would cost two more round trips.)

Round trips. Every writer of a token record rewrites its verification record in the same commit (see
repository), so "the verification record is still at version v" proves the token record unchanged too. Hence
each process caches both records with their versions (cache.TokenCache) and decides from the cache:

- warm cache, code accepted or failure counted:        1 round trip (the commit; EVALSHA on Redis)
- warm cache, refused without a write (locked, rate
  limited, token not active):                           1 round trip (GET of the verification record, to
                                                        prove the refusal was judged on current records)
- cold cache (first use of a token in this process):    3 (GET verification, GET token, commit)
- stale cache (another replica changed the token):      4 (failed commit, two GETs, commit), then warm again
- same request_id again:                                the failed commit, plus one GET of the recorded answer

A lost race inside one process first retries from the winner's cached records before going back to the store.
After MAX_ATTEMPTS lost races in a row the request fails with ABORTED (reason CONCURRENT_CHANGE).

When the service groups commits (kagi.store.group_commit; the default on SQLite), concurrent verifications of
different tokens share one commit, so under load a verification costs less than one store round (about 0.2 per
verification was measured on SQLite with 16 in flight: one fsync for several codes). Each keeps its own
all-or-nothing, conditional outcome; the cache is keyed and checked exactly as above.

Caching a token per process is a bet that the same process sees the token again before another replica
changes it. A gateway that routes by token id (sticky) wins it; random routing across N replicas pays the
stale-cache path on most verifications of a token used on several replicas in turn.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import structlog

from kagi.clock import Clock
from kagi.errors import ConcurrentChange, InvalidArgument
from kagi.idempotency import fingerprint
from kagi.store.base import Create, KeyExists, Operation, Replace, VersionMismatch
from services.otp_service.app.cache import TokenCache
from services.otp_service.app.errors import TokenNotFound
from services.otp_service.app.repository import (
    TOKENS,
    VERIFICATION,
    VERIFY_REQUESTS,
    TokenRecords,
    TokenRepository,
    check_token_id,
    verify_request_key,
)
from services.otp_service.domain import (
    CorruptRecord,
    OtpPolicy,
    SeedVault,
    Token,
    TokenState,
    Verdict,
    VerificationResult,
    verify_code,
)

log = structlog.get_logger("kagi.otp")

MAX_ATTEMPTS = 100
"""Bounds the lost races one verification retries (50 concurrent requests on one token need 49)."""
REQUEST_TTL = 3600.0
"""How long a verification's answer is kept for a retry with the same request_id (seconds)."""


@dataclass(frozen=True, slots=True)
class VerifiedCode:
    """A verification's answer: the domain result and the token as it is after it."""

    result: VerificationResult
    token: Token


def _record(request_fingerprint: str, result: VerificationResult) -> bytes:
    # The answer, never the code: a retry needs to know what was decided, not what was typed.
    return json.dumps(
        {
            "fp": request_fingerprint,
            "verdict": result.verdict.value,
            "token_state": result.token_state.value,
            "locked": result.locked,
            "attempts_remaining": result.attempts_remaining,
            "retry_after": result.retry_after,
        },
        separators=(",", ":"),
    ).encode("utf-8")


def _result_from_record(obj: dict[str, object]) -> VerificationResult:
    try:
        retry = obj.get("retry_after")
        remaining = obj["attempts_remaining"]
        if not isinstance(remaining, int) or (retry is not None and not isinstance(retry, int | float)):
            raise TypeError("bad field type")
        return VerificationResult(
            verdict=Verdict(obj["verdict"]),
            token_state=TokenState(obj["token_state"]),
            locked=obj["locked"] is True,
            attempts_remaining=remaining,
            retry_after=None if retry is None else float(retry),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptRecord("a recorded verification answer is unreadable") from exc


class Verifier:
    """Checks codes against tokens with the round-trip budget described in the module docstring."""

    def __init__(
        self,
        repository: TokenRepository,
        cache: TokenCache,
        *,
        vault: SeedVault,
        policy: OtpPolicy,
        clock: Clock,
        request_ttl: float = REQUEST_TTL,
    ) -> None:
        self._repo = repository
        self._cache = cache
        self._vault = vault
        self._policy = policy
        self._clock = clock
        self._request_ttl = request_ttl

    async def verify(self, token_id: str, code: str, *, request_id: str = "") -> VerifiedCode:
        """Decide one code at the clock's time and records the decision atomically.

        Returns the result whether or not the code was accepted (call `result.raise_for_failure()`); raises
        InvalidCodeFormat (nothing recorded) for a malformed code and TokenNotFound for an unknown token.
        """
        check_token_id(token_id)
        request_print = fingerprint(token_id, code) if request_id else ""
        now = self._clock.now()
        records = self._cache.get(token_id)
        fresh = records is None
        if records is None:
            records = await self._load(token_id)
        for _ in range(MAX_ATTEMPTS):
            outcome = verify_code(records.token, records.state, code, now=now, policy=self._policy, vault=self._vault)
            if outcome.state is None and outcome.token is None:
                if not fresh:
                    # A refusal that writes nothing must be judged on current records: prove the cached
                    # version is still the stored one, or start again from what is stored.
                    entry = await self._repo.state_entry(token_id)
                    if entry is None:
                        self._cache.drop(token_id)
                        raise TokenNotFound("no such token", metadata={"token_id": token_id})
                    if entry.version != records.state_version:
                        records = await self._repo.records_after(entry)
                        self._cache.put(records)
                        fresh = True
                        continue
                if request_id:
                    recorded = await self._recorded(token_id, request_id, request_print, records.token)
                    if recorded is not None:
                        return recorded
                return VerifiedCode(outcome.result, records.token)

            state = outcome.state if outcome.state is not None else records.state
            ops: list[Operation] = [Replace(VERIFICATION, token_id, state.to_bytes(), records.state_version)]
            if outcome.token is not None:
                ops.append(Replace(TOKENS, token_id, outcome.token.to_bytes(), records.token_version))
            if request_id:
                answer = _record(request_print, outcome.result)
                ops.append(
                    Create(VERIFY_REQUESTS, verify_request_key(token_id, request_id), answer, ttl=self._request_ttl)
                )
            try:
                entries = await self._repo.commit(ops)
            except VersionMismatch:
                records, fresh = await self._after_lost_race(records)
                continue
            except KeyExists:
                # Only the request record is created here: this request_id was answered before.
                recorded = await self._recorded(token_id, request_id, request_print, records.token)
                if recorded is None:  # its record expired between the commit and the read: decide afresh
                    continue
                return recorded
            except BaseException:
                # Unknown whether it landed (a lost reply): the cached versions can no longer be trusted.
                self._cache.drop(token_id)
                raise
            token = records.token if outcome.token is None else outcome.token
            token_entry = entries[1] if outcome.token is not None else None
            token_version = records.token_version if token_entry is None else token_entry.version
            state_entry = entries[0]
            if state_entry is None:  # pragma: no cover - a Replace always reports its entry
                raise CorruptRecord("the store did not report the verification record it wrote")
            self._cache.put(TokenRecords(token, token_version, state, state_entry.version))
            if outcome.token is not None and outcome.token.state is TokenState.LOCKED:
                log.warning("token locked after failed verifications", token_id=token_id)
            return VerifiedCode(outcome.result, token)
        raise ConcurrentChange(
            "このトークンへの同時アクセスが多すぎます。もう一度お試しください"
            " / too many simultaneous requests for this token; please retry",
            metadata={"token_id": token_id},
        )

    async def _load(self, token_id: str) -> TokenRecords:
        records = await self._repo.records(token_id)
        if records is None:
            self._cache.drop(token_id)
            raise TokenNotFound("no such token", metadata={"token_id": token_id})
        self._cache.put(records)
        return records

    async def _after_lost_race(self, lost: TokenRecords) -> tuple[TokenRecords, bool]:
        """The records to retry with after a failed swap, and whether they were just read from the store."""
        newer = self._cache.get(lost.token.token_id)
        if newer is not None and newer.state_version > lost.state_version:
            # The winner ran in this process and cached what it wrote: try on top of that first.
            return newer, False
        self._cache.drop(lost.token.token_id)
        return await self._load(lost.token.token_id), True

    async def _recorded(self, token_id: str, request_id: str, request_print: str, token: Token) -> VerifiedCode | None:
        entry = await self._repo.store.get(VERIFY_REQUESTS, verify_request_key(token_id, request_id))
        if entry is None:
            return None
        try:
            obj = json.loads(entry.value)
        except ValueError as exc:
            raise CorruptRecord("a recorded verification answer is unreadable") from exc
        if not isinstance(obj, dict):
            raise CorruptRecord("a recorded verification answer is unreadable")
        if obj.get("fp") != request_print:
            raise InvalidArgument(
                "request_id was already used for a different request",
                reason="REQUEST_ID_REUSED",
                fields={"request_id": "must be new for each different request"},
            )
        result = _result_from_record(obj)
        return VerifiedCode(result, dataclasses.replace(token, state=result.token_state))

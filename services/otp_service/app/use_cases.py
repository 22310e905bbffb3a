"""The OTP use cases: one method per operation of the design's steps 7-10 and of a token's later life.

Each reads the records it needs with their versions, lets the domain decide, and writes everything that
changed in one atomic commit conditioned on those versions; a lost race re-reads and re-decides (a bounded
number of times, then ABORTED CONCURRENT_CHANGE: kagi.store.races). A commit keeps to one token's placement
group (see repository); creating a token (its records, then its service-wide claim) and reissuing one (the
new token, then the old one's revocation) are ordered commits, each with its crash story told where it runs.
Password hashing (argon2id, tens of milliseconds) runs on the process's KDF threads
(kagi.passwords.in_kdf_thread) so the event loop keeps serving verifications meanwhile. Verification itself
lives in `verifier`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

import structlog

from kagi.clock import Clock
from kagi.errors import InvalidArgument
from kagi.idempotency import RequestAnswered, commit_answering
from kagi.passwords import PasswordHasher, in_kdf_thread
from kagi.store.base import (
    MAX_PAGE_SIZE,
    Create,
    Delete,
    Entry,
    KeyExists,
    KeyValueStore,
    Operation,
    StoreError,
    VersionMismatch,
)
from kagi.store.races import retry_lost_races
from services.otp_service.app.cache import DEFAULT_CACHE_SIZE, TokenCache
from services.otp_service.app.errors import REGISTRATION_FAILED_MESSAGE, RegistrationFailed, TokenNotFound
from services.otp_service.app.repository import (
    ACTIVATIONS,
    TOKENS,
    TokenRecords,
    TokenRepository,
    check_token_id,
    claim_ops,
    record_ops,
    unrecord_ops,
    write_ops,
)
from services.otp_service.app.verifier import VerifiedCode, Verifier
from services.otp_service.domain import (
    ActivationRequest,
    Algorithm,
    CorruptRecord,
    NewToken,
    OtpPolicy,
    ProvisionedSeed,
    SeedVault,
    Token,
    TokenEvent,
    TokenState,
    TotpParameters,
    activate,
    change_lifecycle,
    create_token,
)
from services.otp_service.domain.errors import IllegalTransition
from services.otp_service.domain.ids import SYSTEM_RANDOM, RandomBytes, parse_app_user_id, parse_service_id
from services.otp_service.domain.validation import validate_owner_id

log = structlog.get_logger("kagi.otp")

DEFAULT_PAGE_SIZE = 50
"""The page size of ListTokens when none is asked for."""
MAX_LIST_PAGE_SIZE = 100
"""The largest page ListTokens returns (larger requests are cut to it)."""
MAX_ACTIVATION_ID = 64
"""The longest activation ID accepted."""
ORPHAN_AGE = 24 * 3600.0
"""How old (seconds) an unclaimed token must be before `remove_orphans` takes it for an orphan."""
_ROTATION_PAGE = 200


@dataclass(frozen=True, slots=True)
class Activation:
    """Step 8's answer, returned this once: the token, the seed, and the activation ID."""

    token: Token
    seed: ProvisionedSeed
    activation_id: str


def _digest(activation_id: str) -> bytes:
    return hashlib.sha256(activation_id.encode("utf-8")).digest()


def _check_activation_id(activation_id: object) -> str:
    if (
        not isinstance(activation_id, str)
        or not 1 <= len(activation_id) <= MAX_ACTIVATION_ID
        or not activation_id.isascii()
        or not activation_id.isprintable()
    ):
        raise InvalidArgument(
            "invalid activation_id: must be the activation ID returned by activation",
            reason="INVALID_FIELD",
            fields={"activation_id": f"must be the activation ID returned by activation (1-{MAX_ACTIVATION_ID} chars)"},
        )
    return activation_id


def _page_size(page_size: int) -> int:
    if page_size < 0:
        raise InvalidArgument(
            "invalid page_size: must not be negative",
            reason="INVALID_FIELD",
            fields={"page_size": f"must be 0 (default {DEFAULT_PAGE_SIZE}) to {MAX_LIST_PAGE_SIZE}"},
        )
    return min(page_size or DEFAULT_PAGE_SIZE, MAX_LIST_PAGE_SIZE, MAX_PAGE_SIZE)


class OtpService:
    """The OTP service's use cases over one key-value store."""

    def __init__(
        self,
        store: KeyValueStore,
        *,
        vault: SeedVault,
        hasher: PasswordHasher,
        policy: OtpPolicy,
        clock: Clock,
        cache_size: int = DEFAULT_CACHE_SIZE,
        random: RandomBytes = SYSTEM_RANDOM,
    ) -> None:
        self._repo = TokenRepository(store)
        self._cache = TokenCache(cache_size)
        self._vault = vault
        self._hasher = hasher
        self._policy = policy
        self._clock = clock
        self._random = random
        self._verifier = Verifier(self._repo, self._cache, vault=vault, policy=policy, clock=clock)

    @property
    def policy(self) -> OtpPolicy:
        """Return the rules this service enforces."""
        return self._policy

    def now(self) -> float:
        """Return the service clock's reading (answers render remaining seconds with it)."""
        return self._clock.now()

    # -- step 7 -----------------------------------------------------------------------------------------------

    async def create(
        self,
        *,
        owner_id: str,
        email: str,
        usage_start_password: str,
        algorithm: Algorithm | None = None,
        digits: int | None = None,
    ) -> Token:
        """Make a pending token for a user (step 7); the usage-start password is kept only hashed."""
        defaults = self._policy.token_parameters
        params = TotpParameters(
            algorithm=algorithm or defaults.algorithm, digits=digits or defaults.digits, period=defaults.period
        )

        async def draw() -> Token:
            # A drawn ID (the service ID has 50 random bits) that another token holds fails the claim with
            # KeyExists: the next attempt draws new IDs. The claim carries the request's answer (when the call
            # has a request_id), so an answered CreateToken always names a claimed token.
            new = await self._new_token(owner_id, email, usage_start_password, params)
            await self._create(new, lambda ops: commit_answering(self._repo.commit, ops, new.token))
            log.info("token created", token_id=new.token.token_id)
            return new.token

        return await retry_lost_races(draw, what="the new token's identifiers", on=(KeyExists,))

    async def _create(
        self, new: NewToken, claim: Callable[[list[Operation]], Awaitable[Sequence[Entry | None]]] | None = None
    ) -> None:
        """Write a new token's records (its group), then claim its service ID and index it (service-wide).

        A claim refused for good (KeyExists: the ID is taken; RequestAnswered: a concurrent call with the same
        request_id answered first) deletes the records again: nothing else knows of them. A claim whose outcome
        is unknown (the store failed, it may have landed) leaves them, since they may now be live; if it had
        not landed they are an orphan, unreachable (see repository) and removed by `remove_orphans`. A crash
        between the two commits leaves the same orphan. Neither is ever listed or found as a token.
        """
        entries = await self._repo.commit(record_ops(new))
        try:
            await (claim or self._repo.commit)(claim_ops(new))
        except (KeyExists, RequestAnswered):
            with contextlib.suppress(StoreError):  # an orphan then, as after a crash
                await self._repo.commit(unrecord_ops(new.token.token_id, entries))
            raise
        self._remember_created(new, entries)

    async def _new_token(self, owner_id: str, email: str, password: str, params: TotpParameters) -> NewToken:
        return await in_kdf_thread(
            create_token,
            owner_id=owner_id,
            email=email,
            usage_start_password=password,
            now=self._clock.now(),
            policy=self._policy,
            hasher=self._hasher,
            params=params,
            random=self._random,
        )

    def _remember_created(self, new: NewToken, entries: Sequence[Entry | None]) -> None:
        """Cache a token just created by `record_ops`, whose commit reported `entries` (state entry first)."""
        state_entry, token_entry = entries[0], entries[1]
        if state_entry is not None and token_entry is not None:
            self._cache.put(TokenRecords(new.token, token_entry.version, new.verification_state, state_entry.version))

    # -- steps 8 and 9 ----------------------------------------------------------------------------------------

    async def token_for_service(self, service_id: object) -> str | None:
        """Return the id of the token a service ID was issued for; None when there is none or it is malformed.

        The API keys the idempotency ledger of steps 8 and 9 by it, so their answers commit with the token.
        """
        try:
            service = parse_service_id(service_id)
        except InvalidArgument:
            return None
        return await self._repo.token_id_for_service(service)

    async def activate(
        self, *, service_id: object, app_user_id: object, usage_start_password: object, consent: object
    ) -> Activation:
        """Check step 8's entries and return the seed, this once.

        An unknown service ID, another user ID and a wrong password answer the same ActivationFailed; the
        wrong password is counted first (the fifth locks the token).
        """
        request = ActivationRequest.parse(
            service_id=service_id, user_id=app_user_id, usage_start_password=usage_start_password, consent=consent
        )

        async def attempt() -> Activation:
            token_id = await self._repo.token_id_for_service(request.service_id)
            records = await self._repo.records(token_id) if token_id is not None else None
            result = await in_kdf_thread(
                activate,
                records.token if records is not None else None,
                request,
                now=self._clock.now(),
                policy=self._policy,
                hasher=self._hasher,
                vault=self._vault,
                random=self._random,
            )
            activation: Activation | None = None
            if result.token is not None and records is not None:
                ops = write_ops(records, result.token, records.state)
                if result.seed is not None:
                    activation = Activation(result.token, result.seed, secrets.token_urlsafe(18))
                    ops.append(Create(ACTIVATIONS, result.token.token_id, _digest(activation.activation_id)))
                    # The activation's commit is its answer's too (kagi.idempotency); a refusal's is not.
                    entries = await commit_answering(self._repo.commit, ops, activation)
                else:
                    entries = await self._repo.commit(ops)
                self._cache.put(records.written(result.token, records.state, entries))
            result.unwrap()  # raises the refusal, now that its count is stored
            if activation is None:  # pragma: no cover - the domain returns a seed only with the activated token
                raise CorruptRecord("activation returned a seed without a token")
            log.info("token activated", token_id=activation.token.token_id)
            return activation

        return await retry_lost_races(attempt, what="the token")

    async def confirm_registration(self, *, service_id: object, app_user_id: object, activation_id: object) -> Token:
        """Record that the app stored the seed (step 9), given activation's activation ID."""
        service = parse_service_id(service_id)
        app_user = parse_app_user_id(app_user_id)
        given = _digest(_check_activation_id(activation_id))

        async def attempt() -> Token:
            token_id = await self._repo.token_id_for_service(service)
            records = await self._repo.records(token_id) if token_id is not None else None
            stored = await self._repo.activation_digest(token_id) if token_id is not None else None
            if (
                records is None
                or stored is None
                or not hmac.compare_digest(records.token.app_user_id.encode(), app_user.encode())
                or not hmac.compare_digest(stored, given)
            ):
                raise RegistrationFailed(REGISTRATION_FAILED_MESSAGE)
            return await self._apply(records, TokenEvent.REGISTER)

        return await retry_lost_races(attempt, what="the token")

    # -- step 10 and every later login ------------------------------------------------------------------------

    async def verify(self, token_id: str, code: str, *, request_id: str = "") -> VerifiedCode:
        """Check a code (see verifier); the result says whether it was accepted and why not."""
        return await self._verifier.verify(token_id, code, request_id=request_id)

    # -- reading ----------------------------------------------------------------------------------------------

    async def get(self, token_id: str) -> Token:
        """Read a token (never its seed: callers render `Token.info` and the IDs only)."""
        token = await self._repo.token(check_token_id(token_id))
        if token is None:
            raise TokenNotFound("no such token", metadata={"token_id": token_id})
        return token

    async def list_for_user(
        self, owner_id: str, *, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[Token], str]:
        """Return one page of a user's tokens, oldest first, and the next page's token."""
        validate_owner_id(owner_id)
        ids, next_token = await self._repo.user_token_ids(owner_id, _page_size(page_size), page_token)
        tokens = await asyncio.gather(*(self._repo.token(token_id) for token_id in ids))
        return [t for t in tokens if t is not None], next_token

    # -- later life -------------------------------------------------------------------------------------------

    async def disable(self, token_id: str) -> Token:
        """Stop a token from verifying (a phone was lost); ENABLE is not exposed, reissue instead."""
        return await self._lifecycle(token_id, TokenEvent.DISABLE)

    async def unlock(self, token_id: str) -> Token:
        """Clear a lockout (operators only): counters reset, the replay floor kept."""
        return await self._lifecycle(token_id, TokenEvent.UNLOCK)

    async def revoke(self, token_id: str) -> Token:
        """End a token for good in any state (an abandoned setup's token): the sealed seed, the
        usage-start password hash and the delivery e-mail address (personal data it no longer needs) are erased
        and the app's activation ID forgotten. Revoking a revoked token again changes nothing, so a retry after a
        crash is harmless."""
        check_token_id(token_id)

        async def once() -> Token:
            records = await self._records(token_id)
            if records.token.state is TokenState.REVOKED:
                return records.token
            change = change_lifecycle(
                records.token, records.state, TokenEvent.REVOKE, now=self._clock.now(), policy=self._policy
            )
            token = dataclasses.replace(change.token, email="")
            ops = [*write_ops(records, token, change.verification_state), Delete(ACTIVATIONS, token_id)]
            entries = await self._repo.commit(ops)
            self._cache.put(records.written(token, change.verification_state, entries))
            log.info("token revoked", token_id=token_id)
            return token

        return await retry_lost_races(once, what="the token")

    async def reissue(self, token_id: str, *, email: str, usage_start_password: str) -> Token:
        """Create a new pending token for the same user and revoke the old one.

        An empty `email` keeps the old token's delivery address; the token parameters are kept too. The two
        tokens are in different placement groups, so this is ordered commits: the new token is created first
        (as `create`), then the old one revoked. A crash in between leaves the old token as it was and the new
        one pending but never handed out; the retried call (after its ledger claim lapses) revokes the old one
        and creates another, and the stray one expires at its activation deadline. A reissue that finds the old
        token revoked by someone else meanwhile revokes its own new token and fails as it would have before.
        """
        check_token_id(token_id)
        old = await self._records(token_id)
        # Fail on an illegal state before paying for a password hash.
        change_lifecycle(old.token, old.state, TokenEvent.REVOKE, now=self._clock.now(), policy=self._policy)
        owner_id, delivery, params = old.token.owner_id, email or old.token.email, old.token.params

        async def draw() -> Token:
            # Another token holding a drawn ID fails the claim: the next attempt draws new IDs.
            new = await self._new_token(owner_id, delivery, usage_start_password, params)
            await self._create(new)
            return new.token

        replacement = await retry_lost_races(draw, what="the new token's identifiers", on=(KeyExists,))
        seen: TokenRecords | None = old

        async def revoke_old() -> None:
            nonlocal seen
            # The first swap is conditioned on the records read above; a lost race reads them again.
            current = seen or await self._records(token_id)
            seen = None
            try:
                revoked = change_lifecycle(
                    current.token, current.state, TokenEvent.REVOKE, now=self._clock.now(), policy=self._policy
                )
            except IllegalTransition:
                await self.revoke(replacement.token_id)  # nobody will be handed it: end it at once
                raise
            ops = [*write_ops(current, revoked.token, revoked.verification_state), Delete(ACTIVATIONS, token_id)]
            entries = await self._repo.commit(ops)
            self._cache.put(current.written(revoked.token, revoked.verification_state, entries))

        await retry_lost_races(revoke_old, what="the token")
        log.info("token reissued", token_id=token_id, replacement=replacement.token_id)
        return replacement

    async def rotate_keys(self, progress: Callable[[int], None] | None = None) -> int:
        """Re-seal every seed not sealed under the current KEK; return how many were re-sealed.

        Run it after every replica holds the new KEK as current and the old one as an older key; afterwards
        the old key can be removed from the configuration. `progress(n)` hears of every n tokens looked at.
        """
        resealed = 0
        async for tokens in self._token_pages():
            for token in tokens:
                if token.sealed_seed is not None and self._vault.needs_reseal(token.sealed_seed):
                    resealed += await self._reseal(token.token_id)
            if progress is not None:
                progress(len(tokens))
        log.info("seeds re-sealed", count=resealed, key_id=self._vault.current_key_id)
        return resealed

    async def rotation_plan(self) -> tuple[int, int]:
        """Return how many tokens there are and how many of their seeds a rotation would re-seal now."""
        total = stale = 0
        async for tokens in self._token_pages():
            total += len(tokens)
            stale += sum(1 for t in tokens if t.sealed_seed is not None and self._vault.needs_reseal(t.sealed_seed))
        return total, stale

    async def find_orphans(self, *, older_than: float = ORPHAN_AGE) -> list[str]:
        """Return the ids of tokens whose creation never claimed their service ID, created over OLDER_THAN s ago.

        Such an orphan is left by a crash (or a store failure) between `create`'s two commits: no one knows its
        id and nothing lists it, but it still holds the user's e-mail address and password hash. Younger tokens
        are left out, so a creation still between its commits is never taken for one.
        """
        found: list[str] = []
        cutoff = self._clock.now() - older_than
        async for tokens in self._token_pages():
            for token in tokens:
                if token.created_at < cutoff and not await self._repo.claimed(token):
                    found.append(token.token_id)
        return found

    async def remove_orphans(self, *, older_than: float = ORPHAN_AGE) -> int:
        """Delete the records of the orphans `find_orphans` finds; return how many were deleted.

        Safe to run at any time, from any replica, as often as wanted: each is re-read and deleted only if it is
        still unclaimed and unchanged (`kagi admin remove-otp-orphans`).
        """
        removed = 0
        for token_id in await self.find_orphans(older_than=older_than):
            removed += await self._remove_orphan(token_id)
        if removed:
            log.info("orphaned token records removed", count=removed)
        return removed

    async def _remove_orphan(self, token_id: str) -> int:
        records = await self._repo.records(token_id)
        if records is None or await self._repo.claimed(records.token):
            return 0
        state_entry = Entry(token_id, b"", records.state_version)
        token_entry = Entry(token_id, b"", records.token_version)
        try:
            await self._repo.commit(unrecord_ops(token_id, [state_entry, token_entry]))
        except VersionMismatch:  # it changed meanwhile, so it is not an orphan: leave it
            return 0
        self._cache.drop(token_id)
        return 1

    async def _token_pages(self) -> AsyncIterator[list[Token]]:
        page_token = ""
        while True:
            page = await self._repo.store.list(TOKENS, page_size=_ROTATION_PAGE, page_token=page_token)
            yield [Token.from_bytes(entry.value) for entry in page.entries]
            if not page.next_page_token:
                return
            page_token = page.next_page_token

    async def _reseal(self, token_id: str) -> int:
        async def attempt() -> int:
            records = await self._repo.records(token_id)
            sealed = None if records is None else records.token.sealed_seed
            if records is None or sealed is None or not self._vault.needs_reseal(sealed):
                return 0
            token = dataclasses.replace(
                records.token, sealed_seed=self._vault.reseal(token_id, sealed), updated_at=self._clock.now()
            )
            entries = await self._repo.commit(write_ops(records, token, records.state))
            self._cache.put(records.written(token, records.state, entries))
            return 1

        return await retry_lost_races(attempt, what="a token being re-sealed")

    # -- helpers ----------------------------------------------------------------------------------------------

    async def _records(self, token_id: str) -> TokenRecords:
        records = await self._repo.records(token_id)
        if records is None:
            raise TokenNotFound("no such token", metadata={"token_id": token_id})
        return records

    async def _lifecycle(self, token_id: str, event: TokenEvent) -> Token:
        check_token_id(token_id)
        return await retry_lost_races(lambda: self._lifecycle_once(token_id, event), what="the token")

    async def _lifecycle_once(self, token_id: str, event: TokenEvent) -> Token:
        return await self._apply(await self._records(token_id), event)

    async def _apply(self, records: TokenRecords, event: TokenEvent) -> Token:
        """Apply one lifecycle event to both records and swap them (VersionMismatch on a lost race); the commit
        answers the running request with the token (kagi.idempotency.commit_answering)."""
        change = change_lifecycle(records.token, records.state, event, now=self._clock.now(), policy=self._policy)
        ops = write_ops(records, change.token, change.verification_state)
        entries = await commit_answering(self._repo.commit, ops, change.token)
        self._cache.put(records.written(change.token, change.verification_state, entries))
        log.info(
            "token state changed", token_id=change.token.token_id, change=event.value, state=change.token.state.value
        )
        return change.token

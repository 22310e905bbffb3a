"""Where OTP records live in the key-value store: collections, versioned reads, and the writes that keep them
consistent.

Collections of the `otp` namespace, and their placement group (see kagi.store.Placement and `PLACEMENT`):

    tokens                  token id -> Token record (the seed only sealed)                        the token's
    verification            token id -> VerificationState (the small hot record every
                            verification swaps)                                                    the token's
    activations             token id -> SHA-256 of the activation ID handed out at step 8
                            (checked at step 9)                                                    the token's
    verify-requests         "<token id>/<request id>" -> the recorded answer of a verification
                            (transient; see verifier)                                              the token's
    token-requests          "<token id>/<method>/<hash>/<request id>" -> the idempotency ledger's
                            answer of ActivateToken and ConfirmRegistration, written by the
                            step's own commit (transient; kagi.idempotency)                        the token's
    tokens-by-service-id    service ID -> token id (how step 8 finds the token; create-if-absent
                            keeps IDs unique)                                                      service-wide
    user-tokens.<sha256>    one index collection per owning user: "<created ms>-<token id>" ->
                            token id                                                               service-wide
    idempotency             the ledger's other entries (CreateToken's answer, the claims of the
                            later-life calls)                                                      service-wide

Why: everything a verification, an activation or a lifecycle change touches is one token's, so each of those
is one commit in the token's group, and on a Redis Cluster the tokens (and with them the verifications, the
hot path) spread over every shard. Only what must be unique or listed across tokens (the service IDs, each
user's index) stays service-wide, and it is written once, when a token is created.

The invariant every writer here keeps: a token record is never written without its verification record being
rewritten in the same commit. So "the verification record is still at version v" implies "the token record is
unchanged too", which is what lets a verification check both with one compare-and-swap.

Creating a token spans two groups, so it is two commits, in this order: `record_ops` (the token's records, in
its group), then `claim_ops` (its service ID and its line in the user's index, service-wide). The claim is
what makes a token exist for anyone: step 8 finds tokens only through `tokens-by-service-id`, users' lists
only through their index, and the token id is returned only after the claim. So a claim that fails for good
(KeyExists: the service ID is taken) is followed by deleting the records, and a crash between the two commits
leaves records that nothing lists as live and nobody knows the id of (an orphan, which
`OtpService.remove_orphans` deletes).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from kagi.store.base import Create, Delete, Entry, KeyValueStore, Operation, Placement, Replace
from services.otp_service.domain import CorruptRecord, InvalidTokenField, NewToken, Token, VerificationState
from services.otp_service.domain.errors import field_error

TOKENS = "tokens"
"""Holds the token records."""
VERIFICATION = "verification"
"""Holds each token's verification state."""
BY_SERVICE_ID = "tokens-by-service-id"
"""Maps the service ID typed into the app to the token id."""
ACTIVATIONS = "activations"
"""Holds the digest of each token's activation ID."""
VERIFY_REQUESTS = "verify-requests"
"""Holds the recorded answers of verifications that carried a request id, under "<token id>/<request id>"."""
TOKEN_REQUESTS = "token-requests"
"""Holds the idempotency ledger's answers written by a commit of one token (keys start "<token id>/")."""
USER_INDEX_PREFIX = "user-tokens."
"""Starts the name of each user's token index collection."""


def token_of(key: str) -> str:
    """Return the token id a key of a spread collection belongs to: the key itself, or what precedes its first '/'."""
    return key.partition("/")[0]


PLACEMENT = Placement(
    spread=dict.fromkeys((TOKENS, VERIFICATION, ACTIVATIONS, VERIFY_REQUESTS, TOKEN_REQUESTS), token_of)
)
"""Spreads every collection of one token's state by its token id; the service IDs and user indexes stay
service-wide. The OTP service opens Redis with it (a data-placement decision: never change it on a store in
use); SQLite, one file and one transaction for every group, it opens service-wide, so group commit keeps
sharing one fsync among the verifications of different tokens."""

_TOKEN_ID_CHARS = frozenset("0123456789abcdef")
_TOKEN_ID_LENGTH = 32


def check_token_id(token_id: object) -> str:
    """Return a well-formed token id (32 lowercase hex characters) or raise InvalidTokenField."""
    if not isinstance(token_id, str) or len(token_id) != _TOKEN_ID_LENGTH or not set(token_id) <= _TOKEN_ID_CHARS:
        raise field_error(InvalidTokenField, "token_id", "must be the 32 hexadecimal characters of a token id")
    return token_id


def user_collection(owner_id: str) -> str:
    """Name the index collection of one user's tokens.

    The owner id may hold characters a collection name may not (':' '@'), so the name carries its SHA-256.
    """
    return USER_INDEX_PREFIX + hashlib.sha256(owner_id.encode("utf-8")).hexdigest()


def user_index_key(token: Token) -> str:
    """Order a user's tokens by creation time, then token id."""
    return f"{int(token.created_at * 1000):015d}-{token.token_id}"


@dataclass(frozen=True, slots=True)
class TokenRecords:
    """A token and its verification state as read, with the versions a later write must name."""

    token: Token
    token_version: int
    state: VerificationState
    state_version: int

    def written(self, token: Token, state: VerificationState, entries: Sequence[Entry | None]) -> TokenRecords:
        """Return these records after `write_ops(self, token, state)` committed with `entries` as its result."""
        state_entry, token_entry = entries[0], entries[1]
        if state_entry is None or token_entry is None:
            raise ValueError("write_ops results start with the verification and token entries")
        return TokenRecords(token, token_entry.version, state, state_entry.version)


def write_ops(records: TokenRecords, token: Token, state: VerificationState) -> list[Operation]:
    """Swap both records of a token, each conditioned on the version it was read at.

    The verification record comes first: a commit's result lists entries in this order (see `written`).
    """
    return [
        Replace(VERIFICATION, token.token_id, state.to_bytes(), records.state_version),
        Replace(TOKENS, token.token_id, token.to_bytes(), records.token_version),
    ]


def verify_request_key(token_id: str, request_id: str) -> str:
    """Name a verification's recorded answer: under its token, so it commits with the token's records."""
    return f"{token_id}/{request_id}"


def record_ops(new: NewToken) -> list[Operation]:
    """Create a new token's records in its own group; the verification record first (see `written`)."""
    token = new.token
    return [
        Create(VERIFICATION, token.token_id, new.verification_state.to_bytes()),
        Create(TOKENS, token.token_id, token.to_bytes()),
    ]


def claim_ops(new: NewToken) -> list[Operation]:
    """Claim a new token's service ID and index it under its user, service-wide (KeyExists on a taken ID).

    Committed after `record_ops`: the claim is what makes the token reachable (see the module docstring).
    """
    token = new.token
    return [
        Create(BY_SERVICE_ID, token.service_id, token.token_id.encode("ascii")),
        Create(user_collection(token.owner_id), user_index_key(token), token.token_id.encode("ascii")),
    ]


def unrecord_ops(token_id: str, entries: Sequence[Entry | None]) -> list[Operation]:
    """Delete the records `record_ops` wrote (ENTRIES, its commit's result), at the versions it wrote them."""
    state_entry, token_entry = entries[0], entries[1]
    return [
        Delete(VERIFICATION, token_id, version=None if state_entry is None else state_entry.version),
        Delete(TOKENS, token_id, version=None if token_entry is None else token_entry.version),
    ]


def records_from_entries(state_entry: Entry, token_entry: Entry) -> TokenRecords:
    """Decode a verification entry and a token entry read in that order."""
    return TokenRecords(
        token=Token.from_bytes(token_entry.value),
        token_version=token_entry.version,
        state=VerificationState.from_bytes(state_entry.value),
        state_version=state_entry.version,
    )


class TokenRepository:
    """Reads OTP records with their versions; writes go through `commit` with the ops above."""

    def __init__(self, store: KeyValueStore) -> None:
        self.store = store

    async def state_entry(self, token_id: str) -> Entry | None:
        """Read a token's verification record (None when there is no such token)."""
        return await self.store.get(VERIFICATION, token_id)

    async def records_after(self, state_entry: Entry) -> TokenRecords:
        """Read the token record that goes with a verification record already read.

        The verification record must be read first: a token change after it bumps its version, so a later
        compare-and-swap on it fails instead of pairing a new token with an old decision.
        """
        token_entry = await self.store.get(TOKENS, state_entry.key)
        if token_entry is None:
            raise CorruptRecord("a verification record has no token record")
        return records_from_entries(state_entry, token_entry)

    async def records(self, token_id: str) -> TokenRecords | None:
        """Read a token's verification record, then its token record; None when there is no token."""
        state_entry = await self.state_entry(token_id)
        if state_entry is None:
            return None
        return await self.records_after(state_entry)

    async def token(self, token_id: str) -> Token | None:
        """Read a token record alone (for answers that need no later write)."""
        entry = await self.store.get(TOKENS, token_id)
        return None if entry is None else Token.from_bytes(entry.value)

    async def token_id_for_service(self, service_id: str) -> str | None:
        """Find the token a service ID was issued for."""
        entry = await self.store.get(BY_SERVICE_ID, service_id)
        return None if entry is None else entry.value.decode("ascii")

    async def activation_digest(self, token_id: str) -> bytes | None:
        """Return the SHA-256 of the activation ID handed out when the token was activated."""
        entry = await self.store.get(ACTIVATIONS, token_id)
        return None if entry is None else entry.value

    async def claimed(self, token: Token) -> bool:
        """Say whether a token's service ID is claimed by it (false for an orphan: see the module docstring)."""
        return await self.token_id_for_service(token.service_id) == token.token_id

    async def user_token_ids(self, owner_id: str, page_size: int, page_token: str) -> tuple[list[str], str]:
        """List one page of a user's token ids, oldest first, and the next page's token."""
        page = await self.store.list(user_collection(owner_id), page_size=page_size, page_token=page_token)
        return [e.value.decode("ascii") for e in page.entries], page.next_page_token

    async def commit(self, operations: Sequence[Operation]) -> list[Entry | None]:
        """Write all operations atomically (KeyExists / VersionMismatch when a condition fails)."""
        return await self.store.commit(operations)

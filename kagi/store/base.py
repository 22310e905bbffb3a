"""The key-value store contract every kagi service keeps its state behind, and its errors.

A key is a (collection, key) pair. Every entry carries a version: a number assigned on each write that strictly
increases within the key's placement group (see `Placement`; with the default `SERVICE_WIDE` the whole store is
one group), so a key's versions only ever rise and a delete followed by a re-create never revives an old version
(no ABA). Versions of keys in different groups are unrelated: never order two keys' writes by their versions.
Writes are conditional (create-if-absent, compare-and-swap on the version), and `commit` applies several
conditional writes to different keys of one placement group all-or-nothing.

Entries written with a TTL are transient (sessions, counters, idempotency records): they vanish at expiry and
are never listed. Entries without a TTL are durable and listed per collection, in key order, a page at a time,
from an index kept beside the data, so listing never scans the keyspace.
"""

from __future__ import annotations

import abc
import base64
import binascii
import builtins
import dataclasses
import enum
import math
import re
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Self

from kagi.errors import Aborted, AlreadyExists, InvalidArgument, KagiError, Unavailable

MAX_KEY_BYTES = 512
MAX_VALUE_BYTES = 4 * 1024 * 1024
MAX_PAGE_SIZE = 1000
MAX_TTL_SECONDS = 100 * 366 * 24 * 3600
_COLLECTION_RE = re.compile(r"[A-Za-z0-9_.\-/]{1,200}")
_NAMESPACE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]{0,99}")
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


class StoreError(Exception):
    """Marks an error raised by a store driver (mixed into the domain error it corresponds to)."""


class FailureCause(enum.Enum):
    """Why the condition of one write failed."""

    KEY_EXISTS = "KEY_EXISTS"
    """A create-if-absent found a live entry under the key."""
    VERSION_MISMATCH = "VERSION_MISMATCH"
    """The entry is live at another version than the write expected."""
    GONE = "GONE"
    """The write expected a version, but no live entry is there (never written, deleted or expired)."""


@dataclass(frozen=True, slots=True)
class FailedOperation:
    """The write whose condition failed: its index in the commit that carried it, its key, and why."""

    index: int
    collection: str
    key: str
    cause: FailureCause


class ConditionFailed(StoreError, KagiError):
    """A conditional write found the entry in another state than it expected; nothing was written.

    `failed` names the failing operation (drivers always set it); whoever sent the commit learns from it, and
    from nothing else, which of its operations lost. The operation's index and collection are also in
    `metadata` ("operation", "collection"), the form clients see on the wire.
    """

    def __init__(
        self,
        message: str,
        *,
        failed: FailedOperation | None = None,
        reason: str | None = None,
        fields: Mapping[str, str] | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        wire = dict(metadata or {})
        if failed is not None:
            wire.update(collection=failed.collection, operation=str(failed.index))
        super().__init__(message, reason=reason, fields=fields, metadata=wire)
        self.failed = failed

    def at(self, index: int) -> Self:
        """Return this failure as seen by a commit that carried the failing operation at INDEX."""
        if self.failed is None or self.failed.index == index:
            return self
        moved = dataclasses.replace(self.failed, index=index)
        copy = type(self)(self.message, failed=moved, reason=self.reason, fields=self.fields, metadata=self.metadata)
        copy.__cause__ = self.__cause__
        return copy


class KeyExists(ConditionFailed, AlreadyExists):
    """Create-if-absent found a live entry under that key."""

    reason = "KEY_EXISTS"


class VersionMismatch(ConditionFailed, Aborted):
    """The entry's version is not the one the write expected (or the entry is gone)."""

    reason = "VERSION_MISMATCH"


class StoreUnavailable(StoreError, Unavailable):
    """The backend cannot be reached or did not answer in time; nothing was written."""

    reason = "STORE_UNAVAILABLE"


class InvalidKey(StoreError, InvalidArgument):
    """A collection or key breaks the naming rules (empty, too long, bad characters)."""

    reason = "INVALID_KEY"


class InvalidStoreConfig(StoreError, InvalidArgument):
    """A bad store URL or namespace, or a file that belongs to another namespace."""

    reason = "INVALID_STORE_CONFIG"


@dataclass(frozen=True, slots=True)
class Entry:
    """One stored value with the version it was written at."""

    key: str
    value: bytes
    version: int


@dataclass(frozen=True, slots=True)
class Page:
    """One slice of a listing; `next_page_token` is empty on the last page."""

    entries: list[Entry]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class Create:
    """Writes `value` under the key only if no live entry is there."""

    collection: str
    key: str
    value: bytes
    ttl: float | None = None


@dataclass(frozen=True, slots=True)
class Replace:
    """Overwrites the entry only if its current version is `version` (compare-and-swap)."""

    collection: str
    key: str
    value: bytes
    version: int
    ttl: float | None = None


@dataclass(frozen=True, slots=True)
class Delete:
    """Removes the entry; with `version`, only if that is its current version."""

    collection: str
    key: str
    version: int | None = None


Operation = Create | Replace | Delete


@dataclass(frozen=True)
class Placement:
    """Which entries live together: the unit of atomicity and of placement on a Redis Cluster shard.

    Every (collection, key) belongs to one placement group, a string. Collections listed in `spread` are spread
    by an aggregate id their function derives from the key (a token id, a serial, an enrollment id): all keys of
    one aggregate, in every spread collection, share its group. Every other collection lives in the service-wide
    group "" (the default `SERVICE_WIDE` puts everything there, as before placement existed).

    What a group means, for every driver (SQLite included, so unit tests catch mistakes):

    - a `commit` must keep to one group: operations in two or more raise InvalidKey
      (fields={"operations": "every key of a commit must be in one placement group"}) and nothing is written;
    - versions strictly increase per group (so per key), not across groups;
    - on a Redis Cluster one group lives in one hash slot; the service-wide group is one slot for the whole
      service, each aggregate's group one of 64 buckets spread evenly over the slots (docs/design.md,
      "Placement in a Redis Cluster"); listing a spread collection merges its buckets in key order.

    The functions must be pure and stable (a key must map to the same aggregate id forever: the group picks
    where the entry is stored) and return a non-empty string; a function that returns anything else or raises
    makes the call fail with InvalidKey. Changing a deployed Placement moves where entries are looked for, so
    it is a data migration, not a setting.

    Using it:

    - give it when opening the store: `open_store(url, namespace=..., state_dir=..., placement=P)` (or
      `RedisStore(..., placement=P)`, `SQLiteStore(..., placement=P)`); `store.placement` returns it, and
      `GroupCommitStore` forwards its inner store's. `RedisStore.tag(collection, key)` names the hash tag an
      entry lives under (its Cluster slot is `key_slot("{" + tag + "}")`), for tests and benchmarks;
    - what one `commit` carries must be in one group: an aggregate's own records in any spread collections,
      yes; an aggregate's record together with a service-wide one (a journal's audit record and chain head, an
      idempotency answer stored with its action, a global index entry), no. Spread those by the same aggregate
      too, or keep the aggregate's collection service-wide;
    - `GroupCommitStore` keeps each round to one group and sends rounds of different groups together, so
      per-aggregate writes still share round trips per aggregate and are not serialised across aggregates; a
      `RoundPlanner` (the journal) adds service-wide operations, so its units must be service-wide;
    - compare versions of one key only (compare-and-swap, caches keyed by version): two keys' versions say
      nothing about which was written first unless both are in the same group.

    Example: OTP token state spread per token id, the token's record under its id and its verification
    records under "<token id>/<n>"::

        def token_of(key: str) -> str:
            return key.split("/", 1)[0]

        Placement(spread={"tokens": token_of, "verification": token_of})
    """

    spread: Mapping[str, Callable[[str], str]] = field(default_factory=lambda: types.MappingProxyType({}))

    def __post_init__(self) -> None:
        for collection, aggregate in self.spread.items():
            check_collection(collection)
            if not callable(aggregate):
                raise InvalidStoreConfig(
                    "invalid placement", fields={"spread": f"{collection!r} must map to a function of the key"}
                )
        object.__setattr__(self, "spread", types.MappingProxyType(dict(self.spread)))

    def is_spread(self, collection: str) -> bool:
        """Say whether COLLECTION is spread by aggregate (listing it merges every bucket)."""
        return collection in self.spread

    def group(self, collection: str, key: str) -> str:
        """Return the placement group of (COLLECTION, KEY): "" (service-wide) or its aggregate id.

        Raise InvalidKey when the collection's function fails or returns no non-empty string.
        """
        aggregate = self.spread.get(collection)
        if aggregate is None:
            return ""
        try:
            group = aggregate(key)
        except Exception:
            group = None
        if not isinstance(group, str) or not group:
            rule = f"the placement of {collection!r} finds no aggregate id in it"
            raise InvalidKey("the key names no aggregate", fields={"key": rule})
        return group

    def group_of(self, operations: Sequence[Operation]) -> str:
        """Return the one group every operation's key is in ("" for none); raise InvalidKey when they span two."""
        groups = {self.group(op.collection, op.key) for op in operations}
        if len(groups) > 1:
            raise InvalidKey("invalid commit", fields={"operations": ONE_GROUP_RULE})
        return groups.pop() if groups else ""


ONE_GROUP_RULE = "every key of a commit must be in one placement group"

SERVICE_WIDE = Placement()
"""The default placement: every collection in the service-wide group "" (one group, one Cluster slot)."""


def check_collection(collection: str) -> str:
    """Return `collection` or raise InvalidKey naming the rule it breaks."""
    if not isinstance(collection, str) or not _COLLECTION_RE.fullmatch(collection):
        raise InvalidKey(
            "invalid collection name",
            fields={"collection": "must be 1-200 characters of A-Z a-z 0-9 _ . - /"},
        )
    return collection


def check_key(key: str) -> str:
    """Return `key` or raise InvalidKey: keys are 1-512 UTF-8 bytes with no control characters.

    Any other character is allowed, separators and glob characters included: drivers place the key last in
    the physical name after a collection that cannot contain the separator, and never use pattern matching,
    so two distinct (collection, key) pairs can never name the same stored entry.
    """
    if not isinstance(key, str) or not key:
        raise InvalidKey("invalid key", fields={"key": "must not be empty"})
    # The common case, checked in C: printable ASCII (no control character, no DEL) of at most 512 characters.
    if len(key) <= MAX_KEY_BYTES and key.isascii() and key.isprintable():
        return key
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise InvalidKey("invalid key", fields={"key": f"must be at most {MAX_KEY_BYTES} bytes"})
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in key):
        raise InvalidKey("invalid key", fields={"key": "must not contain control characters"})
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidKey("invalid key", fields={"key": "must be valid UTF-8 text"}) from None
    return key


def check_value(value: bytes) -> bytes:
    """Return `value` or raise InvalidKey when it is not bytes or is over the size limit."""
    if not isinstance(value, bytes | bytearray):
        raise InvalidKey("invalid value", fields={"value": "must be bytes"})
    if len(value) > MAX_VALUE_BYTES:
        raise InvalidKey("invalid value", fields={"value": f"must be at most {MAX_VALUE_BYTES} bytes"})
    return bytes(value)


def check_ttl(ttl: float | None) -> float | None:
    """Return `ttl` or raise InvalidKey when it is not a positive number of seconds."""
    if ttl is not None and not ttl > 0:
        raise InvalidKey("invalid ttl", fields={"ttl": "must be a positive number of seconds"})
    return ttl


def ttl_millis(ttl: float) -> int:
    """Return a valid `ttl` in whole milliseconds (rounded up), or raise InvalidKey.

    Drivers use it to refuse infinite or absurdly long TTLs that `check_ttl` lets through.
    """
    check_ttl(ttl)
    if not math.isfinite(ttl) or ttl > MAX_TTL_SECONDS:
        raise InvalidKey("invalid ttl", fields={"ttl": f"must be at most {MAX_TTL_SECONDS} seconds"})
    return max(1, math.ceil(ttl * 1000))


def check_page_size(page_size: int) -> int:
    """Return `page_size` or raise InvalidKey when it is outside 1..MAX_PAGE_SIZE."""
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidKey("invalid page size", fields={"page_size": f"must be between 1 and {MAX_PAGE_SIZE}"})
    return page_size


def check_operation(op: Operation) -> Operation:
    """Validate every part of one `commit` operation."""
    check_collection(op.collection)
    check_key(op.key)
    if isinstance(op, Create | Replace):
        check_value(op.value)
        check_ttl(op.ttl)
    return op


def check_commit(operations: Sequence[Operation]) -> list[Operation]:
    """Validate every operation of a `commit` and reject a key named twice.

    Conditions are all checked against the state before the commit, so two operations on one key would have
    no clear meaning; drivers rely on the keys being distinct.
    """
    ops = [check_operation(op) for op in operations]
    seen: set[tuple[str, str]] = set()
    for op in ops:
        if (op.collection, op.key) in seen:
            raise InvalidKey("invalid commit", fields={"operations": "each (collection, key) may appear only once"})
        seen.add((op.collection, op.key))
    return ops


def check_amount(amount: int) -> int:
    """Return `amount` or raise InvalidKey when it is not a signed 64-bit integer."""
    if isinstance(amount, bool) or not isinstance(amount, int) or not _INT64_MIN <= amount <= _INT64_MAX:
        raise InvalidKey("invalid amount", fields={"amount": "must be a signed 64-bit integer"})
    return amount


def check_counter(value: int) -> int:
    """Return a counter's new `value` or raise InvalidKey when it leaves the 64-bit range."""
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise InvalidKey("invalid increment", fields={"amount": "the counter would overflow 64 bits"})
    return value


def check_namespace(namespace: str) -> str:
    """Return `namespace` or raise InvalidStoreConfig: a service name usable as a file name.

    Letters, digits, '_' and '-' only, so it is safe both as a file name and inside a Redis hash tag.
    """
    if not isinstance(namespace, str) or not _NAMESPACE_RE.fullmatch(namespace):
        raise InvalidStoreConfig(
            "invalid store namespace",
            fields={"namespace": "must be 1-100 characters of A-Z a-z 0-9 _ -, not starting with _ or -"},
        )
    return namespace


def encode_page_token(last_key: str) -> str:
    """Turn the last key of a page into the opaque token that resumes after it."""
    return base64.urlsafe_b64encode(last_key.encode("utf-8")).decode("ascii").rstrip("=")


def decode_page_token(page_token: str) -> str | None:
    """Return the key a listing resumes after (None at the start); raise InvalidKey."""
    if not page_token:
        return None
    try:
        raw = base64.urlsafe_b64decode(page_token + "=" * (-len(page_token) % 4))
        return check_key(raw.decode("utf-8"))
    except (binascii.Error, ValueError, InvalidKey):
        raise InvalidKey("invalid page token", fields={"page_token": "not a token this store issued"}) from None


class KeyValueStore(abc.ABC):
    """The whole state interface of a kagi service. Drivers: SQLite (embedded) and Redis.

    Every method raises StoreUnavailable when the backend is down or too slow; a write that raised was not
    applied, or (for a lost connection after sending) is reported as unavailable and must be retried with the
    same conditional write, which then fails cleanly if it had landed.

    `placement` says which keys may be committed together and where they live (see `Placement`).
    """

    @property
    def placement(self) -> Placement:
        """Return the placement the store was opened with (`SERVICE_WIDE` unless told)."""
        return SERVICE_WIDE

    @abc.abstractmethod
    async def get(self, collection: str, key: str) -> Entry | None:
        """Return the live entry under the key, or None."""

    @abc.abstractmethod
    async def create(self, collection: str, key: str, value: bytes, *, ttl: float | None = None) -> Entry:
        """Write a new entry if none is live under the key; otherwise raise KeyExists."""

    @abc.abstractmethod
    async def compare_and_swap(
        self, collection: str, key: str, value: bytes, *, version: int, ttl: float | None = None
    ) -> Entry:
        """Replace the entry if its version is `version`; otherwise raise VersionMismatch.

        Without `ttl` the entry becomes durable; with it, transient.
        """

    @abc.abstractmethod
    async def delete(self, collection: str, key: str, *, version: int | None = None) -> bool:
        """Remove the entry (only at `version` when given) and say whether one was removed.

        A version that does not match raises VersionMismatch.
        """

    @abc.abstractmethod
    async def increment(self, collection: str, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        """Add `amount` to a counter and return the new value.

        A missing or expired counter starts from zero; `ttl` is set when the counter is created and not
        extended by later increments (a fixed window). Read a counter with `get` (value is ASCII decimal).
        """

    @abc.abstractmethod
    async def list(self, collection: str, *, page_size: int = 100, page_token: str = "") -> Page:
        """Return the durable entries of a collection in key order, one page at a time."""

    @abc.abstractmethod
    # builtins.list: inside the class body `list` names the method above, not the type.
    async def commit(self, operations: Sequence[Operation]) -> builtins.list[Entry | None]:
        """Apply all operations atomically, or none.

        Returns, per operation, the written entry (None for a delete). The first failing condition raises
        KeyExists or VersionMismatch, whose `failed` names that operation, and nothing is written. Every key
        must be in one placement group (`Placement.group_of`): operations in two raise InvalidKey.
        """

    @abc.abstractmethod
    async def ping(self) -> None:
        """Return when the backend answers; raise StoreUnavailable otherwise (for readiness checks)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections and thread; the store is unusable afterwards."""

"""The Redis driver: every read-modify-write is one Lua script, so Redis applies it atomically.

Layout, for a service (namespace) `ns`. Every key carries a hash tag, so the keys one script touches share a
Cluster slot, which multi-key scripts need. Each placement group (see `Placement`) has its own tag:

    group ""  (service-wide)   tag {ns}            as before placement existed, so existing data stays readable
    group <aggregate id>       tag {ns:<b>.<salt>} b = the first 8 bytes of SHA-256(aggregate id) mod 64; salt is
                                                   the smallest integer putting the tag's slot in
                                                   [b*256, (b+1)*256), so the 64 buckets cover the 16384 slots
                                                   evenly and any balanced slot assignment spreads them evenly

and under each tag:

    kagi:{tag}:version               the group's version counter (INCR)
    kagi:{tag}:e:<collection>:<key>  hash {v: value, n: version}; transient entries carry a PEXPIRE
    kagi:{tag}:i:<collection>        zset of the keys of durable entries, all scores 0, read with ZRANGE BYLEX

A collection cannot contain ':' and the key comes last, so two (collection, key) pairs never share a name; a
namespace cannot contain ':' either, so a bucket's tag never equals a service's. Transient entries are never
indexed, so expiry can never leave a stale member behind; a member whose entry vanished some other way
(eviction, manual deletion) is dropped when a listing meets it. Listing a spread collection runs the listing
script on each of the 64 buckets (pipelined, per node on a Cluster) and merges the pages in key order. Nothing
here uses KEYS or SCAN patterns.

Expiry follows the Redis server's clock (the injected `Clock` is not used by this driver).

Replicas: with `wait_replicas` (1 under Sentinel and Cluster, see kagi.store.redis_connect) every write is sent
with `WAIT <n> <timeout>` behind it, in one pipeline on the same connection, and is acknowledged only once n
replicas have it; fewer is StoreUnavailable (the write may have landed: the caller retries the same
conditional write, which then fails cleanly). A failover then never loses an acknowledged write.

Durability: replay state, lockouts and revocations live here, so a Redis that forgets (no AOF) or evicts
(any `maxmemory-policy` but `noeviction`) is refused on first contact with InvalidStoreConfig naming the
settings: `CONFIG GET` is asked first, then (managed Redis often disables CONFIG) `INFO persistence` and
`INFO memory`; where neither tells, `KAGI_STORE_ASSUME_DURABLE=1` vouches for the server. Under Sentinel the
master is checked, on a Cluster every master and every replica that answers (a replica becomes a master on
failover). Tests and benchmarks on a
volatile Redis set `KAGI_STORE_ALLOW_VOLATILE=1` (or pass `allow_volatile=True`).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import hashlib
import os
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.commands.core import AsyncScript
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ClusterError,
    MovedError,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT

from kagi.store.base import (
    SERVICE_WIDE,
    Create,
    Delete,
    Entry,
    FailedOperation,
    FailureCause,
    InvalidKey,
    InvalidStoreConfig,
    KeyExists,
    KeyValueStore,
    Operation,
    Page,
    Placement,
    Replace,
    StoreUnavailable,
    VersionMismatch,
    check_amount,
    check_collection,
    check_commit,
    check_key,
    check_namespace,
    check_page_size,
    decode_page_token,
    encode_page_token,
    ttl_millis,
)
from kagi.store.redis_connect import RedisTarget, connect

# KEYS = [version counter, entry 1, index 1, entry 2, index 2, ...]
# ARGV = 5 per operation: kind (c, r, d), key, value, expected version ('' = any), ttl in ms ('0' = durable).
# Every condition is checked before the first write: a script that stops half-way is never rolled back.
_COMMIT: Final = """
local ops = (#KEYS - 1) / 2
local seen = {}
for i = 1, ops do
  local a = (i - 1) * 5
  local kind, want = ARGV[a + 1], ARGV[a + 4]
  local have = redis.call('HGET', KEYS[2 * i], 'n')
  seen[i] = have
  if kind == 'c' then
    if have then return {'KEY_EXISTS', i - 1} end
  elseif want ~= '' and have ~= want then
    if have then return {'VERSION_MISMATCH', i - 1} end
    return {'GONE', i - 1}
  end
end
local out = {'OK'}
for i = 1, ops do
  local a = (i - 1) * 5
  local kind, member, ttl = ARGV[a + 1], ARGV[a + 2], tonumber(ARGV[a + 5])
  local entry, index = KEYS[2 * i], KEYS[2 * i + 1]
  if kind == 'd' then
    redis.call('DEL', entry)
    redis.call('ZREM', index, member)
    out[i + 1] = seen[i] and 1 or 0
  else
    local n = redis.call('INCR', KEYS[1])
    redis.call('HSET', entry, 'v', ARGV[a + 3], 'n', n)
    if ttl > 0 then
      redis.call('PEXPIRE', entry, ttl)
      redis.call('ZREM', index, member)
    else
      redis.call('PERSIST', entry)
      redis.call('ZADD', index, 0, member)
    end
    out[i + 1] = n
  end
end
return out
"""

# KEYS = [version counter, entry, index]; ARGV = [amount, ttl in ms ('0' = durable), key].
# HINCRBY does 64-bit arithmetic and refuses a non-integer value without writing anything.
_INCREMENT: Final = """
local created = redis.call('EXISTS', KEYS[2]) == 0
local r = redis.pcall('HINCRBY', KEYS[2], 'v', ARGV[1])
if type(r) == 'table' and r.err then return {'ERROR', r.err} end
local n = redis.call('INCR', KEYS[1])
redis.call('HSET', KEYS[2], 'n', n)
if created then
  local ttl = tonumber(ARGV[2])
  if ttl > 0 then
    redis.call('PEXPIRE', KEYS[2], ttl)
  else
    redis.call('ZADD', KEYS[3], 0, ARGV[3])
  end
end
return {'OK', redis.call('HGET', KEYS[2], 'v')}
"""

# KEYS = [index]; ARGV = [entry key prefix, ZRANGE start ('-' or '(' .. key), page size].
# Reads one more entry than asked to learn whether another page follows. Members whose entry vanished are
# removed and the gap refilled, a bounded number of rounds so one call never runs long. The entry keys are
# built from index members, so they cannot be declared in KEYS; they share the index's hash tag and slot,
# which is what Redis Cluster requires of a script's keys.
_LIST: Final = """
local want = tonumber(ARGV[3]) + 1
local out = {}
local cursor = ARGV[2]
local last = ''
local exhausted = 0
for round = 1, 8 do
  local need = want - #out
  local members = redis.call('ZRANGE', KEYS[1], cursor, '+', 'BYLEX', 'LIMIT', 0, need)
  for _, m in ipairs(members) do
    local h = redis.call('HMGET', ARGV[1] .. m, 'v', 'n')
    if h[1] then
      out[#out + 1] = {m, h[1], h[2]}
    else
      redis.call('ZREM', KEYS[1], m)
    end
    last = m
  end
  if #members < need then
    exhausted = 1
    break
  end
  if #out >= want then break end
  cursor = '(' .. last
end
return {exhausted, last, out}
"""

# Replies that mean "this server cannot serve now" rather than "this request is wrong".
_UNAVAILABLE_ERRORS: Final = (
    ReadOnlyError,
    OutOfMemoryError,
    ClusterDownError,
    TryAgainError,
    ClusterError,
    RedisClusterException,  # no reachable node, a slot no node serves
    MovedError,  # redirected more times than a call may take
    AskError,
)
_UNAVAILABLE_REPLIES: Final = ("BUSY", "MASTERDOWN", "MISCONF", "NOREPLICAS", "LOADING", "CLUSTERDOWN")

BUCKETS: Final = 64
"""How many buckets (hash tags) a namespace's spread groups are hashed into."""
_SLOTS: Final = 16384
_REDIRECTS: Final = 5  # MOVED/ASK followed per write before it is reported unavailable


@functools.lru_cache(maxsize=256)
def bucket_tags(namespace: str) -> tuple[str, ...]:
    """Return the hash tags of a namespace's 64 buckets: bucket b's tag hashes to a slot in [b*256, (b+1)*256)."""
    span = _SLOTS // BUCKETS
    tags = []
    for bucket in range(BUCKETS):
        salt = 0
        while key_slot(f"{namespace}:{bucket}.{salt}".encode()) // span != bucket:
            salt += 1
        tags.append(f"{namespace}:{bucket}.{salt}")
    return tuple(tags)


def bucket_of(group: str) -> int:
    """Return the bucket (0-63) a non-empty placement group hashes to."""
    digest = hashlib.sha256(group.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


@dataclass(frozen=True)
class _Script:
    text: str
    sha: str
    call: AsyncScript


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def _not_durable(problems: builtins.list[str]) -> InvalidStoreConfig:
    return InvalidStoreConfig(
        "the Redis store would lose acknowledged state on a restart or under memory pressure: "
        + "; ".join(problems)
        + f". Set `appendonly yes` and `maxmemory-policy noeviction` on the server, {ASSUME_DURABLE_ENV}=1 if"
        f" the server is durable but its settings cannot be read, or {ALLOW_VOLATILE_ENV}=1 for tests",
        reason="STORE_NOT_DURABLE",
        fields={"appendonly": "must be yes", "maxmemory-policy": "must be noeviction"},
    )


def _info_field(info: object, name: str) -> str | None:
    """One field of a CONFIG GET or INFO reply (keys and values may be bytes), as text, or None."""
    if not isinstance(info, dict):
        return None
    for key, value in info.items():
        if (key.decode() if isinstance(key, bytes) else str(key)) == name:
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


ALLOW_VOLATILE_ENV = "KAGI_STORE_ALLOW_VOLATILE"
ASSUME_DURABLE_ENV = "KAGI_STORE_ASSUME_DURABLE"


class RedisStore(KeyValueStore):
    """Keeps one service's state in Redis (one server, a Sentinel-watched master or a Cluster) under `kagi:{ns...}`.

    Commands are never retried by the client: a write whose reply was lost is reported as StoreUnavailable
    rather than silently re-sent (a re-sent create would report KeyExists for its own write); the caller
    retries it, with the same conditional write. What is retried is what never reached a server: a pooled
    connection found broken before the command is sent (after a Redis restart, the first call already
    succeeds), a Cluster's MOVED or ASK redirection, a script the server does not know yet. Every call is
    bounded by the connect and socket timeouts (and the replica wait) plus a little, so a dead or frozen server
    never hangs a caller. At most `max_connections` commands are in flight (per node on a Cluster).

    A failover (Sentinel promoting a replica, a Cluster shard failing over) or CLUSTERDOWN shows as
    StoreUnavailable while it lasts; the next calls find the new master by themselves.
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str,
        placement: Placement = SERVICE_WIDE,
        connect_timeout: float = 2.0,
        timeout: float = 2.0,
        health_check_interval: int = 1,
        max_connections: int = 64,
        allow_volatile: bool | None = None,
        assume_durable: bool | None = None,
    ) -> None:
        self._namespace = check_namespace(namespace)
        self._placement = placement
        self._buckets = bucket_tags(namespace)
        target: RedisTarget = connect(
            url,
            connect_timeout=connect_timeout,
            timeout=timeout,
            health_check_interval=health_check_interval,
            max_connections=max_connections,
        )
        self._target = target
        self._client = target.client
        self._cluster: RedisCluster | None = target.client if isinstance(target.client, RedisCluster) else None
        self._where = target.where
        self._wait_replicas = target.wait_replicas
        self._wait_ms = max(1, round(target.wait_timeout * 1000))
        # A backstop over the socket timeouts: connecting (twice where sentinels or the cluster's layout are
        # asked first), one command, the replica wait, and slack for the event loop.
        connects = 1 if target.kind == "server" else 2
        waits = target.wait_timeout if target.wait_replicas else 0.0
        self._deadline = connects * target.connect_timeout + target.timeout + waits + 0.5
        self._commit_script = self._script(_COMMIT)
        self._increment_script = self._script(_INCREMENT)
        self._list_script = self._script(_LIST)
        self._closed = False
        # None (the default): from KAGI_STORE_ALLOW_VOLATILE / KAGI_STORE_ASSUME_DURABLE.
        self._allow_volatile = _flag(ALLOW_VOLATILE_ENV) if allow_volatile is None else allow_volatile
        self._assume_durable = _flag(ASSUME_DURABLE_ENV) if assume_durable is None else assume_durable
        self._durable = self._allow_volatile
        self._refusal: InvalidStoreConfig | None = None

    def __repr__(self) -> str:
        # Never the URL: it may carry a password.
        return f"RedisStore(server={self._where!r}, namespace={self._namespace!r})"

    @property
    def placement(self) -> Placement:
        """Return the placement that picks each key's hash tag."""
        return self._placement

    def tag(self, collection: str, key: str) -> str:
        """Return the hash tag the entry lives under (its Cluster slot is the tag's)."""
        return self._tag(self._placement.group(collection, key))

    async def get(self, collection: str, key: str) -> Entry | None:
        """Return the live entry under the key, or None."""
        check_collection(collection)
        check_key(key)
        name = self._entry(self.tag(collection, key), collection, key)
        async with self._guard():
            value, version = await self._client.hmget(name, ["v", "n"])
        if value is None:
            return None
        return Entry(key, _as_bytes(value), int(_as_bytes(version)))

    async def create(self, collection: str, key: str, value: bytes, *, ttl: float | None = None) -> Entry:
        """Write a new entry if none is live under the key; otherwise raise KeyExists."""
        (entry,) = await self.commit([Create(collection, key, value, ttl)])
        return cast(Entry, entry)

    async def compare_and_swap(
        self, collection: str, key: str, value: bytes, *, version: int, ttl: float | None = None
    ) -> Entry:
        """Replace the entry if it is at `version`; otherwise raise VersionMismatch."""
        (entry,) = await self.commit([Replace(collection, key, value, version, ttl)])
        return cast(Entry, entry)

    async def delete(self, collection: str, key: str, *, version: int | None = None) -> bool:
        """Remove the entry (only at `version` when given) and say whether one was removed."""
        (removed,) = await self._commit(check_commit([Delete(collection, key, version)]))
        return removed == 1

    async def increment(self, collection: str, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        """Add `amount` to a counter and return the new value (fixed window `ttl` at creation)."""
        check_collection(collection)
        check_key(key)
        check_amount(amount)
        ttl_ms = 0 if ttl is None else ttl_millis(ttl)
        tag = self.tag(collection, key)
        keys = [self._version_key(tag), self._entry(tag, collection, key), self._index(tag, collection)]
        async with self._guard():
            status, result = await self._write(
                self._increment_script, keys, [amount, ttl_ms, key], lambda reply: reply[0] == b"OK"
            )
        if status == b"OK":
            return int(result)
        message = bytes(result).decode("utf-8", "replace")
        if "overflow" in message:
            raise InvalidKey("invalid increment", fields={"amount": "the counter would overflow 64 bits"})
        raise InvalidKey("the entry is not a counter", fields={"key": "value is not a decimal integer"})

    async def list(self, collection: str, *, page_size: int = 100, page_token: str = "") -> Page:
        """Return the durable entries of a collection in key order, one page at a time.

        A spread collection is read from all 64 buckets (each from the token on, one more entry than a page)
        and merged; a page holds only keys up to the point every bucket was read to.
        """
        check_collection(collection)
        check_page_size(page_size)
        after = decode_page_token(page_token)
        start = "-" if after is None else "(" + after
        tags = self._buckets if self._placement.is_spread(collection) else (self._namespace,)
        async with self._guard():
            replies = await self._list_tags(tags, collection, start, page_size)
        rows: builtins.list[tuple[bytes, bytes, bytes]] = []
        bound: bytes | None = None  # every bucket was read up to here (None: to its end)
        for exhausted, last, found in replies:
            if not exhausted:
                last = bytes(last)
                bound = last if bound is None else min(bound, last)
            rows += [(bytes(k), bytes(v), bytes(n)) for k, v, n in found]
        rows.sort()
        if bound is not None:
            rows = [row for row in rows if row[0] <= bound]
        entries = [Entry(k.decode("utf-8"), v, int(n)) for k, v, n in rows[: page_size + 1]]
        if len(entries) > page_size:
            entries = entries[:page_size]
            token = encode_page_token(entries[-1].key)
        elif bound is None:
            token = ""
        else:  # a bucket stopped on a run of vanished members: resume after the point all were read to
            token = encode_page_token(bound.decode("utf-8"))
        return Page(entries, token)

    async def commit(self, operations: Sequence[Operation]) -> builtins.list[Entry | None]:
        """Apply all operations in one Lua script, or none (every key in one placement group)."""
        ops = check_commit(operations)
        results = await self._commit(ops)
        return [
            None if isinstance(op, Delete) else Entry(op.key, bytes(op.value), result)
            for op, result in zip(ops, results, strict=True)
        ]

    async def ping(self) -> None:
        """Return when Redis answers; raise StoreUnavailable otherwise, InvalidStoreConfig when the
        server is not durable (see the module docstring)."""
        async with self._guard():
            if self._cluster is not None:  # the masters serve; a replica that is down is no outage
                await self._cluster.ping(target_nodes=RedisCluster.PRIMARIES)
            else:
                await self._client.ping()

    async def check_durability(self) -> None:
        """Refuse (InvalidStoreConfig, for good) a server without AOF or with eviction.

        A server that cannot be reached raises StoreUnavailable and is checked again on the next call.
        """
        if self._durable:
            return
        if self._refusal is not None:
            raise self._refusal
        problems = await self._durability_problems()
        if problems:
            self._refusal = _not_durable(problems)
            raise self._refusal
        self._durable = True

    async def _durability_problems(self) -> builtins.list[str]:
        settings: builtins.list[tuple[str | None, str | None]] = []
        async with self._bounded():
            if self._cluster is None:
                settings.append(await self._settings(None))
            else:
                await self._cluster.initialize()
                for node in self._cluster.get_primaries():
                    settings.append(await self._settings(node))
                for node in self._cluster.get_replicas():  # a replica that is down is checked by no one
                    with contextlib.suppress(RedisConnectionError, RedisTimeoutError, OSError):
                        settings.append(await self._settings(node))
        problems: builtins.list[str] = []
        for appendonly, policy in settings:
            if (appendonly is None or policy is None) and not self._assume_durable:
                unknown = [n for n, v in (("appendonly", appendonly), ("maxmemory-policy", policy)) if v is None]
                problems.append(
                    f"neither CONFIG GET nor INFO tells {' and '.join(unknown)}"
                    f" (set {ASSUME_DURABLE_ENV}=1 if the server is durable)"
                )
            if appendonly is not None and appendonly.lower() != "yes":
                problems.append(f"appendonly is {appendonly}, not yes")
            if policy is not None and policy.lower() != "noeviction":
                problems.append(f"maxmemory-policy is {policy}, not noeviction")
        return list(dict.fromkeys(problems))  # a Cluster's nodes usually agree: say each thing once

    async def _settings(self, node: ClusterNode | None) -> tuple[str | None, str | None]:
        """Return the (appendonly, maxmemory-policy) settings of one server (of NODE on a Cluster)."""

        async def ask(*args: str) -> object:
            if node is None:
                return await self._client.execute_command(*args)
            return await node.execute_command(*args)

        # INFO first: it is what an ACL user limited to the driver's commands may run (CONFIG is an admin
        # command, and a refused one is logged in the server's ACL LOG); CONFIG GET only for what INFO leaves out.
        appendonly: str | None = None
        policy: str | None = None
        with contextlib.suppress(ResponseError):
            enabled = _info_field(await ask("INFO", "persistence"), "aof_enabled")
            appendonly = None if enabled is None else ("yes" if enabled == "1" else "no")
        with contextlib.suppress(ResponseError):
            policy = _info_field(await ask("INFO", "memory"), "maxmemory_policy")
        if appendonly is None or policy is None:
            with contextlib.suppress(ResponseError):  # CONFIG disabled or not permitted
                if appendonly is None:
                    appendonly = _info_field(await ask("CONFIG", "GET", "appendonly"), "appendonly")
                if policy is None:
                    policy = _info_field(await ask("CONFIG", "GET", "maxmemory-policy"), "maxmemory-policy")
        return appendonly, policy

    async def close(self) -> None:
        """Close every pooled connection; the store is unusable afterwards."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(RedisError, OSError):
            await self._target.aclose()

    def _script(self, text: str) -> _Script:
        sha = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()
        return _Script(text, sha, self._client.register_script(text))

    def _tag(self, group: str) -> str:
        return self._buckets[bucket_of(group)] if group else self._namespace

    @staticmethod
    def _version_key(tag: str) -> str:
        return f"kagi:{{{tag}}}:version"

    @staticmethod
    def _entry(tag: str, collection: str, key: str) -> str:
        return f"kagi:{{{tag}}}:e:{collection}:{key}"

    @staticmethod
    def _index(tag: str, collection: str) -> str:
        return f"kagi:{{{tag}}}:i:{collection}"

    async def _commit(self, ops: Sequence[Operation]) -> builtins.list[int]:
        """Run the commit script for validated `ops`: per operation its new version, or 1/0 for a delete."""
        if not ops:
            return []
        tag = self._tag(self._placement.group_of(ops))
        keys = [self._version_key(tag)]
        args: builtins.list[EncodableT] = []
        for op in ops:
            keys += [self._entry(tag, op.collection, op.key), self._index(tag, op.collection)]
            if isinstance(op, Delete):
                want = "" if op.version is None else str(op.version)
                args += ["d", op.key, b"", want, 0]
            else:
                ttl_ms = 0 if op.ttl is None else ttl_millis(op.ttl)
                kind, want = ("c", "") if isinstance(op, Create) else ("r", str(op.version))
                args += [kind, op.key, op.value, want, ttl_ms]
        async with self._guard():
            reply = await self._write(self._commit_script, keys, args, lambda reply: bytes(reply[0]) == b"OK")
        status = bytes(reply[0])
        if status == b"OK":
            return [int(r) for r in reply[1:]]
        index = int(reply[1])
        op = ops[index]
        if status == b"KEY_EXISTS":
            failed = FailedOperation(index, op.collection, op.key, FailureCause.KEY_EXISTS)
            raise KeyExists("an entry exists under that key", failed=failed)
        cause = FailureCause.GONE if status == b"GONE" else FailureCause.VERSION_MISMATCH
        failed = FailedOperation(index, op.collection, op.key, cause)
        raise VersionMismatch("the entry is not at the expected version", failed=failed)

    async def _write(
        self, script: _Script, keys: Sequence[str], args: Sequence[EncodableT], wrote: Callable[[Any], bool]
    ) -> Any:
        """Run a writing script; with `wait_replicas`, return only once that many replicas have its write.

        The WAIT goes in one pipeline behind the script, on the same connection to the same server, so it
        waits for this write. A script that wrote nothing (`wrote` says) needs no replica.
        """
        if not self._wait_replicas:
            return await script.call(keys=keys, args=args)
        if self._cluster is not None:
            reply, acked = await self._cluster_write(self._cluster, script, keys, args)
        else:
            reply, acked = await self._server_write(script, keys, args)
        if wrote(reply) and acked < self._wait_replicas:
            raise StoreUnavailable(
                "the write reached fewer replicas than required in time; it may have landed: retry it",
                metadata={"cause": "WAIT"},
            )
        return reply

    async def _server_write(self, script: _Script, keys: Sequence[str], args: Sequence[EncodableT]) -> tuple[Any, int]:
        assert not isinstance(self._client, RedisCluster)
        for _ in range(2):
            pipe = self._client.pipeline(transaction=False)
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            pipe.execute_command("WAIT", self._wait_replicas, self._wait_ms)
            reply, acked = await pipe.execute(raise_on_error=False)
            if isinstance(reply, NoScriptError):  # not run: load it and send again
                await self._client.script_load(script.text)
                continue
            return _result(reply), int(_result(acked))
        raise StoreUnavailable("the Redis store keeps forgetting its scripts", metadata={"cause": "NOSCRIPT"})

    async def _cluster_write(
        self, cluster: RedisCluster, script: _Script, keys: Sequence[str], args: Sequence[EncodableT]
    ) -> tuple[Any, int]:
        """Send script and WAIT to the primary of the keys' slot, following MOVED/ASK (neither ran the script)."""
        await cluster.initialize()
        slot = cluster.keyslot(keys[0])
        asking: ClusterNode | None = None
        for _ in range(_REDIRECTS):
            node = asking or cluster.nodes_manager.get_node_from_slot(slot)
            pipe = cluster.pipeline()
            if asking is not None:
                pipe.execute_command("ASKING", target_nodes=node)
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args, target_nodes=node)
            pipe.execute_command("WAIT", self._wait_replicas, self._wait_ms, target_nodes=node)
            try:
                results = await pipe.execute(raise_on_error=False, allow_redirections=False)
            except (RedisConnectionError, RedisTimeoutError, OSError):
                _refresh_layout(cluster)
                raise
            reply, acked = results[-2], results[-1]
            asking = None
            if isinstance(reply, MovedError):
                await cluster.nodes_manager.move_slot(reply)
                continue
            if isinstance(reply, AskError):
                asking = cluster.get_node(host=reply.host, port=reply.port)
                if asking is None:
                    _refresh_layout(cluster)
                    break
                continue
            if isinstance(reply, NoScriptError):
                await node.execute_command("SCRIPT", "LOAD", script.text)
                continue
            if isinstance(reply, RedisConnectionError | RedisTimeoutError | ClusterDownError):
                _refresh_layout(cluster)
            return _result(reply), int(_result(acked))
        raise StoreUnavailable("the Redis Cluster kept redirecting the write", metadata={"cause": "MOVED"})

    async def _list_tags(
        self, tags: Sequence[str], collection: str, start: str, page_size: int
    ) -> builtins.list[builtins.list[Any]]:
        """Run the listing script on the index of COLLECTION under each tag, pipelined; return each reply."""
        calls: builtins.list[tuple[builtins.list[str], builtins.list[EncodableT]]] = [
            ([self._index(tag, collection)], [self._entry(tag, collection, ""), start, page_size]) for tag in tags
        ]
        if len(calls) == 1:
            keys, args = calls[0]
            return [await self._list_script.call(keys=keys, args=args)]
        for _ in range(2):
            pipe = self._client.pipeline(transaction=False)
            for keys, args in calls:
                pipe.execute_command("EVALSHA", self._list_script.sha, 1, *keys, *args)
            replies = await pipe.execute(raise_on_error=False)  # a Cluster sends each to its slot's node
            if any(isinstance(reply, NoScriptError) for reply in replies):
                await self._client.script_load(self._list_script.text)  # on every primary of a Cluster
                continue
            return [_result(reply) for reply in replies]
        raise StoreUnavailable("the Redis store keeps forgetting its scripts", metadata={"cause": "NOSCRIPT"})

    @contextlib.asynccontextmanager
    async def _guard(self) -> AsyncIterator[None]:
        """Bound a call in time and turn every "server cannot serve" failure into StoreUnavailable; the first
        call that reaches the server checks its durability."""
        if not self._durable:
            await self.check_durability()
        async with self._bounded():
            yield

    @contextlib.asynccontextmanager
    async def _bounded(self) -> AsyncIterator[None]:
        if self._closed:
            raise StoreUnavailable("the store is closed", reason="STORE_CLOSED")
        meta: dict[str, str] = {}  # no server address: metadata may reach a client; logs get __cause__
        try:
            async with asyncio.timeout(self._deadline):
                yield
        except (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError) as exc:
            # BusyLoadingError, AuthenticationError, MaxConnectionsError and MasterNotFoundError are
            # ConnectionErrors too.
            meta["cause"] = type(exc).__name__
            raise StoreUnavailable("the Redis store is unavailable", metadata=meta) from exc
        except AttributeError as exc:
            # redis-py's cluster client closes a node's connections, in use or not, when the slot layout changes
            # (a failover); a command racing with that finds its connection's reader or writer gone (None).
            # Whether it was sent is unknown, which is what StoreUnavailable says.
            if self._cluster is None or "'NoneType' object has no attribute" not in str(exc):
                raise
            meta["cause"] = "ConnectionClosed"
            raise StoreUnavailable("the Redis store is unavailable", metadata=meta) from exc
        except NoPermissionError as exc:
            # The server's ACL refuses this user a command or a key: a deployment mistake that no retry mends.
            # The reply names the command or key (never a password); say so plainly instead of an INTERNAL error.
            raise InvalidStoreConfig(
                "the Redis user may not run what the store needs: " + str(exc),
                reason="STORE_PERMISSION_DENIED",
                fields={"url": "the Redis user needs the commands and key patterns of deploy/redis/users.acl"},
            ) from exc
        except (ResponseError, RedisClusterException) as exc:
            # redis-py turns some codes into classes and strips them from the message; others it keeps.
            if not isinstance(exc, _UNAVAILABLE_ERRORS) and not str(exc).startswith(_UNAVAILABLE_REPLIES):
                raise
            meta["cause"] = str(exc).split(" ", 1)[0] if isinstance(exc, ResponseError) else type(exc).__name__
            raise StoreUnavailable("the Redis store cannot serve requests", metadata=meta) from exc


def _result(reply: object) -> Any:
    """Return one pipelined reply, or raise the error it is."""
    if isinstance(reply, Exception):
        raise reply
    return reply


def _refresh_layout(cluster: RedisCluster) -> None:
    """Make the cluster client read the slot layout again before its next command (a node failed)."""
    cluster._initialize = True  # what redis-py itself does after a connection error on a lone command


def _as_bytes(reply: object) -> bytes:
    """Narrow a reply of a client built with decode_responses=False to the bytes it always is."""
    if not isinstance(reply, bytes):
        raise TypeError(f"expected bytes from Redis, got {type(reply).__name__}")
    return reply

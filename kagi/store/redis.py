"""The Redis driver: every read-modify-write is one Lua script, so Redis applies it atomically.

Layout, for a service (namespace) `ns`; the `{ns}` hash tag puts all of a service's keys in one Cluster slot,
which multi-key scripts need:

    kagi:{ns}:version             store-wide version counter (INCR)
    kagi:{ns}:e:<collection>:<key>  hash {v: value, n: version}; transient entries carry a PEXPIRE
    kagi:{ns}:i:<collection>        zset of the keys of durable entries, all scores 0, read with ZRANGE BYLEX

A collection cannot contain ':' and the key comes last, so two (collection, key) pairs never share a name.
Transient entries are never indexed, so expiry can never leave a stale member behind; a member whose entry
vanished some other way (eviction, manual deletion) is dropped when a listing meets it. Nothing here uses
KEYS or SCAN patterns.

Expiry follows the Redis server's clock (the injected `Clock` is not used by this driver).

Durability: replay state, lockouts and revocations live here, so a Redis that forgets (no AOF) or evicts
(any `maxmemory-policy` but `noeviction`) is refused on first contact with InvalidStoreConfig naming the
settings: `CONFIG GET` is asked first, then (managed Redis often disables CONFIG) `INFO persistence` and
`INFO memory`; where neither tells, `KAGI_STORE_ASSUME_DURABLE=1` vouches for the server. Tests and benchmarks
on a volatile Redis set `KAGI_STORE_ALLOW_VOLATILE=1` (or pass `allow_volatile=True`).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import os
from collections.abc import AsyncIterator, Sequence
from typing import Final, cast

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    ClusterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from kagi.store.base import (
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
_UNAVAILABLE_ERRORS: Final = (ReadOnlyError, OutOfMemoryError, ClusterDownError, TryAgainError)
_UNAVAILABLE_REPLIES: Final = ("BUSY", "MASTERDOWN", "MISCONF", "NOREPLICAS", "LOADING", "CLUSTERDOWN")


_POOL_OPTIONS: dict[str, object] = {}
try:  # recent redis-py; older versions have no maintenance notifications, and always check a pooled connection
    from redis.maint_notifications import MaintNotificationsConfig

    _POOL_OPTIONS["maint_notifications_config"] = MaintNotificationsConfig(enabled=False)
except ImportError:  # pragma: no cover - depends on the installed redis-py
    pass


class _CheckedPool(aioredis.BlockingConnectionPool):
    """_CheckedPool hands out only connections that work, so a Redis restart costs no caller an error.

    A connection taken from the pool is checked before the command is written, when nothing has reached the
    server and reconnecting is safe (a command is never re-sent: see RedisStore):

    - one the server closed (a restarted Redis) is reconnected by redis-py's own check, which maintenance
      notifications (on by default with RESP3 since redis-py 7) turn off, hence `_POOL_OPTIONS`;
    - one idle for more than `health_check_interval` is PINGed first, and reconnected when the PING fails (a
      server gone without closing its sockets, a connection a firewall forgot). A reconnection that fails
      raises: the server is down, and the caller sees StoreUnavailable.
    """

    async def ensure_connection(self, connection: AbstractConnection) -> None:
        await super().ensure_connection(connection)
        interval = connection.health_check_interval
        loop = asyncio.get_running_loop()
        if not interval or loop.time() <= connection.next_health_check:
            return
        try:
            await connection.send_command("PING", check_health=False)
            if await connection.read_response() not in (b"PONG", "PONG"):
                raise RedisConnectionError("bad reply to PING")
        except (RedisConnectionError, RedisTimeoutError, OSError):
            await connection.disconnect(nowait=True)
            await connection.connect()  # type: ignore[no-untyped-call]
            connection.next_health_check = loop.time() + interval  # just connected: no second PING


ALLOW_VOLATILE_ENV = "KAGI_STORE_ALLOW_VOLATILE"
ASSUME_DURABLE_ENV = "KAGI_STORE_ASSUME_DURABLE"


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


class RedisStore(KeyValueStore):
    """Keeps one service's state in Redis under the `kagi:{namespace}:` prefix.

    Commands are never retried by the client: a write whose reply was lost is reported as StoreUnavailable
    rather than silently re-sent (a re-sent create would report KeyExists for its own write); the caller
    retries it, with the same conditional write. What is retried is a pooled connection found broken before
    the command is sent (`_CheckedPool`): after a Redis restart, the first call already succeeds. Every call is
    bounded by the connect and socket timeouts plus a little, so a dead or frozen server never hangs a caller.
    At most `max_connections` commands are in flight; further callers wait for a free connection.
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str,
        connect_timeout: float = 2.0,
        timeout: float = 2.0,
        health_check_interval: int = 1,
        max_connections: int = 64,
        allow_volatile: bool | None = None,
        assume_durable: bool | None = None,
    ) -> None:
        self._namespace = check_namespace(namespace)
        self._prefix = f"kagi:{{{namespace}}}:"
        # Options in the URL's query string (socket_timeout=...) override these defaults. A blocking pool
        # makes a burst of callers queue for a connection (bounded by the deadline) instead of failing.
        pool = _CheckedPool.from_url(
            url,
            **_POOL_OPTIONS,
            max_connections=max_connections,
            timeout=connect_timeout + timeout,
            socket_connect_timeout=connect_timeout,
            socket_timeout=timeout,
            health_check_interval=health_check_interval,
            retry=Retry(NoBackoff(), 0),
            decode_responses=False,
        )
        self._client: aioredis.Redis = aioredis.Redis.from_pool(pool)
        kwargs = self._client.connection_pool.connection_kwargs
        self._where = f"{kwargs.get('host', 'unix socket')}:{kwargs.get('port', '')}"
        connect = float(kwargs.get("socket_connect_timeout") or connect_timeout)
        read = float(kwargs.get("socket_timeout") or timeout)
        # A backstop over the socket timeouts: connecting, one command and slack for the event loop.
        self._deadline = connect + read + 0.5
        self._commit_script = self._client.register_script(_COMMIT)
        self._increment_script = self._client.register_script(_INCREMENT)
        self._list_script = self._client.register_script(_LIST)
        self._closed = False
        # None (the default): from KAGI_STORE_ALLOW_VOLATILE / KAGI_STORE_ASSUME_DURABLE.
        self._allow_volatile = _flag(ALLOW_VOLATILE_ENV) if allow_volatile is None else allow_volatile
        self._assume_durable = _flag(ASSUME_DURABLE_ENV) if assume_durable is None else assume_durable
        self._durable = self._allow_volatile
        self._refusal: InvalidStoreConfig | None = None

    def __repr__(self) -> str:
        # Never the URL: it may carry a password.
        return f"RedisStore(server={self._where!r}, namespace={self._namespace!r})"

    async def get(self, collection: str, key: str) -> Entry | None:
        """Return the live entry under the key, or None."""
        check_collection(collection)
        check_key(key)
        async with self._guard():
            value, version = await self._client.hmget(self._entry(collection, key), ["v", "n"])
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
        keys = [self._version_key, self._entry(collection, key), self._index(collection)]
        async with self._guard():
            status, result = await self._increment_script(keys=keys, args=[amount, ttl_ms, key])
        if status == b"OK":
            return int(result)
        message = bytes(result).decode("utf-8", "replace")
        if "overflow" in message:
            raise InvalidKey("invalid increment", fields={"amount": "the counter would overflow 64 bits"})
        raise InvalidKey("the entry is not a counter", fields={"key": "value is not a decimal integer"})

    async def list(self, collection: str, *, page_size: int = 100, page_token: str = "") -> Page:
        """Return the durable entries of a collection in key order, one page at a time."""
        check_collection(collection)
        check_page_size(page_size)
        after = decode_page_token(page_token)
        start = "-" if after is None else "(" + after
        args: builtins.list[str | int] = [self._entry(collection, ""), start, page_size]
        async with self._guard():
            exhausted, last, rows = await self._list_script(keys=[self._index(collection)], args=args)
        entries = [Entry(bytes(k).decode("utf-8"), bytes(v), int(n)) for k, v, n in rows]
        if len(entries) > page_size:
            entries = entries[:page_size]
            token = encode_page_token(entries[-1].key)
        elif exhausted:
            token = ""
        else:  # the bounded loop stopped on a run of vanished members: resume after the last one it saw
            token = encode_page_token(bytes(last).decode("utf-8"))
        return Page(entries, token)

    async def commit(self, operations: Sequence[Operation]) -> builtins.list[Entry | None]:
        """Apply all operations in one Lua script, or none."""
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
        appendonly: str | None = None
        policy: str | None = None
        async with self._bounded():
            try:
                config = await self._client.config_get("appendonly")
                config.update(await self._client.config_get("maxmemory-policy"))
                appendonly = _info_field(config, "appendonly")
                policy = _info_field(config, "maxmemory-policy")
            except ResponseError:  # CONFIG disabled or not permitted (managed Redis): INFO then
                pass
            if appendonly is None:
                with contextlib.suppress(ResponseError):
                    enabled = _info_field(await self._client.info("persistence"), "aof_enabled")
                    appendonly = None if enabled is None else ("yes" if enabled == "1" else "no")
            if policy is None:
                with contextlib.suppress(ResponseError):
                    policy = _info_field(await self._client.info("memory"), "maxmemory_policy")
        problems = []
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
        return problems

    async def close(self) -> None:
        """Close every pooled connection; the store is unusable afterwards."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(RedisError, OSError):
            await self._client.aclose()

    @property
    def _version_key(self) -> str:
        return self._prefix + "version"

    def _entry(self, collection: str, key: str) -> str:
        return f"{self._prefix}e:{collection}:{key}"

    def _index(self, collection: str) -> str:
        return f"{self._prefix}i:{collection}"

    async def _commit(self, ops: Sequence[Operation]) -> builtins.list[int]:
        """Run the commit script for validated `ops`: per operation its new version, or 1/0 for a delete."""
        if not ops:
            return []
        keys = [self._version_key]
        args: builtins.list[str | bytes | int] = []
        for op in ops:
            keys += [self._entry(op.collection, op.key), self._index(op.collection)]
            if isinstance(op, Delete):
                want = "" if op.version is None else str(op.version)
                args += ["d", op.key, b"", want, 0]
            else:
                ttl_ms = 0 if op.ttl is None else ttl_millis(op.ttl)
                kind, want = ("c", "") if isinstance(op, Create) else ("r", str(op.version))
                args += [kind, op.key, op.value, want, ttl_ms]
        async with self._guard():
            reply = await self._commit_script(keys=keys, args=args)
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
            # BusyLoadingError, AuthenticationError and MaxConnectionsError are ConnectionErrors too.
            meta["cause"] = type(exc).__name__
            raise StoreUnavailable("the Redis store is unavailable", metadata=meta) from exc
        except ResponseError as exc:
            # redis-py turns some codes into classes and strips them from the message; others it keeps.
            if not isinstance(exc, _UNAVAILABLE_ERRORS) and not str(exc).startswith(_UNAVAILABLE_REPLIES):
                raise
            meta["cause"] = str(exc).split(" ", 1)[0]
            raise StoreUnavailable("the Redis store cannot serve requests", metadata=meta) from exc


def _as_bytes(reply: object) -> bytes:
    """Narrow a reply of a client built with decode_responses=False to the bytes it always is."""
    if not isinstance(reply, bytes):
        raise TypeError(f"expected bytes from Redis, got {type(reply).__name__}")
    return reply

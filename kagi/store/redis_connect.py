"""Opening the redis-py client a Redis store URL names: one server, a Sentinel-watched master, or a Cluster.

    redis://[user:password@]host:port/db                       one server (rediss:// for TLS)
    redis+sentinel://[user:password@]host:port,host:port/<service>/<db>   the master Sentinel names
    redis+cluster://[user:password@]host:port,host:port         a Redis Cluster (db 0 only)

`rediss+sentinel://` and `rediss+cluster://` speak TLS to every node, sentinels included. The query string takes
redis-py's connection options (`socket_timeout=2`, `ssl_ca_certs=/path`, ...) and these of kagi's own:

- `wait_replicas=N`: every write waits (`WAIT N`, on the connection that wrote it) until N replicas have it,
  or is reported unavailable; 1 for Sentinel and Cluster, 0 (do not wait) for one server;
- `wait_timeout=<seconds>`: how long a write waits for its replicas (default 1, below the socket timeout);
- `sentinel_username=`, `sentinel_password=`: credentials of the sentinels, when they have their own (the
  URL's user and password are the Redis servers').

No client retries anything on its own: a command is sent once (see RedisStore for why), and a broken
connection is found out before a command is written to it.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import (
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from kagi.store.base import InvalidStoreConfig

SCHEMES: Final = (
    "redis://host:port/db, rediss://host:port/db, redis+sentinel://host:port,host:port/<service>/<db>,"
    " redis+cluster://host:port,host:port (rediss+sentinel:// and rediss+cluster:// for TLS)"
)

Kind = Literal["server", "sentinel", "cluster"]

_OWN_OPTIONS: Final = ("wait_replicas", "wait_timeout", "sentinel_username", "sentinel_password")
_DEFAULT_WAIT_TIMEOUT: Final = 1.0

_POOL_OPTIONS: dict[str, object] = {}
try:  # recent redis-py; older versions have no maintenance notifications, and always check a pooled connection
    from redis.maint_notifications import MaintNotificationsConfig

    _POOL_OPTIONS["maint_notifications_config"] = MaintNotificationsConfig(enabled=False)
except ImportError:  # pragma: no cover - depends on the installed redis-py
    pass


class _HealthCheckedPool(aioredis.ConnectionPool):
    """Hands out only connections that work, so a Redis restart (or a failover) costs no caller an error.

    A connection taken from the pool is checked before the command is written, when nothing has reached the
    server and reconnecting is safe (a command is never re-sent: see RedisStore):

    - one the server closed (a restarted Redis) is reconnected by redis-py's own check, which maintenance
      notifications (on by default with RESP3 since redis-py 7) turn off, hence `_POOL_OPTIONS`;
    - one idle for more than `health_check_interval` is PINGed first, and reconnected when the PING fails (a
      server gone without closing its sockets, a connection a firewall forgot). A reconnection that fails
      raises: the server is down, and the caller sees StoreUnavailable. Under Sentinel, reconnecting asks the
      sentinels for the master first, so a promoted replica is found here.
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


class CheckedPool(_HealthCheckedPool, aioredis.BlockingConnectionPool):
    """A blocking pool of checked connections to one server: a burst of callers queues for a connection."""


class CheckedSentinelPool(_HealthCheckedPool, SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """A blocking pool of checked connections to the master the sentinels name (found again on reconnect)."""


@dataclass
class RedisTarget:
    """The client a URL opened, and what the store needs to know about it."""

    kind: Kind
    client: aioredis.Redis | RedisCluster
    where: str
    connect_timeout: float
    timeout: float
    wait_replicas: int
    wait_timeout: float
    sentinel: Sentinel | None = None

    async def aclose(self) -> None:
        """Close the client's connections (and the sentinels')."""
        try:
            await self.client.aclose()
        finally:
            if self.sentinel is not None:
                await self.sentinel.aclose()


def _invalid(rule: str, field: str = "url") -> InvalidStoreConfig:
    return InvalidStoreConfig("invalid Redis URL", fields={field: rule})


def connect(
    url: str, *, connect_timeout: float, timeout: float, health_check_interval: int, max_connections: int
) -> RedisTarget:
    """Return the client URL names, connected lazily; raise InvalidStoreConfig (or ValueError from redis-py)."""
    scheme, sep, _ = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in (
        "redis",
        "rediss",
        "redis+sentinel",
        "rediss+sentinel",
        "redis+cluster",
        "rediss+cluster",
    ):
        raise _invalid(f"must be one of {SCHEMES}")
    parts = urlsplit(url)
    if parts.fragment:
        raise _invalid("must not have a #fragment")
    try:
        query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise _invalid("malformed query string") from None
    own = {name: value for name, value in query if name in _OWN_OPTIONS}
    rest = urlencode([(name, value) for name, value in query if name not in _OWN_OPTIONS])
    tls = scheme.startswith("rediss")
    kind: Kind = "sentinel" if scheme.endswith("+sentinel") else "cluster" if scheme.endswith("+cluster") else "server"
    wait_replicas = _int_option(own, "wait_replicas", 1 if kind != "server" else 0)
    wait_timeout = _seconds_option(own, "wait_timeout", _DEFAULT_WAIT_TIMEOUT)
    defaults: dict[str, Any] = {
        "socket_connect_timeout": connect_timeout,
        "socket_timeout": timeout,
        "health_check_interval": health_check_interval,
        "retry": Retry(NoBackoff(), 0),
        "decode_responses": False,
    }

    if kind == "server":
        if "sentinel_username" in own or "sentinel_password" in own:
            raise _invalid("sentinel_username and sentinel_password are for redis+sentinel:// URLs")
        plain = urlunsplit((parts.scheme, parts.netloc, parts.path, rest, ""))
        # Options in the URL's query string (socket_timeout=...) override these defaults. A blocking pool
        # makes a burst of callers queue for a connection (bounded by the deadline) instead of failing.
        pool = CheckedPool.from_url(
            plain, **_POOL_OPTIONS, max_connections=max_connections, timeout=connect_timeout + timeout, **defaults
        )
        kwargs = pool.connection_kwargs
        where = f"{kwargs.get('host', 'unix socket')}:{kwargs.get('port', '')}"
        return _target(kind, aioredis.Redis.from_pool(pool), where, kwargs, wait_replicas, wait_timeout, None)

    userinfo, at, hosts = parts.netloc.rpartition("@")
    nodes = _nodes(hosts, 26379 if kind == "sentinel" else 6379)
    # redis-py parses the credentials and the options: hand it the same URL with one placeholder host.
    base = "rediss" if tls else "redis"
    if kind == "sentinel":
        service, _, db = unquote(parts.path).lstrip("/").partition("/")
        if not service:
            raise _invalid("redis+sentinel:// needs the service name as the path: /<service>/<db>")
        db = db.rstrip("/") or "0"
    else:
        db = unquote(parts.path).strip("/") or "0"
        if db != "0":
            raise _invalid("a Redis Cluster has database 0 only")
    options: dict[str, Any] = dict(parse_url(urlunsplit((base, f"{userinfo}{at}127.0.0.1", f"/{db}", rest, ""))))
    options.pop("host", None)
    options.pop("port", None)
    options.pop("connection_class", None)
    settings = {**defaults, **options}
    where = f"{kind} " + ",".join(f"{host}:{port}" for host, port in nodes)

    if kind == "sentinel":
        sentinel_kwargs: dict[str, Any] = {
            name: settings[name] for name in ("socket_connect_timeout", "socket_timeout", "retry")
        }
        if "sentinel_username" in own:
            sentinel_kwargs["username"] = own["sentinel_username"]
        if "sentinel_password" in own:
            sentinel_kwargs["password"] = own["sentinel_password"]
        if tls:
            sentinel_kwargs["ssl"] = True
            sentinel_kwargs.update((name, value) for name, value in settings.items() if name.startswith("ssl_"))
        sentinel = Sentinel(nodes, sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
        sentinel_pool = CheckedSentinelPool(  # type: ignore[no-untyped-call]
            service,
            sentinel,
            connection_class=SentinelManagedSSLConnection if tls else SentinelManagedConnection,
            max_connections=max_connections,
            timeout=connect_timeout + timeout,
            **_POOL_OPTIONS,
            **settings,
        )
        client = aioredis.Redis.from_pool(sentinel_pool)
        return _target(kind, client, f"{where}/{service}", settings, wait_replicas, wait_timeout, sentinel)

    settings.pop("db", None)
    try:
        cluster = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in nodes],
            max_connections=max_connections,
            require_full_coverage=True,
            ssl=tls,
            **settings,
        )
    except TypeError as exc:  # an option RedisCluster does not take; the message names it, never a password
        raise _invalid(f"an option a Redis Cluster client does not take: {exc}") from None
    return _target(kind, cluster, where, settings, wait_replicas, wait_timeout, None)


def _target(
    kind: Kind,
    client: aioredis.Redis | RedisCluster,
    where: str,
    kwargs: dict[str, Any],
    wait_replicas: int,
    wait_timeout: float,
    sentinel: Sentinel | None,
) -> RedisTarget:
    connect = float(kwargs.get("socket_connect_timeout") or 2.0)
    read = float(kwargs.get("socket_timeout") or 2.0)
    if wait_replicas and wait_timeout >= read:
        raise _invalid("must be shorter than socket_timeout, or the wait outlives its reply", "wait_timeout")
    return RedisTarget(kind, client, where, connect, read, wait_replicas, wait_timeout, sentinel)


def _nodes(hosts: str, default_port: int) -> list[tuple[str, int]]:
    nodes = []
    for part in hosts.split(","):
        try:
            parsed = urlsplit("//" + part.strip())
            host, port = parsed.hostname, parsed.port or default_port
        except ValueError:
            raise _invalid("each node must be host or host:port, with a port number") from None
        if not host:
            raise _invalid("each node must be host or host:port, separated by commas")
        nodes.append((host, port))
    return nodes


def _int_option(options: dict[str, str], name: str, default: int) -> int:
    if name not in options:
        return default
    value = options[name]
    if not value.isdigit() or int(value) > 16:
        raise _invalid("must be a whole number from 0 to 16", name)
    return int(value)


def _seconds_option(options: dict[str, str], name: str, default: float) -> float:
    if name not in options:
        return default
    try:
        value = float(options[name])
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise _invalid("must be a positive number of seconds", name)
    return value

"""The state store: the KeyValueStore interface, its errors and records, and `open_store` to pick a driver.

Services depend on this package only; which backend they get is a URL in their settings:

    sqlite:                      <state_dir>/<namespace>.db (the embedded default)
    sqlite:///abs/path.db        that file (one file per service: it remembers its namespace)
    redis://host:6379/0          one Redis server, keys under kagi:{<namespace>...}  (rediss:// for TLS)
    redis+sentinel://host:26379,host:26379/<service>/0
                                 the master the sentinels name for <service>, found again after a failover
    redis+cluster://host:7000,host:7001
                                 a Redis Cluster (any reachable nodes; the others are discovered)

Credentials go before the hosts (`redis://user:password@host:6379/0`, the same for every form);
`rediss+sentinel://` and `rediss+cluster://` use TLS to every node. SQLite URLs take `?busy_timeout=<seconds>`;
Redis URLs take redis-py's query options such as `?socket_timeout=2&socket_connect_timeout=2&ssl_ca_certs=...`,
and `wait_replicas=N` / `wait_timeout=<seconds>` (every write waits for N replicas: 1 under Sentinel and Cluster,
0 on one server) and `sentinel_username` / `sentinel_password` (the sentinels' own credentials).

`placement` (see `Placement`) says which collections are spread by aggregate: on a Redis Cluster each
aggregate's entries share one slot, and a service's aggregates spread over every shard.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from kagi.clock import Clock
from kagi.store.base import (
    MAX_KEY_BYTES,
    MAX_PAGE_SIZE,
    MAX_VALUE_BYTES,
    SERVICE_WIDE,
    ConditionFailed,
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
    StoreError,
    StoreUnavailable,
    VersionMismatch,
    check_namespace,
)
from kagi.store.group_commit import GroupCommitStore
from kagi.store.redis import RedisStore
from kagi.store.redis_connect import SCHEMES as _REDIS_SCHEMES
from kagi.store.sqlite import SQLiteStore

__all__ = [
    "MAX_KEY_BYTES",
    "MAX_PAGE_SIZE",
    "MAX_VALUE_BYTES",
    "SERVICE_WIDE",
    "ConditionFailed",
    "Create",
    "Delete",
    "Entry",
    "FailedOperation",
    "FailureCause",
    "GroupCommitStore",
    "InvalidKey",
    "InvalidStoreConfig",
    "KeyExists",
    "KeyValueStore",
    "Operation",
    "Page",
    "Placement",
    "Replace",
    "StoreError",
    "StoreUnavailable",
    "VersionMismatch",
    "check_at_start",
    "open_store",
]

_SCHEMES = f"sqlite:, sqlite:///<absolute path>, {_REDIS_SCHEMES}"


def open_store(
    url: str,
    *,
    namespace: str,
    state_dir: Path | None,
    clock: Clock | None = None,
    placement: Placement = SERVICE_WIDE,
) -> KeyValueStore:
    """Return the store a URL names for one service (`namespace`, e.g. "ca", "otp").

    Nothing is connected yet: the first call (or `ping`) opens the file or the connection, so a backend that
    is down shows up as StoreUnavailable there, not here; `sqlite:` creates the state directory then. A
    malformed URL raises InvalidStoreConfig. The `clock` drives SQLite expiry; Redis uses its own clock.
    `placement` groups keys (see `Placement`); every driver enforces it, so keep it the same for a service.
    """
    check_namespace(namespace)
    if not isinstance(url, str):
        raise InvalidStoreConfig("invalid store URL", fields={"url": f"must be one of {_SCHEMES}"})
    scheme = url.partition(":")[0].lower()
    if scheme == "sqlite":
        return _open_sqlite(url, namespace=namespace, state_dir=state_dir, clock=clock, placement=placement)
    if scheme in ("redis", "rediss", "redis+sentinel", "rediss+sentinel", "redis+cluster", "rediss+cluster"):
        try:
            return RedisStore(url, namespace=namespace, placement=placement)
        except ValueError as exc:  # redis-py's complaint names only the bad option, never the password
            raise InvalidStoreConfig("invalid Redis URL", fields={"url": str(exc)}) from None
    # The URL itself is not echoed: it may carry a password.
    raise InvalidStoreConfig("unsupported store URL scheme", fields={"url": f"must be one of {_SCHEMES}"})


async def check_at_start(store: KeyValueStore) -> None:
    """Make a service's start refuse a store that would lose acknowledged state (a Redis
    without AOF or with eviction: InvalidStoreConfig naming the settings). A store that is down is not a
    refusal: readiness waits it out, and the check runs on its first contact."""
    with contextlib.suppress(StoreUnavailable):
        await store.ping()


def _open_sqlite(
    url: str, *, namespace: str, state_dir: Path | None, clock: Clock | None, placement: Placement
) -> SQLiteStore:
    parts = urlsplit(url)
    if parts.netloc or parts.fragment:
        raise InvalidStoreConfig(
            "invalid SQLite URL", fields={"url": "use sqlite: or sqlite:///<absolute path>, with no host"}
        )
    try:
        options = dict(parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query)))
    except ValueError:
        raise InvalidStoreConfig("invalid SQLite URL", fields={"url": "malformed query string"}) from None
    busy_timeout = 5.0
    for name, value in options.items():
        if name != "busy_timeout":
            raise InvalidStoreConfig("invalid SQLite URL", fields={"url": f"unknown option {name!r}"})
        try:
            busy_timeout = float(value)
        except ValueError:
            busy_timeout = math.nan
        if not (busy_timeout > 0 and math.isfinite(busy_timeout)):
            raise InvalidStoreConfig(
                "invalid SQLite URL", fields={"busy_timeout": "must be a positive number of seconds"}
            )
    if parts.path:
        path = Path(unquote(parts.path))
        if not path.is_absolute():
            raise InvalidStoreConfig("invalid SQLite URL", fields={"url": "the path must be absolute"})
    elif state_dir is None:
        raise InvalidStoreConfig("invalid SQLite URL", fields={"url": "sqlite: without a path needs a state directory"})
    else:
        return SQLiteStore(
            state_dir / f"{namespace}.db",
            namespace=namespace,
            clock=clock,
            busy_timeout=busy_timeout,
            make_parent=True,
            placement=placement,
        )
    return SQLiteStore(path, namespace=namespace, clock=clock, busy_timeout=busy_timeout, placement=placement)

"""The embedded SQLite driver: one WAL-mode file per service, each write one `BEGIN IMMEDIATE` transaction.

One file holds every placement group; versions come from one counter for the whole file (so they increase
store-wide, more than the contract's per-group promise). The placement is still enforced, so a commit that
would be refused on a Redis Cluster is refused here too.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import math
import os
import re
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final, TypeVar, cast

from kagi.clock import Clock, SystemClock
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
    check_counter,
    check_key,
    check_namespace,
    check_page_size,
    decode_page_token,
    encode_page_token,
    ttl_millis,
)

_T = TypeVar("_T")

# WITHOUT ROWID clusters rows by (collection, key), so a listing is a range scan of the primary key. The
# partial index on expires_at lets the bulk purge find expired rows without touching durable ones.
_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS entries (
        collection TEXT NOT NULL,
        key TEXT NOT NULL,
        value BLOB NOT NULL,
        version INTEGER NOT NULL,
        expires_at REAL,
        PRIMARY KEY (collection, key)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS entries_expiry ON entries (expires_at) WHERE expires_at IS NOT NULL",
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value NOT NULL) WITHOUT ROWID",
    "INSERT OR IGNORE INTO meta (name, value) VALUES ('version', 0)",
)

_COUNTER_RE: Final = re.compile(rb"-?[0-9]{1,19}")

# Every this many writes one transaction also deletes a bounded batch of expired rows, so transient entries
# that are never read again do not pile up; reads already treat them as absent.
_PURGE_EVERY: Final = 256
_PURGE_BATCH: Final = 512

# A delete reports whether it removed a live entry; creates and replaces report the entry they wrote.
_Outcome = Entry | bool


class SQLiteStore(KeyValueStore):
    """Keeps one service's state in a SQLite file; several processes may share the file.

    One worker thread owns the connection and runs every call, so the connection is never shared between
    threads. Writes take the file's write lock up front (`BEGIN IMMEDIATE`) and wait for it at most
    `busy_timeout` seconds before raising StoreUnavailable; expiry follows the injected clock. With
    `make_parent` the file's directory is created (owner-only) when missing.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        namespace: str,
        clock: Clock | None = None,
        busy_timeout: float = 5.0,
        make_parent: bool = False,
        placement: Placement = SERVICE_WIDE,
    ) -> None:
        if not busy_timeout > 0 or not math.isfinite(busy_timeout):
            raise InvalidStoreConfig(
                "invalid SQLite busy timeout", fields={"busy_timeout": "must be a positive number of seconds"}
            )
        self._path = Path(path)
        self._namespace = check_namespace(namespace)
        self._clock: Clock = clock or SystemClock()
        self._busy_timeout = busy_timeout
        self._make_parent = make_parent
        self._placement = placement
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"kagi-sqlite-{namespace}")
        self._conn: sqlite3.Connection | None = None  # opened and used only on the worker thread
        self._writes = 0  # worker thread only
        self._closed = False

    def __repr__(self) -> str:
        return f"SQLiteStore(path={str(self._path)!r}, namespace={self._namespace!r})"

    @property
    def placement(self) -> Placement:
        """Return the placement the store enforces on commits."""
        return self._placement

    @property
    def path(self) -> Path:
        """Return the database file."""
        return self._path

    async def get(self, collection: str, key: str) -> Entry | None:
        """Return the live entry under the key, or None."""
        check_collection(collection)
        check_key(key)
        self._placement.group(collection, key)
        return await self._run(lambda conn: self._get(conn, collection, key))

    async def create(self, collection: str, key: str, value: bytes, *, ttl: float | None = None) -> Entry:
        """Write a new entry if none is live under the key; otherwise raise KeyExists."""
        return cast(Entry, await self._commit_one(Create(collection, key, value, ttl)))

    async def compare_and_swap(
        self, collection: str, key: str, value: bytes, *, version: int, ttl: float | None = None
    ) -> Entry:
        """Replace the entry if it is at `version`; otherwise raise VersionMismatch."""
        return cast(Entry, await self._commit_one(Replace(collection, key, value, version, ttl)))

    async def delete(self, collection: str, key: str, *, version: int | None = None) -> bool:
        """Remove the entry (only at `version` when given) and say whether one was removed."""
        return cast(bool, await self._commit_one(Delete(collection, key, version)))

    async def increment(self, collection: str, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        """Add `amount` to a counter and return the new value (fixed window `ttl` at creation)."""
        check_collection(collection)
        check_key(key)
        check_amount(amount)
        self._placement.group(collection, key)
        if ttl is not None:
            ttl_millis(ttl)
        return await self._run(
            lambda conn: self._write(conn, lambda now: self._increment(conn, now, collection, key, amount, ttl))
        )

    async def list(self, collection: str, *, page_size: int = 100, page_token: str = "") -> Page:
        """Return the durable entries of a collection in key order, one page at a time."""
        check_collection(collection)
        check_page_size(page_size)
        after = decode_page_token(page_token) or ""
        rows = await self._run(
            lambda conn: conn.execute(
                "SELECT key, value, version FROM entries"
                " WHERE collection = ? AND key > ? AND expires_at IS NULL ORDER BY key LIMIT ?",
                (collection, after, page_size + 1),
            ).fetchall()
        )
        entries = [Entry(str(k), bytes(v), int(n)) for k, v, n in rows[:page_size]]
        token = encode_page_token(entries[-1].key) if len(rows) > page_size else ""
        return Page(entries, token)

    async def commit(self, operations: Sequence[Operation]) -> builtins.list[Entry | None]:
        """Apply all operations in one transaction, or none."""
        ops = check_commit(operations)
        _check_ttls(ops)
        self._placement.group_of(ops)
        if not ops:
            return []
        outcomes = await self._run(lambda conn: self._write(conn, lambda now: self._apply(conn, now, ops)))
        return [o if isinstance(o, Entry) else None for o in outcomes]

    async def ping(self) -> None:
        """Return when the file can be opened and read; raise StoreUnavailable otherwise."""
        await self._run(lambda conn: conn.execute("SELECT value FROM meta WHERE name = 'version'").fetchone())

    async def close(self) -> None:
        """Close the connection and stop the worker thread; the store is unusable afterwards."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        # Calls queued before close still run first: the worker takes jobs in order.
        await loop.run_in_executor(self._executor, self._close_connection)
        self._executor.shutdown(wait=False)

    async def _run(self, job: Callable[[sqlite3.Connection], _T]) -> _T:
        if self._closed:
            raise StoreUnavailable("the store is closed", reason="STORE_CLOSED")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, job)

    async def _commit_one(self, op: Operation) -> _Outcome:
        ops = check_commit([op])
        _check_ttls(ops)
        self._placement.group_of(ops)
        outcomes = await self._run(lambda conn: self._write(conn, lambda now: self._apply(conn, now, ops)))
        return outcomes[0]

    # -- everything below runs on the worker thread ------------------------------------------------------

    def _call(self, job: Callable[[sqlite3.Connection], _T]) -> _T:
        try:
            return job(self._connection())
        except sqlite3.OperationalError as exc:
            # "database is locked", "unable to open database file", "disk I/O error", "database or disk is
            # full": the backend, not the request, is at fault, and the transaction was rolled back.
            raise StoreUnavailable("the SQLite store is unavailable", metadata={"cause": str(exc)}) from exc
        except sqlite3.DatabaseError as exc:
            if type(exc) is not sqlite3.DatabaseError:  # integrity/programming errors are bugs: let them show
                raise
            raise StoreUnavailable("the SQLite store is unreadable", metadata={"cause": str(exc)}) from exc
        except OSError as exc:
            # strerror, not str(exc): metadata may reach a client, and the file name is none of its business.
            cause = exc.strerror or type(exc).__name__
            raise StoreUnavailable("the SQLite store is unavailable", metadata={"cause": cause}) from exc

    def _connection(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        if self._make_parent:
            self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not self._path.exists():
            # Created owner-only before SQLite touches it; the -wal and -shm files copy these permissions.
            os.close(os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600))
        conn = sqlite3.connect(self._path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=True)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            mode = self._enable_wal(conn)
            if mode != "wal":
                raise sqlite3.OperationalError(f"cannot switch the journal to WAL (got {mode})")
            # FULL fsyncs the WAL at each commit: an acknowledged write survives power loss, not just a crash.
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute("INSERT OR IGNORE INTO meta (name, value) VALUES ('namespace', ?)", (self._namespace,))
                (owner,) = conn.execute("SELECT value FROM meta WHERE name = 'namespace'").fetchone()
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
            if owner != self._namespace:
                raise InvalidStoreConfig(
                    "the SQLite file belongs to another namespace",
                    fields={"namespace": f"this file holds {owner!r}; give each service its own file"},
                )
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _enable_wal(self, conn: sqlite3.Connection) -> str:
        # Switching a new file to WAL needs an exclusive lock, and SQLite reports a clash with another
        # process doing the same as "locked" at once instead of calling the busy handler; so retry here,
        # within the same busy timeout. WAL is persistent: only the very first open of a file switches it.
        deadline = time.monotonic() + self._busy_timeout
        while True:
            try:
                (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
                return str(mode).lower()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(0.005)  # on the worker thread, never the event loop

    def _close_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _write(self, conn: sqlite3.Connection, body: Callable[[float], _T]) -> _T:
        # The clock is read after the write lock is held, so expiry decisions and the rows they see agree.
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = body(self._clock.now())
            self._writes += 1
            if self._writes % _PURGE_EVERY == 0:
                self._purge(conn)
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        return result

    def _purge(self, conn: sqlite3.Connection) -> None:
        conn.execute(
            "DELETE FROM entries WHERE (collection, key) IN"
            " (SELECT collection, key FROM entries WHERE expires_at <= ? LIMIT ?)",
            (self._clock.now(), _PURGE_BATCH),
        )

    def _get(self, conn: sqlite3.Connection, collection: str, key: str) -> Entry | None:
        row = conn.execute(
            "SELECT value, version FROM entries"
            " WHERE collection = ? AND key = ? AND (expires_at IS NULL OR expires_at > ?)",
            (collection, key, self._clock.now()),
        ).fetchone()
        return None if row is None else Entry(key, bytes(row[0]), int(row[1]))

    def _allocate(self, conn: sqlite3.Connection, count: int) -> int:
        """Reserve `count` versions in this transaction and return the first."""
        (top,) = conn.execute(
            "UPDATE meta SET value = value + ? WHERE name = 'version' RETURNING value", (count,)
        ).fetchone()
        return int(top) - count + 1

    def _apply(self, conn: sqlite3.Connection, now: float, ops: Sequence[Operation]) -> builtins.list[_Outcome]:
        # Every condition is checked before the first row changes; a failure raises and the caller rolls back.
        found: builtins.list[tuple[bool, int | None]] = []  # (a row exists, live version)
        for index, op in enumerate(ops):
            row = conn.execute(
                "SELECT version, expires_at FROM entries WHERE collection = ? AND key = ?",
                (op.collection, op.key),
            ).fetchone()
            live = None if row is None or (row[1] is not None and row[1] <= now) else int(row[0])
            found.append((row is not None, live))
            if isinstance(op, Create):
                if live is not None:
                    failed = FailedOperation(index, op.collection, op.key, FailureCause.KEY_EXISTS)
                    raise KeyExists("an entry exists under that key", failed=failed)
            elif (isinstance(op, Replace) or op.version is not None) and live != op.version:
                cause = FailureCause.GONE if live is None else FailureCause.VERSION_MISMATCH
                failed = FailedOperation(index, op.collection, op.key, cause)
                raise VersionMismatch("the entry is not at the expected version", failed=failed)

        writes = sum(not isinstance(op, Delete) for op in ops)
        version = self._allocate(conn, writes) if writes else 0
        outcomes: builtins.list[_Outcome] = []
        for op, (exists, live) in zip(ops, found, strict=True):
            if isinstance(op, Delete):
                if exists:  # also removes an expired row that was still lying there
                    conn.execute("DELETE FROM entries WHERE collection = ? AND key = ?", (op.collection, op.key))
                outcomes.append(live is not None)
                continue
            expires_at = None if op.ttl is None else now + op.ttl
            _upsert(conn, op.collection, op.key, op.value, version, expires_at)
            outcomes.append(Entry(op.key, bytes(op.value), version))
            version += 1
        return outcomes

    def _increment(
        self,
        conn: sqlite3.Connection,
        now: float,
        collection: str,
        key: str,
        amount: int,
        ttl: float | None,
    ) -> int:
        row = conn.execute(
            "SELECT value, expires_at FROM entries WHERE collection = ? AND key = ?", (collection, key)
        ).fetchone()
        if row is None or (row[1] is not None and row[1] <= now):
            current, expires_at = 0, (None if ttl is None else now + ttl)
        else:
            raw = bytes(row[0])
            if not _COUNTER_RE.fullmatch(raw):
                raise InvalidKey("the entry is not a counter", fields={"key": "value is not a decimal integer"})
            current, expires_at = int(raw), row[1]  # a fixed window: the expiry set at creation stays
        value = check_counter(current + amount)
        version = self._allocate(conn, 1)
        _upsert(conn, collection, key, str(value).encode("ascii"), version, expires_at)
        return value


def _upsert(
    conn: sqlite3.Connection, collection: str, key: str, value: bytes, version: int, expires_at: float | None
) -> None:
    conn.execute(
        "INSERT INTO entries (collection, key, value, version, expires_at) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (collection, key) DO UPDATE SET"
        " value = excluded.value, version = excluded.version, expires_at = excluded.expires_at",
        (collection, key, value, version, expires_at),
    )


def _rollback(conn: sqlite3.Connection) -> None:
    # The error that got us here is the one worth reporting; SQLite also rolls back on close.
    with contextlib.suppress(sqlite3.Error):
        if conn.in_transaction:
            conn.execute("ROLLBACK")


def _check_ttls(ops: Sequence[Operation]) -> None:
    for op in ops:
        if not isinstance(op, Delete) and op.ttl is not None:
            ttl_millis(op.ttl)

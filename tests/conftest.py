"""Fixtures shared by every test folder: real redis-server processes on loopback and isolated namespaces.

- `redis_server` (session): the URL of one Redis for the whole run. `KAGI_TEST_REDIS_URL` wins (then
  KAGI_STORE_ALLOW_VOLATILE=1 is set, as that Redis may run without AOF); otherwise a `redis-server` from PATH
  (the Debian package) is started with AOF `appendfsync always`; failing that, a Docker Redis through
  testcontainers. With none of them the run fails: CI installs redis-server.
- `redis_factory` (function): starts separate redis-servers a test may SIGKILL, SIGSTOP and restart.
- `namespace` (function): a fresh store namespace, so tests sharing one Redis never see each other's keys.

Folders add their own conftest.py for their own fixtures; keep this one small.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.ports import free_port

REDIS_BINARY = shutil.which("redis-server")
_NO_REDIS = (
    "these tests need Redis: install the redis-server package (apt-get install redis-server), "
    "set KAGI_TEST_REDIS_URL=redis://127.0.0.1:<port>/<db>, or make a Docker engine reachable"
)


class RedisServer:
    """One redis-server child process on 127.0.0.1 that a test may kill and restart.

    Persistence defaults to AOF with `appendfsync always`, so every acknowledged write is on disk; a restart
    reuses the same directory and port, so it reloads what the killed process had written.
    """

    def __init__(self, directory: Path, *, port: int | None = None, appendonly: bool = True) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.appendonly = appendonly
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Return the redis:// URL of this server (database 0)."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> None:
        """Launch the server and return once it answers PING (after loading its AOF)."""
        if REDIS_BINARY is None:
            pytest.fail(_NO_REDIS)
        self.directory.mkdir(parents=True, exist_ok=True)
        argv = [REDIS_BINARY, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory)]
        argv += ["--save", "", "--daemonize", "no", "--logfile", str(self.directory / "redis.log")]
        if self.appendonly:
            argv += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            argv += ["--appendonly", "no"]
        self._process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not self._answers_ping():
            if self._process.poll() is not None:
                log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                pytest.fail(f"redis-server exited with {self._process.returncode}:\n{log}")
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"redis-server on port {self.port} did not answer within {timeout} s")
            time.sleep(0.02)  # polling a starting process, not waiting out a window

    def kill(self) -> None:
        """Send SIGKILL (no shutdown, no final fsync) and reap the process."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGCONT)  # a stopped process must not stay stopped for good
            self._process.kill()
            self._process.wait(timeout=10)
        self._process = None

    def pause(self) -> None:
        """Freeze the server with SIGSTOP: connections stay open but nothing answers."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Undo `pause` with SIGCONT."""
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")  # "-LOADING" while the AOF is replayed
        except OSError:
            return False


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Return the URL of the Redis shared by the whole test run (see the module docstring)."""
    if url := os.environ.get("KAGI_TEST_REDIS_URL"):
        # A Redis the runner brings (the machine's, often without AOF): the store's durability check would
        # refuse it, and these tests do not restart it. Children (kagi serve) inherit the setting.
        os.environ.setdefault("KAGI_STORE_ALLOW_VOLATILE", "1")
        yield url
        return
    if REDIS_BINARY is not None:
        server = RedisServer(tmp_path_factory.mktemp("redis-session"))
        server.start()
        try:
            yield server.url
        finally:
            server.kill()
        return
    yield from _docker_redis()


def _docker_redis() -> Iterator[str]:
    try:
        import docker  # type: ignore[import-untyped]  # comes with testcontainers, without stubs

        docker.from_env().ping()
    except Exception:  # any failure here means "no Docker engine"
        pytest.fail(_NO_REDIS)
    from testcontainers.redis import RedisContainer

    port = free_port()
    container = RedisContainer("redis:7").with_bind_ports(6379, port)
    container.with_command("redis-server --save '' --appendonly yes --appendfsync always")
    with container:
        yield f"redis://127.0.0.1:{port}/0"


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start separate, killable redis-servers (needs the redis-server binary); all die after."""
    if REDIS_BINARY is None:
        pytest.fail("killing and restarting Redis needs the redis-server binary: " + _NO_REDIS)
    servers: list[RedisServer] = []

    def start(*, appendonly: bool = True) -> RedisServer:
        server = RedisServer(tmp_path / f"redis-{len(servers)}", appendonly=appendonly)
        servers.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.kill()


@pytest.fixture
def namespace() -> str:
    """Return a store namespace no other test uses."""
    return f"t{uuid.uuid4().hex[:16]}"

"""A redis-server started with any options (TLS, an ACL file), and the deployment's ACL file made for a test.

tests/conftest.py's RedisServer checks readiness with a plaintext, anonymous PING, which a server that wants TLS
or has its `default` user off never answers; this one waits for the server's own "ready" line in its log.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from kagi.store import Create, Entry, KeyValueStore, Replace
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
ACL_POLICY = ROOT / "deploy" / "redis" / "users.acl"
ACL_SCRIPT = ROOT / "deploy" / "redis" / "users-acl.sh"
REDIS_BINARY = shutil.which("redis-server")
COMPONENTS = ("ca", "otp", "enrollment", "gateway")
"""The components with a Redis user each (`kagi-<component>`), and the store namespace each one writes."""


class SecuredRedis:
    """One redis-server child on 127.0.0.1 with AOF on and the options a test gives (TLS, ACL, ...)."""

    def __init__(
        self,
        directory: Path,
        options: Sequence[str],
        *,
        port: int | None = None,
        config: Path | None = None,
        ready_line: str = "Ready to accept connections",
    ) -> None:
        self.directory = directory
        self.config = config  # a configuration file, which redis-server takes only as its first argument
        self.ready_line = ready_line  # what the log says once the server serves (a sentinel says another thing)
        self.port = port or free_port()
        self.options = list(options)
        self.log = directory / "redis.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._log_start = 0

    def start(self, timeout: float = 30.0) -> None:
        """Launch the server and return once its log says it accepts connections."""
        if REDIS_BINARY is None:
            pytest.fail("this test needs the redis-server binary (apt-get install redis-server)")
        self.directory.mkdir(parents=True, exist_ok=True)
        argv = [
            REDIS_BINARY,
            *([str(self.config)] if self.config else []),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--save",
            "",
        ]
        argv += ["--appendonly", "yes", "--appendfsync", "always", "--maxmemory-policy", "noeviction"]
        argv += ["--daemonize", "no", "--logfile", str(self.log), *self.options]
        if "--port" not in self.options:
            argv += ["--port", str(self.port)]
        self._log_start = len(self._log_text())  # a restart appends to the same log: read only what it writes
        self._process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while self.ready_line not in self._log_text()[self._log_start :]:
            if self._process.poll() is not None:
                pytest.fail(f"redis-server exited with {self._process.returncode}:\n{self._log_text()[-2000:]}")
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"redis-server did not get ready within {timeout} s:\n{self._log_text()[-2000:]}")
            time.sleep(0.05)  # polling a starting process, not waiting out a window

    def stop(self) -> None:
        """Kill the server (SIGKILL: no shutdown, no final fsync) and reap it; `start` starts it again on the
        same port and directory, where it reloads its AOF."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=10)
        self._process = None

    def _log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def write_acl_file(directory: Path, passwords: Mapping[str, str]) -> Path:
    """Make the deployment's ACL file (deploy/redis/users.acl) with `passwords` (user name -> password; a user
    left out gets `<user>-password`) the way deploy/redis/start.sh does, through deploy/redis/users-acl.sh;
    return its path."""
    password_dir = directory / "passwords"
    password_dir.mkdir(parents=True, exist_ok=True)
    users = [line.split()[1] for line in ACL_POLICY.read_text().splitlines() if " on " in f" {line} "]
    for user, password in {**{user: f"{user}-password" for user in users}, **passwords}.items():
        (password_dir / user).write_text(password + "\n")
    done = subprocess.run(
        ["sh", str(ACL_SCRIPT), str(ACL_POLICY), str(password_dir)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    acl_file = directory / "users.acl"
    acl_file.write_text(done.stdout)
    return acl_file


async def exercise_store(store: KeyValueStore) -> None:
    """Make every kind of call the services make through `store`, checking each answer: create, get, a commit
    of two writes, compare-and-swap, list (the script that reads entries by names it builds), a counter with a
    window (what the gateway's rate limits do), and delete."""
    first = await store.create("things", "a", b"first")
    assert await store.get("things", "a") == first
    second, again = await store.commit(
        [Create("things", "b", b"second"), Replace("things", "a", b"again", version=first.version)]
    )
    assert isinstance(second, Entry)
    assert isinstance(again, Entry)
    swapped = await store.compare_and_swap("things", "b", b"third", version=second.version)
    page = await store.list("things")
    assert [(entry.key, entry.value) for entry in page.entries] == [("a", b"again"), ("b", b"third")]
    assert page.entries[1] == swapped
    assert await store.increment("counters", "window-1", ttl=60) == 1
    assert await store.increment("counters", "window-1", ttl=60) == 2
    assert await store.delete("things", "b", version=swapped.version)
    assert await store.get("things", "b") is None

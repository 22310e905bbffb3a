"""What the benchmarks share: free ports, a throwaway redis-server, CPU accounting from /proc, percentiles, waiting
for a server's port, and the OCSP fixture of the CA's in-process and gRPC benchmarks."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from kagi.clock import Clock
from services.ca_service.adapters.file_signer import PrivateKeySigner
from services.ca_service.domain.hierarchy import build_hierarchy, issue_ocsp_signer
from services.ca_service.domain.keys import KeyAlgorithm
from services.ca_service.domain.ocsp import OcspResponder, OcspResponseCache, answer_ocsp, parse_ocsp_request
from services.ca_service.domain.revocation import CertificateStatus
from services.ca_service.domain.settings import CaKind, PkiSettings
from tests.support.ports import free_port

__all__ = [
    "OcspFixture",
    "RedisServer",
    "cpu_seconds",
    "free_port",
    "machine_busy_seconds",
    "ocsp_fixture",
    "percentile",
    "process_tree",
    "wait_for_port",
]


# -- Redis --------------------------------------------------------------------------------------------------


class RedisServer:
    """A redis-server on a free loopback port in `directory`, answering PING once constructed; a context manager.

    Persistence is off (the benchmarks measure kagi, not fsync) unless `aof_always` asks for AOF with an fsync per
    write. A Redis without AOF is refused by the services unless KAGI_STORE_ALLOW_VOLATILE=1, which this sets for
    the benchmark and the child processes it starts.
    """

    def __init__(self, directory: Path, *, aof_always: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed (apt-get install redis-server)")
        if not aof_always:
            os.environ["KAGI_STORE_ALLOW_VOLATILE"] = "1"
        self.port = free_port()
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(directory), "--save", ""]
        argv += ["--appendonly", "yes", "--appendfsync", "always"] if aof_always else ["--appendonly", "no"]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            self._wait_for_pong()
        except BaseException:
            self.stop()
            raise

    def _wait_for_pong(self) -> None:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("redis-server did not start")
            time.sleep(0.02)

    @property
    def base_url(self) -> str:
        """Return the server's URL without a database number."""
        return f"redis://127.0.0.1:{self.port}"

    def url(self, database: int = 0) -> str:
        """Return the URL of one of the server's databases."""
        return f"{self.base_url}/{database}"

    def stop(self) -> None:
        """Stop the server and wait for it to exit."""
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


# -- CPU accounting -----------------------------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """Return `pid` and all its descendants (a server's worker processes, nginx's workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def cpu_seconds(pids: Iterable[int]) -> float:
    """Return the user + system CPU seconds the processes have used so far (one that has exited counts 0)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """Return the CPU seconds all processes have used (everything but idle and iowait), from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def percentile(values: Sequence[float], fraction: float) -> float:
    """Return the value at `fraction` (0.5: the median) of `values` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


# -- servers ------------------------------------------------------------------------------------------------


async def wait_for_port(port: int, *, exited: Callable[[], int | None] | None = None, within: float = 30.0) -> None:
    """Wait until something listens on 127.0.0.1:`port`; fail early when `exited` reports the server's exit.

    It yields to the event loop between tries, so services in this process keep answering the starting server.
    """
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        status = exited() if exited is not None else None
        if status is not None:
            raise RuntimeError(f"the server exited with {status}")
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {within:g} s")


# -- the OCSP fixture ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OcspFixture:
    """A delegated OCSP responder of a fresh customer CA, a request about the responder's own certificate, that
    certificate's status and an empty response cache."""

    responder: OcspResponder
    request: bytes
    status: CertificateStatus
    cache: OcspResponseCache
    settings: PkiSettings
    clock: Clock

    def uncached(self) -> object:
        """Parse the request and sign a fresh answer."""
        parsed = parse_ocsp_request(self.request)
        return answer_ocsp(self.responder, parsed, self.status, settings=self.settings, clock=self.clock)

    def cached(self) -> object:
        """Parse the request and answer it from the cache (signed once, on the first call)."""
        parsed = parse_ocsp_request(self.request)
        return answer_ocsp(
            self.responder, parsed, self.status, settings=self.settings, clock=self.clock, cache=self.cache
        )


def ocsp_fixture(algorithm: KeyAlgorithm, settings: PkiSettings, clock: Clock) -> OcspFixture:
    """Build a CA hierarchy and a delegated OCSP signer with keys of `algorithm`, and a request to answer."""
    hierarchy = build_hierarchy(
        {kind: PrivateKeySigner.generate(algorithm) for kind in CaKind}, settings=settings, clock=clock
    )
    delegate = issue_ocsp_signer(
        hierarchy.customer, PrivateKeySigner.generate(algorithm), settings=settings, clock=clock
    )
    request = (
        ocsp.OCSPRequestBuilder()
        .add_certificate(delegate.certificate, hierarchy.customer.certificate, hashes.SHA256())
        .build()
        .public_bytes(serialization.Encoding.DER)
    )
    status = CertificateStatus(
        CaKind.CUSTOMER, delegate.certificate.serial_number, delegate.certificate.not_valid_after_utc, version=1
    )
    return OcspFixture(OcspResponder(delegate), request, status, OcspResponseCache(), settings, clock)

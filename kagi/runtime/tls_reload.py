"""Certificate files reloaded without a restart: on SIGHUP, and when the files change (checked at most once a
second, on the next handshake or call that needs them).

A certificate and its key are read and checked together (the key must be the certificate's, every PEM must
parse); a pair that does not check out (half written, a key that belongs to another certificate) never takes
effect: the last good one stays in use and a warning names the file, never the key's content. Replace files by
renaming new ones over them (what Kubernetes does with a mounted Secret): a reader then sees the old file or the
new one, never a mix.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kagi.runtime.settings import TlsFiles

log = structlog.get_logger("kagi.tls")

T = TypeVar("T")

CHECK_INTERVAL_SECONDS = 1.0
"""How often, at most, the files' modification times are compared with the loaded ones."""

_reload_requests = 0


def request_reload() -> None:
    """Ask every watcher to read its files again at its next use (what SIGHUP does)."""
    global _reload_requests
    _reload_requests += 1


class FileProblem(ValueError):
    """A file of a set cannot be used: the message names the file and what is wrong, never its content."""


_Signature = tuple[tuple[int, int, int, int], ...]


def _signature(paths: Sequence[Path]) -> _Signature:
    stats = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            stats.append((-1, -1, -1, -1))
            continue
        stats.append((st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev))
    return tuple(stats)


class WatchedFiles(Generic[T]):
    """The value `load` made of a set of files, made again when one of them changes or on `request_reload`.

    `load` gets the files' contents (in the order of `paths`) and returns the value, or raises FileProblem (or
    ValueError, OSError) when they cannot be used together: the previous value then stays. The first load
    happens in the constructor, and its failure is raised. Thread-safe: gRPC calls a server's fetcher from
    its own threads.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        load: Callable[[list[bytes]], T],
        *,
        what: str,
        interval: float = CHECK_INTERVAL_SECONDS,
    ) -> None:
        self._paths = list(paths)
        self._load = load
        self._what = what
        self._interval = interval
        self._lock = threading.Lock()
        self._signature = _signature(self._paths)
        self._value = load(self._read())
        self._requests_seen = _reload_requests
        self._next_check = time.monotonic() + interval
        self.generation = 0
        """How many times a new value took effect since the first."""

    def _read(self) -> list[bytes]:
        contents = []
        for path in self._paths:
            try:
                contents.append(path.read_bytes())
            except OSError as exc:
                raise FileProblem(f"{path} cannot be read ({exc.strerror})") from None
        return contents

    def current(self) -> T:
        """Return the latest good value, reloading first when the files changed or a reload was asked."""
        if time.monotonic() < self._next_check and self._requests_seen == _reload_requests:
            return self._value
        with self._lock:
            requested = self._requests_seen != _reload_requests
            self._requests_seen = _reload_requests
            self._next_check = time.monotonic() + self._interval
            signature = _signature(self._paths)
            if signature == self._signature and not requested:
                return self._value
            self._signature = signature
            try:
                value = self._load(self._read())
            except (ValueError, OSError) as exc:
                log.warning("tls files not reloaded: the previous ones stay in use", what=self._what, problem=str(exc))
                return self._value
            self._value = value
            self.generation += 1
        log.info("tls files reloaded", what=self._what, files=[str(p) for p in self._paths])
        return value

    def changed_since(self, generation: int) -> bool:
        """Tell whether a new value took effect after `generation` (checking the files first)."""
        self.current()
        return self.generation != generation


@dataclass(frozen=True, slots=True)
class CertifiedKey:
    """A certificate chain and its key, checked to belong together; `serial` is the leaf's serial number."""

    chain_pem: bytes
    key_pem: bytes
    serial: int


def certified_key(chain_pem: bytes, key_pem: bytes, cert_file: Path, key_file: Path) -> CertifiedKey:
    """Check that `key_pem` is the private key of the first certificate in `chain_pem`, naming the bad file."""
    try:
        chain = x509.load_pem_x509_certificates(chain_pem)
    except ValueError:
        raise FileProblem(f"{cert_file} holds no whole PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise FileProblem(f"{key_file} holds no whole unencrypted PEM private key") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if chain[0].public_key().public_bytes(serialization.Encoding.DER, spki) != key.public_key().public_bytes(
        serialization.Encoding.DER, spki
    ):
        raise FileProblem(f"{key_file} is not the key of the certificate in {cert_file}")
    return CertifiedKey(chain_pem, key_pem, chain[0].serial_number)


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """What a TlsFiles names, read and checked together: the certified key, the roots and the callers' CA."""

    identity: CertifiedKey
    ca_pem: bytes
    client_ca_pem: bytes | None


def _pem_certificates(pem: bytes, path: Path) -> bytes:
    try:
        x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise FileProblem(f"{path} holds no whole PEM certificate") from None
    return pem


def watch_tls_files(
    files: TlsFiles, *, what: str, interval: float = CHECK_INTERVAL_SECONDS
) -> WatchedFiles[TlsMaterial]:
    """Watch a component's mTLS files: its certificate chain and key, the roots, the callers' CA if named."""
    paths = [files.cert_file, files.key_file, files.ca_file]
    if files.client_ca_file is not None:
        paths.append(files.client_ca_file)

    def load(contents: list[bytes]) -> TlsMaterial:
        identity = certified_key(contents[0], contents[1], files.cert_file, files.key_file)
        ca = _pem_certificates(contents[2], files.ca_file)
        client_ca = None
        if files.client_ca_file is not None:
            client_ca = _pem_certificates(contents[3], files.client_ca_file)
        return TlsMaterial(identity, ca, client_ca)

    return WatchedFiles(paths, load, what=what, interval=interval)


def watch_key_pair(
    cert_file: Path, key_file: Path, *, what: str, interval: float = CHECK_INTERVAL_SECONDS
) -> WatchedFiles[CertifiedKey]:
    """Watch a certificate chain and its key (the gateway's HTTPS certificate)."""

    def load(contents: list[bytes]) -> CertifiedKey:
        return certified_key(contents[0], contents[1], cert_file, key_file)

    return WatchedFiles([cert_file, key_file], load, what=what, interval=interval)

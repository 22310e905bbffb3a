"""The Redis store over TLS (`rediss://`): a real redis-server that speaks only TLS, a client that verifies its
certificate and its name, and mutual TLS where Redis asks for the client's certificate.

The server's certificate names localhost and 127.0.0.1; its CA is the test PKI's root, which the store trusts
through `?ssl_ca_certs=`. A client that trusts another CA, or reaches the server by a name its certificate does not
carry, is refused with StoreUnavailable before any command is sent, so nothing is written.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
import redis

from kagi.runtime.settings import TlsFiles
from kagi.store import StoreUnavailable, open_store
from tests.support.secured_redis import SecuredRedis, exercise_store
from tests.support.tls import TestPki

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]


def _tls_server(directory: Path, server: TlsFiles, *, client_certificates: bool) -> SecuredRedis:
    """Return a started redis-server with no plaintext port, serving TLS with `server`'s certificate."""
    redis_server = SecuredRedis(directory, [])
    redis_server.options = [
        "--port", "0",
        "--tls-port", str(redis_server.port),
        "--bind", "127.0.0.1", "127.0.0.2",
        "--tls-cert-file", str(server.cert_file),
        "--tls-key-file", str(server.key_file),
        "--tls-ca-cert-file", str(server.ca_file),
        "--tls-auth-clients", "yes" if client_certificates else "no",
    ]  # fmt: skip
    redis_server.start()
    return redis_server


def _url(host: str, port: int, **options: str) -> str:
    return f"rediss://{host}:{port}/0?{urlencode(options)}"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[TestPki, TlsFiles]:
    """Return the test PKI and the Redis server's files (certificate for localhost and 127.0.0.1, key, root)."""
    test_pki = TestPki.create()
    files = test_pki.write(tmp_path_factory.mktemp("redis-tls"), "redis", test_pki.service("redis"), test_pki.internal)
    return test_pki, files


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory, pki: tuple[TestPki, TlsFiles]) -> Iterator[SecuredRedis]:
    """Yield a redis-server that speaks only TLS and asks for no client certificate."""
    server = _tls_server(tmp_path_factory.mktemp("redis-tls-server"), pki[1], client_certificates=False)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mtls_redis(tmp_path_factory: pytest.TempPathFactory, pki: tuple[TestPki, TlsFiles]) -> Iterator[SecuredRedis]:
    """Yield a redis-server that speaks only TLS and requires a client certificate under the test root."""
    server = _tls_server(tmp_path_factory.mktemp("redis-mtls-server"), pki[1], client_certificates=True)
    yield server
    server.stop()


def _keys(url: str, namespace: str) -> list[bytes]:
    """Return the keys of `namespace` as a client of `url` (one the server accepts) sees them."""
    client = redis.Redis.from_url(url)
    try:
        return sorted(client.scan_iter(match=f"kagi:{{{namespace}}}:*"))
    finally:
        client.close()


async def test_a_store_over_tls_serves_every_call(
    tls_redis: SecuredRedis, pki: tuple[TestPki, TlsFiles], namespace: str
) -> None:
    """rediss:// with the server's CA in ssl_ca_certs: create, get, commit, compare-and-swap, list, increment
    and delete all work against a server that has no plaintext port."""
    files = pki[1]
    store = open_store(
        _url("localhost", tls_redis.port, ssl_ca_certs=str(files.ca_file)), namespace=namespace, state_dir=None
    )
    try:
        await exercise_store(store)
    finally:
        await store.close()
    assert _keys(
        _url("localhost", tls_redis.port, ssl_ca_certs=str(files.ca_file)), namespace
    )  # the writes are in this server


async def test_a_client_that_does_not_trust_the_servers_ca_is_refused_and_writes_nothing(
    tls_redis: SecuredRedis, pki: tuple[TestPki, TlsFiles], namespace: str, tmp_path: Path
) -> None:
    """A client whose ssl_ca_certs is another CA's root refuses the server's certificate: StoreUnavailable, and
    the server holds no key of the namespace afterwards."""
    stranger = TestPki.create()
    other_root = tmp_path / "other-root.pem"
    other_root.write_bytes(stranger.root.pem())
    store = open_store(
        _url("localhost", tls_redis.port, ssl_ca_certs=str(other_root)), namespace=namespace, state_dir=None
    )
    try:
        with pytest.raises(StoreUnavailable):
            await store.create("things", "a", b"must not land")
        with pytest.raises(StoreUnavailable):
            await store.increment("counters", "c")
    finally:
        await store.close()
    assert _keys(_url("localhost", tls_redis.port, ssl_ca_certs=str(pki[1].ca_file)), namespace) == []


async def test_the_servers_name_is_verified(
    tls_redis: SecuredRedis, pki: tuple[TestPki, TlsFiles], namespace: str
) -> None:
    """The same trusted server reached as 127.0.0.2, a name its certificate does not carry, is refused; with
    the name check turned off (ssl_check_hostname=false, never in production) the same connection works, so
    the name was the only reason."""
    files = pki[1]
    store = open_store(
        _url("127.0.0.2", tls_redis.port, ssl_ca_certs=str(files.ca_file)), namespace=namespace, state_dir=None
    )
    try:
        with pytest.raises(StoreUnavailable):
            await store.create("things", "a", b"must not land")
    finally:
        await store.close()
    assert _keys(_url("localhost", tls_redis.port, ssl_ca_certs=str(files.ca_file)), namespace) == []
    unchecked = open_store(
        _url("127.0.0.2", tls_redis.port, ssl_ca_certs=str(files.ca_file), ssl_check_hostname="false"),
        namespace=namespace,
        state_dir=None,
    )
    try:
        await unchecked.create("things", "a", b"lands")
    finally:
        await unchecked.close()


async def test_mutual_tls_needs_a_client_certificate_under_the_servers_ca(
    mtls_redis: SecuredRedis, pki: tuple[TestPki, TlsFiles], namespace: str, tmp_path: Path
) -> None:
    """A server with tls-auth-clients yes refuses a client without a certificate (StoreUnavailable, nothing
    written) and serves one that presents its certificate through ssl_certfile and ssl_keyfile."""
    test_pki, files = pki
    client = test_pki.write(tmp_path, "client", test_pki.service("ca"), test_pki.internal)
    anonymous = open_store(
        _url("localhost", mtls_redis.port, ssl_ca_certs=str(files.ca_file)), namespace=namespace, state_dir=None
    )
    try:
        with pytest.raises(StoreUnavailable):
            await anonymous.create("things", "a", b"must not land")
    finally:
        await anonymous.close()
    client_tls = {"ssl_certfile": str(client.cert_file), "ssl_keyfile": str(client.key_file)}
    assert _keys(_url("localhost", mtls_redis.port, ssl_ca_certs=str(files.ca_file), **client_tls), namespace) == []
    store = open_store(
        _url("localhost", mtls_redis.port, ssl_ca_certs=str(files.ca_file), **client_tls),
        namespace=namespace,
        state_dir=None,
    )
    try:
        await exercise_store(store)
    finally:
        await store.close()

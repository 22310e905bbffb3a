"""Running the real CA service for tests: the dev PKI on disk, a CA server with mTLS on a free port over a real
SQLite file or a real Redis, stubs per caller role, CSR makers, and a look at what the store holds."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from kagi.ca.v1 import ca_pb2, ca_pb2_grpc
from kagi.clock import SystemClock
from kagi.journal import AuditReport, audit_records, verify_stored_chain
from kagi.runtime.grpc_client import open_channel
from kagi.runtime.settings import ListenSettings, Secret
from kagi.store import KeyValueStore, open_store
from services.ca_service.adapters.ca_directory import CaDirectory
from services.ca_service.app.repository import CERTIFICATES
from services.ca_service.creation import DevPki, ensure_dev_pki
from services.ca_service.domain.settings import PkiSettings
from services.ca_service.main import CaComponent, CaRuntime, CaSettings, open_runtime, start_ca


@dataclass
class StoreTarget:
    """Names one store for the CA under test: its URL, its state directory and its namespace."""

    kind: str
    url: str
    state_dir: Path
    namespace: str

    def open(self) -> KeyValueStore:
        """Give a second, independent handle on the same store (to look or to tamper)."""
        return open_store(self.url, namespace=self.namespace, state_dir=self.state_dir)


@dataclass
class RunningCa:
    """A CA server under test and how to reach it as each role."""

    component: CaComponent
    dev: DevPki
    target: StoreTarget
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    @property
    def address(self) -> str:
        """Return host:port of the server."""
        return f"localhost:{self.component.port}"

    def stub(self, role: str = "operator") -> ca_pb2_grpc.CertificateAuthorityServiceStub:
        """Open an mTLS channel as `role` (enrollment, gateway, operator, ...) and return a CA stub."""
        channel = open_channel(self.address, self.dev.tls(role))
        self.channels.append(channel)
        return ca_pb2_grpc.CertificateAuthorityServiceStub(channel)

    async def close_channels(self) -> None:
        """Close every channel opened by `stub`."""
        for channel in self.channels:
            await channel.close()
        self.channels.clear()


def ca_settings(dev: DevPki, target: StoreTarget, *, crl_debounce: float = 0.2) -> CaSettings:
    """Configure a CA server on a free loopback port over `target`, with the dev CA."""
    return CaSettings(
        listen=ListenSettings("127.0.0.1", 0, dev.tls("ca")),
        store_url=target.url,
        state_dir=target.state_dir,
        ca_dir=dev.ca_dir,
        passphrase=Secret(dev.passphrase_file.read_bytes().strip()),
        pki=PkiSettings(),
        crl_debounce=crl_debounce,
        store_namespace=target.namespace,
    )


@asynccontextmanager
async def running_ca(dev: DevPki, target: StoreTarget) -> AsyncIterator[RunningCa]:
    """Start a CA server over `target` and stop it afterwards."""
    component = await start_ca(ca_settings(dev, target))
    running = RunningCa(component, dev, target)
    try:
        yield running
    finally:
        await running.close_channels()
        await component.stop(0)


@pytest.fixture(scope="session")
def dev_pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    """Return the dev CA and the mTLS certificates of every role, made once per test run."""
    return ensure_dev_pki(tmp_path_factory.mktemp("ca-dev-pki"))


@pytest.fixture(params=["sqlite", "redis"])
def store_target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreTarget]:
    """Return a fresh CA store: a SQLite file in the test's folder, or a fresh namespace in Redis."""
    namespace = f"ca{uuid.uuid4().hex[:12]}"
    if request.param == "sqlite":
        yield StoreTarget("sqlite", "sqlite:", tmp_path, namespace)
    else:
        yield StoreTarget("redis", request.getfixturevalue("redis_server"), tmp_path, namespace)


@pytest.fixture(name="ca")
async def ca_fixture(dev_pki: DevPki, store_target: StoreTarget) -> AsyncIterator[RunningCa]:
    """Yield a running CA service over a fresh store (fixture `ca`, parametrised: SQLite and Redis)."""
    async with running_ca(dev_pki, store_target) as running:
        yield running


@pytest.fixture(name="runtime")
async def runtime_fixture(dev_pki: DevPki, store_target: StoreTarget) -> AsyncIterator[CaRuntime]:
    """Yield the CA's use cases over a fresh store, without a server (fixture `runtime`)."""
    loaded = CaDirectory(dev_pki.ca_dir).load(Secret(dev_pki.passphrase_file.read_bytes().strip()))
    opened = open_runtime(
        store_target.url,
        state_dir=store_target.state_dir,
        loaded=loaded,
        pki=PkiSettings(),
        clock=SystemClock(),
        namespace=store_target.namespace,
    )
    try:
        yield opened
    finally:
        await opened.close()


def make_csr(kind: str = "p256") -> bytes:
    """Return a PEM CSR for a fresh key of `kind`: p256, p384, p521, secp256k1, rsa2048, rsa1024."""
    key: CertificateIssuerPrivateKeyTypes
    if kind.startswith("rsa"):
        key = rsa.generate_private_key(public_exponent=65537, key_size=int(kind[3:]))
    else:
        curve = {"p256": ec.SECP256R1(), "p384": ec.SECP384R1(), "p521": ec.SECP521R1(), "secp256k1": ec.SECP256K1()}
        key = ec.generate_private_key(curve[kind])
    request = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "ignored")])
    )
    return request.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def customer_identity(user_id: str = "u-0042") -> ca_pb2.CustomerIdentity:
    """Return a customer user with Japanese names."""
    return ca_pb2.CustomerIdentity(
        user_id=user_id, company_name="株式会社 鈴木製作所", user_name="鈴木 花子", login_id="suzuki42"
    )


def issue_request(
    request_id: str = "", *, csr: bytes | None = None, user_id: str = "u-0042"
) -> ca_pb2.IssueCertificateRequest:
    """Ask for a customer certificate as the enrollment does."""
    return ca_pb2.IssueCertificateRequest(
        request_id=request_id or uuid.uuid4().hex,
        csr=csr if csr is not None else make_csr(),
        profile="customer",
        customer=customer_identity(user_id),
    )


@dataclass(frozen=True)
class StoreSnapshot:
    """What the CA's store holds that bad input must never change."""

    certificates: dict[str, bytes]
    audit: list[str]


async def snapshot(target: StoreTarget) -> StoreSnapshot:
    """List every certificate record and audit record in the store."""
    store = target.open()
    try:
        certificates: dict[str, bytes] = {}
        token = ""
        while True:
            page = await store.list(CERTIFICATES, page_size=1000, page_token=token)
            certificates.update({entry.key: entry.value for entry in page.entries})
            token = page.next_page_token
            if not token:
                break
        audit = [record.hash async for record in audit_records(store)]
        return StoreSnapshot(certificates, audit)
    finally:
        await store.close()


async def verify_audit(target: StoreTarget) -> AuditReport:
    """Check the stored audit chain as `kagi admin verify-audit` does."""
    store = target.open()
    try:
        return await verify_stored_chain(store)
    finally:
        await store.close()


def record_json(value: bytes) -> dict[str, object]:
    """Decode a stored certificate record."""
    decoded: dict[str, object] = json.loads(value)
    return decoded

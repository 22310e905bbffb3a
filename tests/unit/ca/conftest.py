"""Fixtures for the CA domain unit tests: settings, a fake clock, a P-256 hierarchy and CSR factories."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID

from kagi.clock import FakeClock
from services.ca_service.adapters.file_signer import PrivateKeySigner
from services.ca_service.domain.hierarchy import DelegatedOcspSigner, Hierarchy, build_hierarchy, issue_ocsp_signer
from services.ca_service.domain.identity import CustomerIdentity, ServiceIdentity
from services.ca_service.domain.settings import CaKind, PkiSettings

MakeCsr = Callable[..., bytes]


@pytest.fixture
def settings() -> PkiSettings:
    """The default PKI settings (kagi dev URLs, P-256)."""
    return PkiSettings()


@pytest.fixture
def clock() -> FakeClock:
    """A clock that stands still until a test moves it."""
    return FakeClock()


@pytest.fixture
def hierarchy(settings: PkiSettings, clock: FakeClock) -> Hierarchy:
    """A fresh root, customer CA and internal CA on P-256 keys."""
    return build_hierarchy({kind: PrivateKeySigner.generate() for kind in CaKind}, settings=settings, clock=clock)


@pytest.fixture
def customer_ocsp(hierarchy: Hierarchy, settings: PkiSettings, clock: FakeClock) -> DelegatedOcspSigner:
    """The customer CA's delegated OCSP signer."""
    return issue_ocsp_signer(hierarchy.customer, PrivateKeySigner.generate(), settings=settings, clock=clock)


@pytest.fixture
def customer() -> CustomerIdentity:
    """A customer user with Japanese company and user names."""
    return CustomerIdentity(user_id="u-0001", login_id="yamada01", user_name="山田 太郎", company="株式会社 山田商事")


@pytest.fixture
def service() -> ServiceIdentity:
    """The gateway's internal identity."""
    return ServiceIdentity("gateway", dns_names=("gateway.kagi.internal",), ip_addresses=("127.0.0.1",))


@pytest.fixture
def make_csr() -> MakeCsr:
    """A factory: make_csr(key=None, pem=True, algorithm=SHA256()) signs a CSR with a fresh P-256 key by default.

    The CSR asks for a subject and SAN the CA must ignore.
    """

    def make(
        key: CertificateIssuerPrivateKeyTypes | None = None,
        *,
        pem: bool = True,
        algorithm: hashes.HashAlgorithm | None = None,
    ) -> bytes:
        signing_key = key if key is not None else ec.generate_private_key(ec.SECP256R1())
        hash_algorithm = algorithm if algorithm is not None else hashes.SHA256()
        if isinstance(signing_key, ed25519.Ed25519PrivateKey):
            hash_algorithm = None  # Ed25519 signs the message itself
        builder = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Evil Admin")]))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("bank.example")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        )
        csr = builder.sign(signing_key, hash_algorithm)  # type: ignore[arg-type]
        encoding = serialization.Encoding.PEM if pem else serialization.Encoding.DER
        return csr.public_bytes(encoding)

    return make

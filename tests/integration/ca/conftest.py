"""Fixtures for proving the CA domain with real clients: a hierarchy on the real clock, files on disk, runners."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from kagi.clock import FakeClock, utc_datetime
from services.ca_service.adapters.file_signer import PrivateKeySigner
from services.ca_service.domain.crl import SignedCrl, build_crl
from services.ca_service.domain.hierarchy import DelegatedOcspSigner, Hierarchy, build_hierarchy, issue_ocsp_signer
from services.ca_service.domain.identity import CustomerIdentity, Identity, ServiceIdentity
from services.ca_service.domain.issuance import IssuedCertificate, prepare_issuance, sign_certificate
from services.ca_service.domain.keys import KeyAlgorithm
from services.ca_service.domain.ocsp import OcspResponder
from services.ca_service.domain.revocation import CertificateStatus, RevocationReason, revoke
from services.ca_service.domain.settings import CaKind, PkiSettings


@dataclass
class Pki:
    """A live hierarchy with OCSP responders, a status table standing in for the store, and a folder."""

    directory: Path
    settings: PkiSettings
    clock: FakeClock
    hierarchy: Hierarchy
    delegates: dict[CaKind, DelegatedOcspSigner]
    statuses: dict[int, CertificateStatus] = field(default_factory=dict)
    crl_number: int = 0

    def write(self, name: str, data: bytes) -> Path:
        """Put `data` in the folder as `name` and return its path."""
        path = self.directory / name
        path.write_bytes(data)
        return path

    def issue(self, identity: Identity, profile: str) -> IssuedCertificate:
        """Sign a fresh P-256 CSR for `identity` on `profile` and records it as good."""
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .sign(key, hashes.SHA256())
            .public_bytes(serialization.Encoding.PEM)
        )
        ca = self.hierarchy.issuing(CaKind.CUSTOMER if profile == "customer" else CaKind.INTERNAL)
        prepared = prepare_issuance(ca, csr, identity, profile, settings=self.settings, clock=self.clock)
        issued = sign_certificate(ca, prepared, settings=self.settings)
        self.statuses[issued.serial] = CertificateStatus(ca.kind, issued.serial, issued.not_after, version=1)
        return issued

    def revoke(self, issued: IssuedCertificate, reason: RevocationReason) -> None:
        """Mark the certificate revoked now, as the use case will in the store."""
        current = self.statuses[issued.serial]
        revoked = revoke(current, reason, utc_datetime(self.clock))
        self.statuses[issued.serial] = CertificateStatus(
            revoked.issuer, revoked.serial, revoked.not_after, revoked.revocation, version=current.version + 1
        )

    def crl(self, kind: CaKind) -> SignedCrl:
        """Sign the next CRL of `kind` from the status table."""
        self.crl_number += 1
        entries = [status for status in self.statuses.values() if status.issuer is kind]
        return build_crl(
            self.hierarchy.issuing(kind), entries, crl_number=self.crl_number, settings=self.settings, clock=self.clock
        )

    def responder(self, kind: CaKind) -> OcspResponder:
        """Return the OCSP responder of `kind`."""
        return OcspResponder(self.delegates[kind])

    def bundle(self, kind: CaKind) -> Path:
        """Write the issuing CA and root as one PEM file (what relying parties trust)."""
        return self.write(f"{kind.value}-bundle.pem", self.hierarchy.bundle_pem(kind))


@pytest.fixture(
    scope="module",
    params=[KeyAlgorithm.EC_P256, KeyAlgorithm.RSA_2048],
    ids=lambda algorithm: algorithm.value,
)
def pki(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A hierarchy whose CA keys use the parametrised algorithm, on the real time (openssl checks it)."""
    algorithm: KeyAlgorithm = request.param
    settings = PkiSettings(key_algorithm=algorithm)
    clock = FakeClock(time.time())
    hierarchy = build_hierarchy(
        {kind: PrivateKeySigner.generate(algorithm) for kind in CaKind}, settings=settings, clock=clock
    )
    delegates = {
        kind: issue_ocsp_signer(
            hierarchy.issuing(kind), PrivateKeySigner.generate(algorithm), settings=settings, clock=clock
        )
        for kind in (CaKind.CUSTOMER, CaKind.INTERNAL)
    }
    directory = tmp_path_factory.mktemp(f"pki-{algorithm.value}")
    pki = Pki(directory, settings, clock, hierarchy, delegates)
    pki.write("root.pem", hierarchy.root.pem)
    pki.write("customer-ca.pem", hierarchy.customer.pem)
    pki.write("internal-ca.pem", hierarchy.internal.pem)
    return pki


@pytest.fixture
def customer() -> CustomerIdentity:
    """A customer user with Japanese names."""
    return CustomerIdentity(user_id="u-0042", login_id="suzuki42", user_name="鈴木 花子", company="株式会社 鈴木製作所")


@pytest.fixture
def gateway() -> ServiceIdentity:
    """The gateway's internal identity (a multi-label DNS name, as pkilint expects)."""
    return ServiceIdentity("gateway", dns_names=("gateway.kagi.internal",), ip_addresses=("127.0.0.1",))


# Fixtures of the CA service tests (a running CA over SQLite and Redis), shared by the test_ca_service_* modules.
from tests.integration.ca.ca_service_harness import (  # noqa: E402, F401
    ca_fixture,
    dev_pki,
    runtime_fixture,
    store_target,
)

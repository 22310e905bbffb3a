"""A throwaway PKI for runtime tests: a root, internal and customer intermediates, and SPIFFE leaf certificates."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kagi.runtime.settings import TlsFiles, role_dns_name


@dataclass(frozen=True)
class Issued:
    """A certificate with its key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def pem(self) -> bytes:
        """Return the certificate in PEM."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        """Return the private key, unencrypted PKCS#8 PEM (test material only)."""
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _build(subject: str, issuer: Issued | None, *, ca: bool, sans: list[x509.GeneralName], days: int = 30) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.cert.subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    signer = issuer.key if issuer else key
    return Issued(builder.sign(signer, hashes.SHA256()), key)


@dataclass(frozen=True)
class TestPki:
    __test__ = False  # a fixture type, not a test class

    """TestPki holds a root with an internal and a customer intermediate."""

    root: Issued
    internal: Issued
    customer: Issued

    @classmethod
    def create(cls) -> TestPki:
        """Make a fresh hierarchy."""
        root = _build("test root", None, ca=True, sans=[])
        return cls(
            root, _build("test internal", root, ca=True, sans=[]), _build("test customer", root, ca=True, sans=[])
        )

    def service(self, role: str) -> Issued:
        """Issue an internal certificate for spiffe://kagi.internal/<role>, valid for localhost and for the role's
        DNS name (`otp.kagi.internal`), which kagi's clients verify."""
        sans: list[x509.GeneralName] = [
            x509.UniformResourceIdentifier(f"spiffe://kagi.internal/{role}"),
            x509.DNSName("localhost"),
            x509.DNSName(role_dns_name(role)),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]
        return _build(role, self.internal, ca=False, sans=sans)

    def customer_leaf(self, user: str) -> Issued:
        """Issue a customer-CA certificate with no SPIFFE ID."""
        return _build(user, self.customer, ca=False, sans=[x509.UniformResourceIdentifier(f"urn:kagi:user:{user}")])

    def write(self, directory: Path, name: str, leaf: Issued, issuer: Issued) -> TlsFiles:
        """Store leaf+chain, key and the root bundle under `directory` and names them."""
        directory.mkdir(parents=True, exist_ok=True)
        cert_file, key_file, ca_file = directory / f"{name}.pem", directory / f"{name}-key.pem", directory / "roots.pem"
        cert_file.write_bytes(leaf.pem() + issuer.pem())
        key_file.write_bytes(leaf.key_pem())
        ca_file.write_bytes(self.root.pem())
        return TlsFiles(cert_file, key_file, ca_file)

"""Internal identities for tests: a new key and a certificate of a role, certified by the running CA at the
operator's request (the way `kagi admin issue-credential` does it), written as the mTLS files a channel reads."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kagi.ca.v1 import ca_pb2
from kagi.runtime.settings import TlsFiles


def make_key_and_csr(common_name: str = "ignored by the CA") -> tuple[bytes, bytes]:
    """Make a fresh P-256 key (PKCS#8 PEM) and a CSR for it (PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, csr.public_bytes(serialization.Encoding.PEM)


async def issue_internal_identity(operator_ca: Any, role: str, directory: Path, root: Path) -> TlsFiles:
    """Have the CA (a stub as the operator) certify a new key as `role`; write NAME.pem (with the chain) and key."""
    key_pem, csr_pem = make_key_and_csr(role)
    reply = await operator_ca.IssueCertificate(
        ca_pb2.IssueCertificateRequest(
            request_id=uuid.uuid4().hex,
            csr=csr_pem,
            profile="service",
            service=ca_pb2.ServiceIdentity(role=role, dns_names=["localhost"]),
        )
    )
    return _write(directory, role, reply.certificate.certificate_pem + reply.chain_pem, key_pem, root)


def _write(directory: Path, name: str, chain_pem: str, key_pem: bytes, root: Path) -> TlsFiles:
    directory.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = directory / f"{name}.pem", directory / f"{name}-key.pem"
    cert_file.write_text(chain_pem)
    key_file.write_bytes(key_pem)
    key_file.chmod(0o600)
    return TlsFiles(cert_file, key_file, root)

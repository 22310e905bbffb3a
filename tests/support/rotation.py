"""Certificates for rotation tests: a stand-in public CA, and replacing a credential's files the way a deployment
does (a new file renamed over the old one), plus what openssl s_client sees of a TLS server."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.tools import tool


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


class PublicCa:
    """A stand-in for a public CA (what a bank buys its web certificate from): a root that issues server leaves."""

    def __init__(self, common_name: str = "Test Public Root CA") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    def pem(self) -> bytes:
        """Return the root certificate (what a browser trusts)."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def server_leaf(self, *dns_names: str) -> tuple[bytes, bytes, int]:
        """Issue a server certificate for `dns_names`: (certificate PEM, unencrypted key PEM, serial number)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        leaf = (
            x509.CertificateBuilder()
            .subject_name(_name(dns_names[0]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return leaf.public_bytes(serialization.Encoding.PEM), key_pem, leaf.serial_number


def replace_file(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Put `data` at `path` by writing a new file beside it and renaming it over the old one (atomic)."""
    temporary = path.with_name(f".{path.name}.new")
    temporary.write_bytes(data)
    os.chmod(temporary, mode)
    os.replace(temporary, path)


async def served_certificate(port: int, *, server_name: str = "localhost", extra: list[str] | None = None) -> str:
    """Return the PEM of the certificate a TLS server at 127.0.0.1:`port` presents, as openssl s_client got it."""
    argv = [tool("openssl"), "s_client", "-connect", f"127.0.0.1:{port}", "-servername", server_name, *(extra or [])]
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(60):
        raw, err = await process.communicate()
    out = raw.decode(errors="replace")  # an HTTP/2 server's first frames follow the handshake's text
    if process.returncode != 0:
        raise AssertionError(f"openssl s_client exited {process.returncode}: {err.decode(errors='replace')}")
    found = re.search(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n", out, re.S)
    assert found, out
    return found.group(0)


def serial_of(pem: str) -> int:
    """Return the serial number of a PEM certificate."""
    return x509.load_pem_x509_certificate(pem.encode()).serial_number

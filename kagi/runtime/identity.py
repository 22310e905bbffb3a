"""Caller identities: the SPIFFE role of an internal certificate, and the per-RPC allow-lists that use it."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from enum import Enum

from cryptography import x509

from kagi.errors import PermissionDenied, Unauthenticated

TRUST_DOMAIN = "kagi.internal"
SPIFFE_PREFIX = f"spiffe://{TRUST_DOMAIN}/"


class Role(Enum):
    """An internal identity named by the certificate's URI SAN spiffe://kagi.internal/<role>."""

    CA = "ca"
    OTP = "otp"
    ENROLLMENT = "enrollment"
    GATEWAY = "gateway"
    OPERATOR = "operator"
    FRONTEND = "frontend"

    @property
    def spiffe_id(self) -> str:
        """Return the URI SAN that an internal certificate of this role carries."""
        return SPIFFE_PREFIX + self.value


@dataclass(frozen=True, slots=True)
class Caller:
    """Who made a request: a role proven by an internal certificate (or granted in plaintext dev)."""

    role: Role | None
    spiffe_id: str
    plaintext: bool = False
    # The serial of the caller's certificate (None without one): what the server's revocation check looks up.
    serial: int | None = None

    def require(self, allowed: frozenset[Role], method: str) -> None:
        """Raise PermissionDenied unless the caller's role is in `allowed`."""
        if self.plaintext:
            return
        if self.role is None:
            raise Unauthenticated("a kagi internal client certificate is required", reason="CALLER_NOT_AUTHENTICATED")
        if self.role not in allowed:
            names = ", ".join(sorted(r.value for r in allowed))
            raise PermissionDenied(
                f"role {self.role.value} may not call {method} (allowed: {names})",
                reason="CALLER_NOT_ALLOWED",
                metadata={"role": self.role.value, "method": method},
            )


PLAINTEXT_CALLER = Caller(role=None, spiffe_id="", plaintext=True)
ANONYMOUS = Caller(role=None, spiffe_id="")


def role_from_spiffe_id(spiffe_id: str) -> Role | None:
    """Map spiffe://kagi.internal/<role> to a Role, or None for anything else."""
    if not spiffe_id.startswith(SPIFFE_PREFIX):
        return None
    try:
        return Role(spiffe_id[len(SPIFFE_PREFIX) :])
    except ValueError:
        return None


@functools.lru_cache(maxsize=4096)
def caller_from_pem(pem: bytes) -> Caller:
    """Read the caller's role from the peer certificate's single SPIFFE URI SAN.

    The TLS layer has already verified the chain; a certificate with no SPIFFE ID (a customer's), with
    several, or with an unknown role gets no role, so it can never pass an allow-list. Cached because the
    same few service certificates call all day.
    """
    certificate = x509.load_pem_x509_certificate(pem)
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ANONYMOUS
    spiffe_ids = [uri for uri in san.get_values_for_type(x509.UniformResourceIdentifier) if uri.startswith("spiffe:")]
    if len(spiffe_ids) != 1:
        return ANONYMOUS
    role = role_from_spiffe_id(spiffe_ids[0])
    return Caller(role=role, spiffe_id=spiffe_ids[0], serial=certificate.serial_number if role else None)


def allow(*roles: Role) -> frozenset[Role]:
    """Build an allow-list of roles for a method table."""
    return frozenset(roles)

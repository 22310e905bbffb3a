"""Who a certificate is for: a bank customer's user, or one of kagi's internal services (a SPIFFE role).

The subject and the subject alternative names of every certificate come from these, never from the CSR.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID

from services.ca_service.domain.errors import InvalidIdentity
from services.ca_service.domain.settings import PkiSettings

SERVICE_ROLES = ("ca", "otp", "enrollment", "gateway", "operator", "frontend")
"""The SPIFFE roles an internal certificate may name (the per-RPC allow-lists use them)."""

MAX_NAME_CHARS = 64
"""The X.520 upper bound of an organization or common name (ub-organization-name etc.)."""

_USER_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,63}")
# X.520 serialNumber is a PrintableString, so a login ID is limited to that alphabet.
_PRINTABLE_RE = re.compile(r"[A-Za-z0-9 '()+,\-./:=?]{1,64}")
_DNS_LABEL_RE = re.compile(r"(?!-)[a-z0-9\-]{1,63}(?<!-)")


def _name_problem(value: str) -> str | None:
    if not value:
        return "must not be empty"
    if len(value) > MAX_NAME_CHARS:
        return f"must be at most {MAX_NAME_CHARS} characters"
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn") for ch in value):
        return "must not contain control, format or unassigned characters"
    return None


def _clean(value: str) -> str:
    # NFC so that the same name typed on two devices yields the same certificate subject bytes.
    return unicodedata.normalize("NFC", value.strip()) if isinstance(value, str) else ""


@dataclass(frozen=True, slots=True)
class CustomerIdentity:
    """The bank customer's user a client certificate is issued to.

    Subject: O=company, CN=user name (UTF8String, so Japanese names are kept as typed), serialNumber=login ID
    (PrintableString, as X.520 requires). SAN: the stable URI `urn:kagi:user:<user_id>`, which survives a
    change of name or login ID.
    """

    user_id: str
    login_id: str
    user_name: str
    company: str

    def __post_init__(self) -> None:
        for name in ("user_id", "login_id", "user_name", "company"):
            object.__setattr__(self, name, _clean(getattr(self, name)))
        problems: dict[str, str] = {}
        if not _USER_ID_RE.fullmatch(self.user_id):
            problems["user_id"] = (
                "must be 1-64 characters of A-Z a-z 0-9 . _ - starting with a letter or digit"
                if self.user_id
                else "must not be empty"
            )
        if not _PRINTABLE_RE.fullmatch(self.login_id):
            problems["login_id"] = (
                "must be 1-64 half-width letters, digits or PrintableString punctuation"
                if self.login_id
                else "must not be empty"
            )
        for name in ("user_name", "company"):
            problem = _name_problem(getattr(self, name))
            if problem:
                problems[name] = problem
        if problems:
            raise InvalidIdentity("the identity to certify is incomplete or ill-formed", fields=problems)

    @property
    def user_uri(self) -> str:
        """Return the stable name of the user, `urn:kagi:user:<user_id>`."""
        return f"urn:kagi:user:{self.user_id}"

    def subject(self, settings: PkiSettings) -> x509.Name:
        """Return the certificate subject: O=company, CN=user name, serialNumber=login ID."""
        return x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.company, _type=_ASN1Type.UTF8String),
                x509.NameAttribute(NameOID.COMMON_NAME, self.user_name, _type=_ASN1Type.UTF8String),
                x509.NameAttribute(NameOID.SERIAL_NUMBER, self.login_id, _type=_ASN1Type.PrintableString),
            ]
        )

    def subject_alt_name(self, settings: PkiSettings) -> x509.SubjectAlternativeName:
        """Hold the user URI only."""
        return x509.SubjectAlternativeName([x509.UniformResourceIdentifier(self.user_uri)])


@dataclass(frozen=True, slots=True)
class ServiceIdentity:
    """A kagi service or bank front-end; its one URI SAN is spiffe://<trust domain>/<role>.

    DNS names and IP addresses are added so that TLS clients can check the server's name as well.
    """

    role: str
    dns_names: tuple[str, ...] = field(default=())
    ip_addresses: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "role", _clean(self.role))
        object.__setattr__(self, "dns_names", tuple(name.strip().lower().rstrip(".") for name in self.dns_names))
        object.__setattr__(self, "ip_addresses", tuple(address.strip() for address in self.ip_addresses))
        problems: dict[str, str] = {}
        if self.role not in SERVICE_ROLES:
            problems["role"] = f"must be one of {', '.join(SERVICE_ROLES)}"
        for name in self.dns_names:
            labels = name.split(".")
            if len(name) > 253 or not all(_DNS_LABEL_RE.fullmatch(label) for label in labels):
                problems["dns_names"] = f"{name!r} is not a DNS host name"
        for address in self.ip_addresses:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                problems["ip_addresses"] = f"{address!r} is not an IP address"
        if problems:
            raise InvalidIdentity("the service identity to certify is ill-formed", fields=problems)

    def spiffe_id(self, settings: PkiSettings) -> str:
        """Return the service's SPIFFE ID in the deployment's trust domain."""
        return f"spiffe://{settings.spiffe_trust_domain}/{self.role}"

    def subject(self, settings: PkiSettings) -> x509.Name:
        """Return O=<deployment organization>, CN=<role>."""
        return x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, settings.organization, _type=_ASN1Type.UTF8String),
                x509.NameAttribute(NameOID.COMMON_NAME, self.role, _type=_ASN1Type.UTF8String),
            ]
        )

    def subject_alt_name(self, settings: PkiSettings) -> x509.SubjectAlternativeName:
        """Hold the SPIFFE URI first, then the DNS names and IP addresses."""
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(self.spiffe_id(settings))]
        names += [x509.DNSName(name) for name in self.dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(address)) for address in self.ip_addresses]
        return x509.SubjectAlternativeName(names)


Identity = CustomerIdentity | ServiceIdentity
"""Anything a certificate can be issued to."""

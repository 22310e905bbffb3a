"""Who may ask the CA for what: the actor of a request, the roles allowed per profile, and the serial field check.

Every use case module (issuance, revocation) authorises against these tables, so one place says who may have a
certificate of each profile issued, renewed or revoked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from kagi.errors import PermissionDenied
from kagi.runtime.identity import Role, allow
from services.ca_service.app.records import OCSP_SIGNER_PROFILE
from services.ca_service.domain.errors import InvalidSerial
from services.ca_service.domain.serials import parse_serial

ISSUE_ROLES: Mapping[str, frozenset[Role]] = {
    "customer": allow(Role.ENROLLMENT, Role.OPERATOR),
    "service": allow(Role.OPERATOR),
}
"""Says who may have a certificate of each profile issued: service identities only the operator."""

MANAGE_ROLES: Mapping[str, frozenset[Role]] = {
    "customer": allow(Role.ENROLLMENT, Role.OPERATOR),
    "service": allow(Role.OPERATOR),
    OCSP_SIGNER_PROFILE: allow(Role.OPERATOR),
}
"""Says who may renew or revoke a certificate of each profile: kagi's own ones only the operator."""


@dataclass(frozen=True, slots=True)
class Actor:
    """Who asks for a change: named in the audit trail, authorised by role.

    `unrestricted` is for the bootstrap and for loopback plaintext development, where no certificate exists.
    """

    name: str
    role: Role | None
    unrestricted: bool = False

    def require(self, roles: frozenset[Role], what: str) -> None:
        """Raise PermissionDenied unless the actor's role is in ROLES."""
        if self.unrestricted or (self.role is not None and self.role in roles):
            return
        names = ", ".join(sorted(r.value for r in roles))
        raise PermissionDenied(
            f"{self.role.value if self.role else 'this caller'} may not {what} (allowed: {names})",
            reason="CALLER_NOT_ALLOWED",
            metadata={"role": self.role.value if self.role else ""},
        )

    def may(self, roles: frozenset[Role]) -> bool:
        """Tell whether `require` would pass."""
        return self.unrestricted or (self.role is not None and self.role in roles)


BOOTSTRAP = Actor("bootstrap", None, unrestricted=True)
"""The actor of certificates the CA issues to itself (dev service certificates, OCSP signers)."""


def parse_serial_field(text: str, field: str = "serial_number") -> int:
    """Read a serial from a request, naming the request's FIELD when it is not one."""
    try:
        return parse_serial(text)
    except InvalidSerial as exc:
        raise InvalidSerial(
            exc.message, fields={field: next(iter(exc.fields.values()), "must be a serial number")}
        ) from None

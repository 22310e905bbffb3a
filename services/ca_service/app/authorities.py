"""The CA material a running service signs with: the hierarchy and each issuing CA's current OCSP responder."""

from __future__ import annotations

from collections.abc import Mapping

from services.ca_service.domain.authority import CertificateAuthority
from services.ca_service.domain.hierarchy import ISSUING_KINDS, DelegatedOcspSigner, Hierarchy
from services.ca_service.domain.ocsp import OcspResponder
from services.ca_service.domain.settings import CaKind


class Authorities:
    """Holds the hierarchy and the OCSP responders; a renewed OCSP signer replaces its responder."""

    def __init__(self, hierarchy: Hierarchy, delegates: Mapping[CaKind, DelegatedOcspSigner]) -> None:
        missing = [kind.value for kind in ISSUING_KINDS if kind not in delegates]
        if missing:
            raise ValueError(f"no OCSP signer for the {', '.join(missing)} CA")
        self.hierarchy = hierarchy
        self._responders = {kind: OcspResponder(delegates[kind]) for kind in ISSUING_KINDS}

    def issuing(self, kind: CaKind) -> CertificateAuthority:
        """Return the customer or internal CA."""
        return self.hierarchy.issuing(kind)

    @property
    def issuing_cas(self) -> dict[CaKind, CertificateAuthority]:
        """Return each issuing kind's CA."""
        return {kind: self.hierarchy.issuing(kind) for kind in ISSUING_KINDS}

    @property
    def responders(self) -> list[OcspResponder]:
        """Return the OCSP responders of both issuing CAs."""
        return list(self._responders.values())

    def delegate(self, kind: CaKind) -> DelegatedOcspSigner:
        """Return the current OCSP signer of KIND."""
        return self._responders[kind].delegate

    def replace_delegate(self, delegate: DelegatedOcspSigner) -> None:
        """Switch an issuing CA's OCSP responder to a renewed signer."""
        self._responders[delegate.issuer.kind] = OcspResponder(delegate)

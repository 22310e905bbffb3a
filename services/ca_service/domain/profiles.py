"""Certificate profiles: which CA issues a kind of end-entity certificate, to whom, for how long, for what."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from types import MappingProxyType

from cryptography.x509 import ObjectIdentifier
from cryptography.x509.oid import ExtendedKeyUsageOID

from services.ca_service.domain.errors import UnknownProfile
from services.ca_service.domain.identity import CustomerIdentity, ServiceIdentity
from services.ca_service.domain.settings import CaKind


@dataclass(frozen=True, slots=True)
class CertificateProfile:
    """Fixes everything about an end-entity certificate that does not come from the request."""

    name: str
    issuer: CaKind
    identity_type: type[CustomerIdentity] | type[ServiceIdentity]
    validity: timedelta
    extended_key_usages: tuple[ObjectIdentifier, ...]


CUSTOMER_PROFILE = CertificateProfile(
    name="customer",
    issuer=CaKind.CUSTOMER,
    identity_type=CustomerIdentity,
    validity=timedelta(days=365),
    extended_key_usages=(ExtendedKeyUsageOID.CLIENT_AUTH,),
)
"""A customer user's TLS client certificate, issued by the customer CA."""

SERVICE_PROFILE = CertificateProfile(
    name="service",
    issuer=CaKind.INTERNAL,
    identity_type=ServiceIdentity,
    validity=timedelta(days=90),
    extended_key_usages=(ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
)
"""An internal mTLS certificate (server and client), issued by the internal CA."""

DEFAULT_PROFILES: Mapping[str, CertificateProfile] = MappingProxyType(
    {profile.name: profile for profile in (CUSTOMER_PROFILE, SERVICE_PROFILE)}
)
"""The profiles a deployment has unless it configures others."""


def get_profile(name: str, profiles: Mapping[str, CertificateProfile] = DEFAULT_PROFILES) -> CertificateProfile:
    """Return the profile called `name`, or raise UnknownProfile naming the field "profile"."""
    profile = profiles.get(name) if isinstance(name, str) else None
    if profile is None:
        known = ", ".join(sorted(profiles))
        raise UnknownProfile(f"unknown certificate profile {name!r}", fields={"profile": f"must be one of {known}"})
    return profile

"""Issuing end-entity certificates in two steps: prepare (validate, draw a serial), then sign.

The split lets the use case validate and authorise before signing, and sign again under a new serial when the
commit recording the certificate finds its serial taken; a certificate whose record was not committed is
dropped, so the CA never hands out one it has no record of.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import AuthorityInformationAccessOID

from kagi.clock import Clock, utc_datetime
from services.ca_service.domain.authority import CertificateAuthority
from services.ca_service.domain.csr import parse_csr
from services.ca_service.domain.errors import InvalidIdentity, IssuerCannotIssue
from services.ca_service.domain.hierarchy import crl_distribution_points
from services.ca_service.domain.identity import Identity
from services.ca_service.domain.keys import CaPublicKey
from services.ca_service.domain.profiles import DEFAULT_PROFILES, CertificateProfile, get_profile
from services.ca_service.domain.serials import RandomBytes, new_serial, serial_hex
from services.ca_service.domain.settings import CaKind, PkiSettings

_END_ENTITY_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


@dataclass(frozen=True, slots=True)
class PreparedIssuance:
    """A validated request with its serial and validity fixed, ready to be signed."""

    issuer: CaKind
    serial: int
    profile: CertificateProfile
    identity: Identity
    subject_public_key: CaPublicKey
    key_description: str
    not_before: datetime
    not_after: datetime

    @property
    def serial_hex(self) -> str:
        """Return the serial in its canonical text form (the certificate's key in the store)."""
        return serial_hex(self.serial)


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A signed end-entity certificate and what the CA records about it."""

    issuer: CaKind
    profile: str
    certificate: x509.Certificate

    @property
    def serial(self) -> int:
        """Return the certificate's serial number."""
        return self.certificate.serial_number

    @property
    def serial_hex(self) -> str:
        """Return the serial in its canonical text form."""
        return serial_hex(self.certificate.serial_number)

    @property
    def not_before(self) -> datetime:
        """Return the start of validity (UTC)."""
        return self.certificate.not_valid_before_utc

    @property
    def not_after(self) -> datetime:
        """Return the end of validity (UTC)."""
        return self.certificate.not_valid_after_utc

    @property
    def der(self) -> bytes:
        """Return the certificate in DER."""
        return self.certificate.public_bytes(serialization.Encoding.DER)

    @property
    def pem(self) -> bytes:
        """Return the certificate in PEM."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def fingerprint_sha256(self) -> str:
        """Return the lower-case hex SHA-256 of the DER certificate."""
        return self.certificate.fingerprint(hashes.SHA256()).hex()


def prepare_issuance(
    ca: CertificateAuthority,
    csr: bytes | str,
    identity: Identity | None,
    profile_name: str,
    *,
    settings: PkiSettings,
    clock: Clock,
    profiles: Mapping[str, CertificateProfile] = DEFAULT_PROFILES,
    random_bytes: RandomBytes = os.urandom,
) -> PreparedIssuance:
    """Validate everything about a request and draw its serial; nothing is signed yet.

    Raises UnknownProfile, InvalidIdentity, the CSR errors of `parse_csr` (all InvalidArgument naming the
    field), or IssuerCannotIssue when `ca` is not the profile's issuer or is outside its validity.
    """
    profile = get_profile(profile_name, profiles)
    if identity is None:
        raise InvalidIdentity("the identity to certify is missing", fields={"identity": "is required"})
    if not isinstance(identity, profile.identity_type):
        raise InvalidIdentity(
            f"the {profile.name} profile certifies a {profile.identity_type.__name__}",
            fields={"identity": f"must be a {profile.identity_type.__name__} for profile {profile.name}"},
        )
    if ca.kind is not profile.issuer:
        raise IssuerCannotIssue(
            f"the {ca.kind.value} CA does not issue {profile.name} certificates",
            metadata={"profile": profile.name, "issuer": profile.issuer.value},
        )
    validated = parse_csr(csr)
    now = utc_datetime(clock).replace(microsecond=0)
    not_before, not_after = ca.validity_for(now, profile.validity, settings.backdate)
    return PreparedIssuance(
        issuer=ca.kind,
        serial=new_serial(random_bytes),
        profile=profile,
        identity=identity,
        subject_public_key=validated.public_key,
        key_description=validated.key_description,
        not_before=not_before,
        not_after=not_after,
    )


def sign_certificate(
    ca: CertificateAuthority, prepared: PreparedIssuance, *, settings: PkiSettings
) -> IssuedCertificate:
    """Sign a prepared issuance with `ca` (return it only once its record is committed)."""
    if ca.kind is not prepared.issuer:
        raise IssuerCannotIssue(f"this issuance was prepared for the {prepared.issuer.value} CA")
    identity = prepared.identity
    builder = (
        x509.CertificateBuilder()
        .subject_name(identity.subject(settings))
        .issuer_name(ca.name)
        .public_key(prepared.subject_public_key)
        .serial_number(prepared.serial)
        .not_valid_before(prepared.not_before)
        .not_valid_after(prepared.not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_END_ENTITY_KEY_USAGE, critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(prepared.profile.extended_key_usages)), critical=False)
        .add_extension(identity.subject_alt_name(settings), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(prepared.subject_public_key), critical=False)
        .add_extension(ca.authority_key_identifier, critical=False)
        .add_extension(crl_distribution_points(settings, ca.kind), critical=False)
        .add_extension(
            x509.AuthorityInformationAccess(
                [
                    x509.AccessDescription(
                        AuthorityInformationAccessOID.OCSP,
                        x509.UniformResourceIdentifier(settings.ocsp_url(ca.kind)),
                    ),
                    x509.AccessDescription(
                        AuthorityInformationAccessOID.CA_ISSUERS,
                        x509.UniformResourceIdentifier(settings.ca_issuers_url(ca.kind)),
                    ),
                ]
            ),
            critical=False,
        )
    )
    certificate = builder.sign(ca.private_key, ca.hash_algorithm)
    return IssuedCertificate(issuer=ca.kind, profile=prepared.profile.name, certificate=certificate)

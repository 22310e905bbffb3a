"""Building the hierarchy: the root, the customer and internal CAs, and each issuing CA's delegated OCSP signer.

Profiles follow RFC 5280: CA certificates carry a critical basicConstraints (pathLen 1 at the root, 0 on the
intermediates) and a critical keyUsage of keyCertSign and cRLSign; the intermediates point at the root's CRL
and certificate. The OCSP signer (RFC 6960 section 4.2.2.2) carries EKU OCSPSigning and id-pkix-ocsp-nocheck
and lives for weeks, so it is renewed well before it expires.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from kagi.clock import Clock, utc_datetime
from services.ca_service.domain.authority import CertificateAuthority, check_key_pair
from services.ca_service.domain.errors import IssuerCannotIssue
from services.ca_service.domain.serials import RandomBytes, new_serial
from services.ca_service.domain.settings import CaKind, PkiSettings
from services.ca_service.domain.signer import Signer, signing_key

ISSUING_KINDS = (CaKind.CUSTOMER, CaKind.INTERNAL)
"""The CAs that issue end-entity certificates (and so have CRLs and OCSP signers)."""

_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)
_SIGNING_KEY_USAGE = x509.KeyUsage(
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


def ca_name(settings: PkiSettings, kind: CaKind) -> x509.Name:
    """Return the subject of the CA of `kind`: O=<organization>, CN=<its common name>."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, settings.organization, _type=_ASN1Type.UTF8String),
            x509.NameAttribute(NameOID.COMMON_NAME, settings.common_name(kind), _type=_ASN1Type.UTF8String),
        ]
    )


def build_root(
    signer: Signer, *, settings: PkiSettings, clock: Clock, random_bytes: RandomBytes = os.urandom
) -> CertificateAuthority:
    """Self-sign the root CA certificate with `signer`."""
    now = utc_datetime(clock).replace(microsecond=0)
    name = ca_name(settings, CaKind.ROOT)
    ski = x509.SubjectKeyIdentifier.from_public_key(signer.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(signer.public_key())
        .serial_number(new_serial(random_bytes))
        .not_valid_before(now - settings.backdate)
        .not_valid_after(now + settings.root_validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_CA_KEY_USAGE, critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
    )
    certificate = builder.sign(signing_key(signer), signer.algorithm.hash)
    return CertificateAuthority(CaKind.ROOT, certificate, signer)


def build_intermediate(
    root: CertificateAuthority,
    kind: CaKind,
    signer: Signer,
    *,
    settings: PkiSettings,
    clock: Clock,
    random_bytes: RandomBytes = os.urandom,
) -> CertificateAuthority:
    """Have the root certify `signer`'s key as the customer or internal CA."""
    if root.kind is not CaKind.ROOT or kind not in ISSUING_KINDS:
        raise IssuerCannotIssue(f"the {root.kind.value} CA cannot certify a {kind.value} CA")
    now = utc_datetime(clock).replace(microsecond=0)
    not_before, not_after = root.validity_for(now, settings.intermediate_validity, settings.backdate)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(ca_name(settings, kind))
        .issuer_name(root.name)
        .public_key(signer.public_key())
        .serial_number(new_serial(random_bytes))
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_KEY_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(signer.public_key()), critical=False)
        .add_extension(root.authority_key_identifier, critical=False)
        .add_extension(crl_distribution_points(settings, CaKind.ROOT), critical=False)
        .add_extension(
            x509.AuthorityInformationAccess(
                [
                    x509.AccessDescription(
                        AuthorityInformationAccessOID.CA_ISSUERS,
                        x509.UniformResourceIdentifier(settings.ca_issuers_url(CaKind.ROOT)),
                    )
                ]
            ),
            critical=False,
        )
        .sign(root.private_key, root.hash_algorithm)
    )
    return CertificateAuthority(kind, certificate, signer)


@dataclass(frozen=True, slots=True)
class Hierarchy:
    """The root and its two issuing CAs."""

    root: CertificateAuthority
    customer: CertificateAuthority
    internal: CertificateAuthority

    def issuing(self, kind: CaKind) -> CertificateAuthority:
        """Return the issuing CA of `kind` (customer or internal)."""
        if kind is CaKind.CUSTOMER:
            return self.customer
        if kind is CaKind.INTERNAL:
            return self.internal
        raise IssuerCannotIssue("the root CA does not issue end-entity certificates")

    def bundle_pem(self, kind: CaKind) -> bytes:
        """Return the chain a relying party needs for `kind`: the issuing CA then the root, in PEM."""
        return self.issuing(kind).pem + self.root.pem


def build_hierarchy(
    signers: Mapping[CaKind, Signer],
    *,
    settings: PkiSettings,
    clock: Clock,
    random_bytes: RandomBytes = os.urandom,
) -> Hierarchy:
    """Create the root and both intermediates, one Signer per CA kind."""
    root = build_root(signers[CaKind.ROOT], settings=settings, clock=clock, random_bytes=random_bytes)
    customer, internal = (
        build_intermediate(root, kind, signers[kind], settings=settings, clock=clock, random_bytes=random_bytes)
        for kind in ISSUING_KINDS
    )
    return Hierarchy(root=root, customer=customer, internal=internal)


def crl_distribution_points(settings: PkiSettings, issuer: CaKind) -> x509.CRLDistributionPoints:
    """Point at the CRL that `issuer` publishes."""
    return x509.CRLDistributionPoints(
        [
            x509.DistributionPoint(
                full_name=[x509.UniformResourceIdentifier(settings.crl_url(issuer))],
                relative_name=None,
                reasons=None,
                crl_issuer=None,
            )
        ]
    )


@dataclass(frozen=True, slots=True)
class DelegatedOcspSigner:
    """The certificate and Signer that sign OCSP responses on behalf of `issuer`."""

    issuer: CertificateAuthority
    certificate: x509.Certificate
    signer: Signer

    def __post_init__(self) -> None:
        check_key_pair(self.certificate, self.signer, f"{self.issuer.kind.value} OCSP signer")
        if self.certificate.issuer != self.issuer.name:
            raise IssuerCannotIssue(f"the OCSP signer was not issued by the {self.issuer.kind.value} CA")

    @property
    def pem(self) -> bytes:
        """Return the OCSP signer certificate in PEM."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)


def issue_ocsp_signer(
    issuer: CertificateAuthority,
    signer: Signer,
    *,
    settings: PkiSettings,
    clock: Clock,
    random_bytes: RandomBytes = os.urandom,
) -> DelegatedOcspSigner:
    """Have `issuer` certify `signer`'s key for OCSP signing, valid `ocsp_signer_validity`."""
    if issuer.kind not in ISSUING_KINDS:
        raise IssuerCannotIssue("only the customer and internal CAs have delegated OCSP signers")
    now = utc_datetime(clock).replace(microsecond=0)
    not_before, not_after = issuer.validity_for(now, settings.ocsp_signer_validity, settings.backdate)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, settings.organization, _type=_ASN1Type.UTF8String),
            x509.NameAttribute(
                NameOID.COMMON_NAME, f"OCSP Responder ({issuer.kind.value})", _type=_ASN1Type.UTF8String
            ),
        ]
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.name)
        .public_key(signer.public_key())
        .serial_number(new_serial(random_bytes))
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_SIGNING_KEY_USAGE, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False)
        .add_extension(x509.OCSPNoCheck(), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(signer.public_key()), critical=False)
        .add_extension(issuer.authority_key_identifier, critical=False)
        .sign(issuer.private_key, issuer.hash_algorithm)
    )
    return DelegatedOcspSigner(issuer=issuer, certificate=certificate, signer=signer)


def ocsp_signer_needs_renewal(current: DelegatedOcspSigner, *, settings: PkiSettings, clock: Clock) -> bool:
    """True within `ocsp_signer_renew_before` of expiry, or once the CA was re-keyed."""
    now = utc_datetime(clock)
    if now + settings.ocsp_signer_renew_before >= current.certificate.not_valid_after_utc:
        return True
    try:
        aki = current.certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        return True
    return aki.key_identifier != current.issuer.subject_key_identifier.digest


def renew_ocsp_signer(
    current: DelegatedOcspSigner,
    new_signer: Callable[[], Signer],
    *,
    settings: PkiSettings,
    clock: Clock,
    random_bytes: RandomBytes = os.urandom,
) -> DelegatedOcspSigner:
    """Return `current` while it is fresh, else a new signer certified with a new key.

    A fresh key each time (from `new_signer`) limits what a leaked responder key can sign to one period.
    """
    if not ocsp_signer_needs_renewal(current, settings=settings, clock=clock):
        return current
    return issue_ocsp_signer(current.issuer, new_signer(), settings=settings, clock=clock, random_bytes=random_bytes)

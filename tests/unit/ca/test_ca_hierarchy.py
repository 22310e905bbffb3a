"""The CA hierarchy: RFC 5280 profiles of the root and intermediates, selectable key algorithms, OCSP signers."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, SignatureAlgorithmOID

from kagi.clock import FakeClock
from services.ca_service.adapters.file_signer import PrivateKeySigner
from services.ca_service.domain.authority import CertificateAuthority
from services.ca_service.domain.errors import IssuerCannotIssue, SignerKeyMismatch
from services.ca_service.domain.hierarchy import (
    Hierarchy,
    build_hierarchy,
    build_intermediate,
    issue_ocsp_signer,
    ocsp_signer_needs_renewal,
    renew_ocsp_signer,
)
from services.ca_service.domain.keys import KeyAlgorithm
from services.ca_service.domain.settings import CaKind, PkiSettings


def _extension(certificate: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.Extension[x509.ExtensionType]:
    return certificate.extensions.get_extension_for_class(kind)


def _ski(certificate: x509.Certificate) -> bytes:
    return certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest


def _aki(certificate: x509.Certificate) -> bytes | None:
    return certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier


def test_root_is_a_self_signed_ca_with_critical_constraints(hierarchy: Hierarchy):
    """The root: self-signed, basicConstraints CA critical, keyUsage keyCertSign+cRLSign critical, SKI = AKI."""
    root = hierarchy.root.certificate
    assert root.subject == root.issuer
    root.verify_directly_issued_by(root)
    constraints = _extension(root, x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value == x509.BasicConstraints(ca=True, path_length=1)
    usage = _extension(root, x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign
    assert usage.value.crl_sign
    assert not usage.value.digital_signature
    assert _aki(root) == _ski(root)
    assert root.version is x509.Version.v3


@pytest.mark.parametrize("kind", [CaKind.CUSTOMER, CaKind.INTERNAL])
def test_intermediates_are_path_length_zero_cas_under_the_root(hierarchy: Hierarchy, settings: PkiSettings, kind):
    """Each intermediate: signed by the root, pathLen 0, CA key usage, AKI = root SKI, root CRL and AIA URLs."""
    ca = hierarchy.issuing(kind).certificate
    root = hierarchy.root.certificate
    ca.verify_directly_issued_by(root)
    assert _extension(ca, x509.BasicConstraints).critical
    assert _extension(ca, x509.BasicConstraints).value == x509.BasicConstraints(ca=True, path_length=0)
    usage = _extension(ca, x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign
    assert usage.value.crl_sign
    assert _aki(ca) == _ski(root)
    points = _extension(ca, x509.CRLDistributionPoints).value
    assert [name.value for point in points for name in point.full_name or []] == [
        "http://127.0.0.1:8080/pki/crl/root.crl"
    ]
    access = _extension(ca, x509.AuthorityInformationAccess).value
    assert [(d.access_method, d.access_location.value) for d in access] == [
        (AuthorityInformationAccessOID.CA_ISSUERS, "http://127.0.0.1:8080/pki/root-ca.crt")
    ]
    assert ca.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == settings.common_name(kind)
    assert ca.not_valid_after_utc <= root.not_valid_after_utc


@pytest.mark.parametrize(
    ("algorithm", "signature_oid"),
    [
        (KeyAlgorithm.EC_P256, SignatureAlgorithmOID.ECDSA_WITH_SHA256),
        (KeyAlgorithm.EC_P384, SignatureAlgorithmOID.ECDSA_WITH_SHA384),
        (KeyAlgorithm.RSA_2048, SignatureAlgorithmOID.RSA_WITH_SHA256),
        (KeyAlgorithm.RSA_3072, SignatureAlgorithmOID.RSA_WITH_SHA256),
    ],
)
def test_ca_key_algorithm_is_selectable(settings: PkiSettings, clock: FakeClock, algorithm, signature_oid):
    """A hierarchy can be built on P-256, P-384, RSA-2048 or RSA-3072 keys, signing with the matching algorithm."""
    hierarchy = build_hierarchy(
        {kind: PrivateKeySigner.generate(algorithm) for kind in CaKind}, settings=settings, clock=clock
    )
    for ca in (hierarchy.root, hierarchy.customer, hierarchy.internal):
        assert ca.certificate.signature_algorithm_oid == signature_oid
    hierarchy.customer.certificate.verify_directly_issued_by(hierarchy.root.certificate)
    key = hierarchy.customer.certificate.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey if algorithm.value.startswith("ec") else rsa.RSAPublicKey)


def test_intermediate_validity_is_cut_at_the_root_expiry(clock: FakeClock):
    """An intermediate asked to outlive the root ends with the root."""
    settings = PkiSettings(root_validity=timedelta(days=100), intermediate_validity=timedelta(days=3650))
    hierarchy = build_hierarchy({kind: PrivateKeySigner.generate() for kind in CaKind}, settings=settings, clock=clock)
    assert hierarchy.customer.certificate.not_valid_after_utc == hierarchy.root.certificate.not_valid_after_utc


def test_publication_urls_come_from_settings(clock: FakeClock):
    """A deployment's base URL appears in the intermediates' CRL DP and AIA."""
    settings = PkiSettings(base_url="http://pki.bank.example")
    hierarchy = build_hierarchy({kind: PrivateKeySigner.generate() for kind in CaKind}, settings=settings, clock=clock)
    points = _extension(hierarchy.internal.certificate, x509.CRLDistributionPoints).value
    assert points[0].full_name is not None
    assert points[0].full_name[0].value == "http://pki.bank.example/pki/crl/root.crl"


def test_a_ca_whose_signer_holds_another_key_is_refused(hierarchy: Hierarchy):
    """Pairing a CA certificate with the wrong key fails with SIGNER_KEY_MISMATCH."""
    with pytest.raises(SignerKeyMismatch) as error:
        CertificateAuthority(CaKind.CUSTOMER, hierarchy.customer.certificate, PrivateKeySigner.generate())
    assert error.value.reason == "SIGNER_KEY_MISMATCH"


def test_only_the_root_certifies_intermediates(hierarchy: Hierarchy, settings: PkiSettings, clock: FakeClock):
    """An intermediate cannot certify another CA, and the root kind is not an intermediate kind."""
    with pytest.raises(IssuerCannotIssue):
        build_intermediate(
            hierarchy.customer, CaKind.INTERNAL, PrivateKeySigner.generate(), settings=settings, clock=clock
        )
    with pytest.raises(IssuerCannotIssue):
        build_intermediate(hierarchy.root, CaKind.ROOT, PrivateKeySigner.generate(), settings=settings, clock=clock)


def test_ocsp_signer_profile(hierarchy: Hierarchy, settings: PkiSettings, clock: FakeClock):
    """The delegated OCSP signer: issued by its CA, EKU OCSPSigning, ocsp-nocheck, digitalSignature, 30 days."""
    delegate = issue_ocsp_signer(hierarchy.customer, PrivateKeySigner.generate(), settings=settings, clock=clock)
    certificate = delegate.certificate
    certificate.verify_directly_issued_by(hierarchy.customer.certificate)
    assert _extension(certificate, x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.OCSP_SIGNING]
    )
    assert isinstance(_extension(certificate, x509.OCSPNoCheck).value, x509.OCSPNoCheck)
    usage = _extension(certificate, x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature
    assert not usage.value.key_cert_sign
    assert _extension(certificate, x509.BasicConstraints).value.ca is False
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert lifetime == timedelta(days=30) + settings.backdate
    assert _aki(certificate) == _ski(hierarchy.customer.certificate)


def test_the_root_has_no_ocsp_signer(hierarchy: Hierarchy, settings: PkiSettings, clock: FakeClock):
    """Only issuing CAs get delegated OCSP signers."""
    with pytest.raises(IssuerCannotIssue):
        issue_ocsp_signer(hierarchy.root, PrivateKeySigner.generate(), settings=settings, clock=clock)


def test_ocsp_signer_is_renewed_ten_days_before_expiry(hierarchy: Hierarchy, settings: PkiSettings, clock: FakeClock):
    """A fresh signer is kept; 20 days on it is due and is replaced by a new certificate on a new key."""
    current = issue_ocsp_signer(hierarchy.internal, PrivateKeySigner.generate(), settings=settings, clock=clock)
    assert not ocsp_signer_needs_renewal(current, settings=settings, clock=clock)
    assert renew_ocsp_signer(current, PrivateKeySigner.generate, settings=settings, clock=clock) is current
    clock.advance(timedelta(days=19).total_seconds())
    assert not ocsp_signer_needs_renewal(current, settings=settings, clock=clock)
    clock.advance(timedelta(days=1).total_seconds())
    assert ocsp_signer_needs_renewal(current, settings=settings, clock=clock)
    renewed = renew_ocsp_signer(current, PrivateKeySigner.generate, settings=settings, clock=clock)
    assert renewed is not current
    assert renewed.certificate.public_key() != current.certificate.public_key()
    assert renewed.certificate.not_valid_after_utc > current.certificate.not_valid_after_utc
    assert not ocsp_signer_needs_renewal(renewed, settings=settings, clock=clock)


def test_ocsp_signer_is_renewed_when_its_ca_was_rekeyed(hierarchy: Hierarchy, settings: PkiSettings, clock: FakeClock):
    """A signer certified by an older key of the CA is due at once, however fresh."""
    old = issue_ocsp_signer(hierarchy.customer, PrivateKeySigner.generate(), settings=settings, clock=clock)
    rekeyed = build_intermediate(
        hierarchy.root, CaKind.CUSTOMER, PrivateKeySigner.generate(), settings=settings, clock=clock
    )
    stale = type(old)(issuer=rekeyed, certificate=old.certificate, signer=old.signer)
    assert ocsp_signer_needs_renewal(stale, settings=settings, clock=clock)

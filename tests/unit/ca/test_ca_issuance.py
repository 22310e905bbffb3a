"""Issuance: prepare (validate, allocate serial) then sign; names from the identity, the profile's extensions."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, ExtensionOID, NameOID

from kagi.clock import FakeClock, utc_datetime
from kagi.errors import InvalidArgument
from services.ca_service.adapters.file_signer import PrivateKeySigner
from services.ca_service.domain.errors import InvalidIdentity, IssuerCannotIssue, UnknownProfile
from services.ca_service.domain.hierarchy import Hierarchy, build_hierarchy
from services.ca_service.domain.identity import CustomerIdentity
from services.ca_service.domain.issuance import prepare_issuance, sign_certificate
from services.ca_service.domain.keys import KeyAlgorithm
from services.ca_service.domain.settings import CaKind, PkiSettings


def _issue(hierarchy, identity, profile, csr, settings, clock, **kwargs):
    ca = hierarchy.issuing(CaKind.CUSTOMER if profile == "customer" else CaKind.INTERNAL)
    prepared = prepare_issuance(ca, csr, identity, profile, settings=settings, clock=clock, **kwargs)
    return prepared, sign_certificate(ca, prepared, settings=settings)


def test_customer_certificate_has_the_customer_profile(hierarchy, customer, make_csr, settings, clock):
    """A customer certificate carries exactly the RFC 5280 end-entity extensions of the customer profile."""
    _, issued = _issue(hierarchy, customer, "customer", make_csr(), settings, clock)
    certificate = issued.certificate
    certificate.verify_directly_issued_by(hierarchy.customer.certificate)
    extensions = {extension.oid: extension for extension in certificate.extensions}
    assert set(extensions) == {
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.EXTENDED_KEY_USAGE,
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
        ExtensionOID.SUBJECT_KEY_IDENTIFIER,
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
        ExtensionOID.CRL_DISTRIBUTION_POINTS,
        ExtensionOID.AUTHORITY_INFORMATION_ACCESS,
    }
    assert {oid for oid, extension in extensions.items() if extension.critical} == {
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
    }
    assert extensions[ExtensionOID.BASIC_CONSTRAINTS].value.ca is False
    assert extensions[ExtensionOID.KEY_USAGE].value == x509.KeyUsage(
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
    assert list(extensions[ExtensionOID.EXTENDED_KEY_USAGE].value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert (
        extensions[ExtensionOID.AUTHORITY_KEY_IDENTIFIER].value.key_identifier
        == hierarchy.customer.subject_key_identifier.digest
    )
    points = extensions[ExtensionOID.CRL_DISTRIBUTION_POINTS].value
    assert points[0].full_name[0].value == "http://127.0.0.1:8080/pki/crl/customer.crl"
    access = [
        (d.access_method, d.access_location.value) for d in extensions[ExtensionOID.AUTHORITY_INFORMATION_ACCESS].value
    ]
    assert access == [
        (AuthorityInformationAccessOID.OCSP, "http://127.0.0.1:8080/pki/ocsp"),
        (AuthorityInformationAccessOID.CA_ISSUERS, "http://127.0.0.1:8080/pki/customer-ca.crt"),
    ]


def test_names_come_from_the_identity_never_from_the_csr(hierarchy, customer, make_csr, settings, clock):
    """The CSR's CN "Evil Admin", its DNS SAN and its CA:true request are all ignored."""
    _, issued = _issue(hierarchy, customer, "customer", make_csr(), settings, clock)
    certificate = issued.certificate
    assert certificate.subject == customer.subject(settings)
    assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "山田 太郎"
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier("urn:kagi:user:u-0001")]
    assert certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


def test_validity_is_the_profile_lifetime_backdated_five_minutes(hierarchy, customer, make_csr, settings, clock):
    """notBefore is now minus 5 minutes, notAfter now plus 365 days (the CA being far older and younger)."""
    clock.advance(3600)
    now = utc_datetime(clock).replace(microsecond=0)
    prepared, issued = _issue(hierarchy, customer, "customer", make_csr(), settings, clock)
    assert issued.not_before == now - timedelta(minutes=5)
    assert issued.not_after == now + timedelta(days=365)
    assert (prepared.not_before, prepared.not_after) == (issued.not_before, issued.not_after)


def test_not_before_never_precedes_the_issuer(customer, make_csr, clock):
    """Issued in the CA's first minute, the certificate starts no earlier than the CA itself."""
    young = build_hierarchy(
        {kind: PrivateKeySigner.generate() for kind in CaKind}, settings=PkiSettings(backdate=timedelta(0)), clock=clock
    )
    clock.advance(60)
    _, issued = _issue(young, customer, "customer", make_csr(), PkiSettings(), clock)
    assert issued.not_before == young.customer.certificate.not_valid_before_utc


def test_not_after_never_follows_the_issuer(hierarchy, customer, make_csr, settings, clock):
    """Near the CA's end of life a certificate ends with the CA, and after it nothing is issued."""
    ca_end = hierarchy.customer.certificate.not_valid_after_utc
    clock.set(ca_end.timestamp() - 86400)
    _, issued = _issue(hierarchy, customer, "customer", make_csr(), settings, clock)
    assert issued.not_after == ca_end
    clock.set(ca_end.timestamp() + 1)
    with pytest.raises(IssuerCannotIssue):
        _issue(hierarchy, customer, "customer", make_csr(), settings, clock)


def test_serial_is_allocated_at_prepare_and_used_at_sign(hierarchy, customer, make_csr, settings, clock):
    """The serial drawn by prepare (here from an injected source) is the certificate's serial."""
    prepared, issued = _issue(
        hierarchy, customer, "customer", make_csr(), settings, clock, random_bytes=lambda n: b"\x00" * (n - 1) + b"\x2a"
    )
    assert prepared.serial == issued.serial == 42
    assert prepared.serial_hex == issued.serial_hex == "2a"


def test_service_certificate_has_spiffe_id_and_server_and_client_auth(hierarchy, service, make_csr, settings, clock):
    """An internal certificate: from the internal CA, EKU serverAuth+clientAuth, one SPIFFE URI SAN, 90 days."""
    _, issued = _issue(hierarchy, service, "service", make_csr(), settings, clock)
    certificate = issued.certificate
    certificate.verify_directly_issued_by(hierarchy.internal.certificate)
    eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://kagi.internal/gateway"]
    assert issued.not_after - issued.not_before == timedelta(days=90, minutes=5)
    points = certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert points[0].full_name[0].value == "http://127.0.0.1:8080/pki/crl/internal.crl"


def test_customer_ca_never_issues_service_certificates(hierarchy, service, make_csr, settings, clock):
    """The customer CA refuses the service profile, so a customer chain never vouches for a service."""
    with pytest.raises(IssuerCannotIssue):
        prepare_issuance(hierarchy.customer, make_csr(), service, "service", settings=settings, clock=clock)
    with pytest.raises(IssuerCannotIssue):
        prepare_issuance(
            hierarchy.internal,
            make_csr(),
            CustomerIdentity("u-1", "login01", "Taro", "ACME"),
            "customer",
            settings=settings,
            clock=clock,
        )


def test_identity_must_match_the_profile(hierarchy, service, make_csr, settings, clock):
    """A service identity on the customer profile, or no identity, is InvalidArgument naming identity."""
    for identity in (service, None):
        with pytest.raises(InvalidIdentity) as error:
            prepare_issuance(hierarchy.customer, make_csr(), identity, "customer", settings=settings, clock=clock)
        assert "identity" in error.value.fields


def test_unknown_profile_is_refused_before_anything_else(hierarchy, customer, settings, clock):
    """An unknown profile is reported even when the CSR is garbage too."""
    with pytest.raises(UnknownProfile):
        prepare_issuance(hierarchy.customer, b"garbage", customer, "vip", settings=settings, clock=clock)


def test_bad_csr_is_refused_at_prepare(hierarchy, customer, settings, clock):
    """prepare_issuance passes CSR errors through as InvalidArgument naming csr."""
    with pytest.raises(InvalidArgument) as error:
        prepare_issuance(hierarchy.customer, b"\x00" * 32, customer, "customer", settings=settings, clock=clock)
    assert "csr" in error.value.fields


def test_sign_refuses_another_ca(hierarchy: Hierarchy, customer, make_csr, settings, clock):
    """An issuance prepared for the customer CA cannot be signed by the internal CA."""
    prepared = prepare_issuance(hierarchy.customer, make_csr(), customer, "customer", settings=settings, clock=clock)
    with pytest.raises(IssuerCannotIssue):
        sign_certificate(hierarchy.internal, prepared, settings=settings)


def test_rsa_ca_issues_for_an_rsa_key(customer, make_csr, settings, clock: FakeClock):
    """An RSA-2048 CA signs an RSA-3072 customer key with sha256WithRSAEncryption."""
    hierarchy = build_hierarchy(
        {kind: PrivateKeySigner.generate(KeyAlgorithm.RSA_2048) for kind in CaKind}, settings=settings, clock=clock
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    _, issued = _issue(hierarchy, customer, "customer", make_csr(key), settings, clock)
    issued.certificate.verify_directly_issued_by(hierarchy.customer.certificate)
    assert issued.certificate.signature_algorithm_oid == x509.SignatureAlgorithmOID.RSA_WITH_SHA256
    assert issued.pem.startswith(b"-----BEGIN CERTIFICATE-----")
    assert len(issued.fingerprint_sha256) == 64

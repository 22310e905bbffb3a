"""CRLs: X.509 v2 with CRL number and AKI, reason codes except for unspecified, expired entries dropped."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography import x509

from kagi.clock import utc_datetime
from services.ca_service.domain.crl import build_crl
from services.ca_service.domain.errors import InvalidCrlNumber, IssuerCannotIssue
from services.ca_service.domain.revocation import CertificateStatus, RevocationReason, revoke
from services.ca_service.domain.serials import new_serial
from services.ca_service.domain.settings import CaKind


def _revoked(clock, reason=RevocationReason.KEY_COMPROMISE, *, issuer=CaKind.CUSTOMER, expires_in=timedelta(days=200)):
    now = utc_datetime(clock)
    status = CertificateStatus(issuer, new_serial(), not_after=now + expires_in)
    return revoke(status, reason, now - timedelta(hours=1))


def test_crl_lists_revoked_certificates_with_reasons(hierarchy, settings, clock):
    """Entries carry serial and revocation date; reasons appear except for unspecified (RFC 5280 5.3.1)."""
    compromised = _revoked(clock, RevocationReason.KEY_COMPROMISE)
    unspecified = _revoked(clock, RevocationReason.UNSPECIFIED)
    good = CertificateStatus(CaKind.CUSTOMER, new_serial(), not_after=utc_datetime(clock) + timedelta(days=9))
    signed = build_crl(
        hierarchy.customer, [compromised, good, unspecified], crl_number=7, settings=settings, clock=clock
    )
    crl = x509.load_der_x509_crl(signed.der)
    assert crl.is_signature_valid(hierarchy.customer.public_key)
    assert signed.entry_count == len(crl) == 2
    entry = crl.get_revoked_certificate_by_serial_number(compromised.serial)
    assert entry is not None
    assert entry.revocation_date_utc == compromised.revocation.revoked_at
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason is x509.ReasonFlags.key_compromise
    plain = crl.get_revoked_certificate_by_serial_number(unspecified.serial)
    assert plain is not None
    assert len(plain.extensions) == 0
    assert crl.get_revoked_certificate_by_serial_number(good.serial) is None


def test_crl_header_has_number_aki_and_update_times(hierarchy, settings, clock):
    """The CRL is v2, issued by the CA, with CRL Number, AKI = CA SKI, and nextUpdate = thisUpdate + 1 day."""
    signed = build_crl(hierarchy.customer, [], crl_number=12, settings=settings, clock=clock)
    crl = x509.load_der_x509_crl(signed.der)
    assert crl.issuer == hierarchy.customer.name
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 12
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == hierarchy.customer.subject_key_identifier.digest
    assert crl.last_update_utc == utc_datetime(clock).replace(microsecond=0) == signed.this_update
    assert crl.next_update_utc == signed.next_update == signed.this_update + settings.crl_validity
    assert signed.pem.startswith(b"-----BEGIN X509 CRL-----")


def test_expired_certificates_drop_out_after_one_crl_period(hierarchy, settings, clock):
    """An entry stays while its certificate expired less than one CRL period ago, then drops out."""
    just_expired = _revoked(clock, expires_in=-timedelta(hours=1))
    long_expired = _revoked(clock, expires_in=-timedelta(days=2))
    signed = build_crl(hierarchy.customer, [just_expired, long_expired], crl_number=1, settings=settings, clock=clock)
    crl = x509.load_der_x509_crl(signed.der)
    assert crl.get_revoked_certificate_by_serial_number(just_expired.serial) is not None
    assert crl.get_revoked_certificate_by_serial_number(long_expired.serial) is None


def test_another_cas_certificate_is_refused(hierarchy, settings, clock):
    """A status of the internal CA handed to the customer CA's CRL is an error, not silently listed."""
    with pytest.raises(IssuerCannotIssue):
        build_crl(
            hierarchy.customer, [_revoked(clock, issuer=CaKind.INTERNAL)], crl_number=1, settings=settings, clock=clock
        )


@pytest.mark.parametrize("number", [-1, 2**159, True])
def test_crl_number_out_of_range_is_refused(hierarchy, settings, clock, number):
    """CRL numbers must be non-negative and fit 20 octets."""
    with pytest.raises(InvalidCrlNumber):
        build_crl(hierarchy.customer, [], crl_number=number, settings=settings, clock=clock)


def test_five_thousand_entries_are_all_listed(hierarchy, settings, clock):
    """A large list is built in one pass and every serial with its reason is on the CRL."""
    reasons = [r for r in RevocationReason if r is not RevocationReason.REMOVE_FROM_CRL]
    statuses = [_revoked(clock, reasons[i % len(reasons)]) for i in range(5000)]
    signed = build_crl(hierarchy.customer, statuses, crl_number=3, settings=settings, clock=clock)
    crl = x509.load_der_x509_crl(signed.der)
    assert len(crl) == 5000
    listed = {entry.serial_number for entry in crl}
    assert listed == {status.serial for status in statuses}
    sample = crl.get_revoked_certificate_by_serial_number(statuses[4].serial)
    assert sample is not None
    assert sample.extensions.get_extension_for_class(x509.CRLReason).value.reason is reasons[4].flag


def test_root_crl_lists_revoked_intermediates(hierarchy, settings, clock):
    """The root signs its own CRL (an ARL) the same way."""
    status = CertificateStatus(
        CaKind.ROOT, hierarchy.customer.certificate.serial_number, hierarchy.customer.certificate.not_valid_after_utc
    )
    revoked = revoke(status, RevocationReason.CA_COMPROMISE, utc_datetime(clock))
    crl = x509.load_der_x509_crl(build_crl(hierarchy.root, [revoked], crl_number=1, settings=settings, clock=clock).der)
    assert crl.is_signature_valid(hierarchy.root.public_key)
    assert len(crl) == 1

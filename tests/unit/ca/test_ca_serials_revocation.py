"""Serial numbers and revocation reasons: generation, parsing of operator input, and the revoke transition."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.ca_service.domain.errors import AlreadyRevoked, InvalidRevocationReason, InvalidSerial
from services.ca_service.domain.revocation import CertificateStatus, RevocationReason, parse_revocation_reason, revoke
from services.ca_service.domain.serials import MAX_SERIAL, new_serial, parse_serial, serial_hex
from services.ca_service.domain.settings import CaKind

NOW = datetime(2027, 1, 15, 8, 0, tzinfo=UTC)


def test_new_serial_is_positive_159_bits_and_fits_20_octets():
    """Serials are positive, below 2**159, and so encode in at most 20 DER octets."""
    for _ in range(200):
        serial = new_serial()
        assert 0 < serial <= MAX_SERIAL
        assert len(serial.to_bytes((serial.bit_length() + 8) // 8, "big", signed=True)) <= 20


def test_new_serial_masks_the_top_bit_of_the_random_source():
    """All-ones randomness yields exactly 2**159 - 1: the sign bit is never set."""
    assert new_serial(lambda n: b"\xff" * n) == MAX_SERIAL


def test_new_serial_draws_again_on_zero():
    """A zero draw is never used as a serial; the next draw is."""
    draws = iter([b"\x00" * 20, b"\x00" * 19 + b"\x07"])
    assert new_serial(lambda n: next(draws)) == 7


def test_serials_differ():
    """Two thousand draws give two thousand distinct serials."""
    assert len({new_serial() for _ in range(2000)}) == 2000


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0x1A2b", 0x1A2B),
        ("1a:2b:3c", 0x1A2B3C),
        ("deadbeef", 0xDEADBEEF),
        ("  12345 ", 12345),
        ("0X00FF", 0xFF),
    ],
)
def test_serial_text_is_parsed_as_hex_or_decimal(text, expected):
    """Hex (0x, colons or a-f letters) and decimal digits both parse; whitespace is ignored."""
    assert parse_serial(text) == expected


@pytest.mark.parametrize("text", ["", "abc-123", "0x", "12.5", "serial", "0", "0x" + "f" * 41, "9" * 200, ":"])
def test_serial_that_is_not_a_number_is_invalid(text):
    """Non-numbers, zero, more than 20 octets and absurdly long text give INVALID_SERIAL naming serial."""
    with pytest.raises(InvalidSerial) as error:
        parse_serial(text)
    assert error.value.reason == "INVALID_SERIAL"
    assert "serial" in error.value.fields


def test_serial_hex_is_the_canonical_store_key():
    """serial_hex writes lower-case hex without prefix, and parse_serial reads it back."""
    serial = new_serial()
    assert parse_serial("0x" + serial_hex(serial)) == serial
    assert serial_hex(0xABC) == "abc"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("keyCompromise", RevocationReason.KEY_COMPROMISE),
        ("KEY_COMPROMISE", RevocationReason.KEY_COMPROMISE),
        ("cACompromise", RevocationReason.CA_COMPROMISE),
        ("aACompromise", RevocationReason.AA_COMPROMISE),
        ("cessation-of-operation", RevocationReason.CESSATION_OF_OPERATION),
        (0, RevocationReason.UNSPECIFIED),
        ("10", RevocationReason.AA_COMPROMISE),
        (6, RevocationReason.CERTIFICATE_HOLD),
    ],
)
def test_revocation_reasons_are_read_by_name_or_number(value, expected):
    """RFC 5280 names, enum names and numbers all map to the reason code."""
    assert parse_revocation_reason(value) is expected


@pytest.mark.parametrize("value", [7, 8, "removeFromCRL", 11, -1, "99", "lost", "", True])
def test_out_of_range_or_forbidden_reason_is_invalid(value):
    """7 (unassigned), removeFromCRL, out-of-range numbers and unknown names give INVALID_REVOCATION_REASON."""
    with pytest.raises(InvalidRevocationReason) as error:
        parse_revocation_reason(value)
    assert error.value.reason == "INVALID_REVOCATION_REASON"
    assert "keyCompromise (1)" in error.value.fields["reason"]


def test_reason_names_match_rfc_5280():
    """Each reason's RFC name and number are those of RFC 5280 section 5.3.1."""
    assert {reason.rfc_name: reason.value for reason in RevocationReason} == {
        "unspecified": 0,
        "keyCompromise": 1,
        "cACompromise": 2,
        "affiliationChanged": 3,
        "superseded": 4,
        "cessationOfOperation": 5,
        "certificateHold": 6,
        "removeFromCRL": 8,
        "privilegeWithdrawn": 9,
        "aACompromise": 10,
    }


def _status() -> CertificateStatus:
    return CertificateStatus(CaKind.CUSTOMER, serial=0x1234, not_after=NOW + timedelta(days=300), version=3)


def test_revoke_records_time_and_reason():
    """Revoking a good certificate records the reason and the time (to the second)."""
    revoked = revoke(_status(), RevocationReason.KEY_COMPROMISE, NOW + timedelta(microseconds=5))
    assert revoked.revocation is not None
    assert revoked.revocation.reason is RevocationReason.KEY_COMPROMISE
    assert revoked.revocation.revoked_at == NOW
    assert revoked.is_revoked


def test_revoking_twice_is_a_failed_precondition():
    """A revoked certificate cannot be revoked again: ALREADY_REVOKED."""
    revoked = revoke(_status(), RevocationReason.SUPERSEDED, NOW)
    with pytest.raises(AlreadyRevoked) as error:
        revoke(revoked, RevocationReason.KEY_COMPROMISE, NOW)
    assert error.value.reason == "ALREADY_REVOKED"


def test_a_hold_can_become_a_revocation():
    """certificateHold may be turned into a final reason, but not held twice."""
    held = revoke(_status(), RevocationReason.CERTIFICATE_HOLD, NOW)
    final = revoke(held, RevocationReason.KEY_COMPROMISE, NOW + timedelta(hours=1))
    assert final.revocation is not None
    assert final.revocation.reason is RevocationReason.KEY_COMPROMISE
    with pytest.raises(AlreadyRevoked):
        revoke(held, RevocationReason.CERTIFICATE_HOLD, NOW)


def test_remove_from_crl_cannot_revoke():
    """revoke refuses removeFromCRL even when handed the enum directly."""
    with pytest.raises(InvalidRevocationReason):
        revoke(_status(), RevocationReason.REMOVE_FROM_CRL, NOW)


def test_status_refuses_an_out_of_range_serial():
    """A status record cannot hold a serial of zero or over 20 octets."""
    with pytest.raises(InvalidSerial):
        CertificateStatus(CaKind.CUSTOMER, serial=0, not_after=NOW)

"""The otpauth:// Key URI: standard shape, proper percent-encoding, and pyotp reads it back to the same codes."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pyotp
import pytest

from services.otp_service.domain import Algorithm, InvalidTokenField, Seed, TotpParameters
from services.otp_service.domain.totp import totp
from services.otp_service.domain.uri import key_uri

SEED = Seed(bytes(range(1, 21)))


@pytest.mark.parametrize(
    ("algorithm", "digits"), [(Algorithm.SHA1, 6), (Algorithm.SHA256, 8), (Algorithm.SHA512, 8), (Algorithm.SHA1, 7)]
)
def test_pyotp_parses_the_uri_back(algorithm: Algorithm, digits: int) -> None:
    """pyotp.parse_uri recovers issuer, account, secret, hash, digits and period=60, and makes the same codes."""
    seed = Seed(bytes(range(algorithm.seed_bytes)))
    params = TotpParameters(algorithm=algorithm, digits=digits)
    uri = key_uri(seed, params, issuer="Kagi Shinkumi", account="ABCD2345")
    parsed = pyotp.parse_uri(uri)
    assert isinstance(parsed, pyotp.TOTP)
    assert parsed.issuer == "Kagi Shinkumi"
    assert parsed.name == "ABCD2345"
    assert parsed.secret == seed.base32()
    assert parsed.digits == digits
    assert parsed.interval == 60
    assert parsed.digest().name == algorithm.digest_name
    for when in (1_800_000_000, 1_800_000_061):
        assert parsed.at(when) == totp(seed.value, when, params)


def test_uri_shape_and_encoding() -> None:
    """Scheme otpauth, type totp, label `issuer:account` with %20 (never +) and UTF-8 escapes, unpadded secret."""
    uri = key_uri(SEED, TotpParameters(), issuer="都留 信組 & Co", account="user 1")
    parts = urlsplit(uri)
    assert (parts.scheme, parts.netloc) == ("otpauth", "totp")
    assert parts.path == "/%E9%83%BD%E7%95%99%20%E4%BF%A1%E7%B5%84%20%26%20Co:user%201"
    assert "+" not in uri
    assert " " not in uri
    query = parse_qs(parts.query)
    assert query == {
        "secret": [SEED.base32()],
        "issuer": ["都留 信組 & Co"],
        "algorithm": ["SHA1"],
        "digits": ["6"],
        "period": ["60"],
    }
    assert "=" not in query["secret"][0]
    assert pyotp.parse_uri(uri).issuer == "都留 信組 & Co"


@pytest.mark.parametrize(("issuer", "account"), [("Bad:Issuer", "a"), ("Kagi", "a:b"), ("", "a"), ("Kagi", "x\ny")])
def test_label_parts_that_would_break_the_label_are_refused(issuer: str, account: str) -> None:
    """A colon, a control character or an empty part in issuer or account is refused, naming which."""
    with pytest.raises(InvalidTokenField) as caught:
        key_uri(SEED, TotpParameters(), issuer=issuer, account=account)
    assert set(caught.value.fields) <= {"issuer", "account"}

"""The otpauth:// Key URI that hands a seed to an authenticator app (Google's Key URI Format).

Example: `otpauth://totp/Kagi%20Bank:ABCD2345?secret=...&issuer=Kagi%20Bank&algorithm=SHA1&digits=6&period=60`.
Label parts and values are percent-encoded (UTF-8, spaces as %20, never "+"), the secret is unpadded base32, and
the issuer is given both as the label prefix and as the parameter, which is what apps old and new expect.
Beware: some apps (Google Authenticator on Android among them) ignore `period` and would show 30-second codes;
the bank's own app and `kagi token` honour it.
"""

from __future__ import annotations

from urllib.parse import quote, urlencode

from services.otp_service.domain.errors import InvalidTokenField, field_error
from services.otp_service.domain.seeds import Seed
from services.otp_service.domain.totp import TotpParameters

MAX_LABEL_PART = 100
"""The longest issuer or account name put in a URI label."""


def _check_label_part(value: str, field: str) -> str:
    # A colon would split the label in the wrong place; control characters have no business in a QR code.
    if not 1 <= len(value) <= MAX_LABEL_PART or ":" in value or any(ord(c) < 0x20 for c in value):
        raise field_error(InvalidTokenField, field, f"must be 1-{MAX_LABEL_PART} characters without ':'")
    return value


def key_uri(seed: Seed, params: TotpParameters, *, issuer: str, account: str) -> str:
    """Return the otpauth://totp URI for `seed` with `params`, labelled `issuer:account`."""
    _check_label_part(issuer, "issuer")
    _check_label_part(account, "account")
    label = f"{quote(issuer, safe='')}:{quote(account, safe='')}"
    query = urlencode(
        {
            "secret": seed.base32(),
            "issuer": issuer,
            "algorithm": params.algorithm.value,
            "digits": str(params.digits),
            "period": str(params.period),
        },
        quote_via=quote,
        safe="",
    )
    return f"otpauth://totp/{label}?{query}"

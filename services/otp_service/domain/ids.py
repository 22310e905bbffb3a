"""Identifiers of a token: the internal token id, and the service ID and user ID the user types into the app.

The two typed IDs use Crockford's base32 alphabet (no I, L, O, U), so what is read off a phone screen cannot be
misread; on input, case, spaces and hyphens are ignored and O/I/L are read as 0/1/1, as Crockford specifies.
They are not secrets: a token is only activated with them *and* the usage-start password. The randomness
source is injected so tests can pin it; production passes `secrets.token_bytes`.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from services.otp_service.domain.errors import InvalidTokenField, field_error

RandomBytes = Callable[[int], bytes]
"""Returns n bytes from a CSPRNG; `secrets.token_bytes` in production."""

SYSTEM_RANDOM: RandomBytes = secrets.token_bytes
"""The operating system's CSPRNG."""

CROCKFORD_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
"""The 32 symbols typed IDs use: digits and letters without I, L, O, U."""
SERVICE_ID_LENGTH = 10  # 50 bits: collisions are rare and caught by the store's create-if-absent anyway
"""The characters in a service ID."""
APP_USER_ID_LENGTH = 8  # 40 bits
"""The characters in an app user ID."""
TOKEN_ID_BYTES = 16
"""The random bytes in an internal token id."""

_DECODE = {ch: ch for ch in CROCKFORD_ALPHABET} | {"O": "0", "I": "1", "L": "1"}


def _crockford(random: RandomBytes, length: int) -> str:
    bits = length * 5
    value = int.from_bytes(random((bits + 7) // 8), "big") >> ((8 - bits % 8) % 8)
    chars = []
    for _ in range(length):
        chars.append(CROCKFORD_ALPHABET[value & 0x1F])
        value >>= 5
    return "".join(reversed(chars))


def new_token_id(random: RandomBytes = SYSTEM_RANDOM) -> str:
    """Return a 128-bit random internal token id (32 lowercase hex characters)."""
    return random(TOKEN_ID_BYTES).hex()


def new_service_id(random: RandomBytes = SYSTEM_RANDOM) -> str:
    """Return a random 10-character service ID for the e-mail and the app."""
    return _crockford(random, SERVICE_ID_LENGTH)


def new_app_user_id(random: RandomBytes = SYSTEM_RANDOM) -> str:
    """Return a random 8-character user ID for the e-mail and the app."""
    return _crockford(random, APP_USER_ID_LENGTH)


def _normalise(value: object, field: str, length: int, label_ja: str) -> str:
    rule = (
        f"{label_ja}はメールに記載された{length}文字の英数字を入力してください"
        f" / must be the {length} letters and digits shown in the e-mail"
    )
    if not isinstance(value, str):
        raise field_error(InvalidTokenField, field, rule)
    out = []
    for ch in value:
        if ch in " -":
            continue
        mapped = _DECODE.get(ch.upper()) if ch.isascii() else None
        if mapped is None:
            raise field_error(InvalidTokenField, field, rule)
        out.append(mapped)
    if len(out) != length:
        raise field_error(InvalidTokenField, field, rule)
    return "".join(out)


def parse_service_id(value: object) -> str:
    """Return the canonical service ID typed by a user, or raise InvalidTokenField."""
    return _normalise(value, "service_id", SERVICE_ID_LENGTH, "サービスID")


def parse_app_user_id(value: object) -> str:
    """Return the canonical user ID typed by a user, or raise InvalidTokenField."""
    return _normalise(value, "user_id", APP_USER_ID_LENGTH, "ユーザID")

"""The enrollment's own credentials: the notice's temporary passwords and the step-1 session token."""

from __future__ import annotations

import hashlib
import hmac
import secrets

# No 0/O, 1/l/I, 2/Z, 5/S, 8/B: the notice is printed and typed back by a person.
UNAMBIGUOUS_ALPHABET = "34679ACDEFGHJKLMNPQRTUVWXYacdefghijkmnpqrtuvwxy"
TEMPORARY_PASSWORD_LENGTH = 12
SESSION_TOKEN_BYTES = 32


def temporary_password(length: int = TEMPORARY_PASSWORD_LENGTH) -> str:
    """Draw a CSPRNG password from the unambiguous alphabet (12 characters: ~67 bits)."""
    if length < 10:
        raise ValueError("temporary passwords are at least 10 characters")
    return "".join(secrets.choice(UNAMBIGUOUS_ALPHABET) for _ in range(length))


def session_token() -> str:
    """Return 256 random bits, URL-safe; only its hash is stored."""
    return secrets.token_urlsafe(SESSION_TOKEN_BYTES)


def token_digest(token: str) -> str:
    """Return the stored form of a high-entropy token: SHA-256 suffices, as guessing is hopeless."""
    return hashlib.sha256(token.encode()).hexdigest()


def token_matches(token: str, digest: str) -> bool:
    """Compare a presented token with a stored digest in constant time."""
    return hmac.compare_digest(token_digest(token), digest)

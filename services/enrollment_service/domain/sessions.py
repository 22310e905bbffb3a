"""Sessions and confirmations as claims: what an access token and a confirmation token say, and the rules of
the inputs that make them. Signing and verifying (JWS) is the app layer's; this module is plain data.

Access tokens follow RFC 9068's shape (iss, sub, aud, iat, exp, jti), carry RFC 8176 `amr` values and bind to
the client certificate with RFC 8705's `cnf.x5t#S256`. Two claims of kagi's own: `sid` names the session
(kept across a step-up, ended by EndSession) and `sep` the user's session epoch when it was issued.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kagi.errors import InvalidArgument, Unauthenticated

AUDIENCE = "kagi"
MAX_ACCESS_TOKEN_SECONDS = 15 * 60
CONFIRMATION_TOKEN_SECONDS = 5 * 60
MAX_SUMMARY_BYTES = 1024

AMR_LOGIN = ("swk", "pwd")
"""A proof-of-possession key (the client certificate) and a password (RFC 8176)."""
AMR_STEP_UP = ("otp", "mfa")
"""What a verified one-time password adds."""
CONFIRMATION_METHODS = ("pwd", "otp")

_TRANSACTION_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_LOGIN_ID_MAX = 64
_PASSWORD_MAX = 128

MSG_LOGIN_FAILED = (
    "ログインIDまたはログインパスワードが正しくありません"  # the procedure's wording, then English
    " / the login ID, the login password or the certificate is wrong"
)
MSG_TOKEN_INVALID = (
    "アクセストークンが無効です。再度ログインしてください"  # the procedure's wording, then English
    " / the access token is not valid: log in again"
)


class LoginFailed(Unauthenticated):
    """Unknown login ID, someone else's certificate, or a wrong password; told apart to nobody."""

    reason = "LOGIN_FAILED"


class AccessTokenInvalid(Unauthenticated):
    """Malformed, expired, ended, of another user or certificate, or from an old epoch."""

    reason = "ACCESS_TOKEN_INVALID"


def b64url(data: bytes) -> str:
    """Return base64url without padding (RFC 7515 section 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def certificate_thumbprint(fingerprint_sha256_hex: str) -> str:
    """Return the RFC 8705 `x5t#S256` of a certificate from its SHA-256 fingerprint in hex."""
    return b64url(bytes.fromhex(fingerprint_sha256_hex))


def txn_digest(summary: str) -> str:
    """Return the SHA-256 of the summary's UTF-8 bytes, base64url without padding."""
    return b64url(hashlib.sha256(summary.encode("utf-8")).digest())


def check_login_entry(login_id: str, login_password: str) -> None:
    """Raise InvalidArgument naming each field that is empty or too long (no other rule is told)."""
    fields = {}
    if not login_id or len(login_id) > _LOGIN_ID_MAX:
        fields["login_id"] = f"required, at most {_LOGIN_ID_MAX} characters"
    if not login_password or len(login_password) > _PASSWORD_MAX:
        fields["login_password"] = f"required, at most {_PASSWORD_MAX} characters"
    if fields:
        raise InvalidArgument("入力内容に誤りがあります / the entries are incomplete", fields=fields)


def check_user_id(user_id: str) -> None:
    """Raise InvalidArgument unless a user id is given."""
    if not user_id or len(user_id) > 64:
        raise InvalidArgument("user_id is required", fields={"user_id": "required, at most 64 characters"})


@dataclass(frozen=True)
class TransactionEntry:
    """A validated confirmation request (the password and code are checked elsewhere)."""

    transaction_id: str
    summary: str
    digest: str


def check_transaction(
    transaction_id: str, transaction_summary: str, confirmation_password: str, otp: str
) -> TransactionEntry:
    """Return the validated transaction, or raise InvalidArgument naming every wrong field and its rule."""
    fields = {}
    if not _TRANSACTION_ID.fullmatch(transaction_id):
        fields["transaction_id"] = "1-128 characters of A-Z a-z 0-9 . _ : -"
    size = len(transaction_summary.encode("utf-8"))
    if size == 0 or size > MAX_SUMMARY_BYTES:
        fields["transaction_summary"] = f"required, UTF-8 text of at most {MAX_SUMMARY_BYTES} bytes"
    if not confirmation_password or len(confirmation_password) > _PASSWORD_MAX:
        fields["confirmation_password"] = f"required, at most {_PASSWORD_MAX} characters"
    if not otp:
        fields["otp"] = "required: the 6-8 digit code the app shows"
    if fields:
        raise InvalidArgument("入力内容に誤りがあります / the confirmation request is invalid", fields=fields)
    return TransactionEntry(transaction_id, transaction_summary, txn_digest(transaction_summary))


@dataclass(frozen=True)
class SessionClaims:
    """What kagi reads back from a verified access token."""

    user_id: str
    session_id: str
    epoch: int
    amr: tuple[str, ...]
    thumbprint: str
    expires_at: float

    @classmethod
    def parse(cls, claims: Mapping[str, Any]) -> SessionClaims:
        """Read the claims kagi relies on, or raise AccessTokenInvalid."""
        try:
            cnf = claims["cnf"]
            return cls(
                user_id=str(claims["sub"]),
                session_id=str(claims["sid"]),
                epoch=int(claims["sep"]),
                amr=tuple(str(v) for v in claims["amr"]),
                thumbprint=str(cnf["x5t#S256"]),
                expires_at=float(claims["exp"]),
            )
        except (KeyError, TypeError, ValueError):
            raise AccessTokenInvalid(MSG_TOKEN_INVALID) from None


def access_claims(
    *,
    issuer: str,
    user_id: str,
    session_id: str,
    epoch: int,
    amr: tuple[str, ...],
    thumbprint: str,
    token_id: str,
    now: float,
    lifetime: int,
) -> dict[str, Any]:
    """Return the claims of an access token (lifetime capped at 15 minutes)."""
    issued = int(now)
    return {
        "iss": issuer,
        "sub": user_id,
        "aud": AUDIENCE,
        "iat": issued,
        "exp": issued + min(lifetime, MAX_ACCESS_TOKEN_SECONDS),
        "jti": token_id,
        "amr": list(amr),
        "sid": session_id,
        "sep": epoch,
        "cnf": {"x5t#S256": thumbprint},
    }


def stepped_up(amr: tuple[str, ...]) -> tuple[str, ...]:
    """Return `amr` with otp and mfa added once."""
    return (*amr, *(value for value in AMR_STEP_UP if value not in amr))


def confirmation_claims(
    *,
    issuer: str,
    user_id: str,
    confirmation_id: str,
    transaction_id: str,
    digest: str,
    confirmed_at: float,
    thumbprint: str,
) -> dict[str, Any]:
    """Return the claims of a confirmation token: who confirmed which transaction, with what, when."""
    issued = int(confirmed_at)
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": user_id,
        "aud": AUDIENCE,
        "iat": issued,
        "exp": issued + CONFIRMATION_TOKEN_SECONDS,
        "jti": confirmation_id,
        "amr": list(CONFIRMATION_METHODS),
        "txn": transaction_id,
        "txn_digest": digest,
    }
    if thumbprint:
        claims["cnf"] = {"x5t#S256": thumbprint}
    return claims

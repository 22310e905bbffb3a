"""The token signing keys: an encrypted key ring file shared by the enrollment service's replicas, and JWS
(ES256, via PyJWT) over it.

The file (`KAGI_ENROLLMENT_SIGNING_KEY_FILE`) holds one or more EC P-256 keys as encrypted PKCS#8 PEM blocks
under one passphrase, each preceded by a `Not-Before:` line (RFC 7468 allows text between blocks):

    Not-Before: 2026-12-01T09:00:00Z
    -----BEGIN ENCRYPTED PRIVATE KEY-----
    ...

The newest key whose Not-Before has passed signs; every key in the file verifies and is published in the JWKS
under its RFC 7638 thumbprint as `kid`. `kagi admin rotate-signing-key` appends a key that starts signing a
little later (so every replica has reloaded the file and publishes it first), and drops keys that stopped
signing longer ago than any token lives. Replicas notice a changed file within seconds and reload it.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from kagi.errors import InvalidArgument, KagiError
from kagi.files import write_file
from kagi.runtime.settings import Secret
from services.enrollment_service.domain.sessions import (
    AUDIENCE,
    CONFIRMATION_TOKEN_SECONDS,
    MAX_ACCESS_TOKEN_SECONDS,
    MSG_TOKEN_INVALID,
    AccessTokenInvalid,
    b64url,
)

ALGORITHM = "ES256"
ACTIVATION_DELAY_SECONDS = 60
"""A new key is published this long before it signs (replicas reload within 5 s)."""
RETIRE_AFTER_SECONDS = max(MAX_ACCESS_TOKEN_SECONDS, CONFIRMATION_TOKEN_SECONDS) + 60
"""A key that stopped signing is kept this long, past the life of its last token."""
RELOAD_CHECK_SECONDS = 5.0

_BLOCK = re.compile(
    rb"Not-Before:[ \t]*(?P<at>\S+)[ \t]*\r?\n"
    rb"(?P<pem>-----BEGIN ENCRYPTED PRIVATE KEY-----\r?\n.*?-----END ENCRYPTED PRIVATE KEY-----)",
    re.S,
)


class SigningKeyUnreadable(KagiError):
    """The key ring file is missing, malformed, unencrypted or the passphrase is wrong."""

    reason = "SIGNING_KEY_UNREADABLE"


@dataclass(frozen=True)
class SigningKey:
    """One EC P-256 key of the ring, its kid and when it starts signing."""

    kid: str
    private_key: ec.EllipticCurvePrivateKey = field(repr=False)
    not_before: float

    def public_jwk(self) -> dict[str, str]:
        """Return the public key as a JWK (RFC 7517) with kid, use and alg."""
        return {**_thumbprint_members(self.private_key.public_key()), "kid": self.kid, "use": "sig", "alg": ALGORITHM}


def _thumbprint_members(public_key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    numbers = public_key.public_numbers()
    return {
        "crv": "P-256",
        "kty": "EC",
        "x": b64url(numbers.x.to_bytes(32, "big")),
        "y": b64url(numbers.y.to_bytes(32, "big")),
    }


def key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """Return the RFC 7638 JWK thumbprint (SHA-256, base64url) of a P-256 public key."""
    canonical = json.dumps(_thumbprint_members(public_key), separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode()).digest())


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(int(moment), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_iso(text: bytes) -> float:
    try:
        return datetime.strptime(text.decode(), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise SigningKeyUnreadable("a Not-Before line of the signing key file is not YYYY-MM-DDTHH:MM:SSZ") from None


def read_key_ring(path: Path, passphrase: bytes) -> list[SigningKey]:
    """Read and decrypt every key of the ring file, oldest first."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningKeyUnreadable(f"cannot read the signing key file {path}: {exc.strerror}") from None
    keys = []
    for match in _BLOCK.finditer(data):
        try:
            key = serialization.load_pem_private_key(match["pem"], password=passphrase)
        except (ValueError, TypeError):
            raise SigningKeyUnreadable(
                "the signing key file cannot be decrypted with this passphrase, or is not encrypted PKCS#8"
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
            raise SigningKeyUnreadable("token signing keys must be EC P-256 (ES256)")
        keys.append(SigningKey(key_id(key.public_key()), key, _parse_iso(match["at"])))
    if not keys:
        raise SigningKeyUnreadable(f"the signing key file {path} holds no key")
    return sorted(keys, key=lambda k: k.not_before)


def rotate_key_ring(
    path: Path,
    passphrase: bytes,
    *,
    now: float,
    activate_after: float = ACTIVATION_DELAY_SECONDS,
    retire_after: float = RETIRE_AFTER_SECONDS,
) -> tuple[SigningKey, list[str]]:
    """Add a new key to the ring file (creating it), drop retired keys; return the new key and dropped kids.

    The first key of a new file signs at once; later ones after `activate_after` seconds.
    """
    if not passphrase:
        raise InvalidArgument("the passphrase must not be empty", fields={"passphrase": "must not be empty"})
    existing = read_key_ring(path, passphrase) if path.exists() else []
    # A key stops signing when its successor starts; keep it until its last token has expired.
    kept, dropped = [], []
    for index, key in enumerate(existing):
        successor_start = existing[index + 1].not_before if index + 1 < len(existing) else None
        if successor_start is not None and successor_start + retire_after < now:
            dropped.append(key.kid)
        else:
            kept.append(key)
    private_key = ec.generate_private_key(ec.SECP256R1())
    new = SigningKey(key_id(private_key.public_key()), private_key, now + (activate_after if existing else 0))
    kept.append(new)
    encryption = serialization.BestAvailableEncryption(passphrase)
    text = b"".join(
        b"Not-Before: "
        + _iso(key.not_before).encode()
        + b"\n"
        + key.private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
        for key in kept
    )
    write_file(path, text, 0o600)
    return new, dropped


DEV_KEY_FILE = "signing-keys.pem"
DEV_PASSPHRASE_FILE = "signing-key-passphrase"


def ensure_dev_signing_key(state_dir: Path) -> tuple[Path, Secret]:
    """Make (first start) or reuse a development key ring and passphrase under <state>/secrets, both 0600."""
    directory = state_dir / "secrets"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    passphrase_file, key_file = directory / DEV_PASSPHRASE_FILE, directory / DEV_KEY_FILE
    if not passphrase_file.exists():
        write_file(passphrase_file, secrets.token_urlsafe(32).encode(), 0o600)
    passphrase = Secret(passphrase_file.read_bytes().strip())
    if not key_file.exists():
        rotate_key_ring(key_file, passphrase.reveal(), now=time.time())
    return key_file, passphrase


class JwsSigner:
    """Signs and verifies kagi's JWTs with the key ring, reloading the file when it changes.

    Expiry is checked against the service's clock (not the library's), so tests can move time.
    """

    def __init__(
        self,
        path: Path,
        passphrase: bytes,
        *,
        issuer: str,
        now: Callable[[], float],
        check_every: float = RELOAD_CHECK_SECONDS,
    ) -> None:
        self._path = path
        self._passphrase = passphrase
        self.issuer = issuer
        self._now = now
        self._check_every = check_every
        self._keys = read_key_ring(path, passphrase)
        self._by_kid = {k.kid: k for k in self._keys}
        self._stamp = self._file_stamp()
        self._checked_at = time.monotonic()
        self._jwks_json = self._render_jwks()

    def _file_stamp(self) -> tuple[int, int]:
        stat = self._path.stat()
        return (stat.st_mtime_ns, stat.st_ino)

    def _maybe_reload(self, *, force: bool = False) -> None:
        moment = time.monotonic()
        if not force and moment - self._checked_at < self._check_every:
            return
        if force and moment - self._checked_at < 1.0:
            return
        self._checked_at = moment
        try:
            stamp = self._file_stamp()
            if stamp == self._stamp:
                return
            keys = read_key_ring(self._path, self._passphrase)
        except (OSError, SigningKeyUnreadable):
            return  # a half-written or vanished file: keep the keys that work until it is whole again
        self._keys, self._by_kid, self._stamp = keys, {k.kid: k for k in keys}, stamp
        self._jwks_json = self._render_jwks()

    def _render_jwks(self) -> str:
        return json.dumps({"keys": [k.public_jwk() for k in reversed(self._keys)]}, separators=(",", ":"))

    def jwks_json(self) -> str:
        """Return the JWK Set of every key that may have signed a live token."""
        self._maybe_reload()
        return self._jwks_json

    def _current(self) -> SigningKey:
        now = self._now()
        active = [k for k in self._keys if k.not_before <= now]
        return active[-1] if active else self._keys[0]

    def sign(self, claims: dict[str, Any]) -> str:
        """Return the compact JWS of `claims`, signed ES256 by the current key, typed JWT."""
        self._maybe_reload()
        key = self._current()
        return jwt.encode(claims, key.private_key, algorithm=ALGORITHM, headers={"kid": key.kid, "typ": "JWT"})

    def verify(self, token: str) -> dict[str, Any]:
        """Return the claims of a token this service signed that is still valid, or raise AccessTokenInvalid."""
        self._maybe_reload()
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AccessTokenInvalid(MSG_TOKEN_INVALID) from None
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise AccessTokenInvalid(MSG_TOKEN_INVALID)
        key = self._by_kid.get(kid)
        if key is None:
            self._maybe_reload(force=True)
            key = self._by_kid.get(kid)
        if key is None:
            raise AccessTokenInvalid(MSG_TOKEN_INVALID)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.private_key.public_key(),
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=self.issuer,
                options={"verify_exp": False, "verify_iat": False, "verify_nbf": False, "require": ["exp", "sub"]},
            )
        except jwt.PyJWTError:
            raise AccessTokenInvalid(MSG_TOKEN_INVALID) from None
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or exp <= self._now():
            raise AccessTokenInvalid(MSG_TOKEN_INVALID)
        return claims

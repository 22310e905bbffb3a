"""Token seeds: generation from a CSPRNG, and the vault that seals them with AES-256-GCM for the store.

A sealed seed is the text `v1:<key id>:<base64url(nonce || ciphertext || tag)>`. The key-encryption keys (KEKs)
live in the service's settings, never in the store; the vault holds the current KEK, which seals, and older
ones, which only open, so keys rotate by re-sealing (`reseal`) while both are configured. The associated data
binds the format, the key id and the token id, so a sealed seed copied onto another token does not open.
Nonces are 96 random bits per seal: safe far beyond the 2**32 seals per key that NIST SP 800-38D allows.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.otp_service.domain.errors import SeedVaultError
from services.otp_service.domain.ids import SYSTEM_RANDOM, RandomBytes
from services.otp_service.domain.totp import Algorithm

KEK_BYTES = 32
"""The size of a key-encryption key (AES-256)."""
NONCE_BYTES = 12
"""The AES-GCM nonce size (96 bits, the size GCM is defined for)."""
SEALED_FORMAT = "v1"
"""The version tag at the start of a sealed seed's text."""
_KEY_ID_RE = re.compile(r"[A-Za-z0-9_\-]{1,64}")
_AAD_LABEL = b"kagi.otp.seed.v1"


@dataclass(frozen=True, slots=True)
class Seed:
    """A token's shared secret; it prints as its length only."""

    value: bytes = field(repr=False)

    def __repr__(self) -> str:
        return f"Seed(<{len(self.value)} bytes redacted>)"

    def base32(self) -> str:
        """Return the seed in RFC 4648 base32 without padding, as authenticator apps and oathtool take it."""
        return base64.b32encode(self.value).decode("ascii").rstrip("=")


def generate_seed(algorithm: Algorithm, random: RandomBytes = SYSTEM_RANDOM) -> Seed:
    """Draw a fresh seed as long as the hash output (160/256/512 bits) from a CSPRNG."""
    value = random(algorithm.seed_bytes)
    if len(value) != algorithm.seed_bytes:
        raise ValueError("the random source returned the wrong number of bytes")
    return Seed(value)


@dataclass(frozen=True, slots=True)
class KeyEncryptionKey:
    """One named 256-bit AES key that seals seeds; the key itself never prints."""

    key_id: str
    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not _KEY_ID_RE.fullmatch(self.key_id):
            raise ValueError("key_id must be 1-64 characters of A-Z a-z 0-9 _ -")
        if len(self.key) != KEK_BYTES:
            raise ValueError(f"a key-encryption key must be {KEK_BYTES} bytes")

    @classmethod
    def from_base64(cls, key_id: str, encoded: str) -> KeyEncryptionKey:
        """Build a KEK from standard or URL-safe base64 text (as kept in settings)."""
        try:
            text = encoded.strip().replace("+", "-").replace("/", "_")
            key = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("key-encryption key is not valid base64") from exc
        return cls(key_id, key)


@dataclass(frozen=True, slots=True)
class SealedSeed:
    """An encrypted seed as kept in the store, with the id of the key that sealed it."""

    key_id: str
    blob: bytes = field(repr=False)

    def to_text(self) -> str:
        """Return the storable form `v1:<key id>:<base64url(nonce||ciphertext||tag)>`."""
        encoded = base64.urlsafe_b64encode(self.blob).decode("ascii").rstrip("=")
        return f"{SEALED_FORMAT}:{self.key_id}:{encoded}"

    @classmethod
    def from_text(cls, text: str) -> SealedSeed:
        """Parse `to_text` output; raise SeedVaultError when it is malformed."""
        parts = text.split(":")
        if len(parts) != 3 or parts[0] != SEALED_FORMAT or not _KEY_ID_RE.fullmatch(parts[1]):
            raise SeedVaultError("sealed seed is malformed", reason="SEED_MALFORMED")
        try:
            blob = base64.b64decode(parts[2] + "=" * (-len(parts[2]) % 4), altchars=b"-_", validate=True)
        except (binascii.Error, ValueError) as exc:
            raise SeedVaultError("sealed seed is malformed", reason="SEED_MALFORMED") from exc
        return cls(parts[1], blob)


def _aad(key_id: str, token_id: str) -> bytes:
    return b"\x00".join((_AAD_LABEL, key_id.encode("ascii"), token_id.encode("utf-8")))


class SeedVault:
    """Seals seeds under the current KEK and opens them under any configured KEK."""

    def __init__(
        self,
        current: KeyEncryptionKey,
        older: Iterable[KeyEncryptionKey] = (),
        *,
        random: RandomBytes = SYSTEM_RANDOM,
    ) -> None:
        keys = [current, *older]
        self._ciphers = {k.key_id: AESGCM(k.key) for k in keys}
        if len(self._ciphers) != len(keys):
            raise ValueError("key-encryption key ids must be unique")
        self._current_id = current.key_id
        self._random = random

    def __repr__(self) -> str:
        return f"SeedVault(current={self._current_id!r}, key_ids={sorted(self._ciphers)!r})"

    @property
    def current_key_id(self) -> str:
        """Name the KEK that new seals use."""
        return self._current_id

    def seal(self, token_id: str, seed: Seed) -> SealedSeed:
        """Encrypt `seed` for token `token_id` under the current KEK."""
        nonce = self._random(NONCE_BYTES)
        if len(nonce) != NONCE_BYTES:
            raise ValueError("the random source returned the wrong number of bytes")
        ciphertext = self._ciphers[self._current_id].encrypt(nonce, seed.value, _aad(self._current_id, token_id))
        return SealedSeed(self._current_id, nonce + ciphertext)

    def open(self, token_id: str, sealed: SealedSeed) -> Seed:
        """Decrypt a seed sealed for `token_id`; raise SeedVaultError if the key is unknown or it fails."""
        cipher = self._ciphers.get(sealed.key_id)
        if cipher is None:
            raise SeedVaultError(
                "sealed seed names an unknown key-encryption key",
                reason="SEED_KEY_UNKNOWN",
                metadata={"key_id": sealed.key_id},
            )
        nonce, ciphertext = sealed.blob[:NONCE_BYTES], sealed.blob[NONCE_BYTES:]
        try:
            value = cipher.decrypt(nonce, ciphertext, _aad(sealed.key_id, token_id))
        except (InvalidTag, ValueError) as exc:
            # One answer for tampering and for a seed moved to another token: both are "not this token's seed".
            raise SeedVaultError("sealed seed does not open for this token") from exc
        return Seed(value)

    def needs_reseal(self, sealed: SealedSeed) -> bool:
        """Say whether `sealed` was sealed under a KEK other than the current one."""
        return sealed.key_id != self._current_id

    def reseal(self, token_id: str, sealed: SealedSeed) -> SealedSeed:
        """Open `sealed` and seal it again under the current KEK (key rotation)."""
        return self.seal(token_id, self.open(token_id, sealed))

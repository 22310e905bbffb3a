"""Seed generation and sealing: AES-GCM round trip, refusal of wrong keys, tampering and moved seeds, rotation."""

from __future__ import annotations

import base64
import dataclasses

import pytest

from kagi.errors import ErrorKind
from services.otp_service.domain import (
    Algorithm,
    KeyEncryptionKey,
    SealedSeed,
    Seed,
    SeedVault,
    SeedVaultError,
    generate_seed,
)

TOKEN = "0f" * 16
OTHER_TOKEN = "a1" * 16
SEED = Seed(bytes(range(20)))


def test_generated_seeds_have_the_hash_size_and_differ() -> None:
    """Seeds are 20/32/64 bytes for SHA1/SHA256/SHA512 and two draws differ."""
    for algorithm, size in ((Algorithm.SHA1, 20), (Algorithm.SHA256, 32), (Algorithm.SHA512, 64)):
        a, b = generate_seed(algorithm), generate_seed(algorithm)
        assert len(a.value) == len(b.value) == size
        assert a != b


def test_seed_and_keys_never_print(kek: KeyEncryptionKey) -> None:
    """Seed, KEK and vault reprs hold neither the seed nor the key material."""
    vault = SeedVault(kek)
    for text in (repr(SEED), repr(kek), repr(vault)):
        assert SEED.value.hex() not in text
        assert SEED.base32() not in text
        assert kek.key.hex() not in text
        assert repr(kek.key) not in text


def test_seal_open_round_trip(vault: SeedVault, kek: KeyEncryptionKey) -> None:
    """A sealed seed opens to the same bytes for the same token, carries the key id, and hides the seed."""
    sealed = vault.seal(TOKEN, SEED)
    assert sealed.key_id == kek.key_id
    assert SEED.value not in sealed.blob
    assert vault.open(TOKEN, sealed) == SEED
    assert vault.open(TOKEN, SealedSeed.from_text(sealed.to_text())) == SEED


def test_every_seal_uses_a_fresh_nonce(vault: SeedVault) -> None:
    """Sealing the same seed twice gives different blobs (random 96-bit nonces)."""
    assert vault.seal(TOKEN, SEED).blob != vault.seal(TOKEN, SEED).blob


def test_unknown_key_id_is_refused(vault: SeedVault) -> None:
    """A blob naming a key the vault does not hold fails with SEED_KEY_UNKNOWN, an INTERNAL error."""
    sealed = dataclasses.replace(vault.seal(TOKEN, SEED), key_id="kek-1999")
    with pytest.raises(SeedVaultError) as caught:
        vault.open(TOKEN, sealed)
    assert caught.value.reason == "SEED_KEY_UNKNOWN"
    assert caught.value.kind is ErrorKind.INTERNAL


def test_wrong_key_under_a_known_id_is_refused(vault: SeedVault, kek: KeyEncryptionKey) -> None:
    """A vault whose key under the same id differs cannot open the seed."""
    impostor = SeedVault(KeyEncryptionKey(kek.key_id, b"\xff" * 32))
    with pytest.raises(SeedVaultError):
        impostor.open(TOKEN, vault.seal(TOKEN, SEED))


@pytest.mark.parametrize("position", [0, 12, -1])
def test_tampered_blob_is_refused(vault: SeedVault, position: int) -> None:
    """Flipping one bit of the nonce, the ciphertext or the tag makes opening fail."""
    sealed = vault.seal(TOKEN, SEED)
    blob = bytearray(sealed.blob)
    blob[position] ^= 0x01
    with pytest.raises(SeedVaultError):
        vault.open(TOKEN, SealedSeed(sealed.key_id, bytes(blob)))


def test_truncated_blob_is_refused(vault: SeedVault) -> None:
    """A blob too short to hold nonce and tag is refused like any tampering."""
    with pytest.raises(SeedVaultError):
        vault.open(TOKEN, SealedSeed(vault.current_key_id, b"short"))


def test_seed_moved_to_another_token_is_refused(vault: SeedVault) -> None:
    """The token id is associated data: a seed copied onto another token's record does not open there."""
    sealed = vault.seal(TOKEN, SEED)
    with pytest.raises(SeedVaultError):
        vault.open(OTHER_TOKEN, sealed)


def test_relabelled_key_id_is_refused(kek: KeyEncryptionKey) -> None:
    """The key id is associated data too: a blob relabelled with another configured key id does not open."""
    twin = KeyEncryptionKey("kek-twin", kek.key)
    vault = SeedVault(kek, [twin])
    sealed = vault.seal(TOKEN, SEED)
    with pytest.raises(SeedVaultError):
        vault.open(TOKEN, SealedSeed("kek-twin", sealed.blob))


def test_rotation_reseals_under_the_new_key(kek: KeyEncryptionKey) -> None:
    """After rotation old blobs still open, reseal moves them to the new key, and the old key can then go."""
    old_vault = SeedVault(kek)
    old_sealed = old_vault.seal(TOKEN, SEED)
    new_kek = KeyEncryptionKey("kek-2028", b"\x42" * 32)
    rotating = SeedVault(new_kek, [kek])
    assert rotating.open(TOKEN, old_sealed) == SEED
    assert rotating.needs_reseal(old_sealed)
    resealed = rotating.reseal(TOKEN, old_sealed)
    assert resealed.key_id == "kek-2028"
    assert not rotating.needs_reseal(resealed)
    after = SeedVault(new_kek)
    assert after.open(TOKEN, resealed) == SEED
    with pytest.raises(SeedVaultError):
        after.open(TOKEN, old_sealed)


@pytest.mark.parametrize("text", ["", "v1:k", "v2:k:AAAA", "v1:bad id:AAAA", "v1:k:!!!!", "v1:k:AAAA:extra"])
def test_malformed_sealed_text_is_refused(text: str) -> None:
    """Stored text that is not `v1:<key id>:<base64url>` raises SeedVaultError (SEED_MALFORMED)."""
    with pytest.raises(SeedVaultError) as caught:
        SealedSeed.from_text(text)
    assert caught.value.reason == "SEED_MALFORMED"


def test_kek_validation() -> None:
    """KEKs must be 32 bytes with a simple id; duplicate ids in one vault are refused; base64 settings parse."""
    with pytest.raises(ValueError, match="32 bytes"):
        KeyEncryptionKey("k", b"short")
    with pytest.raises(ValueError, match="key_id"):
        KeyEncryptionKey("k:1", b"\x00" * 32)
    with pytest.raises(ValueError, match="unique"):
        SeedVault(KeyEncryptionKey("k", b"\x00" * 32), [KeyEncryptionKey("k", b"\x01" * 32)])
    key = bytes(range(32))
    assert KeyEncryptionKey.from_base64("k", base64.b64encode(key).decode()).key == key
    assert KeyEncryptionKey.from_base64("k", base64.urlsafe_b64encode(key).decode()).key == key

"""Signers: keys only at rest as encrypted PKCS#8, never shown, and the Signer port bridged to cryptography."""

from __future__ import annotations

import copy
import os
import pickle
import stat

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from kagi.errors import AlreadyExists
from services.ca_service.adapters.file_signer import FileSigner, PrivateKeySigner, load_encrypted_pkcs8
from services.ca_service.domain.errors import CaKeyUnreadable
from services.ca_service.domain.keys import KeyAlgorithm
from services.ca_service.domain.signer import SignatureAlgorithm, signing_key

PASSPHRASE = b"correct horse battery staple"


class _Secret:
    """A stand-in for kagi's Secret: hands out bytes only through reveal()."""

    def __init__(self, value: bytes) -> None:
        self._value = value

    def reveal(self) -> bytes:
        return self._value


def test_created_key_file_is_encrypted_pkcs8_with_mode_0600(tmp_path):
    """create writes ENCRYPTED PRIVATE KEY PEM, readable by the owner only, and no clear key anywhere."""
    path = tmp_path / "ca" / "customer.key"
    signer = FileSigner.create(path, PASSPHRASE, KeyAlgorithm.EC_P256)
    data = path.read_bytes()
    assert data.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert b"BEGIN PRIVATE KEY" not in data
    assert b"BEGIN EC PRIVATE KEY" not in data
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["customer.key"]
    assert signer.algorithm is SignatureAlgorithm.ECDSA_SHA256


def test_key_file_opens_with_its_passphrase_and_signs_as_the_same_key(tmp_path):
    """A reopened key signs data that verifies under the public key created with it."""
    path = tmp_path / "root.key"
    created = FileSigner.create(path, _Secret(PASSPHRASE), KeyAlgorithm.EC_P384)
    opened = FileSigner.open(path, PASSPHRASE)
    signature = opened.sign(b"to be signed")
    public_key = created.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    public_key.verify(signature, b"to be signed", ec.ECDSA(hashes.SHA384()))
    assert opened.algorithm is SignatureAlgorithm.ECDSA_SHA384


def test_wrong_passphrase_is_refused_without_detail(tmp_path):
    """A wrong passphrase gives CA_KEY_UNREADABLE, and the message holds neither passphrase."""
    path = tmp_path / "k.key"
    FileSigner.create(path, PASSPHRASE)
    with pytest.raises(CaKeyUnreadable) as error:
        FileSigner.open(path, b"guess")
    assert error.value.reason == "CA_KEY_UNREADABLE"
    assert "guess" not in str(error.value)
    assert "horse" not in str(error.value)
    assert error.value.__cause__ is None


def test_unencrypted_key_is_refused():
    """A clear PKCS#8 key is not accepted as a CA key, even with a passphrase given."""
    clear = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(CaKeyUnreadable):
        load_encrypted_pkcs8(clear, PASSPHRASE)


def test_empty_passphrase_is_refused():
    """Encrypting under an empty passphrase is refused."""
    with pytest.raises(CaKeyUnreadable):
        PrivateKeySigner.generate().encrypted_pkcs8(b"")


def test_an_existing_key_file_is_never_overwritten(tmp_path):
    """Creating a key where one exists fails with CA_KEY_EXISTS and leaves the old key intact."""
    path = tmp_path / "k.key"
    FileSigner.create(path, PASSPHRASE)
    before = path.read_bytes()
    with pytest.raises(AlreadyExists) as error:
        FileSigner.create(path, PASSPHRASE)
    assert error.value.reason == "CA_KEY_EXISTS"
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["k.key"]


def test_missing_key_file_is_unreadable(tmp_path):
    """Opening a missing file gives CA_KEY_UNREADABLE."""
    with pytest.raises(CaKeyUnreadable):
        FileSigner.open(tmp_path / "nope.key", PASSPHRASE)


def test_signers_never_show_or_export_their_key(tmp_path):
    """repr shows only the algorithm (and path); pickling and private-key export through the bridge fail."""
    signer = FileSigner.create(tmp_path / "k.key", PASSPHRASE)
    assert repr(signer) == f"FileSigner(ecdsa-with-SHA256, {str(tmp_path / 'k.key')!r})"
    assert repr(PrivateKeySigner.generate(KeyAlgorithm.RSA_2048)) == "PrivateKeySigner(sha256WithRSAEncryption)"
    with pytest.raises(TypeError):
        pickle.dumps(signer)
    bridge = signing_key(signer)
    with pytest.raises(TypeError):
        bridge.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    with pytest.raises(TypeError):
        bridge.private_numbers()
    assert copy.deepcopy(bridge) is bridge


def test_bridge_refuses_a_digest_the_signer_does_not_make():
    """Asked to sign with SHA-384, a SHA-256 signer refuses rather than mislabel its signature."""
    bridge = signing_key(PrivateKeySigner.generate(KeyAlgorithm.EC_P256))
    assert isinstance(bridge, ec.EllipticCurvePrivateKey)
    with pytest.raises(ValueError, match="cannot sign"):
        bridge.sign(b"data", ec.ECDSA(hashes.SHA384()))


def test_rsa_signer_signs_pkcs1_v15_sha256():
    """An RSA signer's signature verifies as PKCS#1 v1.5 with SHA-256."""
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    signer = PrivateKeySigner.generate(KeyAlgorithm.RSA_3072)
    public_key = signer.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    public_key.verify(signer.sign(b"x"), b"x", padding.PKCS1v15(), hashes.SHA256())
    assert public_key.key_size == 3072

"""CSR intake: size cap, PEM/DER parsing, proof of possession and the key policy, each failure named."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa

from kagi.errors import InvalidArgument
from services.ca_service.domain.csr import MAX_CSR_BYTES, parse_csr
from services.ca_service.domain.errors import (
    BadPemType,
    CsrMalformed,
    CsrSignatureInvalid,
    CsrTooLarge,
    KeyTooWeak,
    UnsupportedCurve,
    UnsupportedKeyType,
)
from services.ca_service.domain.hierarchy import Hierarchy
from services.ca_service.domain.keys import KeyAlgorithm, generate_private_key, parse_key_algorithm


def _assert_names_csr(error: pytest.ExceptionInfo[InvalidArgument], reason: str) -> None:
    assert isinstance(error.value, InvalidArgument)
    assert error.value.reason == reason
    assert "csr" in error.value.fields


@pytest.mark.parametrize(
    ("key_factory", "description"),
    [
        (lambda: ec.generate_private_key(ec.SECP256R1()), "EC P-256"),
        (lambda: ec.generate_private_key(ec.SECP384R1()), "EC P-384"),
        (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), "RSA 2048"),
    ],
)
def test_allowed_keys_in_pem_and_der_are_accepted(make_csr, key_factory, description):
    """P-256, P-384 and RSA-2048 CSRs pass, whether PEM bytes, PEM text or DER."""
    key = key_factory()
    pem = make_csr(key)
    for form in (pem, pem.decode(), make_csr(key, pem=False)):
        validated = parse_csr(form)
        assert validated.key_description == description
        assert validated.public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) == key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_garbage_bytes_are_malformed():
    """Random bytes are refused as CSR_MALFORMED naming the field csr."""
    with pytest.raises(CsrMalformed) as error:
        parse_csr(b"\x30\x82\x01\x00 this is not a certificate request")
    _assert_names_csr(error, "CSR_MALFORMED")


def test_empty_csr_is_malformed():
    """An empty CSR is refused, naming the field csr."""
    with pytest.raises(CsrMalformed) as error:
        parse_csr(b"  \n")
    _assert_names_csr(error, "CSR_MALFORMED")


def test_a_certificate_pem_is_the_wrong_pem_type(hierarchy: Hierarchy):
    """A CERTIFICATE PEM where a CSR belongs gives BAD_PEM_TYPE and says what it got."""
    with pytest.raises(BadPemType) as error:
        parse_csr(hierarchy.root.pem)
    _assert_names_csr(error, "BAD_PEM_TYPE")
    assert "CERTIFICATE" in error.value.fields["csr"]


def test_a_private_key_pem_is_the_wrong_pem_type():
    """A PRIVATE KEY PEM is refused as BAD_PEM_TYPE (and never parsed as a key)."""
    key_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(BadPemType) as error:
        parse_csr(key_pem)
    _assert_names_csr(error, "BAD_PEM_TYPE")


def test_two_pem_blocks_are_refused(make_csr):
    """A CSR PEM followed by another block is refused: exactly one block is accepted."""
    with pytest.raises(CsrMalformed) as error:
        parse_csr(make_csr() + make_csr())
    _assert_names_csr(error, "CSR_MALFORMED")


def test_tampered_signature_fails_proof_of_possession(make_csr):
    """Flipping one byte of a valid CSR's signature gives CSR_SIGNATURE_INVALID."""
    der = bytearray(make_csr(pem=False))
    der[-5] ^= 0x01  # inside the signature BIT STRING, the last element of the CSR
    with pytest.raises(CsrSignatureInvalid) as error:
        parse_csr(bytes(der))
    _assert_names_csr(error, "CSR_SIGNATURE_INVALID")


def test_csr_signed_by_another_key_fails_proof_of_possession(make_csr):
    """A CSR whose public key was swapped for another one does not verify."""
    original = x509.load_der_x509_csr(make_csr(pem=False))
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    original_spki = original.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    other_spki = other.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    swapped = original.public_bytes(serialization.Encoding.DER).replace(original_spki, other_spki)
    with pytest.raises(CsrSignatureInvalid):
        parse_csr(swapped)


def _der(tag: int, content: bytes) -> bytes:
    size = len(content)
    if size < 0x80:
        return bytes([tag, size]) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + content


def test_sha1_signed_csr_is_refused(make_csr):
    """A CSR with a valid SHA-1 signature is refused, naming the accepted digests.

    `cryptography` will not sign a CSR with SHA-1, so the test signs the request info itself and assembles
    the DER: SEQUENCE { certificationRequestInfo, ecdsa-with-SHA1, BIT STRING signature }.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    info = x509.load_der_x509_csr(make_csr(key, pem=False)).tbs_certrequest_bytes
    signature = key.sign(info, ec.ECDSA(hashes.SHA1()))  # noqa: S303 - the point of the test
    ecdsa_with_sha1 = _der(0x30, _der(0x06, bytes.fromhex("2a8648ce3d0401")))
    sha1_csr = _der(0x30, info + ecdsa_with_sha1 + _der(0x03, b"\x00" + signature))
    with pytest.raises(CsrSignatureInvalid) as error:
        parse_csr(sha1_csr)
    assert "SHA-256" in error.value.fields["csr"]


def test_sha512_signed_csr_is_accepted(make_csr):
    """SHA-512 is among the accepted CSR digests."""
    assert parse_csr(make_csr(algorithm=hashes.SHA512())).key_description == "EC P-256"


def test_rsa_1024_is_too_weak(make_csr):
    """An RSA-1024 key gives KEY_TOO_WEAK with the 2048-bit rule in the message."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - the weak key under test
    with pytest.raises(KeyTooWeak) as error:
        parse_csr(make_csr(key))
    _assert_names_csr(error, "KEY_TOO_WEAK")
    assert "at least 2048 bits" in error.value.fields["csr"]


def test_rsa_exponent_other_than_65537_is_too_weak(make_csr):
    """An RSA key with public exponent 3 gives KEY_TOO_WEAK naming the exponent rule."""
    key = rsa.generate_private_key(public_exponent=3, key_size=2048)
    with pytest.raises(KeyTooWeak) as error:
        parse_csr(make_csr(key))
    assert "65537" in error.value.fields["csr"]


@pytest.mark.parametrize("curve", [ec.SECP521R1(), ec.SECP256K1()], ids=["P-521", "secp256k1"])
def test_unsupported_curves_are_refused(make_csr, curve):
    """EC keys off P-256/P-384 give UNSUPPORTED_CURVE naming the allowed curves."""
    with pytest.raises(UnsupportedCurve) as error:
        parse_csr(make_csr(ec.generate_private_key(curve)))
    _assert_names_csr(error, "UNSUPPORTED_CURVE")
    assert "P-256 or P-384" in error.value.fields["csr"]


def test_ed25519_is_refused(make_csr):
    """An Ed25519 CSR gives UNSUPPORTED_KEY_TYPE naming Ed25519."""
    with pytest.raises(UnsupportedKeyType) as error:
        parse_csr(make_csr(ed25519.Ed25519PrivateKey.generate(), algorithm=None))
    _assert_names_csr(error, "UNSUPPORTED_KEY_TYPE")
    assert "Ed25519" in error.value.fields["csr"]


def test_dsa_is_refused(make_csr):
    """A DSA CSR gives UNSUPPORTED_KEY_TYPE naming DSA."""
    with pytest.raises(UnsupportedKeyType) as error:
        parse_csr(make_csr(dsa.generate_private_key(key_size=2048)))
    assert "DSA" in error.value.fields["csr"]


def test_one_megabyte_csr_is_too_large_before_parsing(make_csr):
    """A 1 MB input gives CSR_TOO_LARGE naming the 16 KiB cap, whatever its content."""
    huge = make_csr() + b"\n" * (1024 * 1024)
    with pytest.raises(CsrTooLarge) as error:
        parse_csr(huge)
    _assert_names_csr(error, "CSR_TOO_LARGE")
    assert str(MAX_CSR_BYTES) in error.value.fields["csr"]


@pytest.mark.parametrize("algorithm", list(KeyAlgorithm))
def test_ca_key_algorithms_generate_the_named_key(algorithm):
    """Every selectable CA key algorithm generates a key of that type and size."""
    key = generate_private_key(algorithm)
    expected = {
        KeyAlgorithm.EC_P256: ("secp256r1", 256),
        KeyAlgorithm.EC_P384: ("secp384r1", 384),
        KeyAlgorithm.RSA_2048: ("rsa", 2048),
        KeyAlgorithm.RSA_3072: ("rsa", 3072),
    }[algorithm]
    name = key.curve.name if isinstance(key, ec.EllipticCurvePrivateKey) else "rsa"
    assert (name, key.key_size) == expected


def test_key_algorithm_setting_is_parsed_or_refused():
    """parse_key_algorithm reads "RSA-3072" case-insensitively and refuses an unknown name."""
    assert parse_key_algorithm(" RSA-3072 ") is KeyAlgorithm.RSA_3072
    with pytest.raises(InvalidArgument) as error:
        parse_key_algorithm("ed25519")
    assert "key_algorithm" in error.value.fields

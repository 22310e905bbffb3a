"""The CA domain's errors: each is a kagi error kind with a stable `reason` a client can act on."""

from __future__ import annotations

from kagi.errors import FailedPrecondition, InvalidArgument


class CsrMalformed(InvalidArgument):
    """CsrMalformed: the CSR bytes are not a parseable PKCS#10 request."""

    reason = "CSR_MALFORMED"


class BadPemType(InvalidArgument):
    """BadPemType: the PEM block is something else (a certificate, a key) than a certificate request."""

    reason = "BAD_PEM_TYPE"


class CsrTooLarge(InvalidArgument):
    """CsrTooLarge: the CSR is over the size cap, so it is refused before any parsing."""

    reason = "CSR_TOO_LARGE"


class CsrSignatureInvalid(InvalidArgument):
    """CsrSignatureInvalid: the CSR's self-signature does not verify, so possession of the key is unproven."""

    reason = "CSR_SIGNATURE_INVALID"


class KeyTooWeak(InvalidArgument):
    """KeyTooWeak: an RSA key below the minimum size or with a public exponent other than 65537."""

    reason = "KEY_TOO_WEAK"


class UnsupportedKeyType(InvalidArgument):
    """UnsupportedKeyType: a key algorithm outside the policy (Ed25519, DSA, ...)."""

    reason = "UNSUPPORTED_KEY_TYPE"


class UnsupportedCurve(InvalidArgument):
    """UnsupportedCurve: an elliptic-curve key on a curve other than P-256 or P-384."""

    reason = "UNSUPPORTED_CURVE"


class InvalidIdentity(InvalidArgument):
    """InvalidIdentity: the identity a certificate is for has an empty or ill-formed field."""

    reason = "INVALID_IDENTITY"


class UnknownProfile(InvalidArgument):
    """UnknownProfile: no certificate profile has that name."""

    reason = "UNKNOWN_PROFILE"


class InvalidRevocationReason(InvalidArgument):
    """InvalidRevocationReason: not an RFC 5280 reason code that a revocation may carry."""

    reason = "INVALID_REVOCATION_REASON"


class InvalidSerial(InvalidArgument):
    """InvalidSerial: the text is not a serial number, or the number is out of the RFC 5280 range."""

    reason = "INVALID_SERIAL"


class InvalidCrlNumber(InvalidArgument):
    """InvalidCrlNumber: a CRL number must be a non-negative integer of at most 20 octets."""

    reason = "INVALID_CRL_NUMBER"


class MalformedOcspRequest(InvalidArgument):
    """MalformedOcspRequest: the OCSP request is too large or not a DER OCSPRequest with one certificate."""

    reason = "OCSP_REQUEST_MALFORMED"


class InvalidPkiSettings(InvalidArgument):
    """InvalidPkiSettings: a PKI setting (URL, duration, name) breaks its rule."""

    reason = "INVALID_PKI_SETTINGS"


class IssuerCannotIssue(FailedPrecondition):
    """IssuerCannotIssue: the issuing CA is of the wrong kind for the profile, or outside its own validity."""

    reason = "ISSUER_CANNOT_ISSUE"


class SignerKeyMismatch(FailedPrecondition):
    """SignerKeyMismatch: the signer's public key is not the one in the certificate it is paired with."""

    reason = "SIGNER_KEY_MISMATCH"


class AlreadyRevoked(FailedPrecondition):
    """AlreadyRevoked: the certificate is revoked already (only a hold may be turned into a revocation)."""

    reason = "ALREADY_REVOKED"


class CaKeyUnreadable(FailedPrecondition):
    """CaKeyUnreadable: a CA key file is missing, not encrypted PKCS#8, or the passphrase is wrong."""

    reason = "CA_KEY_UNREADABLE"

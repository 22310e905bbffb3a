"""The CA domain's errors: each is a kagi error kind with a stable `reason` a client can act on."""

from __future__ import annotations

from kagi.errors import FailedPrecondition, InvalidArgument


class CsrMalformed(InvalidArgument):
    """The CSR bytes are not a parseable PKCS#10 request."""

    reason = "CSR_MALFORMED"


class BadPemType(InvalidArgument):
    """The PEM block is something else (a certificate, a key) than a certificate request."""

    reason = "BAD_PEM_TYPE"


class CsrTooLarge(InvalidArgument):
    """The CSR is over the size cap, so it is refused before any parsing."""

    reason = "CSR_TOO_LARGE"


class CsrSignatureInvalid(InvalidArgument):
    """The CSR's self-signature does not verify, so possession of the key is unproven."""

    reason = "CSR_SIGNATURE_INVALID"


class KeyTooWeak(InvalidArgument):
    """An RSA key below the minimum size or with a public exponent other than 65537."""

    reason = "KEY_TOO_WEAK"


class UnsupportedKeyType(InvalidArgument):
    """A key algorithm outside the policy (Ed25519, DSA, ...)."""

    reason = "UNSUPPORTED_KEY_TYPE"


class UnsupportedCurve(InvalidArgument):
    """An elliptic-curve key on a curve other than P-256 or P-384."""

    reason = "UNSUPPORTED_CURVE"


class InvalidIdentity(InvalidArgument):
    """The identity a certificate is for has an empty or ill-formed field."""

    reason = "INVALID_IDENTITY"


class UnknownProfile(InvalidArgument):
    """No certificate profile has that name."""

    reason = "UNKNOWN_PROFILE"


class InvalidRevocationReason(InvalidArgument):
    """Not an RFC 5280 reason code that a revocation may carry."""

    reason = "INVALID_REVOCATION_REASON"


class InvalidSerial(InvalidArgument):
    """The text is not a serial number, or the number is out of the RFC 5280 range."""

    reason = "INVALID_SERIAL"


class InvalidCrlNumber(InvalidArgument):
    """A CRL number must be a non-negative integer of at most 20 octets."""

    reason = "INVALID_CRL_NUMBER"


class MalformedOcspRequest(InvalidArgument):
    """The OCSP request is too large or not a DER OCSPRequest with one certificate."""

    reason = "OCSP_REQUEST_MALFORMED"


class InvalidPkiSettings(InvalidArgument):
    """A PKI setting (URL, duration, name) breaks its rule."""

    reason = "INVALID_PKI_SETTINGS"


class IssuerCannotIssue(FailedPrecondition):
    """The issuing CA is of the wrong kind for the profile, or outside its own validity."""

    reason = "ISSUER_CANNOT_ISSUE"


class SignerKeyMismatch(FailedPrecondition):
    """The signer's public key is not the one in the certificate it is paired with."""

    reason = "SIGNER_KEY_MISMATCH"


class AlreadyRevoked(FailedPrecondition):
    """The certificate is revoked already (only a hold may be turned into a revocation)."""

    reason = "ALREADY_REVOKED"


class CaKeyUnreadable(FailedPrecondition):
    """A CA key file is missing, not encrypted PKCS#8, or the passphrase is wrong."""

    reason = "CA_KEY_UNREADABLE"

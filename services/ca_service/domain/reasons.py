"""The CA's catalogue of error reasons: each reason's kind, HTTP status and meaning (see kagi.reasons)."""

from __future__ import annotations

from enum import unique

from kagi.errors import ErrorKind
from kagi.reasons import Reason, ReasonCatalogue

_INVALID = ErrorKind.INVALID_ARGUMENT
_STATE = ErrorKind.FAILED_PRECONDITION
_EXISTS = ErrorKind.ALREADY_EXISTS


@unique
class CaReason(ReasonCatalogue):
    """The reasons the CA raises beyond the shared ones (kagi.reasons.SharedReason)."""

    # A certificate request: the CSR and what it asks for.
    CSR_MALFORMED = Reason(_INVALID, 400, "The CSR is not one parseable PKCS#10 request in PEM.")
    BAD_PEM_TYPE = Reason(_INVALID, 400, "The PEM block is not a certificate request (a certificate, a key).")
    CSR_TOO_LARGE = Reason(_INVALID, 400, "The CSR is over the size cap; it was not parsed.")
    CSR_SIGNATURE_INVALID = Reason(_INVALID, 400, "The CSR's self-signature does not verify.")
    KEY_TOO_WEAK = Reason(_INVALID, 400, "An RSA key below the minimum size or with an exponent other than 65537.")
    UNSUPPORTED_KEY_TYPE = Reason(_INVALID, 400, "A key algorithm outside the policy (Ed25519, DSA, ...).")
    UNSUPPORTED_CURVE = Reason(_INVALID, 400, "An elliptic-curve key on a curve other than P-256 or P-384.")
    INVALID_IDENTITY = Reason(_INVALID, 400, "The identity the certificate is for has an empty or ill-formed field.")
    INVALID_SUBJECT_ID = Reason(_INVALID, 400, "The subject ID is empty or breaks its rule.")
    UNKNOWN_PROFILE = Reason(_INVALID, 400, "No certificate profile has that name.")
    ISSUER_CANNOT_ISSUE = Reason(_STATE, 409, "The issuing CA is of the wrong kind for the profile, or expired.")

    # Certificates, revocation and status.
    INVALID_SERIAL = Reason(_INVALID, 400, "Not a serial number, or outside the RFC 5280 range.")
    INVALID_REVOCATION_REASON = Reason(_INVALID, 400, "Not an RFC 5280 reason code a revocation may carry.")
    CERTIFICATE_NOT_FOUND = Reason(ErrorKind.NOT_FOUND, 404, "No certificate has that serial number.")
    ALREADY_REVOKED = Reason(_STATE, 409, "The certificate is revoked already (only a hold may become final).")
    CERTIFICATE_REVOKED = Reason(_STATE, 409, "A revoked certificate cannot be renewed.")
    NOT_RENEWABLE = Reason(_STATE, 409, "Certificates of this profile are not renewed this way.")
    SERIAL_EXHAUSTED = Reason(ErrorKind.UNAVAILABLE, 503, "No free serial number was found; retry.")
    OCSP_REQUEST_MALFORMED = Reason(_INVALID, 400, "Not a DER OCSPRequest for one certificate, or too large.")
    FEED_STOPPED = Reason(ErrorKind.UNAVAILABLE, 503, "The revocation feed stopped; reconnect.")

    # CRLs.
    INVALID_CRL_NUMBER = Reason(_INVALID, 400, "A CRL number must be a non-negative integer of at most 20 octets.")
    CRL_BUSY = Reason(ErrorKind.UNAVAILABLE, 503, "The CRL is being published or replaced; retry.")
    ROOT_CRL_MISSING = Reason(ErrorKind.NOT_FOUND, 404, "The root has no CRL yet: sign one offline.")

    # Records the CA stored.
    RECORD_MALFORMED = Reason(_INVALID, 400, "A stored certificate record cannot be decoded.")

    # The CA's keys, files and settings (start-up and `kagi admin`).
    INVALID_PKI_SETTINGS = Reason(_INVALID, 400, "A PKI setting (URL, duration, name) breaks its rule.")
    SIGNER_KEY_MISMATCH = Reason(_STATE, 409, "The signer's key is not the key of the certificate it pairs with.")
    CA_KEY_UNREADABLE = Reason(_STATE, 409, "A CA key file is missing, not encrypted PKCS#8, or the passphrase wrong.")
    CA_KEY_UNSUPPORTED = Reason(_INVALID, 400, "The CA key has an unsupported size.")
    CA_NOT_INITIALIZED = Reason(_STATE, 409, "No CA in the directory yet: initialise it first.")
    CA_EXISTS = Reason(_EXISTS, 409, "A CA exists in the directory already; it is not overwritten.")
    CA_FILE_EXISTS = Reason(_EXISTS, 409, "A CA file exists already; it is not overwritten.")
    CA_KEY_EXISTS = Reason(_EXISTS, 409, "A CA key file exists already; it is not overwritten.")
    ROOT_KEY_IN_CA_DIR = Reason(_INVALID, 400, "The root key must not be kept in the online CA's directory.")
    ROOT_KEY_NOT_HERE = Reason(_STATE, 409, "The directory holds no root key to move.")
    ROOT_PASSPHRASE_NOT_SEPARATE = Reason(_INVALID, 400, "The root key needs a passphrase of its own.")

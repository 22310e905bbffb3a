"""Errors the OTP use-case layer adds to the domain's: missing tokens and failed registration."""

from __future__ import annotations

from kagi.errors import NotFound, Unauthenticated
from services.otp_service.domain import OtpError

REGISTRATION_FAILED_MESSAGE = (
    "サービスID、ユーザID、またはアクティベーションIDが正しくありません"
    " / the service ID, user ID or activation ID is incorrect"
)
"""The one answer to unknown IDs and to a wrong activation ID alike."""


class TokenNotFound(OtpError, NotFound):
    """No token has that token id."""

    reason = "TOKEN_NOT_FOUND"


class RegistrationFailed(OtpError, Unauthenticated):
    """Step 9 named no activated token, or not with the activation ID activation returned.

    Unknown IDs and a wrong activation ID give this same error, so the answer does not tell which IDs exist.
    """

    reason = "REGISTRATION_FAILED"

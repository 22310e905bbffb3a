"""The OTP service's domain core: tokens, TOTP, seed sealing, replay and lockout rules; no I/O, no clock, no env.

The use-case layer imports from here; the submodules are:

- model: TokenState, TokenEvent, the TRANSITIONS table and `transition`, the Token record and its codec.
- operations: create_token, activate, verify_code, change_lifecycle and their result records.
- totp: HOTP/TOTP (RFC 4226/6238) and `match_code`, the pure code-to-time-step verifier.
- verification: VerificationState and `decide`, the one atomic replay/lockout/rate-limit update.
- seeds: seed generation and the SeedVault that seals seeds with AES-GCM under rotating KEKs.
- uri: the otpauth:// Key URI. validation, ids: input rules and identifiers. policy: OtpPolicy. errors.
"""

from services.otp_service.domain.errors import (
    ActivationExpired,
    ActivationFailed,
    ConsentRequired,
    CorruptRecord,
    IllegalTransition,
    InvalidCodeFormat,
    InvalidTokenField,
    InvalidUsageStartPassword,
    OtpError,
    RateLimited,
    Replayed,
    SeedVaultError,
    StepExpired,
    TokenLocked,
    TokenNotActive,
    WrongCode,
)
from services.otp_service.domain.model import (
    TRANSITIONS,
    Token,
    TokenEvent,
    TokenInfo,
    TokenState,
    transition,
)
from services.otp_service.domain.operations import (
    ActivationRequest,
    ActivationResult,
    LifecycleChange,
    NewToken,
    ProvisionedSeed,
    VerificationOutcome,
    VerificationResult,
    activate,
    change_lifecycle,
    create_token,
    verify_code,
)
from services.otp_service.domain.policy import OtpPolicy
from services.otp_service.domain.seeds import KeyEncryptionKey, SealedSeed, Seed, SeedVault, generate_seed
from services.otp_service.domain.totp import Algorithm, CodeMatch, MatchFailure, TotpParameters, match_code
from services.otp_service.domain.verification import Decision, Verdict, VerificationState, decide

__all__ = [
    "TRANSITIONS",
    "ActivationExpired",
    "ActivationFailed",
    "ActivationRequest",
    "ActivationResult",
    "Algorithm",
    "CodeMatch",
    "ConsentRequired",
    "CorruptRecord",
    "Decision",
    "IllegalTransition",
    "InvalidCodeFormat",
    "InvalidTokenField",
    "InvalidUsageStartPassword",
    "KeyEncryptionKey",
    "LifecycleChange",
    "MatchFailure",
    "NewToken",
    "OtpError",
    "OtpPolicy",
    "ProvisionedSeed",
    "RateLimited",
    "Replayed",
    "SealedSeed",
    "Seed",
    "SeedVault",
    "SeedVaultError",
    "StepExpired",
    "Token",
    "TokenEvent",
    "TokenInfo",
    "TokenLocked",
    "TokenNotActive",
    "TokenState",
    "TotpParameters",
    "Verdict",
    "VerificationOutcome",
    "VerificationResult",
    "VerificationState",
    "WrongCode",
    "activate",
    "change_lifecycle",
    "create_token",
    "decide",
    "generate_seed",
    "match_code",
    "transition",
    "verify_code",
]

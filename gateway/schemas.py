"""The customer API's shapes, declared once: request bodies (validated here) and responses, for the routes and
for the OpenAPI document, so the document cannot drift from what the gateway does.

The gateway checks shape only (JSON object, known fields present, types, generous length caps, text that can
travel as UTF-8). The bank's rules (lengths, character classes, confirmations) are the services' to decide:
their messages reach the customer unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.errors import invalid_input

MSG_REQUIRED = "入力してください / required"
MSG_STRING = "文字列で入力してください / must be a string"
MSG_BOOLEAN = "true または false で指定してください / must be true or false"
MSG_UNKNOWN = "この項目は受け付けられません / unknown field"
MSG_TEXT = "使用できない文字が含まれています / contains characters that cannot be used"
MSG_OBJECT = "JSONオブジェクトで送信してください / the body must be a JSON object"


def _too_long(limit: int) -> str:
    return f"{limit}文字以内で入力してください / at most {limit} characters"


def _one_of(values: tuple[str, ...]) -> str:
    names = ", ".join(values)
    return f"次のいずれかを指定してください / must be one of: {names}"


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One JSON body field: its type, the gateway's length cap, allowed values, and whether it is a
    secret (documented as a password and never logged)."""

    name: str
    kind: Literal["string", "boolean"] = "string"
    max_length: int = 256
    enum: tuple[str, ...] = ()
    secret: bool = False
    description: str = ""
    required: bool = True

    def check(self, value: object) -> str | None:
        """Return the message for a value of the wrong shape, or None when the shape is right."""
        if self.kind == "boolean":
            return None if isinstance(value, bool) else MSG_BOOLEAN
        if not isinstance(value, str):
            return MSG_STRING
        if len(value) > self.max_length:
            return _too_long(self.max_length)
        try:
            # Lone surrogates parse from JSON ("\ud800") but cannot be encoded for gRPC.
            value.encode("utf-8")
        except UnicodeEncodeError:
            return MSG_TEXT
        if "\x00" in value:
            return MSG_TEXT
        if self.enum and value not in self.enum:
            return _one_of(self.enum)
        return None

    def schema(self) -> dict[str, Any]:
        """Return the field's JSON Schema (OpenAPI 3.1)."""
        if self.kind == "boolean":
            result: dict[str, Any] = {"type": "boolean"}
        else:
            result = {"type": "string", "maxLength": self.max_length}
            if self.enum:
                result["enum"] = list(self.enum)
            if self.secret:
                result["format"] = "password"
                result["writeOnly"] = True
        if self.description:
            result["description"] = self.description
        return result


@dataclass(frozen=True, slots=True)
class BodySpec:
    """A request body: a JSON object whose listed fields are all required and nothing else allowed.

    A spec with no fields accepts an empty body or `{}`.
    """

    name: str
    fields: tuple[FieldSpec, ...] = field(default=())

    def parse(self, raw: bytes) -> dict[str, Any]:
        """Decode and check a body, raising a 400 that names every offending field."""
        if not raw.strip():
            if not any(f.required for f in self.fields):
                return {}
            raise invalid_input({f.name: MSG_REQUIRED for f in self.fields if f.required})
        try:
            document = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            message = "JSONとして読み取れません / not valid JSON"
            if isinstance(exc, json.JSONDecodeError):
                message += f": {exc.msg} (line {exc.lineno}, column {exc.colno})"
            raise invalid_input({"body": message}, reason="MALFORMED_JSON") from None
        if not isinstance(document, dict):
            raise invalid_input({"body": MSG_OBJECT}, reason="MALFORMED_JSON")
        problems: dict[str, str] = {}
        known = {f.name for f in self.fields}
        for spec in self.fields:
            if spec.name not in document:
                if spec.required:
                    problems[spec.name] = MSG_REQUIRED
                continue
            problem = spec.check(document[spec.name])
            if problem:
                problems[spec.name] = problem
        for name in document:
            if name not in known:
                problems[_field_label(name)] = MSG_UNKNOWN
        if problems:
            raise invalid_input(problems)
        return document

    def schema(self) -> dict[str, Any]:
        """Return the body's JSON Schema (OpenAPI 3.1)."""
        return {
            "type": "object",
            "properties": {f.name: f.schema() for f in self.fields},
            "required": [f.name for f in self.fields if f.required],
            "additionalProperties": False,
        }


def _field_label(name: str) -> str:
    # An unknown key is echoed back in the error; keep it short and printable.
    cleaned = "".join(c if c.isprintable() else "?" for c in name[:64])
    return cleaned or "?"


def _secret(name: str, description: str = "", max_length: int = 256) -> FieldSpec:
    return FieldSpec(name, secret=True, description=description, max_length=max_length)


ACCOUNT_TYPES = ("ordinary", "current")

VERIFY_NOTICE = BodySpec(
    "VerifyNoticeRequest",
    (
        FieldSpec("branch_code", max_length=16, description="支店番号 / branch code (3 half-width digits)"),
        FieldSpec("account_type", enum=ACCOUNT_TYPES, description="科目 / account type: 普通 ordinary, 当座 current"),
        FieldSpec("account_number", max_length=16, description="口座番号 / account number (7 half-width digits)"),
        _secret("temporary_login_password", "通知書の仮ログインパスワード / the notice's temporary login password"),
        _secret(
            "temporary_confirmation_password",
            "通知書の仮確認用パスワード / the notice's temporary confirmation password",
        ),
    ),
)
SUBMIT_PROFILE = BodySpec(
    "SubmitProfileRequest",
    (
        FieldSpec("user_name", description="利用者名 / user name"),
        FieldSpec("email", max_length=320, description="メールアドレス / e-mail address"),
        FieldSpec("email_confirmation", max_length=320, description="メールアドレス（確認） / the same again"),
        FieldSpec("login_id", description="ログインID / login ID"),
        FieldSpec("login_id_confirmation", description="ログインID（確認） / the same again"),
        _secret("login_password", "ログインパスワード / login password"),
        _secret("login_password_confirmation", "ログインパスワード（確認） / the same again"),
        _secret("confirmation_password", "確認用パスワード / confirmation password"),
        _secret("confirmation_password_confirmation", "確認用パスワード（確認） / the same again"),
    ),
)
EMPTY = BodySpec("EmptyRequest")
ISSUE_CERTIFICATE = BodySpec(
    "IssueCertificateRequest",
    (
        FieldSpec(
            "csr_pem",
            max_length=16384,
            description="ブラウザで作成した証明書署名要求 / PKCS#10 CSR made on the client, PEM",
        ),
    ),
)
PASSWORD_LOGIN = BodySpec("PasswordLoginRequest", (_secret("login_password", "ログインパスワード / login password"),))
REQUEST_TOKEN = BodySpec(
    "RequestTokenRequest",
    (
        FieldSpec("mobile_email", max_length=320, description="携帯電話のメールアドレス / the phone's e-mail address"),
        FieldSpec("mobile_email_confirmation", max_length=320, description="（確認） / the same again"),
        _secret("usage_start_password", "利用開始パスワード / usage-start password (4-8 half-width digits)"),
        _secret("usage_start_password_confirmation", "利用開始パスワード（確認） / the same again"),
    ),
)
ACTIVATE_APP = BodySpec(
    "ActivateAppRequest",
    (
        FieldSpec("service_id", description="メールに記載されたサービスID / the service ID from the mail"),
        FieldSpec("user_id", description="メールに記載されたユーザID / the user ID from the mail"),
        _secret("usage_start_password", "利用開始パスワード / usage-start password"),
        FieldSpec("agreed", kind="boolean", description="「上記の内容に同意する」 / the user ticked I agree"),
    ),
)
REGISTER_APP = BodySpec(
    "RegisterAppRequest",
    (
        FieldSpec("service_id", description="サービスID / service ID"),
        FieldSpec("user_id", description="ユーザID / user ID"),
        FieldSpec("activation_id", description="the activation_id returned by POST /v1/app/activation"),
    ),
)
VERIFY_FIRST_CODE = BodySpec(
    "VerifyFirstCodeRequest",
    (FieldSpec("otp", max_length=16, secret=True, description="アプリのワンタイムパスワード / the app's code"),),
)

LOGIN = BodySpec(
    "LoginRequest",
    (
        FieldSpec("login_id", description="ログインID / login ID"),
        _secret("login_password", "ログインパスワード / login password"),
    ),
)
STEP_UP = BodySpec(
    "StepUpRequest",
    (FieldSpec("otp", max_length=16, secret=True, description="アプリのワンタイムパスワード / the app's code"),),
)
CONFIRM_TRANSACTION = BodySpec(
    "ConfirmTransactionRequest",
    (
        FieldSpec(
            "transaction_id",
            max_length=128,
            description="The front-end's transaction id, unique per user: 1-128 of A-Z a-z 0-9 . _ : -",
        ),
        FieldSpec(
            "transaction_summary",
            max_length=1024,
            description="取引内容 / what the customer confirms: UTF-8 text of at most 1 KiB",
        ),
        _secret("confirmation_password", "確認用パスワード / confirmation password"),
        FieldSpec("otp", max_length=16, secret=True, description="アプリのワンタイムパスワード / the app's code"),
    ),
)

PASSWORD_KINDS = ("login", "confirmation")
CHANGE_PASSWORD = BodySpec(
    "ChangePasswordRequest",
    (
        FieldSpec(
            "kind", enum=PASSWORD_KINDS, description="login (ログインパスワード) or confirmation (確認用パスワード)"
        ),
        _secret("current_password", "現在のパスワード / the current password"),
        _secret("new_password", "新しいパスワード / the new password (6-12 half-width letters and digits, mixed)"),
        _secret("new_password_confirmation", "新しいパスワード（確認） / the same again"),
    ),
)
RESET_PASSWORD = BodySpec(
    "ResetPasswordRequest",
    (
        FieldSpec("kind", enum=PASSWORD_KINDS, description="login or confirmation: which password the notice resets"),
        _secret("temporary_password", "再設定通知書の仮パスワード / the reset notice's temporary password"),
        _secret("new_password", "新しいパスワード / the new password (6-12 half-width letters and digits, mixed)"),
        _secret("new_password_confirmation", "新しいパスワード（確認） / the same again"),
    ),
)
RENEW_CERTIFICATE = BodySpec(
    "RenewCertificateRequest",
    (
        FieldSpec(
            "csr_pem",
            max_length=16384,
            description="新しい鍵で作成した証明書署名要求 / PKCS#10 CSR for a NEW key made on the client, PEM",
        ),
        _secret("login_password", "ログインパスワード / login password"),
    ),
)
REISSUE_TOKEN = BodySpec(
    "ReissueTokenRequest",
    (
        FieldSpec(
            "mobile_email", max_length=320, description="新しい携帯電話のメールアドレス / the new phone's e-mail"
        ),
        FieldSpec("mobile_email_confirmation", max_length=320, description="（確認） / the same again"),
        _secret("usage_start_password", "利用開始パスワード / usage-start password (4-8 half-width digits)"),
        _secret("usage_start_password_confirmation", "利用開始パスワード（確認） / the same again"),
        _secret("confirmation_password", "確認用パスワード / confirmation password"),
        FieldSpec(
            "login_id",
            required=False,
            description="Only without a session (the bank allowed a reissue without the old token): login ID",
        ),
        FieldSpec(
            "login_password",
            secret=True,
            required=False,
            description="Only without a session: ログインパスワード / login password",
        ),
    ),
)

STATES = (
    "NOTICE_VERIFIED",
    "PROFILE_SUBMITTED",
    "REGISTERED",
    "CERTIFICATE_ISSUED",
    "CERTIFICATE_LOGGED_IN",
    "PASSWORD_VERIFIED",
    "TOKEN_REQUESTED",
    "APP_ACTIVATED",
    "APP_REGISTERED",
    "COMPLETED",
    "EXPIRED",
    "LOCKED",
    "CANCELLED",
)
"""The enrollment states as the API names them (the design's names)."""

STEPS = (
    "VERIFY_NOTICE",
    "SUBMIT_PROFILE",
    "CONFIRM_REGISTRATION",
    "ISSUE_CERTIFICATE",
    "CERTIFICATE_LOGIN",
    "PASSWORD_LOGIN",
    "REQUEST_TOKEN",
    "ACTIVATE_APP",
    "REGISTER_APP",
    "VERIFY_FIRST_CODE",
)
"""The names of the ten steps, in order; `next_step` is one of them or null."""

_STRING = {"type": "string"}
_ENROLLMENT_PROPERTIES: dict[str, Any] = {
    "enrollment_id": _STRING,
    "kind": {
        "type": "string",
        "enum": ["SETUP", "REISSUE"],
        "description": "SETUP: the ten steps; REISSUE: a new certificate after a lost PC (steps 1, 4, 5, 6).",
    },
    "state": {"type": "string", "enum": list(STATES)},
    "next_step": {
        "type": ["string", "null"],
        "enum": [*STEPS, None],
        "description": "The step the enrollment expects next, by name (step 2 is SUBMIT_PROFILE); null once it "
        "takes no more steps.",
    },
    "expires_at": {
        "type": ["string", "null"],
        "format": "date-time",
        "description": "When the enrollment expires unless a step is taken (RFC 3339).",
    },
}
_ENROLLMENT_REQUIRED = ["enrollment_id", "kind", "state", "next_step", "expires_at"]


def _enrollment_with(extra: Mapping[str, Any], description: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
        "properties": {**_ENROLLMENT_PROPERTIES, **extra},
        "required": [*_ENROLLMENT_REQUIRED, *extra],
    }


RESPONSE_SCHEMAS: dict[str, dict[str, Any]] = {
    "Enrollment": _enrollment_with({}, "An enrollment's state, next step and expiry; never a secret."),
    "VerifyNoticeResponse": _enrollment_with(
        {"session_token": {"type": "string", "description": "Bearer token for steps 2-4; returned this once."}},
        "Step 1's answer: the new enrollment and its session token.",
    ),
    "SubmitProfileResponse": _enrollment_with(
        {
            "summary": {
                "type": "object",
                "description": "What the user entered, for confirmation (step 9 of the procedure); no password.",
                "properties": {"user_name": _STRING, "email": _STRING, "login_id": _STRING, "company_name": _STRING},
                "required": ["user_name", "email", "login_id", "company_name"],
            }
        },
        "Step 2's answer.",
    ),
    "ConfirmRegistrationResponse": _enrollment_with({"user_id": _STRING}, "Step 3's answer."),
    "RequestTokenResponse": _enrollment_with(
        {
            "mail_note": {
                "type": "string",
                "description": "The procedure's warning to show beside the answer (Japanese / English): a phone that "
                "filters mail must allow the bank's domain, or the mail with the service ID and user ID may not "
                "arrive.",
            }
        },
        "Step 7's answer: the enrollment, and the note about mail filters; the IDs go by mail only.",
    ),
    "IssueCertificateResponse": _enrollment_with(
        {
            "certificate_pem": {"type": "string", "description": "The issued client certificate, PEM."},
            "chain_pem": {"type": "string", "description": "The customer CA and the root, PEM."},
            "serial_number": {"type": "string", "description": "Lowercase hexadecimal."},
        },
        "Step 4's answer.",
    ),
    "ActivateAppResponse": {
        "type": "object",
        "description": "The seed, delivered this once, with what an authenticator app needs.",
        "properties": {
            "otpauth_uri": {"type": "string", "description": "otpauth://totp/ Key URI for QR codes."},
            "secret": {"type": "string", "description": "The seed, base32 without padding."},
            "algorithm": {"type": "string", "enum": ["SHA1", "SHA256", "SHA512"]},
            "digits": {"type": "integer"},
            "period": {"type": "integer"},
            "activation_id": {"type": "string"},
        },
        "required": ["otpauth_uri", "secret", "algorithm", "digits", "period", "activation_id"],
    },
    "RegisterAppResponse": {
        "type": "object",
        "properties": {
            "state": {
                "type": ["string", "null"],
                "enum": [*STATES, None],
                "description": "The enrollment's state after registration (null for a token made outside one).",
            }
        },
        "required": ["state"],
    },
    "ClientCertificate": {
        "type": "object",
        "description": "The client certificate this connection presented, as the gateway verified it.",
        "properties": {
            "serial_number": {"type": "string", "description": "Lowercase hexadecimal."},
            "fingerprint_sha256": {"type": "string", "description": "SHA-256 of the DER, lowercase hexadecimal."},
            "subject": {"type": "string", "description": "RFC 4514, non-ASCII characters escaped."},
            "not_after": {"type": "string", "format": "date-time"},
        },
        "required": ["serial_number", "fingerprint_sha256", "subject", "not_after"],
    },
    "Session": {
        "type": "object",
        "description": "An access token: a JWT (ES256) bound to the client certificate (RFC 8705 cnf.x5t#S256), "
        "verifiable with /.well-known/jwks.json; send it as Authorization: Bearer with the same certificate.",
        "properties": {
            "access_token": {"type": "string"},
            "token_type": {"type": "string", "enum": ["Bearer"]},
            "expires_in": {"type": "integer", "description": "Seconds until it expires (at most 900)."},
            "user": {"$ref": "#/components/schemas/UserView"},
        },
        "required": ["access_token", "token_type", "expires_in"],
    },
    "ConfirmationResponse": {
        "type": "object",
        "description": "A confirmed transaction and its confirmation token: a JWT (ES256) with txn and txn_digest "
        "(SHA-256 of the summary's UTF-8 bytes, base64url), verifiable offline with /.well-known/jwks.json.",
        "properties": {
            "confirmation_id": _STRING,
            "transaction_id": _STRING,
            "txn_digest": _STRING,
            "confirmed_at": {"type": "string", "format": "date-time"},
            "methods": {"type": "array", "items": _STRING},
            "confirmation_token": _STRING,
        },
        "required": [
            "confirmation_id",
            "transaction_id",
            "txn_digest",
            "confirmed_at",
            "methods",
            "confirmation_token",
        ],
    },
    "UserResponse": {
        "type": "object",
        "description": "The user after the change (every session of the user has ended: log in again).",
        "properties": {"user": {"$ref": "#/components/schemas/UserView"}},
        "required": ["user"],
    },
    "UserView": {
        "type": "object",
        "properties": {
            "user_id": _STRING,
            "login_id": _STRING,
            "user_name": _STRING,
            "company_name": _STRING,
            "state": {"type": "string", "enum": ["SETTING_UP", "ACTIVE", "LOCKED"]},
            "token_state": {"type": "string", "enum": ["NONE", "PENDING", "ACTIVE", "LOCKED", "DISABLED"]},
        },
        "required": ["user_id", "login_id", "user_name", "company_name", "state", "token_state"],
    },
    "RenewCertificateResponse": {
        "type": "object",
        "description": "The new certificate; the old one is revoked (superseded) at its first session, or in 7 days.",
        "properties": {
            "certificate_pem": {"type": "string", "description": "The new client certificate, PEM."},
            "chain_pem": {"type": "string", "description": "The customer CA and the root, PEM."},
            "serial_number": {"type": "string", "description": "Lowercase hexadecimal."},
        },
        "required": ["certificate_pem", "chain_pem", "serial_number"],
    },
    "Jwks": {
        "type": "object",
        "description": "The JWK Set (RFC 7517) of the keys that sign access and confirmation tokens.",
        "properties": {"keys": {"type": "array", "items": {"type": "object"}}},
        "required": ["keys"],
    },
    "Error": {
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "code": {"type": "integer", "description": "The HTTP status code."},
                    "reason": {"type": "string", "description": "Stable, machine-readable reason."},
                    "message": {"type": "string", "description": "For people: Japanese, then English."},
                    "fields": {
                        "type": "object",
                        "additionalProperties": {"type": "string"},
                        "description": "Per-field messages: the field's name and the rule it broke.",
                    },
                },
                "required": ["code", "reason", "message", "fields"],
            }
        },
        "required": ["error"],
    },
}
"""The JSON Schemas of the answers, by component name."""

Auth = Literal[
    "none",
    "session",
    "certificate",
    "session_or_certificate",
    "certificate_and_access_token",
    "certificate_and_optional_access_token",
]


@dataclass(frozen=True, slots=True)
class Operation:
    """One customer API route: method, path, name, how it authenticates, body, answer."""

    method: str
    path: str
    operation_id: str
    summary: str
    auth: Auth
    body: BodySpec | None
    status: int
    response: str
    step: int | None = None
    tag: str = "enrollment"

    @property
    def mutating(self) -> bool:
        """Tell whether the route takes an Idempotency-Key (a session route mints anew, or is keyed by its body)."""
        return self.method in ("POST", "PUT") and self.tag != "sessions"


ENROLLMENT = "/v1/enrollments/{id}"
OPERATIONS: tuple[Operation, ...] = (
    # Before /v1/enrollments/{id}: the router takes the first route that matches.
    Operation(
        "GET", "/v1/enrollments/current", "getCurrentEnrollment",
        "⑭ この電子証明書の初期設定 / the enrollment this client certificate was issued in", "certificate", None,
        200, "Enrollment",
    ),
    Operation(
        "POST", "/v1/enrollments", "verifyNotice", "⑦ 代表口座と通知書の仮パスワード / the notice", "none",
        VERIFY_NOTICE, 201, "VerifyNoticeResponse", 1,
    ),
    Operation(
        "PUT", ENROLLMENT + "/profile", "submitProfile", "⑧ 利用者情報の入力 / the profile", "session",
        SUBMIT_PROFILE, 200, "SubmitProfileResponse", 2,
    ),
    Operation(
        "POST", ENROLLMENT + "/registration", "confirmRegistration", "⑨ 登録 / register", "session",
        EMPTY, 200, "ConfirmRegistrationResponse", 3,
    ),
    Operation(
        "POST", ENROLLMENT + "/certificate", "issueCertificate", "⑩-⑬ 電子証明書発行 / issue the certificate",
        "session", ISSUE_CERTIFICATE, 200, "IssueCertificateResponse", 4,
    ),
    Operation(
        "POST", ENROLLMENT + "/certificate-login", "certificateLogin", "⑭-⑯ 電子証明書ログイン / certificate login",
        "certificate", EMPTY, 200, "Enrollment", 5,
    ),
    Operation(
        "POST", ENROLLMENT + "/password-login", "passwordLogin", "⑰ ログインパスワード / login password",
        "certificate", PASSWORD_LOGIN, 200, "Enrollment", 6,
    ),
    Operation(
        "POST", ENROLLMENT + "/token", "requestToken",
        "⑱ トークン発行 / issue the token (the IDs go by mail; again before step 9 for a new token)",
        "certificate", REQUEST_TOKEN, 200, "RequestTokenResponse", 7,
    ),
    Operation(
        "POST", "/v1/app/activation", "activateApp", "⑳ アプリの利用登録 / activate the app (the seed, once)",
        "none", ACTIVATE_APP, 200, "ActivateAppResponse", 8,
    ),
    Operation(
        "POST", "/v1/app/registration", "registerApp", "㉑ アプリの登録 / the app stored the seed", "none",
        REGISTER_APP, 200, "RegisterAppResponse", 9,
    ),
    Operation(
        "POST", ENROLLMENT + "/otp", "verifyFirstCode", "㉓ ワンタイムパスワード認証確認 / the first code",
        "certificate", VERIFY_FIRST_CODE, 200, "Enrollment", 10,
    ),
    Operation(
        "GET", ENROLLMENT, "getEnrollment", "初期設定の状況 / an enrollment's state and next step",
        "session_or_certificate", None, 200, "Enrollment",
    ),
    Operation(
        "GET", "/v1/client-certificate", "getClientCertificate",
        "選択した電子証明書 / the client certificate this connection presented", "certificate", None, 200,
        "ClientCertificate",
    ),
    Operation(
        "POST", "/v1/sessions", "login", "ログイン / log in: client certificate + login ID + login password",
        "certificate", LOGIN, 201, "Session", tag="sessions",
    ),
    Operation(
        "POST", "/v1/sessions/current/otp", "stepUp",
        "ワンタイムパスワード認証 / step up the session with a one-time password (amr adds otp, mfa)",
        "certificate_and_access_token", STEP_UP, 200, "Session", tag="sessions",
    ),
    Operation(
        "DELETE", "/v1/sessions/current", "logout", "ログアウト / end the session: its tokens are refused",
        "certificate_and_access_token", None, 204, "", tag="sessions",
    ),
    Operation(
        "POST", "/v1/confirmations", "confirmTransaction",
        "取引の確認 / confirm a transaction: confirmation password + one-time password (a code confirms one)",
        "certificate_and_access_token", CONFIRM_TRANSACTION, 201, "ConfirmationResponse", tag="sessions",
    ),
    Operation(
        "PUT", "/v1/users/me/password", "changePassword",
        "パスワード変更 / change the login or confirmation password (every session ends; a mail tells you)",
        "certificate_and_access_token", CHANGE_PASSWORD, 200, "UserResponse", tag="sessions",
    ),
    Operation(
        "POST", "/v1/users/me/password/reset", "resetPassword",
        "パスワード再設定 / set a forgotten password again with the bank's reset notice (certificate, no session)",
        "certificate", RESET_PASSWORD, 200, "UserResponse", tag="sessions",
    ),
    Operation(
        "POST", "/v1/users/me/certificate/renewal", "renewCertificate",
        "電子証明書更新 / renew the client certificate for a new key, within 30 days of its expiry",
        "certificate_and_access_token", RENEW_CERTIFICATE, 201, "RenewCertificateResponse", tag="lifecycle",
    ),
    Operation(
        "POST", "/v1/users/me/token/reissue", "reissueToken",
        "トークン再発行 / a new token for a new phone: the new IDs go by mail, then the app's steps 8-10",
        "certificate_and_optional_access_token", REISSUE_TOKEN, 202, "UserResponse", tag="lifecycle",
    ),
    Operation(
        "GET", "/.well-known/jwks.json", "getJwks", "The public keys of access and confirmation tokens (JWKS)",
        "none", None, 200, "Jwks", tag="sessions",
    ),
)  # fmt: skip
"""The customer API's routes; app.py serves exactly these and openapi.py documents them."""

ERROR_STATUSES: dict[int, str] = {
    400: "入力内容の誤り / invalid input: per-field messages in error.fields (malformed JSON and wrong types too)",
    401: "認証情報がない・誤り / missing or invalid credential (session token, client certificate, password)",
    403: "別の利用者 / the credential is valid but not for this enrollment or route",
    404: "見つかりません / no such enrollment or route",
    409: "手順の順序違い・競合 / not allowed in the current state (the message names the expected next step),"
    " or a concurrent change won (CONCURRENT_CHANGE): retry",
    413: "送信データが大きすぎます / the body is larger than 64 KiB",
    415: "application/json で送信してください / a body that is not application/json",
    423: "ロック / locked after too many failures: only the bank unlocks it",
    429: "回数制限 / throttled: retry after the seconds in the Retry-After header",
    500: "システムエラー / internal error (no detail)",
    503: "サービス停止中 / a backend service (or the revocation status) is unavailable: retry later",
}
"""The error statuses every customer route may answer, with what each means."""

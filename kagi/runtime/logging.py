"""Structured JSON logs with a request id carried across calls, and processors that keep secrets out of them.

kagi's own events are redacted by key (`redact_secrets`). Records of other libraries' stdlib loggers (aiohttp,
grpc, asyncio) go through the same chain as JSON, and since their messages are free text, `scrub_text` also
replaces what looks like a credential in any text: bearer tokens, JWTs, PEM private keys, otpauth URIs and
`name=value` pairs whose name says secret.
"""

from __future__ import annotations

import logging
import re
import sys
import uuid
from collections.abc import Mapping, MutableMapping
from contextvars import ContextVar
from typing import Any

import structlog

REQUEST_ID_HEADER = "x-request-id"
request_id_var: ContextVar[str] = ContextVar("kagi_request_id", default="")

_SECRET_KEY = re.compile(
    r"(pass(word|phrase)?|secret|seed|pin|token|credential|private|key_pem|otp|code|authorization|cookie)",
    re.IGNORECASE,
)
_SAFE_KEYS = frozenset(
    {
        "token_id",
        "status_code",
        "code_name",
        "grpc_code",
        "reason",
        "event",
        "key_id",
        "next_step",
        "http_status",
    }
)
REDACTED = "[REDACTED]"


def new_request_id() -> str:
    """Return a fresh random request id."""
    return uuid.uuid4().hex


def redact(value: Any) -> Any:
    """Return `value` with every secret-looking key's value replaced, recursively."""
    if isinstance(value, Mapping):
        return {k: (REDACTED if _is_secret_key(k) else redact(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def _is_secret_key(key: object) -> bool:
    return isinstance(key, str) and key not in _SAFE_KEYS and _SECRET_KEY.search(key) is not None


def redact_secrets(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Return a structlog processor replacing the values of secret-looking keys."""
    for key in list(event_dict):
        if _is_secret_key(key):
            event_dict[key] = REDACTED
        elif isinstance(event_dict[key], Mapping | list | tuple):
            event_dict[key] = redact(event_dict[key])
    return event_dict


_TEXT_SECRETS = (
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 " + REDACTED),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), REDACTED),
    (
        re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.DOTALL),
        REDACTED,
    ),
    (re.compile(r"otpauth://\S+"), REDACTED),
    (
        re.compile(
            r"(?i)\b([\w-]*(?:pass(?:word|phrase)?|secret|seed|pin|session_token|access_token|otp)[\w-]*"
            r"[\"']?\s*[:=]\s*[\"']?)[^\s\"',;&}]+"
        ),
        r"\1" + REDACTED,
    ),
)


def scrub(text: str) -> str:
    """Return `text` with anything shaped like a credential replaced (for free-text messages)."""
    for pattern, replacement in _TEXT_SECRETS:
        text = pattern.sub(replacement, text)
    return text


def scrub_text(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Return a structlog processor scrubbing credential-shaped text from the message and string values."""
    for key, value in list(event_dict.items()):
        if isinstance(value, str):
            event_dict[key] = scrub(value)
    return event_dict


def add_request_id(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Return a structlog processor adding the current request id, when there is one."""
    request_id = request_id_var.get()
    if request_id and "request_id" not in event_dict:
        event_dict["request_id"] = request_id
    return event_dict


def configure_logging(component: str, *, level: str = "INFO", json: bool = True) -> None:
    """Set structlog and stdlib logging (aiohttp's, grpc's, asyncio's records too) to write one
    JSON object per line to stderr, through the same redaction."""
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_request_id,
        redact_secrets,
        structlog.processors.format_exc_info,
        scrub_text,
    ]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(component=component)

"""The app's side of the gateway API: activation (step 8) and registration (step 9) over HTTPS."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from kagi.errors import KagiError, Unavailable
from kagi.softtoken.vault import SoftToken


class GatewayError(KagiError):
    """An error answer of the gateway, with its code, reason, message and fields."""


class GatewayClient:
    """Calls the gateway's app routes; TLS is verified against the system or a given CA file."""

    def __init__(self, base_url: str, *, cafile: Path | None = None, timeout: float = 15.0) -> None:
        if not base_url.startswith("https://"):
            raise ValueError("the gateway URL must be https://")
        self._base = base_url.rstrip("/")
        self._context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
        self._timeout = timeout

    def _post(self, path: str, body: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked to be https in __init__
            self._base + path,
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json", "Idempotency-Key": idempotency_key},
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout, context=self._context) as response:  # noqa: S310
                answer: dict[str, Any] = json.loads(response.read())
                return answer
        except urllib.error.HTTPError as exc:
            raise _error(exc) from None
        except (urllib.error.URLError, OSError) as exc:
            raise Unavailable(f"cannot reach the gateway: {exc}", reason="GATEWAY_UNREACHABLE") from None

    def activate(self, *, service_id: str, user_id: str, usage_start_password: str) -> SoftToken:
        """Send step 8 with consent and return the token (seed included), then step 9 registers it."""
        answer = self._post(
            "/v1/app/activation",
            {
                "service_id": service_id,
                "user_id": user_id,
                "usage_start_password": usage_start_password,
                "agreed": True,
            },
            uuid.uuid4().hex,
        )
        return SoftToken(
            secret=answer["secret"],
            algorithm=answer["algorithm"],
            digits=int(answer["digits"]),
            period=int(answer["period"]),
            otpauth_uri=answer["otpauth_uri"],
            service_id=service_id,
            user_id=user_id,
            activation_id=answer["activation_id"],
        )

    def register(self, token: SoftToken) -> str:
        """Send step 9: the app has stored the seed. Returns the enrollment state the gateway reports."""
        answer = self._post(
            "/v1/app/registration",
            {"service_id": token.service_id, "user_id": token.user_id, "activation_id": token.activation_id},
            uuid.uuid4().hex,
        )
        return str(answer.get("state", ""))


def _error(exc: urllib.error.HTTPError) -> GatewayError:
    try:
        body = json.loads(exc.read()).get("error", {})
    except ValueError:
        body = {}
    return GatewayError(
        str(body.get("message") or f"HTTP {exc.code}"),
        reason=str(body.get("reason") or f"HTTP_{exc.code}"),
        fields={str(k): str(v) for k, v in (body.get("fields") or {}).items()},
    )

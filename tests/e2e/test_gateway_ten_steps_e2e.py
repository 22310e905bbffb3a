"""The bank's ten steps through the gateway with real clients: curl over HTTPS (the client certificate from step 5
on), a CSR from `openssl req`, the service and user IDs read from the mail a real SMTP server received, the
first code from `oathtool`; real CA, OTP and enrollment services behind, over mTLS; ends COMPLETED."""

from __future__ import annotations

import json
import re

import structlog

from tests.integration.gateway.gateway_support import GatewayStack, walk_ten_steps


async def test_ten_steps_through_the_gateway_with_curl_openssl_and_oathtool(stack: GatewayStack) -> None:
    """Each step answers the state the design names and the next step by name; the IDs travel by mail only,
    and step 7 answers the procedure's note on phones that filter mail; the seed is delivered once; oathtool's
    code completes the enrollment, read back as COMPLETED; and none of the secrets that crossed the gateway
    (temporary passwords, session token, passwords, seed, code) appears in any log event of the gateway or the
    services."""
    with structlog.testing.capture_logs() as events:
        secrets = await walk_ten_steps(stack)
    logged = json.dumps(events, default=str, ensure_ascii=False)
    assert len(events) > 20, "the services and the gateway should have logged the steps"
    for name, value in secrets.items():
        # Bounded, so that a 6-digit code is not "found" inside a hex request id or a number.
        assert not re.search(rf"(?<![0-9A-Za-z]){re.escape(value)}(?![0-9A-Za-z])", logged), f"the {name} was logged"

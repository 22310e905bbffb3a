"""Errors at the gateway: one JSON shape ({"error": {code, reason, message, fields}}), the status the reason
catalogues give each service answer (400, 401, 404, 409 naming the next step, 423, 503), the gateway's own refusals
(malformed JSON and wrong types naming the field, 413 over 64 KiB, 415, bad Idempotency-Key), idempotent
retries, request ids, and no stack trace or internal address anywhere."""

from __future__ import annotations

import uuid

import grpc
import pytest

from gateway.errors import HTTP_STATUS_FOR_CODE, THROTTLED_RETRY_AFTER_SECONDS, http_status_for, retry_after
from tests.integration.gateway.gateway_support import PROFILE, Answer, GatewayStack

ERROR_KEYS = {"code", "reason", "message", "fields"}


def _is_error(answer: Answer, status: int, reason: str | None = None) -> None:
    assert answer.status == status, answer.body
    assert set(answer.body) == {"error"}
    assert set(answer.body["error"]) == ERROR_KEYS
    assert answer.body["error"]["code"] == status
    if reason is not None:
        assert answer.body["error"]["reason"] == reason, answer.body
    text = answer.raw.decode()
    assert "Traceback" not in text
    assert "127.0.0.1" not in text
    assert "localhost:" not in text


@pytest.mark.parametrize(
    ("code", "reason", "status"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_INPUT", 400),
        (grpc.StatusCode.UNAUTHENTICATED, "SESSION_INVALID", 401),
        (grpc.StatusCode.PERMISSION_DENIED, "CERTIFICATE_MISMATCH", 403),
        (grpc.StatusCode.NOT_FOUND, "NOT_FOUND", 404),
        (grpc.StatusCode.FAILED_PRECONDITION, "WRONG_STEP", 409),
        (grpc.StatusCode.ABORTED, "CONCURRENT_CHANGE", 409),
        (grpc.StatusCode.ABORTED, "REQUEST_IN_PROGRESS", 409),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "USER_LOCKED", 423),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "APPLICATION_LOCKED", 423),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOKEN_LOCKED", 423),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "RESET_NOTICE_LOCKED", 423),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED", 429),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "SOMETHING_LOCKED", 429),
        (grpc.StatusCode.FAILED_PRECONDITION, "USER_LOCKED", 409),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_ATTEMPTS", 429),
        (grpc.StatusCode.UNAVAILABLE, "SERVICE_UNAVAILABLE", 503),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "SERVICE_UNAVAILABLE", 503),
        (grpc.StatusCode.INTERNAL, "INTERNAL", 500),
        (grpc.StatusCode.UNKNOWN, "UNKNOWN", 500),
    ],
)
def test_one_table_maps_grpc_status_and_reason_to_http(code: grpc.StatusCode, reason: str, status: int) -> None:
    """A catalogued reason answered with its kind's code gets the catalogue's status (lockouts 423, throttling
    429, a lost race 409); an uncatalogued reason, however it is spelled, or one under another code gets the
    code's status; unknown codes 500."""
    assert http_status_for(code, reason) == status
    assert all(isinstance(value, int) for value in HTTP_STATUS_FOR_CODE.values())


async def test_malformed_json_and_wrong_types_name_the_field(stack: GatewayStack) -> None:
    """Unparseable JSON is 400 MALFORMED_JSON naming `body`; a wrong type, a missing field, an unknown field and
    text that cannot travel as UTF-8 are 400 naming each field; nothing reaches the service."""
    entries, _ = await stack.register_application()
    async with stack.client() as client:
        answer = await client.request(
            "POST", "/v1/enrollments", data=b'{"branch_code": ', headers={"Content-Type": "application/json"}
        )
        _is_error(answer, 400, "MALFORMED_JSON")
        assert "body" in answer.body["error"]["fields"]

        answer = await client.request("POST", "/v1/enrollments", [entries])
        _is_error(answer, 400, "MALFORMED_JSON")

        wrong = {**entries, "branch_code": 1, "account_type": "savings", "extra": "x"}
        del wrong["account_number"]
        answer = await client.request("POST", "/v1/enrollments", wrong)
        _is_error(answer, 400, "INVALID_ARGUMENT")
        assert set(answer.body["error"]["fields"]) == {"branch_code", "account_type", "account_number", "extra"}
        assert "string" in answer.body["error"]["fields"]["branch_code"]
        assert "ordinary" in answer.body["error"]["fields"]["account_type"]

        surrogate = b'{"branch_code": "\\ud800", "account_type": "ordinary", "account_number": "1234567",'
        surrogate += b' "temporary_login_password": "a", "temporary_confirmation_password": "b"}'
        answer = await client.request(
            "POST", "/v1/enrollments", data=surrogate, headers={"Content-Type": "application/json"}
        )
        _is_error(answer, 400)
        assert set(answer.body["error"]["fields"]) == {"branch_code"}

        # The notice is intact: a correct entry still works (nothing was counted as a failure).
        answer = await client.request("POST", "/v1/enrollments", entries)
        assert answer.status == 201


async def test_service_rules_reach_the_customer_with_their_field_messages(stack: GatewayStack) -> None:
    """The service's own rule messages (Japanese with English) come back per field, with status 400."""
    entries, _ = await stack.register_application()
    async with stack.client() as client:
        created = (await client.request("POST", "/v1/enrollments", entries)).body
        profile = {**PROFILE, "login_id": "abc", "login_id_confirmation": "abd", "login_password": "short"}
        answer = await client.request(
            "PUT", f"/v1/enrollments/{created['enrollment_id']}/profile", profile, bearer=created["session_token"]
        )
    _is_error(answer, 400)
    fields = answer.body["error"]["fields"]
    assert {"login_id", "login_password"} <= set(fields)
    assert "半角英数混在" in fields["login_password"]


async def test_wrong_step_is_409_naming_the_expected_step(stack: GatewayStack) -> None:
    """Registering (step 3) before the profile (step 2) is 409 and the message names SUBMIT_PROFILE."""
    entries, _ = await stack.register_application()
    async with stack.client() as client:
        created = (await client.request("POST", "/v1/enrollments", entries)).body
        path = f"/v1/enrollments/{created['enrollment_id']}"
        answer = await client.request("POST", path + "/registration", {}, bearer=created["session_token"])
        _is_error(answer, 409, "WRONG_STEP")
        assert "SUBMIT_PROFILE" in answer.body["error"]["message"]
        state = await client.request("GET", path, bearer=created["session_token"])
        assert state.body["state"] == "NOTICE_VERIFIED"


async def test_credentials_missing_or_wrong_and_unknown_ids(stack: GatewayStack) -> None:
    """No bearer is 401 SESSION_REQUIRED with a Bearer challenge; a wrong one is the service's 401; an unknown or
    malformed enrollment id is 404; an unknown route is a JSON 404 and a wrong method a JSON 405."""
    entries, _ = await stack.register_application()
    async with stack.client() as client:
        created = (await client.request("POST", "/v1/enrollments", entries)).body
        path = f"/v1/enrollments/{created['enrollment_id']}"
        answer = await client.request("PUT", path + "/profile", PROFILE)
        _is_error(answer, 401, "SESSION_REQUIRED")
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
        answer = await client.request("GET", path, bearer="not-the-token")
        _is_error(answer, 401, "SESSION_INVALID")
        _is_error(await client.request("GET", "/v1/enrollments/" + uuid.uuid4().hex, bearer="x"), 404)
        _is_error(await client.request("GET", "/v1/enrollments/bad%20id", bearer="x"), 404)
        _is_error(await client.request("GET", "/v1/nothing-here"), 404, "NOT_FOUND")
        answer = await client.request("DELETE", "/v1/enrollments")
        _is_error(answer, 405, "METHOD_NOT_ALLOWED")


async def test_body_over_64_kib_is_413_and_non_json_is_415(stack: GatewayStack) -> None:
    """A body over 64 KiB is refused with 413 (declared length or chunked); a body that is not JSON with 415."""
    big = b'{"csr_pem": "' + b"A" * (64 * 1024) + b'"}'
    async with stack.client() as client:
        answer = await client.request("POST", "/v1/enrollments", data=big, headers={"Content-Type": "application/json"})
        _is_error(answer, 413, "BODY_TOO_LARGE")

        async def chunks():  # type: ignore[no-untyped-def]
            for start in range(0, len(big), 8192):
                yield big[start : start + 8192]

        async with client.session.post(
            client.base + "/v1/enrollments", data=chunks(), headers={"Content-Type": "application/json"}
        ) as response:
            assert response.status == 413
            assert (await response.json())["error"]["reason"] == "BODY_TOO_LARGE"

        answer = await client.request(
            "POST", "/v1/enrollments", data=b"branch_code=001", headers={"Content-Type": "text/plain"}
        )
        _is_error(answer, 415, "UNSUPPORTED_MEDIA_TYPE")


async def test_locked_application_is_423(stack: GatewayStack) -> None:
    """Five wrong temporary passwords lock the application: each wrong entry answers the uniform 401 (the fifth
    too: a locked notice is no oracle), and only the right passwords learn 423 APPLICATION_LOCKED."""
    entries, _ = await stack.register_application()
    wrong = {**entries, "temporary_login_password": "Wrong0000"}
    async with stack.client() as client:
        statuses = [(await client.request("POST", "/v1/enrollments", wrong)).status for _ in range(5)]
        assert statuses == [401] * 5
        _is_error(await client.request("POST", "/v1/enrollments", wrong), 401, "NOTICE_MISMATCH")
        locked = await client.request("POST", "/v1/enrollments", entries)
        _is_error(locked, 423, "APPLICATION_LOCKED")
        assert "Retry-After" not in locked.headers  # only an operator lifts a lockout: waiting does not


async def test_a_service_throttle_is_429_with_the_retry_after_it_named(stack: GatewayStack) -> None:
    """The enrollment service throttles step 1 per client address (20 failures in 10 minutes here): the 21st
    attempt is RESOURCE_EXHAUSTED TOO_MANY_ATTEMPTS with retry_after_seconds=600 in its ErrorInfo metadata, and
    the gateway answers 429 with `Retry-After: 600` (the rate limits of the gateway itself are off here)."""
    async with stack.client() as client:
        for _ in range(20):
            unknown = {
                "branch_code": "001",
                "account_type": "ordinary",
                "account_number": f"{uuid.uuid4().int % 10**7:07d}",
                "temporary_login_password": "Wrong0000",
                "temporary_confirmation_password": "Wrong0000",
            }
            _is_error(await client.request("POST", "/v1/enrollments", unknown), 401, "NOTICE_MISMATCH")
        throttled = await client.request("POST", "/v1/enrollments", unknown)
    _is_error(throttled, 429, "TOO_MANY_ATTEMPTS")
    assert throttled.headers["Retry-After"] == "600"


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ({"retry_after_seconds": "600"}, "600"),
        ({"retry_after": "12"}, "12"),  # the OTP service's RATE_LIMITED
        ({"retry_after_seconds": "0.2"}, "1"),
        ({"retry_after_seconds": "soon"}, str(THROTTLED_RETRY_AFTER_SECONDS)),
        ({}, str(THROTTLED_RETRY_AFTER_SECONDS)),
    ],
)
def test_every_429_has_a_retry_after(metadata: dict[str, str], expected: str) -> None:
    """Retry-After on a 429 is the whole seconds (at least 1) the service named in ErrorInfo metadata, or a
    minute when it named none: a 429 never goes out without one."""
    assert retry_after(metadata) == expected


async def test_idempotency_key_is_validated_and_replays_the_first_answer(stack: GatewayStack) -> None:
    """An Idempotency-Key that is not 1-128 visible ASCII characters is 400 naming the header; a retry with the
    same key returns the same enrollment, without the session token a second time."""
    entries, _ = await stack.register_application()
    async with stack.client() as client:
        for bad in ("x" * 129, "has space"):
            answer = await client.request("POST", "/v1/enrollments", entries, headers={"Idempotency-Key": bad})
            _is_error(answer, 400, "INVALID_IDEMPOTENCY_KEY")
            assert "Idempotency-Key" in answer.body["error"]["fields"]
        key = {"Idempotency-Key": uuid.uuid4().hex}
        first = await client.request("POST", "/v1/enrollments", entries, headers=key)
        again = await client.request("POST", "/v1/enrollments", entries, headers=key)
    assert first.status == again.status == 201
    assert first.body["enrollment_id"] == again.body["enrollment_id"]
    assert first.body["session_token"]
    assert again.body["session_token"] == ""


async def test_request_id_is_echoed_or_made(stack: GatewayStack) -> None:
    """A well-formed X-Request-Id comes back unchanged; without one (or with a malformed one) a new one is made."""
    async with stack.client() as client:
        answer = await client.request("GET", "/healthz", headers={"X-Request-Id": "trace-123.abc"})
        assert answer.headers["X-Request-Id"] == "trace-123.abc"
        answer = await client.request("GET", "/healthz", headers={"X-Request-Id": "bad id\t"})
        assert answer.headers["X-Request-Id"] != "bad id\t"
        assert len(answer.headers["X-Request-Id"]) == 32


async def test_backend_down_is_503_without_internal_detail(stack: GatewayStack) -> None:
    """With the enrollment service stopped, step 1 answers 503 with Retry-After and a message naming no address."""
    entries, _ = await stack.register_application()
    await stack.stop("enrollment")
    async with stack.client() as client:
        answer = await client.request("POST", "/v1/enrollments", entries)
    _is_error(answer, 503)
    assert answer.headers["Retry-After"] == "1"

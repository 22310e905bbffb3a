"""Fuzzing the gateway from its own /openapi.json with schemathesis: for every operation, schema-valid and
schema-violating requests (bounded: a few examples each) find no 5xx, answers that match the document (status
codes, content types, JSON schemas), schema violations rejected, and no enrollment that moves on a rejected
request. The requests carry a real session token and a real client certificate half of the time, so they reach
past authentication into the services."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.generation.meta import ParameterLocation

from tests.integration.gateway.gateway_support import GatewayCustomer, GatewayStack, open_gateway_stack

T = TypeVar("T")
EXAMPLES_PER_OPERATION = int(__import__("os").environ.get("FUZZ_N", "6"))
REJECTED = {400, 404, 405, 409, 413, 415}


@schemathesis.serializer("application/ocsp-request")
def _ocsp_request_bytes(context: Any, value: Any) -> bytes:
    """OCSP requests are DER: the generated binary goes as it is (text as its UTF-8)."""
    return value if isinstance(value, bytes) else str(value).encode()


class LoopThread:
    """Runs the stack's event loop in a thread, since schemathesis calls the API synchronously."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="gateway-stack", daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Wait for `coroutine` to finish on the stack's loop."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=120)

    def close(self) -> None:
        """Stop the loop and the thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


@dataclass
class FuzzTarget:
    """The running stack and two enrollments the fuzzer aims at: one with a session token, one
    with a client certificate."""

    stack: GatewayStack
    session_customer: GatewayCustomer
    certificate_customer: GatewayCustomer
    document: dict[str, Any]

    def transport(self, with_certificate: bool) -> dict[str, Any]:
        """Return how requests reaches the gateway: the root to trust, the customer certificate if asked."""
        options: dict[str, Any] = {"verify": str(self.stack.root_file)}
        if with_certificate:
            certificate = self.certificate_customer.certificate
            assert certificate is not None
            options["cert"] = (str(certificate.cert_file), str(certificate.key_file))
        return options

    def states(self) -> list[tuple[str, str | None, str | None]]:
        """Read both enrollments back (state, next step, expiry) through the gateway."""
        result = []
        for customer in (self.session_customer, self.certificate_customer):
            # Step 4 retired the certificate customer's session token: its certificate reads the enrollment.
            by_certificate = customer is self.certificate_customer
            answer = requests.get(
                f"{self.stack.https_url}/v1/enrollments/{customer.enrollment_id}",
                headers={} if by_certificate else {"Authorization": f"Bearer {customer.session}"},
                timeout=30,
                **self.transport(by_certificate),
            )
            assert answer.status_code == 200, answer.text
            body = answer.json()
            result.append((body["state"], body["next_step"], body["expires_at"]))
        return result


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzTarget]:
    """Start the stack on its own loop, makes the two enrollments and load /openapi.json."""
    runner = LoopThread()
    directory: Path = tmp_path_factory.mktemp("fuzz")
    stack = runner.run(open_gateway_stack(directory))
    try:
        session_customer = runner.run(_at_step1(stack))
        certificate_customer = runner.run(GatewayCustomer(stack).through_step4())
        document = requests.get(f"{stack.https_url}/openapi.json", verify=str(stack.root_file), timeout=10).json()
        yield FuzzTarget(stack, session_customer, certificate_customer, document)
    finally:
        runner.run(stack.close())
        runner.close()


async def _at_step1(stack: GatewayStack) -> GatewayCustomer:
    entries, _ = await stack.register_application()
    async with stack.client() as client:
        answer = await client.request("POST", "/v1/enrollments", entries)
    return GatewayCustomer(stack, enrollment_id=answer.body["enrollment_id"], session=answer.body["session_token"])


def _aim(target: FuzzTarget, case: Any, real: bool, use_certificate_customer: bool) -> bool:
    """_aim points half of the cases at a real enrollment with its real credential; returns whether to present
    the client certificate. A part the generator made schema-violating on purpose is left as it is, so a
    negative case stays negative."""
    if not real:
        return False
    customer = target.certificate_customer if use_certificate_customer else target.session_customer
    if case.path_parameters and "id" in case.path_parameters and not case.meta.is_negative_at(ParameterLocation.PATH):
        case.path_parameters["id"] = customer.enrollment_id
    if not use_certificate_customer and not case.meta.is_negative_at(ParameterLocation.HEADER):
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {customer.session}"}
    return use_certificate_customer


def _fuzz(target: FuzzTarget, operation: Any, mode: GenerationMode) -> int:
    """_fuzz runs a few examples of one operation in one generation mode; returns how many ran."""
    checks = [not_a_server_error, status_code_conformance, content_type_conformance]
    checks.append(response_schema_conformance if mode is GenerationMode.POSITIVE else negative_data_rejection)
    ran = 0

    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode), real=st.booleans(), cert=st.booleans())
    def run(case: Any, real: bool, cert: bool) -> None:
        nonlocal ran
        with_certificate = _aim(target, case, real, cert)
        before = target.states()
        response = case.call(base_url=target.stack.https_url, timeout=30, **target.transport(with_certificate))
        assert response.status_code < 500, (case.method, case.path, response.status_code, response.text)
        # 413 (a schema-violating body over 64 KiB) is a rejection too, one schemathesis does not list.
        applied = [c for c in checks if not (c is negative_data_rejection and response.status_code == 413)]
        case.validate_response(response, checks=applied)
        if response.status_code in REJECTED:
            assert target.states() == before, (case.method, case.path, response.status_code, response.text)
        ran += 1

    try:
        run()
    except Unsatisfiable:
        # An operation whose every input is schema-valid (GET /healthz) has no negative example to make.
        assert mode is GenerationMode.NEGATIVE, operation.label
    return ran


def test_fuzzing_from_the_openapi_document_finds_no_5xx_and_changes_nothing_when_rejecting(
    target: FuzzTarget,
) -> None:
    """Every operation, positive and negative examples: never 5xx, conformant answers, negative data refused,
    and the two enrollments unchanged after every rejected request."""
    schema = schemathesis.openapi.from_dict(target.document)
    operations = [result.ok() for result in schema.get_all_operations()]
    ran = sum(_fuzz(target, operation, mode) for operation in operations for mode in GenerationMode)
    assert ran >= len(operations) * 2

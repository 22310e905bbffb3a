"""The gateway's OCSP response cache, against the real CA over mTLS: a nonce-less request is answered again with no
call to the CA, whatever its encoding (GET, POST, another DER form of the same CertID); a revocation reaches the
cached answer within two seconds; a request with a nonce always goes to the CA and gets its nonce back; while
the revocation stream is down every answer comes from the CA; `openssl ocsp -no_nonce` accepts a cached answer;
the cache keeps no more CertIDs than it is allowed, and nothing close to its nextUpdate.

Calls reaching the CA are counted by gRPC core itself: channelz's count of calls started on the CA's server."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
import urllib.parse
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from grpc._cython import cygrpc  # channelz: gRPC core's own call counters (no public Python API reads them)
from multidict import CIMultiDictProxy

from kagi.clock import FakeClock
from tests.integration.gateway.gateway_support import GatewayCustomer, GatewayStack, open_gateway_stack
from tests.support.ports import stable_port
from tests.support.tools import tool

SHA1_WITH_NULL = bytes.fromhex("300906052b0e03021a0500")
SHA1_WITHOUT_PARAMETERS = bytes.fromhex("300706052b0e03021a")


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[GatewayStack]:
    """Return the services and the gateway, the CA on a fixed port (channelz names its listener by port)."""
    running = await open_gateway_stack(tmp_path, ca_port=stable_port())
    yield running
    await running.close()


class Certificate:
    """A customer certificate the CA issued through the gateway, its issuer, and OCSP requests for it."""

    def __init__(self, customer: GatewayCustomer, issuer: x509.Certificate) -> None:
        assert customer.certificate is not None
        self.files = customer.certificate
        self.serial_hex = customer.serial_hex
        self.leaf = x509.load_pem_x509_certificates(customer.certificate.cert_file.read_bytes())[0]
        self.issuer = issuer

    def request(self, *, nonce: bytes | None = None, algorithm: hashes.HashAlgorithm | None = None) -> bytes:
        """Return a DER OCSP request for this certificate (SHA-1 CertID unless told, as RFC 5019 has it)."""
        builder = ocsp.OCSPRequestBuilder().add_certificate(
            self.leaf,
            self.issuer,
            algorithm or hashes.SHA1(),  # noqa: S303 - the CertID hash RFC 5019 requires; it names, it does not sign
        )
        if nonce is not None:
            builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
        return builder.build().public_bytes(serialization.Encoding.DER)


async def _certificate(stack: GatewayStack) -> Certificate:
    customer = await GatewayCustomer(stack).through_step4()
    async with aiohttp.ClientSession() as session, session.get(f"{stack.http_url}/pki/customer-ca.pem") as response:
        issuer = x509.load_pem_x509_certificate(await response.read())
    return Certificate(customer, issuer)


def ca_calls(stack: GatewayStack) -> int:
    """Return how many calls the CA's gRPC server has started, as gRPC core counts them (channelz)."""
    listener = f":{stack.components['ca'].port}"
    servers = json.loads(cygrpc.channelz_get_servers(0)).get("server", [])
    ours = [s for s in servers if any(socket["name"].endswith(listener) for socket in s.get("listenSocket", []))]
    assert ours, f"no gRPC server listens on {listener}"
    # The newest one: after a restart the stopped server may linger in channelz until it is collected.
    newest = max(ours, key=lambda server: int(server["ref"]["serverId"]))
    return int(newest["data"].get("callsStarted", 0))


class Ask:
    """An OCSP client on the gateway's plain-HTTP port (where certificates' AIA URLs point)."""

    def __init__(self, stack: GatewayStack, session: aiohttp.ClientSession) -> None:
        self.url = f"{stack.http_url}/pki/ocsp"
        self.session = session

    async def post(self, der: bytes) -> tuple[int, CIMultiDictProxy[str], bytes]:
        """POST the request DER; return status, headers, body."""
        headers = {"Content-Type": "application/ocsp-request"}
        async with self.session.post(self.url, data=der, headers=headers) as response:
            return response.status, response.headers, await response.read()

    async def get(self, der: bytes) -> tuple[int, CIMultiDictProxy[str], bytes]:
        """GET the request base64- and URL-encoded in the path (RFC 5019); return status, headers, body."""
        path = urllib.parse.quote(base64.b64encode(der).decode(), safe="")
        async with self.session.get(f"{self.url}/{path}") as response:
            return response.status, response.headers, await response.read()


@pytest.fixture
async def ask(stack: GatewayStack) -> AsyncIterator[Ask]:
    """Return an OCSP client for the gateway's plain-HTTP port."""
    async with aiohttp.ClientSession() as session:
        yield Ask(stack, session)


def _status(body: bytes) -> ocsp.OCSPCertStatus:
    parsed = ocsp.load_der_ocsp_response(body)
    assert parsed.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    return parsed.certificate_status


def _assert_cache_headers(headers: CIMultiDictProxy[str], body: bytes) -> None:
    """Check the RFC 5019 section 6 headers: Last-Modified, Expires, max-age up to nextUpdate, ETag (SHA-1)."""
    parsed = ocsp.load_der_ocsp_response(body)
    assert parsed.next_update_utc is not None
    assert parsedate_to_datetime(headers["Last-Modified"]) == parsed.this_update_utc
    assert parsedate_to_datetime(headers["Expires"]) == parsed.next_update_utc
    control = headers["Cache-Control"]
    assert {"public", "no-transform", "must-revalidate"} <= {part.strip() for part in control.split(",")}
    max_age = int(re.search(r"max-age=(\d+)", control).group(1))  # type: ignore[union-attr]
    assert 0 < max_age <= (parsed.next_update_utc - datetime.now(UTC)).total_seconds() + 1
    assert headers["ETag"].strip('"')


def _other_encoding(der: bytes) -> bytes:
    """Return DER with the CertID's SHA-1 AlgorithmIdentifier written without its NULL parameters.

    Both forms are valid (RFC 5754 section 2): the same CertID in other bytes. Every enclosing SEQUENCE (request,
    TBSRequest, requestList, Request, CertID) is two bytes shorter; all of them use short-form lengths here.
    """
    assert der.count(SHA1_WITH_NULL) == 1
    at = der.index(SHA1_WITH_NULL)
    out = bytearray(der.replace(SHA1_WITH_NULL, SHA1_WITHOUT_PARAMETERS))
    position = 0
    while position < at:  # walk down the SEQUENCEs that enclose the AlgorithmIdentifier
        assert out[position] == 0x30
        assert out[position + 1] < 0x80
        out[position + 1] -= 2
        position += 2
    assert position == at
    shorter = bytes(out)
    assert ocsp.load_der_ocsp_request(shorter).serial_number == ocsp.load_der_ocsp_request(der).serial_number
    return shorter


async def test_a_repeated_nonce_less_request_is_answered_without_the_ca(stack: GatewayStack, ask: Ask) -> None:
    """The first nonce-less POST goes to the CA; the same request again is answered with no call to the CA, with
    the same signed bytes and the same caching headers (Last-Modified, Expires, max-age, ETag)."""
    certificate = await _certificate(stack)
    request = certificate.request()
    before = ca_calls(stack)
    status, first_headers, first = await ask.post(request)
    assert status == 200
    assert ca_calls(stack) == before + 1
    assert _status(first) is ocsp.OCSPCertStatus.GOOD
    _assert_cache_headers(first_headers, first)

    status, headers, again = await ask.post(request)
    assert status == 200
    assert ca_calls(stack) == before + 1, "the repeated request reached the CA"
    assert again == first
    _assert_cache_headers(headers, again)
    for name in ("ETag", "Last-Modified", "Expires", "Content-Type"):
        assert headers[name] == first_headers[name], name


async def test_get_post_and_other_encodings_of_one_cert_id_share_an_entry(stack: GatewayStack, ask: Ask) -> None:
    """A POST fills the entry; an RFC 5019 GET of the same request, and a GET and a POST of the same CertID in
    other DER bytes (SHA-1 without NULL parameters) are answered from it; a SHA-256 CertID is another entry."""
    certificate = await _certificate(stack)
    request = certificate.request()
    before = ca_calls(stack)
    _, _, first = await ask.post(request)
    assert ca_calls(stack) == before + 1

    other = _other_encoding(request)
    assert other != request
    for send, der in ((ask.get, request), (ask.get, other), (ask.post, other)):
        status, headers, body = await send(der)
        assert status == 200
        assert body == first
        _assert_cache_headers(headers, body)
    assert ca_calls(stack) == before + 1, "a GET or another encoding of the cached CertID reached the CA"

    sha256 = certificate.request(algorithm=hashes.SHA256())
    status, _, body = await ask.get(sha256)
    assert (status, _status(body)) == (200, ocsp.OCSPCertStatus.GOOD)
    assert ca_calls(stack) == before + 2


async def test_a_revocation_reaches_the_cached_answer_within_two_seconds(stack: GatewayStack, ask: Ask) -> None:
    """Once the answer "good" is cached, revoking the certificate at the CA makes the gateway answer "revoked"
    (keyCompromise, with its caching headers) within 2 s: the revocation stream drops the cached answer."""
    certificate = await _certificate(stack)
    request = certificate.request()
    await ask.post(request)
    before = ca_calls(stack)
    _, _, cached = await ask.get(request)
    assert _status(cached) is ocsp.OCSPCertStatus.GOOD
    assert ca_calls(stack) == before, "the answer was not cached to begin with"

    await stack.revoke(certificate.serial_hex)
    revoked_at = time.monotonic()
    while True:
        status, headers, body = await ask.get(request)
        assert status == 200
        if _status(body) is ocsp.OCSPCertStatus.REVOKED:
            break
        assert time.monotonic() - revoked_at < 2.0, "the gateway still answers good 2 s after the revocation"
        await asyncio.sleep(0.02)
    assert ocsp.load_der_ocsp_response(body).revocation_reason is x509.ReasonFlags.key_compromise
    _assert_cache_headers(headers, body)


async def test_a_request_with_a_nonce_goes_to_the_ca_and_gets_its_nonce(stack: GatewayStack, ask: Ask) -> None:
    """With a cached answer for the CertID, a request carrying a nonce still goes to the CA each time, and each
    answer echoes that request's nonce and is marked no-cache; the cached nonce-less answer carries no nonce."""
    certificate = await _certificate(stack)
    await ask.post(certificate.request())
    for nonce, send in ((b"\x01" * 16, ask.post), (b"\x02" * 32, ask.get)):
        before = ca_calls(stack)
        status, headers, body = await send(certificate.request(nonce=nonce))
        assert status == 200
        assert ca_calls(stack) == before + 1, "a request with a nonce was answered without the CA"
        answer = ocsp.load_der_ocsp_response(body)
        assert answer.certificate_status is ocsp.OCSPCertStatus.GOOD
        assert answer.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce
        assert headers["Cache-Control"] == "no-cache"

    before = ca_calls(stack)
    _, _, body = await ask.post(certificate.request())
    assert ca_calls(stack) == before
    assert not any(isinstance(ext.value, x509.OCSPNonce) for ext in ocsp.load_der_ocsp_response(body).extensions)


async def test_while_the_revocation_stream_is_down_answers_come_from_the_ca(stack: GatewayStack, ask: Ask) -> None:
    """With "good" cached: once the gateway's revocation stream is closed, every nonce-less request goes to the
    CA, so a revocation made meanwhile (which no stream reports) is answered at once; with the CA stopped as well,
    the answer is tryLater (503), not the cached one; the stream back, answers are cached again."""
    certificate, bystander = await _certificate(stack), await _certificate(stack)
    request = certificate.request()
    await ask.post(request)
    before = ca_calls(stack)
    await ask.post(request)
    assert ca_calls(stack) == before, "the answer was not cached to begin with"

    registry = stack.gateway.context.revocation
    await registry.stop()
    assert not registry.live
    await stack.revoke(certificate.serial_hex)
    before = ca_calls(stack)
    for send in (ask.post, ask.get):
        status, _, body = await send(request)
        assert (status, _status(body)) == (200, ocsp.OCSPCertStatus.REVOKED)
    assert ca_calls(stack) == before + 2, "a request was answered from the cache while the stream was down"

    await registry.start(wait=5)
    assert registry.live
    _, _, first = await ask.post(request)
    assert _status(first) is ocsp.OCSPCertStatus.REVOKED

    # A CA that stopped takes the stream down with it: the gateway notices, and from then on nothing is served
    # from the cache, not even the revoked answer.
    await stack.stop("ca")
    deadline = time.monotonic() + 5
    while registry.live:
        assert time.monotonic() < deadline, "the gateway did not notice that the stream was down"
        await asyncio.sleep(0.02)
    status, headers, body = await ask.post(request)
    assert status == 503
    assert headers["Retry-After"] == "1"
    assert ocsp.load_der_ocsp_response(body).response_status is ocsp.OCSPResponseStatus.TRY_LATER

    await stack.restart_ca()
    # The OTP and enrollment services follow the CA's stream too (to refuse revoked internal callers) and call the
    # CA while theirs is down: the CA's call count means the gateway's alone once every follower is back.
    followers = [registry] + [
        peers.registry for name in ("otp", "enrollment") if (peers := stack.components[name].peers) is not None
    ]
    deadline = time.monotonic() + 10
    while not all(follower.live for follower in followers):
        assert time.monotonic() < deadline, "the revocation stream did not come back"
        await asyncio.sleep(0.05)
    # Another certificate: answers for one revoked in the last seconds are not kept (a CA replica may lag).
    await ask.post(bystander.request())
    before = ca_calls(stack)
    status, _, body = await ask.post(bystander.request())
    assert (status, _status(body)) == (200, ocsp.OCSPCertStatus.GOOD)
    assert ca_calls(stack) == before, "answers are not cached again once the stream is back"


async def test_openssl_accepts_the_cached_answer(stack: GatewayStack) -> None:
    """`openssl ocsp -no_nonce` against the gateway's plain-HTTP URL, run twice (the second answer from the cache,
    with no call to the CA), verifies each response against the root and reads "good"."""
    certificate = await _certificate(stack)
    work = stack.workdir
    leaf, issuer = work / "leaf.pem", work / "issuer.pem"
    leaf.write_bytes(certificate.leaf.public_bytes(serialization.Encoding.PEM))
    issuer.write_bytes(certificate.issuer.public_bytes(serialization.Encoding.PEM))
    argv = [tool("openssl"), "ocsp", "-issuer", str(issuer), "-cert", str(leaf), "-url", f"{stack.http_url}/pki/ocsp"]
    argv += ["-no_nonce", "-CAfile", str(stack.root_file), "-resp_text"]

    first = await _openssl(argv)
    before = ca_calls(stack)
    second = await _openssl(argv)
    assert ca_calls(stack) == before, "openssl's second request reached the CA"
    for output in (first, second):
        assert f"{leaf}: good" in output, output
        assert "Response verify OK" in output, output  # openssl's verdict on the signature and the chain
    assert "OCSP Nonce" not in second


async def _openssl(argv: list[str]) -> str:
    """Run openssl; return what it printed on stdout and stderr (its verdict goes to stderr)."""
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await process.communicate()
    assert process.returncode == 0, output.decode(errors="replace")
    return output.decode(errors="replace")


async def test_the_cache_keeps_at_most_its_size_in_cert_ids(tmp_path: Path) -> None:
    """With KAGI_GATEWAY_OCSP_CACHE_SIZE 1, a second certificate's answer pushes the first one's out: asking for
    the first again goes to the CA, then is answered from the cache again."""
    stack = await open_gateway_stack(tmp_path, ca_port=stable_port(), ocsp_cache_size=1)
    try:
        async with aiohttp.ClientSession() as session:
            ask = Ask(stack, session)
            one, two = await _certificate(stack), await _certificate(stack)
            start = ca_calls(stack)
            for certificate, calls_after in ((one, 1), (one, 1), (two, 2), (two, 2), (one, 3), (one, 3)):
                status, _, body = await ask.post(certificate.request())
                assert (status, _status(body)) == (200, ocsp.OCSPCertStatus.GOOD)
                assert ca_calls(stack) - start == calls_after
    finally:
        await stack.close()


async def test_an_answer_close_to_its_next_update_is_not_kept(tmp_path: Path) -> None:
    """An answer whose nextUpdate is a minute away (the CA's clock an hour less a minute behind: its answers
    are valid for an hour) is served with max-age up to that minute but never from the cache: each request goes
    to the CA, which is how a cached answer gets refreshed before its nextUpdate."""
    clock = FakeClock(time.time() - 3600 + 60)
    stack = await open_gateway_stack(tmp_path, ca_port=stable_port(), clock=clock)
    try:
        async with aiohttp.ClientSession() as session:
            ask = Ask(stack, session)
            certificate = await _certificate(stack)
            request = certificate.request()
            start = ca_calls(stack)
            for calls_after in (1, 2, 3):
                status, headers, body = await ask.post(request)
                assert (status, _status(body)) == (200, ocsp.OCSPCertStatus.GOOD)
                next_update = ocsp.load_der_ocsp_response(body).next_update_utc
                assert next_update is not None
                assert (next_update - datetime.now(UTC)).total_seconds() < 90
                _assert_cache_headers(headers, body)
                assert ca_calls(stack) - start == calls_after
    finally:
        await stack.close()

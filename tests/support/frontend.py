"""The front-end boundary as the tests play it: a running stack on a fake clock, a bank front-end's own mTLS
identity (`frontend`, certified by the internal CA at the operator's request), reading a refusal's ErrorInfo,
and verifying kagi's tokens offline with a second JOSE library (joserfc), as a bank front-end would."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from joserfc import jwt
from joserfc.jwk import KeySet

from kagi.clock import FakeClock
from kagi.enrollment.v1 import user_pb2 as upb
from kagi.enrollment.v1 import user_pb2_grpc
from kagi.runtime.grpc_client import error_from_rpc, open_channel
from kagi.runtime.settings import TlsFiles
from tests.support.enrollment_flow import Customer, Stack, code_for, open_stack
from tests.support.identities import issue_internal_identity

FRONTEND = "frontend"
"""The role name a bank front-end's stub is cached under (`customer.users(FRONTEND)`)."""


@asynccontextmanager
async def running_stack(state_dir: Path, clock: FakeClock) -> AsyncIterator[Stack]:
    """Return CA, OTP and enrollment over mTLS on `clock`, with real SMTP; stopped on exit."""
    stack = await open_stack(state_dir, clock=clock)
    try:
        yield stack
    finally:
        await stack.close()
        stack.smtp.stop()


async def completed(stack: Stack, workdir: Path, clock: FakeClock) -> Customer:
    """Return a customer who took all ten steps (the first code was the app's code at the clock's now)."""
    return await Customer(stack, _new_directory(workdir / uuid.uuid4().hex[:8])).complete(clock.now())


def _new_directory(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def next_code(customer: Customer, clock: FakeClock) -> str:
    """Move the clock to the next 60-second step and answers the app's code there (codes are single
    use per step)."""
    clock.advance(60)
    return code_for(customer.secret, clock.now())


def wrong_code(customer: Customer, clock: FakeClock) -> str:
    """Return a 6-digit code the app shows in no step near now (not even an expired one)."""
    near = {code_for(customer.secret, clock.now() + 60 * step) for step in range(-15, 4)}
    return next(c for c in (f"{n:06d}" for n in range(100_000, 1_000_000, 7919)) if c not in near)


def self_signed_client_certificate() -> str:
    """Return a client-auth certificate of no CA of the bank's, PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "self-signed customer")])
    now = time.time()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime.fromtimestamp(now - 3600, dt.UTC))
        .not_valid_after(dt.datetime.fromtimestamp(now + 86400, dt.UTC))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


@dataclass(frozen=True)
class Frontend:
    """A bank front-end's mTLS identity and its certificate (PEM)."""

    tls: TlsFiles
    certificate_pem: str


async def issue_frontend(stack: Stack, directory: Path) -> Frontend:
    """Have the operator certify a new key as `frontend` (internal CA) and cach a UserService
    channel with it on the stack, so `customer.users(FRONTEND)` calls as the front-end (closed with the stack)."""
    tls = await issue_internal_identity(stack.ca(), FRONTEND, directory, stack.tls_dir / "ca.pem")
    stack.channels[("enrollment", FRONTEND)] = open_channel(stack.targets["enrollment"], tls, server_name="localhost")
    leaf = x509.load_pem_x509_certificates(tls.cert_file.read_bytes())[0]
    return Frontend(tls, leaf.public_bytes(serialization.Encoding.PEM).decode())


def _write_identity(directory: Path, chain_pem: str, key_pem: bytes, tls_dir: Path) -> TlsFiles:
    """The front-end's certificate chain and key as the mTLS files a channel reads (the root from the stack)."""
    _new_directory(directory)
    cert_file, key_file = directory / "frontend.pem", directory / "frontend-key.pem"
    cert_file.write_text(chain_pem)
    key_file.write_bytes(key_pem)
    key_file.chmod(0o600)
    return TlsFiles(cert_file, key_file, tls_dir / "ca.pem")


def frontend_users(stack: Stack) -> user_pb2_grpc.UserServiceStub:
    """Return the UserService stub of the front-end `issue_frontend` made."""
    return user_pb2_grpc.UserServiceStub(stack.channels[("enrollment", FRONTEND)])


def spiffe_id(certificate_file: Path) -> str:
    """Return the URI SAN of an internal certificate (the first one in the file)."""
    certificate = x509.load_pem_x509_certificate(certificate_file.read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    (uri,) = names.get_values_for_type(x509.UniformResourceIdentifier)
    return str(uri)


@dataclass(frozen=True)
class Refusal:
    """How a call failed: status code, message, and the ErrorInfo/BadRequest details."""

    code: grpc.StatusCode
    message: str
    reason: str
    metadata: dict[str, str]
    fields: dict[str, str]


async def refused(call: Awaitable[object]) -> Refusal:
    """Await a call that must fail and answers how it failed."""
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        error = error_from_rpc(exc)
        return Refusal(exc.code(), exc.details() or "", error.reason, dict(error.metadata), dict(error.fields))
    raise AssertionError("the call succeeded but should have been refused")


def b64url(data: bytes) -> str:
    """Return base64url without padding (RFC 7515 section 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def x5t_s256(certificate_pem: str) -> str:
    """Return RFC 8705's thumbprint of a certificate: base64url(SHA-256(DER))."""
    der = x509.load_pem_x509_certificate(certificate_pem.encode()).public_bytes(serialization.Encoding.DER)
    return b64url(hashlib.sha256(der).digest())


@dataclass(frozen=True)
class VerifiedToken:
    """A JWT joserfc verified: its protected header and its claims."""

    header: dict[str, Any]
    claims: dict[str, Any]


async def jwks(stack: Stack, role: str = "gateway") -> dict[str, Any]:
    """Return the JWK Set GetJwks answers, parsed."""
    reply = await user_pb2_grpc.UserServiceStub(stack._channel("enrollment", role)).GetJwks(upb.GetJwksRequest())
    parsed: dict[str, Any] = json.loads(reply.jwks_json)
    return parsed


def verify_token(token: str, jwk_set: dict[str, Any], now: float) -> VerifiedToken:
    """Check a kagi JWT with joserfc (not the server's PyJWT): ES256 only, signed by the key its
    `kid` names (whose RFC 7638 thumbprint is that kid), `aud` kagi, and not expired at `now`."""
    keys = KeySet.import_key_set(cast(Any, jwk_set))
    decoded = jwt.decode(token, keys, algorithms=["ES256"])
    header, claims = dict(decoded.header), dict(decoded.claims)
    assert header["alg"] == "ES256"
    key = keys.get_by_kid(header["kid"])
    assert key.thumbprint() == header["kid"], "kid is not the key's RFC 7638 thumbprint"
    registry = jwt.JWTClaimsRegistry(
        now=int(now),
        aud={"essential": True, "value": "kagi"},
        sub={"essential": True},
        iat={"essential": True},
        exp={"essential": True},
    )
    registry.validate(claims)
    return VerifiedToken(header, claims)

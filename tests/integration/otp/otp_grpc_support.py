"""Helpers of the OTP service tests (not tests themselves): store backends, servers, clients, oathtool codes."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import redis.asyncio as aioredis
from google.rpc import error_details_pb2, status_pb2
from grpc_status.rpc_status import GRPC_DETAILS_METADATA_KEY

from kagi.clock import FakeClock
from kagi.otp.v1 import otp_pb2 as pb
from kagi.otp.v1 import otp_pb2_grpc
from kagi.passwords import Argon2Parameters, PasswordHasher, Pepper
from kagi.runtime.grpc_client import open_channel
from kagi.runtime.settings import ListenSettings, Secret, TlsFiles
from services.otp_service.domain import KeyEncryptionKey, OtpPolicy
from services.otp_service.domain.totp import hotp, time_step
from services.otp_service.main import OtpComponent, OtpSettings, start_otp
from tests.support.tools import run, tool

NOW = 1_800_000_030.0
"""Where the tests' fake clocks start: the middle of a 60-second step."""
PEPPER = b"pepper-for-the-otp-service-tests!"
"""The tests' 33-byte pepper."""
KEK_1 = KeyEncryptionKey("k1", bytes(range(32)))
"""The first test key-encryption key."""
KEK_2 = KeyEncryptionKey("k2", bytes(range(100, 132)))
"""The key KEK_1 is rotated to."""
USAGE_START_PASSWORD = "482916"
"""The usage-start password tokens are created with."""
ROLES = ("ca", "otp", "enrollment", "gateway", "operator", "frontend")
"""The SPIFFE roles that get a test certificate."""
# The password hash only has to behave like argon2id here, not cost what production pays.
CHEAP_HASHER = PasswordHasher([Pepper("p1", PEPPER)], Argon2Parameters(time_cost=1, memory_cost_kib=256))
"""A peppered argon2id hasher at test cost."""


@dataclass
class Backend:
    """One store for a test: its URL for the service, and raw access for inspecting what it holds."""

    kind: str
    url: str
    state_dir: Path
    namespace: str

    @property
    def sqlite_file(self) -> Path:
        """Return the SQLite database the service writes (for the sqlite backend)."""
        return self.state_dir / f"{self.namespace}.db"

    async def snapshot(self) -> dict[str, bytes]:
        """Return every stored entry (name -> value with version), read around the driver; the version counter
        is left out, since a claimed-then-released request id moves it without changing any entry."""
        if self.kind == "sqlite":
            if not self.sqlite_file.exists():
                return {}
            with sqlite3.connect(self.sqlite_file) as conn:
                rows = conn.execute("SELECT collection, key, value, version FROM entries").fetchall()
            return {f"{c}/{k}": bytes(v) + f"@{n}".encode() for c, k, v, n in rows}
        client = aioredis.from_url(self.url)
        try:
            out: dict[str, bytes] = {}
            async for name in self._names(client):
                key = name.decode()
                if key.endswith(":version"):
                    continue
                kind = (await client.type(name)).decode()
                if kind == "hash":
                    fields = await client.hgetall(name)
                    out[key] = b"|".join(k + b"=" + v for k, v in sorted(fields.items()))
                elif kind == "zset":
                    out[key] = b"|".join(await client.zrange(name, 0, -1))
                else:
                    out[key] = kind.encode()
            return out
        finally:
            await client.aclose()

    async def _names(self, client: aioredis.Redis) -> AsyncIterator[bytes]:
        """Yield every Redis key of the namespace: service-wide (`kagi:{ns}:...`) and spread per token
        (`kagi:{ns:<bucket>}:...`)."""
        for pattern in (f"kagi:{{{self.namespace}}}:*", f"kagi:{{{self.namespace}:*"):
            async for name in client.scan_iter(match=pattern, count=1000):
                yield name

    async def raw_bytes(self) -> bytes:
        """Return everything the store holds for this namespace as bytes on disk or in Redis values.

        SQLite: the database file and its write-ahead log, byte for byte. Redis: every key's name and value,
        plus the append-only files when the server's directory is on this machine.
        """
        if self.kind == "sqlite":
            parts = [p.read_bytes() for p in self.state_dir.glob(f"{self.namespace}.db*") if p.is_file()]
            assert parts, "the SQLite store wrote no file"
            return b"".join(parts)
        client = aioredis.from_url(self.url)
        try:
            values: list[bytes] = []
            async for name in self._names(client):
                values.append(name)
                kind = (await client.type(name)).decode()
                if kind == "hash":
                    for k, v in (await client.hgetall(name)).items():
                        values += [k, v]
                elif kind == "zset":
                    values += await client.zrange(name, 0, -1)
                elif kind == "string":
                    values.append(await client.get(name) or b"")
            assert values, "the Redis store holds no key for this namespace"
            configured = next(iter((await client.config_get("dir")).values()))
            directory = Path(configured.decode() if isinstance(configured, bytes) else configured)
            # A local server's append-only files hold every write it ever took, not just the live values.
            values += await asyncio.to_thread(_files_below, directory)
            return b"\x00".join(values)
        finally:
            await client.aclose()


def _files_below(directory: Path) -> list[bytes]:
    if not directory.is_dir():
        return []
    return [p.read_bytes() for p in directory.rglob("*") if p.is_file() and p.suffix != ".log"]


@dataclass
class OtpCluster:
    """Starts OTP servers on one store and opens clients to them; `close` stops them all."""

    backend: Backend
    identities: dict[str, TlsFiles]
    clock: FakeClock
    servers: list[OtpComponent] = field(default_factory=list)
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    def settings(
        self,
        *,
        policy: OtpPolicy | None = None,
        kek: KeyEncryptionKey = KEK_1,
        older: tuple[KeyEncryptionKey, ...] = (),
    ) -> OtpSettings:
        """Return a server's settings on this cluster's store (port 0, mTLS as the otp identity)."""
        return OtpSettings(
            listen=ListenSettings("127.0.0.1", 0, self.identities["otp"]),
            store_url=self.backend.url,
            state_dir=self.backend.state_dir,
            pepper=Secret(PEPPER),
            kek=kek,
            older_keks=older,
            policy=policy or OtpPolicy(issuer="Kagi Shinkumi"),
            namespace=self.backend.namespace,
        )

    async def start(self, settings: OtpSettings | None = None) -> OtpComponent:
        """Run one more server (a replica) on the store and return it."""
        server = await start_otp(settings or self.settings(), clock=self.clock, hasher=CHEAP_HASHER)
        self.servers.append(server)
        return server

    def stub(self, role: str, server: OtpComponent | None = None) -> otp_pb2_grpc.OtpServiceStub:
        """Return a client of `server` (the first one by default) with the internal identity of `role`."""
        target = server or self.servers[0]
        channel = open_channel(f"localhost:{target.port}", self.identities[role])
        self.channels.append(channel)
        return otp_pb2_grpc.OtpServiceStub(channel)

    async def stop(self, server: OtpComponent) -> None:
        """Stop one server."""
        self.servers.remove(server)
        await server.stop(0)

    async def close(self) -> None:
        """Close every channel and stop every server."""
        for channel in self.channels:
            await channel.close()
        for server in list(self.servers):
            await self.stop(server)


async def oathtool_code(secret_base32: str, when: float) -> str:
    """Return the code OATH Toolkit's oathtool computes for the seed at POSIX time `when`."""
    argv = [tool("oathtool"), "--totp=SHA1", "-s", "60", "-d", "6", "-b", secret_base32, "-N", f"@{int(when)}"]
    return (await run(argv)).strip()


def seed_bytes(secret_base32: str) -> bytes:
    """Return the raw seed behind its base32 text."""
    return base64.b32decode(secret_base32 + "=" * (-len(secret_base32) % 8))


def wrong_code(secret_base32: str, when: float) -> str:
    """Return a well-formed code that matches no step within twelve steps of `when`."""
    key = seed_bytes(secret_base32)
    current = time_step(when, 60)
    near = {hotp(key, current + d) for d in range(-12, 13)}
    return next(c for c in (f"{n:06d}" for n in range(10**6)) if c not in near)


@dataclass(frozen=True)
class RpcFailure:
    """What a failed call told the client: status code, message, ErrorInfo and field violations."""

    code: grpc.StatusCode
    message: str
    reason: str
    metadata: dict[str, str]
    fields: dict[str, str]


def failure_of(exc: grpc.aio.AioRpcError) -> RpcFailure:
    """Decode the rich status a kagi server sends with an error."""
    reason, metadata, fields = "", {}, {}
    for key, value in exc.trailing_metadata() or ():
        if key == GRPC_DETAILS_METADATA_KEY:
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    reason, metadata = info.reason, dict(info.metadata)
                elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    detail.Unpack(bad)
                    fields = {v.field: v.description for v in bad.field_violations}
    return RpcFailure(exc.code(), exc.details() or "", reason, metadata, fields)


async def failing(call: Awaitable[object]) -> RpcFailure:
    """Await a call that must fail and return how it failed."""
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return failure_of(exc)
    raise AssertionError("the call succeeded but should have failed")


@dataclass(frozen=True)
class Provisioned:
    """A token taken through steps 7-9 over gRPC, with the seed the app received."""

    token_id: str
    service_id: str
    app_user_id: str
    secret: str
    activation_id: str


async def create_pending(cluster: OtpCluster, *, user_id: str = "user-0001") -> pb.Token:
    """Create a token (step 7) over gRPC as the enrollment; it waits for activation."""
    created = await cluster.stub("enrollment").CreateToken(
        pb.CreateTokenRequest(
            user_id=user_id, delivery_email="taro@example.jp", usage_start_password=USAGE_START_PASSWORD
        )
    )
    return created.token


async def provision(cluster: OtpCluster, *, user_id: str = "user-0001", register: bool = True) -> Provisioned:
    """Create (enrollment), activates (gateway, for the app) and register a token over gRPC."""
    gateway = cluster.stub("enrollment")
    token = await create_pending(cluster, user_id=user_id)
    activated = await gateway.ActivateToken(
        pb.ActivateTokenRequest(
            service_id=token.service_id,
            app_user_id=token.app_user_id,
            usage_start_password=USAGE_START_PASSWORD,
            consent=True,
        )
    )
    if register:
        await gateway.ConfirmRegistration(
            pb.ConfirmRegistrationRequest(
                service_id=token.service_id,
                app_user_id=token.app_user_id,
                activation_id=activated.activation.activation_id,
            )
        )
    return Provisioned(
        token.token_id,
        token.service_id,
        token.app_user_id,
        activated.activation.secret,
        activated.activation.activation_id,
    )


async def gather_outcomes(calls: list[Callable[[], Awaitable[object]]]) -> list[str]:
    """Run calls concurrently and names each outcome: "OK" or the error's reason."""

    async def one(call: Callable[[], Awaitable[object]]) -> str:
        try:
            await call()
        except grpc.aio.AioRpcError as exc:
            return failure_of(exc).reason or exc.code().name
        return "OK"

    return list(await asyncio.gather(*(one(c) for c in calls)))


def with_policy(settings: OtpSettings, **changes: object) -> OtpSettings:
    """Return `settings` with some policy limits changed."""
    return dataclasses.replace(settings, policy=dataclasses.replace(settings.policy, **changes))  # type: ignore[arg-type]

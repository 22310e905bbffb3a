"""Wiring of the OTP service: settings from the environment, then store, seed vault, use cases, gRPC server.

Environment (secrets also as NAME_FILE, which keeps them out of the process table):

    KAGI_OTP_HOST / KAGI_OTP_PORT / KAGI_OTP_WORKERS   where to listen (127.0.0.1, 50052, 1 process)
    KAGI_OTP_TLS_CERT / _KEY / _CA                      mTLS files (KAGI_INSECURE_PLAINTEXT=1: loopback only)
    KAGI_STORE_URL / KAGI_STATE_DIR                     the store ("sqlite:", ".kagi")
    KAGI_CA_TARGET                                      the CA, whose revocation stream it follows to refuse a
                                                        revoked internal caller (localhost:50051; with mTLS)
    KAGI_INTERNAL_DNS_SUFFIX                            the CA's certificate carries ca.<suffix> (kagi.internal)
    KAGI_OTP_PEPPER                                     HMAC pepper for usage-start passwords, >= 32 bytes
    KAGI_OTP_KEK / KAGI_OTP_KEK_ID                      the current key-encryption key (base64 of 32 bytes), "k1"
    KAGI_OTP_KEK_OLD                                    older KEKs that only open: "id:base64,id:base64"
    KAGI_OTP_ISSUER                                     the issuer authenticator apps show ("kagi")
    KAGI_OTP_CACHE_SIZE                                 tokens cached per process (20000; 0 disables)
    KAGI_OTP_PAST_STEPS                                 steps back a code is still accepted (1: its own 60 s
                                                        and the 60 s after; 0-10)
    KAGI_OTP_FUTURE_STEPS                               steps ahead a code is accepted (0: never a later
                                                        step's code; 0-2, for phones whose clocks run fast)
    KAGI_OTP_MANAGEMENT_ADDR                            plain-HTTP /healthz, /readyz, /metrics (127.0.0.1:9092; off)
    KAGI_OTP_GROUP_COMMIT                               share store rounds among concurrent commits (default:
                                                        on for SQLite, where it saves an fsync per verification;
                                                        off for Redis, where it measured no gain)
    KAGI_IDEMPOTENCY_PENDING_SECONDS                    how long an interrupted request's claim on its request
                                                        id blocks retries (30; 1-3600)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from kagi.clients.revocation import PEERS_START_WAIT, RevokedPeers, follow_internal_ca
from kagi.clock import Clock, SystemClock
from kagi.errors import InvalidArgument
from kagi.idempotency import IdempotencyLedger
from kagi.passwords import MIN_PEPPER_BYTES, PasswordHasher, Pepper
from kagi.runtime.grpc_client import open_channel
from kagi.runtime.grpc_server import GrpcServer
from kagi.runtime.management import ManagementListener, grpc_readiness, management_address, start_management
from kagi.runtime.metrics import MeteredStore
from kagi.runtime.settings import (
    DEFAULT_INTERNAL_DNS_SUFFIX,
    Environment,
    ListenSettings,
    Secret,
    internal_dns_suffix,
    role_dns_name,
    store_url_from_env,
    tls_files_from_env,
)
from kagi.store import SERVICE_WIDE, GroupCommitStore, KeyValueStore, Placement, check_at_start, open_store
from services.otp_service.api import OtpApi, binding
from services.otp_service.app.cache import DEFAULT_CACHE_SIZE
from services.otp_service.app.repository import PLACEMENT
from services.otp_service.app.use_cases import OtpService
from services.otp_service.domain import KeyEncryptionKey, OtpError, OtpPolicy, Seed, SeedVault, TotpParameters
from services.otp_service.domain.policy import MAX_FUTURE_STEPS, MAX_PAST_STEPS
from services.otp_service.domain.uri import key_uri

DEFAULT_PORT = 50052
"""The OTP service's gRPC port."""
STORE_NAMESPACE = "otp"
"""The store namespace the OTP service keeps its records under."""


def _kek(name: str, key_id: str, encoded: str) -> KeyEncryptionKey:
    try:
        return KeyEncryptionKey.from_base64(key_id, encoded)
    except ValueError as exc:
        # The message says what is wrong with the key, never the key.
        raise InvalidArgument(f"{name} is not a valid key-encryption key", fields={name: str(exc)}) from None


def _older_keks(env: Environment) -> tuple[KeyEncryptionKey, ...]:
    secret = env.secret("KAGI_OTP_KEK_OLD", required=False)
    if secret is None:
        return ()
    keys = []
    for item in secret.reveal_text().split(","):
        key_id, sep, encoded = item.strip().partition(":")
        if not sep:
            raise InvalidArgument(
                "KAGI_OTP_KEK_OLD is malformed", fields={"KAGI_OTP_KEK_OLD": "must be id:base64 pairs, comma-separated"}
            )
        keys.append(_kek("KAGI_OTP_KEK_OLD", key_id, encoded))
    return tuple(keys)


@dataclass(frozen=True)
class OtpSettings:
    """Everything the OTP service is configured with; keys and pepper never print."""

    listen: ListenSettings
    store_url: str
    state_dir: Path
    pepper: Secret
    kek: KeyEncryptionKey
    older_keks: tuple[KeyEncryptionKey, ...] = ()
    policy: OtpPolicy = field(default_factory=OtpPolicy)
    cache_size: int = DEFAULT_CACHE_SIZE
    group_commit: bool | None = None  # None: on for SQLite, off for Redis (see the module docstring)
    namespace: str = STORE_NAMESPACE
    idempotency_pending_seconds: int = 30
    # The management listener (plain HTTP /healthz, /readyz, /metrics): KAGI_OTP_MANAGEMENT_ADDR; None: none.
    management: tuple[str, int] | None = None
    # The CA whose revocation stream says which internal callers are revoked (KAGI_CA_TARGET); None: not followed
    # (plaintext development, or a test with no CA). `from_env` always sets it with mTLS.
    ca_target: str | None = None
    dns_suffix: str = DEFAULT_INTERNAL_DNS_SUFFIX

    def __post_init__(self) -> None:
        if len(self.pepper.reveal()) < MIN_PEPPER_BYTES:
            raise InvalidArgument(
                "KAGI_OTP_PEPPER is too short", fields={"KAGI_OTP_PEPPER": f"must be at least {MIN_PEPPER_BYTES} bytes"}
            )
        if self.kek.key_id in {k.key_id for k in self.older_keks}:
            raise InvalidArgument(
                "KAGI_OTP_KEK_OLD repeats the current key id", fields={"KAGI_OTP_KEK_OLD": "key ids must be unique"}
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> OtpSettings:
        """Read the KAGI_* variables listed in the module docstring and validate them."""
        env = Environment(environ)
        key_id = env.text("KAGI_OTP_KEK_ID", "k1")
        issuer = env.text("KAGI_OTP_ISSUER", "kagi")
        try:
            # The domain checks the issuer only when it builds a key URI; check it once here, with its own rule.
            key_uri(Seed(bytes(20)), TotpParameters(), issuer=issuer, account="check")
        except OtpError as exc:
            raise InvalidArgument(
                "KAGI_OTP_ISSUER is invalid", fields={"KAGI_OTP_ISSUER": exc.fields.get("issuer", exc.message)}
            ) from None
        policy = OtpPolicy(
            issuer=issuer,
            past_steps=env.integer("KAGI_OTP_PAST_STEPS", 1, minimum=0, maximum=MAX_PAST_STEPS),
            future_steps=env.integer("KAGI_OTP_FUTURE_STEPS", 0, minimum=0, maximum=MAX_FUTURE_STEPS),
        )
        tls = tls_files_from_env(env, "KAGI_OTP")
        return cls(
            listen=ListenSettings(
                env.text("KAGI_OTP_HOST", "127.0.0.1"),
                env.integer("KAGI_OTP_PORT", DEFAULT_PORT, minimum=0, maximum=65535),
                tls,
                env.integer("KAGI_OTP_WORKERS", 1, minimum=1, maximum=64),
            ),
            ca_target=env.text("KAGI_CA_TARGET", "localhost:50051") if tls is not None else None,
            dns_suffix=internal_dns_suffix(env),
            store_url=store_url_from_env(env),
            state_dir=env.path("KAGI_STATE_DIR", ".kagi"),
            pepper=env.required_secret("KAGI_OTP_PEPPER"),
            kek=_kek("KAGI_OTP_KEK", key_id, env.required_secret("KAGI_OTP_KEK").reveal_text()),
            older_keks=_older_keks(env),
            policy=policy,
            cache_size=env.integer("KAGI_OTP_CACHE_SIZE", DEFAULT_CACHE_SIZE, minimum=0, maximum=10_000_000),
            group_commit=env.flag("KAGI_OTP_GROUP_COMMIT") if env.optional("KAGI_OTP_GROUP_COMMIT") else None,
            idempotency_pending_seconds=env.integer("KAGI_IDEMPOTENCY_PENDING_SECONDS", 30, minimum=1, maximum=3600),
            management=management_address(environ, "otp"),
        )

    def groups_commits(self) -> bool:
        """Say whether concurrent writes share store rounds (kagi.store.group_commit)."""
        if self.group_commit is not None:
            return self.group_commit
        return self.store_url.partition(":")[0].lower() == "sqlite"

    def vault(self) -> SeedVault:
        """Return the seed vault: seals under `kek`, opens under it and every older key."""
        return SeedVault(self.kek, self.older_keks)

    def placement(self) -> Placement:
        """Return how the store places the OTP's keys: per token on Redis (so a Cluster spreads the tokens over
        its shards), service-wide on SQLite (one file either way; there group commit shares one fsync among the
        verifications of different tokens). See services.otp_service.app.repository.PLACEMENT."""
        return SERVICE_WIDE if self.store_url.partition(":")[0].lower() == "sqlite" else PLACEMENT

    def open_store(self, clock: Clock | None = None) -> KeyValueStore:
        """Open (lazily) the store these settings name, under the OTP namespace, placed by `placement`."""
        return open_store(
            self.store_url, namespace=self.namespace, state_dir=self.state_dir, clock=clock, placement=self.placement()
        )


def build_service(
    settings: OtpSettings, store: KeyValueStore, *, clock: Clock, hasher: PasswordHasher | None = None
) -> OtpService:
    """Wire the use cases over an open store (the server, `kagi admin` and benchmark share it).

    When `settings.groups_commits()`, concurrent writes share store rounds (see kagi.store.group_commit);
    closing `store` remains the caller's job.
    """
    return OtpService(
        GroupCommitStore(store) if settings.groups_commits() else store,
        vault=settings.vault(),
        hasher=hasher or PasswordHasher([Pepper("p1", settings.pepper.reveal())]),
        policy=settings.policy,
        clock=clock,
        cache_size=settings.cache_size,
    )


class OtpComponent:
    """A running OTP service: its gRPC server, use cases and store."""

    management: ManagementListener | None = None
    # The follower of the CA's revocation stream and its channel (None when not followed).
    peers: RevokedPeers | None = None
    _ca_channel: grpc.aio.Channel | None = None

    def __init__(self, server: GrpcServer, service: OtpService, store: KeyValueStore) -> None:
        self.server = server
        self.service = service
        self._store = store

    @property
    def port(self) -> int:
        """Return where the gRPC server listens."""
        return self.server.port

    async def stop(self, grace: float = 5.0) -> None:
        """End the server gracefully (calls in flight get `grace` seconds), then close the store."""
        if self.management is not None:
            await self.management.stop()
        await self.server.stop(grace)
        if self.peers is not None:
            await self.peers.stop()
        if self._ca_channel is not None:
            await self._ca_channel.close()
        await self._store.close()


async def start_otp(
    settings: OtpSettings, *, clock: Clock | None = None, hasher: PasswordHasher | None = None
) -> OtpComponent:
    """Build the OTP service from its settings and start serving; health turns SERVING once the
    store answers."""
    clock = clock or SystemClock()
    # Each store operation's latency and failures are recorded (kagi_store_*), below the group commit.
    store: KeyValueStore = MeteredStore(settings.open_store(clock), settings.namespace)
    try:
        await check_at_start(store)
    except BaseException:
        await store.close()
        raise
    service = build_service(settings, store, clock=clock, hasher=hasher)
    api = OtpApi(service, IdempotencyLedger(store, pending_ttl=settings.idempotency_pending_seconds))
    peers, ca_channel = None, None
    if settings.ca_target is not None and settings.listen.tls is not None:
        # Every caller's certificate is checked against the internal CA's revocations (fails closed).
        ca_channel = open_channel(
            settings.ca_target, settings.listen.tls, server_name=role_dns_name("ca", settings.dns_suffix)
        )
        peers = follow_internal_ca(ca_channel, settings.listen.tls)
    server = GrpcServer(settings.listen, [binding(api)], domain="otp.kagi", readiness=store.ping, peers=peers)
    try:
        if peers is not None:
            await peers.start(wait=PEERS_START_WAIT)
        await server.start()
    except BaseException:
        if peers is not None:
            await peers.stop()
        if ca_channel is not None:
            await ca_channel.close()
        await store.close()
        raise
    component = OtpComponent(server, service, store)
    component.peers, component._ca_channel = peers, ca_channel
    component.management = await start_management(
        settings.management, {"otp": grpc_readiness(server)}, reuse_port=settings.listen.workers > 1
    )
    return component

"""Wiring of the enrollment service: settings from the environment, then store, clients, use cases, server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from kagi.clients.revocation import PEERS_START_WAIT, RevokedPeers, follow_internal_ca
from kagi.clock import Clock, SystemClock
from kagi.idempotency import IdempotencyLedger
from kagi.journal import Journal
from kagi.passwords import PasswordHasher, Pepper
from kagi.runtime.failpoints import arm
from kagi.runtime.grpc_client import open_channel
from kagi.runtime.grpc_server import GrpcServer
from kagi.runtime.management import ManagementListener, grpc_readiness, management_address, start_management
from kagi.runtime.metrics import MeteredStore
from kagi.runtime.settings import (
    DEFAULT_INTERNAL_DNS_SUFFIX,
    Environment,
    ListenSettings,
    Secret,
    TlsFiles,
    internal_dns_suffix,
    role_dns_name,
    store_url_from_env,
    tls_files_from_env,
)
from kagi.store import KeyValueStore, check_at_start, open_store
from services.enrollment_service.adapters.clients import GrpcCertificateAuthority, GrpcTokenService
from services.enrollment_service.adapters.mail import transport_from_settings
from services.enrollment_service.adapters.outbox import OutboxSender
from services.enrollment_service.adapters.signing_keys import JwsSigner, ensure_dev_signing_key
from services.enrollment_service.api import EnrollmentApi, binding
from services.enrollment_service.app.abandonment import AbandonedSetups, SweepReport
from services.enrollment_service.app.credentials import CredentialLifecycle, LifecyclePolicy
from services.enrollment_service.app.repository import EnrollmentRepository
from services.enrollment_service.app.use_cases import EnrollmentPolicy, EnrollmentService
from services.enrollment_service.app.users import SessionPolicy, UserSessions
from services.enrollment_service.domain.sessions import MAX_ACCESS_TOKEN_SECONDS
from services.enrollment_service.user_api import UserApi, user_binding

DEFAULT_PORT = 50053
DEFAULT_TOKEN_ISSUER = "https://localhost:8443"


@dataclass(frozen=True)
class EnrollmentSettings:
    """Everything the enrollment service is configured with."""

    listen: ListenSettings
    store_url: str
    state_dir: Path
    ca_target: str
    otp_target: str
    client_tls: TlsFiles | None
    pepper: Secret
    smtp_url: Secret | None
    mail_from: str
    policy: EnrollmentPolicy
    idempotency_pending_seconds: int = 30
    failpoints: str = ""
    mail_poll_seconds: float = 1.0
    # The token signing key ring and its passphrase; when not given (tests, kagi dev), one is made under
    # <state>/secrets on first start. `from_env` requires both.
    signing_key_file: Path | None = None
    signing_key_passphrase: Secret | None = None
    token_issuer: str = DEFAULT_TOKEN_ISSUER
    sessions: SessionPolicy = field(default_factory=SessionPolicy)
    renewal_window_days: int = 30
    # How often the sweeper expires idle enrollments, cleans up abandoned ones and erases their personal data
    # after the retention period (EnrollmentPolicy.abandoned_retention_seconds).
    sweep_seconds: float = 30.0
    # The management listener (plain HTTP /healthz, /readyz, /metrics): KAGI_ENROLLMENT_MANAGEMENT_ADDR.
    management: tuple[str, int] | None = None
    # The CA's and the OTP service's certificates carry ca.<suffix> and otp.<suffix>: the names verified.
    dns_suffix: str = DEFAULT_INTERNAL_DNS_SUFFIX

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> EnrollmentSettings:
        """Read KAGI_* variables (see the README) and validate them."""
        env = Environment(environ)
        tls = tls_files_from_env(env, "KAGI_ENROLLMENT")
        return cls(
            listen=ListenSettings(
                env.text("KAGI_ENROLLMENT_HOST", "127.0.0.1"),
                env.integer("KAGI_ENROLLMENT_PORT", DEFAULT_PORT, minimum=0, maximum=65535),
                tls,
                env.integer("KAGI_ENROLLMENT_WORKERS", 1, minimum=1, maximum=64),
            ),
            store_url=store_url_from_env(env),
            state_dir=env.path("KAGI_STATE_DIR", ".kagi"),
            ca_target=env.text("KAGI_CA_TARGET", "localhost:50051"),
            otp_target=env.text("KAGI_OTP_TARGET", "localhost:50052"),
            dns_suffix=internal_dns_suffix(env),
            client_tls=tls,
            pepper=env.required_secret("KAGI_PASSWORD_PEPPER"),
            smtp_url=env.secret("KAGI_SMTP_URL", required=False),
            mail_from=env.text("KAGI_MAIL_FROM", "kagi@localhost"),
            policy=EnrollmentPolicy(
                idle_seconds=60 * env.integer("KAGI_ENROLLMENT_IDLE_MINUTES", 60, minimum=1, maximum=24 * 60),
                application_ttl_seconds=86400 * env.integer("KAGI_APPLICATION_TTL_DAYS", 30, minimum=1, maximum=365),
                app_url=env.text("KAGI_APP_URL", "https://www.example.com/kagi-token-app"),
                contact_text=env.text("KAGI_CONTACT_TEXT", EnrollmentPolicy.contact_text),
                abandoned_retention_seconds=86400
                * env.integer("KAGI_ABANDONED_RETENTION_DAYS", 90, minimum=1, maximum=3650),
                # Step 1's failures per client address (relayed by the gateway) before it is refused; 0 = off.
                notice_failures_per_address=env.integer(
                    "KAGI_NOTICE_FAILURES_PER_ADDRESS", 20, minimum=0, maximum=1_000_000
                ),
                notice_address_window_seconds=60
                * env.integer("KAGI_NOTICE_ADDRESS_WINDOW_MINUTES", 10, minimum=1, maximum=24 * 60),
            ),
            idempotency_pending_seconds=env.integer("KAGI_IDEMPOTENCY_PENDING_SECONDS", 30, minimum=1, maximum=3600),
            failpoints=env.text("KAGI_FAILPOINTS", ""),
            mail_poll_seconds=env.integer("KAGI_MAIL_POLL_MS", 1000, minimum=10, maximum=600_000) / 1000,
            signing_key_file=env.path("KAGI_ENROLLMENT_SIGNING_KEY_FILE"),
            signing_key_passphrase=env.required_secret("KAGI_ENROLLMENT_SIGNING_KEY_PASSPHRASE"),
            token_issuer=env.text("KAGI_TOKEN_ISSUER", DEFAULT_TOKEN_ISSUER),
            renewal_window_days=env.integer("KAGI_RENEWAL_WINDOW_DAYS", 30, minimum=1, maximum=180),
            sweep_seconds=env.integer("KAGI_SWEEP_SECONDS", 30, minimum=1, maximum=3600),
            sessions=SessionPolicy(
                access_token_seconds=env.integer(
                    "KAGI_ACCESS_TOKEN_SECONDS", 900, minimum=60, maximum=MAX_ACCESS_TOKEN_SECONDS
                ),
            ),
            management=management_address(environ, "enrollment"),
        )


class EnrollmentComponent:
    """A running enrollment service: its gRPC server, channels and mail sender."""

    lifecycle: CredentialLifecycle | None = None
    setups: AbandonedSetups | None = None
    management: ManagementListener | None = None
    # The follower of the CA's revocation stream that refuses revoked internal callers (None in plaintext).
    peers: RevokedPeers | None = None
    _sweep_task: asyncio.Task[None] | None = None

    def __init__(
        self,
        server: GrpcServer,
        store: KeyValueStore,
        channels: list[grpc.aio.Channel],
        sender: OutboxSender,
        mail_interval: float,
    ) -> None:
        self.server = server
        self._store = store
        self._channels = channels
        self._sender = sender
        self._stop_mail = asyncio.Event()
        self._mail_task = asyncio.create_task(sender.run(self._stop_mail, interval=mail_interval))

    @property
    def port(self) -> int:
        """Return where the gRPC server listens."""
        return self.server.port

    async def deliver_mail_now(self) -> int:
        """Send every due mail at once (tests and operator use it)."""
        return await self._sender.deliver_due()

    def start_sweeper(self, setups: AbandonedSetups, interval: float) -> None:
        """Run the sweeper of idle and abandoned enrollments every `interval` seconds."""
        self.setups = setups
        self._stop_sweep = asyncio.Event()
        self._sweep_task = asyncio.create_task(setups.run(self._stop_sweep, interval=interval))

    async def sweep_now(self) -> SweepReport:
        """Run one pass of the sweeper at once (tests and operator use it)."""
        assert self.setups is not None, "the sweeper was not started"
        return await self.setups.sweep()

    async def stop_sweeper(self) -> None:
        """End the background sweeper (a test that runs each pass itself with `sweep_now`)."""
        if self._sweep_task is not None:
            self._stop_sweep.set()
            # A pass in flight is waited for briefly, then cancelled: every step of it is safe to redo.
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._sweep_task, 10.0)

    async def stop(self, grace: float = 5.0) -> None:
        """End the server gracefully, then the mail sender, channels and store."""
        if self.management is not None:
            await self.management.stop()
        await self.server.stop(grace)
        if self.peers is not None:
            await self.peers.stop()
        self._stop_mail.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self._mail_task
        await self.stop_sweeper()
        for channel in self._channels:
            await channel.close()
        await self._store.close()


async def start_enrollment(
    settings: EnrollmentSettings,
    *,
    clock: Clock | None = None,
    hasher: PasswordHasher | None = None,
) -> EnrollmentComponent:
    """Build the enrollment service from its settings and start serving."""
    clock = clock or SystemClock()
    arm(settings.failpoints)
    store: KeyValueStore = MeteredStore(  # each operation's latency and failures recorded (kagi_store_*)
        open_store(settings.store_url, namespace="enrollment", state_dir=settings.state_dir, clock=clock), "enrollment"
    )
    try:
        await check_at_start(store)
    except BaseException:
        await store.close()
        raise
    hasher = hasher or PasswordHasher([Pepper("p1", settings.pepper.reveal())])
    # The clients send the request id with each call themselves (adapters.clients): no interceptor per call.
    # Each service is verified by its role name (ca.kagi.internal, otp.kagi.internal), whatever address was dialled.
    ca_name, otp_name = role_dns_name("ca", settings.dns_suffix), role_dns_name("otp", settings.dns_suffix)
    ca_channel = open_channel(settings.ca_target, settings.client_tls, server_name=ca_name, request_ids=False)
    otp_channel = open_channel(settings.otp_target, settings.client_tls, server_name=otp_name, request_ids=False)
    transport = transport_from_settings(
        settings.smtp_url.reveal_text() if settings.smtp_url else None, settings.state_dir / "mail"
    )
    sender = OutboxSender(store, transport, clock, settings.mail_from)
    # A step that queues a mail rings the sender: the mail goes out at once, not at the next poll.
    repository = EnrollmentRepository(store, mail_queued=sender.ring)
    ca, otp = GrpcCertificateAuthority(ca_channel), GrpcTokenService(otp_channel)
    service = EnrollmentService(repository, ca, otp, hasher, clock, settings.policy)
    ledger = IdempotencyLedger(store, pending_ttl=settings.idempotency_pending_seconds)
    api = EnrollmentApi(service, ledger, clock.now)
    key_file, passphrase = settings.signing_key_file, settings.signing_key_passphrase
    if key_file is None or passphrase is None:
        key_file, passphrase = ensure_dev_signing_key(settings.state_dir)
    signer = JwsSigner(key_file, passphrase.reveal(), issuer=settings.token_issuer, now=clock.now)
    journal = Journal(store, clock)
    sessions = UserSessions(
        repository,
        journal,
        ca,
        otp,
        hasher,
        signer,
        clock,
        settings.sessions,
    )
    lifecycle = CredentialLifecycle(
        repository,
        journal,
        sessions,
        ca,
        otp,
        hasher,
        clock,
        LifecyclePolicy(
            renewal_window_days=settings.renewal_window_days,
            app_url=settings.policy.app_url,
            contact_text=settings.policy.contact_text,
        ),
    )
    # Every caller's certificate is checked against the internal CA's revocations, followed over the CA channel.
    peers = follow_internal_ca(ca_channel, settings.listen.tls) if settings.listen.tls is not None else None
    server = GrpcServer(
        settings.listen,
        [binding(api), user_binding(UserApi(sessions, lifecycle, ledger))],
        domain="enrollment.kagi",
        readiness=store.ping,
        peers=peers,
    )
    if peers is not None:
        await peers.start(wait=PEERS_START_WAIT)
    await server.start()
    component = EnrollmentComponent(server, store, [ca_channel, otp_channel], sender, settings.mail_poll_seconds)
    component.peers = peers
    component.lifecycle = lifecycle
    service.setups.add_duty(lifecycle.maintain)  # renewal reminders, superseded certificates past their grace
    component.start_sweeper(service.setups, settings.sweep_seconds)
    component.management = await start_management(
        settings.management, {"enrollment": grpc_readiness(server)}, reuse_port=settings.listen.workers > 1
    )
    return component

"""Wiring of the CA service: settings from the environment, then CA files, store, use cases, server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import structlog

from kagi.clock import Clock, SystemClock
from kagi.errors import InvalidArgument
from kagi.idempotency import IdempotencyLedger
from kagi.journal import Journal
from kagi.runtime.grpc_server import GrpcServer
from kagi.runtime.management import ManagementListener, grpc_readiness, management_address, start_management
from kagi.runtime.settings import Environment, ListenSettings, Secret, tls_files_from_env
from kagi.store import KeyExists, KeyValueStore, open_store
from services.ca_service.adapters.batching_store import BatchingStore
from services.ca_service.adapters.ca_directory import CaDirectory, LoadedCa
from services.ca_service.api import CaApi, binding
from services.ca_service.app.authorities import Authorities
from services.ca_service.app.crls import CrlPublisher
from services.ca_service.app.feed import RevocationFeed
from services.ca_service.app.records import OCSP_SIGNER_PROFILE
from services.ca_service.app.repository import LOCKS, REVOCATION_EVENTS
from services.ca_service.app.service import BOOTSTRAP, CertificateAuthorityService
from services.ca_service.domain.hierarchy import ISSUING_KINDS, ocsp_signer_needs_renewal
from services.ca_service.domain.keys import key_algorithm_of
from services.ca_service.domain.settings import PkiSettings

log = structlog.get_logger("kagi.ca")

DEFAULT_PORT = 50051
"""DEFAULT_PORT is the CA's gRPC port."""

OCSP_RENEW_CHECK = 3600.0
"""OCSP_RENEW_CHECK is how often (seconds) a running CA checks whether an OCSP signer is due for renewal."""


@dataclass(frozen=True)
class CaSettings:
    """CaSettings is everything the CA service is configured with."""

    listen: ListenSettings
    store_url: str
    state_dir: Path
    ca_dir: Path
    passphrase: Secret
    pki: PkiSettings
    crl_debounce: float = 1.0
    crl_check_interval: float = 60.0
    store_namespace: str = "ca"
    # How long an interrupted request's claim on its request id blocks retries (KAGI_IDEMPOTENCY_PENDING_SECONDS).
    idempotency_pending_seconds: int = 30
    # The management listener (plain HTTP /healthz, /readyz, /metrics): KAGI_CA_MANAGEMENT_ADDR; None: none.
    management: tuple[str, int] | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> CaSettings:
        """From_env reads the KAGI_CA_* variables (and the shared KAGI_STORE_URL, KAGI_STATE_DIR) and validates them.

        KAGI_CA_HOST (127.0.0.1), KAGI_CA_PORT (50051), KAGI_CA_WORKERS (1), KAGI_CA_TLS_CERT/KEY/CA,
        KAGI_STORE_URL (sqlite:), KAGI_STATE_DIR (.kagi), KAGI_CA_DIR (<state dir>/ca),
        KAGI_CA_KEY_PASSPHRASE or KAGI_CA_KEY_PASSPHRASE_FILE (required), KAGI_PKI_BASE_URL
        (http://127.0.0.1:8080, for CRL distribution points and AIA), KAGI_CA_CRL_VALIDITY_HOURS (24),
        KAGI_CA_OCSP_VALIDITY_MINUTES (60), KAGI_CA_CRL_DEBOUNCE_MS (1000), KAGI_CA_CRL_CHECK_SECONDS (60),
        KAGI_IDEMPOTENCY_PENDING_SECONDS (30).
        """
        env = Environment(environ)
        state_dir = env.path("KAGI_STATE_DIR", ".kagi")
        return cls(
            listen=ListenSettings(
                env.text("KAGI_CA_HOST", "127.0.0.1"),
                env.integer("KAGI_CA_PORT", DEFAULT_PORT, minimum=0, maximum=65535),
                tls_files_from_env(env, "KAGI_CA"),
                env.integer("KAGI_CA_WORKERS", 1, minimum=1, maximum=64),
            ),
            store_url=env.text("KAGI_STORE_URL", "sqlite:"),
            state_dir=state_dir,
            ca_dir=env.path("KAGI_CA_DIR", str(state_dir / "ca")),
            passphrase=env.required_secret("KAGI_CA_KEY_PASSPHRASE"),
            pki=PkiSettings(
                base_url=env.text("KAGI_PKI_BASE_URL", "http://127.0.0.1:8080"),
                crl_validity=timedelta(hours=env.integer("KAGI_CA_CRL_VALIDITY_HOURS", 24, minimum=1, maximum=24 * 31)),
                ocsp_response_validity=timedelta(
                    minutes=env.integer("KAGI_CA_OCSP_VALIDITY_MINUTES", 60, minimum=1, maximum=7 * 24 * 60)
                ),
            ),
            crl_debounce=env.integer("KAGI_CA_CRL_DEBOUNCE_MS", 1000, minimum=0, maximum=600_000) / 1000,
            crl_check_interval=float(env.integer("KAGI_CA_CRL_CHECK_SECONDS", 60, minimum=1, maximum=86400)),
            idempotency_pending_seconds=env.integer("KAGI_IDEMPOTENCY_PENDING_SECONDS", 30, minimum=1, maximum=3600),
            management=management_address(environ, "ca"),
        )


@dataclass
class CaRuntime:
    """CaRuntime is the CA's service layer on a store, with the background parts it needs started."""

    store: KeyValueStore
    service: CertificateAuthorityService
    journal: Journal
    feed: RevocationFeed
    crls: CrlPublisher

    def start_background(self) -> None:
        """Start_background starts the revocation feed and the CRL freshness check."""
        self.feed.start()
        self.crls.start()

    async def close(self) -> None:
        """Close stops the background parts, waits for the journal and closes the store."""
        await self.feed.stop()
        await self.crls.stop()
        await self.journal.close()
        await self.store.close()


def open_runtime(
    store_url: str,
    *,
    state_dir: Path,
    loaded: LoadedCa,
    pki: PkiSettings,
    clock: Clock,
    crl_debounce: float = 1.0,
    crl_check_interval: float = 60.0,
    namespace: str = "ca",
) -> CaRuntime:
    """open_runtime wires the use cases on the store `store_url` names (writes group-committed)."""
    store = BatchingStore(open_store(store_url, namespace=namespace, state_dir=state_dir, clock=clock))
    authorities = Authorities(loaded.hierarchy, loaded.delegates)
    journal = Journal(store, clock, feed_collection=REVOCATION_EVENTS)
    feed = RevocationFeed(store, clock)
    crls = CrlPublisher(
        store, authorities.issuing_cas, pki, clock, debounce=crl_debounce, check_interval=crl_check_interval
    )
    service = CertificateAuthorityService(store, authorities, pki, clock, journal=journal, crls=crls, feed=feed)
    return CaRuntime(store, service, journal, feed, crls)


async def record_ocsp_signers(service: CertificateAuthorityService) -> None:
    """record_ocsp_signers makes sure the store knows the OCSP signer certificates `init-ca` made on disk."""
    for kind in ISSUING_KINDS:
        delegate = service.authorities.delegate(kind)
        await service.record_certificate(
            delegate.certificate, kind, OCSP_SIGNER_PROFILE, f"ocsp-{kind.value}", actor=BOOTSTRAP
        )


async def renew_ocsp_signers(
    service: CertificateAuthorityService,
    store: KeyValueStore,
    directory: CaDirectory,
    passphrase: Secret,
    clock: Clock,
) -> int:
    """renew_ocsp_signers renews each OCSP signer that is due, one replica at a time; returns how many.

    A replica that lost the race for the lock reloads the signer the winner wrote (same CA directory).
    """
    renewed = 0
    for kind in ISSUING_KINDS:
        current = service.authorities.delegate(kind)
        if not ocsp_signer_needs_renewal(current, settings=service.settings, clock=clock):
            continue
        try:
            await store.create(LOCKS, f"ocsp-renewal/{kind.value}", b"1", ttl=120)
        except KeyExists:
            continue
        # Another replica may have renewed just before the lock was free again: look at the files first.
        latest = directory.load_ocsp_signer(current.issuer, passphrase)
        if ocsp_signer_needs_renewal(latest, settings=service.settings, clock=clock):
            algorithm = key_algorithm_of(current.issuer.public_key)
            if algorithm is None:
                raise InvalidArgument("the CA key has an unsupported size", reason="CA_KEY_UNSUPPORTED")
            signer, name = directory.new_ocsp_signer(kind, passphrase, algorithm, clock)
            latest = await service.issue_ocsp_delegate(kind, signer, actor=BOOTSTRAP)
            directory.write_ocsp_certificate(name, latest.certificate)
            log.info("ocsp signer renewed", issuer=kind.value, serial=format(latest.certificate.serial_number, "x"))
            renewed += 1
        service.authorities.replace_delegate(latest)
    return renewed


class CaComponent:
    """CaComponent is a running CA service: its gRPC server over the CA runtime."""

    management: ManagementListener | None = None

    def __init__(self, server: GrpcServer, runtime: CaRuntime, renewal: asyncio.Task[None]) -> None:
        self.server = server
        self.runtime = runtime
        self._renewal = renewal

    @property
    def port(self) -> int:
        """Port is where the gRPC server listens."""
        return self.server.port

    @property
    def service(self) -> CertificateAuthorityService:
        """Service is the CA's service layer (tests and the bootstrap use it directly)."""
        return self.runtime.service

    async def stop(self, grace: float = 5.0) -> None:
        """Stop ends the server gracefully, then the background work and the store."""
        if self.management is not None:
            await self.management.stop()
        await self.server.stop(grace)
        self._renewal.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._renewal
        # A stop is bounded: background work cut off mid-write must not keep the process from exiting.
        try:
            async with asyncio.timeout(grace + 5):
                await self.runtime.close()
        except TimeoutError:
            log.warning("the CA's background work did not stop in time; leaving it to the process exit")


async def _renew_periodically(runtime: CaRuntime, directory: CaDirectory, passphrase: Secret, clock: Clock) -> None:
    while True:
        await asyncio.sleep(OCSP_RENEW_CHECK)
        try:
            await renew_ocsp_signers(runtime.service, runtime.store, directory, passphrase, clock)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("ocsp signer renewal failed; will retry", error=str(exc))


async def start_ca(settings: CaSettings, *, clock: Clock | None = None) -> CaComponent:
    """start_ca opens the CA files and the store, records and renews OCSP signers, and starts serving."""
    clock = clock or SystemClock()
    directory = CaDirectory(settings.ca_dir)
    loaded = directory.load(settings.passphrase)  # never opens the root key, wherever it is
    if directory.holds_root_key():
        log.warning(
            "the root CA key is in the CA directory; the service never opens it, but it belongs offline: move it "
            "with `kagi admin move-root-key --root-key-out PATH --root-passphrase-file FILE`",
            path=str(directory.root_key_path),
        )
    runtime = open_runtime(
        settings.store_url,
        state_dir=settings.state_dir,
        loaded=loaded,
        pki=settings.pki,
        clock=clock,
        crl_debounce=settings.crl_debounce,
        crl_check_interval=settings.crl_check_interval,
        namespace=settings.store_namespace,
    )
    try:
        await record_ocsp_signers(runtime.service)
        await renew_ocsp_signers(runtime.service, runtime.store, directory, settings.passphrase, clock)
        ledger = IdempotencyLedger(runtime.store, pending_ttl=settings.idempotency_pending_seconds)
        api = CaApi(runtime.service, ledger, clock, root_crl=directory.root_crl)
        server = GrpcServer(settings.listen, [binding(api)], domain="ca.kagi", readiness=runtime.store.ping)
        await server.start()
    except BaseException:
        await runtime.close()
        raise
    runtime.start_background()
    renewal = asyncio.get_running_loop().create_task(
        _renew_periodically(runtime, directory, settings.passphrase, clock)
    )
    component = CaComponent(server, runtime, renewal)
    component.management = await start_management(
        settings.management, {"ca": grpc_readiness(server)}, reuse_port=settings.listen.workers > 1
    )
    return component

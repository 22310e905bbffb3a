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
from kagi.idempotency import IdempotencyLedger
from kagi.journal import Journal
from kagi.runtime.grpc_server import GrpcServer
from kagi.runtime.management import ManagementListener, grpc_readiness, management_address, start_management
from kagi.runtime.metrics import MeteredStore
from kagi.runtime.settings import Environment, ListenSettings, Secret, store_url_from_env, tls_files_from_env
from kagi.store import GroupCommitStore, KeyValueStore, open_store
from services.ca_service.adapters.ca_directory import CaDirectory, LoadedCa
from services.ca_service.api import CaApi, binding
from services.ca_service.app.authorities import Authorities
from services.ca_service.app.crls import CrlPublisher
from services.ca_service.app.feed import RevocationFeed
from services.ca_service.app.issuance import Issuance
from services.ca_service.app.ocsp_signers import OCSP_RENEW_CHECK, OcspSignerRenewal, record_ocsp_signers
from services.ca_service.app.peers import CallerRevocations
from services.ca_service.app.publication import Publication
from services.ca_service.app.repository import REVOCATION_EVENTS, CaRepository
from services.ca_service.app.revocation import Revocation
from services.ca_service.domain.settings import PkiSettings

log = structlog.get_logger("kagi.ca")

DEFAULT_PORT = 50051
"""The CA's gRPC port."""


@dataclass(frozen=True)
class CaSettings:
    """Everything the CA service is configured with."""

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
        """Read the KAGI_CA_* variables (and the shared KAGI_STORE_URL, KAGI_STATE_DIR) and validate them.

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
            store_url=store_url_from_env(env),
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
    """The CA's use cases on a store, with the background parts they need started."""

    store: KeyValueStore
    journal: Journal
    repository: CaRepository
    authorities: Authorities
    feed: RevocationFeed
    crls: CrlPublisher
    issuance: Issuance
    revocation: Revocation
    publication: Publication

    def start_background(self) -> None:
        """Start the revocation feed and the CRL freshness check."""
        self.feed.start()
        self.crls.start()

    async def close(self) -> None:
        """Stop the background parts, wait for the journal and close the store."""
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
    """Wire the use cases on the store STORE_URL names (writes group-committed)."""
    # Each store operation's latency and failures are recorded (kagi_store_*), below the group commit.
    store = GroupCommitStore(
        MeteredStore(open_store(store_url, namespace=namespace, state_dir=state_dir, clock=clock), namespace)
    )
    authorities = Authorities(loaded.hierarchy, loaded.delegates)
    journal = Journal(store, clock, feed_collection=REVOCATION_EVENTS)
    repository = CaRepository(store)
    feed = RevocationFeed(repository, clock)
    crls = CrlPublisher(
        repository, authorities.issuing_cas, pki, clock, debounce=crl_debounce, check_interval=crl_check_interval
    )
    publication = Publication(repository, authorities, pki, clock, crls=crls, feed=feed)
    revocation = Revocation(repository, journal, clock, publication=publication)
    issuance = Issuance(repository, journal, authorities, pki, clock, revocation=revocation)
    return CaRuntime(
        store=store,
        journal=journal,
        repository=repository,
        authorities=authorities,
        feed=feed,
        crls=crls,
        issuance=issuance,
        revocation=revocation,
        publication=publication,
    )


class CaComponent:
    """A running CA service: its gRPC server over the CA runtime."""

    management: ManagementListener | None = None

    def __init__(self, server: GrpcServer, runtime: CaRuntime, renewal: asyncio.Task[None]) -> None:
        self.server = server
        self.runtime = runtime
        self._renewal = renewal

    @property
    def port(self) -> int:
        """Return the port the gRPC server listens on."""
        return self.server.port

    async def stop(self, grace: float = 5.0) -> None:
        """End the server gracefully, then the background work and the store."""
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


async def start_ca(settings: CaSettings, *, clock: Clock | None = None) -> CaComponent:
    """Open the CA files and the store, record and renew OCSP signers, and start serving."""
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
    signers = OcspSignerRenewal(
        runtime.issuance, runtime.authorities, runtime.repository, directory, settings.passphrase, clock
    )
    try:
        await record_ocsp_signers(runtime.issuance, runtime.authorities)
        await signers.renew_due()
        ledger = IdempotencyLedger(runtime.store, pending_ttl=settings.idempotency_pending_seconds)
        api = CaApi(
            runtime.issuance, runtime.revocation, runtime.publication, ledger, clock, root_crl=directory.root_crl
        )
        # A revoked internal caller is refused here too: the CA reads its own records (and its revocation feed).
        peers = CallerRevocations(runtime.revocation, runtime.feed)
        server = GrpcServer(
            settings.listen, [binding(api)], domain="ca.kagi", readiness=runtime.store.ping, peers=peers
        )
        await server.start()
    except BaseException:
        await runtime.close()
        raise
    runtime.start_background()
    renewal = asyncio.get_running_loop().create_task(signers.run(OCSP_RENEW_CHECK))
    component = CaComponent(server, runtime, renewal)
    component.management = await start_management(
        settings.management, {"ca": grpc_readiness(server)}, reuse_port=settings.listen.workers > 1
    )
    return component

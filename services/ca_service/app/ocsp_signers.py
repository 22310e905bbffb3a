"""Keeping the OCSP signers current: recording the ones `init-ca` made, and renewing each one that is due, one
replica at a time under a store lock.

The signer's key and certificate live in the CA directory (shared by every replica); the store holds its
record like any certificate's. A replica that loses the race for the lock reloads the signer the winner wrote.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import structlog
from cryptography import x509

from kagi.clock import Clock
from kagi.errors import InvalidArgument
from kagi.runtime.settings import Secret
from services.ca_service.app.access import BOOTSTRAP
from services.ca_service.app.authorities import Authorities
from services.ca_service.app.issuance import Issuance
from services.ca_service.app.records import OCSP_SIGNER_PROFILE
from services.ca_service.app.repository import CaRepository, ocsp_renewal_lock
from services.ca_service.domain.authority import CertificateAuthority
from services.ca_service.domain.hierarchy import ISSUING_KINDS, DelegatedOcspSigner, ocsp_signer_needs_renewal
from services.ca_service.domain.keys import KeyAlgorithm, key_algorithm_of
from services.ca_service.domain.settings import CaKind
from services.ca_service.domain.signer import Signer

log = structlog.get_logger("kagi.ca")

OCSP_RENEW_CHECK = 3600.0
"""How often (seconds) a running CA checks whether an OCSP signer is due for renewal."""

RENEWAL_LOCK_TTL = 120.0
"""How long (seconds) one replica holds an issuer's renewal to itself."""


class OcspSignerFiles(Protocol):
    """Where OCSP signer keys and certificates are kept (the CA directory)."""

    def load_ocsp_signer(self, issuer: CertificateAuthority, passphrase: Secret) -> DelegatedOcspSigner:
        """Return the newest usable OCSP signer of ISSUER."""
        ...

    def new_ocsp_signer(
        self, kind: CaKind, passphrase: Secret, algorithm: KeyAlgorithm, clock: Clock
    ) -> tuple[Signer, str]:
        """Write a fresh encrypted key for an OCSP signer of KIND; return it and its name."""
        ...

    def write_ocsp_certificate(self, name: str, certificate: x509.Certificate) -> object:
        """Store an OCSP signer's certificate beside its key."""
        ...


async def record_ocsp_signers(issuance: Issuance, authorities: Authorities) -> None:
    """Make sure the store knows the OCSP signer certificates `init-ca` made on disk."""
    for kind in ISSUING_KINDS:
        delegate = authorities.delegate(kind)
        await issuance.record_certificate(
            delegate.certificate, kind, OCSP_SIGNER_PROFILE, f"ocsp-{kind.value}", actor=BOOTSTRAP
        )


class OcspSignerRenewal:
    """Renews the OCSP signers that are due and switches the responders to them."""

    def __init__(
        self,
        issuance: Issuance,
        authorities: Authorities,
        repository: CaRepository,
        files: OcspSignerFiles,
        passphrase: Secret,
        clock: Clock,
    ) -> None:
        self._issuance = issuance
        self._authorities = authorities
        self._repository = repository
        self._files = files
        self._passphrase = passphrase
        self._clock = clock

    async def renew_due(self) -> int:
        """Renew each OCSP signer that is due, one replica at a time; return how many this call renewed."""
        settings = self._issuance.settings
        renewed = 0
        for kind in ISSUING_KINDS:
            current = self._authorities.delegate(kind)
            if not ocsp_signer_needs_renewal(current, settings=settings, clock=self._clock):
                continue
            if not await self._repository.acquire_lock(ocsp_renewal_lock(kind), RENEWAL_LOCK_TTL):
                continue
            # Another replica may have renewed just before the lock was free again: look at the files first.
            latest = self._files.load_ocsp_signer(current.issuer, self._passphrase)
            if ocsp_signer_needs_renewal(latest, settings=settings, clock=self._clock):
                algorithm = key_algorithm_of(current.issuer.public_key)
                if algorithm is None:
                    raise InvalidArgument("the CA key has an unsupported size", reason="CA_KEY_UNSUPPORTED")
                signer, name = self._files.new_ocsp_signer(kind, self._passphrase, algorithm, self._clock)
                latest = await self._issuance.issue_ocsp_delegate(kind, signer, actor=BOOTSTRAP)
                self._files.write_ocsp_certificate(name, latest.certificate)
                log.info("ocsp signer renewed", issuer=kind.value, serial=format(latest.certificate.serial_number, "x"))
                renewed += 1
            self._authorities.replace_delegate(latest)
        return renewed

    async def run(self, interval: float = OCSP_RENEW_CHECK) -> None:
        """Check for due signers every INTERVAL seconds until cancelled; a failed check is retried at the next."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.renew_due()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("ocsp signer renewal failed; will retry", error=str(exc))

"""The CA's gRPC API: translates messages to use-case calls and back, and nothing more.

Input is validated before anything is stored, so a bad request changes no state at all. IssueCertificate's
idempotency is the issuance's own request-id entry, committed with the certificate (see
services.ca_service.app.issuance); the other mutations go through the idempotency ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import TypeVar

import grpc
from cryptography import x509
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from kagi.ca.v1 import ca_pb2 as pb
from kagi.ca.v1 import ca_pb2_grpc
from kagi.clock import Clock
from kagi.errors import InvalidArgument, NotFound
from kagi.idempotency import IdempotencyLedger, fingerprint
from kagi.runtime.grpc_idempotency import IdempotentApi
from kagi.runtime.grpc_server import ServiceBinding, current_caller
from kagi.runtime.identity import Role, allow
from kagi.runtime.metrics import (
    certificates_issued,
    certificates_revoked,
    crl_age,
    crl_entries,
    crl_next_update,
    crl_size,
    ocsp_answers,
    refresh_on_scrape,
)
from services.ca_service.app.access import Actor, parse_serial_field
from services.ca_service.app.issuance import Issuance
from services.ca_service.app.publication import Publication
from services.ca_service.app.records import CertificateRecord, CertificateState
from services.ca_service.app.repository import check_subject_id
from services.ca_service.app.revocation import Revocation
from services.ca_service.domain.errors import InvalidIdentity
from services.ca_service.domain.identity import CustomerIdentity, Identity, ServiceIdentity
from services.ca_service.domain.revocation import RevocationReason, parse_revocation_reason
from services.ca_service.domain.settings import CaKind

WATCH_HEARTBEAT_SECONDS = 1.0

SERVICE_NAME = "kagi.ca.v1.CertificateAuthorityService"
# Public readers: what the CA also publishes over plain HTTP (CRLs, OCSP, CA certificates), so every internal
# identity may read it. Everything that changes or lists certificates is the enrollment service's and the
# operator's alone (DESIGN.md section 3): a front-end never issues, renews, revokes or lists.
_READERS = allow(*Role)
_MANAGERS = allow(Role.ENROLLMENT, Role.OPERATOR)
ALLOWED_ROLES = {
    # Which profile a caller may have issued is checked again per profile (service: operator only).
    "IssueCertificate": allow(Role.ENROLLMENT, Role.OPERATOR),
    "RenewCertificate": _MANAGERS,
    "GetCertificate": _MANAGERS,
    "ListCertificates": _MANAGERS,
    "RevokeCertificate": _MANAGERS,
    "RevokeSubjectCertificates": _MANAGERS,
    "GetCrl": _READERS,
    "GetCertificateStatus": _READERS,
    "AnswerOcsp": _READERS,
    "GetCaCertificates": _READERS,
    "WatchRevocations": _READERS,
}

_ISSUERS = {pb.ISSUER_CUSTOMER: CaKind.CUSTOMER, pb.ISSUER_INTERNAL: CaKind.INTERNAL}
_ISSUER_PB = {kind: value for value, kind in _ISSUERS.items()}
_STATES = {
    pb.Certificate.STATE_ACTIVE: CertificateState.ACTIVE,
    pb.Certificate.STATE_REVOKED: CertificateState.REVOKED,
    pb.Certificate.STATE_EXPIRED: CertificateState.EXPIRED,
}
_STATE_PB = {state: value for value, state in _STATES.items()}
_OCSP_STATUS = {
    "good": pb.GetCertificateStatusResponse.STATUS_GOOD,
    "revoked": pb.GetCertificateStatusResponse.STATUS_REVOKED,
    "unknown": pb.GetCertificateStatusResponse.STATUS_UNKNOWN,
}
_CUSTOMER_FIELDS = {
    "user_id": "customer.user_id",
    "login_id": "customer.login_id",
    "user_name": "customer.user_name",
    "company": "customer.company_name",
}
_SERVICE_FIELDS = {"role": "service.role", "dns_names": "service.dns_names", "ip_addresses": "service.ip_addresses"}

Resp = TypeVar("Resp", bound=Message)


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromSeconds(int(seconds))
    return stamp


def actor() -> Actor:
    """Return the caller of the current RPC as the use cases see it."""
    caller = current_caller()
    if caller.plaintext:
        return Actor("plaintext-dev", None, unrestricted=True)
    return Actor(caller.spiffe_id or "anonymous", caller.role)


def issuer_kind(value: int, *, field: str = "issuer", required: bool = True) -> CaKind | None:
    """Map the Issuer enum; UNSPECIFIED is an error when `required`, else None (any issuer)."""
    if value == pb.ISSUER_UNSPECIFIED and not required:
        return None
    for key, kind in _ISSUERS.items():
        if key == value:
            return kind
    raise InvalidArgument("invalid issuer", fields={field: "must be ISSUER_CUSTOMER or ISSUER_INTERNAL"})


def revocation_reason(value: int) -> RevocationReason:
    """Map the RevocationReason enum (values are RFC 5280 codes; 7, 8 and others refused)."""
    return parse_revocation_reason(int(value))


def identity_of(request: pb.IssueCertificateRequest) -> Identity | None:
    """Build the identity a request names, with errors naming the request's own fields."""
    which = request.WhichOneof("identity")
    try:
        if which == "customer":
            customer = request.customer
            return CustomerIdentity(
                user_id=customer.user_id,
                login_id=customer.login_id,
                user_name=customer.user_name,
                company=customer.company_name,
            )
        if which == "service":
            service = request.service
            return ServiceIdentity(
                role=service.role, dns_names=tuple(service.dns_names), ip_addresses=tuple(service.ip_addresses)
            )
    except InvalidIdentity as exc:
        names = _CUSTOMER_FIELDS if which == "customer" else _SERVICE_FIELDS
        raise InvalidIdentity(exc.message, fields={names.get(k, k): v for k, v in exc.fields.items()}) from None
    return None


def certificate_message(record: CertificateRecord, now: float) -> pb.Certificate:
    """Render a certificate record for the API."""
    message = pb.Certificate(
        serial_number=record.serial_hex,
        issuer=_ISSUER_PB.get(record.issuer, pb.ISSUER_UNSPECIFIED),
        profile=record.profile,
        subject_id=record.subject_id,
        subject=record.subject,
        state=_STATE_PB[record.current_state(now)],
        certificate_pem=record.certificate_pem,
        fingerprint_sha256=record.fingerprint_sha256,
        not_before=_timestamp(record.not_before),
        not_after=_timestamp(record.not_after),
        create_time=_timestamp(record.created_at),
    )
    if record.revoked_at is not None:
        message.revoke_time.CopyFrom(_timestamp(record.revoked_at))
        message.revocation_reason = int(record.reason or 0)  # type: ignore[assignment]
    return message


class CaApi(IdempotentApi, ca_pb2_grpc.CertificateAuthorityServiceServicer):
    """The gRPC face of the CA's use cases: issuance, revocation and publication."""

    def __init__(
        self,
        issuance: Issuance,
        revocation: Revocation,
        publication: Publication,
        ledger: IdempotencyLedger,
        clock: Clock,
        root_crl: Callable[[], bytes | None] = lambda: None,
    ) -> None:
        self._issuance = issuance
        self._revocation = revocation
        self._publication = publication
        self._ledger = ledger
        self._clock = clock
        self._root_crl = root_crl
        refresh_on_scrape(self)

    async def refresh_metrics(self) -> None:
        """Set the CRL gauges of both issuing CAs from the CRLs last published in the store (read at scrape)."""
        now = self._clock.now()
        for kind in (CaKind.CUSTOMER, CaKind.INTERNAL):
            crl = await self._publication.crl(kind)
            crl_age.labels(kind.value).set(now - crl.this_update)
            crl_next_update.labels(kind.value).set(crl.next_update - now)
            crl_size.labels(kind.value).set(len(crl.der))
            crl_entries.labels(kind.value).set(crl.entry_count)

    async def IssueCertificate(
        self, request: pb.IssueCertificateRequest, context: grpc.aio.ServicerContext
    ) -> pb.IssueCertificateResponse:
        """Validate, authorise the profile for the caller, then issue once per request_id (per caller and subject)."""
        caller = actor()
        if request.validity_days < 0:
            raise InvalidArgument("invalid lifetime", fields={"validity_days": "0 (the profile's) or 1-825 days"})
        prepared = self._issuance.prepare(
            csr=request.csr,
            identity=identity_of(request),
            profile=request.profile,
            actor=caller,
            lifetime=timedelta(days=request.validity_days) if request.validity_days else None,
        )

        request_id = request.request_id
        # The request's digest, as the ledger takes it: a reused request id with other content is refused.
        digest = fingerprint(request.SerializeToString(deterministic=True)) if request_id else ""
        record = await self._issuance.issue(prepared, request_id=request_id, actor=caller, fingerprint=digest)
        certificates_issued.labels(record.profile).inc()
        return pb.IssueCertificateResponse(
            certificate=certificate_message(record, self._clock.now()),
            chain_pem=self._publication.chain_pem(record.issuer).decode(),
        )

    async def RenewCertificate(
        self, request: pb.RenewCertificateRequest, context: grpc.aio.ServicerContext
    ) -> pb.RenewCertificateResponse:
        """Issue for the identity of an existing certificate from a new CSR."""
        caller = actor()
        parse_serial_field(request.serial_number)
        self._issuance.check_csr(request.csr)

        async def act() -> pb.RenewCertificateResponse:
            record = await self._issuance.renew(
                request.serial_number,
                request.csr,
                revoke_previous=request.revoke_previous,
                request_id=request.request_id,
                actor=caller,
            )
            certificates_issued.labels(record.profile).inc()
            if request.revoke_previous:
                certificates_revoked.labels(RevocationReason.SUPERSEDED.name).inc()
            return pb.RenewCertificateResponse(
                certificate=certificate_message(record, self._clock.now()),
                chain_pem=self._publication.chain_pem(record.issuer).decode(),
            )

        return await self._once(request, act, pb.RenewCertificateResponse, subject=request.serial_number.lower())

    async def GetCertificate(
        self, request: pb.GetCertificateRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetCertificateResponse:
        """Return one issued certificate by serial."""
        record = await self._revocation.get(request.serial_number)
        return pb.GetCertificateResponse(certificate=certificate_message(record, self._clock.now()))

    async def ListCertificates(
        self, request: pb.ListCertificatesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListCertificatesResponse:
        """Page through certificates by subject and/or state."""
        state: CertificateState | None = None
        if request.state != pb.Certificate.STATE_UNSPECIFIED:
            state = _STATES.get(request.state)
            if state is None:
                raise InvalidArgument("invalid state", fields={"state": "must be ACTIVE, REVOKED or EXPIRED"})
        records, token = await self._revocation.list_certificates(
            subject_id=request.subject_id, state=state, page_size=request.page_size, page_token=request.page_token
        )
        now = self._clock.now()
        return pb.ListCertificatesResponse(
            certificates=[certificate_message(r, now) for r in records], next_page_token=token
        )

    async def RevokeCertificate(
        self, request: pb.RevokeCertificateRequest, context: grpc.aio.ServicerContext
    ) -> pb.RevokeCertificateResponse:
        """Revoke one certificate (idempotent)."""
        caller = actor()
        parse_serial_field(request.serial_number)
        reason = revocation_reason(request.reason)

        async def act() -> pb.RevokeCertificateResponse:
            record, changed = await self._revocation.revoke(request.serial_number, reason, actor=caller)
            if changed:
                certificates_revoked.labels(reason.name).inc()
            return pb.RevokeCertificateResponse(certificate=certificate_message(record, self._clock.now()))

        return await self._once(request, act, pb.RevokeCertificateResponse, subject=request.serial_number.lower())

    async def RevokeSubjectCertificates(
        self, request: pb.RevokeSubjectCertificatesRequest, context: grpc.aio.ServicerContext
    ) -> pb.RevokeSubjectCertificatesResponse:
        """Revoke every unexpired certificate of a subject."""
        caller = actor()
        check_subject_id(request.subject_id)
        reason = revocation_reason(request.reason)

        async def act() -> pb.RevokeSubjectCertificatesResponse:
            records = await self._revocation.revoke_subject(request.subject_id, reason, actor=caller)
            certificates_revoked.labels(reason.name).inc(len(records))
            now = self._clock.now()
            return pb.RevokeSubjectCertificatesResponse(certificates=[certificate_message(r, now) for r in records])

        return await self._once(request, act, pb.RevokeSubjectCertificatesResponse, subject=request.subject_id)

    async def GetCrl(self, request: pb.GetCrlRequest, context: grpc.aio.ServicerContext) -> pb.GetCrlResponse:
        """Return the CRL last published in the store for an issuing CA, or the root's offline CRL."""
        if request.issuer == pb.ISSUER_ROOT:
            return self._root_crl_message()
        kind = issuer_kind(request.issuer) or CaKind.CUSTOMER  # required: never None
        crl = await self._publication.crl(kind)
        return pb.GetCrlResponse(
            crl=crl.der,
            crl_number=crl.number,
            this_update=_timestamp(crl.this_update),
            next_update=_timestamp(crl.next_update),
        )

    def _root_crl_message(self) -> pb.GetCrlResponse:
        der = self._root_crl()
        if der is None:
            raise NotFound("the root has no CRL yet: run `kagi admin sign-root-crl`", reason="ROOT_CRL_MISSING")
        crl = x509.load_der_x509_crl(der)
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        next_update = crl.next_update_utc or crl.last_update_utc
        return pb.GetCrlResponse(
            crl=der,
            crl_number=number,
            this_update=_timestamp(crl.last_update_utc.timestamp()),
            next_update=_timestamp(next_update.timestamp()),
        )

    async def GetCertificateStatus(
        self, request: pb.GetCertificateStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetCertificateStatusResponse:
        """Answer good, revoked or unknown (never good for an unknown serial)."""
        answer = await self._revocation.status(request.serial_number, issuer_kind(request.issuer, required=False))
        record = answer.record
        if record is None:
            return pb.GetCertificateStatusResponse(status=pb.GetCertificateStatusResponse.STATUS_UNKNOWN)
        if record.revoked_at is None:
            return pb.GetCertificateStatusResponse(status=pb.GetCertificateStatusResponse.STATUS_GOOD)
        return pb.GetCertificateStatusResponse(
            status=pb.GetCertificateStatusResponse.STATUS_REVOKED,
            revoke_time=_timestamp(record.revoked_at),
            revocation_reason=int(record.reason or 0),  # type: ignore[arg-type]
        )

    async def AnswerOcsp(
        self, request: pb.AnswerOcspRequest, context: grpc.aio.ServicerContext
    ) -> pb.AnswerOcspResponse:
        """Answer a DER OCSP request; OCSP-level errors are OCSP responses, not gRPC errors."""
        answer = await self._publication.answer_ocsp(request.ocsp_request)
        ocsp_answers.labels(answer.status).inc()
        response = pb.AnswerOcspResponse(
            ocsp_response=answer.der,
            status=_OCSP_STATUS.get(answer.status, pb.GetCertificateStatusResponse.STATUS_UNSPECIFIED),
        )
        if answer.next_update is not None:
            # OCSP times are whole seconds (GeneralizedTime without a fraction): no nanos to carry.
            response.next_update.seconds = int(answer.next_update.timestamp())
        return response

    async def GetCaCertificates(
        self, request: pb.GetCaCertificatesRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetCaCertificatesResponse:
        """Return the root and both intermediates in PEM."""
        root, customer, internal = self._publication.ca_certificates()
        return pb.GetCaCertificatesResponse(
            root_pem=root.decode(), customer_ca_pem=customer.decode(), internal_ca_pem=internal.decode()
        )

    async def WatchRevocations(
        self, request: pb.WatchRevocationsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchRevocationsResponse]:
        """Stream revocations made on any replica, with a heartbeat every quiet second."""
        kind = issuer_kind(request.issuer, required=False)
        notices = aiter(self._publication.watch(kind))
        upcoming = asyncio.ensure_future(anext(notices))
        try:
            await asyncio.sleep(0)  # the first step of the watch registers the subscription
            await context.send_initial_metadata((("x-kagi-subscribed", "1"),))
            while True:
                done, _ = await asyncio.wait({upcoming}, timeout=WATCH_HEARTBEAT_SECONDS)
                if not done:
                    yield pb.WatchRevocationsResponse(heartbeat=True)
                    continue
                notice = upcoming.result()
                upcoming = asyncio.ensure_future(anext(notices))
                yield pb.WatchRevocationsResponse(
                    serial_number=notice.serial_hex,
                    issuer=_ISSUER_PB[notice.issuer],
                    revoke_time=_timestamp(notice.revoked_at),
                    revocation_reason=int(notice.reason),  # type: ignore[arg-type]
                )
        finally:
            upcoming.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, Exception):
                await upcoming
            await notices.aclose()  # type: ignore[attr-defined]


def binding(api: CaApi) -> ServiceBinding:
    """Register the CA service with its per-method allow-lists."""
    return ServiceBinding(
        name=SERVICE_NAME,
        register=lambda server: ca_pb2_grpc.add_CertificateAuthorityServiceServicer_to_server(api, server),
        allowed_roles=ALLOWED_ROLES,
    )

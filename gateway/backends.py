"""The gateway's channels to the CA, OTP and enrollment services (mTLS as spiffe://kagi.internal/gateway), and
their gRPC health."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.errors import http_error_from_rpc
from gateway.metrics import GatewayMetrics
from kagi.ca.v1 import ca_pb2_grpc
from kagi.enrollment.v1 import enrollment_pb2_grpc, user_pb2_grpc
from kagi.runtime.grpc_client import open_channel
from kagi.runtime.metrics import metered
from kagi.runtime.settings import TlsFiles, role_dns_name

T = TypeVar("T", bound=Message)

HEALTH_TIMEOUT_SECONDS = 1.0


@dataclass
class Backends:
    """Holds one channel per service and the stubs the gateway calls."""

    channels: dict[str, grpc.aio.Channel]
    metrics: GatewayMetrics
    call_timeout: float
    ca: ca_pb2_grpc.CertificateAuthorityServiceStub = field(init=False)
    enrollment: enrollment_pb2_grpc.EnrollmentServiceStub = field(init=False)
    users: user_pb2_grpc.UserServiceStub = field(init=False)

    def __post_init__(self) -> None:
        # The stubs' unary calls are timed and counted (kagi_grpc_client_call_duration_seconds).
        self.ca = ca_pb2_grpc.CertificateAuthorityServiceStub(metered(self.channels["ca"]))
        self.enrollment = enrollment_pb2_grpc.EnrollmentServiceStub(metered(self.channels["enrollment"]))
        self.users = user_pb2_grpc.UserServiceStub(metered(self.channels["enrollment"]))

    @classmethod
    def open(
        cls,
        targets: dict[str, str],
        tls: TlsFiles | None,
        metrics: GatewayMetrics,
        *,
        dns_suffix: str,
        call_timeout: float,
    ) -> Backends:
        """Create the channels (they connect lazily) with the gateway's internal identity.

        Each service is verified by its role name (`ca.<dns_suffix>`, ...), whatever address its target names.
        """
        channels = {
            name: open_channel(target, tls, server_name=role_dns_name(name, dns_suffix))
            for name, target in targets.items()
        }
        return cls(channels, metrics, call_timeout)

    async def call(
        self,
        service: str,
        method: Callable[..., Awaitable[T]],
        request: Message,
        *,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> T:
        """Make one unary call; a failure is counted and raised as the HttpError the customer sees."""
        try:
            return await method(request, timeout=self.call_timeout, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            self.metrics.backend_errors.labels(service, exc.code().name).inc()
            raise http_error_from_rpc(exc) from None

    async def health(self) -> dict[str, str]:
        """Ask every service's grpc.health.v1 Check at once: SERVING, NOT_SERVING or UNREACHABLE."""

        async def check(channel: grpc.aio.Channel) -> str:
            stub: Any = health_pb2_grpc.HealthStub(channel)
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=HEALTH_TIMEOUT_SECONDS)
            except grpc.aio.AioRpcError as exc:
                return "UNREACHABLE" if exc.code() == grpc.StatusCode.UNAVAILABLE else exc.code().name
            return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

        names = list(self.channels)
        results = await asyncio.gather(*(check(self.channels[name]) for name in names))
        return dict(zip(names, results, strict=True))

    async def close(self) -> None:
        """Close every channel."""
        for channel in self.channels.values():
            await channel.close()

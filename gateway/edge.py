"""The gateway's edge under abuse: connection caps (in total and per client address), a deadline for a request's
header and body, an idle keep-alive limit, and which address a request comes from (behind trusted proxies).

A connection over a cap is closed at accept, before the TLS handshake: the cheapest answer there is. A request
whose header (and then body) has not fully arrived within the deadline has its connection closed, so that
connections sending half a header cannot pile up.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from gateway.metrics import GatewayMetrics

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    """The connection settings: deadlines in seconds, caps per worker process (0: no cap)."""

    header_timeout: float = 5.0
    keepalive_timeout: float = 30.0
    max_connections: int = 4096
    max_connections_per_address: int = 256

    @property
    def enabled(self) -> bool:
        """Return False only for the benchmark's "limits off" comparison (no caps, no deadline)."""
        return self.header_timeout > 0 or self.max_connections > 0 or self.max_connections_per_address > 0


def parse_networks(text: str) -> tuple[Network, ...]:
    """Read a comma-separated list of addresses and CIDR blocks (ValueError when malformed)."""
    return tuple(ipaddress.ip_network(item.strip(), strict=False) for item in text.split(",") if item.strip())


def client_key(address: str) -> str:
    """Return what per-address limits count by: the IPv4 address, or the /64 of an IPv6 address (one
    subscriber usually holds a whole /64, so counting single IPv6 addresses would count nothing)."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(parsed) >> 64 << 64, 64)))
    return str(parsed)


class ClientAddresses:
    """Says which address a request comes from.

    The TCP peer, unless the peer is a trusted proxy (KAGI_GATEWAY_TRUSTED_PROXIES): then the nearest address in
    X-Forwarded-For that is not itself a trusted proxy (read from the right, since a client can write anything
    on the left of what the proxies appended).
    """

    def __init__(self, trusted: Iterable[Network] = ()) -> None:
        self._trusted = tuple(trusted)

    def trusted(self, address: str) -> bool:
        """Say whether `address` is one of the trusted proxies."""
        if not self._trusted:
            return False
        try:
            parsed = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(parsed in network for network in self._trusted)

    def of(self, request: web.Request) -> str:
        """Return the client address of `request` (an empty string when the transport is already gone)."""
        peer = request.transport.get_extra_info("peername") if request.transport is not None else None
        address = str(peer[0]) if peer else ""
        if not self.trusted(address):
            return address
        forwarded = ",".join(request.headers.getall("X-Forwarded-For", []))
        for hop in reversed([item.strip() for item in forwarded.split(",") if item.strip()]):
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                return address  # a hop that is no address: trust nothing further left of it
            if not self.trusted(hop):
                return hop
            address = hop
        return address


class ConnectionGuard:
    """Counts open connections, in total and per client key, and admits or refuses new ones.

    Behind a trusted proxy every connection comes from the proxy, so only the total cap applies to it.
    """

    def __init__(self, limits: EdgeLimits, addresses: ClientAddresses, metrics: GatewayMetrics) -> None:
        self._limits = limits
        self._addresses = addresses
        self._metrics = metrics
        self._open: dict[str, int] = {}
        self.total = 0

    def admit(self, peer: str) -> str | None:
        """Count a new connection from `peer` and return its key, or None (counted nowhere) when a cap
        is reached."""
        limits = self._limits
        if limits.max_connections and self.total >= limits.max_connections:
            self._metrics.connections_refused.labels("total").inc()
            return None
        key = "" if self._addresses.trusted(peer) else client_key(peer)
        count = self._open.get(key, 0)
        if key and limits.max_connections_per_address and count >= limits.max_connections_per_address:
            self._metrics.connections_refused.labels("per_address").inc()
            return None
        self._open[key] = count + 1
        self.total += 1
        self._metrics.open_connections.set(self.total)
        return key

    def release(self, key: str) -> None:
        """Uncount a connection admitted under `key`."""
        count = self._open.get(key, 0) - 1
        if count > 0:
            self._open[key] = count
        else:
            self._open.pop(key, None)
        self.total = max(0, self.total - 1)
        self._metrics.open_connections.set(self.total)


class GuardedRequestHandler(RequestHandler):
    """Aiohttp's connection handler with a deadline for each request's header and body.

    The deadline starts when the connection is handed over (after the TLS handshake) and, on a kept-alive
    connection, with the first byte of the next request; it ends when the header and the whole body have
    arrived. A connection still short of that at the deadline is closed. An idle kept-alive connection is
    closed by aiohttp's own keepalive_timeout. The connection is uncounted from its guard when it closes.
    """

    __slots__ = ("_deadline", "_edge", "_pending_body", "guard_key")

    def __init__(self, manager: web.Server, *, edge: EdgeRuntime, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._edge = edge
        self._deadline: asyncio.TimerHandle | None = None
        self._pending_body: Any = None
        # The key the guard counted this connection under; None while not counted (yet).
        self.guard_key: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Count the connection (unless the listener already did, before its handshake) and
        starts the deadline of its first request."""
        if self.guard_key is None and self._edge.guard is not None:
            peer = transport.get_extra_info("peername")
            key = self._edge.guard.admit(str(peer[0]) if peer else "")
            if key is None:
                assert isinstance(transport, asyncio.Transport)
                transport.abort()
                self._manager = None  # connection_lost then has nothing to undo
                return
            self.guard_key = key
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: BaseException | None) -> None:
        """Uncount the connection and stop its deadline."""
        self._disarm()
        if self.guard_key is not None and self._edge.guard is not None:
            self._edge.guard.release(self.guard_key)
            self.guard_key = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Feed aiohttp's parser and move the deadline: started by the first byte of a request,
        ended once its header and body are complete."""
        if self._deadline is None and data and not self._messages and self._pending_body is None:
            self._arm()
        before, waiting_for_body = self._request_count, self._pending_body is not None
        super().data_received(data)
        if self._request_count != before and self._messages:
            payload = self._messages[-1][1]
            self._pending_body = None if payload.is_eof() else payload
        elif self._pending_body is not None and self._pending_body.is_eof():
            self._pending_body = None
        if (self._request_count != before or waiting_for_body) and self._pending_body is None:
            self._disarm()

    def _arm(self) -> None:
        timeout = self._edge.limits.header_timeout
        if timeout > 0 and self._deadline is None and self.transport is not None:
            self._deadline = self._loop.call_later(timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self._edge.metrics is not None:
            self._edge.metrics.header_timeouts.inc()
        self.force_close()


@dataclass
class EdgeRuntime:
    """What the listeners share: the limits, the guard (None with every cap off), the metrics."""

    limits: EdgeLimits
    guard: ConnectionGuard | None
    metrics: GatewayMetrics | None


class GuardedServer(web.Server):
    """Aiohttp's low-level server making GuardedRequestHandler connections."""

    def __init__(self, *args: Any, edge: EdgeRuntime, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._edge = edge

    def __call__(self) -> RequestHandler:
        """A new connection's protocol."""
        return GuardedRequestHandler(self, edge=self._edge, loop=self._loop, **self._kwargs)


class GuardedAppRunner(web.AppRunner):
    """Web.AppRunner serving through GuardedServer."""

    def __init__(self, app: web.Application, *, edge: EdgeRuntime, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._edge = edge

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        return GuardedServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            edge=self._edge,
            **server._kwargs,
        )


def make_runner(app: web.Application, edge: EdgeRuntime) -> web.AppRunner:
    """Runner is the runner of `app`: guarded when any limit is on, else aiohttp's own (the benchmark's "off")."""
    if not edge.limits.enabled:
        return web.AppRunner(app, access_log=None)
    return GuardedAppRunner(app, edge=edge, access_log=None, keepalive_timeout=edge.limits.keepalive_timeout)

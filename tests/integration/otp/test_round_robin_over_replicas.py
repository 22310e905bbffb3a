"""One client channel spreads its calls over every replica behind one name: two OTP servers on one store, a
channel opened by kagi's own `open_channel` on one name that resolves to both, and many real calls; each
replica serves a share of them.

The name is `localhost`, which gRPC's resolver turns into two addresses, 127.0.0.1 and ::1 (as
`dns:///kagi-otp.kagi.svc.cluster.local:50052` turns into every pod of a headless Service): one replica listens
on each, on the same port. Each replica's count of calls is gRPC's own per-server counter (channelz), read from
the servers themselves, never from the client.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from grpc._cython import cygrpc

from kagi.otp.v1 import otp_pb2 as pb
from kagi.otp.v1 import otp_pb2_grpc
from kagi.runtime.grpc_client import open_channel
from kagi.runtime.settings import ListenSettings, role_dns_name
from tests.integration.otp.otp_grpc_support import OtpCluster, create_pending

CALLS = 60


def _server_ids() -> set[int]:
    """Every gRPC server of this process, by its channelz id."""
    ids: set[int] = set()
    start = 0
    while True:
        page: dict[str, Any] = json.loads(cygrpc.channelz_get_servers(start))
        for server in page.get("server", []):
            ids.add(int(server["ref"]["serverId"]))
        if page.get("end", True) or not ids:
            return ids
        start = max(ids) + 1


def _calls_succeeded(server_id: int) -> int:
    server: dict[str, Any] = json.loads(cygrpc.channelz_get_server(server_id))["server"]
    return int(server.get("data", {}).get("callsSucceeded", 0))


async def test_calls_from_one_channel_reach_both_replicas(cluster: OtpCluster) -> None:
    """60 GetToken calls on one channel to localhost:PORT: both replicas answer some, and together all of them."""
    before = _server_ids()
    first = await cluster.start()
    first_ids = _server_ids() - before
    settings = cluster.settings()
    second = await cluster.start(
        dataclasses.replace(settings, listen=ListenSettings("::1", first.port, settings.listen.tls))
    )
    second_ids = _server_ids() - before - first_ids
    assert len(first_ids) == 1
    assert len(second_ids) == 1
    token = await create_pending(cluster)

    served_before = {name: _calls_succeeded(next(iter(ids))) for name, ids in (("a", first_ids), ("b", second_ids))}
    assert second.port == first.port
    target = f"localhost:{first.port}"
    async with open_channel(target, cluster.identities["enrollment"], server_name=role_dns_name("otp")) as channel:
        stub = otp_pb2_grpc.OtpServiceStub(channel)
        for _ in range(CALLS):
            reply = await stub.GetToken(pb.GetTokenRequest(token_id=token.token_id), timeout=30)
            assert reply.token.token_id == token.token_id
    served = {
        name: _calls_succeeded(next(iter(ids))) - served_before[name]
        for name, ids in (("a", first_ids), ("b", second_ids))
    }
    assert served["a"] > 0, served
    assert served["b"] > 0, served
    assert served["a"] + served["b"] == CALLS, served

"""One client channel spreads its calls over every replica behind one name: two OTP servers on one store, a
channel opened by kagi's own `open_channel` on a target that names both, and many real calls; each replica
serves a share of them.

The one name is gRPC's `ipv4:127.0.0.1:P1,127.0.0.1:P2` target, which resolves to both addresses the way
`dns:///kagi-otp.kagi.svc.cluster.local:50052` resolves to every pod of a headless Service: this machine's
`localhost` resolves to 127.0.0.1 only, so the DNS route (one replica on ::1, one on 127.0.0.1) is not
available here. Each replica's count of calls is gRPC's own per-server counter (channelz), read from the
servers themselves.
"""

from __future__ import annotations

import json
from typing import Any

from grpc._cython import cygrpc

from kagi.otp.v1 import otp_pb2 as pb
from kagi.otp.v1 import otp_pb2_grpc
from kagi.runtime.grpc_client import open_channel
from kagi.runtime.settings import role_dns_name
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
    """60 GetToken calls on one channel: both replicas answer some, and together all of them."""
    before = _server_ids()
    first = await cluster.start()
    first_ids = _server_ids() - before
    second = await cluster.start()
    second_ids = _server_ids() - before - first_ids
    assert len(first_ids) == 1
    assert len(second_ids) == 1
    token = await create_pending(cluster)

    served_before = {name: _calls_succeeded(next(iter(ids))) for name, ids in (("a", first_ids), ("b", second_ids))}
    target = f"ipv4:127.0.0.1:{first.port},127.0.0.1:{second.port}"
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

"""Key rotation, on SQLite and on a Redis of its own: `kagi admin rotate-otp-key` (run as its own process, configured
from the environment like the service) re-seals every seed under the new key-encryption key, and a server that
holds only the new key still verifies codes."""

from __future__ import annotations

import asyncio
import base64
import os
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from kagi.clock import FakeClock
from kagi.otp.v1 import otp_pb2 as pb
from kagi.store import open_store
from services.otp_service.app.repository import PLACEMENT, TOKENS
from services.otp_service.domain import Token
from services.otp_service.main import STORE_NAMESPACE
from tests.conftest import RedisServer
from tests.integration.otp.otp_grpc_support import (
    KEK_1,
    KEK_2,
    PEPPER,
    Backend,
    OtpCluster,
    failing,
    oathtool_code,
    provision,
)


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """The store under the service's real namespace: the command reads its settings exactly as `kagi serve otp`
    does, so Redis is a server of this test's own rather than the shared one."""
    if request.param == "sqlite":
        return Backend("sqlite", "sqlite:", tmp_path / "state", STORE_NAMESPACE)
    factory: Callable[..., RedisServer] = request.getfixturevalue("redis_factory")
    return Backend("redis", factory().url, tmp_path / "state", STORE_NAMESPACE)


async def rotate(backend: Backend) -> str:
    """Run the rotation command in a child process with the service's environment: k2 current, k1 older."""
    env = {
        **os.environ,
        "KAGI_INSECURE_PLAINTEXT": "1",
        "KAGI_STORE_URL": backend.url,
        "KAGI_STATE_DIR": str(backend.state_dir),
        "KAGI_OTP_PEPPER": PEPPER.decode(),
        "KAGI_OTP_KEK_ID": KEK_2.key_id,
        "KAGI_OTP_KEK": base64.b64encode(KEK_2.key).decode(),
        "KAGI_OTP_KEK_OLD": f"{KEK_1.key_id}:{base64.b64encode(KEK_1.key).decode()}",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from kagi.cli.admin_otp import rotate_otp_key; rotate_otp_key(['--yes'])",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode == 0, err.decode(errors="replace")
    return out.decode().strip()


async def sealed_key_ids(backend: Backend) -> list[str]:
    """The key id of every sealed seed in the store, read through the store interface."""
    store = open_store(backend.url, namespace=backend.namespace, state_dir=backend.state_dir, placement=PLACEMENT)
    try:
        page = await store.list(TOKENS, page_size=1000)
    finally:
        await store.close()
    tokens = [Token.from_bytes(e.value) for e in page.entries]
    return sorted(t.sealed_seed.key_id for t in tokens if t.sealed_seed is not None)


async def test_rotation_reseals_every_seed_and_codes_still_verify(
    cluster: OtpCluster, backend: Backend, clock: FakeClock
) -> None:
    """Two activated tokens sealed under k1 (and one still pending, with no seed) are re-sealed under k2 while a
    server keeps running; the running server (k1 only) fails safe, a server with k2 alone verifies both tokens'
    next codes, and a second rotation re-seals nothing."""
    old_server = await cluster.start()
    first = await provision(cluster)
    second = await provision(cluster, user_id="user-0002")
    stub = cluster.stub("enrollment", old_server)
    await stub.VerifyCode(
        pb.VerifyCodeRequest(token_id=first.token_id, code=await oathtool_code(first.secret, clock.now()))
    )
    await cluster.stub("enrollment").CreateToken(
        pb.CreateTokenRequest(user_id="user-0003", delivery_email="c@example.jp", usage_start_password="1234")
    )
    assert await sealed_key_ids(backend) == ["k1", "k1"]

    assert await rotate(backend) == "re-sealed 2 seed(s) under key k2"
    assert await sealed_key_ids(backend) == ["k2", "k2"]

    clock.advance(60)
    stale = await failing(
        stub.VerifyCode(
            pb.VerifyCodeRequest(token_id=first.token_id, code=await oathtool_code(first.secret, clock.now()))
        )
    )
    # Its cached k1 seal would still open, but the rotation's commit moved the verification record, so the swap
    # fails, the server re-reads, and k1 alone cannot open the k2 seal: an INTERNAL error, never a wrong answer.
    assert (stale.code, stale.reason) == (grpc.StatusCode.INTERNAL, "SEED_KEY_UNKNOWN")
    await cluster.stop(old_server)

    new_server = await cluster.start(cluster.settings(kek=KEK_2))
    stub = cluster.stub("enrollment", new_server)
    for token in (first, second):
        code = await oathtool_code(token.secret, clock.now())
        reply = await stub.VerifyCode(pb.VerifyCodeRequest(token_id=token.token_id, code=code))
        assert reply.token.state == pb.Token.STATE_ACTIVE

    assert await rotate(backend) == "re-sealed 0 seed(s) under key k2"

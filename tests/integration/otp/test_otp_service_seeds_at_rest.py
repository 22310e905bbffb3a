"""Seeds at rest, on SQLite and on Redis: after activation, verification and an idempotent replay, nothing the
store holds (SQLite file and WAL bytes; every Redis key and value and the append-only file) contains the seed in
any encoding; only the AES-GCM sealed form, tagged with its key id, is there."""

from __future__ import annotations

import base64

from kagi.clock import FakeClock
from kagi.otp.v1 import otp_pb2 as pb
from tests.integration.otp.otp_grpc_support import (
    USAGE_START_PASSWORD,
    Backend,
    OtpCluster,
    create_pending,
    oathtool_code,
    seed_bytes,
)


async def test_the_store_never_holds_the_seed_in_clear(cluster: OtpCluster, backend: Backend, clock: FakeClock) -> None:
    """The raw store holds neither the base32 seed (either case) nor the raw seed bytes (nor their hex or base64),
    and does hold the sealed seed's `v1:k1:` marker, so the scan looked where the token record is."""
    await cluster.start()
    gateway = cluster.stub("enrollment")
    pending = await create_pending(cluster)
    request = pb.ActivateTokenRequest(
        request_id="activate-once",
        service_id=pending.service_id,
        app_user_id=pending.app_user_id,
        usage_start_password=USAGE_START_PASSWORD,
        consent=True,
    )
    activation = (await gateway.ActivateToken(request)).activation
    assert (await gateway.ActivateToken(request)).activation.secret == ""  # the ledger's replay: no seed
    await gateway.ConfirmRegistration(
        pb.ConfirmRegistrationRequest(
            service_id=pending.service_id, app_user_id=pending.app_user_id, activation_id=activation.activation_id
        )
    )
    code = await oathtool_code(activation.secret, clock.now())
    await gateway.VerifyCode(pb.VerifyCodeRequest(request_id="verify-once", token_id=pending.token_id, code=code))

    raw = await backend.raw_bytes()

    seed = seed_bytes(activation.secret)
    forms = {
        "base32": activation.secret.encode(),
        "base32 lowercase": activation.secret.lower().encode(),
        "raw bytes": seed,
        "hex": seed.hex().encode(),
        "base64": base64.b64encode(seed).rstrip(b"="),
        "base64url": base64.urlsafe_b64encode(seed).rstrip(b"="),
    }
    found = [name for name, form in forms.items() if form in raw]
    assert found == [], f"the seed is stored in clear as {found}"
    assert b"v1:k1:" in raw
    assert pending.token_id.encode() in raw

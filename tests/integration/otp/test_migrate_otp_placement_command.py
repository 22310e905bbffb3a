"""`kagi admin migrate-otp-placement` as an operator runs it during an upgrade: tokens a Redis store holds in the
service-wide layout (as written before per-token placement) are counted (`--dry-run` changes nothing), moved to
their per-token groups, and then serve as before: found by service ID and by user, and a registered token verifies
a fresh code while its last accepted code stays refused (its verification state moved with it). A second run moves
nothing, and nothing is left in the old layout."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from kagi.clock import FakeClock
from kagi.store import SERVICE_WIDE, open_store
from services.otp_service.app.repository import PLACEMENT, TOKENS
from services.otp_service.app.use_cases import OtpService
from services.otp_service.domain import OtpPolicy, SeedVault, TokenState
from services.otp_service.domain.totp import hotp, time_step
from services.otp_service.main import STORE_NAMESPACE
from tests.conftest import RedisServer
from tests.integration.otp.otp_grpc_support import CHEAP_HASHER, KEK_1, NOW, PEPPER, USAGE_START_PASSWORD
from tests.support.cli import admin_argv, from_script


def _service(url: str, clock: FakeClock, *, spread: bool) -> tuple[OtpService, Callable[[], Awaitable[None]]]:
    store = open_store(url, namespace=STORE_NAMESPACE, state_dir=None, placement=PLACEMENT if spread else SERVICE_WIDE)
    service = OtpService(store, vault=SeedVault(KEK_1), hasher=CHEAP_HASHER, policy=OtpPolicy(), clock=clock)
    return service, store.close


def _env(url: str, state_dir: Path) -> dict[str, str]:
    """The OTP service's environment on the Redis store at URL."""
    return {
        **os.environ,
        "KAGI_INSECURE_PLAINTEXT": "1",
        "KAGI_STORE_URL": url,
        "KAGI_STORE_ALLOW_VOLATILE": "1",
        "KAGI_STATE_DIR": str(state_dir),
        "KAGI_OTP_PEPPER": PEPPER.decode(),
        "KAGI_OTP_KEK_ID": KEK_1.key_id,
        "KAGI_OTP_KEK": base64.b64encode(KEK_1.key).decode(),
    }


async def test_tokens_in_the_old_layout_are_moved_and_keep_working(
    redis_factory: Callable[..., RedisServer], tmp_path: Path
) -> None:
    """Three tokens written service-wide (one registered and used once, one activated, one pending) are counted,
    moved, and then read, found and verified through the per-token layout; a second run moves none."""
    url = redis_factory().url
    clock = FakeClock(NOW)
    old, close = _service(url, clock, spread=False)
    registered = await old.create(owner_id="user-0001", email="a@example.jp", usage_start_password=USAGE_START_PASSWORD)
    activation = await old.activate(
        service_id=registered.service_id,
        app_user_id=registered.app_user_id,
        usage_start_password=USAGE_START_PASSWORD,
        consent=True,
    )
    await old.confirm_registration(
        service_id=registered.service_id,
        app_user_id=registered.app_user_id,
        activation_id=activation.activation_id,
    )
    seed = base64.b32decode(activation.seed.secret_base32 + "=" * (-len(activation.seed.secret_base32) % 8))
    period = activation.seed.params.period
    used = hotp(seed, time_step(clock.now(), period))
    assert (await old.verify(registered.token_id, used)).result.ok
    activated = await old.create(owner_id="user-0002", email="b@example.jp", usage_start_password=USAGE_START_PASSWORD)
    await old.activate(
        service_id=activated.service_id,
        app_user_id=activated.app_user_id,
        usage_start_password=USAGE_START_PASSWORD,
        consent=True,
    )
    pending = await old.create(owner_id="user-0002", email="b@example.jp", usage_start_password=USAGE_START_PASSWORD)
    await close()

    # The new version cannot see them until they are moved.
    new, close = _service(url, clock, spread=True)
    assert await new.token_for_service(registered.service_id) == registered.token_id
    assert (await new._repo.store.get(TOKENS, registered.token_id)) is None
    await close()

    env = _env(url, tmp_path / "state")
    planned = await from_script(admin_argv(tmp_path / "state", "migrate-otp-placement", "--dry-run"), env)
    assert planned.code == 0, planned.err
    plan = {key: value.strip() for key, _, value in (line.partition("  ") for line in planned.err.splitlines())}
    assert plan["tokens to move"] == "3"

    moved = await from_script(admin_argv(tmp_path / "state", "migrate-otp-placement", "--yes", "--json"), env)
    assert moved.code == 0, moved.err
    assert json.loads(moved.out) == {"tokens": 3, "moved": 3}

    new, close = _service(url, clock, spread=True)
    try:
        for token in (registered, activated, pending):
            assert await new.token_for_service(token.service_id) == token.token_id
            assert (await new.get(token.token_id)).state is token_state_of(token, registered, activated)
        listed, _ = await new.list_for_user("user-0002")
        assert sorted(t.token_id for t in listed) == sorted([activated.token_id, pending.token_id])
        assert not (await new.verify(registered.token_id, used)).result.ok  # replay still refused
        clock.advance(period)
        assert (await new.verify(registered.token_id, hotp(seed, time_step(clock.now(), period)))).result.ok
    finally:
        await close()

    again = await from_script(admin_argv(tmp_path / "state", "migrate-otp-placement", "--yes"), env)
    assert again.code == 0, again.err
    assert again.out.strip() == "moved 0 of 0 token(s) to their per-token placement"
    old, close = _service(url, clock, spread=False)
    try:
        assert (await old._repo.store.list(TOKENS)).entries == []
    finally:
        await close()


def token_state_of(token: object, registered: object, activated: object) -> TokenState:
    """Return the state each of the three tokens was left in before the upgrade."""
    if token is registered:
        return TokenState.ACTIVE
    if token is activated:
        return TokenState.ACTIVATED
    return TokenState.PENDING_ACTIVATION

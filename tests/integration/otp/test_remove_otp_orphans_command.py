"""`kagi admin remove-otp-orphans` as an operator runs it: a token whose creation stopped between its records and
its service-ID claim (an orphan) is counted (`--dry-run` changes nothing), then deleted, while a claimed token of
the same age stays; a second run finds nothing."""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path

from kagi.clock import FakeClock
from kagi.store import KeyValueStore, open_store
from services.otp_service.app.repository import TOKENS, record_ops
from services.otp_service.app.use_cases import OtpService
from services.otp_service.domain import OtpPolicy, SeedVault, create_token
from services.otp_service.main import STORE_NAMESPACE
from tests.integration.otp.otp_grpc_support import CHEAP_HASHER, KEK_1, PEPPER, USAGE_START_PASSWORD
from tests.support.cli import admin_argv, from_script

TWO_DAYS = 2 * 24 * 3600.0


def _env(state_dir: Path) -> dict[str, str]:
    """The OTP service's environment, on a SQLite store in STATE_DIR."""
    return {
        **os.environ,
        "KAGI_INSECURE_PLAINTEXT": "1",
        "KAGI_STORE_URL": "sqlite:",
        "KAGI_STATE_DIR": str(state_dir),
        "KAGI_OTP_PEPPER": PEPPER.decode(),
        "KAGI_OTP_KEK_ID": KEK_1.key_id,
        "KAGI_OTP_KEK": base64.b64encode(KEK_1.key).decode(),
    }


async def _token_ids(store: KeyValueStore) -> list[str]:
    return sorted(entry.key for entry in (await store.list(TOKENS)).entries)


async def test_an_orphan_is_counted_then_removed_and_a_claimed_token_stays(tmp_path: Path) -> None:
    """Two days ago one token was created whole and one stopped after its records: the dry run counts 1 and
    changes nothing, the run removes 1 (JSON for scripts), the claimed token remains, and again finds 0."""
    state_dir = tmp_path / "state"
    clock = FakeClock(time.time() - TWO_DAYS)
    store = open_store("sqlite:", namespace=STORE_NAMESPACE, state_dir=state_dir, clock=clock)
    try:
        service = OtpService(store, vault=SeedVault(KEK_1), hasher=CHEAP_HASHER, policy=OtpPolicy(), clock=clock)
        live = await service.create(owner_id="user-0001", email="a@example.jp", usage_start_password="1234")
        stopped = create_token(
            owner_id="user-0002",
            email="b@example.jp",
            usage_start_password=USAGE_START_PASSWORD,
            now=clock.now(),
            policy=OtpPolicy(),
            hasher=CHEAP_HASHER,
        )
        await store.commit(record_ops(stopped))  # and then the process died: no claim
        assert await _token_ids(store) == sorted([live.token_id, stopped.token.token_id])
    finally:
        await store.close()
    env = _env(state_dir)

    planned = await from_script(admin_argv(state_dir, "remove-otp-orphans", "--dry-run"), env)
    assert planned.code == 0, planned.err
    plan = {key: value.strip() for key, _, value in (line.partition("  ") for line in planned.err.splitlines())}
    assert plan["unclaimed tokens"] == "1"

    removed = await from_script(admin_argv(state_dir, "remove-otp-orphans", "--yes", "--json"), env)
    assert removed.code == 0, removed.err
    assert json.loads(removed.out) == {"found": 1, "removed": 1}

    again = await from_script(admin_argv(state_dir, "remove-otp-orphans", "--yes"), env)
    assert again.code == 0, again.err
    assert again.out.strip() == "removed 0 orphaned token(s)"

    store = open_store("sqlite:", namespace=STORE_NAMESPACE, state_dir=state_dir, clock=clock)
    try:
        assert await _token_ids(store) == [live.token_id]
    finally:
        await store.close()

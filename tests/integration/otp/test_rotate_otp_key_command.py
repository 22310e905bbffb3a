"""`kagi admin rotate-otp-key` as an operator runs it: it counts first what it will re-seal (`--dry-run` stops
there, changing nothing), asks unless given `--yes`, draws its progress on a terminal's stderr, and reports on
stdout (`--json` for scripts)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from kagi.store import open_store
from services.otp_service.app.repository import TOKENS
from services.otp_service.domain import Token
from services.otp_service.main import STORE_NAMESPACE
from tests.integration.otp.otp_grpc_support import KEK_1, KEK_2, PEPPER, Backend, OtpCluster, provision
from tests.support.cli import PROMPT, admin_argv, from_script, from_terminal


@pytest.fixture
def backend(tmp_path: Path) -> Backend:
    """A SQLite store under the service's real namespace, which the command finds as `kagi serve otp` would."""
    return Backend("sqlite", "sqlite:", tmp_path / "state", STORE_NAMESPACE)


def _env(backend: Backend) -> dict[str, str]:
    """The OTP service's environment after the switch: k2 current, k1 older."""
    return {
        **os.environ,
        "KAGI_INSECURE_PLAINTEXT": "1",
        "KAGI_STORE_URL": backend.url,
        "KAGI_STATE_DIR": str(backend.state_dir),
        "KAGI_OTP_PEPPER": PEPPER.decode(),
        "KAGI_OTP_KEK_ID": KEK_2.key_id,
        "KAGI_OTP_KEK": base64.b64encode(KEK_2.key).decode(),
        "KAGI_OTP_KEK_OLD": f"{KEK_1.key_id}:{base64.b64encode(KEK_1.key).decode()}",
    }


async def _key_ids(backend: Backend) -> list[str]:
    store = open_store(backend.url, namespace=backend.namespace, state_dir=backend.state_dir)
    try:
        page = await store.list(TOKENS, page_size=1000)
    finally:
        await store.close()
    tokens = [Token.from_bytes(e.value) for e in page.entries]
    return sorted(t.sealed_seed.key_id for t in tokens if t.sealed_seed is not None)


async def test_dry_run_counts_then_the_rotation_shows_progress(cluster: OtpCluster, backend: Backend) -> None:
    """Three seeds sealed under k1: --dry-run says 3 of 3 would be re-sealed under k2 and leaves them under k1;
    on a terminal with --yes the progress bar names the key and stdout reports 3 re-sealed; a second run from a
    script with --json re-seals 0 and draws nothing on stderr."""
    await cluster.start()
    for n in range(3):
        await provision(cluster, user_id=f"user-{n:04d}")
    assert await _key_ids(backend) == ["k1"] * 3

    planned = await from_script(admin_argv(backend.state_dir, "rotate-otp-key", "--dry-run"), _env(backend))
    assert planned.code == 0, planned.err
    plan = {key: value.strip() for key, _, value in (line.partition("  ") for line in planned.err.splitlines())}
    assert (plan["key"], plan["tokens"], plan["to re-seal"]) == ("k2", "3", "3")
    assert PROMPT not in planned.err
    assert await _key_ids(backend) == ["k1"] * 3

    rotated = await from_terminal(
        admin_argv(backend.state_dir, "rotate-otp-key", "--yes"), stdin_terminal=False, env=_env(backend)
    )
    assert rotated.code == 0, rotated.shown
    assert "re-sealing seeds under key k2" in rotated.shown
    assert rotated.out.strip() == "re-sealed 3 seed(s) under key k2"
    assert await _key_ids(backend) == ["k2"] * 3

    again = await from_script(admin_argv(backend.state_dir, "rotate-otp-key", "--yes", "--json"), _env(backend))
    assert again.code == 0, again.err
    assert json.loads(again.out) == {"key_id": "k2", "tokens": 3, "resealed": 0}
    assert "re-sealing" not in again.err

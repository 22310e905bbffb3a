"""`kagi admin` exit codes, each from real parts: 0 done, 1 the operation failed (the service refused it, a broken
audit chain), 2 usage (a wrong option), 3 not reachable (a service on a closed port, a Redis store on a closed
port); `kagi admin --help` documents them, and how the command finds its credential and the services in
production."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from click.testing import CliRunner

from kagi.cli.main import cli
from kagi.clock import FakeClock
from kagi.journal import AUDIT
from kagi.store import open_store
from tests.support.cli import admin_argv, from_script
from tests.support.enrollment_flow import Stack
from tests.support.frontend import completed
from tests.support.ports import free_port


def _env(stack: Stack, **overrides: str) -> dict[str, str]:
    targets = {f"KAGI_{name.upper()}_TARGET": stack.targets[name] for name in stack.targets}
    return {**os.environ, **targets, **overrides}


def test_help_documents_the_exit_codes_and_the_production_settings() -> None:
    """`kagi admin --help` lists the four exit codes and every variable that points it at its credential and the
    services."""
    text = CliRunner().invoke(cli, ["admin", "--help"]).output
    for variable in (
        "KAGI_ADMIN_TLS_CERT",
        "KAGI_ADMIN_TLS_KEY",
        "KAGI_ADMIN_TLS_CA",
        "KAGI_CA_TARGET",
        "KAGI_OTP_TARGET",
        "KAGI_ENROLLMENT_TARGET",
        "KAGI_INTERNAL_DNS_SUFFIX",
        "KAGI_STORE_URL",
    ):
        assert variable in text
    for code in ("0  done", "1  the operation failed", "2  usage", "3  not reachable"):
        assert code in text


async def test_done_failed_usage_and_unreachable(stack: Stack) -> None:
    """list-users exits 0; show-user of an unknown user exits 1 naming the service's reason; an unknown option
    and two exclusive filters exit 2; the enrollment service on a closed port exits 3 naming it unavailable."""
    assert stack.dev is not None
    state_dir = stack.dev.state_dir

    assert (await from_script(admin_argv(state_dir, "list-users"), _env(stack))).code == 0

    unknown = await from_script(admin_argv(state_dir, "show-user", "--user", "no-such-user"), _env(stack))
    assert unknown.code == 1
    assert "NOT_FOUND" in unknown.err

    assert (await from_script(admin_argv(state_dir, "list-users", "--no-such-option"), _env(stack))).code == 2
    both = await from_script(
        admin_argv(state_dir, "list-users", "--company", "x", "--account", "001-ordinary-1"), _env(stack)
    )
    assert both.code == 2

    closed = _env(stack, KAGI_ENROLLMENT_TARGET=f"127.0.0.1:{free_port()}")
    down = await from_script(admin_argv(state_dir, "list-users"), closed)
    assert down.code == 3, down.err
    assert "UNAVAILABLE" in down.err


async def test_rotate_otp_key_exits_3_when_its_store_is_down(tmp_path: Path) -> None:
    """rotate-otp-key with the OTP service's environment but its Redis on a closed port exits 3, not 1."""
    env = {
        **os.environ,
        "KAGI_INSECURE_PLAINTEXT": "1",
        "KAGI_STORE_URL": f"redis://127.0.0.1:{free_port()}/0",
        "KAGI_STATE_DIR": str(tmp_path),
        "KAGI_OTP_PEPPER": "pepper-for-the-otp-service-tests!",
        "KAGI_OTP_KEK_ID": "k2",
        "KAGI_OTP_KEK": base64.b64encode(bytes(range(100, 132))).decode(),
    }
    down = await from_script(admin_argv(tmp_path, "rotate-otp-key", "--yes"), env)
    assert down.code == 3, down.err
    assert "UNAVAILABLE" in down.err


async def test_verify_audit_tells_a_broken_chain_from_a_store_that_is_down(
    stack: Stack, workdir: Path, clock: FakeClock
) -> None:
    """verify-audit exits 0 on the stack's trails; after one enrollment audit record is rewritten it exits 1
    naming the sequence (and --json says which trail broke); with its store on a closed Redis port it exits 3."""
    assert stack.dev is not None
    state_dir = stack.dev.state_dir
    await (await completed(stack, workdir, clock)).login()
    argv = admin_argv(state_dir, "verify-audit", "--service", "enrollment")
    assert (await from_script(argv, _env(stack))).code == 0

    store = open_store("sqlite:", namespace="enrollment", state_dir=state_dir)
    try:
        entry = (await store.list(AUDIT, page_size=1)).entries[0]  # the chain's first record
        body = json.loads(entry.value)
        body["actor"] = "someone else"
        await store.compare_and_swap(AUDIT, entry.key, json.dumps(body).encode(), version=entry.version)
    finally:
        await store.close()
    sequence = int(entry.key)
    broken = await from_script([*argv, "--json"], _env(stack))
    assert broken.code == 1, broken.err
    assert f"BROKEN at sequence {sequence}" in broken.err
    reports = json.loads(broken.out)
    assert [(r["service"], r["ok"], r["bad_sequence"]) for r in reports] == [("enrollment", False, sequence)]

    down = await from_script([*argv, "--store-url", f"redis://127.0.0.1:{free_port()}/0"], _env(stack))
    assert down.code == 3, down.err
    assert "UNAVAILABLE" in down.err


def test_kagi_token_exits_3_when_the_gateway_cannot_be_reached(tmp_path: Path) -> None:
    """`kagi token activate` against a gateway on a closed port exits 3 (not reachable), as `kagi admin` does."""
    gateway = f"https://127.0.0.1:{free_port()}"
    args = ["token", "activate", "--gateway", gateway, "--service-id", "12345678", "--user-id", "87654321"]
    args += ["--agree", "--password-stdin", "--file", str(tmp_path / "token.json")]
    result = CliRunner().invoke(cli, args, input="4831\n")
    assert result.exit_code == 3, result.output
    assert "cannot reach the gateway" in result.output

"""`kagi admin` asks before a change: it shows what it will do (the user it acts on) and waits for a yes on a
terminal; `--yes` skips the question; `--dry-run` only shows the plan; from a script without `--yes` it refuses
with exit 2 and says to pass `--yes`, and nothing changes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from kagi.cli.admin import admin
from kagi.cli.main import cli
from kagi.clock import FakeClock
from tests.support.cli import PROMPT, admin_argv, from_script, from_terminal
from tests.support.enrollment_flow import Stack
from tests.support.frontend import completed

CHANGES = [
    ["lock-user", "--user", "u-1"],
    ["unlock-user", "--user", "u-1"],
    ["unlock-token", "--user", "u-1"],
    ["unlock-token", "--token", "t-1"],
    ["reset-password", "--user", "u-1", "--kind", "login"],
    ["reissue-token", "--user", "u-1"],
    ["disable-token", "--user", "u-1", "--reason", "lost phone"],
    ["reissue-certificate", "--user", "u-1"],
    ["unlock-application", "a-1"],
    ["rotate-otp-key"],
    ["revoke", "--serial", "1a2b"],
    ["sign-root-crl", "--root-key", "root-key.pem", "--root-passphrase-file", "root-passphrase"],
    ["move-root-key", "--root-key-out", "root-key.pem", "--root-passphrase-file", "root-passphrase"],
    ["remove-otp-orphans"],
    ["migrate-otp-placement"],
]


def test_every_change_offers_yes_and_dry_run_and_every_list_or_show_offers_json() -> None:
    """The commands above take --yes and --dry-run; every list-* and show-* command of `kagi admin` takes --json."""
    for args in CHANGES:
        assert {"yes", "dry_run"} <= {p.name for p in admin.commands[args[0]].params}, args[0]
    for name, command in admin.commands.items():
        if name.startswith(("list-", "show-")):
            assert "as_json" in {p.name for p in command.params}, name


@pytest.mark.parametrize("args", CHANGES, ids=lambda args: args[0])
def test_every_change_refuses_without_a_terminal_or_yes(args: list[str], tmp_path: Path) -> None:
    """Each command that changes state, run with no terminal to ask on and without --yes, exits 2 and says to
    pass --yes, before it reaches anything (no service runs here)."""
    result = CliRunner().invoke(cli, ["admin", "--state-dir", str(tmp_path), *args])
    assert result.exit_code == 2, result.output
    assert "pass --yes" in result.output
    assert "needs confirmation" in result.output


def _user_env(stack: Stack) -> dict[str, str]:
    return {**os.environ, **{f"KAGI_{name.upper()}_TARGET": stack.targets[name] for name in stack.targets}}


async def _shown(stack: Stack, user_id: str) -> dict[str, str]:
    assert stack.dev is not None
    done = await from_script(
        admin_argv(stack.dev.state_dir, "show-user", "--user", user_id, "--json"), _user_env(stack)
    )
    assert done.code == 0, done.err
    user: dict[str, str] = json.loads(done.out)
    return user


async def test_a_script_without_yes_changes_nothing(stack: Stack, workdir: Path, clock: FakeClock) -> None:
    """lock-user from a script without --yes exits 2 naming --yes; the user stays ACTIVE and can log in; with
    --yes the same command locks the user."""
    assert stack.dev is not None
    customer = await completed(stack, workdir, clock)
    user_id = (await customer.login()).user.user_id

    refused = await from_script(admin_argv(stack.dev.state_dir, "lock-user", "--user", user_id), _user_env(stack))
    assert refused.code == 2
    assert "pass --yes" in refused.err
    assert refused.out == ""
    assert (await _shown(stack, user_id))["state"] == "ACTIVE"
    assert (await customer.login()).access_token

    done = await from_script(
        admin_argv(stack.dev.state_dir, "lock-user", "--user", user_id, "--yes", "--json"), _user_env(stack)
    )
    assert done.code == 0, done.err
    assert json.loads(done.out)["state"] == "LOCKED"


async def test_on_a_terminal_it_shows_the_user_and_asks(stack: Stack, workdir: Path, clock: FakeClock) -> None:
    """On a terminal, lock-user shows the user it acts on (login ID, company, state) and what follows, then asks:
    "n" aborts with exit 1 and the user stays ACTIVE; "y" locks the user. stdout carries only the result."""
    assert stack.dev is not None
    customer = await completed(stack, workdir, clock)
    user_id = (await customer.login()).user.user_id
    argv = admin_argv(stack.dev.state_dir, "lock-user", "--user", user_id, "--json")

    declined = await from_terminal(argv, answer="n", env=_user_env(stack))
    assert declined.code == 1
    assert PROMPT in declined.shown
    for shown in (f"lock user {user_id}", customer.login_id, "ACTIVE", "every live session ends now"):
        assert shown in declined.shown
    assert declined.out == ""
    assert (await _shown(stack, user_id))["state"] == "ACTIVE"

    accepted = await from_terminal(argv, answer="y", env=_user_env(stack))
    assert accepted.code == 0, accepted.err
    assert json.loads(accepted.out)["state"] == "LOCKED"
    assert (await _shown(stack, user_id))["state"] == "LOCKED"


async def test_dry_run_shows_the_plan_and_changes_nothing(stack: Stack, workdir: Path, clock: FakeClock) -> None:
    """disable-token --dry-run, from a script, prints what it would do (the user, its token's state) and exits 0;
    the token stays ACTIVE."""
    assert stack.dev is not None
    customer = await completed(stack, workdir, clock)
    user_id = (await customer.login()).user.user_id
    argv = admin_argv(stack.dev.state_dir, "disable-token", "--user", user_id, "--reason", "lost phone", "--dry-run")

    planned = await from_script(argv, _user_env(stack))
    assert planned.code == 0, planned.err
    assert f"Would disable the token of user {user_id}" in planned.err
    assert customer.login_id in planned.err
    assert "lost phone" in planned.err
    assert PROMPT not in planned.err
    assert (await _shown(stack, user_id))["token_state"] == "ACTIVE"


async def test_revoke_dry_run_shows_the_certificate_and_leaves_it_active(
    stack: Stack, workdir: Path, clock: FakeClock
) -> None:
    """revoke --dry-run looks the certificate up (GetCertificate) and shows it (subject, state) with what
    revoking would do; the certificate stays active."""
    assert stack.dev is not None
    customer = await completed(stack, workdir, clock)
    user_id = (await customer.login()).user.user_id
    listing = admin_argv(stack.dev.state_dir, "list-certificates", "--subject", user_id, "--json")
    listed = await from_script(listing, _user_env(stack))
    assert listed.code == 0, listed.err
    [certificate] = json.loads(listed.out)
    serial = certificate["serial_number"]

    argv = admin_argv(stack.dev.state_dir, "revoke", "--serial", serial, "--reason", "keyCompromise", "--dry-run")
    planned = await from_script(argv, _user_env(stack))
    assert planned.code == 0, planned.err
    for shown in (f"Would revoke certificate {serial}", user_id, "active", "revoked for good (keyCompromise)"):
        assert shown in planned.err
    assert planned.out == ""
    assert [c["state"] for c in json.loads((await from_script(listing, _user_env(stack))).out)] == ["active"]

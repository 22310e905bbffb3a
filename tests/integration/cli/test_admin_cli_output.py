"""`kagi admin` lists and shows as tables for people and as JSON for scripts (`--json`), and draws a progress
count on stderr while a listing's pages arrive, only when stderr is a terminal."""

from __future__ import annotations

import json
import os
from pathlib import Path

from kagi.clock import FakeClock
from tests.support.cli import admin_argv, from_script, from_terminal
from tests.support.enrollment_flow import Stack
from tests.support.frontend import completed


def _env(stack: Stack) -> dict[str, str]:
    return {**os.environ, **{f"KAGI_{name.upper()}_TARGET": stack.targets[name] for name in stack.targets}}


async def _stdout(stack: Stack, *args: str) -> str:
    assert stack.dev is not None
    done = await from_script(admin_argv(stack.dev.state_dir, *args), _env(stack))
    assert done.code == 0, done.err
    return done.out


async def test_lists_and_shows_are_tables_and_json(stack: Stack, workdir: Path, clock: FakeClock) -> None:
    """list-users, show-user and list-applications print a table whose first line names the columns (a pipe gets
    no box drawing and no colour, one line per row); with --json the same objects come as one JSON document."""
    customer = await completed(stack, workdir, clock)
    user_id = (await customer.login()).user.user_id
    assert customer.notice is not None
    application_id = customer.notice.application.application_id

    users = (await _stdout(stack, "list-users")).splitlines()
    assert users[0].split() == [
        "USER_ID",
        "LOGIN_ID",
        "USER_NAME",
        "COMPANY_NAME",
        "STATE",
        "TOKEN_STATE",
        "LOCK_REASON",
    ]
    assert [line.split()[:2] for line in users[1:]] == [[user_id, customer.login_id]]
    assert "\x1b" not in "\n".join(users)
    assert [u["user_id"] for u in json.loads(await _stdout(stack, "list-users", "--json"))] == [user_id]

    lines = (await _stdout(stack, "show-user", "--user", user_id)).splitlines()
    shown = {key: value.strip() for key, _, value in (line.partition(" ") for line in lines)}
    assert (shown["user_id"], shown["login_id"], shown["state"]) == (user_id, customer.login_id, "ACTIVE")
    assert json.loads(await _stdout(stack, "show-user", "--user", user_id, "--json"))["login_id"] == customer.login_id

    applications = (await _stdout(stack, "list-applications")).splitlines()
    assert applications[0].split() == ["APPLICATION_ID", "COMPANY_NAME", "ACCOUNT", "STATE", "EXPIRES_AT"]
    assert any(line.startswith(application_id) for line in applications[1:])
    listed = json.loads(await _stdout(stack, "list-applications", "--json"))
    assert application_id in {a["application_id"] for a in listed}


async def test_progress_shows_on_a_terminal_only(stack: Stack, workdir: Path, clock: FakeClock) -> None:
    """list-users draws "listing users" and its count on stderr when stderr is a terminal, and the table still
    goes to stdout; from a script stderr stays empty."""
    assert stack.dev is not None
    customer = await completed(stack, workdir, clock)
    argv = admin_argv(stack.dev.state_dir, "list-users")

    on_terminal = await from_terminal(argv, stdin_terminal=False, env=_env(stack))
    assert on_terminal.code == 0, on_terminal.shown
    assert "listing users" in on_terminal.shown
    assert customer.login_id in on_terminal.out

    scripted = await from_script(argv, _env(stack))
    assert scripted.code == 0
    assert scripted.err == ""
    assert customer.login_id in scripted.out

"""The command line as an operator meets it: `kagi` run as its own process, from a script (no terminal) or from a
terminal (a pseudo-terminal on stdin and stderr, stdout still a pipe), with its exit code and both outputs."""

from __future__ import annotations

import asyncio
import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.tools import tool

PROMPT = "Go ahead?"
"""What the command line asks before a change, on stderr."""

_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@dataclass(frozen=True)
class Finished:
    """A finished command: its exit code, its stdout, and its stderr (or, on a terminal, what the terminal showed)."""

    code: int
    out: str
    err: str

    @property
    def shown(self) -> str:
        """Return stderr as a person reads it: without the terminal's colour and cursor codes."""
        return _ESCAPES.sub("", self.err).replace("\r\n", "\n")


ISOLATED = (
    "KAGI_STATE_DIR",
    "KAGI_STORE_URL",
    "KAGI_CA_DIR",
    "KAGI_CA_KEY_PASSPHRASE",
    "KAGI_CA_KEY_PASSPHRASE_FILE",
    "KAGI_PKI_BASE_URL",
    "KAGI_ADMIN_TLS_CERT",
    "KAGI_ADMIN_TLS_KEY",
    "KAGI_ADMIN_TLS_CA",
    "KAGI_CA_TARGET",
)
"""Variables that would make a command under test use something other than what the test names."""


def isolated_env(**extra: str) -> dict[str, str]:
    """Return this process's environment without ISOLATED, with EXTRA added."""
    env = {name: value for name, value in os.environ.items() if name not in ISOLATED}
    env.update(extra)
    return env


def admin_argv(state_dir: Path, *args: str) -> list[str]:
    """Return `kagi admin --state-dir STATE_DIR ARGS...`."""
    return [tool("kagi"), "admin", "--state-dir", str(state_dir), *args]


async def from_script(argv: list[str], env: dict[str, str] | None = None) -> Finished:
    """Run a command as a script does: stdin from /dev/null, stdout and stderr pipes; whatever its exit code."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    async with asyncio.timeout(90):
        out, err = await process.communicate()
    assert process.returncode is not None
    return Finished(process.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


async def from_terminal(
    argv: list[str], *, answer: str | None = None, stdin_terminal: bool = True, env: dict[str, str] | None = None
) -> Finished:
    """Run a command from a terminal: stderr (and stdin, unless told otherwise) on a pseudo-terminal, stdout a pipe.

    When `answer` is given, it is typed once the command asks PROMPT. `err` is what the terminal showed.
    """
    return await asyncio.to_thread(_on_terminal, argv, answer, stdin_terminal, env)


def _on_terminal(argv: list[str], answer: str | None, stdin_terminal: bool, env: dict[str, str] | None) -> Finished:
    primary, secondary = pty.openpty()
    # A terminal 160 columns wide, as an operator's usually is (a fresh pseudo-terminal has no size at all).
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    process = subprocess.Popen(
        argv,
        stdin=secondary if stdin_terminal else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=secondary,
        env=env,
    )
    os.close(secondary)
    shown = b""
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([primary], [], [], 1.0)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # the terminal is gone: every process holding it has exited
                break
            if not chunk:
                break
            shown += chunk
            if answer is not None and PROMPT.encode() in shown:
                os.write(primary, answer.encode() + b"\n")
                answer = None
        assert process.stdout is not None
        out = process.stdout.read()
        code = process.wait(timeout=90)
    finally:
        os.close(primary)
        if process.poll() is None:
            process.kill()
    return Finished(code, out.decode(errors="replace"), shown.decode(errors="replace"))

"""Finding the real third-party programs the tests drive (openssl, grpcurl, oathtool, pkilint's linters)."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path


def tool(name: str) -> str:
    """Return the path of a program: beside this interpreter (installed by the dev extras) or on PATH.

    A missing program fails the test with the package to install; it is never silently skipped.
    """
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise AssertionError(f"{name} is not installed: scripts/test.sh installs it (dev extras or apt-get)")
    return found


async def run(argv: list[str], *, stdin: bytes | None = None, env: dict[str, str] | None = None) -> str:
    """Execute a program without blocking the event loop (the servers under test share it).

    Returns its stdout; a non-zero exit fails with the program's stderr.
    """
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate(stdin)
    if process.returncode != 0:
        raise AssertionError(f"{argv[0]} exited {process.returncode}: {err.decode(errors='replace')}")
    return out.decode()

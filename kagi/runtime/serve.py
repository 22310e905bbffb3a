"""Running a component: until SIGINT/SIGTERM with a graceful stop, and as N worker processes on one port."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
from collections.abc import Awaitable, Callable
from multiprocessing.connection import wait
from typing import Protocol

import structlog

log = structlog.get_logger("kagi.serve")


class Stoppable(Protocol):
    """Stoppable is a running component that can be asked to stop gracefully."""

    async def stop(self, grace: float = 5.0) -> None: ...


async def serve_until_signalled(start: Callable[[], Awaitable[Stoppable]], *, grace: float = 5.0) -> None:
    """serve_until_signalled starts a component, waits for SIGINT or SIGTERM, then stops it within `grace`."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    component = await start()
    try:
        await stopping.wait()
        log.info("stopping", grace_seconds=grace)
    finally:
        await component.stop(grace)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def run_workers(workers: int, target: Callable[[], None]) -> None:
    """run_workers runs `target` in `workers` processes (they share the port through SO_REUSEPORT).

    With one worker it runs in this process. A worker that dies takes the others down, so a supervisor
    (systemd, Kubernetes) restarts the whole set rather than leaving it half-alive.
    """
    if workers <= 1:
        target()
        return
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=target, name=f"worker-{i}", daemon=False) for i in range(workers)]
    for process in processes:
        process.start()

    def forward(signum: int, _frame: object) -> None:
        for process in processes:
            if process.is_alive() and process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)

    wait([process.sentinel for process in processes])
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join()

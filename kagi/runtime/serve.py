"""Running a component: until SIGINT/SIGTERM with a graceful stop, and as N worker processes on one port."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import shutil
import signal
import tempfile
from collections.abc import Awaitable, Callable
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from typing import Protocol

import structlog
from prometheus_client import multiprocess

from kagi.runtime.management import MULTIPROCESS_ENV
from kagi.runtime.tls_reload import request_reload

log = structlog.get_logger("kagi.serve")


class Stoppable(Protocol):
    """A running component that can be asked to stop gracefully."""

    async def stop(self, grace: float = 5.0) -> None: ...


async def serve_until_signalled(start: Callable[[], Awaitable[Stoppable]], *, grace: float = 5.0) -> None:
    """Start a component, waits for SIGINT or SIGTERM, then stop it within `grace`.

    SIGHUP has every listener and client read its certificate files again (they also do when the files change).
    """
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, request_reload)
    component = await start()
    try:
        await stopping.wait()
        log.info("stopping", grace_seconds=grace)
    finally:
        await component.stop(grace)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)


def run_workers(workers: int, target: Callable[[], None]) -> None:
    """Run `target` in `workers` processes (they share the port through SO_REUSEPORT).

    With one worker it runs in this process. A worker that dies takes the others down, so a supervisor
    (systemd, Kubernetes) restarts the whole set rather than leaving it half-alive.

    The workers share the management listener's port too, so a scrape reaches any one of them: before starting
    them, PROMETHEUS_MULTIPROC_DIR is set to a fresh directory (prometheus-client's multiprocess mode, read at
    import), where each worker keeps its metrics and from which any worker answers for all. A dead worker's live
    gauges are dropped (`mark_process_dead`); the directory goes when the set stops.
    """
    if workers <= 1:
        target()
        return
    directory = tempfile.mkdtemp(prefix="kagi-metrics-")
    previous = os.environ.get(MULTIPROCESS_ENV)
    os.environ[MULTIPROCESS_ENV] = directory  # inherited by the spawned workers
    try:
        _run_processes(workers, target, directory)
    finally:
        if previous is None:
            os.environ.pop(MULTIPROCESS_ENV, None)
        else:
            os.environ[MULTIPROCESS_ENV] = previous
        shutil.rmtree(directory, ignore_errors=True)


def _run_processes(workers: int, target: Callable[[], None], directory: str) -> None:
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
    signal.signal(signal.SIGHUP, forward)  # each worker reloads its certificate files

    def reap(process: BaseProcess) -> None:
        process.join()
        if process.pid is not None:
            multiprocess.mark_process_dead(process.pid, directory)  # type: ignore[no-untyped-call]

    ended = wait([process.sentinel for process in processes])
    for process in processes:
        if process.sentinel in ended:
            reap(process)  # the others may still be scraped while they stop: its live gauges go first
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        reap(process)

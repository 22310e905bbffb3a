"""Faults under load: the CA, OTP and enrollment services and the gateway run as real `kagi serve` processes on a
Redis with AOF (`appendfsync always`), under a mixed load of setups (the ten steps, over gRPC as the gateway),
logins and OTP step-ups (UserService as the gateway), operator revocations and OCSP requests (the gateway's
/pki/ocsp). Each component, then Redis, is SIGKILLed mid-load and started again on the same port; clients retry
what failed with UNAVAILABLE / 503 after a short backoff, with the same request id.

Afterwards a ledger of everything a client saw acknowledged is read back from the services: nothing is missing,
nothing is there twice. Every call returned within its deadline (plus a small slack), every failure was an
outage answer with a message, and nothing failed outside the fault windows.

The quick tier runs in CI; the long tier (`KAGI_RELIABILITY_LONG=1`, several minutes) is run by hand and its
figures go to docs/reliability.md. `KAGI_RELIABILITY_REPORT=PATH` writes the run's summary there as JSON.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.reliability import (
    OUTAGE_OUTCOMES,
    Cluster,
    Fault,
    Ledger,
    Load,
    Recorder,
    TimedServices,
    faulted,
    format_report,
    hit_by_faults,
    summarize,
    verify,
)

pytestmark = pytest.mark.redis

DEADLINE = 5.0  # every call's deadline, gRPC and HTTP
SLACK = 1.5  # how late past its deadline a call may return on a loaded 2-core machine
TARGETS = ("ca", "otp", "enrollment", "gateway", "redis")
REDIS_GRACE = 10.0  # a Redis fault's window past readiness (kagi.store.redis now replaces broken pooled connections)


@dataclass(frozen=True)
class Plan:
    """One tier: how long the load runs between faults and how many rounds of the five faults."""

    rounds: int
    warmup: float  # clean load before the first fault (setups must complete for logins to start)
    down: float  # how long a killed component stays down
    settle: float  # clean load once every type has recovered, before the next fault
    recovery_limit: float  # after the restarted component is ready, every type succeeds again within this
    grace: float  # a fault's window lasts at least this long after the component is ready
    setup_workers: int
    login_workers: int
    ocsp_workers: int
    budget: float  # how long a client retries one operation before giving up


QUICK = Plan(
    rounds=1, warmup=8.0, down=1.0, settle=1.0, recovery_limit=15.0, grace=2.0,
    setup_workers=3, login_workers=1, ocsp_workers=1, budget=30.0,
)  # fmt: skip
LONG = Plan(
    rounds=3, warmup=20.0, down=3.0, settle=15.0, recovery_limit=20.0, grace=3.0,
    setup_workers=4, login_workers=2, ocsp_workers=2, budget=60.0,
)  # fmt: skip


async def _recovered(recorder: Recorder, fault: Fault, load: Load, plan: Plan) -> list[str]:
    """_recovered waits until each busy type has succeeded with a call started after the component was ready;
    it returns the types that had not within the plan's limit."""
    wanted = {"setup_step", "ocsp"} | ({"login"} if load.pool else set())
    end = fault.ready + plan.recovery_limit
    # The services' Redis pools hold connections that went idle across the restart: the store replaces each
    # before its first use (a closed socket, or a failed PING after 1 s idle), so REDIS_GRACE is only a margin.
    grace = REDIS_GRACE if fault.target == "redis" else plan.grace
    while time.monotonic() < end:
        missing = wanted - recorder.successes_since(fault.ready)
        if not missing:
            fault.window_end = max(time.monotonic(), fault.ready + grace)
            return []
        await asyncio.sleep(0.1)
    fault.window_end = end
    return sorted(wanted - recorder.successes_since(fault.ready))


async def run_faults_under_load(directory: Path, redis: Any, plan: Plan) -> dict[str, Any]:
    """Run one tier and return its summary, with the problems it found."""
    recorder = Recorder()
    cluster = Cluster(directory, redis, recorder)
    services: TimedServices | None = None
    try:
        # Cluster.start sets KAGI_IDEMPOTENCY_PENDING_SECONDS=5 for every service (a killed request's claim).
        await cluster.start()
        assert cluster.pki is not None
        services = TimedServices(cluster.targets(), cluster.pki.state_dir / "tls", cluster.smtp, deadline=DEADLINE)
        ledger = Ledger()
        workdir = directory / "clients"
        workdir.mkdir()
        load = Load(
            cluster, services, ledger, workdir, deadline=DEADLINE, budget=plan.budget,
            setup_workers=plan.setup_workers, login_workers=plan.login_workers, ocsp_workers=plan.ocsp_workers,
        )  # fmt: skip
        recorder.started = time.monotonic()
        running = asyncio.create_task(load.run())
        unrecovered: dict[str, list[str]] = {}
        await asyncio.sleep(plan.warmup)
        for round_ in range(plan.rounds):
            for target in TARGETS:
                fault = await cluster.kill_and_restart(target, plan.down)
                missing = await _recovered(recorder, fault, load, plan)
                if missing:
                    unrecovered[f"round {round_ + 1} {target}"] = missing
                await asyncio.sleep(plan.settle)
        await asyncio.sleep(2.0)
        load.stop.set()
        await asyncio.wait_for(running, timeout=plan.budget + 30)
        recorder.stopped = time.monotonic()
        problems = await verify(services, ledger)
        summary = summarize(recorder, ledger)
        summary["ledger_problems"] = problems
        summary["unrecovered"] = unrecovered
        summary["ocsp_violations"] = ledger.ocsp_violations
        summary["late"] = [
            f"{a.kind} {a.detail} {a.outcome} after {a.end - a.start:.2f} s"
            for a in recorder.attempts
            if a.end - a.start > a.deadline + SLACK
        ]
        interrupted = {a.op for a in recorder.attempts if a.outcome in OUTAGE_OUTCOMES}
        summary["not_outage_answers"] = [
            f"{a.kind} {a.detail} {a.outcome}: {a.message}"
            for a in recorder.attempts
            if not a.ok
            and (a.outcome not in OUTAGE_OUTCOMES or not a.message)
            # a retry refused as out of order is reported under retries_not_replayed
            and not (a.outcome == "FAILED_PRECONDITION" and a.op in interrupted)
        ]
        hit = hit_by_faults(recorder.attempts, recorder.faults)
        summary["errors_outside_faults"] = [
            f"{a.kind} {a.detail} {a.outcome} at +{a.start - recorder.started:.1f} s: {a.message[:120]}"
            for a in recorder.attempts
            if not a.ok and not faulted(a, hit)
        ]
        print("\n" + format_report(summary))
        _write_report(directory, summary)
        return summary
    finally:
        if services is not None:
            await services.close()
        cluster.stop()


def _write_report(directory: Path, summary: dict[str, Any]) -> None:
    text = json.dumps(summary, indent=2, ensure_ascii=False)
    (directory / "reliability-report.json").write_text(text)
    if path := os.environ.get("KAGI_RELIABILITY_REPORT"):
        Path(path).write_text(text)


def assert_nothing_lost(summary: dict[str, Any]) -> None:
    """State what every tier proves about its run."""
    assert summary["ledger_problems"] == [], "acknowledged operations missing or twice"
    assert summary["late"] == [], "calls that hung past their deadline"
    assert summary["not_outage_answers"] == [], "failures that were not a clear outage answer"
    assert summary["errors_outside_faults"] == [], "failures outside the fault windows"
    assert summary["unrecovered"] == {}, "types that did not succeed again after a fault"
    assert summary["ocsp_violations"] == [], "OCSP answers contradicting the acknowledged revocations"
    assert summary["refused"] == [], "operations the system refused outright"
    assert len(summary["faults"]) == 5 * summary["rounds"]
    assert summary["setups_completed"] >= 1
    assert summary["logins"] >= 1
    assert summary["ocsp_answers"] >= 1
    # A retry with the same request id must get the first answer, or be told to wait only briefly. A request
    # interrupted by a kill leaves its claim on the request id in the store (a killed process cannot release it,
    # nor can a process whose Redis died); the CA and the OTP service keep such a claim 120 s (not a setting),
    # so the retries meanwhile are told ABORTED, "still in progress", far past any client's patience.
    assert summary["gave_up"] == [], "operations still told ABORTED when their retry budget ran out"
    # When a kill lands between a step's write and the write of its answer for replays, the claim expires and
    # the retry runs the step again, which is refused as out of order: the effect happened once (read back),
    # but the client was never told that it succeeded.
    assert summary["retries_not_replayed"] == [], "retries answered FAILED_PRECONDITION instead of the first answer"


async def test_nothing_acknowledged_is_lost_when_each_component_and_redis_are_killed(
    tmp_path: Path, redis_factory: Callable[..., Any]
) -> None:
    """Quick tier: under a mixed load, the CA, OTP, enrollment, the gateway and then Redis are each SIGKILLed once
    and restarted. Every acknowledged step, certificate (one per enrollment), revocation, activation and login is
    found afterwards; clients saw only UNAVAILABLE / ABORTED-in-progress / 503 / a refused connection, each with a
    message and within its deadline, and no error outside the fault windows; every type of call succeeded again
    after each fault."""
    summary = await run_faults_under_load(tmp_path, redis_factory(), QUICK)
    summary["rounds"] = QUICK.rounds
    assert_nothing_lost(summary)


@pytest.mark.timeout(900)
async def test_long_tier_nothing_acknowledged_is_lost_over_rounds_of_faults(
    tmp_path: Path, redis_factory: Callable[..., Any]
) -> None:
    """Long tier (by hand, KAGI_RELIABILITY_LONG=1): three rounds of the five faults under a heavier load, each
    followed by a stretch of clean load; the same guarantees as the quick tier hold over the whole run, and its
    figures (rate, p99, error rate, recovery after each fault) are those docs/reliability.md reports."""
    if os.environ.get("KAGI_RELIABILITY_LONG") != "1":
        pytest.skip("skipped: set KAGI_RELIABILITY_LONG=1")
    summary = await run_faults_under_load(tmp_path, redis_factory(), LONG)
    summary["rounds"] = LONG.rounds
    assert_nothing_lost(summary)

"""`kagi admin rotate-otp-key`: re-seal every OTP seed under the current key-encryption key, on the store itself."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import click

from kagi.cli.output import confirm, dry_run_option, failure, json_option, print_json, progress, yes_option
from kagi.clock import SystemClock
from kagi.errors import KagiError
from kagi.runtime.logging import configure_logging

if TYPE_CHECKING:
    from services.otp_service.app.use_cases import OtpService
    from services.otp_service.main import OtpSettings

T = TypeVar("T")


@dataclass(frozen=True)
class _Plan:
    key_id: str
    tokens: int
    stale: int


@contextlib.asynccontextmanager
async def _otp_service() -> AsyncIterator[tuple[OtpSettings, OtpService]]:
    """Open the OTP service's use cases on its store, from the OTP service's environment; close the store after."""
    # Imported here so that `kagi --help` does not load the OTP service.
    from services.otp_service.main import OtpSettings, build_service

    settings = OtpSettings.from_env(os.environ)
    clock = SystemClock()
    store = settings.open_store(clock)
    try:
        yield settings, build_service(settings, store, clock=clock)
    finally:
        await store.close()


def _run(work: Coroutine[Any, Any, T]) -> T:
    """Run one command's WORK, its kagi errors turned into the command line's exit codes.

    Logs go to stderr as JSON, so stdout carries only the result; configured only once there is work to log (a
    refused command changes nothing, not even the process's logging).
    """
    configure_logging("otp-admin", level=os.environ.get("KAGI_LOG_LEVEL", "INFO"))
    try:
        return asyncio.run(work)
    except KagiError as exc:
        raise failure(exc) from None


async def _rotation(rotate: bool) -> tuple[_Plan, int]:
    """Count the seeds sealed under an older key (and with ROTATE re-seal them); return the plan and the count."""
    async with _otp_service() as (settings, service):
        tokens, stale = await service.rotation_plan()
        plan = _Plan(settings.kek.key_id, tokens, stale)
        if not rotate:
            return plan, 0
        with progress(f"re-sealing seeds under key {plan.key_id}", total=tokens) as advance:
            return plan, await service.rotate_keys(advance)


@click.command("rotate-otp-key")
@yes_option
@dry_run_option
@json_option('Print {"key_id", "tokens", "resealed"} as JSON.')
def rotate_otp_key(yes: bool, dry_run: bool, as_json: bool) -> None:
    """Re-seal every OTP seed under the current key-encryption key (KAGI_OTP_KEK / KAGI_OTP_KEK_ID).

    Run it with the OTP service's environment once every replica runs with the new key as KAGI_OTP_KEK and the
    old one in KAGI_OTP_KEK_OLD; when it reports success, the old key can be dropped from KAGI_OTP_KEK_OLD.
    Running it again re-seals nothing. Replicas keep verifying while it runs: each re-seal is a compare-and-swap.
    It first counts the seeds still sealed under an older key and asks (--yes skips the question, --dry-run only
    counts); a progress bar shows on a terminal while it works.
    """

    def plan() -> dict[str, object]:
        counted, _ = _run(_rotation(False))
        return {
            "key": counted.key_id,
            "tokens": counted.tokens,
            "to re-seal": counted.stale,
            "then": "the older keys in KAGI_OTP_KEK_OLD are no longer needed",
        }

    if not confirm("re-seal every OTP seed under the current key", plan, yes=yes, dry_run=dry_run):
        return
    done, count = _run(_rotation(True))
    if as_json:
        print_json({"key_id": done.key_id, "tokens": done.tokens, "resealed": count})
        return
    click.echo(f"re-sealed {count} seed(s) under key {done.key_id}")


async def _orphans(remove: bool, older_than: float) -> tuple[int, int]:
    """Find (and with REMOVE delete) the OTP's orphaned token records; return (found, removed)."""
    async with _otp_service() as (_, service):
        found = await service.find_orphans(older_than=older_than)
        if not remove or not found:
            return len(found), 0
        return len(found), await service.remove_orphans(older_than=older_than)


@click.command("remove-otp-orphans")
@click.option(
    "--older-than-hours",
    type=click.FloatRange(min=1),
    default=24.0,
    show_default=True,
    help="Only tokens created longer ago than this (a creation in progress is never an orphan).",
)
@yes_option
@dry_run_option
@json_option('Print {"found", "removed"} as JSON.')
def remove_otp_orphans(older_than_hours: float, yes: bool, dry_run: bool, as_json: bool) -> None:
    """Delete the records of OTP tokens whose creation never claimed their service ID.

    Creating a token writes its records, then claims its service ID; a crash (or a store failure) between the
    two leaves records that nobody can reach or list but that hold a user's e-mail address and password hash.
    Run it with the OTP service's environment, now and then or after an incident; replicas keep serving while it
    runs (each deletion is conditional on the record being unchanged and still unclaimed). It first counts what
    it would delete and asks (--yes skips the question, --dry-run only counts).
    """
    older_than = older_than_hours * 3600

    def plan() -> dict[str, object]:
        found, _ = _run(_orphans(False, older_than))
        return {"unclaimed tokens": found, "created before": f"{older_than_hours:g} hours ago"}

    if not confirm("delete the records of OTP tokens never claimed", plan, yes=yes, dry_run=dry_run):
        return
    found, removed = _run(_orphans(True, older_than))
    if as_json:
        print_json({"found": found, "removed": removed})
        return
    click.echo(f"removed {removed} orphaned token(s)")


async def _migration(migrate: bool) -> tuple[int, int]:
    """Count (and with MIGRATE move) the tokens still in the service-wide layout; return (tokens, moved)."""
    from kagi.store import SERVICE_WIDE, open_store
    from services.otp_service.app.migration import count_unmoved, migrate_to_placement
    from services.otp_service.main import OtpSettings

    settings = OtpSettings.from_env(os.environ)
    if settings.placement() is SERVICE_WIDE:
        return 0, 0  # SQLite: the OTP keeps the service-wide layout there, nothing to move
    old = open_store(settings.store_url, namespace=settings.namespace, state_dir=settings.state_dir)
    new = settings.open_store()
    try:
        unmoved = await count_unmoved(old)
        if not migrate or not unmoved:
            return unmoved, 0
        with progress("moving tokens to their per-token placement", total=unmoved) as advance:
            report = await migrate_to_placement(old, new, advance)
        return report.tokens, report.moved
    finally:
        await old.close()
        await new.close()


@click.command("migrate-otp-placement")
@yes_option
@dry_run_option
@json_option('Print {"tokens", "moved"} as JSON.')
def migrate_otp_placement(yes: bool, dry_run: bool, as_json: bool) -> None:
    """Move a Redis store's OTP tokens written before per-token placement to where the service now reads them.

    Upgrading from a version that kept every OTP key service-wide: stop every OTP replica, run this with the OTP
    service's environment, then start the new version. It moves each token's records in one commit and deletes
    the old ones; stopped half-way, run it again (it moves nothing twice). On SQLite there is nothing to move.
    It first counts the tokens to move and asks (--yes skips the question, --dry-run only counts).
    """

    def plan() -> dict[str, object]:
        unmoved, _ = _run(_migration(False))
        return {"tokens to move": unmoved, "before": "every OTP replica is stopped"}

    if not confirm("move the OTP tokens to their per-token placement", plan, yes=yes, dry_run=dry_run):
        return
    tokens, moved = _run(_migration(True))
    if as_json:
        print_json({"tokens": tokens, "moved": moved})
        return
    click.echo(f"moved {moved} of {tokens} token(s) to their per-token placement")

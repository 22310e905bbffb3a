"""`kagi admin rotate-otp-key`: re-seal every OTP seed under the current key-encryption key, on the store itself."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import click

from kagi.cli.output import confirm, dry_run_option, failure, json_option, print_json, progress, yes_option
from kagi.clock import SystemClock
from kagi.errors import KagiError
from kagi.runtime.logging import configure_logging

if TYPE_CHECKING:
    from services.otp_service.app.use_cases import OtpService


@dataclass(frozen=True)
class _Plan:
    key_id: str
    tokens: int
    stale: int


async def _with_service(work: str) -> tuple[_Plan, int]:
    # Imported here so that `kagi --help` does not load the OTP service.
    from services.otp_service.main import OtpSettings, build_service

    settings = OtpSettings.from_env(os.environ)
    clock = SystemClock()
    store = settings.open_store(clock)
    try:
        service: OtpService = build_service(settings, store, clock=clock)
        tokens, stale = await service.rotation_plan()
        plan = _Plan(settings.kek.key_id, tokens, stale)
        if work != "rotate":
            return plan, 0
        with progress(f"re-sealing seeds under key {plan.key_id}", total=tokens) as advance:
            return plan, await service.rotate_keys(advance)
    finally:
        await store.close()


def _run(work: str) -> tuple[_Plan, int]:
    try:
        return asyncio.run(_with_service(work))
    except KagiError as exc:
        raise failure(exc) from None


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
    # Logs go to stderr as JSON, so stdout carries only the result.
    configure_logging("otp-admin", level=os.environ.get("KAGI_LOG_LEVEL", "INFO"))

    def plan() -> dict[str, object]:
        counted, _ = _run("count")
        return {
            "key": counted.key_id,
            "tokens": counted.tokens,
            "to re-seal": counted.stale,
            "then": "the older keys in KAGI_OTP_KEK_OLD are no longer needed",
        }

    if not confirm("re-seal every OTP seed under the current key", plan, yes=yes, dry_run=dry_run):
        return
    done, count = _run("rotate")
    if as_json:
        print_json({"key_id": done.key_id, "tokens": done.tokens, "resealed": count})
        return
    click.echo(f"re-sealed {count} seed(s) under key {done.key_id}")

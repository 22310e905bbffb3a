"""`kagi admin rotate-otp-key`: re-seal every OTP seed under the current key-encryption key, on the store itself."""

from __future__ import annotations

import asyncio
import os

import click

from kagi.clock import SystemClock
from kagi.errors import KagiError
from kagi.runtime.logging import configure_logging


async def _rotate() -> tuple[int, str]:
    # Imported here so that `kagi --help` does not load the OTP service.
    from services.otp_service.main import OtpSettings, build_service

    settings = OtpSettings.from_env(os.environ)
    clock = SystemClock()
    store = settings.open_store(clock)
    try:
        service = build_service(settings, store, clock=clock)
        return await service.rotate_keys(), settings.kek.key_id
    finally:
        await store.close()


@click.command("rotate-otp-key")
def rotate_otp_key() -> None:
    """Re-seal every OTP seed under the current key-encryption key (KAGI_OTP_KEK / KAGI_OTP_KEK_ID).

    Run it with the OTP service's environment once every replica runs with the new key as KAGI_OTP_KEK and the
    old one in KAGI_OTP_KEK_OLD; when it reports success, the old key can be dropped from KAGI_OTP_KEK_OLD.
    Running it again re-seals nothing. Replicas keep verifying while it runs: each re-seal is a compare-and-swap.
    """
    # Logs go to stderr as JSON, so stdout carries only the result line.
    configure_logging("otp-admin", level=os.environ.get("KAGI_LOG_LEVEL", "INFO"))
    try:
        count, key_id = asyncio.run(_rotate())
    except KagiError as exc:
        raise click.ClickException(f"{exc.reason}: {exc}") from None
    click.echo(f"re-sealed {count} seed(s) under key {key_id}")

"""`kagi serve <component>`: one component per process (or N worker processes), configured from the environment."""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Awaitable, Callable
from typing import Any

import click

from kagi.errors import KagiError
from kagi.runtime.logging import configure_logging
from kagi.runtime.serve import Stoppable, run_workers, serve_until_signalled


def _run(component: str, start: Callable[[Any], Awaitable[Stoppable]], settings: Any) -> None:
    configure_logging(component, level=os.environ.get("KAGI_LOG_LEVEL", "INFO"))
    from kagi.runtime.tracing import configure_tracing  # OpenTelemetry loads only for a server

    # Before anything is started: tracing patches the server, channel and application constructors.
    tracing = configure_tracing(os.environ, service_name=f"kagi-{component}")
    try:
        asyncio.run(serve_until_signalled(functools.partial(start, settings)))
    finally:
        if tracing is not None:
            tracing.shutdown()


def _enrollment() -> tuple[Any, Callable[[Any], Awaitable[Stoppable]], int]:
    from services.enrollment_service.main import EnrollmentSettings, start_enrollment

    settings = EnrollmentSettings.from_env(os.environ)
    return settings, start_enrollment, settings.listen.workers


def _otp() -> tuple[Any, Callable[[Any], Awaitable[Stoppable]], int]:
    from services.otp_service.main import OtpSettings, start_otp

    settings = OtpSettings.from_env(os.environ)
    return settings, start_otp, settings.listen.workers


def _ca() -> tuple[Any, Callable[[Any], Awaitable[Stoppable]], int]:
    from services.ca_service.main import CaSettings, start_ca

    settings = CaSettings.from_env(os.environ)
    return settings, start_ca, settings.listen.workers


def _gateway() -> tuple[Any, Callable[[Any], Awaitable[Stoppable]], int]:
    from gateway.main import GatewaySettings, start_gateway

    settings = GatewaySettings.from_env(os.environ)
    return settings, start_gateway, settings.workers


COMPONENTS: dict[str, Callable[[], tuple[Any, Callable[[Any], Awaitable[Stoppable]], int]]] = {
    "ca": _ca,
    "enrollment": _enrollment,
    "gateway": _gateway,
    "otp": _otp,
}


@click.command()
@click.argument("component", type=click.Choice(sorted(COMPONENTS)))
def serve(component: str) -> None:
    """Run one COMPONENT until SIGINT/SIGTERM. Configuration comes from KAGI_* environment variables."""
    try:
        settings, start, workers = COMPONENTS[component]()
    except KagiError as exc:
        raise click.ClickException(str(exc)) from None
    run_workers(workers, functools.partial(_run, component, start, settings))

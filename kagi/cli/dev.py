"""`kagi dev`: the whole of kagi in one process for a developer's machine."""

from __future__ import annotations

import asyncio
import os
import shlex
from pathlib import Path

import click

from kagi.cli.stack import RunningStack, start_stack
from kagi.errors import KagiError
from kagi.runtime.logging import configure_logging
from kagi.runtime.serve import serve_until_signalled


def banner(stack: RunningStack) -> str:
    """Return what `kagi dev` prints once everything is up: where things are and what to try next."""
    tls = stack.tls_dir
    state = shlex.quote(str(stack.state_dir))
    grpcurl = (
        f"grpcurl -cacert {tls / 'ca.pem'} -cert {tls / 'developer.pem'} -key {tls / 'developer-key.pem'} "
        f"{stack.target('enrollment')} list"
    )
    return "\n".join(
        [
            f"kagi dev is running; state in {stack.state_dir}",
            f"  gateway      https://localhost:{stack.ports['gateway']}   (trust {tls / 'ca.pem'})",
            f"  public PKI   http://127.0.0.1:{stack.ports['gateway_http']}/pki/ca.pem",
            f"  token keys   https://localhost:{stack.ports['gateway']}/.well-known/jwks.json",
            f"  gRPC         CA {stack.target('ca')}   OTP {stack.target('otp')}   "
            f"enrollment {stack.target('enrollment')}",
            f"  management   http://127.0.0.1:{stack.ports['management']}/readyz   (/healthz, /metrics)",
            f"  mail         {stack.state_dir / 'mail'} (a Maildir)",
            f"  operator     {tls / 'developer.pem'} + {tls / 'developer-key.pem'}",
            "",
            "Explore the services:",
            f"  {grpcurl}",
            "A front-end's credential (then UserService/Authenticate with grpcurl, see the README):",
            f"  kagi admin --state-dir {state} issue-credential --role frontend --name web01 --out creds",
            "Next, register an application and get its notice:",
            f"  kagi admin --state-dir {state} register-application --branch 001 --account-type ordinary "
            '--account-number 1234567 --company "株式会社サンプル"',
            "Press Ctrl-C to stop.",
        ]
    )


@click.command()
@click.option(
    "--state-dir",
    default=".kagi",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the CA, the stores, the credentials and the mail live.",
)
def dev(state_dir: Path) -> None:
    """Run the CA, OTP and enrollment services and the gateway in one process (development only)."""
    configure_logging("dev", level=os.environ.get("KAGI_LOG_LEVEL", "WARNING"))

    async def start() -> RunningStack:
        stack = await start_stack(state_dir)
        click.echo(banner(stack))
        return stack

    from kagi.runtime.tracing import configure_tracing  # OpenTelemetry loads only for a server

    tracing = configure_tracing(os.environ, service_name="kagi-dev")  # before anything starts (see tracing)
    try:
        asyncio.run(serve_until_signalled(start))
    except KagiError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        if tracing is not None:
            tracing.shutdown()
    click.echo("kagi dev stopped.")

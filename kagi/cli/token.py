"""`kagi token ...`: a soft-token app for the terminal (steps 8-9 of the setup, then codes).

Exit codes as `kagi admin`'s: 0 done, 1 failed (a wrong password, a refused activation), 2 usage, 3 the gateway
cannot be reached.
"""

from __future__ import annotations

import base64
import sys
import time
from pathlib import Path

import click
import segno

from kagi.cli.output import failure
from kagi.errors import KagiError
from kagi.softtoken import vault
from kagi.softtoken.client import GatewayClient
from services.otp_service.domain.totp import Algorithm, TotpParameters, seconds_remaining, totp
from services.otp_service.domain.validation import validate_usage_start_password

_file_option = click.option(
    "--file",
    "token_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The token file (default $KAGI_TOKEN_FILE or ~/.config/kagi/token.json).",
)
_stdin_option = click.option(
    "--password-stdin", is_flag=True, help="Read the usage-start password from the first line of stdin."
)


def _password(from_stdin: bool, *, confirm: bool = False) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return str(click.prompt("利用開始パスワード / usage-start password", hide_input=True, confirmation_prompt=confirm))


def _load(token_file: Path | None, from_stdin: bool) -> vault.SoftToken:
    try:
        return vault.load(token_file or vault.default_path(), _password(from_stdin))
    except KagiError as exc:
        raise failure(exc, with_reason=False) from None


def _code(token: vault.SoftToken, now: float) -> tuple[str, int]:
    params = TotpParameters(Algorithm(token.algorithm), token.digits, token.period)
    key = base64.b32decode(token.secret + "=" * (-len(token.secret) % 8))
    return totp(key, now, params), seconds_remaining(now, token.period)


@click.group()
def token() -> None:
    """A soft token in the terminal: activate it once, then show its codes."""


@token.command()
@click.option("--gateway", required=True, help="The gateway's base URL, e.g. https://localhost:8443")
@click.option("--service-id", required=True, help="サービスID / service ID, from the mail.")
@click.option("--user-id", required=True, help="ユーザID / user ID, from the mail.")
@click.option("--cacert", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="CA file to trust.")
@click.option("--agree", is_flag=True, help="「上記の内容に同意する」: agree to the terms without asking.")
@_file_option
@_stdin_option
def activate(
    gateway: str,
    service_id: str,
    user_id: str,
    cacert: Path | None,
    agree: bool,
    token_file: Path | None,
    password_stdin: bool,
) -> None:
    """Activate the token (step 8), store its seed encrypted, and register the app (step 9)."""
    password = _password(password_stdin)
    try:
        validate_usage_start_password(password)
    except KagiError as exc:
        raise failure(exc, with_reason=False) from None
    if not agree and not click.confirm("上記の内容に同意する / I agree to the terms above", default=False):
        raise click.ClickException("同意が必要です / consent is required")
    path = token_file or vault.default_path()
    client = GatewayClient(gateway, cafile=cacert)
    try:
        soft = client.activate(service_id=service_id, user_id=user_id, usage_start_password=password)
        vault.save(path, soft, password)
        client.register(soft)
    except KagiError as exc:
        raise failure(exc, with_reason=False) from None
    click.echo(f"登録しました / registered. The token is stored in {path}; `kagi token show` shows its codes.")


@token.command()
@click.option("--once", is_flag=True, help="Print one line (code and seconds left) and exit.")
@_file_option
@_stdin_option
def show(once: bool, token_file: Path | None, password_stdin: bool) -> None:
    """Show the current code and its remaining seconds (a live countdown; Ctrl-C to stop)."""
    soft = _load(token_file, password_stdin)
    if once:
        code, remaining = _code(soft, time.time())
        click.echo(f"{code} {remaining}s")
        return
    width = 30
    try:
        while True:
            code, remaining = _code(soft, time.time())
            filled = round(width * remaining / soft.period)
            bar = "█" * filled + "░" * (width - filled)
            click.echo(f"\r  {code}  {bar} 残り {remaining:2d} 秒 / {remaining:2d}s left ", nl=False)
            time.sleep(0.5)
    except KeyboardInterrupt:
        click.echo()


@token.command()
@click.option("--png", type=click.Path(dir_okay=False, path_type=Path), help="Also write the QR code to this PNG.")
@_file_option
@_stdin_option
def qr(png: Path | None, token_file: Path | None, password_stdin: bool) -> None:
    """Print the otpauth:// URI and its QR code, for a standard authenticator app."""
    soft = _load(token_file, password_stdin)
    click.echo(soft.otpauth_uri)
    code = segno.make(soft.otpauth_uri, error="m")
    code.terminal(compact=True)
    if png is not None:
        code.save(str(png), scale=8, border=4)
        png.chmod(0o600)
        click.echo(f"QR code written to {png}")

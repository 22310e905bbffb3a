"""`kagi admin ...`: operator tasks, over gRPC with an operator certificate (or on local files for the CA)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click
import grpc

from kagi.enrollment.v1 import enrollment_pb2, enrollment_pb2_grpc
from kagi.errors import KagiError
from kagi.runtime.grpc_client import error_from_rpc, open_channel
from kagi.runtime.settings import TlsFiles
from services.enrollment_service.domain.messages import DEFAULT_CONTACT_TEXT, japan_time

T = TypeVar("T")


@dataclass(frozen=True)
class AdminContext:
    """How `kagi admin` reaches the services: targets and the operator's mTLS files."""

    state_dir: Path
    tls: TlsFiles
    targets: dict[str, str]

    def channel(self, service: str) -> grpc.aio.Channel:
        """Open an mTLS channel to one service as the operator."""
        return open_channel(self.targets[service], self.tls, server_name="localhost")


_ACCOUNT_TYPES_SHOWN = {
    enrollment_pb2.ACCOUNT_TYPE_ORDINARY: "普通 (ordinary)",
    enrollment_pb2.ACCOUNT_TYPE_CURRENT: "当座 (current)",
}


def contact_line() -> str:
    """Return the bank's contact line for notices (KAGI_CONTACT_TEXT), as the mails end with it."""
    return os.environ.get("KAGI_CONTACT_TEXT") or DEFAULT_CONTACT_TEXT


def notice_json(reply: Any) -> dict[str, str]:
    """Return a notice (an application's, or a reissue's) for scripts: the account and the temporary passwords."""
    application = reply.application
    notice = {
        "application_id": application.application_id,
        "branch_code": application.branch_code,
        "account_type": "ordinary" if application.account_type == enrollment_pb2.ACCOUNT_TYPE_ORDINARY else "current",
        "account_number": application.account_number,
        "company_name": application.company_name,
        "temporary_login_password": reply.temporary_login_password,
        "temporary_confirmation_password": reply.temporary_confirmation_password,
        "expires_at": application.expire_time.ToJsonString(),
    }
    if application.user_id:
        notice["user_id"] = application.user_id
    return notice


def notice_lines(title: str, reply: Any, *after: str) -> list[str]:
    """Return a notice the customer reads (an application's, or a reissue's): the account, the temporary passwords
    (shown only here), the expiry in Japan time, `after`, and the contact line."""
    application = reply.application
    return [
        title,
        f"  申込番号 / Application:               {application.application_id}",
        f"  会社名 / Company:                     {application.company_name}",
        f"  代表口座 / Account:                   {application.branch_code} "
        f"{_ACCOUNT_TYPES_SHOWN[application.account_type]} {application.account_number}",
        f"  仮ログインパスワード / Temporary login password:         {reply.temporary_login_password}",
        f"  仮確認用パスワード / Temporary confirmation password:    {reply.temporary_confirmation_password}",
        f"  有効期限 / Valid until:               {japan_time(application.expire_time.seconds)}",
        *(f"  {line}" for line in after),
        "",
        f"  {contact_line()}",
    ]


def _context(state_dir: str) -> AdminContext:
    base = Path(state_dir)
    env = os.environ
    tls = TlsFiles(
        cert_file=Path(env.get("KAGI_ADMIN_TLS_CERT", base / "tls" / "developer.pem")),
        key_file=Path(env.get("KAGI_ADMIN_TLS_KEY", base / "tls" / "developer-key.pem")),
        ca_file=Path(env.get("KAGI_ADMIN_TLS_CA", base / "tls" / "ca.pem")),
    )
    targets = {
        "ca": env.get("KAGI_CA_TARGET", "localhost:50051"),
        "otp": env.get("KAGI_OTP_TARGET", "localhost:50052"),
        "enrollment": env.get("KAGI_ENROLLMENT_TARGET", "localhost:50053"),
    }
    return AdminContext(base, tls, targets)


def run_call(call: Callable[[], Awaitable[T]]) -> T:
    """Run one async operator call, turning service errors into a clear command-line error."""
    try:
        return asyncio.run(_translated(call))
    except KagiError as exc:
        raise click.ClickException(f"{exc.reason}: {exc}") from None
    except OSError as exc:
        raise click.ClickException(f"cannot read the operator's TLS files: {exc}") from None


async def _translated(call: Callable[[], Awaitable[T]]) -> T:
    try:
        return await call()
    except grpc.aio.AioRpcError as exc:
        raise error_from_rpc(exc) from None


@click.group()
@click.option(
    "--state-dir",
    default=".kagi",
    show_default=True,
    envvar="KAGI_STATE_DIR",
    help="Where `kagi dev` keeps its state; its tls/ holds the operator certificate.",
)
@click.pass_context
def admin(ctx: click.Context, state_dir: str) -> None:
    """Operator tasks: applications, revocation, unlocking, listing."""
    ctx.obj = _context(state_dir)


_ACCOUNT_TYPES = {"ordinary": enrollment_pb2.ACCOUNT_TYPE_ORDINARY, "current": enrollment_pb2.ACCOUNT_TYPE_CURRENT}


@admin.command("register-application")
@click.option("--branch", required=True, help="Branch code, 3 digits.")
@click.option("--account-type", type=click.Choice(sorted(_ACCOUNT_TYPES)), required=True)
@click.option("--account-number", required=True, help="Account number, 7 digits.")
@click.option("--company", required=True, help="The company's name.")
@click.option("--json", "as_json", is_flag=True, help="Print the notice as JSON.")
@click.pass_obj
def register_application(
    obj: AdminContext, branch: str, account_type: str, account_number: str, company: str, as_json: bool
) -> None:
    """Register a company's application and print its notice (the temporary passwords appear only here)."""

    async def call() -> enrollment_pb2.RegisterApplicationResponse:
        async with obj.channel("enrollment") as channel:
            stub = enrollment_pb2_grpc.EnrollmentServiceStub(channel)
            reply: enrollment_pb2.RegisterApplicationResponse = await stub.RegisterApplication(
                enrollment_pb2.RegisterApplicationRequest(
                    request_id=os.urandom(16).hex(),
                    company_name=company,
                    branch_code=branch,
                    account_type=_ACCOUNT_TYPES[account_type],
                    account_number=account_number,
                ),
                timeout=30,
            )
            return reply

    reply = run_call(call)
    if as_json:
        click.echo(json.dumps(notice_json(reply), ensure_ascii=False, indent=2))
        return
    click.echo("\n".join(notice_lines("申込受付完了通知書 / Application-completion notice", reply)))


@admin.command("unlock-application")
@click.argument("application_id")
@click.pass_obj
def unlock_application(obj: AdminContext, application_id: str) -> None:
    """Lift the lockout of an application (5 wrong temporary passwords) or of its enrollment."""

    async def call() -> enrollment_pb2.UnlockApplicationResponse:
        async with obj.channel("enrollment") as channel:
            stub = enrollment_pb2_grpc.EnrollmentServiceStub(channel)
            reply: enrollment_pb2.UnlockApplicationResponse = await stub.UnlockApplication(
                enrollment_pb2.UnlockApplicationRequest(request_id=os.urandom(16).hex(), application_id=application_id),
                timeout=30,
            )
            return reply

    reply = run_call(call)
    click.echo(f"unlocked: {reply.application.application_id}")


@admin.command("list-applications")
@click.pass_obj
def list_applications(obj: AdminContext) -> None:
    """List applications, one JSON object per line."""

    async def call() -> list[enrollment_pb2.Application]:
        found: list[enrollment_pb2.Application] = []
        async with obj.channel("enrollment") as channel:
            stub = enrollment_pb2_grpc.EnrollmentServiceStub(channel)
            token = ""
            while True:
                page = await stub.ListApplications(
                    enrollment_pb2.ListApplicationsRequest(page_size=200, page_token=token), timeout=30
                )
                found.extend(page.applications)
                token = page.next_page_token
                if not token:
                    return found

    for application in run_call(call):
        click.echo(
            json.dumps(
                {
                    "application_id": application.application_id,
                    "company_name": application.company_name,
                    "account": f"{application.branch_code}-{application.account_number}",
                    "state": enrollment_pb2.Application.State.Name(application.state).removeprefix("STATE_"),
                },
                ensure_ascii=False,
            )
        )


def _attach_service_commands() -> None:
    # The CA's and the OTP service's commands live beside their services' wiring; they join the group here.
    from kagi.cli.admin_ca import CA_COMMANDS
    from kagi.cli.admin_credentials import issue_credential_command
    from kagi.cli.admin_enrollments import ENROLLMENT_COMMANDS
    from kagi.cli.admin_otp import rotate_otp_key
    from kagi.cli.admin_users import USER_COMMANDS

    for command in (*CA_COMMANDS, issue_credential_command, rotate_otp_key, *USER_COMMANDS, *ENROLLMENT_COMMANDS):
        admin.add_command(command)


_attach_service_commands()

"""`kagi admin ...`: operator tasks, over gRPC with an operator certificate (or on local files for the CA)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click
import grpc

from kagi.cli.output import (
    EXIT_CODES_HELP,
    OperationFailed,
    confirm,
    dry_run_option,
    failure,
    json_option,
    print_json,
    print_record,
    print_rows,
    progress,
    yes_option,
)
from kagi.enrollment.v1 import enrollment_pb2, enrollment_pb2_grpc
from kagi.errors import KagiError
from kagi.runtime.grpc_client import error_from_rpc, open_channel
from kagi.runtime.settings import DEFAULT_INTERNAL_DNS_SUFFIX, Environment, TlsFiles, internal_dns_suffix, role_dns_name
from services.enrollment_service.domain.messages import DEFAULT_CONTACT_TEXT, japan_time

T = TypeVar("T")


@dataclass(frozen=True)
class AdminContext:
    """How `kagi admin` reaches the services: targets, the operator's mTLS files, and the suffix of the role
    DNS names the services' certificates carry (KAGI_INTERNAL_DNS_SUFFIX)."""

    state_dir: Path
    tls: TlsFiles
    targets: dict[str, str]
    dns_suffix: str = DEFAULT_INTERNAL_DNS_SUFFIX

    def channel(self, service: str) -> grpc.aio.Channel:
        """Open an mTLS channel to one service as the operator, verifying its role name (`ca.kagi.internal`)."""
        return open_channel(self.targets[service], self.tls, server_name=role_dns_name(service, self.dns_suffix))


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
    try:
        suffix = internal_dns_suffix(Environment(env))
    except KagiError as exc:
        raise click.UsageError(str(exc)) from None
    return AdminContext(base, tls, targets, suffix)


def run_call(call: Callable[[], Awaitable[T]]) -> T:
    """Run one async operator call, turning service errors into a clear command-line error (exit 1, or 3 when the
    service cannot be reached)."""
    try:
        return asyncio.run(_translated(call))
    except KagiError as exc:
        raise failure(exc) from None
    except OSError as exc:
        raise OperationFailed(f"cannot read the operator's TLS files: {exc}") from None


async def collect_pages(what: str, fetch: Callable[[str], Awaitable[tuple[Sequence[T], str]]]) -> list[T]:
    """Return every item of a paged list, `fetch(page_token)` giving a page and the next token; a progress count
    shows on a terminal's stderr while pages arrive."""
    found: list[T] = []
    token = ""
    with progress(f"listing {what}") as advance:
        while True:
            items, token = await fetch(token)
            found.extend(items)
            advance(len(items))
            if not token:
                return found


async def _translated(call: Callable[[], Awaitable[T]]) -> T:
    try:
        return await call()
    except grpc.aio.AioRpcError as exc:
        raise error_from_rpc(exc) from None


_ADMIN_HELP = f"""Operator tasks: applications, users, tokens, certificates, keys, the audit trails.

\b
How it finds its credential and the services:
  The operator's mTLS certificate (role operator, from `kagi admin issue-credential --role operator`):
    KAGI_ADMIN_TLS_CERT  certificate (default <state-dir>/tls/developer.pem)
    KAGI_ADMIN_TLS_KEY   its private key (default <state-dir>/tls/developer-key.pem)
    KAGI_ADMIN_TLS_CA    the root that signed the services' certificates (default <state-dir>/tls/ca.pem)
  The services, over mTLS, at any address (a Service name, a port-forward); each must present its role name,
  <role>.<suffix> (ca.kagi.internal, ...), whatever address was dialled:
    KAGI_CA_TARGET            the CA                 (default localhost:50051)
    KAGI_OTP_TARGET           the OTP service        (default localhost:50052)
    KAGI_ENROLLMENT_TARGET    the enrollment service (default localhost:50053)
    KAGI_INTERNAL_DNS_SUFFIX  the suffix of the role names (default kagi.internal)
  --state-dir / KAGI_STATE_DIR is `kagi dev`'s state directory: in production the variables above replace it
  (it still locates sqlite: stores and the default key files). Commands on files or stores say so in their own
  --help: verify-audit reads KAGI_STORE_URL; rotate-otp-key runs with the OTP service's environment; init-ca,
  sign-root-crl, move-root-key and issue-credential --offline work on the CA's files (--ca-dir,
  KAGI_CA_KEY_PASSPHRASE[_FILE]).

\b
People get tables and a question before any change that cannot be undone; scripts pass --json and --yes.

{EXIT_CODES_HELP}"""


class _AdminGroup(click.Group):
    """A group whose commands end with a clear message and exit code on any kagi error they let through."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KagiError as exc:
            raise failure(exc) from None


@click.group(cls=_AdminGroup, help=_ADMIN_HELP)
@click.option(
    "--state-dir",
    default=".kagi",
    show_default=True,
    envvar="KAGI_STATE_DIR",
    help="Where `kagi dev` keeps its state; its tls/ holds the operator certificate (see above for production).",
)
@click.pass_context
def admin(ctx: click.Context, state_dir: str) -> None:
    """Operator tasks: applications, users, tokens, certificates, keys, the audit trails."""
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
        print_json(notice_json(reply))
        return
    click.echo("\n".join(notice_lines("申込受付完了通知書 / Application-completion notice", reply)))


def application_json(application: enrollment_pb2.Application) -> dict[str, str]:
    """Return what an operator sees of an application in a list (never a temporary password)."""
    return {
        "application_id": application.application_id,
        "company_name": application.company_name,
        "account": f"{application.branch_code}-{application.account_number}",
        "state": enrollment_pb2.Application.State.Name(application.state).removeprefix("STATE_"),
        "expires_at": application.expire_time.ToJsonString(),
    }


@admin.command("unlock-application")
@click.argument("application_id")
@yes_option
@dry_run_option
@json_option()
@click.pass_obj
def unlock_application(obj: AdminContext, application_id: str, yes: bool, dry_run: bool, as_json: bool) -> None:
    """Lift the lockout of an application (5 wrong temporary passwords) or of its enrollment."""
    plan = {"application": application_id, "then": "the customer may enter the temporary passwords again"}
    if not confirm(f"unlock application {application_id}", plan, yes=yes, dry_run=dry_run):
        return

    async def call() -> enrollment_pb2.UnlockApplicationResponse:
        async with obj.channel("enrollment") as channel:
            stub = enrollment_pb2_grpc.EnrollmentServiceStub(channel)
            reply: enrollment_pb2.UnlockApplicationResponse = await stub.UnlockApplication(
                enrollment_pb2.UnlockApplicationRequest(request_id=os.urandom(16).hex(), application_id=application_id),
                timeout=30,
            )
            return reply

    reply = run_call(call)
    print_record(application_json(reply.application), as_json=as_json)


@admin.command("list-applications")
@json_option("Print a JSON list instead of a table.")
@click.pass_obj
def list_applications(obj: AdminContext, as_json: bool) -> None:
    """List applications: id, company, account, state and expiry."""

    async def call() -> list[enrollment_pb2.Application]:
        async with obj.channel("enrollment") as channel:
            stub = enrollment_pb2_grpc.EnrollmentServiceStub(channel)

            async def page(token: str) -> tuple[Sequence[enrollment_pb2.Application], str]:
                reply = await stub.ListApplications(
                    enrollment_pb2.ListApplicationsRequest(page_size=200, page_token=token), timeout=30
                )
                return reply.applications, reply.next_page_token

            return await collect_pages("applications", page)

    rows = [application_json(a) for a in run_call(call)]
    print_rows(
        rows,
        ("application_id", "company_name", "account", "state", "expires_at"),
        as_json=as_json,
        empty="no applications",
    )


def _attach_service_commands() -> None:
    # The CA's and the OTP service's commands live beside their services' wiring; they join the group here.
    from kagi.cli.admin_ca import CA_COMMANDS
    from kagi.cli.admin_credential_lifecycle import LIFECYCLE_COMMANDS
    from kagi.cli.admin_credentials import issue_credential_command
    from kagi.cli.admin_enrollments import ENROLLMENT_COMMANDS
    from kagi.cli.admin_otp import migrate_otp_placement, remove_otp_orphans, rotate_otp_key
    from kagi.cli.admin_users import USER_COMMANDS

    for command in (
        *CA_COMMANDS,
        issue_credential_command,
        *LIFECYCLE_COMMANDS,
        rotate_otp_key,
        remove_otp_orphans,
        migrate_otp_placement,
        *USER_COMMANDS,
        *ENROLLMENT_COMMANDS,
    ):
        admin.add_command(command)


_attach_service_commands()

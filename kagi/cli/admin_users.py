"""`kagi admin` commands for users after the setup: list-users, show-user, lock-user, unlock-user, unlock-token
(gRPC as the operator), and rotate-signing-key (the enrollment service's token key ring, a file).

People get a table; scripts pass --json and get one JSON document (a list for list-users). Every change asks
first, showing the user it acts on (--yes skips the question, --dry-run only shows it).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from kagi.cli.admin import AdminContext, collect_pages, contact_line, notice_json, notice_lines, run_call
from kagi.cli.output import (
    OperationFailed,
    Plan,
    confirm,
    dry_run_option,
    failure,
    json_option,
    print_json,
    print_record,
    print_rows,
    yes_option,
)
from kagi.common.v1 import common_pb2
from kagi.enrollment.v1 import enrollment_pb2, enrollment_pb2_grpc, user_pb2, user_pb2_grpc
from kagi.errors import KagiError
from kagi.otp.v1 import otp_pb2, otp_pb2_grpc
from kagi.runtime.settings import Environment
from services.enrollment_service.adapters.signing_keys import (
    ACTIVATION_DELAY_SECONDS,
    rotate_key_ring,
)
from services.enrollment_service.domain.messages import japan_time

_ACCOUNT_TYPES = {"ordinary": "ORDINARY", "current": "CURRENT"}
_COLUMNS = ("user_id", "login_id", "user_name", "company_name", "state", "token_state", "lock_reason")


def user_json(user: user_pb2.User) -> dict[str, Any]:
    """Return what an operator sees of a user (never a password or its hash)."""
    return {
        "user_id": user.user_id,
        "login_id": user.login_id,
        "user_name": user.user_name,
        "company_name": user.company_name,
        "state": user_pb2.User.State.Name(user.state).removeprefix("STATE_"),
        "token_state": user_pb2.User.TokenState.Name(user.token_state).removeprefix("TOKEN_STATE_"),
        "lock_reason": user_pb2.User.LockReason.Name(user.lock_reason)
        .removeprefix("LOCK_REASON_")
        .replace("UNSPECIFIED", ""),
        "application_id": user.application_id,
        "enrollment_id": user.enrollment_id,
        "token_id": user.token_id,
        "created_at": user.create_time.ToJsonString(),
    }


def _account(value: str) -> str:
    """Turn 001-ordinary-1234567 into the API's 001-ORDINARY-1234567, or raise a usage error."""
    parts = value.split("-")
    if len(parts) != 3 or parts[1].lower() not in _ACCOUNT_TYPES or not (parts[0].isdigit() and parts[2].isdigit()):
        raise click.BadParameter("must be BRANCH-TYPE-NUMBER, e.g. 001-ordinary-1234567", param_hint="--account")
    return f"{parts[0]}-{_ACCOUNT_TYPES[parts[1].lower()]}-{parts[2]}"


@click.command("list-users")
@click.option("--company", default="", help="Only this company's users (its exact name).")
@click.option("--account", default="", help="Only the users of this representative account: 001-ordinary-1234567.")
@json_option("Print a JSON list instead of a table.")
@click.pass_obj
def list_users_command(obj: AdminContext, company: str, account: str, as_json: bool) -> None:
    """List users (all, one company's or one account's) with their state and their token's state."""
    if company and account:
        raise click.UsageError("give --company or --account, not both")
    wanted = _account(account) if account else ""

    async def call() -> list[user_pb2.User]:
        async with obj.channel("enrollment") as channel:
            stub = user_pb2_grpc.UserServiceStub(channel)

            async def page(token: str) -> tuple[Sequence[user_pb2.User], str]:
                reply = await stub.ListUsers(
                    user_pb2.ListUsersRequest(page_size=100, page_token=token, company_name=company, account=wanted),
                    timeout=30,
                )
                return reply.users, reply.next_page_token

            return await collect_pages("users", page)

    print_rows([user_json(u) for u in run_call(call)], _COLUMNS, as_json=as_json, empty="no users")


def _user_call(obj: AdminContext, method: str, user_id: str) -> user_pb2.User:
    async def call() -> user_pb2.User:
        async with obj.channel("enrollment") as channel:
            stub = user_pb2_grpc.UserServiceStub(channel)
            if method == "GetUser":
                reply: Any = await stub.GetUser(user_pb2.GetUserRequest(user_id=user_id), timeout=30)
            elif method == "LockUser":
                request_id = os.urandom(16).hex()
                reply = await stub.LockUser(
                    user_pb2.LockUserRequest(request_id=request_id, user_id=user_id), timeout=30
                )
            else:
                request_id = os.urandom(16).hex()
                reply = await stub.UnlockUser(
                    user_pb2.UnlockUserRequest(request_id=request_id, user_id=user_id), timeout=30
                )
            user: user_pb2.User = reply.user
            return user

    return run_call(call)


def _user_plan(obj: AdminContext, user_id: str, then: str) -> Callable[[], Plan]:
    """Return the look-up of the user a change acts on, as its plan shows it."""

    def plan() -> Plan:
        user = user_json(_user_call(obj, "GetUser", user_id))
        return {**{key: user[key] for key in _PLAN_FIELDS}, "then": then}

    return plan


_PLAN_FIELDS = ("user_id", "login_id", "user_name", "company_name", "state", "token_state", "lock_reason")


@click.command("show-user")
@click.option("--user", "user_id", required=True, help="The user id.")
@json_option()
@click.pass_obj
def show_user_command(obj: AdminContext, user_id: str, as_json: bool) -> None:
    """Show one user: login ID, company, state, lock reason, token and its state."""
    print_record(user_json(_user_call(obj, "GetUser", user_id)), as_json=as_json)


@click.command("lock-user")
@click.option("--user", "user_id", required=True, help="The user id.")
@yes_option
@dry_run_option
@json_option()
@click.pass_obj
def lock_user_command(obj: AdminContext, user_id: str, yes: bool, dry_run: bool, as_json: bool) -> None:
    """Lock a user: no login and no confirmation, and every live session ends at once."""
    then = "no login or confirmation until unlock-user; every live session ends now"
    if confirm(f"lock user {user_id}", _user_plan(obj, user_id, then), yes=yes, dry_run=dry_run):
        print_record(user_json(_user_call(obj, "LockUser", user_id)), as_json=as_json)


@click.command("unlock-user")
@click.option("--user", "user_id", required=True, help="The user id.")
@yes_option
@dry_run_option
@json_option()
@click.pass_obj
def unlock_user_command(obj: AdminContext, user_id: str, yes: bool, dry_run: bool, as_json: bool) -> None:
    """Unlock a user (five wrong login or confirmation passwords, or an operator's lock)."""
    then = "the user may log in and confirm again; the wrong-password counts start from zero"
    if confirm(f"unlock user {user_id}", _user_plan(obj, user_id, then), yes=yes, dry_run=dry_run):
        print_record(user_json(_user_call(obj, "UnlockUser", user_id)), as_json=as_json)


def token_json(token: otp_pb2.Token) -> dict[str, Any]:
    """Return what an operator sees of a one-time-password token (never its seed)."""
    return {
        "token_id": token.token_id,
        "user_id": token.user_id,
        "state": otp_pb2.Token.State.Name(token.state).removeprefix("STATE_"),
        "algorithm": common_pb2.OtpAlgorithm.Name(token.algorithm).removeprefix("OTP_ALGORITHM_"),
        "digits": token.digits,
        "period": token.period,
        "created_at": token.create_time.ToJsonString(),
    }


@click.command("unlock-token")
@click.option("--user", "user_id", default="", help="The user whose token to unlock.")
@click.option("--token", "token_id", default="", help="Or the token id.")
@yes_option
@dry_run_option
@json_option()
@click.pass_obj
def unlock_token_command(
    obj: AdminContext, user_id: str, token_id: str, yes: bool, dry_run: bool, as_json: bool
) -> None:
    """Unlock a one-time-password token locked after too many wrong codes."""
    if bool(user_id) == bool(token_id):
        raise click.UsageError("give exactly one of --user and --token")
    then = "the token's codes are accepted again; its wrong-code count starts from zero"
    target = f"the token of user {user_id}" if user_id else f"token {token_id}"
    plan = _user_plan(obj, user_id, then) if user_id else {"token_id": token_id, "then": then}
    if not confirm(f"unlock {target}", plan, yes=yes, dry_run=dry_run):
        return
    if user_id:
        token_id = _user_call(obj, "GetUser", user_id).token_id
        if not token_id:
            raise OperationFailed(f"user {user_id} has no token yet")

    async def call() -> otp_pb2.Token:
        async with obj.channel("otp") as channel:
            stub = otp_pb2_grpc.OtpServiceStub(channel)
            reply = await stub.UnlockToken(
                otp_pb2.UnlockTokenRequest(request_id=os.urandom(16).hex(), token_id=token_id), timeout=30
            )
            token: otp_pb2.Token = reply.token
            return token

    token = run_call(call)
    if as_json:
        print_json(token_json(token))
        return
    click.echo(f"unlocked token {token.token_id}: {otp_pb2.Token.State.Name(token.state).removeprefix('STATE_')}")


_KINDS = {"login": user_pb2.PASSWORD_KIND_LOGIN, "confirmation": user_pb2.PASSWORD_KIND_CONFIRMATION}
_KINDS_JA = {"login": "ログインパスワード / login password", "confirmation": "確認用パスワード / confirmation password"}


def _call_users(obj: AdminContext, method: str, request: Any) -> Any:
    async def call() -> Any:
        async with obj.channel("enrollment") as channel:
            return await getattr(user_pb2_grpc.UserServiceStub(channel), method)(request, timeout=30)

    return run_call(call)


@click.command("reset-password")
@click.option("--user", "user_id", required=True, help="The user id.")
@click.option("--kind", type=click.Choice(sorted(_KINDS)), required=True, help="Which password was forgotten.")
@yes_option
@dry_run_option
@json_option("Print the reset notice as JSON.")
@click.pass_obj
def reset_password_command(obj: AdminContext, user_id: str, kind: str, yes: bool, dry_run: bool, as_json: bool) -> None:
    """Print a reset notice with a temporary password (shown only here); every session of the user ends."""
    then = f"a temporary {kind} password is printed (only here); every session of the user ends now"
    if not confirm(
        f"reset the {kind} password of user {user_id}", _user_plan(obj, user_id, then), yes=yes, dry_run=dry_run
    ):
        return
    request = user_pb2.IssuePasswordResetRequest(request_id=os.urandom(16).hex(), user_id=user_id, kind=_KINDS[kind])
    reply = _call_users(obj, "IssuePasswordReset", request)
    notice = {
        "user_id": reply.user.user_id,
        "login_id": reply.user.login_id,
        "company_name": reply.user.company_name,
        "kind": kind,
        "temporary_password": reply.temporary_password,
        "expires_at": reply.expire_time.ToJsonString(),
    }
    if as_json:
        print_json(notice)
        return
    expires = japan_time(reply.expire_time.seconds)
    click.echo(
        "\n".join(
            [
                "パスワード再設定通知書 / Password reset notice",
                "",
                f"会社名 / Company:          {notice['company_name']}",
                f"ログインID / Login ID:     {notice['login_id']}",
                f"対象 / Password:           {_KINDS_JA[kind]}",
                f"仮パスワード / Temporary password:  {notice['temporary_password']}",
                f"有効期限 / Valid until:    {expires}",
                "",
                "電子証明書のある端末で「パスワード再設定」を開き、仮パスワードと新しいパスワードを入力してください。",
                "On the PC with your client certificate, open the password reset and enter the temporary password",
                "and your new password (POST /v1/users/me/password/reset).",
                "この通知書は第三者に知られないように保管してください。 / Keep this notice away from others.",
                "",
                contact_line(),
            ]
        )
    )


@click.command("reissue-token")
@click.option("--user", "user_id", required=True, help="The user id.")
@yes_option
@dry_run_option
@json_option("Print the user afterwards as JSON.")
@click.pass_obj
def reissue_token_command(obj: AdminContext, user_id: str, yes: bool, dry_run: bool, as_json: bool) -> None:
    """Revoke the user's token (a lost phone) and let the user reissue one without it, with the certificate, the
    login password and the confirmation password (POST /v1/users/me/token/reissue)."""
    then = "the token is revoked for good (its codes stop working); the user may reissue one without it"
    if not confirm(
        f"revoke the token of user {user_id} and allow a reissue",
        _user_plan(obj, user_id, then),
        yes=yes,
        dry_run=dry_run,
    ):
        return
    request = user_pb2.AllowTokenReissueRequest(request_id=os.urandom(16).hex(), user_id=user_id)
    reply = _call_users(obj, "AllowTokenReissue", request)
    if as_json:
        print_json(user_json(reply.user))
        return
    click.echo(
        f"token of {reply.user.login_id} revoked; the user may now reissue one (POST /v1/users/me/token/reissue)"
    )


@click.command("disable-token")
@click.option("--user", "user_id", required=True, help="The user id.")
@click.option("--reason", required=True, help="Why, for the audit trail: e.g. 'lost phone'.")
@yes_option
@dry_run_option
@json_option("Print the user afterwards as JSON.")
@click.pass_obj
def disable_token_command(
    obj: AdminContext, user_id: str, reason: str, yes: bool, dry_run: bool, as_json: bool
) -> None:
    """Disable the user's one-time-password token (a lost phone or PC)."""
    then = f"the token's codes stop working ({reason}); the user needs a new token"
    if not confirm(f"disable the token of user {user_id}", _user_plan(obj, user_id, then), yes=yes, dry_run=dry_run):
        return
    request = user_pb2.DisableUserTokenRequest(request_id=os.urandom(16).hex(), user_id=user_id, reason=reason)
    reply = _call_users(obj, "DisableUserToken", request)
    if as_json:
        print_json(user_json(reply.user))
        return
    click.echo(f"token of {reply.user.login_id} disabled ({reason})")


_REISSUE_REASONS = ("keyCompromise", "affiliationChanged", "superseded", "cessationOfOperation", "unspecified")


@click.command("reissue-certificate")
@click.option("--user", "user_id", required=True, help="The user id.")
@click.option(
    "--reason",
    type=click.Choice(_REISSUE_REASONS),
    default="keyCompromise",
    show_default=True,
    help="Why the user's certificates are revoked (RFC 5280).",
)
@yes_option
@dry_run_option
@json_option("Print the reissue notice as JSON.")
@click.pass_obj
def reissue_certificate_command(
    obj: AdminContext, user_id: str, reason: str, yes: bool, dry_run: bool, as_json: bool
) -> None:
    """A lost PC: revoke the user's certificates, end every session, and print a reissue notice (its temporary
    passwords appear only here); with it the customer takes steps 1, 4, 5 and 6 again (POST /v1/enrollments)."""
    then = f"every certificate of the user is revoked ({reason}), every session ends; a reissue notice is printed"
    if not confirm(
        f"revoke every certificate of user {user_id} and issue a reissue notice",
        _user_plan(obj, user_id, then),
        yes=yes,
        dry_run=dry_run,
    ):
        return

    async def call() -> enrollment_pb2.ReissueCertificateResponse:
        async with obj.channel("enrollment") as channel:
            stub = enrollment_pb2_grpc.EnrollmentServiceStub(channel)
            reply: enrollment_pb2.ReissueCertificateResponse = await stub.ReissueCertificate(
                enrollment_pb2.ReissueCertificateRequest(
                    request_id=os.urandom(16).hex(), user_id=user_id, revocation_reason=reason
                ),
                timeout=30,
            )
            return reply

    reply = run_call(call)
    if as_json:
        print_json(notice_json(reply))
        return
    click.echo(
        "\n".join(
            notice_lines(
                "電子証明書再発行通知書 / Certificate reissue notice",
                reply,
                "",
                "初期設定の⑦から代表口座と上記の仮パスワードを入力し、新しい電子証明書を発行してください。",
                "ログインID・パスワード・ワンタイムパスワードアプリはそのままご利用いただけます。",
                "Enter the account and these temporary passwords at step 7 of the setup (POST /v1/enrollments),",
                "then issue the new certificate, log in with it and enter your login password. Your login ID,",
                "passwords and one-time-password app stay as they are.",
            )
        )
    )


@click.command("rotate-signing-key")
@click.option(
    "--key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="KAGI_ENROLLMENT_SIGNING_KEY_FILE",
    help="The enrollment service's key ring (default: <state-dir>/secrets/signing-keys.pem of kagi dev).",
)
@click.option(
    "--passphrase-file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The key ring's passphrase (default: KAGI_ENROLLMENT_SIGNING_KEY_PASSPHRASE[_FILE], or kagi dev's).",
)
@click.option(
    "--activate-in",
    type=click.IntRange(0, 24 * 3600),
    default=ACTIVATION_DELAY_SECONDS,
    show_default=True,
    help="Seconds before the new key signs: every replica reloads the file and publishes it first.",
)
@json_option('Print {"key_file", "added", "signs_from", "dropped"} as JSON.')
@click.pass_obj
def rotate_signing_key_command(
    obj: AdminContext, key_file: Path | None, passphrase_file: Path | None, activate_in: int, as_json: bool
) -> None:
    """Add a new token signing key; old keys stay in the JWKS until the last token they signed has expired."""
    secrets_dir = obj.state_dir / "secrets"
    path = key_file or secrets_dir / "signing-keys.pem"
    if passphrase_file is not None:
        passphrase = passphrase_file.read_bytes().strip()
    else:
        env = Environment(dict(os.environ))
        secret = env.secret("KAGI_ENROLLMENT_SIGNING_KEY_PASSPHRASE", required=False)
        dev_file = secrets_dir / "signing-key-passphrase"
        if secret is not None:
            passphrase = secret.reveal()
        elif dev_file.exists():
            passphrase = dev_file.read_bytes().strip()
        else:
            raise click.UsageError("no passphrase: give --passphrase-file or KAGI_ENROLLMENT_SIGNING_KEY_PASSPHRASE")
    try:
        new, dropped = rotate_key_ring(path, passphrase, now=time.time(), activate_after=activate_in)
    except KagiError as exc:
        raise failure(exc) from None
    if as_json:
        signs_from = datetime.fromtimestamp(new.not_before, UTC).isoformat().replace("+00:00", "Z")
        print_json({"key_file": str(path), "added": new.kid, "signs_from": signs_from, "dropped": list(dropped)})
        return
    click.echo(
        f"added key {new.kid} to {path}; it signs from {time.strftime('%H:%M:%S', time.localtime(new.not_before))}"
    )
    for kid in dropped:
        click.echo(f"dropped retired key {kid}")


USER_COMMANDS = (
    list_users_command,
    show_user_command,
    lock_user_command,
    unlock_user_command,
    unlock_token_command,
    rotate_signing_key_command,
    reset_password_command,
    reissue_token_command,
    disable_token_command,
    reissue_certificate_command,
)

"""`kagi admin` commands for the CA: init-ca, sign-root-crl and move-root-key (local files), revoke and
list-certificates (gRPC as the operator), verify-audit (reads the audit chain from the CA's store).

The root's key is kept offline: init-ca writes it to `--root-key-out` (outside the CA directory) under the
passphrase in `--root-passphrase-file`, and sign-root-crl takes it from `--root-key`.

The functions are click commands meant for the `admin` group: `init_ca_command`, `revoke_command`,
`list_certificates_command`, `verify_audit_command`, `sign_root_crl_command`, `move_root_key_command` (all in
CA_COMMANDS).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path

import click

from kagi.ca.v1 import ca_pb2, ca_pb2_grpc
from kagi.cli.admin import AdminContext, collect_pages, run_call
from kagi.cli.output import (
    EXIT_FAILED,
    confirm,
    dry_run_option,
    failure,
    json_option,
    print_json,
    print_record,
    print_rows,
    yes_option,
)
from kagi.clock import SystemClock
from kagi.errors import KagiError
from kagi.journal import AuditReport, verify_stored_chain
from kagi.runtime.settings import Environment, Secret
from kagi.store import open_store
from services.ca_service.adapters.ca_directory import CaDirectory, OfflineRootKey
from services.ca_service.creation import init_ca
from services.ca_service.domain.keys import KeyAlgorithm, parse_key_algorithm
from services.ca_service.domain.revocation import parse_revocation_reason
from services.ca_service.domain.settings import PkiSettings

_STATES = {
    "active": ca_pb2.Certificate.STATE_ACTIVE,
    "revoked": ca_pb2.Certificate.STATE_REVOKED,
    "expired": ca_pb2.Certificate.STATE_EXPIRED,
}
_REASONS = (
    "unspecified",
    "keyCompromise",
    "cACompromise",
    "affiliationChanged",
    "superseded",
    "cessationOfOperation",
    "certificateHold",
    "privilegeWithdrawn",
    "aACompromise",
)


_ROOT_PASSPHRASE_FILE = click.option(
    "--root-passphrase-file",
    envvar="KAGI_CA_ROOT_KEY_PASSPHRASE_FILE",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    show_envvar=True,
    help="File holding the root key's own passphrase (not the online CA keys').",
)


def _root_passphrase(path: Path) -> Secret:
    try:
        value = path.read_bytes().rstrip(b"\r\n")
    except OSError as exc:
        raise click.BadParameter(f"cannot read {path} ({exc.strerror})", param_hint="--root-passphrase-file") from None
    if not value:
        raise click.BadParameter(f"{path} is empty", param_hint="--root-passphrase-file")
    return Secret(value)


@click.command(
    "init-ca",
    help=(
        "Create the root, customer and internal CAs and their OCSP signers, once (never overwrites). "
        "The online keys' passphrase comes from KAGI_CA_KEY_PASSPHRASE_FILE (preferred) or KAGI_CA_KEY_PASSPHRASE; "
        "the root key is written to --root-key-out (outside the CA directory: keep it offline) under the separate "
        "passphrase in --root-passphrase-file."
    ),
)
@click.option("--ca-dir", type=click.Path(path_type=Path), help="Where the CA lives (default: <state-dir>/ca).")
@click.option(
    "--root-key-out",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Where to write the root's encrypted key (outside the CA directory; never overwritten).",
)
@_ROOT_PASSPHRASE_FILE
@click.option(
    "--key-algorithm",
    type=click.Choice([a.value for a in KeyAlgorithm]),
    default=KeyAlgorithm.EC_P256.value,
    show_default=True,
    help="Key type of the CAs and OCSP signers.",
)
@click.option(
    "--base-url",
    envvar="KAGI_PKI_BASE_URL",
    default="http://127.0.0.1:8080",
    show_default=True,
    help="Public base URL of the PKI files, written into the intermediates (CRL DP, AIA).",
)
@click.pass_obj
def init_ca_command(
    obj: AdminContext,
    ca_dir: Path | None,
    root_key_out: Path,
    root_passphrase_file: Path,
    key_algorithm: str,
    base_url: str,
) -> None:
    """Run `kagi admin init-ca` (local files; refuses to overwrite a CA or a root key)."""
    directory = ca_dir or obj.state_dir / "ca"
    root_key = OfflineRootKey(root_key_out, _root_passphrase(root_passphrase_file))
    try:
        passphrase = Environment(os.environ).required_secret("KAGI_CA_KEY_PASSPHRASE")
        algorithm = parse_key_algorithm(key_algorithm)
        loaded = init_ca(
            directory, passphrase, root_key=root_key, settings=PkiSettings(base_url=base_url, key_algorithm=algorithm)
        )
    except KagiError as exc:
        raise failure(exc) from None
    click.echo(f"CA created in {directory} ({key_algorithm})")
    click.echo(f"root key written to {root_key_out}: move it offline; the CA service never needs it")
    for ca in (loaded.hierarchy.root, loaded.hierarchy.customer, loaded.hierarchy.internal):
        click.echo(f"  {ca.kind.value:<9} {ca.name.rfc4514_string()}  serial {ca.certificate.serial_number:x}")
    for kind, delegate in loaded.delegates.items():
        click.echo(f"  ocsp for {kind.value}: serial {delegate.certificate.serial_number:x}")


@click.command(
    "revoke",
    help="Revoke one certificate over gRPC as the operator; revoking again changes nothing.",
)
@click.option("--serial", required=True, help="Serial number, hex (as listed) or decimal.")
@click.option(
    "--reason",
    default="unspecified",
    show_default=True,
    help=f"RFC 5280 reason: {', '.join(_REASONS)} (or its number).",
)
@yes_option
@dry_run_option
@json_option("Print the revoked certificate as JSON.")
@click.pass_obj
def revoke_command(obj: AdminContext, serial: str, reason: str, yes: bool, dry_run: bool, as_json: bool) -> None:
    """Run `kagi admin revoke` (gRPC RevokeCertificate as the operator), after showing the certificate."""
    try:
        code = int(parse_revocation_reason(reason))
    except KagiError as exc:
        raise click.BadParameter(str(exc), param_hint="--reason") from None

    def plan() -> dict[str, object]:
        async def get() -> ca_pb2.Certificate:
            async with obj.channel("ca") as channel:
                stub = ca_pb2_grpc.CertificateAuthorityServiceStub(channel)
                reply = await stub.GetCertificate(ca_pb2.GetCertificateRequest(serial_number=serial), timeout=30)
                certificate: ca_pb2.Certificate = reply.certificate
                return certificate

        then = f"revoked for good ({reason}): the CRL and OCSP answer revoked, logins with it are refused"
        return {**_certificate_json(run_call(get)), "then": then}

    if not confirm(f"revoke certificate {serial}", plan, yes=yes, dry_run=dry_run):
        return

    async def call() -> ca_pb2.RevokeCertificateResponse:
        async with obj.channel("ca") as channel:
            stub = ca_pb2_grpc.CertificateAuthorityServiceStub(channel)
            reply: ca_pb2.RevokeCertificateResponse = await stub.RevokeCertificate(
                ca_pb2.RevokeCertificateRequest(
                    request_id=os.urandom(16).hex(),
                    serial_number=serial,
                    reason=code,  # type: ignore[arg-type]
                ),
                timeout=30,
            )
            return reply

    reply = run_call(call)
    print_record(_certificate_json(reply.certificate), as_json=as_json)


@click.command(
    "list-certificates",
    help="List certificates over gRPC: a table, or with --json a JSON list.",
)
@click.option("--subject", default="", help="Only this subject (user id or service role).")
@click.option("--state", type=click.Choice(sorted(_STATES)), help="Only certificates in this state.")
@json_option("Print a JSON list instead of a table.")
@click.pass_obj
def list_certificates_command(obj: AdminContext, subject: str, state: str | None, as_json: bool) -> None:
    """Run `kagi admin list-certificates` (gRPC, paged)."""

    async def call() -> list[ca_pb2.Certificate]:
        async with obj.channel("ca") as channel:
            stub = ca_pb2_grpc.CertificateAuthorityServiceStub(channel)

            async def page(token: str) -> tuple[Sequence[ca_pb2.Certificate], str]:
                reply = await stub.ListCertificates(
                    ca_pb2.ListCertificatesRequest(
                        subject_id=subject,
                        state=_STATES[state] if state else ca_pb2.Certificate.STATE_UNSPECIFIED,
                        page_size=500,
                        page_token=token,
                    ),
                    timeout=30,
                )
                return reply.certificates, reply.next_page_token

            return await collect_pages("certificates", page)

    rows = [_certificate_json(c) for c in run_call(call)]
    print_rows(rows, _LIST_COLUMNS, as_json=as_json, empty="no certificates")


@click.command(
    "verify-audit",
    help=(
        "Verify the hash-chained audit trails in the services' stores (the CA's: issuance, revocation; the "
        "enrollment service's: logins, confirmations, locks); exit 1 naming the first bad record, exit 3 when a "
        "store cannot be reached."
    ),
)
@click.option(
    "--store-url",
    envvar="KAGI_STORE_URL",
    default="sqlite:",
    show_default=True,
    help="The services' store (sqlite: is <state-dir>/<service>.db).",
)
@click.option(
    "--service",
    "services",
    type=click.Choice(["ca", "enrollment"]),
    multiple=True,
    help="Only this service's trail (repeatable; default: both).",
)
@click.option("--namespace", default="", hidden=True, help="A store namespace (tests).")
@json_option('Print [{"service", "ok", "checked", "bad_sequence", "problem"}] as JSON.')
@click.pass_obj
def verify_audit_command(
    obj: AdminContext, store_url: str, services: tuple[str, ...], namespace: str, as_json: bool
) -> None:
    """Run `kagi admin verify-audit` (reads each chain from its store)."""

    async def verify(name: str) -> AuditReport:
        store = open_store(store_url, namespace=name, state_dir=obj.state_dir)
        try:
            return await verify_stored_chain(store)
        finally:
            await store.close()

    names = [namespace] if namespace else list(services or ("ca", "enrollment"))
    broken = False
    reports: list[dict[str, object]] = []
    for name in names:
        try:
            report = asyncio.run(verify(name))
        except KagiError as exc:
            raise failure(exc, name) from None  # exit 3 when the store is down: not a broken chain
        reports.append(
            {
                "service": name,
                "ok": report.ok,
                "checked": report.checked,
                "bad_sequence": None if report.ok else report.bad_sequence,
                "problem": None if report.ok else report.problem,
            }
        )
        if report.ok:
            if not as_json:
                click.echo(f"{name}: audit chain OK: {report.checked} records")
            continue
        broken = True
        click.echo(f"{name}: audit chain BROKEN at sequence {report.bad_sequence}: {report.problem}", err=True)
        if report.bad_record is not None:
            click.echo(report.bad_record.to_json().decode(), err=True)
    if as_json:
        print_json(reports)
    if broken:
        raise SystemExit(EXIT_FAILED)


_LIST_COLUMNS = ("serial_number", "issuer", "profile", "subject_id", "state", "not_after", "revocation_reason")


def _certificate_json(certificate: ca_pb2.Certificate) -> dict[str, object]:
    body: dict[str, object] = {
        "serial_number": certificate.serial_number,
        "issuer": ca_pb2.Issuer.Name(certificate.issuer).removeprefix("ISSUER_").lower(),
        "profile": certificate.profile,
        "subject_id": certificate.subject_id,
        "subject": certificate.subject,
        "state": ca_pb2.Certificate.State.Name(certificate.state).removeprefix("STATE_").lower(),
        "not_after": certificate.not_after.ToJsonString(),
    }
    if certificate.HasField("revoke_time"):
        body["revoke_time"] = certificate.revoke_time.ToJsonString()
        body["revocation_reason"] = (
            ca_pb2.RevocationReason.Name(certificate.revocation_reason).removeprefix("REVOCATION_REASON_").lower()
        )
    return body


@click.command(
    "sign-root-crl",
    help=(
        "Sign the root's next CRL with the offline root key (--root-key, its passphrase in --root-passphrase-file): "
        "the ceremony the service never performs. Run it before the current root CRL's nextUpdate; the service "
        "serves the new one at once."
    ),
)
@click.option("--ca-dir", type=click.Path(path_type=Path), help="Where the CA lives (default: <state-dir>/ca).")
@click.option(
    "--root-key",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="The root's encrypted key, kept outside the CA directory (as written by init-ca --root-key-out).",
)
@_ROOT_PASSPHRASE_FILE
@click.option(
    "--base-url",
    envvar="KAGI_PKI_BASE_URL",
    default="http://127.0.0.1:8080",
    show_default=True,
    help="Public base URL of the PKI files (as given to init-ca).",
)
@yes_option
@dry_run_option
@json_option('Print {"number", "next_update", "path"} as JSON.')
@click.pass_obj
def sign_root_crl_command(
    obj: AdminContext,
    ca_dir: Path | None,
    root_key: Path,
    root_passphrase_file: Path,
    base_url: str,
    yes: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Run `kagi admin sign-root-crl` (local files, opens the offline root key only)."""
    directory = CaDirectory(ca_dir or obj.state_dir / "ca")
    plan = {
        "CA directory": directory.path,
        "root key": root_key,
        "then": f"a new root CRL replaces {directory.root_crl_path}; the CA serves it at once",
    }
    if not confirm("sign the root's next CRL with the offline root key", plan, yes=yes, dry_run=dry_run):
        return
    offline = OfflineRootKey(root_key, _root_passphrase(root_passphrase_file))
    try:
        root = directory.open_root(offline)
        signed = directory.sign_root_crl(root, settings=PkiSettings(base_url=base_url), clock=SystemClock())
    except KagiError as exc:
        raise failure(exc) from None
    if as_json:
        print_json(
            {
                "number": signed.number,
                "next_update": signed.next_update.isoformat(),
                "path": str(directory.root_crl_path),
            }
        )
        return
    click.echo(
        f"root CRL {signed.number} signed, valid until {signed.next_update.isoformat()}: {directory.root_crl_path}"
    )


@click.command(
    "move-root-key",
    help=(
        "Take the root key out of a CA directory made before the root went offline: re-encrypt it under its own "
        "passphrase (--root-passphrase-file) at --root-key-out, then delete it from the CA directory. The online "
        "keys' passphrase comes from KAGI_CA_KEY_PASSPHRASE_FILE or KAGI_CA_KEY_PASSPHRASE."
    ),
)
@click.option("--ca-dir", type=click.Path(path_type=Path), help="Where the CA lives (default: <state-dir>/ca).")
@click.option(
    "--root-key-out",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Where to write the root's encrypted key (outside the CA directory; never overwritten).",
)
@_ROOT_PASSPHRASE_FILE
@yes_option
@dry_run_option
@click.pass_obj
def move_root_key_command(
    obj: AdminContext, ca_dir: Path | None, root_key_out: Path, root_passphrase_file: Path, yes: bool, dry_run: bool
) -> None:
    """Run `kagi admin move-root-key` (local files)."""
    directory = CaDirectory(ca_dir or obj.state_dir / "ca")
    plan = {
        "CA directory": directory.path,
        "root key to": root_key_out,
        "then": "the root key is re-encrypted there under its own passphrase and deleted from the CA directory",
    }
    if not confirm("move the root key out of the CA directory", plan, yes=yes, dry_run=dry_run):
        return
    root_key = OfflineRootKey(root_key_out, _root_passphrase(root_passphrase_file))
    try:
        passphrase = Environment(os.environ).required_secret("KAGI_CA_KEY_PASSPHRASE")
        path = directory.move_root_key(passphrase, root_key)
    except KagiError as exc:
        raise failure(exc) from None
    click.echo(f"root key moved to {path} and removed from {directory.path}: keep it offline")


CA_COMMANDS = (
    init_ca_command,
    revoke_command,
    list_certificates_command,
    verify_audit_command,
    sign_root_crl_command,
    move_root_key_command,
)
"""The CA's admin commands, to be added to the `admin` group."""

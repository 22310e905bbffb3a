"""`kagi admin list-credentials` and `renew-credential`: the internal mTLS credentials after their issuance.

Listing is the CA's ListCertificates for each service role, internal certificates only (customer certificates
are `list-certificates`); revoking one is `kagi admin revoke --serial SERIAL` like any certificate.

Renewing reads an existing credential DIR/NAME.pem (as `issue-credential` wrote it), checks that it is a kagi
internal credential chaining to the root in DIR/ca.pem, and asks the internal CA (online, or `--offline` from its
key files) for a certificate with a NEW key (made here) for the same role, DNS names and IP addresses, under the
service profile's lifetime policy. The new key and certificate replace DIR/NAME-key.pem and DIR/NAME.pem, each
atomically (key first), so a component that reloads its certificate files picks the pair up; `--revoke-old`
then revokes the old serial (reason superseded).
"""

from __future__ import annotations

import json
import os
import secrets
from datetime import timedelta
from pathlib import Path

import click
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from kagi.ca.v1 import ca_pb2, ca_pb2_grpc
from kagi.cli.admin import AdminContext, run_call
from kagi.cli.admin_ca import _certificate_json
from kagi.cli.admin_credentials import (
    DEFAULT_DAYS,
    _check_name,
    _Files,
    _identity,
    _utc,
    check_offline_options,
    credential_summary,
    days_option,
    issue_and_write,
    offline_ca_options,
    offline_settings,
)
from kagi.cli.output import confirm, dry_run_option, json_option, print_rows, yes_option
from kagi.runtime.identity import SPIFFE_PREFIX
from services.ca_service.domain.identity import SERVICE_ROLES, ServiceIdentity
from services.ca_service.domain.serials import serial_hex

_STATES = {
    "active": ca_pb2.Certificate.STATE_ACTIVE,
    "revoked": ca_pb2.Certificate.STATE_REVOKED,
    "expired": ca_pb2.Certificate.STATE_EXPIRED,
}


def _names_of(certificate_pem: str) -> tuple[list[str], list[str]]:
    """Return the DNS names and IP addresses a certificate carries (empty when it cannot be read)."""
    try:
        leaf = x509.load_pem_x509_certificate(certificate_pem.encode())
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return [], []
    return san.get_values_for_type(x509.DNSName), [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]


def credential_json(certificate: ca_pb2.Certificate) -> dict[str, object]:
    """Return one internal credential as `list-credentials` prints it."""
    dns_names, ip_addresses = _names_of(certificate.certificate_pem)
    body = _certificate_json(certificate)
    body = {"role": certificate.subject_id, **body, "dns_names": dns_names, "ip_addresses": ip_addresses}
    body["not_before"] = certificate.not_before.ToJsonString()
    return body


@click.command(
    "list-credentials",
    help=(
        "List the internal credentials (kagi's services, operators, the bank's front-ends) the CA issued, as a table "
        "(--json: a JSON list): role, serial_number, state (active, revoked, expired), not_after, DNS names, IP "
        "addresses. Revoke one with `kagi admin revoke --serial SERIAL --reason REASON --yes`."
    ),
    short_help="List internal credentials (role, serial, not-after, state).",
)
@click.option("--role", "roles", type=click.Choice(SERVICE_ROLES), multiple=True, help="Only this role (repeatable).")
@click.option("--state", type=click.Choice(sorted(_STATES)), help="Only credentials in this state.")
@json_option("Print a JSON list instead of a table.")
@click.pass_obj
def list_credentials_command(obj: AdminContext, roles: tuple[str, ...], state: str | None, as_json: bool) -> None:
    """Run `kagi admin list-credentials` (ListCertificates per role, paged, internal issuer only)."""

    async def call() -> list[ca_pb2.Certificate]:
        found: list[ca_pb2.Certificate] = []
        async with obj.channel("ca") as channel:
            stub = ca_pb2_grpc.CertificateAuthorityServiceStub(channel)
            for role in roles or SERVICE_ROLES:
                token = ""
                while True:
                    page = await stub.ListCertificates(
                        ca_pb2.ListCertificatesRequest(
                            subject_id=role,
                            state=_STATES[state] if state else ca_pb2.Certificate.STATE_UNSPECIFIED,
                            page_size=500,
                            page_token=token,
                        ),
                        timeout=30,
                    )
                    # A subject id is a role for service certificates only; the issuer says which these are.
                    found.extend(c for c in page.certificates if c.issuer == ca_pb2.ISSUER_INTERNAL)
                    token = page.next_page_token
                    if not token:
                        break
        return found

    rows = [credential_json(certificate) for certificate in run_call(call)]
    print_rows(rows, _CREDENTIAL_COLUMNS, as_json=as_json, empty="no credentials")


_CREDENTIAL_COLUMNS = ("role", "serial_number", "state", "not_after", "dns_names", "ip_addresses")


def _not_a_credential(path: Path, problem: str) -> click.ClickException:
    return click.ClickException(f"{path} is not a kagi internal credential: {problem}; nothing was issued")


def read_credential(path: Path) -> tuple[x509.Certificate, x509.Certificate, ServiceIdentity]:
    """Return a credential file's leaf, the internal CA after it, and the identity the leaf certifies.

    Refused (exit 1, naming the file and the problem): an unreadable file, no PEM certificate, a leaf without
    exactly one kagi SPIFFE ID of a known role, a chain without the CA that issued the leaf.
    """
    try:
        chain = x509.load_pem_x509_certificates(path.read_bytes())
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {exc.strerror}") from None
    except ValueError:
        raise _not_a_credential(path, "it holds no PEM certificate") from None
    leaf = chain[0]
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise _not_a_credential(path, "its certificate has no subject alternative names") from None
    spiffe_ids = [uri for uri in san.get_values_for_type(x509.UniformResourceIdentifier) if uri.startswith("spiffe:")]
    if len(spiffe_ids) != 1 or not spiffe_ids[0].startswith(SPIFFE_PREFIX):
        raise _not_a_credential(path, f"its certificate does not carry exactly one {SPIFFE_PREFIX}<role> URI")
    role = spiffe_ids[0].removeprefix(SPIFFE_PREFIX)
    if role not in SERVICE_ROLES:
        raise _not_a_credential(path, f"{role!r} is not a kagi role ({', '.join(SERVICE_ROLES)})")
    issuer = next((c for c in chain[1:] if c.subject == leaf.issuer), None)
    if issuer is None:
        raise _not_a_credential(path, "the internal CA certificate that issued it is not in the file")
    try:
        leaf.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        raise _not_a_credential(path, "its certificate is not signed by the CA certificate after it") from None
    identity = _identity(
        role,
        tuple(san.get_values_for_type(x509.DNSName)),
        tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress)),
    )
    return leaf, issuer, identity


def _chains_to(internal: x509.Certificate, root_pem: bytes, path: Path) -> None:
    """Refuse a credential whose internal CA was not signed by the root the CA answers with."""
    root = x509.load_pem_x509_certificate(root_pem)
    try:
        internal.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        raise _not_a_credential(path, "it was issued under another root than this CA's") from None


_HELP = f"""Renew the internal credential NAME in --out DIR before it expires: a NEW EC P-256 key made here (only a
CSR leaves this machine) and a certificate for the same role, DNS names and IP addresses as DIR/NAME.pem, valid
{DEFAULT_DAYS} days (the service profile's lifetime) unless --days says otherwise.

\b
DIR/NAME-key.pem then DIR/NAME.pem are replaced, each atomically: a component that reloads its certificate
files (on SIGHUP or when they change) takes the new pair without a restart. With --revoke-old the old
certificate is then revoked (reason superseded): do that once every replica runs on the new one.

A file that is not a kagi internal credential (no kagi SPIFFE ID, no internal CA after the certificate, or
another root than the CA's) is refused and nothing is issued. Online and --offline work as for
issue-credential (the same CA, operator credential, store and passphrase options)."""


@click.command("renew-credential", help=_HELP, short_help="Renew an internal mTLS credential with a new key.")
@click.option("--name", required=True, callback=_check_name, help="The credential's name: DIR/NAME.pem.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    required=True,
    help="The directory holding NAME.pem, NAME-key.pem and ca.pem.",
)
@days_option
@click.option("--revoke-old", is_flag=True, help="Revoke the old certificate (superseded) once the new one is written.")
@offline_ca_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
@yes_option
@dry_run_option
@click.pass_context
def renew_credential_command(
    ctx: click.Context,
    name: str,
    out: Path,
    days: int | None,
    revoke_old: bool,
    offline: bool,
    ca_dir: Path | None,
    passphrase_file: Path | None,
    store_url: str,
    namespace: str,
    base_url: str,
    as_json: bool,
    yes: bool,
    dry_run: bool,
) -> None:
    """Run `kagi admin renew-credential` (gRPC as the operator, or --offline), after showing what it replaces."""
    obj: AdminContext = ctx.obj
    check_offline_options(ctx, offline)
    if offline and revoke_old:
        raise click.UsageError(
            "--revoke-old needs the running CA; with --offline, revoke the old serial with `kagi admin revoke` "
            "once the CA runs"
        )
    files = _Files.plan(out, name)
    old_leaf, old_internal, identity = read_credential(files.certificate)
    old_serial = serial_hex(old_leaf.serial_number)
    lifetime = timedelta(days=days if days is not None else DEFAULT_DAYS)
    files.check_free(force=True)
    then = f"a new key and certificate replace {files.key} and {files.certificate}"
    plan = {
        "role": identity.role,
        "old serial": old_serial,
        "old not after": _utc(old_leaf.not_valid_after_utc),
        "then": then + ("; the old serial is revoked (superseded)" if revoke_old else ""),
    }
    if not confirm(f"renew the {identity.role} credential {name!r} with a new key", plan, yes=yes, dry_run=dry_run):
        return
    settings_offline = None
    if offline:
        settings_offline = offline_settings(
            ctx,
            ca_dir=ca_dir,
            passphrase_file=passphrase_file,
            store_url=store_url,
            namespace=namespace,
            base_url=base_url,
            lifetime=lifetime,
        )

    def check_root(root_pem: bytes) -> None:
        # Before anything is issued: the old credential must be this CA's, and DIR/ca.pem its root.
        _chains_to(old_internal, root_pem, files.certificate)
        files.check_root(root_pem, force=False)

    request_id = f"renew-credential/{name}/{secrets.token_hex(8)}"
    issued, leaf = issue_and_write(
        obj, files, identity, request_id, check_root, days=days, offline=settings_offline, force=True
    )
    revoked = _revoke(obj, old_serial) if revoke_old else False

    summary: dict[str, object] = {
        **credential_summary(name, identity, leaf, files, issued, offline=offline),
        "old_serial_number": old_serial,
        "old_not_after": _utc(old_leaf.not_valid_after_utc),
        "old_revoked": revoked,
    }
    if as_json:
        click.echo(json.dumps(summary, ensure_ascii=False))
        return
    click.echo(f"renewed the {identity.role} credential {name!r} with a new key")
    rows = [
        ("certificate", str(files.certificate)),
        ("key", f"{files.key}  (0600)"),
        ("serial", f"{summary['serial_number']}  (was {old_serial}{', now revoked' if revoked else ''})"),
        ("not after", f"{summary['not_after']}  (was {summary['old_not_after']})"),
        ("recorded in", issued.recorded_in),
    ]
    for label, value in rows:
        click.echo(f"  {label:<12} {value}")


def _revoke(obj: AdminContext, serial: str) -> bool:
    async def call() -> bool:
        async with obj.channel("ca") as channel:
            stub = ca_pb2_grpc.CertificateAuthorityServiceStub(channel)
            await stub.RevokeCertificate(
                ca_pb2.RevokeCertificateRequest(
                    request_id=os.urandom(16).hex(), serial_number=serial, reason=ca_pb2.REVOCATION_REASON_SUPERSEDED
                ),
                timeout=30,
            )
            return True

    return run_call(call)


LIFECYCLE_COMMANDS = (list_credentials_command, renew_credential_command)
"""The internal credentials' commands after issue-credential, to be added to the `admin` group."""

"""`kagi admin issue-credential`: an internal mTLS credential for a kagi service or a bank front-end.

The key (EC P-256) is made here and never leaves this machine; only a CSR goes to the CA. The internal CA
issues a service-profile certificate carrying the role's SPIFFE ID, either as the running CA over gRPC (the
operator's certificate, as every other `kagi admin` command) or offline from the CA's key files, through the
CA's own use case on the CA's own store, so that either way the CA records and audits it and can list and revoke
it. Written: DIR/NAME.pem (certificate + internal CA), DIR/NAME-key.pem (0600) and DIR/ca.pem (the root).
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import unquote, urlsplit

import click
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from kagi.ca.v1 import ca_pb2, ca_pb2_grpc
from kagi.cli.admin import AdminContext, run_call
from kagi.cli.output import F, failure
from kagi.errors import KagiError
from kagi.files import write_file
from kagi.runtime.identity import Role
from kagi.runtime.settings import INTERNAL_SERVER_ROLES, Environment, Secret, internal_dns_suffix, role_dns_name
from services.ca_service.adapters.ca_directory import CaDirectory
from services.ca_service.creation import PASSPHRASE_FILE, issue_service_certificate
from services.ca_service.domain.errors import InvalidIdentity
from services.ca_service.domain.identity import SERVICE_ROLES, ServiceIdentity
from services.ca_service.domain.profiles import SERVICE_PROFILE
from services.ca_service.domain.serials import serial_hex
from services.ca_service.domain.settings import PkiSettings

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
"""What a credential's NAME may be: it names files, so no path separators and no leading dot."""

DEFAULT_DAYS = SERVICE_PROFILE.validity.days
"""The service profile's lifetime (90 days): what the CA issues unless told otherwise."""

MAX_DAYS = 825
"""Bounds --days: the longest lifetime TLS certificates were ever allowed in the Web PKI."""

_OPTION_OF_FIELD = {"role": "--role", "dns_names": "--dns", "ip_addresses": "--ip"}

_HELP = f"""Issue an internal mTLS credential for ROLE: a fresh EC P-256 key made here (only a CSR leaves this
machine) and a certificate from the internal CA carrying spiffe://kagi.internal/<role>. A server role's (ca, otp,
enrollment) also carries its role DNS name, <role>.kagi.internal (suffix: KAGI_INTERNAL_DNS_SUFFIX), which its
clients verify whatever address they dial.

\b
Writes, in --out DIR:
  NAME.pem      the certificate followed by the internal CA certificate
  NAME-key.pem  the private key (mode 0600; an existing one is never replaced without --force)
  ca.pem        the root every component trusts

By default the running CA issues it (IssueCertificate, profile "service") to the operator, whose mTLS files come
from --state-dir (tls/developer.pem, or KAGI_ADMIN_TLS_CERT/_KEY/_CA) and which is reached at KAGI_CA_TARGET. It
is valid {DEFAULT_DAYS} days (the service profile's lifetime) unless --days says otherwise.

With --offline (for bootstrapping before the CA runs) the certificate is signed from the internal CA's key files
in --ca-dir (default <state-dir>/ca), the key passphrase coming from --passphrase-file, KAGI_CA_KEY_PASSPHRASE_FILE
or KAGI_CA_KEY_PASSPHRASE (or, for `kagi dev`'s layout, <state-dir>/secrets/ca-passphrase). It is recorded at
once in the CA's own store (--store-url / KAGI_STORE_URL; sqlite: is <state-dir>/ca.db), through the same use case
as an online issuance: serial reserved, certificate recorded, audit record written. The CA lists it (`kagi admin
list-certificates --subject ROLE`) and revokes it (`kagi admin revoke`) as soon as it runs on that store. Give the
same --state-dir, KAGI_STORE_URL and KAGI_PKI_BASE_URL as the CA's.

No key material is ever printed."""


@dataclass(frozen=True)
class _Issued:
    """_Issued is the CA's answer: the leaf, the internal CA and the root (PEM), and where it is recorded."""

    certificate_pem: bytes
    internal_pem: bytes
    root_pem: bytes
    recorded_in: str


@dataclass(frozen=True)
class _Files:
    """_Files are the three files a credential is written to."""

    directory: Path
    certificate: Path
    key: Path
    root: Path

    @classmethod
    def plan(cls, directory: Path, name: str) -> _Files:
        directory = directory.absolute()
        return cls(directory, directory / f"{name}.pem", directory / f"{name}-key.pem", directory / "ca.pem")

    def check_free(self, *, force: bool) -> None:
        """Refuse, before anything is issued, what the write would fail on or replace silently."""
        if self.directory.exists() and not self.directory.is_dir():
            raise click.BadParameter(f"{self.directory} exists and is not a directory", param_hint="'--out'")
        existing = self.directory
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise click.BadParameter(f"{existing} is not a directory this user may write in", param_hint="'--out'")
        if force:
            return
        for path in (self.key, self.certificate):
            if path.exists() or path.is_symlink():
                raise click.BadParameter(
                    f"{path} exists already; choose another --name or --out, or pass --force to replace it",
                    param_hint="'--name'",
                )

    def check_root(self, root_pem: bytes, *, force: bool) -> None:
        """Refuse to replace a DIR/ca.pem holding another root (credentials there trust it)."""
        if force or not self.root.exists():
            return
        if self.root.read_bytes() != root_pem:
            raise click.BadParameter(
                f"{self.root} holds another root certificate; use another --out, or --force to replace it",
                param_hint="'--out'",
            )

    def write(self, key_pem: bytes, chain_pem: bytes, root_pem: bytes, *, force: bool) -> None:
        """Put the key (0600), the chain and the root in place, each atomically."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_atomically(self.key, key_pem, 0o600, replace=force)
        _write_atomically(self.certificate, chain_pem, 0o644, replace=force)
        if not (self.root.exists() and self.root.read_bytes() == root_pem):
            _write_atomically(self.root, root_pem, 0o644, replace=True)
        descriptor = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _write_atomically(path: Path, data: bytes, mode: int, *, replace: bool) -> None:
    """Write `data` at `path` with exactly `mode`: replacing what is there only when `replace`."""
    try:
        write_file(path, data, mode, replace=replace)
    except FileExistsError:
        raise click.ClickException(f"{path} appeared while the credential was issued; it was left alone") from None


def _check_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not NAME_RE.fullmatch(value):
        raise click.BadParameter(
            "must be 1-63 characters of A-Z a-z 0-9 . _ - starting with a letter or digit (it names the files)"
        )
    if value == "ca":
        raise click.BadParameter("'ca' would collide with ca.pem, the root; use another name (e.g. ca-service)")
    return value


def _identity(role: str, dns_names: tuple[str, ...], ip_addresses: tuple[str, ...]) -> ServiceIdentity:
    try:
        return ServiceIdentity(role, dns_names=dns_names, ip_addresses=ip_addresses)
    except InvalidIdentity as exc:
        field, problem = next(iter(exc.fields.items()), ("role", str(exc)))
        raise click.BadParameter(problem, param_hint=f"'{_OPTION_OF_FIELD.get(field, field)}'") from None


def _with_role_name(role: str, dns_names: tuple[str, ...]) -> tuple[str, ...]:
    """Put a server role's DNS name (`ca.kagi.internal`, suffix KAGI_INTERNAL_DNS_SUFFIX) first: clients verify it."""
    if role not in INTERNAL_SERVER_ROLES:
        return dns_names
    try:
        name = role_dns_name(role, internal_dns_suffix(Environment(os.environ)))
    except KagiError as exc:
        raise click.UsageError(str(exc)) from None
    return dns_names if name in dns_names else (name, *dns_names)


def _local_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name in a bare container
        return str(os.getuid())


def _read_passphrase(passphrase_file: Path | None, *, dev_file: Path | None) -> Secret:
    if passphrase_file is not None:
        try:
            return Secret(passphrase_file.read_bytes().rstrip(b"\r\n"))
        except OSError as exc:
            raise click.BadParameter(f"cannot read it: {exc.strerror}", param_hint="'--passphrase-file'") from None
    try:
        secret = Environment(os.environ).secret("KAGI_CA_KEY_PASSPHRASE", required=False)
    except KagiError as exc:
        raise failure(exc) from None
    if secret is not None:
        return secret
    if dev_file is not None and dev_file.is_file():
        return Secret(dev_file.read_bytes().strip())
    raise click.UsageError(
        "--offline needs the CA key passphrase: set KAGI_CA_KEY_PASSPHRASE_FILE (preferred) or "
        "KAGI_CA_KEY_PASSPHRASE, or pass --passphrase-file"
    )


def _store_location(url: str, state_dir: Path, namespace: str) -> tuple[str, Path | None]:
    """The store `url` names, for humans (never with a password), and its SQLite file if it is one."""
    parts = urlsplit(url)
    scheme = url.partition(":")[0].lower()
    if scheme == "sqlite":
        path = Path(unquote(parts.path)) if parts.path else state_dir / f"{namespace}.db"
        return str(path.absolute()), path
    port = f":{parts.port}" if parts.port else ""
    return f"{scheme}://{parts.hostname or ''}{port}{parts.path} (namespace {namespace})", None


def _issue_online(
    obj: AdminContext,
    csr: bytes,
    identity: ServiceIdentity,
    request_id: str,
    check_root: Callable[[bytes], None],
    days: int | None,
) -> _Issued:
    async def call() -> _Issued:
        async with obj.channel("ca") as channel:
            stub = ca_pb2_grpc.CertificateAuthorityServiceStub(channel)
            cas = await stub.GetCaCertificates(ca_pb2.GetCaCertificatesRequest(), timeout=30)
            root = cas.root_pem.encode()
            check_root(root)
            reply = await stub.IssueCertificate(
                ca_pb2.IssueCertificateRequest(
                    request_id=request_id,
                    csr=csr,
                    profile="service",
                    service=ca_pb2.ServiceIdentity(
                        role=identity.role, dns_names=identity.dns_names, ip_addresses=identity.ip_addresses
                    ),
                    validity_days=days or 0,
                ),
                timeout=30,
            )
            return _Issued(
                reply.certificate.certificate_pem.encode(),
                cas.internal_ca_pem.encode(),
                root,
                f"the running CA at {obj.targets['ca']}",
            )

    return run_call(call)


@dataclass(frozen=True)
class _Offline:
    ca_dir: Path
    passphrase: Secret
    store_url: str
    namespace: str
    base_url: str
    lifetime: timedelta


def _issue_offline(
    obj: AdminContext,
    offline: _Offline,
    csr: bytes,
    identity: ServiceIdentity,
    request_id: str,
    check_root: Callable[[bytes], None],
) -> _Issued:
    where, sqlite_file = _store_location(offline.store_url, obj.state_dir, offline.namespace)
    try:
        settings = PkiSettings(base_url=offline.base_url)
        loaded = CaDirectory(offline.ca_dir).load(offline.passphrase)
        root = loaded.hierarchy.root.pem
        check_root(root)
        fresh_store = sqlite_file is not None and not sqlite_file.exists()
        record = asyncio.run(
            issue_service_certificate(
                loaded,
                csr,
                identity,
                state_dir=obj.state_dir,
                store_url=offline.store_url,
                namespace=offline.namespace,
                settings=settings,
                lifetime=offline.lifetime,
                request_id=request_id,
                actor_name=f"kagi-admin-offline:{_local_user()}",
            )
        )
    except KagiError as exc:
        raise failure(exc) from None  # exit 3 when the store is down
    if fresh_store:
        click.echo(
            f"note: {where} did not exist and was created; the CA must run on this store "
            "(same KAGI_STATE_DIR and KAGI_STORE_URL) to list and revoke this certificate",
            err=True,
        )
    return _Issued(record.certificate_pem.encode(), loaded.hierarchy.internal.pem, root, f"the CA's store {where}")


def _csr(key: ec.EllipticCurvePrivateKey) -> bytes:
    # The CA takes subject and SANs from the identity, never from the CSR: the CSR only proves the key.
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )


def _public_der(key: ec.EllipticCurvePublicKey | x509.Certificate) -> bytes:
    public = key.public_key() if isinstance(key, x509.Certificate) else key
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _checked_leaf(issued: _Issued, key: ec.EllipticCurvePrivateKey, spiffe_id: str) -> x509.Certificate:
    """The leaf, once it is certain to be for our key and role, chained by the internal CA to the root."""
    try:
        leaf = x509.load_pem_x509_certificate(issued.certificate_pem)
        internal = x509.load_pem_x509_certificate(issued.internal_pem)
        root = x509.load_pem_x509_certificate(issued.root_pem)
        problem = ""
        if _public_der(leaf) != _public_der(key.public_key()):
            problem = "it is not for the key made here"
        elif leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier
        ) != [spiffe_id]:
            problem = f"it does not carry exactly {spiffe_id}"
        else:
            leaf.verify_directly_issued_by(internal)
            internal.verify_directly_issued_by(root)
    except (ValueError, TypeError, x509.ExtensionNotFound) as exc:
        problem = f"it does not verify ({exc})"
    except Exception as exc:  # InvalidSignature and friends: the chain does not hold
        problem = f"its chain does not verify ({type(exc).__name__})"
    if problem:
        raise click.ClickException(f"the CA's answer is unusable: {problem}; nothing was written")
    return leaf


def _utc(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def days_option(command: F) -> F:
    """Add --days: the credential's lifetime, bounded by MAX_DAYS."""
    return click.option(
        "--days",
        type=click.IntRange(1, MAX_DAYS),
        help=f"Lifetime in days, 1-{MAX_DAYS} (default {DEFAULT_DAYS}), inside the internal CA's own validity.",
    )(command)


def offline_ca_options(command: F) -> F:
    """Add --offline and the options that say where the CA's keys and store are when it signs offline."""
    for option in reversed(
        [
            click.option(
                "--offline", is_flag=True, help="Sign from the CA's key files and record in its store directly."
            ),
            click.option(
                "--ca-dir",
                type=click.Path(file_okay=False, path_type=Path),
                envvar="KAGI_CA_DIR",
                help="With --offline: where the CA lives (default: <state-dir>/ca).",
            ),
            click.option(
                "--passphrase-file",
                type=click.Path(dir_okay=False, path_type=Path),
                help="With --offline: file holding the CA key passphrase (else KAGI_CA_KEY_PASSPHRASE[_FILE]).",
            ),
            click.option(
                "--store-url",
                envvar="KAGI_STORE_URL",
                default="sqlite:",
                show_default=True,
                help="With --offline: the CA's store (sqlite: is <state-dir>/ca.db).",
            ),
            click.option("--namespace", default="ca", show_default=True, hidden=True, help="The CA's store namespace."),
            click.option(
                "--base-url",
                envvar="KAGI_PKI_BASE_URL",
                default="http://127.0.0.1:8080",
                show_default=True,
                help="With --offline: base URL of the CRL and OCSP URLs put in the certificate "
                "(the CA's KAGI_PKI_BASE_URL).",
            ),
        ]
    ):
        command = option(command)
    return command


def check_offline_options(ctx: click.Context, offline: bool) -> None:
    """Refuse (usage error) the options that only --offline reads, given without it."""
    if offline:
        return
    for option, param in (("--ca-dir", "ca_dir"), ("--passphrase-file", "passphrase_file")):
        if ctx.get_parameter_source(param) is click.core.ParameterSource.COMMANDLINE:
            raise click.UsageError(f"{option} is only used with --offline")


def offline_settings(
    ctx: click.Context,
    *,
    ca_dir: Path | None,
    passphrase_file: Path | None,
    store_url: str,
    namespace: str,
    base_url: str,
    lifetime: timedelta,
) -> _Offline:
    """Return what signing offline needs, from the --offline options (the passphrase read now)."""
    obj: AdminContext = ctx.obj
    # `kagi dev`'s layout (<state-dir>/ca) has its passphrase beside it; a CA named explicitly does not.
    dev_layout = ctx.get_parameter_source("ca_dir") is click.core.ParameterSource.DEFAULT
    dev_file = obj.state_dir / "secrets" / PASSPHRASE_FILE if dev_layout else None
    return _Offline(
        ca_dir=ca_dir or obj.state_dir / "ca",
        passphrase=_read_passphrase(passphrase_file, dev_file=dev_file),
        store_url=store_url,
        namespace=namespace,
        base_url=base_url,
        lifetime=lifetime,
    )


def issue_and_write(
    obj: AdminContext,
    files: _Files,
    identity: ServiceIdentity,
    request_id: str,
    check_root: Callable[[bytes], None],
    *,
    days: int | None,
    offline: _Offline | None,
    force: bool,
) -> tuple[_Issued, x509.Certificate]:
    """Make a fresh key here, have the CA certify it (online, or OFFLINE), check the answer, write the files."""
    key = ec.generate_private_key(ec.SECP256R1())
    if offline is not None:
        issued = _issue_offline(obj, offline, _csr(key), identity, request_id, check_root)
    else:
        issued = _issue_online(obj, _csr(key), identity, request_id, check_root, days)
    leaf = _checked_leaf(issued, key, Role(identity.role).spiffe_id)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    files.write(key_pem, issued.certificate_pem + issued.internal_pem, issued.root_pem, force=force)
    return issued, leaf


def credential_summary(
    name: str, identity: ServiceIdentity, leaf: x509.Certificate, files: _Files, issued: _Issued, *, offline: bool
) -> dict[str, object]:
    """Return what `--json` prints of a credential just written."""
    return {
        "name": name,
        "role": identity.role,
        "spiffe_id": Role(identity.role).spiffe_id,
        "serial_number": serial_hex(leaf.serial_number),
        "not_before": _utc(leaf.not_valid_before_utc),
        "not_after": _utc(leaf.not_valid_after_utc),
        "dns_names": list(identity.dns_names),
        "ip_addresses": list(identity.ip_addresses),
        "certificate_file": str(files.certificate),
        "key_file": str(files.key),
        "ca_file": str(files.root),
        "mode": "offline" if offline else "online",
        "recorded_in": issued.recorded_in,
    }


@click.command("issue-credential", help=_HELP, short_help="Issue an internal mTLS credential for a role.")
@click.option("--role", type=click.Choice(SERVICE_ROLES), required=True, help="The SPIFFE role to certify.")
@click.option(
    "--name",
    required=True,
    callback=_check_name,
    help="File name of the credential: [A-Za-z0-9][A-Za-z0-9._-]{0,62}.",
)
@click.option("--dns", "dns_names", multiple=True, help="A DNS name for TLS clients to check (repeatable).")
@click.option("--ip", "ip_addresses", multiple=True, help="An IP address for TLS clients to check (repeatable).")
@days_option
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory for NAME.pem, NAME-key.pem and ca.pem (made 0700 if missing).",
)
@click.option("--force", is_flag=True, help="Replace an existing NAME.pem / NAME-key.pem / different ca.pem.")
@offline_ca_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
@click.pass_context
def issue_credential_command(
    ctx: click.Context,
    role: str,
    name: str,
    dns_names: tuple[str, ...],
    ip_addresses: tuple[str, ...],
    days: int | None,
    out: Path,
    force: bool,
    offline: bool,
    ca_dir: Path | None,
    passphrase_file: Path | None,
    store_url: str,
    namespace: str,
    base_url: str,
    as_json: bool,
) -> None:
    """Run `kagi admin issue-credential` (gRPC as the operator, or --offline)."""
    obj: AdminContext = ctx.obj
    check_offline_options(ctx, offline)
    lifetime = timedelta(days=days if days is not None else DEFAULT_DAYS)
    identity = _identity(role, _with_role_name(role, dns_names), ip_addresses)
    spiffe_id = Role(identity.role).spiffe_id
    files = _Files.plan(out, name)
    files.check_free(force=force)
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
        files.check_root(root_pem, force=force)

    # The request id names the credential, so the CA's audit record says which files the certificate went to.
    request_id = f"issue-credential/{name}/{secrets.token_hex(8)}"
    issued, leaf = issue_and_write(
        obj, files, identity, request_id, check_root, days=days, offline=settings_offline, force=force
    )
    summary = credential_summary(name, identity, leaf, files, issued, offline=offline)
    if as_json:
        click.echo(json.dumps(summary, ensure_ascii=False))
        return
    rows = [
        ("certificate", f"{files.certificate}  (certificate + internal CA)"),
        ("key", f"{files.key}  (0600)"),
        ("root", str(files.root)),
        ("serial", str(summary["serial_number"])),
        ("not after", str(summary["not_after"])),
        ("spiffe id", spiffe_id),
        ("recorded in", issued.recorded_in),
    ]
    click.echo(f"issued a {identity.role} credential {name!r}")
    for label, value in rows:
        click.echo(f"  {label:<12} {value}")

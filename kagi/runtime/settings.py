"""Settings read once from the environment in each component's `main`, validated there, then frozen.

Nothing below `main` reads the environment: components receive these objects. Secrets are wrapped in `Secret`
so that printing a settings object, or logging it by mistake, never shows them.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from kagi.errors import InvalidArgument


class Secret:
    """Holds a sensitive string or bytes; its repr and str are always masked."""

    __slots__ = ("_value",)

    def __init__(self, value: str | bytes) -> None:
        self._value = value.encode() if isinstance(value, str) else bytes(value)

    def reveal(self) -> bytes:
        """Return the secret bytes; call it only where the secret is used, never to log it."""
        return self._value

    def reveal_text(self) -> str:
        """Return the secret as UTF-8 text."""
        return self._value.decode()

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class Environment:
    """Reads typed settings from a mapping (os.environ in `main`), naming the variable on error."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = values

    def text(self, name: str, default: str | None = None) -> str:
        """Return the variable or its default; a missing one without default is an error naming it."""
        value = self._values.get(name)
        if value is None or value == "":
            if default is None:
                raise InvalidArgument(f"{name} is not set", fields={name: "is required"})
            return default
        return value

    def optional(self, name: str) -> str | None:
        """Return the variable, or None when it is unset or empty."""
        value = self._values.get(name)
        return value if value else None

    def integer(self, name: str, default: int, *, minimum: int = 0, maximum: int = 2**31) -> int:
        """Return the variable as an int within [minimum, maximum]."""
        raw = self._values.get(name)
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise InvalidArgument(f"{name} must be a whole number", fields={name: "not a number"}) from None
        if not minimum <= value <= maximum:
            raise InvalidArgument(f"{name} is out of range", fields={name: f"must be between {minimum} and {maximum}"})
        return value

    def flag(self, name: str, default: bool = False) -> bool:
        """Return the variable as a boolean (1/true/yes or 0/false/no)."""
        raw = self._values.get(name)
        if not raw:
            return default
        lowered = raw.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
        raise InvalidArgument(f"{name} must be true or false", fields={name: "not a boolean"})

    def path(self, name: str, default: str | None = None) -> Path:
        """Return the variable as a filesystem path."""
        return Path(self.text(name, default))

    def secret(self, name: str, *, required: bool = True) -> Secret | None:
        """Read NAME, or the file named by NAME_FILE (preferred: keeps it out of the process table)."""
        file_name = self._values.get(f"{name}_FILE")
        if file_name:
            try:
                return Secret(Path(file_name).read_bytes().rstrip(b"\r\n"))
            except OSError as exc:
                raise InvalidArgument(
                    f"{name}_FILE cannot be read", fields={f"{name}_FILE": exc.strerror or "unreadable"}
                ) from None
        value = self._values.get(name)
        if value:
            return Secret(value)
        if required:
            raise InvalidArgument(f"{name} is not set", fields={name: f"set {name} or {name}_FILE"})
        return None

    def required_secret(self, name: str) -> Secret:
        """Return `secret` for a setting that must be present."""
        secret = self.secret(name, required=True)
        if secret is None:  # pragma: no cover - secret() raises first
            raise InvalidArgument(f"{name} is not set", fields={name: f"set {name} or {name}_FILE"})
        return secret


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Names a component's mTLS material: its certificate chain, its key, and the CA bundle it trusts.

    `ca_file` is what the component verifies the servers it calls against (the root). A gRPC server verifies
    its callers' certificates against `client_ca_file` instead: the internal CA only, so no certificate of the
    customer CA (under the same root) passes the handshake. When it is None, the server takes the internal CA
    from its own chain: the certificate in `cert_file` that issued its leaf.
    """

    cert_file: Path
    key_file: Path
    ca_file: Path
    client_ca_file: Path | None = None

    def read(self) -> tuple[bytes, bytes, bytes]:
        """Return (certificate chain PEM, key PEM, trusted CA PEM)."""
        return self.cert_file.read_bytes(), self.key_file.read_bytes(), self.ca_file.read_bytes()


@dataclass(frozen=True, slots=True)
class ListenSettings:
    """Says where a gRPC server listens and how it authenticates callers.

    `tls` is None only in plaintext development mode, which is allowed on loopback addresses only.
    """

    host: str
    port: int
    tls: TlsFiles | None
    workers: int = 1

    def __post_init__(self) -> None:
        if self.tls is None and not is_loopback(self.host):
            raise InvalidArgument(
                "plaintext gRPC is for loopback development only",
                fields={"host": "must be a loopback address (127.0.0.1, ::1, localhost) without TLS"},
            )

    @property
    def address(self) -> str:
        """Return host:port as gRPC expects it (IPv6 in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def is_loopback(host: str) -> bool:
    """Tell whether a host name or address is this machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


DEFAULT_INTERNAL_DNS_SUFFIX = "kagi.internal"
"""The suffix of the role DNS names internal servers' certificates carry (`ca.kagi.internal`, ...)."""

INTERNAL_SERVER_ROLES = ("ca", "otp", "enrollment")
"""The roles that serve gRPC: each one's certificate carries its role DNS name, which its clients verify."""

_DNS_NAME_RE = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*")


def role_dns_name(role: str, suffix: str = DEFAULT_INTERNAL_DNS_SUFFIX) -> str:
    """Return the DNS name a role's server certificate carries and its clients verify, e.g. `ca.kagi.internal`.

    A client checks this name whatever address it dialled (a Service name, a pod address, localhost), so a
    valid internal certificate of another role (an OTP server answering where the CA was expected) is refused.
    """
    return f"{role}.{suffix}"


def internal_dns_suffix(env: Environment) -> str:
    """Return KAGI_INTERNAL_DNS_SUFFIX (default kagi.internal), checked to be a DNS name."""
    suffix = env.text("KAGI_INTERNAL_DNS_SUFFIX", DEFAULT_INTERNAL_DNS_SUFFIX).strip().lower().rstrip(".")
    if len(suffix) > 240 or not _DNS_NAME_RE.fullmatch(suffix):
        raise InvalidArgument(
            "KAGI_INTERNAL_DNS_SUFFIX is not a DNS name",
            fields={"KAGI_INTERNAL_DNS_SUFFIX": "must be dot-separated labels of a-z, 0-9 and - (e.g. kagi.internal)"},
        )
    return suffix


def store_url_from_env(env: Environment, default: str = "sqlite:") -> str:
    """Return the store URL: the content of the file KAGI_STORE_URL_FILE names, else KAGI_STORE_URL, else `default`.

    A Redis URL carries its user's password (`redis://kagi-otp:<password>@redis:6379/0`): the file keeps it out
    of the process's environment and of the container's or Pod's description, as the other *_FILE settings do.
    """
    url = env.secret("KAGI_STORE_URL", required=False)
    return default if url is None else url.reveal_text().strip()


def tls_files_from_env(env: Environment, prefix: str) -> TlsFiles | None:
    """Read PREFIX_TLS_CERT, PREFIX_TLS_KEY, PREFIX_TLS_CA and the optional
    PREFIX_TLS_CLIENT_CA (the internal CA the server trusts callers under; default: the issuer of its own
    certificate, from the chain in PREFIX_TLS_CERT); None when plaintext is asked.

    Plaintext needs KAGI_INSECURE_PLAINTEXT=1 explicitly: a missing certificate is an error, not a fallback.
    """
    if env.flag("KAGI_INSECURE_PLAINTEXT"):
        return None
    return TlsFiles(
        cert_file=env.path(f"{prefix}_TLS_CERT"),
        key_file=env.path(f"{prefix}_TLS_KEY"),
        ca_file=env.path(f"{prefix}_TLS_CA"),
        client_ca_file=Path(client_ca) if (client_ca := env.optional(f"{prefix}_TLS_CLIENT_CA")) else None,
    )

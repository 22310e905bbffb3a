"""The gateway's settings: where it listens, its internal identity, the customer CA it trusts, its backends."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gateway.edge import EdgeLimits, Network, parse_networks
from gateway.ocsp_cache import DEFAULT_MAX_ENTRIES
from gateway.ratelimit import DEFAULT_RULES, Rule, parse_rate_limits
from kagi.errors import InvalidArgument
from kagi.runtime.management import management_address
from kagi.runtime.settings import (
    DEFAULT_INTERNAL_DNS_SUFFIX,
    Environment,
    TlsFiles,
    internal_dns_suffix,
    is_loopback,
    store_url_from_env,
)

DEFAULT_HTTPS_PORT = 8443
DEFAULT_HTTP_PORT = 8080


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """Everything the gateway is configured with; built once in `main` and frozen.

    `tls` is the gateway's internal identity (spiffe://kagi.internal/gateway): the client certificate it
    presents to the services. `public_cert_file` and `public_key_file` are the HTTPS certificate customers see
    (a public CA's in production); when None, the HTTPS listener presents the internal one (`kagi dev`).
    `customer_ca_file` is the bundle (root + customer CA) that client certificates are verified against; when
    None it is fetched from the CA service at start.
    `backend_tls` is None only in loopback plaintext development (KAGI_INSECURE_PLAINTEXT=1).
    """

    host: str
    https_port: int
    http_port: int | None
    tls: TlsFiles
    backend_tls: TlsFiles | None
    customer_ca_file: Path | None
    ca_target: str
    otp_target: str
    enrollment_target: str
    workers: int = 1
    # The services' certificates carry <role>.<suffix> (ca.kagi.internal, ...): the names the gateway verifies.
    internal_dns_suffix: str = DEFAULT_INTERNAL_DNS_SUFFIX
    # How long a GetCertificateStatus answer is trusted while the revocation stream is down. Short, so that a
    # revocation reaches this replica within the 2 seconds the design promises even without the stream.
    status_cache_seconds: float = 1.0
    # How often the customer CRL is re-read while the revocation stream is live: a bound on how long a
    # revocation event lost on the way could go unnoticed (KAGI_GATEWAY_CRL_REFRESH_SECONDS).
    crl_refresh_seconds: float = 60.0
    call_timeout_seconds: float = 10.0
    startup_timeout_seconds: float = 30.0
    max_body_bytes: int = 64 * 1024
    # The edge under abuse (gateway.edge): request deadline, idle keep-alive, connection caps per worker.
    edge: EdgeLimits = field(default_factory=EdgeLimits)
    # Rate limits by name (gateway.ratelimit); an empty mapping turns them all off.
    rate_limits: Mapping[str, Rule] = field(default_factory=lambda: dict(DEFAULT_RULES))
    # Peers whose X-Forwarded-For names the client (load balancers); no per-address connection cap on them.
    trusted_proxies: tuple[Network, ...] = ()
    # Where rate-limit counters are shared: a redis:// URL (KAGI_STORE_URL); None keeps them in the process.
    store_url: str | None = None
    # The management listener (plain HTTP /healthz, /readyz, /metrics): (host, port), or None for none.
    management: tuple[str, int] | None = None
    # How many CertIDs the OCSP response cache keeps (gateway.ocsp_cache); 0 turns it off.
    ocsp_cache_size: int = DEFAULT_MAX_ENTRIES
    # The HTTPS certificate chain and key customers see (KAGI_GATEWAY_PUBLIC_TLS_CERT / _KEY); both or neither.
    public_cert_file: Path | None = None
    public_key_file: Path | None = None

    @property
    def https_certificate(self) -> tuple[Path, Path]:
        """Return the certificate chain and key the HTTPS listener presents: the public ones, else the internal."""
        if self.public_cert_file is not None and self.public_key_file is not None:
            return self.public_cert_file, self.public_key_file
        return self.tls.cert_file, self.tls.key_file

    def __post_init__(self) -> None:
        problems: dict[str, str] = {}
        for name in ("https_port", "http_port"):
            port = getattr(self, name)
            if port is not None and not 0 <= port <= 65535:
                problems[name] = "must be between 0 and 65535"
        if self.backend_tls is None:
            for name in ("ca_target", "otp_target", "enrollment_target"):
                if not is_loopback(getattr(self, name).rsplit(":", 1)[0]):
                    problems[name] = "plaintext gRPC is for loopback targets only"
        if not 0 < self.status_cache_seconds <= 1.5:
            problems["status_cache_seconds"] = "must be above 0 and at most 1.5 (revocation must act within 2 s)"
        if not 0 < self.crl_refresh_seconds <= 60:
            problems["crl_refresh_seconds"] = (
                "must be above 0 and at most 60 (a lost revocation must act within a minute)"
            )
        if (self.public_cert_file is None) != (self.public_key_file is None):
            problems["public_key_file"] = (
                "set KAGI_GATEWAY_PUBLIC_TLS_CERT and KAGI_GATEWAY_PUBLIC_TLS_KEY together, or neither"
            )
        if self.ocsp_cache_size < 0:
            problems["ocsp_cache_size"] = "must be at least 0 (0: no OCSP response cache)"
        if self.edge.header_timeout < 0 or self.edge.keepalive_timeout <= 0:
            problems["edge"] = "the request deadline must be at least 0 (0: none), the keep-alive limit above 0"
        if problems:
            raise InvalidArgument("invalid gateway settings", fields=problems)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> GatewaySettings:
        """Read the KAGI_GATEWAY_* and KAGI_*_TARGET variables and validate them."""
        env = Environment(environ)
        tls = TlsFiles(
            cert_file=env.path("KAGI_GATEWAY_TLS_CERT"),
            key_file=env.path("KAGI_GATEWAY_TLS_KEY"),
            ca_file=env.path("KAGI_GATEWAY_TLS_CA"),
        )
        http_port = env.integer("KAGI_GATEWAY_HTTP_PORT", DEFAULT_HTTP_PORT, minimum=-1, maximum=65535)
        customer_ca = env.optional("KAGI_GATEWAY_CUSTOMER_CA")
        try:
            trusted = parse_networks(env.text("KAGI_GATEWAY_TRUSTED_PROXIES", ""))
        except ValueError as exc:
            raise InvalidArgument(
                "invalid KAGI_GATEWAY_TRUSTED_PROXIES",
                fields={"KAGI_GATEWAY_TRUSTED_PROXIES": f"addresses or CIDR blocks, comma-separated ({exc})"},
            ) from None
        store_url = store_url_from_env(env, "") or None
        public_cert, public_key = (
            env.optional("KAGI_GATEWAY_PUBLIC_TLS_CERT"),
            env.optional("KAGI_GATEWAY_PUBLIC_TLS_KEY"),
        )
        return cls(
            host=env.text("KAGI_GATEWAY_HOST", "127.0.0.1"),
            https_port=env.integer("KAGI_GATEWAY_PORT", DEFAULT_HTTPS_PORT, minimum=0, maximum=65535),
            # -1 turns the plain-HTTP PKI port off (a deployment that publishes its PKI files elsewhere).
            http_port=None if http_port < 0 else http_port,
            tls=tls,
            backend_tls=None if env.flag("KAGI_INSECURE_PLAINTEXT") else tls,
            customer_ca_file=Path(customer_ca) if customer_ca else None,
            ca_target=env.text("KAGI_CA_TARGET", "localhost:50051"),
            otp_target=env.text("KAGI_OTP_TARGET", "localhost:50052"),
            enrollment_target=env.text("KAGI_ENROLLMENT_TARGET", "localhost:50053"),
            workers=env.integer("KAGI_GATEWAY_WORKERS", 1, minimum=1, maximum=64),
            internal_dns_suffix=internal_dns_suffix(env),
            crl_refresh_seconds=float(env.integer("KAGI_GATEWAY_CRL_REFRESH_SECONDS", 60, minimum=1, maximum=60)),
            edge=EdgeLimits(
                header_timeout=float(env.integer("KAGI_GATEWAY_HEADER_TIMEOUT_SECONDS", 5, minimum=0, maximum=300)),
                keepalive_timeout=float(env.integer("KAGI_GATEWAY_KEEPALIVE_SECONDS", 30, minimum=1, maximum=3600)),
                max_connections=env.integer("KAGI_GATEWAY_MAX_CONNECTIONS", 4096, minimum=0, maximum=1_000_000),
                max_connections_per_address=env.integer(
                    "KAGI_GATEWAY_MAX_CONNECTIONS_PER_ADDRESS", 256, minimum=0, maximum=1_000_000
                ),
            ),
            rate_limits=parse_rate_limits(env.optional("KAGI_GATEWAY_RATE_LIMITS")),
            trusted_proxies=trusted,
            # Only Redis shares counters among replicas; the embedded store is per machine, so stay in memory.
            store_url=store_url if store_url and store_url.lower().startswith(("redis:", "rediss:")) else None,
            management=management_address(environ, "gateway"),
            public_cert_file=Path(public_cert) if public_cert else None,
            public_key_file=Path(public_key) if public_key else None,
            ocsp_cache_size=env.integer(
                "KAGI_GATEWAY_OCSP_CACHE_SIZE", DEFAULT_MAX_ENTRIES, minimum=0, maximum=10_000_000
            ),
        )

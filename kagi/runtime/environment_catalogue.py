"""The catalogue of every environment variable a kagi component reads: who reads it, its default, what it means.

`scripts/gen_env_table.py` renders it into docs/operations.md; tests/unit/test_environment_table.py scans the
source for every variable read and fails on one missing here, or on an entry here that nothing reads. A new
setting is one entry here besides its `from_env` line.
"""

from __future__ import annotations

from dataclasses import dataclass

SERVICES = ("ca", "otp", "enrollment")
ALL = (*SERVICES, "gateway")


@dataclass(frozen=True, slots=True)
class Variable:
    """One environment variable: its name, its readers, its default, what it means.

    `components` are `ca`, `otp`, `enrollment`, `gateway` (`kagi serve COMPONENT` and `kagi dev`), `kagi admin`,
    `kagi dev`, `kagi token`, `kagi serve` (the launcher itself) and `init` (the compose init job,
    deploy/init.sh). `secret` marks a value that never belongs in a process table or a manifest's plain text;
    `file_form` says NAME_FILE is read too (the file's content, a trailing newline dropped, wins over NAME).
    """

    name: str
    components: tuple[str, ...]
    default: str
    meaning: str
    secret: bool = False
    file_form: bool = False


def _per_component(suffix: str, default: str, meaning: str, defaults: dict[str, str] | None = None) -> list[Variable]:
    """Return KAGI_<C>_<SUFFIX> for each of the four components (`defaults` per component overrides `default`)."""
    return [
        Variable(f"KAGI_{c.upper()}_{suffix}", (c,), (defaults or {}).get(c, default), meaning.replace("<C>", c))
        for c in ALL
    ]


VARIABLES: tuple[Variable, ...] = (
    # Shared by the services.
    Variable(
        "KAGI_STORE_URL",
        (*ALL, "kagi admin", "init"),
        "`sqlite:`",
        "the store: `sqlite:` (a SQLite file per service under `KAGI_STATE_DIR`), `sqlite:///path/file.db`, "
        "`redis://` or `rediss://` (one server), `redis+sentinel://` or `redis+cluster://` (see [Redis](#redis)); "
        "a Redis URL carries its user's password, so give it as a file. The gateway uses only a Redis URL, for "
        "rate-limit counters every replica shares; `kagi admin issue-credential --offline` and `verify-audit` "
        "read the store directly",
        secret=True,
        file_form=True,
    ),
    Variable(
        "KAGI_STATE_DIR",
        (*SERVICES, "kagi admin"),
        "`.kagi`",
        "the SQLite store files, the CA directory's default parent, the mail Maildir without `KAGI_SMTP_URL`; "
        "`kagi admin --state-dir`",
    ),
    Variable(
        "KAGI_INSECURE_PLAINTEXT",
        ALL,
        "off",
        "`1`: plaintext gRPC between components, refused unless every listener is on loopback (development only)",
    ),
    Variable(
        "KAGI_IDEMPOTENCY_PENDING_SECONDS",
        SERVICES,
        "30",
        "how long a request id stays claimed by an interrupted request (retries get ABORTED meanwhile); keep it a "
        "few times the callers' deadline (1-3600)",
    ),
    Variable(
        "KAGI_LOG_LEVEL",
        ("kagi serve", "kagi dev", "kagi admin"),
        "INFO (`kagi dev`: WARNING)",
        "JSON logs on stderr, secrets redacted by key",
    ),
    Variable(
        "KAGI_STORE_ALLOW_VOLATILE",
        (*ALL, "kagi admin"),
        "off",
        "`1`: accept a Redis without `appendonly yes` and `maxmemory-policy noeviction` (tests, benchmarks only)",
    ),
    Variable(
        "KAGI_STORE_ASSUME_DURABLE",
        (*ALL, "kagi admin"),
        "off",
        "`1`: vouch for a Redis whose durability settings cannot be read (`CONFIG` disabled)",
    ),
    Variable(
        "PROMETHEUS_MULTIPROC_DIR",
        ALL,
        "unset",
        "set by `kagi serve` itself for `KAGI_<C>_WORKERS>1` (prometheus-client's multiprocess mode): leave unset",
    ),
    Variable(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        ALL,
        "unset (no tracing)",
        "turns OpenTelemetry tracing on: the OTLP/gRPC collector spans go to (e.g. `http://otel-collector:4317`); "
        "the other standard OTEL_* variables apply too (docs/metrics.md)",
    ),
    Variable(
        "OTEL_SERVICE_NAME",
        ALL,
        "`kagi-<component>`",
        "the service name traces carry (with OTEL_EXPORTER_OTLP_ENDPOINT)",
    ),
    # Where each component listens, and its identity.
    *_per_component(
        "HOST", "127.0.0.1", "the address <C>'s gRPC (gateway: HTTPS) port binds; `0.0.0.0` in a container"
    ),
    *_per_component(
        "PORT",
        "",
        "<C>'s gRPC port (gateway: its HTTPS port)",
        {"ca": "50051", "otp": "50052", "enrollment": "50053", "gateway": "8443"},
    ),
    *_per_component(
        "WORKERS",
        "1",
        "processes of <C> sharing its port (`SO_REUSEPORT`); in Kubernetes add pods instead (1-64)",
    ),
    *_per_component(
        "MANAGEMENT_ADDR",
        "",
        "<C>'s plain-HTTP management listener (`/healthz`, `/readyz`, `/metrics`): `HOST:PORT`, or `off`",
        {
            "gateway": "`127.0.0.1:9090`",
            "ca": "`127.0.0.1:9091`",
            "otp": "`127.0.0.1:9092`",
            "enrollment": "`127.0.0.1:9093`",
        },
    ),
    *_per_component(
        "TLS_CERT",
        "required",
        "<C>'s internal certificate chain (its certificate, then the internal CA); the gateway's is also its "
        "HTTPS certificate",
    ),
    *_per_component("TLS_KEY", "required", "the key of `KAGI_<C>_TLS_CERT` (a file: the key itself never is)"),
    *_per_component("TLS_CA", "required", "the root <C> verifies the servers it calls against"),
    *[
        Variable(
            f"KAGI_{c.upper()}_TLS_CLIENT_CA",
            (c,),
            "the issuer in `KAGI_<C>_TLS_CERT`",
            "the CA whose certificates the gRPC port accepts from callers: the internal CA only",
        )
        for c in SERVICES
    ],
    # Where components reach each other.
    Variable(
        "KAGI_CA_TARGET",
        ("otp", "enrollment", "gateway", "kagi admin"),
        "`localhost:50051`",
        "the CA service (the OTP service follows its revocation stream to refuse revoked internal callers)",
    ),
    Variable("KAGI_OTP_TARGET", ("enrollment", "gateway", "kagi admin"), "`localhost:50052`", "the OTP service"),
    Variable(
        "KAGI_ENROLLMENT_TARGET", ("enrollment", "gateway", "kagi admin"), "`localhost:50053`", "the enrollment service"
    ),
    # The CA.
    Variable("KAGI_CA_DIR", ("ca", "kagi admin"), "`<state>/ca`", "the CA directory: certificates, online keys, CRLs"),
    Variable(
        "KAGI_CA_KEY_PASSPHRASE",
        ("ca", "kagi admin"),
        "required",
        "the passphrase of the CA's online keys (issuing and OCSP, encrypted PKCS#8); never the root's",
        secret=True,
        file_form=True,
    ),
    Variable(
        "KAGI_CA_ROOT_KEY_PASSPHRASE_FILE",
        ("kagi admin",),
        "none",
        "`sign-root-crl`: the file holding the offline root key's passphrase (stands for `--root-passphrase-file`)",
        secret=True,
    ),
    Variable(
        "KAGI_PKI_BASE_URL",
        ("ca", "kagi admin"),
        "`http://127.0.0.1:8080`",
        "base of the CRL and OCSP URLs written into certificates: the gateway's plain-HTTP port as the world sees it",
    ),
    Variable("KAGI_CA_CRL_VALIDITY_HOURS", ("ca",), "24", "how long each issued CRL is valid (1-744)"),
    Variable("KAGI_CA_OCSP_VALIDITY_MINUTES", ("ca",), "60", "how long each OCSP answer is valid (1-10080)"),
    Variable(
        "KAGI_CA_CRL_DEBOUNCE_MS",
        ("ca",),
        "1000",
        "how long revocations gather before one new CRL is signed (0-600000)",
    ),
    Variable("KAGI_CA_CRL_CHECK_SECONDS", ("ca",), "60", "how often the CA checks whether a CRL needs re-signing"),
    # The OTP service.
    Variable(
        "KAGI_OTP_KEK",
        ("otp", "kagi admin"),
        "required",
        "the seeds' AES-256-GCM key-encryption key, base64 of 32 bytes; kept out of the store and its backups",
        secret=True,
        file_form=True,
    ),
    Variable("KAGI_OTP_KEK_ID", ("otp", "kagi admin"), "`k1`", "the id of `KAGI_OTP_KEK`, stored beside each seed"),
    Variable(
        "KAGI_OTP_KEK_OLD",
        ("otp", "kagi admin"),
        "none",
        "older keys that only open seeds, `id:base64,...`, until `kagi admin rotate-otp-key` re-sealed them",
        secret=True,
        file_form=True,
    ),
    Variable(
        "KAGI_OTP_PEPPER",
        ("otp", "kagi admin"),
        "required",
        "HMAC pepper of the usage-start passwords (32+ bytes)",
        secret=True,
        file_form=True,
    ),
    Variable("KAGI_OTP_ISSUER", ("otp", "kagi admin"), "`kagi`", "the issuer authenticator apps show"),
    Variable("KAGI_OTP_CACHE_SIZE", ("otp", "kagi admin"), "20000", "tokens cached per process; 0: none"),
    Variable(
        "KAGI_OTP_PAST_STEPS",
        ("otp", "kagi admin"),
        "1",
        "60-second steps back whose codes are still accepted (0-10): by default a code is good in its minute and "
        "the next",
    ),
    Variable(
        "KAGI_OTP_FUTURE_STEPS", ("otp", "kagi admin"), "0", "steps ahead whose codes are accepted (0-2; fast phones)"
    ),
    Variable(
        "KAGI_OTP_GROUP_COMMIT",
        ("otp", "kagi admin"),
        "on for SQLite, off for Redis",
        "share store round trips among concurrent verifications",
    ),
    # The enrollment service.
    Variable(
        "KAGI_PASSWORD_PEPPER",
        ("enrollment",),
        "required",
        "secret pepper of the login and confirmation passwords (32+ bytes)",
        secret=True,
        file_form=True,
    ),
    Variable(
        "KAGI_ENROLLMENT_SIGNING_KEY_FILE",
        ("enrollment", "kagi admin"),
        "required",
        "the access and confirmation tokens' ES256 key ring (encrypted PKCS#8; `kagi admin rotate-signing-key "
        "--key-file` makes and rotates it)",
    ),
    Variable(
        "KAGI_ENROLLMENT_SIGNING_KEY_PASSPHRASE",
        ("enrollment", "kagi admin"),
        "required",
        "the key ring's passphrase",
        secret=True,
        file_form=True,
    ),
    Variable(
        "KAGI_SMTP_URL",
        ("enrollment",),
        "the Maildir `<state>/mail`",
        "`smtp://user:pass@host:587` (STARTTLS, verified; `?starttls=false` for a trusted local relay) or "
        "`smtps://...`; `?cafile=` adds a CA",
        secret=True,
        file_form=True,
    ),
    Variable("KAGI_MAIL_FROM", ("enrollment",), "`kagi@localhost`", "the mails' sender"),
    Variable("KAGI_MAIL_POLL_MS", ("enrollment",), "1000", "how often the outbox sender looks for mail (10-600000)"),
    Variable("KAGI_APP_URL", ("enrollment",), "an example URL", "the app link in the step-7 mail"),
    Variable(
        "KAGI_CONTACT_TEXT",
        ("enrollment", "kagi admin"),
        "`お問い合わせ: お取引店までご連絡ください / Contact: your branch`",
        "the bank's contact line at the foot of every mail and notice",
    ),
    Variable("KAGI_ENROLLMENT_IDLE_MINUTES", ("enrollment",), "60", "an enrollment expires after this inactivity"),
    Variable("KAGI_APPLICATION_TTL_DAYS", ("enrollment",), "30", "how long a notice stays valid (1-365)"),
    Variable(
        "KAGI_ABANDONED_RETENTION_DAYS",
        ("enrollment",),
        "90",
        "how long an abandoned setup's user name and e-mail addresses are kept",
    ),
    Variable("KAGI_SWEEP_SECONDS", ("enrollment",), "30", "how often idle setups are expired and cleaned up"),
    Variable(
        "KAGI_NOTICE_FAILURES_PER_ADDRESS",
        ("enrollment",),
        "20",
        "step 1's failures per client address within the window before `RESOURCE_EXHAUSTED`; 0: off",
    ),
    Variable("KAGI_NOTICE_ADDRESS_WINDOW_MINUTES", ("enrollment",), "10", "the window of the failures above"),
    Variable(
        "KAGI_RENEWAL_WINDOW_DAYS", ("enrollment",), "30", "days before expiry from which a customer may renew (1-180)"
    ),
    Variable(
        "KAGI_TOKEN_ISSUER", ("enrollment",), "`https://localhost:8443`", "the tokens' `iss`: the gateway's public URL"
    ),
    Variable("KAGI_ACCESS_TOKEN_SECONDS", ("enrollment",), "900", "the access tokens' lifetime (60-900)"),
    Variable(
        "KAGI_FAILPOINTS",
        ("enrollment",),
        "none",
        "comma-separated failure points armed for the reliability tests; never set in production",
    ),
    Variable(
        "KAGI_INTERNAL_DNS_SUFFIX",
        ("otp", "enrollment", "gateway", "kagi admin"),
        "`kagi.internal`",
        "the suffix of the role names the services' certificates carry and their clients verify, whatever address "
        "they dial: `ca.<suffix>`, `otp.<suffix>`, `enrollment.<suffix>` (`issue-credential` adds the name)",
    ),
    # The gateway.
    Variable(
        "KAGI_GATEWAY_PUBLIC_TLS_CERT",
        ("gateway",),
        "`KAGI_GATEWAY_TLS_CERT`",
        "the HTTPS certificate chain customers see (a public CA's in production), reloaded when it changes; the "
        "internal credential stays what the gateway presents to the services",
    ),
    Variable(
        "KAGI_GATEWAY_PUBLIC_TLS_KEY",
        ("gateway",),
        "`KAGI_GATEWAY_TLS_KEY`",
        "the key of `KAGI_GATEWAY_PUBLIC_TLS_CERT` (a file); set both or neither",
    ),
    Variable(
        "KAGI_GATEWAY_HTTP_PORT",
        ("gateway",),
        "8080",
        "the plain-HTTP PKI port (CRLs, OCSP, CA certificates); -1: off",
    ),
    Variable(
        "KAGI_GATEWAY_CUSTOMER_CA",
        ("gateway",),
        "the customer CA from the CA service",
        "a file of the customer CA that client certificates are verified against",
    ),
    Variable(
        "KAGI_GATEWAY_TRUSTED_PROXIES",
        ("gateway",),
        "none",
        "load balancers (addresses, CIDR blocks) whose `X-Forwarded-For` names the client",
    ),
    Variable(
        "KAGI_GATEWAY_CRL_REFRESH_SECONDS",
        ("gateway",),
        "60",
        "how often the gateway re-reads the CRL besides the revocation stream (1-60)",
    ),
    Variable(
        "KAGI_GATEWAY_HEADER_TIMEOUT_SECONDS",
        ("gateway",),
        "5",
        "deadline for the TLS handshake and a request's header and body; 0: none",
    ),
    Variable("KAGI_GATEWAY_KEEPALIVE_SECONDS", ("gateway",), "30", "how long an idle kept-alive connection stays open"),
    Variable("KAGI_GATEWAY_MAX_CONNECTIONS", ("gateway",), "4096", "open connections per worker process; 0: no cap"),
    Variable(
        "KAGI_GATEWAY_MAX_CONNECTIONS_PER_ADDRESS",
        ("gateway",),
        "256",
        "open connections per client address (an IPv6 /64 counts as one); 0: no cap",
    ),
    Variable(
        "KAGI_GATEWAY_RATE_LIMITS",
        ("gateway",),
        "see the README",
        "`off`, or `name=COUNT/PERIOD[:BURST]` items overriding the defaults (`enrollment_address`, "
        "`activation_address`, `enrollment_account`, `activation_token`, `ocsp_nonce_address`)",
    ),
    Variable(
        "KAGI_GATEWAY_OCSP_CACHE_SIZE", ("gateway",), "10000", "CertIDs whose signed OCSP answers are cached; 0: none"
    ),
    # The operator's and the customer's tools.
    Variable(
        "KAGI_ADMIN_TLS_CERT",
        ("kagi admin",),
        "`<state>/tls/developer.pem`",
        "the operator's certificate chain (role `operator`)",
    ),
    Variable("KAGI_ADMIN_TLS_KEY", ("kagi admin",), "`<state>/tls/developer-key.pem`", "the operator's key file"),
    Variable("KAGI_ADMIN_TLS_CA", ("kagi admin",), "`<state>/tls/ca.pem`", "the root the operator trusts"),
    Variable("KAGI_TOKEN_FILE", ("kagi token",), "`~/.config/kagi/token.json`", "the soft token's encrypted file"),
    Variable("XDG_CONFIG_HOME", ("kagi token",), "`~/.config`", "where the token file's default lives"),
    # The compose init job.
    Variable(
        "KAGI_GATEWAY_DNS_NAMES",
        ("init",),
        "none",
        "extra DNS names (comma-separated) in the gateway's certificate; compose sets it from `KAGI_PUBLIC_HOST`",
    ),
    Variable(
        "KAGI_GATEWAY_IP_ADDRESSES",
        ("init",),
        "none",
        "extra IP addresses (comma-separated) in the gateway's certificate",
    ),
)
"""Every variable, in the order the table shows them."""


def by_name() -> dict[str, Variable]:
    """Return the catalogue keyed by variable name."""
    return {variable.name: variable for variable in VARIABLES}

"""In-process ceiling of the CA domain: issuance (vs bare `cryptography`), a 100k-entry CRL, and OCSP signing.

Run: `python bench/ca_inprocess_bench.py`. Prints a markdown table; takes about 20 seconds on 2 cores.
Nothing here touches the network, the store or gRPC: these are upper bounds for the service built on top.
"""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cryptography  # imported after the sys.path line, so a plain checkout runs without install
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from bench.harness import ocsp_fixture
from kagi.clock import FakeClock, utc_datetime
from services.ca_service.adapters.file_signer import PrivateKeySigner
from services.ca_service.domain.crl import build_crl
from services.ca_service.domain.hierarchy import Hierarchy, build_hierarchy
from services.ca_service.domain.identity import CustomerIdentity
from services.ca_service.domain.issuance import prepare_issuance, sign_certificate
from services.ca_service.domain.keys import KeyAlgorithm, generate_private_key
from services.ca_service.domain.revocation import CertificateStatus, Revocation, RevocationReason
from services.ca_service.domain.serials import new_serial
from services.ca_service.domain.settings import CaKind, PkiSettings

CRL_ENTRIES = 100_000
"""The size of the large CRL the issue asks for."""

CRL_BUDGET_SECONDS = 1.5
"""The most building and signing that CRL may take."""

NAIVE_CRL_ENTRIES = 10_000
"""Sizes the one-by-one comparison (it grows quadratically, so it stays small)."""

MIN_SECONDS = 1.0
"""How long each per-operation measurement runs."""

Row = tuple[str, str, float]
"""One table line: operation, CA key algorithm, seconds per operation."""


def per_op(operation: Callable[[], object], *, min_seconds: float = MIN_SECONDS, min_runs: int = 20) -> float:
    """Run `operation` for at least `min_seconds` and `min_runs` times; return seconds per call."""
    operation()  # warm-up
    runs = 0
    started = time.perf_counter()
    while True:
        operation()
        runs += 1
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds and runs >= min_runs:
            return elapsed / runs


def best_of(operation: Callable[[], object], repeats: int = 3) -> float:
    """Time `operation` `repeats` times and return the fastest (for one-shot heavy work)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        operation()
        times.append(time.perf_counter() - started)
    return min(times)


def _customer_csr() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )


def _bare_issue(
    csr_pem: bytes, ca_key: object, ca_cert: x509.Certificate, settings: PkiSettings, clock: FakeClock
) -> x509.Certificate:
    """_bare_issue is what issuance costs with `cryptography` alone: same checks, same extensions, raw key."""
    csr = x509.load_pem_x509_csr(csr_pem)
    if not csr.is_signature_valid:
        raise ValueError("bad CSR")
    now = utc_datetime(clock)
    subject_key = csr.public_key()
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "株式会社 ベンチ"),
                    x509.NameAttribute(NameOID.COMMON_NAME, "山田 太郎"),
                    x509.NameAttribute(NameOID.SERIAL_NUMBER, "bench001"),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(subject_key)
        .serial_number(new_serial())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier("urn:kagi:user:bench")]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(subject_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .add_extension(
            x509.CRLDistributionPoints(
                [
                    x509.DistributionPoint(
                        [x509.UniformResourceIdentifier(settings.crl_url(CaKind.CUSTOMER))], None, None, None
                    )
                ]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityInformationAccess(
                [
                    x509.AccessDescription(
                        AuthorityInformationAccessOID.OCSP,
                        x509.UniformResourceIdentifier(settings.ocsp_url(CaKind.CUSTOMER)),
                    ),
                    x509.AccessDescription(
                        AuthorityInformationAccessOID.CA_ISSUERS,
                        x509.UniformResourceIdentifier(settings.ca_issuers_url(CaKind.CUSTOMER)),
                    ),
                ]
            ),
            critical=False,
        )
    )
    return builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]


def bench_issuance(algorithm: KeyAlgorithm, settings: PkiSettings, clock: FakeClock) -> list[Row]:
    """Time one customer issuance end to end, with the domain and with bare cryptography."""
    ca_key = generate_private_key(algorithm)
    signers = {kind: PrivateKeySigner.generate(algorithm) for kind in CaKind}
    signers[CaKind.CUSTOMER] = PrivateKeySigner(ca_key)
    hierarchy = build_hierarchy(signers, settings=settings, clock=clock)
    identity = CustomerIdentity("bench", "bench001", "山田 太郎", "株式会社 ベンチ")
    csr = _customer_csr()

    def domain() -> object:
        prepared = prepare_issuance(hierarchy.customer, csr, identity, "customer", settings=settings, clock=clock)
        return sign_certificate(hierarchy.customer, prepared, settings=settings)

    def bare() -> object:
        return _bare_issue(csr, ca_key, hierarchy.customer.certificate, settings, clock)

    return [
        ("issue: parse+verify CSR, build+sign (kagi domain)", algorithm.value, per_op(domain)),
        ("issue: same with bare `cryptography`", algorithm.value, per_op(bare)),
    ]


def bench_crl(algorithm: KeyAlgorithm, settings: PkiSettings, clock: FakeClock) -> tuple[list[Row], float]:
    """Time a 100k-entry CRL built and signed by the domain, and the naive one-by-one way at 10k."""
    hierarchy = build_hierarchy(
        {kind: PrivateKeySigner.generate(algorithm) for kind in CaKind}, settings=settings, clock=clock
    )
    now = utc_datetime(clock)
    reasons = [reason for reason in RevocationReason if reason is not RevocationReason.REMOVE_FROM_CRL]
    statuses = [
        CertificateStatus(
            CaKind.CUSTOMER,
            new_serial(),
            now + timedelta(days=100),
            Revocation(now - timedelta(hours=1), reasons[index % len(reasons)]),
        )
        for index in range(CRL_ENTRIES)
    ]
    seconds = best_of(lambda: build_crl(hierarchy.customer, statuses, crl_number=1, settings=settings, clock=clock))
    rows: list[Row] = [(f"CRL: build+sign {CRL_ENTRIES:,} entries (kagi domain)", algorithm.value, seconds)]
    if algorithm is KeyAlgorithm.EC_P256:
        rows.append(
            (
                f"CRL: naive add_revoked_certificate, {NAIVE_CRL_ENTRIES:,} entries",
                algorithm.value,
                best_of(lambda: _naive_crl(hierarchy, statuses[:NAIVE_CRL_ENTRIES], now), repeats=1),
            )
        )
    return rows, seconds


def _naive_crl(hierarchy: Hierarchy, statuses: list[CertificateStatus], now: object) -> object:
    ca = hierarchy.customer
    builder = x509.CertificateRevocationListBuilder().issuer_name(ca.name).last_update(now).next_update(now)  # type: ignore[arg-type]
    for status in statuses:
        if status.revocation is None:
            continue
        entry = (
            x509.RevokedCertificateBuilder().serial_number(status.serial).revocation_date(status.revocation.revoked_at)
        )
        builder = builder.add_revoked_certificate(entry.build())
    return builder.sign(ca.private_key, ca.hash_algorithm)


def bench_ocsp(algorithm: KeyAlgorithm, settings: PkiSettings, clock: FakeClock) -> list[Row]:
    """Time parse + answer for one serial, signed every time and served from the cache."""
    fixture = ocsp_fixture(algorithm, settings, clock)
    return [
        ("OCSP: parse + sign response (uncached)", algorithm.value, per_op(fixture.uncached)),
        ("OCSP: parse + cached response", algorithm.value, per_op(fixture.cached)),
    ]


def _format(seconds: float) -> tuple[str, str]:
    if seconds >= 0.1:
        return f"{seconds:.3f} s", f"{1 / seconds:,.1f}"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms", f"{1 / seconds:,.0f}"
    return f"{seconds * 1e6:.1f} µs", f"{1 / seconds:,.0f}"


def main() -> int:
    """Run every measurement and print the table; exit 1 if the 100k CRL misses its budget."""
    settings = PkiSettings()
    clock = FakeClock(time.time())
    started = time.perf_counter()
    rows: list[Row] = []
    crl_seconds: list[float] = []
    for algorithm in (KeyAlgorithm.EC_P256, KeyAlgorithm.RSA_2048):
        rows += bench_issuance(algorithm, settings, clock)
    for algorithm in (KeyAlgorithm.EC_P256, KeyAlgorithm.RSA_2048):
        crl_rows, seconds = bench_crl(algorithm, settings, clock)
        rows += crl_rows
        crl_seconds.append(seconds)
    for algorithm in (KeyAlgorithm.EC_P256, KeyAlgorithm.RSA_2048):
        rows += bench_ocsp(algorithm, settings, clock)

    print(
        f"CA domain, in process: Python {platform.python_version()}, cryptography {cryptography.__version__}, "
        f"{platform.machine()}, one thread\n"
    )
    print("| operation | CA key | time per op | ops/s |")
    print("|---|---|---:|---:|")
    for name, algorithm_name, seconds in rows:
        per, rate = _format(seconds)
        print(f"| {name} | {algorithm_name} | {per} | {rate} |")
    within = all(seconds <= CRL_BUDGET_SECONDS for seconds in crl_seconds)
    verdict = "within" if within else "OVER"
    print(
        f"\n100k-entry CRL {verdict} the {CRL_BUDGET_SECONDS} s budget; total run {time.perf_counter() - started:.1f} s"
    )
    return 0 if within else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""The front-end boundary (UserService) on one enrollment-service process: logins, step-ups and confirmations per
second, against the password KDF's ceiling and the OTP service's own VerifyCode.

    python bench/user_bench.py [--customers 96] [--concurrency 8,32] [--quick] [--only auth,confirm,otp]

Everything runs in this one process on 127.0.0.1: the CA, OTP and enrollment services exactly as `kagi dev`
starts them (mTLS between them and from the callers, the SQLite store in WAL with synchronous=FULL, a real SMTP
server for the step-7 mails), built by `tests.support.enrollment_flow.open_stack`, and the callers, which play
the kagi gateway (the customer's certificate relayed as metadata) over their own mTLS channel. N customers walk
all ten enrollment steps first (not timed). All services share one clock, a FakeClock started at the wall time,
so that one-time codes can be sent at rate: a code is accepted once per token per 60-second step, so every
round sends one fresh code per customer and the clock then moves on by 60 s (rounds end on a barrier; the
VerifyOtp and VerifyCode rows have the same rounds, so their ratio is fair).

Rows:
  KDF ceiling         argon2id verifies per second with the project's parameters (19 MiB, t=2, p=1), run as the
                      service runs them: `asyncio.to_thread(hasher.verify, ...)` on this loop's default executor
                      (min(32, cores + 4) threads), that many in flight. Measured before and after the RPC rows;
                      the mean is the ceiling.
  Authenticate        UserService/Authenticate as the gateway: one argon2id verify, a GetToken call to the OTP
                      service, store reads, an audit record, an ES256 access token.
  ConfirmTransaction  with the access token, the confirmation password and a fresh code: one argon2id verify, a
                      VerifyCode call to the OTP service, a confirmation record and its audit record in one commit,
                      an ES256 confirmation token. Access tokens are renewed (not timed) before each row.
  VerifyOtp           OTP_PURPOSE_CHECK, no access token: a user read, VerifyCode at the OTP service, an audit
                      record. One more hop than the next row.
  VerifyCode          OtpService/VerifyCode called directly with the enrollment service's identity.

CPU is this process's CPU time (`time.process_time()`, all threads) around each row, divided by its calls: the
services and the callers share this process, so it is the whole cost of a call on both sides of every hop. The
KDF share is the ceiling row's CPU per verify over the row's CPU per call. Rates as a share of the KDF ceiling
(one verify per call) and VerifyOtp as a share of VerifyCode are the targets: at least 70% each.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import functools
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from kagi.clock import FakeClock
from kagi.enrollment.v1 import user_pb2 as upb
from kagi.otp.v1 import otp_pb2
from kagi.passwords import OWASP_ARGON2ID, PasswordHasher, Pepper
from kagi.runtime.logging import configure_logging
from tests.support.enrollment_flow import PROFILE, Customer, Stack, code_for, open_stack

STEP = 60.0
TARGET = 0.70
SUMMARY = "振込 001-1234567 ヤマダ タロウ 10,000円"


@dataclass
class Row:
    """Row is one measured run: calls, wall seconds, process CPU seconds and per-call latencies."""

    name: str
    concurrency: int
    calls: int
    seconds: float
    cpu: float
    latencies: list[float]
    kdf_per_call: int = 0

    @property
    def rate(self) -> float:
        return self.calls / self.seconds

    @property
    def cpu_ms(self) -> float:
        return self.cpu / self.calls * 1000


@dataclass
class Account:
    """Account is a customer after enrollment, with what the gateway holds for it."""

    customer: Customer
    user_id: str = ""
    token_id: str = ""
    access_token: str = ""


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def pool(calls: Sequence[Callable[[], Awaitable[object]]], concurrency: int) -> list[float]:
    """Run `calls` with `concurrency` in flight; return each call's latency (an error stops the bench)."""
    latencies: list[float] = []
    feed = iter(calls)

    async def worker() -> None:
        for call in feed:
            start = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - start)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


async def measure(
    name: str,
    concurrency: int,
    make_round: Callable[[], Sequence[Callable[[], Awaitable[object]]]],
    *,
    rounds: int = 1,
    clock: FakeClock | None = None,
    kdf_per_call: int = 0,
    quiet: bool = False,
) -> Row:
    """Time `rounds` rounds one after another; each round's calls are made (not timed) for the clock's step when it
    runs, and with a clock, the clock moves one step on after each round."""
    seconds = cpu = 0.0
    latencies: list[float] = []
    for _ in range(rounds):
        calls = make_round()
        cpu_start, start = time.process_time(), time.perf_counter()
        latencies += await pool(calls, concurrency)
        seconds += time.perf_counter() - start
        cpu += time.process_time() - cpu_start
        if clock is not None:
            clock.advance(STEP)
    row = Row(name, concurrency, len(latencies), seconds, cpu, latencies, kdf_per_call)
    if not quiet:
        print(
            f"  {name:<20} {concurrency:>3} in flight: {row.rate:8.1f}/s, {row.cpu_ms:6.2f} ms CPU/call",
            file=sys.stderr,
        )
    return row


async def kdf_ceiling(calls: int) -> Row:
    """Argon2id verifies per second through this loop's default executor, as many in flight as it has threads."""
    hasher = PasswordHasher([Pepper("bench", os.urandom(32))], OWASP_ARGON2ID)
    stored = hasher.hash(PROFILE["login_password"])
    threads = min(32, (os.cpu_count() or 1) + 4)  # ThreadPoolExecutor's default, which asyncio.to_thread uses

    async def verify() -> None:
        assert await asyncio.to_thread(hasher.verify, stored, PROFILE["login_password"])

    await pool([verify] * threads, threads)  # the executor's threads exist before the clock starts
    return await measure("KDF ceiling", threads, lambda: [verify] * calls, kdf_per_call=1)


async def enroll(stack: Stack, workdir: Path, clock: FakeClock, count: int, concurrency: int) -> list[Account]:
    gate = asyncio.Semaphore(concurrency)

    async def one() -> Account:
        async with gate:
            return Account(await Customer(stack, workdir).complete(clock.now()))

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def login_all(accounts: Sequence[Account], concurrency: int) -> None:
    """Log every customer in (not timed): the user and token ids, and an access token for the clock's now."""

    async def login(account: Account) -> None:
        reply = await account.customer.login()
        account.user_id, account.token_id, account.access_token = (
            reply.user.user_id,
            reply.user.token_id,
            reply.access_token,
        )

    await pool([lambda a=a: login(a) for a in accounts], concurrency)  # type: ignore[misc]


def authenticate_calls(accounts: Sequence[Account], calls: int) -> list[Callable[[], Awaitable[object]]]:
    return [accounts[i % len(accounts)].customer.login for i in range(calls)]


def confirm_round(accounts: Sequence[Account], clock: FakeClock) -> list[Callable[[], Awaitable[object]]]:
    now = clock.now()

    def call(account: Account) -> Callable[[], Awaitable[object]]:
        request = upb.ConfirmTransactionRequest(
            user_id=account.user_id,
            transaction_id=f"txn-{uuid.uuid4().hex}",
            transaction_summary=SUMMARY,
            confirmation_password=PROFILE["confirmation_password"],
            otp=code_for(account.customer.secret, now),
            access_token=account.access_token,
        )
        stub, metadata = account.customer.users(), account.customer.cert_metadata
        return lambda: stub.ConfirmTransaction(request, metadata=metadata)

    return [call(a) for a in accounts]


def verify_otp_round(accounts: Sequence[Account], clock: FakeClock) -> list[Callable[[], Awaitable[object]]]:
    now = clock.now()

    def call(account: Account) -> Callable[[], Awaitable[object]]:
        request = upb.VerifyOtpRequest(
            request_id=uuid.uuid4().hex,
            user_id=account.user_id,
            otp=code_for(account.customer.secret, now),
            purpose=upb.OTP_PURPOSE_CHECK,
        )
        stub, metadata = account.customer.users(), account.customer.cert_metadata
        return lambda: stub.VerifyOtp(request, metadata=metadata)

    return [call(a) for a in accounts]


def verify_code_round(
    stack: Stack, accounts: Sequence[Account], clock: FakeClock
) -> list[Callable[[], Awaitable[object]]]:
    now = clock.now()
    stub = stack.otp("enrollment")

    def call(account: Account) -> Callable[[], Awaitable[object]]:
        request = otp_pb2.VerifyCodeRequest(
            request_id=f"bench/{uuid.uuid4().hex}",
            token_id=account.token_id,
            code=code_for(account.customer.secret, now),
        )
        return lambda: stub.VerifyCode(request)

    return [call(a) for a in accounts]


def jwks_calls(accounts: Sequence[Account]) -> list[Callable[[], Awaitable[object]]]:
    """UserService/GetJwks as the gateway: the enrollment service's RPC with no store and no hop (the echo)."""
    request = upb.GetJwksRequest()
    return [functools.partial(a.customer.users().GetJwks, request) for a in accounts]


async def run(args: argparse.Namespace) -> tuple[list[Row], list[Row]]:
    """Enroll the customers, then measure: KDF ceiling, Authenticate, ceiling, ConfirmTransaction, ceiling, OTP."""
    clock = FakeClock(time.time())
    only = set(args.only.split(","))
    ceilings: list[Row] = []
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="kagi-user-bench-") as tmp:
        base = Path(tmp)
        (base / "client").mkdir()
        stack = await open_stack(base / "state", clock=clock)
        try:
            started = time.perf_counter()
            accounts = await enroll(stack, base / "client", clock, args.customers, 16)
            print(f"{len(accounts)} customers enrolled in {time.perf_counter() - started:.1f} s", file=sys.stderr)
            clock.advance(STEP)  # the step-10 codes are spent
            await login_all(accounts, 16)
            if only & {"auth", "confirm"}:
                ceilings.append(await kdf_ceiling(args.kdf_calls))
            if "auth" in only:
                for concurrency in args.concurrency:
                    # warm-up, not timed: connections, caches, the executor's threads
                    await pool(authenticate_calls(accounts, concurrency), concurrency)
                    auth = functools.partial(authenticate_calls, accounts, args.auth_calls)
                    rows.append(await measure("Authenticate", concurrency, auth, kdf_per_call=1))
                ceilings.append(await kdf_ceiling(args.kdf_calls))
            if "confirm" in only:
                for concurrency in args.concurrency:
                    await login_all(accounts, 16)  # access tokens live 15 minutes of the moving clock
                    confirm = functools.partial(confirm_round, accounts, clock)
                    rows.append(
                        await measure(
                            "ConfirmTransaction",
                            concurrency,
                            confirm,
                            rounds=args.confirm_rounds,
                            clock=clock,
                            kdf_per_call=1,
                        )
                    )
                ceilings.append(await kdf_ceiling(args.kdf_calls))
            if "otp" in only:
                for concurrency in args.concurrency:
                    check = functools.partial(verify_otp_round, accounts, clock)
                    direct = functools.partial(verify_code_round, stack, accounts, clock)
                    echo = functools.partial(jwks_calls, accounts)
                    for _ in range(args.otp_rounds):
                        # alternate rounds, so that the rows see the same machine and the same store
                        rows.append(await measure("VerifyOtp", concurrency, check, clock=clock, quiet=True))
                        rows.append(await measure("VerifyCode", concurrency, direct, clock=clock, quiet=True))
                        rows.append(await measure("GetJwks (echo)", concurrency, echo, quiet=True))
        finally:
            await stack.close()
            stack.smtp.stop()
    return ceilings, merge(rows)


def merge(rows: list[Row]) -> list[Row]:
    """Merge rows of the same call and concurrency (the alternating OTP rounds), keeping first-seen order."""
    merged: dict[tuple[str, int], Row] = {}
    for row in rows:
        key = (row.name, row.concurrency)
        if key in merged:
            m = merged[key]
            m.calls += row.calls
            m.seconds += row.seconds
            m.cpu += row.cpu
            m.latencies += row.latencies
        else:
            merged[key] = row
    return list(merged.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=96, help="customers enrolled (tokens); one code each a round")
    parser.add_argument("--concurrency", default="8,32", help="calls in flight, comma-separated")
    parser.add_argument("--auth-calls", type=int, default=600, help="Authenticate calls per row")
    parser.add_argument("--confirm-rounds", type=int, default=6, help="ConfirmTransaction rounds per row")
    parser.add_argument("--otp-rounds", type=int, default=10, help="VerifyOtp and VerifyCode rounds per row")
    parser.add_argument("--kdf-calls", type=int, default=480, help="argon2id verifies per ceiling measurement")
    parser.add_argument("--only", default="auth,confirm,otp", help="comma-separated: auth, confirm, otp")
    parser.add_argument("--quick", action="store_true", help="a short run (about 30 s)")
    args = parser.parse_args()
    if args.quick:
        args.customers, args.auth_calls, args.confirm_rounds, args.otp_rounds, args.kdf_calls = 32, 160, 3, 4, 160
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    configure_logging("user-bench", level="WARNING")

    started = time.perf_counter()
    ceilings, rows = asyncio.run(run(args))
    print(
        f"\n{datetime.date.today().isoformat()}, nproc {len(os.sched_getaffinity(0))}, "
        f"{platform.python_implementation()} {platform.python_version()}, {platform.machine()}, "
        f"{platform.processor() or platform.system()}; {args.customers} customers (tokens); "
        f"run took {time.perf_counter() - started:.0f} s"
    )
    ceiling = kdf_cpu = 0.0
    table = []
    if ceilings:
        best = max(ceilings, key=lambda c: c.rate)
        ceiling, kdf_cpu = best.rate, statistics.median(c.cpu_ms for c in ceilings)
        print(
            f"KDF ceiling: argon2id verify (19 MiB, t=2, p=1) with {best.concurrency} executor threads, measured "
            f"{len(ceilings)} times: {', '.join(f'{c.rate:.1f}' for c in ceilings)}/s; the highest is the ceiling; "
            f"{kdf_cpu:.1f} ms CPU per verify (median)"
        )
        rows = [replace(best, name="KDF ceiling (argon2id)", cpu=kdf_cpu * best.calls / 1000), *rows]
    print()
    codes = {r.concurrency: r for r in rows if r.name == "VerifyCode"}
    for row in rows:
        if row.name.startswith("KDF"):
            share = "ceiling"
        elif row.kdf_per_call:
            share = f"{row.rate / ceiling:.0%} of KDF"
        elif row.name == "VerifyOtp" and row.concurrency in codes:
            share = f"{row.rate / codes[row.concurrency].rate:.0%} of VerifyCode"
        else:
            share = ""
        kdf_share = f"{row.kdf_per_call * kdf_cpu / row.cpu_ms:.0%}" if row.kdf_per_call else ""
        table.append(
            (
                row.name,
                str(row.concurrency),
                str(row.calls),
                f"{row.rate:,.1f}",
                share,
                f"{percentile(row.latencies, 0.5) * 1000:.1f}",
                f"{percentile(row.latencies, 0.99) * 1000:.1f}",
                f"{row.cpu_ms:.2f}",
                kdf_share,
            )
        )
    header = ("call", "in flight", "calls", "per s", "share", "p50 ms", "p99 ms", "CPU ms/call", "KDF of CPU")
    widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(header)]
    for cells in (header, tuple("-" * w for w in widths), *table):
        print(
            "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
        )


if __name__ == "__main__":
    main()

"""The front-end boundary (UserService) on one enrollment-service process: logins, confirmations and one-time
passwords per second, against the password KDF's ceiling and the OTP service's own VerifyCode.

    python bench/user_bench.py [--quick] [--customers 96] [--concurrency 8,32] [--only auth,confirm,otp]

Everything runs in this one process on 127.0.0.1: the CA, OTP and enrollment services exactly as `kagi dev`
starts them (mTLS between them and from the callers, the SQLite store in WAL with synchronous=FULL, a real SMTP
server for the step-7 mails), built by `tests.support.enrollment_flow.open_stack`, and the callers, which play
the kagi gateway (the customer's certificate relayed as metadata) over their own mTLS channel. N customers walk
all ten enrollment steps first (not timed). All services share one clock, a FakeClock started at the wall time,
so that one-time codes can be sent at rate: a code is accepted once per token per 60-second step, so a round
sends one fresh code per customer and the clock then moves on by 60 s (a round ends on a barrier).

Rows:
  KDF ceiling         argon2id verifies per second with the project's parameters (19 MiB, t=2, p=1), run as the
                      service runs them: `asyncio.to_thread(hasher.verify, ...)` on this loop's default executor
                      (min(32, cores + 4) threads), that many in flight. It is measured in chunks alternating
                      with the chunks of the row it is paired with, so both see the same machine (other work on
                      the cores moves the wall rates, not the CPU per call).
  Authenticate        UserService/Authenticate as the gateway: one argon2id verify, a GetToken call to the OTP
                      service, store reads, an audit record, an ES256 access token.
  ConfirmTransaction  with the access token, the confirmation password and a fresh code: the token's checks, one
                      argon2id verify, VerifyCode at the OTP service, the confirmation and its audit record in
                      one commit, an ES256 confirmation token. Access tokens are renewed (not timed) before a row.
  VerifyOtp           OTP_PURPOSE_CHECK, no access token: a user read, VerifyCode at the OTP service (one more
                      hop than the next row), an audit record.
  VerifyCode          OtpService/VerifyCode called directly with the enrollment service's identity.
  GetJwks (echo)      UserService/GetJwks as the gateway: the enrollment service's RPC with no store and no hop.
  The last three alternate round by round.

CPU is this process's CPU time (`time.process_time()`, all threads) around each row, divided by its calls: the
services and the callers share this process, so it is the whole cost of a call on both sides of every hop.
"KDF of CPU" is the ceiling's CPU per verify over the row's CPU per call: the share of the ceiling the row
reaches when the cores are the limit, whatever else runs on the machine. "cores" is this process's CPU over the
row's wall time (about 1.2 means the one event-loop thread is full); "others" is the CPU, in cores, that other
processes used meanwhile, from /proc/stat. Targets: each KDF-bound rate at least 70% of its paired ceiling,
VerifyOtp at least 70% of VerifyCode. The default run takes about 70 s on 2 cores, --quick about 20 s.
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
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from bench.harness import machine_busy_seconds, percentile
from kagi.clock import FakeClock
from kagi.enrollment.v1 import user_pb2 as upb
from kagi.otp.v1 import otp_pb2
from kagi.passwords import OWASP_ARGON2ID, PasswordHasher, Pepper, in_kdf_thread
from kagi.runtime.logging import configure_logging
from tests.support.enrollment_flow import PROFILE, Customer, Stack, code_for, open_stack

STEP = 60.0
TARGET = 0.70
SUMMARY = "振込 001-1234567 ヤマダ タロウ 10,000円"
Calls = Sequence[Callable[[], Awaitable[object]]]


@dataclass
class Row:
    """One measured run: calls, wall seconds, CPU seconds (this process, all) and per-call latencies."""

    name: str
    concurrency: int
    calls: int
    seconds: float
    cpu: float
    machine_cpu: float
    latencies: list[float]
    kdf_per_call: int = 0
    pair: tuple[str, int] | None = None  # the row a ceiling chunk is paired with

    @property
    def rate(self) -> float:
        return self.calls / self.seconds

    @property
    def cpu_ms(self) -> float:
        return self.cpu / self.calls * 1000

    @property
    def others(self) -> float:
        """Cores other processes used while this row ran."""
        return max(0.0, self.machine_cpu - self.cpu) / self.seconds

    def add(self, other: Row) -> None:
        self.calls += other.calls
        self.seconds += other.seconds
        self.cpu += other.cpu
        self.machine_cpu += other.machine_cpu
        self.latencies += other.latencies


@dataclass
class Account:
    """A customer after enrollment, with what the gateway holds for it."""

    customer: Customer
    user_id: str = ""
    token_id: str = ""
    access_token: str = ""


async def pool(calls: Calls, concurrency: int) -> list[float]:
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


async def measure(name: str, concurrency: int, calls: Calls, *, kdf_per_call: int = 0) -> Row:
    """Time one batch of calls, with this process's CPU and the whole machine's."""
    machine, cpu, start = machine_busy_seconds(), time.process_time(), time.perf_counter()
    latencies = await pool(calls, concurrency)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return Row(
        name, concurrency, len(latencies), seconds, cpu, machine_busy_seconds() - machine, latencies, kdf_per_call
    )


class Kdf:
    """Runs argon2id verifies the way the service does: on the process's KDF threads, one per core."""

    def __init__(self) -> None:
        self.hasher = PasswordHasher([Pepper("bench", os.urandom(32))], OWASP_ARGON2ID)
        self.stored = self.hasher.hash(PROFILE["login_password"])
        self.threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    async def verify(self) -> None:
        assert await in_kdf_thread(self.hasher.verify, self.stored, PROFILE["login_password"])

    async def chunk(self, calls: int, pair: tuple[str, int]) -> Row:
        row = await measure("KDF ceiling", self.threads, [self.verify] * calls, kdf_per_call=1)
        row.pair = pair
        return row


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
        account.user_id, account.token_id = reply.user.user_id, reply.user.token_id
        account.access_token = reply.access_token

    await pool([functools.partial(login, a) for a in accounts], concurrency)


def authenticate_calls(accounts: Sequence[Account], count: int, offset: int = 0) -> Calls:
    return [accounts[(offset + i) % len(accounts)].customer.login for i in range(count)]


def confirm_calls(accounts: Sequence[Account], now: float) -> Calls:
    def call(account: Account) -> Callable[[], Awaitable[object]]:
        request = upb.ConfirmTransactionRequest(
            user_id=account.user_id,
            transaction_id=f"txn-{uuid.uuid4().hex}",
            transaction_summary=SUMMARY,
            confirmation_password=PROFILE["confirmation_password"],
            otp=code_for(account.customer.secret, now),
            access_token=account.access_token,
        )
        return functools.partial(
            account.customer.users().ConfirmTransaction, request, metadata=account.customer.cert_metadata
        )

    return [call(a) for a in accounts]


def verify_otp_calls(accounts: Sequence[Account], now: float) -> Calls:
    def call(account: Account) -> Callable[[], Awaitable[object]]:
        request = upb.VerifyOtpRequest(
            request_id=uuid.uuid4().hex,
            user_id=account.user_id,
            otp=code_for(account.customer.secret, now),
            purpose=upb.OTP_PURPOSE_CHECK,
        )
        return functools.partial(account.customer.users().VerifyOtp, request, metadata=account.customer.cert_metadata)

    return [call(a) for a in accounts]


def verify_code_calls(stack: Stack, accounts: Sequence[Account], now: float) -> Calls:
    stub = stack.otp("enrollment")
    return [
        functools.partial(
            stub.VerifyCode,
            otp_pb2.VerifyCodeRequest(
                request_id=f"bench/{uuid.uuid4().hex}", token_id=a.token_id, code=code_for(a.customer.secret, now)
            ),
        )
        for a in accounts
    ]


def jwks_calls(accounts: Sequence[Account]) -> Calls:
    return [functools.partial(a.customer.users().GetJwks, upb.GetJwksRequest()) for a in accounts]


def progress(row: Row) -> None:
    print(f"  {row.name:<20} {row.concurrency:>3} in flight: {row.rate:8.1f}/s, {row.cpu_ms:6.2f} ms CPU/call, "
          f"others {row.others:.2f} cores", file=sys.stderr)  # fmt: skip


async def run(args: argparse.Namespace) -> list[Row]:
    """Enroll the customers, then measure; the rows come back in the order they ran, chunks unmerged."""
    clock = FakeClock(time.time())
    only = set(args.only.split(","))
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
            kdf = Kdf()
            await pool([kdf.verify] * kdf.threads, kdf.threads)  # the executor's threads exist before any clock
            if "auth" in only:
                for concurrency in args.concurrency:
                    await pool(authenticate_calls(accounts, concurrency), concurrency)  # warm-up, not timed
                    for chunk in range(args.chunks):
                        rows.append(await kdf.chunk(args.auth_chunk, ("Authenticate", concurrency)))
                        calls = authenticate_calls(accounts, args.auth_chunk, chunk * args.auth_chunk)
                        rows.append(await measure("Authenticate", concurrency, calls, kdf_per_call=1))
                        progress(rows[-1])
            if "confirm" in only:
                for concurrency in args.concurrency:
                    await login_all(accounts, 16)  # access tokens live 15 minutes of the moving clock
                    for _ in range(args.chunks):
                        rows.append(await kdf.chunk(len(accounts), ("ConfirmTransaction", concurrency)))
                        calls = confirm_calls(accounts, clock.now())
                        rows.append(await measure("ConfirmTransaction", concurrency, calls, kdf_per_call=1))
                        clock.advance(STEP)
                        progress(rows[-1])
            otp_calls = [name for name in ("verifyotp", "verifycode", "echo") if only & {"otp", name}]
            if otp_calls:
                for concurrency in args.concurrency:
                    for _ in range(args.otp_rounds):
                        if "verifyotp" in otp_calls:
                            calls = verify_otp_calls(accounts, clock.now())
                            rows.append(await measure("VerifyOtp", concurrency, calls))
                            clock.advance(STEP)
                        if "verifycode" in otp_calls:
                            calls = verify_code_calls(stack, accounts, clock.now())
                            rows.append(await measure("VerifyCode", concurrency, calls))
                            clock.advance(STEP)
                        if "echo" in otp_calls:
                            rows.append(await measure("GetJwks (echo)", concurrency, jwks_calls(accounts)))
                    for row in rows[-len(otp_calls) :]:
                        progress(row)
        finally:
            await stack.close()
            stack.smtp.stop()
    return rows


def merge(rows: list[Row]) -> tuple[dict[tuple[str, int], Row], dict[tuple[str, int], Row]]:
    """Merge the chunks: the rows by call and concurrency, and the ceiling chunks by the row they are paired with."""
    merged: dict[tuple[str, int], Row] = {}
    ceilings: dict[tuple[str, int], Row] = {}
    for row in rows:
        into, key = (ceilings, row.pair) if row.pair else (merged, (row.name, row.concurrency))
        assert key is not None
        if key in into:
            into[key].add(row)
        else:
            into[key] = Row(**{**vars(row), "latencies": list(row.latencies)})
    return merged, ceilings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=96, help="customers (tokens) enrolled; a round is one each")
    parser.add_argument("--concurrency", default="8,32", help="calls in flight, comma-separated")
    parser.add_argument("--chunks", type=int, default=5, help="KDF-ceiling/row chunk pairs per KDF-bound row")
    parser.add_argument("--auth-chunk", type=int, default=96, help="Authenticate calls (and verifies) per chunk")
    parser.add_argument("--otp-rounds", type=int, default=10, help="rounds of VerifyOtp, VerifyCode and GetJwks")
    parser.add_argument(
        "--only",
        default="auth,confirm,otp",
        help="comma-separated: auth, confirm, otp (or one of its calls: verifyotp, verifycode, echo)",
    )
    parser.add_argument("--quick", action="store_true", help="a short run (about 20 s)")
    args = parser.parse_args()
    if args.quick:
        args.customers, args.chunks, args.auth_chunk, args.otp_rounds = 32, 3, 48, 4
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    configure_logging("user-bench", level="WARNING")

    started = time.perf_counter()
    rows, ceilings = merge(asyncio.run(run(args)))
    print(
        f"\n{datetime.date.today().isoformat()}; nproc {len(os.sched_getaffinity(0))}; "
        f"{platform.python_implementation()} {platform.python_version()} on {platform.system()} {platform.machine()}; "
        f"{args.customers} customers (tokens); the run took {time.perf_counter() - started:.0f} s"
    )
    kdf_cpu = statistics.median(c.cpu_ms for c in ceilings.values()) if ceilings else 0.0
    if ceilings:
        print(
            f"KDF: argon2id verify (19 MiB, t=2, p=1) with {next(iter(ceilings.values())).concurrency} executor "
            f"threads: {kdf_cpu:.1f} ms CPU per verify (median of the ceilings below)"
        )
    codes = {row.concurrency: row for row in rows.values() if row.name == "VerifyCode"}
    table: list[tuple[str, ...]] = []

    def line(row: Row, share: str, kdf_share: str) -> None:
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
                f"{row.cpu / row.seconds:.2f}",
                f"{row.others:.2f}",
            )
        )

    verdicts: list[tuple[str, float]] = []  # (what, share) for each target
    for key, row in rows.items():
        if key in ceilings:
            ceiling = ceilings[key]
            line(ceiling, "(for the next row)", "100%")
            share = row.rate / ceiling.rate
            line(row, f"{share:.0%} of KDF", f"{kdf_cpu / row.cpu_ms:.0%}")
            verdicts.append((f"{row.name} at {row.concurrency} in flight, of the KDF ceiling", share))
        elif row.name == "VerifyOtp" and row.concurrency in codes:
            share = row.rate / codes[row.concurrency].rate
            line(row, f"{share:.0%} of VerifyCode", "")
            verdicts.append((f"VerifyOtp at {row.concurrency} in flight, of VerifyCode", share))
        else:
            line(row, "", "")
    header = ("call", "in flight", "calls", "per s", "share", "p50 ms", "p99 ms", "CPU ms/call", "KDF of CPU", "cores",
              "others")  # fmt: skip
    widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(header)]
    print()
    for cells in (header, tuple("-" * w for w in widths), *table):
        print(
            "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
        )

    print()
    for what, share in verdicts:
        print(f"target {TARGET:.0%}: {what}: {share:.0%} - {'met' if share >= TARGET else 'MISSED'}")


if __name__ == "__main__":
    main()

"""In-process cost of the OTP domain: verifications per second and argon2id time per hash, on one core.

    python bench/otp_inprocess_bench.py [--seconds S]

Rows, each timed for about S seconds (default 1.5) in one thread:

- match_code with a right code (SHA1, 6 digits, the default window: the previous and the current step): two
  HMACs, the pure verifier.
- match_code with a wrong code: the worst case, window plus the 10-step expired lookback (12 HMACs).
- decide: the replay/lockout state update alone.
- verify_code: the whole domain check (format, AES-GCM unseal of the seed, match, decide).
- argon2id hash and verify for OWASP's default (19 MiB, t=2, p=1) and two heavier settings for comparison.

Prints a markdown table; the whole run takes well under 30 seconds.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from kagi.passwords import OWASP_ARGON2ID, Argon2Parameters, PasswordHasher, Pepper
from services.otp_service.domain import (
    KeyEncryptionKey,
    OtpPolicy,
    Seed,
    SeedVault,
    Token,
    TokenState,
    TotpParameters,
    VerificationState,
    decide,
    match_code,
    verify_code,
)
from services.otp_service.domain.ids import new_token_id
from services.otp_service.domain.totp import CodeMatch, hotp, time_step

START = 1_800_000_000.0
KEY = bytes(range(20))
PARAMS = TotpParameters()
POLICY = OtpPolicy(rate_limit_failures=10**9, max_failures=10**9)


def measure(step: Callable[[int], object], seconds: float) -> tuple[int, float, float]:
    """Call step(i) for i = 0, 1, ... for about `seconds`; return (calls, wall s, CPU s).

    Calls run in batches sized to take about 10 ms, so the clock is read rarely for fast steps and a slow
    step (argon2) does not overshoot the budget.
    """
    calls = 0
    batch = 1
    wall0, cpu0 = time.perf_counter(), time.process_time()
    deadline = wall0 + seconds
    while (batch_start := time.perf_counter()) < deadline:
        for _ in range(batch):
            step(calls)
            calls += 1
        elapsed = time.perf_counter() - batch_start
        batch = max(1, min(4096, int(batch * 0.01 / elapsed))) if elapsed > 0 else batch * 2
    return calls, time.perf_counter() - wall0, time.process_time() - cpu0


def wrong_code(now: float) -> str:
    """Return a 6-digit code matching none of the steps match_code looks at."""
    current = time_step(now)
    near = {hotp(KEY, current + d) for d in range(-12, 3)}
    return next(c for c in (f"{n:06d}" for n in range(1_000_000)) if c not in near)


def verifier_rows(seconds: float) -> list[tuple[str, int, float, float]]:
    """Time the pure verifier, the state update and the whole domain check."""
    # One time per call, stepping a minute each time, so every call sees a fresh step and a fresh code.
    times = [START + 60 * i + 7 for i in range(4096)]
    right = [hotp(KEY, time_step(t)) for t in times]
    wrong = [wrong_code(t) for t in times[:64]]
    vault = SeedVault(KeyEncryptionKey("bench", bytes(32)))
    token = Token(
        token_id=new_token_id(),
        owner_id="bench",
        service_id="0000000000",
        app_user_id="00000000",
        state=TokenState.ACTIVE,
        params=PARAMS,
        email="bench@example.jp",
        usage_start_password_hash=None,
        sealed_seed=None,
        created_at=START,
        updated_at=START,
        activation_expires_at=START,
    )
    token = replace(token, sealed_seed=vault.seal(token.token_id, Seed(KEY)))
    fresh = VerificationState()

    def match_right(i: int) -> object:
        return match_code(KEY, PARAMS, right[i % 4096], times[i % 4096], past_steps=1, future_steps=0)

    def match_wrong(i: int) -> object:
        return match_code(KEY, PARAMS, wrong[i % 64], times[i % 64], past_steps=1, future_steps=0, expired_lookback=10)

    def decide_only(i: int) -> object:
        return decide(fresh, CodeMatch.at(i + 1), now=START, policy=POLICY)

    def full(i: int) -> object:
        return verify_code(token, fresh, right[i % 4096], now=times[i % 4096], policy=POLICY, vault=vault)

    assert full(0).result.ok  # type: ignore[attr-defined]
    rows = []
    for name, fn in (
        ("match_code, right code (SHA1/6, steps c-1..c)", match_right),
        ("match_code, wrong code (window + 10-step lookback)", match_wrong),
        ("decide (replay/lockout update)", decide_only),
        ("verify_code (validate + AES-GCM unseal + match + decide)", full),
    ):
        calls, wall, cpu = measure(fn, seconds)
        rows.append((name, calls, wall, cpu))
    return rows


def argon2_rows(budget: float) -> list[tuple[str, Argon2Parameters, int, float, float, float]]:
    """Time hash and verify for the default parameters and two heavier ones."""
    pepper = Pepper("bench", b"\x00" * 32)
    out = []
    for label, params in (
        ("OWASP default (m=19 MiB, t=2, p=1)", OWASP_ARGON2ID),
        ("OWASP alt (m=46 MiB, t=1, p=1)", Argon2Parameters(time_cost=1, memory_cost_kib=46 * 1024)),
        ("RFC 9106 2nd, 1 lane (m=64 MiB, t=3, p=1)", Argon2Parameters(time_cost=3, memory_cost_kib=64 * 1024)),
    ):
        hasher = PasswordHasher([pepper], params)
        stored = hasher.hash("Passw0rd")

        def hash_once(_i: int, h: PasswordHasher = hasher) -> object:
            return h.hash("Passw0rd")

        def verify_once(_i: int, h: PasswordHasher = hasher, s: str = stored) -> object:
            return h.verify(s, "Passw0rd")

        n, wall, cpu = measure(hash_once, budget)
        vn, vwall, _ = measure(verify_once, budget / 2)
        out.append((label, params, n, wall, cpu, vwall / vn * 1000))
    return out


def main() -> None:
    """Run every row and print the markdown table."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="time budget per row")
    args = parser.parse_args()

    started = time.perf_counter()
    print(f"Python {platform.python_version()} on {platform.machine()}, {platform.processor() or platform.system()}")
    print()
    print("| operation | calls | per call (µs) | per second (one core) | CPU/wall |")
    print("|---|---:|---:|---:|---:|")
    for name, calls, wall, cpu in verifier_rows(args.seconds):
        print(f"| {name} | {calls} | {wall / calls * 1e6:.1f} | {calls / wall:,.0f} | {cpu / wall:.2f} |")
    print()
    print("| argon2id parameters | hashes | hash ms (wall) | hash ms (CPU) | hashes/s (one core) | verify ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, _params, n, wall, cpu, verify_ms in argon2_rows(args.seconds):
        print(f"| {label} | {n} | {wall / n * 1000:.1f} | {cpu / n * 1000:.1f} | {n / cpu:.1f} | {verify_ms:.1f} |")
    print()
    print(f"total {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()

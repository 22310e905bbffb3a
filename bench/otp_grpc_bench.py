"""OTP verification throughput through the real gRPC API (mTLS), on Redis and on SQLite, against the transport's echo.

    python bench/otp_grpc_bench.py [--tokens N] [--inflight 16] [--aof-always] [--profile DIR]

Everything runs on 127.0.0.1: the script starts its own redis-server on a free port (persistence off unless
--aof-always), a throwaway PKI, OTP servers built exactly as `start_otp` builds them (`kagi serve otp`, JSON
logging at INFO) in separate processes, and gRPC clients in separate processes, so that the clients' CPU is not
the servers'. With 2 workers, both server processes listen on one port with SO_REUSEPORT.

Every verification is a real, accepted code. N tokens are created once per store through the use-case layer
(cheap argon2 parameters). The servers' clock is the system clock plus an offset that puts each scenario at
the start of a fresh 60-second step, hours apart from the others, so the same tokens serve every scenario:
per token, the code of step c-1 is sent first (warm-up, not timed: the process caches the token), then the codes
of steps c and c+1 (timed; each is accepted, since the bench's policy accepts one step either side, like
KAGI_OTP_FUTURE_STEPS=1 rather than the default 0, and each step is later than the last accepted one). Each token
always goes over the same client connection, hence to the same worker process: the "sticky" routing a gateway
gets by hashing the token id.

Round trips per verification are counted twice: in the server (a counting wrapper around its KeyValueStore)
and, for Redis, from the server's own INFO commandstats (EVALSHA + HMGET calls).

The echo rows call grpc.health.v1.Health/Check on the same server, through the same stack (mTLS, the kagi
interceptor), with the same clients and the same number in flight: the transport's ceiling. The GetToken rows
(one store read, no domain work) separate the cost of "an RPC that waits on the store" from the verification's.
Server and client CPU per call come from /proc, so they hold even when other work shares the machine.

privacyIDEA comparison (optional; never installed into kagi's environment):

    python3 -m venv /tmp/pi && /tmp/pi/bin/pip install privacyidea gunicorn
    # pi.cfg: SQLALCHEMY_DATABASE_URI = 'sqlite:////tmp/pi/run/pi.sqlite', SECRET_KEY, PI_PEPPER, PI_ENCFILE,
    #         PI_AUDIT_KEY_PRIVATE / PI_AUDIT_KEY_PUBLIC under /tmp/pi/run
    export PRIVACYIDEA_CONFIGFILE=/tmp/pi/run/pi.cfg
    /tmp/pi/bin/pi-manage setup create_enckey && /tmp/pi/bin/pi-manage setup create_audit_keys
    /tmp/pi/bin/pi-manage setup create_tables && /tmp/pi/bin/pi-manage admin add admin -p benchadmin
    /tmp/pi/bin/gunicorn -w 2 -b 127.0.0.1:5789 \
        "privacyidea.app:create_app(config_name='production', config_file='/tmp/pi/run/pi.cfg', silent=True)"
    python bench/otp_grpc_bench.py --privacyidea http://127.0.0.1:5789

It enrols TOTP tokens (60 s steps) through privacyIDEA's API and sends their codes for the current and the next
step to /validate/check (plain HTTP: no TLS cost on that side), with the same number in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import builtins
import cProfile
import multiprocessing
import multiprocessing.synchronize
import os
import platform
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import grpc
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.harness import RedisServer, cpu_seconds, free_port, percentile
from kagi.idempotency import IdempotencyLedger
from kagi.otp.v1 import otp_pb2, otp_pb2_grpc
from kagi.passwords import Argon2Parameters, PasswordHasher, Pepper
from kagi.runtime.grpc_server import GrpcServer
from kagi.runtime.logging import configure_logging
from kagi.runtime.settings import ListenSettings, Secret, TlsFiles
from kagi.store.base import Entry, KeyValueStore, Operation, Page
from services.otp_service.api import OtpApi, binding
from services.otp_service.domain import KeyEncryptionKey, OtpPolicy
from services.otp_service.domain.totp import hotp
from services.otp_service.main import OtpSettings, build_service
from tests.support.tls import TestPki

PEPPER = b"bench-pepper-of-at-least-32-bytes!!"
KEK = KeyEncryptionKey("bench", bytes(range(32)))
# The bench measures verification; argon2 only runs while tokens are created, so it may be cheap.
CHEAP_ARGON2 = Argon2Parameters(time_cost=1, memory_cost_kib=8)
PASSWORD = "2468"
PERIOD = 60


class OffsetClock:
    """The system clock moved by a fixed offset (each scenario runs in a step of its own)."""

    def __init__(self, offset: float) -> None:
        self.offset = offset

    def now(self) -> float:
        """Return the system time plus the offset."""
        return time.time() + self.offset


class CountingStore(KeyValueStore):
    """Forwards to a store and counts the calls, i.e. the store round trips the service makes."""

    def __init__(self, inner: KeyValueStore, shared: Any, slot: int) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()
        self._shared = shared  # a lock-free shared int64 array: one slot per worker, read by the bench
        self._slot = slot

    def _count(self, name: str) -> None:
        self.calls[name] += 1
        self._shared[self._slot] += 1

    async def get(self, collection: str, key: str) -> Entry | None:
        self._count("get")
        return await self.inner.get(collection, key)

    async def create(self, collection: str, key: str, value: bytes, *, ttl: float | None = None) -> Entry:
        self._count("create")
        return await self.inner.create(collection, key, value, ttl=ttl)

    async def compare_and_swap(
        self, collection: str, key: str, value: bytes, *, version: int, ttl: float | None = None
    ) -> Entry:
        self._count("compare_and_swap")
        return await self.inner.compare_and_swap(collection, key, value, version=version, ttl=ttl)

    async def delete(self, collection: str, key: str, *, version: int | None = None) -> bool:
        self._count("delete")
        return await self.inner.delete(collection, key, version=version)

    async def increment(self, collection: str, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        self._count("increment")
        return await self.inner.increment(collection, key, amount, ttl=ttl)

    async def list(self, collection: str, *, page_size: int = 100, page_token: str = "") -> Page:
        self._count("list")
        return await self.inner.list(collection, page_size=page_size, page_token=page_token)

    async def commit(self, operations: Sequence[Operation]) -> builtins.list[Entry | None]:
        self._count("commit")
        return await self.inner.commit(operations)

    async def ping(self) -> None:
        await self.inner.ping()  # readiness probes are not the service's work: not counted

    async def close(self) -> None:
        await self.inner.close()


# -- the server processes --------------------------------------------------------------------------------------


def use_loop(name: str) -> None:
    """Select the event loop implementation for this process (uvloop only for the comparison rows)."""
    if name == "uvloop":
        import uvloop  # not a kagi dependency: install it next to the bench to try it

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def server_process(
    settings: OtpSettings,
    offset: float,
    ready: multiprocessing.synchronize.Event,
    results: Any,
    shared: Any,
    slot: int,
    profile_to: str,
    loop: str,
) -> None:
    """Run one OTP worker until SIGTERM, then report its store calls (and profile)."""
    configure_logging("otp", level="INFO")
    use_loop(loop)
    profiler = cProfile.Profile() if profile_to else None

    async def serve() -> None:
        stopping = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
        clock = OffsetClock(offset)
        store = CountingStore(settings.open_store(clock), shared, slot)
        hasher = PasswordHasher([Pepper("p1", settings.pepper.reveal())], CHEAP_ARGON2)
        service = build_service(settings, store, clock=clock, hasher=hasher)
        server = GrpcServer(
            settings.listen,
            [binding(OtpApi(service, IdempotencyLedger(store)))],
            domain="otp.kagi",
            readiness=store.ping,
        )
        await server.start()
        ready.set()
        if profiler is not None:
            profiler.enable()
        await stopping.wait()
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(f"{profile_to}/server-{os.getpid()}.pstats")
        await server.stop(1)
        await store.close()
        results.put(dict(store.calls))

    asyncio.run(serve())


@dataclass
class Servers:
    """The running worker processes of one scenario."""

    processes: list[multiprocessing.process.BaseProcess]
    results: Any
    shared: Any

    def store_calls(self) -> int:
        """Return how many store calls all workers have made so far."""
        return int(sum(self.shared))

    def cpu_seconds(self) -> float:
        """Return the CPU time (user + system) all workers have used so far."""
        return cpu_seconds(p.pid for p in self.processes if p.pid is not None)

    def stop(self) -> list[dict[str, int]]:
        """End the workers and return each one's store-call counts."""
        for process in self.processes:
            if process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        counts = [self.results.get(timeout=30) for _ in self.processes]
        for process in self.processes:
            process.join(timeout=30)
        return counts


def start_servers(settings: OtpSettings, workers: int, offset: float, profile_to: str, loop: str) -> Servers:
    """Start `workers` processes on settings.listen's port and wait until all serve."""
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    shared = ctx.Array("q", workers, lock=False)
    processes = []
    for slot in range(workers):
        ready = ctx.Event()
        process = ctx.Process(
            target=server_process, args=(settings, offset, ready, results, shared, slot, profile_to, loop)
        )
        process.start()
        if not ready.wait(60):
            raise RuntimeError("an OTP worker did not start")
        processes.append(process)
    return Servers(processes, results, shared)


# -- the client processes --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One request of a client: a verification (token, code) or an echo, on one of its connections."""

    connection: int
    token_id: str = ""
    code: str = ""  # empty with a token id: GetToken (one store read, no verification)


def client_process(port: int, tls: TlsFiles, connections: int, pipe: Any) -> None:
    """Keep `connections` channels open and run each batch of calls it is sent on them.

    The channels stay up between batches, so a token sent over connection i always reaches the same worker.
    """
    asyncio.run(_client(port, tls, connections, pipe))


async def _client(port: int, tls: TlsFiles, connections: int, pipe: Any) -> None:
    chain, key, ca = tls.read()
    credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=chain)
    # A local subchannel pool gives each channel its own TCP connection, which SO_REUSEPORT then pins to one worker.
    options = [("grpc.ssl_target_name_override", "localhost"), ("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials, options=options) for _ in range(connections)]
    otp = [otp_pb2_grpc.OtpServiceStub(c) for c in channels]
    health = [health_pb2_grpc.HealthStub(c) for c in channels]
    for stub in health:  # connect (and finish the TLS handshakes) before any clock starts
        await stub.Check(health_pb2.HealthCheckRequest())
    pipe.send("ready")
    while True:
        batch = await asyncio.to_thread(pipe.recv)
        if batch is None:
            break
        calls, inflight = batch
        pipe.send(await _batch(otp, health, calls, inflight))
    for channel in channels:
        await channel.close()


async def _batch(
    otp: list[otp_pb2_grpc.OtpServiceStub], health: list[health_pb2_grpc.HealthStub], calls: list[Call], inflight: int
) -> tuple[int, Counter[str], float, list[float]]:
    latencies: list[float] = []
    failures: Counter[str] = Counter()
    next_call = 0

    async def worker() -> None:
        nonlocal next_call
        while next_call < len(calls):
            call = calls[next_call]
            next_call += 1
            start = time.perf_counter()
            try:
                if call.code:
                    await otp[call.connection].VerifyCode(
                        otp_pb2.VerifyCodeRequest(token_id=call.token_id, code=call.code)
                    )
                elif call.token_id:
                    await otp[call.connection].GetToken(otp_pb2.GetTokenRequest(token_id=call.token_id))
                else:
                    await health[call.connection].Check(health_pb2.HealthCheckRequest())
            except grpc.aio.AioRpcError as exc:
                failures[exc.details() or exc.code().name] += 1
                continue
            latencies.append(time.perf_counter() - start)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(inflight)))
    return len(latencies), failures, time.perf_counter() - started, latencies


@dataclass
class Run:
    """What a set of client processes measured."""

    ok: int
    failures: Counter[str]
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        """Return accepted calls per second of wall time."""
        return self.ok / self.seconds

    def percentile(self, p: float) -> float:
        """Return the p-th latency percentile in milliseconds."""
        return percentile(self.latencies, p / 100) * 1000


class Clients:
    """The long-lived client processes of one scenario; connection i belongs to process i % n."""

    def __init__(self, port: int, tls: TlsFiles, processes: int, connections: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._n = processes
        self._pipes = []
        self._children = []
        for _ in range(processes):
            mine, theirs = ctx.Pipe()
            child = ctx.Process(target=client_process, args=(port, tls, connections // processes, theirs))
            child.start()
            self._pipes.append(mine)
            self._children.append(child)
        for pipe in self._pipes:
            if not pipe.poll(60) or pipe.recv() != "ready":
                raise RuntimeError("a client process did not connect")

    def run(self, calls: list[Call], inflight: int) -> Run:
        """Send every call (each on its connection) with `inflight` outstanding over all processes."""
        for i, pipe in enumerate(self._pipes):
            share = [replace(c, connection=c.connection // self._n) for c in calls if c.connection % self._n == i]
            pipe.send((share, inflight // self._n))
        results = [pipe.recv() for pipe in self._pipes]
        failures: Counter[str] = Counter()
        for r in results:
            failures.update(r[1])
        return Run(
            ok=sum(r[0] for r in results),
            failures=failures,
            seconds=max(r[2] for r in results),
            latencies=[x for r in results for x in r[3]],
        )

    def cpu_seconds(self) -> float:
        """Return the CPU time the client processes have used so far."""
        return cpu_seconds(c.pid for c in self._children if c.pid is not None)

    def close(self) -> None:
        """End the client processes."""
        for pipe in self._pipes:
            pipe.send(None)
        for child in self._children:
            child.join(timeout=30)


# -- tokens ------------------------------------------------------------------------------------------------------


async def create_tokens(settings: OtpSettings, count: int) -> list[tuple[str, bytes]]:
    """Make `count` registered tokens through the use cases; return (token id, seed) pairs."""
    clock = OffsetClock(0)
    store = settings.open_store(clock)
    hasher = PasswordHasher([Pepper("p1", settings.pepper.reveal())], CHEAP_ARGON2)
    service = build_service(settings, store, clock=clock, hasher=hasher)
    made: list[tuple[str, bytes]] = []

    async def one(i: int) -> None:
        token = await service.create(owner_id=f"bench-{i}", email="bench@example.jp", usage_start_password=PASSWORD)
        activation = await service.activate(
            service_id=token.service_id, app_user_id=token.app_user_id, usage_start_password=PASSWORD, consent=True
        )
        await service.confirm_registration(
            service_id=token.service_id, app_user_id=token.app_user_id, activation_id=activation.activation_id
        )
        secret = activation.seed.secret_base32
        made.append((token.token_id, base64.b32decode(secret + "=" * (-len(secret) % 8))))

    try:
        for start in range(0, count, 64):
            await asyncio.gather(*(one(i) for i in range(start, min(start + 64, count))))
    finally:
        await store.close()
    return made


def verification_calls(
    tokens: list[tuple[str, bytes]], step: int, offsets: Sequence[int], connections: int
) -> list[Call]:
    """Return, for each offset in turn, every token's code for `step + offset`."""
    return [
        Call(connection=i % connections, token_id=token_id, code=hotp(seed, step + k))
        for k in offsets
        for i, (token_id, seed) in enumerate(tokens)
    ]


# -- redis -------------------------------------------------------------------------------------------------------


def redis_round_trips(url: str) -> int:
    """Return the server's count of the commands the store driver sends (EVALSHA, HMGET, EVAL)."""
    stats = redis.Redis.from_url(url).info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "hmget", "eval"))


# -- scenarios ---------------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the result table."""

    store: str
    workers: int
    what: str
    run: Run
    store_calls: float | None = None
    redis_calls: float | None = None
    server_cpu_us: float = 0.0
    client_cpu_us: float = 0.0


def scenario_offset(index: int) -> float:
    """Put the servers' clock 2 s into a fresh step, `index` hours after the real time."""
    now = time.time() + index * 3600
    return index * 3600 + (PERIOD - now % PERIOD) + 2


def run_scenario(
    label: str,
    settings: OtpSettings,
    tokens: list[tuple[str, bytes]],
    tls: TlsFiles,
    *,
    workers: int,
    index: int,
    inflight: int,
    redis_url: str | None,
    profile_to: str,
    loop: str,
) -> list[Row]:
    """Warm-up (step c-1, untimed), verifications (steps c and c+1, timed), echo (timed)."""
    offset = scenario_offset(index)
    port = free_port()
    listen = replace(settings.listen, port=port)
    servers = start_servers(replace(settings, listen=listen), workers, offset, profile_to, loop)
    pids = " ".join(str(p.pid) for p in servers.processes)
    print(f"  {label} x{workers}: server pids {pids}", file=sys.stderr, flush=True)
    connections = 8 * workers
    step = int((time.time() + offset) // PERIOD)
    processes = workers  # one client process per server process: 2 cores, so the clients get their share
    rows: list[Row] = []
    clients = Clients(port, tls, processes, connections)

    def phase(what: str, calls: list[Call]) -> Row:
        store_before = servers.store_calls()
        redis_before = redis_round_trips(redis_url) if redis_url else 0
        server_cpu, client_cpu = servers.cpu_seconds(), clients.cpu_seconds()
        run = clients.run(calls, inflight)
        done = max(run.ok + sum(run.failures.values()), 1)
        row = Row(label, workers, what, run, store_calls=(servers.store_calls() - store_before) / done)
        row.server_cpu_us = (servers.cpu_seconds() - server_cpu) / done * 1e6
        row.client_cpu_us = (clients.cpu_seconds() - client_cpu) / done * 1e6
        if redis_url and calls[0].code:
            row.redis_calls = (redis_round_trips(redis_url) - redis_before) / done
        rows.append(row)
        return row

    try:
        phase("verify, cold cache (step c-1)", verification_calls(tokens, step, [-1], connections))
        timed = verification_calls(tokens, step, [0, 1], connections)
        phase("verify, warm cache (steps c, c+1)", timed)
        if (time.time() + offset) // PERIOD != step:
            print(f"warning: {label} x{workers} crossed a step boundary; rerun with fewer tokens", file=sys.stderr)
        phase("echo: Health/Check", [Call(connection=i % connections) for i in range(len(timed))])
        reads = [Call(connection=i % connections, token_id=tokens[i % len(tokens)][0]) for i in range(len(timed))]
        phase("GetToken: one store read, no domain", reads)
    finally:
        clients.close()
        counts = servers.stop()
    per_worker = ", ".join(str(sum(c.values())) for c in counts)
    print(f"  {label} x{workers}: store calls per worker {per_worker}", file=sys.stderr)
    return rows


# -- privacyIDEA, for comparison ---------------------------------------------------------------------------------


async def privacyidea_run(url: str, admin: str, tokens: int, inflight: int) -> tuple[Run, float]:
    """Enroll TOTP tokens (60 s steps) through privacyIDEA's API, then send each token's codes
    for steps c and c+1 to /validate/check with `inflight` outstanding; returns the run and the enrol rate."""
    import aiohttp  # a kagi dependency; only this comparison needs an HTTP client

    user, _, password = admin.partition(":")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=inflight)) as http:
        async with http.post(f"{url}/auth", data={"username": user, "password": password}) as response:
            auth = (await response.json())["result"]["value"]["token"]
        run_id = os.urandom(4).hex()
        seeds = [(f"KB{run_id}{i:06d}", os.urandom(20)) for i in range(tokens)]
        queue = list(seeds)

        async def enrol() -> None:
            while queue:
                serial, seed = queue.pop()
                form = {"type": "totp", "otpkey": seed.hex(), "timeStep": "60", "serial": serial, "genkey": "0"}
                async with http.post(f"{url}/token/init", data=form, headers={"Authorization": auth}) as response:
                    if not (await response.json())["result"]["status"]:
                        raise RuntimeError("privacyIDEA refused to enrol a token")

        t0 = time.perf_counter()
        await asyncio.gather(*(enrol() for _ in range(inflight)))
        enrol_rate = tokens / (time.perf_counter() - t0)
        step = int(time.time() // PERIOD)
        calls = [(serial, hotp(seed, step + k)) for k in (0, 1) for serial, seed in seeds]
        latencies: list[float] = []
        failures: Counter[str] = Counter()
        next_call = 0

        async def check() -> None:
            nonlocal next_call
            while next_call < len(calls):
                serial, code = calls[next_call]
                next_call += 1
                start = time.perf_counter()
                async with http.post(f"{url}/validate/check", data={"serial": serial, "pass": code}) as response:
                    body = await response.json()
                if body["result"].get("value") is True:
                    latencies.append(time.perf_counter() - start)
                else:
                    failures[str(body.get("detail", {}).get("message", "rejected"))] += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(check() for _ in range(inflight)))
        elapsed = time.perf_counter() - t0
    return Run(len(latencies), failures, elapsed, latencies), enrol_rate


def main() -> None:
    """Run the scenarios and print the table."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tokens", type=int, default=6000, help="tokens per store (each gives 3 verifications)")
    parser.add_argument("--inflight", type=int, default=16, help="calls in flight, over all client processes")
    parser.add_argument("--aof-always", action="store_true", help="Redis with appendonly yes, appendfsync always")
    parser.add_argument("--profile", default="", help="write a cProfile of each server process into this folder")
    parser.add_argument(
        "--loop", choices=["asyncio", "uvloop"], default="asyncio", help="server event loop (uvloop: comparison)"
    )
    parser.add_argument(
        "--group-commit",
        choices=["auto", "on", "off"],
        default="auto",
        help="KAGI_OTP_GROUP_COMMIT (auto: on for SQLite, off for Redis)",
    )
    parser.add_argument("--only", choices=["redis", "sqlite", "none"], help="run one store only (none: no kagi rows)")
    parser.add_argument("--privacyidea", default="", help="base URL of a running privacyIDEA to compare with")
    parser.add_argument("--privacyidea-admin", default="admin:benchadmin", help="its admin user:password")
    parser.add_argument("--privacyidea-workers", type=int, default=2, help="its gunicorn workers (for the table)")
    parser.add_argument("--privacyidea-tokens", type=int, default=600, help="tokens to enrol in it")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to run (default 1 2)")
    args = parser.parse_args()
    started = time.perf_counter()
    configure_logging("otp-bench", level="WARNING")  # token creation in this process: no log line per token

    with tempfile.TemporaryDirectory(prefix="otp-bench-") as tmp:
        base = Path(tmp)
        pki = TestPki.create()
        server_tls = pki.write(base / "tls", "otp", pki.service("otp"), pki.internal)
        # The enrollment service is the one caller that may verify codes (the gateway reaches tokens through it).
        client_tls = pki.write(base / "tls", "enrollment", pki.service("enrollment"), pki.internal)
        redis = RedisServer(base, aof_always=args.aof_always)
        redis_url = redis.url()
        try:
            stores = [("redis", redis_url), ("sqlite", "sqlite:")]
            if args.only:
                stores = [s for s in stores if s[0] == args.only]
            rows: list[Row] = []
            if args.privacyidea:
                pi_run, enrol_rate = asyncio.run(
                    privacyidea_run(args.privacyidea, args.privacyidea_admin, args.privacyidea_tokens, args.inflight)
                )
                print(f"privacyIDEA: enrolled {enrol_rate:.0f} tokens/s", file=sys.stderr)
                pi_row = Row("privacyIDEA (SQLite)", args.privacyidea_workers, "/validate/check, HTTP", pi_run)
                pi_row.store_calls = None
            index = 1
            for name, url in stores:
                settings = OtpSettings(
                    listen=ListenSettings("127.0.0.1", 0, server_tls),
                    store_url=url,
                    state_dir=base / "state",
                    pepper=Secret(PEPPER),
                    kek=KEK,
                    # One step ahead too (not the default): each token is verified at steps c-1, c and c+1.
                    policy=OtpPolicy(issuer="Bench", future_steps=1),
                    group_commit={"auto": None, "on": True, "off": False}[args.group_commit],
                )
                t0 = time.perf_counter()
                tokens = asyncio.run(create_tokens(settings, args.tokens))
                print(f"{name}: {len(tokens)} tokens created in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
                for workers in args.workers:
                    rows += run_scenario(
                        name,
                        settings,
                        tokens,
                        client_tls,
                        workers=workers,
                        index=index,
                        inflight=args.inflight,
                        redis_url=redis_url if name == "redis" else None,
                        profile_to=args.profile,
                        loop=args.loop,
                    )
                    index += 1
        finally:
            redis.stop()

    print(f"Python {platform.python_version()}, grpcio {grpc.__version__}, {os.cpu_count()} CPUs, {platform.machine()}")
    print(f"Redis persistence: {'AOF appendfsync always' if args.aof_always else 'off'}; SQLite WAL synchronous=FULL")
    print(
        f"{args.inflight} calls in flight; {args.tokens} tokens per store; server loop: {args.loop};"
        f" group commit: {args.group_commit}"
    )
    print()
    print(
        "| store | workers | calls | ok | failed | per second | p50 ms | p99 ms | store calls/call | Redis cmds/call"
        " | server CPU µs/call | client CPU µs/call |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        run = row.run
        sc = f"{row.store_calls:.2f}" if row.store_calls is not None and not row.what.startswith("echo") else ""
        rt = f"{row.redis_calls:.2f}" if row.redis_calls is not None else ""
        print(
            f"| {row.store} | {row.workers} | {row.what} | {run.ok} | {sum(run.failures.values())} | {run.rate:,.0f}"
            f" | {run.percentile(50):.2f} | {run.percentile(99):.2f} | {sc} | {rt}"
            f" | {row.server_cpu_us:.0f} | {row.client_cpu_us:.0f} |"
        )
    if args.privacyidea:
        run = pi_row.run
        print(
            f"| {pi_row.store} | {pi_row.workers} | {pi_row.what} | {run.ok} | {sum(run.failures.values())}"
            f" | {run.rate:,.0f} | {run.percentile(50):.2f} | {run.percentile(99):.2f} |  |  |  |  |"
        )
        rows.append(pi_row)
    failures = Counter[str]()
    for row in rows:
        failures.update(row.run.failures)
    if failures:
        print()
        print("failures:", dict(failures.most_common(5)))
    print()
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()

"""Real distributed Redis topologies on loopback: a 3-master / 3-replica Cluster and a Sentinel set.

Every process is a `redis-server` from PATH (the Debian package) on free 127.0.0.1 ports, in a temporary
directory, with AOF `appendfsync always` and no RDB snapshots, so what a master acknowledged is on its disk.

- `RedisCluster` starts six `--cluster-enabled yes` servers, joins them with `redis-cli --cluster create
  --cluster-replicas 1`, and waits until every node says `cluster_state:ok` and every replica is in sync.
- `SentinelSet` starts a master, one replica and three `redis-server --sentinel` processes watching it (quorum 2,
  `down-after-milliseconds` 1000), and waits until every sentinel sees the replica and the other sentinels, so
  a failover can be agreed on.

The fixtures `redis_cluster` and `redis_sentinel` (session scope, shared by every test that asks) are
re-exported by tests/integration/conftest.py; a test that kills a node starts its own `SentinelSet`.
"""

from __future__ import annotations

import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
SERVICE = "kagi"
"""The name the sentinels know the master by."""

_NEEDS = "these tests need redis-server and redis-cli (apt-get install redis-server)"


def topology_port() -> int:
    """Return a free loopback port below the ephemeral range whose cluster bus port (+10000) is free too."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(1000):
        port = random.randrange(max(1024, low - 12000), low - 10000) if low > 13024 else random.randrange(2000, 20000)
        if _bindable(port) and _bindable(port + 10000):
            return port
    raise AssertionError("no free port pair for a cluster node")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll CONDITION (errors count as not yet) until it holds; fail naming WHAT after TIMEOUT seconds."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (redis.RedisError, OSError) as exc:
            last = exc
        time.sleep(0.1)  # polling processes that converge on their own, not waiting out a window
    raise AssertionError(f"{what} did not happen within {timeout} s (last error: {last!r})")


class RedisProcess:
    """One redis-server (or sentinel) child process on 127.0.0.1; `kill` is SIGKILL, `start` reuses the dir."""

    def __init__(self, directory: Path, port: int, args: list[str], *, config: str | None = None) -> None:
        self.directory = directory
        self.port = port
        self.args = args
        self.config = config
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """Return host:port."""
        return f"127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        """Return a synchronous client of this process (decoded replies, short timeouts)."""
        return redis.Redis(
            host="127.0.0.1", port=self.port, decode_responses=True, socket_timeout=5, socket_connect_timeout=5
        )

    def start(self) -> None:
        """Launch the process and return once it answers PING."""
        if REDIS_SERVER is None or REDIS_CLI is None:
            pytest.fail(_NEEDS)
        self.directory.mkdir(parents=True, exist_ok=True)
        argv = [REDIS_SERVER]
        if self.config is not None:
            conf = self.directory / "sentinel.conf"
            if not conf.exists():  # a sentinel rewrites its own file: keep what it learnt across restarts
                conf.write_text(self.config)
            argv += [str(conf), "--sentinel"]
        argv += ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory)]
        argv += ["--daemonize", "no", "--logfile", str(self.directory / "redis.log"), *self.args]
        self._process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        process = self._process

        def answers() -> bool:
            if process.poll() is not None:
                log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                pytest.fail(f"redis-server on port {self.port} exited with {process.returncode}:\n{log}")
            with self.client() as client:
                return bool(client.ping())

        wait_for(answers, f"redis-server on port {self.port} answering PING", timeout=30)

    def kill(self) -> None:
        """Send SIGKILL (no shutdown, no final fsync) and reap the process."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGCONT)
            self._process.kill()
            self._process.wait(timeout=10)
        self._process = None


def _durable() -> list[str]:
    return ["--appendonly", "yes", "--appendfsync", "always", "--save", "", "--maxmemory-policy", "noeviction"]


_CLUSTER_NODE = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "3000"]
_CREATE_OPTIONS = ["--cluster-replicas", "1", "--cluster-yes"]


class RedisClusterProcesses:
    """A 3-master / 3-replica Redis Cluster of local processes."""

    def __init__(self, directory: Path, *, masters: int = 3) -> None:
        ports = set()
        while len(ports) < masters * 2:
            ports.add(topology_port())
        self.nodes = [
            RedisProcess(
                directory / f"node-{port}",
                port,
                [*_durable(), *_CLUSTER_NODE],
            )
            for port in sorted(ports)
        ]

    @property
    def url(self) -> str:
        """Return the redis+cluster:// URL naming two of the nodes (the client discovers the rest)."""
        return "redis+cluster://" + ",".join(node.address for node in self.nodes[:2])

    def start(self) -> None:
        """Start the nodes, create the cluster, and wait until every node serves and every replica is synced."""
        for node in self.nodes:
            node.start()
        assert REDIS_CLI is not None
        subprocess.run(
            [REDIS_CLI, "--cluster", "create", *(n.address for n in self.nodes), *_CREATE_OPTIONS],
            check=True,
            capture_output=True,
            timeout=120,
        )
        for node in self.nodes:

            def ready(node: RedisProcess = node) -> bool:
                with node.client() as client:
                    info = client.execute_command("CLUSTER", "INFO")
                    state = info.get("cluster_state") if isinstance(info, dict) else "ok" in str(info)
                    if state not in ("ok", True):
                        return False
                    replication = client.info("replication")
                    return replication["role"] == "master" or replication.get("master_link_status") == "up"

            wait_for(ready, f"cluster node {node.address} ready", timeout=90)

    def masters(self, *, skip: RedisProcess | None = None) -> dict[str, list[tuple[int, int]]]:
        """Return each master's address and the slot ranges it serves (as the first node but SKIP sees it)."""
        with next(node for node in self.nodes if node is not skip).client() as client:
            slots = client.execute_command("CLUSTER", "SLOTS")
        served: dict[str, list[tuple[int, int]]] = {}
        for entry in slots:
            first, last, master = entry[0], entry[1], entry[2]
            host = master[0].decode() if isinstance(master[0], bytes) else master[0]
            served.setdefault(f"{host}:{master[1]}", []).append((int(first), int(last)))
        return served

    def stop(self) -> None:
        """Kill every node."""
        for node in self.nodes:
            node.kill()


class SentinelSet:
    """A master, one replica and three sentinels (quorum 2) watching them as `SERVICE`."""

    def __init__(self, directory: Path) -> None:
        self.master = RedisProcess(directory / "master", topology_port(), _durable())
        replica_port = topology_port()
        self.replica = RedisProcess(
            directory / "replica", replica_port, [*_durable(), "--replicaof", "127.0.0.1", str(self.master.port)]
        )
        config = (
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.master.port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
            f"sentinel failover-timeout {SERVICE} 10000\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )
        self.sentinels = [
            RedisProcess(directory / f"sentinel-{i}", topology_port(), [], config=config) for i in range(3)
        ]

    @property
    def url(self) -> str:
        """Return the redis+sentinel:// URL naming every sentinel."""
        return "redis+sentinel://" + ",".join(s.address for s in self.sentinels) + f"/{SERVICE}/0"

    def start(self) -> None:
        """Start everything and wait until the replica is synced and each sentinel knows all the others."""
        self.master.start()
        self.replica.start()
        for sentinel in self.sentinels:
            sentinel.start()
        self.wait_until_replicated(self.replica)

        for sentinel in self.sentinels:

            def knows_everyone(sentinel: RedisProcess = sentinel) -> bool:
                with sentinel.client() as client:
                    state = client.execute_command("SENTINEL", "MASTER", SERVICE)
                    fields = dict(zip(state[::2], state[1::2], strict=True)) if isinstance(state, list) else state
                    return int(fields["num-slaves"]) >= 1 and int(fields["num-other-sentinels"]) >= 2

            wait_for(knows_everyone, f"sentinel {sentinel.address} seeing the replica and the other sentinels")

    def master_address(self) -> str:
        """Return host:port of the master the first live sentinel names."""
        for sentinel in self.sentinels:
            try:
                with sentinel.client() as client:
                    host, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
                    return f"{host}:{port}"
            except redis.RedisError:
                continue
        raise AssertionError("no sentinel answers")

    def wait_until_replicated(self, replica: RedisProcess, timeout: float = 60.0) -> None:
        """Wait until REPLICA is a replica in sync with its master."""

        def synced() -> bool:
            with replica.client() as client:
                info = client.info("replication")
                return info["role"] == "slave" and info.get("master_link_status") == "up"

        wait_for(synced, f"{replica.address} replicating", timeout=timeout)

    def stop(self) -> None:
        """Kill every process."""
        for process in [*self.sentinels, self.replica, self.master]:
            process.kill()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterProcesses]:
    """Return a running 3-master / 3-replica Redis Cluster shared by the whole test run."""
    cluster = RedisClusterProcesses(tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    """Return a running Sentinel set (master, replica, three sentinels) shared by the whole test run."""
    sentinels = SentinelSet(tmp_path_factory.mktemp("redis-sentinel"))
    try:
        sentinels.start()
        yield sentinels
    finally:
        sentinels.stop()

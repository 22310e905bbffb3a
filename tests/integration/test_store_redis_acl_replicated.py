"""The component users of deploy/redis/users.acl on a replicated Redis: a 3-master / 3-replica Cluster and a
Sentinel set, every node started with the ACL file and its `default` user off.

Replicas log in to their masters as kagi-replica and the sentinels to the servers as kagi-sentinel, so a store's
`WAIT 1` after each write (the default under Cluster and Sentinel) is answered. Each component's store works
through redis+cluster:// and redis+sentinel:// URLs under its own user; `ACL LOG` on every node shows that
nothing but the durability check's CONFIG GET was refused to anyone: the users' command lists cover what
redis-py's Cluster and Sentinel clients, replication and the sentinels run.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.exceptions import ResponseError

from kagi.store import StoreError, open_store
from tests.support.redis_topology import REDIS_CLI, REDIS_SERVER, topology_port
from tests.support.secured_redis import COMPONENTS, SecuredRedis, exercise_store, write_acl_file

pytestmark = [
    pytest.mark.redis,
    pytest.mark.cluster,
    pytest.mark.timeout(300),
    pytest.mark.skipif(REDIS_CLI is None or REDIS_SERVER is None, reason="needs redis-server and redis-cli"),
]

PASSWORDS = {f"kagi-{component}": f"{component}-store-password" for component in COMPONENTS}
PASSWORDS |= {"kagi-admin": "admin-password", "kagi-replica": "replica-password", "kagi-sentinel": "sentinel-pw"}
SERVICE = "kagi"
REPLICA_LOGIN = ["--masteruser", "kagi-replica", "--masterauth", PASSWORDS["kagi-replica"]]


def _admin(server: SecuredRedis) -> redis.Redis:
    return redis.Redis(port=server.port, username="kagi-admin", password=PASSWORDS["kagi-admin"])


def _wait(condition: object, what: str, timeout: float = 90.0) -> None:
    """Poll `condition` (a callable; errors count as not yet) until it holds; fail naming `what`."""
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except redis.RedisError:
            pass
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)  # polling servers that are starting, not waiting out a window


def _refused(servers: list[SecuredRedis]) -> set[tuple[str, str, str]]:
    """Return (server port, user, command or key) for everything any server's ACL LOG refused, bar CONFIG GET."""
    refused = set()
    for server in servers:
        with _admin(server) as client:
            for entry in client.acl_log(count=1000):
                if entry["object"] != "config|get":
                    refused.add((str(server.port), str(entry["username"]), str(entry["object"])))
    return refused


def _replicating(server: SecuredRedis) -> bool:
    with _admin(server) as client:
        info = client.info("replication")
        return bool(info["role"] == "master" or info.get("master_link_status") == "up")


@pytest.fixture(scope="module")
def acl_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return the deployment's ACL file with PASSWORDS."""
    return write_acl_file(tmp_path_factory.mktemp("redis-acl-replicated"), PASSWORDS)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, acl_file: Path) -> Iterator[list[SecuredRedis]]:
    """Yield the six nodes of a Cluster made with the ACL file, created by kagi-admin, replicas synced."""
    directory = tmp_path_factory.mktemp("redis-acl-cluster")
    options = ["--aclfile", str(acl_file), "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
    options += ["--cluster-node-timeout", "3000", *REPLICA_LOGIN]
    nodes = [SecuredRedis(directory / f"node-{i}", options, port=topology_port()) for i in range(6)]
    try:
        for node in nodes:
            node.start()
        assert REDIS_CLI is not None
        addresses = [f"127.0.0.1:{node.port}" for node in nodes]
        subprocess.run(
            [
                REDIS_CLI,
                "--user",
                "kagi-admin",
                "--cluster",
                "create",
                *addresses,
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            env={**os.environ, "REDISCLI_AUTH": PASSWORDS["kagi-admin"]},
            check=True,
            capture_output=True,
            timeout=120,
        )
        for node in nodes:

            def ready(node: SecuredRedis = node) -> bool:
                with _admin(node) as client:
                    return bool(client.cluster("info")["cluster_state"] == "ok") and _replicating(node)

            _wait(ready, f"cluster node {node.port}")
        yield nodes
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture(scope="module")
def sentinel_set(tmp_path_factory: pytest.TempPathFactory, acl_file: Path) -> Iterator[list[SecuredRedis]]:
    """Yield [master, replica, three sentinels]: servers with the ACL file, sentinels that log in as
    kagi-sentinel, all seeing the replica and each other."""
    directory = tmp_path_factory.mktemp("redis-acl-sentinel")
    master = SecuredRedis(directory / "master", ["--aclfile", str(acl_file), *REPLICA_LOGIN], port=topology_port())
    replica = SecuredRedis(
        directory / "replica",
        ["--aclfile", str(acl_file), *REPLICA_LOGIN, "--replicaof", "127.0.0.1", str(master.port)],
        port=topology_port(),
    )
    sentinels = []
    for i in range(3):
        config = directory / f"sentinel-{i}.conf"
        config.write_text(
            f"port {(port := topology_port())}\nbind 127.0.0.1\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {master.port} 2\n"
            f"sentinel auth-user {SERVICE} kagi-sentinel\nsentinel auth-pass {SERVICE} {PASSWORDS['kagi-sentinel']}\n"
            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
        )
        sentinels.append(
            SecuredRedis(
                directory / f"sentinel-{i}", ["--sentinel"], port=port, config=config, ready_line="+monitor master"
            )
        )
    processes = [master, replica, *sentinels]
    try:
        for process in processes:
            process.start()
        _wait(lambda: _replicating(replica), "the replica syncing as kagi-replica")
        for sentinel in sentinels:

            def knows_everyone(sentinel: SecuredRedis = sentinel) -> bool:
                with redis.Redis(port=sentinel.port, decode_responses=True) as client:
                    state = client.sentinel_master(SERVICE)
                    return int(state["num-slaves"]) >= 1 and int(state["num-other-sentinels"]) >= 2

            _wait(knows_everyone, f"sentinel {sentinel.port} seeing the replica and the other sentinels")
        yield processes
    finally:
        for process in processes:
            process.stop()


@pytest.mark.parametrize("component", COMPONENTS)
async def test_each_component_user_serves_its_store_on_a_cluster(cluster: list[SecuredRedis], component: str) -> None:
    """Through redis+cluster:// as kagi-<component>: every kind of store call works, each write waited for by
    a replica, and no node refused anything (the Cluster client's slot map, its COMMAND and WAIT included)."""
    nodes = ",".join(f"127.0.0.1:{node.port}" for node in cluster[:2])
    user = f"kagi-{component}"
    store = open_store(f"redis+cluster://{user}:{PASSWORDS[user]}@{nodes}", namespace=component, state_dir=None)
    try:
        await exercise_store(store)
    finally:
        await store.close()
    assert _refused(cluster) == set()


async def test_the_gateway_user_cannot_use_a_services_store_on_a_cluster(cluster: list[SecuredRedis]) -> None:
    """Through redis+cluster:// as kagi-gateway, the CA's namespace is refused: NOPERM naming the CA's keys."""
    nodes = ",".join(f"127.0.0.1:{node.port}" for node in cluster[:2])
    url = f"redis+cluster://kagi-gateway:{PASSWORDS['kagi-gateway']}@{nodes}"
    store = open_store(url, namespace="ca", state_dir=None)
    try:
        with pytest.raises((ResponseError, StoreError), match=r"no permissions|NOPERM"):
            await store.create("things", "a", b"planted")
    finally:
        await store.close()
    refused = _refused(cluster)
    assert refused
    assert all(user == "kagi-gateway" and key.startswith("kagi:{ca") for _, user, key in refused), refused
    for node in cluster:
        with _admin(node) as client:
            client.acl_log_reset()


@pytest.mark.parametrize("component", COMPONENTS)
async def test_each_component_user_serves_its_store_under_sentinel(
    sentinel_set: list[SecuredRedis], component: str
) -> None:
    """Through redis+sentinel:// as kagi-<component>: every kind of store call works on the master the
    sentinels name, each write waited for by the replica, and neither server refused anything to the
    component, the replica or the sentinels."""
    sentinels = ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in sentinel_set[2:])
    user = f"kagi-{component}"
    url = f"redis+sentinel://{user}:{PASSWORDS[user]}@{sentinels}/{SERVICE}/0"
    store = open_store(url, namespace=component, state_dir=None)
    try:
        await exercise_store(store)
    finally:
        await store.close()
    assert _refused(sentinel_set[:2]) == set()

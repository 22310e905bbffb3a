"""One Redis user per component (deploy/redis/users.acl): each one's store works under its own user, and no user
reaches another component's keys; the gateway, which keeps only rate-limit counters, cannot read or write the
services' data.

A real redis-server runs with the deployment's ACL file (made by deploy/redis/users-acl.sh, as deploy/init.sh
does). Redis checks the keys a Lua script declares and those it builds from its arguments against the calling
user's patterns, so a script cannot reach past them either. What a user was refused is read back from `ACL LOG`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis
from redis.exceptions import NoPermissionError, ResponseError

from gateway.metrics import GatewayMetrics
from gateway.ratelimit import COLLECTION, RateLimited, RateLimiter, Rule
from kagi.store import GroupCommitStore, InvalidStoreConfig, open_store
from tests.support.secured_redis import COMPONENTS, SecuredRedis, exercise_store, write_acl_file

pytestmark = [pytest.mark.redis, pytest.mark.timeout(180)]

PASSWORDS = {f"kagi-{component}": f"{component}-store-password" for component in COMPONENTS}
PASSWORDS |= {"kagi-health": "health-password", "kagi-admin": "admin-password"}

# Every kind of key a namespace's store writes: the service-wide group and a spread aggregate's group.
KEY_SHAPES = (
    "kagi:{{{ns}}}:e:things:a",
    "kagi:{{{ns}}}:i:things",
    "kagi:{{{ns}}}:version",
    "kagi:{{{ns}:7.x1}}:e:things:a",
)


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredRedis]:
    """Yield a redis-server whose users are the deployment's, with PASSWORDS."""
    directory = tmp_path_factory.mktemp("redis-acl")
    server = SecuredRedis(directory, ["--aclfile", str(write_acl_file(directory, PASSWORDS))])
    server.start()
    yield server
    server.stop()


def _url(server: SecuredRedis, user: str) -> str:
    return f"redis://{user}:{PASSWORDS[user]}@127.0.0.1:{server.port}/0"


def _client(server: SecuredRedis, user: str) -> redis.Redis:
    return redis.Redis.from_url(_url(server, user))


@pytest.fixture
def admin(acl_redis: SecuredRedis) -> Iterator[redis.Redis]:
    """Yield a kagi-admin client, with the server's data and ACL LOG emptied first."""
    client = _client(acl_redis, "kagi-admin")
    client.flushall()
    client.acl_log_reset()
    yield client
    client.close()


def _refusals(admin: redis.Redis) -> set[tuple[str, str, str]]:
    """Return what ACL LOG says was refused since the fixture reset it: (user, reason, command or key)."""
    return {(str(e["username"]), str(e["reason"]), str(e["object"])) for e in admin.acl_log(count=1000)}


@pytest.mark.parametrize("component", COMPONENTS)
async def test_each_component_user_serves_its_own_store(
    acl_redis: SecuredRedis, admin: redis.Redis, component: str
) -> None:
    """Every kind of store call (the three Lua scripts, the list script's reads of entries by built names, the
    reads, the group commit the services wrap it in) works for the component's user in its own namespace, and
    the only thing Redis refused it is CONFIG GET, which the durability check falls back from to INFO."""
    user = f"kagi-{component}"
    store = open_store(_url(acl_redis, user), namespace=component, state_dir=None)
    try:
        await exercise_store(store)
    finally:
        await store.close()
    grouped = GroupCommitStore(open_store(_url(acl_redis, user), namespace=component, state_dir=None))
    try:
        await grouped.create("grouped", "g", b"value")
        assert (await grouped.list("grouped")).entries[0].value == b"value"
    finally:
        await grouped.close()
    assert admin.keys(f"kagi:{{{component}}}:*")
    assert _refusals(admin) <= {(user, "command", "config|get")}


async def test_gateway_replicas_share_rate_limit_counters_under_the_gateway_user(
    acl_redis: SecuredRedis, admin: redis.Redis
) -> None:
    """Two gateway replicas (two rate limiters, two stores as kagi-gateway) count into the same Redis
    counters: with a burst of three, the fourth request is refused whichever replica gets it; the counters
    are the gateway's own keys, and nothing was refused but CONFIG GET."""
    rules = {"step1": Rule(rate=3, period=60.0, burst=3)}
    replicas = [
        RateLimiter(
            rules,
            GatewayMetrics(),
            store=open_store(_url(acl_redis, "kagi-gateway"), namespace="gateway", state_dir=None),
        )
        for _ in range(2)
    ]
    try:
        await replicas[0].hit("step1", "198.51.100.4")
        await replicas[1].hit("step1", "198.51.100.4")
        await replicas[0].hit("step1", "198.51.100.4")
        with pytest.raises(RateLimited):
            await replicas[1].hit("step1", "198.51.100.4")
    finally:
        for replica in replicas:
            await replica.close()
    counters = admin.keys(f"kagi:{{gateway}}:e:{COLLECTION}:*")
    assert len(counters) == 1
    assert _refusals(admin) <= {("kagi-gateway", "command", "config|get")}


@pytest.mark.parametrize("service", ["ca", "otp", "enrollment"])
async def test_the_gateway_user_cannot_use_a_services_store(
    acl_redis: SecuredRedis, admin: redis.Redis, service: str
) -> None:
    """A store opened as kagi-gateway on a service's namespace is refused every call (get, create, list,
    increment) with InvalidStoreConfig STORE_PERMISSION_DENIED, which carries Redis' NOPERM naming the service's
    keys; none is written."""
    service_store = open_store(_url(acl_redis, f"kagi-{service}"), namespace=service, state_dir=None)
    try:
        await service_store.create("things", "a", b"the service's data")
    finally:
        await service_store.close()
    before = sorted(admin.keys("*"))
    store = open_store(_url(acl_redis, "kagi-gateway"), namespace=service, state_dir=None)
    try:
        with pytest.raises(InvalidStoreConfig, match=r"no permissions|NOPERM") as refused:
            await store.get("things", "a")
        assert refused.value.reason == "STORE_PERMISSION_DENIED"
        with pytest.raises(InvalidStoreConfig, match=r"no permissions|NOPERM") as refused:
            await store.create("things", "b", b"planted")
        assert refused.value.reason == "STORE_PERMISSION_DENIED"
        with pytest.raises(InvalidStoreConfig, match=r"no permissions|NOPERM") as refused:
            await store.list("things")
        assert refused.value.reason == "STORE_PERMISSION_DENIED"
        with pytest.raises(InvalidStoreConfig, match=r"no permissions|NOPERM") as refused:
            await store.increment("things", "c")
        assert refused.value.reason == "STORE_PERMISSION_DENIED"
    finally:
        await store.close()
    assert sorted(admin.keys("*")) == before
    refused_keys = {key for user, reason, key in _refusals(admin) if user == "kagi-gateway" and reason == "key"}
    assert refused_keys
    assert all(key.startswith(f"kagi:{{{service}}}:") for key in refused_keys)


@pytest.mark.parametrize("component", COMPONENTS)
def test_no_user_reaches_another_namespaces_keys(acl_redis: SecuredRedis, admin: redis.Redis, component: str) -> None:
    """A component's user reads and writes its own keys, the service-wide group and a spread aggregate's group
    (`kagi:{ns}:...`, `kagi:{ns:<bucket>.<salt>}:...`), and is refused (NOPERM) every key of every other
    namespace, including names that merely start like its own (`ca-other`, `cax`)."""
    client = _client(acl_redis, f"kagi-{component}")
    try:
        for shape in KEY_SHAPES:
            own = shape.format(ns=component)
            client.hset(own, "v", b"1")
            assert client.hmget(own, ["v"]) == [b"1"]
        others = [c for c in COMPONENTS if c != component] + [f"{component}-other", f"{component}x", "other"]
        for namespace in others:
            for shape in KEY_SHAPES:
                key = shape.format(ns=namespace)
                with pytest.raises(NoPermissionError):
                    client.hmget(key, ["v"])
                with pytest.raises(NoPermissionError):
                    client.hset(key, "v", b"planted")
    finally:
        client.close()
    assert not [
        k for k in admin.keys("*") if not os.fsdecode(k).startswith((f"kagi:{{{component}}}:", f"kagi:{{{component}:"))
    ]


def test_a_script_cannot_reach_keys_it_builds_outside_the_users_patterns(
    acl_redis: SecuredRedis, admin: redis.Redis
) -> None:
    """A Lua script run as kagi-gateway on its own declared key, that reads or writes a key whose name it builds
    from an argument (as the store's list script builds entry names), is refused for a service's key."""
    admin.hset("kagi:{ca}:e:things:a", "v", b"secret")
    client = _client(acl_redis, "kagi-gateway")
    read = client.register_script("redis.call('EXISTS', KEYS[1]); return redis.call('HMGET', ARGV[1], 'v')")
    write = client.register_script("return redis.call('HSET', ARGV[1], 'v', 'planted')")
    try:
        assert read(keys=["kagi:{gateway}:i:things"], args=["kagi:{gateway}:e:things:a"]) == [None]
        with pytest.raises(ResponseError, match=r"can.t access|no permissions"):
            read(keys=["kagi:{gateway}:i:things"], args=["kagi:{ca}:e:things:a"])
        with pytest.raises(ResponseError, match=r"can.t access|no permissions"):
            write(keys=["kagi:{gateway}:i:things"], args=["kagi:{ca}:e:things:a"])
    finally:
        client.close()
    assert admin.hgetall("kagi:{ca}:e:things:a") == {b"v": b"secret"}
    assert ("kagi-gateway", "key", "kagi:{ca}:e:things:a") in _refusals(admin)


@pytest.mark.parametrize("user", [f"kagi-{component}" for component in COMPONENTS])
def test_component_users_run_only_the_stores_commands(acl_redis: SecuredRedis, user: str) -> None:
    """Outside the driver's commands a component's user is refused: no key listing, no flush, no reading or
    changing the configuration, no ACL, no monitoring, no other database's keys through MOVE or COPY."""
    client = _client(acl_redis, user)
    namespace = user.removeprefix("kagi-")
    own = f"kagi:{{{namespace}}}:e:things:a"
    refused = [
        ("KEYS", "*"),
        ("SCAN", "0"),
        ("FLUSHALL",),
        ("FLUSHDB",),
        ("CONFIG", "GET", "*"),
        ("CONFIG", "SET", "appendonly", "no"),
        ("ACL", "LIST"),
        ("ACL", "SETUSER", user, "+@all"),
        ("MONITOR",),
        ("SHUTDOWN",),
        ("SCRIPT", "FLUSH"),
        ("EVAL", "return 1", "0"),
        ("GET", own),
        ("SUBSCRIBE", "kagi"),
        ("MOVE", own, "1"),
        ("COPY", own, f"kagi:{{{namespace}}}:e:things:b", "DB", "1"),
        ("SELECT", "1"),
    ]
    try:
        for command in refused:
            with pytest.raises(NoPermissionError):
                client.execute_command(*command)  # type: ignore[no-untyped-call]
        assert client.ping()
    finally:
        client.close()


async def test_writes_survive_a_restart_with_the_default_user_off(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A Redis killed and restarted reloads from its AOF every write the components' users made: Redis 7.0
    replays the AOF's transactions (the effects of kagi's scripts) as the `default` user, so that user is off
    (no one can log in as it) yet keeps every permission; a restricted `default` drops those writes silently."""
    directory = tmp_path_factory.mktemp("redis-acl-restart")
    server = SecuredRedis(directory, ["--aclfile", str(write_acl_file(directory, PASSWORDS))])
    server.start()
    try:
        written = {}
        for component in COMPONENTS:
            store = open_store(_url(server, f"kagi-{component}"), namespace=component, state_dir=None)
            try:
                written[component] = (await store.create("things", "a", b"kept"), await store.increment("n", "c"))
            finally:
                await store.close()
        server.stop()
        server.start()
        for component in COMPONENTS:
            store = open_store(_url(server, f"kagi-{component}"), namespace=component, state_dir=None)
            try:
                entry, count = written[component]
                assert await store.get("things", "a") == entry
                assert await store.increment("n", "c") == count + 1
            finally:
                await store.close()
        admin = _client(server, "kagi-admin")
        try:
            assert {(user, what) for user, _, what in _refusals(admin) if what != "config|get"} == set()
        finally:
            admin.close()
    finally:
        server.stop()

"""A Redis store refuses (at start, with a message naming the settings) a server that would lose acknowledged
state: no AOF, or an eviction policy. CONFIG first; INFO where CONFIG is disabled (managed Redis); where
neither tells, KAGI_STORE_ASSUME_DURABLE=1 vouches; KAGI_STORE_ALLOW_VOLATILE=1 accepts a volatile one."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from kagi.store import InvalidStoreConfig, StoreUnavailable, check_at_start, open_store
from kagi.store.redis import RedisStore
from tests.conftest import REDIS_BINARY, RedisServer
from tests.support.ports import free_port

pytestmark = pytest.mark.redis


@pytest.fixture(autouse=True)
def _no_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAGI_STORE_ALLOW_VOLATILE", raising=False)
    monkeypatch.delenv("KAGI_STORE_ASSUME_DURABLE", raising=False)


@pytest.fixture
def custom_redis(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Start a redis-server with extra arguments (renamed commands) on a free port."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(*extra: str) -> str:
        assert REDIS_BINARY is not None
        port = free_port()
        directory = tmp_path / f"r{port}"
        directory.mkdir()
        argv = [REDIS_BINARY, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory), "--save", ""]
        processes.append(subprocess.Popen([*argv, *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        client = redis.Redis(port=port)
        for _ in range(300):
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                time.sleep(0.02)  # polling a starting process
        return f"redis://127.0.0.1:{port}/0"

    yield start
    for process in processes:
        process.kill()
        process.wait(timeout=10)


async def _refusal(url: str) -> InvalidStoreConfig:
    store = open_store(url, namespace="durability", state_dir=None)
    try:
        with pytest.raises(InvalidStoreConfig) as refused:
            await check_at_start(store)
        with pytest.raises(InvalidStoreConfig):  # and every later call, too
            await store.get("c", "k")
        return refused.value
    finally:
        await store.close()


async def _accepted(url: str, **flags: bool) -> None:
    store = (
        RedisStore(url, namespace="durability", **flags)
        if flags
        else open_store(url, namespace="durability", state_dir=None)
    )
    try:
        await check_at_start(store)
        await store.increment("c", "served")
    finally:
        await store.close()


async def test_redis_without_aof_is_refused_naming_the_settings(
    redis_factory: Callable[..., RedisServer],
) -> None:
    """A redis-server with appendonly no is refused at start; the message names appendonly, maxmemory-policy
    and both override variables."""
    server = redis_factory(appendonly=False)
    refusal = await _refusal(server.url)
    assert refusal.reason == "STORE_NOT_DURABLE"
    for needle in ("appendonly", "noeviction", "KAGI_STORE_ALLOW_VOLATILE", "KAGI_STORE_ASSUME_DURABLE"):
        assert needle in refusal.message


async def test_redis_with_aof_and_noeviction_is_accepted(redis_factory: Callable[..., RedisServer]) -> None:
    """appendonly yes with the default maxmemory-policy noeviction opens and serves."""
    await _accepted(redis_factory().url)


async def test_redis_with_an_eviction_policy_is_refused(redis_factory: Callable[..., RedisServer]) -> None:
    """appendonly yes but maxmemory-policy allkeys-lru is refused, naming the policy."""
    server = redis_factory()
    redis.Redis(port=server.port).config_set("maxmemory-policy", "allkeys-lru")
    assert "allkeys-lru" in (await _refusal(server.url)).message


async def test_allow_volatile_accepts_a_redis_without_aof(
    redis_factory: Callable[..., RedisServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """KAGI_STORE_ALLOW_VOLATILE=1 (or allow_volatile=True) accepts a Redis without AOF, for tests."""
    server = redis_factory(appendonly=False)
    await _accepted(server.url, allow_volatile=True)
    monkeypatch.setenv("KAGI_STORE_ALLOW_VOLATILE", "1")
    await _accepted(server.url)


async def test_without_config_the_check_falls_back_to_info(custom_redis: Callable[..., str]) -> None:
    """With CONFIG disabled (managed Redis), INFO persistence / INFO memory decide: AOF on is accepted, off
    refused."""
    await _accepted(custom_redis("--appendonly", "yes", "--rename-command", "CONFIG", ""))
    refusal = await _refusal(custom_redis("--appendonly", "no", "--rename-command", "CONFIG", ""))
    assert "appendonly is no" in refusal.message


async def test_where_nothing_tells_assume_durable_is_required(
    custom_redis: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With CONFIG and INFO both disabled the store is refused unless KAGI_STORE_ASSUME_DURABLE=1."""
    url = custom_redis("--appendonly", "yes", "--rename-command", "CONFIG", "", "--rename-command", "INFO", "")
    assert "neither CONFIG GET nor INFO" in (await _refusal(url)).message
    monkeypatch.setenv("KAGI_STORE_ASSUME_DURABLE", "1")
    await _accepted(url)


async def test_a_redis_that_is_down_at_start_is_not_a_refusal() -> None:
    """Nothing listening is StoreUnavailable on use, and check_at_start lets readiness wait it out."""
    store = open_store(f"redis://127.0.0.1:{free_port()}/0", namespace="durability", state_dir=None)
    try:
        await check_at_start(store)
        with pytest.raises(StoreUnavailable):
            await store.get("c", "k")
    finally:
        await store.close()

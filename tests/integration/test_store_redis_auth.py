"""The Redis store authenticates as a named user (`redis://user:password@host:port/db`), and a refused login never
shows the password: not in the error's message or metadata, not in the chained redis-py error or a traceback,
not in what the gateway logs when its rate-limit counters cannot be reached.

The server is a real redis-server with the deployment's ACL file (deploy/redis/users.acl through
deploy/redis/users-acl.sh), whose `default` user is off.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator

import pytest
import structlog
from structlog.testing import capture_logs

import gateway.ratelimit
from gateway.metrics import GatewayMetrics
from gateway.ratelimit import RateLimited, RateLimiter, Rule
from kagi.store import InvalidStoreConfig, StoreError, StoreUnavailable, open_store
from tests.support.secured_redis import SecuredRedis, exercise_store, write_acl_file

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]

PASSWORD = "otp-store-password-7d1c0f"
WRONG = "wrong-password-3b9e51a2"


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredRedis]:
    """Yield a redis-server whose users are the deployment's, kagi-otp with PASSWORD."""
    directory = tmp_path_factory.mktemp("redis-auth")
    passwords = {user: f"{user}-password" for user in ("kagi-ca", "kagi-enrollment", "kagi-gateway")}
    passwords |= {"kagi-otp": PASSWORD, "kagi-health": "health", "kagi-admin": "admin"}
    server = SecuredRedis(directory, ["--aclfile", str(write_acl_file(directory, passwords))])
    server.start()
    yield server
    server.stop()


def _everything_shown(error: BaseException) -> str:
    """Return all an operator or a client could see of `error`: its text, repr, metadata and fields, and the
    traceback a logger prints, with every chained cause."""
    shown = [str(error), repr(error), "".join(traceback.format_exception(error))]
    if isinstance(error, StoreError):
        shown += [repr(getattr(error, "metadata", {})), repr(getattr(error, "fields", {}))]
    return "\n".join(shown)


async def test_the_right_user_and_password_serve_every_call(acl_redis: SecuredRedis) -> None:
    """kagi-otp with its password works through every kind of store call."""
    store = open_store(f"redis://kagi-otp:{PASSWORD}@127.0.0.1:{acl_redis.port}/0", namespace="otp", state_dir=None)
    try:
        await exercise_store(store)
        assert PASSWORD not in repr(store)
    finally:
        await store.close()


@pytest.mark.parametrize(
    "credentials",
    [f"kagi-otp:{WRONG}@", f"nobody:{WRONG}@", f":{WRONG}@", ""],
    ids=["wrong password", "unknown user", "password without a user (the default user, off)", "no credentials"],
)
async def test_a_refused_login_is_store_unavailable_and_never_shows_the_password(
    acl_redis: SecuredRedis, credentials: str
) -> None:
    """A wrong password, an unknown user, the disabled `default` user or no login at all: StoreUnavailable,
    whose message, metadata and traceback (the redis-py error chained) never contain the password."""
    store = open_store(f"redis://{credentials}127.0.0.1:{acl_redis.port}/0", namespace="otp", state_dir=None)
    try:
        with pytest.raises(StoreUnavailable) as refused:
            await store.create("things", "a", b"must not land")
        with pytest.raises(StoreUnavailable) as again:
            await store.get("things", "a")
    finally:
        await store.close()
    for error in (refused.value, again.value):
        shown = _everything_shown(error)
        assert WRONG not in shown
        assert PASSWORD not in shown
    assert WRONG not in repr(store)


def test_a_malformed_url_is_refused_without_echoing_the_password() -> None:
    """A bad option in a URL that carries a password: InvalidStoreConfig naming the option, not the URL."""
    with pytest.raises(InvalidStoreConfig) as refused:
        open_store(f"redis://kagi-otp:{WRONG}@127.0.0.1:1/0?socket_timeout=soon", namespace="otp", state_dir=None)
    assert "socket_timeout" in str(refused.value.fields)
    assert WRONG not in _everything_shown(refused.value)


async def test_the_gateway_logs_a_refused_login_without_the_password(
    acl_redis: SecuredRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway's rate limiter with a wrong password counts in its own process and logs that once; the log
    event names no password, and requests are still counted (the third of a burst of two is refused)."""
    store = open_store(
        f"redis://kagi-gateway:{WRONG}@127.0.0.1:{acl_redis.port}/0", namespace="gateway", state_dir=None
    )
    limiter = RateLimiter({"step1": Rule(rate=2, period=60.0, burst=2)}, GatewayMetrics(), store=store)
    try:
        with capture_logs() as events:
            # A fresh logger: the module's own may have been cached, with the processors of the time, by a test
            # that ran the command line in this process (structlog's cache_logger_on_first_use).
            monkeypatch.setattr(gateway.ratelimit, "log", structlog.get_logger("kagi.gateway.ratelimit"))
            await limiter.hit("step1", "203.0.113.7")
            await limiter.hit("step1", "203.0.113.7")
            with pytest.raises(RateLimited):
                await limiter.hit("step1", "203.0.113.7")
    finally:
        await limiter.close()
    assert events, "the fallback to local counters is logged"
    assert WRONG not in repr(events)

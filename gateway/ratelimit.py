"""Rate limits on the routes that cost the services most: step 1 and step 8 (an argon2id each) per client address
and per account or token, and OCSP requests with a nonce (a signature each) per client address.

Each limit is a fixed-window counter: at most `burst` requests in a window of `burst / rate` periods, which
averages `rate` per period and lets a burst through. Counters live in Redis when the gateway has one
(KAGI_STORE_URL redis://..., shared by every replica), else in this process; while Redis does not answer, this
process's counters stand in for it. A refused request gets 429 with Retry-After (seconds to the window's end).

KAGI_GATEWAY_RATE_LIMITS overrides them: `off`, or `name=COUNT/PERIOD[:BURST]` items separated by commas (PERIOD
`s`, `m`, `h` or e.g. `10m`; BURST defaults to COUNT), or `name=off`; names not given keep their defaults.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware
from cryptography import x509
from cryptography.x509 import ocsp

from gateway.edge import ClientAddresses, client_key
from gateway.errors import HttpError
from gateway.metrics import GatewayMetrics
from kagi.errors import InvalidArgument
from kagi.store import KeyValueStore

log = structlog.get_logger("kagi.gateway.ratelimit")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

COLLECTION = "ratelimit"
MSG_RATE_LIMITED = (
    "しばらく時間をおいてからやり直してください / too many requests: retry after the number of seconds in Retry-After"
)


@dataclass(frozen=True, slots=True)
class Rule:
    """One limit: `rate` requests per `period` seconds on average, `burst` at once."""

    rate: int
    period: float
    burst: int

    @property
    def window(self) -> float:
        """Return the fixed window's length in seconds: `burst` requests fit in it."""
        return self.period * self.burst / self.rate


DEFAULT_RULES: Mapping[str, Rule] = {
    # Step 1 and step 8 cost an argon2id each: 10 a minute per address (a company behind one NAT shares it).
    "enrollment_address": Rule(10, 60, 20),
    "activation_address": Rule(10, 60, 20),
    # Per account (step 1's branch, type and number) and per token (step 8's service and user IDs): strict.
    "enrollment_account": Rule(5, 600, 5),
    "activation_token": Rule(5, 600, 5),
    # OCSP requests with a nonce force a signature each; cacheable ones (no nonce) are not limited.
    "ocsp_nonce_address": Rule(60, 60, 120),
}
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_ITEM = re.compile(r"(?P<count>\d+)/(?P<periods>\d*)(?P<unit>[smh])(?::(?P<burst>\d+))?")


def parse_rate_limits(text: str | None) -> dict[str, Rule]:
    """Read KAGI_GATEWAY_RATE_LIMITS (None or empty: the defaults; `off`: none)."""
    rules = dict(DEFAULT_RULES)
    if text is None or not text.strip():
        return rules
    if text.strip().lower() == "off":
        return {}
    problems: dict[str, str] = {}
    for item in text.split(","):
        name, _, value = item.strip().partition("=")
        name, value = name.strip(), value.strip().lower()
        if name not in DEFAULT_RULES:
            problems[name or item] = f"unknown rate limit; one of {', '.join(sorted(DEFAULT_RULES))}"
            continue
        if value == "off":
            rules.pop(name, None)
            continue
        match = _ITEM.fullmatch(value)
        if match is None or int(match["count"]) < 1 or (match["burst"] is not None and int(match["burst"]) < 1):
            problems[name] = "must be COUNT/PERIOD[:BURST] (e.g. 10/m:20, 5/10m) or off"
            continue
        count = int(match["count"])
        periods = int(match["periods"] or 1)
        if periods < 1:
            problems[name] = "the period must be at least 1"
            continue
        rules[name] = Rule(count, periods * _UNITS[match["unit"]], int(match["burst"] or count))
    if problems:
        raise InvalidArgument("invalid KAGI_GATEWAY_RATE_LIMITS", fields=problems)
    return rules


class RateLimited(Exception):
    """A refused request: which limit, and after how many seconds to retry."""

    def __init__(self, limit: str, retry_after: int) -> None:
        super().__init__(limit)
        self.limit = limit
        self.retry_after = retry_after

    def http_error(self) -> HttpError:
        """Return the JSON 429 answer."""
        return HttpError(429, "RATE_LIMITED", MSG_RATE_LIMITED, headers={"Retry-After": str(self.retry_after)})


class _LocalCounters:
    """_LocalCounters are fixed-window counters in this process (expired ones swept now and then)."""

    def __init__(self) -> None:
        self._counts: dict[str, tuple[float, int]] = {}
        self._next_sweep = 0.0

    def increment(self, key: str, window: float, now: float) -> int:
        if now >= self._next_sweep:
            self._counts = {k: v for k, v in self._counts.items() if v[0] > now}
            self._next_sweep = now + 10.0
        expires, count = self._counts.get(key, (0.0, 0))
        if expires <= now:
            expires, count = now + window, 0
        self._counts[key] = (expires, count + 1)
        return count + 1


class RateLimiter:
    """Counts requests against the rules; `store` (Redis) shares the counters among replicas."""

    def __init__(
        self,
        rules: Mapping[str, Rule],
        metrics: GatewayMetrics,
        *,
        store: KeyValueStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.rules = dict(rules)
        self._metrics = metrics
        self._store = store
        self._clock = clock
        self._local = _LocalCounters()
        self._store_failing_since: float | None = None

    def limits(self, name: str) -> bool:
        """Say whether the rule `name` is on."""
        return name in self.rules

    async def hit(self, name: str, subject: str) -> None:
        """Count one request of `subject` against the rule `name`; raise RateLimited over the limit."""
        rule = self.rules.get(name)
        if rule is None:
            return
        now = self._clock()
        window = rule.window
        index = math.floor(now / window)
        digest = hashlib.sha256(subject.encode()).hexdigest()[:32]  # no account number or address in the store
        key = f"{name}/{digest}/{index}"
        count = await self._increment(key, window, now)
        if count > rule.burst:
            self._metrics.rate_limited.labels(name).inc()
            raise RateLimited(name, max(1, math.ceil((index + 1) * window - now)))

    async def _increment(self, key: str, window: float, now: float) -> int:
        if self._store is not None:
            try:
                count = await self._store.increment(COLLECTION, key, ttl=window + 1)
            except Exception as exc:  # Redis down: this process's counters stand in, the gateway keeps serving
                if self._store_failing_since is None:
                    self._store_failing_since = now
                    log.warning("rate-limit counters unavailable; counting in this process", error=str(exc))
            else:
                self._store_failing_since = None
                return count
        return self._local.increment(key, window, now)

    async def close(self) -> None:
        """Close the store."""
        if self._store is not None:
            await self._store.close()


def _json_body(raw: bytes) -> dict[str, object]:
    try:
        parsed = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _subject(body: Mapping[str, object], *names: str) -> str | None:
    values = [body.get(name) for name in names]
    if not all(isinstance(value, str) and value for value in values):
        return None
    return "/".join(str(value) for value in values)


def ocsp_has_nonce(der: bytes) -> bool:
    """Say whether an OCSP request asks for a nonce (its answer is then signed for it alone)."""
    try:
        request = ocsp.load_der_ocsp_request(der)
        return any(isinstance(extension.value, x509.OCSPNonce) for extension in request.extensions)
    except ValueError:
        return False


class OcspLimit:
    """Counts OCSP requests that carry a nonce per client address (PkiFiles calls it)."""

    def __init__(self, limiter: RateLimiter, addresses: ClientAddresses) -> None:
        self._limiter = limiter
        self._addresses = addresses

    async def __call__(self, request: web.Request, der: bytes) -> int | None:
        """Call returns None when the request may go on, else the seconds after which to retry."""
        if not self._limiter.limits("ocsp_nonce_address") or not ocsp_has_nonce(der):
            return None
        try:
            await self._limiter.hit("ocsp_nonce_address", client_key(self._addresses.of(request)))
        except RateLimited as exc:
            return exc.retry_after
        return None


def rate_limits(limiter: RateLimiter, addresses: ClientAddresses) -> Middleware:
    """Return the middleware counting step 1 (per address, then per account) and step 8 (per address,
    then per token). The address is counted first, so requests refused by it never count against an account.
    It sits inside the frame, which renders the 429."""
    routes = {("POST", "/v1/enrollments"): "enrollment", ("POST", "/v1/app/activation"): "activation"}
    subjects = {
        "enrollment": ("enrollment_account", ("branch_code", "account_type", "account_number")),
        "activation": ("activation_token", ("service_id", "user_id")),
    }

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        kind = routes.get((request.method, resource.canonical)) if resource is not None else None
        if kind is None:
            return await handler(request)
        rule, fields = subjects[kind]
        try:
            await limiter.hit(f"{kind}_address", client_key(addresses.of(request)))
            if limiter.limits(rule):
                # read() keeps the body for the handler and refuses one over the size limit (413).
                subject = _subject(_json_body(await request.read()), *fields)
                if subject is not None:
                    await limiter.hit(rule, subject)
        except RateLimited as exc:
            raise exc.http_error() from None
        return await handler(request)

    return middleware

"""What each caller may spend: requests per window, open streams, model tokens per budget window.

The counts live in Redis when REDIS_URL is set, so every replica counts against the same limits,
and in this process otherwise. The `limits` library does the request window (a moving window: the
31st request within any 60 s is refused, not only within a clock minute) and the budget's fixed
window, in Redis through a client and a circuit breaker from research_agent/redis_client.py, as the
cache's. Open streams are a Redis sorted set of leases (RedisSlots), because `limits` counts events,
not things that are held.

Answers carry the RateLimit fields of draft-ietf-httpapi-ratelimit-headers-10:
`RateLimit-Policy: "requests";q=30;w=60` (the limit) and `RateLimit: "requests";r=29;t=60` (what
is left, and in how many seconds it is back). A 429 carries them for the limit that was hit, and
Retry-After.
"""

import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import TypeVar

from limits import RateLimitItem, RateLimitItemPerSecond
from limits import parse as parse_limit
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter
from limits.errors import StorageError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from ..observability.metrics import LIMITS_DEGRADED
from ..redis_client import CircuitBreaker, connect
from ..settings import Settings
from ..web.errors import LimitError, LimitsUnavailableError
from .keys import Caller

logger = logging.getLogger(__name__)

T = TypeVar("T")
KEY_PREFIX = "research-agent:limits"
# A refused stream cannot know when another of the caller's streams ends: try again shortly.
STREAM_RETRY_AFTER_SECONDS = 5


def _seconds_until(reset_time: float) -> int:
    return max(math.ceil(reset_time - time.time()), 0)


class RedisSlots:
    """Open streams per caller in Redis: a sorted set whose members are streams and whose scores
    are the time each stream's lease ends.

    Acquiring is one MULTI/EXEC transaction: drop the leases that ended, add ours, count. Over the
    cap, ours is removed again and the stream refused. Redis runs transactions one after another,
    so two replicas racing for the last slot cannot both get it (at worst both are refused, never
    both admitted). A replica that crashes holding slots cannot release them; their leases end
    after `lease_seconds` and the next acquire drops them, so slots never leak for long.
    """

    def __init__(self, redis: Redis, lease_seconds: float):
        self.redis = redis
        self.lease_seconds = lease_seconds

    @staticmethod
    def _key(caller_id: str) -> str:
        return f"{KEY_PREFIX}:streams:{caller_id}"

    async def acquire(self, caller_id: str, cap: int) -> str | None:
        key, member, now = self._key(caller_id), uuid.uuid4().hex, time.time()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(key, "-inf", now)
            pipe.zadd(key, {member: now + self.lease_seconds})
            pipe.zcard(key)
            pipe.expire(key, math.ceil(self.lease_seconds))  # an idle caller leaves no key behind
            _, _, count, _ = await pipe.execute()
        if count > cap:
            await self.redis.zrem(key, member)
            return None
        return member

    async def release(self, caller_id: str, member: str) -> None:
        await self.redis.zrem(self._key(caller_id), member)


class LocalSlots:
    """Open streams per caller in this process (one event loop: no lock needed)."""

    def __init__(self) -> None:
        self.open: Counter[str] = Counter()

    async def acquire(self, caller_id: str, cap: int) -> str | None:
        if self.open[caller_id] >= cap:
            return None
        self.open[caller_id] += 1
        return "local"

    async def release(self, caller_id: str, member: str) -> None:
        self.open[caller_id] -= 1
        if self.open[caller_id] <= 0:
            del self.open[caller_id]


@dataclass
class Counters:
    """Where the counts live: Redis, shared by every replica, or this process."""

    name: str
    storage: Storage
    slots: RedisSlots | LocalSlots

    def __post_init__(self) -> None:
        self.window = MovingWindowRateLimiter(self.storage)
        self.budget = FixedWindowRateLimiter(self.storage)


@dataclass
class Grant:
    """A request that passed the limits: who it is, the RateLimit fields to send, how to pay.

    `reserved` tokens were taken from the budget at admission, in `counters`; `spend` turns them
    into what the run really used, `release` gives back what no run used."""

    caller: Caller
    headers: dict[str, str]
    quotas: "Quotas"
    reserved: int = 0
    counters: Counters | None = None

    async def spend(self, tokens: int) -> None:
        await self.quotas.spend(self, tokens)

    async def release(self) -> None:
        if self.reserved:
            await self.quotas.spend(self, 0)


class Quotas:
    def __init__(self, settings: Settings):
        self.fail_mode = settings.LIMITS_FAIL_MODE
        self.rate: RateLimitItem | None = None
        if settings.rate_limit_enabled:
            parsed = parse_limit(settings.RATE_LIMIT)  # e.g. RateLimitItemPerMinute(30)
            self.rate = type(parsed)(parsed.amount, parsed.multiples, namespace="requests")
        self.auth_failures: RateLimitItem | None = None
        if settings.AUTH_FAILURE_LIMIT.lower() != "off":
            parsed = parse_limit(settings.AUTH_FAILURE_LIMIT)
            self.auth_failures = type(parsed)(
                parsed.amount, parsed.multiples, namespace="auth-failures"
            )
        self.budget: RateLimitItem | None = None
        if settings.TOKEN_BUDGET_PER_DAY > 0:
            self.budget = RateLimitItemPerSecond(
                settings.TOKEN_BUDGET_PER_DAY,
                settings.TOKEN_BUDGET_WINDOW_SECONDS,
                namespace="tokens",
            )
        self.reservation = settings.TOKENS_RESERVED_PER_RUN
        self.max_streams = settings.MAX_STREAMS_PER_CALLER
        self.local = Counters("local", MemoryStorage(), LocalSlots())
        self.shared: Counters | None = None
        self.redis: Redis | None = None
        self.breaker = CircuitBreaker(
            settings.CACHE_BREAKER_SECONDS,
            LIMITS_DEGRADED,
            logger,
            down="redis unavailable, limits " + _FAIL_MODE_EFFECT[self.fail_mode],
            up="redis is back, limits shared again",
            fail_mode=self.fail_mode,
        )
        if settings.REDIS_URL:
            self.redis = connect(settings.REDIS_URL)
            storage = RedisStorage(
                "async+" + settings.REDIS_URL,
                implementation="redispy",  # the `redis` package we pin, not coredis
                key_prefix=KEY_PREFIX,
                wrap_exceptions=True,
                connection_pool=self.redis.connection_pool,
            )
            # A stream's agent run ends within REQUEST_TIMEOUT_SECONDS; 30 s more for a slow reader.
            lease = settings.REQUEST_TIMEOUT_SECONDS + 30
            self.shared = Counters("redis", storage, RedisSlots(self.redis, lease))

    def describe(self) -> dict:
        """For the start-up log line."""
        return {
            "rate_limit": _describe(self.rate),
            "auth_failure_limit": _describe(self.auth_failures),
            "max_streams_per_caller": self.max_streams or "off",
            "token_budget": f"{self.budget.amount}/{self.budget.get_expiry()}s"
            if self.budget
            else "off",
            "counted_in": self.shared.name if self.shared else "process",
            "fail_mode": self.fail_mode if self.shared else None,
        }

    # --- Failed authentication, per client address ---------------------------------------------

    async def failed_auth(self, address: str) -> None:
        """Count a 401 for this address; 429 instead once it has had AUTH_FAILURE_LIMIT of them.
        One atomic hit: requests sent together cannot all slip under the limit. Uncounted while
        Redis is down in LIMITS_FAIL_MODE=closed: the 401 stands, the other requests get 503."""
        if self.auth_failures is None:
            return
        counted = None
        with suppress(LimitsUnavailableError):
            counted = await self._counted("auth_failures", lambda c: self._hit_failure(c, address))
        if counted is not None and not counted[0]:
            raise self._auth_throttled(counted[1])

    async def check_auth(self, address: str) -> None:
        """429 for a right key from an address that is over its failures too: a guesser must not
        learn which of its guesses was right from a 200 among the 429s."""
        if self.auth_failures is None:
            return
        counted = None
        with suppress(LimitsUnavailableError):  # admit() answers 503 for it next
            counted = await self._counted(
                "auth_failures",
                lambda c: c.window.get_window_stats(self.auth_failures, f"addr:{address}"),
            )
        if counted is not None and counted.remaining <= 0:
            raise self._auth_throttled(_seconds_until(counted.reset_time))

    async def _hit_failure(self, counters: Counters, address: str) -> tuple[bool, int]:
        allowed = await counters.window.hit(self.auth_failures, f"addr:{address}")
        reset_time, _ = await counters.window.get_window_stats(
            self.auth_failures, f"addr:{address}"
        )
        return allowed, _seconds_until(reset_time)

    def _auth_throttled(self, reset_in: int) -> LimitError:
        # Not logged here: the access log's line is the one line a refused request costs.
        return LimitError(
            f"more than {self.auth_failures.amount} requests without a valid API key from this "
            f"address in {self.auth_failures.get_expiry()} s; try again in {reset_in} s",
            "too_many_auth_failures",
            {
                **_fields("auth-failures", self.auth_failures, 0, reset_in),
                "Retry-After": str(max(reset_in, 1)),
            },
        )

    # --- The three limits -------------------------------------------------------------------------

    async def admit(self, caller: Caller) -> Grant:
        """Count one request against the rate limit and check the budget; 429 if either is spent."""
        headers: dict[str, str] = {}
        if self.rate is not None:
            counted = await self._counted("rate_limit", lambda c: self._hit(c, caller))
            if counted is not None:
                allowed, reset_in, remaining = counted
                headers = _fields("requests", self.rate, remaining, reset_in)
                if not allowed:
                    self._rejected(caller, "rate_limited")
                    raise LimitError(
                        f"more than {self.rate.amount} requests in "
                        f"{self.rate.get_expiry()} s; try again in {reset_in} s",
                        "rate_limited",
                        {**headers, "Retry-After": str(max(reset_in, 1))},
                    )
        grant = Grant(caller, headers, self)
        if self.budget is not None:
            counted = await self._counted("budget", lambda c: self._reserve(c, caller))
            if counted is not None:
                grant.counters, before, reset_in = counted
                if before >= self.budget.amount:
                    await self._unreserve(grant.counters, caller, self.reservation)
                    self._rejected(caller, "budget_exhausted")
                    raise LimitError(
                        f"the token budget of {self.budget.amount} tokens per "
                        f"{self.budget.get_expiry()} s is used up; it renews in {reset_in} s",
                        "budget_exhausted",
                        {
                            **_fields("tokens", self.budget, 0, reset_in),
                            "Retry-After": str(max(reset_in, 1)),
                        },
                    )
                grant.reserved = self.reservation
        return grant

    async def spend(self, grant: Grant, tokens: int) -> None:
        """Charge a run's tokens against the caller's budget, less what its admission reserved
        (a cached answer costs 0: the reservation goes back). The answer is already made: a Redis
        failure here is logged, never sent to the client; the reservation then stays charged
        until the window ends."""
        reserved, grant.reserved = grant.reserved, 0
        if self.budget is None:
            return
        if grant.counters is not None and reserved:
            with suppress(StorageError, RedisError, OSError):
                if tokens > reserved:
                    await self._charge(grant.counters, grant.caller, tokens - reserved)
                else:
                    await self._unreserve(grant.counters, grant.caller, reserved - tokens)
            return
        if tokens > 0:
            with suppress(LimitsUnavailableError):
                await self._counted("spend", lambda c: self._charge(c, grant.caller, tokens))

    @asynccontextmanager
    async def stream_slot(self, caller: Caller) -> AsyncIterator[None]:
        """Hold one of the caller's MAX_STREAMS_PER_CALLER slots while the stream is open."""
        if self.max_streams <= 0:
            yield
            return
        held = await self._counted("streams", lambda c: self._acquire(c, caller))
        if held is not None and held[1] is None:
            self._rejected(caller, "too_many_streams")
            raise LimitError(
                f"{self.max_streams} streams are already open for this caller; wait until one ends",
                "too_many_streams",
                {
                    "RateLimit-Policy": f'"streams";q={self.max_streams};qu="concurrent-requests"',
                    "RateLimit": f'"streams";r=0;t={STREAM_RETRY_AFTER_SECONDS}',
                    "Retry-After": str(STREAM_RETRY_AFTER_SECONDS),
                },
            )
        try:
            yield
        finally:
            if held is not None:
                counters, member = held
                # If Redis is gone by now, the lease frees the slot.
                with suppress(StorageError, RedisError, OSError):
                    await counters.slots.release(caller.id, member)

    async def close(self) -> None:
        if self.redis is not None:
            with suppress(RedisError, OSError):
                await self.redis.aclose()

    # --- Where the counting happens ---------------------------------------------------------------

    async def _hit(self, counters: Counters, caller: Caller) -> tuple[bool, int, int]:
        allowed = await counters.window.hit(self.rate, caller.id)
        reset_time, remaining = await counters.window.get_window_stats(self.rate, caller.id)
        return allowed, _seconds_until(reset_time), max(remaining, 0)

    async def _reserve(self, counters: Counters, caller: Caller) -> tuple[Counters, int, int]:
        """Take TOKENS_RESERVED_PER_RUN from the budget and say what was spent before: one atomic
        INCRBY, so requests that arrive together each see the others' reservations. A request is
        admitted while anything was left, so the budget is overrun by at most one run (as long
        as a run stays within its reservation)."""
        key = self.budget.key_for(caller.id)
        spent = await counters.storage.incr(key, self.budget.get_expiry(), amount=self.reservation)
        reset_time = await counters.storage.get_expiry(key)
        return counters, spent - self.reservation, _seconds_until(reset_time)

    async def _charge(self, counters: Counters, caller: Caller, tokens: int) -> None:
        await counters.storage.incr(
            self.budget.key_for(caller.id), self.budget.get_expiry(), amount=tokens
        )

    async def _unreserve(self, counters: Counters, caller: Caller, tokens: int) -> None:
        if tokens <= 0:
            return
        key = self.budget.key_for(caller.id)
        left = await counters.storage.incr(key, self.budget.get_expiry(), amount=-tokens)
        if left < 0:  # the window ended while the run ran: the new one starts from 0, not below
            await counters.storage.incr(key, self.budget.get_expiry(), amount=-left)

    async def _acquire(self, counters: Counters, caller: Caller) -> tuple[Counters, str | None]:
        return counters, await counters.slots.acquire(caller.id, self.max_streams)

    async def _counted(self, operation: str, use: Callable[[Counters], Awaitable[T]]) -> T | None:
        """`use` the shared counters; when Redis fails, what LIMITS_FAIL_MODE says: the local
        counters ("local"), a 503 ("closed") or None, no limit ("open")."""
        if self.shared is None:
            return await use(self.local)
        if self.breaker.allow():
            try:
                result = await use(self.shared)
            except (StorageError, RedisError, OSError) as exc:
                self.breaker.failed(operation, getattr(exc, "storage_error", None) or exc)
            else:
                self.breaker.succeeded()
                return result
        if self.fail_mode == "local":
            return await use(self.local)
        if self.fail_mode == "closed":
            raise LimitsUnavailableError(math.ceil(self.breaker.open_seconds))
        return None

    @staticmethod
    def _rejected(caller: Caller, reason: str) -> None:
        logger.info("request over a limit", extra={"caller": caller.id, "reason": reason})


_FAIL_MODE_EFFECT = {
    "local": "counted in this process only",
    "closed": "cannot be checked: /v1 answers 503",
    "open": "not enforced",
}


def _describe(item: RateLimitItem | None) -> str:
    return f"{item.amount}/{item.get_expiry()}s" if item else "off"


def _fields(policy: str, item: RateLimitItem, remaining: int, reset_in: int) -> dict[str, str]:
    return {
        "RateLimit-Policy": f'"{policy}";q={item.amount};w={item.get_expiry()}',
        "RateLimit": f'"{policy}";r={remaining};t={reset_in}',
    }

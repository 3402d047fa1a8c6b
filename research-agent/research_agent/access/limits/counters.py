"""Where the limits count: in Redis when REDIS_URL is set, so every replica counts against the same
limits, and in this process otherwise; and, when Redis fails, what LIMITS_FAIL_MODE says.

The `limits` library counts events (the request window, the budget's fixed window), in Redis
through a client and a circuit breaker from research_agent/redis_client.py, as the cache's. Open
streams are a Redis sorted set of leases (RedisSlots), because `limits` counts events, not things
that are held.
"""

import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import TypeVar

from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter
from limits.errors import StorageError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from ...observability.metrics import LIMITS_DEGRADED
from ...redis_client import CircuitBreaker, connect
from ...settings import AccessSettings, CacheSettings
from ...slots import HeldSlots
from ...web.errors import LimitsUnavailableError

T = TypeVar("T")
KEY_PREFIX = "research-agent:limits"
# A failing Redis, as `limits` wraps it (StorageError) or as the client raises it.
STORAGE_ERRORS = (StorageError, RedisError, OSError)

_FAIL_MODE_EFFECT = {
    "local": "counted in this process only",
    "closed": "cannot be checked: /v1 answers 503",
    "open": "not enforced",
}


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
    """Open streams per caller in this process (slots.py), as RedisSlots holds them in Redis."""

    def __init__(self) -> None:
        self.open = HeldSlots()
        self.releases: dict[str, Callable[[], None]] = {}

    async def acquire(self, caller_id: str, cap: int) -> str | None:
        if self.open.full(caller_id, cap):
            return None
        member = uuid.uuid4().hex
        self.releases[member] = self.open.take(caller_id)
        return member

    async def release(self, caller_id: str, member: str) -> None:
        if release := self.releases.pop(member, None):
            release()


@dataclass
class Counters:
    """Where the counts live: Redis, shared by every replica, or this process."""

    name: str
    storage: Storage
    slots: RedisSlots | LocalSlots

    def __post_init__(self) -> None:
        self.window = MovingWindowRateLimiter(self.storage)
        self.budget = FixedWindowRateLimiter(self.storage)


class Counting:
    """The counters every limit counts in: this process's, Redis's when REDIS_URL is set, and the
    breaker that chooses between them. One for all the limits, so that a Redis outage is one
    warning and one `research_limits_degraded`, whichever limit met it first."""

    def __init__(
        self,
        settings: AccessSettings,
        cache: CacheSettings,
        run_timeout_seconds: float,
        logger: logging.Logger,
    ):
        self.fail_mode = settings.LIMITS_FAIL_MODE
        self.local = Counters("local", MemoryStorage(), LocalSlots())
        self.shared: Counters | None = None
        self.redis: Redis | None = None
        self.breaker = CircuitBreaker(
            cache.CACHE_BREAKER_SECONDS,
            LIMITS_DEGRADED,
            logger,
            down="redis unavailable, limits " + _FAIL_MODE_EFFECT[self.fail_mode],
            up="redis is back, limits shared again",
            fail_mode=self.fail_mode,
        )
        if cache.REDIS_URL:
            self.redis = connect(cache.REDIS_URL)
            storage = RedisStorage(
                "async+" + cache.REDIS_URL,
                implementation="redispy",  # the `redis` package we pin, not coredis
                key_prefix=KEY_PREFIX,
                wrap_exceptions=True,
                connection_pool=self.redis.connection_pool,
            )
            # A stream's agent run ends within REQUEST_TIMEOUT_SECONDS; 30 s more for a slow reader.
            lease = run_timeout_seconds + 30
            self.shared = Counters("redis", storage, RedisSlots(self.redis, lease))

    def describe(self) -> dict:
        return {
            "counted_in": self.shared.name if self.shared else "process",
            "fail_mode": self.fail_mode if self.shared else None,
        }

    async def counted(self, operation: str, use: Callable[[Counters], Awaitable[T]]) -> T | None:
        """`use` the shared counters; when Redis fails, what LIMITS_FAIL_MODE says: the local
        counters ("local"), a 503 ("closed") or None, no limit ("open")."""
        if self.shared is None:
            return await use(self.local)
        if self.breaker.allow():
            try:
                result = await use(self.shared)
            except STORAGE_ERRORS as exc:
                self.breaker.failed(operation, getattr(exc, "storage_error", None) or exc)
            else:
                self.breaker.succeeded()
                return result
        if self.fail_mode == "local":
            return await use(self.local)
        if self.fail_mode == "closed":
            raise LimitsUnavailableError(math.ceil(self.breaker.open_seconds))
        return None

    async def close(self) -> None:
        if self.redis is not None:
            with suppress(RedisError, OSError):
                await self.redis.aclose()

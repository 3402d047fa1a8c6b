"""Redis cache for research answers. An optimisation only: when Redis fails, requests bypass it,
and a circuit breaker keeps them from waiting on a Redis that does not answer."""

import hashlib
import json
import logging
import time
from contextlib import suppress

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .telemetry import (
    CACHE_BREAKER_OPEN,
    CACHE_CALLS,
    CACHE_ERRORS,
    CACHE_HITS,
    CACHE_MISSES,
    CACHE_SKIPPED,
)

logger = logging.getLogger(__name__)

REDIS_TIMEOUT_SECONDS = 0.5  # a cache that is slower than this is not worth waiting for


def cache_key(query: str, **settings: object) -> str:
    """Same query (whitespace-normalised) and same answer-shaping settings -> same key."""
    material = json.dumps(
        {"query": " ".join(query.split()), **settings}, sort_keys=True, default=str
    )
    return "research-agent:answer:" + hashlib.sha256(material.encode()).hexdigest()


class CircuitBreaker:
    """After a failure, skip Redis for `open_seconds`; then let one call through as a probe.

    A Redis that is down answers "connection refused" at once, but a frozen one (paused, overloaded,
    behind a dead network) answers nothing until the timeout: without a breaker every request would
    wait two timeouts (get, then set). Written by hand because it is twenty lines whose state /ready
    and /metrics report; a breaker library would add a dependency for less than this.
    """

    def __init__(self, open_seconds: float, clock=time.monotonic):
        self.open_seconds = open_seconds
        self.clock = clock
        self.open_until: float | None = None  # None: closed, Redis is used
        self.probing = False

    @property
    def state(self) -> str:
        if self.open_until is None:
            return "closed"
        return "half_open" if self.clock() >= self.open_until else "open"

    def allow(self) -> bool:
        """May this call go to Redis? While half-open, only one call at a time (the probe)."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self.probing:
            self.probing = True
            return True
        return False

    def succeeded(self) -> None:
        self.open_until, self.probing = None, False

    def failed(self) -> None:
        self.open_until, self.probing = self.clock() + self.open_seconds, False


class ResearchCache:
    def __init__(self, url: str, ttl_seconds: int, breaker_seconds: float = 10.0):
        self.ttl_seconds = ttl_seconds
        # No retries with backoff (redis-py's default): when Redis is down, fail fast and bypass it.
        self.redis = Redis.from_url(
            url,
            socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
            socket_timeout=REDIS_TIMEOUT_SECONDS,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )
        self.breaker = CircuitBreaker(breaker_seconds)
        CACHE_BREAKER_OPEN.set(0)

    @property
    def state(self) -> str:
        """For /ready: "redis" while Redis is used, "bypassed" while the breaker skips it."""
        return "redis" if self.breaker.state == "closed" else "bypassed"

    async def _call(self, operation: str, command):
        """Run one Redis command through the breaker. Returns (ok, result)."""
        if not self.breaker.allow():
            CACHE_SKIPPED.inc()
            return False, None
        CACHE_CALLS.inc()
        try:
            result = await command()
        except (RedisError, OSError) as exc:
            self._failed(operation, exc)
            return False, None
        self._succeeded()
        return True, result

    async def ping(self) -> bool:
        ok, _ = await self._call("ping", self.redis.ping)
        return ok

    async def get(self, key: str) -> dict | None:
        ok, raw = await self._call("get", lambda: self.redis.get(key))
        if not ok:
            return None
        if raw is None:
            CACHE_MISSES.inc()
            return None
        CACHE_HITS.inc()
        return json.loads(raw)

    async def set(self, key: str, value: dict) -> None:
        await self._call("set", lambda: self.redis.set(key, json.dumps(value), ex=self.ttl_seconds))

    async def close(self) -> None:
        with suppress(RedisError, OSError):
            await self.redis.aclose()

    def _failed(self, operation: str, exc: BaseException) -> None:
        CACHE_ERRORS.inc()
        if self.breaker.state == "closed":  # one warning per outage, not one per probe
            logger.warning(
                "redis unavailable, cache bypassed",
                extra={
                    "operation": operation,
                    "error": repr(exc),
                    "retry_in_seconds": self.breaker.open_seconds,
                },
            )
        self.breaker.failed()
        CACHE_BREAKER_OPEN.set(1)

    def _succeeded(self) -> None:
        if self.breaker.state != "closed":
            logger.info("redis is back, cache enabled")
        self.breaker.succeeded()
        CACHE_BREAKER_OPEN.set(0)

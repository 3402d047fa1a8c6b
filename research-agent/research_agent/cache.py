"""Redis cache for research answers. An optimisation only: when Redis fails, requests bypass it,
and a circuit breaker keeps them from waiting on a Redis that does not answer."""

import hashlib
import json
import logging
from contextlib import suppress
from typing import Literal

from redis.exceptions import RedisError

from .observability.metrics import (
    CACHE_BREAKER_OPEN,
    CACHE_CALLS,
    CACHE_ERRORS,
    CACHE_HITS,
    CACHE_MISSES,
    CACHE_SKIPPED,
)
from .redis_client import CircuitBreaker, connect
from .settings import AgentSettings

logger = logging.getLogger(__name__)


def cache_key(query: str, **settings: object) -> str:
    """Same query (whitespace-normalised) and same answer-shaping settings -> same key."""
    material = json.dumps(
        {"query": " ".join(query.split()), **settings}, sort_keys=True, default=str
    )
    return "research-agent:answer:" + hashlib.sha256(material.encode()).hexdigest()


class ResearchCache:
    def __init__(self, url: str, ttl_seconds: int, breaker_seconds: float = 10.0):
        self.ttl_seconds = ttl_seconds
        self.redis = connect(url, decode_responses=True)
        self.breaker = CircuitBreaker(
            breaker_seconds,
            CACHE_BREAKER_OPEN,
            logger,
            down="redis unavailable, cache bypassed",
            up="redis is back, cache enabled",
        )

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
            CACHE_ERRORS.inc()
            self.breaker.failed(operation, exc)
            return False, None
        self.breaker.succeeded()
        return True, result

    async def ping(self) -> bool:
        ok, _ = await self._call("ping", self.redis.ping)
        return ok

    async def probe_if_due(self) -> None:
        """/ready calls this: once the breaker is due a probe, the readiness check makes it, so
        the cache comes back as soon as Redis does (a replica that started before Redis did
        shares answers within seconds), not only when a request happens to pass."""
        if self.breaker.state == "half_open":
            await self.ping()

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


class ScopedAnswers:
    """The cache as one request's service sees it (research_agent/service.py, AnswerCache): a
    question's key also holds everything that shapes its answer and, with CACHE_SCOPE=caller, who
    asked, so `cached: true` never tells B that A asked the same within the TTL."""

    def __init__(
        self,
        cache: ResearchCache,
        scope: Literal["caller", "shared"],
        settings: AgentSettings,
        agent,
        caller: str | None,
    ):
        self.cache = cache
        self.material = {
            "scope": (caller or "anonymous") if scope == "caller" else "shared",
            "model": agent.model_label,
            "search_backend": agent.search_backend,
            "max_results": settings.SEARCH_MAX_RESULTS,
            "temperature": settings.TEMPERATURE,
            "version": settings.APP_VERSION,
        }

    async def get(self, query: str) -> dict | None:
        return await self.cache.get(cache_key(query, **self.material))

    async def set(self, query: str, result: dict) -> None:
        await self.cache.set(cache_key(query, **self.material), result)

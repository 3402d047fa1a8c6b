"""Redis cache for research answers. An optimisation only: when Redis fails, requests bypass it."""

import hashlib
import json
import logging

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .telemetry import CACHE_ERRORS, CACHE_HITS, CACHE_MISSES

logger = logging.getLogger(__name__)

REDIS_TIMEOUT_SECONDS = 0.5  # a cache that is slower than this is not worth waiting for


def cache_key(query: str, **settings: object) -> str:
    """Same query (whitespace-normalised) and same answer-shaping settings -> same key."""
    material = json.dumps(
        {"query": " ".join(query.split()), **settings}, sort_keys=True, default=str
    )
    return "research-agent:answer:" + hashlib.sha256(material.encode()).hexdigest()


class ResearchCache:
    def __init__(self, url: str, ttl_seconds: int):
        self.ttl_seconds = ttl_seconds
        # No retries with backoff (redis-py's default): when Redis is down we want to fail fast and bypass.
        self.redis = Redis.from_url(
            url,
            socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
            socket_timeout=REDIS_TIMEOUT_SECONDS,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )
        self.available = True

    async def ping(self) -> bool:
        try:
            await self.redis.ping()
        except (RedisError, OSError) as exc:
            self._failed("ping", exc)
            return False
        self._succeeded()
        return True

    async def get(self, key: str) -> dict | None:
        try:
            raw = await self.redis.get(key)
        except (RedisError, OSError) as exc:
            self._failed("get", exc)
            return None
        self._succeeded()
        if raw is None:
            CACHE_MISSES.inc()
            return None
        CACHE_HITS.inc()
        return json.loads(raw)

    async def set(self, key: str, value: dict) -> None:
        try:
            await self.redis.set(key, json.dumps(value), ex=self.ttl_seconds)
        except (RedisError, OSError) as exc:
            self._failed("set", exc)
            return
        self._succeeded()

    async def close(self) -> None:
        try:
            await self.redis.aclose()
        except (RedisError, OSError):
            pass

    def _failed(self, operation: str, exc: BaseException) -> None:
        CACHE_ERRORS.inc()
        if self.available:  # one warning per outage, not one per request
            logger.warning(
                "redis unavailable, cache bypassed",
                extra={"operation": operation, "error": repr(exc)},
            )
        self.available = False

    def _succeeded(self) -> None:
        if not self.available:
            logger.info("redis is back, cache enabled")
        self.available = True

"""The one way this app talks to Redis: a client that fails fast, behind a circuit breaker.

The cache (research_agent/cache.py) and the limits (research_agent/access/limits/counters.py) each
hold a client and a breaker of their own, so that a Redis outage is reported once for each (its log
line, its gauge), but both are built here.
"""

import logging
import time

from prometheus_client import Gauge
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

REDIS_TIMEOUT_SECONDS = 0.5  # a Redis that is slower than this is treated as down


def connect(url: str, **options) -> Redis:
    """No retries with backoff (redis-py's default): when Redis is down, fail fast and go on
    without it."""
    return Redis.from_url(
        url,
        socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
        socket_timeout=REDIS_TIMEOUT_SECONDS,
        retry=Retry(NoBackoff(), 0),
        **options,
    )


class CircuitBreaker:
    """After a failure, skip Redis for `open_seconds`; then let one call through as a probe.

    A Redis that is down answers "connection refused" at once, but a frozen one (paused, overloaded,
    behind a dead network) answers nothing until the timeout: without a breaker every request would
    wait two timeouts (get, then set). Written by hand because it is forty lines whose state /ready
    and /metrics report; a breaker library would add a dependency for less than this.
    """

    def __init__(
        self,
        open_seconds: float,
        gauge: Gauge,  # 1 while open or half-open, else 0
        logger: logging.Logger,
        down: str,  # the warning logged once per outage
        up: str,  # the line logged when Redis answers again
        clock=time.monotonic,
        **context,  # more fields for the warning
    ):
        self.open_seconds = open_seconds
        self.gauge, self.logger, self.down, self.up = gauge, logger, down, up
        self.context = context
        self.clock = clock
        self.open_until: float | None = None  # None: closed, Redis is used
        self.probing = False
        gauge.set(0)

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
        if self.state != "closed":
            self.logger.info(self.up)
        self.open_until, self.probing = None, False
        self.gauge.set(0)

    def failed(self, operation: str, exc: BaseException) -> None:
        if self.state == "closed":  # one warning per outage, not one per probe
            self.logger.warning(
                self.down,
                extra={
                    "operation": operation,
                    "error": repr(exc),
                    **self.context,
                    "retry_in_seconds": self.open_seconds,
                },
            )
        self.open_until, self.probing = self.clock() + self.open_seconds, False
        self.gauge.set(1)

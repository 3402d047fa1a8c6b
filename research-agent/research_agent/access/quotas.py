"""What each caller may spend: requests per window, open streams, model tokens per budget window,
and, per client address, requests without a valid key.

Each limit is a module of limits/, and they all count in one place (limits/counters.py): in Redis
when REDIS_URL is set, so every replica counts against the same limits, and in this process
otherwise. This facade is what the routes' dependencies (research_agent/deps.py) and the key check
(research_agent/access/caller.py) call: it runs the limits in order and turns a run's tokens into a
charge (Grant).
"""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from ..settings import AccessSettings, CacheSettings
from ..web.errors import LimitError
from .keys import Caller
from .limits.auth_failures import AuthFailures
from .limits.budget import Budget
from .limits.counters import Counters, Counting
from .limits.fields import describe
from .limits.rate import RequestWindow
from .limits.streams import StreamSlots

logger = logging.getLogger(__name__)


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
    """The limits of AccessSettings, counted in the cache's Redis when it has one (its REDIS_URL
    and circuit breaker); a stream's slot is leased for a run's longest time and a slow reader's."""

    def __init__(self, settings: AccessSettings, cache: CacheSettings, run_timeout_seconds: float):
        # The limits log under this module's name, the one their lines have always had.
        self.counting = Counting(settings, cache, run_timeout_seconds, logger)
        self.requests = RequestWindow(settings, self.counting)
        self.auth_failures = AuthFailures(settings, self.counting)
        self.budget = Budget(settings, self.counting)
        self.streams = StreamSlots(settings, self.counting)

    def describe(self) -> dict:
        """For the start-up log line."""
        return {
            "rate_limit": describe(self.requests.item),
            "auth_failure_limit": describe(self.auth_failures.item),
            "max_streams_per_caller": self.streams.cap or "off",
            "token_budget": describe(self.budget.item),
            **self.counting.describe(),
        }

    async def failed_auth(self, address: str) -> None:
        """Count a 401 for this address; 429 once it has had AUTH_FAILURE_LIMIT of them."""
        await self.auth_failures.failed(address)

    async def check_auth(self, address: str) -> None:
        """429 for a right key from an address that is over its failures too."""
        await self.auth_failures.check(address)

    async def admit(self, caller: Caller) -> Grant:
        """Count one request against the rate limit and check the budget; 429 if either is spent."""
        try:
            headers = await self.requests.hit(caller)
            counters = await self.budget.reserve(caller)
        except LimitError as refused:
            _refused(caller, refused)
            raise
        reserved = self.budget.reservation if counters is not None else 0
        return Grant(caller, headers, self, reserved, counters)

    async def spend(self, grant: Grant, tokens: int) -> None:
        """Charge a run's tokens to the caller's budget, settling what its admission reserved."""
        reserved, grant.reserved = grant.reserved, 0
        await self.budget.settle(grant.caller, grant.counters, reserved, tokens)

    @asynccontextmanager
    async def stream_slot(self, caller: Caller) -> AsyncIterator[None]:
        """Hold one of the caller's MAX_STREAMS_PER_CALLER slots while the stream is open."""
        try:
            held = await self.streams.acquire(caller)
        except LimitError as refused:
            _refused(caller, refused)
            raise
        try:
            yield
        finally:
            await self.streams.release(caller, held)

    async def close(self) -> None:
        await self.counting.close()


def _refused(caller: Caller, refused: LimitError) -> None:
    # The caller's limits only: a refusal for failed keys has the access log's line and no other.
    logger.info("request over a limit", extra={"caller": caller.id, "reason": refused.error_type})

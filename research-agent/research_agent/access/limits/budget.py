"""Model tokens per caller: TOKEN_BUDGET_PER_DAY (`0`: none) per TOKEN_BUDGET_WINDOW_SECONDS, in a
fixed window.

A run's tokens are known only when it ends, so admission reserves TOKENS_RESERVED_PER_RUN and the
end settles the reservation to what the run used (research_agent/access/usage.py counts it).
Reserving first is what keeps requests that arrive together from all passing a budget that has
room for one.
"""

from contextlib import suppress

from limits import RateLimitItemPerSecond

from ...settings import AccessSettings
from ...web.errors import LimitError, LimitsUnavailableError
from ..keys import Caller
from .counters import STORAGE_ERRORS, Counters, Counting
from .fields import fields, retry_after, seconds_until


class Budget:
    def __init__(self, settings: AccessSettings, counting: Counting):
        self.item: RateLimitItemPerSecond | None = None
        if settings.TOKEN_BUDGET_PER_DAY > 0:
            self.item = RateLimitItemPerSecond(
                settings.TOKEN_BUDGET_PER_DAY,
                settings.TOKEN_BUDGET_WINDOW_SECONDS,
                namespace="tokens",
            )
        self.reservation = settings.TOKENS_RESERVED_PER_RUN
        self.counting = counting

    async def reserve(self, caller: Caller) -> Counters | None:
        """Take the reservation from the caller's budget: the counters it was taken from (None:
        no budget, or not counted), or a 429 when the budget is used up."""
        if self.item is None:
            return None
        counted = await self.counting.counted("budget", lambda c: self._reserve(c, caller))
        if counted is None:
            return None
        counters, before, reset_in = counted
        if before >= self.item.amount:
            await self._unreserve(counters, caller, self.reservation)
            raise LimitError(
                f"the token budget of {self.item.amount} tokens per "
                f"{self.item.get_expiry()} s is used up; it renews in {reset_in} s",
                "budget_exhausted",
                {**fields("tokens", self.item, 0, reset_in), **retry_after(reset_in)},
            )
        return counters

    async def settle(
        self, caller: Caller, counters: Counters | None, reserved: int, tokens: int
    ) -> None:
        """Charge a run's tokens against the caller's budget, less what its admission reserved
        (a cached answer costs 0: the reservation goes back). The answer is already made: a Redis
        failure here is logged, never sent to the client; the reservation then stays charged
        until the window ends."""
        if self.item is None:
            return
        if counters is not None and reserved:
            with suppress(*STORAGE_ERRORS):
                if tokens > reserved:
                    await self._charge(counters, caller, tokens - reserved)
                else:
                    await self._unreserve(counters, caller, reserved - tokens)
            return
        if tokens > 0:
            with suppress(LimitsUnavailableError):
                await self.counting.counted("spend", lambda c: self._charge(c, caller, tokens))

    async def _reserve(self, counters: Counters, caller: Caller) -> tuple[Counters, int, int]:
        """Take TOKENS_RESERVED_PER_RUN from the budget and say what was spent before: one atomic
        INCRBY, so requests that arrive together each see the others' reservations. A request is
        admitted while anything was left, so the budget is overrun by at most one run (as long
        as a run stays within its reservation)."""
        key = self.item.key_for(caller.id)
        spent = await counters.storage.incr(key, self.item.get_expiry(), amount=self.reservation)
        reset_time = await counters.storage.get_expiry(key)
        return counters, spent - self.reservation, seconds_until(reset_time)

    async def _charge(self, counters: Counters, caller: Caller, tokens: int) -> None:
        await counters.storage.incr(
            self.item.key_for(caller.id), self.item.get_expiry(), amount=tokens
        )

    async def _unreserve(self, counters: Counters, caller: Caller, tokens: int) -> None:
        if tokens <= 0:
            return
        key = self.item.key_for(caller.id)
        left = await counters.storage.incr(key, self.item.get_expiry(), amount=-tokens)
        if left < 0:  # the window ended while the run ran: the new one starts from 0, not below
            await counters.storage.incr(key, self.item.get_expiry(), amount=-left)

"""Requests per caller: RATE_LIMIT (`30/minute`; `off`).

A moving window from the `limits` library, so the 31st request within any 60 s is refused, not
only within a clock minute: a caller cannot send twice the limit across a minute's boundary.
Every request it counts is answered with the window's RateLimit fields.
"""

from ...settings import AccessSettings
from ...web.errors import LimitError
from ..keys import Caller
from .counters import Counters, Counting
from .fields import fields, named, retry_after, seconds_until


class RequestWindow:
    def __init__(self, settings: AccessSettings, counting: Counting):
        self.item = named(settings.RATE_LIMIT, "requests") if settings.rate_limit_enabled else None
        self.counting = counting

    async def hit(self, caller: Caller) -> dict[str, str]:
        """Count one request: its RateLimit fields (none while it is not counted), or a 429."""
        if self.item is None:
            return {}
        counted = await self.counting.counted("rate_limit", lambda c: self._hit(c, caller))
        if counted is None:
            return {}
        allowed, reset_in, remaining = counted
        headers = fields("requests", self.item, remaining, reset_in)
        if not allowed:
            raise LimitError(
                f"more than {self.item.amount} requests in "
                f"{self.item.get_expiry()} s; try again in {reset_in} s",
                "rate_limited",
                {**headers, **retry_after(reset_in)},
            )
        return headers

    async def _hit(self, counters: Counters, caller: Caller) -> tuple[bool, int, int]:
        allowed = await counters.window.hit(self.item, caller.id)
        reset_time, remaining = await counters.window.get_window_stats(self.item, caller.id)
        return allowed, seconds_until(reset_time), max(remaining, 0)

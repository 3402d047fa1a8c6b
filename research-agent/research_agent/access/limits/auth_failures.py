"""Failed keys per client address: AUTH_FAILURE_LIMIT 401s (`10/minute`; `off`) in a moving window.

Past the limit every /v1 request from the address is a 429, a right key included. Counted per
address, not per caller: a request without a valid key names no caller.
"""

from contextlib import suppress

from ...settings import AccessSettings
from ...web.errors import LimitError, LimitsUnavailableError
from .counters import Counters, Counting
from .fields import fields, named, retry_after, seconds_until


class AuthFailures:
    def __init__(self, settings: AccessSettings, counting: Counting):
        limit = settings.AUTH_FAILURE_LIMIT
        self.item = named(limit, "auth-failures") if limit.lower() != "off" else None
        self.counting = counting

    async def failed(self, address: str) -> None:
        """Count a 401 for this address; 429 instead once it has had AUTH_FAILURE_LIMIT of them.
        One atomic hit: requests sent together cannot all slip under the limit. Uncounted while
        Redis is down in LIMITS_FAIL_MODE=closed: the 401 stands, the other requests get 503."""
        if self.item is None:
            return
        counted = None
        with suppress(LimitsUnavailableError):
            counted = await self.counting.counted("auth_failures", lambda c: self._hit(c, address))
        if counted is not None and not counted[0]:
            raise self._throttled(counted[1])

    async def check(self, address: str) -> None:
        """429 for a right key from an address that is over its failures too: a guesser must not
        learn which of its guesses was right from a 200 among the 429s."""
        if self.item is None:
            return
        counted = None
        with suppress(LimitsUnavailableError):  # Quotas.admit answers 503 for it next
            counted = await self.counting.counted(
                "auth_failures",
                lambda c: c.window.get_window_stats(self.item, _key(address)),
            )
        if counted is not None and counted.remaining <= 0:
            raise self._throttled(seconds_until(counted.reset_time))

    async def _hit(self, counters: Counters, address: str) -> tuple[bool, int]:
        allowed = await counters.window.hit(self.item, _key(address))
        reset_time, _ = await counters.window.get_window_stats(self.item, _key(address))
        return allowed, seconds_until(reset_time)

    def _throttled(self, reset_in: int) -> LimitError:
        # Not logged here: the access log's line is the one line a refused request costs.
        return LimitError(
            f"more than {self.item.amount} requests without a valid API key from this "
            f"address in {self.item.get_expiry()} s; try again in {reset_in} s",
            "too_many_auth_failures",
            {**fields("auth-failures", self.item, 0, reset_in), **retry_after(reset_in)},
        )


def _key(address: str) -> str:
    return f"addr:{address}"

"""Open streams per caller: MAX_STREAMS_PER_CALLER (`4`; `0`: no cap), from a stream's first byte
to its last.

A stream is not an event but a thing held, which `limits` does not count: each open stream holds a
slot (counters.py: RedisSlots across the replicas, LocalSlots in this process) until it ends.
"""

from contextlib import suppress

from ...settings import AccessSettings
from ...web.errors import LimitError
from ..keys import Caller
from .counters import STORAGE_ERRORS, Counters, Counting
from .fields import retry_after

# A refused stream cannot know when another of the caller's streams ends: try again shortly.
STREAM_RETRY_AFTER_SECONDS = 5

Held = tuple[Counters, str]  # the counters a slot is held in, and the slot


class StreamSlots:
    def __init__(self, settings: AccessSettings, counting: Counting):
        self.cap = settings.MAX_STREAMS_PER_CALLER
        self.counting = counting

    async def acquire(self, caller: Caller) -> Held | None:
        """One of the caller's slots (None: no cap, or not counted), or a 429 when all are
        taken."""
        if self.cap <= 0:
            return None
        held = await self.counting.counted("streams", lambda c: self._acquire(c, caller))
        if held is None:
            return None
        counters, member = held
        if member is None:
            raise LimitError(
                f"{self.cap} streams are already open for this caller; wait until one ends",
                "too_many_streams",
                {
                    "RateLimit-Policy": f'"streams";q={self.cap};qu="concurrent-requests"',
                    "RateLimit": f'"streams";r=0;t={STREAM_RETRY_AFTER_SECONDS}',
                    **retry_after(STREAM_RETRY_AFTER_SECONDS),
                },
            )
        return counters, member

    async def release(self, caller: Caller, held: Held | None) -> None:
        if held is None:
            return
        counters, member = held
        # If Redis is gone by now, the lease frees the slot.
        with suppress(*STORAGE_ERRORS):
            await counters.slots.release(caller.id, member)

    async def _acquire(self, counters: Counters, caller: Caller) -> tuple[Counters, str | None]:
        return counters, await counters.slots.acquire(caller.id, self.cap)

"""A run's event stream, woken by the database and bounded in number.

Every event the store writes sends `NOTIFY run_events, '<run id>'` in the same transaction, so it
is heard when it commits, whichever replica wrote it. Each replica holds one connection that
LISTENs on that channel and wakes the streams of that run it serves: an open stream waits on an
asyncio.Event and reads the table only when there is something to read, instead of asking the
database ten times a second. A stream that has heard nothing for a while sends an SSE comment,
which keeps proxies from cutting a quiet stream and finds a client that has gone; it ends at the
run's last event, or after `max_seconds` (the client resumes with Last-Event-ID). The events are
FastAPI's `ServerSentEvent`s, for a route with `response_class=EventSourceResponse`.

Streams are counted on each replica, per owner and in total: beyond either, a 429. Like every answer
that has a status of its own (an unknown event id, a run read to its end), it comes from `opened`,
which the route's dependency enters before the stream starts: once the 200 is sent, it is too late.
"""

import asyncio
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import psycopg
from fastapi.sse import ServerSentEvent
from psycopg_pool import PoolTimeout

from ..slots import HeldSlots
from ..web.error_shape import ApiError
from .store import CHANNEL, END_EVENTS, ENDED, RunStore

logger = logging.getLogger(__name__)

DATABASE_ERRORS = (psycopg.OperationalError, PoolTimeout)
RETRY_AFTER_SECONDS = 5
# The listener asks its connection a question this often while it hears nothing, so a connection
# cut without a word (a server that vanished) is found and replaced.
LISTENER_CHECK_SECONDS = 30
PAGE = 100  # events read at once


class RunEvents:
    def __init__(
        self,
        store: RunStore,
        conninfo: str,
        *,
        max_streams: int = 200,
        max_per_owner: int = 10,
        keepalive_seconds: float = 15.0,
        max_seconds: float = 3600.0,
    ):
        self.store, self.conninfo = store, conninfo
        self.max_streams, self.max_per_owner = max_streams, max_per_owner
        self.keepalive, self.max_seconds = keepalive_seconds, max_seconds
        self.open = HeldSlots()  # owner -> streams open on this replica
        self.waiting: defaultdict[str, set[asyncio.Event]] = defaultdict(set)  # run -> streams
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="run-events-listener")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    # [start:listen]
    async def _listen(self) -> None:
        """One connection per replica, LISTENing; each notification wakes that run's streams."""
        failures = 0
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.conninfo, autocommit=True
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    if failures:
                        logger.info("listening for run events again")
                    failures = 0
                    self._wake_all()  # whatever was written while nobody listened
                    while True:
                        async for note in conn.notifies(timeout=LISTENER_CHECK_SECONDS):
                            for event in self.waiting.get(note.payload, ()):
                                event.set()
                        await conn.execute("SELECT 1")  # still there?
            except (psycopg.Error, OSError) as exc:  # a lost connection, a server going away
                failures += 1
                why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                logger.warning("run events listener lost the database (try %d): %s", failures, why)
            self._wake_all()  # streams read once more; each ends if the database is gone
            await asyncio.sleep(min(0.5 * 2**failures, 10))
            # [end:listen]

    def _wake_all(self) -> None:
        for events in self.waiting.values():
            for event in events:
                event.set()

    def hold(self, owner: str) -> Callable[[], None]:
        """Take one of this replica's stream slots for `owner`, or raise a 429 that says which
        limit; returns what gives it back (once, however often it is called)."""
        full = self.open.full(owner, self.max_per_owner, self.max_streams)
        if full == "total":
            raise ApiError(
                429,
                "too_many_streams",
                f"this replica has {self.open.held.total()} event streams open, its limit; try "
                "again shortly",
                {"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        if full == "key":
            raise ApiError(
                429,
                "too_many_streams",
                f"you have {self.max_per_owner} event streams open; close one first",
                {"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        return self.open.take(owner)

    async def more_after(self, run: dict, after: int) -> bool:
        """Whether a stream from event `after` has anything to send: False for an ended run read
        to its end. An `after` past the run's last event is a 400: never sent, so a client
        waiting for what follows it would wait forever."""
        newest = await self.store.newest_event(run["id"])
        if after > newest:
            raise ApiError(
                400, "unknown_event_id", f"event {after} is past the run's last event ({newest})"
            )
        return not (after == newest and run["state"] in ENDED)

    @asynccontextmanager
    async def opened(self, run: dict, after: int) -> AsyncIterator[AsyncIterator[ServerSentEvent]]:
        """The run's events from `after`, holding one of its owner's stream slots until the
        stream ends, however it ends. Entered before the stream starts (a route dependency), so
        that each refusal is a status: 400 past the run's last event, 204 for an ended run read to
        its end, 429 past the owner's or this replica's limit."""
        if not await self.more_after(run, after):
            raise RunReadToItsEnd()
        release = self.hold(run["owner_hash"])
        try:
            yield self.follow(run["id"], after)
        finally:
            release()

    # [start:follow]
    async def follow(self, run_id: str, after: int) -> AsyncIterator[ServerSentEvent]:
        """The run's events after `after`, until its last one (done, failed, expired, cancelled),
        woken by the listener; a comment when quiet; at most `max_seconds`."""
        wake = asyncio.Event()
        self.waiting[run_id].add(wake)
        loop = asyncio.get_running_loop()
        ends = loop.time() + self.max_seconds
        seq = after
        try:
            while True:
                wake.clear()  # before the read: an event committed during it wakes us again
                page = await self.store.events_after(run_id, seq, PAGE)
                for event in page:
                    seq, data = event["seq"], {"type": event["type"], **event["data"]}
                    yield ServerSentEvent(id=str(seq), event=event["type"], data=data)
                    if event["type"] in END_EVENTS:
                        return
                if wake.is_set() or len(page) == PAGE:
                    continue  # more came while we read, or there is another page
                left = ends - loop.time()
                if left <= 0:
                    return  # the client reconnects with Last-Event-ID
                try:
                    await asyncio.wait_for(wake.wait(), min(self.keepalive, left))
                except TimeoutError:
                    run = await self.store.get(run_id)
                    if run is None or run["state"] in ENDED:
                        return  # ended without an end event after `seq`: nothing will come
                    yield ServerSentEvent(comment="keep-alive")
        except DATABASE_ERRORS as exc:
            # The client reconnects (with Last-Event-ID) and gets a 503 until the database is back.
            logger.warning("stream of run %s ended, database unavailable: %s", run_id, exc)
        finally:
            self.waiting[run_id].discard(wake)
            if not self.waiting[run_id]:
                del self.waiting[run_id]
        # [end:follow]


class RunReadToItsEnd(ApiError):
    """The run has ended and the client has every event: a 204, which tells EventSource to stop
    reconnecting."""

    status, error_type = 204, "no_more_events"

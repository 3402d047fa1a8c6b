"""Admission: runs go to the runner's own threads, a bounded number at once; more wait in a
bounded line, one caller holds a bounded share, and on shutdown the line is refused.

Lesson 04, step 3 ("Off the event loop, bounded"). `run` blocks; an `async def` route that called
it would freeze the server for the length of the run, so routes call `arun`.
"""

import asyncio
import functools
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from .sandbox import RunResult, SandboxRunner, SandboxUnavailable
from .sandbox_config import SandboxConfig


class SandboxBusy(SandboxUnavailable):
    """Refused before queueing: too many runs are waiting, or this caller has too many."""

    def __init__(self, message: str, *, per_caller: bool = False):
        super().__init__(message)
        self.per_caller = per_caller


class SandboxShuttingDown(SandboxUnavailable):
    """The service is stopping: runs still waiting are refused so that it can stop in time."""


class RunAbandoned(SandboxUnavailable):
    """The caller went away while its run waited: it never starts."""


class QueuedRunner(SandboxRunner):
    """`run` on the runner's own threads, from the event loop: `arun`."""

    def __init__(self, config: SandboxConfig | None = None, client=None):
        super().__init__(config, client)
        self._threads = ThreadPoolExecutor(self.config.max_concurrent, thread_name_prefix="sandbox")
        # Runs wait here, in the event loop, where a bound and an abandoned caller can be seen;
        # a thread pool's own queue is unbounded and runs whatever was submitted.
        self._slots: asyncio.Semaphore | None = None
        self._waiting = 0
        self._per_caller: Counter[str] = Counter()
        self._closing = False
        self._waiters: set[asyncio.Future] = set()

    async def arun(
        self,
        code: str,
        timeout_seconds: float | None = None,
        request_id: str = "-",
        *,
        caller: str | None = None,
        abandoned: Callable[[], Awaitable[bool]] | None = None,
    ) -> RunResult:
        """`run` on the runner's threads, `max_concurrent` at once; the event loop stays free.

        At most `max_queued` runs wait and `max_per_caller` belong to one caller; past either the
        run is refused at once (SandboxBusy). A run whose caller is gone (`abandoned()` says so
        when its turn comes) never starts.
        """
        c = self.config
        if self._closing:
            raise SandboxShuttingDown("the service is shutting down; send the run again")
        if caller is not None and self._per_caller[caller] >= c.max_per_caller:
            raise SandboxBusy(f"you already have {c.max_per_caller} runs going", per_caller=True)
        if self._waiting >= c.max_queued:
            raise SandboxBusy(f"{c.max_queued} runs are already waiting for the sandbox")
        if self._slots is None:
            self._slots = asyncio.Semaphore(c.max_concurrent)
        if caller is not None:
            self._per_caller[caller] += 1
        try:
            if self._slots.locked():
                await self._wait_for_a_slot()
            else:
                await self._slots.acquire()  # free: taken at once, without yielding
            try:
                if abandoned is not None and await abandoned():
                    raise RunAbandoned("the caller went away before the run started")
                call = functools.partial(self.run, code, timeout_seconds, request_id)
                return await asyncio.get_running_loop().run_in_executor(self._threads, call)
            finally:
                self._slots.release()
        finally:
            if caller is not None:
                self._per_caller[caller] -= 1
                if not self._per_caller[caller]:
                    del self._per_caller[caller]

    async def _wait_for_a_slot(self) -> None:
        """Wait in line, counted, where begin_shutdown() can refuse the wait."""
        self._waiting += 1
        acquire = asyncio.ensure_future(self._slots.acquire())
        self._waiters.add(acquire)
        try:
            await acquire
        except asyncio.CancelledError:
            if acquire.done() and not acquire.cancelled():
                self._slots.release()  # the slot came just as we were cancelled: give it back
            # begin_shutdown() cancelled the wait, not our caller cancelling us
            if self._closing and not asyncio.current_task().cancelling():
                raise SandboxShuttingDown(
                    "the service is shutting down; send the run again"
                ) from None
            raise
        finally:
            self._waiting -= 1
            self._waiters.discard(acquire)

    def begin_shutdown(self) -> None:
        """From the event loop, on SIGTERM: refuse new runs and every run still waiting; runs
        already in a container finish (each within its timeout)."""
        self._closing = True
        for waiter in list(self._waiters):
            waiter.cancel()

    def close(self) -> None:
        """Let running runs finish (each removes its container), drop queued ones, close."""
        self._threads.shutdown(wait=True, cancel_futures=True)
        super().close()

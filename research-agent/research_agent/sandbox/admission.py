"""Admission: runs go to the runner's own threads, a bounded number at once; more wait in a
bounded line, one caller holds a bounded share, and on shutdown the line is refused.

Lesson 04, step 3's `arun`, with a bounded line (Going further, "Off the event loop, bounded").
`run` blocks; an `async def` route that called it would freeze the server for the length of the
run, so routes call `arun`. The QueuedRunner
holds the SandboxRunner that runs, and the Going-further parts a service gives it (a pool of
containers started ahead, a sweep of leftovers), each called at one named point.
"""

import asyncio
import functools
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from ..slots import HeldSlots
from .runner import RunResult, SandboxRunner, SandboxUnavailable


class SandboxBusy(SandboxUnavailable):
    """Refused before queueing: too many runs are waiting, or this caller has too many."""

    def __init__(self, message: str, *, per_caller: bool = False):
        super().__init__(message)
        self.per_caller = per_caller


class SandboxShuttingDown(SandboxUnavailable):
    """The service is stopping: runs still waiting are refused so that it can stop in time."""


class RunAbandoned(SandboxUnavailable):
    """The caller went away while its run waited: it never starts."""


class QueuedRunner:
    """`runner.run` on threads of its own, from the event loop: `arun`. With a `pool`
    (pool.py) a run goes through the pool instead; a `sweeper` (sweep.py) starts
    sweeping with the first run."""

    def __init__(self, runner: SandboxRunner, *, pool=None, sweeper=None):
        self.runner, self.pool, self.sweeper = runner, pool, sweeper
        self.config = runner.config
        if pool is not None:
            pool.runs_waiting = lambda: self._waiting  # it refills none while runs wait here
        self._threads = ThreadPoolExecutor(self.config.max_concurrent, thread_name_prefix="sandbox")
        # Runs wait here, in the event loop, where a bound and an abandoned caller can be seen;
        # a thread pool's own queue is unbounded and runs whatever was submitted.
        self._slots: asyncio.Semaphore | None = None
        self._waiting = 0
        self._per_caller = HeldSlots()  # runs going (waiting or running) per caller
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
        if self.sweeper is not None:
            self.sweeper.start()  # on a timer from the first run, if nothing started it before
        if caller is not None and self._per_caller.full(caller, c.max_per_caller):
            raise SandboxBusy(f"you already have {c.max_per_caller} runs going", per_caller=True)
        if self._waiting >= c.max_queued:
            raise SandboxBusy(f"{c.max_queued} runs are already waiting for the sandbox")
        if self._slots is None:
            self._slots = asyncio.Semaphore(c.max_concurrent)
        release = self._per_caller.take(caller) if caller is not None else lambda: None
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
            release()

    def run(
        self, code: str, timeout_seconds: float | None = None, request_id: str = "-"
    ) -> RunResult:
        """One run, on the calling thread: in a container of the pool if it has one ready, else
        in a fresh one."""
        if self.pool is not None:
            return self.pool.run(code, timeout_seconds, request_id)
        return self.runner.run(code, timeout_seconds, request_id)

    def start(self) -> None:
        """From the event loop, at start-up: the sweep's timer and the pool's refills (a first
        run starts them too)."""
        if self.sweeper is not None:
            self.sweeper.start()
        if self.pool is not None:
            self.pool.start()

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
        """Stop the sweep and the pool's refills (its idle containers are removed), let running
        runs finish (each removes its container), drop queued ones, close the runner."""
        try:
            if self.sweeper is not None:
                self.sweeper.close()
            if self.pool is not None:
                self.pool.close()
            self._threads.shutdown(wait=True, cancel_futures=True)
        finally:
            self.runner.close()

"""The pool: containers created and started ahead (SANDBOX_POOL_SIZE), each for exactly one run.

Lesson 04, Going further ("What it costs, and a pool"). A pooled container is made by the same
`create` as a fresh one, so with exactly the same flags; a run takes one, sends its code, reads,
and removes it. An empty pool never makes a run wait: it goes to a fresh container at once.
The pool is kept on threads of its own, under one Condition.
"""

import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .sandbox import DOCKER_ERRORS, SandboxUnavailable, remove
from .sandbox_admission import QueuedRunner
from .sandbox_config import SandboxConfig

logger = logging.getLogger(__name__)

# A pooled container carries this request id: it was made before any request.
POOL_REQUEST_ID = "pool"
# A pooled container is handed to a run only this long before its watchdog's idle limit.
POOL_MARGIN_SECONDS = 10


@dataclass(frozen=True)
class Pooled:
    """A container started ahead: its watchdog waits for a run and has run nothing."""

    container: object
    uid: int
    usable_until: float  # time.monotonic(): the pool hands it out before this, never after


class PooledRunner(QueuedRunner):
    """A runner whose runs take a container started ahead, if one is ready, else a fresh one."""

    def __init__(self, config: SandboxConfig | None = None, client=None):
        super().__init__(config, client)
        # Idle containers, refills under way, containers serving runs; one lock.
        self._pool_lock = threading.Condition()
        self._idle: deque[Pooled] = deque()
        self._refilling = 0
        self._surplus = 0  # refills whose place a fresh run took: removed, never pooled
        self._active = 0
        self._pool_closed = False
        self._retry_at, self._failures = 0.0, 0  # refills back off while Docker fails
        self._keeper: threading.Thread | None = None
        self.served_by_pool = 0  # runs a pooled container served (the rest went fresh)
        # Refills have threads of their own: a run never waits behind one.
        self._refills = ThreadPoolExecutor(
            max(1, self.config.pool_size), thread_name_prefix="sandbox-refill"
        )

    def run(self, code: str, timeout_seconds: float | None = None, request_id: str = "-"):
        """Run `code` in a pooled container, else a fresh one, and return a RunResult. Blocks:
        call it from a thread. Either way the container serves this run only, and is removed."""
        timeout = timeout_seconds or self.config.timeout_seconds
        self.start_pool()
        pooled = self._take(timeout)
        try:
            if not pooled:
                self._count_fresh()
                return super().run(code, timeout, request_id)
            logger.info("run %s in pooled container %s", request_id, pooled.container.id[:12])
            try:
                return self._run_in(pooled.container, code, timeout, started=True)
            finally:
                self.free_uid(pooled.uid)
        finally:
            with self._pool_lock:
                self._active -= 1
                self._pool_lock.notify()  # a place is free: the pool may refill

    @property
    def idle_count(self) -> int:
        """Pooled containers ready for a run now."""
        with self._pool_lock:
            return len(self._idle)

    def start_pool(self) -> None:
        """Keep `pool_size` containers started ahead, from a thread of the runner's own (once is
        enough; a run starts it too)."""
        with self._pool_lock:
            if self.config.pool_size and self._keeper is None and not self._pool_closed:
                self._keeper = threading.Thread(
                    target=self._keep_pool, name="sandbox-pool", daemon=True
                )
                self._keeper.start()

    def _take(self, timeout: float) -> Pooled | None:
        """An idle pooled container for a run of `timeout` s, or None: the run goes fresh."""
        if timeout > self.config.timeout_seconds:  # made for the default; a longer run needs more
            return None
        with self._pool_lock:
            while self._idle:
                pooled = self._idle.popleft()
                if pooled.usable_until > time.monotonic():
                    self._active += 1
                    self.served_by_pool += 1
                    return pooled
                self._discard_later(pooled)  # too close to its idle limit
        return None

    def _count_fresh(self) -> None:
        """A fresh container is about to be made: if the pool's containers would take the count
        past max_concurrent, the pool gives way (a refill under way, else an idle container)."""
        with self._pool_lock:
            self._active += 1
            over = self._active + len(self._idle) + self._refilling - self._surplus
            if over > self.config.max_concurrent:
                if self._refilling > self._surplus:
                    self._surplus += 1
                elif self._idle:
                    self._discard_later(self._idle.pop())

    def _wanted(self) -> int:
        """How many refills to start now (under the lock): up to pool_size, within max_concurrent,
        and none while runs wait for a place or Docker keeps failing."""
        c = self.config
        if self._waiting or self._pool_closed or time.monotonic() < self._retry_at:
            return 0
        room = c.max_concurrent - self._active - len(self._idle) - self._refilling
        missing = c.pool_size - len(self._idle) - (self._refilling - self._surplus)
        return max(0, min(room, missing))

    def _keep_pool(self) -> None:
        while True:
            with self._pool_lock:
                if self._pool_closed:
                    return
                now = time.monotonic()
                stale = [p for p in self._idle if p.usable_until <= now]
                for pooled in stale:
                    self._idle.remove(pooled)
                wanted = self._wanted()
                self._refilling += wanted
                if not stale and not wanted:
                    soonest = min((p.usable_until for p in self._idle), default=now + 1)
                    # Woken when a run ends; runs waiting in the event loop are seen within 1 s.
                    self._pool_lock.wait(min(max(soonest - now, 0.05), 1.0))
                    continue
            for pooled in stale:
                self._discard_later(pooled)
            for _ in range(wanted):
                self._refills.submit(self._refill)

    def _refill(self) -> None:
        c, uid, container, ready = self.config, self.take_uid(), None, 0.0
        try:
            container = self.create(c.timeout_seconds, POOL_REQUEST_ID, uid, c.pool_idle_seconds)
            if not self._give_way():
                started = time.monotonic()
                container.start()  # the watchdog starts, and waits for a run's first line
                ready = started + c.pool_idle_seconds - POOL_MARGIN_SECONDS
        except (SandboxUnavailable, *DOCKER_ERRORS) as exc:
            logger.warning("could not refill the sandbox pool: %s", exc)
        with self._pool_lock:
            self._refilling -= 1
            if ready and not self._pool_closed and not self._give_way():
                self._idle.append(Pooled(container, uid, ready))
                self._failures = 0
                return
            if not ready and container is None:  # Docker failed: wait 2, 4 ... 30 s to retry
                self._failures += 1
                self._retry_at = time.monotonic() + min(2**self._failures, 30)
        self._discard(Pooled(container, uid, 0.0))

    def _give_way(self) -> bool:
        """True if a fresh run took this refill's place (it is then removed, never pooled)."""
        with self._pool_lock:  # a Condition's lock is reentrant
            if self._surplus:
                self._surplus -= 1
                return True
            return False

    def _discard_later(self, pooled: Pooled) -> None:
        """Remove it on a refill thread, off the run's path (inline once the runner is closed)."""
        try:
            self._refills.submit(self._discard, pooled)
        except RuntimeError:
            self._discard(pooled)

    def _discard(self, pooled: Pooled) -> None:
        if pooled.container is not None:
            remove(pooled.container)
        self.free_uid(pooled.uid)

    def close(self) -> None:
        """Let running runs finish (each removes its container), drop queued ones, remove the
        pool's containers, close."""
        with self._pool_lock:
            self._pool_closed = True
            idle, self._idle = list(self._idle), deque()
            self._pool_lock.notify_all()
        for pooled in idle:
            self._discard(pooled)
        # Runs first: a run ending may still hand a container to the refill threads.
        self._threads.shutdown(wait=True, cancel_futures=True)
        self._refills.shutdown(wait=True, cancel_futures=True)  # refills under way remove theirs
        super().close()

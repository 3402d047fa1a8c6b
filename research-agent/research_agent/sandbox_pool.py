"""The pool: containers created and started ahead (SANDBOX_POOL_SIZE), each for exactly one run.

Lesson 04, Going further ("What it costs, and a pool"). A `ContainerPool` holds a SandboxRunner:
a pooled container is made by the runner's `create`, as a fresh one is, so with exactly the same
flags; a run takes one, sends its code, reads, and removes it. An empty pool never makes a run
wait for a container to be made for it: it goes to a fresh container at once. Every container
counts toward max_concurrent until it is gone, so when the pool holds the place a fresh run
needs, the pool gives it back first (an idle container is removed, a refill removes what it made
without starting it). The pool is kept on threads of its own, under one Condition.
"""

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .sandbox import DOCKER_ERRORS, RunResult, SandboxRunner, SandboxUnavailable, remove

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


class ContainerPool:
    """Containers `runner` started ahead: a run takes one if one is ready, else goes to a fresh
    container (runner.run)."""

    def __init__(self, runner: SandboxRunner):
        self.runner, self.config = runner, runner.config
        # Runs waiting for their turn, ahead of the pool: it refills none while there are any.
        # QueuedRunner, in front of the pool, sets it to its own count.
        self.runs_waiting: Callable[[], int] = lambda: 0
        # Idle containers, refills under way, containers being removed, runs; one lock. Each
        # counts toward max_concurrent until its container is gone.
        self._pool_lock = threading.Condition()
        self._idle: deque[Pooled] = deque()
        self._refilling = 0
        self._surplus = 0  # refills whose place a fresh run needs: removed, never pooled
        self._removing = 0
        self._active = 0
        self._placing = 0  # fresh runs waiting for the pool to give a place back
        self._pool_closed = False
        self._retry_at, self._failures = 0.0, 0  # refills back off while Docker fails
        self._keeper: threading.Thread | None = None
        self.served_by_pool = 0  # runs a pooled container served (the rest went fresh)
        # Refills have threads of their own: a run never waits behind one.
        self._refills = ThreadPoolExecutor(
            max(1, self.config.pool_size), thread_name_prefix="sandbox-refill"
        )

    def run(
        self, code: str, timeout_seconds: float | None = None, request_id: str = "-"
    ) -> RunResult:
        """Run `code` in a pooled container, else a fresh one, and return a RunResult. Blocks:
        call it from a thread. Either way the container serves this run only, and is removed."""
        runner = self.runner
        timeout = timeout_seconds or self.config.timeout_seconds
        self.start()
        pooled = self._take(timeout)  # a pooled container, or a place for a fresh one
        try:
            if not pooled:
                return runner.run(code, timeout, request_id)
            logger.info("run %s in pooled container %s", request_id, pooled.container.id[:12])
            try:
                try:
                    runner.join(pooled.container, request_id)  # its network, if the runner has one
                except BaseException:
                    remove(pooled.container)
                    raise
                return runner.run_in(pooled.container, code, timeout, started=True)
            finally:
                runner.free_uid(pooled.uid)
        finally:
            with self._pool_lock:
                self._active -= 1  # its container is gone: run_in removed it
                self._pool_lock.notify_all()  # a place is free: the pool may refill

    @property
    def idle_count(self) -> int:
        """Pooled containers ready for a run now."""
        with self._pool_lock:
            return len(self._idle)

    def start(self) -> None:
        """Keep `pool_size` containers started ahead, from a thread of the runner's own (once is
        enough; a run starts it too)."""
        with self._pool_lock:
            if self.config.pool_size and self._keeper is None and not self._pool_closed:
                self._keeper = threading.Thread(
                    target=self._keep_pool, name="sandbox-pool", daemon=True
                )
                self._keeper.start()

    def _take(self, timeout: float) -> Pooled | None:
        """An idle pooled container for a run of `timeout` s, or None: the run goes fresh, in a
        place of its own. If the pool holds that place, it gives it back first."""
        poolable = timeout <= self.config.timeout_seconds  # made for the default; longer needs more
        with self._pool_lock:
            self._active += 1
            while self._idle and poolable:
                pooled = self._idle.popleft()
                if pooled.usable_until > time.monotonic():
                    self.served_by_pool += 1
                    return pooled
                self._discard_later(pooled)  # too close to its idle limit
            self._placing += 1
            try:
                while self._over_by_the_pool():
                    if self._idle:  # removed on this thread, not behind a refill
                        self._removing += 1
                        pooled = self._idle.pop()
                        self._pool_lock.release()
                        try:
                            self._discard_counted(pooled)
                        finally:
                            self._pool_lock.acquire()
                        continue
                    if self._refilling > self._surplus:
                        self._surplus += 1
                    self._pool_lock.wait()  # until a container of the pool is gone
            finally:
                self._placing -= 1
        return None

    def _over_by_the_pool(self) -> bool:
        """(Under the lock.) Past max_concurrent, counting the pool's containers: idle, being
        made, being removed. Runs alone never are: admission lets in max_concurrent at most."""
        held = len(self._idle) + self._refilling + self._removing
        return held > 0 and self._active + held > self.config.max_concurrent

    def _wanted(self) -> int:
        """How many refills to start now (under the lock): up to pool_size, within max_concurrent,
        and none while runs wait for a place or Docker keeps failing."""
        c = self.config
        waiting = self.runs_waiting() or self._placing
        if waiting or self._pool_closed or time.monotonic() < self._retry_at:
            return 0
        room = c.max_concurrent - self._active - len(self._idle) - self._refilling - self._removing
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
                    self._discard_later(pooled)
                wanted = self._wanted()
                self._refilling += wanted
                if not stale and not wanted:
                    soonest = min((p.usable_until for p in self._idle), default=now + 1)
                    # Woken when a run ends; runs waiting in the event loop are seen within 1 s.
                    self._pool_lock.wait(min(max(soonest - now, 0.05), 1.0))
                    continue
            for started in range(wanted):
                try:
                    self._refills.submit(self._refill)
                except RuntimeError:  # closed meanwhile: the refills not started make nothing
                    with self._pool_lock:
                        self._refilling -= wanted - started
                        self._pool_lock.notify_all()
                    return

    def _refill(self) -> None:
        """Make one pooled container in a place the keeper counted for it. A fresh run that needs
        that place meanwhile gets it back (_give_way): before anything is made, or once Docker has
        made it, removed without being started. The place counts until the container is gone."""
        c, runner, container, ready, failed = self.config, self.runner, None, 0.0, False
        uid = runner.take_uid()
        try:
            if not self._give_way():
                idle = c.pool_idle_seconds
                container = runner.create(c.timeout_seconds, POOL_REQUEST_ID, uid, idle)
                if not self._give_way():
                    started = time.monotonic()
                    container.start()  # the watchdog starts, and waits for a run's first line
                    ready = started + c.pool_idle_seconds - POOL_MARGIN_SECONDS
        except (SandboxUnavailable, *DOCKER_ERRORS) as exc:
            logger.warning("could not refill the sandbox pool: %s", exc)
            failed = container is None
        with self._pool_lock:
            if ready and not self._pool_closed and not self._give_way():
                self._idle.append(Pooled(container, uid, ready))
                self._refilling -= 1
                self._failures = 0
                self._pool_lock.notify_all()
                return
            if failed:  # Docker failed: wait 2, 4 ... 30 s to retry
                self._failures += 1
                self._retry_at = time.monotonic() + min(2**self._failures, 30)
        try:
            self._discard(Pooled(container, uid, 0.0))
        finally:
            with self._pool_lock:
                self._refilling -= 1  # its container is gone: the place is free
                self._pool_lock.notify_all()

    def _give_way(self) -> bool:
        """True if a fresh run took this refill's place (it is then removed, never pooled)."""
        with self._pool_lock:  # a Condition's lock is reentrant
            if self._surplus:
                self._surplus -= 1
                return True
            return False

    def _discard_later(self, pooled: Pooled) -> None:
        """(Under the lock.) Remove it on a refill thread, off the run's path (inline once the
        runner is closed); it counts as removing until it is gone."""
        self._removing += 1
        try:
            self._refills.submit(self._discard_counted, pooled)
        except RuntimeError:
            self._discard_counted(pooled)

    def _discard_counted(self, pooled: Pooled) -> None:
        try:
            self._discard(pooled)
        finally:
            with self._pool_lock:
                self._removing -= 1
                self._pool_lock.notify_all()  # a place is free

    def _discard(self, pooled: Pooled) -> None:
        if pooled.container is not None:
            remove(pooled.container)
        self.runner.free_uid(pooled.uid)

    def close(self) -> None:
        """Refill no more, remove the idle containers, and wait for the refills under way (each
        removes what it made). Runs still going go on: one that ends hands its removal to the
        caller's thread once the refill threads are gone. The runner stays open."""
        with self._pool_lock:
            self._pool_closed = True
            idle, self._idle = list(self._idle), deque()
            self._pool_lock.notify_all()
        for pooled in idle:
            self._discard(pooled)
        self._refills.shutdown(wait=True, cancel_futures=True)

"""The pool: containers created and started ahead, each for exactly one run, as many as demand asks.

Lesson 04, Going further ("What it costs, and a pool"). A `ContainerPool` holds a SandboxRunner:
a pooled container is made by the runner's `create`, as a fresh one is, so with exactly the same
flags; a run takes one, sends its code, reads, and its container is removed. An empty pool never
makes a run wait for a container to be made for it: it goes to a fresh container at once. Every
container counts toward max_concurrent until it is gone, so when the pool holds the place a fresh
run needs, the pool gives it back first (an idle container is removed, a refill removes what it
made without starting it). The pool is kept on threads of its own, under one Condition.

What a run does not wait for: the pooled container was created and started, its watchdog has
started the interpreter the program will run in, and the engine's events and the container's
stdin and stdout were attached, all before the run came (SandboxRunner.attach); the answer is
returned once the watchdog's last line says how the program ended, and the container is removed
after that, on a thread of the pool's, counted until it is gone.

Its size follows demand: at least pool_size (SANDBOX_POOL_SIZE), and as many as runs started in
the last DEMAND_WINDOW_SECONDS, up to pool_max (SANDBOX_POOL_MAX) and within pool_budget_mib of
idle containers' memory (SANDBOX_POOL_BUDGET_MIB; one idle container's is measured once it is
ready). It refills while runs wait, as long as every waiting run still has a place; it shrinks
back to pool_size once the runs have stopped for SHRINK_AFTER_SECONDS. Each run is counted in
sandbox_runs_total: served warm (a pooled container) or cold (a fresh one), and why.
"""

import contextlib
import logging
import math
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from prometheus_client import Counter as Counted
from prometheus_client import Gauge

from .runner import DOCKER_ERRORS, RunResult, SandboxRunner, SandboxUnavailable

logger = logging.getLogger(__name__)

# A pooled container carries this request id: it was made before any request.
POOL_REQUEST_ID = "pool"
# A pooled container is handed to a run only this long before its watchdog's idle limit.
POOL_MARGIN_SECONDS = 10
# The pool holds as many containers as runs started in this many seconds (within its bounds).
DEMAND_WINDOW_SECONDS = 30.0
# It shrinks to a lower demand only once that has held this long: the highest demand of the last
# minute sets the target (a scale-down stabilization window, as Kubernetes' autoscaler keeps), so a
# burst soon after busy runs still finds the pool they grew.
SHRINK_AFTER_SECONDS = 60.0

RUNS = Counted(
    "sandbox_runs",
    "Sandbox runs: served warm (a pooled container) or cold (a fresh one), and why",
    ["served", "reason"],
)
POOL_IDLE = Gauge("sandbox_pool_idle_containers", "Pooled containers ready for a run", ["owner"])
POOL_TARGET = Gauge("sandbox_pool_target_containers", "How many the pool aims to hold", ["owner"])
POOL_IDLE_MEMORY = Gauge(
    "sandbox_pool_idle_container_bytes", "Memory one idle pooled container holds", ["owner"]
)


@dataclass(frozen=True)
class Pooled:
    """A container started ahead: its watchdog waits for a run and has run nothing."""

    container: object
    uid: int
    usable_until: float  # time.monotonic(): the pool hands it out before this, never after
    attached: object = None  # its events and stdin/stdout (SandboxRunner.attach), opened ahead


class ContainerPool:
    """Containers `runner` started ahead: a run takes one if one is ready, else goes to a fresh
    container (runner.run)."""

    def __init__(self, runner: SandboxRunner):
        self.runner, self.config = runner, runner.config
        # Runs waiting for their turn, ahead of the pool: the pool keeps a place for each.
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
        self._started: deque[float] = deque()  # when recent runs started: the demand
        # (when, demand): the last minute's highest demands, each lower than the one before it
        self._peaks: deque[tuple[float, int]] = deque()
        self.served_by_pool = 0  # runs a pooled container served (the rest went fresh)
        self.served: Counter[tuple[str, str]] = Counter()  # (warm or cold, why): as in /metrics
        self.idle_memory_bytes: int | None = None  # one idle pooled container's, once measured
        self._measured = False
        self.most_idle = 0  # the most idle containers held at once
        # Refills have threads of their own, no more than the cores (each create and start uses
        # one for a while): a run never waits behind one. Removals have theirs.
        refill_threads = max(1, min(self.config.largest_pool, os.cpu_count() or 1))
        self._refills = ThreadPoolExecutor(refill_threads, thread_name_prefix="sandbox-refill")
        self._removals = ThreadPoolExecutor(
            max(1, self.config.max_concurrent), thread_name_prefix="sandbox-remove"
        )
        self._labels = {"owner": self.config.owner}

    def run(
        self, code: str, timeout_seconds: float | None = None, request_id: str = "-"
    ) -> RunResult:
        """Run `code` in a pooled container, else a fresh one, and return a RunResult. Blocks:
        call it from a thread. Either way the container serves this run only, and is removed
        (a pooled one after the answer is returned)."""
        runner = self.runner
        timeout = timeout_seconds or self.config.timeout_seconds
        self.start()
        pooled = self._take(timeout)  # a pooled container, or a place for a fresh one
        if not pooled:
            try:
                return runner.run(code, timeout, request_id)
            finally:
                with self._pool_lock:
                    self._active -= 1  # its container is gone: runner.run removed it
                    self._pool_lock.notify_all()  # a place is free: the pool may refill
        logger.info("run %s in pooled container %s", request_id, pooled.container.id[:12])
        try:
            runner.join(pooled.container, request_id)  # its network, if the runner has one
        except BaseException:
            self._remove_after(pooled)(pooled.container)
            raise
        return runner.run_in(
            pooled.container,
            code,
            timeout,
            started=True,
            attached=pooled.attached,
            removal=self._remove_after(pooled),
        )

    def _remove_after(self, pooled: Pooled) -> Callable[[object], None]:
        """What removes a run's pooled container once the run has its answer: a removal thread,
        with the container counted as being removed (not as running) until it is gone."""

        def removal(container) -> None:
            with self._pool_lock:
                self._active -= 1
                self._removing += 1
            try:
                self._removals.submit(self._discard_counted, pooled)
            except RuntimeError:  # closed: removed here
                self._discard_counted(pooled)

        return removal

    @property
    def idle_count(self) -> int:
        """Pooled containers ready for a run now."""
        with self._pool_lock:
            return len(self._idle)

    def start(self) -> None:
        """Keep containers started ahead (pool_size, more with demand), from a thread of the
        runner's own (once is enough; a run starts it too)."""
        with self._pool_lock:
            if self.config.largest_pool and self._keeper is None and not self._pool_closed:
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
            self._started.append(time.monotonic())
            self._pool_lock.notify_all()  # demand rose: the keeper may grow the pool
            while self._idle and poolable:
                pooled = self._idle.popleft()
                if pooled.usable_until > time.monotonic():
                    self.served_by_pool += 1
                    self._count("warm", "pooled")
                    return pooled
                self._discard_later(pooled)  # too close to its idle limit
            self._count("cold", "pool empty" if poolable else "timeout over the default")
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

    def _count(self, served: str, reason: str) -> None:
        """(Under the lock.) One run, served warm or cold, and why."""
        self.served[served, reason] += 1
        RUNS.labels(served, reason).inc()

    def target(self) -> int:
        """How many containers the pool aims to hold now: one per run started in the last
        DEMAND_WINDOW_SECONDS, at least pool_size, at most pool_max and what the memory budget
        holds of idle containers (once one's memory is measured); the highest such demand of the
        last SHRINK_AFTER_SECONDS."""
        c, now = self.config, time.monotonic()
        largest = c.largest_pool
        if c.pool_budget_mib is not None and self.idle_memory_bytes:
            largest = min(largest, math.floor(c.pool_budget_mib * 2**20 / self.idle_memory_bytes))
        with self._pool_lock:  # a Condition's lock is reentrant: callers may hold it already
            while self._started and self._started[0] < now - DEMAND_WINDOW_SECONDS:
                self._started.popleft()
            demand = len(self._started)
            while self._peaks and self._peaks[-1][1] <= demand:
                self._peaks.pop()
            self._peaks.append((now, demand))
            while self._peaks[0][0] < now - SHRINK_AFTER_SECONDS:
                self._peaks.popleft()
            target = max(c.pool_size, min(largest, self._peaks[0][1]))
        POOL_TARGET.labels(**self._labels).set(target)
        return target

    def _wanted(self, target: int) -> int:
        """How many refills to start now (under the lock): up to `target`, within max_concurrent
        with a place kept for every run waiting, and none while Docker keeps failing."""
        c = self.config
        if self._pool_closed or time.monotonic() < self._retry_at:
            return 0
        waiting = self.runs_waiting() + self._placing
        held = self._active + len(self._idle) + self._refilling + self._removing
        room = c.max_concurrent - held - waiting
        missing = target - len(self._idle) - (self._refilling - self._surplus)
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
                target = self.target()
                while len(self._idle) > target:  # demand fell: the oldest go first
                    stale.append(self._idle.popleft())
                    self._discard_later(stale[-1])
                wanted = self._wanted(target)
                self._refilling += wanted
                POOL_IDLE.labels(**self._labels).set(len(self._idle))
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
        attached = None
        uid = runner.take_uid()
        try:
            if not self._give_way():
                idle = c.pool_idle_seconds
                container = runner.create(c.timeout_seconds, POOL_REQUEST_ID, uid, idle)
                if not self._give_way():
                    started = time.monotonic()
                    container.start()  # the watchdog starts, and waits for a run's first line
                    # The run's two connections, open before it comes (bounded by its end).
                    within = c.pool_idle_seconds + c.timeout_seconds + 60
                    attached = runner.attach(container, within)
                    ready = started + c.pool_idle_seconds - POOL_MARGIN_SECONDS
        except (SandboxUnavailable, *DOCKER_ERRORS) as exc:
            logger.warning("could not refill the sandbox pool: %s", exc)
            failed = container is None
        with self._pool_lock:
            kept = bool(ready) and not self._pool_closed and not self._give_way()
            if kept:
                self._idle.append(Pooled(container, uid, ready, attached))
                self.most_idle = max(self.most_idle, len(self._idle))
                self._refilling -= 1
                self._failures = 0
                self._pool_lock.notify_all()
                measure, self._measured = not self._measured, True
            elif failed:  # Docker failed: wait 2, 4 ... 30 s to retry
                self._failures += 1
                self._retry_at = time.monotonic() + min(2**self._failures, 30)
        if kept:
            if measure:  # once (an engine behind a guard may refuse it), beside the pool
                with contextlib.suppress(RuntimeError):  # closed meanwhile
                    self._removals.submit(self._measure, container)
            return
        try:
            self._discard(Pooled(container, uid, 0.0, attached))
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
        """(Under the lock.) Remove it on a removal thread, off the run's path (inline once the
        runner is closed); it counts as removing until it is gone."""
        self._removing += 1
        try:
            self._removals.submit(self._discard_counted, pooled)
        except RuntimeError:
            self._discard_counted(pooled)

    def _discard_counted(self, pooled: Pooled) -> None:
        try:
            self._discard(pooled)
        except Exception:  # on a removal thread, whose future nobody reads: say so
            logger.exception("could not discard sandbox container")
            raise
        finally:
            with self._pool_lock:
                self._removing -= 1
                self._pool_lock.notify_all()  # a place is free

    def _discard(self, pooled: Pooled) -> None:
        try:
            if pooled.attached is not None:
                pooled.attached.close()  # its stdin closes: an unused watchdog ends at once
            if pooled.container is not None:
                self.runner.discard(pooled.container)  # and its run's network, with egress
        finally:
            self.runner.free_uid(pooled.uid)

    def _measure(self, container) -> None:
        """What one idle pooled container holds in memory (the engine's figure), once."""
        try:
            memory = container.stats(stream=False)["memory_stats"]
            # As `docker stats` counts it: without the page cache the kernel may take back.
            cache = memory.get("stats", {})
            cache = cache.get("total_inactive_file", cache.get("inactive_file", 0))
            self.idle_memory_bytes = int(memory["usage"]) - int(cache)
        except (KeyError, TypeError, ValueError, *DOCKER_ERRORS) as exc:
            logger.warning("could not measure an idle pooled container: %s", exc)
            return
        POOL_IDLE_MEMORY.labels(**self._labels).set(self.idle_memory_bytes)

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
        self._removals.shutdown(wait=True)  # a run's container is removed, whatever happens

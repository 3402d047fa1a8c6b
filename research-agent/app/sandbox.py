"""Run untrusted Python in a throwaway container: one container per run, removed afterwards.

Lesson 04 (code/04_sandboxed_tools.py) and the research agent's run_python tool both import this
file. It imports nothing from the app but its own sandbox_* files, and nothing of LangChain
(app/python_tool.py makes the tool), so the lesson can load it from here without copies.

With `pool_size`, containers are created and started ahead; each still serves exactly one run.

The Docker SDK blocks (every call is an HTTP request over the Docker socket): `run` is for threads,
`arun` runs it on the runner's own bounded thread pool, never on the event loop.
"""

import asyncio
import contextlib
import functools
import json
import logging
import math
import secrets
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import docker
import requests
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.types import LogConfig, Ulimit
from docker.utils.socket import frames_iter

from .sandbox_exit import EndWatch

logger = logging.getLogger(__name__)

# Every container carries three labels: agent-sandbox.owner, .request-id and .expires.
LABEL = "agent-sandbox"
# A container this long past its timeout is a leftover (a crash, a failed removal) for sweep().
EXPIRY_GRACE_SECONDS = 60
# The container ends itself this long after its timeout, should the runner not be there to kill it.
WATCHDOG_GRACE_SECONDS = 2
# A pooled container carries this request id: it was made before any request.
POOL_REQUEST_ID = "pool"
# A pooled container is handed to a run only this long before its watchdog's idle limit.
POOL_MARGIN_SECONDS = 10

# PID 1 of each container (it runs the program and keeps the deadline) and the seccomp profile: two
# files next to this one, so the lesson and the research agent's image both have them.
_HERE = Path(__file__).resolve().parent
WATCHDOG = (_HERE / "sandbox_init.py").read_text()
SECCOMP_PROFILE = json.dumps(json.loads((_HERE / "sandbox_seccomp.json").read_text()))
# Hidden from the program (an empty file or folder over them): Docker's own list, which setting
# any list replaces, plus what tells about the host: its kernel's command line, build options
# and type information, and its load and pressure counters.
MASKED_PATHS = [
    *["/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats"],
    *["/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware"],
    *["/proc/cmdline", "/proc/config.gz", "/sys/kernel/btf", "/sys/kernel/vmcoreinfo"],
    *["/proc/pressure", "/proc/loadavg"],
]


@dataclass(frozen=True)
class SandboxConfig:
    image: str = "agent-sandbox:python"
    runtime: str | None = None  # "runsc" runs the container under gVisor, if the daemon offers it
    timeout_seconds: float = 10.0  # wall clock, from start to kill
    memory: str = "128m"  # also the limit of memory + swap: no swapping past it
    cpus: float = 0.5
    pids: int = 64
    tmp_size: str = "16m"
    max_output_bytes: int = 64 * 1024  # per stream; the rest is never read into memory
    max_concurrent: int = 4  # containers at once; more runs wait for a free slot...
    max_queued: int = 8  # ...but no more than this many: the next one is refused (SandboxBusy)
    max_per_caller: int = 2  # runs one caller may have running or waiting at once
    owner: str = "agent-sandbox"  # label value: which service started a container
    sweep_interval_seconds: float = 30.0  # how often a running service removes expired containers
    # Each run gets its own uid from this range, so no run shares per-user kernel limits (inotify
    # instances, processes) with another run, or with a host account such as nobody.
    uid_base: int = 1_500_000_000
    uid_count: int = 1_000_000
    # Containers created and started ahead, each for one run (0: none). They count toward
    # max_concurrent, and serve runs whose timeout is at most timeout_seconds.
    pool_size: int = 0
    pool_idle_seconds: float = 120.0  # a pooled container unused this long ends by itself

    def __post_init__(self) -> None:
        if not 0 <= self.pool_size <= self.max_concurrent:
            raise ValueError(f"pool_size must be 0 to max_concurrent ({self.max_concurrent})")

    @classmethod
    def from_settings(cls, settings: object, **fixed) -> "SandboxConfig":
        """The config a service's settings name: each SANDBOX_* field the settings have (the
        research agent's have fewer than lesson 04's), then `fixed`; the rest keep the defaults."""
        found = {
            field: getattr(settings, name)
            for field, name in SETTING_NAMES.items()
            if hasattr(settings, name)
        }
        return cls(**found, **fixed)


# The environment variable of each field a service may set: one list for every service.
SETTING_NAMES = {
    "image": "SANDBOX_IMAGE",
    "runtime": "SANDBOX_RUNTIME",
    "timeout_seconds": "SANDBOX_TIMEOUT_SECONDS",
    "max_concurrent": "SANDBOX_MAX_CONCURRENT",
    "max_queued": "SANDBOX_MAX_QUEUED",
    "max_per_caller": "SANDBOX_MAX_PER_CLIENT",
    "owner": "SANDBOX_OWNER",
    "sweep_interval_seconds": "SANDBOX_SWEEP_INTERVAL_SECONDS",
    "pool_size": "SANDBOX_POOL_SIZE",
}


@dataclass
class RunResult:
    stdout: str
    stderr: str
    exit_code: int | None
    timed_out: bool
    oom_killed: bool
    truncated: bool
    duration_ms: float

    def as_dict(self) -> dict:
        return asdict(self)


class SandboxError(Exception):
    """Every error the runner raises: the code did not run."""


class SandboxUnavailable(SandboxError):
    """Docker cannot be reached, or the image or runtime is missing: the code did not run."""


class SandboxBusy(SandboxUnavailable):
    """Refused before queueing: too many runs are waiting, or this caller has too many."""

    def __init__(self, message: str, *, per_caller: bool = False):
        super().__init__(message)
        self.per_caller = per_caller


class SandboxShuttingDown(SandboxUnavailable):
    """The service is stopping: runs still waiting are refused so that it can stop in time."""


class RunAbandoned(SandboxUnavailable):
    """The caller went away while its run waited: it never starts."""


# Docker errors, and the connection errors the SDK passes on from requests when the daemon is gone.
DOCKER_ERRORS = (DockerException, requests.RequestException)


@dataclass(frozen=True)
class Pooled:
    """A container started ahead: its watchdog waits for a run and has run nothing."""

    container: object
    uid: int
    usable_until: float  # time.monotonic(): the pool hands it out before this, never after


class SandboxRunner:
    def __init__(self, config: SandboxConfig | None = None, client=None):
        self.config = config or SandboxConfig()
        self._client = client
        self._client_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(self.config.max_concurrent, thread_name_prefix="sandbox")
        # Runs wait here, in the event loop, where a bound and an abandoned caller can be seen;
        # a thread pool's own queue is unbounded and runs whatever was submitted.
        self._slots: asyncio.Semaphore | None = None
        self._waiting = 0
        self._per_caller: Counter[str] = Counter()
        self._closing = False
        self._waiters: set[asyncio.Future] = set()
        self._sweeper: asyncio.Task | None = None
        self._uids: set[int] = set()  # in use by this runner's containers
        self._uids_lock = threading.Lock()
        # The pool: idle containers, refills under way, containers serving runs; one lock.
        self._pool_lock = threading.Condition()
        self._idle: deque[Pooled] = deque()
        self._refilling = 0
        self._surplus = 0  # refills whose place a fresh run took: removed, never pooled
        self._active = 0
        self._pool_closed = False
        self._retry_at, self._failures = 0.0, 0  # refills back off while Docker fails
        self._keeper: threading.Thread | None = None
        # Refills have threads of their own: a run never waits behind one.
        self._refills = ThreadPoolExecutor(
            max(1, self.config.pool_size), thread_name_prefix="sandbox-refill"
        )

    @property
    def client(self) -> docker.DockerClient:
        """The Docker client, made on first use: an API starts, and answers 503, without Docker."""
        with self._client_lock:
            if self._client is None:
                try:
                    client = docker.from_env(max_pool_size=self.config.max_concurrent + 4)
                    runtimes = client.info().get("Runtimes", {})
                except DOCKER_ERRORS as exc:
                    raise SandboxUnavailable(f"Docker is not reachable: {exc}") from exc
                if self.config.runtime and self.config.runtime not in runtimes:
                    raise SandboxUnavailable(
                        f"the Docker daemon offers no {self.config.runtime!r} runtime (it has: "
                        f"{', '.join(sorted(runtimes))}); see docs/04-sandboxed-tools.md"
                    )
                self._client = client
            return self._client

    def _create(self, timeout: float, request_id: str, uid: int, idle: float | None = None):
        """A container for one run of up to `timeout` s, whose watchdog waits `idle` s for it."""
        c = self.config
        ends = timeout + WATCHDOG_GRACE_SECONDS
        idle = ends if idle is None else idle
        host_config = self.client.api.create_host_config(
            network_mode="none",
            read_only=True,
            tmpfs={"/tmp": f"rw,noexec,nosuid,nodev,size={c.tmp_size}"},
            mem_limit=c.memory,
            memswap_limit=c.memory,
            nano_cpus=int(c.cpus * 1e9),
            pids_limit=c.pids,
            # CPU seconds per process, a second limit that needs no one outside: killed past it.
            ulimits=[Ulimit(name="cpu", soft=math.ceil(ends), hard=math.ceil(ends))],
            cap_drop=["ALL"],
            security_opt=["no-new-privileges", f"seccomp={SECCOMP_PROFILE}"],
            init=False,  # whatever the daemon's default: the watchdog must be PID 1 (see its file)
            runtime=c.runtime,
            log_config=LogConfig(type="none"),  # output is read live; no copy on the host's disk
            # The engine removes it as it exits, even if this process is gone (see sandbox_exit).
            auto_remove=True,
        )
        host_config["MaskedPaths"] = MASKED_PATHS  # the SDK has no argument for it
        created = self.client.api.create_container(
            c.image,
            # PID 1 is the watchdog (sandbox_init.py); the run's deadline, then its program,
            # arrive on stdin: no file to mount, no shell.
            ["python", "-I", "-c", WATCHDOG, f"{idle:g}"],
            stdin_open=True,
            user=f"{uid}:{uid}",
            host_config=host_config,
            labels={
                f"{LABEL}.owner": c.owner,
                f"{LABEL}.request-id": request_id,
                f"{LABEL}.expires": str(int(time.time() + idle + ends + EXPIRY_GRACE_SECONDS)),
            },
        )
        return self.client.containers.prepare_model({"Id": created["Id"]})

    def _take_uid(self) -> int:
        """A uid no other run of this runner has; runners on one engine collide with a chance
        of about one in uid_count / (their runs at once)."""
        with self._uids_lock:
            while True:
                uid = self.config.uid_base + secrets.randbelow(self.config.uid_count)
                if uid not in self._uids:
                    self._uids.add(uid)
                    return uid

    def run(self, code: str, timeout_seconds: float | None = None, request_id: str = "-"):
        """Run `code` in a pooled container, else a fresh one, and return a RunResult. Blocks:
        call it from a thread. Either way the container serves this run only, and is removed."""
        timeout = timeout_seconds or self.config.timeout_seconds
        self.start_pool()
        pooled = self._take(timeout)
        uid = pooled.uid if pooled else self._take_uid()
        try:
            if pooled:
                container = pooled.container
                logger.info("run %s in pooled container %s", request_id, container.id[:12])
            else:
                self._count_fresh()
                container = self._create_fresh(timeout, request_id, uid)
            try:
                return self.execute(container, code, timeout, started=pooled is not None)
            except DOCKER_ERRORS as exc:
                raise SandboxUnavailable(f"the sandbox container failed: {exc}") from exc
            finally:
                remove(container)
        finally:
            with self._uids_lock:
                self._uids.discard(uid)
            with self._pool_lock:
                self._active -= 1
                self._pool_lock.notify()  # a place is free: the pool may refill

    def _create_fresh(self, timeout: float, request_id: str, uid: int):
        try:
            return self._create(timeout, request_id, uid)
        except ImageNotFound as exc:
            raise SandboxUnavailable(
                f"the sandbox image {self.config.image} is missing: build it with `make build`"
            ) from exc
        except DOCKER_ERRORS as exc:
            raise SandboxUnavailable(f"cannot create a sandbox container: {exc}") from exc

    def execute(self, container, code: str, timeout: float, started: bool = False) -> RunResult:
        """Start the container (unless `started`), send it the code, read capped output, and
        how it ended from the engine's events (it removes the container as it exits)."""
        end = EndWatch(self.client, container.id, timeout + 60)
        sock = container.attach_socket(params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
        raw = sock._sock  # the SDK hands back a SocketIO; sending and half-closing need the socket
        output = {1: bytearray(), 2: bytearray()}  # stdout, stderr
        limit, truncated, timed_out = self.config.max_output_bytes, False, threading.Event()

        def on_timeout() -> None:
            timed_out.set()
            kill(container)

        deadline = threading.Timer(timeout, on_timeout)
        # Last resort if the daemon never ends the stream after the kill: stop reading it.
        backstop = threading.Timer(timeout + 10, lambda: raw.shutdown(socket.SHUT_RDWR))
        try:
            if not started:
                container.start()
            begin = time.monotonic()
            deadline.start()
            backstop.start()
            with contextlib.suppress(OSError):  # it exited before reading stdin: exit code says why
                # The watchdog's first line, which starts its clock: the run's deadline.
                raw.sendall(f"{timeout + WATCHDOG_GRACE_SECONDS:g}\n{code}".encode())
                raw.shutdown(socket.SHUT_WR)  # end of file on the container's stdin
            for stream, data in frames_iter(sock, tty=False):
                kept = output[stream]
                room = limit - len(kept)
                kept += data[:room]
                if len(data) > room and not truncated:
                    # The rest would be thrown away: stop it being produced. From another thread,
                    # because a kill waits for the process, which waits for us to read its output.
                    truncated = True
                    threading.Thread(target=kill, args=(container,), daemon=True).start()
            duration_ms = (time.monotonic() - begin) * 1000  # the output ends as the program does
            ended = end.ending()
        finally:
            deadline.cancel()
            backstop.cancel()
            end.close()
            sock.close()
            raw.close()  # closing the SocketIO alone leaves the socket open until collected
        return RunResult(
            stdout=output[1].decode(errors="replace"),
            stderr=output[2].decode(errors="replace"),
            exit_code=ended.exit_code,
            timed_out=timed_out.is_set(),
            oom_killed=ended.oom_killed,
            truncated=truncated,
            duration_ms=round(duration_ms, 1),
        )

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
        self.start_sweeping()
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
                return await asyncio.get_running_loop().run_in_executor(self._pool, call)
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

    # --- the pool: containers started ahead, each for one run --------------------------------

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
        c, uid, container, ready = self.config, self._take_uid(), None, 0.0
        try:
            container = self._create(c.timeout_seconds, POOL_REQUEST_ID, uid, c.pool_idle_seconds)
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
        with self._uids_lock:
            self._uids.discard(pooled.uid)

    def begin_shutdown(self) -> None:
        """From the event loop, on SIGTERM: refuse new runs and every run still waiting; runs
        already in a container finish (each within its timeout)."""
        self._closing = True
        for waiter in list(self._waiters):
            waiter.cancel()

    def sweep(self) -> int:
        """Remove sandbox containers that are past their deadline, whichever service started them
        (it may have died): return how many."""
        now, removed = time.time(), 0
        try:
            leftovers = self.client.containers.list(
                all=True, sparse=True, filters={"label": f"{LABEL}.owner"}
            )
        except DOCKER_ERRORS as exc:
            raise SandboxUnavailable(f"Docker is not reachable: {exc}") from exc
        for container in leftovers:
            expires = (container.attrs.get("Labels") or {}).get(f"{LABEL}.expires", "")
            if not expires.isdigit() or int(expires) < now:
                remove(container)
                removed += 1
        return removed

    def start_sweeping(self) -> None:
        """From the event loop: sweep() every sweep_interval_seconds while the loop runs (once is
        enough; a run starts it too)."""
        loop = asyncio.get_running_loop()
        if self._sweeper is None or self._sweeper.done() or self._sweeper.get_loop() is not loop:
            self._sweeper = loop.create_task(self._sweep_forever())

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.sweep_interval_seconds)
            try:
                if removed := await asyncio.to_thread(self.sweep):
                    logger.info("removed %d expired sandbox container(s)", removed)
            except SandboxUnavailable as exc:
                logger.warning("sandbox sweep failed: %s", exc)

    def close(self) -> None:
        """Let running runs finish (each removes its container), drop queued ones, remove the
        pool's containers, close."""
        if self._sweeper is not None:  # may be called from another thread than the loop's
            with contextlib.suppress(RuntimeError):  # that loop is closed: the task is gone
                self._sweeper.get_loop().call_soon_threadsafe(self._sweeper.cancel)
        with self._pool_lock:
            self._pool_closed = True
            idle, self._idle = list(self._idle), deque()
            self._pool_lock.notify_all()
        for pooled in idle:
            self._discard(pooled)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._refills.shutdown(wait=True, cancel_futures=True)  # refills under way remove theirs
        if self._client is not None:
            self._client.close()


def kill(container) -> None:
    with contextlib.suppress(*DOCKER_ERRORS):  # it has already exited
        container.kill()


def remove(container) -> None:
    try:
        container.remove(force=True)
    except NotFound:
        pass
    except APIError as exc:  # 409: the engine is removing it already (auto_remove)
        if exc.status_code != 409:
            logger.warning("could not remove sandbox container %s: %s", container.id[:12], exc)
    except DOCKER_ERRORS as exc:  # sweep() removes it later
        logger.warning("could not remove sandbox container %s: %s", container.id[:12], exc)

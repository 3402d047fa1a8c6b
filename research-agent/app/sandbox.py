"""Run untrusted Python in a throwaway container: one fresh container per run, removed afterwards.

Lesson 04 (code/04_sandboxed_tools.py) and the research agent's run_python tool both import this
file. It imports nothing from the app, so the lesson can load it from here without copies.

The Docker SDK blocks (every call is an HTTP request over the Docker socket): `run` is for threads,
`arun` runs it on the runner's own bounded thread pool, never on the event loop.
"""

import asyncio
import contextlib
import functools
import json
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import docker
import requests
from docker.errors import DockerException, ImageNotFound, NotFound
from docker.types import LogConfig
from docker.utils.socket import frames_iter
from langchain_core.tools import BaseTool, tool

logger = logging.getLogger(__name__)

# Every container carries three labels: agent-sandbox.owner, .request-id and .expires.
LABEL = "agent-sandbox"
# A container this long past its timeout is a leftover (a crash, a failed removal) for sweep().
EXPIRY_GRACE_SECONDS = 60


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
    owner: str = "agent-sandbox"  # label value that sweep() uses to find this service's leftovers


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


class SandboxUnavailable(Exception):
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

    def _create(self, timeout: float, request_id: str):
        c = self.config
        return self.client.containers.create(
            c.image,
            ["python", "-I", "-"],  # the program arrives on stdin: no file to mount, no shell
            stdin_open=True,
            user="65534:65534",
            network_mode="none",
            read_only=True,
            tmpfs={"/tmp": f"rw,noexec,nosuid,nodev,size={c.tmp_size}"},
            mem_limit=c.memory,
            memswap_limit=c.memory,
            nano_cpus=int(c.cpus * 1e9),
            pids_limit=c.pids,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            init=True,
            runtime=c.runtime,
            log_config=LogConfig(type="none"),  # output is read live; no copy on the host's disk
            labels={
                f"{LABEL}.owner": c.owner,
                f"{LABEL}.request-id": request_id,
                f"{LABEL}.expires": str(int(time.time() + timeout + EXPIRY_GRACE_SECONDS)),
            },
        )

    def run(self, code: str, timeout_seconds: float | None = None, request_id: str = "-"):
        """Run `code` in a fresh container and return a RunResult. Blocks: call it from a thread."""
        timeout = timeout_seconds or self.config.timeout_seconds
        try:
            container = self._create(timeout, request_id)
        except ImageNotFound as exc:
            raise SandboxUnavailable(
                f"the sandbox image {self.config.image} is missing: build it with `make build`"
            ) from exc
        except DOCKER_ERRORS as exc:
            raise SandboxUnavailable(f"cannot create a sandbox container: {exc}") from exc
        try:
            return self.execute(container, code, timeout)
        except DOCKER_ERRORS as exc:
            raise SandboxUnavailable(f"the sandbox container failed: {exc}") from exc
        finally:
            remove(container)

    def execute(self, container, code: str, timeout: float, started: bool = False) -> RunResult:
        """Start the container (unless `started`), send it the code, read capped output, inspect."""
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
                raw.sendall(code.encode())
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
            status = container.wait(timeout=timeout + 30)
            duration_ms = (time.monotonic() - begin) * 1000
        finally:
            deadline.cancel()
            backstop.cancel()
            sock.close()
            raw.close()  # closing the SocketIO alone leaves the socket open until collected
        container.reload()
        return RunResult(
            stdout=output[1].decode(errors="replace"),
            stderr=output[2].decode(errors="replace"),
            exit_code=status.get("StatusCode"),
            timed_out=timed_out.is_set(),
            oom_killed=bool(container.attrs["State"].get("OOMKilled")),
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

    def begin_shutdown(self) -> None:
        """From the event loop, on SIGTERM: refuse new runs and every run still waiting; runs
        already in a container finish (each within its timeout)."""
        self._closing = True
        for waiter in list(self._waiters):
            waiter.cancel()

    def sweep(self) -> int:
        """Remove this owner's containers that are past their deadline; return how many."""
        now, removed = time.time(), 0
        try:
            leftovers = self.client.containers.list(
                all=True, sparse=True, filters={"label": f"{LABEL}.owner={self.config.owner}"}
            )
        except DOCKER_ERRORS as exc:
            raise SandboxUnavailable(f"Docker is not reachable: {exc}") from exc
        for container in leftovers:
            expires = (container.attrs.get("Labels") or {}).get(f"{LABEL}.expires", "")
            if not expires.isdigit() or int(expires) < now:
                remove(container)
                removed += 1
        return removed

    def close(self) -> None:
        """Let running runs finish (each removes its container), drop queued ones, close."""
        self._pool.shutdown(wait=True, cancel_futures=True)
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
    except DOCKER_ERRORS as exc:  # sweep() removes it later
        logger.warning("could not remove sandbox container %s: %s", container.id[:12], exc)


def make_run_python_tool(runner: SandboxRunner, request_id: Callable[[], str]) -> BaseTool:
    """The agent's tool: the model writes a program, the sandbox runs it, the model reads it.

    `request_id()` names the request that made the call; it becomes the container's label.
    """
    c = runner.config

    @tool(response_format="content_and_artifact")
    async def run_python(code: str) -> tuple[str, dict]:
        """Run a Python program in a sandbox and return its stdout, stderr and exit code."""
        result = await runner.arun(code, request_id=request_id())
        return json.dumps(result.as_dict()), {"code": code, "result": result.as_dict()}

    run_python.description = (
        f"Run a Python 3.11 program in a throwaway sandbox: standard library only, no network, no "
        f"files kept, {c.timeout_seconds:g} s, {c.memory} of memory. Print what you need to see: "
        "stdout, stderr and the exit code come back as JSON."
    )
    return run_python

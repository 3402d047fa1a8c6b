"""run_python that a resumed run never runs twice: the call's idempotency key names everything.

The key is a hash of (run id, tool call id). Before it runs anything the tool looks for the key's
result row (the step ran before a crash, after recording it) and for a container named by the key
(the step was cut while the code ran, or before its result was recorded): the engine refuses a
second container of one name, so the code starts once. That container is kept after it exits,
with its output, until the result row is written; then it is removed.

A cancel reaches a sandbox whenever it starts. DELETE ends the run in the database, then removes
the run's containers; the tool's thread, which goes on after the run's task is cancelled, asks
whether the run has ended after it made the container and before it starts it. Whichever comes
second sees the first. The kept container of a run that has ended, which nobody will read, is
removed by a sweep.
"""

import asyncio
import hashlib
import json
import logging
import socket
import time
from collections import defaultdict
from collections.abc import Callable

from docker.errors import APIError, NotFound
from langchain.tools import ToolRuntime
from langchain_core.tools import BaseTool, ToolException, tool

from ..sandbox.runner import (
    DOCKER_ERRORS,
    LABEL,
    WATCHDOG_GRACE_SECONDS,
    RunResult,
    SandboxError,
    SandboxRunner,
    remove,
)
from .store import RunEnded, RunStore

logger = logging.getLogger(__name__)


def idempotency_key(run_id: str, call_id: str) -> str:
    return hashlib.sha256(f"{run_id}\x00{call_id}".encode()).hexdigest()[:32]


class KeyedSandbox:
    """One container per key, started at most once; its result read from it, however late."""

    def __init__(self, runner: SandboxRunner, max_concurrent: int = 4):
        self.runner = runner
        self.slots = asyncio.Semaphore(max_concurrent)
        self._sweep: asyncio.Task | None = None  # start_sweep's timer

    def run(
        self, key: str, code: str, request_id: str, ended: Callable[[], bool] = lambda: False
    ) -> RunResult:
        """Blocks (Docker calls): call it from a thread. `ended()` is asked once the container
        exists and before it starts: true, and it is removed unstarted (RunEnded)."""
        timeout = self.runner.config.timeout_seconds
        name = f"agent-sandbox-{key}"
        client = self.runner.client
        try:
            container = client.containers.get(name)  # a run cut by a crash: adopt it
            if container.status == "created":  # never started: nothing ran, its input may be
                remove(container)  # half sent by the process that died, so it is made again
                container = None
            else:
                logger.info("sandbox for call %s exists already: reading its result", key[:12])
        except NotFound:
            container = None
        except DOCKER_ERRORS as exc:
            raise SandboxError(f"Docker is not reachable: {exc}") from exc
        uid = self.runner.take_uid()
        try:
            if container is None:
                try:
                    container = self.runner.create_from(self.kept(name, timeout, request_id, uid))
                except SandboxError as exc:
                    if not isinstance(exc.__cause__, APIError) or exc.__cause__.status_code != 409:
                        raise
                    container = client.containers.get(name)  # created by another in between
            return self._finish(container, code, timeout, ended)
        except DOCKER_ERRORS as exc:
            raise SandboxError(f"the sandbox container failed: {exc}") from exc
        finally:
            self.runner.free_uid(uid)

    def kept(self, name: str, timeout: float, request_id: str, uid: int) -> dict:
        """The runner's container for one run, named by the key (a second create of the name
        fails) and kept by the engine with a bounded copy of its output after it exits, for
        whoever continues the run."""
        spec = self.runner.container_spec(timeout, request_id, uid)
        spec["name"], spec["labels"][f"{LABEL}.key"] = name, name
        spec["host_config"]["AutoRemove"] = False
        spec["host_config"]["LogConfig"] = {
            "Type": "json-file",
            "Config": {"max-size": "1m", "max-file": "1"},
        }
        return spec

    def _finish(self, container, code: str, timeout: float, ended: Callable[[], bool]) -> RunResult:
        """Start it if nobody did, send the code, wait for its end, read its kept output."""
        container.reload()
        begin = time.monotonic()
        if container.status == "created":  # never started: this is the one start
            # Asked after the create, before the start: a cancel that came after DELETE's look for
            # the run's containers is seen here (module docstring).
            self._unless_ended(container, ended)
            # The code goes in before the start (the engine holds it for the container): a crash
            # after the start cannot leave a started container without its program, which would
            # end at once, having run nothing, and be read as a run that printed nothing.
            sock = container.attach_socket(params={"stdin": 1, "stream": 1})
            raw = sock._sock  # sending and half-closing need the socket itself
            try:
                raw.sendall(f"{timeout + WATCHDOG_GRACE_SECONDS:g}\n{code}".encode())
                raw.shutdown(socket.SHUT_WR)  # end of file on its stdin: the program runs
            finally:
                sock.close()
                raw.close()
            container.start()
        ended = container.wait(timeout=timeout + WATCHDOG_GRACE_SECONDS + 30)
        container.reload()
        limit = self.runner.config.max_output_bytes
        stdout = container.logs(stdout=True, stderr=False)
        stderr = container.logs(stdout=False, stderr=True)
        exit_code = ended.get("StatusCode")
        oom = bool(container.attrs["State"].get("OOMKilled"))
        result = RunResult(
            stdout=stdout[:limit].decode(errors="replace"),
            stderr=stderr[:limit].decode(errors="replace"),
            exit_code=exit_code,
            timed_out=exit_code == 137 and not oom,
            oom_killed=oom,
            truncated=len(stdout) > limit or len(stderr) > limit,
            duration_ms=round((time.monotonic() - begin) * 1000, 1),
        )
        return result

    @staticmethod
    def _unless_ended(container, ended: Callable[[], bool]) -> None:
        """Remove the unstarted container, and raise, if its run has ended or cannot say."""
        try:
            gone = ended()
        except BaseException:
            remove(container)  # nothing ran: whoever goes on with the run makes it again
            raise
        if gone:
            remove(container)
            raise RunEnded("the run ended before its sandbox started")

    async def stop_cancelled(self, run_id: str) -> None:
        """A cancelled run's sandboxes, removed. Call it after the cancel is stored: a sandbox
        made after this look is never started (run asks first)."""
        await asyncio.to_thread(self.stop_run, run_id)

    def start_sweep(self, store: RunStore) -> None:
        """From the event loop: sweep_ended now and every sweep_interval_seconds."""
        self._sweep = asyncio.create_task(self._sweep_forever(store))

    async def _sweep_forever(self, store: RunStore) -> None:
        while True:
            try:
                if removed := await self.sweep_ended(store):
                    logger.info("removed %d kept sandbox(es) of ended runs", removed)
            except Exception as exc:  # noqa: BLE001 - Docker or the database: the next round
                logger.warning("sandbox sweep failed: %r", exc)
            await asyncio.sleep(self.runner.config.sweep_interval_seconds)

    async def sweep_ended(self, store: RunStore) -> int:
        """Remove this owner's kept sandboxes whose runs have ended: nobody will read them (a
        call whose Docker calls failed, a thread that went on after its run was let go). A run
        still going keeps its own, for whoever continues it. How many were removed."""
        labels = [f"{LABEL}.owner={self.runner.config.owner}", f"{LABEL}.key"]
        found = await asyncio.to_thread(
            self.runner.client.containers.list, all=True, sparse=True, filters={"label": labels}
        )
        by_run = defaultdict(list)
        for container in found:
            run_id = (container.attrs.get("Labels") or {}).get(f"{LABEL}.request-id")
            by_run[run_id].append(container)
        ended = await store.ended_of([run_id for run_id in by_run if run_id])
        gone = [container for run_id in ended for container in by_run[run_id]]
        for container in gone:
            await asyncio.to_thread(remove, container)
        return len(gone)

    def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()

    def stop_run(self, run_id: str) -> int:
        """Remove every sandbox of a run (its owner cancelled it), running or kept: the code
        stops, and nobody adopts its result. How many there were."""
        c = self.runner.config
        labels = [f"{LABEL}.owner={c.owner}", f"{LABEL}.request-id={run_id}"]
        try:
            found = self.runner.client.containers.list(
                all=True, sparse=True, filters={"label": labels}
            )
        except (SandboxError, *DOCKER_ERRORS) as exc:
            logger.warning("cannot list the sandboxes of run %s: %s", run_id, exc)
            return 0
        for container in found:
            remove(container)
        return len(found)

    def discard(self, key: str) -> None:
        """The result is recorded: the container has served its purpose."""
        try:
            remove(self.runner.client.containers.get(f"agent-sandbox-{key}"))
        except (NotFound, *DOCKER_ERRORS):
            pass


def run_ended(store: RunStore, run_id: str) -> Callable[[], bool]:
    """store.ended(run_id) for the sandbox's thread, asked on this event loop: the thread goes on
    after the run's task is cancelled, and the loop still answers it."""
    loop = asyncio.get_running_loop()
    return lambda: asyncio.run_coroutine_threadsafe(store.ended(run_id), loop).result(timeout=30)


def make_durable_run_python(store: RunStore, sandbox: KeyedSandbox) -> BaseTool:
    """The agent's run_python for durable runs: same name, arguments and answer as lesson 04's."""
    c = sandbox.runner.config

    @tool(response_format="content_and_artifact")
    async def run_python(code: str, runtime: ToolRuntime) -> tuple[str, dict]:
        """Run a Python program in a sandbox and return its stdout, stderr and exit code."""
        run_id = runtime.config["configurable"]["thread_id"]
        call_id = runtime.tool_call_id
        key = idempotency_key(run_id, call_id)
        recorded = await store.result(key)
        if recorded is None:
            ended = run_ended(store, run_id)  # a cancel reaches the thread before the start
            async with sandbox.slots:
                try:
                    result = await asyncio.to_thread(sandbox.run, key, code, run_id, ended)
                except SandboxError as exc:
                    message = f"Error: the Python sandbox is unavailable ({exc})."
                    raise ToolException(message) from exc
            recorded = result.as_dict()
            # Recorded before the step completes: a step replayed from now on reads this row.
            await store.record_result(key, run_id, call_id, recorded)
            await asyncio.to_thread(sandbox.discard, key)
        return json.dumps(recorded), {"code": code, "result": recorded}

    run_python.description = (
        f"Run a Python 3.11 program in a throwaway sandbox: standard library only, no network, no "
        f"files kept, {c.timeout_seconds:g} s, {c.memory} of memory. Print what you need to see: "
        "stdout, stderr and the exit code come back as JSON."
    )
    run_python.handle_tool_error = True
    return run_python

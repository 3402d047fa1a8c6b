"""run_python that a resumed run never runs twice: the call's idempotency key names everything.

The key is a hash of (run id, tool call id). Before it runs anything the tool looks for the key's
result row (the step ran before a crash, after recording it) and for a container named by the key
(the step was cut while the code ran, or before its result was recorded): the engine refuses a
second container of one name, so the code starts once. That container is kept after it exits,
with its output, until the result row is written; then it is removed.
"""

import asyncio
import hashlib
import json
import logging
import socket
import time

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
from .store import RunStore

logger = logging.getLogger(__name__)


def idempotency_key(run_id: str, call_id: str) -> str:
    return hashlib.sha256(f"{run_id}\x00{call_id}".encode()).hexdigest()[:32]


class KeyedSandbox:
    """One container per key, started at most once; its result read from it, however late."""

    def __init__(self, runner: SandboxRunner, max_concurrent: int = 4):
        self.runner = runner
        self.slots = asyncio.Semaphore(max_concurrent)
        self._later: set[asyncio.Task] = set()  # cancelled runs' second look (stop_cancelled)

    def run(self, key: str, code: str, request_id: str) -> RunResult:
        """Blocks (Docker calls): call it from a thread."""
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
            return self._finish(container, code, timeout)
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

    def _finish(self, container, code: str, timeout: float) -> RunResult:
        """Start it if nobody did, send the code, wait for its end, read its kept output."""
        container.reload()
        begin = time.monotonic()
        if container.status == "created":  # never started: this is the one start
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

    async def stop_cancelled(self, run_id: str, look_again_after: float) -> None:
        """A cancelled run's sandboxes removed now, and looked for once more later: the replica
        working on the run lets go at its next heartbeat, and may start one in between."""
        await asyncio.to_thread(self.stop_run, run_id)

        async def again() -> None:
            await asyncio.sleep(look_again_after)
            if await asyncio.to_thread(self.stop_run, run_id):
                logger.info("removed a sandbox of run %s, started as it was cancelled", run_id)

        task = asyncio.create_task(again())
        self._later.add(task)
        task.add_done_callback(self._later.discard)

    def close(self) -> None:
        for task in self._later:
            task.cancel()

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
            async with sandbox.slots:
                try:
                    result = await asyncio.to_thread(sandbox.run, key, code, run_id)
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

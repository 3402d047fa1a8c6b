"""Lesson 04's API (code/04_sandboxed_tools.py) as `make lesson-04` runs it, for the suites that
attack it in real containers (tests/lesson_04/test_hostile.py, test_pool.py)."""

import os
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx

from tests.support.lessons import ROOT
from tests.support.ports import free_port
from tests.support.server import ServerProcess, offline_environment

# Nothing in the sandbox may see this; the API process has it in its environment.
CANARY = "canary-" + uuid.uuid4().hex
# The result of every run, as the API promises it.
RESULT_FIELDS = {
    "stdout",
    "stderr",
    "exit_code",
    "timed_out",
    "oom_killed",
    "truncated",
    "duration_ms",
}


class SandboxApi(ServerProcess):
    """The lesson's API under uvicorn with a label owner of its own, started and ready."""

    def __init__(self, **env: str):
        """The pool is off unless `SANDBOX_POOL_SIZE` is passed."""
        self.owner = f"test-{uuid.uuid4().hex[:12]}"
        port = free_port()
        settings = {
            "HOST": "127.0.0.1",
            "PORT": port,
            "OFFLINE_TOKEN_DELAY_MS": 0,
            "SANDBOX_OWNER": self.owner,
            "SECRET_API_KEY": CANARY,
            "SANDBOX_POOL_SIZE": 0,  # every run in a fresh container, labelled with its request id
            **env,
        }
        script = [sys.executable, "code/04_sandboxed_tools.py"]
        environment = offline_environment(**settings)
        super().__init__(script, cwd=ROOT, env=environment, port=port, ready_timeout=60)
        self.start()
        self.http = httpx.Client(base_url=self.url, timeout=60)

    def status(self, field: str) -> int:
        """A kB figure from /proc/PID/status of the API process (VmRSS, VmHWM: peak resident)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise KeyError(field)

    def logs(self) -> str:
        return self.tail(20_000)

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def stop(self, grace: float = 60) -> int | None:
        self.http.close()
        return super().stop(grace)


def containers(engine, owner: str, request_id: str | None = None) -> list:
    """The sandbox containers an API (`owner`) made, for one request or all, running or not."""
    from app.sandbox import LABEL  # research-agent/ is on the path of the tests

    labels = [f"{LABEL}.owner={owner}"] + ([f"{LABEL}.request-id={request_id}"] * bool(request_id))
    # sparse: the list as Docker gives it, no inspect per container (one may be gone by then).
    return engine.containers.list(all=True, sparse=True, filters={"label": labels})


def idle_pooled(engine, owner: str) -> dict[str, object]:
    """An API's pooled containers that are ready for a run, by short id (a run's hostname)."""
    from app.sandbox_pool import POOL_REQUEST_ID

    pooled = containers(engine, owner, POOL_REQUEST_ID)
    return {c.id[:12]: c for c in pooled if c.status == "running"}


def while_counting_containers(engine, owner: str, work):
    """Run `work()` while counting `owner`'s containers every 0.1 s; return (its result, the most
    containers seen at once)."""
    seen, done = [0], threading.Event()

    def count() -> None:
        while not done.is_set():
            seen.append(len(containers(engine, owner)))
            time.sleep(0.1)

    sampler = threading.Thread(target=count)
    sampler.start()
    try:
        result = work()
    finally:
        done.set()
        sampler.join()
    return result, max(seen)

"""Lesson 04's production API (code/lesson04/sandboxed_tools.py) as `make lesson-04-production` runs
it, for the suites that attack it in real containers (tests/lesson_04/test_hostile.py,
test_pool.py), and the way they send it code (`post`, `run`, `printed`)."""

import json
import os
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import httpx

from support.lessons import ROOT
from support.ports import free_port
from support.server import ServerProcess, offline_environment

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

# Sandbox code: `opened(make)` is "ok" when the object `make()` returns could be made (and is
# closed again), else the errno's name. Prefix it to a run's (dedented) code.
OPENED = """\
def opened(make):
    try:
        make().close()
        return "ok"
    except OSError as exc:
        return errno.errorcode[exc.errno]

"""


def post(server, code: str, timeout=None, request_id=None, http=None) -> httpx.Response:
    """Send `code` (dedented) to the API's /v1/tools/python, whatever the answer."""
    body = {"code": textwrap.dedent(code)}
    if timeout is not None:
        body["timeout_seconds"] = timeout
    headers = {"X-Request-ID": request_id or uuid.uuid4().hex}
    return (http or server.http).post("/v1/tools/python", json=body, headers=headers)


def run(server, code: str, timeout: float | None = None, request_id: str | None = None) -> dict:
    """Run code through the API; the answer must be a 200 with the result object."""
    response = post(server, code, timeout, request_id)
    assert response.status_code == 200, response.text
    result = response.json()
    assert set(result) == RESULT_FIELDS
    return result


def printed(result: dict) -> dict:
    """What a run that exited 0 printed: one JSON document."""
    assert result["exit_code"] == 0, result
    return json.loads(result["stdout"])


class SandboxApi(ServerProcess):
    """The lesson's API under uvicorn with a label owner of its own, started and ready."""

    def __init__(self, fork: bool = True, **env: str):
        """The pool is off unless `SANDBOX_POOL_SIZE` is passed. `fork=False` execs the API
        instead of forking it ready-imported (support/zygote.py), for a suite that reads its
        /proc/PID/environ (which a forked process does not have) or its memory figures."""
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
        script = [sys.executable, "code/lesson04/sandboxed_tools.py"]
        environment = offline_environment(**settings)
        super().__init__(script, cwd=ROOT, env=environment, port=port, ready_timeout=60, fork=fork)
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
    from research_agent.sandbox.runner import LABEL  # research-agent/ is on the path of the tests

    labels = [f"{LABEL}.owner={owner}"] + ([f"{LABEL}.request-id={request_id}"] * bool(request_id))
    # sparse: the list as Docker gives it, no inspect per container (one may be gone by then).
    return engine.containers.list(all=True, sparse=True, filters={"label": labels})


def idle_pooled(engine, owner: str) -> dict[str, object]:
    """An API's pooled containers that are ready for a run, by short id (a run's hostname)."""
    from research_agent.sandbox.pool import POOL_REQUEST_ID

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


def runtime_settings(runtime: str) -> dict[str, str]:
    """The API settings that run its sandboxes under `runtime` (runc: the default)."""
    return {} if runtime == "runc" else {"SANDBOX_RUNTIME": runtime}

"""Fixtures for lesson 05: the API module, a real Redis, workers as local processes, a live server.

`make test` runs the API against a real redis-server with each variation as a local process running
the same `python -m app.worker` the containers run (ProcessWorkers has DockerWorkers' methods).
The container suite (marker `container`, `make variations-test`) runs real containers instead.
"""

import importlib.util
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from httpx_sse import connect_sse

from tests.ports import free_port
from tests.research_agent.conftest import RedisServer, wait_for  # noqa: F401 (tests import it here)

ROOT = Path(__file__).resolve().parents[2]
AGENT_DIR = ROOT / "research-agent"
NO_DOCS = Path(
    tempfile.mkdtemp(prefix="lesson-05-no-docs-")
)  # workers search the bundled notes only


def load_lesson():
    spec = importlib.util.spec_from_file_location(
        "variations_api", ROOT / "code" / "05_variations_api.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


api = load_lesson()


@pytest.fixture
def redis_server():
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (make test installs it)")
    server = RedisServer(binary)
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server):
    return redis_server.url


def run_worker(environment: dict[str, str], log_path: str) -> None:
    """A worker process: the environment it is given and `python -m app.worker`'s main()."""
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.environ.clear()
    os.environ.update(environment)
    from app import worker

    sys.exit(worker.main())


# Forked from a server that has imported the worker once: a process starts in milliseconds instead
# of paying the LangChain import (seconds) each time; test_worker.py runs `python -m app.worker`.
FORKSERVER = multiprocessing.get_context("forkserver")
FORKSERVER.set_forkserver_preload(["app.worker"])


class ProcessWorkers:
    """DockerWorkers' methods, each worker a local process: the same code, Redis and exit codes."""

    def __init__(self):
        self.processes: dict[str, tuple[multiprocessing.Process, str, int, Path]] = {}
        self.lock = threading.Lock()
        self.logs_dir = Path(tempfile.mkdtemp(prefix="lesson-05-workers-"))

    def check(self) -> None:
        pass

    def start(self, run_id: str, index: int, environment: dict[str, str]) -> str:
        worker_id = uuid.uuid4().hex
        env = {"PATH": os.environ["PATH"], "DOCS_DIR": str(NO_DOCS), **environment}
        log = self.logs_dir / f"{worker_id}.log"
        process = FORKSERVER.Process(target=run_worker, args=(env, str(log)), daemon=True)
        process.start()
        with self.lock:
            self.processes[worker_id] = (process, run_id, index, log)
        return worker_id

    def list(self) -> list:
        with self.lock:
            items = list(self.processes.items())
        return [
            api.Worker(id=wid, run_id=run_id, index=index, running=p.is_alive())
            for wid, (p, run_id, index, _) in items
        ]

    def outcome(self, worker_id: str) -> tuple[int, bool]:
        process = self.processes[worker_id][0]
        process.join(10)
        code = process.exitcode
        return (128 - code if code < 0 else code), False  # a signal: like Docker, 128 + signal

    def logs(self, worker_id: str) -> str:
        log = self.processes[worker_id][3]
        # Killed before it wrote a line: empty, as `docker logs` is for such a container.
        return log.read_text(errors="replace")[-2000:] if log.exists() else ""

    def remove(self, worker_id: str) -> None:
        with self.lock:
            entry = self.processes.pop(worker_id, None)
        if entry:
            entry[0].kill()
            entry[0].join(10)

    def kill(self, run_id: str, index: int) -> None:
        """What `docker kill` does to a container: SIGKILL, the worker gets no say."""
        for process, r, i, _ in list(self.processes.values()):
            if (r, i) == (run_id, index):
                process.kill()

    def pause(self, run_id: str, index: int) -> None:
        """A hung worker, as `docker pause` makes one: it can neither answer nor time out itself."""
        for process, r, i, _ in list(self.processes.values()):
            if (r, i) == (run_id, index):
                os.kill(process.pid, signal.SIGSTOP)

    def stop_all(self) -> None:
        for worker_id in list(self.processes):
            self.remove(worker_id)


@pytest.fixture
def workers():
    pool = ProcessWorkers()
    yield pool
    pool.stop_all()


class LiveServer:
    """The app under a real uvicorn in a thread, on a free port; restartable like a process."""

    def __init__(self, app):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_config=None,
            timeout_graceful_shutdown=1,
            proxy_headers=False,  # as the lesson's script runs it
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive(), "the server failed to start"
            assert time.monotonic() < deadline, "the server did not start within 30 s"
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture
def serve(redis_url, workers):
    """serve(**settings) -> a LiveServer running the lesson's app with process workers."""
    started = []

    def start(**overrides) -> LiveServer:
        values = {"OFFLINE_TOKEN_DELAY_MS": 0, "REAP_INTERVAL_SECONDS": 0.1, **overrides}
        settings = api.Settings(REDIS_URL=redis_url, WORKER_REDIS_URL=redis_url, **values)
        server = LiveServer(api.create_app(settings, workers=workers))
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


# --- Reading the event stream ---------------------------------------------------------------------


def read_events(
    url: str,
    run_id: str,
    last_id: str | None = None,
    stop_after: int | None = None,
    timeout: float = 60,
    until=None,
):
    """[(id, event, data)] from /v1/runs/{id}/events until run_done, `stop_after` events, or
    `until(events so far)` is true; the connection is then closed."""
    headers = {"Last-Event-ID": last_id} if last_id else {}
    headers.update(auth(run_id))
    found = []
    with (
        httpx.Client(base_url=url, timeout=timeout) as client,
        connect_sse(client, "GET", f"/v1/runs/{run_id}/events", headers=headers) as source,
    ):
        for sse in source.iter_sse():
            if not sse.data:  # the `retry:` line, keep-alive pings
                continue
            found.append((sse.id, sse.event, json.loads(sse.data)))
            if sse.event == "run_done" or (stop_after and len(found) >= stop_after):
                break
            if until and until(found):
                break
    return found


# The owner token of every run a test created, so that the helpers can show it.
TOKENS: dict[str, str] = {}


def auth(run_id: str) -> dict[str, str]:
    """The header that shows a run's owner token (none for a run this process did not create)."""
    return {"Authorization": f"Bearer {TOKENS[run_id]}"} if run_id in TOKENS else {}


def start_run(url: str, **body) -> dict:
    body = {"query": "How do I stop a container gracefully?", "variations": 2, **body}
    response = httpx.post(f"{url}/v1/runs", json=body, timeout=30)
    assert response.status_code == 202, response.text
    created = response.json()
    TOKENS[created["run_id"]] = created["owner_token"]
    return created


@contextmanager
def env_vars(**values):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# --- The container suite: the lesson's own script starts Redis and the network, the API runs as a
# process of its own, workers are containers. Everything is named after one random NAME.


def docker(*args: str, timeout: float = 60, check: bool = True) -> str:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.strip()


@pytest.fixture(scope="module")
def stack():
    """`scripts/lesson-05.sh up` under a name of its own; `down` afterwards removes everything."""
    name = f"l05t-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "NAME": name}
    script = str(ROOT / "scripts" / "lesson-05.sh")
    up = subprocess.run([script, "up"], env=env, capture_output=True, text=True, timeout=120)
    assert up.returncode == 0, up.stderr
    values = dict(line.split("=", 1) for line in up.stdout.splitlines() if "=" in line)
    yield values
    # The redis image declares VOLUME /data: each Redis container brings an anonymous volume.
    mounts = docker("inspect", "-f", "{{range .Mounts}}{{.Name}} {{end}}", f"{name}-redis")
    subprocess.run([script, "down"], env=env, capture_output=True, timeout=120)
    assert not docker("ps", "-aq", "--filter", f"label=ai-course.deployment={name}", check=False)
    left = sorted(set(mounts.split()) & set(docker("volume", "ls", "-q").split()))
    assert not left, f"`down` left the volumes {left}"


class ApiProcess:
    """python code/05_variations_api.py, as `make lesson-05` runs it, on a free port."""

    def __init__(self, stack: dict, **settings):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(tempfile.mkstemp(prefix="lesson-05-api-", suffix=".log")[1])
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "REDIS_"))}
        env.update(stack)
        env.update(
            PORT=str(self.port),
            WORKER_IMAGE=os.environ.get("WORKER_IMAGE", "research-agent:lesson-05"),
            PYTHONUNBUFFERED="1",
            **{k: str(v) for k, v in settings.items()},
        )
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "code/05_variations_api.py"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while True:
            assert self.process.poll() is None, f"the API exited:\n{self.log()}"
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"the API did not start:\n{self.log()}"
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self) -> int:
        """SIGTERM, as `docker stop` or Ctrl+C would; returns the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


@pytest.fixture
def api_process(stack, request):
    """api_process(**settings) -> a running ApiProcess; its log is printed when the test fails."""
    started = []

    def start(**settings) -> ApiProcess:
        server = ApiProcess(stack, **settings)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(f"--- API log ({server.url}) ---\n{server.log()}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.rep_call = report
    return report

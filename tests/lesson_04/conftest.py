"""Fixtures for lesson 04: the lesson script imported with a chosen environment, and (for the
hostile suite, marker `container`) the script served by a real uvicorn process on a free port."""

import importlib.util
import itertools
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from subprocess import STDOUT

import httpx
import pytest

from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "code" / "04_sandboxed_tools.py"
_fresh = itertools.count()
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


@pytest.fixture
def lesson(monkeypatch):
    """lesson(**env) imports the script as a fresh module (its Settings read the environment)."""

    def load(**env: str):
        for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "DOCKER_HOST"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("OFFLINE_TOKEN_DELAY_MS", "0")
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        spec = importlib.util.spec_from_file_location(f"lesson_04_{next(_fresh)}", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


class Server:
    """code/04_sandboxed_tools.py under uvicorn, as `make lesson-04` runs it, with its own owner."""

    def __init__(self, **env: str):
        self.owner = f"test-{uuid.uuid4().hex[:12]}"
        self.port = free_port()
        environment = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
        environment.update(
            HOST="127.0.0.1",
            PORT=str(self.port),
            OFFLINE_TOKEN_DELAY_MS="0",
            SANDBOX_OWNER=self.owner,
            SECRET_API_KEY=CANARY,
            **env,
        )
        # Its log, shown when a test fails (see logs()); a file, so a full pipe never blocks it.
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, str(SCRIPT)], cwd=ROOT, env=environment, stdout=self.log, stderr=STDOUT
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self.http = httpx.Client(base_url=self.url, timeout=60)
        deadline = time.monotonic() + 60
        while True:
            assert self.process.poll() is None, f"the lesson exited with {self.process.returncode}"
            try:
                self.http.get("/health", timeout=1)
                return
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the lesson did not answer /health within 60 s"
                time.sleep(0.2)

    def status(self, field: str) -> int:
        """A kB figure from /proc/PID/status of the API process (VmRSS, VmHWM: peak resident)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise KeyError(field)

    def logs(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-20_000:]

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def stop(self) -> None:
        self.http.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test, so a fixture can tell whether the test failed."""
    outcome = yield
    setattr(item, f"rep_{call.when}", outcome.get_result())

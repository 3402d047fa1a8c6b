import importlib.util
import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.ports import free_port

CODE = Path(__file__).resolve().parents[2] / "code"
_fresh = itertools.count()


@pytest.fixture
def load_script(monkeypatch):
    """Import a lesson script as a fresh module, after setting the environment it reads."""

    def load(filename: str, **env: str):
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
        monkeypatch.setenv("OFFLINE_TOKEN_DELAY_MS", "0")
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        spec = importlib.util.spec_from_file_location(f"lesson_{next(_fresh)}", CODE / filename)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


class Server:
    """A lesson script run as `make lesson-01...` runs it: its own uvicorn process, on loopback."""

    def __init__(self, script: str, **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environment = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
        environment.update(HOST="127.0.0.1", PORT=str(self.port), PYTHONUNBUFFERED="1", **env)
        # A file, not a pipe: a busy server would block once a pipe nobody reads is full.
        self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed by the fixture
        self.process = subprocess.Popen(
            [sys.executable, str(CODE / script)],
            env=environment,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def wait_until_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.output()
            try:
                if httpx.get(f"{self.url}/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        raise AssertionError(f"server not ready after {timeout}s\n{self.output()}")

    def output(self) -> str:
        """Everything the server printed; stops it first if it is still running."""
        self.stop()
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)


@pytest.fixture
def start_server():
    servers = []

    def start(script: str, **env: str) -> Server:
        server = Server(script, **env)
        servers.append(server)
        server.wait_until_ready()
        return server

    yield start
    for server in servers:
        server.stop()
        server.log.close()

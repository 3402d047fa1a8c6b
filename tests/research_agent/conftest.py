"""Fixtures for the research agent tests: app clients, SSE parsing and a real redis-server."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from fastapi.testclient import TestClient

AGENT_DIR = Path(__file__).resolve().parents[2] / "research-agent"
sys.path.insert(
    0, str(AGENT_DIR)
)  # the app is a standalone folder, imported as `app` like in its image

from app.api import create_app  # noqa: E402
from app.config import Settings  # noqa: E402

from tests.ports import free_port  # noqa: E402


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """Tests start from the defaults, whatever the machine's environment holds."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name, raising=False)


def make_settings(**overrides) -> Settings:
    """The defaults (only the bundled notes are searched), without the offline model's delay."""
    return Settings(**{"OFFLINE_TOKEN_DELAY_MS": 0, "LOG_LEVEL": "INFO", **overrides})


@pytest.fixture
def client_for():
    """client_for(**settings) -> a TestClient with the lifespan running (use it in a `with`)."""

    @contextmanager
    def open_client(agent=None, **overrides):
        app = create_app(make_settings(**overrides), agent=agent)
        with TestClient(app, raise_server_exceptions=False) as client:
            yield client

    return open_client


@pytest.fixture
def client(client_for):
    with client_for() as c:
        yield c


def parse_sse(text: str) -> list[tuple[str, str]]:
    """[(event name, data)] from an SSE body; unnamed events are called "message"."""
    events = []
    for block in text.replace("\r\n", "\n").strip().split("\n\n"):
        name, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        if data:
            events.append((name, "\n".join(data)))
    return events


def sse_json(events: list[tuple[str, str]], name: str) -> list[dict]:
    return [json.loads(data) for event, data in events if event == name]


def metric(client: TestClient, name: str, **labels) -> float:
    """A sample's value from /metrics (0 when absent)."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        series, value = line.rsplit(" ", 1)
        series_name, _, label_text = series.partition("{")
        found = dict(p.split("=", 1) for p in label_text.rstrip("}").split(",") if p)
        if series_name == name and all(found.get(k) == f'"{v}"' for k, v in labels.items()):
            return float(value)
    return 0.0


class RedisServer:
    def __init__(self, binary: str):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def freeze(self) -> None:
        """SIGSTOP: the port still accepts connections, nothing answers (a hung Redis)."""
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.thaw()
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture
def redis_server():
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "redis-server is not installed: the cache tests need a real Redis. "
            "Install it with `apt-get install -y redis-server` (make test does this)."
        )
    server = RedisServer(binary)
    yield server
    server.stop()


def start_server(**settings) -> SimpleNamespace:
    """`python main.py` with these settings, on a free loopback port; returns once /ready is 200."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "REDIS_"))}
    env.update(HOST="127.0.0.1", PORT=str(port), PYTHONUNBUFFERED="1")
    env.update({name: str(value) for name, value in settings.items()})
    process = subprocess.Popen(
        [sys.executable, "main.py"],
        cwd=AGENT_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # Read the log as it comes: a pipe nobody reads fills up (64 KiB) and blocks the server's
    # next log line, so a test that sends many requests would hang the server.
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()

    def finish(timeout: float = 30) -> str:
        """Wait for the process to exit (kill it first if you must) and return its whole log."""
        process.wait(timeout)
        reader.join(10)
        return "".join(lines)

    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                return SimpleNamespace(base=base, process=process, finish=finish)
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"main.py did not become ready:\n{finish()}")
        time.sleep(0.1)


def wait_for(condition, timeout: float = 60, message: str = "condition"):
    """Poll `condition` every 0.1 s until it returns a truthy value, which is returned; fail after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {message}"
        time.sleep(0.1)

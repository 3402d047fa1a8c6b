"""SIGTERM against a real uvicorn process: nothing in flight is lost, and the process still exits."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from httpx_sse import connect_sse

from tests.ports import free_port

SCRIPT = Path(__file__).resolve().parents[2] / "code" / "01_graceful_shutdown.py"


class Server:
    def __init__(self, **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environment = {**os.environ, "PORT": str(self.port), **env}
        environment.pop("OPENAI_API_KEY", None)
        self.process = subprocess.Popen(
            [sys.executable, str(SCRIPT)],
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def wait_until_ready(self, timeout: float = 30) -> None:
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
        if self.process.poll() is None:
            self.process.kill()
        return self.process.communicate()[0]


@pytest.fixture
def start_server():
    servers = []

    def start(**env: str) -> Server:
        server = Server(**env)
        servers.append(server)
        server.wait_until_ready()
        return server

    yield start
    for server in servers:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()


CUT_OFF = "<connection closed mid-stream>"


def stream_in_background(url: str, first_token: threading.Event) -> tuple[threading.Thread, list]:
    received: list = []

    def consume():
        with httpx.Client(timeout=30) as client, connect_sse(
            client, "POST", f"{url}/v1/stream", json={"query": "keep going"}
        ) as source:
            try:
                for event in source.iter_sse():
                    received.append(event.data)
                    first_token.set()
            except httpx.RemoteProtocolError:
                received.append(CUT_OFF)

    thread = threading.Thread(target=consume)
    thread.start()
    return thread, received


def test_sigterm_lets_an_in_flight_stream_finish_and_the_process_exit(start_server):
    drain, grace = 1.5, 15
    server = start_server(
        OFFLINE_TOKEN_DELAY_MS="60", DRAIN_DELAY_SECONDS=str(drain), GRACE_SECONDS=str(grace)
    )
    first_token = threading.Event()
    thread, received = stream_in_background(server.url, first_token)
    assert first_token.wait(10), "the stream never started"

    server.process.send_signal(signal.SIGTERM)
    sent_at = time.monotonic()

    # 1. Readiness flips to a real 503 at once, while the listener still accepts connections.
    assert httpx.get(f"{server.url}/ready", timeout=2).status_code == 503
    assert httpx.get(f"{server.url}/health", timeout=2).status_code == 200

    # 2. After the drain delay uvicorn closes the listener: new connections are refused.
    refused = False
    while time.monotonic() - sent_at < drain + 5 and not refused:
        try:
            httpx.get(f"{server.url}/health", timeout=1)
            time.sleep(0.05)
        except httpx.ConnectError:
            refused = True
    assert refused, "the port kept accepting connections after the drain delay"

    # 3. The stream that was in flight completes normally.
    thread.join(timeout=grace)
    assert received[-1] == "[DONE]", received
    assert "Set OPENAI_API_KEY" in "".join(received[:-1])

    # 4. The process exits by itself, well inside the grace period.
    returncode = server.process.wait(timeout=grace)
    assert time.monotonic() - sent_at < drain + grace
    assert returncode in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM after a clean shutdown
    log = server.output()
    assert "SIGTERM received" in log and "Lifespan shutdown: 0 request(s) still in flight" in log


def test_the_grace_period_bounds_a_stream_that_would_run_too_long(start_server):
    # 35 tokens at 400 ms each would take 14 s; the grace period is 1 s.
    server = start_server(OFFLINE_TOKEN_DELAY_MS="400", DRAIN_DELAY_SECONDS="0", GRACE_SECONDS="1")
    first_token = threading.Event()
    thread, received = stream_in_background(server.url, first_token)
    assert first_token.wait(10)

    server.process.send_signal(signal.SIGTERM)
    sent_at = time.monotonic()
    server.process.wait(timeout=10)
    assert time.monotonic() - sent_at < 5
    thread.join(timeout=5)
    assert (
        received[-1] == CUT_OFF and "[DONE]" not in received
    )  # cut off by the grace period, as configured


def test_ready_is_200_while_serving_and_health_is_separate(load_script):
    module = load_script("01_graceful_shutdown.py")
    with TestClient(module.app) as client:
        assert client.get("/ready").json() == {"ready": True}
        assert client.post("/v1/invoke", json={"query": "hello"}).status_code == 200
        module.shutdown.draining = True
        response = client.get("/ready")
        assert response.status_code == 503 and response.json()["ready"] is False
        assert client.get("/health").status_code == 200

"""Graceful shutdown under a real uvicorn process: SIGTERM lets an open stream finish."""

import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import httpx
import pytest
from app.api import watch_for_sigterm

from .conftest import AGENT_DIR, free_port, parse_sse


def test_sigterm_marks_not_ready_and_calls_the_previous_handler():
    received = []
    original = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        state = SimpleNamespace(shutting_down=False)
        watch_for_sigterm(state)
        os.kill(os.getpid(), signal.SIGTERM)
        assert state.shutting_down is True
        assert received == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, original)


@pytest.fixture
def server():
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "REDIS_URL")
    }
    env.update(OFFLINE_TOKEN_DELAY_MS="20", PORT=str(port))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "main:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--timeout-graceful-shutdown",
            "10",
        ],
        cwd=AGENT_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"uvicorn did not become ready:\n{process.communicate()[0]}")
        time.sleep(0.1)
    yield SimpleNamespace(base=base, process=process)
    if process.poll() is None:
        process.kill()
        process.wait()


def test_open_stream_finishes_after_sigterm(server):
    body = []
    with httpx.stream(
        "POST",
        f"{server.base}/v1/research/stream",
        json={"query": "Why use a multi-stage Docker build?"},
        timeout=30,
    ) as response:
        lines = response.iter_lines()
        for line in lines:  # wait until tokens are flowing, then ask the server to stop
            body.append(line)
            if line.startswith("event: token"):
                break
        server.process.send_signal(signal.SIGTERM)
        body.extend(lines)

    events = parse_sse("\n".join(body))
    names = [name for name, _ in events]
    assert names.count("token") > 20, names
    assert names[-2:] == ["final", "message"] and events[-1][1] == "[DONE]"

    output = server.process.communicate(timeout=20)[0]
    assert server.process.returncode in (0, -signal.SIGTERM, 128 + signal.SIGTERM)
    assert "SIGTERM received: readiness now 503" in output
    assert "research agent stopped" in output
    # Every line uvicorn and the app printed is JSON.
    assert all(line.startswith("{") for line in output.splitlines() if line.strip()), output

"""SIGTERM against a real uvicorn process: nothing in flight is lost or cut silently; it exits."""

import asyncio
import json
import signal
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from httpx_sse import connect_sse

SCRIPT = "01_graceful_shutdown.py"
CUT_OFF = "<connection closed mid-stream>"


def stream_in_background(
    url: str, started: threading.Event, **body
) -> tuple[threading.Thread, list]:
    """POST /v1/stream in a thread; the list receives (event, data) pairs, or CUT_OFF."""
    received: list = []

    def consume():
        headers = {"X-Request-ID": body.pop("request_id", "stream")}
        with (
            httpx.Client(timeout=60) as client,
            connect_sse(
                client,
                "POST",
                f"{url}/v1/stream",
                json={"query": "keep going", **body},
                headers=headers,
            ) as source,
        ):
            try:
                for event in source.iter_sse():
                    received.append((event.event, event.data))
                    started.set()
            except httpx.TransportError:
                received.append(CUT_OFF)

    thread = threading.Thread(target=consume)
    thread.start()
    return thread, received


def log_lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_sigterm_drains_lets_a_stream_finish_and_the_process_exit(start_server):
    drain, grace = 5, 15  # a drain long enough for the three requests below on a busy machine
    server = start_server(
        SCRIPT,
        OFFLINE_TOKEN_DELAY_MS="150",  # 35 tokens: the stream outlasts the drain
        SHUTDOWN_DRAIN_SECONDS=str(drain),
        GRACEFUL_SHUTDOWN_SECONDS=str(grace),
    )
    first_token = threading.Event()
    thread, received = stream_in_background(server.url, first_token)
    assert first_token.wait(20), "the stream never started"

    server.process.send_signal(signal.SIGTERM)
    sent_at = time.monotonic()

    # 1. Readiness flips to a real 503 at once; the process is still alive and still serving.
    with httpx.Client(base_url=server.url, timeout=5) as http:
        ready = http.get("/ready")
        assert ready.status_code == 503 and ready.json()["error"]["type"] == "not_ready"
        assert http.get("/health").status_code == 200
        # By design: during the drain a request that still arrives is answered, not refused.
        late = http.post("/v1/invoke", json={"query": "late", "max_tokens": 2})
        assert late.status_code == 200

    # 2. After the drain uvicorn closes the listener: new connections are refused.
    refused = False
    while time.monotonic() - sent_at < drain + 10 and not refused:
        try:
            httpx.get(f"{server.url}/health", timeout=1)
            time.sleep(0.05)
        except (httpx.ConnectError, httpx.RemoteProtocolError):  # refused, or reset in the backlog
            refused = True
    assert refused, "the port kept accepting connections after the drain"

    # 3. The stream that was in flight completes normally.
    thread.join(timeout=grace)
    assert received[-1] == ("message", "[DONE]"), received
    assert "Set OPENAI_API_KEY" in "".join(data for _, data in received[:-1])

    # 4. The process exits by itself, inside the budget.
    returncode = server.process.wait(timeout=drain + grace)
    assert returncode in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM after a clean shutdown
    messages = [line["message"] for line in log_lines(server.log_text())]
    assert any(m.startswith("SIGTERM received: /ready now answers 503") for m in messages)
    assert "Stopped" in messages and "Cut by shutdown: the grace ran out" not in messages


def test_what_the_grace_cannot_finish_is_ended_with_an_error_not_cut(start_server):
    # 300 ms a token: the long stream (35 tokens) and the invoke need 10 s, the short stream 0.9 s;
    # the app ends what is open at 0.5 + 3 - 0.5 = 3 s after SIGTERM, before uvicorn's own cut.
    server = start_server(
        SCRIPT,
        OFFLINE_TOKEN_DELAY_MS="300",
        SHUTDOWN_DRAIN_SECONDS="0.5",
        GRACEFUL_SHUTDOWN_SECONDS="3",
        REQUEST_TIMEOUT_SECONDS="60",
    )
    invoked: list = []
    invoke = threading.Thread(
        target=lambda: invoked.append(
            httpx.post(f"{server.url}/v1/invoke", json={"query": "slow"}, timeout=60)
        )
    )
    invoke.start()
    long_started, short_started = threading.Event(), threading.Event()
    long_thread, long_events = stream_in_background(server.url, long_started, request_id="long")
    short_thread, short_events = stream_in_background(server.url, short_started, max_tokens=3)
    assert long_started.wait(20) and short_started.wait(20), "the streams never started"

    server.process.send_signal(signal.SIGTERM)
    for thread in (long_thread, short_thread, invoke):
        thread.join(timeout=30)

    # The short stream fits in the grace: it finishes as usual.
    assert short_events[-1] == ("message", "[DONE]"), short_events
    # The long one is ended by the app with an explicit, retryable error event, then [DONE]: not
    # cut off, and ended the way a failed stream ends.
    assert CUT_OFF not in long_events and long_events[-1] == ("message", "[DONE]"), long_events
    event, data = long_events[-2]
    assert event == "error", long_events
    assert json.loads(data)["error"] == {
        "type": "shutting_down",
        "message": "The server is shutting down",
        "request_id": "long",
        "retryable": True,
    }
    # The invoke had sent nothing yet: it gets a 503 in the error shape.
    (response,) = invoked
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "shutting_down"
    assert response.json()["error"]["retryable"] is True

    # The process exits by itself, and uvicorn never had to cancel anything.
    returncode = server.process.wait(timeout=30)
    assert returncode in (0, -signal.SIGTERM)
    output = server.log_text()
    cuts = [line for line in log_lines(output) if line["message"].startswith("Cut by shutdown")]
    assert sorted(line["route"] for line in cuts) == ["/v1/invoke", "/v1/stream"]
    assert "timeout graceful shutdown exceeded" not in output


@pytest.fixture
def shutdown_app(load_script):
    module = load_script(SCRIPT, OFFLINE_TOKEN_DELAY_MS="100")
    with TestClient(module.app) as client:
        yield module, client


def cut_in(client: TestClient, module, seconds: float) -> None:
    """What SIGTERM schedules for the end of the grace, scheduled on the app's own event loop."""
    client.portal.call(
        lambda: asyncio.get_running_loop().call_later(seconds, module.shutdown.cut_open_requests)
    )


def test_a_cut_stream_ends_with_an_error_event_and_is_counted(shutdown_app):
    module, client = shutdown_app
    cut_in(client, module, 0.5)  # the answer needs 35 tokens x 100 ms
    with connect_sse(client, "POST", "/v1/stream", json={"query": "long"}) as source:
        events = list(source.iter_sse())
    assert 0 < len(events) - 1 < 30
    assert events[-2].event == "error", events
    assert events[-1].data == "[DONE]", events
    error = json.loads(events[-2].data)["error"]
    assert error["type"] == "shutting_down" and error["retryable"] is True
    assert error["request_id"] == source.response.headers["x-request-id"]
    metrics = client.get("/metrics").text
    assert 'shutdown_cut_requests_total{route="/v1/stream"} 1.0' in metrics


def test_a_cut_request_that_sent_nothing_gets_a_503(shutdown_app):
    module, client = shutdown_app
    cut_in(client, module, 0.5)
    response = client.post("/v1/invoke", json={"query": "long"})
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "shutting_down"
    assert response.json()["error"]["request_id"] == response.headers["x-request-id"]
    metrics = client.get("/metrics").text
    assert 'shutdown_cut_requests_total{route="/v1/invoke"} 1.0' in metrics


def test_ready_is_a_503_in_the_error_shape_while_draining(shutdown_app):
    module, client = shutdown_app
    assert client.get("/ready").json() == {"ready": True, "model": "offline-model"}
    module.shutdown.draining = True
    response = client.get("/ready")
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "not_ready"
    assert client.get("/health").status_code == 200  # alive, only leaving

"""Step 5 (code/lesson01/step5_shutdown.py, lesson01/shutdown.py): SIGTERM against a real uvicorn
process, nothing in flight lost or cut silently, and the process exits. The production version ends
what the grace cannot finish the same way."""

import asyncio
import json
import logging
import signal
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from httpx_sse import connect_sse

from lesson01 import shutdown
from support.lessons import ROOT
from tests.support.doc_session import section_blocks

SCRIPT = "lesson01/step5_shutdown.py"
CUT_OFF = "<connection closed mid-stream>"


def stream_in_background(url: str, started: threading.Event) -> tuple[threading.Thread, list]:
    """POST /v1/stream in a thread; the list receives (event, data) pairs, or CUT_OFF."""
    received: list = []

    def consume():
        with (
            httpx.Client(timeout=60) as client,
            connect_sse(client, "POST", f"{url}/v1/stream", json={"query": "keep going"}) as source,
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


SHUTTING_DOWN = {
    "type": "shutting_down",
    "message": "The server is shutting down",
    "retryable": True,
}
DRAINING = {"type": "not_ready", "message": "The server is shutting down"}


def without_id(error: dict) -> dict:
    return {k: v for k, v in error.items() if k != "request_id"}


def messages(log: str) -> list[str]:
    """The messages of a JSON log, one object per line."""
    return [json.loads(line)["message"] for line in log.splitlines() if line.startswith("{")]


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
        assert ready.status_code == 503
        assert without_id(ready.json()["error"]) == DRAINING
        assert http.get("/health").status_code == 200
        # By design: during the drain a request that still arrives is answered, not refused.
        # (A whole answer, 35 tokens: it may outlast the drain, and then finishes in the grace.)
        late = http.post("/v1/invoke", json={"query": "late"}, timeout=grace)
        assert late.status_code == 200

    # 2. After the drain uvicorn closes the listener: new connections are refused.
    refused = False
    while time.monotonic() - sent_at < drain + 10 and not refused:
        try:
            httpx.get(f"{server.url}/health", timeout=1)
            time.sleep(0.05)
        # Refused; or accepted into the backlog just before the listener closed, and then reset:
        # closed without an answer, or ECONNRESET on the read, depending on when the reset lands.
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError):
            refused = True
    assert refused, "the port kept accepting connections after the drain"

    # 3. The stream that was in flight completes normally.
    thread.join(timeout=grace)
    assert received[-1] == ("message", "[DONE]"), received
    assert "Set OPENAI_API_KEY" in "".join(data for _, data in received[:-1])

    # 4. The process exits by itself, inside the budget.
    returncode = server.process.wait(timeout=drain + grace)
    assert returncode in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM after a clean shutdown
    logged = messages(server.log_text())
    assert "SIGTERM: /ready answers 503, 1 request(s) in flight" in logged, logged
    assert "Application shutdown complete." in logged
    assert not any(message.startswith("Cut by shutdown") for message in logged), logged


def test_what_the_grace_cannot_finish_is_ended_with_an_error_not_cut(start_server):
    # 300 ms a token: the stream (35 tokens) and the invoke need 10 s; the app ends what is open
    # at 0.5 + 3 - 0.5 = 3 s after SIGTERM, before uvicorn's own cut. (A stream that fits the
    # grace finishing as usual is the test above.)
    server = start_server(
        SCRIPT,
        OFFLINE_TOKEN_DELAY_MS="300",
        SHUTDOWN_DRAIN_SECONDS="0.5",
        GRACEFUL_SHUTDOWN_SECONDS="3",
    )
    invoked: list = []
    invoke = threading.Thread(
        target=lambda: invoked.append(
            httpx.post(f"{server.url}/v1/invoke", json={"query": "slow"}, timeout=60)
        )
    )
    invoke.start()
    long_started = threading.Event()
    long_thread, long_events = stream_in_background(server.url, long_started)
    assert long_started.wait(20), "the stream never started"

    server.process.send_signal(signal.SIGTERM)
    for thread in (long_thread, invoke):
        thread.join(timeout=30)

    # The stream is ended by the app with an explicit, retryable error event, then [DONE]: not
    # cut off, and ended the way a failed stream ends.
    assert CUT_OFF not in long_events and long_events[-1] == ("message", "[DONE]"), long_events
    event, data = long_events[-2]
    assert event == "error", long_events
    assert without_id(json.loads(data)["error"]) == SHUTTING_DOWN
    # The invoke had sent nothing yet: it gets a 503 in the error shape, with its request id.
    (response,) = invoked
    assert response.status_code == 503
    assert response.json() == {
        "error": SHUTTING_DOWN | {"request_id": response.headers["x-request-id"]}
    }

    # The process exits by itself, and uvicorn never had to cancel anything.
    returncode = server.process.wait(timeout=30)
    assert returncode in (0, -signal.SIGTERM)
    output = server.log_text()
    cuts = [m for m in messages(output) if m.startswith("Cut by shutdown")]
    assert sorted(m.rsplit(" ", 1)[-1] for m in cuts) == ["/v1/invoke", "/v1/stream"]
    assert "timeout graceful shutdown exceeded" not in output


@pytest.fixture(params=[SCRIPT, "lesson01/production_api.py"])
def shutdown_app(load_script, request):
    module = load_script(request.param, OFFLINE_TOKEN_DELAY_MS="100")
    with TestClient(module.app) as client:
        yield module, client


def cut_in(client: TestClient, module, seconds: float) -> None:
    """What SIGTERM schedules for the end of the grace, scheduled on the app's own event loop."""
    client.portal.call(
        lambda: asyncio.get_running_loop().call_later(seconds, module.shutdown.cut_open_requests)
    )


def cuts_logged(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("Cut by shutdown")]


def test_a_cut_stream_ends_with_an_error_event_and_is_logged(shutdown_app, caplog):
    module, client = shutdown_app
    cut_in(client, module, 0.5)  # the answer needs 35 tokens x 100 ms
    with (
        caplog.at_level(logging.WARNING),
        connect_sse(client, "POST", "/v1/stream", json={"query": "long"}) as source,
    ):
        events = list(source.iter_sse())
        request_id = source.response.headers["x-request-id"]
    assert 0 < len(events) - 1 < 30
    assert events[-2].event == "error", events
    assert events[-1].data == "[DONE]", events
    assert json.loads(events[-2].data)["error"] == SHUTTING_DOWN | {"request_id": request_id}
    assert cuts_logged(caplog) == ["Cut by shutdown: the grace ran out: POST /v1/stream"]


def test_a_cut_request_that_sent_nothing_gets_a_503(shutdown_app, caplog):
    module, client = shutdown_app
    cut_in(client, module, 0.5)
    with caplog.at_level(logging.WARNING):
        response = client.post("/v1/invoke", json={"query": "long"})
    assert response.status_code == 503
    assert response.json() == {
        "error": SHUTTING_DOWN | {"request_id": response.headers["x-request-id"]}
    }
    assert cuts_logged(caplog) == ["Cut by shutdown: the grace ran out: POST /v1/invoke"]


def test_ready_is_a_503_while_draining(shutdown_app):
    module, client = shutdown_app
    assert client.get("/ready").json() == {"ready": True, "model": "offline-model"}
    module.shutdown.draining = True
    response = client.get("/ready")
    assert response.status_code == 503
    assert without_id(response.json()["error"]) == DRAINING
    assert client.get("/health").status_code == 200  # alive, only leaving


def test_the_docs_shutdown_timeline_is_the_codes_defaults():
    """docs/01 step 5's timeline: its times follow from the defaults in lesson01/shutdown.py."""
    blocks = section_blocks(ROOT / "docs" / "01-agent-api.md", "5. Stop")
    (timeline,) = [block.body for block in blocks if block.body.startswith("t = 0")]
    times = [float(line.split()[2]) for line in timeline.splitlines()]
    drain, grace = shutdown.SHUTDOWN_DRAIN_SECONDS, shutdown.GRACEFUL_SHUTDOWN_SECONDS
    cut = drain + grace - shutdown.CUT_MARGIN_SECONDS
    assert times == [0, drain, cut, drain + grace]
    assert f"SHUTDOWN_DRAIN_SECONDS={drain:g}" in timeline
    assert f"GRACEFUL_SHUTDOWN_SECONDS={grace:g}" in timeline

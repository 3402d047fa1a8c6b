"""Shutdown: drain, grace, then a clear `shutting_down` error for what is still running.

In process for the mechanism (the signal chain, the cut of a stream and of a JSON request), then
with a real `python main.py` process, as the images run it, for what a client sees.
"""

import asyncio
import json
import os
import signal
import time

import httpx
import pytest

from research_agent.web.shutdown import Shutdown, cut_margin
from support.waiting import wait_for
from tests.support.metrics import metric
from tests.support.sse import Event, json_events, parse_sse

QUERY = "Why use a multi-stage Docker build?"


# --- The mechanism, in process --------------------------------------------------------------------


def test_sigterm_drains_then_hands_over_to_the_previous_handler_then_cuts():
    """/ready turns 503 at once; uvicorn's handler runs only after the drain; the cut comes before
    uvicorn's grace runs out."""
    calls = []
    original = signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(time.monotonic()))

    async def scenario():
        shutdown = Shutdown(drain_seconds=0.3, grace_seconds=0.4)
        shutdown.install()
        sent = time.monotonic()
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.sleep(0)  # the handler has run: draining, and nothing handed over yet
        assert shutdown.draining and calls == [] and not shutdown.cut.is_set()
        await asyncio.wait_for(shutdown.cut.wait(), timeout=10)
        cut = time.monotonic()
        return sent, cut

    try:
        sent, cut = asyncio.run(scenario())
    finally:
        signal.signal(signal.SIGTERM, original)
    (handed_over,) = calls
    # Order, not speed: the previous handler ran after the drain, the cut after the hand-over and
    # at least (grace - margin) later.
    assert handed_over - sent >= 0.3
    assert cut - handed_over >= 0.4 - cut_margin(0.4)


def test_cut_margin_leaves_time_to_send_the_error_and_stays_inside_the_grace():
    assert cut_margin(8) == 1.0 and cut_margin(30) == 1.0
    assert cut_margin(1) == 0.25 and cut_margin(0) == 0


def test_a_stream_still_open_at_the_cut_ends_with_a_shutting_down_error_then_done(
    client_for, capsys
):
    with client_for(OFFLINE_TOKEN_DELAY_MS=20) as client:
        cuts = metric(client, "research_shutdown_cuts_total", handler="/v1/research/stream")
        lines = []
        with client.stream(
            "POST", "/v1/research/stream", json={"query": QUERY}, headers={"X-Request-ID": "cut-1"}
        ) as response:
            for line in response.iter_lines():
                lines.append(line)
                if line.startswith("event: token") and len(lines) > 12:
                    client.portal.call(client.app.state.shutdown.cut.set)
        events = parse_sse("\n".join(lines))
        assert metric(client, "research_shutdown_cuts_total", handler="/v1/research/stream") == (
            cuts + 1
        )
        assert metric(client, "research_streams_open") == 0

    names = [e.event for e in events]
    assert "final" not in names and names[-2:] == ["error", "message"]
    assert events[-1].data == "[DONE]"
    (error,) = json_events(events, "error")
    assert error == {
        "error": {
            "type": "shutting_down",
            "message": error["error"]["message"],
            "request_id": "cut-1",
            "retryable": True,
        }
    }
    logs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line[:1] == "{"]
    mine = [line for line in logs if line["request_id"] == "cut-1"]
    assert any(line["message"] == "request cut by shutdown" for line in mine), mine
    access = [line for line in mine if line["message"] == "request"]
    assert [(a["route"], a["status"]) for a in access] == [("/v1/research/stream", 200)]


class SlowAgent:
    """Takes 30 s to answer: a JSON request that outlives the grace."""

    model_label, search_backend = "slow", "local"

    async def research(self, query, used=None):
        await asyncio.sleep(30)


def test_a_json_request_still_running_at_the_cut_answers_503_shutting_down(client_for):
    with client_for(agent=SlowAgent()) as client:
        cuts = metric(client, "research_shutdown_cuts_total", handler="/v1/research")
        client.portal.call(client.app.state.shutdown.cut.set)  # set already: the request is cut
        response = client.post("/v1/research", json={"query": QUERY})
        assert response.status_code == 503
        assert response.json()["error"] | {"message": "-"} == {
            "type": "shutting_down",
            "message": "-",
            "request_id": response.headers["x-request-id"],
            "retryable": True,
        }
        assert metric(client, "research_shutdown_cuts_total", handler="/v1/research") == cuts + 1


# --- A real process, as the images run it ---------------------------------------------------------


def stream_then_sigterm(server, after_tokens: int = 1) -> list[Event]:
    """Open a stream, send SIGTERM once `after_tokens` tokens arrived, read it to its end."""
    body, tokens = [], 0
    with httpx.stream(
        "POST", f"{server.url}/v1/research/stream", json={"query": QUERY}, timeout=60
    ) as response:
        lines = response.iter_lines()
        for line in lines:
            body.append(line)
            tokens += line.startswith("event: token")
            if tokens >= after_tokens:
                break
        server.process.send_signal(signal.SIGTERM)
        body.extend(lines)
    return parse_sse("\n".join(body))


def json_logs(output: str) -> list[dict]:
    # Every line uvicorn and the app print is JSON.
    assert all(line.startswith("{") for line in output.splitlines() if line.strip()), output
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def test_a_stream_that_fits_the_grace_finishes_after_sigterm(start_agent):
    server = start_agent(OFFLINE_TOKEN_DELAY_MS=20, SHUTDOWN_DRAIN_SECONDS=1)
    events = stream_then_sigterm(server)

    names = [e.event for e in events]
    assert names.count("token") > 20, names
    assert names[-2:] == ["final", "message"] and events[-1].data == "[DONE]"
    server.wait(30)
    output = server.log_text()
    assert server.process.returncode in (0, -signal.SIGTERM, 128 + signal.SIGTERM)
    messages = [line["message"] for line in json_logs(output)]
    assert "SIGTERM received: readiness now 503, still serving during the drain" in messages
    assert "research agent stopped" in messages
    assert "request cut by shutdown" not in messages


def test_a_stream_longer_than_the_grace_ends_with_shutting_down_before_uvicorn_cancels_it(
    start_agent,
):
    # About 130 words at 100 ms: a 13-second stream against 0.5 s of drain and 2 s of grace.
    server = start_agent(
        OFFLINE_TOKEN_DELAY_MS=100, SHUTDOWN_DRAIN_SECONDS=0.5, GRACEFUL_SHUTDOWN_SECONDS=2
    )
    events = stream_then_sigterm(server)

    names = [e.event for e in events]
    assert "final" not in names and names[-2:] == ["error", "message"], names
    assert events[-1].data == "[DONE]"
    (error,) = json_events(events, "error")
    assert error["error"]["type"] == "shutting_down" and error["error"]["retryable"] is True

    server.wait(30)
    output = server.log_text()
    assert server.process.returncode in (0, -signal.SIGTERM, 128 + signal.SIGTERM)
    logs = json_logs(output)
    cut = next(line for line in logs if line["message"] == "request cut by shutdown")
    access = next(
        line
        for line in logs
        if line["message"] == "request" and line["request_id"] == cut["request_id"]
    )
    assert access["route"] == "/v1/research/stream" and access["status"] == 200
    # The app ended the stream itself: uvicorn had nothing left to cancel.
    assert not any("Cancel" in line["message"] for line in logs), output


def test_during_the_drain_ready_is_503_but_requests_are_still_served_then_the_listener_closes(
    start_agent,
):
    server = start_agent(SHUTDOWN_DRAIN_SECONDS=5, OFFLINE_TOKEN_DELAY_MS=0)
    server.process.send_signal(signal.SIGTERM)
    wait_for(
        lambda: httpx.get(f"{server.url}/ready", timeout=5).status_code == 503,
        timeout=5,
        interval=0.05,
        what="/ready answering 503",
    )
    # By design: a load balancer needs the drain to notice the 503, and it still sends requests.
    served = httpx.post(f"{server.url}/v1/research", json={"query": QUERY}, timeout=30)
    assert served.status_code == 200 and served.json()["sources"]

    server.wait(30)
    output = server.log_text()
    assert server.process.returncode in (0, -signal.SIGTERM, 128 + signal.SIGTERM)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/health", timeout=5)
    messages = [line["message"] for line in json_logs(output)]
    assert messages.index("drain over: closing the listener, finishing in-flight requests") > (
        messages.index("SIGTERM received: readiness now 503, still serving during the drain")
    )

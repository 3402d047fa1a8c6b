"""One promise, two shutdown mechanisms: lesson 01 step 5 (an ASGI middleware that cancels what is
open) and the research agent (research_agent/shutdown.py, a cut event the stream watches) both end a
stream that the shutdown grace cannot finish. A client must see the same end from both: an `error`
event (`shutting_down`, retryable, with the request id), then `data: [DONE]`.

Each app runs in process and is cut mid-stream the way its SIGTERM handler cuts it at the end of
the grace; tests/lesson_01/test_graceful_shutdown.py and tests/lesson_02/test_shutdown.py do the
same against real processes.
"""

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from support.lessons import import_lesson
from tests.support.sse import Event, iter_sse

QUERY = "Why use a multi-stage Docker build?"
REQUEST_ID = "cut-1"


def read_and_cut(client: TestClient, path: str, cut: Callable[[], None]) -> list[Event]:
    """Stream `path`; after the third event, `cut` runs on the app's event loop."""
    events = []
    headers = {"X-Request-ID": REQUEST_ID}
    with client.stream("POST", path, json={"query": QUERY}, headers=headers) as response:
        assert response.status_code == 200, response.read()
        for event in iter_sse(response.iter_lines()):
            events.append(event)
            if len(events) == 3:
                client.portal.call(cut)
    return events


def lesson_01_step_5(monkeypatch) -> list[Event]:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OFFLINE_TOKEN_DELAY_MS", "100")  # 35 tokens: the cut comes mid-answer
    lesson = import_lesson("code/lesson01/step5_shutdown.py")
    with TestClient(lesson.app) as client:
        return read_and_cut(client, "/v1/stream", lesson.shutdown.cut_open_requests)


def research_agent(monkeypatch) -> list[Event]:
    from research_agent.app import create_app
    from research_agent.settings import Settings, variables

    for name in variables():
        monkeypatch.delenv(name, raising=False)
    app = create_app(Settings(OFFLINE_TOKEN_DELAY_MS=20))
    with TestClient(app) as client:
        return read_and_cut(client, "/v1/research/stream", client.app.state.shutdown.cut.set)


SHUTTING_DOWN = {
    "type": "shutting_down",
    "message": "-",
    "retryable": True,
    "request_id": REQUEST_ID,
}


@pytest.mark.parametrize(
    "cut_stream",
    [
        pytest.param(lesson_01_step_5, id="lesson-01-step-5"),
        pytest.param(research_agent, id="research-agent"),
    ],
)
def test_a_stream_cut_by_shutdown_ends_with_an_error_then_done(monkeypatch, cut_stream):
    events = cut_stream(monkeypatch)

    assert len(events) > 3 and events[0].event != "error", events  # cut mid-answer
    *_, error, done = events
    assert error.event == "error", events[-3:]
    assert error.json()["error"] | {"message": "-"} == SHUTTING_DOWN
    assert done.data == "[DONE]", events[-3:]

"""The real ChatOpenAI path against a local chat-completions stub: tool round trips, streaming."""

import contextlib
import socket
import threading

import pytest
from ddgs.ddgs import DDGS
from ddgs.exceptions import RatelimitException

from support.ports import free_port
from tests.support.openai_stub import ChatCompletionsStub
from tests.support.sse import Event, json_events, parse_sse

QUESTION = "Why use a multi-stage Docker build?"
REPLIES = [
    {"tool_calls": [{"name": "search_docs", "arguments": {"query": "multi-stage build"}}]},
    {"content": "A multi-stage build leaves build tools behind, so the image is smaller [1]."},
]


def online(stub_url: str, **overrides) -> dict:
    return {
        "OPENAI_API_KEY": "test-key",
        "OPENAI_BASE_URL": stub_url,
        "OPENAI_MAX_RETRIES": 0,
        **overrides,
    }


def test_tool_call_round_trip(client_for):
    with (
        ChatCompletionsStub(replies=REPLIES) as stub,
        client_for(**online(stub.base_url, SEARCH_BACKEND="local")) as client,
    ):
        response = client.post("/v1/research", json={"query": QUESTION})

        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"] == "gpt-4o-mini"
        assert body["response"] == REPLIES[1]["content"]
        assert (
            body["steps"][0]["input"] == "multi-stage build"
            and body["steps"][0]["status"] == "success"
        )
        assert body["sources"][0]["url"].startswith("notes/multi-stage-builds.md")
        assert body["tokens_used"] > 0

    first, second = stub.requests
    assert first["model"] == "gpt-4o-mini"
    assert first["messages"][0]["role"] == "system" and "cite" in first["messages"][0]["content"]
    assert first["tools"][0]["function"]["name"] == "search_docs"
    tool_message = second["messages"][-1]
    assert tool_message["role"] == "tool" and tool_message["content"].startswith(
        "[1] Multi-stage builds"
    )


def test_streaming_through_the_stub_reports_tokens_and_usage(client_for):
    with (
        ChatCompletionsStub(replies=REPLIES) as stub,
        client_for(**online(stub.base_url, SEARCH_BACKEND="local")) as client,
    ):
        events = parse_sse(client.post("/v1/research/stream", json={"query": QUESTION}).text)

    assert all(r.get("stream") and r["stream_options"]["include_usage"] for r in stub.requests)
    tokens = [t["text"] for t in json_events(events, "token")]
    assert "".join(tokens) == REPLIES[1]["content"] and len(tokens) > 5
    (final,) = json_events(events, "final")
    assert final["tokens_used"] > 0 and final["sources"]
    assert events[-1] == Event("message", "[DONE]")


def test_default_backend_with_a_key_is_duckduckgo_and_errors_reach_the_model(
    client_for, monkeypatch
):
    outcomes = iter(
        [
            RatelimitException("202 Ratelimit"),
            [
                {
                    "title": "Docker docs",
                    "href": "https://docs.docker.com/build/building/multi-stage/",
                    "body": "Multi-stage.",
                }
            ],
        ]
    )

    def fake_text(self, query, **kwargs):
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(DDGS, "text", fake_text)
    replies = [
        {"tool_calls": [{"name": "web_search", "arguments": {"query": "multi-stage build"}}]},
        {
            "tool_calls": [
                {"name": "web_search", "arguments": {"query": "docker multi-stage build"}}
            ]
        },
        {"content": "Use one to keep images small [1]."},
    ]
    with (
        ChatCompletionsStub(replies=replies) as stub,
        client_for(**online(stub.base_url)) as client,
    ):
        body = client.post("/v1/research", json={"query": QUESTION}).json()

    assert [s["status"] for s in body["steps"]] == ["error", "success"]
    assert "RatelimitException" in body["steps"][0]["error"]
    assert body["sources"] == [
        {
            "title": "Docker docs",
            "url": "https://docs.docker.com/build/building/multi-stage/",
            "snippet": "Multi-stage.",
        }
    ]
    error_seen_by_model = stub.requests[1]["messages"][-1]
    assert (
        error_seen_by_model["role"] == "tool"
        and "RatelimitException" in error_seen_by_model["content"]
    )


def test_unreachable_model_provider_is_502(client_for):
    with client_for(**online(f"http://127.0.0.1:{free_port()}/v1")) as client:
        response = client.post("/v1/research", json={"query": QUESTION})
    assert response.status_code == 502
    assert response.json()["error"]["type"] == "model_error"
    assert "ConnectionError" in response.json()["error"]["message"]


@pytest.fixture
def silent_server():
    """Accepts connections and never answers, like an overloaded provider."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted, stop = [], threading.Event()

    def accept():
        server.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                accepted.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/v1"
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()


def test_silent_model_provider_is_504(client_for, silent_server):
    with client_for(**online(silent_server, REQUEST_TIMEOUT_SECONDS=0.5)) as client:
        response = client.post("/v1/research", json={"query": QUESTION})
    assert response.status_code == 504
    assert response.json()["error"]["type"] in {"model_timeout", "timeout"}


def test_a_model_that_never_stops_searching_is_cut_after_five_model_calls(client_for):
    forever = [{"tool_calls": [{"name": "search_docs", "arguments": {"query": "docker"}}]}]
    with (
        ChatCompletionsStub(replies=forever) as stub,
        client_for(**online(stub.base_url, SEARCH_BACKEND="local")) as client,
    ):
        response = client.post("/v1/research", json={"query": QUESTION})

    assert response.status_code == 200
    assert len(stub.requests) == 5
    body = response.json()
    assert len(body["steps"]) == 5 and "limit" in body["response"].lower()
    # The same sources found again keep their numbers.
    assert body["steps"][0]["sources"] == body["steps"][4]["sources"]

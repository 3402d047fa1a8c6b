"""The DuckDuckGo backend with ddgs faked at its boundary (DDGS.text): results and each failure."""

import threading

import pytest
from ddgs.ddgs import DDGS  # the real class (`ddgs.DDGS` is a lazy proxy to it)
from ddgs.exceptions import DDGSException, RatelimitException, TimeoutException

from tests.support.metrics import metric
from tests.support.sse import json_events, parse_sse

QUERY = "latest docker compose release"
RESULTS = [
    {
        "title": "Docker Compose release notes",
        "href": "https://docs.docker.com/compose/releases/",
        "body": "Compose v2.30 adds lifecycle hooks. It also fixes bugs.",
    },
    {
        "title": "Compose on GitHub",
        "href": "https://github.com/docker/compose/releases",
        "body": "Release v2.30.0 of Docker Compose.",
    },
]


@pytest.fixture
def ddgs_text(monkeypatch):
    """Replace the network call at the bottom of langchain-community's DuckDuckGo tool."""
    calls = []

    def install(behaviour):
        def fake_text(self, query, **kwargs):
            calls.append((query, kwargs))
            return behaviour()

        monkeypatch.setattr(DDGS, "text", fake_text)
        return calls

    return install


@pytest.fixture
def ddg_client(client_for):
    # Long enough for a search that answers at once, on a busy machine (0.5 s once cut one).
    with client_for(SEARCH_BACKEND="duckduckgo", SEARCH_TIMEOUT_SECONDS=5) as client:
        yield client


@pytest.fixture
def hasty_ddg_client(client_for):
    """A short timeout, for the test that waits it out."""
    with client_for(SEARCH_BACKEND="duckduckgo", SEARCH_TIMEOUT_SECONDS=0.5) as client:
        yield client


def test_links_become_sources(ddg_client, ddgs_text):
    calls = ddgs_text(lambda: RESULTS)
    response = ddg_client.post("/v1/research", json={"query": QUERY})

    assert response.status_code == 200, response.text
    body = response.json()
    assert calls[0][0] == QUERY and calls[0][1]["max_results"] == 4
    assert body["sources"] == [
        {
            "title": "Docker Compose release notes",
            "url": "https://docs.docker.com/compose/releases/",
            "snippet": "Compose v2.30 adds lifecycle hooks. It also fixes bugs.",
        },
        {
            "title": "Compose on GitHub",
            "url": "https://github.com/docker/compose/releases",
            "snippet": "Release v2.30.0 of Docker Compose.",
        },
    ]
    assert body["steps"][0]["tool"] == "web_search" and body["steps"][0]["sources"] == [1, 2]
    assert "Compose v2.30 adds lifecycle hooks. It also fixes bugs. [1]" in body["response"]
    assert ddg_client.get("/health").json()["search_backend"] == "duckduckgo"


@pytest.mark.parametrize(
    "exc",
    [
        DDGSException("https://lite.duckduckgo.com/lite/ ConnectError: dns error"),
        RatelimitException("202 Ratelimit"),
        TimeoutException("timed out"),
    ],
    ids=["network-error", "rate-limit", "ddgs-timeout"],
)
def test_search_failure_with_nothing_to_cite_is_502(ddg_client, ddgs_text, exc):
    def fail():
        raise exc

    ddgs_text(fail)
    errors_before = metric(ddg_client, "agent_tool_calls_total", tool="web_search", status="error")
    response = ddg_client.post("/v1/research", json={"query": QUERY})

    assert response.status_code == 502
    error = response.json()["error"]
    assert error["type"] == "search_unavailable"
    assert type(exc).__name__ in error["message"]
    assert error["request_id"] == response.headers["x-request-id"]
    assert (
        metric(ddg_client, "agent_tool_calls_total", tool="web_search", status="error")
        == errors_before + 1
    )
    # The service still works afterwards.
    ddgs_text(lambda: RESULTS)
    assert ddg_client.post("/v1/research", json={"query": QUERY}).status_code == 200


def test_hanging_search_is_cut_by_the_timeout_and_is_504(hasty_ddg_client, ddgs_text):
    released = threading.Event()
    ddgs_text(lambda: released.wait(30) and [])  # like a blackholed connection (~20 s in real life)
    try:
        response = hasty_ddg_client.post("/v1/research", json={"query": QUERY})
    finally:
        released.set()

    assert response.status_code == 504
    error = response.json()["error"]
    assert error["type"] == "search_timeout"
    assert "timed out after 0.5 s" in error["message"]


def test_stream_shows_the_failed_tool_call_then_an_error_event(ddg_client, ddgs_text):
    def fail():
        raise RatelimitException("202 Ratelimit")

    ddgs_text(fail)
    response = ddg_client.post("/v1/research/stream", json={"query": QUERY})

    events = parse_sse(response.text)
    (tool,) = json_events(events, "tool")
    assert tool["status"] == "error" and tool["sources"] == []
    assert (
        tool["error"]["type"] == "search_unavailable"
        and "RatelimitException" in tool["error"]["message"]
    )
    assert [e.event for e in events][-2:] == ["error", "message"] and events[-1].data == "[DONE]"
    assert json_events(events, "error")[0]["error"]["type"] == "search_unavailable"


def test_hits_become_sources_whatever_the_backend_calls_their_link():
    from research_agent.search import as_sources

    hits = [
        {"title": "Docs", "link": "https://docs.docker.com/", "snippet": "Compose."},
        {"link": "https://example.org/untitled"},  # no title: the link stands in for it
        {"title": "No link", "snippet": "cannot be cited"},
        "not a hit",
    ]
    assert as_sources(hits, "link") == [
        {"title": "Docs", "url": "https://docs.docker.com/", "snippet": "Compose."},
        {"title": "https://example.org/untitled", "url": "https://example.org/untitled",
         "snippet": ""},
    ]  # fmt: skip
    # The MCP tool's sources name their link `url`: the same mapping.
    assert as_sources([{"url": "notes/a.md", "snippet": "A"}], "url") == [
        {"title": "notes/a.md", "url": "notes/a.md", "snippet": "A"}
    ]

"""Every error path answers with one JSON shape and the request id, never a stack trace."""

import pytest

from research_agent.deps import get_agent
from research_agent.schemas import MAX_QUERY_CHARS
from research_agent.web.errors import UpstreamError, UpstreamTimeoutError
from tests.support.errors import assert_error
from tests.support.sse import json_events, parse_sse


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"query": ""},
        {"query": "  "},
        {"query": 42},
        {"query": "x" * (MAX_QUERY_CHARS + 1)},
        {"query": " " + "x" * MAX_QUERY_CHARS + " "},
        {"query": "     "},
        {"query": True},
        {"query": ["a list", "of strings"]},
        {"query": "valid question", "extra": 1},
    ],
    ids=[
        "missing",
        "empty",
        "blank",
        "not-a-string",
        "too-long",
        "too-long-with-padding",
        "only-whitespace",
        "boolean",
        "list",
        "unknown-field",
    ],
)
def test_invalid_requests_are_422(client, body):
    error = assert_error(client.post("/v1/research", json=body), 422, "validation_error")
    assert error["details"] and error["details"][0]["loc"][0] == "body"


def test_the_limits_apply_to_what_the_client_sent_then_the_query_is_stripped(client):
    padded = " " + "x" * (MAX_QUERY_CHARS - 2) + " "  # 2000 characters as sent: accepted
    response = client.post("/v1/research", json={"query": padded})
    assert response.status_code == 200 and response.json()["query"] == padded.strip()


def test_a_body_that_is_not_utf8_is_400_http_error(client):
    response = client.post(
        "/v1/research",
        content=b'{"query": "caf\xe9 au lait"}',
        headers={"content-type": "application/json"},
    )
    assert_error(response, 400, "http_error")


def test_malformed_json_is_422(client):
    response = client.post(
        "/v1/research", content=b'{"query": ', headers={"content-type": "application/json"}
    )
    assert_error(response, 422, "validation_error")


def test_stream_validates_before_streaming(client):
    assert_error(client.post("/v1/research/stream", json={"query": ""}), 422, "validation_error")


def test_oversized_body_is_413(client_for):
    with client_for(MAX_BODY_BYTES=1000) as client:
        big = {"query": "y" * 1500}
        assert_error(client.post("/v1/research", json=big), 413, "payload_too_large")

        def chunks():  # no Content-Length: the limit is enforced while reading
            yield b'{"query": "'
            yield b"z" * 1500
            yield b'"}'

        response = client.post(
            "/v1/research", content=chunks(), headers={"content-type": "application/json"}
        )
        assert_error(response, 413, "payload_too_large")


def test_unknown_route_and_method(client):
    assert_error(client.get("/v2/nothing"), 404, "not_found")
    not_allowed = client.get("/v1/research")
    assert_error(not_allowed, 405, "method_not_allowed")
    assert not_allowed.headers["allow"] == "POST"


class FailingAgent:
    model_label = "failing"
    search_backend = "local"

    def __init__(self, exc: Exception):
        self.exc = exc

    async def research(self, query, callbacks=()):
        raise self.exc

    async def stream(self, query, callbacks=()):
        yield "token", {"text": "partial "}
        raise self.exc


@pytest.mark.parametrize(
    ("exc", "status", "error_type"),
    [
        (
            UpstreamError("the model provider answered HTTP 500", error_type="model_error"),
            502,
            "model_error",
        ),
        (UpstreamTimeoutError("research took longer than 60 s"), 504, "timeout"),
        (RuntimeError("secret internal detail /etc/passwd"), 500, "internal_error"),
    ],
)
def test_agent_failures_map_to_status_codes(client, exc, status, error_type):
    client.app.dependency_overrides[get_agent] = lambda: FailingAgent(exc)
    error = assert_error(
        client.post("/v1/research", json={"query": "anything at all"}), status, error_type
    )
    assert "secret internal detail" not in error["message"]


def test_unhandled_error_is_logged_with_its_traceback_but_not_sent(client, capsys):
    client.app.dependency_overrides[get_agent] = lambda: FailingAgent(
        RuntimeError("secret internal detail")
    )
    response = client.post(
        "/v1/research", json={"query": "anything at all"}, headers={"X-Request-ID": "boom-1"}
    )
    assert response.json() == {
        "error": {
            "type": "internal_error",
            "message": "Internal server error",
            "request_id": "boom-1",
        }
    }
    logs = capsys.readouterr().out
    assert "secret internal detail" in logs and "Traceback" in logs and "boom-1" in logs


@pytest.mark.parametrize(
    ("exc", "error_type", "message"),
    [
        (
            UpstreamError("search backend failed", error_type="search_unavailable"),
            "search_unavailable",
            "search backend failed",
        ),
        (RuntimeError("secret internal detail"), "internal_error", "Internal server error"),
    ],
)
def test_stream_failures_send_an_error_event_then_done(client, exc, error_type, message):
    client.app.dependency_overrides[get_agent] = lambda: FailingAgent(exc)
    response = client.post("/v1/research/stream", json={"query": "anything at all"})
    assert response.status_code == 200  # the stream had started: the error travels in-band
    events = parse_sse(response.text)
    assert [e.event for e in events] == ["token", "error", "message"]
    assert events[-1].data == "[DONE]"
    (error,) = json_events(events, "error")
    assert error == {
        "error": {
            "type": error_type,
            "message": message,
            "request_id": response.headers["x-request-id"],
        }
    }
    assert "secret internal detail" not in response.text


def test_whole_request_timeout_is_504(client_for, monkeypatch):
    from research_agent.offline_model import OfflineResearchModel

    with client_for(OFFLINE_TOKEN_DELAY_MS=0, REQUEST_TIMEOUT_SECONDS=0.3) as client:
        import asyncio

        async def slow_generate(self, *args, **kwargs):
            await asyncio.Event().wait()  # never returns: the request deadline must cut it

        monkeypatch.setattr(OfflineResearchModel, "_agenerate", slow_generate)
        error = assert_error(
            client.post("/v1/research", json={"query": "anything at all"}), 504, "timeout"
        )
        assert "0.3 s" in error["message"]


def test_the_error_body_and_the_internal_error_message_have_one_owner():
    # research_agent/web/error_shape.py owns both; research_agent/web/errors.py (and through it the
    # middleware and the stream) uses them, so a 500 says the same from a handler, the middleware
    # and an SSE error event.
    from research_agent.web import error_shape, errors

    assert errors.error_body is error_shape.error_body
    assert errors.INTERNAL_ERROR == (500, "internal_error", error_shape.INTERNAL_ERROR_MESSAGE)
    assert error_shape.INTERNAL_ERROR_MESSAGE == "Internal server error"


@pytest.mark.parametrize(
    "length",
    [b"\xb2", b"1" * 5000, b"-1", b"1e3"],
    ids=["superscript-two", "5000-digits", "negative", "exponent"],
)
def test_a_content_length_that_is_not_a_number_is_a_400(client, length):
    """uvicorn refuses these itself; another server might pass them on, and the body limit reads
    Content-Length with the parser every header number goes through (web/header_numbers.py)."""
    response = client.post(
        "/v1/research",
        content=b'{"query": "q"}',
        headers={"content-type": "application/json", "content-length": length},
    )
    error = assert_error(response, 400, "invalid_header")
    assert "Content-Length" in error["message"]

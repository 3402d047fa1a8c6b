"""Step 1 (code/lesson01/step1_api.py): the agent behind FastAPI, as one JSON answer or a token
stream, with a liveness and a readiness probe."""

import pytest
from fastapi.testclient import TestClient
from httpx_sse import connect_sse

STEP_1 = "lesson01/step1_api.py"


@pytest.fixture
def step(load_script):
    return load_script(STEP_1)


@pytest.fixture
def client(step):
    with TestClient(step.app) as client:  # the with-block runs the lifespan
        yield client


def test_health_answers_without_the_agent(step):
    response = TestClient(step.app).get("/health")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_ready_is_503_until_the_lifespan_has_built_the_agent(step):
    response = TestClient(step.app).get("/ready")  # no with-block: the lifespan never ran
    assert response.status_code == 503
    with TestClient(step.app) as client:
        assert client.get("/ready").json() == {"ready": True, "model": "offline-model"}


def test_invoke_returns_an_offline_answer_with_token_usage(client):
    response = client.post("/v1/invoke", json={"query": "What is a container?"})
    body = response.json()
    assert response.status_code == 200 and body["model"] == "offline-model", response.text
    assert "[offline model] You asked: What is a container?" in body["response"]
    assert body["tokens_used"] > 0


@pytest.mark.parametrize("payload", [{"query": ""}, {}, {"query": "x" * 4001}, {"query": 3}])
def test_bad_queries_are_rejected_with_fastapis_422(client, payload):
    response = client.post("/v1/invoke", json=payload)
    assert response.status_code == 422
    assert "detail" in response.json()


def test_stream_sends_one_event_per_token_then_done(client):
    answer = client.post("/v1/invoke", json={"query": "Stream me"}).json()["response"]
    with connect_sse(client, "POST", "/v1/stream", json={"query": "Stream me"}) as source:
        assert source.response.headers["content-type"].startswith("text/event-stream")
        # FastAPI's EventSourceResponse: no cache, and no buffering in nginx.
        assert source.response.headers["cache-control"] == "no-cache"
        assert source.response.headers["x-accel-buffering"] == "no"
        data = [event.data for event in source.iter_sse()]
    assert data[-1] == "[DONE]"
    assert len(data) > 5  # token by token, not one blob
    assert "".join(data[:-1]) == answer  # each token as it is: raw, not a JSON string


def test_a_token_with_a_newline_arrives_whole(client):
    async def two_lines(request):
        yield "line one\nline two"

    client.app.state.agent.stream = two_lines
    with connect_sse(client, "POST", "/v1/stream", json={"query": "q"}) as source:
        assert [e.data for e in source.iter_sse()] == ["line one\nline two", "[DONE]"]


def test_stream_reports_a_failure_as_an_error_event(client):
    async def broken(request):
        raise RuntimeError("secret internals")
        yield  # pragma: no cover - makes this an async generator

    client.app.state.agent.stream = broken
    with connect_sse(client, "POST", "/v1/stream", json={"query": "q"}) as source:
        events = list(source.iter_sse())
    assert [(e.event, e.data) for e in events][1:] == [("message", "[DONE]")]
    assert events[0].event == "error"
    assert events[0].json() == {"error": "The agent failed while streaming"}


def test_openapi_describes_the_stream_as_server_sent_events(client):
    responses = client.get("/openapi.json").json()["paths"]["/v1/stream"]["post"]["responses"]
    (content,) = responses["200"]["content"].items()
    media_type, schema = content
    assert media_type == "text/event-stream"
    # FastAPI writes the schema of each event itself.
    assert set(schema["itemSchema"]["properties"]) == {"data", "event", "id", "retry"}

import pytest
from fastapi.testclient import TestClient
from httpx_sse import connect_sse


@pytest.fixture
def basic(load_script):
    return load_script("01_basic_api.py")


@pytest.fixture
def client(basic):
    with TestClient(basic.app) as client:  # the with-block runs the lifespan
        yield client


def test_health_answers_without_the_agent(basic):
    response = TestClient(basic.app).get("/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_ready_is_503_until_the_lifespan_has_built_the_agent(basic):
    response = TestClient(basic.app).get("/ready")  # no with-block: the lifespan never ran
    assert response.status_code == 503
    with TestClient(basic.app) as client:
        assert client.get("/ready").status_code == 200


def test_invoke_returns_an_offline_answer_with_token_usage(client):
    response = client.post("/v1/invoke", json={"query": "What is a container?"})
    body = response.json()
    assert response.status_code == 200 and body["model"] == "offline-model", response.text
    assert "[offline model] You asked: What is a container?" in body["response"]
    assert body["tokens_used"] > 0


def test_invoke_passes_context_to_the_prompt(client, basic):
    inputs = basic.Agent._inputs(basic.AgentRequest(query="q", context={"user": "ada"}))
    assert '"user": "ada"' in inputs["context"]
    assert (
        client.post("/v1/invoke", json={"query": "q", "context": {"user": "ada"}}).status_code
        == 200
    )


@pytest.mark.parametrize("payload", [{"query": ""}, {}, {"query": "x" * 4001}, {"query": 3}])
def test_bad_queries_are_rejected_with_422(client, payload):
    response = client.post("/v1/invoke", json=payload)
    assert response.status_code == 422
    assert "detail" in response.json()


def test_stream_sends_one_event_per_token_then_done(client):
    answer = client.post("/v1/invoke", json={"query": "Stream me"}).json()["response"]
    with connect_sse(client, "POST", "/v1/stream", json={"query": "Stream me"}) as source:
        assert source.response.headers["content-type"].startswith("text/event-stream")
        data = [event.data for event in source.iter_sse()]
    assert data[-1] == "[DONE]"
    assert len(data) > 5  # token by token, not one blob
    assert "".join(data[:-1]) == answer


def test_stream_reports_a_failure_as_an_error_event(client, basic):
    async def broken(request):
        raise RuntimeError("secret internals")
        yield  # pragma: no cover - makes this an async generator

    client.app.state.agent.stream = broken
    with connect_sse(client, "POST", "/v1/stream", json={"query": "q"}) as source:
        events = list(source.iter_sse())
    assert [(e.event, e.data) for e in events][1:] == [("message", "[DONE]")]
    assert events[0].event == "error"
    assert "secret internals" not in events[0].data


def test_openapi_documents_the_stream_as_server_sent_events(client):
    response = client.get("/openapi.json").json()["paths"]["/v1/stream"]["post"]["responses"]
    assert list(response["200"]["content"]) == ["text/event-stream"]

import io
import json
import logging
import re
import uuid

import pytest
from cachetools import TTLCache
from fastapi.testclient import TestClient
from httpx_sse import connect_sse


@pytest.fixture
def load_production(load_script):
    def load(**env: str):
        return load_script("01_production_api.py", **env)

    return load


@pytest.fixture
def prod(load_production):
    return load_production()


@pytest.fixture
def client(prod):
    with TestClient(prod.app) as client:
        yield client


def metric(client, name: str, **labels: str) -> float:
    """The value of one Prometheus sample, 0 when the series does not exist yet."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f"{name}{{{wanted}}} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def assert_error_shape(response, status: int, error_type: str) -> dict:
    assert response.status_code == status
    error = response.json()["error"]
    assert error["type"] == error_type
    assert error["request_id"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text
    return error


def test_ready_is_a_503_in_the_error_shape_before_startup(prod):
    response = TestClient(prod.app).get("/ready")
    assert_error_shape(response, 503, "not_ready")


def test_invoke_answers_offline_with_a_request_id(client):
    response = client.post("/v1/invoke", json={"query": "What is a container?"})
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "offline-model"
    assert "What is a container?" in body["response"]
    assert body["tokens_used"] > 0 and body["cached"] is False
    assert body["request_id"] == response.headers["x-request-id"]
    assert uuid.UUID(body["request_id"])
    assert body["created_at"].endswith("Z") or "+00:00" in body["created_at"]


def test_a_callers_request_id_is_kept_and_a_malformed_one_replaced(client):
    kept = client.get("/health", headers={"X-Request-ID": "trace-42"})
    assert kept.headers["x-request-id"] == "trace-42"
    replaced = client.get("/health", headers={"X-Request-ID": "bad id\twith spaces"})
    assert re.fullmatch(r"[0-9a-f]{32}", replaced.headers["x-request-id"])


def test_every_log_line_is_json_with_the_request_id(client, prod):
    (json_handler,) = [
        h for h in logging.getLogger().handlers if isinstance(h.formatter, prod.JsonFormatter)
    ]
    json_handler.setStream(output := io.StringIO())
    client.post("/v1/invoke", json={"query": "log me"}, headers={"X-Request-ID": "log-check-1"})
    lines = [json.loads(line) for line in output.getvalue().splitlines()]
    access = [
        entry
        for entry in lines
        if entry["message"] == "request" and entry["request_id"] == "log-check-1"
    ]
    assert len(access) == 1
    assert access[0]["route"] == "/v1/invoke" and access[0]["status"] == 200


def test_metrics_count_requests_by_route_template_and_tokens(client):
    before = metric(client, "agent_tokens_total", model="offline-model")
    tokens = client.post("/v1/invoke", json={"query": "count me"}).json()["tokens_used"]
    assert (
        metric(client, "http_requests_total", method="POST", route="/v1/invoke", status="200") == 1
    )
    assert metric(client, "agent_tokens_total", model="offline-model") == before + tokens
    assert (
        metric(client, "http_request_duration_seconds_count", method="POST", route="/v1/invoke")
        == 1
    )


def test_unknown_paths_share_one_metric_series(client):
    for _ in range(1000):
        assert client.get(f"/no-such-page/{uuid.uuid4().hex}").status_code == 404
    series = [
        line
        for line in client.get("/metrics").text.splitlines()
        if line.startswith("http_requests_total{")
    ]
    assert (
        metric(client, "http_requests_total", method="GET", route="unmatched", status="404") == 1000
    )
    assert len(series) < 10


def test_unknown_path_gets_the_json_error_shape(client):
    assert_error_shape(client.get("/nope"), 404, "not_found")


@pytest.mark.parametrize(
    "payload",
    [
        {"query": ""},
        {"query": "x" * 4001},
        {"query": "q", "temperature": 3},
        {"query": "q", "max_tokens": 0},
        {"query": "q", "max_tokens": 5000},
        {"nothing": 1},
    ],
)
def test_bad_input_is_a_422_naming_the_field(client, payload):
    error = assert_error_shape(client.post("/v1/invoke", json=payload), 422, "validation_error")
    assert error["details"] and all("field" in d for d in error["details"])


def test_query_length_limit_comes_from_settings(load_production):
    with TestClient(load_production(MAX_QUERY_CHARS="10").app) as client:
        assert client.post("/v1/invoke", json={"query": "x" * 10}).status_code == 200
        assert client.post("/v1/invoke", json={"query": "x" * 11}).status_code == 422


def test_a_slow_model_gives_a_504(load_production):
    app = load_production(OFFLINE_TOKEN_DELAY_MS="50", REQUEST_TIMEOUT_SECONDS="0.2").app
    with TestClient(app) as client:
        error = assert_error_shape(
            client.post("/v1/invoke", json={"query": "slow"}), 504, "timeout"
        )
        assert "0.2s" in error["message"]


def test_an_unreachable_model_provider_gives_a_502(load_production):
    # A real ChatOpenAI pointed at a port where nothing listens: the provider fails, not our code.
    app = load_production(OPENAI_API_KEY="test-key", OPENAI_BASE_URL="http://127.0.0.1:9/v1").app
    with TestClient(app) as client:
        client.app.state.agent.model.max_retries = 0
        assert_error_shape(client.post("/v1/invoke", json={"query": "hi"}), 502, "upstream_error")


def test_an_unexpected_error_is_a_500_without_internals(client):
    async def broken(request):
        raise RuntimeError("database password is hunter2")

    client.app.state.agent.invoke = broken
    response = client.post("/v1/invoke", json={"query": "q"})
    error = assert_error_shape(response, 500, "internal_error")
    assert "hunter2" not in response.text and error["message"] == "An unexpected error occurred"
    assert (
        metric(client, "http_requests_total", method="POST", route="/v1/invoke", status="500") == 1
    )


def test_cache_hits_only_when_every_input_matches(client):
    ask = {"query": "cache me", "temperature": 0.2, "max_tokens": 50}
    assert client.post("/v1/invoke", json=ask).json()["cached"] is False
    assert client.post("/v1/invoke", json=ask).json()["cached"] is True
    for change in (
        {"temperature": 0.9},
        {"max_tokens": 10},
        {"query": "other"},
        {"context": {"a": 1}},
    ):
        assert client.post("/v1/invoke", json={**ask, **change}).json()["cached"] is False
    assert metric(client, "agent_cache_requests_total", result="hit") == 1
    assert metric(client, "agent_cache_requests_total", result="miss") == 5


def test_cache_is_bounded_in_size_and_time(client):
    now = [0.0]
    client.app.state.agent.cache = TTLCache(maxsize=2, ttl=60, timer=lambda: now[0])
    for query in ("a", "b", "c"):
        client.post("/v1/invoke", json={"query": query})
    assert (
        client.post("/v1/invoke", json={"query": "a"}).json()["cached"] is False
    )  # evicted by size
    assert client.post("/v1/invoke", json={"query": "c"}).json()["cached"] is True
    now[0] = 61.0
    assert client.post("/v1/invoke", json={"query": "c"}).json()["cached"] is False  # expired


def test_cache_can_be_turned_off(load_production):
    with TestClient(load_production(CACHE_MAX_ENTRIES="0").app) as client:
        for _ in range(2):
            assert client.post("/v1/invoke", json={"query": "same"}).json()["cached"] is False


def test_max_tokens_from_the_request_reaches_the_model(client):
    body = client.post("/v1/invoke", json={"query": "long question here", "max_tokens": 3}).json()
    assert body["response"] == "[offline model] You"


def test_stream_sends_tokens_then_done_and_counts_tokens(client):
    before = metric(client, "agent_tokens_total", model="offline-model")
    with connect_sse(client, "POST", "/v1/stream", json={"query": "stream"}) as source:
        assert source.response.headers["x-request-id"]
        data = [event.data for event in source.iter_sse()]
    assert data[-1] == "[DONE]" and len(data) > 5
    assert metric(client, "agent_tokens_total", model="offline-model") > before


def test_a_slow_stream_ends_with_a_timeout_error_event(load_production):
    app = load_production(OFFLINE_TOKEN_DELAY_MS="50", REQUEST_TIMEOUT_SECONDS="0.2").app
    with TestClient(app) as client:
        with connect_sse(client, "POST", "/v1/stream", json={"query": "slow"}) as source:
            events = list(source.iter_sse())
    assert events[-1].event == "error"
    assert json.loads(events[-1].data)["error"]["type"] == "timeout"
    assert 0 < len(events) - 1 < 10  # some tokens made it before the deadline


def test_cors_allows_configured_origins_with_credentials(load_production):
    app = load_production(CORS_ORIGINS='["https://app.example.com"]').app
    with TestClient(app) as client:
        preflight = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"}
        response = client.options("/v1/invoke", headers=preflight)
        assert response.headers["access-control-allow-origin"] == "https://app.example.com"
        assert response.headers["access-control-allow-credentials"] == "true"
        other = client.options(
            "/v1/invoke", headers={**preflight, "Origin": "https://evil.example"}
        )
        assert "access-control-allow-origin" not in other.headers


def test_cors_wildcard_never_comes_with_credentials(load_production):
    app = load_production(CORS_ORIGINS='["*"]').app
    with TestClient(app) as client:
        response = client.get("/health", headers={"Origin": "https://anywhere.example"})
        assert response.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in response.headers


def test_no_cors_headers_without_configured_origins(client):
    response = client.get("/health", headers={"Origin": "https://anywhere.example"})
    assert "access-control-allow-origin" not in response.headers

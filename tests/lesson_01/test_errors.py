"""Step 4's one error shape and deadline (lesson01/errors.py), in step 4 and in every step and
version that builds on it."""

import json

import pytest
from fastapi.testclient import TestClient
from httpx_sse import connect_sse

from lesson01.errors import error_body as lessons_error_body
from lesson01.request_context import request_id_var
from research_agent.web.error_shape import INTERNAL_ERROR_MESSAGE, error_body
from tests.support.errors import assert_error

FROM_STEP_4 = [
    "lesson01/step4_errors.py",
    "lesson01/step5_shutdown.py",
    "lesson01/production_api.py",
]


@pytest.fixture(params=FROM_STEP_4)
def load(load_script, request):
    return lambda **env: load_script(request.param, **env)


@pytest.fixture
def client(load):
    with TestClient(load().app) as client:
        yield client


def test_ready_is_a_503_in_the_shape_before_the_agent_exists(load):
    assert_error(TestClient(load().app).get("/ready"), 503, "not_ready")


def test_an_unknown_path_and_a_wrong_method_are_in_the_shape(client):
    assert_error(client.get("/nope"), 404, "not_found")
    response = client.get("/v1/invoke")
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "POST"


@pytest.mark.parametrize(
    "payload", [{"query": ""}, {"query": "x" * 4001}, {"nothing": 1}, {"query": 3}]
)
def test_bad_input_is_a_422_naming_each_problem(client, payload):
    error = assert_error(client.post("/v1/invoke", json=payload), 422, "validation_error")
    assert error["details"]
    for detail in error["details"]:
        assert set(detail) == {"loc", "msg", "type"}, detail
        assert detail["loc"][0] == "body" and detail["msg"] and detail["type"], detail


def test_a_body_that_is_not_utf8_is_a_400_in_the_shape(client):
    response = client.post(
        "/v1/invoke", content=b'{"query": "\xff"}', headers={"content-type": "application/json"}
    )
    assert_error(response, 400, "http_error")


def test_an_unexpected_error_is_a_500_without_internals(load):
    with TestClient(load().app, raise_server_exceptions=False) as client:

        async def broken(request):
            raise RuntimeError("database password is hunter2")

        client.app.state.agent.invoke = broken
        response = client.post("/v1/invoke", json={"query": "q"}, headers={"X-Request-ID": "b-1"})
    assert response.status_code == 500 and "hunter2" not in response.text
    # Starlette's last resort runs outside the middleware: the id is in the body only.
    assert response.json() == {
        "error": {"type": "internal_error", "message": INTERNAL_ERROR_MESSAGE, "request_id": "b-1"}
    }


def test_a_slow_model_is_a_504(load):
    app = load(OFFLINE_TOKEN_DELAY_MS="50", REQUEST_TIMEOUT_SECONDS="0.2").app
    with TestClient(app) as client:
        assert_error(client.post("/v1/invoke", json={"query": "slow"}), 504, "timeout")


def test_a_slow_stream_ends_with_a_timeout_event_then_done(load):
    # A token every 0.4 s and 2 s to answer: a few tokens come before the deadline, however busy
    # the machine (at 0.05 s and 0.3 s, a loaded one sent none before it).
    app = load(OFFLINE_TOKEN_DELAY_MS="400", REQUEST_TIMEOUT_SECONDS="2").app
    with (
        TestClient(app) as client,
        connect_sse(client, "POST", "/v1/stream", json={"query": "slow"}) as source,
    ):
        request_id = source.response.headers["x-request-id"]
        events = list(source.iter_sse())
    assert events[-1].data == "[DONE]", events
    assert events[-2].event == "error", events
    assert json.loads(events[-2].data)["error"] == {
        "type": "timeout",
        "message": "The model did not answer in time",
        "request_id": request_id,
    }
    assert 0 < len(events) - 2 < 10  # some tokens came before the deadline


def test_an_unreachable_model_provider_is_a_502(load):
    # A real ChatOpenAI pointed at a port where nothing listens: the provider fails, not our code.
    app = load(OPENAI_API_KEY="test-key", OPENAI_BASE_URL="http://127.0.0.1:9/v1").app
    with TestClient(app) as client:
        agent = client.app.state.agent
        (getattr(agent, "model", None) or agent.chain.last).max_retries = 0
        assert_error(client.post("/v1/invoke", json={"query": "hi"}), 502, "upstream_error")


def test_the_shape_is_the_courses_one():
    """lesson01/errors.py builds by hand the body research_agent/web/error_shape.py owns."""
    token = request_id_var.set("r1")
    try:
        assert lessons_error_body("internal_error", INTERNAL_ERROR_MESSAGE, retryable=True) == (
            error_body("internal_error", INTERNAL_ERROR_MESSAGE, request_id="r1", retryable=True)
        )
    finally:
        request_id_var.reset(token)

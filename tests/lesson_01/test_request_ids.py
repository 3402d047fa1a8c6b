"""Step 2's request ids and JSON logs (lesson01/request_context.py), in step 2 and in every step
and version that builds on it."""

import concurrent.futures
import io
import json
import logging
import re
import uuid

import pytest
from fastapi.testclient import TestClient
from httpx_sse import connect_sse

from lesson01.request_context import JsonFormatter

FROM_STEP_2 = [
    "lesson01/step2_request_ids.py",
    "lesson01/step3_metrics.py",
    "lesson01/step4_errors.py",
    "lesson01/step5_shutdown.py",
    "lesson01/production_api.py",
]


@pytest.fixture(params=FROM_STEP_2)
def app_module(load_script, request):
    return load_script(request.param)


@pytest.fixture
def client(app_module):
    with TestClient(app_module.app) as client:
        yield client


def capture_logs():
    """What the JSON handler (configured when a step is loaded) writes from now on: a function
    that returns it, one parsed object per line."""
    (handler,) = [h for h in logging.getLogger().handlers if isinstance(h.formatter, JsonFormatter)]
    handler.setStream(output := io.StringIO())
    return lambda: [json.loads(line) for line in output.getvalue().splitlines()]


def test_a_request_gets_an_id_in_a_header(client):
    response = client.get("/health")
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])
    assert response.headers["x-request-id"] != client.get("/health").headers["x-request-id"]


def test_a_callers_request_id_is_kept_and_a_malformed_one_replaced(client):
    kept = client.get("/health", headers={"X-Request-ID": "trace-42"})
    assert kept.headers["x-request-id"] == "trace-42"
    for bad in ("bad id\twith spaces", "x" * 129, "a\nb", ""):
        replaced = client.get("/health", headers={"X-Request-ID": bad})
        assert uuid.UUID(replaced.headers["x-request-id"]), bad


def test_every_log_line_is_json_and_the_request_is_logged_once_with_its_id(client):
    log_lines = capture_logs()
    client.post("/v1/invoke", json={"query": "log me"}, headers={"X-Request-ID": "log-check-1"})
    lines = log_lines()
    assert all(
        {"time", "level", "logger", "message", "request_id"} <= line.keys() for line in lines
    )
    access = [e for e in lines if e["message"] == "request" and e["request_id"] == "log-check-1"]
    assert len(access) == 1
    assert access[0]["route"] == "/v1/invoke" and access[0]["status"] == 200
    assert access[0]["method"] == "POST" and access[0]["duration_ms"] > 0


def test_a_stream_is_logged_at_its_last_byte_with_its_id(load_script):
    module = load_script(FROM_STEP_2[0], OFFLINE_TOKEN_DELAY_MS="20")
    log_lines = capture_logs()
    with (
        TestClient(module.app) as client,
        connect_sse(client, "POST", "/v1/stream", json={"query": "q"}) as source,
    ):
        assert source.response.headers["x-request-id"]
        events = list(source.iter_sse())
        request_id = source.response.headers["x-request-id"]
    (access,) = [e for e in log_lines() if e["message"] == "request"]
    assert access["request_id"] == request_id and access["route"] == "/v1/stream"
    # 35 tokens, 20 ms apart: logged when the stream ended, not when it began.
    assert len(events) > 30 and access["duration_ms"] > 500


def test_concurrent_requests_keep_their_own_ids(client):
    log_lines = capture_logs()
    ids = [f"parallel-{i}" for i in range(8)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(
                lambda rid: client.post(
                    "/v1/invoke", json={"query": rid}, headers={"X-Request-ID": rid}
                ),
                ids,
            )
        )
    assert [a.headers["x-request-id"] for a in answers] == ids
    logged = {e["request_id"]: e for e in log_lines() if e["message"] == "request"}
    assert set(ids) <= set(logged)

"""Step 3's metrics, in step 3 and in every step and version that builds on it: each request counted
and timed to its last byte, by method, status and route template."""

import uuid

import pytest
from fastapi.testclient import TestClient

from tests.support.metrics import metric

FROM_STEP_3 = [
    "lesson01/step3_metrics.py",
    "lesson01/step4_errors.py",
    "lesson01/step5_shutdown.py",
    "lesson01/production_api.py",
]


@pytest.fixture(params=FROM_STEP_3)
def client(load_script, request):
    with TestClient(load_script(request.param).app) as client:
        yield client


def test_requests_are_counted_and_timed_by_route_template(client):
    client.post("/v1/invoke", json={"query": "count me"})
    client.post("/v1/invoke", json={"query": ""})
    labels = {"method": "POST", "route": "/v1/invoke"}
    assert metric(client, "http_requests_total", status="200", **labels) == 1
    assert metric(client, "http_requests_total", status="422", **labels) == 1
    assert metric(client, "http_request_duration_seconds_count", **labels) == 2


def test_unknown_paths_share_one_series(client):
    for _ in range(200):
        assert client.get(f"/no-such-page/{uuid.uuid4().hex}").status_code == 404
    series = [line for line in client.get("/metrics").text.splitlines() if line.startswith("http_")]
    labels = {"method": "GET", "route": "unmatched", "status": "404"}
    assert metric(client, "http_requests_total", **labels) == 200
    assert len(series) < 40  # not one per path
    assert "no-such-page" not in client.get("/metrics").text


def test_metrics_are_prometheus_text(client):
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    assert "# TYPE http_requests_total counter" in response.text


def test_a_stream_is_timed_to_its_last_byte(load_script):
    # 35 tokens, 40 ms apart: well over a second. Timed at its first byte, it would fall in the
    # 0.25 s bucket.
    module = load_script(FROM_STEP_3[0], OFFLINE_TOKEN_DELAY_MS="40")
    with TestClient(module.app) as client:
        assert client.post("/v1/stream", json={"query": "slow"}).text.endswith("data: [DONE]\n\n")
        labels = {"method": "POST", "route": "/v1/stream"}
        assert metric(client, "http_request_duration_seconds_count", **labels) == 1
        assert metric(client, "http_request_duration_seconds_bucket", le="1.0", **labels) == 0

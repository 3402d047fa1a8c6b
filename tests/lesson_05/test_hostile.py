"""Lesson 05 attacked: ids that are not what they claim, floods of followers, strangers.

Each test is a case that got a traceback, a plain-text 500, a stranger's access or a dead API from
an earlier version of code/05_variations_api.py.
"""

import httpx
import pytest
import redis

from tests.lesson_05.conftest import read_events, start_run

TOO_BIG = "99999999999999999999-0"  # passes \d{1,20}-\d{1,20}; Redis refuses ids past 2**64


# --- Event ids and run ids ------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["header", "query"])
@pytest.mark.parametrize("event_id", [TOO_BIG, "18446744073709551615-0"])
def test_an_event_id_past_the_newest_is_refused_with_400(serve, where, event_id):
    server = serve(OFFLINE_TOKEN_DELAY_MS=100)
    run_id = start_run(server.url, variations=1)["run_id"]
    headers = {"Last-Event-ID": event_id} if where == "header" else {}
    params = {"after": event_id} if where == "query" else {}
    response = httpx.get(
        f"{server.url}/v1/runs/{run_id}/events", headers=headers, params=params, timeout=10
    )
    assert response.status_code == 400, response.text[:300]
    assert response.json()["error"]["type"] == "unknown_event_id"
    assert read_events(server.url, run_id)[-1][1] == "run_done"  # the run itself is unharmed


@pytest.mark.parametrize("bad_id", ["{id}:v:0", "{id}:events", "{id}%3Av%3A0", "{short}", "X{id}"])
@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_a_run_id_that_is_not_a_uuid4_never_reaches_redis(serve, redis_url, bad_id, method):
    server = serve(OFFLINE_TOKEN_DELAY_MS=100)
    run_id = start_run(server.url, variations=1)["run_id"]
    path = "/v1/runs/" + bad_id.format(id=run_id, short=run_id[:-1])
    response = httpx.request(method, server.url + path)
    assert response.status_code in (404, 422), response.text[:300]
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["type"] in ("validation_error", "not_found")
    client = redis.Redis.from_url(redis_url)
    assert [k for k in client.scan_iter() if client.ttl(k) == -1 and b":v:0:" in k] == []
    assert read_events(server.url, run_id)[-1][1] == "run_done"


def test_an_unforeseen_failure_answers_500_in_the_error_shape(serve, redis_url):
    server = serve()
    run_id = start_run(server.url, variations=1)["run_id"]
    read_events(server.url, run_id)
    # A run hash without its fields (another version of the API wrote it, or it was edited).
    redis.Redis.from_url(redis_url).hdel(f"run:{run_id}", "query", "variations")
    response = httpx.get(f"{server.url}/v1/runs/{run_id}")
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["type"] == "internal_error" and error["request_id"]
    assert "Traceback" not in response.text and "KeyError" not in response.text

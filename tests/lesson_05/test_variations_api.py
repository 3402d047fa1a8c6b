"""code/lesson05/variations_api.py over real HTTP and a real Redis, each variation a local worker
process.

The same scenarios with real containers (OOM, docker kill, the API process restarted) are in
test_containers.py; the page in a real browser is test_browser.py.
"""

import re
import time

import httpx
import pytest
import redis

from lesson05.store import id_tuple, run_key
from research_agent.worker.job import events_key, variation_key
from support.waiting import wait_for
from tests.support.variations import HOSTILE, auth, by_variation, cancel, read_events, start_run

UNKNOWN = "0123456789ab4def8123456789abcdef"  # a well-formed run id that no run has


# --- A whole run ----------------------------------------------------------------------------------


def test_a_run_streams_every_variation_tagged_and_ends_with_run_done(serve, redis_url):
    server = serve()
    created = start_run(server.url, variations=2)
    assert [v["index"] for v in created["variations"]] == [0, 1]
    assert created["events"] == f"/v1/runs/{created['run_id']}/events"
    events = read_events(server.url, created["run_id"])

    ids = [event_id for event_id, _, _ in events]
    assert all(ids) and ids == sorted(ids, key=id_tuple) and len(set(ids)) == len(ids)
    assert events[0][1] == "run_started" and events[-1][1] == "run_done"
    assert events[-1][2] == {"variation": None, "status": "done"}
    finals, done = by_variation(events, "final"), by_variation(events, "variation_done")
    for i in (0, 1):
        names = [name for _, name, data in events if data["variation"] == i]
        assert names[:2] == ["container_started", "worker_ready"]
        assert names[-3:] == ["final", "worker_stats", "variation_done"]
        tokens = "".join(d["text"] for _, n, d in events if n == "token" and d["variation"] == i)
        assert tokens == finals[i]["response"]
        assert done[i]["status"] == "succeeded" and done[i]["exit_code"] == 0
    assert finals[0]["response"] != finals[1]["response"]

    run_id = created["run_id"]
    view = httpx.get(f"{server.url}/v1/runs/{run_id}", headers=auth(run_id)).json()
    assert view["status"] == "done" and view["selected"] is None
    assert [v["status"] for v in view["variations"]] == ["succeeded", "succeeded"]
    assert [v["response"] for v in view["variations"]] == [
        finals[0]["response"],
        finals[1]["response"],
    ]
    assert not workers_left(server)


def workers_left(server) -> list:
    return [w for w in server.server.config.app.state.orchestrator.workers.list()]


def test_a_late_client_gets_the_whole_run_replayed_and_nothing_after_the_end(serve):
    server = serve()
    run_id = start_run(server.url, variations=1)["run_id"]
    live = read_events(server.url, run_id)
    assert read_events(server.url, run_id) == live  # from 0-0: same ids, same data
    after_end = httpx.get(
        f"{server.url}/v1/runs/{run_id}/events",
        headers={"Last-Event-ID": live[-1][0], **auth(run_id)},
    )
    assert after_end.status_code == 204  # EventSource stops reconnecting on 204
    assert after_end.content == b""  # a 204 has no body, not even the error shape


def test_resuming_with_last_event_id_loses_and_repeats_nothing(serve):
    server = serve(OFFLINE_TOKEN_DELAY_MS=20)
    run_id = start_run(server.url, variations=2)["run_id"]
    pieces, last_id = [], None
    for _ in range(100):  # reconnect every 7 events until the end
        piece = read_events(server.url, run_id, last_id=last_id, stop_after=7)
        pieces += piece
        last_id = piece[-1][0]
        if piece[-1][1] == "run_done":
            break
    uninterrupted = read_events(server.url, run_id)
    assert pieces == uninterrupted and len(pieces) > 7 * 3


def test_the_query_reaches_the_worker_as_data_whatever_it_contains(serve):
    server = serve()
    run_id = start_run(server.url, query=HOSTILE, variations=1)["run_id"]
    events = read_events(server.url, run_id)
    assert by_variation(events, "final")[0]["query"] == HOSTILE.strip()
    assert by_variation(events, "run_started")[None]["query"] == HOSTILE.strip()


def test_overrides_change_the_variation_and_reach_the_worker(serve):
    server = serve()
    overrides = [{"style": "brief", "search_depth": 1}, {"temperature": 1.2}]
    created = start_run(server.url, variations=2, overrides=overrides)
    assert created["variations"][0] == {
        "index": 0,
        "style": "brief",
        "temperature": 0.0,
        "search_depth": 1,
        "model": None,
    }
    assert created["variations"][1]["temperature"] == 1.2
    ready = by_variation(read_events(server.url, created["run_id"]), "worker_ready")
    assert (ready[0]["style"], ready[0]["search_depth"]) == ("brief", 1)
    assert ready[1]["temperature"] == 1.2


def test_finished_runs_expire_and_their_keys_carry_the_ttl(serve, redis_url):
    server = serve(RUN_TTL_SECONDS=120)
    run_id = start_run(server.url, variations=2)["run_id"]
    read_events(server.url, run_id)
    client = redis.Redis.from_url(redis_url)
    keys = [run_key(run_id), events_key(run_id)] + [variation_key(run_id, i) for i in (0, 1)]
    assert all(0 < client.ttl(k) <= 120 for k in keys), [client.ttl(k) for k in keys]
    assert run_id.encode() not in client.smembers("runs:active")
    client.delete(*keys)  # what the TTL does later
    assert httpx.get(f"{server.url}/v1/runs/{run_id}", headers=auth(run_id)).status_code == 404


# --- Pick -----------------------------------------------------------------------------------------


def test_the_pick_is_stored_and_only_a_succeeded_variation_can_be_picked(serve):
    server = serve()
    run_id = start_run(server.url, variations=2)["run_id"]
    url = f"{server.url}/v1/runs/{run_id}/select"
    read_events(server.url, run_id)
    response = httpx.post(url, json={"variation": 1}, headers=auth(run_id))
    assert response.status_code == 200 and response.json()["selected"] == 1
    assert httpx.get(f"{server.url}/v1/runs/{run_id}", headers=auth(run_id)).json()["selected"] == 1
    too_far = httpx.post(url, json={"variation": 5}, headers=auth(run_id))
    assert too_far.status_code == 422 and too_far.json()["error"]["type"] == "no_such_variation"
    assert httpx.post(url, json={"variation": -1}, headers=auth(run_id)).status_code == 422


# --- Failures -------------------------------------------------------------------------------------


def test_a_killed_variation_fails_while_the_other_finishes(serve, workers):
    server = serve(OFFLINE_TOKEN_DELAY_MS=60)
    run_id = start_run(server.url, variations=2)["run_id"]
    read_events(server.url, run_id, until=lambda found: found[-1][1] == "token")
    workers.kill(run_id, 0)
    events = read_events(server.url, run_id)
    done = by_variation(events, "variation_done")
    assert done[0]["status"] == "failed" and done[0]["exit_code"] == 137
    assert done[0]["reason"] == "killed (SIGKILL): out of memory or stopped from outside"
    assert done[1]["status"] == "succeeded"
    assert 0 not in by_variation(events, "final") and 1 in by_variation(events, "final")
    view = httpx.get(f"{server.url}/v1/runs/{run_id}", headers=auth(run_id)).json()
    assert [v["status"] for v in view["variations"]] == ["failed", "succeeded"]
    conflict = httpx.post(
        f"{server.url}/v1/runs/{run_id}/select", json={"variation": 0}, headers=auth(run_id)
    )
    assert (
        conflict.status_code == 409
        and conflict.json()["error"]["type"] == "variation_not_succeeded"
    )


def test_a_container_the_reaper_cannot_handle_does_not_stall_the_others(serve, workers):
    """The engine fails on one container (as when it is removed between two calls): the other
    variation still ends, and the failing one is retried each pass until the engine answers."""
    outcome, broken = workers.outcome, set()

    def flaky_outcome(worker_id: str) -> tuple[int, bool]:
        if worker_id in broken:
            raise RuntimeError("the engine lost this container")
        return outcome(worker_id)

    def no_logs(worker_id: str) -> str:
        raise RuntimeError("no logs either")

    workers.outcome, workers.logs = flaky_outcome, no_logs
    server = serve(OFFLINE_TOKEN_DELAY_MS=60)
    run_id = start_run(server.url, variations=2)["run_id"]
    read_events(server.url, run_id, until=lambda found: found[-1][1] == "token")
    broken.update(w.id for w in workers.list() if w.run_id == run_id and w.index == 0)
    workers.kill(run_id, 0)
    events = read_events(server.url, run_id, until=lambda found: found[-1][1] == "variation_done")
    done = by_variation(events, "variation_done")
    assert list(done) == [1] and done[1]["status"] == "succeeded"
    broken.clear()
    events = read_events(server.url, run_id)
    done = by_variation(events, "variation_done")
    assert done[0]["status"] == "failed" and done[0]["exit_code"] == 137
    assert events[-1][1] == "run_done"


def test_a_hung_variation_is_killed_at_its_deadline_and_marked_timed_out(serve, workers):
    server = serve(OFFLINE_TOKEN_DELAY_MS=100, VARIATION_TIMEOUT_SECONDS=8)
    run_id = start_run(server.url, variations=1)["run_id"]
    read_events(server.url, run_id, until=lambda found: found[-1][1] == "token")
    workers.pause(run_id, 0)
    started = time.monotonic()
    events = read_events(server.url, run_id)
    done = by_variation(events, "variation_done")[0]
    assert done["status"] == "timed_out" and "within 8 s" in done["reason"]
    assert time.monotonic() - started < 30
    assert not workers_left(server)


def test_cancel_stops_every_worker_and_says_so(serve):
    server = serve(OFFLINE_TOKEN_DELAY_MS=200)
    run_id = start_run(server.url, variations=2)["run_id"]
    wait_for(lambda: len(workers_left(server)) == 2, timeout=60, what="two workers")
    cancel(server.url, run_id)
    assert not workers_left(server)  # gone when DELETE returns, not later
    events = read_events(server.url, run_id)
    names = [name for _, name, _ in events]
    assert "cancelled" in names and names[-1] == "run_done"
    assert events[-1][2]["status"] == "cancelled"
    assert {d["status"] for d in by_variation(events, "variation_done").values()} == {"cancelled"}
    again = httpx.delete(f"{server.url}/v1/runs/{run_id}", headers=auth(run_id))
    assert again.status_code == 409 and again.json()["error"]["type"] == "run_ended"


def test_too_many_active_runs_get_429_with_a_json_error(serve):
    server = serve(MAX_ACTIVE_RUNS=1, OFFLINE_TOKEN_DELAY_MS=200)
    first = start_run(server.url, variations=1)["run_id"]
    refused = httpx.post(
        f"{server.url}/v1/runs", json={"query": "Another question", "variations": 1}
    )
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "5"
    assert refused.json()["error"]["type"] == "too_many_runs"
    httpx.delete(f"{server.url}/v1/runs/{first}", headers=auth(first), timeout=60)
    start_run(server.url, variations=1)


def test_the_stream_cap_is_announced_not_silent(serve, redis_url):
    server = serve(STREAM_MAXLEN=40)
    run_id = start_run(server.url, variations=2)["run_id"]
    events = read_events(server.url, run_id)
    truncated = by_variation(events, "truncated")
    assert set(truncated) == {0, 1} and all(
        t["tokens_not_streamed"] > 0 for t in truncated.values()
    )
    assert redis.Redis.from_url(redis_url).xlen(events_key(run_id)) <= 40
    assert [e for e in events if e[1] == "events_lost"] == []
    # Entries trimmed anyway (here: by hand) are announced to a client that asks for them.
    client = redis.Redis.from_url(redis_url)
    for _ in range(5):
        client.xadd(events_key(run_id), {"event": "note", "data": "{}"}, maxlen=10)
    client.hset(run_key(run_id), "status", "running")  # so the stream is served again
    client.xadd(events_key(run_id), {"event": "run_done", "data": '{"variation": null}'})
    replay = read_events(server.url, run_id)
    assert replay[0][1] == "events_lost"
    assert "were trimmed by the 40-entry cap" in replay[0][2]["message"]


# --- Restarts and the start-up sweep --------------------------------------------------------------


def test_an_api_restart_mid_run_loses_nothing(serve, workers):
    first = serve(OFFLINE_TOKEN_DELAY_MS=60)
    run_id = start_run(first.url, variations=2)["run_id"]
    before = read_events(first.url, run_id, stop_after=10)
    first.stop()  # the workers carry on without any API
    second = serve(OFFLINE_TOKEN_DELAY_MS=60)  # adopts them at start-up
    after = read_events(second.url, run_id, last_id=before[-1][0])
    assert after[-1][1] == "run_done" and after[-1][2]["status"] == "done"
    assert before + after == read_events(second.url, run_id)
    done = by_variation(after, "variation_done")
    assert {d["status"] for d in done.values()} == {"succeeded"}


def test_the_start_up_sweep_removes_workers_of_unknown_or_ended_runs(serve, workers, redis_url):
    env = {"QUERY": "x", "REDIS_URL": redis_url, "OFFLINE_TOKEN_DELAY_MS": "500"}
    orphan = workers.start(
        "feedfacefeedface", 0, {**env, "RUN_ID": "feedfacefeedface", "VARIATION": "0"}
    )
    server = serve()
    assert orphan not in {w.id for w in workers_left(server)}
    ended = start_run(server.url, variations=1)["run_id"]
    read_events(server.url, ended)
    late = workers.start(ended, 0, {**env, "RUN_ID": ended, "VARIATION": "0"})
    wait_for(
        lambda: late not in {w.id for w in workers_left(server)}, timeout=10, what="the reaper"
    )


# --- Validation and errors: always 4xx with the JSON error shape ----------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"query": "hi"},
        {"query": "   a   "},
        {"query": "null byte \x00 here"},
        {"query": "ok query", "variations": 0},
        {"query": "ok query", "variations": 9},
        {"query": "ok query", "variations": 1, "overrides": [{}, {}]},
        {"query": "ok query", "overrides": [{"style": "poem"}]},
        {"query": "ok query", "overrides": [{"temperature": 3}]},
        {"query": "ok query", "overrides": [{"memory": "64g"}]},
        {"query": "ok query", "overrides": [{"model": "gpt; rm -rf /"}]},
        {"query": "ok query", "image": "alpine"},
        {"query": "x" * 2001},
    ],
)
def test_bad_requests_get_422_with_the_error_shape(serve, body):
    server = serve()
    response = httpx.post(f"{server.url}/v1/runs", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "validation_error" and error["request_id"] and error["details"]


def test_malformed_json_and_bad_stream_ids_get_422(serve):
    server = serve()
    response = httpx.post(
        f"{server.url}/v1/runs", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    run_id = start_run(server.url, variations=1)["run_id"]
    for headers, params in (({"Last-Event-ID": "0-0; DROP"}, {}), ({}, {"after": "$"})):
        url = f"{server.url}/v1/runs/{run_id}/events"
        bad = httpx.get(url, headers={**headers, **auth(run_id)}, params=params)
        assert bad.status_code == 422 and bad.json()["error"]["type"] == "validation_error"
    read_events(server.url, run_id)


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("GET", f"/v1/runs/{UNKNOWN}", None),
        ("GET", f"/v1/runs/{UNKNOWN}/events", None),
        ("DELETE", f"/v1/runs/{UNKNOWN}", None),
        ("POST", f"/v1/runs/{UNKNOWN}/select", {"variation": 0}),
        ("GET", "/v2/anything", None),
    ],
)
def test_unknown_runs_and_paths_get_404_json(serve, method, path, body):
    server = serve()
    response = httpx.request(method, f"{server.url}{path}", json=body)
    assert response.status_code == 404
    assert response.json()["error"]["type"] in ("run_not_found", "not_found")


def test_redis_down_gives_503_json_not_a_traceback(serve, fresh_redis):
    server = serve()
    fresh_redis.stop()
    response = httpx.get(f"{server.url}/v1/runs/{UNKNOWN}")
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "redis_unavailable"
    assert "Traceback" not in response.text


# --- The page and the schema ----------------------------------------------------------------------


def test_the_page_is_served_at_the_root(serve):
    server = serve()
    response = httpx.get(server.url)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert "new EventSource(" in response.text and "textContent" in response.text


def test_the_openapi_schema_lists_the_routes_and_their_errors(serve):
    schema = httpx.get(f"{serve().url}/openapi.json").json()
    paths = schema["paths"]
    assert set(paths) >= {
        "/v1/runs",
        "/v1/runs/{run_id}",
        "/v1/runs/{run_id}/events",
        "/v1/runs/{run_id}/select",
    }
    assert {"202", "422", "429"} <= set(paths["/v1/runs"]["post"]["responses"])
    # The stream is FastAPI's own server-sent events: the schema of one event; its errors JSON.
    stream = paths["/v1/runs/{run_id}/events"]["get"]["responses"]
    item = stream["200"]["content"]["text/event-stream"]["itemSchema"]
    assert set(item["properties"]) == {"data", "event", "id", "retry"}
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    assert all(stream[code]["content"] == error for code in ("400", "401", "429", "503"))
    assert "content" not in stream["204"] and "ErrorResponse" in schema["components"]["schemas"]


def test_the_stream_says_where_it_resumes_then_sends_each_entry_as_it_is(serve):
    """FastAPI writes the headers that keep proxies from caching or holding it back; each event's
    data is the entry's JSON as Redis holds it, not a JSON string of it."""
    server = serve()
    run_id = start_run(server.url, variations=1)["run_id"]
    url = f"{server.url}/v1/runs/{run_id}/events"
    with httpx.stream("GET", url, headers=auth(run_id), timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        text = "".join(response.iter_text())  # run_done ends it
    assert text.startswith(": resuming after 0-0\nretry: 1000\n\nevent: run_started\ndata: {")
    last = 'event: run_done\ndata: {"variation": null, "status": "done"}\nid: \\d+-\\d+\n\n$'
    assert re.search(last, text), text[-300:]

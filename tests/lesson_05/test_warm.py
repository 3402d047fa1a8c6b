"""Warm workers (WARM_WORKERS): started ahead with their imports done, each for one variation.

The worker's side runs in-process (`python -m research_agent.worker --warm`'s main); the API's side
runs over real HTTP and a real Redis with each worker a local process (ProcessWorkers,
tests/support/variation_workers.py), as in test_variations_api.py. test_containers.py has a run
on real warm containers.
"""

import json
import threading
import time

import httpx
import pytest
import redis

from research_agent.worker import worker
from research_agent.worker.job import (
    ExitCode,
    Job,
    warm_queue_key,
    warm_ready_key,
    worker_events_key,
)
from support.waiting import wait_for
from tests.support.variation_workers import NO_DOCS  # the bundled notes only
from tests.support.variations import auth, by_variation, cancel, read_events, start_run


def pool_of(server):
    return server.server.config.app.state.orchestrator.pool


def full(server, size: int) -> dict:
    """The pool's idle workers once there are `size` of them."""
    return wait_for(lambda: len(pool_of(server).idle) == size and dict(pool_of(server).idle))


# --- The worker ----------------------------------------------------------------------------------


@pytest.fixture
def warm_env(monkeypatch, redis_url):
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    queue = warm_queue_key("test", "w1")
    for name, value in {
        "REDIS_URL": redis_url,
        "WARM_QUEUE": queue,
        "WARM_IDLE_SECONDS": "1",
        "DOCS_DIR": str(NO_DOCS),
        "OFFLINE_TOKEN_DELAY_MS": "0",
    }.items():
        monkeypatch.setenv(name, value)
    return queue


def test_a_warm_worker_with_no_job_leaves_by_itself(warm_env):
    began = time.monotonic()
    assert worker.main(["--warm"]) == ExitCode.IDLE
    assert 0.9 <= time.monotonic() - began < 10


def test_a_warm_worker_runs_the_one_job_it_is_sent_and_exits(warm_env, redis_url):
    job = Job(RUN_ID="00112233aabbccdd", VARIATION=2, QUERY="What is a layer?", REDIS_URL=redis_url)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.rpush(warm_env, json.dumps(job.to_env(TEMPERATURE=0.5)))
    assert worker.main(["--warm"]) == ExitCode.ANSWERED
    entries = client.xrange(worker_events_key(job.RUN_ID, 2))  # its own stream
    events = [(f["event"], json.loads(f["data"])) for _, f in entries]
    ready = dict(events)["worker_ready"]
    assert (ready["worker"], ready["variation"], ready["temperature"]) == ("warm", 2, 0.5)
    assert ready["import_ms"] == 0  # done before the job came: not this variation's wait
    assert dict(events)["final"]["query"] == "What is a layer?"
    assert client.llen(warm_env) == 0  # taken, not left for another
    assert not client.exists(warm_ready_key(warm_env))  # no longer waiting


def test_a_warm_worker_waits_longer_than_a_redis_read_timeout_for_its_job(
    warm_env, redis_url, monkeypatch
):
    # redis-py gives up on a read after 5 s by default; a warm worker's wait is minutes long.
    monkeypatch.setenv("WARM_IDLE_SECONDS", "30")
    job = Job(RUN_ID="00112233aabbccee", VARIATION=0, QUERY="What is a layer?", REDIS_URL=redis_url)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    sender = threading.Timer(6.5, client.rpush, (warm_env, json.dumps(job.to_env())))
    sender.start()
    try:
        assert worker.main(["--warm"]) == ExitCode.ANSWERED
    finally:
        sender.cancel()


# --- The API -------------------------------------------------------------------------------------


def test_a_run_takes_warm_workers_first_and_each_serves_one_variation(serve):
    server = serve(WARM_WORKERS=2)
    first_pool = full(server, 2)
    created = start_run(server.url, variations=3)
    events = read_events(server.url, created["run_id"])
    started = by_variation(events, "container_started")
    assert sorted(d["worker"] for d in started.values()) == ["cold", "warm", "warm"]
    ready = by_variation(events, "worker_ready")
    assert all(ready[i]["worker"] == started[i]["worker"] for i in range(3))
    done = by_variation(events, "variation_done")
    assert [done[i]["status"] for i in range(3)] == ["succeeded"] * 3

    run_id = created["run_id"]
    view = httpx.get(f"{server.url}/v1/runs/{run_id}", headers=auth(run_id)).json()
    assert sorted(v["worker"] for v in view["variations"]) == ["cold", "warm", "warm"]
    used = {v["container"] for v in view["variations"] if v["worker"] == "warm"}
    assert used == {worker_id for worker_id, _ in first_pool.values()}

    # The pool is full again, with new workers: the two used ones exited and were removed.
    refilled = full(server, 2)
    assert not used & {worker_id for worker_id, _ in refilled.values()}
    listed = {w.id for w in server.server.config.app.state.orchestrator.workers.list()}
    assert not used & listed


def test_a_warm_worker_too_old_for_a_job_is_replaced(serve):
    server = serve(WARM_WORKERS=1, WARM_MAX_AGE_SECONDS=1)
    (name,) = full(server, 1)
    wait_for(lambda: name not in pool_of(server).idle and len(pool_of(server).idle) == 1)
    workers = server.server.config.app.state.orchestrator.workers
    assert name not in {w.warm for w in workers.list()}


def test_cancelling_a_run_removes_the_warm_worker_it_took(serve):
    server = serve(WARM_WORKERS=1, OFFLINE_TOKEN_DELAY_MS=200)
    ((worker_id, _),) = full(server, 1).values()
    run_id = start_run(server.url, variations=1)["run_id"]
    events = read_events(server.url, run_id, stop_after=4)
    assert by_variation(events, "container_started")[0]["worker"] == "warm"
    cancel(server.url, run_id)
    workers = server.server.config.app.state.orchestrator.workers
    assert worker_id not in {w.id for w in workers.list()}


def test_stopping_the_api_removes_its_idle_warm_workers(serve, workers):
    server = serve(WARM_WORKERS=2)
    full(server, 2)
    server.stop()
    assert workers.list() == []


def test_a_warm_worker_left_by_a_previous_api_is_removed_at_start_up(serve, workers, redis_url):
    leftover = workers.start_warm("lesson-05-warm-old", {"REDIS_URL": redis_url})
    serve()  # WARM_WORKERS=0: the start-up sweep finds a warm worker no run claims
    assert leftover not in {w.id for w in workers.list()}


def test_warm_workers_that_cannot_start_leave_runs_cold_and_are_retried_slowly(
    serve, workers, monkeypatch
):
    attempts = []

    def broken(name, environment):
        attempts.append(time.monotonic())
        raise RuntimeError("no such image")

    monkeypatch.setattr(workers, "start_warm", broken)
    server = serve(WARM_WORKERS=2)
    events = read_events(server.url, start_run(server.url, variations=1)["run_id"])
    assert by_variation(events, "container_started")[0]["worker"] == "cold"
    assert by_variation(events, "variation_done")[0]["status"] == "succeeded"
    # Two tries at start-up, then none for 10 s: a missing image is no busy loop.
    assert len([a for a in attempts if a - attempts[0] < 9]) == 2

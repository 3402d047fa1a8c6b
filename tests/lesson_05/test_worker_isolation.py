"""A worker attacks the others from inside: with the Redis address and credentials its own
environment holds, it tries everything a hostile testing session did to an earlier version (every
worker then shared one all-powerful Redis connection). Each worker now has a Redis user allowed only
XADD on its own stream (a warm one: only its own list), and its events reach the run's stream
through the API's relay, which sets their variation itself.

The workers here are local processes given exactly the environment a container gets
(ProcessWorkers, tests/support/variation_workers.py); test_containers.py repeats the attack from
inside a real container.
"""

import hashlib
import json

import httpx
import pytest
import redis
from app.job import events_key, variation_key, warm_queue_key, worker_events_key
from variations.store import Runs

from tests.support.variations import auth, by_variation, read_events, start_run
from tests.support.waiting import wait_for

FORBIDDEN = (redis.exceptions.NoPermissionError, redis.exceptions.AuthenticationError)


def environment_of(workers, run_id: str, index: int) -> dict[str, str]:
    def found():
        for worker_id, (_, r, i, _) in list(workers.processes.items()):
            if (r, i) == (run_id, index):
                return workers.environments[worker_id]
        for environment in workers.environments.values():  # a warm worker: its job says
            if environment.get("RUN_ID") == run_id and environment.get("VARIATION") == str(index):
                return environment
        return None

    return wait_for(found, timeout=60, what=f"the worker of {run_id}/{index}")


def as_worker(environment: dict[str, str]) -> redis.Redis:
    """The Redis client a hostile worker would make: its own REDIS_URL."""
    return redis.Redis.from_url(environment["REDIS_URL"], decode_responses=True)


def refused(call) -> bool:
    try:
        call()
    except FORBIDDEN:
        return True
    return False


@pytest.fixture
def two_runs(serve, workers):
    server = serve(OFFLINE_TOKEN_DELAY_MS=150, MAX_RUNS_PER_CLIENT=2)
    a = start_run(server.url, variations=2)["run_id"]
    b = start_run(server.url, variations=1)["run_id"]
    return server, a, b


def test_a_worker_cannot_read_or_rewrite_another_run(two_runs, workers, redis_url):
    server, a, b = two_runs
    me = as_worker(environment_of(workers, a, 1))
    assert me.ping()
    # Read every run's query and client address.
    for call in (
        lambda: me.hgetall(f"run:{b}"),
        lambda: me.hget(f"run:{a}", "query"),
        lambda: me.keys("*"),
        lambda: me.scan(0),
        lambda: me.xrange(events_key(b)),
        lambda: me.xrange(events_key(a)),
        lambda: me.smembers("runs:active"),
    ):
        assert refused(call)
    # Overwrite run B's owner, so that `Bearer attacker-token` is its owner.
    attacker = hashlib.sha256(b"attacker-token").hexdigest()
    assert refused(lambda: me.hset(f"run:{b}", "owner", attacker))
    url = f"{server.url}/v1/runs/{b}"
    assert httpx.get(url, headers={"Authorization": "Bearer attacker-token"}).status_code == 403
    assert httpx.get(url, headers=auth(b)).status_code == 200
    # Cancel or expire another run's keys, or flood them.
    assert refused(lambda: me.delete(f"run:{b}"))
    assert refused(lambda: me.expire(f"run:{b}", 1))
    assert refused(lambda: me.xadd(events_key(b), {"event": "run_done", "data": "{}"}))
    assert refused(lambda: me.xadd(worker_events_key(b, 0), {"event": "final", "data": "{}"}))


def test_a_worker_cannot_forge_another_variations_answer(serve, workers):
    server = serve(OFFLINE_TOKEN_DELAY_MS=150)
    run_id = start_run(server.url, variations=2)["run_id"]
    me = as_worker(environment_of(workers, run_id, 1))
    forged = {"variation": 0, "response": "FORGED", "sources": [], "query": "x", "model": "x"}
    # The direct ways: variation 0's hash and the run's stream.
    assert refused(lambda: me.hset(variation_key(run_id, 0), "result", json.dumps(forged)))
    assert refused(lambda: me.xadd(events_key(run_id), {"event": "final", "data": "{}"}))
    # Its own stream is all it may write: the relay tags every entry with variation 1 and drops
    # what is not a worker event (run_done, variation_done) or not JSON.
    mine = worker_events_key(run_id, 1)
    me.xadd(mine, {"event": "final", "data": json.dumps(forged)})
    me.xadd(mine, {"event": "run_done", "data": json.dumps({"variation": None})})
    me.xadd(mine, {"event": "token", "data": "not json"})
    events = read_events(server.url, run_id, timeout=120)
    forgeries = [d for _, n, d in events if n == "final" and d["response"] == "FORGED"]
    assert [d["variation"] for d in forgeries] == [1]  # under its own name, never variation 0
    assert [n for _, n, _ in events].count("run_done") == 1 and events[-1][1] == "run_done"
    assert by_variation(events, "variation_done")[0]["status"] == "succeeded"
    view = httpx.get(f"{server.url}/v1/runs/{run_id}", headers=auth(run_id)).json()
    assert view["variations"][0]["response"] != "FORGED"


def test_a_worker_cannot_watch_or_configure_redis(serve, workers):
    server = serve(OFFLINE_TOKEN_DELAY_MS=150)
    run_id = start_run(server.url, variations=1)["run_id"]
    me = as_worker(environment_of(workers, run_id, 0))

    def monitor():
        with me.monitor() as m:
            m.next_command()

    for call in (
        monitor,
        lambda: me.config_set("maxmemory", "1"),
        lambda: me.config_get("*"),
        lambda: me.flushall(),
        lambda: me.client_list(),
        lambda: me.acl_list(),
        lambda: me.publish("anything", "x"),
        lambda: me.eval("return redis.call('HGETALL', KEYS[1])", 1, f"run:{run_id}"),
    ):
        assert refused(call)


def test_the_api_key_never_travels_through_redis(serve, workers, redis_url, monkeypatch):
    """A warm worker gets OPENAI_API_KEY when it starts; the job it is sent through Redis (on a
    list any client with the right key could have read) carries none."""
    sent = []
    send_job = Runs.send_job

    async def spy(self, worker, job):
        sent.append(dict(job))
        await send_job(self, worker, job)

    monkeypatch.setattr(Runs, "send_job", spy)
    secret = "sk-test-not-a-real-key-0123456789"
    # An unreachable endpoint: the variation fails, which does not matter here.
    server = serve(WARM_WORKERS=1, OPENAI_API_KEY=secret, OPENAI_BASE_URL="http://127.0.0.1:9/v1")
    wait_for(lambda: server.server.config.app.state.orchestrator.pool.idle, timeout=60)
    run_id = start_run(server.url, variations=1)["run_id"]
    wait_for(lambda: sent, timeout=60, what="the job sent to the warm worker")
    assert "OPENAI_API_KEY" not in sent[0] and secret not in json.dumps(sent)
    read_events(server.url, run_id, timeout=120)
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter():
        kind = client.type(key)
        dump = client.dump(key) if kind != b"none" else b""
        assert secret.encode() not in (dump or b""), key


def test_a_warm_worker_can_only_wait_on_its_own_list(serve, workers):
    server = serve(WARM_WORKERS=2)
    pool = server.server.config.app.state.orchestrator.pool
    idle = wait_for(lambda: len(pool.idle) == 2 and dict(pool.idle), timeout=60)
    (mine, (my_id, _)), (other, _) = idle.items()
    me = as_worker(workers.environments[my_id])
    deployment = server.server.config.app.state.settings.DEPLOYMENT
    job = {"RUN_ID": "0" * 32, "VARIATION": "0", "QUERY": "x", "REDIS_URL": "redis://x"}
    # Push a job onto another idle worker's list, or steal its job.
    assert refused(lambda: me.rpush(warm_queue_key(deployment, other), json.dumps(job)))
    assert refused(lambda: me.lpop(warm_queue_key(deployment, other)))
    assert refused(lambda: me.hgetall("run:" + "0" * 32))
    assert refused(lambda: me.keys("*"))
    # Nothing was run: both workers still wait, and a run gets them.
    assert set(pool.idle) == {mine, other}
    run_id = start_run(server.url, variations=2)["run_id"]
    events = read_events(server.url, run_id, timeout=120)
    done = by_variation(events, "variation_done")
    assert [done[i]["status"] for i in range(2)] == ["succeeded"] * 2


def test_a_workers_user_is_removed_once_its_variation_ends(serve, workers):
    server = serve()
    run_id = start_run(server.url, variations=1)["run_id"]
    environment = environment_of(workers, run_id, 0)
    read_events(server.url, run_id, timeout=120)

    def removed() -> bool:
        try:
            return refused(as_worker(environment).ping)
        except redis.exceptions.ConnectionError:
            # Deleting a user closes its connections: one that was logging in as it just then is
            # cut rather than refused. The next attempt tells.
            return False

    wait_for(removed, timeout=30, what="the user removed")

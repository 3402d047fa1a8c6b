"""A worker attacks the others from inside: with the Redis address and credentials its own
environment holds, it tries everything a hostile testing session did to an earlier version (every
worker then shared one all-powerful Redis connection). Each worker now has a Redis user allowed only
XADD on its own stream (a warm one: only its own list), and its events reach the run's stream
through the API's relay, which sets their variation itself.

The workers here are local processes given exactly the environment a container gets
(ProcessWorkers, tests/support/variation_workers.py); test_containers.py repeats the attack from
inside a real container.
"""

import asyncio
import hashlib
import json
import re

import httpx
import pytest
import redis
import redis.asyncio

from lesson05.redis_access import WorkerUsers, server_args
from lesson05.store import Runs
from research_agent.worker.job import events_key, variation_key, warm_queue_key, worker_events_key
from support.waiting import wait_for
from tests.support.redis import RedisServer, one_try
from tests.support.variations import auth, by_variation, read_events, start_run

FORBIDDEN = (redis.exceptions.NoPermissionError, redis.exceptions.AuthenticationError)
# The tests that attack a run and then read it to its end: answers of about 7 s, in which the
# attack (a few Redis calls, sent once the worker has started) lands mid-run.
ATTACKED_RUN_TOKEN_MS = 40


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
    return redis.Redis.from_url(environment["REDIS_URL"], decode_responses=True, retry=one_try())


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
    server = serve(OFFLINE_TOKEN_DELAY_MS=ATTACKED_RUN_TOKEN_MS)
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


# --- A worker that sends too much ----------------------------------------------------------------
# An earlier version, attacked: a worker XADDed 4 entries of 50 MB and 2 `token` events of 50 MB to
# its own stream. Redis went from 10 to 463 MiB (the relay copied the tokens into the run's stream;
# MAXLEN counts entries, not bytes) and the API from 89 to 238 MB while the relay read them.


def sent_by_redis(client: redis.Redis) -> int:
    """Every byte Redis has sent to any client since it started."""
    return client.info("stats")["total_net_output_bytes"]


def refusals(server, reason: str) -> float:
    """The API's count of worker events refused for `reason` (its /metrics)."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    found = re.search(rf'^variations_events_refused_total{{reason="{reason}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def cut_off(environment: dict[str, str]) -> bool:
    """The worker's Redis user is gone: it can write nothing more."""
    try:
        return refused(as_worker(environment).ping)
    except redis.exceptions.ConnectionError:  # cut while logging in: the next attempt tells
        return False


def test_an_oversized_event_is_refused_unread_and_its_worker_cut_off(
    serve, workers, redis_url, caplog
):
    server = serve(OFFLINE_TOKEN_DELAY_MS=ATTACKED_RUN_TOKEN_MS)
    run_id = start_run(server.url, variations=2)["run_id"]
    environment = environment_of(workers, run_id, 1)
    admin = redis.Redis.from_url(redis_url)
    sent, counted = sent_by_redis(admin), refusals(server, "too_large")
    big = json.dumps({"text": "x" * 4_000_000})
    as_worker(environment).xadd(worker_events_key(run_id, 1), {"event": "token", "data": big})
    events = read_events(server.url, run_id, timeout=120)
    # Redis never sent those 4 MB to anyone: not to the relay, not into the run's stream.
    assert sent_by_redis(admin) - sent < 1_000_000
    assert max(len(json.dumps(data)) for _, _, data in events) < 10_000
    done = by_variation(events, "variation_done")
    assert done[0]["status"] == "succeeded" and done[1]["status"] == "failed"
    size = len("event") + len("token") + len("data") + len(big)  # every field and value
    assert f"an event of {size:,} bytes, over the 65,536-byte limit" in done[1]["reason"]
    assert refusals(server, "too_large") == counted + 1  # a metric, a log line, the page's event
    assert f"variation {run_id}/1 cut off" in caplog.text
    wait_for(lambda: cut_off(environment), timeout=30, what="the worker's user removed")
    assert admin.xlen(worker_events_key(run_id, 1)) == 0  # what it left is gone too


def test_a_worker_flooding_small_events_is_cut_off_at_its_byte_budget(serve, workers, redis_url):
    server = serve(OFFLINE_TOKEN_DELAY_MS=ATTACKED_RUN_TOKEN_MS, VARIATION_MAX_BYTES=300_000)
    run_id = start_run(server.url, variations=2)["run_id"]
    environment = environment_of(workers, run_id, 1)
    me, chunk = as_worker(environment), json.dumps({"text": "y" * 30_000})
    for _ in range(100):  # 3 MB, each event well under the per-event limit
        try:
            me.xadd(worker_events_key(run_id, 1), {"event": "token", "data": chunk})
        except (redis.exceptions.ConnectionError, *FORBIDDEN):
            break  # cut off already
    events = read_events(server.url, run_id, timeout=120)
    done = by_variation(events, "variation_done")
    assert done[0]["status"] == "succeeded" and done[1]["status"] == "failed"
    assert "more than 300,000 bytes of events" in done[1]["reason"]
    copied = [d for _, n, d in events if n == "token" and d["variation"] == 1]
    assert sum(len(json.dumps(d)) for d in copied) <= 300_000
    assert redis.Redis.from_url(redis_url).memory_usage(events_key(run_id)) < 600_000
    wait_for(lambda: cut_off(environment), timeout=30, what="the worker's user removed")


def test_what_the_relay_copied_leaves_the_workers_stream(serve, workers, redis_url):
    server = serve()
    run_id = start_run(server.url, variations=2)["run_id"]
    events = read_events(server.url, run_id, timeout=120)
    assert set(by_variation(events, "final")) == {0, 1}
    client = redis.Redis.from_url(redis_url)
    assert [client.xlen(worker_events_key(run_id, i)) for i in range(2)] == [0, 0]


def test_bytes_that_are_not_utf8_do_not_stop_the_relay(serve, workers):
    server = serve(OFFLINE_TOKEN_DELAY_MS=ATTACKED_RUN_TOKEN_MS)
    run_id = start_run(server.url, variations=2)["run_id"]
    me = redis.Redis.from_url(environment_of(workers, run_id, 1)["REDIS_URL"])  # bytes, as sent
    me.xadd(worker_events_key(run_id, 1), {b"event": b"token", b"data": b'{"text": "\xff\xfe"}'})
    me.xadd(worker_events_key(run_id, 1), {b"\xffevent": b"\xc3"})

    def ended() -> dict | None:
        view = httpx.get(f"{server.url}/v1/runs/{run_id}", headers=auth(run_id), timeout=10)
        return view.json() if view.json()["status"] != "running" else None

    view = wait_for(ended, timeout=120, what="the run to end")
    assert [v["status"] for v in view["variations"]] == ["succeeded", "succeeded"]


def test_redis_drops_a_client_whose_command_outgrows_its_share_and_evicts_nothing():
    password = "p" * 48
    with RedisServer(args=server_args(password)) as server:
        url = f"redis://api:{password}@127.0.0.1:{server.port}/0"
        api = redis.Redis.from_url(url)

        async def make_user() -> str:
            client = redis.asyncio.Redis.from_url(url)
            try:
                return await WorkerUsers(client, url, url).variation("0" * 32, 0)
            finally:
                await client.aclose()

        me, stream = redis.Redis.from_url(asyncio.run(make_user())), worker_events_key("0" * 32, 0)
        for fields in ({"blob": "x" * 50 * 2**20}, {f"f{i}": "x" * 2**20 for i in range(50)}):
            with pytest.raises(redis.exceptions.ConnectionError):
                me.xadd(stream, fields)  # disconnected before Redis could store it
        assert not api.exists(stream) and api.ping()
        me.xadd(stream, {"event": "token", "data": "y" * 60_000})  # a fair-sized event goes in
        assert api.xlen(stream) == 1
    # Full, it refuses writes rather than evicting anything: every run key has a TTL, so a
    # volatile-* policy would drop the runs going.
    with RedisServer(args=[*server_args(password), "--maxmemory", "8mb"]) as server:
        api = redis.Redis.from_url(f"redis://api:{password}@127.0.0.1:{server.port}/0")
        stored = 0
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            for i in range(1000):
                api.set(f"run:{i:032x}", "z" * 50_000, ex=3600)
                stored += 1
        assert 0 < stored < 1000 and api.dbsize() == stored

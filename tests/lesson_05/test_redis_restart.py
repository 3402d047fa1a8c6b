"""Lesson 05's Redis locked (every client needs a password, nobody runs CONFIG or MONITOR),
restarted mid-run, and the API killed: each case found by hostile testing of an earlier version.

The API runs over HTTP as in test_variations_api.py, against a Redis of its own started with the
arguments scripts/lesson-05.sh gives the lesson's (code/lesson05/redis_access.py's server_args).
"""

import asyncio
import json
import logging
import threading
import time
from types import SimpleNamespace

import httpx
import pytest
import redis

from lesson05 import redis_access
from lesson05.store import Runs, redis_clients
from research_agent.worker import worker
from research_agent.worker.job import ExitCode, warm_queue_key
from support.waiting import wait_for
from tests.support.redis import RedisServer, one_try
from tests.support.variations import auth, by_variation, read_events, start_run

# A lesson's own check (its `make` target, in CI's queue), not `make test`'s: see tests/conftest.py.
pytestmark = pytest.mark.container

PASSWORD = "test-api-password-0123456789"


@pytest.fixture
def locked_redis():
    """A Redis as the lesson starts it: `default` off, the API's user without the dangerous
    commands, AOF so that a restart keeps the runs."""
    args = redis_access.server_args(PASSWORD)
    with RedisServer(appendonly=True, args=args) as server:
        server.api_url = f"redis://api:{PASSWORD}@127.0.0.1:{server.port}/0"
        yield server


@pytest.fixture
def serve_locked(locked_redis, serve):
    """serve(**settings), the API a user of the locked Redis (and its workers users of theirs)."""
    url = locked_redis.api_url
    return lambda **settings: serve(REDIS_URL=url, WORKER_REDIS_URL=url, **settings)


# --- Item 7: a password for every client, no dangerous command for any ---------------------------


def test_redis_refuses_a_client_without_the_password(locked_redis):
    anonymous = redis.Redis(port=locked_redis.port, retry=one_try())
    with pytest.raises(redis.exceptions.AuthenticationError):
        anonymous.ping()
    wrong = redis.Redis(port=locked_redis.port, username="api", password="guess", retry=one_try())
    with pytest.raises(redis.exceptions.AuthenticationError):
        wrong.ping()


def test_not_even_the_api_may_configure_watch_or_wipe_redis(locked_redis):
    me = redis.Redis.from_url(locked_redis.api_url)
    assert me.ping()

    def monitor():
        with me.monitor() as m:
            m.next_command()

    for call in (
        lambda: me.config_set("requirepass", ""),
        lambda: me.config_set("dir", "/tmp"),
        monitor,
        lambda: me.flushall(),
        lambda: me.keys("*"),
        lambda: me.client_list(),
        lambda: me.shutdown(),
        lambda: me.acl_save(),
        lambda: me.acl_log(),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            call()


def test_a_run_works_on_the_locked_redis(serve_locked, caplog):
    caplog.set_level(logging.INFO)
    server = serve_locked(WARM_WORKERS=1)
    wait_for(lambda: server.server.config.app.state.orchestrator.pool.idle, timeout=60)
    run_id = start_run(server.url, variations=2)["run_id"]
    events = read_events(server.url, run_id, timeout=120)
    done = by_variation(events, "variation_done")
    assert [done[i]["status"] for i in range(2)] == ["succeeded"] * 2
    assert httpx.get(f"{server.url}/ready").status_code == 200
    assert "variations API ready" in caplog.text and PASSWORD not in caplog.text


# --- Item 8: Redis restarts mid-run ---------------------------------------------------------------


class Listener(threading.Thread):
    """An SSE client that keeps every event, `[DONE]` included, until its stream ends."""

    def __init__(self, url: str, run_id: str):
        super().__init__(daemon=True)
        self.url, self.run_id, self.events = url, run_id, []
        self.start()

    def run(self):
        from httpx_sse import connect_sse

        with (
            httpx.Client(base_url=self.url, timeout=60, headers=auth(self.run_id)) as client,
            connect_sse(client, "GET", f"/v1/runs/{self.run_id}/events") as source,
        ):
            for sse in source.iter_sse():
                if sse.data:
                    data = sse.data if sse.data == "[DONE]" else json.loads(sse.data)
                    self.events.append((sse.id, sse.event, data))


def test_a_redis_restart_mid_run_is_survived(serve_locked, locked_redis, caplog):
    """The stream in progress ends as every stream of the course does (`error`, then `[DONE]`);
    /ready says 503 while Redis is away and 200 after; the reaper logs one line per failed pass,
    no traceback; the run itself (AOF) goes on, and its client resumes where it was."""
    server = serve_locked(OFFLINE_TOKEN_DELAY_MS=100)
    run_id = start_run(server.url, variations=2)["run_id"]
    listener = Listener(server.url, run_id)
    wait_for(lambda: any(n == "token" for _, n, _ in listener.events), timeout=90)
    caplog.set_level(logging.WARNING, logger="variations")
    locked_redis.stop()
    assert httpx.get(f"{server.url}/ready").status_code == 503
    assert httpx.get(f"{server.url}/health").status_code == 200
    listener.join(60)
    assert not listener.is_alive()
    (_, name, data), (_, _, done) = listener.events[-2:]
    assert name == "error" and data["error"]["type"] == "redis_unavailable" and done == "[DONE]"
    time.sleep(2)  # the reaper and the relay meet a Redis that is away for a while
    locked_redis.start()
    wait_for(lambda: httpx.get(f"{server.url}/ready").status_code == 200, timeout=30)
    last_seen = [i for i, n, _ in listener.events if i][-1]
    rest = read_events(server.url, run_id, last_id=last_seen, timeout=120)
    done = by_variation(rest, "variation_done")
    assert [done[i]["status"] for i in range(2)] == ["succeeded"] * 2
    assert [r for r in caplog.records if r.exc_info] == []  # no traceback
    failed = [r for r in caplog.records if "failed (retrying" in r.getMessage()]
    assert 0 < len(failed) < 40  # ~20 a second before, one per doubling wait now
    # And new runs work again.
    again = start_run(server.url, variations=1)["run_id"]
    assert read_events(server.url, again, timeout=120)[-1][2]["status"] == "done"


# --- Item 9: no API left -------------------------------------------------------------------------


def test_a_runs_keys_expire_even_if_no_api_ever_ends_it(serve, redis_url):
    server = serve(OFFLINE_TOKEN_DELAY_MS=200, VARIATION_TIMEOUT_SECONDS=30, RUN_TTL_SECONDS=60)
    run_id = start_run(server.url, variations=2)["run_id"]
    client = redis.Redis.from_url(redis_url)
    keys = Runs(client, server.server.config.app.state.settings).keys(run_id, 2)
    assert client.hget(f"run:{run_id}", "status") == b"running"
    ttls = [client.ttl(k) for k in keys]
    assert all(0 < t <= 90 for t in ttls), dict(zip(keys, ttls, strict=True))


def test_a_warm_worker_leaves_soon_once_no_api_keeps_it_alive(monkeypatch, redis_url):
    """An API killed with -9 removes nothing: its idle warm workers used to wait 300 s. Each now
    leaves once the API's alive key (renewed by every reaper pass) has expired."""
    queue = warm_queue_key("test", "orphan")
    for name, value in {
        "REDIS_URL": redis_url,
        "WARM_QUEUE": queue,
        "WARM_ALIVE": "warm:test:alive",  # never set: no API
        "WARM_IDLE_SECONDS": "300",
        "OFFLINE_TOKEN_DELAY_MS": "0",
    }.items():
        monkeypatch.setenv(name, value)
    result = []
    waiter = threading.Thread(target=lambda: result.append(worker.main(["--warm"])), daemon=True)
    waiter.start()
    waiter.join(60)  # instead of 300 s
    assert result == [ExitCode.IDLE]


def test_every_pool_serves_its_first_command_after_a_redis_restart():
    """A connection each pool kept across a restart (the server closed it) fails the next command
    sent on it; before: that command's request got 503 `redis_unavailable` though Redis was back
    (seen once in `make variations-test`: the events stream right after /ready answered 503)."""

    async def scenario(server):
        settings = SimpleNamespace(REDIS_URL=server.url, REDIS_CONNECTIONS=2, MAX_STREAMS=2)
        clients = redis_clients(settings)
        try:
            for client in clients:  # a connection in each pool, kept after its command
                await client.set("kept", "1")
            server.restart()
            return [await client.get("kept") for client in clients]
        finally:
            for client in clients:
                await client.aclose()

    with RedisServer(appendonly=True) as server:
        assert asyncio.run(scenario(server)) == ["1"] * 4

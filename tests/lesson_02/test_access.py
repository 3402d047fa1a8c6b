"""API keys, rate limits, stream caps and the token budget (research_agent/access/keys.py,
research_agent/access/quotas.py and the limits it runs, research_agent/access/limits/).

Limits shared through Redis are tested against a real redis-server, with two app instances where the
point is that replicas share one budget. Waits are bounded polls for a window to end, never timings.
"""

import asyncio
import logging
import subprocess
import sys
import time

import httpx
import pytest
from redis.asyncio import Redis

from research_agent.access.keys import ApiKeyConfigError, ApiKeys, fingerprint
from research_agent.access.limits.counters import RedisSlots
from support.lessons import AGENT_DIR
from support.waiting import wait_for
from tests.support.agent import make_settings
from tests.support.metrics import metric
from tests.support.sse import Event, parse_sse

KEY = "alice-key-0123456789abcdef"
OTHER_KEY = "bob-key-0123456789abcdef00"
KEYS = f"alice:{KEY},bob:{OTHER_KEY}"
QUERY = {"query": "How do health checks work?"}
OTHER_QUERY = {"query": "What is a multi-stage build?"}


def auth(key: str = KEY) -> dict:
    return {"Authorization": f"Bearer {key}"}


def without_request_id(body: dict) -> dict:
    return {**body, "error": {k: v for k, v in body["error"].items() if k != "request_id"}}


# --- API keys -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/research", "/v1/research/stream"])
def test_missing_wrong_and_almost_right_keys_get_the_same_401(client_for, path):
    with client_for(API_KEYS=KEYS) as client:
        answers = [
            client.post(path, json=QUERY),
            client.post(path, json=QUERY, headers={"Authorization": f"Basic {KEY}"}),
            client.post(path, json=QUERY, headers=auth("not-a-key-of-ours-0123456789")),
            client.post(path, json=QUERY, headers=auth(KEY[:-1] + "g")),  # the last character
            client.post(path, json=QUERY, headers=auth(KEY + "x")),
            client.post(path, json=QUERY, headers=auth(KEY[:-1])),
        ]
        for answer in answers:
            assert answer.status_code == 401
            assert answer.headers["www-authenticate"] == "Bearer"
            assert answer.headers["content-type"] == "application/json"  # before any event
            assert KEY not in answer.text
        bodies = [without_request_id(a.json()) for a in answers]
        assert bodies == [bodies[0]] * len(bodies)
        assert bodies[0]["error"]["type"] == "unauthorized"

        ok = client.post(path, json=QUERY, headers=auth())
        assert ok.status_code == 200
        assert client.post(path, json=QUERY, headers=auth(OTHER_KEY)).status_code == 200


def test_the_documented_way_to_issue_a_key_gives_one_the_service_accepts(client_for):
    doc = (AGENT_DIR.parent / "docs" / "02-research-agent.md").read_text()
    command = 'python3 -c "import secrets; print(secrets.token_urlsafe(32))"'
    assert command in doc
    issued = subprocess.run(
        [sys.executable, "-c", command.split('"')[1]], capture_output=True, text=True, check=True
    ).stdout.strip()
    with client_for(API_KEYS=f"new:{issued}") as client:
        assert client.post("/v1/research", json=QUERY, headers=auth(issued)).status_code == 200


def test_health_ready_metrics_and_docs_need_no_key(client_for):
    with client_for(API_KEYS=KEYS) as client:
        for path in ("/health", "/ready", "/metrics", "/docs", "/openapi.json"):
            assert client.get(path).status_code == 200, path


def test_keys_from_a_file_with_names_comments_and_an_unnamed_key(client_for, tmp_path, capsys):
    unnamed = "unnamed-key-0123456789abcdef"
    secret = tmp_path / "api-keys"
    secret.write_text(f"# issued 2026-11\nci:{KEY}\n\n{unnamed}\n")
    with client_for(API_KEYS_FILE=str(secret)) as client:
        assert client.post("/v1/research", json=QUERY, headers=auth()).status_code == 200
        assert client.post("/v1/research", json=QUERY, headers=auth(unnamed)).status_code == 200
        assert client.post("/v1/research", json=QUERY, headers=auth(OTHER_KEY)).status_code == 401
    out = capsys.readouterr().out
    # The access log names the caller: the key's name, or a fingerprint for an unnamed key.
    assert '"caller": "key:ci"' in out
    assert f'"caller": "key:{fingerprint(unnamed)}"' in out
    assert unnamed not in out and KEY not in out


def test_both_sources_add_up():
    keys = ApiKeys.from_settings(make_settings(API_KEYS=f"alice:{KEY}").access)
    assert keys.names == ["alice"] and keys.identify(KEY) == "alice"
    assert keys.identify(KEY[:-1] + "g") is None


@pytest.mark.parametrize(
    "keys, problem",
    [
        ("alice:short", "shorter than 16"),
        (f"alice:{KEY},alice:{OTHER_KEY}", "share a name"),
        (f"{KEY},{KEY}", "listed twice"),
        (f"al ice:{KEY}", "key name"),
    ],
)
def test_unusable_keys_stop_the_service_before_it_listens(client_for, keys, problem):
    with pytest.raises(ApiKeyConfigError, match=problem), client_for(API_KEYS=keys):
        pass


def test_a_missing_key_file_stops_the_service(client_for, tmp_path):
    missing = str(tmp_path / "missing")
    with (
        pytest.raises(ApiKeyConfigError, match="cannot be read"),
        client_for(API_KEYS_FILE=missing),
    ):
        pass


def test_without_keys_the_api_is_open_and_says_so_once(client_for, caplog):
    with caplog.at_level(logging.INFO), client_for() as client:
        assert client.post("/v1/research", json=QUERY).status_code == 200
        assert client.post("/v1/research", json=QUERY).status_code == 200
        schema = client.get("/openapi.json").json()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["API_KEYS is not set: /v1 is open to anyone who can reach this port"]
    # The schema says what is true: no key asked for, no 401.
    assert "securitySchemes" not in schema.get("components", {})
    research = schema["paths"]["/v1/research"]["post"]
    assert "security" not in research and "401" not in research["responses"]
    assert "429" in research["responses"]


def test_with_keys_the_schema_documents_bearer_401_and_429(client_for):
    with client_for(API_KEYS=KEYS) as client:
        schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for path in ("/v1/research", "/v1/research/stream"):
        operation = schema["paths"][path]["post"]
        assert operation["security"] == [{"HTTPBearer": []}]
        assert set(operation["responses"]["401"]["headers"]) == {"WWW-Authenticate"}
        assert set(operation["responses"]["429"]["headers"]) == {
            "Retry-After",
            "RateLimit",
            "RateLimit-Policy",
        }
    assert "security" not in schema["paths"]["/health"]["get"]


# --- Rate limits, in one process ------------------------------------------------------------------


def test_rate_limit_per_caller_with_ratelimit_fields_and_retry_after(client_for):
    with client_for(API_KEYS=KEYS, RATE_LIMIT="3/minute") as client:
        before = metric(client, "research_requests_rejected_total", reason="rate_limited")
        answers = [client.post("/v1/research", json=QUERY, headers=auth()) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 200]
        assert [a.headers["ratelimit"].split(";t=")[0] for a in answers] == [
            '"requests";r=2',
            '"requests";r=1',
            '"requests";r=0',
        ]
        assert answers[0].headers["ratelimit-policy"] == '"requests";q=3;w=60'

        over = client.post("/v1/research", json=QUERY, headers=auth())
        assert over.status_code == 429
        assert over.json()["error"]["type"] == "rate_limited"
        assert over.json()["error"]["retryable"] is True
        assert 1 <= int(over.headers["retry-after"]) <= 60
        assert over.headers["ratelimit"].startswith('"requests";r=0;t=')
        # The stream route is refused the same way, before it starts.
        stream = client.post("/v1/research/stream", json=QUERY, headers=auth())
        assert stream.status_code == 429 and stream.json()["error"]["type"] == "rate_limited"
        # Another caller has a budget of its own.
        assert client.post("/v1/research", json=QUERY, headers=auth(OTHER_KEY)).status_code == 200
        after = metric(client, "research_requests_rejected_total", reason="rate_limited")
        assert after == before + 2


def test_rate_limit_off(client_for):
    with client_for(RATE_LIMIT="off") as client:
        answers = [client.post("/v1/research", json=QUERY) for _ in range(40)]
        assert {a.status_code for a in answers} == {200}
        assert "ratelimit" not in answers[0].headers


def test_rate_limit_is_validated_at_start():
    with pytest.raises(ValueError, match="parse rate limit"):
        make_settings(RATE_LIMIT="thirty a minute")


# --- Shared through Redis -------------------------------------------------------------------------


def test_two_instances_on_one_redis_share_the_rate_limit(client_for, fresh_redis):
    settings = {"API_KEYS": KEYS, "RATE_LIMIT": "3/minute", "REDIS_URL": fresh_redis.url}
    with client_for(**settings) as first, client_for(**settings) as second:
        assert first.post("/v1/research", json=QUERY, headers=auth()).status_code == 200
        assert first.post("/v1/research", json=QUERY, headers=auth()).status_code == 200
        # The second instance sees the first one's two requests: one left.
        third = second.post("/v1/research", json=QUERY, headers=auth())
        assert third.status_code == 200 and third.headers["ratelimit"].startswith('"requests";r=0;')
        assert second.post("/v1/research", json=QUERY, headers=auth()).status_code == 429
        assert first.post("/v1/research", json=QUERY, headers=auth()).status_code == 429
        assert first.post("/v1/research", json=QUERY, headers=auth(OTHER_KEY)).status_code == 200


def test_the_token_budget_runs_out_and_cached_answers_are_free(client_for, fresh_redis):
    # A window far longer than the test, so nothing here depends on how fast the machine is.
    settings = {
        "API_KEYS": KEYS,
        "REDIS_URL": fresh_redis.url,
        "TOKEN_BUDGET_PER_DAY": 600,  # one offline answer is about 500 tokens
        "TOKEN_BUDGET_WINDOW_SECONDS": 3600,
    }
    with client_for(**settings) as client, client_for(**settings) as replica:
        before = metric(client, "research_requests_rejected_total", reason="budget_exhausted")
        first = client.post("/v1/research", json=QUERY, headers=auth()).json()
        assert 0 < first["tokens_used"] < 600 and first["cached"] is False
        cached = client.post("/v1/research", json=QUERY, headers=auth()).json()
        assert cached["cached"] is True and cached["tokens_used"] == 0
        # Still under budget (the cached answer cost nothing), so this one runs and goes over.
        assert client.post("/v1/research", json=OTHER_QUERY, headers=auth()).status_code == 200

        over = replica.post("/v1/research", json=QUERY, headers=auth())
        assert over.status_code == 429
        assert over.json()["error"]["type"] == "budget_exhausted"
        assert 1 <= int(over.headers["retry-after"]) <= 3600
        assert over.headers["ratelimit-policy"] == '"tokens";q=600;w=3600'
        stream = replica.post("/v1/research/stream", json=QUERY, headers=auth())
        assert stream.status_code == 429 and stream.json()["error"]["type"] == "budget_exhausted"
        # Bob's budget is his own.
        assert client.post("/v1/research", json=QUERY, headers=auth(OTHER_KEY)).status_code == 200
        assert (
            metric(client, "research_requests_rejected_total", reason="budget_exhausted")
            == before + 2
        )


def test_a_spent_token_budget_renews_when_its_window_ends(client_for, fresh_redis):
    settings = {
        "API_KEYS": KEYS,
        "REDIS_URL": fresh_redis.url,
        "TOKEN_BUDGET_PER_DAY": 100,  # less than one answer: the first one spends it all
        "TOKEN_BUDGET_WINDOW_SECONDS": 2,
    }
    with client_for(**settings) as client:
        started = time.monotonic()  # the window cannot start before this
        assert client.post("/v1/research", json=QUERY, headers=auth()).status_code == 200
        again = client.post("/v1/research", json=OTHER_QUERY, headers=auth())
        if again.status_code == 200:  # only possible once the window may have ended
            assert time.monotonic() - started >= 2, "served again inside the budget's window"
            return
        assert again.status_code == 429 and again.json()["error"]["type"] == "budget_exhausted"
        # Refused until the window ends, however long the machine took to get here; then served.
        renewed = wait_for(
            lambda: (
                (r := client.post("/v1/research", json=OTHER_QUERY, headers=auth())).status_code
                == 200
                and r
            ),
            timeout=60,
            what="the budget window to renew",
        )
        assert renewed.json()["cached"] is False


def test_a_stream_spends_the_budget_too(client_for):
    with client_for(TOKEN_BUDGET_PER_DAY=100, TOKEN_BUDGET_WINDOW_SECONDS=60) as client:
        events = parse_sse(client.post("/v1/research/stream", json=QUERY).text)
        assert events[-1] == Event("message", "[DONE]")
        over = client.post("/v1/research", json=QUERY)
        assert over.status_code == 429 and over.json()["error"]["type"] == "budget_exhausted"


@pytest.mark.parametrize("counted_in", ["process", "redis"])
def test_30_parallel_requests_at_the_budget_edge_overrun_it_by_at_most_one_run(
    counted_in, fresh_redis, start_agent
):
    """Each admission reserves a run's tokens at once and the answer settles them: runs that
    start together cannot all see the same budget left (16x the budget was charged before)."""
    budget = 1000
    settings = {
        "TOKEN_BUDGET_PER_DAY": budget,
        "RATE_LIMIT": "off",  # the worst case: nothing else stops the burst
        "OFFLINE_TOKEN_DELAY_MS": 5,  # runs overlap, as a real model's do
        "SHUTDOWN_DRAIN_SECONDS": 0,
    }
    if counted_in == "redis":
        settings["REDIS_URL"] = fresh_redis.url
    server = start_agent(**settings)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
            return await asyncio.gather(
                *(
                    # Different questions: no answer comes from the cache for free.
                    http.post("/v1/research", json={"query": f"How do health checks work? {i}"})
                    for i in range(30)
                )
            )

    try:
        answers = asyncio.run(burst())
        admitted = [a.json() for a in answers if a.status_code == 200]
        refused = [a.json()["error"]["type"] for a in answers if a.status_code != 200]
        assert admitted and refused == ["budget_exhausted"] * len(refused)
        # Then one at a time until the budget is spent: what the burst reserved and did not
        # use went back, and the whole budget can be used.
        for i in range(10):
            after = httpx.post(
                f"{server.url}/v1/research", json={"query": f"What is a volume? {i}"}, timeout=60
            )
            if after.status_code != 200:
                assert after.json()["error"]["type"] == "budget_exhausted"
                break
            admitted.append(after.json())
        charged = sum(a["tokens_used"] for a in admitted)
        one_run = max(a["tokens_used"] for a in admitted)
        assert budget <= charged <= budget + one_run, f"{len(admitted)} runs charged {charged}"
    finally:
        server.process.kill()
        server.wait(30)


# --- Concurrent streams ---------------------------------------------------------------------------


@pytest.fixture
def two_replicas(fresh_redis, start_agent):
    """Two `python main.py` on one Redis, a slow offline model (streams stay open), cap 1."""
    settings = {
        "API_KEYS": KEYS,
        "REDIS_URL": fresh_redis.url,
        "MAX_STREAMS_PER_CALLER": 1,
        "OFFLINE_TOKEN_DELAY_MS": 100,
        "SHUTDOWN_DRAIN_SECONDS": 0,
    }
    servers = [start_agent(**settings), start_agent(**settings)]
    yield servers
    for server in servers:
        server.process.kill()
        server.wait(30)


def test_the_stream_cap_holds_across_replicas_and_frees_when_a_stream_ends(two_replicas):
    first, second = two_replicas
    with httpx.Client(timeout=30) as http:
        with http.stream(
            "POST", f"{first.url}/v1/research/stream", json=QUERY, headers=auth()
        ) as open_stream:
            assert open_stream.status_code == 200
            lines = open_stream.iter_lines()  # kept: a dropped iterator closes the connection
            assert next(lines) == "event: tool"  # the stream is under way: it holds the slot

            refused = http.post(f"{second.url}/v1/research/stream", json=QUERY, headers=auth())
            assert refused.status_code == 429
            assert refused.json()["error"]["type"] == "too_many_streams"
            assert refused.headers["retry-after"] == "5"
            assert refused.headers["ratelimit-policy"] == ('"streams";q=1;qu="concurrent-requests"')
            # JSON answers are not streams; another caller has slots of its own.
            assert (
                http.post(f"{second.url}/v1/research", json=QUERY, headers=auth()).status_code
                == 200
            )
            other = http.post(
                f"{second.url}/v1/research/stream", json=OTHER_QUERY, headers=auth(OTHER_KEY)
            )
            assert other.status_code == 200 and other.text.rstrip().endswith("data: [DONE]")
        # The client went away mid-stream: the slot is released with the stream.
        again = wait_for(
            lambda: (
                (
                    r := http.post(f"{second.url}/v1/research/stream", json=QUERY, headers=auth())
                ).status_code
                == 200
                and r
            ),
            timeout=15,
            what="the stream slot to be released",
        )
        assert again.text.rstrip().endswith("data: [DONE]")


def test_a_slot_of_a_crashed_replica_frees_itself_when_its_lease_ends(fresh_redis):
    async def scenario():
        redis = Redis.from_url(fresh_redis.url)
        try:
            slots = RedisSlots(redis, lease_seconds=1)
            held = await slots.acquire("key:alice", cap=1)  # and never released: a crash
            assert held is not None
            assert await slots.acquire("key:alice", cap=1) is None
            assert await slots.acquire("key:bob", cap=1) is not None
            deadline = time.monotonic() + 10
            while (member := await slots.acquire("key:alice", cap=1)) is None:
                assert time.monotonic() < deadline, "the lease never ended"
                await asyncio.sleep(0.1)
            # Exactly one slot, and it is the new one.
            assert await redis.zcard(RedisSlots._key("key:alice")) == 1
            await slots.release("key:alice", member)
            assert await redis.zcard(RedisSlots._key("key:alice")) == 0
        finally:
            await redis.aclose()

    asyncio.run(scenario())


def test_racing_replicas_never_get_more_slots_than_the_cap(fresh_redis):
    async def scenario():
        redis = Redis.from_url(fresh_redis.url)
        try:
            slots = RedisSlots(redis, lease_seconds=60)
            results = await asyncio.gather(*(slots.acquire("key:alice", cap=3) for _ in range(20)))
            assert 1 <= sum(r is not None for r in results) <= 3
            assert await redis.zcard(RedisSlots._key("key:alice")) <= 3
        finally:
            await redis.aclose()

    asyncio.run(scenario())


def test_the_stream_cap_in_one_process(client_for):
    with client_for(MAX_STREAMS_PER_CALLER=1) as client:
        quotas = client.app.state.quotas
        from research_agent.access.keys import Caller

        async def hold_a_slot_and_ask():
            async with quotas.stream_slot(Caller("addr:testclient")):
                return await asyncio.to_thread(client.post, "/v1/research/stream", json=QUERY)

        refused = client.portal.call(hold_a_slot_and_ask)
        assert refused.status_code == 429 and refused.json()["error"]["type"] == "too_many_streams"
        streamed = client.post("/v1/research/stream", json=QUERY)
        assert streamed.status_code == 200 and streamed.text.rstrip().endswith("data: [DONE]")
        assert client.post("/v1/research/stream", json=QUERY).status_code == 200


# --- Redis stops mid-test: LIMITS_FAIL_MODE -------------------------------------------------------


def test_redis_down_local_mode_counts_in_this_process(client_for, fresh_redis, caplog):
    settings = {"RATE_LIMIT": "3/minute", "REDIS_URL": fresh_redis.url}
    with client_for(**settings) as client:  # LIMITS_FAIL_MODE defaults to local
        for _ in range(2):
            assert client.post("/v1/research", json=QUERY).status_code == 200
        fresh_redis.stop()
        caplog.clear()
        # Redis counted two; this process counts from zero on its own: three more, then 429.
        answers = [client.post("/v1/research", json=QUERY).status_code for _ in range(4)]
        assert answers == [200, 200, 200, 429]
        assert metric(client, "research_limits_degraded") == 1
    warnings = [r.getMessage() for r in caplog.records if r.name == "research_agent.access.quotas"]
    assert warnings.count("redis unavailable, limits counted in this process only") == 1


def test_redis_down_closed_mode_answers_503(client_for, fresh_redis, caplog):
    settings = {
        "API_KEYS": KEYS,
        "RATE_LIMIT": "3/minute",
        "REDIS_URL": fresh_redis.url,
        "LIMITS_FAIL_MODE": "closed",
    }
    with client_for(**settings) as client:
        assert client.post("/v1/research", json=QUERY, headers=auth()).status_code == 200
        fresh_redis.stop()
        caplog.clear()
        for path in ("/v1/research", "/v1/research/stream"):
            answer = client.post(path, json=QUERY, headers=auth())
            assert answer.status_code == 503
            assert answer.json()["error"]["type"] == "limits_unavailable"
            assert answer.json()["error"]["retryable"] is True
            assert int(answer.headers["retry-after"]) >= 1
        # The key is still checked first, and /ready does not depend on the limits.
        assert client.post("/v1/research", json=QUERY).status_code == 401
        assert client.get("/ready").status_code == 200
    warnings = [r.getMessage() for r in caplog.records if r.name == "research_agent.access.quotas"]
    assert warnings == ["redis unavailable, limits cannot be checked: /v1 answers 503"]


def test_redis_down_open_mode_lets_everything_through(client_for, fresh_redis):
    settings = {"RATE_LIMIT": "2/minute", "REDIS_URL": fresh_redis.url, "LIMITS_FAIL_MODE": "open"}
    with client_for(**settings) as client:
        fresh_redis.stop()
        answers = [client.post("/v1/research", json=QUERY) for _ in range(5)]
        assert {a.status_code for a in answers} == {200}


# --- Nothing gives a key away ---------------------------------------------------------------------


def test_no_key_in_logs_metrics_or_answers(client_for, fresh_redis, caplog, capsys):
    wrong = "wrong-key-fedcba9876543210"
    settings = {
        "API_KEYS": KEYS,
        "RATE_LIMIT": "2/minute",
        "MAX_STREAMS_PER_CALLER": 1,
        "REDIS_URL": fresh_redis.url,
        "LOG_LEVEL": "DEBUG",
    }
    with caplog.at_level(logging.DEBUG), client_for(**settings) as client:
        seen = [
            client.post("/v1/research", json=QUERY, headers=auth()),
            client.post("/v1/research/stream", json=QUERY, headers=auth()),
            client.post("/v1/research", json=QUERY, headers=auth()),  # 429
            client.post("/v1/research", json=QUERY, headers=auth(wrong)),  # 401
            client.post("/v1/research", json={"query": 1}, headers=auth(OTHER_KEY)),  # 422
        ]
        assert [a.status_code for a in seen] == [200, 200, 429, 401, 422]
        metrics = client.get("/metrics").text
        fresh_redis.stop()
        assert client.post("/v1/research", json=QUERY, headers=auth(OTHER_KEY)).status_code == 200
    logged = caplog.text + capsys.readouterr().out
    assert "key:alice" in logged and fingerprint(wrong) in logged  # names, fingerprints...
    for secret in (KEY, OTHER_KEY, wrong):  # ...never keys
        assert secret not in logged
        assert secret not in metrics
        assert all(secret not in a.text for a in seen)
    assert 'research_requests_rejected_total{reason="unauthorized"}' in metrics

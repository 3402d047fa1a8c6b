"""The Redis cache against a real redis-server: hits, and Redis going away mid-test."""

import logging

import pytest

from tests.support.metrics import metric

QUERY = "How do health checks work?"


def test_second_identical_request_is_served_from_redis(client_for, fresh_redis):
    with client_for(REDIS_URL=fresh_redis.url, CACHE_TTL_SECONDS=60) as client:
        assert client.get("/ready").json()["cache"] == "redis"
        hits, misses = (
            metric(client, "research_cache_hits_total"),
            metric(client, "research_cache_misses_total"),
        )

        first = client.post("/v1/research", json={"query": QUERY}).json()
        second = client.post(
            "/v1/research", json={"query": "  How do health   checks work? "}
        ).json()

        assert first["cached"] is False and first["tokens_used"] > 0
        assert second["cached"] is True and second["tokens_used"] == 0
        assert second["response"] == first["response"] and second["sources"] == first["sources"]
        assert second["request_id"] != first["request_id"]
        assert metric(client, "research_cache_misses_total") == misses + 1
        assert metric(client, "research_cache_hits_total") == hits + 1
        # A different question is a miss.
        assert (
            client.post("/v1/research", json={"query": "What is a multi-stage build?"}).json()[
                "cached"
            ]
            is False
        )


def test_stream_uses_and_fills_the_cache(client_for, fresh_redis):
    with client_for(REDIS_URL=fresh_redis.url) as client:
        streamed = client.post("/v1/research/stream", json={"query": QUERY}).text
        assert '"cached": false' in streamed
        cached = client.post("/v1/research", json={"query": QUERY}).json()
        assert cached["cached"] is True
        again = client.post("/v1/research/stream", json={"query": QUERY}).text
        assert '"cached": true' in again and again.rstrip().endswith("data: [DONE]")


ALICE, BOB = "alice-key-0123456789abcdef", "bob-key-0123456789abcdef00"


def ask(client, key: str, query: str = QUERY) -> dict:
    answer = client.post(
        "/v1/research", json={"query": query}, headers={"Authorization": f"Bearer {key}"}
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


@pytest.mark.parametrize("scope", [None, "caller"])
def test_by_default_a_cached_answer_tells_nobody_what_another_caller_asked(
    client_for, fresh_redis, scope
):
    settings = {"REDIS_URL": fresh_redis.url, "API_KEYS": f"alice:{ALICE},bob:{BOB}"}
    if scope:
        settings["CACHE_SCOPE"] = scope
    with client_for(**settings) as client:
        assert ask(client, ALICE)["cached"] is False
        # Bob asks the same within the TTL: nothing in his answer says Alice asked it.
        bob = ask(client, BOB)
        assert bob["cached"] is False and bob["tokens_used"] > 0
        assert ask(client, ALICE)["cached"] is True and ask(client, BOB)["cached"] is True
        streamed = client.post(
            "/v1/research/stream",
            json={"query": "What is a multi-stage build?"},
            headers={"Authorization": f"Bearer {ALICE}"},
        )
        assert '"cached": false' in streamed.text
        assert ask(client, BOB, "What is a multi-stage build?")["cached"] is False


def test_a_shared_cache_serves_every_caller(client_for, fresh_redis):
    settings = {
        "REDIS_URL": fresh_redis.url,
        "API_KEYS": f"alice:{ALICE},bob:{BOB}",
        "CACHE_SCOPE": "shared",
    }
    with client_for(**settings) as client:
        assert ask(client, ALICE)["cached"] is False
        bob = ask(client, BOB)
        assert bob["cached"] is True and bob["tokens_used"] == 0


def cache_counters(client) -> dict:
    return {
        "calls": metric(client, "research_cache_redis_calls_total"),
        "errors": metric(client, "research_cache_errors_total"),
        "skipped": metric(client, "research_cache_skipped_total"),
    }


def moved(before: dict, after: dict) -> dict:
    return {k: after[k] - before[k] for k in before}


def test_redis_going_away_bypasses_the_cache_with_one_warning(client_for, fresh_redis, caplog):
    with client_for(REDIS_URL=fresh_redis.url) as client:
        assert client.post("/v1/research", json={"query": QUERY}).json()["cached"] is False
        assert client.post("/v1/research", json={"query": QUERY}).json()["cached"] is True

        fresh_redis.stop()
        caplog.clear()
        before = cache_counters(client)
        responses = [client.post("/v1/research", json={"query": QUERY}) for _ in range(3)]

        assert [r.status_code for r in responses] == [200, 200, 200]
        assert all(r.json()["cached"] is False for r in responses)
        warnings = [
            r
            for r in caplog.records
            if r.name == "research_agent.cache" and r.levelno == logging.WARNING
        ]
        assert (
            len(warnings) == 1 and warnings[0].getMessage() == "redis unavailable, cache bypassed"
        )
        # One failed call opened the breaker; every later get and set skipped Redis.
        assert moved(before, cache_counters(client)) == {"calls": 1, "errors": 1, "skipped": 5}
        ready = client.get("/ready")
        assert ready.status_code == 200 and ready.json()["cache"] == "bypassed"


class Clock:
    """The breaker's clock, moved by the test: no test step depends on how fast this machine is."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_frozen_redis_costs_one_timeout_then_is_skipped_until_a_probe_succeeds(
    client_for, fresh_redis
):
    with client_for(REDIS_URL=fresh_redis.url, CACHE_BREAKER_SECONDS=30) as client:
        clock = client.app.state.cache.breaker.clock = Clock()
        assert client.post("/v1/research", json={"query": QUERY}).json()["cached"] is False
        assert client.get("/ready").json()["cache"] == "redis"
        assert metric(client, "research_cache_breaker_open") == 0

        fresh_redis.freeze()
        try:
            before = cache_counters(client)
            first = client.post("/v1/research", json={"query": QUERY})
            # The get waited for its timeout and failed; the set after it was not even tried.
            assert first.status_code == 200 and first.json()["cached"] is False
            assert moved(before, cache_counters(client)) == {"calls": 1, "errors": 1, "skipped": 1}
            ready = client.get("/ready")
            assert ready.status_code == 200 and ready.json()["cache"] == "bypassed"
            assert metric(client, "research_cache_breaker_open") == 1

            # While the breaker is open, requests never touch Redis (no timeout to wait for).
            before = cache_counters(client)
            for _ in range(5):
                assert client.post("/v1/research", json={"query": QUERY}).status_code == 200
            assert moved(before, cache_counters(client)) == {"calls": 0, "errors": 0, "skipped": 10}

            # After 30 s one request probes; Redis is still frozen, so the breaker opens again.
            clock.now += 30
            before = cache_counters(client)
            for _ in range(3):
                assert client.post("/v1/research", json={"query": QUERY}).status_code == 200
            assert moved(before, cache_counters(client)) == {"calls": 1, "errors": 1, "skipped": 5}
            assert client.get("/ready").json()["cache"] == "bypassed"
        finally:
            fresh_redis.thaw()

        # Redis answers again: the next request's get is the probe, it succeeds (a hit: the answer
        # stored before the freeze) and the cache is back for every request.
        clock.now += 30
        before = cache_counters(client)
        assert client.post("/v1/research", json={"query": QUERY}).json()["cached"] is True
        assert (
            client.post("/v1/research", json={"query": "What is a multi-stage build?"}).json()[
                "cached"
            ]
            is False
        )
        assert moved(before, cache_counters(client)) == {"calls": 3, "errors": 0, "skipped": 0}
        assert client.get("/ready").json()["cache"] == "redis"
        assert metric(client, "research_cache_breaker_open") == 0


def test_starting_without_redis_still_serves(client_for, fresh_redis, caplog):
    fresh_redis.stop()
    with client_for(REDIS_URL=fresh_redis.url) as client:
        assert client.get("/ready").status_code == 200
        assert client.post("/v1/research", json={"query": QUERY}).status_code == 200
    assert (
        sum(
            r.name == "research_agent.cache" and r.levelno == logging.WARNING
            for r in caplog.records
        )
        == 1
    )


def test_a_replica_that_started_before_redis_gets_its_cache_back_from_readiness_checks(
    client_for, fresh_redis
):
    # On Swarm nothing orders start-up: an agent may ping Redis before Redis listens. Its breaker
    # opens; the load balancer's /ready checks, not a user's request, must bring the cache back.
    fresh_redis.stop()
    with client_for(REDIS_URL=fresh_redis.url, CACHE_BREAKER_SECONDS=30) as client:
        breaker = client.app.state.cache.breaker
        clock = breaker.clock = Clock()
        breaker.open_until = clock.now + 30  # opened by the start-up ping, on the real clock
        assert client.get("/ready").json()["cache"] == "bypassed"
        fresh_redis.start()
        assert client.get("/ready").json()["cache"] == "bypassed"  # still open: no call to Redis
        clock.now += 30
        assert client.get("/ready").json()["cache"] == "redis"
        assert metric(client, "research_cache_breaker_open") == 0
        assert client.post("/v1/research", json={"query": QUERY}).json()["cached"] is False
        assert client.post("/v1/research", json={"query": QUERY}).json()["cached"] is True

"""Hostile requests to the research agent that are not about limits: each case here was answered
wrongly once (a body parsed before the key was checked, a second Authorization header ignored, a key
the service could never match, a NUL reaching the model, a client's Host echoed in a redirect)."""

import httpx
import pytest
from app.auth import ApiKeyConfigError, ApiKeys

from .conftest import make_settings, start_server, wait_for

KEY = "alice-key-0123456789abcdef"
QUERY = {"query": "How do health checks work?"}


@pytest.mark.parametrize("path", ["/v1/research", "/v1/research/stream"])
@pytest.mark.parametrize(
    "body",
    [b"{not json", b'{"query": 42}', b'{"query": "ok?", "extra": 1}'],
    ids=["invalid-json", "wrong-type", "unknown-field"],
)
def test_a_caller_without_a_key_learns_nothing_about_the_body(client_for, path, body):
    # The key is checked first: a stranger gets the same 401 whatever the body holds.
    with client_for(API_KEYS=f"alice:{KEY}") as client:
        answer = client.post(path, content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 401, answer.text
    assert answer.json()["error"]["type"] == "unauthorized"


def test_two_authorization_headers_are_a_400(client_for):
    with client_for(API_KEYS=f"alice:{KEY}") as client:
        answer = client.post(
            "/v1/research",
            json=QUERY,
            headers=[("authorization", f"Bearer {KEY}"), ("authorization", "Bearer other")],
        )
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["type"] == "ambiguous_authorization"


def test_a_non_ascii_key_stops_the_service_at_start_up():
    # HTTP headers arrive as latin-1: a key in UTF-8 would never match what the client sends.
    with pytest.raises(ApiKeyConfigError, match="ASCII"):
        ApiKeys.from_settings(make_settings(API_KEYS="alice:clé-0123456789abcdef-ü"))


def test_a_nul_byte_in_the_query_is_a_422(client):
    answer = client.post("/v1/research", json={"query": "what\x00 is docker?"})
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["details"][0]["loc"] == ["body", "query"]


def test_a_trailing_slash_does_not_redirect_to_a_host_the_client_chose(client):
    answer = client.post(
        "/v1/research/", json=QUERY, headers={"host": "evil.example"}, follow_redirects=False
    )
    assert "evil.example" not in answer.headers.get("location", "")
    assert answer.status_code == 404
    assert answer.json()["error"]["type"] == "not_found"


def test_a_made_up_x_forwarded_for_does_not_buy_a_fresh_rate_limit(redis_server):
    # Without keys, callers are counted by address. A caller on the same host as the service (or
    # any caller, where a proxy is not configured as trusted) must not name its own address.
    server = start_server(
        RATE_LIMIT="2/minute", OFFLINE_TOKEN_DELAY_MS="0", REDIS_URL=redis_server.url
    )
    try:
        statuses = [
            httpx.post(
                f"{server.base}/v1/research",
                json=QUERY,
                headers={"X-Forwarded-For": f"203.0.113.{i}"},
                timeout=30,
            ).status_code
            for i in range(3)
        ]
    finally:
        server.process.terminate()
        server.finish()
    assert statuses == [200, 200, 429]


def test_a_configured_proxy_is_trusted_for_the_callers_address(redis_server):
    server = start_server(
        RATE_LIMIT="2/minute",
        OFFLINE_TOKEN_DELAY_MS="0",
        REDIS_URL=redis_server.url,
        FORWARDED_ALLOW_IPS="127.0.0.1",
    )
    try:
        statuses = [
            httpx.post(
                f"{server.base}/v1/research",
                json=QUERY,
                headers={"X-Forwarded-For": f"203.0.113.{i}"},
                timeout=30,
            ).status_code
            for i in range(3)
        ]
    finally:
        server.process.terminate()
        server.finish()
    assert statuses == [200, 200, 200]


def test_a_huge_url_is_a_414_and_the_log_keeps_a_bounded_path(client, caplog):
    caplog.set_level("INFO", logger="app.middleware")
    answer = client.get("/health?pad=" + "x" * 10_000)
    assert answer.status_code == 414, answer.status_code
    assert answer.json()["error"]["type"] == "uri_too_long"
    answer = client.get("/v1/" + "p" * 1_500)  # under the URL limit: an ordinary 404
    assert answer.status_code == 404
    paths = [r.path for r in caplog.records if r.getMessage() == "request"]
    assert paths and max(len(p) for p in paths) <= 256


def tokens_total(base: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("agent_tokens_total{")
    )


def test_a_streamer_that_hangs_up_before_final_is_charged_what_it_was_sent(redis_server):
    # 22 streams that each read 150 of 155 tokens and hung up were charged nothing: a real
    # provider bills those tokens. Budget 30: reading 40 tokens and leaving must use it up.
    server = start_server(
        TOKEN_BUDGET_PER_DAY="30",
        TOKEN_BUDGET_WINDOW_SECONDS="600",
        OFFLINE_TOKEN_DELAY_MS="20",
        REDIS_URL=redis_server.url,
    )
    try:
        before = tokens_total(server.base)
        read = 0
        with (
            httpx.Client(timeout=30) as http,
            http.stream("POST", f"{server.base}/v1/research/stream", json=QUERY) as stream,
        ):
            for line in stream.iter_lines():
                read += line.startswith("event: token")
                assert not line.startswith("event: final"), "the answer ended before we left"
                if read == 40:
                    break  # hang up mid-answer
        assert read == 40
        charged = wait_for(
            lambda: (tokens_total(server.base) - before) or None,
            timeout=15,
            message="the abandoned stream's tokens to be counted",
        )
        assert charged >= 40
        over = httpx.post(f"{server.base}/v1/research", json=QUERY, timeout=30)
        assert over.status_code == 429, over.text
        assert over.json()["error"]["type"] == "budget_exhausted"
    finally:
        server.process.terminate()
        server.finish()

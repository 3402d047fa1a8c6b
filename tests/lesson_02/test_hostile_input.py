"""Hostile requests to the research agent that are not about limits: each case here was answered
wrongly once (a body parsed before the key was checked, a second Authorization header ignored, a key
the service could never match, a NUL reaching the model, a client's Host echoed in a redirect)."""

import json

import httpx
import pytest

from research_agent.access.keys import ApiKeyConfigError, ApiKeys, fingerprint
from support.waiting import wait_for
from tests.support.agent import make_settings

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
        ApiKeys.from_settings(make_settings(API_KEYS="alice:clé-0123456789abcdef-ü").access)


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


@pytest.mark.parametrize(
    "proxy, statuses",
    [
        # Without keys, callers are counted by address. A caller on the same host as the service
        # (or any caller, where a proxy is not configured as trusted) must not name its own address.
        pytest.param({}, [200, 200, 429], id="made-up-x-forwarded-for-buys-nothing"),
        pytest.param(
            {"FORWARDED_ALLOW_IPS": "127.0.0.1"}, [200, 200, 200], id="a-trusted-proxy-is-believed"
        ),
    ],
)
def test_x_forwarded_for_names_the_caller_only_behind_a_trusted_proxy(
    fresh_redis, start_agent, proxy, statuses
):
    server = start_agent(
        RATE_LIMIT="2/minute", OFFLINE_TOKEN_DELAY_MS="0", REDIS_URL=fresh_redis.url, **proxy
    )
    answers = [
        httpx.post(
            f"{server.url}/v1/research",
            json=QUERY,
            headers={"X-Forwarded-For": f"203.0.113.{i}"},
            timeout=30,
        ).status_code
        for i in range(3)
    ]
    assert answers == statuses


def test_a_huge_url_is_a_414_and_the_log_keeps_a_bounded_path(client, caplog):
    caplog.set_level("INFO", logger="research_agent.web.middleware")
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


def test_a_streamer_that_hangs_up_before_final_is_charged_what_it_was_sent(
    fresh_redis, start_agent
):
    # 22 streams that each read 150 of 155 tokens and hung up were charged nothing: a real
    # provider bills those tokens. Budget 30: reading 40 tokens and leaving must use it up.
    server = start_agent(
        TOKEN_BUDGET_PER_DAY="30",
        TOKEN_BUDGET_WINDOW_SECONDS="600",
        OFFLINE_TOKEN_DELAY_MS="20",
        REDIS_URL=fresh_redis.url,
    )
    try:
        before = tokens_total(server.url)
        read = 0
        with (
            httpx.Client(timeout=30) as http,
            http.stream("POST", f"{server.url}/v1/research/stream", json=QUERY) as stream,
        ):
            for line in stream.iter_lines():
                read += line.startswith("event: token")
                assert not line.startswith("event: final"), "the answer ended before we left"
                if read == 40:
                    break  # hang up mid-answer
        assert read == 40
        charged = wait_for(
            lambda: (tokens_total(server.url) - before) or None,
            timeout=15,
            what="the abandoned stream's tokens to be counted",
        )
        assert charged >= 40
        over = httpx.post(f"{server.url}/v1/research", json=QUERY, timeout=30)
        assert over.status_code == 429, over.text
        assert over.json()["error"]["type"] == "budget_exhausted"
    finally:
        server.process.terminate()
        server.wait(30)


# --- Guessing keys -------------------------------------------------------------------------------


def test_an_address_that_keeps_guessing_keys_is_throttled_with_one_log_line_each(
    client_for, capsys
):
    # 1,266 wrong keys a second on one connection were all answered 401, two log lines each.
    with client_for(API_KEYS=f"alice:{KEY}", AUTH_FAILURE_LIMIT="5/minute") as client:
        capsys.readouterr()

        def guess(i: int, key: str | None = None) -> httpx.Response:
            headers = {"X-Request-ID": f"guess-{i}"}
            if key is not None:
                headers["Authorization"] = f"Bearer {key}"
            return client.post("/v1/research", json=QUERY, headers=headers)

        statuses = [guess(i, f"wrong-key-{i:02d}-0123456789abcdef").status_code for i in range(7)]
        assert statuses == [401] * 5 + [429] * 2
        # Once over, every request from the address is a 429, the right key too: a 200 among the
        # 429s would tell the guesser which guess was right.
        for answer in (guess(7), guess(8, KEY)):
            assert answer.status_code == 429, answer.text
            error = answer.json()["error"]
            assert error["type"] == "too_many_auth_failures" and error["retryable"] is True
            assert 1 <= int(answer.headers["retry-after"]) <= 60
            assert answer.headers["ratelimit-policy"] == '"auth-failures";q=5;w=60'
            assert KEY not in answer.text
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line[:1] == "{"]
    for i in range(9):
        mine = [line for line in lines if line["request_id"] == f"guess-{i}"]
        assert [line["message"] for line in mine] == ["request"], mine
    assert [line["key_fingerprint"] for line in lines if line["request_id"] == "guess-0"] == [
        fingerprint("wrong-key-00-0123456789abcdef")
    ]


def test_replicas_count_an_addresss_failed_keys_together(client_for, fresh_redis):
    settings = {
        "API_KEYS": f"alice:{KEY}",
        "AUTH_FAILURE_LIMIT": "4/minute",
        "REDIS_URL": fresh_redis.url,
    }
    wrong = {"Authorization": "Bearer wrong-key-0123456789abcdef"}
    with client_for(**settings) as first, client_for(**settings) as second:
        statuses = [
            replica.post("/v1/research", json=QUERY, headers=wrong).status_code
            for replica in (first, second, first, second, first, second)
        ]
    assert statuses == [401] * 4 + [429] * 2


def test_the_failure_limit_does_not_touch_callers_with_a_key(client_for):
    with client_for(API_KEYS=f"alice:{KEY}", AUTH_FAILURE_LIMIT="2/minute") as client:
        ok = {"Authorization": f"Bearer {KEY}"}
        assert {
            client.post("/v1/research", json=QUERY, headers=ok).status_code for _ in range(4)
        } == {200}


# --- Request ids ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "given",
    [b"x" * 10_240, b"trace-1\nlevel: CRITICAL", "trac\u00e9-\u00fc".encode(), b"a\x00b"],
    ids=["10-KB", "newline", "non-ASCII", "NUL"],
)
def test_a_hostile_request_id_is_replaced_and_costs_one_log_line(client, capsys, given):
    capsys.readouterr()
    answer = client.get("/health", headers={"X-Request-ID": given})
    made = answer.headers["x-request-id"]
    assert len(made) == 32 and all(c in "0123456789abcdef" for c in made)
    out = capsys.readouterr().out
    lines = [json.loads(line) for line in out.splitlines() if line[:1] == "{"]
    # The access log's line, under the id the service made; nothing of the header's value.
    assert [(line["message"], line["request_id"]) for line in lines] == [("request", made)], out
    assert given.decode("latin-1")[:64] not in out and "CRITICAL" not in out

"""Callers who attack the limits themselves (issue 26): a body sent a byte at a time with no key,
streams cut after their first token to spend less than they cost, and a forwarding setting that
makes every caller one address, so that one guesser locks everyone out.

The edge's side of the slow bodies (HAProxy waits for each whole request) is tested against the
Compose stack in tests/lesson_03/test_compose.py.
"""

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from pydantic import ValidationError
from redis import Redis

from research_agent.access.keys import fingerprint
from research_agent.settings import Settings
from support.lessons import AGENT_DIR
from support.server import offline_environment
from support.waiting import wait_for
from tests.support.metrics import metric

KEY = "alice-key-0123456789abcdef"
WRONG_KEY = "wrong-key-0123456789abcdef"
QUERY = {"query": "How do health checks work?"}
REPO = Path(__file__).resolve().parents[2]


# --- The key before the body ----------------------------------------------------------------------


def test_a_keyless_body_sent_a_byte_at_a_time_is_refused_before_it_arrives(start_agent):
    """205 keyless connections announcing 4,000 bytes and sending one every 20 s held the agent:
    its body was read before its key was checked. The 401 now comes once the header is in."""
    server = start_agent(API_KEYS=f"alice:{KEY}")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/research HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\n"
            b"Content-Length: 4000\r\n\r\n{"
        )
        answer = b""
        try:
            while b'"type":' not in answer and (part := sock.recv(4096)):
                answer += part
        except TimeoutError:
            answer = answer or b"(nothing within 10 s: the server is waiting for the body)"
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert b'"type":"unauthorized"' in answer


# --- A cut stream pays for what it made the model read -------------------------------------------


def budget_spent(redis: Redis) -> int:
    keys = [key for key in redis.scan_iter(match="*tokens*")]
    return sum(int(redis.get(key) or 0) for key in keys)


def cut_after_first_token(url: str, query: str) -> None:
    with httpx.stream("POST", f"{url}/v1/research/stream", json={"query": query}, timeout=30) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line == "event: token":
                return
    raise AssertionError("the stream ended before its first token")


def test_a_stream_cut_after_its_first_token_is_charged_every_prompt_it_sent(
    start_agent, fresh_redis
):
    """With TOKEN_BUDGET_PER_DAY=2000, streams cut after their first token were charged 72 input
    tokens each (only the first model call's; the answering call's ~280-token prompt reports its
    usage at its end, which a cut stream never reaches): 15 runs fit the budget. Each is now
    charged at least every prompt it sent, the input of a whole run."""
    server = start_agent(
        TOKEN_BUDGET_PER_DAY=1_000_000,
        RATE_LIMIT="off",
        REDIS_URL=fresh_redis.url,
        OFFLINE_TOKEN_DELAY_MS=50,  # the answer streams for seconds: the cut lands mid-answer
    )
    redis = Redis.from_url(fresh_redis.url)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for i in range(3):
            query = f"What is a volume? ({i})"
            before = budget_spent(redis)
            cut_after_first_token(server.url, query)

            def settled(before=before):
                # The stream is over and its reservation (4,000) settled to what it used.
                if metric(client, "research_streams_open") != 0:
                    return None
                spent = budget_spent(redis) - before
                return spent if 0 < spent < 4000 else None

            charged = wait_for(settled, timeout=30, what="the cut stream to be charged")
            # The same question, whole (a cut run is not cached): what its prompts cost.
            inputs = metric(client, "agent_tokens_total", kind="input")
            whole = client.post("/v1/research", json={"query": query}).json()
            whole_input = metric(client, "agent_tokens_total", kind="input") - inputs
            print(
                f"\n{query}: a whole run {whole['tokens_used']} tokens, {whole_input:g} of them "
                f"input; cut after its first token, charged {charged}"
            )
            assert whole_input <= charged <= whole["tokens_used"], (charged, whole_input)


# --- Who is refused, and one address for everyone ------------------------------------------------


def log_lines(server) -> list[dict]:
    return [json.loads(line) for line in server.log_text().splitlines() if line[:1] == "{"]


def test_a_too_many_auth_failures_429_names_the_address_and_the_key(start_agent):
    """The 429 lines named neither: nobody could tell who had locked an address out."""
    server = start_agent(
        API_KEYS=f"alice:{KEY}", AUTH_FAILURE_LIMIT="2/minute", FORWARDED_ALLOW_IPS="127.0.0.1"
    )

    def post(address: str, key: str, request_id: str) -> int:
        headers = {
            "Authorization": f"Bearer {key}",
            "X-Forwarded-For": address,
            "X-Request-ID": request_id,
        }
        return httpx.post(
            f"{server.url}/v1/research", json=QUERY, headers=headers, timeout=30
        ).status_code

    guesses = [post("203.0.113.7", WRONG_KEY, f"guess-{i}") for i in range(3)]
    right_key_same_address = post("203.0.113.7", KEY, "right-key")
    other_address = post("203.0.113.8", KEY, "other-address")
    assert guesses == [401, 401, 429] and right_key_same_address == 429
    assert other_address == 200, "one guesser locked out another address"

    def logged():
        # The access log's line is written once the answer's last byte is sent: a moment later.
        found = {
            line["request_id"]: line for line in log_lines(server) if line["message"] == "request"
        }
        return found if {"guess-2", "right-key", "other-address"} <= set(found) else None

    lines = wait_for(logged, timeout=15, what="the three access-log lines")
    assert lines["guess-2"]["status"] == 429
    assert lines["guess-2"]["client"] == "203.0.113.7"
    assert lines["guess-2"]["key_fingerprint"] == fingerprint(WRONG_KEY)
    assert lines["right-key"]["client"] == "203.0.113.7"
    assert lines["right-key"]["key_fingerprint"] == fingerprint(KEY)
    assert lines["other-address"]["client"] == "203.0.113.8"


def deployed_forwarders() -> list[str]:
    """FORWARDED_ALLOW_IPS as lesson 03's Compose file and lesson 06's Swarm stack set it."""
    compose = yaml.safe_load((AGENT_DIR / "docker-compose.yml").read_text())
    stack = yaml.safe_load((REPO / "code" / "lesson06" / "swarm" / "stack.yml").read_text())
    values = [compose["services"]["agent"]["environment"]["FORWARDED_ALLOW_IPS"]]
    for service in stack["services"].values():
        environment = service.get("environment") or {}
        if isinstance(environment, dict) and "FORWARDED_ALLOW_IPS" in environment:
            # The stack file says ${EDGE_SUBNET:-default}: check the default it deploys with.
            value = str(environment["FORWARDED_ALLOW_IPS"])
            values.append(re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value))
    return values


@pytest.mark.parametrize(
    "value", ["", "*", "127.0.0.1", "127.0.0.1, ::1", "10.0.0.0/8,fd00::/8", *deployed_forwarders()]
)
def test_forwarders_given_as_addresses_or_networks_are_accepted(value):
    Settings(FORWARDED_ALLOW_IPS=value)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("edge", id="a-service-name"),
        pytest.param("10.251.0.7/24", id="a-network-with-host-bits"),
        pytest.param("*,10.0.0.1", id="a-star-among-others"),
        pytest.param("10.0.0.300", id="not-an-address"),
    ],
)
def test_a_forwarder_uvicorn_would_never_match_stops_the_service_at_start(value):
    """Uvicorn compares such an entry as a string, no proxy's address equals it, and every caller
    behind the proxy becomes the proxy's one address: one rate limit and one AUTH_FAILURE_LIMIT
    for everybody."""
    with pytest.raises(ValidationError, match="FORWARDED_ALLOW_IPS"):
        Settings(FORWARDED_ALLOW_IPS=value)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "main.py"],
        cwd=AGENT_DIR,
        env=offline_environment(HOST="127.0.0.1", PORT="1", FORWARDED_ALLOW_IPS=value),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "FORWARDED_ALLOW_IPS" in result.stderr, (
        result.returncode,
        result.stderr[-2000:],
        time.monotonic() - started,
    )

"""Two stateless gateways, as processes, that share their pins in one Redis (what the replicas of
code/lesson08/replicas.yaml run): a call goes to either one without a session, the SDK's
client works on either, a changed tool is refused by both, and a re-pin through one reaches the
other (issue 41, item 4). The replicas behind HAProxy, stopped and killed under a burst, are in
test_replicas_containers.py."""

import asyncio
import contextlib
import signal
import time

import httpx

from support.mcp_servers import gateway, tool_server
from tests.support.mcp_catalog import HOSTILE_TOOLS
from tests.support.mcp_clients import HOSTILE_SERVER, log_lines, sdk_session
from tests.support.redis import RedisServer

from .conftest import INITIALIZE, MCP_HEADERS, OPERATOR_TOKEN, agent_on_a_port, bearer, operator

# Its own servers on free ports: no group, so `make test` runs it beside lesson 08's shared ones.

TESTER = "tester-token-for-the-replicas"
RECHECK = 1  # seconds: a re-pin through one gateway reaches the other within it


def call(name: str, query: str, request_id: int = 7) -> dict:
    arguments = {"name": name, "arguments": {"query": query}}
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": arguments}


@contextlib.contextmanager
def two_gateways(tmp_path):
    with (
        RedisServer() as redis,
        tool_server(HOSTILE_SERVER, tmp_path, FLOOD_BYTES=1000) as hostile,
        contextlib.ExitStack() as stack,
    ):
        catalog = {
            "servers": [{"name": "hostile", "url": hostile.url + "/mcp", "tools": HOSTILE_TOOLS}],
            "clients": {
                "anonymous": {"tools": []},
                "tester": {"token_env": "TOKEN_TESTER", "tools": ["lookup", "slow"]},
            },
        }
        gateways = []
        for name in ("a", "b"):
            work = tmp_path / name
            work.mkdir()
            gateways.append(
                stack.enter_context(
                    gateway(
                        catalog,
                        work,
                        TOKEN_TESTER=TESTER,
                        GATEWAY_OPERATOR_TOKEN=OPERATOR_TOKEN,
                        GATEWAY_REPLICAS="true",
                        GATEWAY_PINS_REDIS_URL=redis.url,
                        GATEWAY_PIN_RECHECK_SECONDS=RECHECK,
                    )
                )
            )
        yield gateways, hostile, redis


def post(url: str, body: dict) -> httpx.Response:
    headers = {**MCP_HEADERS, **bearer(TESTER), "mcp-protocol-version": "2025-06-18"}
    return httpx.post(url + "/mcp", json=body, headers=headers, timeout=30)


def answer(url: str, name: str = "lookup") -> tuple[bool, str]:
    """(isError, the text) of one tools/call sent alone: no initialize, no session."""
    reply = post(url, call(name, "container"))
    assert reply.status_code == 200, reply.text
    result = reply.json()["result"]
    return result["isError"], result["content"][0]["text"]


async def sdk_calls(url: str) -> list[bool]:
    async with sdk_session(url + "/mcp", bearer(TESTER)) as session:
        names = [t.name for t in (await session.list_tools()).tools]
        assert sorted(names) == ["lookup", "slow"]
        return [(await session.call_tool("lookup", {"query": "pod"})).isError for _ in range(3)]


def test_stateless_replicas_share_their_pins_and_need_no_session(tmp_path):
    with two_gateways(tmp_path) as ((a, b), hostile, redis):
        # Stateless: an initialize opens no session, and a call needs none.
        opened = post(a.url, INITIALIZE)
        assert opened.status_code == 200 and "mcp-session-id" not in opened.headers
        assert answer(b.url) == (False, "lookup: container")
        # The official SDK's client (mcp 1.x, the agent's) works as it did, on either one.
        assert asyncio.run(sdk_calls(a.url)) == [False] * 3
        assert asyncio.run(sdk_calls(b.url)) == [False] * 3
        # One set of pins: both gateways show the same, from Redis.
        pins = [httpx.get(g.url + "/pins", headers=operator()).json()["pins"] for g in (a, b)]
        assert pins[0] == pins[1] and "lookup" in pins[0]["hostile"]
        pinned = pins[0]["hostile"]["lookup"]["sha256"]

        # A rug pull: both refuse the changed tool (each checks against the one pin).
        httpx.post(hostile.url + "/rugpull").raise_for_status()
        time.sleep(RECHECK + 0.5)
        for g in (a, b):
            refused, why = answer(g.url)
            assert refused and "changed since it was pinned" in why, why
        calls = httpx.get(hostile.url + "/calls").json()["lookup"]

        # The operator re-pins through one; the other takes the new pin at its next check.
        repinned = httpx.post(a.url + "/pins/hostile/repin", headers=operator(), timeout=60)
        assert repinned.status_code == 200, repinned.text
        assert repinned.json()["pinned"]["lookup"] != pinned
        time.sleep(RECHECK + 0.5)
        assert answer(b.url)[0] is False and answer(a.url)[0] is False
        assert httpx.get(hostile.url + "/calls").json()["lookup"] == calls + 2

        # The call log: one line per call, from the gateway that ran it, which names itself.
        for g in (a, b):
            lines = log_lines(g, "tool_call")
            assert lines and all(line.get("replica") for line in lines)
            assert {line["outcome"] for line in lines} == {"ok", "refused_pin"}


def test_a_stopping_replica_fails_its_health_check_and_answers_calls_until_its_drain_ends(
    tmp_path,
):
    """SIGTERM with a drain (replicas.yaml's 5 s): /health turns 503 at once, so the edge takes
    the replica out, and calls that still reach it are answered; only then does its port close.
    Without the drain a call the edge had just sent (accepted, not yet read) was closed unanswered
    at the signal, and its caller got a 502 for a call that never ran."""
    drain = 5
    with (
        tool_server(HOSTILE_SERVER, tmp_path, FLOOD_BYTES=1000) as hostile,
        gateway(
            {
                "servers": [{"name": "hostile", "url": hostile.url + "/mcp", "tools": ["lookup"]}],
                "clients": {"tester": {"token_env": "TOKEN_TESTER", "tools": ["lookup"]}},
            },
            tmp_path,
            TOKEN_TESTER=TESTER,
            GATEWAY_SHUTDOWN_DRAIN_SECONDS=drain,
        ) as replica,
    ):
        assert answer(replica.url) == (False, "lookup: container")
        replica.signal(signal.SIGTERM)
        signalled = time.monotonic()
        deadline = signalled + 10
        while (health := httpx.get(replica.url + "/health")).status_code == 200:
            assert time.monotonic() < deadline, "/health still answers 200"
            time.sleep(0.05)
        assert health.status_code == 503 and health.json() == {"status": "draining"}
        assert answer(replica.url) == (False, "lookup: container")  # its port is still open
        assert replica.wait(timeout=30) is not None  # then it stops by itself
        assert time.monotonic() - signalled >= drain
        with contextlib.suppress(httpx.TransportError):
            httpx.get(replica.url + "/health", timeout=2)
            raise AssertionError("the port is still open after the drain")
        assert httpx.get(hostile.url + "/calls").json()["lookup"] == 2


def test_a_replica_fails_its_calls_when_the_pin_store_is_away(tmp_path):
    """Closed, not open: without the shared pins a replica cannot check, so it runs nothing."""
    with two_gateways(tmp_path) as ((a, b), hostile, redis):
        assert answer(a.url) == (False, "lookup: container")
        redis.stop()
        time.sleep(RECHECK + 0.5)
        refused, why = answer(a.url)
        assert refused, why
        assert httpx.get(hostile.url + "/calls").json()["lookup"] == 1


def test_the_agent_searches_through_a_stateless_gateway_and_keeps_its_session_across_replicas(
    notes, tmp_path, opened_sessions
):
    """The agent's client (langchain-mcp-adapters on mcp 1.x) opens one session and keeps it.
    Stateless, that session is the gateway's to forget: the agent's next calls go to another
    gateway process on the same address (as the edge sends them to another replica) without a
    new session."""
    opened, (agent, port, catalog, question) = opened_sessions, agent_on_a_port(notes)

    async def on_two_replicas(redis_url: str) -> list[dict]:
        results = []
        for name in ("a", "b"):
            work = tmp_path / name
            work.mkdir()
            env = {"GATEWAY_REPLICAS": "true", "GATEWAY_PINS_REDIS_URL": redis_url}
            with gateway(catalog, work, port=port, **env) as server:
                results += [await agent.research(question) for _ in range(2)]
                assert [r["outcome"] for r in log_lines(server, "tool_call")] == ["ok"] * 2
        return results

    with RedisServer() as redis:
        for result in asyncio.run(on_two_replicas(redis.url)):
            assert [s["status"] for s in result["steps"]] == ["success"], result["steps"]
    assert len(opened) == 1  # one session for both: nothing was lost with the first process

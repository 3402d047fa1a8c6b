"""What anonymous clients can make the gateway hold, and who may read its operator endpoints
(issue 37 A4, A5, A8, A13): each test fails without its defence."""

import asyncio
import re

import httpx
import pytest
from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport

from tests.support.mcp_clients import log_lines, sdk_session

from .conftest import (
    AGENT_TOKEN,
    INITIALIZE,
    MCP_HEADERS,
    TESTER_TOKEN,
    bearer,
    modern_headers,
    modern_request,
    operator,
)

pytestmark = pytest.mark.xdist_group("lesson08")


def test_invented_tool_names_leave_metrics_and_logs_bounded(gw):
    """81 calls with distinct 100 KB names took /metrics from 1.8 KB to 144 MB: a label value per
    name, each name logged whole. Now every name the servers never declared is "other"."""
    names = [f"x{i}-" + "n" * 100_000 for i in range(20)]

    async def invent(token: str):
        transport = StreamableHttpTransport(gw.url + "/mcp", headers=bearer(token))
        async with Client(transport) as client:
            for name in names:
                result = await client.call_tool(name, {"query": "q"}, raise_on_error=False)
                assert result.is_error

    before = len(httpx.get(gw.url + "/metrics", headers=operator()).text)
    log_before = len(gw.log_text())
    asyncio.run(invent(TESTER_TOKEN))  # allowed everything: the server is asked and says no
    asyncio.run(invent("a-token-nobody-issued"))  # anonymous: refused by the allow-list
    metrics = httpx.get(gw.url + "/metrics", headers=operator()).text
    grown, logged = len(metrics) - before, len(gw.log_text()) - log_before
    print(f"/metrics {before:,} -> {len(metrics):,} bytes; log +{logged:,} bytes for 40 calls")
    assert grown < 20_000, f"/metrics grew by {grown:,} bytes"
    assert "n" * 100 not in metrics
    tools = set(re.findall(r'mcp_gateway_calls_total\{[^}]*tool="([^"]*)"', metrics))
    assert "other" in tools and all(len(t) <= 64 for t in tools), tools
    assert logged < 40 * 2_000, f"the log grew by {logged:,} bytes for 40 calls"
    invented = [r for r in log_lines(gw, "tool_call") if r["tool"].startswith("x1-")]
    assert invented and all(len(r["tool"]) <= 67 for r in invented)


def test_operator_endpoints_need_the_operator_token(gw):
    for path in ("/pins", "/metrics"):
        for headers in ({}, bearer(AGENT_TOKEN), bearer(TESTER_TOKEN), bearer("guess")):
            answer = httpx.get(gw.url + path, headers=headers)
            assert answer.status_code == 401, (path, headers, answer.text[:200])
            assert answer.json()["error"]["type"] == "unauthorized"
            assert "search_notes" not in answer.text and "mcp_gateway" not in answer.text
        assert httpx.get(gw.url + path, headers=operator()).status_code == 200
    refused = httpx.post(gw.url + "/pins/notes/repin", headers=bearer(TESTER_TOKEN))
    assert refused.status_code == 401
    # Compose's health check needs no token, and learns nothing beyond "ok".
    health = httpx.get(gw.url + "/health")
    assert health.status_code == 200 and health.json() == {"status": "ok"}


async def _initialize(http: httpx.AsyncClient, url: str, headers: dict) -> httpx.Response:
    return await http.post(url, json=INITIALIZE, headers={**MCP_HEADERS, **headers})


def test_an_initialize_flood_holds_nothing_and_the_agent_still_calls(gw):
    """~10,000 initialize POSTs once filled the gateway (738 MiB of sessions) and left the agent
    without one. The gateway keeps no session in either era now: each initialize is answered
    and forgotten, so a flood holds nothing; the burst guard bounds what is in flight."""
    url = gw.url + "/mcp"

    async def flood() -> list[httpx.Response]:
        answers = []
        async with httpx.AsyncClient(timeout=60) as http:
            for _ in range(75):  # 300 in all, 4 at a time (the burst guard's limit per client)
                answers += await asyncio.gather(*(_initialize(http, url, {}) for _ in range(4)))
        return answers

    async def agent_calls() -> list[str]:
        async with sdk_session(url, bearer(AGENT_TOKEN)) as session:
            result = await session.call_tool("search_notes", {"query": "health checks"})
            assert not result.isError
            return [t.name for t in (await session.list_tools()).tools]

    answers = asyncio.run(flood())
    assert {a.status_code for a in answers} <= {200, 429, 503}
    assert sum(a.status_code == 200 for a in answers) > 0
    assert not [a for a in answers if "mcp-session-id" in a.headers]  # nothing kept
    assert asyncio.run(agent_calls()) == ["search_notes"]


def test_a_call_whose_answer_arrived_no_longer_counts_against_the_burst_limit(gw):
    """4 callers (the per-client limit here), each calling again as soon as its answer arrives
    (stateless requests of the current revision): never more than 4 in flight, so never a 429.
    The count used to drop only when an SSE stream closed, after the answer: the next call met a
    full count."""
    url = gw.url + "/mcp"

    async def caller(http: httpx.AsyncClient, refused: list) -> None:
        for n in range(15):
            body = modern_request(
                "tools/call", n + 10, name="search_notes", arguments={"query": "compose"}
            )
            headers = {**modern_headers(body), **bearer(TESTER_TOKEN)}
            answer = await http.post(url, json=body, headers=headers)
            if answer.status_code == 429:
                refused.append(n)
                continue
            assert answer.status_code == 200 and "result" in answer.json()

    async def run() -> list:
        refused = []
        async with httpx.AsyncClient(timeout=60) as http:
            await asyncio.gather(*(caller(http, refused) for _ in range(4)))
        return refused

    refused = asyncio.run(run())
    assert refused == [], f"{len(refused)} of 60 calls refused with at most 4 in flight"

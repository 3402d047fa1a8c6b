"""Lesson 08's hostile cases against the gateway as a process: each fails without its defence."""

import asyncio
import json
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport
from fastmcp.exceptions import ToolError

from support.mcp_servers import GATEWAY, LESSON08_PYTHON
from support.server import offline_environment
from tests.support.mcp_clients import log_lines, sdk_session

from .conftest import (
    AGENT_TOKEN,
    CALL_TIMEOUT,
    INITIALIZE,
    MCP_HEADERS,
    OPERATOR_TOKEN,
    PIN_RECHECK_SECONDS,
    TESTER_TOKEN,
    bearer,
    operator,
)

pytestmark = pytest.mark.xdist_group("lesson08")


async def call(gw, tool: str, token: str = TESTER_TOKEN, **arguments):
    transport = StreamableHttpTransport(gw.url + "/mcp", headers=bearer(token))
    async with Client(transport) as client:
        return await client.call_tool(tool, arguments or {"query": "q"}, raise_on_error=False)


@pytest.mark.parametrize("target", ["gw", "notes"])
def test_a_foreign_origin_gets_403(target, request):
    server = request.getfixturevalue(target)
    evil = httpx.post(
        server.url + "/mcp",
        json=INITIALIZE,
        headers={**MCP_HEADERS, "Origin": "http://evil.example"},
    )
    assert evil.status_code == 403
    local = httpx.post(
        server.url + "/mcp",
        json=INITIALIZE,
        headers={**MCP_HEADERS, "Origin": "http://127.0.0.1:3000"},
    )
    assert local.status_code == 200


def test_a_hanging_server_is_a_timely_tool_error_and_told_to_stop(gw, hostile):
    started = time.monotonic()
    result = asyncio.run(call(gw, "hang"))
    assert result.is_error
    assert f"did not answer within {CALL_TIMEOUT} s" in result.content[0].text
    assert time.monotonic() - started < CALL_TIMEOUT + 15  # the gateway's limit, not an hour
    # The gateway sent notifications/cancelled: the server's tool task was cancelled, not left
    # running for nobody (issue 37 A6).
    deadline = time.monotonic() + 30
    while httpx.get(hostile.url + "/calls").json()["hang_cancelled"] < 1:
        assert time.monotonic() < deadline, "the server never heard that the call was given up"
        time.sleep(0.2)


def test_a_50_mb_answer_is_a_clear_tool_error(gw):
    result = asyncio.run(call(gw, "flood"))
    assert result.is_error
    text = result.content[0].text
    assert "limit" in text and len(text) < 1000, text[:300]
    httpx.get(gw.url + "/health").raise_for_status()  # and the gateway is still there


def peak_memory(pid: int) -> int:
    """The most memory (resident, in bytes) the process has held so far: Linux's VmHWM."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise LookupError("no VmHWM")


def test_an_encoded_answer_is_refused_unread_and_costs_the_gateway_nothing(gw):
    """A tool server answers a call with `Content-Encoding: gzip`: about 200 KB on the wire,
    BOMB_BYTES of text once inflated. The gateway counted the bytes that came, under its 1 MB
    cap, and its client inflated them whole (a 900 KB answer took a gateway from 90 MB to 1 GB).
    Now it asks for answers that are not encoded and refuses one that is, unread; and one
    server's bomb costs another client's calls nothing."""
    before = peak_memory(gw.pid)
    result = asyncio.run(call(gw, "bomb"))
    grew = peak_memory(gw.pid) - before
    assert result.is_error and "encoded" in result.content[0].text, result.content[0].text[:300]
    assert grew < 64 * 1024 * 1024, f"the gateway's peak memory grew by {grew:,} bytes"
    after = asyncio.run(call(gw, "search_notes", token=AGENT_TOKEN, query="volumes"))
    assert not after.is_error


def test_a_changed_description_is_refused_until_the_documented_repin(gw, hostile):
    first = asyncio.run(call(gw, "lookup", query="volume"))
    assert not first.is_error and "lookup: volume" in first.content[0].text
    ran = httpx.get(hostile.url + "/calls").json()["lookup"]
    httpx.post(hostile.url + "/rugpull").raise_for_status()
    # Nobody lists the tools and the server says nothing: the gateway's timer finds the change
    # (GATEWAY_PIN_RECHECK_SECONDS), and refuses the tool from then on.
    deadline = time.monotonic() + PIN_RECHECK_SECONDS + 15
    while "lookup" not in httpx.get(gw.url + "/pins", headers=operator()).json()["refused"]:
        assert time.monotonic() < deadline, "the gateway's timer never checked the pins"
        time.sleep(0.1)
    after = asyncio.run(call(gw, "lookup", query="volume"))
    assert after.is_error
    assert "changed since it was pinned" in after.content[0].text
    assert httpx.get(hostile.url + "/calls").json()["lookup"] == ran  # refused, never run
    pins = httpx.get(gw.url + "/pins", headers=operator()).json()
    assert "lookup" in pins["refused"]
    assert any(r["tool"] == "lookup" for r in log_lines(gw, "tool_refused"))

    # The documented command acts on the running gateway (issue 37 B2): no restart, no exec.
    repin = subprocess.run(
        [LESSON08_PYTHON, GATEWAY, "repin", "hostile"],
        env=offline_environment(GATEWAY_URL=gw.url, GATEWAY_OPERATOR_TOKEN=OPERATOR_TOKEN),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert repin.returncode == 0, repin.stdout + repin.stderr
    assert "re-pinned hostile/lookup" in repin.stdout
    again = asyncio.run(call(gw, "lookup", query="volume"))
    assert not again.is_error and "lookup: volume" in again.content[0].text
    assert httpx.get(hostile.url + "/calls").json()["lookup"] == ran + 1
    pins = httpx.get(gw.url + "/pins", headers=operator()).json()
    assert "lookup" not in pins["refused"]
    assert "call leak" in pins["pins"]["hostile"]["lookup"]["description"]


def test_a_description_with_instructions_is_pinned_logged_shown_and_withheld(gw):
    async def names():
        transport = StreamableHttpTransport(gw.url + "/mcp", headers=bearer(TESTER_TOKEN))
        async with Client(transport) as client:
            return [t.name for t in await client.list_tools()]

    assert "helpful" not in asyncio.run(names())
    result = asyncio.run(call(gw, "helpful"))
    assert result.is_error and "reads like instructions" in result.content[0].text
    pins = httpx.get(gw.url + "/pins", headers=operator()).json()
    assert pins["pins"]["hostile"]["helpful"]["flagged"] is True
    assert "Ignore previous instructions" in pins["pins"]["hostile"]["helpful"]["description"]
    assert any(r["tool"] == "helpful" and r["flagged"] for r in log_lines(gw, "tool_pinned"))


def test_a_client_cannot_call_outside_its_allow_list(gw):
    result = asyncio.run(call(gw, "leak", token=AGENT_TOKEN))
    assert result.is_error and "not on the allow-list of client 'agent'" in result.content[0].text
    anonymous = asyncio.run(call(gw, "leak", token="a-token-nobody-issued"))
    assert anonymous.is_error and "'anonymous'" in anonymous.content[0].text
    assert any(
        r["tool"] == "leak" and r["outcome"] == "not_allowed" for r in log_lines(gw, "tool_call")
    )


def test_a_burst_of_200_calls_is_bounded_with_retry_after(gw):
    async def one(http: httpx.AsyncClient):
        return await http.post(
            gw.url + "/mcp", json=INITIALIZE, headers={**MCP_HEADERS, **bearer(TESTER_TOKEN)}
        )

    async def burst():
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(timeout=30, limits=limits) as http:
            return await asyncio.gather(*(one(http) for _ in range(200)))

    started = time.monotonic()
    answers = asyncio.run(burst())
    codes = [a.status_code for a in answers]
    refused = [a for a in answers if a.status_code in (429, 503)]
    assert set(codes) <= {200, 429, 503}, codes
    assert refused, "no request was refused: the burst was not bounded"
    assert all(a.headers["retry-after"] == "1" for a in refused)
    assert refused[0].json()["error"]["type"] in ("rate_limited", "busy")
    assert time.monotonic() - started < 60
    httpx.get(gw.url + "/health").raise_for_status()


def test_every_call_is_one_log_line_without_argument_values(gw):
    secret = "sk-this-must-not-be-logged"

    async def run():
        async with sdk_session(gw.url + "/mcp", bearer(AGENT_TOKEN)) as session:
            return await session.call_tool("search_notes", {"query": f"docker {secret}"})

    asyncio.run(run())
    assert secret not in gw.log_text()
    lines = [
        r for r in log_lines(gw, "tool_call") if r["client"] == "agent" and r["outcome"] == "ok"
    ]
    line = lines[-1]
    assert line["tool"] == "search_notes" and line["argument_names"] == ["query"]
    assert line["argument_bytes"] == len(json.dumps({"query": f"docker {secret}"}))
    assert line["request_id"] and line["duration_ms"] >= 0


def test_metrics_count_calls_per_tool_and_outcome(gw):
    asyncio.run(call(gw, "search_notes", token=AGENT_TOKEN, query="compose"))
    text = httpx.get(gw.url + "/metrics", headers=operator()).text
    assert 'mcp_gateway_calls_total{client="agent",outcome="ok",tool="search_notes"}' in text
    assert "mcp_gateway_call_seconds_bucket" in text


def test_pinning_refuses_before_any_call_raises(gw):
    with pytest.raises(ToolError):  # FastMCP's client raises a tool error by default
        asyncio.run(_raise(gw))


async def _raise(gw):
    transport = StreamableHttpTransport(gw.url + "/mcp", headers=bearer(TESTER_TOKEN))
    async with Client(transport) as client:
        await client.call_tool("helpful", {"query": "q"})

"""Clients of the current generation that we did not write, against the gateway and each tool
server: the MCP SDK's `Client` (mcp 2.x) and FastMCP 4's `Client`, both negotiating the stateless
revision 2026-07-28 (`server/discover`, no handshake, no session), and the SDK's client told to
speak the handshake era (`mode="legacy"`), which the same endpoint answers on 2025-11-25.
tests/lesson_08/test_clients.py holds the other side: the agent's own mcp 1.x client. Run by
lesson 08's environment (tests/lesson_08/test_gateway_env.py)."""

import asyncio

import httpx2
import mcp
import pytest
from fastmcp import Client as FastMCPClient
from fastmcp.client.transports import StreamableHttpTransport
from mcp.client.streamable_http import streamable_http_client

from support.mcp_servers import tool_server

from .conftest import AGENT_TOKEN, PYTHON_SERVER, TESTER_TOKEN, bearer

MODERN, HANDSHAKE = "2026-07-28", "2025-11-25"
QUERY = {"query": "multi-stage build"}


async def with_sdk(url: str, token: str | None = None, mode: str = "auto", tool="search_notes"):
    """The SDK's Client: the version it agreed on, the tools' names, the listing's cache fields,
    and the call's result (None when `tool` is None)."""
    http = httpx2.AsyncClient(headers=bearer(token) if token else {}, timeout=60)
    async with http, mcp.Client(streamable_http_client(url, http_client=http), mode=mode) as c:
        listed = await c.list_tools()
        result = await c.call_tool(tool, QUERY) if tool else None
        names = sorted(t.name for t in listed.tools)
        return c.protocol_version, names, (listed.ttl_ms, listed.cache_scope), result


async def with_fastmcp(url: str, token: str | None = None, tool="search_notes"):
    """FastMCP 4's Client: the version it agreed on, the tools' names, and the call's result."""
    transport = StreamableHttpTransport(url, headers=bearer(token) if token else None)
    async with FastMCPClient(transport, timeout=60) as client:
        names = sorted(t.name for t in await client.list_tools())
        result = await client.call_tool(tool, QUERY, raise_on_error=False) if tool else None
        return client.protocol_version, names, result


def test_the_sdks_client_gets_the_stateless_revision_from_the_gateway(gw):
    version, names, cache, result = asyncio.run(with_sdk(gw.url + "/mcp", AGENT_TOKEN))
    assert version == MODERN
    assert names == ["search_notes"]  # the agent's allow-list, for this request alone
    assert cache == (0, "private")  # a list that depends on who asks is never shared
    assert not result.is_error
    assert result.structured_content["sources"][0]["url"].startswith("notes/multi-stage-builds")


def test_fastmcps_client_gets_the_stateless_revision_from_the_gateway(gw):
    version, names, result = asyncio.run(with_fastmcp(gw.url + "/mcp", TESTER_TOKEN))
    assert version == MODERN
    assert {"search_notes", "hang", "flood", "slow", "lookup", "leak"} <= set(names)
    assert "helpful" not in names  # pinned and flagged: withheld
    assert "multi-stage" in result.structured_content["text"].lower()


def test_one_endpoint_lists_per_client_with_no_session_between_requests(gw):
    """Two clients, one after the other and together, each request naming its own client: the
    list and the refusals follow the token of that request."""

    async def both():
        return await asyncio.gather(
            with_sdk(gw.url + "/mcp", AGENT_TOKEN, tool="leak"),
            with_sdk(gw.url + "/mcp", TESTER_TOKEN, tool="lookup"),
            with_sdk(gw.url + "/mcp", None, tool="leak"),
        )

    agent, tester, anonymous = asyncio.run(both())
    assert agent[1] == ["search_notes"] and agent[3].is_error
    assert "not on the allow-list of client 'agent'" in agent[3].content[0].text
    assert "lookup" in tester[1] and not tester[3].is_error
    assert anonymous[1] == ["search_notes"] and anonymous[3].is_error


def test_the_handshake_era_is_served_on_the_same_endpoint(gw):
    version, names, _, result = asyncio.run(with_sdk(gw.url + "/mcp", AGENT_TOKEN, mode="legacy"))
    assert version == HANDSHAKE
    assert names == ["search_notes"] and not result.is_error


@pytest.mark.parametrize("server", ["notes", "hostile"])
def test_both_clients_get_the_stateless_revision_from_each_tool_server(server, request):
    url = request.getfixturevalue(server).url + "/mcp"
    tool = "search_notes" if server == "notes" else "lookup"
    version, names, _, result = asyncio.run(with_sdk(url, tool=tool))
    assert version == MODERN and tool in names and not result.is_error
    version, names, result = asyncio.run(with_fastmcp(url, tool=tool))
    assert version == MODERN and tool in names and not result.is_error
    version, *_ = asyncio.run(with_sdk(url, mode="legacy", tool=None))
    assert version == HANDSHAKE


def test_both_clients_list_the_python_servers_tool(tmp_path):
    """The python server lists run_python to either client (a call needs Docker and lesson 04's
    image: the container suite makes one, tests/lesson_08/test_containers.py)."""
    with tool_server(PYTHON_SERVER, tmp_path, GATEWAY_OWNER="lesson08-clients") as python:
        version, names, _, _ = asyncio.run(with_sdk(python.url + "/mcp", tool=None))
        assert (version, names) == (MODERN, ["run_python"])
        version, names, _ = asyncio.run(with_fastmcp(python.url + "/mcp", tool=None))
        assert (version, names) == (MODERN, ["run_python"])

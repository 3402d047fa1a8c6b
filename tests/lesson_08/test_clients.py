"""The handshake era's clients, which we did not write, list and call through the gateway and
straight to a tool server: the MCP SDK's 1.x `ClientSession` (what the agent's
langchain-mcp-adapters speaks with, and why the course's environment keeps mcp 1.x) and FastMCP
3's `Client`. The same endpoint that gives a current client the stateless revision (2026-07-28,
tests/lesson_08/gateway_env/test_clients.py) answers their `initialize` on 2025-11-25, and keeps
no session for them."""

import asyncio

import httpx
from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from tests.support.mcp_clients import READ_SECONDS

from .conftest import AGENT_TOKEN, TESTER_TOKEN, bearer

HANDSHAKE = "2025-11-25"


async def handshake(url: str, headers: dict | None = None, tool: str = "search_notes"):
    """The agent's client: the version its initialize agreed, whether a session id came back,
    the tools' names and the call's result."""
    sessions = []

    async def seen(response: httpx.Response) -> None:
        sessions.append(response.headers.get("mcp-session-id"))

    hooks = {"response": [seen]}
    async with (
        httpx.AsyncClient(headers=headers or {}, timeout=READ_SECONDS, event_hooks=hooks) as http,
        streamable_http_client(url, http_client=http) as (read, write, *_),
        ClientSession(read, write) as session,
    ):
        agreed = await session.initialize()
        names = [t.name for t in (await session.list_tools()).tools]
        result = await session.call_tool(tool, {"query": "multi-stage build"})
    return agreed.protocolVersion, any(sessions), names, result


def test_the_agents_client_gets_the_handshake_era_from_the_gateway_and_no_session(gw):
    version, session, names, result = asyncio.run(handshake(gw.url + "/mcp", bearer(AGENT_TOKEN)))
    assert version == HANDSHAKE
    assert not session  # stateless in both eras: any replica can take its next request
    assert names == ["search_notes"]  # the agent's allow-list: the hostile tools are not listed
    assert not result.isError
    assert result.structuredContent["sources"][0]["url"].startswith("notes/multi-stage-builds.md")


def test_the_agents_client_gets_the_handshake_era_from_the_notes_server(notes):
    version, session, names, result = asyncio.run(handshake(notes.url + "/mcp"))
    assert (version, session, names, result.isError) == (HANDSHAKE, False, ["search_notes"], False)


def test_fastmcp_3s_client_lists_and_calls_through_the_gateway(gw):
    async def run():
        transport = StreamableHttpTransport(gw.url + "/mcp", headers=bearer(TESTER_TOKEN))
        async with Client(transport) as client:
            tools = await client.list_tools()
            result = await client.call_tool("search_notes", {"query": "health checks"})
            return sorted(t.name for t in tools), result

    names, result = asyncio.run(run())
    # The tester may see everything the gateway accepts; pinned-and-flagged `helpful` is withheld.
    assert {"search_notes", "hang", "flood", "slow", "leak"} <= set(names)
    assert "helpful" not in names
    assert "health" in result.structured_content["text"].lower()

"""Two MCP clients we did not write list and call the tools through the gateway and directly."""

import asyncio

import pytest
from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport

from tests.support.mcp_clients import sdk_session

from .conftest import AGENT_TOKEN, TESTER_TOKEN, bearer

pytestmark = pytest.mark.xdist_group("lesson08")


def test_official_sdk_lists_and_calls_through_the_gateway(gw):
    async def run():
        async with sdk_session(gw.url + "/mcp", bearer(AGENT_TOKEN)) as session:
            tools = await session.list_tools()
            result = await session.call_tool("search_notes", {"query": "multi-stage build"})
            return [t.name for t in tools.tools], result

    names, result = asyncio.run(run())
    assert names == ["search_notes"]  # the agent's allow-list: the hostile tools are not listed
    assert not result.isError
    sources = result.structuredContent["sources"]
    assert sources and sources[0]["url"].startswith("notes/multi-stage-builds.md")


def test_fastmcp_client_lists_and_calls_through_the_gateway(gw):
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


def test_notes_server_speaks_to_the_official_sdk_directly(notes):
    async def run():
        async with sdk_session(notes.url + "/mcp") as session:
            return await session.list_tools()

    tools = asyncio.run(run()).tools
    assert [t.name for t in tools] == ["search_notes"]
    assert tools[0].inputSchema["required"] == ["query"]

"""Three MCP clients we did not write list and call the tools through the gateway and directly:
the SDK's (mcp 1.x, the generation the course pins), FastMCP's, and the SDK's current generation
(mcp 2.x, the 2026-07-28 protocol), from an environment of its own."""

import asyncio
import json
import subprocess
from pathlib import Path

import pytest
from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport

from tests.support.mcp_clients import sdk_session

from .conftest import AGENT_TOKEN, TESTER_TOKEN, bearer

pytestmark = pytest.mark.xdist_group("lesson08")

ROOT = Path(__file__).resolve().parents[2]
MCP2_PYTHON = ROOT / ".venv" / "mcp2-client" / "bin" / "python"
MCP2_CLIENT = ROOT / "tests" / "clients" / "mcp2" / "client.py"


def new_generation_client(url: str, token: str, tool: str, query: str) -> dict:
    """tests/clients/mcp2/client.py's answer: what mcp 2.x's Client agreed on, listed and got."""
    if not MCP2_PYTHON.exists():
        pytest.skip("no mcp 2.x client environment: `make test` installs it in .venv/mcp2-client")
    done = subprocess.run(
        [str(MCP2_PYTHON), str(MCP2_CLIENT), url, token, tool, query],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


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


def test_the_sdks_current_generation_falls_back_to_the_handshake_and_calls_through_the_gateway(gw):
    # mcp 2.x asks for server/discover (the 2026-07-28 protocol) first; the gateway, of the
    # generation before, does not know it, and the client falls back to initialize.
    url = gw.url + "/mcp"
    answer = new_generation_client(url, AGENT_TOKEN, "search_notes", "multi-stage build")
    assert answer["protocol_version"] < "2026-07-28", answer  # a handshake-era version
    assert answer["tools"] == ["search_notes"]  # the agent's allow-list, as for the others
    assert answer["is_error"] is False, answer
    assert answer["structured"]["sources"][0]["url"].startswith("notes/multi-stage-builds.md")


def test_the_sdks_current_generation_is_refused_a_tool_the_client_may_not_call(gw):
    answer = new_generation_client(gw.url + "/mcp", AGENT_TOKEN, "leak", "anything")
    assert answer["is_error"] is True and "leak" not in answer["tools"], answer


def test_notes_server_speaks_to_the_official_sdk_directly(notes):
    async def run():
        async with sdk_session(notes.url + "/mcp") as session:
            return await session.list_tools()

    tools = asyncio.run(run()).tools
    assert [t.name for t in tools] == ["search_notes"]
    assert tools[0].inputSchema["required"] == ["query"]

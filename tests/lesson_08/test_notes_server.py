"""The notes server under load from one client (issue 37 A6): eight 4,000,000-character queries
stalled it for everyone for 95 s. The schema bounds a query; a search runs off the event loop."""

import asyncio
import random

import httpx
import pytest

from support.mcp_servers import NOTES_SERVER, tool_server
from tests.support.mcp_clients import sdk_session

from .conftest import bearer

pytestmark = pytest.mark.xdist_group("lesson08")


def test_a_query_longer_than_the_schema_allows_is_refused_clearly(notes, gw):
    long_query = "docker " * 600  # 4,200 characters

    async def direct():
        async with sdk_session(notes.url + "/mcp") as session:
            schema = (await session.list_tools()).tools[0].inputSchema
            return schema, await session.call_tool("search_notes", {"query": long_query})

    schema, result = asyncio.run(direct())
    assert schema["properties"]["query"]["maxLength"] == 2000  # what a client can see ahead
    assert result.isError and "at most 2000 characters" in result.content[0].text

    async def through_gateway():
        async with sdk_session(gw.url + "/mcp", bearer("anyone")) as session:
            return await session.call_tool("search_notes", {"query": long_query})

    result = asyncio.run(through_gateway())
    assert result.isError and "at most 2000 characters" in result.content[0].text


def write_notes(folder, sections: int) -> str:
    """Notes large enough that one search of the longest allowed query takes seconds."""
    rng = random.Random(37)
    words = [f"w{i}" for i in range(5000)]
    for n in range(sections // 2000):
        text = "\n".join(
            f"## Section {n}-{s}\n\n" + " ".join(rng.choice(words) for _ in range(30)) + ".\n"
            for s in range(2000)
        )
        (folder / f"notes-{n}.md").write_text(text)
    return " ".join(rng.choice(words) for _ in range(400))[:2000]


def test_a_long_search_does_not_stall_the_server_for_others(tmp_path):
    notes_dir = tmp_path / "notes"
    notes_dir.mkdir()
    query = write_notes(notes_dir, 8000)

    async def run(url: str) -> tuple[int, bool]:
        async with sdk_session(url + "/mcp") as session:
            search = asyncio.create_task(session.call_tool("search_notes", {"query": query}))
            answered_meanwhile = 0
            async with httpx.AsyncClient(timeout=120) as http:
                while not search.done():
                    health = await http.get(url + "/health")
                    if health.status_code == 200 and not search.done():
                        answered_meanwhile += 1
                    await asyncio.sleep(0.05)
            return answered_meanwhile, (await search).isError

    with tool_server(NOTES_SERVER, tmp_path, NOTES_DIR=notes_dir) as server:
        answered, failed = asyncio.run(run(server.url))
    print(f"/health answered {answered} times while one search ran")
    assert not failed
    assert answered >= 5, f"/health answered {answered} times while the search ran"


def test_with_a_server_token_only_its_holder_is_answered(tmp_path):
    """Issue 70, item 4: the gateway's launcher gives each tool container a token
    (MCP_SERVER_TOKEN) and sends it; a neighbour on the tools network without it gets 401 from
    /mcp, and /health, which the launcher asks, stays open."""
    with tool_server(NOTES_SERVER, tmp_path, MCP_SERVER_TOKEN="the-gateways-own") as server:
        stranger = httpx.post(
            server.url + "/mcp",
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}},
            headers={"authorization": "Bearer guessed", "accept": "application/json"},
            timeout=30,
        )
        health = httpx.get(server.url + "/health", timeout=30)

        async def as_the_gateway():
            async with sdk_session(server.url + "/mcp", bearer("the-gateways-own")) as session:
                return [t.name for t in (await session.list_tools()).tools]

        names = asyncio.run(as_the_gateway())
    assert stranger.status_code == 401 and stranger.json()["error"]["type"] == "unauthorized"
    assert health.status_code == 200 and names == ["search_notes"]

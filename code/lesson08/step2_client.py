"""Lesson 08, step 2: a client that discovers the server, lists its tools and calls one.

Run it:  make lesson-08 STEP=2   (serves step 1's server on a free port, asks it, and exits)
"""

import asyncio
import contextlib

import uvicorn
from mcp import Client
from mcp.server.mcpserver import MCPServer

from research_agent import BUNDLED_NOTES_DIR, LocalSearch, format_results

notes = LocalSearch([BUNDLED_NOTES_DIR])  # lesson 02's search over the course notes
server = MCPServer("notes", log_level="WARNING")


@server.tool(structured_output=False)
def search_notes(query: str) -> str:
    """Search the course notes about containers and Docker. Returns the best passage."""
    return format_results(list(enumerate(notes.search(query, 1), 1)))


@contextlib.asynccontextmanager
async def serving(app):
    """`app` served on a free port of 127.0.0.1 while the block runs: its MCP endpoint."""
    web = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    task = asyncio.create_task(web.serve())
    while not web.started:
        await asyncio.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{web.servers[0].sockets[0].getsockname()[1]}/mcp"
    finally:
        web.should_exit = True
        await task


async def ask(url: str) -> None:
    async with Client(url) as client:  # server/discover first: no handshake, no session
        print(f"protocol {client.protocol_version}")
        for tool in (await client.list_tools()).tools:
            print(f"  tool {tool.name}: {tool.description}")
        answer = await client.call_tool("search_notes", {"query": "multi-stage build"})
        print(f"  search_notes -> {answer.content[0].text.splitlines()[0]}")


async def main() -> None:
    async with serving(server.streamable_http_app(json_response=True)) as url:
        await ask(url)


if __name__ == "__main__":
    asyncio.run(main())

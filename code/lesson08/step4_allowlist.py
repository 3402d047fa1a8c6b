"""Lesson 08, step 4: each client calls only its own tools, named by its bearer token.

Run it:  make lesson-08 STEP=4   (serves both servers and the gateway, asks it as two clients)
"""

import asyncio
import contextlib

import httpx2
import uvicorn
from fastmcp import FastMCP
from fastmcp.exceptions import ToolError
from fastmcp.server.dependencies import get_http_headers
from fastmcp.server.middleware import Middleware
from fastmcp.server.providers.proxy import ProxyClient, ProxyProvider
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer

from research_agent import BUNDLED_NOTES_DIR, LocalSearch, format_results

notes = LocalSearch([BUNDLED_NOTES_DIR])  # lesson 02's search over the course notes
server = MCPServer("notes", log_level="WARNING")


@server.tool(structured_output=False)
def search_notes(query: str) -> str:
    """Search the course notes about containers and Docker. Returns the best passage."""
    return format_results(list(enumerate(notes.search(query, 1), 1)))


GLOSSARY = {"layer": "One step of an image: the files a Dockerfile instruction changed."}
glossary = MCPServer("glossary", log_level="WARNING")  # a second server, its own process


@glossary.tool(structured_output=False)
def define(term: str) -> str:
    """Define a term of the course in one sentence."""
    return GLOSSARY.get(term.lower(), f"No entry for {term!r}.")


# Each client's bearer token and the tools it may list and call; no known token: "anonymous".
CLIENTS = {"agent": ("agent-token", ["search_notes"]), "tester": ("tester-token", ["*"])}


class AllowList(Middleware):
    """Every request names its client again (no session remembers it): its tools, nothing else."""

    def client(self) -> tuple[str, list[str]]:
        sent = get_http_headers(include={"authorization"}).get("authorization", "")
        for name, (token, tools) in CLIENTS.items():
            if sent == f"Bearer {token}":
                return name, tools
        return "anonymous", []

    def allowed(self, tool: str) -> bool:
        tools = self.client()[1]
        return "*" in tools or tool in tools

    async def on_list_tools(self, context, call_next):
        return [tool for tool in await call_next(context) if self.allowed(tool.name)]

    async def on_call_tool(self, context, call_next):
        tool = context.message.name
        if not self.allowed(tool):
            raise ToolError(
                f"Tool {tool!r} is not on the allow-list of client {self.client()[0]!r}."
            )
        return await call_next(context)


def build_gateway(upstreams: list[str]) -> FastMCP:
    """One MCP server whose tools are every upstream's; a call goes on to the tool's server."""
    gateway = FastMCP("gateway", middleware=[AllowList()])
    for url in upstreams:  # cache_ttl=0: each listing asks the servers what they declare now
        gateway.add_provider(ProxyProvider(lambda url=url: ProxyClient(url), cache_ttl=0))
    return gateway


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


CALLS = [("search_notes", {"query": "multi-stage build"}), ("define", {"term": "layer"})]


async def ask(url: str, token: str) -> None:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30)
    async with http, Client(streamable_http_client(url, http_client=http)) as client:
        print(f"{token}: protocol {client.protocol_version}")
        for tool in (await client.list_tools()).tools:
            print(f"  tool {tool.name}: {tool.description}")
        for tool, arguments in CALLS:
            answer = await client.call_tool(tool, arguments)
            print(f"  {tool} -> {answer.content[0].text.splitlines()[0]}")


async def main() -> None:
    async with (
        serving(server.streamable_http_app(json_response=True)) as notes_url,
        serving(glossary.streamable_http_app(json_response=True)) as glossary_url,
        serving(build_gateway([notes_url, glossary_url]).http_app(json_response=True)) as url,
    ):
        for token in ("agent-token", "tester-token"):
            await ask(url, token)


if __name__ == "__main__":
    asyncio.run(main())

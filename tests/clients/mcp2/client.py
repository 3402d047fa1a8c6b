"""One MCP client of the SDK's current generation (mcp 2.x): connect, list the tools, call one.

Run by tests/lesson_08/test_clients.py with the Python of .venv/mcp2-client (make test installs
it), never imported by the course's own environment, which keeps mcp 1.x:

    .venv/mcp2-client/bin/python tests/clients/mcp2/client.py URL TOKEN TOOL QUERY

Prints one JSON object: the protocol version the client and the server agreed on, the tools'
names, and the call's text, structured content and isError.
"""

import asyncio
import json
import sys

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client


async def main(url: str, token: str, tool: str, query: str) -> dict:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    # mode="auto", the default: the client asks the server for server/discover first (the
    # 2026-07-28 protocol) and falls back to the initialize handshake when the server is older.
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        tools = await client.list_tools()
        result = await client.call_tool(tool, {"query": query})
        return {
            "protocol_version": client.protocol_version,
            "tools": sorted(t.name for t in tools.tools),
            "text": " ".join(getattr(c, "text", "") for c in result.content),
            "structured": result.structured_content,
            "is_error": result.is_error,
        }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(*sys.argv[1:5]))))

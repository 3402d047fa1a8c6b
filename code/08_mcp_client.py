"""Lesson 08: an MCP client to try the gateway with, the official MCP SDK's `ClientSession`.

List the tools:  make lesson-08-client     (or: .venv/bin/python code/08_mcp_client.py)
Call one:        .venv/bin/python code/08_mcp_client.py run_python code='print(6 * 7)'

MCP_URL names another endpoint (http://127.0.0.1:8086/mcp by default), MCP_TOKEN a bearer token.
"""

import asyncio
import json
import os
import sys

import httpx
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

URL = os.environ.get("MCP_URL", "http://127.0.0.1:8086/mcp")
TOKEN = os.environ.get("MCP_TOKEN")


async def main(tool: str | None, arguments: dict[str, str]) -> int:
    headers = {"Authorization": f"Bearer {TOKEN}"} if TOKEN else {}
    async with (
        httpx.AsyncClient(headers=headers, timeout=120) as http,  # a first listing starts servers
        streamable_http_client(URL, http_client=http) as (read, write, _),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        if tool is None:
            for found in (await session.list_tools()).tools:
                first = " ".join((found.description or "").split()).split(". ")[0]
                print(f"{found.name}: {first.rstrip('.')}.")  # its first sentence
            return 0
        result = await session.call_tool(tool, arguments)
        for part in result.content:
            print(part.text if part.type == "text" else json.dumps(part.model_dump()))
        return 1 if result.isError else 0


if __name__ == "__main__":
    tool, *pairs = sys.argv[1:] or [None]
    sys.exit(asyncio.run(main(tool, dict(pair.split("=", 1) for pair in pairs))))

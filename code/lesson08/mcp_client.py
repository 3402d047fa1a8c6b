"""Lesson 08: an MCP client to try the gateway with, the official SDK's `Client` (mcp 2.x).

List the tools:  make lesson-08-client     (or: .venv/lesson08/bin/python -m lesson08.mcp_client)
Call one:        .venv/lesson08/bin/python -m lesson08.mcp_client run_python code='print(6 * 7)'

MCP_URL names another endpoint (http://127.0.0.1:8086/mcp by default), MCP_TOKEN a bearer token
(by default the one `make lesson-08` wrote to code/lesson08/learner-token: the catalog's learner).
The client asks `server/discover` first and speaks the 2026-07-28 revision: no session.
"""

import asyncio
import json
import os
import sys
from pathlib import Path

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

URL = os.environ.get("MCP_URL", "http://127.0.0.1:8086/mcp")
TOKEN_FILE = Path(__file__).with_name("learner-token")
TOKEN = os.environ.get("MCP_TOKEN") or (
    TOKEN_FILE.read_text().strip() if TOKEN_FILE.exists() else ""
)


async def main(tool: str | None, arguments: dict[str, str]) -> int:
    headers = {"Authorization": f"Bearer {TOKEN}"} if TOKEN else {}
    # Two minutes: a first listing starts the tool servers' containers.
    http = httpx2.AsyncClient(headers=headers, timeout=120)
    async with http, Client(streamable_http_client(URL, http_client=http)) as client:
        if tool is None:
            for found in (await client.list_tools()).tools:
                first = " ".join((found.description or "").split()).split(". ")[0]
                print(f"{found.name}: {first.rstrip('.')}.")  # its first sentence
            return 0
        result = await client.call_tool(tool, arguments)
        for part in result.content:
            print(part.text if part.type == "text" else json.dumps(part.model_dump()))
        return 1 if result.is_error else 0


if __name__ == "__main__":
    tool, *pairs = sys.argv[1:] or [None]
    sys.exit(asyncio.run(main(tool, dict(pair.split("=", 1) for pair in pairs))))

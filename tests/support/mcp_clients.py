"""Lesson 08's test helpers: talk to its servers with a client we did not write (the official
SDK's ClientSession), read their JSON log lines, and a hostile server to test the gateway against.
The servers and the gateway as processes are in support.mcp_servers, which `make bench-mcp` uses
too."""

import contextlib
import json
from pathlib import Path

import httpx
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from lesson08.launcher import DockerLauncher
from support.server import ServerProcess

HOSTILE_SERVER = Path(__file__).with_name("mcp_hostile_server.py")
# How long the client waits for an answer: longer than the gateway may take itself, which is a tool
# server's on-demand start (up to START_SECONDS) and then the call (the default 15 s timeout). A
# client that gave up sooner failed calls the gateway was still within its bounds to answer.
READ_SECONDS = DockerLauncher.START_SECONDS + 15 + 30


@contextlib.asynccontextmanager
async def sdk_session(url: str, headers: dict | None = None):
    """The official MCP SDK's client: Streamable HTTP transport, ClientSession, initialized."""
    async with (
        httpx.AsyncClient(headers=headers or {}, timeout=READ_SECONDS) as http,
        streamable_http_client(url, http_client=http) as (read, write, *_),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


def log_lines(server: ServerProcess, event: str) -> list[dict]:
    """The JSON lines of one event in a server's log."""
    found = []
    for line in server.log_text().splitlines():
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                record = json.loads(line)
                if record.get("event") == event:
                    found.append(record)
    return found

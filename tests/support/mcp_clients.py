"""Lesson 08's test and benchmark helpers: start the servers and the gateway as processes, and
talk to them with clients we did not write (the official SDK's ClientSession, FastMCP's Client)."""

import contextlib
import json
import sys
from pathlib import Path

import httpx
import yaml
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from tests.support.ports import free_port
from tests.support.server import ServerProcess, offline_environment

REPO = Path(__file__).resolve().parents[2]
NOTES_SERVER = REPO / "code" / "08_notes_server.py"
PYTHON_SERVER = REPO / "code" / "08_python_server.py"
GATEWAY = REPO / "code" / "08_mcp_gateway.py"
HOSTILE_SERVER = Path(__file__).with_name("mcp_hostile_server.py")


def tool_server(script: Path, log_dir: Path, **env) -> ServerProcess:
    port = free_port()
    return ServerProcess(
        [sys.executable, script],
        env=offline_environment(PORT=port, **env),
        port=port,
        log_path=log_dir / f"{script.stem}-{port}.log",
        ready_timeout=60,
    )


def gateway(catalog: dict, work: Path, port: int | None = None, **env) -> ServerProcess:
    """The gateway on `port` (else a free one), with `catalog` (written to work/catalog.yaml)."""
    (work / "catalog.yaml").write_text(yaml.safe_dump(catalog))
    port = port or free_port()
    return ServerProcess(
        [sys.executable, GATEWAY],
        env=offline_environment(
            PORT=port,
            GATEWAY_CATALOG=work / "catalog.yaml",
            GATEWAY_PINS=work / "pins.json",
            **env,
        ),
        port=port,
        log_path=work / f"gateway-{port}.log",
        ready_timeout=60,
    )


@contextlib.asynccontextmanager
async def sdk_session(url: str, headers: dict | None = None):
    """The official MCP SDK's client: Streamable HTTP transport, ClientSession, initialized."""
    async with (
        httpx.AsyncClient(headers=headers or {}, timeout=60) as http,
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

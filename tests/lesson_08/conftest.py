"""Lesson 08 without Docker: the notes server, a hostile server and the gateway run as processes,
the commands their containers run, by the Python of lesson 08's own environment; the container
suite (marker `container`, `make mcp-test`) starts them the way `make lesson-08` does."""

from typing import NamedTuple

import pytest
from langchain_mcp_adapters.client import MultiServerMCPClient

from research_agent.tools import build_agent
from support.mcp_servers import NOTES_SERVER, gateway, tool_server
from support.ports import free_port
from tests.support.agent import make_settings
from tests.support.mcp_catalog import gateway_catalog
from tests.support.mcp_clients import HOSTILE_SERVER

# Run by lesson 08's own environment (mcp 2.x), one pytest per file: test_gateway_env.py.
collect_ignore = ["gateway_env"]

AGENT_TOKEN = "agent-token-for-tests"
TESTER_TOKEN = "tester-token-for-tests"
OPERATOR_TOKEN = "operator-token-for-tests"
FLOOD_BYTES = 50 * 1024 * 1024
BOMB_BYTES = 200 * 1024 * 1024  # inflated; about 200 KB of gzip on the wire
CALL_TIMEOUT = 15
PIN_RECHECK_SECONDS = 1  # the gateway's timer: short, so a test sees its check soon
# An MCP initialize by hand, and the headers Streamable HTTP asks of every POST: for the tests that
# speak raw HTTP to a server (floods of sessions, a foreign Origin) instead of through a client.
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "lesson08-tests", "version": "1"},
    },
}
MCP_HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
MODERN = "2026-07-28"


def modern_request(method: str, request_id: int = 1, **params) -> dict:
    """A request of the stateless revision: it carries its own protocol version, client and
    capabilities in `_meta`, since no handshake told the server any of them."""
    meta = {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientInfo": {"name": "lesson08-tests", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": method,
        "params": {**params, "_meta": meta},
    }


def modern_headers(body: dict) -> dict:
    """The headers the revision requires of every POST: its version, the method, and for a call
    the tool's name, each equal to the body's (a proxy can route on them without reading it)."""
    headers = {**MCP_HEADERS, "mcp-protocol-version": MODERN, "mcp-method": body["method"]}
    if "name" in body["params"]:
        headers["mcp-name"] = body["params"]["name"]
    return headers


@pytest.fixture(scope="package")
def notes(tmp_path_factory):
    with tool_server(NOTES_SERVER, tmp_path_factory.mktemp("lesson08-notes")) as server:
        yield server


@pytest.fixture(scope="package")
def hostile(tmp_path_factory):
    logs = tmp_path_factory.mktemp("lesson08-hostile")
    with tool_server(
        HOSTILE_SERVER, logs, FLOOD_BYTES=FLOOD_BYTES, BOMB_BYTES=BOMB_BYTES
    ) as server:
        yield server


@pytest.fixture
def opened_sessions(monkeypatch) -> list:
    """One entry per MCP session the agent's client opens (MultiServerMCPClient.session)."""
    opened = []
    session = MultiServerMCPClient.session
    monkeypatch.setattr(
        MultiServerMCPClient,
        "session",
        lambda self, *a, **k: opened.append(1) or session(self, *a, **k),
    )
    return opened


class AgentOnAPort(NamedTuple):
    """The research agent whose MCP gateway is a port no gateway holds yet: the test starts one
    (or several, one after another) there with `catalog`."""

    agent: object
    port: int
    catalog: dict
    question: str = "Why use a multi-stage Docker build?"


def agent_on_a_port(notes) -> AgentOnAPort:
    port = free_port()
    catalog = {
        "servers": [{"name": "notes", "url": notes.url + "/mcp", "tools": ["search_notes"]}],
        "clients": {"anonymous": {"tools": ["search_notes"]}},
    }
    agent = build_agent(make_settings(MCP_GATEWAY_URL=f"http://127.0.0.1:{port}/mcp"))
    return AgentOnAPort(agent, port, catalog)


@pytest.fixture(scope="package")
def gw(notes, hostile, tmp_path_factory):
    """The gateway in front of both, with short limits so the hostile cases end quickly."""
    work = tmp_path_factory.mktemp("lesson08-gateway")
    with gateway(
        gateway_catalog(notes, hostile),
        work,
        TOKEN_AGENT=AGENT_TOKEN,
        TOKEN_TESTER=TESTER_TOKEN,
        GATEWAY_OPERATOR_TOKEN=OPERATOR_TOKEN,
        # Long enough for the 50 MB answer to reach its size limit on a loaded machine (it takes
        # about 1 s on an idle one), so that the flood test meets the cap, not the timeout.
        GATEWAY_CALL_TIMEOUT_SECONDS=CALL_TIMEOUT,
        GATEWAY_MAX_RESULT_BYTES=1_000_000,
        GATEWAY_MAX_IN_FLIGHT_PER_CLIENT=4,
        GATEWAY_MAX_IN_FLIGHT=16,
        GATEWAY_PIN_RECHECK_SECONDS=PIN_RECHECK_SECONDS,
    ) as server:
        yield server


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def operator() -> dict:
    return bearer(OPERATOR_TOKEN)

"""What of a caller's `_meta` the gateway passes on to a tool server (code/lesson08/call_limits.py,
withhold_anonymous_meta), seen by a tool server that records every call's `_meta`
(tests/support/mcp_meta_server.py). Run by lesson 08's environment
(tests/lesson_08/test_gateway_env.py).

Before: keys under the protocol's own namespace, `io.modelcontextprotocol/`, were taken for the
protocol's and passed on from anyone, a stranger included: a caller could make a tool server read
`io.modelcontextprotocol/logLevel`, `.../subscriptionId` or any key it invented there, as if the
gateway had set it."""

import asyncio

import httpx
import httpx2
import mcp
import pytest
from mcp.client.streamable_http import streamable_http_client

from support.mcp_servers import REPO, gateway, tool_server

from .conftest import AGENT_TOKEN, bearer

META_SERVER = REPO / "tests" / "support" / "mcp_meta_server.py"
PLANTED = {
    "io.modelcontextprotocol/logLevel": "emergency",
    "io.modelcontextprotocol/subscriptionId": "someone-elses",
    "io.modelcontextprotocol/related-task": {"taskId": "not-yours"},
    "io.modelcontextprotocol/invented": "read me",
}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """The gateway in front of the recording server: anonymous and the agent may call it."""
    with tool_server(META_SERVER, tmp_path_factory.mktemp("meta")) as server:
        catalog = {
            "servers": [{"name": "meta", "url": server.url + "/mcp", "tools": ["search_notes"]}],
            "clients": {
                "anonymous": {"tools": ["search_notes"]},
                "agent": {"token_env": "TOKEN_AGENT", "tools": ["search_notes"]},
            },
        }
        work = tmp_path_factory.mktemp("gateway")
        with gateway(catalog, work, TOKEN_AGENT=AGENT_TOKEN) as gw:
            yield gw, server


async def call(url: str, meta: dict, token: str | None = None):
    http = httpx2.AsyncClient(headers=bearer(token) if token else {}, timeout=60)
    async with http, mcp.Client(streamable_http_client(url, http_client=http)) as client:
        return await client.call_tool("search_notes", {"query": "x"}, meta=meta)


def arrived(server, sent: dict, token: str | None = None) -> dict:
    gw, _ = server
    result = asyncio.run(call(gw.url + "/mcp", sent, token))
    assert not result.is_error, result
    return httpx.get(server[1].url + "/seen").json()[-1]


@pytest.mark.parametrize("token", [None, AGENT_TOKEN], ids=["anonymous", "agent"])
def test_protocol_keys_a_caller_sets_never_reach_a_tool_server(recorded, token):
    seen = arrived(recorded, {**PLANTED, "progressToken": 7}, token)
    assert not [key for key in PLANTED if seen.get(key) == PLANTED[key]], seen
    # What the gateway's own client to the tool server sets still arrives.
    assert seen.get("io.modelcontextprotocol/protocolVersion"), seen


def test_a_known_clients_own_keys_still_pass(recorded):
    seen = arrived(recorded, {"com.example/ticket": "T-1"}, AGENT_TOKEN)
    assert seen.get("com.example/ticket") == "T-1"


def test_a_strangers_own_keys_do_not(recorded):
    seen = arrived(recorded, {"com.example/ticket": "T-1"})
    assert "com.example/ticket" not in seen

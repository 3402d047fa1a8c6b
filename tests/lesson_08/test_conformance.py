"""The protocol's own conformance scenarios for a server, re-stated as tests of lesson 08's notes
server and gateway: raw HTTP, no SDK client in between, so what is checked is what goes on the wire.

The scenarios come from the MCP project's conformance suite (github.com/modelcontextprotocol/
conformance, `src/scenarios/server/`), each named below by its file and check id:

- sessionless.ts (SEP-2567): a request with no `Mcp-Session-Id` is served
  (`sep-2567-server-accepts-requests-without-session-id`); `tools/list` does not vary per connection
  or as a side effect of other requests, only by the authorization the request carries
  (`sep-2567-tools-list-connection-invariant`); a dual-era server answers the legacy `initialize`
  probe too, and mints no session id for either era;
- caching.ts (SEP-2549): `tools/list` carries `ttlMs` (an integer >= 0) and `cacheScope` ("public"
  or "private") (`sep-2549-tools-list-caching-hints`, `sep-2549-ttl-non-negative`,
  `sep-2549-cache-scope-valid`); a list that depends on who asks must not be "public";
- http-standard-headers.ts and protocol-version-header.ts: `MCP-Protocol-Version`, `Mcp-Method`
  and, for a call, `Mcp-Name` must equal the body's; a mismatch is a 400 with a JSON-RPC error,
  and a version the server does not speak is refused with the versions it supports;
- dns-rebinding.ts: a request whose `Host` is not the server's (`evil.example.com`) is refused, a
  valid one accepted (`localhost-host-rebinding-rejected`, `localhost-host-valid-accepted`); and,
  from the transport's security warning it cites, a foreign `Origin` gets 403. The suite asks for
  403 on a foreign Host; the MCP SDK and FastMCP both answer 421 Misdirected Request, which refuses
  the request just as well: the test accepts either and nothing else.
- json-rpc-batch-rejection.ts: a JSON-RPC batch (an array) is refused at this revision.
"""

import httpx
import pytest

from .conftest import AGENT_TOKEN, INITIALIZE, MODERN, TESTER_TOKEN, bearer, modern_headers
from .conftest import modern_request as request

pytestmark = pytest.mark.xdist_group("lesson08")
TARGETS = ["notes", "gw"]


def post(server, body: dict, headers: dict | None = None) -> httpx.Response:
    """`body` with the headers the revision requires, and `headers` over them."""
    headers = {**modern_headers(body), **(headers or {})}
    return httpx.post(server.url + "/mcp", json=body, headers=headers, timeout=60)


@pytest.fixture(params=TARGETS)
def server(request):
    return request.getfixturevalue(request.param)


def test_a_request_without_a_session_is_served_and_none_is_minted(server):
    answer = post(server, request("server/discover"))
    assert answer.status_code == 200, answer.text
    result = answer.json()["result"]
    assert MODERN in result["supportedVersions"] and "tools" in result["capabilities"]
    assert "mcp-session-id" not in answer.headers


def test_the_legacy_probe_is_answered_too_and_no_session_is_minted(server):
    """The suite's era probe: an `initialize` with no version header and no `_meta`."""
    answer = httpx.post(
        server.url + "/mcp",
        json=INITIALIZE,
        headers={
            "content-type": "application/json",
            "accept": "application/json, text/event-stream",
        },
        timeout=60,
    )
    assert answer.status_code == 200
    assert "mcp-session-id" not in answer.headers


def tool_names(server, token: str | None = None) -> list[str]:
    answer = post(server, request("tools/list"), bearer(token) if token else {})
    assert answer.status_code == 200, answer.text
    return sorted(tool["name"] for tool in answer.json()["result"]["tools"])


def test_tools_list_does_not_vary_per_connection_or_with_other_requests(server):
    first = tool_names(server)
    post(server, request("server/discover"))
    post(server, request("tools/call", 2, name="search_notes", arguments={"query": "volumes"}))
    assert tool_names(server) == first and "search_notes" in first


def test_the_gateways_list_varies_by_the_requests_authorization_only(gw):
    agent, tester = tool_names(gw, AGENT_TOKEN), tool_names(gw, TESTER_TOKEN)
    assert agent == ["search_notes"] and {"search_notes", "slow", "leak"} <= set(tester)
    assert tool_names(gw, AGENT_TOKEN) == agent  # asked again, on a new connection


def test_tools_list_carries_its_caching_hints(server):
    result = post(server, request("tools/list"), bearer(AGENT_TOKEN)).json()["result"]
    assert isinstance(result["ttlMs"], int) and result["ttlMs"] >= 0
    assert result["cacheScope"] in ("public", "private")
    assert result["resultType"] == "complete"


def test_a_per_client_list_is_never_cacheable_by_a_shared_cache(gw):
    result = post(gw, request("tools/list"), bearer(AGENT_TOKEN)).json()["result"]
    assert result["cacheScope"] == "private"


@pytest.mark.parametrize("header, value", [("mcp-method", "tools/list"), ("mcp-name", "flood")])
def test_a_routing_header_that_disagrees_with_the_body_is_a_400(server, header, value):
    body = request("tools/call", 3, name="search_notes", arguments={"query": "volumes"})
    answer = post(server, body, {header: value})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == -32020  # HEADER_MISMATCH


def test_a_version_header_that_disagrees_with_the_body_is_a_400(server):
    """The body's `_meta` names another version than the header. (A header naming a
    handshake-era version takes the request to the handshake path, where `_meta` is not read:
    the SDK routes by that header alone, so such a request is served as the handshake era.)"""
    body = request("tools/list")
    body["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] = "2099-01-01"
    answer = post(server, body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == -32020  # HEADER_MISMATCH


def test_a_request_missing_the_name_header_is_a_400(server):
    body = request("tools/call", 4, name="search_notes", arguments={"query": "volumes"})
    headers = modern_headers(body)
    del headers["mcp-name"]
    answer = httpx.post(server.url + "/mcp", json=body, headers=headers, timeout=60)
    assert answer.status_code == 400 and answer.json()["error"]["code"] == -32020


def test_an_unsupported_version_is_refused_with_the_supported_ones(server):
    body = request("tools/list")
    body["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] = "2099-01-01"
    answer = post(server, body, {"mcp-protocol-version": "2099-01-01"})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["message"] == "Unsupported protocol version"
    assert error["data"] == {"supported": [MODERN], "requested": "2099-01-01"}


def test_a_request_without_its_envelope_is_refused(server):
    body = request("tools/list")
    del body["params"]["_meta"]["io.modelcontextprotocol/clientCapabilities"]
    answer = post(server, body)
    assert answer.status_code == 400 and answer.json()["error"]["code"] == -32602


def test_a_batch_is_refused(server):
    batch = [request("tools/list", 1), request("server/discover", 2)]
    headers = modern_headers(batch[0])
    answer = httpx.post(server.url + "/mcp", json=batch, headers=headers, timeout=60)
    assert answer.status_code == 400 and answer.json()["error"]["code"] == -32600


def test_a_foreign_host_is_refused_and_the_servers_own_accepted(server):
    body = request("tools/list")
    foreign = post(server, body, {"host": "evil.example.com"})
    assert foreign.status_code in (403, 421) and "jsonrpc" not in foreign.text
    port = server.url.rsplit(":", 1)[1]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}"):
        assert post(server, body, {"host": host}).status_code == 200


def test_a_foreign_origin_gets_403(server):
    body = request("tools/list")
    assert post(server, body, {"origin": "http://evil.example.com"}).status_code == 403
    assert post(server, body, {"origin": "http://127.0.0.1:3000"}).status_code == 200

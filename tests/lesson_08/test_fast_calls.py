"""The gateway's fast path (code/lesson08/fast_calls.py) answers as the full path does: two
gateways in front of the same notes and hostile servers, one with GATEWAY_FAST_CALLS off, get the
same calls in both protocol eras, and their answers are compared. Each call is made once first,
so the fast gateway's session is open and checked; its log line says which path the call took."""

import httpx
import pytest

from support.mcp_servers import gateway
from tests.support.mcp_catalog import gateway_catalog
from tests.support.mcp_clients import log_lines

from .conftest import (
    AGENT_TOKEN,
    MCP_HEADERS,
    TESTER_TOKEN,
    bearer,
    modern_headers,
    modern_request,
)

pytestmark = pytest.mark.xdist_group("lesson08")
TIMEOUT = 6  # seconds: the hanging tool's calls end here; the flood meets its cap well before
HANDSHAKE = "2025-06-18"


@pytest.fixture(scope="module")
def gateways(notes, hostile, tmp_path_factory):
    """(fast, full): the same catalog and limits; the pins checked every 10 minutes, so that
    after a call's first use the fast gateway has nothing left to check."""
    env = dict(
        TOKEN_AGENT=AGENT_TOKEN,
        TOKEN_TESTER=TESTER_TOKEN,
        GATEWAY_CALL_TIMEOUT_SECONDS=TIMEOUT,
        GATEWAY_MAX_RESULT_BYTES=1_000_000,
        GATEWAY_PIN_RECHECK_SECONDS=600,
    )
    catalog = gateway_catalog(notes, hostile)
    fast_work, full_work = tmp_path_factory.mktemp("fast"), tmp_path_factory.mktemp("full")
    with (
        gateway(catalog, fast_work, **env) as fast,
        gateway(catalog, full_work, GATEWAY_FAST_CALLS="false", **env) as full,
    ):
        yield fast, full


def post(server, era: str, tool: str, arguments: dict, token=TESTER_TOKEN, meta=None) -> dict:
    if era == "modern":
        body = modern_request("tools/call", 7, name=tool, arguments=arguments)
        headers = modern_headers(body)
    else:
        params = {"name": tool, "arguments": arguments}
        body = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": params}
        headers = {**MCP_HEADERS, "mcp-protocol-version": HANDSHAKE}
    if meta:
        body["params"].setdefault("_meta", {}).update(meta)
    answer = httpx.post(
        server.url + "/mcp", json=body, headers={**headers, **bearer(token)}, timeout=60
    )
    assert answer.status_code == 200, answer.text[:300]
    return answer.json()


def both(gateways, era, tool, arguments, **kwargs) -> tuple[dict, dict, str]:
    """The answer of each gateway to the second of two same calls, and the fast one's path."""
    fast, full = gateways
    for server in gateways:
        post(server, era, tool, arguments, **kwargs)  # its session opened and checked
    answers = [post(server, era, tool, arguments, **kwargs) for server in gateways]
    return *answers, log_lines(fast, "tool_call")[-1]["path"]


@pytest.mark.parametrize("era", ["handshake", "modern"])
@pytest.mark.parametrize(
    ("tool", "arguments"),
    [
        ("search_notes", {"query": "health checks"}),  # structured content, checked
        ("lookup", {"query": "volume"}),  # plain text
        ("flood", {"query": "q"}),  # 50 MB: cut at the cap
        ("bomb", {"query": "q"}),  # gzip on the wire: refused unread
        ("search_notes", {"query": ""}),  # the server refuses the arguments
    ],
    ids=["structured", "text", "flood", "bomb", "bad-arguments"],
)
def test_the_fast_path_answers_as_the_full_path_does(gateways, era, tool, arguments):
    fast, full, path = both(gateways, era, tool, arguments)
    assert path == "direct"
    assert fast == full
    assert fast["result"].get("resultType") == ("complete" if era == "modern" else None)


@pytest.mark.parametrize(
    ("tool", "token", "why"),
    [
        ("leak", AGENT_TOKEN, "not on the allow-list"),
        ("helpful", TESTER_TOKEN, "reads like instructions"),
        ("invented", TESTER_TOKEN, "Unknown tool"),
    ],
)
def test_a_call_the_rules_refuse_takes_the_full_path(gateways, tool, token, why):
    fast, full, path = both(gateways, "modern", tool, {"query": "q"}, token=token)
    assert fast == full and why in str(fast), fast
    assert path == "full"


def test_a_hanging_tool_times_out_alike(gateways):
    fast, full, path = both(gateways, "handshake", "hang", {"query": "q"})
    assert path == "direct"
    assert fast == full and f"did not answer within {TIMEOUT} s" in str(fast), fast


def test_a_strangers_meta_is_withheld_on_the_fast_path_too(gateways, hostile):
    """What the full path passes on of `_meta`, the fast path passes on: a known client's own
    keys, never a key of the protocol's namespace (tests/lesson_08/gateway_env/test_meta.py
    has the full table, through a server that records what reached it)."""
    planted = {"io.modelcontextprotocol/logLevel": "emergency", "com.example/ticket": "T-1"}
    fast, full, path = both(gateways, "modern", "lookup", {"query": "m"}, meta=planted)
    assert path == "direct" and fast == full
    stranger = post(
        gateways[0], "modern", "search_notes", {"query": "x"}, token="nobody", meta=planted
    )
    assert not stranger["result"]["isError"]
    assert log_lines(gateways[0], "tool_call")[-1]["client"] == "anonymous"

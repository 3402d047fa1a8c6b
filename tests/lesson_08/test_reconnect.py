"""A tool server that went away and came back (what the idle stop and the next start do to a
container): the gateway's next listing and call open a new session, without tracebacks
(issue 37 A13, B5: the listing said [] and the call "Tool search_notes not found")."""

import asyncio
import sys

import pytest

from support.mcp_servers import NOTES_SERVER, gateway
from support.ports import free_port
from support.server import ServerProcess, offline_environment
from tests.support.mcp_clients import log_lines, sdk_session

pytestmark = pytest.mark.xdist_group("lesson08")


def notes_on(port: int, log) -> ServerProcess:
    return ServerProcess(
        [sys.executable, NOTES_SERVER],
        env=offline_environment(PORT=port),
        port=port,
        log_path=log,
        ready_timeout=60,
    )


async def list_and_call(url: str) -> tuple[list[str], bool]:
    async with sdk_session(url + "/mcp") as session:
        names = [t.name for t in (await session.list_tools()).tools]
        result = await session.call_tool("search_notes", {"query": "health checks"})
        return names, result.isError


def test_a_server_that_stopped_and_started_again_is_listed_and_called(tmp_path):
    port = free_port()
    catalog = {
        "servers": [{"name": "notes", "url": f"http://127.0.0.1:{port}/mcp"}],
        "clients": {"anonymous": {"tools": ["search_notes"]}},
    }
    with gateway(catalog, tmp_path) as gw:
        with notes_on(port, tmp_path / "notes-1.log"):
            assert asyncio.run(list_and_call(gw.url)) == (["search_notes"], False)
        # Stopped (the gateway's kept session to it is dead now), then started again.
        with notes_on(port, tmp_path / "notes-2.log"):
            assert asyncio.run(list_and_call(gw.url)) == (["search_notes"], False)
            assert asyncio.run(list_and_call(gw.url)) == (["search_notes"], False)
        log = gw.log_text()
    assert "Traceback" not in log and "ClosedResourceError" not in log, log[-3000:]


async def call_only(url: str) -> bool:
    """A call on a new client session that lists nothing first (what 08_mcp_client.py does)."""
    async with sdk_session(url + "/mcp") as session:
        result = await session.call_tool("search_notes", {"query": "health checks"})
        return result.isError


def test_a_call_right_after_a_restart_opens_a_checked_session_and_runs(tmp_path):
    """Inside the interval between two pin checks (a long GATEWAY_PIN_RECHECK_SECONDS): the kept
    session's server restarted, so the call gets 404 "Session terminated" (it ran nothing); the
    gateway opens a new session, checks the pins on it, and makes the call once more."""
    port = free_port()
    catalog = {
        "servers": [{"name": "notes", "url": f"http://127.0.0.1:{port}/mcp"}],
        "clients": {"anonymous": {"tools": ["search_notes"]}},
    }
    with gateway(catalog, tmp_path, GATEWAY_PIN_RECHECK_SECONDS=3600) as gw:
        with notes_on(port, tmp_path / "notes-1.log"):
            assert asyncio.run(list_and_call(gw.url)) == (["search_notes"], False)
        with notes_on(port, tmp_path / "notes-2.log"):
            assert asyncio.run(call_only(gw.url)) is False  # answered, not an error
        log, calls = gw.log_text(), log_lines(gw, "tool_call")
    assert "Traceback" not in log, log[-3000:]
    assert [r["outcome"] for r in calls] == ["ok", "ok"]

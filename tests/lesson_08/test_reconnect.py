"""A tool server that went away and came back (what the idle stop and the next start do to a
container): the gateway's next listing and call open a new session, without tracebacks
(issue 37 A13, B5: the listing said [] and the call "Tool search_notes not found")."""

import asyncio
import contextlib
import socket
import struct
import threading
from urllib.parse import urlsplit

import pytest

from support.mcp_servers import LESSON08_PYTHON, NOTES_SERVER, gateway
from support.ports import free_port
from support.server import ServerProcess, offline_environment
from tests.support.mcp_clients import log_lines, sdk_session


def notes_on(port: int, log) -> ServerProcess:
    return ServerProcess(
        [LESSON08_PYTHON, NOTES_SERVER],
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
        "servers": [
            {"name": "notes", "url": f"http://127.0.0.1:{port}/mcp", "tools": ["search_notes"]}
        ],
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
    """A call on a new client session that lists nothing first (what lesson08/mcp_client.py
    does)."""
    async with sdk_session(url + "/mcp") as session:
        result = await session.call_tool("search_notes", {"query": "health checks"})
        return result.isError


def test_a_call_right_after_a_restart_runs(tmp_path):
    """Inside the interval between two pin checks (a long GATEWAY_PIN_RECHECK_SECONDS): the
    server restarted under the gateway's kept client. No session was lost (each request stands
    alone): the call goes to the new process and is answered, without a traceback."""
    port = free_port()
    catalog = {
        "servers": [
            {"name": "notes", "url": f"http://127.0.0.1:{port}/mcp", "tools": ["search_notes"]}
        ],
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


class ResettingRelay:
    """A TCP relay in front of a server: bytes pass both ways, except that a connection that
    carries `marker` is reset (RST) before that request reaches the server."""

    def __init__(self, target: str, marker: bytes):
        parts, self.marker = urlsplit(target), marker
        self.host, self.target_port = parts.hostname, parts.port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port, self.stop = self.listener.getsockname()[1], threading.Event()
        self.threads = [threading.Thread(target=self.accept, daemon=True)]
        self.threads[0].start()

    def accept(self) -> None:
        while not self.stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            upstream = socket.create_connection((self.host, self.target_port), 5)
            for args in ((client, upstream, True), (upstream, client, False)):
                thread = threading.Thread(target=self.pipe, args=args, daemon=True)
                thread.start()
                self.threads.append(thread)

    def pipe(self, source, sink, inspect: bool) -> None:
        seen = b""
        # The other direction's thread closes both sockets when it ends, maybe before this one
        # has begun: a closed socket here is the end of the connection, not an error.
        with contextlib.suppress(OSError):
            source.settimeout(0.2)
            while not self.stop.is_set():
                try:
                    data = source.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                seen = seen[-len(self.marker) :] + data
                if inspect and self.marker in seen:
                    source.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    break
                sink.sendall(data)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.close()

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(5)
        self.listener.close()


async def slow_calls_at_once(url: str, queries: list[str]) -> list[tuple[bool, str]]:
    """Each query to `slow` on one session, a moment apart, all in flight together."""
    async with sdk_session(url + "/mcp", {"Authorization": "Bearer tester"}) as session:

        async def call(delay: float, query: str):
            await asyncio.sleep(delay)
            result = await session.call_tool("slow", {"query": query})
            return result.isError, result.content[0].text

        return await asyncio.gather(*(call(0.3 * i, q) for i, q in enumerate(queries)))


@pytest.mark.xdist_group("lesson08")  # with the tests that share the hostile server
def test_a_broken_connection_fails_only_the_call_it_carried(hostile, tmp_path):
    """One of the gateway's requests to a server meets a reset connection while another call is in
    flight on the same session: that one call fails, saying so, and the other is answered (the
    SDK's client alone ended the session, failing both)."""
    relay = ResettingRelay(hostile.url, marker=b"reset-me")
    catalog = {
        "servers": [
            {"name": "hostile", "url": f"http://127.0.0.1:{relay.port}/mcp", "tools": ["slow"]}
        ],
        "clients": {"tester": {"token_env": "TOKEN_TESTER", "tools": ["slow"]}},
    }
    try:
        with gateway(catalog, tmp_path, TOKEN_TESTER="tester") as gw:
            answers = asyncio.run(slow_calls_at_once(gw.url, ["first", "reset-me", "third"]))
            log, calls = gw.log_text(), log_lines(gw, "tool_call")
    finally:
        relay.close()
    assert answers[0] == (False, "slow answer to first"), answers
    assert answers[2] == (False, "slow answer to third"), answers
    assert answers[1][0] and "the connection to the tool server broke" in answers[1][1], answers
    assert "may or may not have run" in answers[1][1]
    assert [c["outcome"] == "ok" for c in calls].count(True) == 2, calls
    assert '"upstream_broken"' in log and "Traceback" not in log, log[-3000:]

"""The gateway's kept client to one tool server (lesson08.upstream), in
process: what the idle sweep asks of it, a late failure that must not close a newer client, and
a server's GET stream cut at the result cap.
Run by lesson 08's environment (tests/lesson_08/test_gateway_env.py)."""

import asyncio

import httpx2
from fastmcp.client.transports import StreamableHttpTransport

from lesson08.catalog import ServerEntry
from lesson08.launcher import UrlLauncher
from lesson08.upstream import CappedTransport, KeptClient, Upstream, capped_client_factory


async def uses_seen(url: str) -> list[bool]:
    """`in_use` of the gateway's kept client: before, during and after a call running on it."""
    transport = StreamableHttpTransport(
        url + "/mcp", httpx_client_factory=capped_client_factory(1 << 20)
    )
    client = KeptClient(transport)
    await client.__aenter__()  # the hold that keeps it open, as the gateway's Upstream has
    seen = [client.in_use]

    async def call():
        async with client:
            await client.call_tool_mcp("slow", {"query": "held"})

    running = asyncio.create_task(call())
    while not running.done() and not client.in_use:
        await asyncio.sleep(0.01)
    seen.append(client.in_use)
    await running
    seen.append(client.in_use)
    await client.close()
    return seen


def test_the_kept_client_knows_a_call_is_running_on_it(hostile):
    """What the idle sweep asks before it closes the client and stops its server: a call longer
    than the server's idle_seconds, or the timer's pin check, is never cut."""
    assert asyncio.run(uses_seen(hostile.url)) == [False, True, False]


async def late_failure_leaves_the_new_client(url: str) -> tuple[bool, bool]:
    """The timer's pin check and a client's listing fail on the same dead client: the listing
    drops it and opens a new one, then the check's failure comes (it used to close the new
    one under the listing, which then said [])."""
    upstream = Upstream(ServerEntry(name="hostile", url=url + "/mcp"), UrlLauncher(), 1 << 20)
    dead = await upstream.connect()
    retry = await upstream.reset(dead)  # the listing's: drops the session it failed on
    new = await upstream.connect()  # and opens another
    late = await upstream.reset(dead)  # the check's, on the session it failed on
    kept = upstream.kept() is new and new.is_connected()
    await upstream.reset()
    return retry and late, kept


def test_a_late_failure_on_a_dropped_client_leaves_the_new_one_open(hostile):
    assert asyncio.run(late_failure_leaves_the_new_client(hostile.url)) == (True, True)


async def streamed(url: str, limit: int) -> int:
    """The bytes the gateway's transport lets through of a server's endless GET stream."""
    http = httpx2.AsyncClient(transport=CappedTransport(limit), timeout=30)
    async with http, http.stream("GET", url) as answer:
        return sum([len(chunk) async for chunk in answer.aiter_raw()])


def test_a_servers_get_stream_is_cut_at_the_cap(hostile):
    """A server's GET stream (the handshake era's channel for its notifications) passed through
    uncounted: one endless `data:` line would fill the gateway. Now it ends at the cap."""
    limit = 1 << 20
    got = asyncio.run(asyncio.wait_for(streamed(hostile.url + "/stream", limit), 60))
    assert 0 < got <= limit

"""Lesson 08: the gateway's client to one tool server (code/08_mcp_gateway.py makes one per
catalog server, and the server's pin provider reaches it through connect, kept and reset)."""

import asyncio
import contextlib
import time

from fastmcp.client.transports import StreamableHttpTransport

from lesson08.call_limits import CALL_LIMIT, KeptClient, capped_client_factory
from lesson08.catalog import ServerEntry
from lesson08.pinning import ListChanged


class Upstream:
    """One catalog server as the gateway reaches it: one MCP client, opened at its first use (the
    launcher starts the server's container if nothing answers yet; the client asks the server's
    `server/discover`), then kept and shared by every call, each one POST that stands alone; dropped
    when the server stops. The server's provider calls connect, kept and reset."""

    def __init__(self, entry: ServerEntry, launcher, max_result_bytes: int):
        self.entry, self.launcher, self.max_result_bytes = entry, launcher, max_result_bytes
        self.client: KeptClient | None = None  # the kept client
        self.lock = asyncio.Lock()  # two first calls at once open one session
        self.changed = ListChanged()  # the server's tools/list_changed: check its pins again

    async def connect(self) -> KeptClient:
        async with self.lock:
            client = self.client
            if client is None or not client.is_connected():
                with self._not_the_calls_time():
                    url = self.entry.url or await self.launcher.url_for(self.entry)  # starts it
                    factory = capped_client_factory(self.max_result_bytes)
                    transport = StreamableHttpTransport(url, httpx_client_factory=factory)
                    client = self.client = KeptClient(transport, message_handler=self.changed)
                    await client.__aenter__()
            self.launcher.touch(self.entry)
        return client

    @contextlib.contextmanager
    def _not_the_calls_time(self):
        """Opening the session (the server's container started if it was not running) is not
        counted against the time limit of the call that needed it: the limit is pushed back by
        the start's own bound while it runs, then by the time it took."""
        limit, began = CALL_LIMIT.get(), time.monotonic()
        bound = self.launcher.START_SECONDS + 30  # the start, then the session's opening
        if limit is not None:
            limit.deadline += bound
        try:
            yield
        finally:
            if limit is not None:
                limit.deadline -= bound - min(time.monotonic() - began, bound)

    def kept(self) -> KeptClient | None:
        """The open session, for the timer's pin check: it starts no server, and leaves the
        server's idle clock alone."""
        client = self.client
        return client if client is not None and client.is_connected() else None

    async def reset(self, stale: KeptClient | None = None, idle: bool = False) -> bool:
        """Close the kept session (its server stopped): the next use opens a new one.

        `stale` is the session a request failed on: it alone is closed. When another request
        already replaced it (the timer's pin check and a listing can fail on the same dead session
        at once), the new session is left open, and the retry uses it. True when a retry may
        succeed: there was a session to drop (None for `stale`: whichever is kept).

        With `idle`, the idle sweep's (its server is about to be stopped): the session is kept
        when it was used since the sweep looked or a request is running on it (a call longer
        than idle_seconds, or the timer's pin check, whose answer would come to a closed
        session). True when the server may be stopped."""
        async with self.lock:
            client = self.client
            if stale is not None and client is not stale:
                return True  # dropped already: the kept one, if any, is newer
            if idle and (
                not self.launcher.idle(self.entry, time.monotonic())
                or (client is not None and client.in_use)
            ):
                return False
            self.client = None
            if self.changed.provider is not None:
                self.changed.provider.expire()  # a new session is checked before its first call
        if client is not None:
            with contextlib.suppress(Exception):  # the server is gone: nothing to tell it
                await client.close()
        return idle or client is not None

"""Lesson 08: the gateway's client to one tool server (code/lesson08/mcp_gateway.py makes one per
catalog server, and the server's pin provider reaches it through connect, kept and reset).

What a tool server sends back is read up to the result cap, never more: a POST's answer is counted
as it arrives, an encoded one (gzip, ...) refused, since it would be inflated past any count of its
bytes, and a server's GET stream cut at the same cap (CappedTransport); one broken connection to a
server fails the one request it carried, not every call on the gateway's client to it. The call
policy (lesson08/call_limits.py) hands each call's time limit in (`call_limited_by`)."""

import asyncio
import contextlib
import contextvars
import json
import logging
import time

import anyio
import httpx2
from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport

from lesson08.catalog import ServerEntry
from lesson08.pinning import ListChanged

logger = logging.getLogger("mcp_gateway")
TOO_LARGE = "larger than the gateway's limit"

# A connection that broke after it was made (reset, closed mid-answer): what it carried may or may
# not have run. A server that cannot be reached at all (ConnectError) fails the call, and the next
# use opens the client again.
BROKEN = (httpx2.ReadError, httpx2.WriteError, httpx2.RemoteProtocolError)
IDENTITY = ("", "identity")  # the only Content-Encoding an answer may have


class CappedTransport(httpx2.AsyncHTTPTransport):
    """What a tool server sends the gateway is bounded by `limit` bytes, as they arrive:

    - each answer to a POST (one MCP request) is read up to `limit` bytes, never more: a server
      that sends 50 MB costs the gateway `limit` bytes, and the caller gets a JSON-RPC error for
      that request instead of the answer;
    - an answer is never decoded: the request asks for `Accept-Encoding: identity`, and an answer
      that comes encoded anyway (gzip, br, zstd) is refused unread, since 1 MB of gzip inflates to
      a gigabyte, past any cap on the bytes that came;
    - a GET (a server's stream of notifications, in the handshake era) is cut after `limit` bytes.

    A POST whose connection breaks gets a JSON-RPC error too, for that request alone: an
    exception there would reach every call the gateway's client has in flight to that server."""

    def __init__(self, limit: int, **kwargs):
        super().__init__(**kwargs)
        self.limit = limit

    async def handle_async_request(self, request):
        request.headers["accept-encoding"] = "identity"
        if request.method != "POST":
            response = await super().handle_async_request(request)
            if response.headers.get("content-encoding", "").lower() not in IDENTITY:
                await response.aclose()
                return httpx2.Response(406, request=request)
            response.stream = CappedStream(response.stream, self.limit)
            return response
        try:
            response = await super().handle_async_request(request)
            chunks, size = [], 0
            try:
                if response.headers.get("content-encoding", "").lower() not in IDENTITY:
                    encoding = response.headers["content-encoding"][:32]
                    return self._error(request, f"answer encoded ({encoding}): refused unread")
                async for chunk in response.stream:
                    size += len(chunk)
                    if size > self.limit:
                        return self._error(request, f"answer {TOO_LARGE} of {self.limit:,} bytes")
                    chunks.append(chunk)
            finally:
                await response.stream.aclose()
        except BROKEN as exc:
            logger.warning(json.dumps({"event": "upstream_broken", "error": type(exc).__name__}))
            return self._error(
                request,
                f"the connection to the tool server broke before it answered "
                f"({type(exc).__name__}); the call may or may not have run",
            )
        return httpx2.Response(
            response.status_code,
            headers=response.headers,
            stream=httpx2.ByteStream(b"".join(chunks)),
            extensions=response.extensions,
        )

    def _error(self, request, message: str) -> httpx2.Response:
        """The JSON-RPC error the server could have sent for this request; a notification (no
        id) expects no answer: 202, as a server gives."""
        try:
            body = json.loads(request.content)
            request_id = body.get("id")
        except (ValueError, AttributeError):
            body, request_id = None, None
        if isinstance(body, dict) and "method" in body and "id" not in body:
            return httpx2.Response(202)
        return httpx2.Response(
            200,
            json={
                "jsonrpc": "2.0",
                "id": request_id,
                "error": {"code": -32001, "message": message},
            },
        )


class CappedStream(httpx2.AsyncByteStream):
    """A server's stream, ended after `limit` bytes (the client sees the stream close)."""

    def __init__(self, stream, limit: int):
        self.stream, self.limit = stream, limit

    async def __aiter__(self):
        size = 0
        async for chunk in self.stream:
            size += len(chunk)
            if size > self.limit:
                logger.warning(json.dumps({"event": "upstream_stream_cut", "bytes": self.limit}))
                return
            yield chunk

    async def aclose(self) -> None:
        await self.stream.aclose()


class KeptClient(Client):
    """The gateway's client to one tool server, kept open between calls. It counts the uses
    running on it (each call and each pin check enters it with `async with`), so the idle sweep
    can leave it alone while a request runs on it."""

    uses = 0  # the one that keeps it open, and those running now

    async def __aenter__(self):
        client = await super().__aenter__()
        self.uses += 1
        return client

    async def __aexit__(self, *exc_info):
        self.uses -= 1
        return await super().__aexit__(*exc_info)

    @property
    def in_use(self) -> bool:
        return self.uses > 1


def capped_client_factory(limit: int):
    """An httpx_client_factory for FastMCP's StreamableHttpTransport."""

    def factory(**kwargs) -> httpx2.AsyncClient:
        # No read timeout of httpx's own (its default is 5 s, which would cut a slow tool first
        # with a vaguer error): CallPolicy's per-call timeout bounds every call.
        kwargs["timeout"] = httpx2.Timeout(30.0, read=None)
        # An idle connection is dropped after 2 s, before the server drops it: uvicorn (the SDK's
        # servers) closes one idle for 5 s, and a request sent on it as the server closes it
        # meets a reset.
        transport = CappedTransport(limit, limits=httpx2.Limits(keepalive_expiry=2.0))
        return httpx2.AsyncClient(transport=transport, **kwargs)

    return factory


# The time limit of the call being made, while it runs (set by the call policy through
# `call_limited_by`): opening its server's session (a cold start of the server's container, under
# START_SECONDS of its own) pushes it back by the time that took, so the limit is for the tool's
# answer, not for Docker.
_CALL_LIMIT = contextvars.ContextVar[anyio.CancelScope | None]("call_limit", default=None)


@contextlib.contextmanager
def call_limited_by(limit: anyio.CancelScope):
    """While the block runs, `limit` is the running call's time limit, which Upstream.connect
    pushes back while it opens the server's session."""
    token = _CALL_LIMIT.set(limit)
    try:
        yield
    finally:
        _CALL_LIMIT.reset(token)


class Upstream:
    """One catalog server as the gateway reaches it: one MCP client, opened at its first use (the
    launcher starts the server's container if nothing answers yet; the client asks the server's
    `server/discover`), then kept and shared by every call, each one POST that stands alone; dropped
    when the server stops. The server's provider calls connect, kept and reset."""

    def __init__(self, entry: ServerEntry, launcher, max_result_bytes: int):
        self.entry, self.launcher, self.max_result_bytes = entry, launcher, max_result_bytes
        self.client: KeptClient | None = None  # the kept client
        # The fast path's (lesson08/fast_calls.py): the server's URL and an HTTP client to it,
        # capped as the kept client's transport is, opened and dropped with the kept client.
        self.url: str | None = None
        self.http: httpx2.AsyncClient | None = None
        self.lock = asyncio.Lock()  # two first calls at once open one session
        self.changed = ListChanged()  # the server's tools/list_changed: check its pins again

    async def connect(self) -> KeptClient:
        async with self.lock:
            client = self.client
            if client is None or not client.is_connected():
                with self._not_the_calls_time():
                    url = self.entry.url or await self.launcher.url_for(self.entry)  # starts it
                    factory = capped_client_factory(self.max_result_bytes)
                    transport = StreamableHttpTransport(
                        url,
                        headers=self.launcher.headers_for(self.entry),
                        httpx_client_factory=factory,
                    )
                    client = self.client = KeptClient(transport, message_handler=self.changed)
                    await client.__aenter__()
                    stale, self.url = self.http, url
                    self.http = factory(headers=self.launcher.headers_for(self.entry))
                    if stale is not None:
                        await stale.aclose()
            self.launcher.touch(self.entry)
        return client

    @contextlib.contextmanager
    def _not_the_calls_time(self):
        """Opening the session (the server's container started if it was not running) is not
        counted against the time limit of the call that needed it: the limit is pushed back by
        the start's own bound while it runs, then by the time it took."""
        limit, began = _CALL_LIMIT.get(), time.monotonic()
        bound = self.launcher.START_SECONDS + 30  # the start, then the session's opening
        if limit is not None:
            limit.deadline += bound
        try:
            yield
        finally:
            if limit is not None:
                limit.deadline -= bound - min(time.monotonic() - began, bound)

    def running(self) -> bool:
        """Reached without starting anything: a server at a URL, or a container with an open
        session."""
        return not self.entry.image or self.kept() is not None

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
            http, self.http = self.http, None
            if self.changed.provider is not None:
                self.changed.provider.expire()  # a new session is checked before its first call
        if client is not None:
            with contextlib.suppress(Exception):  # the server is gone: nothing to tell it
                await client.close()
        if http is not None:
            await http.aclose()
        return idle or client is not None

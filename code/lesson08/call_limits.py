"""Lesson 08, going further: what the gateway enforces on every call, and how it reports it.

- who is calling: a bearer token from the catalog's clients (none: "anonymous");
- an allow-list per client: other tools are neither listed nor callable;
- a timeout per call and a cap on the result's size: a hung or flooding server becomes a clear
  tool error for the agent, not a hung run;
- one JSON log line per call (request id, client, tool, argument size, duration, outcome; never
  the arguments themselves) and Prometheus metrics, both bounded whatever a client sends: a tool
  name the gateway never listed is counted as "other" and logged cut to 64 characters;
- a burst guard in front of it all: POSTs in flight per client and in total are bounded; beyond
  that the answer is 429 or 503 with Retry-After, at once. A call counts as in flight until its
  answer is sent, not until its stream closes;
- a tool server's answer read up to the result cap, never more: a POST's answer is counted as it
  arrives, an encoded one (gzip, ...) refused, since it would be inflated past any count of its
  bytes, and a server's GET stream cut at the same cap (CappedTransport); one broken connection to
  a server fails the one request it carried, not every call on the gateway's client to it.
"""

import contextvars
import dataclasses
import hmac
import json
import logging
import os
import re
import time
import uuid

import anyio
import httpx2
from fastmcp import Client
from fastmcp.exceptions import ToolError
from fastmcp.server.dependencies import get_http_headers
from fastmcp.server.middleware import Middleware
from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.responses import JSONResponse

from research_agent import HeldSlots, error_body  # what is held at once; the error shape

logger = logging.getLogger("mcp_gateway")

REGISTRY = CollectorRegistry()
CALLS = Counter(
    "mcp_gateway_calls",
    "Tool calls by tool and outcome",
    ["client", "tool", "outcome"],
    registry=REGISTRY,
)
DURATION = Histogram(
    "mcp_gateway_call_seconds",
    "Tool call duration through the gateway",
    ["tool"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
REFUSED = Counter(
    "mcp_gateway_refused_requests",
    "HTTP requests refused by the burst guard",
    ["status"],
    registry=REGISTRY,
)


TOO_LARGE = "larger than the gateway's limit"
SHOWN = 64  # characters of a client-chosen text (tool name, request id) in a log line
OTHER = "other"  # the metric label of every tool name the gateway never listed


def cut(text: str, limit: int = SHOWN) -> str:
    """A client-chosen text as logged: at most `limit` characters, marked when cut."""
    return text if len(text) <= limit else text[:limit] + "..."


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


def identify(clients: dict, authorization: str | None) -> str:
    """The catalog client whose token this is, compared in constant time; else "anonymous"."""
    token = (authorization or "").removeprefix("Bearer ").strip()
    for name, client in clients.items():
        expected = os.environ.get(client.token_env or "", "")
        if token and expected and hmac.compare_digest(token.encode(), expected.encode()):
            return name
    return "anonymous"


# What the gateway took out of an anonymous caller's `_meta` for the request running now.
WITHHELD = contextvars.ContextVar[dict | None]("withheld_meta", default=None)
# The time limit of the call being made, while it runs: opening its server's session (a cold
# start of the server's container, under START_SECONDS of its own) pushes it back by the time
# that took (upstream.py), so the limit is for the tool's answer, not for Docker.
CALL_LIMIT = contextvars.ContextVar[anyio.CancelScope | None]("call_limit", default=None)
PROTOCOL_META = "io.modelcontextprotocol/"  # the protocol's own keys: version, client, ...


def withhold_anonymous_meta(clients: dict):
    """A middleware of the SDK's server (the first): a caller the gateway cannot name passes on
    nothing of its own in `_meta`, only the protocol's keys and a progress token. What a known
    client sends may reach a tool server (FastMCP's proxy forwards `_meta`); what a stranger
    sends may not, so no one can make a tool server read keys it chose. What was taken out is in
    WITHHELD while the request runs."""

    async def middleware(ctx, call_next):
        meta = dict(ctx.meta or {})
        request = ctx.request
        authorization = request.headers.get("authorization") if request is not None else None
        if not meta or identify(clients, authorization) != "anonymous":
            return await call_next(ctx)
        kept = {
            k: v for k, v in meta.items() if k.startswith(PROTOCOL_META) or k == "progressToken"
        }
        if kept == meta:
            return await call_next(ctx)
        params = {**(ctx.params or {}), "_meta": kept}
        token = WITHHELD.set({k: v for k, v in meta.items() if k not in kept})
        try:
            return await call_next(dataclasses.replace(ctx, params=params, meta=kept))
        finally:
            WITHHELD.reset(token)

    return middleware


def allowed(clients: dict, client: str, tool: str) -> bool:
    entry = clients.get(client)
    return entry is not None and ("*" in entry.tools or tool in entry.tools)


def result_bytes(result) -> int:
    blocks = [b.model_dump(mode="json") for b in result.content or []]
    return len(json.dumps([blocks, result.structured_content], default=str))


class CallPolicy(Middleware):
    """`known()` is the set of tool names the servers declared: the only values the metrics'
    `tool` label takes, besides "other" (a label per name a client invents would grow without
    end)."""

    def __init__(
        self,
        catalog,
        pins,
        *,
        timeout: float,
        max_result_bytes: int,
        per_client=4,
        known=set,
        replica: str | None = None,
    ):
        self.clients, self.pins, self.known = catalog.clients, pins, known
        # Which replica this is (stateless replicas behind an edge): every call log line says it.
        self.replica = {"replica": replica} if replica else {}
        self.timeout, self.max_result_bytes = timeout, max_result_bytes
        # Calls running at once per client: one client's slow calls queue behind each other,
        # not in front of another client's (the client names are the catalog's: bounded).
        self.running = {name: anyio.Semaphore(per_client) for name in self.clients}
        self.running.setdefault("anonymous", anyio.Semaphore(per_client))
        self.reports: list = []  # more readers of each call's log line: report(event)

    def _client(self) -> str:
        headers = get_http_headers(include={"authorization"})
        return identify(self.clients, headers.get("authorization"))

    async def on_list_tools(self, context, call_next):
        client = self._client()
        return [t for t in await call_next(context) if allowed(self.clients, client, t.name)]

    async def on_call_tool(self, context, call_next):
        client, tool = self._client(), context.message.name
        request_id = cut(get_http_headers().get("x-request-id") or uuid.uuid4().hex[:16])
        started, outcome = time.monotonic(), "ok"
        try:
            if not allowed(self.clients, client, tool):
                outcome = "not_allowed"
                raise ToolError(f"Tool {tool!r} is not on the allow-list of client {client!r}.")
            if tool in self.pins.refused:
                outcome = "refused_pin"
                raise ToolError(self.pins.refused[tool])
            try:
                with anyio.fail_after(self.timeout) as limit:  # a wait for a slot counts too
                    token = CALL_LIMIT.set(limit)
                    try:
                        async with self.running[client]:
                            result = await call_next(context)
                    finally:
                        CALL_LIMIT.reset(token)
            except TimeoutError:
                outcome = "timeout"
                raise ToolError(
                    f"Tool {tool!r} did not answer within {self.timeout:g} s; the call was cut."
                ) from None
            size = result_bytes(result)
            if size > self.max_result_bytes:
                outcome = "too_large"
                raise ToolError(
                    f"Tool {tool!r} answered {size:,} bytes, more than the gateway's limit of "
                    f"{self.max_result_bytes:,}; the answer was dropped."
                )
            return result
        except Exception as exc:
            if outcome != "ok":  # refused above: the error says why
                raise
            if tool in self.pins.refused:  # the listing made for this call found a change
                outcome = "refused_pin"
                raise ToolError(self.pins.refused[tool]) from None
            if TOO_LARGE in str(exc):
                outcome = "too_large"
                raise ToolError(
                    f"Tool {tool!r} answered more than the gateway's limit of "
                    f"{self.max_result_bytes:,} bytes; the answer was dropped."
                ) from None
            outcome = "tool_error" if isinstance(exc, ToolError) else "error"
            raise
        finally:
            elapsed = time.monotonic() - started
            label = tool if tool in self.known() else OTHER
            CALLS.labels(client, label, outcome).inc()
            DURATION.labels(label).observe(elapsed)
            args = context.message.arguments or {}
            event = {
                "event": "tool_call",
                "request_id": request_id,
                "client": client,
                "tool": cut(tool),
                "argument_bytes": len(json.dumps(args, default=str)),
                "argument_names": [cut(name) for name in sorted(args)[:10]],
                "duration_ms": round(elapsed * 1000, 1),
                "outcome": outcome,
                **self.replica,
            }
            logger.info(json.dumps(event))
            for report in self.reports:  # lesson 09's span gets the same line (lesson08/tracing.py)
                report(event)


# The JSON-RPC answer to a POST, as the SDK writes it in an SSE stream: an event whose data has
# an id and a result or an error (a notification or a request of the server's has a method).
ANSWER = re.compile(
    rb'^data: ?\{"jsonrpc": ?"2\.0", ?"id": ?(?:"[^"\n]{0,200}"|-?\d{1,20}), ?"(?:result|error)"',
    re.MULTILINE,
)


class BurstGuard:
    """ASGI middleware: at most `per_client` MCP POSTs in flight per client (429 beyond) and
    `total` in all (503 beyond), each with Retry-After. GETs (health, metrics, streams) pass.

    A POST is in flight until its answer goes out: the last body of a JSON answer, or the SSE
    event that carries the JSON-RPC response (the SDK closes the stream a moment later, and a
    client that already has its answer may send its next call in that moment)."""

    def __init__(self, app, *, clients: dict, per_client: int, total: int, retry_after: int = 1):
        self.app, self.clients = app, clients
        self.per_client, self.total, self.retry_after = per_client, total, retry_after
        self.in_flight = HeldSlots()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        client = identify(self.clients, headers.get("authorization"))
        full = self.in_flight.full(client, self.per_client, self.total)
        if full is not None:
            status = 503 if full == "total" else 429
            REFUSED.labels(str(status)).inc()
            body = error_body(
                "busy" if status == 503 else "rate_limited",
                "Too many tool calls in flight; retry shortly.",
            )
            response = JSONResponse(
                body, status_code=status, headers={"Retry-After": str(self.retry_after)}
            )
            return await response(scope, receive, send)
        release = self.in_flight.take(client)

        async def send_and_release(message) -> None:
            if message["type"] == "http.response.body" and (
                not message.get("more_body") or ANSWER.search(message.get("body", b""))
            ):
                release()  # before the answer leaves: the client's next call finds the slot free
            await send(message)

        try:
            await self.app(scope, receive, send_and_release)
        finally:
            release()

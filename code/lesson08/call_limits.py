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
- and what comes back from a tool server is capped on the way in by the gateway's client to it
  (lesson08/upstream.py, which this module hands each call's time limit to).
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
from fastmcp.exceptions import ToolError
from fastmcp.server.dependencies import get_http_headers
from fastmcp.server.middleware import Middleware
from mcp_types import (
    CLIENT_CAPABILITIES_META_KEY,
    CLIENT_INFO_META_KEY,
    PROTOCOL_VERSION_META_KEY,
)
from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.responses import JSONResponse

from lesson08 import upstream
from lesson08.upstream import TOO_LARGE
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


SHOWN = 64  # characters of a client-chosen text (tool name, request id) in a log line
OTHER = "other"  # the metric label of every tool name the gateway never listed


def cut(text: str, limit: int = SHOWN) -> str:
    """A client-chosen text as logged: at most `limit` characters, marked when cut."""
    return text if len(text) <= limit else text[:limit] + "..."


def identify(clients: dict, authorization: str | None) -> str:
    """The catalog client whose token this is, compared in constant time; else "anonymous"."""
    token = (authorization or "").removeprefix("Bearer ").strip()
    for name, client in clients.items():
        expected = os.environ.get(client.token_env or "", "")
        if token and expected and hmac.compare_digest(token.encode(), expected.encode()):
            return name
    return "anonymous"


# What the gateway took out of a caller's `_meta` for the request running now.
WITHHELD = contextvars.ContextVar[dict | None]("withheld_meta", default=None)
PROTOCOL_META = "io.modelcontextprotocol/"  # the protocol's own namespace: version, client, ...
# The only keys of that namespace a caller may send: what this request's protocol version, client
# and capabilities are. The gateway's own server reads them; FastMCP's proxy never passes them on
# (the gateway's client to a tool server sets its own).
CONNECTION_META = frozenset(
    {PROTOCOL_VERSION_META_KEY, CLIENT_INFO_META_KEY, CLIENT_CAPABILITIES_META_KEY}
)


def passed_on(key: str, known: bool) -> bool:
    """Whether a caller's `_meta` key goes on past the gateway's first middleware: a protocol
    key only if it describes this request's connection, whoever sends it (anything else in that
    namespace is the gateway's to set: log level, subscriptions, tasks, ...); a key of the
    caller's own only from a client the gateway can name; a progress token from anyone."""
    if key.startswith(PROTOCOL_META):
        return key in CONNECTION_META
    return known or key == "progressToken"


def withhold_anonymous_meta(clients: dict):
    """A middleware of the SDK's server (the first): no caller passes on a key of the protocol's
    namespace that the gateway did not set, and a caller the gateway cannot name passes on
    nothing of its own either, only a progress token. What a known client sends under its own
    names may reach a tool server (FastMCP's proxy forwards `_meta`); what a stranger sends may
    not, so no one can make a tool server read keys it chose. What was taken out is in WITHHELD
    while the request runs."""

    async def middleware(ctx, call_next):
        meta = dict(ctx.meta or {})
        if not meta:
            return await call_next(ctx)
        request = ctx.request
        authorization = request.headers.get("authorization") if request is not None else None
        known = identify(clients, authorization) != "anonymous"
        kept = {k: v for k, v in meta.items() if passed_on(k, known)}
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

    def sees_any(self, tools) -> bool:
        """Whether this request's caller may call any of `tools` (a server's provider asks
        before a listing starts the server)."""
        client = self._client()
        return any(allowed(self.clients, client, tool) for tool in tools)

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
                    # Handed to the server's client: opening its session is not the call's time.
                    with upstream.call_limited_by(limit):
                        async with self.running[client]:
                            result = await call_next(context)
            except TimeoutError:
                outcome = "timeout"
                raise ToolError(self.timeout_message(tool)) from None
            size = result_bytes(result)
            if size > self.max_result_bytes:
                outcome = "too_large"
                raise ToolError(self.too_large_message(tool, size))
            return result
        except Exception as exc:
            if outcome != "ok":  # refused above: the error says why
                raise
            if tool in self.pins.refused:  # the listing made for this call found a change
                outcome = "refused_pin"
                raise ToolError(self.pins.refused[tool]) from None
            if TOO_LARGE in str(exc):
                outcome = "too_large"
                raise ToolError(self.too_large_message(tool)) from None
            outcome = "tool_error" if isinstance(exc, ToolError) else "error"
            raise
        finally:
            self.record(client, tool, request_id, context.message.arguments, started, outcome)

    def record(
        self, client, tool, request_id, arguments, started: float, outcome: str, path="full"
    ) -> None:
        """A call's log line and metrics. `path`: "full" through FastMCP, "direct" for a call the
        fast path made (lesson08/fast_calls.py)."""
        elapsed = time.monotonic() - started
        label = tool if tool in self.known() else OTHER
        CALLS.labels(client, label, outcome).inc()
        DURATION.labels(label).observe(elapsed)
        args = arguments or {}
        event = {
            "event": "tool_call",
            "request_id": request_id,
            "client": client,
            "tool": cut(tool),
            "argument_bytes": len(json.dumps(args, default=str)),
            "argument_names": [cut(name) for name in sorted(args)[:10]],
            "duration_ms": round(elapsed * 1000, 1),
            "outcome": outcome,
            "path": path,
            **self.replica,
        }
        logger.info(json.dumps(event))
        for report in self.reports:  # lesson 09's span gets the same line (lesson08/tracing.py)
            report(event)

    def timeout_message(self, tool: str) -> str:
        return f"Tool {tool!r} did not answer within {self.timeout:g} s; the call was cut."

    def too_large_message(self, tool: str, size: int | None = None) -> str:
        if size is None:
            return (
                f"Tool {tool!r} answered more than the gateway's limit of "
                f"{self.max_result_bytes:,} bytes; the answer was dropped."
            )
        return (
            f"Tool {tool!r} answered {size:,} bytes, more than the gateway's limit of "
            f"{self.max_result_bytes:,}; the answer was dropped."
        )


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

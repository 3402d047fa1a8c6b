"""Lesson 09 on lesson 08's servers: one trace from the agent's tool call to the tool, joined
through the protocol's own trace context.

An MCP request carries its caller's W3C trace context in `params._meta`, under `traceparent` and
`tracestate` (the MCP specification's trace-context convention): no HTTP header of ours. The agent
adds it to each tool call (research_agent/tracing/mcp_tracing.py); here:

- the gateway (trace_gateway): a span per tool call, `gateway tools/call {tool}`, with who called
  (`mcp_gateway.client`), the tool, its server and the sha256 it is pinned to, and how the call
  ended (`mcp_gateway.outcome`, the call log's word for it). FastMCP's own spans nest under it, and
  its proxy passes the gateway's context on to the tool server in `_meta` again;
- a tool server (trace_tool_server): a span per call, `tools/call {tool}`, whose parent is the
  context in the request's `_meta`; lesson 04's `sandbox run` nests under run_python's.

Trust, as at lesson 09's edge: a caller's context is joined only from a client that proved who it
is with its catalog token. An anonymous caller's becomes a link on the gateway's span (named, not
joined), and is never passed on to a tool server, whether or not the gateway traces. A tool server
trusts its one caller, the gateway, by where it stands (on the tools network).

Without OTEL_EXPORTER_OTLP_ENDPOINT tracing is off (research_agent's configure_tracing): no span
is made, the OpenTelemetry SDK is never loaded, and all the gateway does is take an anonymous
caller's trace context out of `_meta`.
"""

import dataclasses
import json
import logging
import os

from fastmcp.server.dependencies import get_http_headers
from fastmcp.server.middleware import Middleware
from mcp.server.lowlevel.server import request_ctx
from mcp.types import CallToolRequest
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from lesson08.call_limits import CallPolicy, cut, identify

logger = logging.getLogger("mcp_gateway")
ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
TRACE_KEYS = ("traceparent", "tracestate")  # the keys of `_meta` that carry a trace context
OK = "ok"


def configure(service_name: str) -> bool:
    """Tracing for this process from the OTEL_* variables, as the research agent reads them (this
    service name unless OTEL_SERVICE_NAME says otherwise). True when it is on. Without an endpoint
    nothing is imported; lesson 08's images carry the OpenTelemetry API only, so there it says so
    once and stays off."""
    if not any(os.environ.get(name) for name in ENDPOINTS):
        return False
    try:
        from research_agent import TracingSettings, configure_tracing
    except ImportError as exc:  # an image without the SDK or the research agent's tracing
        logger.warning(json.dumps({"event": "tracing_unavailable", "missing": exc.name}))
        return False
    return configure_tracing(TracingSettings(), service_name) is not None


def trace_context(meta) -> dict[str, str]:
    """The trace context a request's `_meta` carries (an MCP `RequestParams.Meta`, or None)."""
    extra = (meta.model_extra if meta is not None else None) or {}
    return {key: str(extra[key]) for key in TRACE_KEYS if key in extra}


def without_trace_context(meta):
    """The same `_meta` without its trace context."""
    stripped = meta.model_copy()
    for key in TRACE_KEYS:
        stripped.__pydantic_extra__.pop(key, None)
    return stripped


# --- The gateway ----------------------------------------------------------------------------------


class GatewayTracing(Middleware):
    """First in the gateway's middleware: an untrusted caller's trace context removed from the
    request, and while tracing is on, a span per tool call. CallPolicy, inside it, reports each
    call's log line to `record`, which puts its outcome on the span."""

    def __init__(self, clients: dict, pin_of, traced: bool):
        self.clients, self.pin_of, self.traced = clients, pin_of, traced
        self.tracer = trace.get_tracer("lesson08.gateway")

    async def on_call_tool(self, context, call_next):
        request = request_ctx.get(None)
        caller = trace_context(request.meta if request is not None else None)
        if not caller and not self.traced:
            return await call_next(context)  # nothing to check, nothing to record
        headers = get_http_headers(include={"authorization"})
        client = identify(self.clients, headers.get("authorization"))
        trusted = client != "anonymous"
        token = None
        if caller and not trusted:  # neither joined nor passed on (FastMCP's proxy reads it here)
            stripped = without_trace_context(request.meta)
            token = request_ctx.set(dataclasses.replace(request, meta=stripped))
        try:
            if not self.traced:
                return await call_next(context)
            with self._span(context.message.name, client, caller, trusted):
                return await call_next(context)
        finally:
            if token is not None:
                request_ctx.reset(token)

    def _span(self, tool: str, client: str, caller: dict, trusted: bool):
        parent, links = (propagate.extract(caller) if caller else None), []
        if caller and not trusted:  # named, not joined: a trace of the gateway's own
            linked = trace.get_current_span(parent).get_span_context()
            parent, links = Context(), [Link(linked)] if linked.is_valid else []
        attributes = {
            "mcp.method.name": "tools/call",
            "gen_ai.tool.name": cut(tool),
            "mcp_gateway.client": client,
        }
        pinned = self.pin_of(tool)
        if pinned is not None:
            attributes["mcp_gateway.server"], attributes["mcp_gateway.pin.sha256"] = pinned
        return self.tracer.start_as_current_span(
            f"gateway tools/call {cut(tool)}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes=attributes,
            links=links,
        )

    @staticmethod
    def record(event: dict) -> None:
        """CallPolicy's log line of the call, on the gateway's span (current while it runs)."""
        span = trace.get_current_span()
        span.set_attributes(
            {"mcp_gateway.outcome": event["outcome"], "mcp_gateway.request_id": event["request_id"]}
        )
        if event["outcome"] != OK:
            span.set_attribute("error.type", event["outcome"])
            span.set_status(Status(StatusCode.ERROR, event["outcome"]))


def trace_gateway(gateway, pins, providers: dict, service_name: str = "mcp-gateway"):
    """Tracing configured from OTEL_* (off without an endpoint), and GatewayTracing put first in
    the gateway's middleware, where lesson 08's app is composed (build_app)."""
    traced = configure(service_name)
    policy = next(m for m in gateway.middleware if isinstance(m, CallPolicy))

    def pin_of(tool: str):
        for provider in providers.values():
            if tool in provider.listed:
                pin = pins.data.get(provider.server, {}).get(tool)
                return (provider.server, pin["sha256"]) if pin else None
        return None

    middleware = GatewayTracing(policy.clients, pin_of, traced)
    gateway.middleware.insert(0, middleware)
    if traced:
        policy.reports.append(middleware.record)
    return middleware


# --- A tool server (the SDK's FastMCP) -----------------------------------------------------------


def trace_tool_server(server, service_name: str, runner=None):
    """A `tools/call {tool}` span per call on this server (an `mcp.server.fastmcp.FastMCP`), its
    parent the context in the request's `_meta`, once tracing is configured; otherwise nothing.
    Returns `runner` (lesson 04's sandbox runner, if the server has one), as research_agent's
    TracedRunner while tracing is on: each run a `sandbox run` span under the call's."""
    if not configure(service_name):
        return runner
    handlers = server._mcp_server.request_handlers
    handle = handlers[CallToolRequest]
    tracer = trace.get_tracer("lesson08.tool_server")

    async def traced(request: CallToolRequest):
        name = request.params.name
        parent = propagate.extract(trace_context(request.params.meta))
        attributes = {
            "mcp.method.name": "tools/call",
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": cut(name),
            "mcp.server.name": server.name,
        }
        with tracer.start_as_current_span(
            f"tools/call {cut(name)}", context=parent, kind=SpanKind.SERVER, attributes=attributes
        ) as span:
            answer = await handle(request)
            if getattr(answer.root, "isError", False):
                span.set_attribute("error.type", "tool_error")
                span.set_status(Status(StatusCode.ERROR, "tool_error"))
            return answer

    handlers[CallToolRequest] = traced
    if runner is None:
        return None
    from research_agent import TracedRunner

    return TracedRunner(runner)

"""Lesson 09 on lesson 08's servers: one trace from the agent's tool call to the tool, joined
through the protocol's own trace context, attached from outside the servers' files:

    .venv/lesson08/bin/python -m lesson08.tracing lesson08.notes_server
    .venv/lesson08/bin/python -m lesson08.tracing lesson08.mcp_gateway

configures tracing from the OTEL_* variables, imports the server's module, attaches the spans, and
serves it as `python -m lesson08.notes_server` would (support/mcp_servers.py starts a server this
way when OTEL_* asks for spans).

An MCP request carries its caller's W3C trace context in `params._meta`, under `traceparent` and
`tracestate` (the MCP specification's trace-context convention): no HTTP header of ours. The agent
adds it to each tool call (research_agent/tracing/mcp_tracing.py); here:

- the gateway: a span per tool call, `gateway tools/call {tool}`, with who called
  (`mcp_gateway.client`), the tool, its server and the sha256 it is pinned to, and how the call
  ended (`mcp_gateway.outcome`, the call log's word for it). FastMCP's own spans of the call nest
  under it, and its proxy passes the context on to the tool server in `_meta`; FastMCP makes no
  span for the other requests (discovery, listings: they belong to no one call);
- a tool server: the SDK's span per call, `tools/call {tool}`, whose parent is the context in the
  request's `_meta`, and none for its other requests; lesson 04's `sandbox run` nests under
  run_python's.

Trust, as at lesson 09's edge: a caller's context is joined only from a client that proved who it
is with its catalog token. The gateway itself passes on nothing of an anonymous caller's `_meta`
(lesson08.call_limits.withhold_anonymous_meta, whether or not it traces); here, that caller's
context becomes a link on the gateway's span (named, not joined). A tool server trusts its one
caller, the gateway, by where it stands (on the tools network).
"""

import json
import logging
import os
import sys

import uvicorn
from fastmcp.server.dependencies import fastmcp_request_ctx, get_http_headers
from fastmcp.server.middleware import Middleware
from fastmcp.telemetry import suppress_fastmcp_telemetry
from mcp.server._otel import OpenTelemetryMiddleware
from opentelemetry import propagate, trace
from opentelemetry.context import Context, attach, detach
from opentelemetry.trace import Link, SpanKind, Status, StatusCode, TraceFlags

from lesson08.call_limits import WITHHELD, CallPolicy, cut, identify

logger = logging.getLogger("mcp_gateway")
ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
TRACE_KEYS = ("traceparent", "tracestate")  # the keys of `_meta` that carry a trace context
OK = "ok"
SERVICES = {"notes_server": "mcp-notes", "python_server": "mcp-python"}


def configure(service_name: str) -> bool:
    """Tracing for this process from the OTEL_* variables, as the research agent reads them (this
    service name unless OTEL_SERVICE_NAME says otherwise). True when it is on."""
    if not any(os.environ.get(name) for name in ENDPOINTS):
        return False
    try:
        from research_agent import TracingSettings, configure_tracing
    except ImportError as exc:  # an image without the SDK or the research agent's tracing
        logger.warning(json.dumps({"event": "tracing_unavailable", "missing": exc.name}))
        return False
    return configure_tracing(TracingSettings(), service_name) is not None


def trace_context(meta) -> dict[str, str]:
    """The trace context a request's `_meta` carries (a mapping, or None)."""
    meta = meta or {}
    return {key: str(meta[key]) for key in TRACE_KEYS if key in meta}


# --- The gateway ----------------------------------------------------------------------------------


class GatewayTracing(Middleware):
    """First in the gateway's middleware while tracing is on: a span per tool call. CallPolicy,
    inside it, reports each call's log line to `record`, which puts its outcome on the span."""

    def __init__(self, clients: dict, pin_of):
        self.clients, self.pin_of = clients, pin_of
        self.tracer = trace.get_tracer("lesson08.gateway")

    async def on_call_tool(self, context, call_next):
        request = fastmcp_request_ctx.get()
        headers = get_http_headers(include={"authorization"})
        client = identify(self.clients, headers.get("authorization"))
        trusted = client != "anonymous"
        caller = trace_context(request.meta if request is not None else None)
        if not trusted:
            caller = trace_context(WITHHELD.get())  # what the gateway took out: a link only
        with self._span(context.message.name, client, caller, trusted):
            return await call_next(context)

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


async def only_calls_traced_by_fastmcp(ctx, call_next):
    """A middleware of the SDK's server: FastMCP's own spans for tool calls only."""
    if ctx.method == "tools/call":
        return await call_next(ctx)
    with suppress_fastmcp_telemetry():
        return await call_next(ctx)


def trace_gateway(built) -> GatewayTracing:
    """A layer for code/lesson08/mcp_gateway.py's build_app (`layers=`): the spans, where the
    gateway is composed."""
    server, _, pins, _, providers = built
    policy = next(m for m in server.middleware if isinstance(m, CallPolicy))

    def pin_of(tool: str):
        for provider in providers.values():
            if tool in provider.listed:
                pin = pins.data.get(provider.server, {}).get(tool)
                return (provider.server, pin["sha256"]) if pin else None
        return None

    middleware = GatewayTracing(policy.clients, pin_of)
    server.middleware.insert(0, middleware)
    policy.reports.append(middleware.record)
    server._mcp_server.middleware.insert(1, only_calls_traced_by_fastmcp)  # after the withholding
    for provider in providers.values():  # opening a client, pin checks: no one call's either
        provider.recheck = untraced(provider.recheck)
        provider._declared = untraced(provider._declared)
        provider.client_factory = untraced(provider.client_factory)
    return middleware


def untraced(work):
    """`work` with neither FastMCP's spans nor the SDK client's (`MCP send ...`): its spans get
    a parent that is not sampled, so the SDK's sampler (parent-based) records none of them."""

    async def run(*args, **kwargs):
        ids = trace.SpanContext(trace_id=1, span_id=1, is_remote=False, trace_flags=TraceFlags(0))
        token = attach(trace.set_span_in_context(trace.NonRecordingSpan(ids)))
        try:
            with suppress_fastmcp_telemetry():
                return await work(*args, **kwargs)
        finally:
            detach(token)

    return run


# --- A tool server (the SDK's MCPServer) -------------------------------------------------------


class ToolCallSpans(OpenTelemetryMiddleware):
    """The SDK's span per inbound message, for tool calls only."""

    async def __call__(self, ctx, call_next):
        if ctx.method != "tools/call":
            return await call_next(ctx)
        return await super().__call__(ctx, call_next)


def trace_tool_server(module) -> None:
    """A tool server script's module: its SDK spans for tool calls only, and its sandbox runner
    (the python server's), if any, as research_agent's TracedRunner: each run a `sandbox run`."""
    chain = module.server.middleware
    chain[:] = [ToolCallSpans() if isinstance(m, OpenTelemetryMiddleware) else m for m in chain]
    if hasattr(module, "runner"):
        from research_agent import TracedRunner

        module.runner = TracedRunner(module.runner)


def main(name: str) -> None:
    import importlib

    import uvloop

    stem = name.rpartition(".")[2]
    module = importlib.import_module(name)
    if stem == "mcp_gateway":
        layers = [trace_gateway] if configure("mcp-gateway") else []
        uvloop.run(module.serve(module.Settings(), layers))  # as the gateway's own main
        return
    if configure(SERVICES.get(stem, stem)):
        trace_tool_server(module)
    settings = module.settings
    uvicorn.run(module.app, host=settings.HOST, port=settings.PORT, log_level="warning")


if __name__ == "__main__":
    main(sys.argv[1])

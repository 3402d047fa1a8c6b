"""An MCP tool call in the caller's trace (lesson 09): the current span's W3C trace context goes in
the request's `params._meta`, under `traceparent` and `tracestate`, as the MCP specification's
trace-context convention has it. The gateway's span and the tool server's join the agent's trace
through the protocol itself: no HTTP header of ours (code/lesson08/tracing.py reads it there).

`instrument()` (tracing.py) installs it while tracing is on, as it does HTTPX's instrumentation:
every `ClientSession.call_tool` in the process (langchain-mcp-adapters calls it for the agent's MCP
tools) adds the context of the span current at the call, the tool's `execute_tool` span. While
tracing is off nothing is patched and the requests are as they were.
"""

import functools

from mcp.client.session import ClientSession
from opentelemetry import propagate

TRACE_KEYS = ("traceparent", "tracestate")


def with_trace_context(meta: dict | None) -> dict | None:
    """`meta` with the current span's trace context added (as it was when no span is current)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    found = {key: carrier[key] for key in TRACE_KEYS if key in carrier}
    return {**(meta or {}), **found} if found else meta


class MCPClientInstrumentor:
    """instrument() / uninstrument(), and is_instrumented_by_opentelemetry, as OpenTelemetry's
    instrumentors have them (tests undo it between runs)."""

    _original = None  # ClientSession.call_tool as the SDK defines it, while patched

    @property
    def is_instrumented_by_opentelemetry(self) -> bool:
        return MCPClientInstrumentor._original is not None

    def instrument(self) -> None:
        if self.is_instrumented_by_opentelemetry:
            return
        original = MCPClientInstrumentor._original = ClientSession.call_tool

        @functools.wraps(original)
        async def call_tool(self, name, arguments=None, *args, meta=None, **kwargs):
            return await original(
                self, name, arguments, *args, meta=with_trace_context(meta), **kwargs
            )

        ClientSession.call_tool = call_tool

    def uninstrument(self) -> None:
        if self.is_instrumented_by_opentelemetry:
            ClientSession.call_tool = MCPClientInstrumentor._original
            MCPClientInstrumentor._original = None
